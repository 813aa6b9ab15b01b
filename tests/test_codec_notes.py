"""The notes codec: one packed token per played event."""

from __future__ import annotations

import json
import math

import mido
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ensemble import codecs
from ensemble.codecs import CodecError
from ensemble.codecs.midi_notes import Note, notes_from_midi
from ensemble.codecs.notes import NoteEvent, NotesCodec, fold_pitch, from_notes, to_notes

codec = NotesCodec(grid="log")  # most tests here: the first codec's log grid (every older model)
metrical = NotesCodec()


def time_bin(dt):
    return codec.packing.unpack(codec.encode_event(dt, 60, 64))[0]


def velocity_bin(velocity):
    return codec.packing.unpack(codec.encode_event(0.1, 60, velocity))[2]


def test_default_vocabulary_is_moderate():
    assert metrical.vocab_size == 15 * 61 * 5 == 4575
    assert NotesCodec(velocity_levels=1).vocab_size == 15 * 61 * 2 == 1830
    assert codec.vocab_size == 12 * 61 * 5 == 3660
    assert NotesCodec(low_pitch=21, high_pitch=108, time_bins=16, velocity_levels=7, grid="log").vocab_size == 16 * 88 * 8


def test_metrical_bins_decode_to_exact_note_values_with_edges_between_them():
    quarter = 0.5  # at the reference 120 qpm
    values = metrical.times.values
    assert values[0] == 0.0 and values == sorted(values)
    for q in (1 / 8, 1 / 6, 1 / 4, 1 / 3, 3 / 8, 1 / 2, 3 / 4, 1, 3 / 2, 2, 3, 4, 6):
        token = metrical.encode_event(q * quarter, 60, 64)
        assert metrical.decode_token(token).dt == pytest.approx(q * quarter, rel=1e-12)
        # human timing: 5 % early or late is still the same note value (the snug pair,
        # a triplet eighth and a dotted sixteenth, is 12.5 % apart)
        assert metrical.encode_event(q * quarter * 0.95, 60, 64) == token == metrical.encode_event(q * quarter * 1.05, 60, 64)
    assert metrical.decode_token(metrical.encode_event(60.0, 60, 64)).dt == 8 * quarter  # "8 quarters or more"
    assert metrical.encode_event(0.02, 60, 64) == metrical.encode_event(0.0, 60, 64)  # a spread chord is together
    # an eighth and a dotted eighth, a sixteenth and a triplet eighth: no longer one bin
    assert len({metrical.encode_event(dt, 60, 64) for dt in (0.25, 0.375, 0.125, 1 / 6)}) == 4


def test_a_tempo_is_a_different_reference_grid():
    slow = NotesCodec(qpm=60)
    assert slow.times.values[1:] == pytest.approx([2 * v for v in metrical.times.values[1:]])
    assert codecs.load(json.loads(json.dumps(slow.describe()))) == slow != metrical


def test_descriptions_written_before_the_grid_existed_load_as_the_log_grid():
    old = {"name": "notes", "low_pitch": 36, "high_pitch": 96, "time_bins": 12, "min_dt": 0.015,
           "max_dt": 4.0, "velocity_levels": 4}
    loaded = codecs.load(old)
    assert loaded == codec and loaded.grid == "log" and loaded.vocab_size == 3660
    assert codecs.load({"name": "notes"}) == metrical
    with pytest.raises(CodecError, match="log"):
        NotesCodec(time_bins=16)
    with pytest.raises(CodecError, match="grid"):
        NotesCodec(grid="beats")


def test_a_real_tune_keeps_its_length_and_rhythm_through_the_metrical_codec():
    from ensemble import corpora

    tune = "X:1\nT:test\nM:6/8\nL:1/8\nK:D\n|:dAF DFA|d2e f2g|a>ba gfe|d3 d2:|\n(3ABc d2 z2|B/c/d e4|]\n"
    notes = corpora.abc_notes(tune)
    events = from_notes(notes)
    decoded = metrical.decode(metrical.encode(events))
    assert [round(e.dt, 9) for e in decoded] == [round(e.dt, 9) for e in events]
    back = to_notes(decoded)
    assert back[-1].end == pytest.approx(notes[-1].end)
    assert NotesCodec(grid="log").decode(codec.encode(events))[-1] != decoded[-1]  # the log grid did not keep it


def test_every_token_decodes_and_encodes_back_to_itself():
    for token in range(codec.vocab_size):
        e = codec.decode_token(token)
        assert codec.encode_event(e.dt, e.pitch, e.velocity) == token
        t, p, v = codec.packing.unpack(token)
        assert (e.pitch, e.velocity == 0) == (36 + p, v == 0)
    assert codec.decode(list(range(codec.vocab_size))) == [codec.decode_token(t) for t in range(codec.vocab_size)]


def test_packing_puts_time_first_then_pitch_then_velocity():
    assert codec.encode_event(0.0, 36, 0) == 0
    assert codec.encode_event(0.0, 36, 127) == 4
    assert codec.encode_event(0.0, 37, 0) == 5
    assert codec.encode_event(0.02, 36, 0) == 61 * 5
    assert codec.encode_event(100.0, 96, 127) == codec.vocab_size - 1


def test_time_bins_are_monotonic_and_decode_inside_themselves():
    dts = [i / 1000 for i in range(0, 8000, 3)]
    bins = [time_bin(dt) for dt in dts]
    assert bins == sorted(bins)
    assert set(bins) == set(range(12))
    values = codec.times.values
    assert values == sorted(values) and values[0] == 0.0
    assert [time_bin(v) for v in values] == list(range(12))
    # log spacing: each bounded bin is the same ratio wide
    edges = codec.times.edges
    ratios = [b / a for a, b in zip(edges, edges[1:])]
    assert max(ratios) == pytest.approx(min(ratios))


def test_chord_trill_run_and_pause_are_told_apart():
    chord, trill, run, pause = time_bin(0.004), time_bin(0.06), time_bin(0.15), time_bin(3.0)
    assert chord == 0
    assert len({chord, trill, run, pause}) == 4
    assert time_bin(0.05) != time_bin(3.5) and time_bin(0.08) != time_bin(2.0)
    assert time_bin(10.0) == time_bin(60.0) == 11  # "a long time" is one bin


def test_velocity_bins():
    assert velocity_bin(0) == 0
    assert [velocity_bin(v) for v in (1, 32, 33, 64, 65, 96, 97, 127)] == [1, 1, 2, 2, 3, 3, 4, 4]
    for token in range(5):
        v = codec.decode_token(token).velocity
        assert velocity_bin(v) == token


@given(st.integers(0, 127))
def test_pitches_outside_the_range_fold_by_octaves(pitch):
    folded = codec.decode_token(codec.encode_event(0.1, pitch, 64)).pitch
    assert 36 <= folded <= 96
    assert folded % 12 == pitch % 12
    if 36 <= pitch <= 96:
        assert folded == pitch
    else:
        assert abs(folded - pitch) < abs(36 - pitch) + 12 and abs(folded - pitch) < abs(96 - pitch) + 12


def test_fold_examples():
    assert [fold_pitch(p, 36, 96) for p in (0, 24, 35, 36, 96, 97, 100, 127)] == [36, 36, 47, 36, 96, 85, 88, 91]


def test_bad_events_raise_one_clear_error():
    with pytest.raises(CodecError, match="dt"):
        codec.encode_event(float("nan"), 60, 64)
    with pytest.raises(CodecError, match="dt"):
        codec.encode_event(-0.1, 60, 64)
    with pytest.raises(CodecError, match="dt"):
        codec.encode_event("soon", 60, 64)
    with pytest.raises(CodecError, match="pitch"):
        codec.encode_event(0.1, 128, 64)
    with pytest.raises(CodecError, match="pitch"):
        codec.encode_event(0.1, 60.5, 64)
    with pytest.raises(CodecError, match="velocity"):
        codec.encode_event(0.1, 60, 128)
    with pytest.raises(CodecError, match="velocity"):
        codec.encode_event(0.1, 60, -1)
    for token in (-1, codec.vocab_size, "7", None):
        with pytest.raises(CodecError, match="token"):
            codec.decode_token(token)
    with pytest.raises(CodecError, match="octave"):
        NotesCodec(low_pitch=60, high_pitch=70)


def test_describe_and_load():
    for c in (codec, metrical, NotesCodec(velocity_levels=1),
              NotesCodec(low_pitch=21, high_pitch=108, time_bins=16, min_dt=0.01, max_dt=8, velocity_levels=8, grid="log")):
        description = json.loads(json.dumps(c.describe()))
        assert description["name"] == "notes"
        rebuilt = codecs.load(description)
        assert rebuilt == c and rebuilt.vocab_size == c.vocab_size
        assert [rebuilt.decode_token(t) for t in range(0, c.vocab_size, 97)] == [
            c.decode_token(t) for t in range(0, c.vocab_size, 97)]
    assert NotesCodec(time_bins=16, grid="log") != codec and metrical != codec


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, codec.vocab_size - 1), max_size=50))
def test_decode_then_encode_is_identity(tokens):
    assert codec.encode(codec.decode(tokens)) == tokens


note_lists = st.lists(
    st.builds(
        lambda start, length, pitch, velocity: Note(start, start + length, pitch, velocity),
        st.floats(0, 20), st.floats(0, 5), st.integers(36, 96), st.integers(1, 127),
    ),
    max_size=30,
)


def non_overlapping(notes):
    """Drop notes that overlap an earlier note of the same pitch (or start with it)."""
    kept = []
    for n in notes:
        if all(k.pitch != n.pitch or n.end < k.start or k.end < n.start for k in kept):
            kept.append(n)
    return kept


@settings(max_examples=80, deadline=None)
@given(note_lists)
def test_notes_to_events_and_back(notes):
    notes = non_overlapping(notes)
    events = from_notes(notes)
    assert len(events) == 2 * len(notes)
    assert all(e.dt >= 0 for e in events)
    back = to_notes(events)
    expected = sorted(notes, key=lambda n: (n.start, n.pitch))
    assert [(n.pitch, n.velocity) for n in back] == [(n.pitch, n.velocity) for n in expected]
    for b, e in zip(back, expected):
        assert b.start == pytest.approx(e.start, abs=1e-9) and b.end == pytest.approx(e.end, abs=1e-9)


@settings(max_examples=80, deadline=None)
@given(note_lists)
def test_events_survive_tokens_within_bin_precision(notes):
    events = from_notes(non_overlapping(notes))
    decoded = codec.decode(codec.encode(events))
    for original, got in zip(events, decoded, strict=True):
        assert got.pitch == original.pitch
        assert velocity_bin(got.velocity) == velocity_bin(original.velocity)
        assert time_bin(got.dt) == time_bin(original.dt)
    # and the decoded events pair up into the same notes again
    assert sorted(n.pitch for n in to_notes(decoded)) == sorted(n.pitch for n in non_overlapping(notes))


def test_from_notes_orders_offs_before_ons_at_equal_times():
    legato = [Note(0.0, 0.5, 60, 64), Note(0.5, 1.0, 62, 64), Note(1.0, 1.0, 64, 64)]
    events = from_notes(legato)
    assert [(e.pitch, e.velocity > 0) for e in events] == [
        (60, True), (60, False), (62, True), (62, False), (64, True), (64, False)]
    assert [e.dt for e in events] == [0.0, 0.5, 0.0, 0.5, 0.0, 0.0]


def test_to_notes_restrikes_drops_orphans_and_caps_unpaired():
    events = [NoteEvent(0.1, 60, 80), NoteEvent(0.2, 60, 90), NoteEvent(0.3, 60, 0),
              NoteEvent(0.0, 60, 0), NoteEvent(0.0, 61, 0), NoteEvent(0.4, 72, 50)]
    got = [(round(n.start, 6), round(n.end, 6), n.pitch, n.velocity) for n in to_notes(events, max_note_seconds=2.0)]
    assert got == [(0.1, 0.3, 60, 80), (0.3, 0.6, 60, 90), (1.0, 3.0, 72, 50)]


def test_midi_file_to_tokens_and_back_to_playable_midi():
    midi = mido.MidiFile(ticks_per_beat=480)
    track = mido.MidiTrack()
    midi.tracks.append(track)
    track += [mido.Message("note_on", note=60, velocity=100, time=0),
              mido.Message("note_on", note=64, velocity=100, time=0),
              mido.Message("note_off", note=60, time=480),
              mido.Message("note_on", note=64, velocity=0, time=0),
              mido.Message("note_on", note=67, velocity=40, time=480),
              mido.Message("note_off", note=67, time=60)]
    tokens = codec.encode_midi(midi)
    assert len(tokens) == 6
    events = codec.decode(tokens)
    assert [time_bin(e.dt) for e in events] == [0, 0, time_bin(0.5), 0, time_bin(0.5), time_bin(0.0625)]
    out = codec.to_midi(events)
    notes = notes_from_midi(out)
    assert [(n.pitch, n.velocity) for n in notes] == [(60, 112), (64, 112), (67, 48)]
    assert all(math.isclose(n.end - n.start, codec.times.values[time_bin(0.5)], abs_tol=0.001) for n in notes[:2])


def test_augment_transposes_exactly_and_folds():
    tokens = codec.encode([NoteEvent(0.0, 60, 80), NoteEvent(0.1, 95, 80), NoteEvent(0.1, 60, 0)])
    up = codec.decode(codec.augment(tokens, semitones=3))
    assert [e.pitch for e in up] == [63, 86, 63]  # 98 folds to 86
    assert codec.augment(tokens) == tokens
    slower = codec.decode(codec.augment(tokens, stretch=3.0))
    assert [time_bin(e.dt) for e in slower] == [0, time_bin(0.3), time_bin(0.3)]


def test_a_small_stretch_moves_tokens_when_dt_is_jittered_within_its_bin():
    import numpy as np

    codec = NotesCodec(grid="log")
    rng = np.random.default_rng(0)
    events = [NoteEvent(float(dt), 60 + i % 12, 90 if i % 2 == 0 else 0)
              for i, dt in enumerate(rng.uniform(0.05, 1.5, size=400))]
    tokens = codec.encode(events)
    assert codec.augment(tokens, stretch=1.1) == tokens  # representatives alone: nothing crosses an edge
    stretched = codec.augment(tokens, stretch=1.1, rng=np.random.default_rng(1))
    moved = [codec.times.index(a.dt) - codec.times.index(b.dt)
             for a, b in zip(codec.decode(stretched), codec.decode(tokens))]
    assert set(moved) <= {0, 1} and 0.05 < np.mean(moved) < 0.4  # ~log(1.1)/log(1.75) of them, one bin later
    assert codec.augment(tokens, rng=np.random.default_rng(2)) == tokens  # no stretch, no change
    assert [e.pitch for e in codec.decode(stretched)] == [e.pitch for e in codec.decode(tokens)]
