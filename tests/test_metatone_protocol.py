"""What real Metatone apps understand, over the wire: playback touches and gestures, the
classifier's hello, the ensemble state and new ideas, switches, the apps' own message
variants; the touch and gesture logs the server records; restore after a restart; and
the Bonjour advertisement found by python-zeroconf's own browser."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time

import numpy as np
import pytest
from pythonosc.osc_message_builder import OscMessageBuilder

from ensemble import classifier
from ensemble.io.metatone import GESTURE_CODES, switch_state
from ensemble.io.metatone_ensemble import EnsembleFlow, evenness
from ensemble.io.osc import build
from oscpeer import OscPeer, ServerThread
from test_metatone import band_model, config, logs, tiny_classifier  # noqa: F401  (module fixtures)

STATES = {"stasis", "convergence", "divergence", "development"}


# ----------------------------------------------------------------------------- the ensemble's flow


def rows(flow: EnsembleFlow, *gestures_per_tick):
    for gs in gestures_per_tick:
        flow.add({f"p{i}": g for i, g in enumerate(gs)})


def test_a_steady_ensemble_is_in_stasis_and_has_no_new_idea():
    flow = EnsembleFlow(window=5, threshold=0.3)
    assert flow.state() is None and flow.new_idea() is None  # nothing heard yet
    for _ in range(12):
        rows(flow, (1, 3, 5, 8))  # fast taps, fast swipes, a swirl, a combination: held
        assert flow.new_idea() is None
    name, spread, ratio = flow.state()
    assert name == "stasis" and ratio == 1.0
    assert spread == pytest.approx(0.75)  # held evenly in four of the five groups: (4 - 1) / (5 - 1)


def test_a_new_idea_when_the_ensemble_starts_changing_together_then_a_quiet_window():
    flow = EnsembleFlow(window=4, threshold=0.3)
    for _ in range(10):
        rows(flow, (1, 1, 1))
        assert flow.new_idea() is None
    ideas = []
    cycle = [(1, 1, 1), (3, 3, 3), (5, 5, 5), (8, 8, 8)]  # everyone moves to another group every tick
    for k in range(12):
        rows(flow, cycle[k % 4])
        ideas.append(flow.new_idea())
    fired = [i for i, x in enumerate(ideas) if x is not None]
    assert fired and ideas[fired[0]] > 0.3 and ideas[fired[0]] <= 1.0
    assert fired[0] <= 3  # within a window of the change
    assert all(b - a >= 4 for a, b in zip(fired, fired[1:]))  # at most one a window
    assert flow.new_ideas == len(fired)
    # the flux keeps rising to 1 and stays there: one idea for the whole churn, not one a window
    assert len(fired) == 1
    assert flow.state()[0] in ("development", "convergence", "divergence")
    for _ in range(12):  # the ensemble settles ...
        rows(flow, (1, 1, 1))
        assert flow.new_idea() is None
    for k in range(8):  # ... and starts changing again: a second new idea
        rows(flow, cycle[k % 4])
        flow.new_idea()
    assert flow.new_ideas == 2


def test_moves_into_one_group_converge_and_out_of_one_group_diverge():
    flow = EnsembleFlow(window=2)
    rows(flow, (1, 3, 8, 0), (6, 6, 6, 6), (6, 6, 6, 6))  # taps, strokes, combination, nothing -> swirls
    name, spread, ratio = flow.state()  # 4 of the 8 moves change group, all four into swirls, from 4 groups
    assert name == "convergence" and spread == pytest.approx(1.0) and ratio == pytest.approx(0.5)
    flow = EnsembleFlow(window=2)
    rows(flow, (6, 6, 6, 7), (0, 1, 3, 7), (0, 1, 3, 7))  # three swirlers go three ways, one keeps swirling
    name, spread, ratio = flow.state()  # 3 of 8 change: not enough for anything but stasis
    assert name == "stasis" and ratio == pytest.approx(5 / 8)
    flow = EnsembleFlow(window=2)
    rows(flow, (6, 6, 6, 6), (0, 1, 3, 8), (0, 1, 3, 8))  # swirls -> four other groups
    name, spread, ratio = flow.state()
    assert name == "divergence" and spread == pytest.approx(1.0) and ratio == pytest.approx(0.5)
    flow = EnsembleFlow(window=2)
    rows(flow, (6, 6, 6, 6), (1, 1, 1, 3), (1, 1, 1, 3))  # swirls -> mostly taps
    name, spread, ratio = flow.state()  # all 4 left swirls, only 3 went into taps: the leaving decides
    assert name == "divergence" and 0.0 < spread < 1.0
    flow = EnsembleFlow(window=2)
    rows(flow, (1, 3), (3, 1), (1, 3))  # two voices swap and swap back: change, no common direction
    assert flow.state()[0] == "development"


def test_evenness_and_bounded_rows():
    assert evenness(np.array([5, 0, 0, 0])) == 0.0
    assert evenness(np.array([2, 2, 2, 2])) == pytest.approx(1.0)
    assert 0.0 < evenness(np.array([3, 1, 0, 0])) < 1.0
    assert evenness(np.zeros(4)) == 0.0
    flow = EnsembleFlow(window=3)
    for _ in range(100):
        flow.add({f"v{i}": i % 9 for i in range(1000)} | {"bad": 42})  # a huge row, a bad gesture
    assert len(flow.rows) == 7 and all(len(r) <= 128 for r in flow.rows) and "bad" not in flow.rows[-1]


def test_switch_states_read_as_the_apps_write_them():
    assert switch_state("T") is True and switch_state("F") is False
    assert switch_state(True) is True and switch_state(False) is False
    assert switch_state(" On ") is True and switch_state("0") is False
    assert switch_state("x" * 200) == "x" * 64  # an unknown word is kept, cut short


# ----------------------------------------------------------------------------- over the wire


def until(peer: OscPeer, address: str, timeout: float = 10.0) -> list:
    return peer.recv_until(address, timeout)


def collect(peer: OscPeer, wanted: set, timeout: float = 20.0) -> dict:
    """The first arguments of each wanted address, within `timeout` seconds in all."""
    seen: dict = {}
    deadline = time.monotonic() + timeout
    while not wanted <= set(seen):
        left = deadline - time.monotonic()
        assert left > 0, f"never arrived: {sorted(wanted - set(seen))}"
        address, args = peer.recv(left)
        seen.setdefault(address, args)
    return seen


def stroke(peer: OscPeer, device: str, n: int = 12, x0: float = 200.0) -> None:
    for k in range(n):
        peer.send("/metatone/touch", device, x0 + 15.0 * k, 300.0 + 5.0 * k, 0.0 if k == 0 else 15.8)
    peer.send("/metatone/touch/ended", device)


def test_an_app_hears_what_a_metatone_classifier_and_ensemble_server_send(band_model, tiny_classifier):
    """Everything a Metatone app takes from its server arrives in the shapes it checks:
    hello, its gesture, the ensemble state, a new idea, and the band's touches as
    /metatone/playback/touch (pixels, velocity 0 for a touch-down) beside /ensemble/touch."""
    from ensemble.io.metatone_ensemble import EnsembleFlow as Flow

    with ServerThread(config(band_model, tiny_classifier)) as server:
        metatone = server.info["metatone"]
        # 0.3 s windows for the test; the tiny band's near-uniform samples change group ~3 times in 4,
        # so the first full window's rise from nothing is far above this threshold
        server.loop.call_soon_threadsafe(setattr, metatone, "flow", Flow(window=3, threshold=0.1))
        a, b = OscPeer(metatone.port), OscPeer(metatone.port)
        a.send("/metatone/online", "ipad-a", "PhaseRings")
        assert until(a, "/metatone/classifier/hello") == []
        b.send("/metatone/online", "ipad-b", "PhaseRings")
        stroke(a, "ipad-a")
        seen = collect(b, {"/metatone/classifier/gesture", "/metatone/classifier/ensemble/state",
                           "/metatone/classifier/ensemble/event/new_idea", "/metatone/playback/gesture",
                           "/metatone/playback/touch", "/ensemble/touch"})
        assert seen["/metatone/classifier/gesture"][0] == "ipad-b"
        state, spread, ratio = seen["/metatone/classifier/ensemble/state"]
        assert state in STATES and 0.0 <= spread <= 1.0 and 0.0 <= ratio <= 1.0
        sender, measure = seen["/metatone/classifier/ensemble/event/new_idea"]
        assert sender == "ensemble" and 0.1 < measure <= 1.0  # the band's churn rises from nothing
        device, code = seen["/metatone/playback/gesture"]
        assert device == "ipad-b" and code in GESTURE_CODES and code != "n"
        device, x, y, velocity = seen["/metatone/playback/touch"]
        assert device == "ipad-b" and 0.0 <= x <= 1024.0 and 0.0 <= y <= 768.0 and velocity >= 0.0
        assert isinstance(x, float) and isinstance(velocity, float)
        assert seen["/ensemble/touch"][0] == "ipad-b" and 0.0 <= seen["/ensemble/touch"][1] <= 1.0
        status = metatone.status()
        assert status["ensemble"]["state"] in STATES and status["ensemble"]["new_ideas"] >= 1
        assert set(status["band_gestures"]) <= {"ipad-a", "ipad-b"}


def test_playback_touches_follow_the_performers_own_strokes(band_model, tiny_classifier):
    """Played back from the device's own library, a stroke keeps its shape and timing: the
    first touch played is a touch-down (velocity 0), the others carry the distance moved,
    in pixels, as the app sent them; a stroke cut into mid-way starts with a touch-down."""
    with ServerThread(config(band_model, tiny_classifier)) as server:
        metatone = server.info["metatone"]
        a = OscPeer(metatone.port)
        a.send("/metatone/online", "ipad-a", "PhaseRings")
        until(a, "/metatone/classifier/hello")
        done = threading.Event()

        def play_own(points):  # on the loop; listen mode: the band's own ticks play nothing to it
            server.conductor.set_mode("ipad-a", "listen")
            metatone.devices["ipad-a"].library[3] = points
            metatone.perform("ipad-a", 3)
            done.set()

        stroke_points = [(0.01 * k, 100.0 + 10.0 * k, 200.0, 0.0 if k == 0 else 10.0) for k in range(8)]
        server.loop.call_soon_threadsafe(play_own, stroke_points)
        assert done.wait(10)
        got = [until(a, "/metatone/playback/touch") for _ in range(8)]
        assert [g[0] for g in got] == ["ipad-a"] * 8
        assert [g[1] for g in got] == pytest.approx([p[1] for p in stroke_points])
        assert [g[3] for g in got] == pytest.approx([p[3] for p in stroke_points])
        done.clear()
        server.loop.call_soon_threadsafe(play_own, stroke_points[3:])  # a window that begins mid-stroke
        assert done.wait(10)
        got = [until(a, "/metatone/playback/touch") for _ in range(5)]
        assert [g[3] for g in got] == pytest.approx([0.0, 10.0, 10.0, 10.0, 10.0])
        assert metatone.devices["ipad-a"].touches_out == 13


def test_switches_offline_with_its_app_name_and_a_thief(band_model, tiny_classifier, tmp_path):
    """/metatone/switch (the apps send "T"/"F"; older ones an OSC bool) is recorded in the
    session log and shown in status; /metatone/offline s s (what the apps send) takes the
    device out; nobody else's address may switch it."""
    cfg = config(band_model, tiny_classifier, record=str(tmp_path / "rec"))
    with ServerThread(cfg) as server:
        metatone = server.info["metatone"]
        a = OscPeer(metatone.port)
        a.send("/metatone/online", "ipad-s", "MetaLonsdale")
        until(a, "/metatone/classifier/hello")
        a.send("/metatone/switch", "ipad-s", "clustersOn", "T")
        a.send("/metatone/switch", "ipad-s", "fieldsOn", "F")
        old = OscMessageBuilder("/metatone/switch")  # the older apps: an OSC true (type tag T, no data)
        for value in ("ipad-s", "cymbalsOn", True):
            old.add_arg(value)
        a.send_raw(old.build().dgram)
        thief = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        thief.bind(("127.0.0.2", 0))
        thief.sendto(build("/metatone/switch", ["ipad-s", "clustersOn", "F"]), ("127.0.0.1", metatone.port))
        thief.close()
        a.send("/metatone/switch", "ipad-s", "nothing")  # wrong shape: one error, no state
        until(a, "/metatone/classifier/gesture")  # a tick later: all of the above handled
        status = json.loads(json.dumps(server.conductor.status()))["metatone"]
        assert status["switch_states"] == {"ipad-s": {"clustersOn": True, "fieldsOn": False, "cymbalsOn": True}}
        assert status["switches"] == 3 and metatone.errors >= 2
        for k in range(40):  # a device may name only so many switches
            a.send("/metatone/switch", "ipad-s", f"s{k}", "T")
        a.send("/metatone/offline", "ipad-s", "MetaLonsdale")  # as the apps send it: device, app
        b = OscPeer(metatone.port)
        b.send("/metatone/online", "ipad-t", "PhaseRings")  # sent after the offline: its answer comes after it
        until(b, "/metatone/classifier/gesture")
        assert "ipad-s" not in metatone.devices and "ipad-s" not in server.conductor.performers
        assert len(status["switch_states"]["ipad-s"]) == 3
    lines = [json.loads(line) for path in (tmp_path / "rec").glob("session-*.jsonl") for line in path.open()]
    switches = [(e["performer"], *e["values"]) for e in lines if e.get("kind") == "switch"]
    assert switches[:3] == [("ipad-s", "clustersOn", True), ("ipad-s", "fieldsOn", False), ("ipad-s", "cymbalsOn", True)]
    assert len(switches) == 3 + 32 - 3  # the names past MAX_SWITCHES (32) were refused


def test_the_recorder_writes_metatone_touch_and_gesture_logs(band_model, tiny_classifier, tmp_path):
    """Touches heard are written as a Metatone touch log (velocity 0 at each touch-down) and
    the recognised gestures as a gesture log; both read back by the classifier's readers
    and `ensemble classify`."""
    from ensemble.cli import main

    cfg = config(band_model, tiny_classifier, record=str(tmp_path / "rec"))
    sent = []
    with ServerThread(cfg) as server:
        metatone = server.info["metatone"]
        a = OscPeer(metatone.port)
        a.send("/metatone/online", "ipad-r", "PhaseRings")
        until(a, "/metatone/classifier/hello")
        for s in range(3):  # three strokes, the apps' way: velocity 0 starts each, touch/ended ends it
            for k in range(10):
                x, y, v = 100.0 + 20.0 * k, 100.0 + 50.0 * s, 0.0 if k == 0 else 20.0
                a.send("/metatone/touch", "ipad-r", x, y, v)
                sent.append((x, y, v == 0.0))
            a.send("/metatone/touch/ended", "ipad-r")
        a.send("/metatone/touch", "ipad-r", 500.0, 500.0, 3.0)  # after touch/ended: a touch-down, whatever its velocity
        sent.append((500.0, 500.0, True))
        until(a, "/metatone/classifier/gesture")
        until(a, "/metatone/classifier/gesture")
        logs_status = metatone.status()["logs"]
        assert logs_status["touch_rows"] == len(sent) and logs_status["gesture_rows"] >= 1
    touches_csv = next((tmp_path / "rec").glob("metatone-touches-*.csv"))
    got = classifier.read_touch_log(touches_csv)["ipad-r"]
    assert [(x, y, down) for _, x, y, down in got] == sent
    assert all(b[0] >= a[0] for a, b in zip(got, got[1:]))
    performers, rows = classifier.read_gesture_log(next((tmp_path / "rec").glob("metatone-gestures-*.csv")))
    assert performers == ["ipad-r"] and len(rows) >= 1 and all(0 <= gs[0] <= 8 for _, gs in rows)
    out = tmp_path / "again.csv"
    assert main(["classify", "--model", str(tiny_classifier), "--input", str(touches_csv), "--output", str(out)]) == 0
    assert out.read_text().splitlines()[0] == "time,ipad-r"


def test_a_restored_device_rejoins_with_its_outputs_rebuilt(band_model, tiny_classifier, tmp_path):
    """Snapshot + --restore: the device is back before it says anything (gestures go to its
    reply address), its touches are heard from its own address with no new online and
    flow into the band again, and another address still cannot play it."""
    snap = str(tmp_path / "snap.npz")
    a = OscPeer(1)  # its port is the device's reply address in both runs
    with ServerThread(config(band_model, tiny_classifier, snapshot=snap)) as server:
        a.server = ("127.0.0.1", server.info["metatone"].port)
        a.send("/metatone/online", "ipad-r", "PhaseRings")
        stroke(a, "ipad-r")
        until(a, "/metatone/playback/touch")
        before = server.conductor.performers["ipad-r"]
        assert before.owner == "127.0.0.1"
    a.drain()  # the first server's last gestures (classified while it stopped) are not the second's
    with ServerThread(config(band_model, tiny_classifier, snapshot=snap, restore=True)) as server:
        metatone = server.info["metatone"]
        assert metatone.status()["restored"] == 1
        d = metatone.devices["ipad-r"]
        assert d.reply == ("127.0.0.1", a.port) and d.app == "PhaseRings" and d.restored
        assert "ipad-r" in server.conductor.band.places
        # no online, no touch yet: the restored device already gets its gesture
        args = until(a, "/metatone/classifier/gesture")
        assert args == ["ipad-r", "n"]
        a.server = ("127.0.0.1", metatone.port)
        thief = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        thief.bind(("127.0.0.2", 0))
        thief.sendto(build("/metatone/touch", ["ipad-r", 1.0, 2.0, 0.0]), ("127.0.0.1", metatone.port))
        thief.close()
        stroke(a, "ipad-r", n=20)
        until(a, "/metatone/playback/touch")  # the band plays on it again
        args = until(a, "/metatone/classifier/gesture")
        assert args[0] == "ipad-r"
        assert d.touches_in == 20 and not d.restored and d.origin.source == f"metatone:127.0.0.1:{a.port}"
        assert metatone.errors >= 1  # the thief's touch
        assert metatone.devices["ipad-r"] is d  # no second device was made for it
    a.close()


def test_a_snapshot_with_a_bad_reply_address_still_restores_the_performer(band_model, tiny_classifier):
    """A hand-edited or foreign snapshot: no device is rebuilt from a reply address that is
    not the owner's or not a port; the performer comes back and is answered when it speaks."""
    with ServerThread(config(band_model, tiny_classifier)) as server:
        metatone = server.info["metatone"]
        done = threading.Event()
        box = {}

        def restore():
            for n, description in enumerate([{"reply": ["10.0.0.9", 51200], "owner": "127.0.0.1"},
                                              {"reply": ["127.0.0.1", 70000], "owner": "127.0.0.1"},
                                              {"reply": ["127.0.0.1", metatone.port], "owner": "127.0.0.1"},
                                              {"reply": "nonsense", "owner": None}, {}]):
                out = metatone.output_from({"type": "metatone", "device": f"x{n}", **description})
                box[n] = out.name
            box["devices"] = sorted(metatone.devices)
            done.set()

        server.loop.call_soon_threadsafe(restore)
        assert done.wait(10)
        assert box["devices"] == [] and box[0] == "metatone:x0"
        assert metatone.output_from({"type": "osc"}) is None


# ----------------------------------------------------------------------------- Bonjour


def multicast_loops_back() -> str | None:
    """None if a multicast datagram sent here comes back here (what mDNS needs), else why not."""
    group = "224.0.0.251"
    try:
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        rx.bind(("", 0))
        rx.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, struct.pack("4s4s", socket.inet_aton(group),
                                                                                 socket.inet_aton("0.0.0.0")))
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
        tx.sendto(b"probe", (group, rx.getsockname()[1]))
        rx.settimeout(2.0)
        data, _ = rx.recvfrom(64)
        rx.close()
        tx.close()
        return None if data == b"probe" else "a multicast probe came back altered"
    except OSError as exc:
        return f"multicast to {group} does not work here: {exc}"


def test_bonjour_advertises_the_metatone_port_and_an_app_finds_and_plays_it(band_model, tiny_classifier):
    """The server advertises `_osclogger._udp.` (as the Metatone apps browse for); python-zeroconf's
    own browser finds it, its ServiceInfo resolves to our port, an app plays there, and the
    service says goodbye when the server stops."""
    zeroconf = pytest.importorskip("zeroconf", reason="python-zeroconf (the zeroconf extra) is not installed")
    why = multicast_loops_back()
    if why:
        pytest.skip(why)
    from ensemble.io.metatone import SERVICE_TYPE

    found, gone = threading.Event(), threading.Event()
    names: list = []

    class Listener:
        def add_service(self, zc, type_, name):
            if name.startswith("ensemble-"):
                names.append(name)
                found.set()

        def remove_service(self, zc, type_, name):
            if name in names:
                gone.set()

        def update_service(self, zc, type_, name):
            pass

    browser_zc = zeroconf.Zeroconf(ip_version=zeroconf.IPVersion.V4Only)
    try:
        browser = zeroconf.ServiceBrowser(browser_zc, SERVICE_TYPE, Listener())
        with ServerThread(config(band_model, tiny_classifier, metatone_bonjour="on")) as server:
            metatone = server.info["metatone"]
            assert found.wait(30), f"not found by Bonjour; server says {metatone.bonjour!r}"
            info = browser_zc.get_service_info(SERVICE_TYPE, names[0], timeout=5000)
            assert info is not None and info.port == metatone.port
            assert "127.0.0.1" in info.parsed_addresses() and info.properties.get(b"protocol") == b"metatone"
            app = OscPeer(info.port)
            app.server = (info.parsed_addresses()[0], info.port)
            app.send("/metatone/online", "ipad-z", "PhaseRings")
            assert until(app, "/metatone/classifier/gesture")[0] == "ipad-z"
            deadline = time.monotonic() + 10
            while not metatone.bonjour.startswith("advertised") and time.monotonic() < deadline:
                until(app, "/metatone/classifier/gesture")  # a tick at a time, bounded
            assert metatone.bonjour == f"advertised as {names[0]}"
        assert gone.wait(10), "no goodbye when the server stopped"
        browser.cancel()
    finally:
        browser_zc.close()


def test_bonjour_is_off_on_loopback_by_default(band_model, tiny_classifier):
    with ServerThread(config(band_model, tiny_classifier)) as server:
        assert server.info["metatone"].bonjour == "off" and server.info["metatone"].zeroconf is None


# ----------------------------------------------------------------------------- the scripted player


def test_scripted_player_plays_every_gesture_and_the_server_records_it(band_model, tiny_classifier, tmp_path):
    """`python -m ensemble.metatone_player play` behaves as an app (online, touches with
    velocity 0 at touch-downs, touch/ended, offline s s); the server's touch log holds every
    touch it sent, and `score` reads the server's gesture log against the truth."""
    from ensemble import metatone_player

    plays, orders = metatone_player.scripts(2, 0.4, seed=5)
    assert [sorted(o) for o in orders] == [list(range(9))] * 2
    again, _ = metatone_player.scripts(2, 0.4, seed=5)
    assert [s.events for s in plays] == [s.events for s in again]  # reproducible by seed
    downs = sum(1 for s in plays for e in s.events if e[1] == "down")
    moves = sum(1 for s in plays for e in s.events if e[1] == "move")
    cfg = config(band_model, tiny_classifier, record=str(tmp_path / "rec"))
    with ServerThread(cfg) as server:
        metatone = server.info["metatone"]
        truth = tmp_path / "truth.csv"
        assert metatone_player.main(["play", "--port", str(metatone.port), "--devices", "2", "--seconds", "0.4",
                                     "--seed", "5", "--truth", str(truth)]) == 0
        probe = OscPeer(metatone.port)
        probe.send("/metatone/online", "probe", "x")  # queued behind the player's last datagram
        until(probe, "/metatone/classifier/hello")
        assert "scripted1" not in metatone.devices  # its offline (device, app) was taken
    got = classifier.read_touch_log(next((tmp_path / "rec").glob("metatone-touches-*.csv")))
    assert sorted(got) == ["scripted1", "scripted2"]
    assert sum(len(p) for p in got.values()) == downs + moves
    assert sum(down for p in got.values() for *_, down in p) == downs
    devices, rows = classifier.read_gesture_log(truth)
    assert devices == ["scripted1", "scripted2"] and len(rows) == 3  # 9 x 0.4 s, one row a second
    result = metatone_player.score(truth, truth, seconds=0.4)  # the truth scores itself perfectly
    assert result["accuracy"] == 1.0 and result["seconds"] == 6


def test_score_counts_steady_seconds_and_confusions(tmp_path):
    from ensemble import metatone_player

    def log(path, rows):
        with open(path, "w") as f:
            f.write("time,a\n" + "".join(f"2026-01-01T00:00:{s:02d}+00:00,{g}\n" for s, g in rows))

    truth, guess = tmp_path / "t.csv", tmp_path / "g.csv"
    log(truth, [(s + 1, 1 if s < 6 else 6) for s in range(12)])  # ft for 6 s, then bs for 6 s
    log(guess, [(s + 1, 1 if s < 8 else 6) for s in range(12)])  # a window late by 2 s
    result = metatone_player.score(truth, guess, window=5.0, seconds=6.0)
    assert result["seconds"] == 12 and result["accuracy"] == pytest.approx(10 / 12)
    assert result["confusion"][6][1] == 2  # bs heard as ft twice, in the change
    # steady: the window (t-5, t] inside one gesture: t = 5, 6 and 11, 12
    assert result["steady_seconds"] == 4 and result["steady_accuracy"] == 1.0
