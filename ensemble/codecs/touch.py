"""One token per iPad touch: (x bin, y bin, time-since-last bin).

A touch-screen instrument sends a stream of touch points; the model learns where the
next touch falls and when. One token packs, with `MixedRadix` (x most significant):

- **x, y**: the touch position, 0..1 across the screen, in 16 equal bins each; a value
  outside 0..1 (a finger sliding off the edge, a sloppy sender) is clipped to the
  edge, but NaN is refused with a CodecError: it would mean a broken sender;
- **time bin**: seconds since the previous touch, 8 log-spaced bins: < 20 ms (the
  points of one stroke, sent at 60-120 Hz), 20 ms .. 2 s with a ratio of about 2.15
  between edges (fast taps and slow taps fall apart), and ">= 2 s" (a pause).

Default vocabulary: 16 x 16 x 8 = **2048 tokens**. Decoding gives the bins' centres:
x, y at the middle of their bins, dt at the log-centre (10 ms for the first bin, so a
decoded stroke still moves in time).
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from typing import Iterable

from ensemble.codecs import CodecError, register
from ensemble.codecs.notes import TimeBins
from ensemble.codecs.packing import MixedRadix


@dataclass(frozen=True, slots=True)
class TouchEvent:
    """One touch: seconds since the previous touch, position 0..1 on each axis."""

    dt: float
    x: float
    y: float


class TouchCodec:
    name = "touch"
    input_kind, sources, live = "touch", ("csv", "session"), "touch"

    def __init__(self, x_bins: int = 16, y_bins: int = 16, time_bins: int = 8,
                 min_dt: float = 0.02, max_dt: float = 2.0):
        for label, n in (("x_bins", x_bins), ("y_bins", y_bins)):
            if not (isinstance(n, int) and n >= 1):
                raise CodecError(f"{label} must be an int >= 1, got {n!r}")
        self.x_bins, self.y_bins = x_bins, y_bins
        self.time_bins, self.min_dt, self.max_dt = time_bins, float(min_dt), float(max_dt)
        self.times = TimeBins(time_bins, self.min_dt, self.max_dt, first_value=self.min_dt / 2)
        self.packing = MixedRadix((x_bins, y_bins, time_bins))
        self._edges = self.times.edges
        self._dt_values = self.times.values
        self._x_weight, self._y_weight, _ = self.packing.weights

    @property
    def vocab_size(self) -> int:
        return self.packing.size

    def describe(self) -> dict:
        return {"name": self.name, "x_bins": self.x_bins, "y_bins": self.y_bins,
                "time_bins": self.time_bins, "min_dt": self.min_dt, "max_dt": self.max_dt}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TouchCodec) and other.describe() == self.describe()

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.describe().items() if k != "name")
        return f"TouchCodec({args})"

    def encode_event(self, dt: float, x: float, y: float) -> int:
        """One touch -> one token (the server's per-touch path)."""
        try:
            if dt >= 0.0 and x == x and y == y:  # False for NaN
                x = 0.0 if x < 0.0 else 1.0 if x > 1.0 else x
                y = 0.0 if y < 0.0 else 1.0 if y > 1.0 else y
                return (min(int(x * self.x_bins), self.x_bins - 1) * self._x_weight
                        + min(int(y * self.y_bins), self.y_bins - 1) * self._y_weight
                        + bisect_right(self._edges, dt))
        except TypeError:
            pass
        raise CodecError(f"touch needs dt >= 0 seconds and x, y numbers (not NaN), got dt={dt!r}, x={x!r}, y={y!r}")

    def decode_token(self, token: int) -> TouchEvent:
        """One token -> the touch at its bins' centres."""
        try:
            if 0 <= token < self.packing.size:
                rest, t = divmod(int(token), self.time_bins)
                xb, yb = divmod(rest, self.y_bins)
                return TouchEvent(self._dt_values[t], (xb + 0.5) / self.x_bins, (yb + 0.5) / self.y_bins)
        except TypeError:
            pass
        raise CodecError(f"token {token!r} is not an int in 0..{self.packing.size - 1}")

    def encode(self, events: Iterable[TouchEvent]) -> list[int]:
        encode_event = self.encode_event
        return [encode_event(e.dt, e.x, e.y) for e in events]

    def decode(self, tokens: Iterable[int]) -> list[TouchEvent]:
        decode_token = self.decode_token
        return [decode_token(t) for t in tokens]


register("touch", lambda d: TouchCodec(**{k: v for k, v in d.items() if k != "name"}))
