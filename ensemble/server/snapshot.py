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
    """The snapshot's metadata and arrays, or SnapshotError in one line (a file cut short,
    empty, not a snapshot at all, or holding values of the wrong kind)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if not isinstance(meta, dict) or not isinstance(meta.get("performers"), list):
                raise ValueError("no performer list in its metadata")
            arrays = []
            for i in range(len(meta["performers"])):
                arrays.append({k: z[f"{k}_{i}"] for k in ("h", "c", "logits") if f"{k}_{i}" in z})
    except FileNotFoundError:
        raise SnapshotError(f"{path}: no snapshot to restore") from None
    except EOFError:
        raise SnapshotError(f"{path}: unreadable snapshot (the file is empty)") from None
    except Exception as exc:  # BadZipFile, OSError, ValueError, KeyError, JSON errors: all one line
        raise SnapshotError(f"{path}: unreadable snapshot ({type(exc).__name__}: {exc})") from None
    if meta.get("version") != VERSION:
        raise SnapshotError(f"{path}: snapshot version {meta.get('version')!r}, this ensemble reads {VERSION}")
    return meta, arrays


def keep_previous(path, generations: int = 3) -> Path | None:
    """Move an existing snapshot aside (X -> X.1 -> X.2 ...) before anything overwrites it:
    a server started without --restore, or a restore that failed in part, must never
    destroy the states it did not bring back. Returns where it went, or None."""
    path = Path(path)
    if not path.exists():
        return None
    for n in range(generations - 1, 0, -1):
        older = path.with_name(f"{path.name}.{n}")
        if older.exists():
            older.replace(path.with_name(f"{path.name}.{n + 1}"))
    kept = path.with_name(f"{path.name}.1")
    path.replace(kept)
    return kept
