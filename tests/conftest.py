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
