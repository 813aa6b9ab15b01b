"""The bundled default model: trained on real music, with a model card, served by `ensemble serve`."""

import json
import signal
from pathlib import Path

from ensemble import checkpoint
from ensemble.server.config import DEFAULT_MODEL
from oscpeer import OscPeer, start_server_process

MODEL = Path(__file__).resolve().parents[1] / "models" / "folk-notes"


def test_default_model_is_shipped_with_its_card():
    assert DEFAULT_MODEL == MODEL
    ckpt = checkpoint.load(MODEL)
    assert ckpt.codec.name == "notes"
    config = json.loads((MODEL / "config.json").read_text())
    val = config["validation"]["loss_nats"]
    assert val < 0.6 * config["data"]["unigram_entropy_nats"]  # it learned far more than note frequencies
    card = (MODEL / "README.md").read_text()
    assert f"{val:.4f}" in card and "music21" in card and "ensemble train" in card


def test_shipped_cards_name_no_build_machine_and_the_right_size():
    from ensemble.train import SIZES

    for folder in sorted(MODEL.parent.iterdir()):
        config = json.loads((folder / "config.json").read_text())
        for text in ((folder / "config.json").read_text(), (folder / "README.md").read_text()):
            assert "/work/" not in text and "/home/" not in text and "/tmp/" not in text, folder
        if config.get("model_type", "token-rnn") != "token-rnn":  # another model type, its own card (test_metatone)
            continue
        assert (folder / "README.md").read_text() == checkpoint.model_card(folder.name, config)
        model, training = config["model"], config["training"]
        shape = (training["layers"], training["hidden"]) if training["size"] == "custom" else SIZES[training["size"]][:2]
        assert shape == (model["layers"], model["hidden"]), folder


def test_serve_with_no_model_option_serves_the_default_model(tmp_path):
    proc, port = start_server_process(["--port", "0", "--no-snapshot", "--record", str(tmp_path), "--mode", "duet"])
    try:
        peer = OscPeer(port)
        peer.send("/ensemble/hello", "pat", "127.0.0.1", peer.port)
        peer.send("/ensemble/note", "pat", 62, 90)
        address, args = peer.recv(timeout=10)
        assert address == "/ensemble/note" and args[0] == "pat" and args[2] > 0 and args[3] == 1
        peer.send("/ensemble/status")
        status = json.loads(peer.recv_until("/ensemble/status")[0])
        assert status["model"] == "folk-notes" and status["codec"] == "notes"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)


def test_folk_abc_model_writes_one_tune_that_parses():
    import music21

    from ensemble.generate import generate
    from ensemble.sampling import SamplingSettings

    ckpt = checkpoint.load(MODEL.parent / "folk-abc")
    config = json.loads((MODEL.parent / "folk-abc" / "config.json").read_text())
    assert config["validation"]["loss_nats"] < 0.5 * config["data"]["unigram_entropy_nats"]
    tokens = generate(ckpt, [], 2000, SamplingSettings(temperature=0.8), seed=6)
    assert tokens[-1] == ckpt.codec.stop_token and tokens.count(ckpt.codec.stop_token) == 1
    text = ckpt.codec.decode([ckpt.codec.start_token] + tokens)
    assert text.count("X:") == 1
    score = music21.converter.parse(text, format="abc")
    assert len(score.flatten().notes) >= 8


def test_shipped_touch_model_continues_a_touch_stroke(tmp_path):
    """models/ipad-touch (trained on synthetic touches) answers a stroke with touches, in range."""
    folder = MODEL.parent / "ipad-touch"
    config = json.loads((folder / "config.json").read_text())
    assert config["codec"]["name"] == "touch"
    assert config["validation"]["loss_nats"] < 0.6 * config["data"]["unigram_entropy_nats"]
    proc, port = start_server_process(["--model", str(folder), "--port", "0", "--no-snapshot", "--no-record",
                                       "--mode", "duet", "--seed", "1"])
    try:
        peer = OscPeer(port)
        peer.send("/ensemble/hello", "pad", "127.0.0.1", peer.port)
        for k in range(8):  # a stroke to the right, each touch answered at once (duet)
            peer.send("/ensemble/touch", "pad", 0.2 + 0.05 * k, 0.5)
            assert peer.recv_until("/ensemble/touch")[3] == k + 1
        peer.send("/ensemble/touch", "pad", 0.6, 0.5)
        args = peer.recv_until("/ensemble/touch")
        assert args[0] == "pad" and 0 <= args[1] <= 1 and 0 <= args[2] <= 1 and args[3] == 9
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
