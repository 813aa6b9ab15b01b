"""The browser transport's WebSocket protocol, driven by a real aiohttp client (no browser).

The server runs in a thread (`ServerThread`), with `--web 127.0.0.1:0`; each test talks to
it with aiohttp's client on its own event loop, and awaits messages (never sleeps).
"""

from __future__ import annotations

import asyncio
import json
import socket

import aiohttp
import pytest

from ensemble.io import osc
from ensemble.messages import EventError
from ensemble.session_log import read_session
from oscpeer import OscPeer, ServerThread
from test_server import config


def web_config(model, tmp_path, **kw):
    return config(model, tmp_path, web="127.0.0.1:0", **kw)


class Page:
    """One WebSocket, as a page holds it: send OSC-like JSON, await what comes back."""

    def __init__(self, session: aiohttp.ClientSession, ws):
        self.session, self.ws = session, ws
        self.welcome = None

    @classmethod
    async def open(cls, url: str, **kw) -> "Page":
        session = aiohttp.ClientSession()
        try:
            ws = await session.ws_connect(url.replace("http", "ws") + "ws", **kw)
        except BaseException:
            await session.close()
            raise
        page = cls(session, ws)
        page.welcome = (await page.until("/ensemble/welcome"))[0]
        return page

    async def send(self, address: str, *args) -> None:
        await self.ws.send_str(json.dumps({"address": address, "args": list(args)}))

    async def recv(self, timeout: float = 10.0) -> dict:
        msg = await self.ws.receive(timeout)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        return json.loads(msg.data)

    async def until(self, address: str, timeout: float = 10.0, where=lambda m: True) -> list:
        """The args of the next message to `address` (that satisfies `where`)."""
        while True:
            m = await self.recv(timeout)
            if m["address"] == address and where(m):
                return m.get("args", m)

    async def close(self) -> None:
        await self.ws.close()
        await self.session.close()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_page_and_its_assets_are_served_by_the_package(notes_model, tmp_path):
    async def main(url):
        async with aiohttp.ClientSession() as s:
            async with s.get(url) as r:
                assert r.status == 200 and "text/html" in r.headers["Content-Type"]
                page = await r.text()
            assert 'src="app.js"' in page and 'href="style.css"' in page and "http" not in page.replace(
                'http-equiv', '')  # no CDN: every asset is ours
            for name, kind in (("app.js", "javascript"), ("style.css", "css")):
                async with s.get(url + name) as r:
                    assert r.status == 200 and kind in r.headers["Content-Type"]
            for bad in ("nope.js", "..%2Fpyproject.toml", "web.py"):
                async with s.get(url + bad) as r:
                    assert r.status == 404

    with ServerThread(web_config(notes_model, tmp_path)) as server:
        assert server.info["web"].startswith("http://127.0.0.1:")
        run(main(server.info["web"]))


def test_a_browser_performer_plays_duet_numbered_and_recorded(notes_model, tmp_path):
    async def main(url):
        page = await Page.open(url)
        assert page.welcome["kind"] == "note" and page.welcome["admin"] is True
        await page.send("/ensemble/hello", "alice", "duet")
        await page.send("/ensemble/status", "alice")
        status = (await page.until("/ensemble/status"))[0]
        assert status["performers"][0]["id"] == "alice" and status["performers"][0]["mode"] == "duet"
        answers = []
        for k, pitch in enumerate([60, 62, 64]):
            await page.send("/ensemble/note", "alice", pitch, 90)
            answers.append(await page.until("/ensemble/note", where=lambda m: m["args"][2] > 0))
            await page.send("/ensemble/note", "alice", pitch, 0)
        assert [a[0] for a in answers] == ["alice"] * 3
        seqs = [a[3] for a in answers]
        assert seqs == sorted(seqs) and len(set(seqs)) == 3 and all(isinstance(a[1], int) for a in answers)
        await page.send("/ensemble/goodbye", "alice")
        await page.send("/ensemble/status")
        assert (await page.until("/ensemble/status"))[0]["performers_total"] == 0
        await page.close()

    with ServerThread(web_config(notes_model, tmp_path)) as server:
        run(main(server.info["web"]))
        recorder = server.conductor.recorder
        folder = tmp_path / "rec"
    recorded = [e for path in folder.glob("*.jsonl") for e in read_session(path)[1]]
    played = [e for e in recorded if e["dir"] == "in" and e["kind"] == "note"]
    assert len(played) == 6 and all(e["source"].startswith("web:127.0.0.1:") for e in played)
    assert sum(1 for e in recorded if e["dir"] == "out" and e["values"][1] > 0) == 3
    assert recorder.path is not None  # the tap stands where the recorder was and says where it writes


def test_bad_messages_get_the_osc_errors_and_the_connection_goes_on(notes_model, tmp_path):
    def osc_reason(address, args):
        with pytest.raises(EventError) as exc:
            osc.check_arguments(address, args)
        return str(exc.value)

    async def main(url):
        page = await Page.open(url)
        await page.send("/ensemble/hello", "bob")
        await page.send("/ensemble/note", "bob", "high", 90)
        assert await page.until("/ensemble/error") == ["/ensemble/note", osc_reason("/ensemble/note", ["bob", "high", 90])]
        await page.send("/ensemble/note", "nobody", 60, 90)
        address, reason = await page.until("/ensemble/error")
        assert address == "/ensemble/note" and "unknown performer 'nobody'" in reason
        await page.send("/ensemble/mode", "bob", "loud")
        assert "mode must be one of" in (await page.until("/ensemble/error"))[1]
        await page.send("/ensemble/hello", "carol", "loud")
        assert "mode must be one of" in (await page.until("/ensemble/error"))[1]
        await page.send("/ensemble/set", "bob", "temperature", -1)
        reason = (await page.until("/ensemble/error"))[1]
        assert reason.startswith("temperature") and "-1" in reason  # the conductor's own words, as over OSC
        await page.send("/ensemble/nope")
        assert "unknown address /ensemble/nope" in (await page.until("/ensemble/error"))[1]
        await page.ws.send_str("{not json")
        assert "not JSON" in (await page.until("/ensemble/error"))[1]
        await page.ws.send_str("[1, 2]")
        assert "a message is an object" in (await page.until("/ensemble/error"))[1]
        await page.ws.send_str(json.dumps({"address": "/ensemble/note", "args": "bob"}))
        assert "args must be a list" in (await page.until("/ensemble/error"))[1]
        await page.ws.send_str(json.dumps({"address": "/ensemble/note", "args": ["bob", float("nan"), 1]}))
        assert "takes" in (await page.until("/ensemble/error"))[1]
        await page.ws.send_str("[" * 4000)
        assert "not JSON" in (await page.until("/ensemble/error"))[1]
        await page.ws.send_str('{"address": "/ensemble/note", "args": ["bob", ' + "9" * 3000 + ", 1]}")
        assert "/ensemble/note takes 's i i'" in (await page.until("/ensemble/error"))[1]  # no int32: refused here
        await page.ws.send_bytes(b"\x00\x01")
        assert "not binary" in (await page.until("/ensemble/error"))[1]
        await page.send("/ensemble/status", "bob")  # still served, in order
        assert (await page.until("/ensemble/status"))[0]["performers"][0]["id"] == "bob"
        await page.close()

    with ServerThread(web_config(notes_model, tmp_path, error_rate=100.0)) as server:
        run(main(server.info["web"]))
        assert server.info["web_server"].status()["errors"] >= 13


def test_a_performer_belongs_to_its_connection_and_leaves_with_it(notes_model, tmp_path):
    async def main(url):
        a, b = await Page.open(url), await Page.open(url)
        assert a.welcome["admin"] is False  # the admin networks do not include this machine here
        await a.send("/ensemble/hello", "ann")
        await a.send("/ensemble/status", "ann")
        await a.until("/ensemble/status")
        await b.send("/ensemble/hello", "ann")
        assert "played from another address" in (await b.until("/ensemble/error"))[1]
        for message in (("/ensemble/note", "ann", 60, 90), ("/ensemble/mode", "ann", "auto"),
                        ("/ensemble/panic", "ann"), ("/ensemble/reset", "ann"), ("/ensemble/watch", "ann")):
            await b.send(*message)
            assert "belongs to another address" in (await b.until("/ensemble/error"))[1], message
        await b.send("/ensemble/panic")
        assert "only taken from this machine or the admin networks" in (await b.until("/ensemble/error"))[1]
        await a.close()  # the page closes: ann says goodbye, and the id is free again
        await b.send("/ensemble/hello", "ann")
        await b.send("/ensemble/status", "ann")
        assert (await b.until("/ensemble/status"))[0]["performers"][0]["id"] == "ann"
        await b.close()

    with ServerThread(web_config(notes_model, tmp_path, admin=["198.51.100.0/24"])) as server:
        run(main(server.info["web"]))


def test_rate_size_and_connection_limits(notes_model, tmp_path):
    async def main(url):
        page = await Page.open(url)
        for _ in range(30):
            await page.send("/ensemble/status")
        reason = (await page.until("/ensemble/error"))[1]
        assert "too many messages: at most 5 a second per connection" in reason
        big = await Page.open(url)
        await big.ws.send_str(json.dumps({"address": "/ensemble/hello", "args": ["x" * 5000]}))
        msg = await big.ws.receive(10)
        while msg.type == aiohttp.WSMsgType.TEXT:  # whatever was queued before the close
            msg = await big.ws.receive(10)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
        assert big.ws.close_code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
        await big.close()
        second = await Page.open(url)
        with pytest.raises(aiohttp.WSServerHandshakeError) as full:
            await Page.open(url)
        assert full.value.status == 503
        with pytest.raises(aiohttp.WSServerHandshakeError) as other_site:
            await second.session.ws_connect(url.replace("http", "ws") + "ws", origin="http://evil.example")
        assert other_site.value.status == 403
        await page.close()
        await second.close()

    with ServerThread(web_config(notes_model, tmp_path, web_rate=5.0, web_connections=2)) as server:
        run(main(server.info["web"]))


def _outside_address() -> str | None:
    """An address of this machine that is not loopback (a connection from it is 'from the network')."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
            ip = s.getsockname()[0]
    except OSError:
        return None
    return None if ip.startswith("127.") else ip


def test_bound_wider_only_the_allowed_networks_are_served(notes_model, tmp_path):
    ip = _outside_address()
    if ip is None:
        pytest.skip("this machine has no address beyond loopback")

    async def main(port):
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://{ip}:{port}/") as r:
                assert r.status == 403
            async with s.get(f"http://127.0.0.1:{port}/") as r:  # this machine is always served
                assert r.status == 200

    with ServerThread(config(notes_model, tmp_path, web="0.0.0.0:0", allow=["198.51.100.0/24"])) as server:
        run(main(int(server.info["web"].rsplit(":", 1)[1].rstrip("/"))))


def test_a_watcher_sees_osc_and_browser_performers_and_the_answers(notes_model, tmp_path):
    async def main(url, osc_port):
        watcher, player = await Page.open(url), await Page.open(url)
        await watcher.send("/ensemble/watch")
        await player.send("/ensemble/hello", "web1", "duet")
        peer = OscPeer(osc_port)
        peer.send("/ensemble/hello", "osc1", "127.0.0.1", peer.port)
        peer.send("/ensemble/mode", "osc1", "duet")
        seen: dict = {}
        table = {}
        sent = 0
        while not (("in", "osc1") in seen and ("out", "osc1") in seen and ("in", "web1") in seen
                   and ("out", "web1") in seen and {"osc1", "web1"} <= set(table)):
            if sent < 20:  # keep playing until the watcher has seen both sides of both performers
                peer.send("/ensemble/note", "osc1", 60 + sent % 5, 90 if sent % 2 == 0 else 0)
                await player.send("/ensemble/note", "web1", 64 + sent % 5, 90 if sent % 2 == 0 else 0)
                sent += 1
            m = await watcher.until("/ensemble/watch")
            for t, direction, performer, kind, values, seq, transport in m["events"]:
                seen[(direction, performer)] = transport
            table.update({p["id"]: p for p in m.get("performers", [])})
        assert seen[("in", "osc1")] == "osc" and seen[("in", "web1")] == "web"
        assert table["web1"]["transport"] == "web" and table["osc1"]["transport"] == "osc"
        assert "output" not in table["web1"] and table["web1"]["mode"] == "duet"
        await watcher.send("/ensemble/watch", "web1")
        performer, cells = await watcher.until("/ensemble/cells")
        assert performer == "web1" and 0 < len(cells) <= 64 and all(isinstance(v, float) for v in cells)
        await watcher.send("/ensemble/mode", "osc1", "listen")  # a page on an admin network steers anyone
        await watcher.send("/ensemble/status", "osc1")
        assert (await watcher.until("/ensemble/status"))[0]["performers"][0]["mode"] == "listen"
        peer.close()
        await watcher.close()
        await player.close()

    with ServerThread(web_config(notes_model, tmp_path)) as server:
        run(main(server.info["web"], server.port))


def _strict_json(text: str):
    """What a browser's JSON.parse accepts: no NaN, no Infinity."""
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


def test_non_finite_numbers_reach_a_watcher_as_null_not_as_invalid_json(notes_model, tmp_path):
    async def main(server, url):
        watcher, player = await Page.open(url), await Page.open(url)
        await player.send("/ensemble/hello", "web1", "duet")
        await player.send("/ensemble/note", "web1", 60, 90)
        await player.until("/ensemble/note")
        engine, slot = server.conductor.engine, server.conductor.performers["web1"].slot
        done = asyncio.get_running_loop().create_future()

        def diverge():  # on the server's loop: the watched performer's top cells blow up
            engine.bank.c[slot, -1, :3] = [float("nan"), float("inf"), -float("inf")]  # set_state refuses these
            done.get_loop().call_soon_threadsafe(done.set_result, None)

        server.loop.call_soon_threadsafe(diverge)
        await done
        await watcher.send("/ensemble/watch", "web1")
        while True:
            msg = await watcher.ws.receive(10)
            message = _strict_json(msg.data)  # raises on NaN / Infinity
            if message["address"] == "/ensemble/cells":
                break
        performer, cells = message["args"]
        assert performer == "web1" and cells[:3] == [None, None, None]
        assert all(isinstance(v, float) for v in cells[3:])
        await player.send("/ensemble/note", "web1", 62, 90)  # the watch goes on: the next batch parses too
        m = await watcher.until("/ensemble/watch", where=lambda m: bool(m.get("events")))
        assert any(e[2] == "web1" for e in m["events"])
        await watcher.close()
        await player.close()

    with ServerThread(web_config(notes_model, tmp_path)) as server:
        run(main(server, server.info["web"]))


def test_web_setting_is_checked(tmp_path):
    from ensemble.errors import UserError
    from ensemble.server.config import ServerConfig

    assert ServerConfig(web="8080").web_address == ("127.0.0.1", 8080)
    assert ServerConfig(web="0.0.0.0:0").web_address == ("0.0.0.0", 0)
    assert ServerConfig(web="[::1]:81").web_address == ("::1", 81)
    for bad in ("http://x", "70000", "host:"):
        with pytest.raises(UserError, match="web: "):
            ServerConfig(web=bad).validate()


def test_a_browser_performer_survives_a_restart_in_the_snapshot(notes_model, tmp_path):
    """Its page is gone after a restart: the performer comes back (state, mode) with answers
    going nowhere, and no new page is taken for its owner."""
    async def play(url):
        page = await Page.open(url)
        await page.send("/ensemble/hello", "dora", "listen")
        await page.send("/ensemble/note", "dora", 60, 90)
        await page.send("/ensemble/status", "dora")
        assert (await page.until("/ensemble/status"))[0]["performers"][0]["events_in"] == 1
        return page

    async def after(url):
        page = await Page.open(url)
        await page.send("/ensemble/hello", "dora")
        assert "played from another address" in (await page.until("/ensemble/error"))[1]
        await page.close()

    async def stop_while_open(server):  # the server stops while the page is open (Ctrl-C, a crash)
        page = await play(server.info["web"])
        await asyncio.get_running_loop().run_in_executor(None, server.__exit__, None, None, None)
        await page.close()

    run(stop_while_open(ServerThread(web_config(notes_model, tmp_path)).__enter__()))
    with ServerThread(web_config(notes_model, tmp_path, restore=True)) as server:
        dora = server.conductor.performers["dora"]
        assert dora.mode == "listen" and dora.output.describe()["type"] == "web" and dora.has_logits
        run(after(server.info["web"]))


def test_serve_web_from_the_command_line(notes_model, tmp_path):
    import re
    import subprocess
    import sys
    import urllib.request

    base = [sys.executable, "-m", "ensemble", "serve", "--model", str(notes_model), "--port", "0",
            "--no-record", "--no-snapshot"]
    bad = subprocess.run(base + ["--web", "http:x"], capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "web: 'http:x' is not [HOST:]PORT" in bad.stderr
    proc = subprocess.Popen(base + ["--web", "127.0.0.1:0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    try:
        line = proc.stdout.readline()
        match = re.search(r"browsers on (http://127\.0\.0\.1:\d+/)", line)
        assert match, line
        with urllib.request.urlopen(match.group(1), timeout=10) as r:
            assert r.status == 200 and b"app.js" in r.read()
    finally:
        proc.terminate()
        assert proc.wait(20) == 0
