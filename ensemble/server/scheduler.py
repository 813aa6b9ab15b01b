"""Playing predicted events at their time, and never leaving a note hanging.

All timing is the event loop's (`loop.call_at`): no threads, no sleeping. A performer
has at most one machine event waiting to be played (`Performer.next_event`); when the
performer plays first it is cancelled, not played late.

`HeldNotes` remembers every note-on sent to each performer's output. A note-off is only
sent for a note that sounds; a note that sounds is ended by its predicted note-off, by
its length cap, or by `all_off` (mode change, reset, goodbye, panic, shutdown).
"""

from __future__ import annotations

import asyncio
from typing import Callable

from ensemble.server.performer import Performer


class HeldNotes:
    def __init__(self, loop: asyncio.AbstractEventLoop, send: Callable[[Performer, str, tuple], None]):
        self.loop = loop
        self.send = send  # send(performer, kind, values): puts one event on the wire
        self.held: dict[str, dict[int, asyncio.TimerHandle]] = {}

    def note(self, performer: Performer, pitch: int, velocity: int) -> bool:
        """Send a note-on or note-off, keeping track; False if nothing was sent."""
        notes = self.held.setdefault(performer.id, {})
        if velocity == 0:
            cap = notes.pop(pitch, None)
            if cap is None:
                return False  # that note is not sounding: an orphan off is not sent
            cap.cancel()
            self.send(performer, "note", (pitch, 0))
            return True
        if pitch in notes:  # struck again: end the sounding one first
            notes.pop(pitch).cancel()
            self.send(performer, "note", (pitch, 0))
        # tracked (and capped) before it is sent: whatever happens while sending, it ends
        notes[pitch] = self.loop.call_later(performer.max_note, self._cap, performer, pitch)
        self.send(performer, "note", (pitch, velocity))
        return True

    def _cap(self, performer: Performer, pitch: int) -> None:
        notes = self.held.get(performer.id, {})
        if notes.pop(pitch, None) is not None:
            self.send(performer, "note", (pitch, 0))

    def all_off(self, performer: Performer) -> int:
        notes = self.held.pop(performer.id, {})
        for pitch, cap in sorted(notes.items()):
            cap.cancel()
            self.send(performer, "note", (pitch, 0))
        return len(notes)

    def sounding(self, performer_id: str) -> list[int]:
        return sorted(self.held.get(performer_id, {}))


def cancel_machine(performer: Performer) -> None:
    """Stop what the machine was about to play for this performer (and its silence timer)."""
    for attr in ("next_event", "silence"):
        handle = getattr(performer, attr)
        if handle is not None:
            handle.cancel()
            setattr(performer, attr, None)
    performer.generating = False
