"""The one boundary between transports and the conductor: typed live events.

A transport (OSC, MIDI, a browser, whatever comes next) turns its wire messages into
these small values and hands them to `Conductor.handle(event, origin)`; it knows
nothing else of the conductor, and the conductor knows nothing of OSC addresses or MIDI
bytes. What goes back is the transport's own business: the performer's `Output`
(predictions), and whatever `handle` returns or raises (a status, an error's reason).

A transport implements `Transport`: `start()`, `close()`, `status()`, and
`output_from(description)`, which rebuilds one of its own outputs from a snapshot
(returning None for outputs of another transport). After handing over a batch of
events (one socket drain, one MIDI burst) it calls `conductor.flush()`, so
performers whose events arrived together are stepped together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


MODES = ("listen", "duet", "respond", "auto")  # what SetMode may ask for


class EventError(ValueError):
    """An event whose values this model cannot take; the text goes back as the error."""


class ControlError(ValueError):
    """A request that cannot be carried out; the text goes back as the error."""


MAX_ID = 64  # characters in a performer id


def check_id(performer_id: str) -> str:
    """Performer ids are short printable names; "*" means everyone and "{" starts a status
    reply. Here, beside the events, because a transport checks an id too before it keys
    anything on it (a rate limiter's table, say)."""
    if not isinstance(performer_id, str) or not 1 <= len(performer_id) <= MAX_ID \
            or not performer_id.isprintable() or performer_id[0] in "*{":
        raise ControlError(f"performer id must be 1-{MAX_ID} printable characters, not starting with * or {{")
    return performer_id


class Output(Protocol):
    """Where a performer's predictions go: an OSC reply address, a MIDI port and channel, ..."""

    name: str

    def send(self, performer: str, kind: str, values: tuple, seq: int) -> None: ...

    def describe(self) -> dict: ...  # {"type": transport name, ...}: enough to rebuild it after a restart


class Transport(Protocol):
    name: str

    def start(self): ...

    def close(self) -> None: ...

    def status(self) -> dict: ...

    def output_from(self, description: dict) -> Output | None: ...


@dataclass(frozen=True)
class Origin:
    """Who sent an event: `source` for logs and recordings ("osc:10.0.0.5:5000",
    "midi:keys"); `owner` the address a performer id is bound to (None: a local transport,
    such as MIDI gear plugged into this machine); `admin` may steer every performer."""

    source: str
    owner: str | None = None
    admin: bool = True


LOCAL = Origin("local")


@dataclass(frozen=True)
class Hello:
    performer: str
    output: Output
    mode: str | None = None  # None: the server's default mode


@dataclass(frozen=True)
class Play:
    performer: str
    kind: str        # "note" | "touch" | "gesture"
    values: tuple    # note: (pitch, velocity); touch: (x, y); gesture: (g,)


@dataclass(frozen=True)
class SetMode:
    performer: str
    mode: str


@dataclass(frozen=True)
class SetParam:
    performer: str   # or "*": everyone (admins only)
    name: str
    value: float | str


@dataclass(frozen=True)
class Reset:
    performer: str


@dataclass(frozen=True)
class Goodbye:
    performer: str


@dataclass(frozen=True)
class Panic:
    performer: str | None = None  # None: everyone (admins only)


@dataclass(frozen=True)
class StatusRequest:
    performer: str | None = None  # None: the summary; an id: that performer's details
    addresses: bool = True        # include reply addresses (not for senders beyond the admin networks)


Event = Hello | Play | SetMode | SetParam | Reset | Goodbye | Panic | StatusRequest
