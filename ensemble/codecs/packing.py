"""MixedRadix: several small bounded integers <-> one token.

The Neural iPad Band packs 4 performers x 9 gestures into one token of 9**4; the
`notes` codec packs (time bin, pitch, velocity bin). Packing lets one categorical
softmax model the joint distribution of all the parts at once.

Convention: ``radices[0]`` is the MOST significant position, as in written numbers.
So tuples compared lexicographically give tokens in the same numeric order
(order-preserving), and ``pack`` is a bijection from the box
``[0, r0) x [0, r1) x ...`` onto ``[0, size)`` (invertible). A codec that wants "first
performer in the lowest digit" passes its values reversed.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


class MixedRadix:
    """Pack and unpack tuples of bounded ints; works on one tuple or numpy arrays of them."""

    def __init__(self, radices: Sequence[int]):
        radices = tuple(int(r) for r in radices)
        if not radices:
            raise ValueError("MixedRadix needs at least one radix")
        for i, r in enumerate(radices):
            if r < 1:
                raise ValueError(f"radix at position {i} must be >= 1, got {r}")
        self.radices = radices
        # weight of each position: product of all less significant radices
        weights = [1] * len(radices)
        for i in range(len(radices) - 2, -1, -1):
            weights[i] = weights[i + 1] * radices[i + 1]
        self.weights = tuple(weights)
        self.size = weights[0] * radices[0]
        if self.size > np.iinfo(np.int64).max:
            raise ValueError(f"MixedRadix{radices} has {self.size} tokens, more than int64 holds")
        self._radix_array = np.array(radices, dtype=np.int64)
        self._weight_array = np.array(weights, dtype=np.int64)

    def __repr__(self) -> str:
        return f"MixedRadix({list(self.radices)})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MixedRadix) and other.radices == self.radices

    def __hash__(self) -> int:
        return hash(self.radices)

    def _check(self, values: np.ndarray) -> None:
        for i, r in enumerate(self.radices):
            column = values[..., i]
            bad = (column < 0) | (column >= r)
            if np.any(bad):
                v = column[bad].flat[0] if column.ndim else column
                raise ValueError(f"value {int(v)} at position {i} is out of range 0..{r - 1}")

    def pack(self, values):
        """One tuple -> int; an array of shape (..., n) -> int64 array of shape (...)."""
        if isinstance(values, np.ndarray):
            if values.shape[-1:] != (len(self.radices),):
                raise ValueError(f"expected last axis of length {len(self.radices)}, got shape {values.shape}")
            if not np.issubdtype(values.dtype, np.integer):
                raise ValueError(f"expected integers, got dtype {values.dtype}")
            values = values.astype(np.int64, copy=False)
            self._check(values)
            return values @ self._weight_array
        values = tuple(values)
        if len(values) != len(self.radices):
            raise ValueError(f"expected {len(self.radices)} values, got {len(values)}")
        token = 0
        for i, (v, r, w) in enumerate(zip(values, self.radices, self.weights)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise ValueError(f"value {v!r} at position {i} is not an integer")
            if not 0 <= v < r:
                raise ValueError(f"value {v} at position {i} is out of range 0..{r - 1}")
            token += int(v) * w
        return token

    def unpack(self, token):
        """int -> tuple of ints; an int array of shape (...) -> array of shape (..., n)."""
        if isinstance(token, np.ndarray):
            token = token.astype(np.int64, copy=False)
            if np.any((token < 0) | (token >= self.size)):
                bad = token[(token < 0) | (token >= self.size)].flat[0]
                raise ValueError(f"token {int(bad)} is out of range 0..{self.size - 1}")
            return (token[..., None] // self._weight_array) % self._radix_array
        if isinstance(token, bool) or not isinstance(token, (int, np.integer)):
            raise ValueError(f"token {token!r} is not an integer")
        token = int(token)
        if not 0 <= token < self.size:
            raise ValueError(f"token {token} is out of range 0..{self.size - 1}")
        return tuple((token // w) % r for w, r in zip(self.weights, self.radices))
