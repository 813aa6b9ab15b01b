"""Play and watch from a browser: one page and a WebSocket, served on the server's own loop.

`ensemble serve --web [HOST:]PORT` serves the page in `ensemble/web/` (every asset comes
from the package: a stage network has no internet) and a WebSocket at `/ws` whose
messages mirror the OSC contract as small JSON, so a browser is a performer like any
other (its own state, mode, settings, sequence numbers, recorded):

    browser -> server   {"address": "/ensemble/note", "args": ["alice", 60, 100]}
    server -> browser   {"address": "/ensemble/note", "args": ["alice", 62, 90, 17]}   (17: seq)
                        {"address": "/ensemble/error", "args": ["/ensemble/note", "reason"]}

The same typed events reach the conductor as from OSC and MIDI (`ensemble.messages`),
so the three play together. A connection may also `/ensemble/watch` (optionally naming
a performer whose LSTM cells it wants to see): it then gets, at most every
WATCH_INTERVAL, the events in and out of every performer (one batch, encoded once for
all watchers) and, every STATUS_EVERY, every performer's mode and settings; and
`/ensemble/cells` with that performer's cells.

Every message is hostile until checked, as with OSC: bound to loopback unless told
otherwise, only the `allow` networks are served when bound wider, a page from another
site may not open the socket (its Origin header must name this server), at most
`web_connections` at once, MAX_MESSAGE bytes a message, `web_rate` messages/s per
connection and `performer_rate` events/s per performer; a bad message costs one
(rate-limited) log line and one `/ensemble/error`, never the connection or the server.
A performer id belongs to the connection that said hello ("web:IP:N"); when the
connection closes, its performers say goodbye.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import math
import secrets
import time
from collections import deque
from importlib import resources

import numpy as np
from aiohttp import WSMsgType, web

from ensemble.io.limits import QuietLog, RateLimiter
from ensemble.io.osc import SIGNATURES as OSC_SIGNATURES
from ensemble.messages import (MODES, ControlError, EventError, Goodbye, Hello, Origin, Panic, Play, Reset,
                               SetMode, SetParam, StatusRequest)

log = logging.getLogger("ensemble.web")

MAX_MESSAGE = 4096       # bytes in one WebSocket message from a browser
MAX_QUEUE = 2048         # messages waiting for one slow browser; beyond, the newest are dropped (counted)
WATCH_INTERVAL = 0.05    # seconds between watch batches (at most 20 a second per watcher)
WATCH_EVENTS = 512       # events kept for one batch; beyond, the oldest are dropped (counted)
STATUS_EVERY = 0.5       # seconds between performer tables sent to watchers
CELLS = 64               # LSTM cell activations sent for the watched performer (the top layer, first CELLS)
_strict = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode  # compact; one encoder, not one per message


def _finite(value):
    """`value` with every NaN and infinity (JSON has neither) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _encode(message) -> str:
    """Compact JSON a browser can parse. Python writes NaN and Infinity, which JSON.parse
    refuses, so one non-finite number (a diverged cell, a restored snapshot's figure)
    would lose the whole watch batch for every watcher: those become null. The strict
    encoder finds them at no extra cost; only then is the message copied."""
    try:
        return _strict(message)
    except ValueError:
        return _strict(_finite(message))

# the OSC address space, with what differs for a browser: a hello names no reply address (answers
# come back on the socket) but may name a mode; a status goes back on the socket too
SIGNATURES = {**OSC_SIGNATURES,
              "/ensemble/hello": ("s", "ss"),
              "/ensemble/status": ("", "s"),
              "/ensemble/watch": ("", "s")}
PLAYED = frozenset({"/ensemble/note", "/ensemble/touch", "/ensemble/gesture"})
FILES = {"index.html": "text/html", "app.js": "text/javascript", "style.css": "text/css"}


INT32 = range(-2**31, 2**31)  # what an OSC "i" can hold; JSON numbers can be thousands of digits


def _matches(arg, t: str) -> bool:
    if t == "s":
        return isinstance(arg, str) and arg != ""
    if isinstance(arg, bool) or not isinstance(arg, (int, float)):
        return False
    if isinstance(arg, int):
        return arg in INT32
    return math.isfinite(arg) and (arg.is_integer() and int(arg) in INT32 if t == "i" else True)


def check_arguments(address, args) -> list:
    """The arguments converted to their types, or EventError saying what was expected (as OSC says it)."""
    signatures = SIGNATURES.get(address) if isinstance(address, str) else None
    if signatures is None:
        raise EventError(f"unknown address {str(address)[:64]} (known: {', '.join(sorted(SIGNATURES))})")
    if not isinstance(args, list):
        raise EventError(f"{address}: args must be a list")
    for sig in signatures:
        if len(sig) == len(args) and all(_matches(a, t) for a, t in zip(args, sig)):
            return [int(a) if t == "i" else float(a) if t == "f" else a for a, t in zip(args, sig)]
    got = " ".join(type(a).__name__ for a in args[:8]) or "nothing"
    want = " or ".join(repr(" ".join(s)) if s else "no arguments" for s in signatures)
    raise EventError(f"{address} takes {want}; got {got}")


def ip_of(remote: str | None):
    """The peer's address; an IPv4 peer of a dual-stack socket ("::ffff:10.0.0.5") as IPv4, so
    that loopback and the IPv4 allow-list networks recognise it."""
    try:
        ip = ipaddress.ip_address((remote or "").split("%", 1)[0])
    except ValueError:
        return None
    return ip.ipv4_mapped if ip.version == 6 and ip.ipv4_mapped else ip


def _in(ip, networks) -> bool:
    return ip.is_loopback or any(ip in net for net in networks)


class Connection:
    """One browser: its socket, its queue of messages out, its limits and its performers."""

    def __init__(self, server: "WebServer", ws: web.WebSocketResponse, ip: str, number: int, admin: bool):
        self.ws = ws
        self.number = number
        self.name = f"web:{ip}:{number}"
        self.origin = Origin(self.name, self.name, admin)
        self.limit = RateLimiter(server.cfg.web_rate, burst=max(1.0, server.cfg.web_rate / 2), max_keys=1)
        self.queue: deque[str] = deque()
        self.wake = asyncio.Event()
        self.performers: set[str] = set()
        self.watching = False
        self.cells_of: str | None = None  # the performer whose LSTM cells this watcher sees
        self.dropped = 0
        self.output = WebOutput(self)

    def put(self, message: dict) -> None:
        """Queue one message; never waits: a browser that cannot keep up loses messages, not the loop."""
        self.put_text(_encode(message))

    def put_text(self, text: str) -> None:
        """Queue one message already encoded (a watch batch is encoded once for every watcher)."""
        if len(self.queue) >= MAX_QUEUE:
            self.dropped += 1
            return
        self.queue.append(text)
        self.wake.set()

    async def write(self) -> None:
        """Send what is queued, in order, for as long as the socket is open."""
        try:
            while not self.ws.closed:
                await self.wake.wait()
                self.wake.clear()
                while self.queue and not self.ws.closed:
                    await self.ws.send_str(self.queue.popleft())
        except (ConnectionError, RuntimeError) as exc:  # the browser went away mid-send
            log.debug("web: %s: %s", self.name, exc)


class WebOutput:
    """A performer's answers, as JSON on the socket of the browser that said hello."""

    def __init__(self, connection: Connection | None, name: str | None = None):
        self.connection = connection
        self.name = name or connection.name

    def send(self, performer: str, kind: str, values: tuple, seq: int) -> None:
        if self.connection is None:  # restored from a snapshot: that browser is gone
            return
        if kind == "touch":
            args = [performer, float(values[0]), float(values[1]), seq]
        else:
            args = [performer, *(int(v) for v in values), seq]
        self.connection.put({"address": f"/ensemble/{kind}", "args": args})

    def describe(self) -> dict:
        return {"type": "web", "name": self.name}


class WebServer:
    """The browser transport: an aiohttp site on the conductor's loop."""

    name = "web"

    def __init__(self, conductor, cfg):
        self.conductor = conductor
        self.cfg = cfg
        self.loop = conductor.loop
        self.host, self.port = cfg.web_address
        try:
            self.loopback = ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            self.loopback = self.host == "localhost"
        self.allow = [ipaddress.ip_network(n, strict=False) for n in cfg.allow]
        self.admin = [ipaddress.ip_network(n, strict=False) for n in cfg.admin]
        self.performer_limit = RateLimiter(cfg.performer_rate)
        self.quiet = QuietLog(log, cfg.error_rate, burst=2 * cfg.error_rate)
        self.connections: dict[int, Connection] = {}
        # connection numbers start at random, so that after a restart a new page is never taken
        # for the owner of a performer restored from the snapshot
        self.numbered = secrets.randbelow(1 << 30)
        self.feed: deque[str] = deque(maxlen=WATCH_EVENTS)  # JSON rows for the next watch batch
        self.feed_dropped = 0
        self.watch_timer: asyncio.TimerHandle | None = None
        self.last_table = 0.0
        self.cpu_mark = (time.monotonic(), time.process_time())  # for the CPU share shown on the page
        self.flush_soon = False
        self.runner: web.AppRunner | None = None
        self.files = {name: (resources.files("ensemble.web") / name).read_bytes() for name in FILES}
        self.received = self.rejected = self.errors = self.refused = 0
        conductor.watchers.append(self._seen)  # every event in and out, as it is recorded
        conductor.attach(self)

    # -- lifetime

    async def start(self) -> tuple[str, int]:
        app = web.Application(middlewares=[self._admit], client_max_size=MAX_MESSAGE)
        app.router.add_get("/", self._page)
        app.router.add_get("/ws", self._socket)
        app.router.add_get("/{name}", self._file)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, self.port)
        await site.start()
        bound = self.runner.addresses[0][:2]
        self.port = bound[1]
        return bound

    async def close(self) -> None:
        """Async, unlike OSC's: closing each socket sends its close frame and lets its page's
        performers say goodbye."""
        if self.watch_timer is not None:
            self.watch_timer.cancel()
        for conn in list(self.connections.values()):
            await conn.ws.close()
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    def status(self) -> dict:
        return {"connections": len(self.connections), "watchers": sum(c.watching for c in self.connections.values()),
                "received": self.received, "rejected": self.rejected, "refused": self.refused,
                "errors": self.errors, "errors_suppressed": self.quiet.total_suppressed,
                "dropped": sum(c.dropped for c in self.connections.values()) + self.feed_dropped}

    def output_from(self, description: dict) -> WebOutput | None:
        """A restored browser performer (state, mode, settings): its page is gone, so its
        answers go nowhere until the idle timeout drops it, or (a `shared` id) a page takes
        it over with a hello."""
        if description.get("type") != "web":
            return None
        return WebOutput(None, str(description.get("name", "web:gone")))

    # -- HTTP

    @web.middleware
    async def _admit(self, request: web.Request, handler):
        """Only the allowed networks (this machine always) when bound wider; no other site's pages."""
        ip = ip_of(request.remote)
        if not self.loopback and (ip is None or not _in(ip, self.allow)):
            self.refused += 1
            self.quiet.warning(str(ip), "web: refused %s: not in the allowed networks", ip)
            raise web.HTTPForbidden(text="not in the allowed networks\n")
        origin = request.headers.get("Origin")
        if origin is not None and origin.split("://", 1)[-1] != request.host:
            self.refused += 1
            self.quiet.warning(str(ip), "web: refused a page from %s (Origin %s)", ip, origin[:80])
            raise web.HTTPForbidden(text="pages from other sites may not use this server\n")
        return await handler(request)

    async def _page(self, request: web.Request) -> web.Response:
        return self._serve("index.html")

    async def _file(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in FILES:
            raise web.HTTPNotFound()
        return self._serve(name)

    def _serve(self, name: str) -> web.Response:
        return web.Response(body=self.files[name], content_type=FILES[name],
                            headers={"Cache-Control": "no-cache"})

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        if len(self.connections) >= self.cfg.web_connections:
            self.refused += 1
            self.quiet.warning("full", "web: refused a connection: %d already (web_connections)",
                               len(self.connections))
            raise web.HTTPServiceUnavailable(text=f"the server is full: {len(self.connections)} browser "
                                                  f"connections (web_connections)\n")
        # no permessage-deflate: the messages are tens of bytes, and zlib on the hot path only costs time
        ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE, heartbeat=20.0, compress=False)
        await ws.prepare(request)
        ip = ip_of(request.remote)
        self.numbered += 1
        admin = ip is not None and any(ip in net for net in self.admin)  # as OSC: the admin networks
        conn = Connection(self, ws, str(ip) if ip is not None else "?", self.numbered, admin)
        self.connections[self.numbered] = conn
        writer = self.loop.create_task(conn.write())
        log.info("web: %s connected%s", conn.name, " (admin)" if admin else "")
        conn.put({"address": "/ensemble/welcome", "args": [self._welcome(conn)]})
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    self.message(conn, msg.data)
                elif msg.type == WSMsgType.BINARY:
                    self._error(conn, "?", "messages are JSON text, not binary")
                elif msg.type == WSMsgType.ERROR:  # too large, broken framing: aiohttp closes it
                    self._error(conn, "?", f"connection closed: {ws.exception()}")
        finally:
            del self.connections[conn.number]
            writer.cancel()
            self._left(conn)
        return ws

    def _welcome(self, conn: Connection) -> dict:
        """What the page needs to draw itself: the model's kind of event and its range."""
        codec = self.conductor.codec
        return {"connection": conn.name, "admin": conn.origin.admin, "model": self.conductor.checkpoint.name,
                "codec": codec.name, "kind": self.conductor.adapter.kind, "modes": list(MODES),
                "low_pitch": getattr(codec, "low_pitch", 0), "high_pitch": getattr(codec, "high_pitch", 127),
                "default_mode": self.cfg.default_mode}

    def _left(self, conn: Connection) -> None:
        """A closed page's performers leave: their notes end, their slots are freed."""
        for pid in conn.performers:
            p = self.conductor.performers.get(pid)
            if p is not None and p.owner == conn.origin.owner:
                try:
                    self.conductor.handle(Goodbye(pid), conn.origin)
                except (ControlError, EventError) as exc:
                    log.warning("web: goodbye %s: %s", pid, exc)
        log.info("web: %s left", conn.name)

    # -- messages in

    def message(self, conn: Connection, text: str) -> None:
        self.received += 1
        if not conn.limit.allow(0):
            self.rejected += 1
            self._error(conn, "?", f"too many messages: at most {self.cfg.web_rate:g} a second per connection")
            return
        address = "?"
        try:
            try:
                data = json.loads(text)
            except (ValueError, RecursionError) as exc:  # RecursionError: "[[[[..." nested thousands deep
                raise EventError(f"not JSON ({str(exc)[:100]})") from None
            if not isinstance(data, dict):
                raise EventError('a message is an object: {"address": "/ensemble/...", "args": [...]}')
            address = data.get("address")
            address = address if isinstance(address, str) else "?"
            args = check_arguments(data.get("address"), data.get("args", []))
            self._handle(conn, address, args)
        except (EventError, ControlError, ValueError) as exc:
            self._error(conn, address, str(exc))
        except Exception:  # a bug must cost one message, never the connection
            log.exception("web: internal error on %s from %s", address, conn.name)
            self._error(conn, address, "internal error (logged)")

    def _handle(self, conn: Connection, address: str, args: list) -> None:
        verb = address[len("/ensemble/"):]
        origin = conn.origin
        if address in PLAYED:
            if not self.performer_limit.allow(args[0]):
                self.rejected += 1
                raise ControlError(f"too many events for {args[0]!r}: at most {self.cfg.performer_rate:g} a second")
            self.conductor.handle(Play(args[0], verb, tuple(args[1:])), origin)
            self._flush_soon()
            return
        if verb == "hello":
            mode = args[1] if len(args) > 1 else None
            if mode is not None and mode not in MODES:
                raise ControlError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
            self.conductor.handle(Hello(args[0], conn.output, mode), origin)
            conn.performers.add(args[0])
        elif verb == "mode":
            self.conductor.handle(SetMode(args[0], args[1]), origin)
        elif verb == "set":
            self.conductor.handle(SetParam(args[0], args[1], args[2]), origin)
        elif verb == "reset":
            self.conductor.handle(Reset(args[0]), origin)
        elif verb == "goodbye":
            self.conductor.handle(Goodbye(args[0]), origin)
            conn.performers.discard(args[0])
        elif verb == "panic":
            self.conductor.handle(Panic(args[0] if args else None), origin)
        elif verb == "status":
            status = self.conductor.handle(StatusRequest(args[0] if args else None, addresses=origin.admin), origin)
            conn.put({"address": "/ensemble/status", "args": [status]})
        elif verb == "watch":
            if args:
                self.conductor.authorized(args[0], origin)  # cells: your own performer's (admins: anyone's)
            conn.watching, conn.cells_of = True, (args[0] if args else None)
            self.last_table = 0.0  # the new watcher gets the table with the next batch
            self._watch_soon()
        self._flush_soon()

    def _flush_soon(self) -> None:
        """Step once for everything that arrived in this loop iteration, from every browser:
        performers whose events arrive together are stepped as one batch."""
        if not self.flush_soon:
            self.flush_soon = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_soon = False
        self.conductor.flush()

    def _error(self, conn: Connection, address: str, reason: str) -> None:
        """One log line and one /ensemble/error to that browser, at a bounded rate per connection."""
        self.errors += 1
        if self.quiet.warning(conn.name, "%s from %s: %s", address, conn.name, reason):
            conn.put({"address": "/ensemble/error", "args": [address, reason]})

    # -- watching

    def _seen(self, direction, performer, kind, values, source, seq) -> None:
        """Every event in and out (from the tap): kept for the next watch batch, if anyone watches."""
        if not any(c.watching for c in self.connections.values()):
            return
        if len(self.feed) == self.feed.maxlen:
            self.feed_dropped += 1
        # encoded here, one row at a time, so that a batch is a join and not a burst of
        # encoding on the loop every 50 ms (80 rows took ~0.2 ms: that was the OSC p99 while watched)
        self.feed.append(_encode([round(time.monotonic() * 1000.0, 1), direction, performer, kind,
                                  [v if isinstance(v, (int, float, str)) else str(v) for v in values],
                                  seq, str(source).split(":", 1)[0]]))
        self._watch_soon()

    def _watch_soon(self) -> None:
        if self.watch_timer is None:
            self.watch_timer = self.loop.call_later(WATCH_INTERVAL, self._watch)

    def _watch(self) -> None:
        """One batch to every watcher: the events since the last, and now and then the performers."""
        self.watch_timer = None
        watchers = [c for c in self.connections.values() if c.watching]
        if not watchers:
            self.feed.clear()
            return
        batch = {"address": "/ensemble/watch", "now": round(time.monotonic() * 1000.0, 1),
                 "dropped": self.feed_dropped}
        events = ",".join(self.feed)  # rows already encoded by _seen
        self.feed.clear()
        now = time.monotonic()
        if now - self.last_table >= STATUS_EVERY:
            self.last_table = now
            batch["cpu"] = self._cpu_percent(now)
            batch["performers"] = [p.status() for p in self.conductor.performers.values()]
            for entry in batch["performers"]:
                entry.pop("output", None)
                entry["transport"] = self.conductor.performers[entry["id"]].output.name.split(":", 1)[0]
        text = (_encode(batch)[:-1] + ',"events":[' + events + "]}") if events or "performers" in batch else None
        cells: dict[str, str] = {}  # each watched performer's strip, read and encoded once for all its watchers
        for conn in watchers:
            if text is not None:
                conn.put_text(text)
            if conn.cells_of is not None:
                if conn.cells_of not in cells:
                    cells[conn.cells_of] = _encode({"address": "/ensemble/cells",
                                                    "args": [conn.cells_of, self._cells(conn.cells_of)]})
                conn.put_text(cells[conn.cells_of])
        self._watch_soon()  # the table and the cells stay fresh while anyone watches

    def _cpu_percent(self, now: float) -> float:
        """The server process's CPU time since the last table, in % of one core (all its
        threads: the loop, BLAS, MIDI), so a watcher sees how close to full the machine is."""
        then, cpu_then = self.cpu_mark
        cpu = time.process_time()
        self.cpu_mark = (now, cpu)
        return round(100.0 * (cpu - cpu_then) / max(now - then, 1e-6), 1)

    def _cells(self, performer: str):
        """The watched performer's LSTM cells (top layer, first CELLS), or None if there are none."""
        p = self.conductor.performers.get(performer)
        if p is None:
            return None
        state = self.conductor.engine.get_state(p.slot)
        cells = state.get("c", state.get("h")) if isinstance(state, dict) else None
        if cells is None:
            return None
        row = cells.reshape(-1, cells.shape[-1])[-1][:CELLS]
        return np.round(row.astype(np.float64), 3).tolist()  # float64 first, so 0.123 is written as 0.123

