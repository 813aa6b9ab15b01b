"""One performer: their slot in the state bank, their mode and settings, where their answers go."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import numpy as np

from ensemble.messages import Output
from ensemble.sampling import SamplingSettings


@dataclass
class Performer:
    id: str
    slot: int
    output: Output
    mode: str
    settings: SamplingSettings
    threshold: float                  # respond: seconds of silence before the answer starts
    max_note: float                   # seconds: the longest a predicted note may sound
    rng: np.random.Generator
    logits: np.ndarray                # the model's prediction of this performer's next event
    has_logits: bool = False
    stream_time: float | None = None  # loop time of the last event in the stream (theirs or ours)
    last_heard: float = 0.0           # loop time of their last message, for the idle timeout
    seq: int = 0                      # numbers the predictions sent, so clients can drop stale ones
    generating: bool = False          # respond/auto: the machine is playing on
    silence: asyncio.TimerHandle | None = None
    next_event: asyncio.TimerHandle | None = None
    events_in: int = 0
    events_out: int = 0
    source: str = ""
    owner: str | None = None          # the address (IP) that said hello; None for local transports (MIDI)
    panicked: bool = False            # silenced by /ensemble/panic: quiet until they play or set a mode
    queued: int = 0                   # their events waiting in the conductor's pending list, not yet stepped
    extra: dict = field(default_factory=dict)
    style: object = None              # notes models: their ensemble.server.style.Style

    def settings_dict(self) -> dict:
        s = self.settings
        return {"temperature": s.temperature, "top_p": s.top_p, "top_k": s.top_k,
                "threshold": self.threshold, "max_note": self.max_note}

    def status(self) -> dict:
        return {"id": self.id, "mode": self.mode, "slot": self.slot, "output": self.output.name,
                "events_in": self.events_in, "events_out": self.events_out, "seq": self.seq,
                "generating": self.generating, "silenced_by_panic": self.panicked, **self.settings_dict(),
                **({"style": self.style.describe()} if self.style is not None else {})}
