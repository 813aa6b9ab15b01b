"""Token corpora: pieces of music (or text) as token streams, split by piece.

A prepared corpus is a folder that `ensemble prepare` writes and `ensemble train` reads:

- ``tokens.npy``: every piece's tokens, concatenated (int32)
- ``manifest.json``: the codec description, each piece's source, split, start and
  length, the counts, and the files that were skipped with the reason

The train/validation split is by *piece*, never by window, so the validation loss
measures music the model has never seen any part of; it is reproducible from the seed.
"""

from __future__ import annotations

import difflib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ensemble import codecs
from ensemble.errors import UserError
from ensemble.files import atomic_write, read_json

log = logging.getLogger("ensemble.data")

FORMAT = "ensemble-corpus"
VERSION = 1
MANIFEST = "manifest.json"
TOKENS = "tokens.npy"


class DataError(UserError):
    """A corpus that cannot be read; the message is one line that says why."""


@dataclass
class Piece:
    source: str
    tokens: np.ndarray


@dataclass
class Corpus:
    codec: codecs.Codec
    train: list[Piece]
    val: list[Piece]
    summary: dict = field(default_factory=dict)

    @property
    def train_tokens(self) -> int:
        return sum(len(p.tokens) for p in self.train)

    @property
    def val_tokens(self) -> int:
        return sum(len(p.tokens) for p in self.val)


def split_by_piece(n_pieces: int, val_fraction: float, seed: int) -> np.ndarray:
    """Boolean array, True for the pieces that go to validation (at least one if n >= 2)."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_val = int(round(n_pieces * val_fraction))
    if val_fraction > 0 and n_pieces >= 2:
        n_val = max(1, n_val)
    n_val = min(n_val, n_pieces - 1) if n_pieces else 0
    is_val = np.zeros(n_pieces, dtype=bool)
    is_val[np.random.default_rng(seed).permutation(n_pieces)[:n_val]] = True
    return is_val


def make_corpus(codec, pieces: list[Piece], val_fraction: float = 0.1, seed: int = 0, summary=None) -> Corpus:
    """Split pieces into training and validation by whole piece (see `split_by_piece`).

    With `val_fraction` 0 everything is training data (no validation). A single piece
    (a short text) cannot be split by piece, so its end is held out instead (`split_one`).
    """
    if not 0 <= val_fraction < 1:
        raise DataError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    pieces = [p for p in pieces if len(p.tokens) >= 2]
    if not pieces:
        raise DataError("nothing to learn from: no piece has 2 or more tokens")
    if val_fraction == 0:
        return Corpus(codec, pieces, [], dict(summary or {}))
    if len(pieces) == 1:
        train, val = split_one(pieces[0], val_fraction)
        return Corpus(codec, [train], [val], dict(summary or {}))
    is_val = split_by_piece(len(pieces), val_fraction, seed)
    train = [p for p, v in zip(pieces, is_val) if not v]
    val = [p for p, v in zip(pieces, is_val) if v]
    return Corpus(codec, train, val, dict(summary or {}))


def split_one(piece: Piece, val_fraction: float) -> tuple[Piece, Piece]:
    """The only piece, split by position: its last `val_fraction` (at least 2 tokens) for
    validation. Weaker than a split by piece (the model has seen what came just before),
    so it is said in the log."""
    n = len(piece.tokens)
    n_val = max(2, int(round(n * val_fraction)))
    if n - n_val < 2:
        raise DataError(f"{piece.source}: only {n} tokens, too few to hold any out for validation; "
                        "give more data, or --val-fraction 0 to train without validation")
    log.warning("only one piece (%s, %d tokens): its last %d tokens are held out for validation "
                "(split by position, not by piece; for a fairer validation loss give more data)",
                piece.source, n, n_val)
    return (Piece(f"{piece.source}[:{n - n_val}]", piece.tokens[:n - n_val]),
            Piece(f"{piece.source}[{n - n_val}:]", piece.tokens[n - n_val:]))


def write_prepared(folder, codec, pieces: list[Piece], skipped=(), val_fraction=0.1, seed=0, extra=None) -> dict:
    """Write a prepared corpus folder; returns the manifest. Written atomically per file."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pieces = [p for p in pieces if len(p.tokens) >= 1]
    is_val = split_by_piece(len(pieces), val_fraction, seed)
    entries, start = [], 0
    for piece, val in zip(pieces, is_val):
        n = int(len(piece.tokens))
        entries.append({"source": piece.source, "split": "val" if val else "train", "start": start, "length": n})
        start += n
    tokens = np.concatenate([np.asarray(p.tokens, dtype=np.int64) for p in pieces]) if pieces else np.zeros(0, np.int64)
    if len(tokens) and (tokens.min() < 0 or tokens.max() >= codec.vocab_size):
        raise DataError(f"token out of range 0..{codec.vocab_size - 1} in prepared data")
    counts = {
        "pieces": len(pieces),
        "train_pieces": int((~is_val).sum()),
        "val_pieces": int(is_val.sum()),
        "tokens": int(len(tokens)),
        "train_tokens": int(sum(e["length"] for e in entries if e["split"] == "train")),
        "val_tokens": int(sum(e["length"] for e in entries if e["split"] == "val")),
        "skipped": len(list(skipped)),
    }
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "codec": codec.describe(),
        "vocab_size": codec.vocab_size,
        "seed": seed,
        "val_fraction": val_fraction,
        "counts": counts,
        **(extra or {}),
        "skipped": [{"source": s, "reason": r} for s, r in skipped],
        "pieces": entries,
    }
    atomic_write(folder / TOKENS, lambda f: np.save(f, tokens.astype(np.int32)))
    atomic_write(folder / MANIFEST, lambda f: f.write(json.dumps(manifest, indent=1).encode() + b"\n"))
    return manifest


def require_exists(path) -> Path:
    """`path`, or a DataError naming it and the closest existing name beside it.

    A typo in --data used to surface as an unrelated complaint ("a raw file needs
    --codec text"); a path that is not there is said to be not there."""
    path = Path(path)
    if path.exists():
        return path
    message = f"no such file or folder: {path}"
    parent = path.parent
    try:
        names = sorted(p.name for p in parent.iterdir()) if parent.is_dir() else []
    except OSError:
        names = []
    close = difflib.get_close_matches(path.name, names, n=1, cutoff=0.6)
    if close:
        message += f" (did you mean {parent / close[0] if str(parent) != '.' else close[0]}?)"
    elif not parent.exists():
        message += f" (there is no folder {parent})"
    raise DataError(message)


def is_prepared(folder) -> bool:
    return (Path(folder) / MANIFEST).is_file()


def load_prepared(folder) -> Corpus:
    """Read a prepared corpus folder; every inconsistency is one DataError line."""
    folder = Path(folder)
    path = folder / MANIFEST
    manifest = read_json(path, DataError, f"{folder}: not a prepared corpus (no {MANIFEST}); run `ensemble prepare` first")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{path}: not an ensemble corpus manifest")
    try:
        codec = codecs.load(manifest["codec"])
    except (KeyError, codecs.CodecError) as exc:
        raise DataError(f"{path}: bad codec description ({exc})") from None
    try:
        tokens = np.load(folder / TOKENS, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{folder}: no {TOKENS}") from None
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{folder / TOKENS}: unreadable ({exc})") from None
    if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
        raise DataError(f"{folder / TOKENS}: expected a 1-D integer array, got {tokens.dtype} {tokens.shape}")
    if len(tokens) and (tokens.min() < 0 or tokens.max() >= codec.vocab_size):
        raise DataError(f"{folder / TOKENS}: tokens outside the codec's vocabulary 0..{codec.vocab_size - 1}")
    train, val = [], []
    try:
        for e in manifest["pieces"]:
            start, length = int(e["start"]), int(e["length"])
            if start < 0 or start + length > len(tokens):
                raise DataError(f"{path}: piece {e['source']!r} lies outside {TOKENS} ({len(tokens)} tokens)")
            piece = Piece(str(e["source"]), tokens[start:start + length].astype(np.int64))
            (val if e["split"] == "val" else train).append(piece)
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{path}: bad piece entry ({exc})") from None
    if not train:
        raise DataError(f"{folder}: no training pieces")
    summary = {"corpus": str(folder), **manifest.get("counts", {})}
    for key in ("sources", "description"):
        if key in manifest:
            summary[key] = manifest[key]
    return Corpus(codec, train, val, summary)


def text_pieces(text: str, codec, source: str = "text", piece_chars: int = 2000) -> list[Piece]:
    """Cut one long text into pieces of about `piece_chars` characters, at line ends.

    A text file is one long "piece"; cutting it lets the validation split hold out
    whole passages and lets parallel training streams start in different places.
    """
    size = max(100, min(piece_chars, len(text) // 10 or 1))
    pieces, start, n = [], 0, 0
    while start < len(text):
        end = min(len(text), start + size)
        newline = text.find("\n", end, end + size // 4)
        if newline != -1:
            end = newline + 1
        chunk = text[start:end]
        pieces.append(Piece(f"{source}[{n}]", np.asarray(codec.encode(chunk), dtype=np.int64)))
        start, n = end, n + 1
    return pieces


def read_text_file(path) -> str:
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder; for a prepared corpus it needs a {MANIFEST}") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
