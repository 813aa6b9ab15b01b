"""Performer states saved across restarts: one .npz written atomically (temp + fsync + rename).

A snapshot holds, per performer, the hidden state of their slot, the model's pending
prediction (logits), their mode, settings, reply address, sequence number and the
state of their random generator, so after `ensemble serve --restore` their next
prediction is the one they would have had without the restart. Loaded with
`allow_pickle=False`: a snapshot cannot run code.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ensemble.errors import UserError
from ensemble.files import atomic_write

VERSION = 1


class SnapshotError(UserError):
    pass


def save(path, model_name: str, performers: list[dict], arrays: list[dict[str, np.ndarray]]) -> None:
    """performers: JSON-able dicts; arrays: per performer {"h": ..., "c": ..., "logits": ...}."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"version": VERSION, "model": model_name, "performers": performers}
    content = {"meta": np.array(json.dumps(meta))}
    for i, a in enumerate(arrays):
        for key, value in a.items():
            if value is not None:
                content[f"{key}_{i}"] = np.asarray(value)
    atomic_write(path, lambda f: np.savez(f, **content))


def load(path) -> tuple[dict, list[dict[str, np.ndarray]]]:
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            arrays = []
            for i in range(len(meta["performers"])):
                arrays.append({k: z[f"{k}_{i}"] for k in ("h", "c", "logits") if f"{k}_{i}" in z})
    except FileNotFoundError:
        raise SnapshotError(f"{path}: no snapshot to restore") from None
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
        raise SnapshotError(f"{path}: unreadable snapshot ({exc})") from None
    if meta.get("version") != VERSION:
        raise SnapshotError(f"{path}: snapshot version {meta.get('version')!r}, this ensemble reads {VERSION}")
    return meta, arrays
