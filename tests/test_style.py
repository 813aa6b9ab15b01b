"""Style following and steering (ensemble.server.style), with the real notes codec and
real tiny models; the server tests drive it over OSC. Times are simulated loop times."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ensemble.codecs.notes import NotesCodec
from ensemble.server.style import Style, StyleSettings, StyleTables, parse_scale

CODEC = NotesCodec()
TABLES = StyleTables(CODEC)


def play(style: Style, onsets, pitches=None, velocities=None, legato=True):
    """A player's notes at these onset times (each ends when the next begins); returns the
    time of their last event."""
    pitches = pitches or [60 + (2 * i) % 12 for i in range(len(onsets))]
    velocities = velocities or [80] * len(onsets)
    events = []
    for i, t in enumerate(onsets):
        end = onsets[i + 1] if i + 1 < len(onsets) else t + (onsets[1] - onsets[0])
        events += [(t, pitches[i], velocities[i]), (end, pitches[i], 0)]
    events.sort(key=lambda e: (e[0], e[2] > 0))
    last = None
    for t, p, v in events:
        style.hear(t, 4.0 if last is None else t - last, p, v)
        last = t
    return last


def token(dt: float, pitch: int = 62, velocity: int = 80) -> int:
    return CODEC.encode_event(dt, pitch, velocity)


@pytest.mark.parametrize("bpm", [60, 75, 120, 160, 200])
def test_the_answer_keeps_the_players_tempo_and_note_values(bpm):
    eighth = 30.0 / bpm
    style = Style(TABLES)
    last = play(style, [i * eighth for i in range(16)])
    assert style.scale == pytest.approx(eighth / 0.25)
    # the model's "eighth" bin (an eighth at 120 bpm), as a note-off then a legato note-on
    off = style.place(token(0.25, 62, 0), last, last)
    on = style.place(token(0.0, 64, 80), off.when, off.when)
    assert off.dt == pytest.approx(eighth)
    assert on.when == pytest.approx(last + eighth)
    # a bin decodes to the player's commonest gap in it, not its log-centre (0.324 s)
    assert CODEC.decode_token(token(0.25)).dt == pytest.approx(0.3242, abs=1e-3)


def test_a_bin_decodes_to_the_players_commonest_gap_in_it():
    style = Style(TABLES)
    onsets, t = [], 0.0
    for _ in range(8):  # a hornpipe at 120: dotted eighth + sixteenth
        onsets += [t, t + 0.375]
        t += 0.5
    play(style, onsets)
    # 0.375 and 0.25 share a time bin; this player plays 0.375 in it
    assert style.model_dt(token(0.25)) == pytest.approx(0.375)
    assert style.model_dt(token(0.125)) == pytest.approx(0.125)
    fresh = Style(TABLES)
    assert fresh.model_dt(token(0.3)) == pytest.approx(0.25)  # nothing heard: the plainest value


def test_after_a_silence_the_answer_starts_on_the_players_beat():
    style = Style(TABLES)
    eighth = 0.3  # 100 bpm
    last = play(style, [1.0 + i * eighth for i in range(15)])  # 15 eighths: the last one is off the beat
    last_onset = 1.0 + 14 * eighth
    now = last + 1.5
    placed = style.place(token(0.0, 64, 80), last, now)
    beats = (placed.when - 1.0) / (2 * eighth)
    assert placed.when >= now
    assert beats == pytest.approx(round(beats))
    assert placed.when - last_onset < 1.5 + 2 * 2 * eighth
    # and the next notes stay on the pulse, whatever note values the model picks
    when = placed.when
    for dt in (0.125, 0.25, 0.1667, 0.5, 0.375):
        off = style.place(token(dt, 64, 0), when, when)
        on = style.place(token(0.0, 65, 80), off.when, off.when)
        pulses = (on.when - 1.0) / (eighth / 2)
        assert pulses == pytest.approx(round(pulses))
        when = on.when


def test_velocity_follows_the_players_loudness_and_accents():
    style = Style(TABLES)
    eighth = 0.25
    onsets = [i * eighth for i in range(16)]
    velocities = [70 if i % 2 == 0 else 30 for i in range(16)]  # accents on the beat
    last = play(style, onsets, velocities=velocities)
    on_beat = style.place(token(0.0, 64, 80), last, 16 * eighth - 0.01)
    assert on_beat.when == pytest.approx(16 * eighth)
    assert on_beat.values[1] == 70
    off_beat = style.place(token(0.25, 64, 80), on_beat.when, on_beat.when)
    assert off_beat.values[1] == 30
    quiet = Style(TABLES)
    last = play(quiet, onsets, velocities=[25] * 16)
    assert quiet.place(token(0.0, 64, 127), last, last).values[1] == 25  # pp is not answered at mf
    assert quiet.answer(token(0.0, 64, 127), last)[1] == 25


def test_follow_off_is_the_plain_codec():
    style = Style(TABLES, {"follow": 0})
    last = play(style, [i * 0.15 for i in range(16)], velocities=[20] * 16)
    assert style.hear(last + 0.15, 0.15, 60, 20) == CODEC.encode_event(0.15, 60, 20)
    t = token(0.25, 62, 80)
    e = CODEC.decode_token(t)
    placed = style.place(t, 10.0, 9.0)
    assert (placed.when, placed.values) == (10.0 + e.dt, (e.pitch, e.velocity))


def allowed_note_ons(style: Style) -> set[int]:
    ok = ~style.mask if style.mask is not None else np.ones(CODEC.vocab_size, dtype=bool)
    return {int(p) for p in TABLES.pitch[ok & TABLES.is_on]}


def test_pitch_range_and_scale_masks_are_exact():
    style = Style(TABLES, {"low": 50, "high": 74, "scale": "D dorian"})
    d_dorian = {2, 4, 5, 7, 9, 11, 0}
    assert allowed_note_ons(style) == {p for p in range(50, 75) if p % 12 in d_dorian}
    assert not style.mask[TABLES.note_off].any()  # note-offs are never forbidden
    assert style.duet_mask[TABLES.note_off].all()
    style.set("scale", "off")
    assert allowed_note_ons(style) == set(range(50, 75))
    style.set("overlap", 0)
    chords = TABLES.is_on & (TABLES.time_bin == 0)
    assert style.mask[chords].all()
    with pytest.raises(ValueError, match="empty"):
        style.set("low", 80)
    with pytest.raises(ValueError, match="no pitch"):
        Style(TABLES).set("high", 20)
    with pytest.raises(ValueError, match="mode"):
        style.set("scale", "D klingon")
    assert style.settings.low == 50 and style.settings.scale == "off"  # nothing changed
    assert parse_scale("F# minor") == tuple(sorted({6, 8, 9, 11, 1, 2, 4}))
    assert parse_scale("Bb") == tuple(sorted({10, 0, 2, 3, 5, 7, 9}))


def test_auto_scale_follows_the_players_recent_pitch_classes():
    style = Style(TABLES, {"scale": "auto"})
    assert style.mask is None  # nothing heard yet: nothing forbidden
    g_major = [55, 57, 59, 60, 62, 64, 66, 67]
    play(style, [i * 0.25 for i in range(16)], pitches=[g_major[i % 8] for i in range(16)])
    assert {p % 12 for p in allowed_note_ons(style)} == {p % 12 for p in g_major}
    # they move to E flat major: after AUTO_WINDOW notes only its classes remain
    e_flat = [63, 65, 67, 68, 70, 72, 74, 75]
    play(style, [10 + i * 0.25 for i in range(24)], pitches=[e_flat[i % 8] for i in range(24)])
    assert {p % 12 for p in allowed_note_ons(style)} == {p % 12 for p in e_flat}


def test_tonal_bias_leans_towards_the_players_pitch_classes():
    style = Style(TABLES, {"tonal": 1})
    play(style, [i * 0.25 for i in range(12)], pitches=[60, 64, 67] * 4)
    bias = style.logit_bias()
    c, c_sharp = token(0.0, 60, 80), token(0.0, 61, 80)
    assert bias[c] - bias[c_sharp] == pytest.approx(math.log(5))  # (4 + 1) / (0 + 1)
    assert bias[token(0.25, 61, 0)] == 0  # note-offs untouched
    assert Style(TABLES).logit_bias() is None


def test_density_and_velocity_range_are_exact():
    style = Style(TABLES, {"density": 4, "vel_low": 50, "vel_high": 60})
    last = play(style, [i * 0.1 for i in range(16)], velocities=[120] * 16)
    when = last
    onsets = []
    for _ in range(10):
        on = style.place(token(0.0, 64, 80), when, when)
        off = style.place(token(0.1, 64, 0), on.when, on.when)
        onsets.append(on.when)
        assert on.values[1] == 60
        when = off.when
    assert min(np.diff(onsets)) >= 0.25 - 1e-9


def test_settings_are_checked_and_parsed():
    s = StyleSettings.from_dict({"low": "48", "high": 84.0, "scale": " d   Dorian ", "density": 3})
    assert (s.low, s.high, s.scale, s.density) == (48, 84, "d Dorian", 3.0)
    for bad in ({"low": 200}, {"low": 1.5}, {"scale": 3}, {"follow": 2}, {"colour": 1}, {"vel_low": 0}):
        with pytest.raises(ValueError):
            StyleSettings.from_dict(bad)
