"""The Pure Data patches, run headless by real Pd, talk with a running server."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from ensemble.server.config import ServerConfig
from oscpeer import OscPeer, ServerThread

PATCHES = Path(__file__).resolve().parents[1] / "patches"
pytestmark = pytest.mark.skipif(shutil.which("pd") is None, reason="Pure Data (puredata-core) is not installed")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_pd(patch: str, server_port: int, reply_port: int, driver: str | None = None) -> subprocess.Popen:
    """pd headless (DESIGN.md: -nrt matters); returns once the patch printed READY.

    `driver`: a patch of tests/pd that plays through the patch's own inputs once it is up."""
    extra = ["-open", str(Path(__file__).parent / "pd" / driver)] if driver else []
    proc = subprocess.Popen(
        ["pd", "-nrt", "-nogui", "-nosound", "-nomidi", "-stderr", "-noprefs", "-open", str(PATCHES / patch),
         *extra, "-send", f"oscport {server_port}", "-send", f"replyport {reply_port}"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    for line in proc.stderr:
        if line.startswith("READY:"):
            assert line.split()[1:3] == [str(server_port), str(reply_port)]
            return proc
    proc.kill()
    raise AssertionError(f"{patch} never printed READY")


def wait_for_performer(port: int, name: str) -> dict:
    """Ask the server's status until the patch's hello has arrived (bounded)."""
    peer = OscPeer(port)
    try:
        for _ in range(50):
            peer.send("/ensemble/status")
            status = json.loads(peer.recv_until("/ensemble/status")[0])
            found = [p for p in status["performers"] if p["id"] == name]
            if found:
                return found[0]
        raise AssertionError(f"no hello from {name}")
    finally:
        peer.close()


def osc_lines(proc, count: int) -> list[list[str]]:
    lines = []
    for line in proc.stderr:
        if line.startswith("OSC:"):
            lines.append(line.split()[1:])
            if len(lines) == count:
                return lines
    raise AssertionError("pd stopped before the predictions arrived")


@pytest.mark.parametrize("patch, performer, model_fixture", [
    ("ensemble-notes.pd", "pd-keys", "notes_model"),
    ("ensemble-touch.pd", "pd-touch", "touch_model"),
])
def test_patch_says_hello_and_hears_the_predictions(patch, performer, model_fixture, request, tmp_path):
    model = request.getfixturevalue(model_fixture)
    cfg = ServerConfig(model=str(model), port=0, record="", snapshot="", default_mode="duet", seed=1)
    with ServerThread(cfg) as server:
        reply_port = free_port()
        pd = start_pd(patch, server.port, reply_port)
        try:
            me = wait_for_performer(server.port, performer)
            assert me["output"] == f"osc:127.0.0.1:{reply_port}"
            # play as that performer (as the patch's keys or pad would): the answers go to pd
            peer = OscPeer(server.port)
            if performer == "pd-keys":
                peer.send("/ensemble/note", performer, 60, 100)
                peer.send("/ensemble/note", performer, 60, 0)
                (on, off) = osc_lines(pd, 2)
                assert on[:3] == ["ensemble", "note", "pd-keys"] and int(float(on[4])) > 0 and on[5] == "1"
                assert off[:3] == ["ensemble", "note", "pd-keys"] and off[3] == on[3] and float(off[4]) == 0
            else:
                peer.send("/ensemble/touch", performer, 0.25, 0.75)
                (touch,) = osc_lines(pd, 1)
                assert touch[:3] == ["ensemble", "touch", "pd-touch"] and 0 <= float(touch[3]) <= 1
        finally:
            pd.kill()
            pd.wait()


@pytest.mark.parametrize("patch, performer, driver, events, model_fixture", [
    ("ensemble-notes.pd", "pd-keys", "drive-keys.pd", 2, "notes_model"),
    ("ensemble-touch.pd", "pd-touch", "drive-touch.pd", 1, "touch_model"),
])
def test_what_the_patch_plays_reaches_the_server_and_is_answered(patch, performer, driver, events,
                                                                 model_fixture, request):
    model = request.getfixturevalue(model_fixture)
    cfg = ServerConfig(model=str(model), port=0, record="", snapshot="", default_mode="duet", seed=1)
    with ServerThread(cfg) as server:
        reply_port = free_port()
        pd = start_pd(patch, server.port, reply_port, driver)
        try:
            answers = osc_lines(pd, events)  # pd played; the server answered each event to pd
            assert all(a[:3] == ["ensemble", answers[0][1], performer] for a in answers)
            assert wait_for_performer(server.port, performer)["events_in"] == events
        finally:
            pd.kill()
            pd.wait()
