"""`ensemble plot`: pictures of how training went, what the cells do, and what was played.

- ``plot loss RUN_DIR``: training and validation loss (nats/token) against steps, from
  the run's `log.csv`.
- ``plot activations --model DIR --prime ...``: the LSTM cell states (or hidden states
  of any cell) of one layer over a primed sequence, one row per unit, like Karpathy's
  "visualizing and understanding recurrent networks": units that count, that track
  quotes or bar lines, show up as stripes.
- ``plot roll FILE``: a piano roll of a MIDI file or of a server session log, the
  performers' notes and the machine's answers in different colours.

matplotlib is an optional extra (`pip install 'ensemble[plot]'`).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from ensemble.errors import UserError


def _pyplot():
    try:
        import matplotlib
    except ModuleNotFoundError:
        raise UserError("plotting needs matplotlib: pip install 'ensemble[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ---------------------------------------------------------------------------- loss


def read_log(run_dir) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    path = Path(run_dir) / "log.csv"
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        raise UserError(f"{run_dir}: no log.csv (is it a training run folder?)") from None
    curves = {}
    for split in ("train", "val"):
        points = [(int(r["step"]), float(r["loss_nats"])) for r in rows if r["split"] == split and r["loss_nats"]]
        if points:
            steps, loss = zip(*points)
            curves[split] = (np.array(steps), np.array(loss))
    if not curves:
        raise UserError(f"{path}: no loss rows yet")
    return curves


def plot_loss(run_dir, out) -> Path:
    plt = _pyplot()
    curves = read_log(run_dir)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for split, (steps, loss) in curves.items():
        ax.plot(steps, loss, marker="o" if split == "val" else None, ms=3,
                label={"train": "training", "val": "validation"}[split])
    if "val" in curves:
        best = int(np.argmin(curves["val"][1]))
        ax.annotate(f"best {curves['val'][1][best]:.3f}", (curves["val"][0][best], curves["val"][1][best]),
                    textcoords="offset points", xytext=(0, 10), ha="center")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per token)")
    ax.set_title(f"{Path(run_dir).name}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return Path(out)


# ---------------------------------------------------------------------------- activations


def trace_states(model, tokens: list[int], layer: int, which: str = "cell") -> np.ndarray:
    """(T, hidden): the chosen layer's state after each token, stepping the model."""
    import torch

    if not 0 <= layer < model.config.layers:
        raise UserError(f"--layer must be 0..{model.config.layers - 1}")
    if which == "cell" and model.config.cell != "lstm":
        which = "hidden"  # only an LSTM has cell states
    states, state = [], None
    with torch.no_grad():
        for t in tokens:
            _, state = model.step(torch.tensor([t]), state)
            tensor = state.c if which == "cell" else state.h
            states.append(tensor[layer, 0].numpy().copy())
    return np.stack(states)


def token_labels(codec, tokens: list[int]) -> list[str]:
    if codec.input_kind == "text":
        return [c if c.strip() else {"\n": "⏎", " ": "·"}.get(c, "?") for c in codec.decode(tokens)]
    describe = getattr(codec, "describe_token", None)
    if describe is not None:
        return [str(describe(t)) for t in tokens]
    return [str(t) for t in tokens]


def plot_activations(model_dir, prime: str, out, layer: int = -1, units: int = 32, which: str = "cell") -> Path:
    from ensemble import checkpoint
    from ensemble.generate import prime_tokens

    plt = _pyplot()
    ckpt = checkpoint.load(model_dir)
    tokens = prime_tokens(ckpt.codec, prime)
    if not tokens:
        raise UserError("--prime gave no tokens to trace")
    tokens = tokens[:200]
    layer = layer if layer >= 0 else ckpt.model.config.layers + layer
    states = trace_states(ckpt.model, tokens, layer, which)
    # the units that vary most are the ones worth looking at
    chosen = np.argsort(-states.std(axis=0))[:units]
    image = states[:, chosen].T
    limit = float(np.abs(image).max()) or 1.0
    width = max(8, min(24, len(tokens) * 0.12))
    fig, ax = plt.subplots(figsize=(width, 1 + 0.22 * len(chosen)))
    im = ax.imshow(image, aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
    labels = token_labels(ckpt.codec, tokens)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, fontsize=6, rotation=0 if ckpt.codec.input_kind == "text" else 90, family="monospace")
    ax.set_yticks(range(len(chosen)))
    ax.set_yticklabels([str(u) for u in chosen], fontsize=6)
    ax.set_ylabel("unit")
    kind = "cell state c" if which == "cell" and ckpt.model.config.cell == "lstm" else "hidden state h"
    ax.set_title(f"{ckpt.name}: layer {layer} {kind}, the {len(chosen)} most active units")
    fig.colorbar(im, ax=ax, fraction=0.02)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return Path(out)


# ---------------------------------------------------------------------------- piano roll


def notes_of(path) -> list[tuple[str, float, float, int, int]]:
    """(voice, start, end, pitch, velocity) from a MIDI file or a session log."""
    path = Path(path)
    if path.suffix.lower() in (".mid", ".midi"):
        from ensemble.codecs.midi_notes import notes_from_midi
        from ensemble.midifile import read_midi

        midi = read_midi(path)
        return [("notes", n.start, n.end, n.pitch, n.velocity) for n in notes_from_midi(midi)]
    from ensemble.session_log import notes_by_voice, read_session

    try:
        _, events = read_session(path)
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not a session log ({exc})") from None
    voices = notes_by_voice(events, lambda e: f"{e['performer']} ({'played' if e['dir'] == 'in' else 'answer'})")
    return [(voice, *n) for voice, found in voices.items() for n in found]


def plot_roll(path, out) -> Path:
    plt = _pyplot()
    notes = notes_of(path)
    if not notes:
        raise UserError(f"{path}: no notes to draw")
    voices = sorted({n[0] for n in notes})
    colours = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(12, 5))
    for i, voice in enumerate(voices):
        mine = [n for n in notes if n[0] == voice]
        for _, s, e, pitch, velocity in mine:
            ax.add_patch(plt.Rectangle((s, pitch - 0.4), max(e - s, 0.01), 0.8, color=colours(i % 10),
                                       alpha=0.35 + 0.65 * velocity / 127))
    pitches = [n[3] for n in notes]
    ax.set_ylim(min(pitches) - 2, max(pitches) + 2)
    ax.set_xlim(0, max(n[2] for n in notes) + 0.1)
    ax.set_xlabel("seconds")
    ax.set_ylabel("MIDI pitch")
    ax.set_title(Path(path).name)
    ax.grid(alpha=0.2)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours(i % 10)) for i in range(len(voices))]
    ax.legend(handles, voices, loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return Path(out)


# ---------------------------------------------------------------------------- CLI


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("plot", help="draw loss curves, LSTM activations or a piano roll (PNG)",
                              description="Draw pictures (PNG files, matplotlib).")
    sub = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    f = argparse.HelpFormatter
    loss = sub.add_parser("loss", help="training and validation loss of a run", formatter_class=f)
    loss.add_argument("run", help="a training run folder (with log.csv)")
    loss.add_argument("--out", help="PNG to write (default RUN/loss.png)")
    act = sub.add_parser("activations", help="cell states of one layer over a primed sequence", formatter_class=f)
    act.add_argument("--model", required=True, help="model folder or run folder")
    act.add_argument("--prime", required=True, help="text or ABC to feed; for MIDI models, a .mid file")
    act.add_argument("--layer", type=int, default=-1, help="layer to show (0 = first, -1 = last)")
    act.add_argument("--units", type=int, default=32, help="how many of the most active units to show")
    act.add_argument("--state", choices=["cell", "hidden"], default="cell", help="LSTM cell state c or hidden state h")
    act.add_argument("--out", default="activations.png", help="PNG to write")
    roll = sub.add_parser("roll", help="piano roll of a MIDI file or a session log", formatter_class=f)
    roll.add_argument("file", help="a .mid file or a recordings/session-*.jsonl log")
    roll.add_argument("--out", default="roll.png", help="PNG to write")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.what == "loss":
        out = plot_loss(args.run, args.out or Path(args.run) / "loss.png")
    elif args.what == "activations":
        out = plot_activations(args.model, args.prime, args.out, args.layer, args.units, args.state)
    else:
        out = plot_roll(args.file, args.out)
    print(f"wrote {out}")
    return 0
