"""The offline trainer: token streams in, model folders out. Read it top to bottom.

    ensemble train --data PREPARED_DIR --out RUN_DIR            # any prepared corpus
    ensemble train --codec text --data FILE.txt --out RUN_DIR   # char-rnn on a text file
    torchrun --nproc-per-node 2 -m ensemble train ...           # data-parallel

How it learns (char-rnn, folk-rnn, Performance RNN all train this way):
- B parallel streams walk through the training pieces, each stream taking the next
  piece from a shuffled queue when its current one ends. Each step reads the next
  window of T tokens of every stream (truncated backpropagation through time).
- The hidden state is carried from one window to the next (the model sees the whole
  piece, gradients flow through T steps) and reset to zero where a new piece starts,
  since a performer's state also starts at zero. The last window of a piece is padded
  and the padding is masked out of the loss.
- Categorical cross-entropy, AdamW, linear warm-up then cosine decay, gradient-norm
  clipping. Validation on held-out *pieces*, in nats and bits per token.
- `RUN_DIR/best/` and `RUN_DIR/last/` are model folders; `RUN_DIR/train_state.pt` holds
  everything needed to resume exactly (weights, optimiser, schedule, RNG, data position
  and the carried hidden state), loaded with `weights_only=True`.
"""

from __future__ import annotations

import argparse
import csv
import inspect
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from argparse import SUPPRESS, BooleanOptionalAction
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ensemble import checkpoint, data
from ensemble.errors import UserError
from ensemble.files import atomic_write
from ensemble.model import CELLS, RNNState, TokenRNN

log = logging.getLogger("ensemble.train")

IGNORE = -100  # target value of padded positions; cross_entropy skips them

# model size presets: (layers, hidden, embedding)
SIZES = {
    "xs": (1, 64, 32),
    "s": (2, 128, 48),
    "m": (2, 256, 64),
    "l": (3, 512, 128),
}


def recorded_settings(cfg: "TrainConfig", model_config) -> dict:
    """The training settings a model card records: the shape the model really has (a
    fine-tuned model has its --init-from's shape, whatever --size said) and paths that
    do not name the machine it was trained on."""
    settings = {k: v for k, v in asdict(cfg).items() if k != "progress"}
    shape = (model_config.layers, model_config.hidden, model_config.embedding)
    tie = model_config.tie
    settings["size"] = next((name for name, (l, h, e) in SIZES.items()
                             if (l, h) == shape[:2] and (tie or e == shape[2])), "custom")  # tied: embedding = hidden
    settings["layers"], settings["hidden"], settings["embedding"] = shape
    settings["tie_embeddings"] = tie
    settings["cell"], settings["dropout"] = model_config.cell, model_config.dropout
    settings["layer_norm"] = model_config.layer_norm
    for key in ("data", "out", "init_from", "val_data"):
        if settings.get(key):
            settings[key] = checkpoint.portable_path(settings[key])
    return settings


NO_VALIDATION = {"note": "no validation (--val-fraction 0): best is the last checkpoint"}


class TrainError(UserError):
    """A training run that cannot start or go on; one line says why."""


@dataclass
class TrainConfig:
    """Every setting of a run. None means "choose for me" (see `choose_defaults`); the
    chosen values are written to RUN/run.json, so a resumed run uses exactly them."""

    data: str
    out: str
    codec: str | None = None  # only for a raw text file: "text"
    val_data: str | None = None  # validate on this file or prepared corpus instead of a split of `data`
    # model
    size: str = "m"
    cell: str = "lstm"
    layers: int | None = None
    hidden: int | None = None
    embedding: int | None = None
    # the output layer shares the embedding (which then is --hidden wide); None: yes, unless
    # --embedding asks for another width or --init-from's model is untied (choose_defaults)
    tie_embeddings: bool | None = None
    dropout: float | None = None  # None: from the epochs the budget allows (default_regularisation)
    layer_norm: bool = False  # LSTM only: layer-normalised gates and cell (README "Layer normalisation")
    # optimisation
    seq_len: int = 64
    batch: int = 32
    steps: int | None = None  # None: 2000, or unbounded when max_time is given
    max_time: float | None = None  # seconds of wall-clock; the schedule decays over it, then a clean stop
    lr: float | None = None  # None: from the model's hidden size
    min_lr: float | None = None  # None: lr / 10
    warmup: int = 50
    weight_decay: float | None = None  # None: like dropout
    clip: float = 1.0
    # augmentation, for codecs that can (music): transpose +-N semitones, stretch +-P
    transpose: int = 0
    stretch: float = 0.0
    # bookkeeping
    eval_every: int = 200
    eval_tokens: int = 200_000  # at most this many validation tokens per evaluation
    save_every: int = 200
    # early stopping: validations without improvement, counted in the last fifth of the
    # schedule (PATIENCE_FROM_PROGRESS); 0 = never
    patience: int = 5
    seed: int = 0
    device: str = "auto"
    init_from: str | None = None
    freeze_rnn: bool = False
    val_fraction: float = 0.1
    progress: bool = True

    def model_shape(self) -> tuple[int, int, int]:
        if self.size not in SIZES:
            raise TrainError(f"--size must be one of {', '.join(SIZES)}, got {self.size!r}")
        layers, hidden, embedding = SIZES[self.size]
        hidden = self.hidden or hidden
        return (self.layers or layers, hidden, self.embedding or (hidden if self.tie_embeddings else embedding))


# ---------------------------------------------------------------------------- data


class StreamBatcher:
    """B parallel streams over whole pieces; every window comes from one piece.

    The position (queue, epoch, each stream's piece and offset) and the RNG are plain
    JSON-able values (`state_dict`), so a resumed run reads exactly the windows an
    uninterrupted run would have read. With `rank`/`world` each data-parallel process
    takes its own share of every epoch's pieces. With `shuffle=False` it makes one
    ordered pass (for validation) and then reports `exhausted`.
    """

    def __init__(self, pieces, batch, seq_len, seed=0, rank=0, world=1, shuffle=True, augment=None):
        self.pieces = pieces
        self.batch, self.seq_len = batch, seq_len
        self.rank, self.world = rank, world
        self.shuffle = shuffle
        self.augment = augment  # fn(tokens, rng) -> tokens, applied once per piece visit
        self.rng = np.random.default_rng(seed)
        self.epoch = 0
        self.queue: list[int] = []
        self.queue_pos = 0
        self.stream_piece = [-1] * batch  # -1: needs a new piece
        self.stream_offset = [0] * batch
        self.exhausted = False
        self._visit = [0] * batch  # pieces each stream has started (seeds augmentation)
        self._tokens: list[np.ndarray | None] = [None] * batch  # the (augmented) piece in play
        self._new_epoch()

    def _new_epoch(self) -> None:
        order = self.rng.permutation(len(self.pieces)) if self.shuffle else np.arange(len(self.pieces))
        self.queue = [int(i) for i in order[self.rank::self.world]]
        if not self.queue:  # fewer pieces than processes: everyone shares them all
            self.queue = [int(i) for i in order]
        self.queue_pos = 0

    def _next_piece(self) -> int:
        if self.queue_pos >= len(self.queue):
            if not self.shuffle:
                return -1
            self.epoch += 1
            self._new_epoch()
        index = self.queue[self.queue_pos]
        self.queue_pos += 1
        return index

    def _load(self, b: int) -> None:
        index = self.stream_piece[b]
        tokens = self.pieces[index].tokens
        if self.augment is not None:
            # a per-visit seed drawn from our RNG keeps augmentation resumable
            tokens = self.augment(tokens, np.random.default_rng(self._seed_for(b)))
        self._tokens[b] = tokens

    def _seed_for(self, b: int) -> list[int]:
        return [self.epoch, self.stream_piece[b], b, self.rank, self._visit[b]]

    def next_batch(self):
        """x (B, T), y (B, T) int64 with IGNORE where padded, keep (B,) False where a piece starts."""
        B, T = self.batch, self.seq_len
        x = np.zeros((B, T), dtype=np.int64)
        y = np.full((B, T), IGNORE, dtype=np.int64)
        keep = np.ones(B, dtype=bool)
        for b in range(B):
            if self.stream_piece[b] >= 0 and self._tokens[b] is None:  # restored mid-piece
                self._load(b)
            if self.stream_piece[b] < 0 or self.stream_offset[b] >= len(self._tokens[b]) - 1:
                keep[b] = False
                self.stream_piece[b] = self._next_piece()
                self.stream_offset[b] = 0
                self._visit[b] += 1
                if self.stream_piece[b] < 0:  # one-pass mode, nothing left
                    self._tokens[b] = None
                    continue
                self._load(b)
            tokens, start = self._tokens[b], self.stream_offset[b]
            window = tokens[start:start + T + 1]
            n = len(window) - 1
            x[b, :n] = window[:-1]
            y[b, :n] = window[1:]
            self.stream_offset[b] = start + T
        self.exhausted = not self.shuffle and all(p < 0 for p in self.stream_piece)
        return x, y, keep

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch, "queue": self.queue, "queue_pos": self.queue_pos,
            "stream_piece": self.stream_piece, "stream_offset": self.stream_offset,
            "visit": self._visit,
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.queue, self.queue_pos = state["epoch"], state["queue"], state["queue_pos"]
        self.stream_piece, self.stream_offset = state["stream_piece"], state["stream_offset"]
        self._visit = state["visit"]
        self.rng.bit_generator.state = state["rng"]
        self._tokens = [None] * self.batch  # rebuilt lazily, augmentation included


def load_corpus(cfg: TrainConfig) -> data.Corpus:
    """A prepared corpus folder, or (with --codec text) a raw text file; validated on
    held-out pieces of it, or with --val-data on another file or corpus (all of --data
    then trains)."""
    path = data.require_exists(cfg.data)
    if cfg.val_data:
        data.require_exists(cfg.val_data)
    if data.is_prepared(path):
        corpus = data.load_prepared(path)
        if cfg.codec and corpus.codec.name != cfg.codec:
            raise TrainError(f"--codec {cfg.codec} but {path} was prepared with the {corpus.codec.name} codec")
        return with_val_data(corpus, cfg.val_data) if cfg.val_data else corpus
    if cfg.codec != "text":
        if path.is_dir():
            raise TrainError(f"{path}: not a prepared corpus (no manifest.json); run `ensemble prepare` first")
        raise TrainError(f"{path}: a raw file needs --codec text (other codecs train on `ensemble prepare` output)")
    from ensemble.codecs.text import TextCodec

    text = data.read_text_file(path)
    if len(text) < 20:
        raise TrainError(f"{path}: only {len(text)} characters; need some text to learn from")
    val_text = ""
    if cfg.val_data and not data.is_prepared(cfg.val_data):
        val_text = data.read_text_file(cfg.val_data)  # its characters join the vocabulary
    codec = TextCodec.from_corpus(text + val_text)
    pieces = data.text_pieces(text, codec, source=path.name)
    summary = {"corpus": str(path), "characters": len(text)}
    if cfg.val_data:
        return with_val_data(data.Corpus(codec, pieces, [], summary), cfg.val_data)
    return data.make_corpus(codec, pieces, cfg.val_fraction, cfg.seed, summary)


def with_val_data(corpus: data.Corpus, val_data: str) -> data.Corpus:
    """All of `corpus` trains; `val_data` (a prepared corpus of the same codec, or a text
    file for the text codec) validates, so the loss measures text the split could not."""
    path = Path(val_data)
    if data.is_prepared(path):
        held = data.load_prepared(path)
        if held.codec.describe() != corpus.codec.describe():
            raise TrainError(f"--val-data {path}: prepared with another {held.codec.name} codec than the training "
                             f"data's {corpus.codec.name} codec (vocabularies must match)")
        val = held.train + held.val
    elif corpus.codec.input_kind == "text":  # a character codec: any text file encodes
        text = data.read_text_file(path)
        unknown = corpus.codec.unknown_in(text)
        if unknown:
            log.warning("--val-data %s: %d characters are not in the vocabulary (%r); they count as unknown",
                        path, sum(text.count(c) for c in unknown), "".join(sorted(unknown))[:20])
        val = data.text_pieces(text, corpus.codec, source=path.name)
    elif path.is_dir():
        raise TrainError(f"--val-data {path}: not a prepared corpus (no manifest.json); run `ensemble prepare` first")
    else:
        raise TrainError(f"--val-data {path}: a raw file validates only a text-codec model; "
                         f"prepare it with the {corpus.codec.name} codec first")
    val = [p for p in val if len(p.tokens) >= 2]
    if not val:
        raise TrainError(f"--val-data {path}: nothing to validate on (no piece of 2 or more tokens)")
    summary = {**corpus.summary, "val_data": str(path)}
    return data.Corpus(corpus.codec, corpus.train + corpus.val, val, summary)


def augmenter(codec, cfg: TrainConfig):
    """Musical augmentation through the codec (transposition, time-stretch), if it can."""
    if not (cfg.transpose or cfg.stretch) or not hasattr(codec, "augment"):
        return None

    takes_rng = "rng" in inspect.signature(codec.augment).parameters  # e.g. notes: jitter within time bins

    def augment(tokens, rng):
        semitones = int(rng.integers(-cfg.transpose, cfg.transpose + 1)) if cfg.transpose else 0
        factor = float(1 + rng.uniform(-cfg.stretch, cfg.stretch)) if cfg.stretch else 1.0
        extra = {"rng": rng} if takes_rng else {}
        return np.asarray(codec.augment(tokens, semitones=semitones, stretch=factor, **extra), dtype=np.int64)

    return augment


# ---------------------------------------------------------------------------- helpers


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise TrainError(f"--device {name!r} is not a device name (try auto, cpu, cuda, cuda:1)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainError(f"--device {name}: CUDA is not available on this machine")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise TrainError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    if device.type not in ("cpu", "cuda", "mps"):
        raise TrainError(f"--device {name}: unsupported device type")
    return device


def learning_rate(step: int, elapsed: float, cfg: TrainConfig) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay from lr to min_lr that
    reaches min_lr exactly when the budget is spent: the planned `steps`, or `max_time`
    seconds (progress = elapsed / max_time), whichever runs out first. A time budget
    thus gets a whole schedule whatever the machine's speed (a step count guessed for
    another machine would stop mid-decay, or finish early and idle)."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = schedule_progress(step, elapsed, cfg)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


def schedule_progress(step: int, elapsed: float, cfg: TrainConfig) -> float:
    """How far through its decay the learning rate is, 0 to 1 (see `learning_rate`)."""
    progress = 0.0
    if cfg.steps:
        progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    if cfg.max_time:
        progress = max(progress, elapsed / cfg.max_time)
    return min(1.0, max(0.0, progress))


# Early stopping counts only validations made once the schedule is this far through its
# decay (the learning rate is then within 10 % of the way from min_lr to its peak). At a
# high learning rate the validation loss wanders by +-0.01 and stalls for thousands of
# steps; the decay is where it falls. The tied 2x128 notes model (3,600 s budget,
# patience 5 x 200 steps) stopped at 463 s (lr 0.0096 of 0.01, 1.328 nats/token) with
# patience counted from the start, and again at 2,023 s (lr 0.0046, 1.226) with it
# counted from halfway (README "Training"). A stop only saves time (`best/` keeps the
# best either way), so it waits until it cannot cut the decay short.
PATIENCE_FROM_PROGRESS = 0.8


# Peak learning rate of a 256-wide TokenRNN; others scale by sqrt(256 / hidden), which
# fits every grid measured on O'Neill's tunes as characters (README "Training"): tied
# 2x256 at 150 s and 600 s, best of 5e-3 / 1e-2 / 2e-2: 1e-2 (5e-3, the rate before, was
# 0.018 and 0.014 nats behind); 2x128 at 1,000 steps: 1.4e-2 of 2e-3 ... 2e-2; 1x64:
# 2e-2 over 1e-2. Scaling by 256 / hidden instead would give 2x128 2e-2, 0.05 nats worse
# there. 2x512 (7.1e-3) checked at 150 s only: 3.5e-3 to 1.4e-2 within 0.01 nats.
LR_AT_256 = 1e-2


def default_lr(hidden: int) -> float:
    return float(f"{LR_AT_256 * math.sqrt(256 / hidden):.2g}")


def default_embedding(vocab: int, hidden: int) -> int:
    """Embedding width for a vocabulary: 2 sqrt(vocab), rounded up to 16, at most hidden.

    The presets' embeddings (32-128) suit characters and ABC; a packed vocabulary such as
    the notes codec's 3,660 tokens (time bin x pitch x velocity) was starved by them: on
    O'Neill's tunes as notes a 2x128 LSTM reached 1.79 nats/token after 600 steps with
    embedding 128 against 2.56 with the preset's 48 (README "Training"). The size's
    preset stays when it is larger."""
    return min(hidden, 16 * math.ceil(2 * math.sqrt(vocab) / 16))


def default_regularisation(epochs: float) -> tuple[float, float]:
    """(dropout, weight decay) for a run that will see its training corpus `epochs` times.

    Overfitting needs repetition: a model that sees each token once or twice cannot
    memorise it, and there dropout and weight decay only slow learning down; after a few
    passes it starts to memorise and the validation loss stalls. Measured at 150 s and
    600 s on three corpora, 2x256 LSTM (README "Defaults, and how they were measured"):
    at 0.5-2.4 epochs no regularisation was better by 0.01-0.08 nats (one exception, 0.9
    epochs of folk ABC, by 0.03 the other way), at 3.7 and 10 epochs dropout 0.2 with
    weight decay 0.1 by 0.01 and 0.06; the halfway setting (0.1, 0.05) was not better.
    """
    return (0.2, 0.1) if epochs >= 3 else (0.0, 0.0)


# a run with a time budget measures its speed over its first steps, then knows how many
# epochs it will see and sets dropout and weight decay (zero until then)
REGULARISE_AT_STEP = 60
TIMED_FROM_STEP = 10  # the first steps are slow (allocation, caches, warm-up)


def planned_epochs(cfg: TrainConfig, train_tokens: int, world: int, step: int = 0, elapsed: float = 0.0,
                   tokens_per_s: float | None = None) -> float | None:
    """How many times the run will see its training tokens: from --steps, and from
    --max-time at the measured speed (None if that is needed and not measured yet)."""
    per_step = cfg.batch * cfg.seq_len * world
    plans = []
    if cfg.steps is not None:
        plans.append(cfg.steps * per_step)
    if cfg.max_time is not None:
        if tokens_per_s is None:
            return None
        plans.append(step * per_step + tokens_per_s * max(0.0, cfg.max_time - elapsed))
    return min(plans) / max(1, train_tokens)


def regularisation_choice(cfg: TrainConfig, epochs: float) -> str:
    """Set the regularisation left as None from the planned epochs; returns what was chosen."""
    dropout, weight_decay = default_regularisation(epochs)
    regularised = []
    if cfg.dropout is None:
        cfg.dropout = dropout
        regularised.append(f"dropout {dropout:g}")
    if cfg.weight_decay is None:
        cfg.weight_decay = weight_decay
        regularised.append(f"weight decay {weight_decay:g}")
    return " and ".join(regularised) + f" ({epochs:.2f} epochs planned)" if regularised else ""


def choose_defaults(cfg: TrainConfig, corpus: data.Corpus, init, world: int = 1) -> list[str]:
    """Fill in every setting left as None, in place; returns what was chosen and why
    (logged, and kept in run.json so that a resumed run keeps them). With --max-time,
    dropout and weight decay may stay None: the loop sets them once it has measured its
    speed (`REGULARISE_AT_STEP`)."""
    chosen = []
    if init is not None:
        shape = (init.model.config.layers, init.model.config.hidden, init.model.config.embedding)
        if cfg.dropout is None:
            cfg.dropout = init.model.config.dropout
        if cfg.tie_embeddings and not init.model.config.tie:
            raise TrainError("--tie-embeddings: the --init-from model has separate input and output weights")
        if cfg.tie_embeddings is None:
            cfg.tie_embeddings = init.model.config.tie and not cfg.freeze_rnn
    else:
        if cfg.tie_embeddings is None:  # tied unless a width of its own was asked for (README "Tied embeddings")
            cfg.tie_embeddings = cfg.embedding is None or cfg.embedding == cfg.model_shape()[1]
            if cfg.tie_embeddings:
                chosen.append("tied embeddings")
        shape = cfg.model_shape()
    layers, hidden, embedding = shape
    if (init is None and cfg.embedding is None and not cfg.tie_embeddings
            and default_embedding(corpus.codec.vocab_size, hidden) > embedding):
        cfg.embedding = embedding = default_embedding(corpus.codec.vocab_size, hidden)
        chosen.append(f"embedding {embedding} ({corpus.codec.vocab_size} tokens)")
    if cfg.steps is None and cfg.max_time is None:
        cfg.steps = 2000
    if cfg.lr is None:
        cfg.lr = default_lr(hidden)
        chosen.append(f"lr {cfg.lr:g} (hidden {hidden})")
    if cfg.min_lr is None:
        cfg.min_lr = cfg.lr / 10
    epochs = planned_epochs(cfg, corpus.train_tokens, world)
    if epochs is not None:
        choice = regularisation_choice(cfg, epochs)
        if choice:
            chosen.append(choice)
    elif cfg.dropout is None or cfg.weight_decay is None:
        chosen.append(f"dropout and weight decay after step {REGULARISE_AT_STEP}, from the epochs the budget allows")
    return chosen


def apply_regularisation(model, optimizer, dropout: float, weight_decay: float) -> None:
    """Dropout and weight decay changed in place, mid-run (both are read at every step)."""
    model.set_dropout(dropout)
    for group in optimizer.param_groups:
        if group.get("decays", True):
            group["weight_decay"] = weight_decay


def parameter_groups(model, weight_decay: float) -> list[dict]:
    """The optimiser's parameter groups: a layer normalisation's gains and shifts are
    never decayed (decay would pull every gain towards 0, i.e. shrink what the
    normalisation keeps at one scale, not regularise the weights); everything else is."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    keep = [p for n, p in named if ".ln_" in n]
    groups = [{"params": [p for n, p in named if ".ln_" not in n], "weight_decay": weight_decay}]
    if keep:
        groups.append({"params": keep, "weight_decay": 0.0, "decays": False})
    return groups


@torch.no_grad()
def evaluate(model: TokenRNN, pieces, cfg: TrainConfig, device) -> dict:
    """Loss (nats and bits per token) and accuracy over held-out pieces, state carried."""
    was_training = model.training
    model.eval()
    batcher = StreamBatcher(pieces, min(cfg.batch, max(1, len(pieces))), cfg.seq_len, shuffle=False)
    state = model.initial_state(batcher.batch, device)
    total_loss, total_correct, total = 0.0, 0, 0
    while total < cfg.eval_tokens:
        x, y, keep = batcher.next_batch()
        if batcher.exhausted:
            break
        x, y = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
        state = state.reset_rows(torch.from_numpy(keep).to(device))
        with autocast(device):
            logits, state = model(x, state)
        logits = logits.float()
        total_loss += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                                      ignore_index=IGNORE, reduction="sum").item()
        valid = y != IGNORE
        total_correct += (logits.argmax(-1)[valid] == y[valid]).sum().item()
        total += valid.sum().item()
    model.train(was_training)
    loss = total_loss / max(1, total)
    return {"loss_nats": loss, "loss_bits": loss / math.log(2), "perplexity": math.exp(min(loss, 50)),
            "accuracy": total_correct / max(1, total), "tokens": total}


def autocast(device: torch.device):
    """bf16 autocast on CUDA (the RNN runs in cuDNN); plain float32 elsewhere."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


def unigram_entropy(pieces) -> float:
    """Nats per token of the best context-free guess: the baseline a model must beat."""
    counts = np.bincount(np.concatenate([p.tokens for p in pieces]))
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


class CsvLog:
    COLUMNS = ["step", "split", "loss_nats", "loss_bits", "perplexity", "accuracy", "lr", "tokens_per_s", "elapsed_s"]

    def __init__(self, path: Path, truncate_after_step: int | None = None):
        self.path = path
        if truncate_after_step is not None and path.exists():
            # a resumed run repeats the steps after its last save: drop their rows
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= truncate_after_step]
            with open(path, "w", newline="") as f:
                w = csv.DictWriter(f, self.COLUMNS)
                w.writeheader()
                w.writerows(rows)
        elif not path.exists():
            with open(path, "w", newline="") as f:
                csv.DictWriter(f, self.COLUMNS).writeheader()

    def write(self, **row) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.COLUMNS).writerow(
                {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


# ---------------------------------------------------------------------------- distributed


def distributed_setup(device_name: str) -> tuple[int, int, torch.device]:
    """Under torchrun (RANK/WORLD_SIZE set): join the process group; else a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, pick_device(device_name)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


# ---------------------------------------------------------------------------- the run


@dataclass
class Progress:
    """Where a run stands; saved in train_state.pt and restored by --resume."""

    step: int = 0
    best: float = float("inf")  # best validation loss so far, nats/token
    best_step: int = 0
    evals_without_gain: int = 0
    # of those, the ones made late in the schedule (PATIENCE_FROM_PROGRESS): what --patience counts
    late_evals_without_gain: int = 0
    elapsed: float = 0.0  # seconds of training so far, over every session of the run
    last_eval_step: int = 0


class StopSignals:
    """SIGINT (Ctrl-C) and SIGTERM ask the loop to stop after the current step, save a
    resumable state and say how to resume, instead of killing it where it stands and
    losing everything since the last save. A second signal stops at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received: int | None = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.received is not None:  # asked twice: the user means now
            raise KeyboardInterrupt
        self.received = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # only there can Python take signals
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def build_model(cfg: TrainConfig, vocab_size: int, init, device) -> TokenRNN:
    if init is not None:
        model = init.model
    else:
        layers, hidden, embedding = cfg.model_shape()
        try:
            model = TokenRNN(vocab_size, cfg.cell, layers, hidden, embedding, cfg.dropout or 0.0,
                             bool(cfg.tie_embeddings), cfg.layer_norm)
        except ValueError as exc:
            raise TrainError(str(exc)) from None
    model.to(device).train()
    if cfg.freeze_rnn and model.config.tie:  # the output layer alone learns: it gets a copy of its own
        if cfg.tie_embeddings:
            raise TrainError("--freeze-rnn trains only the output layer, which --tie-embeddings shares with "
                             "the input; leave --tie-embeddings out and the output layer is untied for it")
        model.untie()
    if cfg.freeze_rnn:
        for p in list(model.embed.parameters()) + list(model.rnn.parameters()):
            p.requires_grad_(False)
    return model


def check_settings(cfg: TrainConfig, corpus: data.Corpus, init, resume: bool, state_path: Path) -> None:
    """Everything is checked before anything is written."""
    out = state_path.parent
    if not corpus.val:
        if cfg.val_fraction > 0:
            raise TrainError(f"{cfg.data}: no validation pieces; prepare with --val-fraction > 0, give --val-data, "
                             "or train with --val-fraction 0 to train without validation")
        log.warning("no validation (--val-fraction 0): no validation loss is measured, and RUN/best is "
                    "the last checkpoint")
    if resume and not state_path.exists():
        raise TrainError(f"{out}: nothing to resume (no train_state.pt)")
    if not resume and state_path.exists():
        raise TrainError(f"{out} already holds a training run; resume it with --resume {out} or choose another --out")
    if init is not None and init.codec.describe() != corpus.codec.describe():
        raise TrainError(f"--init-from {cfg.init_from}: its {init.codec.name} codec differs from the data's "
                         f"{corpus.codec.name} codec; fine-tune only on data prepared with the same codec")
    if cfg.batch < 1 or cfg.seq_len < 1 or (cfg.steps is not None and cfg.steps < 1):
        raise TrainError("--batch, --seq-len and --steps must be >= 1")
    if cfg.max_time is not None and cfg.max_time <= 0:
        raise TrainError(f"--max-time must be > 0 seconds, got {cfg.max_time:g}")
    if cfg.lr is not None and cfg.lr <= 0:
        raise TrainError(f"--lr must be > 0, got {cfg.lr:g}")
    if cfg.cell not in CELLS:
        raise TrainError(f"--cell must be one of {', '.join(CELLS)}")
    if cfg.layer_norm and (cfg.cell != "lstm" or init is not None):
        raise TrainError("--layer-norm is built for the lstm cell, and for new models only (an --init-from "
                         "model keeps its own architecture)" if cfg.cell == "lstm" else
                         f"--layer-norm is built for the lstm cell only, got --cell {cfg.cell}")
    if cfg.freeze_rnn and not (cfg.init_from or resume):
        raise TrainError("--freeze-rnn needs --init-from MODEL (a trained model to keep the recurrent layers of)")
    if (cfg.transpose or cfg.stretch) and not hasattr(corpus.codec, "augment"):
        log.warning("--transpose/--stretch do nothing for the %s codec (only MIDI-like codecs augment)",
                    corpus.codec.name)


def train_step(model, params, optimizer, batch, carried: RNNState, cfg: TrainConfig, device):
    """One optimiser step on one window of every stream; returns the loss, the carried
    state (detached: truncated BPTT keeps the values, drops the history) and the number
    of target tokens."""
    x, y, keep = batch
    pin = device.type == "cuda"
    x, y = (torch.from_numpy(a).pin_memory() if pin else torch.from_numpy(a) for a in (x, y))
    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    carried = carried.reset_rows(torch.from_numpy(keep).to(device))  # a new piece starts from zeros
    with autocast(device):
        logits, carried = model(x, carried)
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=IGNORE)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, cfg.clip)
    optimizer.step()
    return loss.item(), carried.detach(), int((y != IGNORE).sum())


def agree(elapsed: float, interrupted: bool, world: int, device) -> tuple[float, bool]:
    """Data-parallel ranks must follow one clock and stop on the same step: take the max."""
    if world == 1:
        return elapsed, interrupted
    flags = torch.tensor([elapsed, float(interrupted)], device=device)
    torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
    return float(flags[0]), bool(flags[1])


def summary_lines(run: Progress, stop_reason: str, wall: float, tokens: int) -> list[str]:
    """What a run ends with: how good, from when, how fast, and whether more would help."""
    if run.best == float("inf"):  # --val-fraction 0
        return [f"no validation (--val-fraction 0); stopped at step {run.step} ({stop_reason})",
                f"wall time {wall:.1f} s, {tokens / max(wall, 1e-9):,.0f} training tokens/s"]
    lines = [f"best validation loss {run.best:.4f} nats/token ({run.best / math.log(2):.3f} bits) "
             f"at step {run.best_step}; stopped at step {run.step} ({stop_reason})",
             f"wall time {wall:.1f} s, {tokens / max(wall, 1e-9):,.0f} training tokens/s"]
    if run.best_step == run.last_eval_step:
        lines.append("still improving at the end (the last validation was the best): more time should help")
    else:
        lines.append(f"not improving: no better validation loss in the last {run.evals_without_gain} "
                     f"validation(s), since step {run.best_step}")
    return lines


def restore(state_path: Path, model, optimizer, batcher, rank: int, device) -> tuple[Progress, RNNState]:
    """Load train_state.pt into the model, optimiser, batcher and RNG; the progress and
    the carried hidden state come back. `weights_only=True`: no pickle is executed."""
    saved = torch.load(state_path, map_location=device, weights_only=True)
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    batcher.load_state_dict(json.loads(saved["batchers"])[rank])
    carried = RNNState(saved["carried_h"][rank].to(device),
                       None if saved["carried_c"] is None else saved["carried_c"][rank].to(device))
    torch.set_rng_state(saved["rng_cpu"][rank])
    if device.type == "cuda" and saved.get("rng_cuda") is not None:
        torch.cuda.set_rng_state(saved["rng_cuda"][rank].cpu())
    return Progress(**{k: saved[k] for k in asdict(Progress()) if k in saved}), carried  # older states lack some


def card_meta(cfg: TrainConfig, corpus: data.Corpus, model_config, n_params: int, baseline: float, metrics: dict,
              step: int) -> dict:
    """What a model folder says about how it was made (its card and config.json)."""
    settings = recorded_settings(cfg, model_config)
    return {
        "description": f"A TokenRNN trained by `ensemble train` on {settings['data']}.",
        "parameters": n_params,
        "data": {**checkpoint.portable_data(corpus.summary),
                 "train_pieces": len(corpus.train), "train_tokens": corpus.train_tokens,
                 "val_pieces": len(corpus.val), "val_tokens": corpus.val_tokens,
                 "unigram_entropy_nats": round(baseline, 4)},
        "validation": {**metrics, "step": step},
        "training": settings,
        "retrain": "ensemble train " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in settings.items()
            if v not in (None, False, "custom") and k != "out" and not isinstance(v, bool))
            + f" --out {settings['out']}",
    }


def train(cfg: TrainConfig, resume: bool = False) -> dict:
    """Run (or, with `resume`, continue) a training run; returns the final validation
    metrics with "best", "best_step", "step" and "stop_reason"."""
    rank, world, device = distributed_setup(cfg.device)
    main_process = rank == 0
    out = Path(cfg.out)
    state_path = out / "train_state.pt"

    corpus = load_corpus(cfg)
    init = checkpoint.load(cfg.init_from) if cfg.init_from and not resume else None
    check_settings(cfg, corpus, init, resume, state_path)
    chosen = [] if resume else choose_defaults(cfg, corpus, init, world)

    torch.manual_seed(cfg.seed + rank)
    model = raw_model = build_model(cfg, corpus.codec.vocab_size, init, device)
    params = [p for p in model.parameters() if p.requires_grad]  # what the gradient clipping sees
    optimizer = torch.optim.AdamW(parameter_groups(model, cfg.weight_decay or 0.0), lr=cfg.lr,
                                  fused=device.type == "cuda")
    batcher = StreamBatcher(corpus.train, cfg.batch, cfg.seq_len, cfg.seed, rank, world,
                            augment=augmenter(corpus.codec, cfg))
    carried = model.initial_state(cfg.batch, device)
    run = Progress()
    if resume:
        run, carried = restore(state_path, model, optimizer, batcher, rank, device)
        if cfg.steps and run.step >= cfg.steps:
            raise TrainError(f"{out}: the run is finished ({run.step} of {cfg.steps} steps)")
        if cfg.max_time and run.elapsed >= cfg.max_time:
            raise TrainError(f"{out}: the run has had its {cfg.max_time:g} s; resume it with a longer --max-time")
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    n_params = sum(p.numel() for p in raw_model.parameters())
    baseline = unigram_entropy(corpus.train)
    if main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "run.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
        csv_log = CsvLog(out / "log.csv", truncate_after_step=run.step if resume else None)
        log.info("%s: %d train pieces (%d tokens), %d validation pieces (%d tokens%s), %s codec, %d tokens",
                 cfg.data, len(corpus.train), corpus.train_tokens, len(corpus.val), corpus.val_tokens,
                 f" from {cfg.val_data}" if cfg.val_data else "", corpus.codec.name, corpus.codec.vocab_size)
        log.info("model: %d x %d %s, %d parameters, on %s%s; unigram baseline %.3f nats/token",
                 raw_model.config.layers, raw_model.config.hidden, raw_model.config.cell, n_params, device,
                 f" x {world} processes" if world > 1 else "", baseline)
        budget = " and ".join(([f"{cfg.steps} steps"] if cfg.steps else [])
                              + ([f"{cfg.max_time:g} s"] if cfg.max_time else []))
        log.info("budget %s (the learning rate decays over it)%s", budget,
                 "; chose " + ", ".join(chosen) if chosen else "")

    def save_state() -> None:
        """Everything to resume exactly; every rank contributes its data position and state."""
        batchers = [batcher.state_dict()]
        hs, cs = [carried.h.detach().cpu()], [None if carried.c is None else carried.c.detach().cpu()]
        rngs = [torch.get_rng_state()]
        if world > 1:
            gathered = [None] * world
            torch.distributed.all_gather_object(gathered, (batchers[0], hs[0], cs[0], rngs[0]))
            batchers, hs, cs, rngs = (list(t) for t in zip(*gathered))
        if not main_process:
            return
        state = {
            "model": raw_model.state_dict(), "optimizer": optimizer.state_dict(), **asdict(run),
            "batchers": json.dumps(batchers), "carried_h": hs,
            "carried_c": None if cs[0] is None else cs,
            "rng_cpu": rngs,
            "rng_cuda": [torch.cuda.get_rng_state()] * world if device.type == "cuda" else None,
        }
        atomic_write(state_path, lambda f: torch.save(state, f))
        checkpoint.save(out / "last", raw_model, corpus.codec, meta(metrics))
        log.debug("saved resumable state at step %d", run.step)

    def meta(metrics: dict) -> dict:
        return card_meta(cfg, corpus, raw_model.config, n_params, baseline, metrics, run.step)

    def validate(train_loss: float, lr: float, rate: float) -> None:
        """Validation loss, the log, and `best/` whenever it improves (so early stopping keeps the best)."""
        nonlocal metrics
        run.last_eval_step = run.step
        csv_log.write(step=run.step, split="train", loss_nats=train_loss, loss_bits=train_loss / math.log(2),
                      perplexity=math.exp(min(train_loss, 50)), lr=lr, tokens_per_s=rate, elapsed_s=run.elapsed)
        if not corpus.val:  # --val-fraction 0: nothing to compare; RUN/best is the last checkpoint
            metrics = NO_VALIDATION
            say(f"step {run.step}: train {train_loss:.4f}, no validation, lr {lr:.2g}, {rate:,.0f} tokens/s")
            checkpoint.save(out / "best", raw_model, corpus.codec, meta(metrics))
            return
        metrics = evaluate(raw_model, corpus.val, cfg, device)
        csv_log.write(step=run.step, split="val", loss_nats=metrics["loss_nats"], loss_bits=metrics["loss_bits"],
                      perplexity=metrics["perplexity"], accuracy=metrics["accuracy"], lr=lr,
                      elapsed_s=run.elapsed)
        say(f"step {run.step}: train {train_loss:.4f}, val {metrics['loss_nats']:.4f} nats/token "
            f"({metrics['loss_bits']:.3f} bits), accuracy {metrics['accuracy']:.3f}, lr {lr:.2g}, "
            f"{rate:,.0f} tokens/s")
        if metrics["loss_nats"] < run.best:
            run.best, run.best_step = metrics["loss_nats"], run.step
            run.evals_without_gain = run.late_evals_without_gain = 0
            checkpoint.save(out / "best", raw_model, corpus.codec, meta(metrics))
        else:
            run.evals_without_gain += 1
            if schedule_progress(run.step, run.elapsed, cfg) >= PATIENCE_FROM_PROGRESS:
                run.late_evals_without_gain += 1

    # -- the loop
    progress = None
    if main_process and cfg.progress:
        from tqdm import tqdm
        progress = tqdm(total=cfg.steps, initial=run.step, unit="step", dynamic_ncols=True)
    say = progress.write if progress is not None else log.info
    session_started = time.monotonic()
    started = session_started - run.elapsed  # the schedule's clock runs on across resumes
    session_tokens, tokens_seen, window_started = 0, 0, time.monotonic()
    metrics: dict = {}
    stop_reason = None
    session_first_step, timed_from = run.step, None
    model.train()
    try:
        with StopSignals() as signals:
            while stop_reason is None:
                lr = learning_rate(run.step, run.elapsed, cfg)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                loss, carried, n = train_step(model, params, optimizer, batcher.next_batch(), carried, cfg, device)
                run.step += 1
                tokens_seen += n * world
                session_tokens += n * world
                if progress is not None:
                    rate = tokens_seen / max(1e-9, time.monotonic() - window_started)
                    progress.set_postfix(loss=f"{loss:.3f}", tok_s=f"{rate:,.0f}", refresh=False)
                    progress.update(1)

                run.elapsed, interrupted = agree(time.monotonic() - started, signals.received is not None,
                                                 world, device)
                if run.step == session_first_step + TIMED_FROM_STEP:
                    timed_from = (run.step, run.elapsed)
                if (cfg.dropout is None or cfg.weight_decay is None) and run.step >= REGULARISE_AT_STEP \
                        and timed_from is not None and run.step > timed_from[0]:
                    step_s = (run.elapsed - timed_from[1]) / (run.step - timed_from[0])
                    # the validations to come cost time too: one is timed now, its share spread over eval_every steps
                    eval_s = [0.0]
                    if main_process and corpus.val:
                        timer = time.monotonic()
                        evaluate(raw_model, corpus.val, cfg, device)
                        eval_s = [time.monotonic() - timer]
                    if world > 1:
                        torch.distributed.broadcast_object_list(eval_s, src=0)
                    rate = cfg.batch * cfg.seq_len * world / (step_s + eval_s[0] / cfg.eval_every)
                    epochs = planned_epochs(cfg, corpus.train_tokens, world, run.step, run.elapsed, rate)
                    choice = regularisation_choice(cfg, epochs)  # the same on every rank: one clock, one broadcast
                    apply_regularisation(raw_model, optimizer, cfg.dropout, cfg.weight_decay)
                    if main_process:
                        say(f"step {run.step}: {rate:,.0f} tokens/s with validation; chose {choice}")
                        (out / "run.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
                if interrupted:
                    stop_reason = "interrupted"
                elif cfg.max_time is not None and run.elapsed >= cfg.max_time:
                    stop_reason = "max time"
                elif cfg.steps is not None and run.step >= cfg.steps:
                    stop_reason = "steps"
                if stop_reason in (None, "max time", "steps") and (run.step % cfg.eval_every == 0 or stop_reason):
                    stop = [False]
                    if main_process:
                        validate(loss, lr, tokens_seen / max(1e-9, time.monotonic() - window_started))
                        if cfg.patience and run.late_evals_without_gain >= cfg.patience:
                            stop = [True]
                            say(f"early stop: no better validation loss in {run.evals_without_gain} "
                                f"evaluations ({cfg.patience} of them in the last fifth of the schedule)")
                    if world > 1:
                        torch.distributed.broadcast_object_list(stop, src=0)
                    tokens_seen, window_started = 0, time.monotonic()
                    if stop[0]:
                        stop_reason = "early stop"
                if run.step % cfg.save_every == 0 or stop_reason:
                    save_state()
    finally:
        if progress is not None:
            progress.close()  # whatever is printed next starts on its own line
    if (cfg.dropout is None or cfg.weight_decay is None) and stop_reason != "interrupted":  # none was used
        cfg.dropout = 0.0 if cfg.dropout is None else cfg.dropout
        cfg.weight_decay = 0.0 if cfg.weight_decay is None else cfg.weight_decay
        if main_process:
            (out / "run.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    wall = time.monotonic() - session_started
    if main_process:
        if stop_reason == "interrupted":
            print(f"ensemble train: interrupted at step {run.step}; saved, continue with: "
                  f"ensemble train --resume {out}", file=sys.stderr, flush=True)
        else:
            for line in summary_lines(run, stop_reason, wall, session_tokens):
                print(line, flush=True)
            log.info("models in %s/best and %s/last", out, out)
    if world > 1:
        torch.distributed.destroy_process_group()
    return {**metrics, "best": run.best, "best_step": run.best_step, "step": run.step, "stop_reason": stop_reason,
            "signal": signals.received, "wall_s": wall, "tokens_per_s": session_tokens / max(wall, 1e-9)}


# ---------------------------------------------------------------------------- CLI


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train a model on a prepared corpus or a text file",
        description="Train a TokenRNN. Writes RUN_DIR/best and RUN_DIR/last (model folders that "
                    "`ensemble generate` and `ensemble serve --model` load), RUN_DIR/log.csv and "
                    "RUN_DIR/train_state.pt (for --resume). Run it under `torchrun --nproc-per-node N "
                    "-m ensemble train ...` for data-parallel training on several GPUs or processes.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    d = TrainConfig.__dataclass_fields__
    p.add_argument("--data", help="a folder written by `ensemble prepare`, or a text file with --codec text")
    p.add_argument("--out", help="the run folder to create")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="resume the run in RUN_DIR exactly where it was saved (after a crash, a kill or Ctrl-C)")
    p.add_argument("--codec", choices=["text", "gesture-classifier"],
                   help="text: train on a raw text file (character-level, like char-rnn); gesture-classifier: "
                        "a touch -> gesture classifier from a folder of touch + gesture logs")
    g = p.add_argument_group("model")
    g.add_argument("--size", default="m", choices=list(SIZES),
                   help="preset (layers x hidden, embedding): " + ", ".join(f"{k} = {l}x{h}, {e}" for k, (l, h, e) in SIZES.items()))
    g.add_argument("--cell", default="lstm", choices=list(CELLS), help="recurrent cell")
    g.add_argument("--layers", type=int, help="stacked recurrent layers, 1-3 (overrides --size)")
    g.add_argument("--hidden", type=int, help="hidden units per layer (overrides --size)")
    g.add_argument("--embedding", type=int,
                   help="token embedding size (default: the --size preset, or 2 sqrt(vocabulary) rounded up to 16 "
                        "if that is larger, at most --hidden)")
    g.add_argument("--tie-embeddings", action=BooleanOptionalAction, default=None,
                   help="the output layer shares the token embedding, which is then --hidden wide (default: "
                        "yes, unless --embedding asks for another width or --init-from's model is untied)")
    g.add_argument("--layer-norm", action="store_true",
                   help="layer-normalise the LSTM's gates and cell state (slower to train per token; "
                        "README \"Layer normalisation\" measures it)")
    g.add_argument("--dropout", type=float, default=SUPPRESS,
                   help="dropout between layers and before the output (default: by the epochs the budget allows: "
                        "0.2 from 3 epochs, else 0; with --max-time set after the first 60 steps)")
    g.add_argument("--init-from", metavar="MODEL", help="start from a trained model folder (fine-tuning); same codec needed")
    g.add_argument("--freeze-rnn", action="store_true", help="with --init-from: train only the output layer")
    g = p.add_argument_group("optimisation")
    g.add_argument("--seq-len", type=int, default=d["seq_len"].default, help="tokens per window (BPTT length)")
    g.add_argument("--batch", type=int, default=d["batch"].default, help="parallel streams per step (per process)")
    g.add_argument("--steps", type=int, default=SUPPRESS,
                   help="optimiser steps in all (default: 2000, or as many as --max-time allows)")
    g.add_argument("--max-time", type=float, help="seconds of training: the learning rate decays over them, then a "
                                                  "clean stop (final validation and save)")
    g.add_argument("--lr", type=float, default=SUPPRESS,
                   help=f"peak learning rate (AdamW) (default: {LR_AT_256:g} x sqrt(256 / hidden))")
    g.add_argument("--min-lr", type=float, default=SUPPRESS,
                   help="learning rate at the end of the cosine decay (default: lr / 10)")
    g.add_argument("--warmup", type=int, default=d["warmup"].default, help="steps of linear learning-rate warm-up")
    g.add_argument("--weight-decay", type=float, default=SUPPRESS,
                   help="AdamW weight decay (default: like --dropout, 0.1 or 0)")
    g.add_argument("--clip", type=float, default=d["clip"].default, help="gradient-norm clipping threshold")
    g.add_argument("--transpose", type=int, default=0, help="music: transpose each piece by up to +-N semitones")
    g.add_argument("--stretch", type=float, default=0.0, help="music: stretch time by up to +-this fraction (0.05 = 5%%)")
    g = p.add_argument_group("bookkeeping")
    g.add_argument("--eval-every", type=int, default=d["eval_every"].default, help="steps between validations")
    g.add_argument("--eval-tokens", type=int, default=d["eval_tokens"].default, help="validation tokens per evaluation, at most")
    g.add_argument("--save-every", type=int, default=d["save_every"].default, help="steps between resumable saves")
    g.add_argument("--patience", type=int, default=d["patience"].default,
                   help="early stopping after N validations without improvement in the last fifth of the "
                        "schedule (0: off); best/ keeps the best")
    g.add_argument("--val-fraction", type=float, default=d["val_fraction"].default,
                   help="text files: share held out for validation (by piece; a text too short for two pieces "
                        "holds out its end). 0: no validation, RUN/best is the last checkpoint (also for a "
                        "prepared corpus without validation pieces)")
    g.add_argument("--val-data", metavar="FILE_OR_CORPUS",
                   help="validate on this prepared corpus (same codec) or text file instead of a held-out "
                        "split of --data; all of --data then trains")
    g.add_argument("--seed", type=int, default=0, help="random seed (data order, initial weights, dropout)")
    g.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    p.set_defaults(func=run)


def run(args) -> int:
    if getattr(args, "codec", None) == "gesture-classifier":  # another model type: its own trainer
        from ensemble.classifier import train_from_args

        return train_from_args(args)
    if args.resume:
        saved = Path(args.resume) / "run.json"
        try:
            cfg = TrainConfig(**json.loads(saved.read_text()))
        except FileNotFoundError:
            raise TrainError(f"{args.resume}: not a training run (no run.json)") from None
        except (json.JSONDecodeError, TypeError) as exc:
            raise TrainError(f"{saved}: unreadable ({exc})") from None
        if args.max_time is not None:
            cfg.max_time = args.max_time  # the one setting a resumed run takes: more (or less) time
        if args.data or args.out:
            log.warning("--resume continues with the run's own settings (%s); --data/--out are ignored", saved)
        cfg.out = args.resume
        cfg.progress = not args.no_progress
    else:
        if not args.data or not args.out:
            raise TrainError("--data and --out are needed (or --resume RUN_DIR)")
        names = {f.name for f in fields(TrainConfig)}
        values = {k: v for k, v in vars(args).items() if k in names and v is not None}
        cfg = TrainConfig(**values)
        cfg.progress = not args.no_progress
    result = train(cfg, resume=bool(args.resume))
    if result["stop_reason"] == "interrupted":
        return 128 + int(result["signal"])  # the shell's convention: 130 for SIGINT, 143 for SIGTERM
    return 0
