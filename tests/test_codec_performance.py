"""The performance codec and the MIDI -> played notes rules it stands on."""

from __future__ import annotations

import json

import mido
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ensemble import codecs
from ensemble.codecs import CodecError
from ensemble.codecs.performance import (
    Note,
    PerformanceCodec,
    bin_velocity,
    midi_from_notes,
    notes_from_midi,
    velocity_bin,
)

codec = PerformanceCodec()
ON, OFF, SHIFT, VEL = 0, 128, 256, 356


def build_midi(tracks, ticks_per_beat=480, type=1):
    """tracks: lists of (absolute tick, message); returns a MidiFile with delta times."""
    midi = mido.MidiFile(type=type, ticks_per_beat=ticks_per_beat)
    for events in tracks:
        track = mido.MidiTrack()
        last = 0
        for tick, msg in sorted(events, key=lambda e: e[0]):
            track.append(msg.copy(time=tick - last))
            last = tick
        midi.tracks.append(track)
    return midi


def on(pitch, velocity=80, channel=0):
    return mido.Message("note_on", note=pitch, velocity=velocity, channel=channel)


def off(pitch, channel=0, zero_velocity_on=False):
    if zero_velocity_on:
        return mido.Message("note_on", note=pitch, velocity=0, channel=channel)
    return mido.Message("note_off", note=pitch, channel=channel)


def pedal(down, channel=0):
    return mido.Message("control_change", control=64, value=127 if down else 0, channel=channel)


def tempo(bpm):
    return mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(bpm))


def assert_playable(midi: mido.MidiFile):
    """One track, a tempo, and every note-on ended by exactly one note-off."""
    assert len(midi.tracks) == 1
    assert any(m.type == "set_tempo" for m in midi.tracks[0])
    held = set()
    for msg in midi.tracks[0]:
        if msg.type == "note_on" and msg.velocity > 0:
            assert (msg.channel, msg.note) not in held, f"note-on while held: {msg}"
            held.add((msg.channel, msg.note))
        elif msg.type in ("note_on", "note_off"):
            assert (msg.channel, msg.note) in held, f"note-off without note-on: {msg}"
            held.remove((msg.channel, msg.note))
    assert not held, f"hanging notes: {held}"


def assert_same_notes(expected, got, tolerance=0.0101):
    assert len(got) == len(expected), (expected, got)
    for e, g in zip(expected, got):
        assert g.pitch == e.pitch
        assert abs(g.start - e.start) <= tolerance, (e, g)
        assert abs(g.end - e.end) <= tolerance, (e, g)
        assert velocity_bin(g.velocity) == velocity_bin(e.velocity), (e, g)


def round_trip(midi):
    tokens = codec.encode(midi)
    out = codec.decode(tokens)
    assert_playable(out)
    return tokens, out


# ---------------------------------------------------------------------- vocabulary


def test_vocabulary_layout():
    assert codec.vocab_size == 388
    notes = [Note(0.0, 0.5, 60, 100), Note(2.0, 2.01, 61, 100)]
    tokens = codec.encode_notes(notes)
    assert tokens == [VEL + velocity_bin(100), ON + 60, SHIFT + 49, OFF + 60,
                      SHIFT + 99, SHIFT + 49, ON + 61, SHIFT + 0, OFF + 61]
    assert [codec.describe_token(t) for t in tokens[:4]] == ["velocity 98", "on 60", "shift 500ms", "off 60"]


def test_velocity_bins_cover_midi_and_decode_inside_themselves():
    assert velocity_bin(1) == 0 and velocity_bin(127) == 31
    assert sorted({velocity_bin(v) for v in range(1, 128)}) == list(range(32))
    for b in range(32):
        assert velocity_bin(bin_velocity(b)) == b


def test_velocity_token_only_when_the_bin_changes():
    chord = [Note(0.0, 1.0, p, 90) for p in (60, 64, 67)] + [Note(1.0, 2.0, 62, 91), Note(2.0, 3.0, 50, 30)]
    tokens = codec.encode_notes(chord)
    velocity_tokens = [t for t in tokens if t >= VEL]
    assert velocity_tokens == [VEL + velocity_bin(90), VEL + velocity_bin(30)]  # 90 and 91 share a bin


def test_long_gap_is_several_time_shifts():
    tokens = codec.encode_notes([Note(0.0, 0.01, 60, 64), Note(2.51, 2.52, 60, 64)])
    assert tokens[:4] == [VEL + velocity_bin(64), ON + 60, SHIFT + 0, OFF + 60]
    assert tokens[4:7] == [SHIFT + 99, SHIFT + 99, SHIFT + 49]  # 2.5 s


def test_describe_and_load():
    for c in (PerformanceCodec(), PerformanceCodec(max_note_seconds=2.5)):
        description = json.loads(json.dumps(c.describe()))
        assert description["name"] == "performance"
        assert codecs.load(description) == c
    assert PerformanceCodec(2.5) != PerformanceCodec()
    with pytest.raises(CodecError):
        PerformanceCodec(max_note_seconds=0)


def test_bad_tokens_and_inputs():
    with pytest.raises(CodecError, match="388"):
        codec.decode([0, 388])
    with pytest.raises(CodecError):
        codec.decode([-1])
    with pytest.raises(CodecError):
        codec.encode([60, 61])  # not a MIDI file
    with pytest.raises(CodecError, match="pitch"):
        codec.encode_notes([Note(0.0, 1.0, 128, 64)])
    with pytest.raises(CodecError, match="velocity"):
        codec.encode_notes([Note(0.0, 1.0, 60, 0)])
    with pytest.raises(CodecError, match="times"):
        codec.encode_notes([Note(float("nan"), 1.0, 60, 64)])


# ---------------------------------------------------------------------- MIDI -> notes


def test_tracks_channels_tempo_change_and_velocity_zero_note_offs():
    # 480 ticks per beat; 120 bpm until tick 960 (1.0 s), then 240 bpm (480 ticks = 0.25 s)
    conductor = [(0, tempo(120)), (960, tempo(240))]
    piano = [(0, on(60, 100)), (480, off(60)), (1440, on(62, 50)), (1920, off(62))]
    strings = [(240, on(67, 70, channel=3)), (1200, off(67, channel=3, zero_velocity_on=True)),
               (1920, on(48, 20, channel=5)), (2400, off(48, channel=5, zero_velocity_on=True))]
    midi = build_midi([conductor, piano, strings])
    expected = [Note(0.0, 0.5, 60, 100), Note(0.25, 1.125, 67, 70),
                Note(1.25, 1.5, 62, 50), Note(1.5, 1.75, 48, 20)]
    got = notes_from_midi(midi)
    assert_same_notes(expected, got, tolerance=1e-9)
    assert [n.velocity for n in got] == [100, 70, 50, 20]
    _, out = round_trip(midi)
    assert_same_notes(expected, notes_from_midi(out))


def test_sustain_pedal_lengthens_notes_per_channel():
    midi = build_midi([[
        (0, on(60)), (240, pedal(True)), (480, off(60)),   # released under the pedal
        (0, on(72, channel=1)), (480, off(72, channel=1)),  # other channel: no pedal
        (720, pedal(False)),                                 # pedal up at 0.75 s ends 60
        (960, on(64)), (1200, off(64)),                      # after the pedal: normal
    ]])
    got = notes_from_midi(midi)
    assert_same_notes([Note(0.0, 0.75, 60, 80), Note(0.0, 0.5, 72, 80), Note(1.0, 1.25, 64, 80)], got, 1e-9)
    _, out = round_trip(midi)
    assert_same_notes(got, notes_from_midi(out))


def test_pedal_held_note_struck_again_is_a_restrike():
    midi = build_midi([[(0, pedal(True)), (0, on(60)), (240, off(60)), (480, on(60)), (600, off(60)),
                        (960, pedal(False))]])
    assert_same_notes([Note(0.0, 0.5, 60, 80), Note(0.5, 1.0, 60, 80)], notes_from_midi(midi), 1e-9)


def test_overlapping_same_pitch_is_a_restrike():
    midi = build_midi([[
        (0, on(60, 90)), (480, on(60, 40)), (960, off(60)), (1440, off(60)),  # second off is an orphan
        # a sequencer's "restart" at one tick: the new note-on comes before the old note-off
        (1920, on(62)), (2400, on(62, 30)), (2400, off(62)), (2880, off(62)),
    ]])
    got = notes_from_midi(midi)
    expected = [Note(0.0, 0.5, 60, 90), Note(0.5, 1.0, 60, 40), Note(2.0, 2.5, 62, 80), Note(2.5, 3.0, 62, 30)]
    assert_same_notes(expected, got, 1e-9)
    _, out = round_trip(midi)
    assert_same_notes(expected, notes_from_midi(out))


def test_same_pitch_on_two_channels_merges_into_one_voice():
    midi = build_midi([[(0, on(64, channel=0)), (0, on(64, channel=1)), (480, off(64, channel=1)),
                        (960, off(64, channel=0))]])
    # a unison is one note; the other channel's late note-off finds nothing of its own to end
    assert_same_notes([Note(0.0, 0.5, 64, 80)], notes_from_midi(midi), 1e-9)


def test_note_off_from_another_channel_does_not_end_the_restrike():
    midi = build_midi([[(0, on(64, 90, channel=0)), (240, on(64, 50, channel=1)), (480, off(64, channel=0)),
                        (720, off(64, channel=1))]])
    assert_same_notes([Note(0.0, 0.25, 64, 90), Note(0.25, 0.75, 64, 50)], notes_from_midi(midi), 1e-9)


def test_orphan_note_off_is_dropped():
    midi = build_midi([[(0, off(70)), (240, on(60)), (480, off(60)), (720, off(60)), (960, off(61))]])
    assert_same_notes([Note(0.25, 0.5, 60, 80)], notes_from_midi(midi), 1e-9)
    tokens = codec.encode(midi)
    assert OFF + 70 not in tokens and OFF + 61 not in tokens
    assert tokens.count(OFF + 60) == 1


def test_cap_ends_a_note_never_released_and_a_very_long_one():
    midi = build_midi([[(0, on(60)), (0, on(62)), (480 * 2 * 20, off(62)), (480, on(64)), (960, off(64))]])
    got = notes_from_midi(midi)
    assert_same_notes([Note(0.0, 8.0, 60, 80), Note(0.0, 8.0, 62, 80), Note(0.5, 1.0, 64, 80)], got, 1e-9)
    short = PerformanceCodec(max_note_seconds=2.0)
    out = short.decode(short.encode(midi))
    assert_playable(out)
    assert [round(n.end - n.start, 2) for n in notes_from_midi(out)] == [2.0, 2.0, 0.5]


def test_channels_filter_leaves_drums_out():
    midi = build_midi([[(0, on(36, channel=9)), (240, off(36, channel=9)), (0, on(60)), (240, off(60))]])
    assert [n.pitch for n in notes_from_midi(midi)] == [36, 60]
    assert [n.pitch for n in notes_from_midi(midi, channels=set(range(16)) - {9})] == [60]


def test_bach_chorale_round_trips_every_note(tmp_path):
    music21 = pytest.importorskip("music21")
    path = tmp_path / "bwv66.6.mid"
    music21.corpus.parse("bach/bwv66.6").write("midi", fp=str(path))
    midi = mido.MidiFile(path)
    notes = notes_from_midi(midi)
    assert len(notes) > 100
    tokens, out = round_trip(midi)
    assert_same_notes(notes, notes_from_midi(out))
    assert codec.encode(out) == tokens
    assert out.length == pytest.approx(max(n.end for n in notes), abs=0.006)


# ---------------------------------------------------------------------- properties

note_lists = st.lists(
    st.builds(
        lambda start, length, pitch, velocity: Note(start, start + length, pitch, velocity),
        st.floats(0, 30), st.floats(0, 12), st.integers(0, 127), st.integers(1, 127),
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(note_lists)
def test_tokens_midi_tokens_identity(notes):
    tokens = codec.encode_notes(notes)
    midi = codec.decode(tokens)
    assert_playable(midi)
    assert codec.encode(midi) == tokens
    assert codec.encode_notes(codec.decode_to_notes(tokens)) == tokens


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 40), st.integers(1, 8), st.integers(21, 108), st.integers(1, 127)),
             max_size=30),
    st.sampled_from([96, 480, 960]),
    st.integers(40, 240),
)
def test_midi_round_trip_keeps_every_note(spans, ticks_per_beat, bpm):
    """Notes on a beat grid, one per pitch at a time, at any tempo: all survive."""
    events, taken = [], {}
    for beat, beats, pitch, velocity in spans:
        if any(b < beat + beats and beat < e for b, e in taken.get(pitch, [])):
            continue  # keep the simple case: no same-pitch overlaps
        taken.setdefault(pitch, []).append((beat, beat + beats))
        events += [(beat * ticks_per_beat, on(pitch, velocity)), ((beat + beats) * ticks_per_beat, off(pitch))]
    midi = build_midi([[(0, tempo(bpm))], events], ticks_per_beat)
    notes = notes_from_midi(midi)
    assert len(notes) == sum(len(v) for v in taken.values())
    _, out = round_trip(midi)
    assert_same_notes(notes, notes_from_midi(out))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 387), max_size=200))
def test_any_token_stream_decodes_to_playable_midi(tokens):
    """What a model samples may be nonsense; it must still play and end every note."""
    midi = codec.decode(tokens)
    assert_playable(midi)
    for n in codec.decode_to_notes(tokens):
        assert 0 < n.end - n.start <= codec.max_note_seconds + 1e-9


def test_augment_transposes_and_stretches():
    tokens = codec.encode_notes([Note(0.0, 0.5, 60, 80), Note(0.5, 1.0, 127, 80)])
    up = codec.decode_to_notes(codec.augment(tokens, semitones=2, stretch=2.0))
    assert [(n.start, n.end, n.pitch) for n in up] == [(0.0, 1.0, 62)]  # 129 is dropped
    assert codec.augment(tokens) == tokens


def test_midi_from_notes_is_playable_even_for_overlaps_and_zero_lengths():
    notes = [Note(0.0, 1.0, 60, 64), Note(0.5, 1.5, 60, 64), Note(2.0, 2.0, 61, 64)]
    midi = midi_from_notes(notes)
    assert_playable(midi)
    assert midi.ticks_per_beat == 500 and mido.tick2second(10, 500, midi.tracks[0][0].tempo) == pytest.approx(0.01)
    got = notes_from_midi(midi)
    assert [(n.start, n.end, n.pitch) for n in got] == [(0.0, 0.5, 60), (0.5, 1.5, 60), (2.0, 2.001, 61)]
