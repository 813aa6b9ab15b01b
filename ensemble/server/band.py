"""Gesture models (the Neural iPad Band): one state for the whole ensemble, on a clock.

A `gestures` model predicts the next state of the whole band, N performers x 9 touch
gestures in one token, so it has one hidden state for the ensemble rather than one per
performer. Each performer who says hello takes the next free place in the band (as many
as the codec has); `/ensemble/gesture s i` sets their current gesture. Every
`interval` seconds (1 s, as in the Neural iPad Band) the band's current state is fed to
the model and the next state is sampled; each performer gets `/ensemble/gesture s i i`
(their predicted gesture, sequence number), and the places nobody holds are played by
the model alone (their gestures stay the model's own in the next input).
"""

from __future__ import annotations

import logging

import numpy as np

from ensemble.messages import EventError
from ensemble.server.events import _int

log = logging.getLogger("ensemble.server")


class Band:
    def __init__(self, conductor, interval: float = 1.0):
        self.conductor = conductor
        self.codec = conductor.codec
        self.interval = interval
        self.slot = conductor.engine.alloc_slot()
        self.places: dict[str, int] = {}          # performer id -> place (digit of the token)
        self.current = [0] * self.codec.performers  # everyone's gesture now (0: nothing)
        self.logits = np.zeros(conductor.vocab, dtype=np.float32)
        self.ticks = 0
        self.timer = conductor.loop.call_later(interval, self.tick)

    def join(self, performer_id: str) -> int:
        if performer_id not in self.places:
            free = sorted(set(range(self.codec.performers)) - set(self.places.values()))
            if not free:
                raise EventError(f"the band is full: this model has {self.codec.performers} places")
            self.places[performer_id] = free[0]
        return self.places[performer_id]

    def leave(self, performer_id: str) -> None:
        self.places.pop(performer_id, None)

    def gesture(self, performer_id: str, values: tuple) -> int:
        (g,) = values
        g = _int(g, "gesture", 0, 8)
        self.current[self.join(performer_id)] = g
        return g

    def tick(self) -> None:
        c = self.conductor
        self.timer = c.loop.call_later(self.interval, self.tick)
        if not self.places:
            return
        token = self.codec.encode_state(self.current)
        np.copyto(self.logits, c.engine.step([self.slot], [token])[0])
        self.ticks += 1
        lead = c.performers.get(min(self.places, key=self.places.get))
        if lead is None:  # a place held by someone who has just gone: the next tick has them out
            return
        predicted = self.codec.decode_token(int(c.sampler(self.logits, lead.settings, lead.rng, c.mask)))
        for performer_id, place in self.places.items():
            p = c.performers.get(performer_id)
            if p is not None and p.mode != "listen":
                c.send(p, "gesture", (int(predicted[place]),))
        held = set(self.places.values())
        # the places nobody holds follow the model's own prediction
        self.current = [self.current[i] if i in held else int(predicted[i]) for i in range(len(self.current))]

    def close(self) -> None:
        self.timer.cancel()
