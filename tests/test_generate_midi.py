"""`ensemble generate` of a notes model makes a MIDI file that a real synth plays as sound.

fluidsynth renders the file offline with the TimGM6mb General MIDI soundfont; sox
measures the result (silence is about 3e-5 RMS, from dither; music well above 1e-3).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import mido
import pytest

from conftest import ENSEMBLE

SOUNDFONT = Path("/usr/share/sounds/sf2/TimGM6mb.sf2")


def notes_without_off(midi: mido.MidiFile) -> list:
    sounding = {}
    for msg in midi:  # merged tracks, in time order
        if msg.type == "note_on" and msg.velocity > 0:
            sounding[(msg.channel, msg.note)] = sounding.get((msg.channel, msg.note), 0) + 1
        elif msg.type in ("note_on", "note_off"):
            key = (msg.channel, msg.note)
            if sounding.get(key):
                sounding[key] -= 1
                if not sounding[key]:
                    del sounding[key]
    return sorted(sounding)


def test_generated_midi_is_audible_and_every_note_ends(notes_model, tmp_path):
    if not (shutil.which("fluidsynth") and shutil.which("sox") and SOUNDFONT.exists()):
        pytest.skip("fluidsynth, sox or the timgm6mb soundfont is not installed")
    out = tmp_path / "x.mid"
    r = subprocess.run(ENSEMBLE + ["generate", "--model", str(notes_model), "--out", str(out), "--length", "200",
                                   "--seed", "1"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    midi = mido.MidiFile(out)
    ons = [m for m in midi if m.type == "note_on" and m.velocity > 0]
    assert len(ons) >= 20 and midi.length > 1.0
    assert notes_without_off(midi) == []

    wav = tmp_path / "out.wav"
    subprocess.run(["fluidsynth", "-ni", "-q", "-r", "44100", "-F", str(wav), str(SOUNDFONT), str(out)],
                   check=True, capture_output=True, timeout=120)
    stat = subprocess.run(["sox", str(wav), "-n", "stat"], capture_output=True, text=True, timeout=60)
    rms = float(re.search(r"RMS\s+amplitude:\s+([0-9.eE+-]+)", stat.stderr).group(1))
    assert rms > 1e-3, stat.stderr

    # the same seed gives the same piece
    again = tmp_path / "again.mid"
    subprocess.run(ENSEMBLE + ["generate", "--model", str(notes_model), "--out", str(again), "--length", "200",
                               "--seed", "1"], check=True, capture_output=True, timeout=120)
    assert again.read_bytes() == out.read_bytes()


def test_a_midi_prime_is_continued_at_its_tempo_and_loudness(notes_model, tmp_path):
    """As the server answers: the prime heard through the style follower, the answer placed at
    the prime's tempo and pulse and played at its loudness; --no-follow is the plain codec."""
    import numpy as np

    prime = mido.MidiFile(ticks_per_beat=480)
    track = mido.MidiTrack()
    prime.tracks.append(track)
    track.append(mido.MetaMessage("set_tempo", tempo=500000))  # 120 qpm: 480 ticks = 0.5 s
    for k in range(24):  # eighths at 60 qpm (0.5 s apart), soft
        pitch = [62, 64, 66, 67, 69, 71, 73, 74][k % 8]
        track.append(mido.Message("note_on", note=pitch, velocity=40, time=0))
        track.append(mido.Message("note_off", note=pitch, time=480))
    path = tmp_path / "prime.mid"
    prime.save(path)

    def answer(*extra):
        out = tmp_path / f"answer{len(extra)}.mid"
        r = subprocess.run(ENSEMBLE + ["generate", "--model", str(notes_model), "--prime", str(path), "--out", str(out),
                                       "--length", "120", "--seed", "2", *extra], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, r.stderr
        midi = mido.MidiFile(out)
        assert notes_without_off(midi) == []
        t, ons = 0.0, []
        for m in midi:
            t += m.time
            if m.type == "note_on" and m.velocity > 0:
                ons.append((t, m.velocity))
        times = np.array([o[0] for o in ons])
        iois = np.diff(times)
        return np.median(iois[iois > 0.015]), [v for _, v in ons], r.stderr

    followed_ioi, followed_velocities, said = answer()
    plain_ioi, plain_velocities, _ = answer("--no-follow")
    assert "following the prime" in said
    assert followed_ioi > 1.6 * plain_ioi  # the prime is at half the model's tempo
    assert max(followed_velocities) <= 48 and min(plain_velocities) >= 64  # pp answered at pp
    r = subprocess.run(ENSEMBLE + ["generate", "--model", str(notes_model), "--prime", str(path), "--out",
                                   str(tmp_path / "x.mid"), "--set", "colour=blue"], capture_output=True, text=True)
    assert r.returncode == 1 and "unknown style setting" in r.stderr and len(r.stderr.strip().splitlines()) == 1
