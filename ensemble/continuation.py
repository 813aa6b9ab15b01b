"""The server's answer, offline: a player's notes heard through their style follower, then
the model's continuation placed in time as `respond` mode places it.

`ensemble eval style` judges answers this way (many variants of a piece at once, as one
batch) and `ensemble generate` writes them for a MIDI prime, so what the evaluation
measures is what generate writes, and both are what the server plays: the same
`ensemble.server.style.Style` hears the player (tempo, pulse, dynamics, steering masks)
and places every machine event. No wall-clock time passes; loop times are simulated,
each machine event planned `LOOP_DELAY` after the previous one sounded (a step and a send
on the server).
"""

from __future__ import annotations

import numpy as np
import torch

from ensemble.sampling import SamplingSettings, sample

LOOP_DELAY = 0.001  # seconds between a machine event and the planning of the next (a step, a send)
FIRST_DT = 4.0      # as the conductor: a performer's first event comes "after a long pause"


def hear(style, events) -> list[int]:
    """A player's events (loop time, pitch, velocity) through their style follower -> tokens."""
    tokens, last = [], None
    for now, pitch, velocity in events:
        tokens.append(style.hear(now, FIRST_DT if last is None else now - last, pitch, velocity))
        last = now
    return tokens


@torch.inference_mode()
def respond(model, styles, plays, length: int, sampling: SamplingSettings, rng: np.random.Generator,
            threshold: float) -> list[list[tuple[float, int, int]]]:
    """For each (style, player's events): the machine's answer after `threshold` seconds of
    silence, `length` events placed by the style, as (loop time, pitch, velocity) of what
    sounds (note-offs included; a note left out by ``rest`` is not listed, its note-off
    may be). All variants step together, one batch. Every prime needs an event."""
    primes = [hear(style, events) for style, events in zip(styles, plays)]
    width = max(len(p) for p in primes)
    if min(len(p) for p in primes) != width:
        raise ValueError("every variant's prime must have the same number of events")
    logits, state = model(torch.tensor(primes), None)
    logits = logits[:, -1].numpy()
    stream = [events[-1][0] for events in plays]
    now = [t + threshold for t in stream]
    answers: list[list] = [[] for _ in styles]
    no_mask = np.zeros(logits.shape[1], dtype=bool)
    for _ in range(length):
        mask = np.stack([s.mask if s.mask is not None else no_mask for s in styles])
        steered = np.stack([s.steer(row) for s, row in zip(styles, logits)])
        tokens = sample(steered, sampling, rng, mask if mask.any() else None)
        for i, (style, token) in enumerate(zip(styles, tokens)):
            placed = style.place(int(token), stream[i], now[i])
            stream[i] = placed.when
            now[i] = placed.when + LOOP_DELAY
            pitch, velocity = placed.values
            if velocity == 0 or not style.rests(rng):
                answers[i].append((placed.when, pitch, velocity))
        logits, state = model.step(torch.tensor(tokens), state)
        logits = logits.numpy()
    return answers
