"""`ensemble generate --prime`: a prime that names a file is read from the file.

A path typed as a prime used to be fed to an ABC or text model as the tune itself (the
path's letters became notes, exit 0). These run the real command in-process on the
shipped folk-abc model and on a tiny text model trained for the session.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ensemble.cli import main

FOLK_ABC = Path(__file__).resolve().parent.parent / "models" / "folk-abc"

TUNES = """% two tunes, with a file header and comments
M:6/8
X:1   % tune no 1
T:One
L:1/8
K:G
GAB cde|dcB AGF|

X:7
T:Seven
M:3/4
L:1/8
K:D
DEF ABc|d6|
"""


@pytest.fixture
def abc_file(tmp_path) -> Path:
    path = tmp_path / "tunes" / "english.abc"
    path.parent.mkdir()
    path.write_text(TUNES)
    return path


def generate(capsys, *args) -> tuple[int, str, str]:
    code = main(["generate", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_abc_prime_file_is_read_first_tune_by_default(capsys, abc_file):
    code, out, err = generate(capsys, "--model", FOLK_ABC, "--prime", abc_file, "--length", 0)
    assert code == 0, err
    assert "K:Gmaj" in out and "GABcde | dcBAGF |" in out, out
    assert "DEF" not in out  # only the first tune


def test_abc_prime_file_tune_by_number(capsys, abc_file):
    code, out, err = generate(capsys, "--model", FOLK_ABC, "--prime", abc_file, "--tune", 7, "--length", 0)
    assert code == 0, err
    assert "M:3/4" in out and "K:Dmaj" in out and "DEFABc | d6 |" in out, out

    code, out, err = generate(capsys, "--model", FOLK_ABC, "--prime", abc_file, "--tune", 3, "--length", 0)
    assert code == 1 and out == ""
    assert err.strip().splitlines() == [
        f"ensemble generate: error: --tune 3: no tune X:3 in --prime {abc_file} (it has X: 1, 7)"]


def test_abc_prime_text_is_still_text(capsys):
    code, out, err = generate(capsys, "--model", FOLK_ABC, "--prime", "M:2/4\nL:1/8\nK:G\nGABc|", "--length", 0)
    assert code == 0, err
    assert "GABc |" in out


def test_midi_prime_for_abc_model_is_one_clear_line(capsys, tmp_path):
    import mido

    path = tmp_path / "melody.mid"
    midi = mido.MidiFile()
    midi.tracks.append(mido.MidiTrack([mido.Message("note_on", note=60, velocity=80)]))
    midi.save(path)
    code, out, err = generate(capsys, "--model", FOLK_ABC, "--prime", path, "--length", 5)
    assert code == 1 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "an abc model is primed with ABC, not MIDI" in lines[0], err


def test_prime_that_looks_like_a_missing_file_is_an_error(capsys, tmp_path):
    missing = tmp_path / "englsh.abc"
    code, out, err = generate(capsys, "--model", FOLK_ABC, "--prime", missing, "--length", 5)
    assert code == 1 and out == ""
    assert f"--prime {missing}: no such file" in err and len(err.strip().splitlines()) == 1


def test_text_prime_file_is_read(capsys, text_run, tmp_path):
    prime = tmp_path / "prime.txt"
    prime.write_text("the quick")
    code, out, err = generate(capsys, "--model", text_run, "--prime", prime, "--length", 5, "--seed", 1)
    assert code == 0, err
    assert out.startswith("the quick") and str(prime) not in out
    assert "never saw" not in err  # the path's letters ('/', '.') are not fed

    code, out, err = generate(capsys, "--model", text_run, "--prime", prime, "--tune", 2, "--length", 5)
    assert code == 1 and "--tune is for ABC models; this is a text model" in err


def test_help_says_how_text_and_files_are_told_apart(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "names an existing file" in text and "--tune" in text


def test_latin1_abc_file_is_read_as_prepare_reads_it(capsys, tmp_path):
    path = tmp_path / "old.abc"
    path.write_bytes("X:1\nT:Caf\xe9\nM:2/4\nL:1/8\nK:G\nGABc|\n".encode("latin-1"))
    code, out, err = generate(capsys, "--model", FOLK_ABC, "--prime", path, "--length", 0)
    assert code == 0, err
    assert "GABc |" in out
