"""Played notes: the one shared form between MIDI files and the MIDI codecs.

A MIDI file says *how* a note was played (note-on, note-off or note-on with velocity 0,
sustain pedal, a key struck again before it was released, tempo changes, several tracks
and channels). The codecs only care *what* sounded: a pitch from one time to another at
one loudness. `notes_from_midi` resolves all of that once, here, so `performance` and
`notes` learn from exactly the same notes, and `midi_from_notes` writes notes back as a
plain, playable file.

The rules, in order of how often they matter:

- all tracks and channels are merged into one stream of notes; tempo changes anywhere
  are honoured (times are seconds, not ticks);
- note-on with velocity 0 is a note-off;
- the sustain pedal (CC64 >= 64 down, < 64 up) is per channel: a key released while
  its channel's pedal is down keeps sounding until the pedal comes up;
- a pitch struck again while it still sounds ends the earlier note there (a re-strike),
  whichever channel it came from, because the merged stream has one voice per pitch;
  a note-off at the very instant of a re-strike belongs to the earlier note, not the new;
  two strikes of one pitch at the same instant (a unison of two voices) are one note;
- a note-off for a note that is not sounding (an orphan) is dropped;
- no note lasts longer than ``max_note_seconds``: a note never released, or held by a
  pedal that never comes up, ends there, so nothing hangs.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Sequence

if TYPE_CHECKING:  # mido is imported where MIDI files are read or written: the live server
    import mido  # loads codecs and never does either (mido's import is ~40 ms of start-up)

from ensemble.codecs import CodecError

DEFAULT_MAX_NOTE_SECONDS = 8.0
DEFAULT_TEMPO = 500_000  # microseconds per beat: 120 bpm, MIDI's own default
# 500 ticks per beat at 120 bpm make one tick exactly one millisecond, so the 10 ms grid
# of the performance codec lands on whole ticks.
DEFAULT_TICKS_PER_BEAT = 500
SUSTAIN_PEDAL = 64


@dataclass(frozen=True, slots=True)
class Note:
    """A note as it sounded: seconds from the start of the piece, MIDI pitch and velocity."""

    start: float
    end: float
    pitch: int
    velocity: int

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass(slots=True)
class _Sounding:
    start: float
    velocity: int
    channel: int
    key_down: bool = True  # False: released, held only by the pedal
    restrike: bool = False  # True: this note-on cut an earlier note of the same pitch


def notes_from_midi(midi: mido.MidiFile, max_note_seconds: float = DEFAULT_MAX_NOTE_SECONDS,
                    channels: Iterable[int] | None = None) -> list[Note]:
    """Every note a MIDI file plays, sorted by (start, pitch); see the module docstring.

    `channels` (0-based) keeps only those channels, e.g. ``range(16)`` minus 9 to leave
    the General MIDI drums out; None keeps them all.
    """
    import mido

    if not isinstance(midi, mido.MidiFile):
        raise CodecError(f"expected a mido.MidiFile, got {type(midi).__name__}")
    if not max_note_seconds > 0:
        raise CodecError(f"max_note_seconds must be > 0, got {max_note_seconds!r}")
    keep = None if channels is None else frozenset(channels)
    ticks_per_beat = midi.ticks_per_beat
    tempo = DEFAULT_TEMPO
    now = 0.0
    sounding: dict[int, _Sounding] = {}  # pitch -> the note sounding at that pitch
    pedal_down = [False] * 16
    notes: list[Note] = []

    def finish(pitch: int, end: float) -> None:
        s = sounding.pop(pitch)
        notes.append(Note(s.start, min(end, s.start + max_note_seconds), pitch, s.velocity))

    for msg in mido.merge_tracks(midi.tracks):
        if msg.time:
            now += mido.tick2second(msg.time, ticks_per_beat, tempo)
        if msg.type == "set_tempo":
            tempo = msg.tempo
            continue
        if msg.type not in ("note_on", "note_off", "control_change"):
            continue
        if keep is not None and msg.channel not in keep:
            continue
        channel = msg.channel
        if msg.type == "note_on" and msg.velocity > 0:
            restrike = msg.note in sounding
            if restrike and sounding[msg.note].start == now:
                del sounding[msg.note]  # two strikes at one instant (a unison) are one note
            elif restrike:
                finish(msg.note, now)
            sounding[msg.note] = _Sounding(now, msg.velocity, channel, restrike=restrike)
        elif msg.type in ("note_on", "note_off"):
            s = sounding.get(msg.note)
            if s is None or s.channel != channel or not s.key_down:
                continue  # orphan: nothing of ours to end
            if s.restrike and s.start == now:
                continue  # the earlier note's off, sorted after the re-strike at the same tick
            if pedal_down[channel]:
                s.key_down = False
            else:
                finish(msg.note, now)
        elif msg.control == SUSTAIN_PEDAL:
            down = msg.value >= 64
            if pedal_down[channel] and not down:
                for pitch in [p for p, s in sounding.items() if s.channel == channel and not s.key_down]:
                    finish(pitch, now)
            pedal_down[channel] = down
    for pitch in list(sounding):
        finish(pitch, math.inf)  # never ended: the cap ends it
    notes.sort(key=lambda n: (n.start, n.pitch))
    return notes


def restrike(spans: Iterable[tuple]) -> list[tuple]:
    """(start, end, pitch, velocity) spans with same-pitch overlaps resolved as re-strikes.

    A span that starts while an earlier one of its pitch still sounds ends the earlier
    one there; of two that start at the same time the later-listed one wins. Works on
    seconds or on integer grid steps. Returns spans sorted by (start, pitch).
    """
    by_pitch: dict[int, list[list]] = {}
    for start, end, pitch, velocity in sorted(spans, key=lambda s: (s[2], s[0])):
        same = by_pitch.setdefault(pitch, [])
        if same and same[-1][0] == start:
            same.pop()
        if same and start < same[-1][1]:
            same[-1][1] = start
        same.append([start, end, pitch, velocity])
    out = [tuple(s) for same in by_pitch.values() for s in same]
    out.sort(key=lambda s: (s[0], s[2]))
    return out


def check_note(note: Note) -> None:
    """Raise CodecError unless `note` is a real, playable note."""
    if not isinstance(note.pitch, numbers.Integral) or not 0 <= note.pitch <= 127:
        raise CodecError(f"note pitch must be an int 0..127, got {note.pitch!r}")
    if not isinstance(note.velocity, numbers.Integral) or not 1 <= note.velocity <= 127:
        raise CodecError(f"note velocity must be an int 1..127, got {note.velocity!r}")
    if not (0 <= note.start <= note.end < math.inf):
        raise CodecError(f"note times must satisfy 0 <= start <= end < inf, got {note.start!r}..{note.end!r}")


def midi_from_notes(notes: Sequence[Note], ticks_per_beat: int = DEFAULT_TICKS_PER_BEAT,
                    tempo: int = DEFAULT_TEMPO, channel: int = 0, program: int | None = None) -> mido.MidiFile:
    """A playable one-track MIDI file of `notes`.

    Every note-on gets its note-off: a same-pitch overlap becomes a re-strike, a note
    shorter than one tick lasts one tick, and at equal times note-offs come first.
    """
    import mido

    if not 0 <= channel <= 15:
        raise CodecError(f"channel must be 0..15, got {channel!r}")
    ticks_per_second = ticks_per_beat * 1e6 / tempo
    spans = []
    for n in notes:
        check_note(n)
        start = round(n.start * ticks_per_second)
        spans.append((start, max(round(n.end * ticks_per_second), start + 1), int(n.pitch), int(n.velocity)))
    events = []  # (tick, 0 = off before 1 = on, pitch, velocity)
    for start, end, pitch, velocity in restrike(spans):
        events.append((start, 1, pitch, velocity))
        events.append((end, 0, pitch, 0))
    events.sort()

    track = mido.MidiTrack()
    track.append(mido.MetaMessage("set_tempo", tempo=tempo, time=0))
    if program is not None:
        track.append(mido.Message("program_change", channel=channel, program=program, time=0))
    last = 0
    for tick, on, pitch, velocity in events:
        kind = "note_on" if on else "note_off"
        track.append(mido.Message(kind, channel=channel, note=pitch, velocity=velocity, time=tick - last))
        last = tick
    track.append(mido.MetaMessage("end_of_track", time=0))
    midi = mido.MidiFile(type=0, ticks_per_beat=ticks_per_beat)
    midi.tracks.append(track)
    return midi
