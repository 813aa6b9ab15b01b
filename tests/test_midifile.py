"""A MIDI file that cannot be read is named with a reason a user can act on.

A truncated MIDI prime used to give `not a readable MIDI file ()`: mido raises a bare
EOFError on a file cut short. These cut a real MIDI file (written by mido) short.
"""

from __future__ import annotations

import mido
import pytest

from ensemble.cli import main
from ensemble.midifile import read_midi
from ensemble.errors import UserError


@pytest.fixture
def whole_midi(tmp_path):
    path = tmp_path / "whole.mid"
    midi = mido.MidiFile()
    track = mido.MidiTrack()
    for i in range(12):
        track.append(mido.Message("note_on", note=60 + i, velocity=80, time=100))
        track.append(mido.Message("note_off", note=60 + i, time=100))
    midi.tracks.append(track)
    midi.save(path)
    return path


def cut(path, n, tmp_path):
    out = tmp_path / f"cut{n}.mid"
    out.write_bytes(path.read_bytes()[:n])
    return out


@pytest.mark.parametrize("n, reason", [
    (0, "the file is cut short at byte 0, inside the 14-byte MThd header"),
    (10, "the file is cut short at byte 10, inside the 14-byte MThd header"),
    (40, "the file is cut short at byte 40, inside a track"),
])
def test_truncated_file_says_where_it_is_cut(whole_midi, tmp_path, n, reason):
    path = cut(whole_midi, n, tmp_path)
    with pytest.raises(UserError) as info:
        read_midi(path, "--prime")
    assert str(info.value) == f"--prime {path}: not a readable MIDI file ({reason})"


def test_foreign_file_says_bad_header(tmp_path):
    path = tmp_path / "song.mid"
    path.write_text("this is not MIDI at all, just text\n")
    with pytest.raises(UserError) as info:
        read_midi(path)
    assert "bad header: the file does not start with MThd" in str(info.value)


def test_truncated_prime_from_the_command_line(notes_model, whole_midi, tmp_path, capsys):
    path = cut(whole_midi, 40, tmp_path)
    code = main(["generate", "--model", str(notes_model), "--prime", str(path), "--out", str(tmp_path / "o.mid")])
    err = capsys.readouterr().err
    assert code == 1
    assert err.strip().splitlines() == [
        f"ensemble generate: error: --prime {path}: not a readable MIDI file "
        "(the file is cut short at byte 40, inside a track)"]


def test_prepare_names_the_reason_for_a_truncated_file(whole_midi, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "good.mid").write_bytes(whole_midi.read_bytes())
    (folder / "cut.mid").write_bytes(whole_midi.read_bytes()[:40])
    assert main(["prepare", "--no-progress", "--codec", "notes", "--input", str(folder),
                 "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "not a readable MIDI file (the file is cut short at byte 40, inside a track)" in printed, printed
