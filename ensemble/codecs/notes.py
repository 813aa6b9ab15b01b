"""One token per played event: the live-jamming codec.

The server turns every note a player plays (MIDI or OSC) into ONE token and steps the
model once, so a prediction costs one step per note, not one per 10 ms. A token packs
three things with `MixedRadix` (time most significant):

- **time bin**: seconds since the previous event, log-spaced, because musicians hear
  time ratios: bin 0 is "simultaneous" (< 15 ms: the notes of a chord), then 10 bins
  from 15 ms to 4 s with a ratio of about 1.75 between edges (a 50-80 ms trill, a
  150 ms run and a 3 s pause all land in different bins), and the last bin is ">= 4 s";
- **pitch**: MIDI 36..96 (C2..C7, 61 pitches) by default. A pitch outside the range is
  folded by octaves into it (24 -> 36, 100 -> 88) rather than refused, so a player
  can never crash the server, and the pitch class survives;
- **velocity bin**: 0 is a note-off; 1..4 are four equal loudness levels of 1..127.

Default vocabulary: 12 x 61 x 5 = **3660 tokens**. The model's output layer costs
hidden x vocab per step (0.94 M multiply-adds at hidden 256, about the size of a
2 x 256 LSTM itself), so the defaults stay well below the 11,264 tokens of a
16 x 88 x 8 packing while keeping everything a jam needs to distinguish.

Decoding gives each bin's representative: dt at the bin's centre on a log scale (0 for
"simultaneous", 4 s x 1.32 for the last bin), velocity at its bin's middle.
`encode_event` / `decode_token` are the per-event fast path: plain Python on tables
built once in ``__init__``; no numpy, no allocations beyond the result.

`from_notes` / `to_notes` turn played notes (`ensemble.codecs.midi_notes.Note`, e.g.
from a MIDI file or an ABC melody) into events and back, so any note source can
become training data.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass
from typing import Iterable, Sequence

import mido

from ensemble.codecs import CodecError, register
from ensemble.codecs.midi_notes import (
    DEFAULT_MAX_NOTE_SECONDS,
    Note,
    midi_from_notes,
    notes_from_midi,
    restrike,
)
from ensemble.codecs.packing import MixedRadix


@dataclass(frozen=True, slots=True)
class NoteEvent:
    """One played event: seconds since the previous event, MIDI pitch, velocity (0 = off)."""

    dt: float
    pitch: int
    velocity: int


class TimeBins:
    """Log-spaced bins for "seconds since the previous event".

    Bin 0 is [0, smallest); bins 1..count-2 split [smallest, largest) evenly on a log
    scale; bin count-1 is [largest, inf). Each bin decodes to its log-centre; bin 0
    decodes to `first_value` (the codec says what "almost no time" should mean), the
    open last bin to ``largest`` times half a bin ratio.
    """

    def __init__(self, count: int, smallest: float, largest: float, first_value: float):
        if not (isinstance(count, int) and count >= 3):
            raise CodecError(f"time bins need count >= 3, got {count!r}")
        if not 0 < smallest < largest < math.inf:
            raise CodecError(f"time bins need 0 < smallest < largest, got {smallest!r}, {largest!r}")
        if not 0 <= first_value < smallest:
            raise CodecError(f"time bin 0 must decode below {smallest}, got {first_value!r}")
        ratio = (largest / smallest) ** (1 / (count - 2))
        self.count = count
        self.ratio = ratio
        self.edges = [smallest * ratio**k for k in range(count - 2)] + [largest]
        self.values = [first_value]
        self.values += [math.sqrt(lo * hi) for lo, hi in zip(self.edges, self.edges[1:])]
        self.values.append(largest * math.sqrt(ratio))

    def index(self, dt: float) -> int:
        """The bin of `dt` seconds (>= 0, not NaN: the caller checks)."""
        return bisect_right(self.edges, dt)


def velocity_tables(levels: int) -> tuple[dict[int, int], list[int]]:
    """velocity 0..127 -> bin (0 = off, 1..levels equal slices of 1..127), and bin -> velocity."""
    to_bin = {0: 0}
    for v in range(1, 128):
        to_bin[v] = 1 + (v - 1) * levels // 127
    to_velocity = [0]
    for b in range(1, levels + 1):
        members = [v for v in range(1, 128) if to_bin[v] == b]
        to_velocity.append((members[0] + members[-1]) // 2)
    return to_bin, to_velocity


def fold_pitch(pitch: int, low: int, high: int) -> int:
    """Move `pitch` by whole octaves into low..high (the range spans at least an octave)."""
    if pitch < low:
        return pitch + 12 * -((pitch - low) // 12)
    if pitch > high:
        return pitch - 12 * -((high - pitch) // 12)
    return pitch


class NotesCodec:
    name = "notes"
    input_kind, sources, live = "notes", ("abc", "midi", "score", "session"), "note"

    def __init__(self, low_pitch: int = 36, high_pitch: int = 96, time_bins: int = 12,
                 min_dt: float = 0.015, max_dt: float = 4.0, velocity_levels: int = 4):
        if not (isinstance(low_pitch, int) and isinstance(high_pitch, int) and 0 <= low_pitch and high_pitch <= 127):
            raise CodecError(f"pitch range must be ints within 0..127, got {low_pitch!r}..{high_pitch!r}")
        if high_pitch - low_pitch < 11:
            raise CodecError(f"pitch range {low_pitch}..{high_pitch} must span at least an octave (12 pitches) to fold into")
        if not (isinstance(velocity_levels, int) and 1 <= velocity_levels <= 127):
            raise CodecError(f"velocity_levels must be an int 1..127, got {velocity_levels!r}")
        self.low_pitch, self.high_pitch = low_pitch, high_pitch
        self.time_bins, self.min_dt, self.max_dt = time_bins, float(min_dt), float(max_dt)
        self.velocity_levels = velocity_levels
        self.times = TimeBins(time_bins, self.min_dt, self.max_dt, first_value=0.0)
        self.packing = MixedRadix((time_bins, high_pitch - low_pitch + 1, velocity_levels + 1))
        # the fast path's tables: every valid input is a key, so a lookup also validates
        self._edges = self.times.edges
        self._dt_values = self.times.values
        self._pitch_index = {p: fold_pitch(p, low_pitch, high_pitch) - low_pitch for p in range(128)}
        self._velocity_bin, self._bin_velocity = velocity_tables(velocity_levels)
        self._time_weight, self._pitch_weight, _ = self.packing.weights
        self._pitches = high_pitch - low_pitch + 1
        self._velocities = velocity_levels + 1

    @property
    def vocab_size(self) -> int:
        return self.packing.size

    def describe(self) -> dict:
        return {"name": self.name, "low_pitch": self.low_pitch, "high_pitch": self.high_pitch,
                "time_bins": self.time_bins, "min_dt": self.min_dt, "max_dt": self.max_dt,
                "velocity_levels": self.velocity_levels}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NotesCodec) and other.describe() == self.describe()

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.describe().items() if k != "name")
        return f"NotesCodec({args})"

    # ------------------------------------------------------------------ one event

    def encode_event(self, dt: float, pitch: int, velocity: int) -> int:
        """One played event -> one token (the server's per-note path)."""
        try:
            if dt >= 0.0:  # False for NaN
                return (bisect_right(self._edges, dt) * self._time_weight
                        + self._pitch_index[pitch] * self._pitch_weight
                        + self._velocity_bin[velocity])
        except (KeyError, TypeError):
            pass
        raise CodecError(self._why_bad(dt, pitch, velocity))

    @staticmethod
    def _why_bad(dt, pitch, velocity) -> str:
        try:
            ok_dt = dt >= 0.0
        except TypeError:
            ok_dt = False
        if not ok_dt:
            return f"dt must be a number of seconds >= 0, got {dt!r}"
        if pitch not in range(128):
            return f"pitch must be an int 0..127, got {pitch!r}"
        return f"velocity must be an int 0..127 (0 = note-off), got {velocity!r}"

    def decode_token(self, token: int) -> NoteEvent:
        """One token -> the event at its bins' representative values."""
        try:
            if 0 <= token < self.packing.size:
                rest, v = divmod(int(token), self._velocities)
                t, p = divmod(rest, self._pitches)
                return NoteEvent(self._dt_values[t], self.low_pitch + p, self._bin_velocity[v])
        except TypeError:
            pass
        raise CodecError(f"token {token!r} is not an int in 0..{self.packing.size - 1}")

    # ------------------------------------------------------------------ sequences

    def encode(self, events: Iterable[NoteEvent]) -> list[int]:
        encode_event = self.encode_event
        return [encode_event(e.dt, e.pitch, e.velocity) for e in events]

    def decode(self, tokens: Iterable[int]) -> list[NoteEvent]:
        decode_token = self.decode_token
        return [decode_token(t) for t in tokens]

    def encode_midi(self, midi: mido.MidiFile, max_note_seconds: float = DEFAULT_MAX_NOTE_SECONDS) -> list[int]:
        """A MIDI file -> tokens (via `notes_from_midi` and `from_notes`)."""
        return self.encode(from_notes(notes_from_midi(midi, max_note_seconds)))

    def encode_notes(self, notes) -> list[int]:
        """Played notes (`midi_notes.Note`) -> tokens."""
        return self.encode(from_notes(notes))

    def decode_midi(self, tokens: Iterable[int]) -> mido.MidiFile:
        return self.to_midi(self.decode(tokens))

    def to_midi(self, events: Iterable[NoteEvent], max_note_seconds: float = DEFAULT_MAX_NOTE_SECONDS) -> mido.MidiFile:
        """Events -> a playable one-track MIDI file (via `to_notes`)."""
        return midi_from_notes(to_notes(events, max_note_seconds))

    def augment(self, tokens: Sequence[int], semitones: int = 0, stretch: float = 1.0, rng=None) -> list[int]:
        """Transpose by `semitones` (folding into the range) and scale every dt by `stretch`.

        Without `rng` a stretch works on the bins' representatives, so it moves a token
        only when it crosses a bin edge (a factor of ~1.32 from a log-centre). With a
        numpy `rng` each dt is first drawn log-uniformly within its own bin (where in
        the bin it was is unknown), so any stretch moves the tokens near an edge, as a
        real change of tempo would. Bin 0 ("together") and the open last bin keep their
        meaning. Transposition is exact.
        """
        if not stretch > 0:
            raise CodecError(f"stretch must be > 0, got {stretch!r}")
        jitter = rng is not None and stretch != 1.0
        edges, last = self._edges, self.times.count - 1
        out = []
        for token in tokens:
            e = self.decode_token(token)
            pitch = fold_pitch(min(max(e.pitch + semitones, 0), 127), self.low_pitch, self.high_pitch)
            dt = e.dt
            if jitter:
                b = self.times.index(dt)
                if 0 < b < last:
                    lo, hi = edges[b - 1], edges[b]
                    dt = lo * (hi / lo) ** rng.random()
            out.append(self.encode_event(dt * stretch, pitch, e.velocity))
        return out


def from_notes(notes: Iterable[Note]) -> list[NoteEvent]:
    """Played notes -> note-on and note-off events in time order.

    Same-pitch overlaps become re-strikes first; at equal times note-offs come before
    note-ons (a legato line releases, then strikes), except a zero-length note's own
    off, which follows its on. The first event's dt counts from time 0.
    """
    spans = restrike((n.start, n.end, int(n.pitch), int(n.velocity)) for n in notes)
    timed = []  # (time, order, pitch, velocity): order 0 = off, 1 = on, 2 = off of a zero-length note
    for start, end, pitch, velocity in spans:
        timed.append((start, 1, pitch, velocity))
        timed.append((end, 0 if end > start else 2, pitch, 0))
    timed.sort()
    events, previous = [], 0.0
    for time, _, pitch, velocity in timed:
        events.append(NoteEvent(time - previous, pitch, velocity))
        previous = time
    return events


def to_notes(events: Iterable[NoteEvent], max_note_seconds: float = DEFAULT_MAX_NOTE_SECONDS) -> list[Note]:
    """Events -> played notes sorted by (start, pitch).

    A note-on pairs with the next note-off of its pitch; a second note-on first ends
    the sounding one (re-strike); an unpaired note-off is dropped; a note never turned
    off, or held too long, lasts `max_note_seconds`.
    """
    now = 0.0
    sounding: dict[int, tuple[float, int]] = {}
    notes: list[Note] = []

    def finish(pitch: int, end: float) -> None:
        start, velocity = sounding.pop(pitch)
        notes.append(Note(start, min(end, start + max_note_seconds), pitch, velocity))

    for e in events:
        now += e.dt
        if e.pitch in sounding:
            finish(e.pitch, now)
        if e.velocity > 0:
            sounding[e.pitch] = (now, e.velocity)
    for pitch in list(sounding):
        finish(pitch, math.inf)
    notes.sort(key=lambda n: (n.start, n.pitch))
    return notes


register("notes", lambda d: NotesCodec(**{k: v for k, v in d.items() if k != "name"}))
