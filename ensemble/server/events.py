"""Live events <-> tokens: what an OSC or MIDI message means to a model's codec.

A model can be served live when its codec turns ONE played event into ONE token
(`notes`, `touch`): every event then steps the performer's state once. Each adapter
checks the message's values (one clear error, never a crash), measures the time since
the performer's previous event for the codec, and turns a sampled token back into the
event to send.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ensemble.errors import UserError, a_or_an
from ensemble.messages import EventError  # noqa: F401  (raised here, defined at the boundary)


class NotServable(UserError):
    pass


@dataclass(frozen=True)
class OutEvent:
    kind: str          # "note" | "touch"
    dt: float          # seconds after the previous event in the stream
    values: tuple      # note: (pitch, velocity); touch: (x, y)


def _int(value, name, low, high) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
        raise EventError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if not low <= value <= high:
        raise EventError(f"{name} {value} is out of range {low}..{high}")
    return value


def _unit(value, name) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise EventError(f"{name} must be a number, got {value!r}")
    if not 0.0 <= value <= 1.0:
        raise EventError(f"{name} {value} is out of range 0..1")
    return float(value)


class NotesAdapter:
    """Duet answers a note-on with the note the model expects next (note-offs masked
    out of that draw) and a note-off by ending that answer: one reply per event."""

    kind = "note"

    def __init__(self, codec):
        self.codec = codec
        self.start_token = codec.encode_event(1.0, (codec.low_pitch + codec.high_pitch) // 2, 0)
        self.duet_forbidden = [t for t in range(codec.vocab_size) if codec.decode_token(t).velocity == 0]

    def answers(self, values: tuple) -> bool:
        return values[1] > 0

    def check(self, values) -> tuple:
        pitch, velocity = values
        return _int(pitch, "pitch", 0, 127), _int(velocity, "velocity", 0, 127)

    def token(self, dt: float, values: tuple) -> int:
        return self.codec.encode_event(dt, values[0], values[1])

    def event(self, token: int) -> OutEvent:
        e = self.codec.decode_token(token)
        return OutEvent("note", e.dt, (e.pitch, e.velocity))

    def style_tables(self):
        """Notes performers get a style follower (tempo, pulse, dynamics, steering masks):
        `ensemble.server.style`, built on these shared tables."""
        from ensemble.server.style import StyleTables

        return StyleTables(self.codec)


class TouchAdapter:
    kind = "touch"

    def __init__(self, codec):
        self.codec = codec
        self.start_token = codec.encode_event(1.0, 0.5, 0.5)
        self.duet_forbidden = []

    def answers(self, values: tuple) -> bool:
        return True

    def check(self, values) -> tuple:
        x, y = values
        return _unit(x, "x"), _unit(y, "y")

    def token(self, dt: float, values: tuple) -> int:
        return self.codec.encode_event(dt, values[0], values[1])

    def event(self, token: int) -> OutEvent:
        e = self.codec.decode_token(token)
        return OutEvent("touch", e.dt, (e.x, e.y))


class GesturesAdapter:
    """Gesture models step the whole band on a clock (`ensemble.server.band`), not per event."""

    kind = "gesture"
    duet_forbidden: list = []

    def __init__(self, codec):
        self.codec = codec


ADAPTERS = {"note": NotesAdapter, "touch": TouchAdapter, "gesture": GesturesAdapter}  # by the codec's `live`


def adapter_for(codec):
    adapter = ADAPTERS.get(getattr(codec, "live", None))
    if adapter is None:
        raise NotServable(
            f"{a_or_an(codec.name)} model cannot be served live: the server needs a codec with one token per "
            f"played event (a note, a touch, a gesture); use `ensemble generate` for {codec.name} models")
    return adapter(codec)
