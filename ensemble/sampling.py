"""Choosing the next token from a model's logits.

Sampling, never plain argmax unless asked for: a model that always takes its most
likely token loops and sounds dead. Temperature scales the logits (low: safe and
repetitive, high: adventurous), top-k keeps the k likeliest tokens, top-p (nucleus)
keeps the smallest set whose probability reaches p, and a mask forbids tokens outright
(an unknown character, a note outside an instrument's range).

Works on numpy arrays, one row (V,) or a batch (B, V), with a seeded
``numpy.random.Generator``: the live server's engine produces numpy logits, and the same
seed gives the same sample everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class SamplingSettings:
    temperature: float = 1.0
    top_k: int = 0        # 0: no limit
    top_p: float = 1.0    # 1.0: no limit
    greedy: bool = False  # argmax; only when asked for explicitly

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


def forbidden_mask(vocab_size: int, forbidden) -> np.ndarray | None:
    """A boolean (vocab,) array, True where a token may never be drawn; None for none."""
    if forbidden is None or len(forbidden) == 0:
        return None
    mask = np.zeros(vocab_size, dtype=bool)
    mask[np.asarray(forbidden, dtype=np.int64)] = True
    return mask


def sample(
    logits: np.ndarray,
    settings: SamplingSettings,
    rng: np.random.Generator,
    mask: np.ndarray | None = None,
):
    """Draw one token per row. logits (V,) -> int, (B, V) -> int64 array (B,).

    mask: boolean, (V,) or (B, V), True where the token is forbidden.
    """
    z = np.asarray(logits, dtype=np.float64)
    single = z.ndim == 1
    if single:
        z = z[None, :]
    if mask is not None:
        z = np.where(mask, -np.inf, z)
        if np.any(np.all(mask, axis=-1)):
            raise ValueError("every token is forbidden by the mask")
    if settings.greedy:
        choice = np.argmax(z, axis=1)
        return int(choice[0]) if single else choice
    z = z / settings.temperature
    if 0 < settings.top_k < z.shape[1]:
        kth = np.partition(z, -settings.top_k, axis=1)[:, -settings.top_k][:, None]
        z = np.where(z < kth, -np.inf, z)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    if settings.top_p < 1.0:
        u = rng.random(z.shape[0])
        choice = np.array([_nucleus_draw(row, settings.top_p, v) for row, v in zip(p, u)], dtype=np.int64)
        return int(choice[0]) if single else choice
    cumulative = np.cumsum(p, axis=1)
    u = rng.random((z.shape[0], 1)) * cumulative[:, -1:]
    choice = np.minimum((cumulative <= u).sum(axis=1), z.shape[1] - 1)
    # never land on a zero-probability token through rounding at the edges
    for row in np.nonzero(p[np.arange(len(choice)), choice] == 0)[0]:
        choice[row] = int(np.argmax(p[row]))
    return int(choice[0]) if single else choice


NUCLEUS_CANDIDATES = 256


def _nucleus_draw(p: np.ndarray, top_p: float, u: float) -> int:
    """One draw from the nucleus of a probability row: the likeliest tokens, most likely
    first, until their mass reaches top_p (the first token is always in).

    Sorting a whole 3,660-token vocabulary costs ~100 us an event; the nucleus almost
    always lies among the few likeliest tokens, so those are found with a partition and
    only they are sorted; the draw then happens inside the nucleus alone (`u` in [0, 1)).
    The full sort remains for rows where the candidates do not reach top_p.
    """
    vocab = len(p)
    k = min(vocab, NUCLEUS_CANDIDATES)
    candidates = np.argpartition(-p, k - 1)[:k] if k < vocab else np.arange(vocab)
    order = candidates[np.argsort(-p[candidates], kind="stable")]
    cumulative = np.cumsum(p[order])
    if k < vocab and cumulative[-1] < top_p:
        order = np.argsort(-p, kind="stable")
        cumulative = np.cumsum(p[order])
    n = min(int(np.searchsorted(cumulative, top_p)) + 1, len(order))  # tokens whose likelier mass < top_p
    i = int(np.searchsorted(cumulative[:n], u * cumulative[n - 1], side="right"))
    return int(order[min(i, n - 1)])
