"""`ensemble prepare`: real files in, a prepared corpus out, every bad file named with why."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ENSEMBLE
from ensemble.cli import main
from ensemble.codecs.abc import AbcCodec, split_tunes
from ensemble.codecs.midi_notes import Note, midi_from_notes, notes_from_midi
from ensemble.codecs.notes import NotesCodec, from_notes
from ensemble.data import load_prepared

HAVE_MUSIC21 = importlib.util.find_spec("music21") is not None
needs_music21 = pytest.mark.skipif(not HAVE_MUSIC21, reason="music21 (the corpora extra) is not installed")

TUNES = """% a small collection
X:1
T:First
M:6/8
L:1/8
K:G
GAB c2d|e3 d3|cBA G3:|

X:2
T:Second
M:4/4
K:Dm
DEFG A4|d2 c2 A4|]

X:3
T:Third
M:3/4
L:1/4
K:Ador
A B c|d2 e|A3|]
"""


def make_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    (folder / "abc").mkdir(parents=True)
    for i in range(4):
        notes = [Note(j * 0.25, j * 0.25 + 0.2, 60 + (i * 3 + j * 5) % 12, 90) for j in range(12)]
        midi_from_notes(notes).save(str(folder / f"song{i}.mid"))
    (folder / "abc" / "tunes.abc").write_text(TUNES)
    (folder / "bad.mid").write_bytes(b"MThd\x00\x00\x00\x06\x00\x01\x00\x01\x01\xe0MTrk\xff\xff\xff\xffjunk")
    (folder / "abc" / "bad.abc").write_bytes(bytes(range(256)) * 4)
    (folder / "notes-to-self.md").write_text("not an input")
    return folder


def prepare(*args) -> int:
    return main(["prepare", "--no-progress", *map(str, args)])


def manifest_of(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def test_bad_files_are_named_and_skipped_the_rest_prepared(tmp_path, capsys):
    folder = make_folder(tmp_path)
    out = tmp_path / "out"
    assert prepare("--codec", "notes", "--input", folder, "--out", out) == 0
    printed = capsys.readouterr().out
    bad_mid, bad_abc = str(folder / "bad.mid"), str(folder / "abc" / "bad.abc")
    lines = printed.splitlines()
    assert any(line.strip().startswith(f"{bad_mid}: not a readable MIDI file") for line in lines), printed
    assert any(line.strip().startswith(f"{bad_abc}: binary data") for line in lines), printed
    assert "skipped: 2" in printed and "pieces: 7" in printed and "vocabulary 4575 tokens" in printed

    manifest = manifest_of(out)
    assert {s["source"] for s in manifest["skipped"]} == {bad_mid, bad_abc}
    assert manifest["counts"]["pieces"] == 7 and manifest["counts"]["skipped"] == 2
    corpus = load_prepared(out)
    assert corpus.codec == NotesCodec()
    pieces = {p.source: p.tokens for p in corpus.train + corpus.val}
    # a MIDI piece is exactly what the codec makes of that file
    song = str(folder / "song2.mid")
    import mido

    expected = NotesCodec().encode(from_notes(notes_from_midi(mido.MidiFile(song))))
    assert pieces[song].tolist() == expected
    # an ABC tune is played: 6 notes in tune 3, each a note-on and a note-off
    assert len(pieces[str(folder / "abc" / "tunes.abc") + "#X3"]) == 2 * 6


def test_abc_codec_takes_the_tunes_and_names_what_it_cannot_read(tmp_path, capsys):
    folder = make_folder(tmp_path)
    out = tmp_path / "out"
    assert prepare("--codec", "abc", "--input", folder / "abc", folder / "song0.mid", "--out", out,
                   "--val-fraction", "0.34") == 0
    printed = capsys.readouterr().out
    assert f"{folder / 'song0.mid'}: MIDI file; the abc codec reads ABC tunes" in printed
    corpus = load_prepared(out)
    codec = AbcCodec()
    assert corpus.codec == codec and len(corpus.train) == 2 and len(corpus.val) == 1
    tunes = dict((f"{folder / 'abc' / 'tunes.abc'}#X{n}", t) for n, t in split_tunes(TUNES))
    for piece in corpus.train + corpus.val:
        assert piece.tokens.tolist() == codec.encode(tunes[piece.source])


def test_transpose_becomes_part_of_the_abc_codec(tmp_path, capsys):
    folder = make_folder(tmp_path)
    out = tmp_path / "out"
    assert prepare("--codec", "abc", "--transpose", "C", "--input", folder / "abc" / "tunes.abc", "--out", out) == 0
    corpus = load_prepared(out)
    assert corpus.codec == AbcCodec(transpose_to="C")
    keys = sorted(corpus.codec.describe_token(p.tokens[3]) for p in corpus.train + corpus.val)
    assert keys == ["K:Cdor", "K:Cmaj", "K:Cmin"]
    assert prepare("--codec", "abc", "--transpose", "H#", "--input", folder, "--out", tmp_path / "x") == 1
    assert "transpose_to" in capsys.readouterr().err


def test_nothing_usable_is_one_error_line_and_exit_1(tmp_path):
    folder = make_folder(tmp_path)
    out = tmp_path / "out"
    r = subprocess.run(ENSEMBLE + ["prepare", "--codec", "performance", "--input", str(folder / "bad.mid"),
                                   str(folder / "abc" / "bad.abc"), str(tmp_path / "missing.mid"), "--out", str(out)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "nothing could be prepared" in lines[0] and "3 skipped" in lines[0], r.stderr
    assert "Traceback" not in r.stderr and not out.exists()


def test_text_codec_vocabulary_comes_from_the_inputs_or_chars_from(tmp_path, capsys):
    text = tmp_path / "words.txt"
    text.write_text("hello world, hello music\n" * 200)
    out = tmp_path / "out"
    assert prepare("--codec", "text", "--input", text, tmp_path / "tunes.abc", "--out", out) == 0
    assert f"{tmp_path / 'tunes.abc'}: no such file or folder" in capsys.readouterr().out
    (tmp_path / "tunes.abc").write_text(TUNES)
    assert prepare("--codec", "text", "--input", text, tmp_path / "tunes.abc", "--out", out) == 0
    corpus = load_prepared(out)
    assert set(corpus.codec.chars) == set(text.read_text()) | set(TUNES[TUNES.index("X:1"):])
    sources = [p.source for p in corpus.train + corpus.val]
    assert sum(s.startswith(str(text)) for s in sources) >= 5 and sum("#X" in s for s in sources) == 3
    whole = "".join(corpus.codec.decode(p.tokens) for p in sorted(corpus.train + corpus.val, key=lambda p: (
        p.source.split("[")[0], int(p.source.split("[")[1][:-1]) if "[" in p.source else 0)) if p.source.startswith(str(text)))
    assert whole == text.read_text()

    out2 = tmp_path / "out2"
    assert prepare("--codec", "text", "--input", tmp_path / "tunes.abc", "--chars-from", out, "--out", out2) == 0
    assert load_prepared(out2).codec == corpus.codec


def test_touch_logs_give_one_piece_per_performer(tmp_path, capsys):
    log = tmp_path / "session.csv"
    rows = ["time,performer,x,y"] + [f"{t * 0.1:.2f},{'ab'[t % 2]},{(t % 10) / 10},{(t % 7) / 7}" for t in range(40)]
    log.write_text("\n".join(rows) + "\n")
    (tmp_path / "broken.csv").write_text("time,performer,x,y\n0,a,0.5,oops\n")
    out = tmp_path / "out"
    assert prepare("--codec", "touch", "--input", tmp_path, "--out", out) == 0
    assert "broken.csv: line 2: y 'oops' is not a number" in capsys.readouterr().out
    corpus = load_prepared(out)
    pieces = sorted(corpus.train + corpus.val, key=lambda p: p.source)
    assert [p.source for p in pieces] == [f"{log}#a", f"{log}#b"]
    assert [len(p.tokens) for p in pieces] == [20, 20]
    from ensemble.codecs.touch import TouchEvent

    times = [float(f"{t * 0.1:.2f}") for t in range(0, 40, 2)]  # performer a: every other row
    expected = [TouchEvent(now - before, (t % 10) / 10, (t % 7) / 7)
                for t, now, before in zip(range(0, 40, 2), times, [times[0]] + times)]
    assert pieces[0].tokens.tolist() == corpus.codec.encode(expected)


def test_gesture_logs_give_ensemble_states(tmp_path, capsys):
    (tmp_path / "good.csv").write_text("time,performer,gesture\n0,a,1\n0,b,2\n1,b,3\n2,a,0\n")
    (tmp_path / "bad.csv").write_text("time,performer,gesture\n0,a,11\n")
    out = tmp_path / "out"
    assert prepare("--codec", "gestures", "--input", tmp_path, "--out", out, "--val-fraction", 0) == 0
    assert "bad.csv: performer 0: gesture must be an int 0..8, got 11" in capsys.readouterr().out
    corpus = load_prepared(out)
    (piece,) = corpus.train
    # a and b, then c and d (absent) doing nothing: one state per moment, the last gesture of each holds
    assert corpus.codec.decode(piece.tokens.tolist()) == [(1, 2, 0, 0), (1, 3, 0, 0), (0, 3, 0, 0)]


@needs_music21
def test_prepare_is_reproducible_by_seed_and_splits_by_piece(tmp_path, capsys):
    runs = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        out = tmp_path / name
        assert prepare("--codec", "abc", "--input", "music21:oneills1850", "--limit", 120, "--seed", seed,
                       "--out", out) == 0
        runs.append(out)
    a, b, c = runs
    assert (a / "tokens.npy").read_bytes() == (b / "tokens.npy").read_bytes()
    assert (a / "manifest.json").read_text() == (b / "manifest.json").read_text()
    ma, mc = manifest_of(a), manifest_of(c)
    assert ma["counts"]["pieces"] == 120 and ma["counts"]["val_pieces"] == 12
    val_a = {p["source"] for p in ma["pieces"] if p["split"] == "val"}
    train_a = {p["source"] for p in ma["pieces"] if p["split"] == "train"}
    assert not val_a & train_a and len(val_a | train_a) == 120  # every tune is in exactly one split
    assert val_a != {p["source"] for p in mc["pieces"] if p["split"] == "val"}
    corpus = load_prepared(a)
    assert all(p.tokens[0] == corpus.codec.token("<s>") and p.tokens[-1] == corpus.codec.token("</s>")
               for p in corpus.train + corpus.val)


@needs_music21
def test_all_folk_tunes_prepare_well_within_a_minute(tmp_path, capsys):
    out = tmp_path / "folk"
    t0 = time.perf_counter()
    assert prepare("--codec", "abc", "--input", "music21:folk", "--out", out, "--workers", 2) == 0
    seconds = time.perf_counter() - t0
    printed = capsys.readouterr().out
    counts = manifest_of(out)["counts"]
    assert counts["pieces"] > 12000 and counts["tokens"] > 1_000_000, counts
    assert seconds < 45, f"{seconds:.1f} s"
    assert "dropped symbols the codec cannot hold" in printed
    tokens = np.load(out / "tokens.npy")
    assert tokens.max() < AbcCodec().vocab_size


@needs_music21
def test_chorales_become_four_part_notes(tmp_path, capsys):
    out = tmp_path / "bach"
    assert prepare("--codec", "performance", "--input", "music21:chorales", "--limit", 2, "--out", out) == 0
    corpus = load_prepared(out)
    pieces = corpus.train + corpus.val
    assert len(pieces) == 2 and all(p.source.startswith("music21:bach/bwv") for p in pieces)
    notes = corpus.codec.decode_to_notes(pieces[0].tokens.tolist())
    starts = {}
    for n in notes:
        starts[round(n.start, 2)] = starts.get(round(n.start, 2), 0) + 1
    assert len(notes) > 100 and max(starts.values()) == 4  # four voices sound together


def test_music21_inputs_say_how_to_get_music21_when_it_is_missing(tmp_path, capsys, monkeypatch):
    from ensemble import corpora

    monkeypatch.setattr(corpora.importlib.util, "find_spec", lambda name: None)
    assert prepare("--codec", "abc", "--input", "music21:folk", "--out", tmp_path / "out") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'ensemble[corpora]'" in err[0]


@needs_music21
def test_unknown_music21_name_lists_the_known_ones(tmp_path, capsys):
    assert prepare("--codec", "abc", "--input", "music21:nosuch", "--out", tmp_path / "out") == 1
    assert "oneills1850" in capsys.readouterr().err


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["prepare", "--help"])
    text = capsys.readouterr().out
    for option in ["--codec", "--input", "--out", "--val-fraction", "--seed", "--transpose", "--limit",
                   "--chars-from", "--piece-chars", "--tempo", "--strict", "--workers", "--no-progress",
                   "music21:folk", "time,performer,x,y"]:
        assert option in text, option


def test_piece_names_leave_out_abc_comments(tmp_path, capsys):
    tunes = tmp_path / "english.abc"
    tunes.write_text("X:1   % tune no 1\nM:2/4\nL:1/8\nK:G\nGABc|dcBA|\n\nX: 2 %second\nK:D\nDEFG|ABcd|\n")
    out = tmp_path / "out"
    assert prepare("--codec", "abc", "--input", tunes, "--out", out) == 0
    sources = [p["source"] for p in manifest_of(out)["pieces"]]
    assert sorted(sources) == [f"{tunes}#X1", f"{tunes}#X2"]
