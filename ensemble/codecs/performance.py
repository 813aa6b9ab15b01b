"""MIDI <-> Performance RNN events (Oore, Simon et al., Magenta 2017): 388 tokens.

A performance is a stream of events on a 10 ms grid, so the model hears expressive
timing and dynamics rather than a score:

==========  ==========  ==================================================
tokens      count       meaning
==========  ==========  ==================================================
0..127      128         note-on of that pitch (at the current velocity)
128..255    128         note-off of that pitch
256..355    100         time-shift of 10..1000 ms (token 256 + k: (k+1) * 10 ms)
356..387    32          velocity bin for the following note-ons
==========  ==========  ==================================================

A gap longer than a second is several time-shifts; a velocity token is written only
when the bin changes. MIDI is first turned into played notes by
`ensemble.codecs.midi_notes.notes_from_midi` (tracks and channels merged, tempo,
sustain pedal, re-strikes, orphan note-offs, the note-length cap), then quantised to
the 10 ms grid. Every encoded note lasts at least one step, so its on and off never
fall in the same step. Decoding honours the same rules in reverse: a re-struck pitch
ends the earlier note, an orphan note-off is ignored, a zero-length note is dropped,
and a note never turned off lasts ``max_note_seconds``.

``decode(encode(midi))`` is a playable MIDI file; ``encode(decode(tokens)) == tokens``
for every token sequence that `encode` made.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Sequence

if TYPE_CHECKING:  # mido is imported where MIDI files are read or written: the live server
    import mido  # loads codecs and never does either (mido's import is ~40 ms of start-up)

from ensemble.codecs import CodecError, register
from ensemble.codecs.midi_notes import (
    DEFAULT_MAX_NOTE_SECONDS,
    Note,
    check_note,
    midi_from_notes,
    notes_from_midi,
    restrike,
)

__all__ = ["PerformanceCodec", "Note", "notes_from_midi", "midi_from_notes"]

STEPS_PER_SECOND = 100  # the 10 ms grid
NOTE_ON = 0
NOTE_OFF = 128
TIME_SHIFT = 256
MAX_SHIFT_STEPS = 100
VELOCITY = 356
VELOCITY_BINS = 32
VOCAB_SIZE = 388
# Magenta's velocity bins: 4 velocities each, 1-4 -> bin 0 ... 125-127 -> bin 31.
VELOCITY_BIN_SIZE = 4
DEFAULT_VELOCITY = 64  # for note-ons before any velocity token (only in sampled streams)


def velocity_bin(velocity: int) -> int:
    """MIDI velocity 1..127 -> bin 0..31."""
    return (velocity - 1) // VELOCITY_BIN_SIZE


def bin_velocity(b: int) -> int:
    """Bin 0..31 -> the velocity at the middle of that bin."""
    low = 1 + b * VELOCITY_BIN_SIZE
    return (low + min(low + VELOCITY_BIN_SIZE - 1, 127)) // 2


class PerformanceCodec:
    name = "performance"
    input_kind, sources, live = "notes", ("abc", "midi", "score", "session"), None

    def __init__(self, max_note_seconds: float = DEFAULT_MAX_NOTE_SECONDS):
        max_note_seconds = float(max_note_seconds)
        if not max_note_seconds >= 1 / STEPS_PER_SECOND:
            raise CodecError(f"max_note_seconds must be >= 0.01, got {max_note_seconds!r}")
        self.max_note_seconds = max_note_seconds
        self._cap_steps = round(max_note_seconds * STEPS_PER_SECOND)

    @property
    def vocab_size(self) -> int:
        return VOCAB_SIZE

    def describe(self) -> dict:
        return {"name": self.name, "max_note_seconds": self.max_note_seconds}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PerformanceCodec) and other.max_note_seconds == self.max_note_seconds

    def __repr__(self) -> str:
        return f"PerformanceCodec(max_note_seconds={self.max_note_seconds})"

    # ------------------------------------------------------------------ MIDI

    def encode(self, midi: mido.MidiFile) -> list[int]:
        """A MIDI file -> tokens."""
        return self.encode_notes(notes_from_midi(midi, self.max_note_seconds))

    def encode_midi(self, midi: mido.MidiFile) -> list[int]:
        return self.encode(midi)

    def decode_midi(self, tokens: Iterable[int]) -> mido.MidiFile:
        return self.decode(tokens)

    def decode(self, tokens: Iterable[int]) -> mido.MidiFile:
        """Tokens -> a playable one-track MIDI file (120 bpm, 1 tick = 1 ms)."""
        return midi_from_notes(self.decode_to_notes(tokens))

    # ------------------------------------------------------------------ notes

    def encode_notes(self, notes: Iterable[Note]) -> list[int]:
        """Played notes (seconds) -> tokens, on the 10 ms grid."""
        spans = []
        for n in notes:
            check_note(n)
            start = round(n.start * STEPS_PER_SECOND)
            end = round(n.end * STEPS_PER_SECOND)
            end = min(max(end, start + 1), start + self._cap_steps)
            spans.append((start, end, int(n.pitch), int(n.velocity)))
        events = []  # (step, 0 = off before 1 = on, pitch, velocity)
        for start, end, pitch, velocity in restrike(spans):
            events.append((start, 1, pitch, velocity))
            events.append((end, 0, pitch, 0))
        events.sort()

        tokens: list[int] = []
        step = 0
        current_bin = None  # so the first note-on always states its velocity
        for when, on, pitch, velocity in events:
            gap = when - step
            while gap > 0:
                shift = min(gap, MAX_SHIFT_STEPS)
                tokens.append(TIME_SHIFT + shift - 1)
                gap -= shift
            step = when
            if on:
                b = velocity_bin(velocity)
                if b != current_bin:
                    tokens.append(VELOCITY + b)
                    current_bin = b
                tokens.append(NOTE_ON + pitch)
            else:
                tokens.append(NOTE_OFF + pitch)
        return tokens

    def decode_to_notes(self, tokens: Iterable[int]) -> list[Note]:
        """Tokens -> played notes, sorted by (start, pitch); see the module docstring."""
        cap = self._cap_steps
        step = 0
        velocity = DEFAULT_VELOCITY
        sounding: dict[int, tuple[int, int]] = {}  # pitch -> (start step, velocity)
        notes: list[Note] = []

        def finish(pitch: int, end: int) -> None:
            start, v = sounding.pop(pitch)
            end = min(end, start + cap)
            if end > start:
                notes.append(Note(start / STEPS_PER_SECOND, end / STEPS_PER_SECOND, pitch, v))

        for token in tokens:
            t = int(token)
            if t < NOTE_OFF:
                if t < 0:
                    raise CodecError(f"token {t} is out of range 0..{VOCAB_SIZE - 1}")
                if t in sounding:
                    finish(t, step)
                sounding[t] = (step, velocity)
            elif t < TIME_SHIFT:
                if t - NOTE_OFF in sounding:
                    finish(t - NOTE_OFF, step)
            elif t < VELOCITY:
                step += t - TIME_SHIFT + 1
            elif t < VOCAB_SIZE:
                velocity = bin_velocity(t - VELOCITY)
            else:
                raise CodecError(f"token {t} is out of range 0..{VOCAB_SIZE - 1}")
        for pitch, (start, _) in list(sounding.items()):
            finish(pitch, start + cap)
        notes.sort(key=lambda n: (n.start, n.pitch))
        return notes

    # ------------------------------------------------------------------ training

    def augment(self, tokens: Sequence[int], semitones: int = 0, stretch: float = 1.0) -> list[int]:
        """Transpose by `semitones` and scale time by `stretch` (notes leaving 0..127 are dropped)."""
        if not stretch > 0:
            raise CodecError(f"stretch must be > 0, got {stretch!r}")
        if semitones == 0 and stretch == 1.0:
            return list(tokens)
        notes = [
            Note(n.start * stretch, n.end * stretch, n.pitch + semitones, n.velocity)
            for n in self.decode_to_notes(tokens)
            if 0 <= n.pitch + semitones <= 127
        ]
        return self.encode_notes(notes)

    def describe_token(self, token: int) -> str:
        """A human-readable name for one token, for debugging and plots."""
        t = int(token)
        if not 0 <= t < VOCAB_SIZE:
            raise CodecError(f"token {t} is out of range 0..{VOCAB_SIZE - 1}")
        if t < NOTE_OFF:
            return f"on {t}"
        if t < TIME_SHIFT:
            return f"off {t - NOTE_OFF}"
        if t < VELOCITY:
            return f"shift {(t - TIME_SHIFT + 1) * 10}ms"
        return f"velocity {bin_velocity(t - VELOCITY)}"


register("performance", lambda d: PerformanceCodec(**{k: v for k, v in d.items() if k != "name"}))
