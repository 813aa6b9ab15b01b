"""Pictures: loss curves, LSTM activations and piano rolls come out as real PNG files."""

import mido
import numpy as np

from ensemble import checkpoint
from ensemble.cli import main
from ensemble.plot import notes_of, trace_states

PNG = b"\x89PNG\r\n\x1a\n"


def test_loss_activations_and_roll(tmp_path, text_run, capsys):
    assert main(["plot", "loss", str(text_run), "--out", str(tmp_path / "loss.png")]) == 0
    assert main(["plot", "activations", "--model", str(text_run), "--prime", "the quick brown fox",
                 "--units", "8", "--out", str(tmp_path / "act.png")]) == 0
    midi = mido.MidiFile()
    track = mido.MidiTrack()
    midi.tracks.append(track)
    for pitch in (60, 64, 67):
        track.append(mido.Message("note_on", note=pitch, velocity=90, time=0))
        track.append(mido.Message("note_off", note=pitch, velocity=0, time=240))
    midi.save(tmp_path / "x.mid")
    assert main(["plot", "roll", str(tmp_path / "x.mid"), "--out", str(tmp_path / "roll.png")]) == 0
    for name in ("loss.png", "act.png", "roll.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG


def test_traced_states_are_the_models_states(text_run):
    import torch

    ckpt = checkpoint.load(text_run)
    tokens = ckpt.codec.encode("the lazy dog")
    states = trace_states(ckpt.model, tokens, layer=0, which="cell")
    assert states.shape == (len(tokens), ckpt.model.config.hidden)
    with torch.no_grad():
        _, final = ckpt.model(torch.tensor([tokens]))
    assert np.allclose(states[-1], final.c[0, 0].numpy(), atol=1e-5)


def test_roll_of_a_session_log_pairs_notes(tmp_path):
    log = tmp_path / "session.jsonl"
    log.write_text('{"kind": "session"}\n'
                   '{"t": 0.0, "dir": "in", "performer": "a", "kind": "note", "values": [60, 90]}\n'
                   '{"t": 0.5, "dir": "out", "performer": "a", "kind": "note", "values": [62, 80]}\n'
                   '{"t": 1.0, "dir": "in", "performer": "a", "kind": "note", "values": [60, 0]}\n'
                   '{"t": 1.5, "dir": "out", "performer": "a", "kind": "note", "values": [62, 0]}\n')
    notes = sorted(notes_of(log))
    assert notes == [("a (answer)", 0.5, 1.5, 62, 80), ("a (played)", 0.0, 1.0, 60, 90)]


def test_plot_errors_are_one_line(tmp_path, capsys):
    assert main(["plot", "loss", str(tmp_path)]) == 1
    assert "no log.csv" in capsys.readouterr().err
