"""The real-time server over OSC, driven by real peers: python-osc, liblo's oscsend/oscdump."""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import time
import subprocess
import zlib

import numpy as np
import pytest
import torch

from ensemble import checkpoint
from ensemble.engine import Sampler
from ensemble.sampling import SamplingSettings
from ensemble.server.config import ServerConfig
from ensemble.session_log import read_session
from oscpeer import OscPeer, ServerThread, start_server_process

SEED = 1234


def config(model, tmp_path, **kw) -> ServerConfig:
    values = dict(model=str(model), port=0, record=str(tmp_path / "rec"), snapshot=str(tmp_path / "snap.npz"),
                  seed=SEED, snapshot_every=3600.0)
    values.update(kw)
    return ServerConfig(**values)


def duet_replay(model_dir, events: list[dict], performer: str, settings: SamplingSettings) -> list[tuple]:
    """What duet mode must send for these recorded events, computed offline with torch `step`.

    A note-on is answered by a note-on sampled with every note-off token forbidden, then
    the previous answer ends (first, when the new answer has its pitch: struck again); a
    note-off ends the current answer. The answer is as loud as the player (style
    following): these players play every note at one velocity.
    """
    loudness = {e["values"][1] for e in events if e["values"][1] > 0}
    assert len(loudness) == 1
    ckpt = checkpoint.load(model_dir)
    codec = ckpt.codec
    mask = np.array([codec.decode_token(t).velocity == 0 for t in range(codec.vocab_size)])
    rng = np.random.default_rng([SEED, zlib.crc32(performer.encode())])
    sampler = Sampler(codec.vocab_size)
    state, sent, answer = None, [], None
    with torch.no_grad():
        for e in events:
            logits, state = ckpt.model.step(torch.tensor([e["token"]]), state)
            previous, answer = answer, None
            if e["values"][1] > 0:
                note = codec.decode_token(int(sampler(logits[0].numpy(), settings, rng, mask)))
                if note.pitch == previous:
                    sent.append((previous, 0))
                sent.append((note.pitch, next(iter(loudness))))
                answer = note.pitch
            if previous is not None and previous != answer:
                sent.append((previous, 0))
    return sent


def in_events(folder, performer):
    events = []
    for path in sorted(folder.glob("*.jsonl")):
        events += [e for e in read_session(path)[1] if e["dir"] == "in" and e["performer"] == performer
                   and "token" in e]
    return events


def test_two_interleaved_performers_each_follow_only_their_own_history(notes_model, tmp_path):
    cfg = config(notes_model, tmp_path, default_mode="duet", max_note=60.0)
    with ServerThread(cfg) as server:
        alice, bob = OscPeer(server.port), OscPeer(server.port)
        alice.send("/ensemble/hello", "alice", "127.0.0.1", alice.port)
        bob.send("/ensemble/hello", "bob", "127.0.0.1", bob.port)
        got = {"alice": [], "bob": []}
        melody = {"alice": [60, 62, 64, 65, 67, 65, 64, 62], "bob": [48, 55, 52, 55, 48, 55, 52, 55]}
        for i in range(8):
            for name, peer in (("alice", alice), ("bob", bob)):
                peer.send("/ensemble/note", name, melody[name][i - i % 2], 0 if i % 2 else 90)
        for name, peer in (("alice", alice), ("bob", bob)):
            peer.sock.settimeout(5)
        # every event is answered at once in duet mode; read until both streams have gone quiet
        for name, peer in (("alice", alice), ("bob", bob)):
            while True:
                try:
                    address, args = peer.recv(timeout=1.0)
                except socket.timeout:
                    break
                assert address == "/ensemble/note" and args[0] == name
                got[name].append(tuple(args[1:]))
        settings = SamplingSettings(cfg.temperature, cfg.top_k, cfg.top_p)
    for name in ("alice", "bob"):
        events = in_events(tmp_path / "rec", name)
        assert len(events) == 8
        expected = duet_replay(notes_model, events, name, settings)
        assert len(expected) == 8  # one answer per event
        assert [g[:2] for g in got[name]] == expected
        assert [g[2] for g in got[name]] == list(range(1, len(expected) + 1))  # sequence numbers


def test_respond_mode_answers_after_silence_and_stops_when_played_over(notes_model, tmp_path):
    cfg = config(notes_model, tmp_path, default_mode="respond", threshold=0.2, max_note=0.5)
    with ServerThread(cfg) as server:
        peer = OscPeer(server.port)
        peer.send("/ensemble/hello", "carol", "127.0.0.1", peer.port)
        for pitch in (60, 64, 67):
            peer.send("/ensemble/note", "carol", pitch, 100)
            peer.send("/ensemble/note", "carol", pitch, 0)
        # nothing comes back before the threshold; then the machine plays on by itself
        ons, offs = [], []
        while len(ons) < 3:
            address, args = peer.recv(timeout=10)
            assert address == "/ensemble/note"
            (ons if args[2] > 0 else offs).append(args[1])
        conductor = server.conductor
        assert conductor.performers["carol"].generating
        peer.send("/ensemble/note", "carol", 72, 100)  # the performer plays again
        peer.send("/ensemble/status")
        while True:
            address, args = peer.recv(timeout=5)
            if address == "/ensemble/status":
                status = json.loads(args[0])
                break
            (ons if args[2] > 0 else offs).append(args[1])
        carol = next(p for p in status["performers"] if p["id"] == "carol")
        assert carol["generating"] is False
        # every note-on the server sent got its note-off, before the status reply
        assert sorted(ons) == sorted(offs)
        assert conductor.held.sounding("carol") == []


def test_garbage_and_wrong_types_get_errors_and_the_server_keeps_serving(notes_model, tmp_path):
    cfg = config(notes_model, tmp_path, default_mode="duet")
    with ServerThread(cfg) as server:
        peer = OscPeer(server.port)
        peer.send("/ensemble/hello", "dave", "127.0.0.1", peer.port)
        peer.send_raw(b"\x00\x01garbage that is not OSC")
        assert peer.recv_until("/ensemble/error")[1].startswith("malformed OSC packet")
        peer.send("/ensemble/note", "dave", "sixty", 100)
        assert "takes" in peer.recv_until("/ensemble/error")[1]
        peer.send("/ensemble/note", "dave", 200, 100)
        assert "out of range" in peer.recv_until("/ensemble/error")[1]
        peer.send("/ensemble/note", "nobody", 60, 100)
        assert "unknown performer" in peer.recv_until("/ensemble/error")[1]
        peer.send("/ensemble/touch", "dave", 0.5, 0.5)
        assert "takes /ensemble/note" in peer.recv_until("/ensemble/error")[1]
        peer.send("/ensemble/mode", "dave", "karaoke")
        assert "mode must be one of" in peer.recv_until("/ensemble/error")[1]
        peer.send("/ensemble/set", "dave", "temperature", -1.0)
        assert "temperature must be > 0, got -1.0" in peer.recv_until("/ensemble/error")[1]
        peer.send("/ensemble/set", "dave", "top_p", 1.5)  # ranges are the config's: same words as a TOML error
        assert "top_p must be <= 1, got 1.5" in peer.recv_until("/ensemble/error")[1]
        peer.send("/elsewhere/x", 1)
        assert "unknown address" in peer.recv_until("/ensemble/error")[1]
        peer.send("/ensemble/note", "dave", 60, 100)  # a good message is still answered
        address, args = peer.recv()
        assert address == "/ensemble/note" and args[0] == "dave" and args[3] == 1
        assert server.conductor.errors == 9


def dump_line(dump) -> list[str]:
    """One message as oscdump prints it, without its leading timestamp."""
    fields = dump.stdout.readline().split()
    if fields and re.fullmatch(r"[0-9a-f]+\.[0-9a-f]+", fields[0]):
        fields = fields[1:]
    return fields


def test_oscsend_in_oscdump_out(notes_model, tmp_path):
    """Peers no one here wrote: liblo's oscsend talks to the server, oscdump hears the answers."""
    if not (shutil.which("oscsend") and shutil.which("oscdump")):
        pytest.skip("liblo-tools (oscsend, oscdump) not installed")
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    dump_port = probe.getsockname()[1]
    probe.close()
    dump = subprocess.Popen(["oscdump", "-L", str(dump_port)], stdout=subprocess.PIPE, text=True)
    cfg = config(notes_model, tmp_path, default_mode="duet")
    try:
        with ServerThread(cfg) as server:
            send = lambda *a: subprocess.run(["oscsend", "127.0.0.1", str(server.port), *a], check=True)
            send("/ensemble/hello", "ssi", "erin", "127.0.0.1", str(dump_port))
            send("/ensemble/note", "sii", "erin", "60", "100")
            fields = dump_line(dump)
            assert fields[:3] == ["/ensemble/note", "siii", '"erin"'] and fields[-1] == "1"
            assert 0 <= int(fields[3]) <= 127 and 0 <= int(fields[4]) <= 127
            send("/ensemble/note", "sff", "erin", "1.5", "2.0")  # wrong types: error to erin's address
            fields = dump_line(dump)
            assert fields[:3] == ["/ensemble/error", "ss", '"/ensemble/note"'] and "takes" in " ".join(fields)
            # oscsend closes its port at once: the status comes to the port named, or to erin's address
            send("/ensemble/status", "i", str(dump_port))
            fields = dump_line(dump)
            assert fields[:2] == ["/ensemble/status", "s"] and '"performers_total":1' in " ".join(fields[2:])
            send("/ensemble/status", "s", "erin")
            fields = dump_line(dump)
            assert fields[:2] == ["/ensemble/status", "s"] and '"id":"erin"' in " ".join(fields[2:])
    finally:
        dump.kill()
        dump.wait()


def test_panic_silences_auto_until_the_performer_plays_and_status_shows_it(notes_model, tmp_path):
    cfg = config(notes_model, tmp_path, default_mode="auto", max_note=0.2)
    with ServerThread(cfg) as server:
        peer = OscPeer(server.port)
        peer.send("/ensemble/hello", "gil", "127.0.0.1", peer.port)
        peer.recv_until("/ensemble/note")  # auto plays from hello on
        peer.send("/ensemble/panic")
        _, status = peer.until_status()
        gil = status["performers"][0]
        assert gil["mode"] == "auto" and gil["silenced_by_panic"] and not gil["generating"]
        peer.send("/ensemble/note", "gil", 60, 90)  # playing again brings the machine back
        _, status = peer.until_status()
        assert not status["performers"][0]["silenced_by_panic"] and status["performers"][0]["generating"]


def test_sigterm_then_restore_continues_exactly(notes_model, tmp_path):
    args = ["--model", str(notes_model), "--port", "0", "--record", str(tmp_path / "rec"),
            "--snapshot", str(tmp_path / "snap.npz"), "--seed", str(SEED), "--mode", "duet"]
    proc, port = start_server_process(args)
    peer = OscPeer(port)
    try:
        peer.send("/ensemble/hello", "fay", "127.0.0.1", peer.port)
        peer.send("/ensemble/set", "fay", "max_note", 60.0)
        for pitch in (60, 62, 64, 65):
            peer.send("/ensemble/note", "fay", pitch, 80)
        received, status = peer.until_status()
        assert status["performers"][0]["events_in"] == 4
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    while True:  # what the first server sent, note-offs of the shutdown included
        try:
            address, reply = peer.recv(timeout=0.5)
            if address == "/ensemble/note":
                received.append(reply)
        except socket.timeout:
            break
    assert (tmp_path / "snap.npz").exists()
    proc, port = start_server_process(args + ["--restore"])
    try:
        peer.server = ("127.0.0.1", port)
        for pitch in (60, 64, 67, 64):  # fay is known again: no hello needed
            peer.send("/ensemble/note", "fay", pitch, 80)
        after, _ = peer.until_status()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    logs = sorted((tmp_path / "rec").glob("*.jsonl"))
    assert len(logs) == 2
    for path in logs:  # complete and parseable
        header, events = read_session(path)
        assert header["kind"] == "session" and events
    events = in_events(tmp_path / "rec", "fay")
    assert len(events) == 8
    settings = SamplingSettings(1.0, 0, 0.95)
    expected = duet_replay(notes_model, events, "fay", settings)
    before = duet_replay(notes_model, events[:4], "fay", settings)
    assert [tuple(r[1:3]) for r in received[:len(before)]] == before
    # shutdown ended the last answer (the off that the 5th event would have sent) ...
    last = next(pitch for pitch, velocity in reversed(before) if velocity > 0)
    assert tuple(received[len(before)][1:3]) == (last, 0) and len(received) == len(before) + 1
    rest = expected[len(before):]
    rest.remove((last, 0))  # ... so the restored server does not send it again
    # the restored server first ends any note its output may still sound (every pitch) ...
    codec = checkpoint.load(notes_model).codec
    pitches = list(range(codec.low_pitch, codec.high_pitch + 1))
    assert [tuple(r[1:3]) for r in after[:len(pitches)]] == [(p, 0) for p in pitches]
    after_offs, after = after[:len(pitches)], after[len(pitches):]
    # ... and then answers exactly as the uninterrupted history predicts
    assert [tuple(r[1:3]) for r in after] == rest
    assert all(r[0] == "fay" for r in after)
    # a clean shutdown's snapshot is exact: sequence numbers continue across the restart
    assert [r[3] for r in after_offs + after] == list(range(received[-1][3] + 1, received[-1][3] + 1 + len(after_offs + after)))


def test_recordings_become_training_data(notes_model, tmp_path):
    from ensemble.cli import main
    from ensemble.data import load_prepared

    cfg = config(notes_model, tmp_path, default_mode="listen")
    with ServerThread(cfg) as server:
        peer = OscPeer(server.port)
        for name in ("gil", "hal"):
            peer.send("/ensemble/hello", name, "127.0.0.1", peer.port)
        for pitch in (60, 62, 64, 65, 67):
            for name in ("gil", "hal"):
                peer.send("/ensemble/note", name, pitch, 90)
                peer.send("/ensemble/note", name, pitch, 0)
        peer.send("/ensemble/status")
        status = json.loads(peer.recv_until("/ensemble/status")[0])
        assert [p["events_in"] for p in status["performers"]] == [10, 10]
    # the log is flushed and closed on shutdown; prepare reads it like any corpus
    assert main(["prepare", "--codec", "notes", "--input", str(tmp_path / "rec"), "--out", str(tmp_path / "data"),
                 "--val-fraction", "0.5", "--no-progress"]) == 0
    corpus = load_prepared(tmp_path / "data")
    pieces = corpus.train + corpus.val
    assert sorted(p.source.rsplit("#", 1)[1] for p in pieces) == ["gil", "hal"]
    assert all(len(p.tokens) == 10 for p in pieces)


def test_auto_mode_plays_on_and_every_way_out_ends_its_notes(notes_model, tmp_path):
    cfg = config(notes_model, tmp_path, max_note=10.0)
    with ServerThread(cfg) as server:
        peer = OscPeer(server.port)
        peer.send("/ensemble/hello", "ivy", "127.0.0.1", peer.port)
        sounding = set()

        def hear(count):
            """Read notes until `count` note-ons were heard; track what sounds."""
            ons = 0
            while ons < count:
                address, args = peer.recv(timeout=10)
                assert address == "/ensemble/note"
                if args[2] > 0:
                    assert args[1] not in sounding
                    sounding.add(args[1])
                    ons += 1
                else:
                    sounding.discard(args[1])

        def drain_until_status():
            peer.send("/ensemble/status")
            while True:
                address, args = peer.recv(timeout=5)
                if address == "/ensemble/status":
                    return json.loads(args[0])
                assert address == "/ensemble/note"
                if args[2] > 0:
                    sounding.add(args[1])
                else:
                    sounding.discard(args[1])

        # auto: it plays with nobody playing, from its own output
        peer.send("/ensemble/mode", "ivy", "auto")
        hear(4)
        for way_out in (("/ensemble/panic",), ("/ensemble/mode", "ivy", "listen"), ("/ensemble/reset", "ivy"),
                        ("/ensemble/goodbye", "ivy")):
            peer.send(*way_out)
            status = drain_until_status()
            assert sounding == set(), way_out  # every note it started has ended
            if way_out[0] == "/ensemble/goodbye":
                assert status["performers"] == []
                break
            peer.send("/ensemble/mode", "ivy", "auto")  # and it starts again
            hear(2)


def test_gesture_model_plays_the_band_on_its_clock(tmp_path):
    """A gestures model (Neural iPad Band): one band state, stepped every interval."""
    from ensemble.codecs.gestures import GesturesCodec
    from ensemble.data import Piece, write_prepared
    from ensemble.train import TrainConfig, train

    codec = GesturesCodec(performers=4)
    rng = np.random.default_rng(0)
    pieces = []
    for i in range(12):  # bands that move together: everyone drifts between two gestures
        states = [tuple(int(g) for g in rng.choice([1 + i % 8, 2 + i % 7], size=4)) for _ in range(40)]
        pieces.append(Piece(f"band{i}", np.array(codec.encode(states))))
    write_prepared(tmp_path / "corpus", codec, pieces, val_fraction=0.2)
    train(TrainConfig(data=str(tmp_path / "corpus"), out=str(tmp_path / "run"), size="xs", steps=30,
                      seq_len=16, batch=4, eval_every=30, progress=False))
    cfg = config(tmp_path / "run" / "best", tmp_path, gesture_interval=0.05)
    with ServerThread(cfg) as server:
        a, b = OscPeer(server.port), OscPeer(server.port)
        a.send("/ensemble/hello", "ann", "127.0.0.1", a.port)
        b.send("/ensemble/hello", "ben", "127.0.0.1", b.port)
        a.send("/ensemble/gesture", "ann", 3)
        b.send("/ensemble/gesture", "ben", 6)
        for peer, name in ((a, "ann"), (b, "ben")):
            seqs = []
            while len(seqs) < 3:
                address, args = peer.recv(timeout=5)
                assert address == "/ensemble/gesture" and args[0] == name and 0 <= args[1] <= 8
                seqs.append(args[2])
            assert seqs == sorted(seqs)
        a.send("/ensemble/gesture", "ann", 9)
        assert "out of range" in a.recv_until("/ensemble/error")[1]
        a.send("/ensemble/note", "ann", 60, 90)
        assert "takes /ensemble/gesture" in a.recv_until("/ensemble/error")[1]
        band = server.conductor.band
        assert band.places == {"ann": 0, "ben": 1} and band.current[:2] == [3, 6]
        # a quartet model: two more take the free places, a fifth is refused and holds nothing
        others = [OscPeer(server.port) for _ in range(3)]
        for peer, name in zip(others, ("cal", "dot", "eve")):
            peer.send("/ensemble/hello", name, "127.0.0.1", peer.port)
        for peer, name in zip(others[:2], ("cal", "dot")):
            assert peer.recv_until("/ensemble/gesture")[0] == name
        assert "the band is full" in others[2].recv_until("/ensemble/error")[1]
        assert sorted(band.places.values()) == [0, 1, 2, 3] and "eve" not in server.conductor.performers
        for peer in (a, b, *others):
            peer.close()


def test_wider_binding_hears_only_allowed_networks_at_a_bounded_rate(notes_model, tmp_path):
    """The admission rules, exercised without any traffic: datagrams handed in directly."""
    import asyncio

    from ensemble.io.osc import OscServer, build
    from ensemble.server.conductor import Conductor

    async def main():
        loop = asyncio.get_running_loop()
        cfg = config(notes_model, tmp_path, record="", default_mode="listen", host="0.0.0.0",
                     allow=["192.0.2.0/24"], rate_limit=5.0)
        conductor = Conductor(checkpoint.load(notes_model), cfg, loop)
        osc = OscServer(conductor, cfg)
        hello = build("/ensemble/hello", ["kim", "192.0.2.7", 9])
        osc.datagram(hello, ("198.51.100.1", 5000))  # not an allowed network: dropped, unanswered
        assert "kim" not in conductor.performers and osc.rejected == 1
        osc.datagram(hello, ("192.0.2.7", 5000))
        assert "kim" in conductor.performers
        note = build("/ensemble/note", ["kim", 60, 90])
        for _ in range(20):  # a burst far above 5 messages/s: most are dropped
            osc.datagram(note, ("192.0.2.7", 5000))
        conductor.flush()
        assert conductor.performers["kim"].events_in <= 5 and osc.rejected >= 15

    asyncio.run(main())


def test_toml_config_and_command_line(tmp_path):
    from ensemble.errors import UserError
    from ensemble.server.config import load_toml, make_config

    path = tmp_path / "stage.toml"
    path.write_text('[server]\nport = 6000\nreply_port = 6001\ndefault_mode = "duet"\nallow = ["10.0.0.0/8"]\n'
                    '[midi]\ninputs = ["keys"]\n')
    cfg = make_config(load_toml(path), {"port": 7000, "temperature": None})
    assert (cfg.port, cfg.reply_port, cfg.default_mode, cfg.allow) == (7000, 6001, "duet", ["10.0.0.0/8"])
    assert cfg.midi == {"inputs": ["keys"]}
    path.write_text("prot = 6000\n")
    with pytest.raises(UserError, match="unknown keys prot"):
        load_toml(path)
    path.write_text("port = [\n")
    with pytest.raises(UserError, match="not valid TOML"):
        load_toml(path)
    with pytest.raises(UserError, match="default_mode"):
        make_config({}, {"default_mode": "karaoke"})


def test_touch_model_answers_touches(touch_model, tmp_path):
    """An iPad-style touch model: /ensemble/touch in, a predicted touch out."""
    cfg = config(touch_model, tmp_path, default_mode="duet")
    with ServerThread(cfg) as server:
        peer = OscPeer(server.port)
        peer.send("/ensemble/hello", "ipad1", "127.0.0.1", peer.port)
        for k in range(5):
            peer.send("/ensemble/touch", "ipad1", 0.1 + 0.05 * k, 0.5)
            address, args = peer.recv(timeout=5)
            assert address == "/ensemble/touch" and args[0] == "ipad1" and args[3] == k + 1
            assert 0 <= args[1] <= 1 and 0 <= args[2] <= 1
        peer.send("/ensemble/touch", "ipad1", 1.5, 0.5)
        assert "out of range" in peer.recv_until("/ensemble/error")[1]


def test_periodic_snapshots_are_written_off_the_loop(notes_model, tmp_path):
    from ensemble.server import snapshot

    cfg = config(notes_model, tmp_path, default_mode="listen", snapshot_every=0.05)
    with ServerThread(cfg) as server:
        peer = OscPeer(server.port)
        peer.send("/ensemble/hello", "liz", "127.0.0.1", peer.port)
        peer.send("/ensemble/note", "liz", 60, 90)
        deadline = time.monotonic() + 20  # a loaded machine delays the worker thread's fsync
        while time.monotonic() < deadline:  # each status round trip lets the loop run its timers
            peer.send("/ensemble/status")
            peer.recv_until("/ensemble/status")
            if (tmp_path / "snap.npz").exists():
                meta, arrays = snapshot.load(tmp_path / "snap.npz")
                if meta["performers"] and meta["performers"][0]["has_logits"]:
                    break
        else:
            raise AssertionError("no periodic snapshot with liz's state")
    assert meta["performers"][0]["id"] == "liz" and arrays[0]["h"].shape == (1, 64)


def test_performers_with_news_are_stepped_in_one_batch(notes_model, tmp_path):
    """Events that arrive together cost one engine call; one performer's two events, two."""
    import asyncio

    from ensemble.server.conductor import Conductor

    class Silent:
        name = "silent"

        def send(self, *args):
            pass

    async def main():
        cfg = config(notes_model, tmp_path, record="", default_mode="listen")
        conductor = Conductor(checkpoint.load(notes_model), cfg, asyncio.get_running_loop())
        for i in range(4):
            conductor.hello(f"p{i}", Silent())
        alone = {}
        for i in range(4):  # the reference: each performer stepped alone
            conductor.play(f"p{i}", "note", (60 + i, 90))
            conductor.flush()
            alone[i] = conductor.performers[f"p{i}"].logits.copy()
        for i in range(4):
            conductor.reset(f"p{i}")
        steps = conductor.steps
        for i in range(4):
            conductor.play(f"p{i}", "note", (60 + i, 90))
        conductor.flush()
        assert conductor.steps == steps + 1  # one batched step for four performers
        for i in range(4):
            assert np.allclose(conductor.performers[f"p{i}"].logits, alone[i], atol=1e-5)
        conductor.play("p0", "note", (62, 90))
        conductor.play("p0", "note", (62, 0))
        conductor.play("p1", "note", (64, 0))
        conductor.flush()
        assert conductor.steps == steps + 3  # p0's two events need two steps; p1 rides along

    asyncio.run(main())


def test_a_note_off_is_answered_before_its_step_unless_its_on_is_still_to_step(notes_model, tmp_path):
    """Duet: ending the answer note needs nothing from the model, so a note-off's reply goes
    out in `play`, before the step; when the same read also holds this performer's note-on,
    the off waits for it, or it would end the old answer and leave the new one sounding."""
    import asyncio

    from ensemble.server.conductor import Conductor

    class Collect:
        name = "collect"

        def __init__(self):
            self.sent = []

        def send(self, performer, kind, values, seq):
            self.sent.append((values[0], values[1], seq))

    async def main():
        cfg = config(notes_model, tmp_path, record="", default_mode="duet")
        conductor = Conductor(checkpoint.load(notes_model), cfg, asyncio.get_running_loop())
        out = Collect()
        conductor.hello("ann", out)
        conductor.play("ann", "note", (60, 90))
        conductor.flush()
        assert len(out.sent) == 1 and out.sent[0][1] > 0
        answer = out.sent[0][0]
        steps = conductor.steps
        conductor.play("ann", "note", (60, 0))
        assert out.sent[1:] == [(answer, 0, 2)]  # ended at once, before any step
        assert conductor.steps == steps
        conductor.flush()
        assert conductor.steps == steps + 1 and len(out.sent) == 2  # stepped after; nothing more sent
        # an on and its off in one read: the off ends the NEW answer, after it is chosen
        conductor.play("ann", "note", (62, 90))
        conductor.play("ann", "note", (62, 0))
        assert len(out.sent) == 2  # the off waits for the on's step
        conductor.flush()
        (pitch, velocity, _), off = out.sent[2], out.sent[3]
        assert velocity > 0 and off == (pitch, 0, 4)
        assert conductor.held.sounding("ann") == []

    asyncio.run(main())


def test_a_killed_server_leaves_a_parseable_log_with_what_it_acknowledged(notes_model, tmp_path):
    """SIGKILL (no shutdown at all): what was flushed, within 100 ms, survives and parses."""
    proc, port = start_server_process(["--model", str(notes_model), "--port", "0", "--record", str(tmp_path / "rec"),
                                       "--no-snapshot", "--mode", "duet"])
    try:
        peer = OscPeer(port)
        peer.send("/ensemble/hello", "max", "127.0.0.1", peer.port)
        for pitch in (60, 62, 64):
            peer.send("/ensemble/note", "max", pitch, 90)
            peer.recv_until("/ensemble/note")  # acknowledged: answered
        (log,) = (tmp_path / "rec").glob("*.jsonl")
        for _ in range(1000):  # the periodic flush reaches the file within 100 ms
            peer.send("/ensemble/status")
            peer.recv_until("/ensemble/status")
            if log.read_text().count('"dir": "in", "performer": "max", "kind": "note"') == 3:
                break
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    header, events = read_session(log)
    played = [e for e in events if e["dir"] == "in" and e["kind"] == "note"]
    answered = [e for e in events if e["dir"] == "out" and e["kind"] == "note"]
    assert header["kind"] == "session" and [e["values"][0] for e in played] == [60, 62, 64]
    assert len(answered) >= 3


class Collect:
    """An Output that keeps what it is sent, for conductor-level tests."""

    name = "collect"

    def __init__(self):
        self.sent = []

    def send(self, performer, kind, values, seq):
        self.sent.append((kind, *values))


def sounding_after(sent) -> set:
    on = set()
    for kind, pitch, velocity in sent:
        if velocity:
            on.add(pitch)
        else:
            on.discard(pitch)
    return on


def test_a_chord_plans_one_machine_stream_and_goodbye_silences_it(notes_model, tmp_path):
    import asyncio

    from ensemble.server.conductor import Conductor

    async def main():
        loop = asyncio.get_running_loop()
        cfg = config(notes_model, tmp_path, record="", default_mode="auto", max_note=30.0)
        conductor = Conductor(checkpoint.load(notes_model), cfg, loop)
        old = Collect()
        p = conductor.hello("nia", old)
        await asyncio.sleep(0)  # auto starts on the next loop turn
        for pitch in (60, 64, 67):  # a chord: three events of one performer in one flush
            conductor.play("nia", "note", (pitch, 90))
        conductor.flush()
        planned = [h for h in loop._scheduled if not h.cancelled() and h._callback == conductor._play_machine_event]
        assert len(planned) == 1 and p.next_event is planned[0]
        conductor.goodbye("nia")
        assert sounding_after(old.sent) == set()
        count = len(old.sent)
        conductor.hello("nia", Collect(), mode="listen")  # someone new under the same name
        await asyncio.sleep(0.2)
        assert len(old.sent) == count  # the one who left plays no more

    asyncio.run(main())


def test_a_full_disk_loses_log_lines_but_never_leaves_a_note_sounding(notes_model, tmp_path):
    import asyncio

    from ensemble.server.conductor import Conductor
    from ensemble.server.recorder import Recorder

    async def main():
        loop = asyncio.get_running_loop()
        cfg = config(notes_model, tmp_path, record="", default_mode="duet")
        conductor = Conductor(checkpoint.load(notes_model), cfg, loop)
        recorder = Recorder(tmp_path / "rec", {}, loop)
        recorder.open()
        recorder.file.close()
        recorder.file = open("/dev/full", "w", buffering=1)  # every line fails: ENOSPC
        conductor.recorder = recorder
        out = Collect()
        conductor.hello("ola", out)
        for k in range(40):
            conductor.play("ola", "note", (60 + k % 12, 0 if k % 2 else 90))
            conductor.flush()
        conductor.panic()
        await asyncio.sleep(0)  # one loop turn: the recorder writes its lines after the answers
        assert recorder.failed > 0
        ons = [s for s in out.sent if s[2] > 0]
        assert len(ons) == 20 and sounding_after(out.sent) == set()

    asyncio.run(main())
