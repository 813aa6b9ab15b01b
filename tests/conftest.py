"""Shared fixtures: tiny real models and corpora (no mocks), made once per session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

ENSEMBLE = [sys.executable, "-m", "ensemble"]
PERIOD = "the quick brown fox jumps over the lazy dog.\n"


@pytest.fixture(scope="session")
def periodic_text(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "periodic.txt"
    path.write_text(PERIOD * 300)
    return path


@pytest.fixture(scope="session")
def text_run(tmp_path_factory, periodic_text) -> Path:
    """A character model trained for a few hundred steps on a periodic text."""
    from ensemble.train import TrainConfig, train

    out = tmp_path_factory.mktemp("runs") / "periodic"
    cfg = TrainConfig(data=str(periodic_text), out=str(out), codec="text", size="xs", steps=300,
                      seq_len=32, batch=16, eval_every=100, save_every=100, progress=False)
    metrics = train(cfg)
    assert metrics["step"] == 300
    return out


@pytest.fixture(scope="session")
def ln_text_run(tmp_path_factory, periodic_text) -> Path:
    """The same text learned by a layer-normalised LSTM (--layer-norm), 2 layers."""
    from ensemble.train import TrainConfig, train

    out = tmp_path_factory.mktemp("runs") / "periodic-ln"
    cfg = TrainConfig(data=str(periodic_text), out=str(out), codec="text", size="xs", layers=2, layer_norm=True,
                      steps=200, seq_len=32, batch=8, eval_every=100, save_every=100, lr=2e-2, progress=False)
    assert train(cfg)["step"] == 200
    return out


def melody_pieces(codec, n_pieces=24, seed=0):
    """Simple real melodies (scales and arpeggios with rests), as notes-codec pieces."""
    import numpy as np

    from ensemble.codecs.midi_notes import Note
    from ensemble.codecs.notes import from_notes
    from ensemble.data import Piece

    rng = np.random.default_rng(seed)
    pieces = []
    for i in range(n_pieces):
        root = int(rng.integers(55, 67))
        shape = [0, 2, 4, 5, 7, 9, 11, 12] if i % 2 else [0, 4, 7, 12, 7, 4]
        notes, t = [], 0.0
        for rep in range(6):
            for step in shape:
                length = 0.25 if rep % 2 else 0.125
                notes.append(Note(t, t + length * 0.9, root + step, 80 + 10 * (rep % 3)))
                t += length
            t += 0.5
        pieces.append(Piece(f"melody{i}", np.array(codec.encode(from_notes(notes)))))
    return pieces


@pytest.fixture(scope="session")
def notes_model(tmp_path_factory) -> Path:
    """A small notes-codec LSTM trained for real on simple melodies (a few seconds)."""
    from ensemble.codecs.notes import NotesCodec
    from ensemble.data import write_prepared
    from ensemble.train import TrainConfig, train

    root = tmp_path_factory.mktemp("notes")
    codec = NotesCodec()
    write_prepared(root / "corpus", codec, melody_pieces(codec), val_fraction=0.2, seed=0)
    # untied, like the shipped notes models (the style and server tests' expectations were
    # set on one); tied models are tested on the text fixture and in test_train
    cfg = TrainConfig(data=str(root / "corpus"), out=str(root / "run"), size="xs", steps=80, seq_len=32,
                      batch=8, eval_every=80, save_every=80, progress=False, tie_embeddings=False)
    train(cfg)
    return root / "run" / "best"


@pytest.fixture(scope="session")
def touch_model(tmp_path_factory) -> Path:
    """A small touch-codec LSTM trained for real on iPad-like strokes (a second or two)."""
    import numpy as np

    from ensemble.codecs.touch import TouchCodec, TouchEvent
    from ensemble.data import Piece, write_prepared
    from ensemble.train import TrainConfig, train

    root = tmp_path_factory.mktemp("touch")
    codec = TouchCodec()
    rng = np.random.default_rng(1)
    pieces = []
    for i in range(12):  # strokes: points 20 ms apart along a line, then a pause
        events = []
        for stroke in range(6):
            x0, y0 = rng.random(2)
            events += [TouchEvent(0.8 if k == 0 else 0.02, float(np.clip(x0 + 0.03 * k, 0, 1)), float(y0))
                       for k in range(8)]
        pieces.append(Piece(f"touches{i}", np.array(codec.encode(events))))
    write_prepared(root / "corpus", codec, pieces, val_fraction=0.2)
    train(TrainConfig(data=str(root / "corpus"), out=str(root / "run"), size="xs", steps=30, seq_len=16,
                      batch=4, eval_every=30, progress=False))
    return root / "run" / "best"
