"""The Neural iPad Band end to end: synthetic touch logs, the gesture classifier, and
Metatone apps (python-osc and liblo's oscsend) playing with a gestures band over UDP."""

from __future__ import annotations

import csv
import shutil
import socket
import subprocess

import numpy as np
import pytest
import torch

from ensemble import checkpoint, classifier, touch_synth
from ensemble.codecs.gestures import GesturesCodec
from ensemble.io.metatone import GESTURE_CODES
from ensemble.model import ModelConfig, TokenRNN
from ensemble.server.config import ServerConfig
from oscpeer import OscPeer, ServerThread
from test_server import dump_line


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synth") / "logs"
    touch_synth.write_corpus(folder, sessions=2, players=2, seconds=30, seed=3)
    return folder


@pytest.fixture(scope="module")
def tiny_classifier(logs, tmp_path_factory):
    """A real (tiny, briefly trained) classifier: the tests need its plumbing, not its accuracy."""
    out = tmp_path_factory.mktemp("clf") / "run"
    metrics = classifier.train_classifier(logs, out, hidden=8, steps=20, batch=8, val_fraction=0.5, max_points=40)
    assert metrics["step"] == 20 and 0.0 <= metrics["accuracy"] <= 1.0
    assert np.array(metrics["confusion"]).sum() == metrics["val_windows"]
    return out / "best"


@pytest.fixture(scope="module")
def band_model(tmp_path_factory):
    """A tiny gestures-codec LSTM (4 performers): its samples vary, which is what the loop needs."""
    torch.manual_seed(0)
    codec = GesturesCodec(4)
    model = TokenRNN.from_config(ModelConfig(vocab_size=codec.vocab_size, layers=1, hidden=8, embedding=4))
    return checkpoint.save(tmp_path_factory.mktemp("band") / "band", model, codec)


def config(model, clf, **kw) -> ServerConfig:
    values = dict(model=str(model), port=0, record="", snapshot="", seed=7, metatone=0, metatone_reply_port=0,
                  metatone_classifier=str(clf), gesture_interval=0.1)
    values.update(kw)
    return ServerConfig(**values)


def test_synthetic_logs_round_trip_through_the_csv_readers(logs):
    touches = classifier.read_touch_log(logs / "touches-000.csv")
    performers, rows = classifier.read_gesture_log(logs / "gestures-000.csv")
    assert sorted(touches) == performers == ["ipad1", "ipad2"] and len(rows) == 30
    again, labels = touch_synth.session(2, 30, seed=3000)
    for device, pts in again.items():
        assert len(touches[device]) == len(pts)
        assert [p[3] for p in touches[device]] == [v == 0.0 for *_, v in pts]  # touch-downs survive
    assert [gs for _, gs in rows] == [[labels["ipad1"][s], labels["ipad2"][s]] for s in range(30)]
    assert all(0 <= x < 1024 and 0 <= y < 768 for pts in touches.values() for _, x, y, _ in pts)


def test_every_gesture_has_its_own_touches():
    rng = np.random.default_rng(0)
    counts = []
    for g in range(9):
        s = touch_synth._Stream(touch_synth.Player.random(rng), rng)
        touch_synth.play(g, 0.0, 5.0, s)
        counts.append(len(s.points))
    assert counts[0] == 0 and all(c > 0 for c in counts[1:])
    assert counts[1] > 2 * counts[2]  # fast taps are faster than slow taps


def test_numpy_inference_is_the_trained_torch_model(tiny_classifier, logs):
    live = classifier.GestureClassifier.load(tiny_classifier)
    net = classifier._build(live.hidden)
    net.load_state_dict({k: torch.from_numpy(v) for k, v in live.weights.items()})
    net.eval()
    windows = [w for w, _ in classifier.labelled_windows(logs, live.window, live.max_points)[0] if len(w)][:5]
    assert windows
    x, lengths, _ = classifier._batch([(w, 0) for w in windows])
    with torch.no_grad():
        expected = net(x, lengths).numpy()
    for w, e in zip(windows, expected):
        np.testing.assert_allclose(live.logits(w), e, rtol=1e-4, atol=1e-4)
    assert live.classify([], 10.0) == 0  # no touches: nothing
    mixed = windows + [windows[0][:3], windows[-1][:1]]  # one batched pass over windows of any lengths
    np.testing.assert_allclose(live.logits_batch(mixed), [live.logits(w) for w in mixed], rtol=1e-4, atol=1e-4)


def test_train_and_classify_commands(logs, tmp_path):
    from ensemble.cli import main

    assert main(["train", "--codec", "gesture-classifier", "--data", str(logs), "--out", str(tmp_path / "run"),
                 "--steps", "5", "--hidden", "4", "--batch", "4"]) == 0
    card = (tmp_path / "run" / "best" / "README.md").read_text()
    assert "SYNTHETIC" in card and "Confusion matrix" in card and "ensemble train --codec gesture-classifier" in card
    out = tmp_path / "gestures.csv"
    assert main(["classify", "--model", str(tmp_path / "run"), "--input", str(logs / "touches-001.csv"),
                 "--output", str(out)]) == 0
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["time", "ipad1", "ipad2"] and 25 <= len(rows) - 1 <= 32
    assert all(0 <= int(g) <= 8 for row in rows[1:] for g in row[1:])
    with pytest.raises(checkpoint.CheckpointError, match="gesture classifier"):
        checkpoint.load(tmp_path / "run")


def recv_address(peer: OscPeer, address: str, timeout: float = 10.0) -> list:
    return peer.recv_until(address, timeout)


def test_metatone_apps_play_with_the_band(band_model, tiny_classifier):
    """Two apps over python-osc: online, touches, a gesture back every interval, the band's
    gestures played into the model and back as touches, offline."""
    with ServerThread(config(band_model, tiny_classifier)) as server:
        port = server.info["metatone"].port
        a, b = OscPeer(port), OscPeer(port)
        a.send("/metatone/online", "ipad-a", "PhaseRings")
        b.send("/metatone/online", "ipad-b", "PhaseRings")
        for k in range(20):
            a.send("/metatone/touch", "ipad-a", 100.0 + 10 * k, 300.0, 0.0 if k % 5 == 0 else 10.0)
            if k % 5 == 4:
                a.send("/metatone/touch/ended", "ipad-a")
        a.send("/metatone/switch", "ipad-a", "sound", "on")
        a.send("/metatone/app", "ipad-a", "whatever", "x")  # not ours: ignored, no harm
        for peer, name in ((a, "ipad-a"), (b, "ipad-b")):
            args = recv_address(peer, "/metatone/classifier/gesture")
            assert args[0] == name and args[1] in GESTURE_CODES
        # the band sends each device touches of its predicted gestures within a few ticks
        touch = recv_address(b, "/ensemble/touch")
        assert touch[0] == "ipad-b" and 0 <= touch[1] <= 1 and 0 <= touch[2] <= 1 and touch[3] >= 1
        conductor = server.conductor
        assert set(conductor.band.places) == {"ipad-a", "ipad-b"}
        status = server.info["metatone"].status()
        assert status["devices"] == 2 and status["classified"] >= 2 and status["ignored"] >= 1
        a.send("/metatone/offline", "ipad-a")
        a.send("/metatone/online", "ipad-c", "PhaseRings")  # the next ipad takes the free place
        recv_address(a, "/metatone/classifier/gesture")  # ipad-c's: a tick after offline and online
        assert "ipad-a" not in server.info["metatone"].devices and "ipad-a" not in conductor.performers
        assert set(conductor.band.places) == {"ipad-b", "ipad-c"}


def test_hostile_packets_and_stolen_ids_cost_a_log_line(band_model, tiny_classifier, caplog):
    with ServerThread(config(band_model, tiny_classifier)) as server:
        metatone = server.info["metatone"]
        a = OscPeer(metatone.port)
        thief = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        thief.bind(("127.0.0.2", 0))  # another loopback address: another owner
        a.send("/metatone/online", "ipad-a", "app")
        a.send_raw(b"\x00\x00\x00\x14#bundle\x00garbage!")
        a.send_raw(b"#bundle\x00" + b"\x00" * 8 + b"\xff\xff\xff\xf0")  # negative element size
        a.send("/metatone/touch", "ipad-a", "x", 1.0, 2.0)
        a.send("/metatone/touch", "ipad-a", float("nan"), 1.0, 2.0)
        from ensemble.io.osc import build

        thief.sendto(build("/metatone/touch", ["ipad-a", 1.0, 2.0, 0.0]), ("127.0.0.1", metatone.port))
        thief.sendto(build("/metatone/offline", ["ipad-a"]), ("127.0.0.1", metatone.port))
        args = a.recv_until("/metatone/classifier/gesture")
        assert args == ["ipad-a", "n"]  # nothing counted from the bad packets or the thief
        assert "ipad-a" in metatone.devices and len(metatone.devices["ipad-a"].touches) == 0
        assert metatone.malformed == 2 and metatone.errors >= 4
        thief.close()


def test_oscsend_is_a_metatone_app(band_model, tiny_classifier):
    """liblo's oscsend plays the app; oscdump listens where the apps listen (the reply port)."""
    if not (shutil.which("oscsend") and shutil.which("oscdump")):
        pytest.skip("liblo-tools (oscsend, oscdump) not installed")
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    dump_port = probe.getsockname()[1]
    probe.close()
    dump = subprocess.Popen(["oscdump", "-L", str(dump_port)], stdout=subprocess.PIPE, text=True)
    try:
        with ServerThread(config(band_model, tiny_classifier, metatone_reply_port=dump_port)) as server:
            port = str(server.info["metatone"].port)
            send = lambda *a: subprocess.run(["oscsend", "127.0.0.1", port, *a], check=True)
            send("/metatone/online", "ss", "ipad-c", "SingingHarp")
            send("/metatone/touch", "sfff", "ipad-c", "512", "384", "0")
            send("/metatone/switch", "sss", "ipad-c", "clustersOn", "T")
            seen = set()
            wanted = {"/metatone/classifier/hello", "/metatone/classifier/gesture", "/ensemble/touch",
                      "/metatone/playback/touch", "/metatone/playback/gesture", "/metatone/classifier/ensemble/state"}
            for _ in range(10_000):  # bounded: a broken server fails here, it does not hang
                if wanted <= seen:
                    break
                fields = dump_line(dump)
                assert fields, "oscdump ended"
                seen.add(fields[0])
                if fields[0] == "/metatone/classifier/gesture":
                    assert fields[1] == "ss" and fields[2] == '"ipad-c"' and fields[3].strip('"') in GESTURE_CODES
                if fields[0] == "/metatone/playback/touch":  # liblo reads what the apps' F53OSC reads
                    assert fields[1] == "sfff" and fields[2] == '"ipad-c"'
                    assert 0 <= float(fields[3]) <= 1024 and 0 <= float(fields[4]) <= 768 and float(fields[5]) >= 0
                if fields[0] == "/metatone/classifier/ensemble/state":
                    assert fields[1] == "sff" and fields[2].strip('"') in ("stasis", "convergence", "divergence",
                                                                         "development")
            assert server.info["metatone"].status()["switch_states"] == {"ipad-c": {"clustersOn": True}}
            send("/metatone/offline", "ss", "ipad-c", "SingingHarp")  # what the apps send
            send("/metatone/online", "ss", "ipad-d", "SingingHarp")  # queued behind it on the same socket
            for _ in range(10_000):
                fields = dump_line(dump)
                assert fields, "oscdump ended"
                if fields[0] == "/metatone/classifier/hello":
                    break
            assert "ipad-c" not in server.info["metatone"].devices and "ipad-c" not in server.conductor.performers
    finally:
        dump.kill()
        dump.wait()


def test_prepare_reads_metatone_touch_and_gesture_logs(tmp_path):
    """The synthesiser's logs are training data for the band (gestures) and touch models."""
    import json

    from ensemble.cli import main

    logs = tmp_path / "logs"
    touch_synth.write_corpus(logs, sessions=2, players=4, seconds=20, seed=5)
    assert main(["prepare", "--codec", "gestures", "--input", str(logs), "--out", str(tmp_path / "g")]) == 0
    counts = json.loads((tmp_path / "g" / "manifest.json").read_text())["counts"]
    assert counts["pieces"] == 2 and counts["tokens"] == 40  # one band state a second; touch logs skipped
    from ensemble.corpora import Source, read_source

    states = next(read_source(Source("g0", logs / "gestures-000.csv", "csv"))).data
    _, labels = touch_synth.session(4, 20, seed=5000, touches=False)
    assert states == [tuple(labels[f"ipad{p + 1}"][s] for p in range(4)) for s in range(20)]
    assert main(["prepare", "--codec", "touch", "--input", str(logs), "--out", str(tmp_path / "t")]) == 0
    counts = json.loads((tmp_path / "t" / "manifest.json").read_text())["counts"]
    read = [classifier.read_touch_log(logs / f"touches-00{i}.csv") for i in (0, 1)]
    assert counts["pieces"] == sum(len(r) for r in read)  # one piece per device per log
    assert counts["tokens"] == sum(len(p) for r in read for p in r.values())


@pytest.mark.skipif(shutil.which("pd") is None, reason="Pure Data (puredata-core) is not installed")
def test_pd_plays_the_bands_touches(band_model, tiny_classifier):
    """patches/ensemble-touch.pd, headless, hears the touches the band plays to an iPad."""
    from test_pd_patches import free_port, start_pd

    reply_port = free_port()
    cfg = config(band_model, tiny_classifier, metatone_pd=f"127.0.0.1:{reply_port}")
    with ServerThread(cfg) as server:
        pd = start_pd("ensemble-touch.pd", server.port, reply_port)
        try:
            app = OscPeer(server.info["metatone"].port)
            app.send("/metatone/online", "ipad-pd", "PhaseRings")
            for line in pd.stderr:  # bounded by the test's own touches: the band plays within a few ticks
                fields = line.split()
                if fields[:4] == ["OSC:", "ensemble", "touch", "ipad-pd"]:
                    assert 0 <= float(fields[4]) <= 1 and 0 <= float(fields[5]) <= 1
                    break
            else:
                raise AssertionError("pd stopped before the band's touches arrived")
        finally:
            pd.kill()
            pd.wait()


def test_a_touch_model_answers_metatone_touches(touch_model, tiny_classifier):
    with ServerThread(config(touch_model, tiny_classifier, default_mode="duet")) as server:
        app = OscPeer(server.info["metatone"].port)
        app.send("/metatone/online", "ipad-t", "PhaseRings")
        app.send("/metatone/touch", "ipad-t", 256.0, 192.0, 0.0)
        args = recv_address(app, "/ensemble/touch")
        assert args[0] == "ipad-t" and 0 <= args[1] <= 1 and 0 <= args[2] <= 1
        assert server.conductor.performers["ipad-t"].events_in == 1


def test_shipped_classifier_loads_and_its_card_is_its_config():
    import json
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "models" / "gesture-classifier"
    config = json.loads((folder / "config.json").read_text())
    assert (folder / "README.md").read_text() == classifier.card(folder.name, config)
    assert "SYNTHETIC" in (folder / "README.md").read_text()
    live = classifier.GestureClassifier.load(folder)
    v = config["validation"]
    assert np.array(v["confusion"]).sum() == v["val_windows"] and v["accuracy"] > 0.5
    assert live.classify([(0.0, 500.0, 400.0, True)], 1.0) in range(9)
