"""One token per played event: the live-jamming codec.

The server turns every note a player plays (MIDI or OSC) into ONE token and steps the
model once, so a prediction costs one step per note, not one per 10 ms. A token packs
three things with `MixedRadix` (time most significant):

- **time bin**: seconds since the previous event. Two grids:

  - ``grid="metrical"`` (the default): one bin per note value, measured in beats of a
    reference tempo (``qpm``, 120 quarter notes a minute: a quarter is 0.5 s). The 15
    values are "together" (a chord, legato), 1/8, 1/6, 1/4, 1/3, 3/8, 1/2, 3/4, 1, 3/2,
    2, 3, 4, 6 and 8 (or more) quarter notes: every duration that is common in the
    folk corpus (eighths 50 %, sixteenths 18 %, quarters 17 %, dotted eighths 4 %, ...;
    measured over its 1.8 M events) is a bin of its own. Each bin decodes to exactly its
    note value, and the edges lie halfway between neighbours on a log scale, far from
    any note value. With the server's tempo follower (`ensemble.server.style`), which
    turns a player's seconds into the reference tempo's on the way in and back on the
    way out, the model thinks in beats: a player at any tempo is heard and answered
    in their own tempo, and 2:1 stays 2:1. (5/4 and 2/3 of a quarter were tried
    and dropped: under 0.01 % of the corpus.) Bin 0 ends at half the shortest value
    (1/16 of a quarter: 31 ms at 120 qpm).
  - ``grid="log"`` (the first codec, kept so that every model trained with it still
    loads): ``time_bins`` log-spaced bins from ``min_dt`` to ``max_dt`` ~1.75x apart,
    decoding to their log-centres. Its edge at 0.2457 s sat right below the corpus's
    commonest gap (0.25 s), and an eighth came back 30 % long.
- **pitch**: MIDI 36..96 (C2..C7, 61 pitches) by default. A pitch outside the range is
  folded by octaves into it (24 -> 36, 100 -> 88) rather than refused, so a player
  can never crash the server, and the pitch class survives;
- **velocity bin**: 0 is a note-off; 1..``velocity_levels`` are equal loudness levels
  of 1..127. A corpus without dynamics (ABC tunes all play at one velocity) is best
  prepared with ``velocity_levels=1``: the token says only "on" or "off", nothing is
  wasted on loudness the data never varies, and a live player's pp or ff is never a
  token the model did not see in training (the server takes dynamics from the player).

Default vocabulary: 15 x 61 x 5 = **4575 tokens** (15 x 61 x 2 = 1830 with one
velocity level). The model's output layer costs hidden x vocab per step, so the
vocabulary stays far below the 11,264 tokens of a 16 x 88 x 8 packing.

Decoding gives each bin's representative: the note value (metrical) or the log-centre
(log; 0 for "simultaneous"), velocity at its bin's middle. `encode_event` /
`decode_token` are the per-event fast path: plain Python on tables built once in
``__init__``; no numpy, no allocations beyond the result.

`from_notes` / `to_notes` turn played notes (`ensemble.codecs.midi_notes.Note`, e.g.
from a MIDI file or an ABC melody) into events and back, so any note source can
become training data.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Sequence

if TYPE_CHECKING:  # mido is imported where MIDI files are read or written: the live server
    import mido  # loads codecs and never does either (mido's import is ~40 ms of start-up)

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

    @classmethod
    def of_values(cls, values) -> "TimeBins":
        """Bins around explicit values (0 first, then increasing): each decodes to its value;
        the edges lie halfway between neighbours on a log scale, bin 0 ends at half of the
        first nonzero value, and the last bin is open above."""
        values = [float(v) for v in values]
        if len(values) < 3 or values[0] != 0.0 or any(b <= a for a, b in zip(values, values[1:])):
            raise CodecError(f"time values must start at 0 and increase, got {values!r}")
        bins = cls.__new__(cls)
        bins.count = len(values)
        bins.edges = [values[1] / 2] + [math.sqrt(a * b) for a, b in zip(values[1:], values[2:])]
        bins.values = values
        return bins

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


# the metrical grid's note values, in quarter notes (see the module docstring)
METRICAL_QUARTERS = (0, 1 / 8, 1 / 6, 1 / 4, 1 / 3, 3 / 8, 1 / 2, 3 / 4, 1, 3 / 2, 2, 3, 4, 6, 8)
GRIDS = ("metrical", "log")


class NotesCodec:
    name = "notes"
    input_kind, sources, live = "notes", ("abc", "midi", "score", "session"), "note"

    def __init__(self, low_pitch: int = 36, high_pitch: int = 96, time_bins: int | None = None,
                 min_dt: float | None = None, max_dt: float | None = None, velocity_levels: int = 4,
                 grid: str = "metrical", qpm: float = 120.0):
        if not (isinstance(low_pitch, int) and isinstance(high_pitch, int) and 0 <= low_pitch and high_pitch <= 127):
            raise CodecError(f"pitch range must be ints within 0..127, got {low_pitch!r}..{high_pitch!r}")
        if high_pitch - low_pitch < 11:
            raise CodecError(f"pitch range {low_pitch}..{high_pitch} must span at least an octave (12 pitches) to fold into")
        if not (isinstance(velocity_levels, int) and 1 <= velocity_levels <= 127):
            raise CodecError(f"velocity_levels must be an int 1..127, got {velocity_levels!r}")
        if grid not in GRIDS:
            raise CodecError(f"grid must be one of {', '.join(GRIDS)}, got {grid!r}")
        self.grid = grid
        self.low_pitch, self.high_pitch = low_pitch, high_pitch
        self.velocity_levels = velocity_levels
        if grid == "metrical":
            if (time_bins, min_dt, max_dt) != (None, None, None):
                raise CodecError("time_bins, min_dt and max_dt are for grid 'log'; the metrical grid has note values")
            if not (isinstance(qpm, (int, float)) and 10 <= qpm <= 1000):
                raise CodecError(f"qpm must be a number 10..1000, got {qpm!r}")
            self.qpm = float(qpm)
            self.times = TimeBins.of_values([q * 60.0 / self.qpm for q in METRICAL_QUARTERS])
            self.time_bins, self.min_dt, self.max_dt = self.times.count, self.times.edges[0], self.times.values[-1]
        else:
            self.qpm = None
            self.time_bins = 12 if time_bins is None else time_bins
            self.min_dt = 0.015 if min_dt is None else float(min_dt)
            self.max_dt = 4.0 if max_dt is None else float(max_dt)
            self.times = TimeBins(self.time_bins, self.min_dt, self.max_dt, first_value=0.0)
        self.packing = MixedRadix((self.time_bins, high_pitch - low_pitch + 1, velocity_levels + 1))
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
        d = {"name": self.name, "low_pitch": self.low_pitch, "high_pitch": self.high_pitch, "grid": self.grid}
        if self.grid == "metrical":
            d["qpm"] = self.qpm
        else:
            d.update(time_bins=self.time_bins, min_dt=self.min_dt, max_dt=self.max_dt)
        d["velocity_levels"] = self.velocity_levels
        return d

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


def _from_description(d: dict) -> NotesCodec:
    args = {k: v for k, v in d.items() if k != "name"}
    if "grid" not in args and "time_bins" in args:
        args["grid"] = "log"  # written before the metrical grid existed
    return NotesCodec(**args)


register("notes", _from_description)
