"""The trainer on real (tiny) data: it learns, resumes exactly, and runs data-parallel."""

import json
import math
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import ENSEMBLE, PERIOD
from ensemble import checkpoint
from ensemble.codecs.text import TextCodec
from ensemble.data import Corpus, Piece, load_prepared, text_pieces, write_prepared
from ensemble.errors import UserError
from ensemble.generate import generate
from ensemble.sampling import SamplingSettings
from ensemble.train import (StopSignals, StreamBatcher, TrainConfig, TrainError, choose_defaults, default_lr, default_regularisation,
                            planned_epochs,
                            learning_rate, unigram_entropy, train)


def test_periodic_text_is_learned(text_run):
    ckpt = checkpoint.load(text_run)
    val = ckpt.meta["validation"]["loss_nats"]
    codec = ckpt.codec
    baseline = ckpt.meta["data"]["unigram_entropy_nats"]
    assert baseline > 2.5
    assert val < baseline / 10, (val, baseline)
    prime = PERIOD[:10]
    out = generate(ckpt, codec.encode(prime), 3 * len(PERIOD), SamplingSettings(greedy=True))
    text = prime + codec.decode(out)
    assert text.startswith((PERIOD * 4)[:len(text)][:100])
    assert text == (PERIOD * 4)[:len(text)]


def test_run_folder_holds_models_log_and_state(text_run):
    assert (text_run / "best" / "config.json").exists()
    assert (text_run / "last" / "weights.safetensors").exists()
    config = json.loads((text_run / "best" / "config.json").read_text())
    assert config["codec"]["name"] == "text" and "validation" in config
    rows = (text_run / "log.csv").read_text().splitlines()
    assert rows[0].startswith("step,split,loss_nats,loss_bits,perplexity,accuracy,lr,tokens_per_s")
    assert len(rows) == 1 + 2 * 3  # train and val rows at steps 100, 200, 300
    card = (text_run / "best" / "README.md").read_text()
    assert "nats per token" in card


def test_batcher_windows_stay_in_one_piece_and_resume():
    pieces = [Piece(f"p{i}", np.arange(100 * i, 100 * i + n)) for i, n in enumerate([5, 17, 40, 9, 23])]
    a = StreamBatcher(pieces, batch=3, seq_len=4, seed=1)
    seen = []
    for _ in range(12):
        x, y, keep = a.next_batch()
        for b in range(3):
            valid = y[b] != -100
            xs, ys = x[b][valid], y[b][valid]
            assert np.all(ys == xs + 1), "a window crossed a piece boundary"
            assert len(set(xs // 100)) <= 1
        seen.append((x.copy(), y.copy(), keep.copy()))
    b = StreamBatcher(pieces, batch=3, seq_len=4, seed=1)
    for _ in range(6):
        b.next_batch()
    c = StreamBatcher(pieces, batch=3, seq_len=4, seed=999)
    c.load_state_dict(json.loads(json.dumps(b.state_dict())))
    for x, y, keep in seen[6:]:
        x2, y2, keep2 = c.next_batch()
        assert np.array_equal(x, x2) and np.array_equal(y, y2) and np.array_equal(keep, keep2)


def test_one_pass_batcher_covers_every_token_once():
    pieces = [Piece(f"p{i}", np.arange(n)) for i, n in enumerate([5, 17, 40, 9, 23])]
    batcher = StreamBatcher(pieces, batch=2, seq_len=8, shuffle=False)
    targets = 0
    while True:
        x, y, keep = batcher.next_batch()
        if batcher.exhausted:
            break
        targets += int((y != -100).sum())
    assert targets == sum(len(p.tokens) - 1 for p in pieces)


def _tiny_prepared(tmp_path):
    """A small prepared text corpus with several pieces (the trainer's main input)."""
    from ensemble.codecs.text import TextCodec
    from ensemble.data import text_pieces

    text = "".join(f"{w} {w[::-1]} {len(w)}\n" for w in ["ab", "cde", "fghi", "jk", "lmnop"] * 60)
    codec = TextCodec.from_corpus(text)
    write_prepared(tmp_path / "corpus", codec, text_pieces(text, codec, piece_chars=300), val_fraction=0.2, seed=3)
    return tmp_path / "corpus"


def _weights(folder):
    return load_file(str(folder / "weights.safetensors"))


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
    corpus = _tiny_prepared(tmp_path)
    common = ["train", "--data", str(corpus), "--size", "xs", "--cell", "gru", "--dropout", "0.1",
              "--steps", "40", "--seq-len", "16", "--batch", "4", "--eval-every", "10", "--save-every", "20",
              "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight = tmp_path / "straight"
    subprocess.run(ENSEMBLE + common + ["--out", str(straight)], check=True, env=env, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(ENSEMBLE + ["--log-level", "debug"] + common + ["--out", str(killed)],
                            env=env, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:  # wait for the mid-run save, then pull the plug
        if "saved resumable state at step 20" in line:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    state = torch.load(killed / "train_state.pt", weights_only=True)
    assert state["step"] == 20

    subprocess.run(ENSEMBLE + ["train", "--resume", str(killed)], check=True, env=env, capture_output=True)
    a, b = _weights(straight / "last"), _weights(killed / "last")
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key
    log_a = (straight / "log.csv").read_text().splitlines()
    log_b = (killed / "log.csv").read_text().splitlines()
    assert [r.split(",")[:4] for r in log_a] == [r.split(",")[:4] for r in log_b]


def test_two_process_data_parallel_learns_like_one_process(tmp_path):
    corpus = _tiny_prepared(tmp_path)
    args = ["train", "--data", str(corpus), "--size", "xs", "--steps", "120", "--seq-len", "16",
            "--eval-every", "60", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ddp = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "ensemble"]
    result = subprocess.run(ddp + args + ["--batch", "4", "--out", str(tmp_path / "ddp")],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "x 2 processes" in result.stderr
    # the same global batch (2 x 4 streams) in one process
    subprocess.run(ENSEMBLE + args + ["--batch", "8", "--out", str(tmp_path / "one")], check=True, env=env,
                   capture_output=True)

    def val_losses(run):
        rows = [r.split(",") for r in (run / "log.csv").read_text().splitlines()[1:]]
        return [float(r[2]) for r in rows if r[1] == "val"]

    two, one = val_losses(tmp_path / "ddp"), val_losses(tmp_path / "one")
    baseline = unigram_entropy(load_prepared(corpus).train)
    assert len(two) == 2 and two[1] < two[0] < baseline
    assert two[1] < 0.8 * baseline
    assert abs(two[1] - one[1]) < 0.15 * one[1], (two, one)


def test_bad_inputs_fail_cleanly_and_overwrite_nothing(tmp_path, text_run, periodic_text):
    before = (text_run / "train_state.pt").stat().st_mtime_ns
    with pytest.raises(TrainError, match="already holds a training run"):
        train(TrainConfig(data=str(periodic_text), out=str(text_run), codec="text", progress=False))
    assert (text_run / "train_state.pt").stat().st_mtime_ns == before
    with pytest.raises(TrainError, match="not a prepared corpus"):
        train(TrainConfig(data=str(tmp_path), out=str(tmp_path / "x"), progress=False))
    with pytest.raises(TrainError, match="CUDA is not available|cuda"):
        if torch.cuda.is_available():
            raise TrainError("cuda present: skip")
        train(TrainConfig(data=str(periodic_text), out=str(tmp_path / "y"), codec="text", device="cuda",
                          progress=False))
    assert not (tmp_path / "y").exists()


def test_unigram_entropy():
    pieces = [Piece("a", np.array([0, 1, 0, 1]))]
    assert math.isclose(unigram_entropy(pieces), math.log(2))


def test_fine_tuning_with_frozen_recurrent_layers(tmp_path, text_run, periodic_text):
    base = checkpoint.load(text_run)
    out = tmp_path / "tuned"
    train(TrainConfig(data=str(periodic_text), out=str(out), codec="text", init_from=str(text_run / "best"),
                      freeze_rnn=True, steps=20, seq_len=16, batch=4, eval_every=20, lr=1e-2, progress=False))
    tuned = _weights(out / "last")
    before = base.model.state_dict()
    for key, value in tuned.items():
        if key.startswith(("rnn.", "embed.")):
            assert torch.equal(value, before[key]), key  # frozen
    assert not torch.equal(tuned["head.weight"], before["head.weight"])  # the output layer learned


def test_early_stopping_when_validation_stops_improving(tmp_path, periodic_text, capsys):
    # a learning rate of ~0 cannot improve on the first validation; patience 2 counts only
    # validations from 80 % of the 100-step schedule on (80, 90), so it stops at 90, not
    # at 30 while the learning rate has not decayed yet
    result = train(TrainConfig(data=str(periodic_text), out=str(tmp_path / "run"), codec="text", size="xs",
                               steps=100, warmup=0, seq_len=16, batch=4, eval_every=10, lr=1e-12, min_lr=1e-12,
                               patience=2, progress=False))
    assert result["step"] == 90 and result["best_step"] == 10 and result["stop_reason"] == "early stop"
    summary = capsys.readouterr().out.splitlines()
    assert summary[0].startswith(f"best validation loss {result['best']:.4f} nats/token")
    assert "at step 10; stopped at step 90 (early stop)" in summary[0]
    assert "in the last 8 validation(s), since step 10" in summary[2]
    assert summary[1].startswith("wall time ") and "training tokens/s" in summary[1]
    assert summary[2].startswith("not improving")
    assert checkpoint.load(tmp_path / "run" / "best").meta["validation"]["step"] == 10  # the best is kept


def test_learning_rate_decays_to_its_minimum_exactly_at_the_time_budget():
    cfg = TrainConfig(data="", out="", steps=None, max_time=100.0, lr=1e-2, min_lr=1e-3, warmup=10)
    assert learning_rate(0, 0.0, cfg) == pytest.approx(1e-3)  # warm-up: 1/10 of the peak
    assert learning_rate(10, 0.0, cfg) == pytest.approx(1e-2)
    assert learning_rate(10_000, 50.0, cfg) == pytest.approx(5.5e-3)  # halfway in time, whatever the step
    assert learning_rate(10_000, 100.0, cfg) == pytest.approx(1e-3)
    assert learning_rate(10_000, 150.0, cfg) == pytest.approx(1e-3)
    both = TrainConfig(data="", out="", steps=110, max_time=100.0, lr=1e-2, min_lr=1e-3, warmup=10)
    assert learning_rate(60, 10.0, both) == pytest.approx(5.5e-3)  # the steps run out first
    assert learning_rate(20, 50.0, both) == pytest.approx(5.5e-3)  # the time runs out first


def test_a_time_budget_without_steps_runs_the_whole_schedule(tmp_path, periodic_text, capsys, caplog):
    caplog.set_level("INFO", logger="ensemble.train")
    result = train(TrainConfig(data=str(periodic_text), out=str(tmp_path / "run"), codec="text", size="xs",
                               max_time=2.0, seq_len=16, batch=4, eval_every=1_000_000, progress=False))
    assert result["stop_reason"] == "max time" and result["step"] > 50
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["steps"] is None and run["lr"] == 2e-2 and run["min_lr"] == pytest.approx(2e-3)
    rows = (tmp_path / "run" / "log.csv").read_text().splitlines()
    last_lr = float(rows[-1].split(",")[6])
    assert last_lr < 2e-3 + 0.05 * (2e-2 - 2e-3), rows[-1]  # decayed to (nearly) the minimum at the budget
    out = capsys.readouterr().out
    assert "still improving" in out
    # its speed measured, it chose regularisation for the epochs it would see, and trained with it
    chose = re.search(r"step 60: [\d,]+ tokens/s with validation; chose dropout ([\d.]+) and weight decay ([\d.]+) \(([\d.]+) epochs", caplog.text)
    assert chose, caplog.text
    dropout, weight_decay, epochs = (float(x) for x in chose.groups())
    assert epochs > 1 and (dropout, weight_decay) == default_regularisation(epochs)
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert (run["dropout"], run["weight_decay"]) == (dropout, weight_decay)
    assert json.loads((tmp_path / "run" / "best" / "config.json").read_text())["model"]["dropout"] == dropout


def test_defaults_follow_model_size_and_the_epochs_planned():
    codec = TextCodec("abcdefgh")
    small = Corpus(codec, [Piece("a", np.zeros(1000, np.int64))], [Piece("b", np.zeros(10, np.int64))])
    cfg = TrainConfig(data="", out="", size="s")
    chosen = choose_defaults(cfg, small, None)
    assert cfg.lr == pytest.approx(1.4e-2) and cfg.min_lr == pytest.approx(1.4e-3)  # 1e-2 * sqrt(256 / 128)
    assert [default_lr(h) for h in (64, 256, 512, 1024)] == [2e-2, 1e-2, 7.1e-3, 5e-3]
    assert (cfg.dropout, cfg.weight_decay, cfg.steps) == (0.2, 0.1, 2000)  # 2000 x 32 x 64 tokens: 4096 epochs
    assert any("dropout 0.2" in c and "epochs planned" in c for c in chosen)
    four_epochs = Corpus(codec, [Piece("a", np.zeros(2000 * 32 * 64 // 4, np.int64))], small.val)
    cfg = TrainConfig(data="", out="", size="s")
    choose_defaults(cfg, four_epochs, None)
    assert (cfg.dropout, cfg.weight_decay) == (0.2, 0.1)
    cfg = TrainConfig(data="", out="", size="s", steps=2000, batch=8)  # a quarter of that: one epoch
    choose_defaults(cfg, four_epochs, None)
    assert (cfg.dropout, cfg.weight_decay) == (0.0, 0.0)
    # a time budget: decided in the loop, once the speed is measured
    cfg = TrainConfig(data="", out="", size="s", max_time=60.0)
    chosen = choose_defaults(cfg, four_epochs, None)
    assert (cfg.dropout, cfg.weight_decay, cfg.steps) == (None, None, None)
    assert any("after step" in c for c in chosen)
    assert planned_epochs(cfg, 64_000, world=1, step=20, elapsed=10.0, tokens_per_s=1000.0) == pytest.approx(
        (20 * 32 * 64 + 50_000) / 64_000)
    mine = TrainConfig(data="", out="", size="m", lr=1e-3, dropout=0.3, weight_decay=0.0, max_time=60.0,
                       tie_embeddings=False)
    assert choose_defaults(mine, small, None) == []
    tied = TrainConfig(data="", out="", size="m", lr=1e-3, dropout=0.3, weight_decay=0.0, max_time=60.0)
    assert choose_defaults(tied, small, None) == ["tied embeddings"] and tied.model_shape() == (2, 256, 256)
    wide = TrainConfig(data="", out="", size="m", embedding=64)  # a width of its own: untied
    choose_defaults(wide, small, None)
    assert wide.tie_embeddings is False and wide.model_shape() == (2, 256, 64)
    assert (mine.lr, mine.min_lr, mine.dropout, mine.weight_decay) == (1e-3, 1e-4, 0.3, 0.0)
    assert mine.embedding is None  # 9 tokens: the preset's 64 stays


def test_a_large_vocabulary_gets_a_wider_embedding():
    notes = Corpus(TextCodec([chr(0x100 + i) for i in range(3659)]), [Piece("a", np.zeros(10, np.int64))] * 2,
                   [Piece("b", np.zeros(10, np.int64))])
    assert notes.codec.vocab_size == 3660  # as many as the notes codec's tokens
    cfg = TrainConfig(data="", out="", size="s", tie_embeddings=False)  # (tied, the embedding is --hidden wide)
    assert any("embedding 128" in c for c in choose_defaults(cfg, notes, None))
    assert cfg.model_shape() == (2, 128, 128)  # 2 sqrt(3660) = 121, rounded up to 16; at most hidden
    cfg = TrainConfig(data="", out="", size="xs", tie_embeddings=False)
    choose_defaults(cfg, notes, None)
    assert cfg.model_shape() == (1, 64, 64)
    cfg = TrainConfig(data="", out="", size="s", embedding=32)
    choose_defaults(cfg, notes, None)
    assert cfg.model_shape() == (2, 128, 32)  # what the user says wins


def test_val_data_validates_on_another_corpus(tmp_path):
    corpus = _tiny_prepared(tmp_path)
    whole = load_prepared(corpus)
    held_text = "".join(f"{w} {w[::-1]} {len(w)}\n" for w in ["edc", "ba", "ponml"] * 20)
    write_prepared(tmp_path / "held", whole.codec, [Piece("held", np.array(whole.codec.encode(held_text)))],
                   val_fraction=0.0)
    out = tmp_path / "run"
    result = train(TrainConfig(data=str(corpus), out=str(out), val_data=str(tmp_path / "held"), size="xs",
                               steps=20, seq_len=16, batch=4, eval_every=20, progress=False))
    assert result["tokens"] == len(held_text) - 1  # every target of the held-out corpus, nothing else
    data = checkpoint.load(out / "best").meta["data"]
    assert data["val_data"] == str(tmp_path / "held")
    assert data["train_tokens"] == whole.train_tokens + whole.val_tokens  # all of --data trains

    other = tmp_path / "other"
    write_prepared(other, TextCodec("xyz"), [Piece("x", np.array([1, 2, 3, 1, 2]))] * 2, val_fraction=0.5)
    with pytest.raises(TrainError, match="vocabularies must match"):
        train(TrainConfig(data=str(corpus), out=str(tmp_path / "r2"), val_data=str(other), progress=False))
    with pytest.raises(UserError, match="no such file or folder: .*helt"):
        train(TrainConfig(data=str(corpus), out=str(tmp_path / "r2"), val_data=str(tmp_path / "helt"),
                          progress=False))
    assert not (tmp_path / "r2").exists()


def test_val_data_text_file_joins_the_vocabulary(tmp_path, periodic_text):
    held = tmp_path / "held.txt"
    held.write_text("the lazy dog jumps over the quick brown fox!\n" * 20)  # "!" is not in the training text
    out = tmp_path / "run"
    result = train(TrainConfig(data=str(periodic_text), codec="text", out=str(out), val_data=str(held), size="xs",
                               steps=10, seq_len=16, batch=4, eval_every=10, progress=False))
    codec = checkpoint.load(out / "best").codec
    assert result["tokens"] == sum(len(p.tokens) - 1 for p in text_pieces(held.read_text(), codec))
    assert "!" in codec.chars and not codec.unknown_in(held.read_text())


def _until(stream, text):
    """Read lines until one contains `text`; everything read, for the assertion message."""
    seen = []
    for line in stream:
        seen.append(line)
        if text in line:
            return seen
    raise AssertionError(f"never saw {text!r}:\n{''.join(seen)}")


def test_ctrl_c_saves_says_how_to_resume_and_resume_matches_uninterrupted_run(tmp_path):
    corpus = _tiny_prepared(tmp_path)
    common = ["train", "--data", str(corpus), "--size", "xs", "--steps", "300", "--seq-len", "16", "--batch", "4",
              "--eval-every", "100", "--save-every", "20"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight = tmp_path / "straight"
    subprocess.run(ENSEMBLE + common + ["--no-progress", "--out", str(straight)], check=True, env=env,
                   capture_output=True)

    stopped = tmp_path / "stopped"  # with the progress bar on: the message must not be glued to it
    proc = subprocess.Popen(ENSEMBLE + ["--log-level", "debug"] + common + ["--out", str(stopped)],
                            env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    _until(proc.stderr, "saved resumable state at step 20")  # the loop is running: press Ctrl-C
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    assert proc.wait() == 130, rest
    step = torch.load(stopped / "train_state.pt", weights_only=True)["step"]
    assert 20 < step < 300
    hint = f"ensemble train: interrupted at step {step}; saved, continue with: ensemble train --resume {stopped}\n"
    assert "\n" + hint in rest, rest  # on a line of its own
    assert "Traceback" not in rest

    resumed = subprocess.run(ENSEMBLE + ["train", "--resume", str(stopped), "--no-progress"], check=True, env=env,
                             capture_output=True, text=True)
    assert "stopped at step 300 (steps)" in resumed.stdout
    a, b = _weights(straight / "last"), _weights(stopped / "last")
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key
    log_a = (straight / "log.csv").read_text().splitlines()
    log_b = (stopped / "log.csv").read_text().splitlines()
    assert [r.split(",")[:4] for r in log_a] == [r.split(",")[:4] for r in log_b]

    again = subprocess.run(ENSEMBLE + ["train", "--resume", str(stopped)], env=env, capture_output=True, text=True)
    assert again.returncode == 1 and again.stderr.strip().endswith("the run is finished (300 of 300 steps)")


def test_sigterm_is_taken_like_ctrl_c_and_a_second_signal_stops_at_once():
    before = signal.getsignal(signal.SIGTERM)
    with StopSignals() as signals:
        os.kill(os.getpid(), signal.SIGTERM)
        assert signals.received == signal.SIGTERM  # noted; the loop saves and stops after its step
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is before


def test_model_card_records_the_real_shape_and_no_machine_paths(tmp_path, text_run, periodic_text):
    # a fine-tuned model has its --init-from's shape (here xs), whatever --size said (default m),
    # and its card names no absolute path of the machine it was trained on
    out = tmp_path / "tuned"
    train(TrainConfig(data=str(periodic_text), out=str(out), codec="text", init_from=str(text_run / "best"),
                      steps=2, seq_len=16, batch=4, eval_every=2, progress=False))
    config = json.loads((out / "best" / "config.json").read_text())
    settings = config["training"]
    assert (settings["size"], settings["layers"], settings["hidden"], settings["embedding"]) == ("xs", 1, 64, 64)
    assert settings["tie_embeddings"] is True  # the default, and the --init-from model's
    assert settings["init_from"] == f"{text_run.name}/best"
    assert settings["data"] == periodic_text.name and settings["out"] == out.name
    card = (out / "best" / "README.md").read_text()
    for text in (json.dumps(config), card):
        assert str(tmp_path) not in text and str(text_run.parent) not in text and str(periodic_text) not in text
    assert "- size: xs" in card and "--init-from periodic/best" in card


def test_portable_paths():
    assert checkpoint.portable_path("runs/x/best") == "runs/x/best"
    assert checkpoint.portable_path("/somewhere/else/models/folk-notes") == "folk-notes"
    assert checkpoint.portable_path(os.path.join(os.getcwd(), "data", "folk")) == os.path.join("data", "folk")
    summary = checkpoint.portable_data({"corpus": "/home/me/data/x", "sources": ["/home/me/midi", "music21:folk"],
                                        "description": "notes tokens of /home/me/midi, music21:folk"})
    assert summary == {"corpus": "x", "sources": ["midi", "music21:folk"],
                       "description": "notes tokens of midi, music21:folk"}


def test_a_typo_in_data_says_no_such_file_and_the_closest_name(tmp_path, capsys, monkeypatch):
    from ensemble.cli import main

    monkeypatch.chdir(tmp_path)  # relative paths, as a user types them
    (tmp_path / "data" / "oneills-chars").mkdir(parents=True)
    (tmp_path / "data" / "folk-abc").mkdir()
    assert main(["train", "--data", "data/oneills-char", "--out", "runs/x", "--no-progress"]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        "ensemble train: error: no such file or folder: data/oneills-char (did you mean data/oneills-chars?)"]
    assert main(["train", "--codec", "text", "--data", "data/nothing-like-it", "--out", "runs/x"]) == 1
    assert capsys.readouterr().err.strip() == "ensemble train: error: no such file or folder: data/nothing-like-it"
    assert main(["train", "--data", "dta/oneills-chars", "--out", "runs/x"]) == 1
    assert "no such file or folder: dta/oneills-chars (there is no folder dta)" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


SMALL_TEXT = "the cat sat on the mat. the end\n"  # 32 bytes: one piece of text


def test_a_small_text_file_trains_holding_out_its_end(tmp_path, caplog):
    path = tmp_path / "small.txt"
    path.write_text(SMALL_TEXT)
    assert len(path.read_bytes()) == 32
    caplog.set_level("INFO")
    result = train(TrainConfig(data=str(path), out=str(tmp_path / "run"), codec="text", size="xs", steps=4,
                               seq_len=16, batch=2, eval_every=2, progress=False))
    assert result["step"] == 4 and math.isfinite(result["best"])
    assert "its last 3 tokens are held out for validation (split by position" in caplog.text
    config = json.loads((tmp_path / "run" / "best" / "config.json").read_text())
    assert (config["data"]["train_tokens"], config["data"]["val_tokens"]) == (29, 3)


def test_val_fraction_0_trains_without_validation_and_keeps_the_last_as_best(tmp_path, caplog):
    path = tmp_path / "small.txt"
    path.write_text(SMALL_TEXT)
    caplog.set_level("INFO")
    out = tmp_path / "run"
    result = train(TrainConfig(data=str(path), out=str(out), codec="text", size="xs", steps=6, seq_len=16,
                               batch=2, eval_every=2, val_fraction=0, progress=False))
    assert result["step"] == 6
    assert "no validation (--val-fraction 0)" in caplog.text and "step 6: train" in caplog.text
    assert _weights(out / "best").keys() == _weights(out / "last").keys()
    assert all(torch.equal(v, _weights(out / "last")[k]) for k, v in _weights(out / "best").items())
    assert ",val," not in (out / "log.csv").read_text()
    config = json.loads((out / "best" / "config.json").read_text())
    assert config["data"]["val_pieces"] == 0 and "no validation" in config["validation"]["note"]


def test_too_little_to_hold_out_says_what_to_do():
    from ensemble.codecs.text import TextCodec
    from ensemble.data import DataError, make_corpus

    codec = TextCodec.from_corpus("abc")
    with pytest.raises(DataError, match="only 3 tokens, too few to hold any out.*--val-fraction 0"):
        make_corpus(codec, [Piece("tiny", np.array([1, 2, 3]))], val_fraction=0.1)
    corpus = make_corpus(codec, [Piece("tiny", np.array([1, 2, 3]))], val_fraction=0)
    assert len(corpus.train) == 1 and corpus.val == []


def test_prepared_corpus_without_validation_pieces_says_what_to_do(tmp_path):
    from ensemble.codecs.text import TextCodec

    codec = TextCodec.from_corpus("abcdef")
    write_prepared(tmp_path / "corpus", codec, [Piece(f"p{i}", np.arange(1, 7)) for i in range(3)], val_fraction=0)
    with pytest.raises(TrainError, match="no validation pieces.*or train with --val-fraction 0"):
        train(TrainConfig(data=str(tmp_path / "corpus"), out=str(tmp_path / "run"), progress=False))
    result = train(TrainConfig(data=str(tmp_path / "corpus"), out=str(tmp_path / "run"), size="xs", steps=2,
                               seq_len=4, batch=2, eval_every=2, val_fraction=0, progress=False))
    assert result["step"] == 2 and (tmp_path / "run" / "best" / "config.json").exists()


def test_tied_embeddings_train_save_and_serve(tmp_path, periodic_text):
    """--tie-embeddings: one matrix in and out, learned as one (not two copies drifting
    apart), saved as two arrays the live engine reads like any model's."""
    from ensemble.checkpoint import load_live
    from ensemble.engine import make_engine

    out = tmp_path / "tied"
    train(TrainConfig(data=str(periodic_text), out=str(out), codec="text", tie_embeddings=True, size="xs",
                      hidden=48, steps=300, seq_len=32, batch=8, eval_every=100, lr=2e-2, progress=False))
    ckpt = checkpoint.load(out / "best")
    model = ckpt.model
    assert model.config.tie and model.config.embedding == 48
    assert model.head.weight is model.embed.weight  # tied again after loading
    saved = _weights(out / "best")
    assert torch.equal(saved["head.weight"], saved["embed.weight"])
    assert ckpt.meta["validation"]["loss_nats"] < ckpt.meta["data"]["unigram_entropy_nats"] / 4
    from dataclasses import replace

    from ensemble.model import TokenRNN
    untied = TokenRNN.from_config(replace(model.config, tie=False))
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(model) == count(untied) - ckpt.codec.vocab_size * 48  # one vocab x hidden matrix less
    live = make_engine(load_live(out / "best").model, "numpy", 2)
    ref = make_engine(model, "torch", 2)
    a, b = live.alloc_slot(), ref.alloc_slot()
    for token in ckpt.codec.encode(PERIOD[:20]):
        np.testing.assert_allclose(live.step_one(a, token), ref.step_one(b, token), atol=1e-5)
    with pytest.raises(TrainError, match="embedding == hidden"):
        train(TrainConfig(data=str(periodic_text), out=str(tmp_path / "bad"), codec="text", tie_embeddings=True,
                          hidden=48, embedding=32, steps=1, progress=False))
    assert not (tmp_path / "bad" / "best").exists()


def test_layer_norm_trains_saves_and_serves(ln_text_run, periodic_text, tmp_path):
    """--layer-norm: a layer-normalised LSTM learns, its folder says so (config, card) and
    the live engine steps it as the torch model does."""
    from ensemble.checkpoint import load_live
    from ensemble.engine import make_engine
    from ensemble.model import LayerNormLSTM

    ckpt = checkpoint.load(ln_text_run / "best")
    model = ckpt.model
    assert model.config.layer_norm and isinstance(model.rnn, LayerNormLSTM) and model.config.layers == 2
    assert ckpt.meta["validation"]["loss_nats"] < ckpt.meta["data"]["unigram_entropy_nats"] / 4
    assert json.loads((ln_text_run / "best" / "config.json").read_text())["model"]["layer_norm"] is True
    assert "LSTM (layer-normalised)" in (ln_text_run / "best" / "README.md").read_text()
    gains = model.rnn.ln_gates_weight_l0.detach()
    assert not torch.allclose(gains, torch.ones_like(gains))  # the gains learned too
    live = make_engine(load_live(ln_text_run / "best").model, "numpy", 2)
    ref = make_engine(model, "torch", 2)
    a, b = live.alloc_slot(), ref.alloc_slot()
    for token in ckpt.codec.encode(PERIOD[:20]):
        np.testing.assert_allclose(live.step_one(a, token), ref.step_one(b, token), atol=5e-5)
    r = subprocess.run(ENSEMBLE + ["train", "--data", str(periodic_text), "--codec", "text", "--out",
                                   str(tmp_path / "bad"), "--cell", "gru", "--layer-norm", "--steps", "1"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "--layer-norm is built for the lstm cell only" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "bad" / "best").exists()


def test_layer_norm_gains_are_never_decayed():
    from ensemble.model import TokenRNN
    from ensemble.train import apply_regularisation, parameter_groups

    model = TokenRNN(20, "lstm", 2, 16, 16, tie=True, layer_norm=True)
    optimizer = torch.optim.AdamW(parameter_groups(model, 0.0), lr=1e-2)
    apply_regularisation(model, optimizer, 0.2, 0.1)
    decayed, kept = optimizer.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert decayed["weight_decay"] == 0.1 and kept["weight_decay"] == 0.0
    assert sorted(names[id(p)] for p in kept["params"]) == sorted(n for n in names.values() if ".ln_" in n)
    assert len(kept["params"]) == 8 and "rnn.weight_hh_l0" in {names[id(p)] for p in decayed["params"]}
    assert len(parameter_groups(TokenRNN(20, "lstm", 2, 16, 16), 0.1)) == 1  # plain models: as before
