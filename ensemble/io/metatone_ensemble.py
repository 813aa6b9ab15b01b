"""The ensemble-level answers Metatone apps understand: its state, and new ideas.

Metatone apps listen for two messages about the whole ensemble (besides each device's
own gesture), which the original Metatone classifier sent once a second:

    /metatone/classifier/ensemble/state s f f            state, spread, ratio
    /metatone/classifier/ensemble/event/new_idea s f     sender, measure (0..1)

PhaseRings, for one, moves every player on to the next setup of its composition (new
notes) on a new idea, at most once every 10 s, and sets its distortion from the spread
while the state is "divergence". This module computes both from what the server already
hears and plays, once a tick: a row of gestures, one per voice (each device's recognised
gesture and, with a band, the gesture the band plays on that device). It is pure: no
I/O, no clock of its own (a row is one tick), bounded memory.

How (our own definitions, in the spirit of Martin, Gardner & Sorensen's transition
matrices for Ensemble Metatone):
- the 9 gestures fall in 5 groups: nothing | taps (ft st) | strokes (fs fsa) |
  swirls (vss bs ss) | combination (c);
- over the last `window` ticks, each voice's move from one tick's group to the next is
  counted in a 5 x 5 matrix `M[to, from]`;
- `flux` is the share of those moves that change group (0: everyone keeps to what they
  were doing, 1: every voice changes every tick);
- a **new idea** is a rise of the flux by more than `threshold` from the window before
  to this one (the ensemble starts changing together); then none for `window` ticks,
  and none until the flux has settled back by `threshold` from its peak (a steady churn
  is one idea, not one a window);
- the **state**: "stasis" while fewer than half the moves change group; otherwise
  "convergence" when more than half the changes go *into* one group, "divergence" when
  more than half come *out of* one group, else "development" (change with no common
  direction). `spread` says how evenly the deciding moves are spread (0: one entry,
  1: evenly over all), `ratio` their share of all the moves.
The state names are the ones the Metatone classifier sent and PhaseRings compares
("divergence"), not the "diverging" of its specification text.
"""

from __future__ import annotations

from collections import deque

import numpy as np

GROUPS = (0, 1, 1, 2, 2, 3, 3, 3, 4)  # gesture 0..8 -> group
GROUP_NAMES = ("nothing", "taps", "strokes", "swirls", "combination")
MAX_VOICES = 128  # voices per row looked at (a row from 64 devices and their band parts)


def evenness(v: np.ndarray) -> float:
    """0 when everything is in one entry, 1 when spread evenly over all of them."""
    v = np.asarray(v, dtype=np.float64)
    total = v.sum()
    if len(v) < 2 or total <= 0:
        return 0.0
    effective = total * total / float((v * v).sum())  # how many entries carry it (1..len)
    return float((effective - 1.0) / (len(v) - 1.0))


class EnsembleFlow:
    def __init__(self, window: int = 15, threshold: float = 0.3):
        if window < 2:
            raise ValueError("window must be at least 2 ticks")
        self.window, self.threshold = int(window), float(threshold)
        self.rows: deque = deque(maxlen=2 * self.window + 1)  # dicts voice -> gesture, oldest first
        self.ticks = 0
        self.quiet_until = 0   # no new idea before this tick
        self.armed = True      # False after a new idea, until the flux settles
        self.peak = 0.0        # the highest flux since the last new idea
        self.new_ideas = 0
        self.last_state: tuple[str, float, float] | None = None

    def add(self, row: dict) -> None:
        """One tick: {voice: gesture 0..8}; voices may come and go between ticks."""
        clean = {}
        for voice, g in list(row.items())[:MAX_VOICES]:
            g = int(g)
            if 0 <= g <= 8:
                clean[voice] = GROUPS[g]
        self.rows.append(clean)
        self.ticks += 1

    def matrix(self, first: int, last: int) -> np.ndarray:
        """M[to, from]: the group moves from row first-1 to row last (indices into rows)."""
        m = np.zeros((5, 5), dtype=np.int64)
        rows = self.rows
        for i in range(max(1, first), min(last, len(rows) - 1) + 1):
            before, now = rows[i - 1], rows[i]
            for voice, g in now.items():
                was = before.get(voice)
                if was is not None:
                    m[g, was] += 1
        return m

    @staticmethod
    def flux(m: np.ndarray) -> float:
        total = m.sum()
        return 0.0 if total == 0 else float((total - np.trace(m)) / total)

    def recent(self) -> np.ndarray:
        """The moves of the last `window` ticks."""
        n = len(self.rows)
        return self.matrix(n - self.window, n - 1)

    def new_idea(self) -> float | None:
        """The rise of the flux (0..1) when this tick starts a new idea, else None."""
        n = len(self.rows)
        if n < self.window + 1:
            return None  # the window is not full yet
        now = self.flux(self.matrix(n - self.window, n - 1))
        if not self.armed:
            self.peak = max(self.peak, now)
            if now > self.peak - self.threshold:
                return None
            self.armed = True
        if self.ticks < self.quiet_until:
            return None  # a new idea has just been announced
        before = self.flux(self.matrix(n - 2 * self.window, n - self.window - 1)) if n > self.window + 1 else 0.0
        rise = now - before
        if rise <= self.threshold:
            return None
        self.quiet_until = self.ticks + self.window
        self.armed, self.peak = False, now
        self.new_ideas += 1
        return float(min(1.0, rise))

    def state(self) -> tuple[str, float, float] | None:
        """(name, spread, ratio) of the last window; None until some voice has two ticks."""
        m = self.recent()
        total = int(m.sum())
        if total == 0:
            return None
        diagonal = np.diag(m).astype(np.float64)
        off = m.astype(np.float64) - np.diag(diagonal)
        changes = float(off.sum())
        if changes < 0.5 * total:
            state = ("stasis", evenness(diagonal), float(diagonal.sum() / total))
        else:
            into, out_of = off.sum(axis=1), off.sum(axis=0)  # per group: moves into it, moves out of it
            to, frm = int(into.argmax()), int(out_of.argmax())
            if max(into[to], out_of[frm]) <= 0.5 * changes:
                state = ("development", evenness(off[~np.eye(5, dtype=bool)]), changes / total)
            elif into[to] >= out_of[frm]:
                state = ("convergence", evenness(np.delete(off[to, :], to)), float(into[to] / total))
            else:
                state = ("divergence", evenness(np.delete(off[:, frm], frm)), float(out_of[frm] / total))
        name, spread, ratio = state
        self.last_state = (name, round(spread, 4), round(ratio, 4))
        return self.last_state

    def status(self) -> dict:
        state = self.last_state
        return {"state": state[0] if state else None, "spread": state[1] if state else None,
                "ratio": state[2] if state else None, "new_ideas": self.new_ideas,
                "flux": round(self.flux(self.recent()), 4) if len(self.rows) > 1 else None}
