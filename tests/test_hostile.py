"""Hostile and careless input: every packet and file the stage-proofing issue found, each
answered in bounded work while a good performer keeps being answered."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import struct
import threading
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ensemble import checkpoint
from ensemble.errors import UserError
from ensemble.io.datagram import MAX_DEPTH, BadDatagram, check_datagram
from ensemble.io.osc import OscServer, build
from pythonosc.osc_message_builder import OscMessageBuilder
from ensemble.server import snapshot
from ensemble.server.conductor import SEQ_MARGIN, Conductor
from ensemble.server.config import ServerConfig, load_toml, make_config
from oscpeer import OscPeer, ServerThread, start_server_process

NEGATIVE = b"#bundle\0" + b"\0" * 7 + b"\1" + b"\xff\xff\xff\xfc"  # python-osc 1.10.2 loops forever on it


def nested(depth: int, inner: bytes = None) -> bytes:
    data = inner or build("/ensemble/status", [])
    for _ in range(depth):
        data = b"#bundle\0" + b"\0" * 8 + struct.pack(">i", len(data)) + data
    return data


def config(model, tmp_path, **kw) -> ServerConfig:
    values = dict(model=str(model), port=0, record="", snapshot="", seed=1, snapshot_every=3600.0,
                  default_mode="duet")
    values.update(kw)
    return ServerConfig(**values)


def answered(peer: OscPeer, name: str, pitch: int = 60) -> list:
    """The good performer plays a note and gets its answer."""
    peer.send("/ensemble/note", name, pitch, 90)
    return peer.recv_until("/ensemble/note")


# ---------------------------------------------------------------- the datagram check


def test_the_checker_rejects_what_hangs_or_crashes_python_osc():
    with pytest.raises(BadDatagram, match="size -4"):
        check_datagram(NEGATIVE)
    with pytest.raises(BadDatagram, match="nested deeper"):
        check_datagram(nested(400))
    assert check_datagram(nested(MAX_DEPTH - 1)) == 1
    with pytest.raises(BadDatagram, match="unsupported argument type"):
        check_datagram(build("/ensemble/note", ["x"]).replace(b",s\0\0", b",[s]\0\0\0\0"))
    with pytest.raises(BadDatagram, match="type tag not terminated"):
        check_datagram(build("/ensemble/note", ["x"]).replace(b",s\0\0", b"," + b"x" * 8191 + b"\0" * 4))
    with pytest.raises(BadDatagram, match="more than"):
        one = build("/ensemble/status", [])
        check_datagram(b"#bundle\0" + b"\0" * 8 + (struct.pack(">i", len(one)) + one) * 65)
    assert check_datagram(build("/ensemble/note", ["ann", 60, 90])) == 1


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=256), st.sampled_from([b"", b"#bundle\0", b"/ensemble/note\0\0,"]))
def test_any_bytes_are_checked_in_bounded_work_and_never_crash(data, prefix):
    from pythonosc.osc_packet import OscPacket

    data = prefix + data
    try:
        check_datagram(data)
    except BadDatagram:
        return
    try:  # what passes the check parses, or fails with an ordinary exception (never hangs)
        OscPacket(data)
    except Exception:
        pass


# ---------------------------------------------------------------- live: one bad packet never delays a good one


def test_bad_packets_never_hang_the_server_nor_delay_a_good_performer(notes_model, tmp_path):
    with ServerThread(config(notes_model, tmp_path)) as server:
        good, bad = OscPeer(server.port), OscPeer(server.port)
        good.send("/ensemble/hello", "good", "127.0.0.1", good.port)
        assert answered(good, "good")
        for packet in (NEGATIVE, nested(400), b"\0" * 7, b"garbage!", b"/x\0\0,i\0\0\1"):
            bad.send_raw(packet)
            good.send("/ensemble/note", "good", 62, 90)  # right behind it, often in the same read
            assert good.recv_until("/ensemble/note")[0] == "good"
            address, args = bad.recv()
            assert address == "/ensemble/error" and "malformed" in args[1]
        _, status = good.until_status()
        assert status["errors"] == 5 and status["performers_total"] == 1


def test_replies_and_our_own_address_never_start_a_storm(notes_model, tmp_path):
    with ServerThread(config(notes_model, tmp_path)) as server:
        peer = OscPeer(server.port)
        peer.send("/ensemble/hello", "loop", "127.0.0.1", server.port)  # answers to the server itself
        address, args = peer.recv()
        assert address == "/ensemble/error" and "own address" in args[1]
        peer.send("/ensemble/hello", "loop", "127.0.0.1", peer.port)
        for message in (("/ensemble/error", "/ensemble/note", "oops"), ("/ensemble/note", "loop", 60, 90, 7),
                        ("/ensemble/status", '{"model": "x"}'), ("/ensemble/gesture", "loop", 3, 9)):
            peer.send(*message)  # what a server sends: never answered
        before, status = peer.until_status()
        assert before == [] and status["errors"] == 1
        assert server.info["osc"].ignored == 4


def test_a_host_name_lookup_never_blocks_the_loop(notes_model, tmp_path, monkeypatch):
    """A resolver that does not answer: the performer who named a host waits, nobody else."""
    release = threading.Event()
    real = socket.getaddrinfo

    def slow(host, *args, **kw):
        if host == "synth.stage":
            release.wait(10)
            return real("127.0.0.1", *args, **kw)
        return real(host, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", slow)
    with ServerThread(config(notes_model, tmp_path, resolve_timeout=5.0)) as server:
        good, named = OscPeer(server.port), OscPeer(server.port)
        good.send("/ensemble/hello", "good", "127.0.0.1", good.port)
        named.send("/ensemble/hello", "far", "synth.stage", named.port)
        assert answered(good, "good")  # while the lookup hangs
        assert "far" not in server.conductor.performers
        release.set()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the lookup's thread finishes when it is scheduled: ask until far is in
            _, status = named.until_status()
            if any(p["id"] == "far" for p in status["performers"]):
                break
        assert any(p["id"] == "far" for p in status["performers"])
        assert answered(named, "far")  # answering to its own port


def test_a_lookup_that_never_answers_times_out_with_an_error(notes_model, tmp_path, monkeypatch):
    release = threading.Event()
    real = socket.getaddrinfo
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *a, **k: release.wait(10) and real(host, *a, **k)
                        if host == "void.stage" else real(host, *a, **k))
    try:
        with ServerThread(config(notes_model, tmp_path, resolve_timeout=0.2)) as server:
            peer = OscPeer(server.port)
            peer.send("/ensemble/hello", "far", "void.stage", 9000)
            address, args = peer.recv()
            assert address == "/ensemble/error" and "no answer in time" in args[1]
    finally:
        release.set()


def test_performers_are_capped_and_status_always_fits_one_datagram(notes_model, tmp_path):
    with ServerThread(config(notes_model, tmp_path, max_performers=40)) as server:
        peer = OscPeer(server.port)
        for i in range(40):
            peer.send("/ensemble/hello", f"{i:02d}" + "x" * 62, "127.0.0.1", peer.port)
        peer.send("/ensemble/hello", "one-too-many", "127.0.0.1", peer.port)
        address, args = peer.recv()
        assert address == "/ensemble/error" and "full" in args[1] and "max_performers 40" in args[1]
        _, status = peer.until_status()
        assert status["performers_total"] == 40 and len(status["performers"]) == 16
        peer.send("/ensemble/status", "07" + "x" * 62)  # one performer's details, on request
        details = json.loads(peer.recv_until("/ensemble/status")[0])
        assert [p["id"] for p in details["performers"]] == ["07" + "x" * 62]


def test_a_performer_belongs_to_the_address_that_said_hello(notes_model, tmp_path):
    """Two hosts (127.0.0.1 and 127.0.0.2, both this machine); only 127.0.0.1 is an admin."""
    cfg = config(notes_model, tmp_path, admin=["127.0.0.1/32"], shared=["open"])
    with ServerThread(cfg) as server:
        alice = OscPeer(server.port)
        mallory = OscPeer(server.port)
        mallory.sock.close()
        mallory.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        mallory.sock.bind(("127.0.0.2", 0))
        mallory.port = mallory.sock.getsockname()[1]
        alice.send("/ensemble/hello", "alice", "127.0.0.1", alice.port)
        alice.send("/ensemble/hello", "open", "127.0.0.1", alice.port)
        assert answered(alice, "alice")
        for message in (("/ensemble/hello", "alice", "127.0.0.2", mallory.port),
                        ("/ensemble/note", "alice", 60, 90), ("/ensemble/goodbye", "alice"),
                        ("/ensemble/mode", "alice", "listen"), ("/ensemble/reset", "alice"),
                        ("/ensemble/set", "alice", "temperature", 3.0), ("/ensemble/set", "*", "temperature", 3.0),
                        ("/ensemble/panic",), ("/ensemble/status", "alice")):
            mallory.send(*message)
            address, args = mallory.recv()
            assert address == "/ensemble/error", message
            assert "another address" in args[1] or "admin" in args[1], (message, args)
        mallory.send("/ensemble/hello", "open", "127.0.0.2", mallory.port)  # a shared id may be taken over
        mallory.send("/ensemble/hello", "mine", "127.0.0.2", mallory.port)
        mallory.send("/ensemble/panic", "mine")  # one's own panic is fine
        _, status = mallory.until_status()
        assert status["errors"] == 9 and "output" not in status["performers"][0]  # no addresses for non-admins
        assert server.conductor.performers["open"].owner == "127.0.0.2"
        assert server.conductor.performers["mine"].panicked
        p = server.conductor.performers["alice"]
        assert p.mode == "duet" and p.settings.temperature == 1.0 and p.output.address[1] == alice.port
        assert answered(alice, "alice", 64)  # alice still plays, answered at her own port


def _wide(notes_model, tmp_path, **kw):
    """A server bound beyond loopback, with datagrams handed in directly and what it would
    send captured (no packet ever leaves for the documentation networks)."""
    loop = asyncio.new_event_loop()
    cfg = config(notes_model, tmp_path, **{"host": "0.0.0.0", "allow": ["192.0.2.0/24"], **kw})
    conductor = Conductor(checkpoint.load(notes_model), cfg, loop)
    osc = OscServer(conductor, cfg)
    osc.sock = object()  # "started": sends go to `sent`
    osc.sent = []
    osc._send_bytes = lambda address, data, what: osc.sent.append((address, data))
    return loop, conductor, osc


def test_replies_go_only_to_allowed_addresses_and_never_amplify(notes_model, tmp_path):
    loop, conductor, osc = _wide(notes_model, tmp_path)
    try:
        sender = ("192.0.2.7", 5000)
        osc.datagram(build("/ensemble/hello", ["kim", "198.51.100.9", 9]), sender)  # a third party
        (to, data), = osc.sent
        assert to == sender and b"not in the allowed networks" in data and "kim" not in conductor.performers
        osc.sent.clear()
        request = build("/ensemble/status", [])
        osc.datagram(request, sender)
        (to, data), = osc.sent
        assert to == sender and b"/ensemble/error" in data and b"pad the request" in data
        assert len(data) <= 4 * len(request)
        osc.sent.clear()
        builder = OscMessageBuilder("/ensemble/status")
        builder.add_arg(b"\0" * 600, "b")  # padding: now the full status may come back
        padded = builder.build().dgram
        osc.datagram(padded, sender)
        (to, data), = osc.sent
        assert b"/ensemble/status" in data and b'"model"' in data and len(data) <= 4 * len(padded)
        osc.sent.clear()
        for _ in range(200):  # 200 bad packets from one source: a handful of errors, then silence
            osc.datagram(b"not osc!", sender)
        assert 5 <= len(osc.sent) <= 12 and osc.quiet.total_suppressed >= 188
    finally:
        loop.close()


def test_rate_limits_per_source_port_and_per_performer(notes_model, tmp_path):
    loop, conductor, osc = _wide(notes_model, tmp_path, rate_limit=20.0, performer_rate=30.0, default_mode="listen")
    try:
        osc.datagram(build("/ensemble/hello", ["kim", "192.0.2.7", 9000]), ("192.0.2.7", 5000))
        osc.datagram(build("/ensemble/hello", ["lee", "192.0.2.7", 9001]), ("192.0.2.7", 5001))
        for _ in range(100):  # kim floods from port 5000
            osc.datagram(build("/ensemble/note", ["kim", 60, 90]), ("192.0.2.7", 5000))
        for _ in range(5):  # lee, same host, another port: not starved
            osc.datagram(build("/ensemble/note", ["lee", 60, 90]), ("192.0.2.7", 5001))
        for port in range(6000, 6100):  # kim floods from many ports: the performer's own limit holds
            osc.datagram(build("/ensemble/note", ["kim", 60, 90]), ("192.0.2.7", port))
        conductor.flush()
        assert conductor.performers["lee"].events_in == 5
        assert conductor.performers["kim"].events_in <= 30
    finally:
        loop.close()


# ---------------------------------------------------------------- settings and files


@pytest.mark.parametrize("line,key", [("top_k = -1", "top_k"), ("idle_timeout = -1", "idle_timeout"),
                                      ("snapshot_every = 1e-6", "snapshot_every"), ("rate_limit = -5", "rate_limit"),
                                      ("max_performers = 0", "max_performers"), ('admin = ["nonsense"]', "admin"),
                                      ("temperature = inf", "temperature"), ('default_mode = "loud"', "default_mode")])
def test_every_setting_is_range_checked_naming_file_and_key(tmp_path, line, key):
    path = tmp_path / "stage.toml"
    path.write_text(line + "\n")
    with pytest.raises(UserError) as error:
        load_toml(path)
    assert str(path) in str(error.value) and key in str(error.value) and "\n" not in str(error.value)


def test_a_config_of_random_bytes_is_one_line(tmp_path):
    path = tmp_path / "stage.toml"
    path.write_bytes(np.random.default_rng(0).bytes(300))
    with pytest.raises(UserError, match="stage.toml: not a text file"):
        load_toml(path)


def test_command_line_values_are_range_checked_too():
    with pytest.raises(UserError, match="top_p must be <= 1"):
        make_config({}, {"top_p": 2.0})


class Collecting:
    """A throwaway transport: every output it makes collects what is sent to it."""

    name = "collecting"
    errors = 0

    def __init__(self, conductor):
        self.sent = []
        conductor.attach(self)

    def output_from(self, description):
        transport = self

        class Out:
            name = "collecting"

            def send(self, performer, kind, values, seq):
                transport.sent.append((kind, values, seq))

            def describe(self):
                return {"type": "collecting", "name": "collecting"}

        return Out() if description.get("type") in ("osc", "collecting") else None

    def status(self):
        return {"sent": len(self.sent)}

    def start(self):
        pass

    def close(self):
        pass


def _fresh_state(conductor) -> dict:
    slot = conductor.engine.alloc_slot()
    state = {**conductor.engine.get_state(slot), "logits": np.zeros(conductor.vocab, np.float32)}
    conductor.engine.free_slot(slot)
    return state


def _snapshot_with(path, performer: dict):
    meta = {"id": "fay", "mode": "duet", "temperature": 1.0, "top_p": 0.95, "top_k": 0, "threshold": 1.5,
            "max_note": 2.0, "seq": 10, "has_logits": True, "output": {"type": "osc", "host": "127.0.0.1", "port": 9},
            "rng": np.random.default_rng(0).bit_generator.state, "owner": "127.0.0.1"}
    meta.update(performer)
    return meta


@pytest.mark.parametrize("damage", ["half", "empty", "garbage"])
def test_a_damaged_snapshot_is_one_line_and_kept(notes_model, tmp_path, damage):
    path = tmp_path / "snap.npz"
    with ServerThread(config(notes_model, tmp_path, snapshot=str(path))) as server:
        peer = OscPeer(server.port)
        peer.send("/ensemble/hello", "fay", "127.0.0.1", peer.port)
        assert answered(peer, "fay")
    good = path.read_bytes()
    path.write_bytes({"half": good[:len(good) // 2], "empty": b"", "garbage": b"PK\3\4" + b"x" * 100}[damage])
    proc, port = start_server_process(["--model", str(notes_model), "--port", "0", "--no-record",
                                       "--snapshot", str(path), "--restore"])
    try:
        peer = OscPeer(port)
        _, status = peer.until_status()
        assert status["performers_total"] == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if "unreadable snapshot" in line]
    assert (tmp_path / "snap.npz.1").read_bytes() == path.with_name("snap.npz.1").read_bytes()
    assert len((tmp_path / "snap.npz.1").read_bytes()) == len({"half": good[:len(good) // 2], "empty": b"",
                                                              "garbage": b"PK\3\4" + b"x" * 100}[damage])


def test_a_snapshot_that_was_not_restored_is_never_overwritten(notes_model, tmp_path):
    path = tmp_path / "snap.npz"
    args = ["--model", str(notes_model), "--port", "0", "--no-record", "--snapshot", str(path)]
    proc, port = start_server_process(args)
    peer = OscPeer(port)
    peer.send("/ensemble/hello", "fay", "127.0.0.1", peer.port)
    peer.until_status()
    proc.send_signal(signal.SIGTERM)
    proc.wait(20)
    first = path.read_bytes()
    proc = __import__("subprocess").Popen(  # no --restore: the states are kept aside, and it says so
        [__import__("sys").executable, "-m", "ensemble", "serve", *args], stdout=__import__("subprocess").PIPE,
        stderr=__import__("subprocess").PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "previous snapshot kept as" in line and "snap.npz.1" in line
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
    assert (tmp_path / "snap.npz.1").read_bytes() == first


def test_a_partial_restore_restores_the_rest_with_one_line_each(notes_model, tmp_path):
    path = tmp_path / "snap.npz"
    loop = asyncio.new_event_loop()
    try:
        cfg = config(notes_model, tmp_path)
        conductor = Conductor(checkpoint.load(notes_model), cfg, loop)
        good = _fresh_state(conductor)
        bad_shape = {k: np.zeros((3, 3), np.float32) for k in good}
        performers = [_snapshot_with(path, {"id": "ok"}), _snapshot_with(path, {"id": "bent"}),
                      _snapshot_with(path, {"id": "rng", "rng": {"bit_generator": "nonsense"}}),
                      _snapshot_with(path, {"id": "temp", "temperature": -1.0})]
        snapshot.save(path, "x", performers, [good, bad_shape, good, good])
        Collecting(conductor)
        restored, failed = conductor.restore(path)
        assert (restored, failed) == (1, 3) and list(conductor.performers) == ["ok"]
    finally:
        loop.close()


def test_restart_after_a_crash_ends_notes_numbers_above_and_counts_the_pause(notes_model, tmp_path):
    path = tmp_path / "snap.npz"
    loop = asyncio.new_event_loop()
    try:
        conductor = Conductor(checkpoint.load(notes_model), config(notes_model, tmp_path), loop)
        sent = Collecting(conductor).sent
        import time as clock

        info = _snapshot_with(path, {"seq": 515, "last_event_wall": clock.time() - 120.0, "clean": False})
        state = _fresh_state(conductor)
        snapshot.save(path, "x", [info], [state])
        assert conductor.restore(path) == (1, 0)
        assert conductor.status()["collecting"] == {"sent": len(sent)}
        p = conductor.performers["fay"]
        codec = conductor.codec
        assert [v for _, v, _ in sent] == [(pitch, 0) for pitch in range(codec.low_pitch, codec.high_pitch + 1)]
        assert sent[0][2] > 515 + SEQ_MARGIN - 1  # numbered above anything sent after that snapshot
        assert loop.time() - p.stream_time >= 119.0  # the two minutes of downtime count
    finally:
        loop.close()


_args = st.lists(st.one_of(st.integers(-2**31, 2**31 - 1), st.floats(allow_nan=True, width=32),
                           st.text(st.characters(blacklist_categories=("Cs",)), max_size=80),
                           st.binary(min_size=1, max_size=40)), max_size=6)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(st.sampled_from(["/ensemble/hello", "/ensemble/note", "/ensemble/set", "/ensemble/mode",
                        "/ensemble/status", "/ensemble/panic", "/ensemble/goodbye", "/ensemble/reset",
                        "/ensemble/error", "/ensemble/x"]), _args)
def test_any_message_gets_an_answer_or_nothing_never_an_exception(notes_model, tmp_path, address, args):
    """Well-formed OSC with arbitrary arguments, from a host beyond this machine: every one is
    handled (an error, an answer, or silence) and no answer is larger than 4x its request."""
    from pythonosc.osc_message_builder import OscMessageBuilder

    builder = OscMessageBuilder(address)
    for a in args:
        builder.add_arg(a, "b" if isinstance(a, bytes) else None)
    try:
        data = builder.build().dgram
    except Exception:  # no OSC form (a NUL inside a string, a float beyond float32): nothing to send
        return
    loop, conductor, osc = _wide(notes_model, tmp_path)
    try:
        osc.datagram(build("/ensemble/hello", ["ann", "192.0.2.7", 9000]), ("192.0.2.7", 5000))
        osc.sent.clear()
        osc.datagram(data, ("192.0.2.9", 6000))
        conductor.flush()
        assert all(len(sent) <= 4 * max(len(data), 16) for _, sent in osc.sent)
        assert all(to[0] in ("192.0.2.9", "192.0.2.7") for to, _ in osc.sent)
        assert "ann" in conductor.performers  # nobody else's packet took ann away
    finally:
        loop.close()


def test_a_hello_naming_an_unknown_mode_is_refused(notes_model, tmp_path):
    from ensemble.messages import ControlError, Hello, Origin

    loop = asyncio.new_event_loop()
    try:
        conductor = Conductor(checkpoint.load(notes_model), config(notes_model, tmp_path), loop)
        out = Collecting(conductor).output_from({"type": "collecting"})
        with pytest.raises(ControlError, match="mode must be one of"):
            conductor.handle(Hello("kim", out, mode="karaoke"), Origin("test"))
        assert "kim" not in conductor.performers
        conductor.handle(Hello("kim", out, mode="listen"), Origin("test"))
        assert conductor.performers["kim"].mode == "listen"
    finally:
        loop.close()


def test_one_read_is_bounded_and_a_bug_costs_one_datagram(monkeypatch, caplog):
    """Both UDP servers drain their socket through `limits.drain`: at most
    MAX_DATAGRAMS_PER_READ datagrams per readable event, and a handler that raises loses
    that datagram alone."""
    import logging

    from ensemble.io import limits

    monkeypatch.setattr(limits, "MAX_DATAGRAMS_PER_READ", 5)
    rx, tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM), socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rx.bind(("127.0.0.1", 0))
        rx.setblocking(False)
        for i in range(12):
            tx.sendto(bytes([i]), rx.getsockname())
        handled = []

        def handle(data, addr):
            if data == b"\x03":
                raise RuntimeError("a bug")
            handled.append(data[0])

        log = logging.getLogger("ensemble.test-drain")
        with caplog.at_level(logging.ERROR, logger="ensemble.test-drain"):
            limits.drain(rx, handle, log)
            assert handled == [0, 1, 2, 4]  # five read, the fourth lost to the bug
            assert "internal error on a datagram from 127.0.0.1" in caplog.text
            limits.drain(rx, handle, log)
            limits.drain(rx, handle, log)
            assert handled == [0, 1, 2, 4] + list(range(5, 12))
            limits.drain(rx, handle, log)  # nothing left: returns at once
        for i in range(12, 20):  # and no more once the reader is full (the conductor's backlog)
            tx.sendto(bytes([i]), rx.getsockname())
        limits.drain(rx, handle, log, full=lambda: len(handled) >= 14)
        assert handled[-3:] == [12, 13, 14] and len(handled) == 14
        limits.drain(rx, handle, log)
        assert handled[-5:] == list(range(15, 20))
    finally:
        rx.close()
        tx.close()


# ---------------------------------------------------------------- reply addresses, ids and floods (review, 2026-12-07)


def test_a_reply_hosts_scope_is_checked_and_written_one_way():
    from ipaddress import ip_address

    from ensemble.io.osc import local_ip, reply_host
    from ensemble.messages import ControlError

    assert reply_host("127.0.0.1") == "127.0.0.1"
    assert reply_host("fe80::1%eth0") == "fe80::1%eth0" and reply_host("FE80::0:1%2") == "fe80::1%2"
    assert reply_host("::FFFF:127.0.0.1") == "::ffff:7f00:1"
    for host in ("127.0.0.1%" + "é" * 70, "127.0.0.1%eth0", "fe80::1%" + "a" * 60000, "fe80::1%eth 0",
                 "2001:db8::1%1"):
        with pytest.raises(ControlError, match="scope"):
            reply_host(host)
    assert local_ip(ip_address("127.0.0.1")) and not local_ip(ip_address("192.0.2.77"))


def test_a_scoped_hello_is_refused_and_everyone_else_still_answered(notes_model, tmp_path):
    """A scope no socket can send to was once accepted: every send to it raised inside the
    batch and cut short the answers of whoever was stepped with it (a note left sounding)."""
    with ServerThread(config(notes_model, tmp_path)) as server:
        good, bad = OscPeer(server.port), OscPeer(server.port)
        bad.send("/ensemble/hello", "mallory", "127.0.0.1%" + "é" * 70, bad.port)
        address, args = bad.recv()
        assert address == "/ensemble/error" and "scope" in args[1]
        bad.send("/ensemble/hello", "mallory", "127.0.0.1%" + "a" * 60000, bad.port)
        assert "scope" in bad.recv()[1][1]
        good.send("/ensemble/hello", "alice", "127.0.0.1", good.port)
        assert answered(good, "alice")
        _, status = good.until_status()
        assert [p["id"] for p in status["performers"]] == ["alice"]


def test_one_failing_output_costs_its_own_answer_only(notes_model, tmp_path):
    class Broken:
        name = "broken"

        def send(self, performer, kind, values, seq):
            raise TypeError("encoding of hostname failed")  # what sendto raised for a bad scope

    class Collect:
        name = "collect"

        def __init__(self):
            self.sent = []

        def send(self, performer, kind, values, seq):
            self.sent.append(values)

    loop = asyncio.new_event_loop()
    try:
        conductor = Conductor(checkpoint.load(notes_model), config(notes_model, tmp_path), loop)
        good = Collect()
        conductor.hello("mallory", Broken())
        alice = conductor.hello("alice", good)
        conductor.play("mallory", "note", (60, 90))
        conductor.play("alice", "note", (62, 90))
        conductor.play("alice", "note", (62, 0))  # her on and off in the same read, after mallory's
        conductor.flush()
        assert [v[1] > 0 for v in good.sent] == [True, False]  # her answer, and its end: nothing left sounding
        assert conductor.held.sounding("alice") == [] and conductor.pending == [] and alice.queued == 0
    finally:
        loop.close()


def test_a_named_reply_host_port_is_range_checked_before_the_lookup(notes_model, tmp_path):
    loop, conductor, osc = _wide(notes_model, tmp_path)
    try:
        for port in (0, 65536, 10 ** 300):  # 1e300 once reached the lookup and raised there, off the loop
            osc.datagram(_hello_to("kim", "example.invalid", port), ("192.0.2.7", 5000))
            (to, data), = osc.sent
            assert b"out of range 1..65535" in data and osc.looking_up == 0 and "kim" not in conductor.performers
            osc.sent.clear()
    finally:
        loop.close()


def _hello_to(name: str, host: str, port) -> bytes:
    """A hello whose port may be any number (a double when beyond int32, as a client might send it)."""
    builder = OscMessageBuilder("/ensemble/hello")
    builder.add_arg(name, "s")
    builder.add_arg(host, "s")
    small = -2 ** 31 <= port < 2 ** 31
    builder.add_arg(port if small else float(port), "i" if small else "d")
    return builder.build().dgram


def test_the_performer_rate_limit_keys_only_real_ids(notes_model, tmp_path):
    loop, conductor, osc = _wide(notes_model, tmp_path, performer_rate=30.0)
    try:
        for port in range(6000, 6050):  # long made-up ids were once kept as limiter keys (235 MB)
            osc.datagram(build("/ensemble/note", ["x" * 2000 + str(port), 60, 90]), ("192.0.2.7", port))
        assert len(osc.performer_limit) == 0
        assert all(b"performer id must be" in data for _, data in osc.sent)
    finally:
        loop.close()


def test_answers_never_go_to_any_of_this_machines_own_addresses(notes_model, tmp_path):
    loop, conductor, osc = _wide(notes_model, tmp_path, allow=["0.0.0.0/0", "::/0"])
    try:
        osc.port = 5005  # where this server listens
        own = []
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.connect(("192.0.2.1", 9))  # no packet: the kernel picks the address it would use
                lan = probe.getsockname()[0]
                if not lan.startswith("127.") and lan != "0.0.0.0":
                    own.append(lan)  # this machine's LAN address, which a wide server also listens on
            except OSError:
                pass
        own += ["::ffff:127.0.0.1", "127.0.1.1"]
        for host in own:
            osc.datagram(build("/ensemble/hello", ["loop", host, 5005]), ("192.0.2.7", 5000))
            (to, data), = osc.sent
            assert b"this server's own address" in data, host
            osc.sent.clear()
        assert "loop" not in conductor.performers
        osc.datagram(build("/ensemble/hello", ["far", "192.0.2.8", 5005]), ("192.0.2.7", 5000))  # another machine
        assert "far" in conductor.performers
    finally:
        loop.close()


def test_a_flood_in_one_read_is_read_in_turns_and_stepped_in_order(notes_model, tmp_path, monkeypatch):
    """A performer's flood is stepped one event per engine call, in order, and the conductor
    says when it holds MAX_PENDING events: the OSC reader stops there (the drain test above),
    and the rest wait for the next turn of the loop (its timers and other sockets go first)."""
    from ensemble.server import conductor as conductor_module

    loop = asyncio.new_event_loop()
    try:
        c = Conductor(checkpoint.load(notes_model), config(notes_model, tmp_path, default_mode="listen"), loop)
        class Quiet:
            name = "quiet"

            def send(self, *args):
                pass

        a, b = c.hello("a", Quiet()), c.hello("b", Quiet())
        order = []
        monkeypatch.setattr(c, "_after_step", lambda p, e: order.append((p.id, e.values)))
        for k in range(5):
            c.play("a", "note", (60 + k, 90))
            if k < 2:
                c.play("b", "note", (70 + k, 90))
        assert a.queued == 5 and b.queued == 2
        c.flush()
        assert c.steps == 5 and c.batched_events == 7 and a.queued == b.queued == 0
        assert order == [("a", (60, 90)), ("b", (70, 90)), ("a", (61, 90)), ("b", (71, 90)),
                         ("a", (62, 90)), ("a", (63, 90)), ("a", (64, 90))]
        monkeypatch.setattr(conductor_module, "MAX_PENDING", 3)
        for k in range(3):
            c.play("a", "note", (60, 90))
        assert c.backlogged()
    finally:
        loop.close()
