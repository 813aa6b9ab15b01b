"""One token per ensemble state: N performers x 9 touch gestures (Neural iPad Band).

In the Neural iPad Band (Martin & Torresen), a classifier labels what each iPad
performer is doing every moment with one of 9 gestures; the ensemble's state is the
tuple of all of them, and an RNN continues that tuple stream to predict how the group
moves on. One token holds the whole state, so one softmax models how performers'
gestures go together:

    token = g[0] * 9**0 + g[1] * 9**1 + ... + g[N-1] * 9**(N-1)

The FIRST performer is the LOWEST digit, as in the original models, so tokens of
trained models keep their meaning; here that is `MixedRadix` with the values reversed
(its radices[0] is the most significant). For the default 4 performers the vocabulary
is 9**4 = **6561 tokens**: (1, 0, 0, 0) -> 1, (0, 1, 0, 0) -> 9.
"""

from __future__ import annotations

import numbers
from typing import Iterable, Sequence

from ensemble.codecs import CodecError, register
from ensemble.codecs.packing import MixedRadix

GESTURES = (
    "nothing",
    "fast taps",
    "slow taps",
    "fast strokes",
    "accelerating fast strokes",
    "very slow strokes",
    "big swirls",
    "small swirls",
    "combination",
)


class GesturesCodec:
    name = "gestures"
    input_kind, sources, live = "gestures", ("csv",), "gesture"

    def __init__(self, performers: int = 4):
        if not (isinstance(performers, int) and 1 <= performers <= 16):
            raise CodecError(f"performers must be an int 1..16, got {performers!r}")
        self.performers = performers
        self.packing = MixedRadix([len(GESTURES)] * performers)

    @property
    def vocab_size(self) -> int:
        return self.packing.size

    def describe(self) -> dict:
        return {"name": self.name, "performers": self.performers}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GesturesCodec) and other.performers == self.performers

    def __repr__(self) -> str:
        return f"GesturesCodec(performers={self.performers})"

    def encode_state(self, state: Sequence[int]) -> int:
        """(gesture of performer 0, of performer 1, ...) -> one token."""
        state = tuple(state)
        if len(state) != self.performers:
            raise CodecError(f"state needs {self.performers} gestures (one per performer), got {len(state)}")
        for i, g in enumerate(state):
            if isinstance(g, bool) or not isinstance(g, numbers.Integral) or not 0 <= g < len(GESTURES):
                raise CodecError(f"performer {i}: gesture must be an int 0..{len(GESTURES) - 1}, got {g!r}")
        return self.packing.pack(tuple(int(g) for g in reversed(state)))

    def decode_token(self, token: int) -> tuple[int, ...]:
        """One token -> the gesture of each performer, performer 0 first."""
        try:
            return self.packing.unpack(token)[::-1]
        except ValueError as exc:
            raise CodecError(f"gestures: {exc}") from None

    def encode(self, states: Iterable[Sequence[int]]) -> list[int]:
        return [self.encode_state(s) for s in states]

    def decode(self, tokens: Iterable[int]) -> list[tuple[int, ...]]:
        return [self.decode_token(t) for t in tokens]


register("gestures", lambda d: GesturesCodec(**{k: v for k, v in d.items() if k != "name"}))
