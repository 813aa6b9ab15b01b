"""Style following and steering (ensemble.server.style), with the real notes codec and
real tiny models; the server tests drive it over OSC. Times are simulated loop times."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ensemble.codecs.notes import NotesCodec
from ensemble.server.style import AUTO_WINDOW, Style, StyleSettings, StyleTables, parse_scale

CODEC = NotesCodec(grid="log")  # the first codec (its 1.75x bins are what most of this fixes)
METRICAL = NotesCodec(velocity_levels=1)  # the shipped model's codec
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


@pytest.mark.parametrize("bpm", [60, 90, 120, 200])
def test_the_metrical_codec_plays_every_note_value_exactly_at_the_players_tempo(bpm):
    tables = StyleTables(METRICAL)
    style = Style(tables)
    eighth = 30.0 / bpm
    last = play(style, [i * eighth for i in range(16)])
    assert style.scale == pytest.approx(eighth / 0.25)
    # a hornpipe's dotted eighth and sixteenth, a jig's triplet eighths: bins of their own,
    # each played as that note value of the player's tempo
    for model_value in (0.375, 0.125, 1 / 6, 0.25, 0.5, 0.75, 1.0):
        t = METRICAL.encode_event(model_value, 62, 0)
        assert METRICAL.decode_token(t).dt == pytest.approx(model_value)
        assert style.model_dt(t) == pytest.approx(model_value)
    off = style.place(METRICAL.encode_event(0.375, 62, 0), last, last)
    assert off.dt == pytest.approx(0.375 * style.scale)
    # velocity_levels=1: a player's pp and ff are the same token (the model never heard
    # dynamics); the answer's loudness comes from the player
    assert style.hear(last + eighth, eighth, 60, 20) == style.hear(last + 2 * eighth, eighth, 60, 120)


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
    play(style, [10 + i * 0.25 for i in range(AUTO_WINDOW)], pitches=[e_flat[i % 8] for i in range(AUTO_WINDOW)])
    assert {p % 12 for p in allowed_note_ons(style)} == {p % 12 for p in e_flat}


def test_tonal_pull_leans_to_the_players_key_and_keeps_the_note_on_mass():
    style = Style(TABLES, {"tonal": 2})
    play(style, [i * 0.25 for i in range(12)], pitches=[60, 64, 67] * 4)
    logits = np.random.default_rng(0).normal(size=CODEC.vocab_size).astype(np.float32)
    z = style.steer(logits)
    c, c_sharp = token(0.0, 60, 80), token(0.0, 61, 80)
    assert z[c] - logits[c] > z[c_sharp] - logits[c_sharp] + 2
    off = TABLES.note_off
    assert np.array_equal(z[off], logits[off])  # note-offs untouched

    def on_mass(x):
        p = np.exp(x - x.max())
        return p[TABLES.is_on].sum() / p.sum()

    assert on_mass(z.astype(np.float64)) == pytest.approx(on_mass(logits.astype(np.float64)), rel=1e-5)
    plain = Style(TABLES)
    assert plain.steer(logits) is logits


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


@pytest.mark.parametrize("rest", [0.0, 0.5, 1.0])
def test_rest_leaves_out_that_share_of_the_machines_notes_and_never_an_unpaired_off(notes_model, rest):
    import asyncio

    from ensemble import checkpoint
    from ensemble.server.conductor import Conductor
    from ensemble.server.config import ServerConfig
    from ensemble.server.style import Placed

    class Collect:
        name = "collect"

        def __init__(self):
            self.sent = []

        def send(self, performer, kind, values, seq):
            self.sent.append(values)

    async def main():
        loop = asyncio.get_running_loop()
        cfg = ServerConfig(model=str(notes_model), port=0, record="", snapshot="", seed=3, default_mode="listen")
        conductor = Conductor(checkpoint.load_live(notes_model), cfg, loop)
        out = Collect()
        p = conductor.hello("ria", out)
        conductor.set_parameter("ria", "rest", rest)
        p.generating = True
        codec = conductor.codec
        for k in range(200):  # the machine's stream, as the conductor plays it: an on, then its off
            pitch = 60 + k % 7
            for velocity in (80, 0):
                token = codec.encode_event(0.25, pitch, velocity)
                conductor._play_machine_event(p, token, Placed(loop.time(), "note", 0.25, (pitch, velocity)),
                                              loop.time())
                conductor.flush()
                p.next_event.cancel()  # (what the conductor planned next is not part of this test)
        conductor.shutdown()
        return list(out.sent)

    sent = asyncio.run(main())
    ons = [v for v in sent if v[1] > 0]
    offs = [v for v in sent if v[1] == 0]
    assert len(offs) == len(ons)  # every sounded note ended, no off without its on
    if rest == 0.0:
        assert len(ons) == 200
    elif rest == 1.0:
        assert ons == []
    else:
        assert 70 <= len(ons) <= 130  # binomial(200, 0.5): 5 sigma either side


def test_settings_are_checked_and_parsed():
    s = StyleSettings.from_dict({"low": "48", "high": 84.0, "scale": " d   Dorian ", "density": 3})
    assert (s.low, s.high, s.scale, s.density) == (48, 84, "d Dorian", 3.0)
    for bad in ({"low": 200}, {"low": 1.5}, {"scale": 3}, {"follow": 2}, {"colour": 1}, {"vel_low": 0},
                {"rest": 1.5}, {"rest": -0.1}):
        with pytest.raises(ValueError):
            StyleSettings.from_dict(bad)


# ---------------------------------------------------------------------- through the server


def test_steering_over_osc_is_exact_and_bad_settings_are_errors(notes_model, tmp_path):
    """/ensemble/set with a string value (sss) sets the scale; duet answers stay inside it."""
    from oscpeer import OscPeer, ServerThread

    from ensemble.server.config import ServerConfig

    cfg = ServerConfig(model=str(notes_model), port=0, record="", snapshot="", seed=7, default_mode="duet",
                       max_note=60.0, style={"low": 55, "high": 79})
    with ServerThread(cfg) as server:
        peer = OscPeer(server.port)
        peer.send("/ensemble/hello", "dee", "127.0.0.1", peer.port)
        peer.send("/ensemble/set", "dee", "scale", "D dorian")
        peer.send("/ensemble/set", "dee", "vel_high", 40)
        peer.send("/ensemble/set", "dee", "scale", "H major")  # no such tonic
        peer.send("/ensemble/set", "dee", "low", 90)           # empty range
        peer.send("/ensemble/set", "dee", "colour", "blue")
        errors = [peer.recv_until("/ensemble/error")[1] for _ in range(3)]
        assert "tonic" in errors[0].lower() and "empty" in errors[1] and "unknown parameter" in errors[2]
        answers = []
        for i in range(40):
            pitch = [60, 62, 64, 65, 67, 69, 71, 72][i % 8]
            peer.send("/ensemble/note", "dee", pitch, 100)
            peer.send("/ensemble/note", "dee", pitch, 0)
        before, status = peer.until_status()
        answers = [a for a in before if a[2] > 0]
        assert len(answers) == 40
        assert all(55 <= a[1] <= 79 and a[1] % 12 in {2, 4, 5, 7, 9, 11, 0} for a in answers)
        assert all(a[2] <= 40 for a in answers)
        dee = status["performers"][0]["style"]
        assert (dee["low"], dee["high"], dee["scale"], dee["vel_high"]) == (55, 79, "D dorian", 40)


def test_style_defaults_come_from_the_toml_style_table(tmp_path):
    from ensemble.errors import UserError
    from ensemble.server.config import load_toml, make_config

    path = tmp_path / "stage.toml"
    path.write_text('[server]\nport = 6000\n[style]\nscale = "A minor"\nlow = 45\ndensity = 8\n')
    cfg = make_config(load_toml(path), {})
    assert cfg.style == {"scale": "A minor", "low": 45, "density": 8}
    path.write_text('[style]\nscale = "A mixolydian flat 13"\n')
    with pytest.raises(UserError, match="style: scale"):
        make_config(load_toml(path), {})


def test_eval_style_measures_answers_with_and_without_following(notes_model, tmp_path):
    import json
    import subprocess
    import sys

    tunes = tmp_path / "tunes.abc"
    tunes.write_text(
        "X:1\nT:one\nM:4/4\nL:1/8\nK:G\nGABc dedB|dedB dedB|c2ec B2dB|c2A2 A2BA|GABc dedB|dedB dedB|c2ec B2dB|A2F2 G4|]\n\n"
        "X:2\nT:two\nM:6/8\nL:1/8\nK:D\nAFA dfd|cec dBA|AFA dfd|efe e2f|AFA dfd|cec dBA|GBG FAF|EFE D3|]\n")
    out = {}
    for name, extra in (("baseline", ["--baseline"]), ("follow", ["--set", "scale=auto", "--set", "tonal=1"])):
        path = tmp_path / f"{name}.json"
        run = subprocess.run([sys.executable, "-m", "ensemble", "eval", "style", "--model", str(notes_model),
                              "--input", str(tunes), "--pieces", "2", "--keys", "3", "--tempos", "75,200",
                              "--prime-notes", "16", "--length", "48", "--json", str(path), *extra],
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        assert "tempo ratio" in run.stdout and "key agreement" in run.stdout
        out[name] = json.load(open(path))["summary"]
    follow, base = out["follow"], out["baseline"]
    assert follow["variants"] == base["variants"] == 2 * 3 * 2
    # following puts every answer onset on the player's pulse, at their loudness, in their
    # scale (the tempo ratio is the tiny model's own rhythm: measured on folk-notes, not here)
    for bpm in ("75.0", "200.0"):
        assert follow["phase_ms"][bpm] < 5.0  # the simulated loop delay (1 ms) per event, not piling up
        assert base["tempo_ratio"][bpm] is not None
    assert follow["velocity_diff"] < base["velocity_diff"]
    assert follow["in_scale"] >= base["in_scale"]


def test_eval_style_live_plays_through_a_real_server_at_real_speed(notes_model, tmp_path):
    """--live: each variant a performer of a real `ensemble serve` in respond mode, over OSC;
    the answers arrive on the player's pulse (a real loop's jitter, not the simulated 1 ms)
    and at their loudness."""
    import json
    import subprocess
    import sys

    tunes = tmp_path / "tunes.abc"
    tunes.write_text("X:1\nT:one\nM:4/4\nL:1/8\nK:G\nGABc dedB|dedB dedB|c2ec B2dB|c2A2 A2BA|GABc dedB|dedB dedB|]\n")
    path = tmp_path / "live.json"
    run = subprocess.run([sys.executable, "-m", "ensemble", "eval", "style", "--live", "--model", str(notes_model),
                          "--input", str(tunes), "--pieces", "1", "--keys", "3", "--tempos", "200",
                          "--prime-notes", "16", "--length", "24", "--threshold", "0.5", "--json", str(path)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "eval style --live" in run.stdout
    result = json.load(open(path))
    rows, summary = result["rows"], result["summary"]
    assert summary["variants"] == 3 and all(r["answer_notes"] > 0 for r in rows)  # every performer answered
    assert summary["phase_ms"]["200.0"] < 30.0  # on the pulse (an eighth at 200 bpm is 150 ms)
    assert summary["velocity_diff"] < 20


def test_what_was_heard_survives_a_snapshot_round_trip():
    import json

    style = Style(TABLES, {"scale": "auto"})
    onsets, t = [], 0.0
    for _ in range(12):
        onsets += [t, t + 0.45]
        t += 0.6
    last = play(style, onsets, pitches=[62, 64, 66, 67, 69, 71] * 4, velocities=[30, 50] * 12)
    saved = json.loads(json.dumps(style.state(last + 1.0)))
    back = Style(TABLES, {"scale": "auto"})
    back.load_state(saved, 101.0)  # restored 100 s later on another clock
    assert back.scale == pytest.approx(style.scale)
    assert back.gaps == style.gaps and back.level == style.level
    assert np.array_equal(back.mask, style.mask)
    offset = 100.0 - last  # the same moment on the two clocks
    a_now = last + 2.0
    for tok in (token(0.0, 64, 80), token(0.3, 66, 0), token(0.1, 67, 80)):
        a, b = style.place(tok, last, a_now), back.place(tok, last + offset, a_now + offset)
        assert b.when - offset == pytest.approx(a.when) and b.values == a.values
        last = a_now = a.when
    with pytest.raises((ValueError, KeyError, TypeError)):
        back.load_state({"iois": []}, 0.0)


def test_a_loop_that_plays_each_event_a_little_late_does_not_drift():
    """The server plans the next event ~1 ms after playing the last one: onsets stay on the grid."""
    style = Style(TABLES)
    last = play(style, [i * 0.25 for i in range(16)])
    stream, now, onsets = last, last + 1.5, []
    for _ in range(40):
        for tok in (token(0.0, 64, 80), token(0.25, 64, 0)):
            placed = style.place(tok, stream, now)
            if placed.values[1]:
                onsets.append(placed.when)
            stream, now = placed.when, placed.when + 0.001
    errors = [abs(t / 0.125 - round(t / 0.125)) * 0.125 for t in onsets]
    assert max(errors) <= 0.0011
    assert np.median(np.diff(onsets)) == pytest.approx(0.25, abs=0.002)


def test_a_detached_player_is_heard_legato():
    style = Style(TABLES)
    for i in range(16):  # eighths at 100 bpm, each held 80 % of its length
        t = i * 0.3
        on = style.hear(t, 4.0 if i == 0 else 0.3 * 0.2, 60 + i % 5, 80)
        off = style.hear(t + 0.24, 0.24, 60 + i % 5, 0)
        if i >= 1:
            assert TABLES.time_bin[on] == 0  # the 60 ms gap is articulation, not a rest
        assert TABLES.note_off[off]
    assert style.scale == pytest.approx(1.2)
    # (the held length itself goes in as the nearest note value, 0.2 -> 0.1875 model s:
    # a detached player's notes sound a little shorter to the model than they are)
