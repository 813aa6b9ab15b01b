"""The Metatone transport: existing Metatone iPad apps join the Neural iPad Band unchanged.

Metatone apps (Martin's PhaseRings, Singing Harp, ...) find a "classifier" server by
Bonjour (`_osclogger._udp.`) and talk OSC over UDP to whatever port it advertises:

    /metatone/online s s          device id, app name
    /metatone/offline s [s]       device id (the apps add their app name)
    /metatone/touch s f f f       device id, x, y (pixels of a 1024 x 768 screen), velocity
    /metatone/touch/ended s       device id
    /metatone/switch s s s|T|F    device id, switch name, state ("T"/"F"; older apps: an OSC bool)

They listen on port 51200 of the device (`metatone_reply_port`; 0 answers to the port a
device sends from, which is what tests and simple clients use) for what a Metatone
classifier sends, and this transport sends all of it:

    /metatone/classifier/hello                         once, when a device comes online
    /metatone/classifier/gesture s s                   device id, gesture (n ft st fs fsa vss bs ss c), every tick
    /metatone/classifier/ensemble/state s f f          state, spread, ratio: every tick, to every device
    /metatone/classifier/ensemble/event/new_idea s f   "ensemble", measure 0..1: when the ensemble changes
    /metatone/playback/gesture s s                     device id, the gesture the band now plays on it
    /metatone/playback/touch s f f f                   device id, x, y (pixels), velocity (0: a tap)

`/metatone/playback/touch` is how a Metatone ensemble server plays touches on an app
(PhaseRings sounds a tap at x, y for velocity 0, a swirl otherwise); the band's touches
also go out as `/ensemble/touch s f f i` (x, y in 0..1, sequence number) to the device
and to `metatone_pd` (the Pd patch `ensemble-touch.pd`), messages no app sends, so a
reflected one cannot loop back into a performer. The ensemble state and new ideas are
computed by `ensemble.io.metatone_ensemble` from every device's recognised gesture and
the band's gesture for it.

This transport has its own socket, so the apps need no knowledge of `/ensemble/...`.
It turns online/offline into Hello/Goodbye, keeps each device's last few seconds of
touches, and once every `gesture_interval` seconds classifies every device's window
(`ensemble.classifier`, numpy only) and answers the gesture to the device. When the
conductor serves a gestures model (a Band), each recognised gesture is played into the
band as `Play(device, "gesture", (g,))` (with a touch model, every touch is played into
it instead, and its answers come back as touches); the band's predicted gesture for a
device comes back through that device's `MetatoneOutput`, and is performed as a stream
of touches over the next interval, scheduled on the loop (`call_at`, no threads): the
device's own recorded touches of that gesture when it has played one, else the
synthesiser's. With a session recording on, every touch heard is appended to a Metatone
touch log (`metatone-touches-*.csv`) and every tick's recognised gestures to a gesture
log (`metatone-gestures-*.csv`) in the recording folder; switches and new ideas go into
the session log. After a restart with `--restore`, each device is rebuilt from the
snapshot (its reply address and owner): it gets gestures at once and its touches are
heard from its own address, with no new online.

Hostile input costs one rate-limited log line and bounded work, as in `ensemble.io.osc`:
the datagram structure is checked before python-osc parses it, each device id belongs to
the address that first used it, a device's window of touches and its switches are
bounded, and devices the conductor has dropped are forgotten at the next tick.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import os
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ensemble.io.datagram import BadDatagram, parse
from ensemble.io.limits import Admission, QuietLog, RateLimiter, drain
from ensemble.io.metatone_ensemble import EnsembleFlow
from ensemble.io.osc import build, ip_of
from ensemble.messages import ControlError, EventError, Goodbye, Hello, Origin, Play

log = logging.getLogger("ensemble.metatone")

GESTURE_CODES = ("n", "ft", "st", "fs", "fsa", "vss", "bs", "ss", "c")
# what each address takes ("B": an OSC true/false); the apps' own variants are all accepted
SIGNATURES = {
    "/metatone/online": ("ss",),
    "/metatone/offline": ("s", "ss"),
    "/metatone/touch": ("sfff",),
    "/metatone/touch/ended": ("s",),
    "/metatone/switch": ("sss", "ssB"),
}
SERVICE_TYPE = "_osclogger._udp.local."
ENSEMBLE_NAME = "ensemble"  # the sender named in new-idea events (the classifier's own name)
MAX_WINDOW_POINTS = 1024   # touches kept per device (a finger at 120 Hz for 8 s)
MAX_PLAYED_POINTS = 240    # touches the band plays to one device in one interval
MAX_SWITCHES = 32          # switch names remembered per device
MAX_NAME = 64              # characters of a switch name or state kept
NEW_TOUCH_GAP = 0.15       # s: a touch model's answer this long after the last one starts a new touch
WIDTH, HEIGHT = 1024.0, 768.0
SWITCH_ON = {"t": True, "true": True, "on": True, "1": True, "yes": True,
             "f": False, "false": False, "off": False, "0": False, "no": False}


def _matches(arg, t: str) -> bool:
    if t == "s":
        return isinstance(arg, str) and arg != ""
    if t == "B":
        return isinstance(arg, bool)
    return isinstance(arg, (int, float)) and not isinstance(arg, bool) and np.isfinite(arg)


def switch_state(value) -> bool | str:
    """A switch's position: True/False where the app's word says so ("T"/"F", an OSC bool,
    on/off, 1/0 ...), else the word itself (cut short)."""
    if isinstance(value, bool):
        return value
    return SWITCH_ON.get(value.strip().lower(), value[:MAX_NAME])


@dataclass
class Device:
    id: str
    reply: tuple          # (host, port) its answers go to
    origin: Origin
    app: str = "?"
    touches: deque = field(default_factory=lambda: deque(maxlen=MAX_WINDOW_POINTS))  # (t, x, y, down)
    ended: bool = True    # the next touch is a touch-down
    gesture: int = 0      # the last recognised gesture
    library: dict = field(default_factory=dict)  # gesture -> [(t from start, x, y, velocity)] of its own playing
    playing: list = field(default_factory=list)  # scheduled touch handles
    band_gesture: int | None = None  # what the band plays on this device now
    band_at: float = -math.inf       # when the band last gave it a gesture (loop time)
    last_out: tuple | None = None    # (loop time, x, y) of the last touch sent to it
    switches: dict = field(default_factory=dict)  # switch name -> True/False (or the app's word)
    seq: int = 0
    touches_in: int = 0
    touches_out: int = 0
    restored: bool = False


class MetatoneOutput:
    """A device's predictions: the band's gesture for it, performed as touches."""

    def __init__(self, server: "MetatoneServer", device: str):
        self.server, self.device = server, device
        self.name = f"metatone:{device}"

    def send(self, performer: str, kind: str, values: tuple, seq: int) -> None:
        if kind == "gesture":
            self.server.perform(self.device, int(values[0]))
        elif kind == "touch":  # a touch model's prediction: one touch, at once
            self.server.answer_touch(self.device, float(values[0]) * WIDTH, float(values[1]) * HEIGHT)

    def describe(self) -> dict:
        """Enough to rebuild the device after a restart: where its answers go, who owns it."""
        out = {"type": "metatone", "device": self.device, "name": self.name}
        d = self.server.devices.get(self.device)
        if d is not None:
            out.update(reply=[d.reply[0], d.reply[1]], owner=d.origin.owner, app=d.app)
        return out


class MetatoneLog:
    """The Metatone log formats, written as the server hears them: a touch log
    (time,device_id,x_pos,y_pos,velocity; velocity 0 marks a touch-down) and a gesture log
    (time,<device>...: the recognised gesture of each device, one row a tick; a new file
    whenever the devices change). Opened at the first line, flushed every 0.1 s while
    anything is unwritten, rotated at `rotate_bytes`; a write error stops it with one line."""

    def __init__(self, folder, loop, flush_interval: float = 0.1, rotate_bytes: int = 64 * 2**20):
        self.folder, self.loop = Path(folder), loop
        self.flush_interval, self.rotate_bytes = flush_interval, rotate_bytes
        self.touch_file = self.gesture_file = None
        self.touch_path: Path | None = None
        self.gesture_path: Path | None = None
        self.gesture_columns: tuple = ()
        self.parts = 0
        self.touch_rows = self.gesture_rows = 0
        self.failed = False
        self._timer = None
        self.wall_offset = time.time() - loop.time()  # loop time -> wall clock

    def _open(self, kind: str, header: list):
        self.folder.mkdir(parents=True, exist_ok=True)
        self.parts += 1
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        path = self.folder / f"metatone-{kind}-{stamp}-{os.getpid()}-{self.parts}.csv"
        f = open(path, "w", encoding="utf-8", newline="", buffering=1 << 16)
        f.write(",".join(header) + "\n")
        return path, f

    def _iso(self, t: float) -> str:
        return datetime.fromtimestamp(self.wall_offset + t, timezone.utc).isoformat(timespec="microseconds")

    def _guard(self, write) -> None:
        if self.failed:
            return
        try:
            write()
        except OSError as exc:
            self.failed = True
            log.error("metatone: touch/gesture log stopped: %s", exc)
            return
        if self._timer is None:
            self._timer = self.loop.call_later(self.flush_interval, self.flush)

    def touch(self, t: float, device: str, x: float, y: float, velocity: float) -> None:
        def write():
            if self.touch_file is None or self.touch_file.tell() > self.rotate_bytes:
                if self.touch_file is not None:
                    self.touch_file.close()
                self.touch_path, self.touch_file = self._open("touches", ["time", "device_id", "x_pos", "y_pos", "velocity"])
            self.touch_file.write(f"{self._iso(t)},{_cell(device)},{x:.1f},{y:.1f},{velocity:.2f}\n")
            self.touch_rows += 1
        self._guard(write)

    def gestures(self, t: float, row: dict) -> None:
        if not row:
            return

        def write():
            columns = tuple(row)
            if self.gesture_file is None or columns != self.gesture_columns or self.gesture_file.tell() > self.rotate_bytes:
                if self.gesture_file is not None:
                    self.gesture_file.close()
                self.gesture_columns = columns
                self.gesture_path, self.gesture_file = self._open("gestures", ["time", *(_cell(c) for c in columns)])
            self.gesture_file.write(self._iso(t) + "," + ",".join(str(int(row[c])) for c in columns) + "\n")
            self.gesture_rows += 1
        self._guard(write)

    def flush(self) -> None:
        self._timer = None
        for f in (self.touch_file, self.gesture_file):
            if f is not None and not self.failed:
                try:
                    f.flush()
                except OSError as exc:
                    self.failed = True
                    log.error("metatone: touch/gesture log stopped: %s", exc)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.flush()
        for f in (self.touch_file, self.gesture_file):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass
        self.touch_file = self.gesture_file = None

    def status(self) -> dict:
        return {"touches": str(self.touch_path) if self.touch_path else None, "touch_rows": self.touch_rows,
                "gestures": str(self.gesture_path) if self.gesture_path else None, "gesture_rows": self.gesture_rows,
                "failed": self.failed}


class MetatoneServer:
    name = "metatone"

    def __init__(self, conductor, cfg, classifier=None):
        self.conductor, self.cfg, self.loop = conductor, cfg, conductor.loop
        self.host, self.port = cfg.host, cfg.metatone
        self.reply_port = cfg.metatone_reply_port
        self.interval = cfg.gesture_interval
        self.admin = [ipaddress.ip_network(n, strict=False) for n in cfg.admin]
        try:
            self.loopback = ipaddress.ip_address(cfg.host).is_loopback
        except ValueError:
            self.loopback = cfg.host == "localhost"
        self.pd = _host_port(cfg.metatone_pd) if cfg.metatone_pd else None
        if classifier is None:
            from ensemble.classifier import GestureClassifier

            classifier = GestureClassifier.load(cfg.metatone_classifier)
        self.classifier = classifier
        self.devices: dict[str, Device] = {}
        self.sock: socket.socket | None = None
        self.timer = None
        self.zeroconf = None
        self.bonjour = "off"
        self.bonjour_mode = getattr(cfg, "metatone_bonjour", "auto")
        self.device_limit = RateLimiter(cfg.performer_rate)
        self.quiet = QuietLog(log, cfg.error_rate, burst=2 * cfg.error_rate)
        self.admission = Admission(cfg.allow, cfg.rate_limit, self.loopback, self.quiet, what="metatone: ")
        self.received = self.rejected = self.malformed = self.ignored = self.errors = 0
        self.classified = self.switches = self.restored = 0
        self.tick_ms: deque = deque(maxlen=64)
        self.rng = np.random.default_rng(cfg.seed)
        # the ensemble's state and new ideas: over 15 s of ticks, as the Metatone classifier did
        self.flow = EnsembleFlow(window=max(2, round(15.0 / self.interval)))
        self.records = MetatoneLog(cfg.record, self.loop) if cfg.record else None
        conductor.attach(self)

    # -- life

    def start(self) -> tuple[str, int]:
        family, _, _, _, address = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)[0]
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind(address)
        sock.setblocking(False)
        self.sock = sock
        self.loop.add_reader(sock.fileno(), self._readable)
        self.port = sock.getsockname()[1]
        self.timer = self.loop.call_later(self.interval, self.tick)
        self._advertise()
        return sock.getsockname()[:2]

    def _advertise(self) -> None:
        """Bonjour, so the apps find us: only with the optional `zeroconf` package. "auto":
        when bound beyond loopback (nobody on the network could reach a loopback port);
        "on": also on loopback (an iOS simulator on this machine, a test); "off": never."""
        if self.bonjour_mode == "off" or (self.bonjour_mode == "auto" and self.loopback):
            self.bonjour = "off"
            return
        try:
            from zeroconf import IPVersion, ServiceInfo, Zeroconf
        except ImportError:
            self.bonjour = "not installed"
            log.info("metatone: python-zeroconf not installed (pip install 'ensemble[zeroconf]'): not advertised "
                     "by Bonjour; point the apps at port %d by hand", self.port)
            return
        try:
            addresses = [socket.inet_aton(ip) for ip in _local_ipv4(self.host)]
            host = socket.gethostname().split(".")[0] or "ensemble"
            info = ServiceInfo(SERVICE_TYPE, f"{ENSEMBLE_NAME}-{host}.{SERVICE_TYPE}", port=self.port,
                               addresses=addresses, server=f"{host}.local.",
                               properties={"app": "ensemble", "protocol": "metatone"})
            zc = Zeroconf(ip_version=IPVersion.V4Only, use_asyncio=False)  # its own thread: never on our loop
        except Exception as exc:  # no multicast on this network, ...: serve anyway
            self.bonjour = f"failed: {exc}"
            log.warning("metatone: Bonjour advertisement failed (%s); point the apps at port %d by hand", exc, self.port)
            return
        self.zeroconf = (zc, info)
        self.bonjour = "advertising"
        # probing the network for a clash of names takes ~2 s: off the loop, the result logged on it
        future = self.loop.run_in_executor(None, lambda: zc.register_service(info, allow_name_change=True))
        future.add_done_callback(self._advertised)

    def _advertised(self, future) -> None:
        if self.zeroconf is None:
            return  # closed meanwhile
        exc = future.exception() if not future.cancelled() else None
        if exc is not None or future.cancelled():
            self.bonjour = f"failed: {exc}"
            log.warning("metatone: Bonjour advertisement failed (%s); point the apps at port %d by hand", exc, self.port)
            return
        self.bonjour = f"advertised as {self.zeroconf[1].name}"
        log.info("metatone: advertised %s as %r on port %d", SERVICE_TYPE, self.zeroconf[1].name, self.port)

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        for d in self.devices.values():
            self._stop_playing(d)
        if self.sock is not None:
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None
        if self.records is not None:
            self.records.close()
        if self.zeroconf is not None:
            zc, info = self.zeroconf
            self.zeroconf = None
            try:
                zc.unregister_service(info)  # goodbye packets, so the apps forget us now
            except Exception as exc:
                log.debug("zeroconf unregister: %s", exc)
            try:
                zc.close()
            except Exception as exc:
                log.debug("zeroconf close: %s", exc)

    def status(self) -> dict:
        shown = list(self.devices.values())[:16]
        return {"port": self.port, "devices": len(self.devices), "received": self.received,
                "rejected": self.rejected, "malformed": self.malformed, "ignored": self.ignored,
                "errors": self.errors, "classified": self.classified, "switches": self.switches,
                "restored": self.restored, "bonjour": self.bonjour,
                "tick_ms_max": round(max(self.tick_ms), 3) if self.tick_ms else None,
                "gestures": {d.id: GESTURE_CODES[d.gesture] for d in shown},
                "band_gestures": {d.id: GESTURE_CODES[d.band_gesture] for d in shown if d.band_gesture is not None},
                "switch_states": {d.id: dict(d.switches) for d in shown if d.switches},
                "ensemble": self.flow.status(),
                "logs": self.records.status() if self.records is not None else None}

    def output_from(self, description: dict):
        """A restored performer's output. With the reply address and owner the snapshot
        kept, its device is rebuilt at once: gestures go to it from the next tick, and its
        touches are heard from its own address without a new online."""
        if description.get("type") != "metatone":
            return None
        device_id = str(description["device"])
        reply, owner = description.get("reply"), description.get("owner")
        try:
            host, port = str(reply[0]), int(reply[1])
            ip = ip_of(host)
            if owner != host or not 0 < port < 65536 or (ip.is_loopback and port == self.port):
                raise ValueError
            if not self.loopback and not self.admission.allowed(ip):
                raise ValueError
        except (TypeError, ValueError, IndexError, KeyError):
            log.info("metatone: %s restored without a usable reply address; it is answered when it next speaks", device_id)
            return MetatoneOutput(self, device_id)
        if device_id not in self.devices:
            origin = Origin(f"metatone:{host}:restored", host, admin=ip.is_loopback or any(ip in n for n in self.admin))
            self.devices[device_id] = Device(device_id, (host, port), origin, app=str(description.get("app", "?"))[:MAX_NAME],
                                             restored=True)
            self.restored += 1
            log.info("metatone: %s restored, answers to %s:%d", device_id, host, port)
        return MetatoneOutput(self, device_id)

    # -- in

    def _readable(self) -> None:
        try:
            drain(self.sock, self.datagram, log)
        finally:
            self.conductor.flush()

    def _complain(self, addr, text: str, *args) -> None:
        self.errors += 1
        self.quiet.warning(f"{addr[0]}:{addr[1]}", "metatone: " + text + " (from %s:%s)", *args, addr[0], addr[1])

    def _admitted(self, addr) -> bool:
        ip = ip_of(addr[0])
        if addr[1] == self.port and (ip.is_loopback or ip.is_unspecified):
            self.ignored += 1  # our own port: never a conversation
            return False
        if not self.admission.heard(ip, addr):
            self.rejected += 1
            return False
        return True

    def datagram(self, data: bytes, addr) -> None:
        self.received += 1
        if not self._admitted(addr):
            return
        try:
            messages = parse(data)
        except BadDatagram as exc:
            self.malformed += 1
            self._complain(addr, "malformed OSC packet (%s)", exc)
            return
        for address, args in messages:
            try:
                self.message(address, args, addr)
            except (EventError, ControlError, ValueError) as exc:
                self._complain(addr, "%s: %s", address, exc)

    def message(self, address: str, args: list, addr) -> None:
        sigs = SIGNATURES.get(address)
        if sigs is None:  # the apps send more than we use (/metatone/app, /metatone/acceleration ...)
            self.ignored += 1
            return
        if not any(len(args) == len(sig) and all(_matches(a, t) for a, t in zip(args, sig)) for sig in sigs):
            got = " ".join(type(a).__name__ for a in args) or "nothing"
            raise EventError(f"takes {' or '.join(repr(' '.join(sig)) for sig in sigs)}, got {got}")
        device_id = args[0]
        if not self.loopback and not self.device_limit.allow(device_id):
            self.rejected += 1
            return
        if address == "/metatone/online":
            self.online(device_id, args[1], addr)
        elif address == "/metatone/offline":
            self.offline(device_id, addr)
        elif address == "/metatone/touch":
            self.touch(device_id, float(args[1]), float(args[2]), float(args[3]), addr)
        elif address == "/metatone/touch/ended":
            d = self._own(device_id, addr)
            if d is not None:
                d.ended = True
        else:
            self.switch(device_id, args[1], args[2], addr)

    def _origin(self, addr) -> Origin:
        ip = ip_of(addr[0])
        return Origin(f"metatone:{addr[0]}:{addr[1]}", addr[0], admin=ip.is_loopback or any(ip in n for n in self.admin))

    def online(self, device_id: str, app: str, addr) -> Device:
        d = self.devices.get(device_id)
        if d is not None and d.origin.owner != addr[0]:
            raise ControlError(f"device {device_id!r} is played from another address")
        reply = (addr[0], self.reply_port or addr[1])
        if reply[1] == self.port and ip_of(addr[0]).is_loopback:
            raise ControlError("the reply port is this server's own port")
        origin = self._origin(addr)
        self.conductor.handle(Hello(device_id, MetatoneOutput(self, device_id)), origin)  # raises if refused
        if d is None:
            d = self.devices[device_id] = Device(device_id, reply, origin, app=app[:MAX_NAME])
            log.info("metatone: %s online (%s) from %s, answers to %s:%d", device_id, app, addr[0], *reply)
        else:
            d.reply, d.origin, d.restored = reply, origin, False
            if app != "?":
                d.app = app[:MAX_NAME]
        if app != "?":  # a real online (not a first touch after a restart): the classifier's handshake
            self._send(d.reply, "/metatone/classifier/hello", [])
        return d

    def _own(self, device_id: str, addr) -> Device | None:
        d = self.devices.get(device_id)
        if d is None:
            return None
        if d.origin.owner != addr[0]:
            raise ControlError(f"device {device_id!r} belongs to another address")
        return d

    def offline(self, device_id: str, addr) -> None:
        d = self._own(device_id, addr)
        if d is None:
            return
        self._stop_playing(d)
        del self.devices[device_id]
        if device_id in self.conductor.performers:
            self.conductor.handle(Goodbye(device_id), d.origin)
        log.info("metatone: %s offline", device_id)

    def touch(self, device_id: str, x: float, y: float, velocity: float, addr) -> None:
        """One touch point; a device that never said online (the server restarted under a
        playing band) joins with its first touch."""
        d = self._own(device_id, addr)
        if d is None or device_id not in self.conductor.performers:  # new, or dropped as idle
            d = self.online(device_id, "?", addr)
        elif d.restored:  # its first word since the restart: the address it really plays from
            d.origin, d.restored = self._origin(addr), False
        now = self.loop.time()
        x, y = min(max(x, 0.0), WIDTH), min(max(y, 0.0), HEIGHT)
        down = d.ended or velocity <= 0.0
        d.touches.append((now, x, y, down))
        d.ended = False
        d.touches_in += 1
        if self.records is not None:
            self.records.touch(now, device_id, x, y, 0.0 if down else min(velocity, 1e6))
        p = self.conductor.performers.get(device_id)
        if p is not None:
            p.last_heard = now
            if self.conductor.band is None and self.conductor.adapter.kind == "touch":
                # a touch model: every touch is its input, and its answers come back as touches
                self.conductor.handle(Play(device_id, "touch", (x / WIDTH, y / HEIGHT)), d.origin)

    def switch(self, device_id: str, name: str, state, addr) -> None:
        """An app's switch (PhaseRings has none; others turn their own sound layers on and
        off with them, e.g. "clustersOn", "fieldsOn"): recorded in the session log with the
        device's other events, and shown in status. Nothing is steered by it: what a switch
        means is the app's own."""
        d = self._own(device_id, addr)
        if d is None:
            d = self.online(device_id, "?", addr)
        name = name[:MAX_NAME]
        if name not in d.switches and len(d.switches) >= MAX_SWITCHES:
            raise ControlError(f"more than {MAX_SWITCHES} switch names from one device")
        d.switches[name] = value = switch_state(state)
        self.switches += 1
        p = self.conductor.performers.get(device_id)
        if p is not None:
            p.last_heard = self.loop.time()
        self.conductor.record("in", device_id, "switch", (name, value), d.origin.source)

    # -- once a second: classify, answer, play into the band

    def tick(self) -> None:
        self.timer = self.loop.call_later(self.interval, self.tick)
        started = time.perf_counter()
        try:
            self.classify_all()
        except Exception:  # a bug must not stop the clock
            log.exception("metatone: classifying")
        self.tick_ms.append((time.perf_counter() - started) * 1000.0)  # what one tick holds the loop

    def classify_all(self) -> None:
        now = self.loop.time()
        window = self.classifier.window
        band = self.conductor.band
        performers = self.conductor.performers
        for gone in [i for i in self.devices if i not in performers]:  # dropped as idle, said goodbye elsewhere
            self._stop_playing(self.devices.pop(gone))
            log.info("metatone: %s forgotten (no longer a performer)", gone)
        devices = list(self.devices.values())
        for d in devices:
            while d.touches and d.touches[0][0] <= now - window:
                d.touches.popleft()
        gestures = self.classifier.classify_many([d.touches for d in devices], now) if devices else []
        voices = {}
        for d, g in zip(devices, gestures):
            d.gesture = g
            self.classified += 1
            voices[d.id] = g
            if d.band_gesture is not None and now - d.band_at <= 2.5 * self.interval:
                voices[d.id + "/band"] = d.band_gesture  # what the band plays on it sounds too
            if g and d.touches:  # remember how this performer plays g, to play it back to them
                d.library[g] = _with_velocity(d.touches)
            self._send(d.reply, "/metatone/classifier/gesture", [d.id, GESTURE_CODES[g]])
            if band is not None and d.id in performers:
                try:
                    self.conductor.handle(Play(d.id, "gesture", (g,)), d.origin)
                except (EventError, ControlError) as exc:
                    log.debug("metatone: %s not played into the band: %s", d.id, exc)
        if self.records is not None and devices:
            self.records.gestures(now, {d.id: d.gesture for d in devices})
        self.conductor.flush()
        self.ensemble(voices)

    def ensemble(self, voices: dict) -> None:
        """The ensemble-level messages: the state every tick, a new idea when one starts."""
        if not voices:
            return
        self.flow.add(voices)
        state = self.flow.state()
        idea = self.flow.new_idea()
        targets = [d.reply for d in self.devices.values()]
        if state is not None:
            for reply in targets:
                self._send(reply, "/metatone/classifier/ensemble/state", [state[0], float(state[1]), float(state[2])])
        if idea is not None:
            log.info("metatone: new idea (the ensemble's changes rose by %.2f)", idea)
            self.conductor.record("out", "*", "new_idea", (round(idea, 4),), self.name)
            for reply in targets:
                self._send(reply, "/metatone/classifier/ensemble/event/new_idea", [ENSEMBLE_NAME, float(idea)])

    # -- out: the band's gestures, performed as touches

    def perform(self, device_id: str, gesture: int) -> None:
        """Play `gesture` to the device over the next interval: its own touches of that
        gesture when it has played one, else synthetic ones."""
        d = self.devices.get(device_id)
        if d is None:
            return
        self._stop_playing(d)
        d.band_gesture, d.band_at = gesture, self.loop.time()
        self._send(d.reply, "/metatone/playback/gesture", [device_id, GESTURE_CODES[gesture]])
        points = self._points(d, gesture)[:MAX_PLAYED_POINTS]
        start = self.loop.time()
        for t, x, y, v in points:
            d.playing.append(self.loop.call_at(start + t, self.send_touch, device_id, x, y, v))

    def _points(self, d: Device, gesture: int) -> list[tuple[float, float, float, float]]:
        if gesture == 0:
            return []
        own = d.library.get(gesture)
        if own:
            span = own[-1][0]
            begin = float(self.rng.uniform(0.0, max(0.0, span - self.interval)))
            picked = [(t - begin, x, y, v) for t, x, y, v in own if begin <= t < begin + self.interval]
            if picked and picked[0][3] > 0.0:  # cut into the middle of a stroke: it starts as a touch-down here
                picked[0] = (*picked[0][:3], 0.0)
            return picked
        from ensemble.touch_synth import Player, _Stream, play

        s = _Stream(Player.random(self.rng), self.rng)
        play(gesture, 0.0, self.interval, s)
        return [(t, x, y, v) for t, x, y, v in s.points if t < self.interval]

    def _stop_playing(self, d: Device) -> None:
        for h in d.playing:
            h.cancel()
        d.playing.clear()

    def answer_touch(self, device_id: str, x: float, y: float) -> None:
        """A touch model's answer (pixels): a touch-down unless it follows the last answer closely."""
        d = self.devices.get(device_id)
        if d is None:
            return
        now = self.loop.time()
        last = d.last_out
        v = 0.0 if last is None or now - last[0] > NEW_TOUCH_GAP else max(0.01, math.hypot(x - last[1], y - last[2]))
        self.send_touch(device_id, x, y, v)

    def send_touch(self, device_id: str, x: float, y: float, velocity: float) -> None:
        """One of the band's touches (pixels; velocity 0 starts a touch): played on the app
        (/metatone/playback/touch) and sent as /ensemble/touch (0..1) to it and to Pd."""
        d = self.devices.get(device_id)
        if d is None:
            return
        x, y = min(max(x, 0.0), WIDTH), min(max(y, 0.0), HEIGHT)
        d.seq += 1
        d.touches_out += 1
        d.last_out = (self.loop.time(), x, y)
        self._send(d.reply, "/metatone/playback/touch", [device_id, float(x), float(y), float(velocity)])
        args = [device_id, x / WIDTH, y / HEIGHT, d.seq]
        self._send(d.reply, "/ensemble/touch", args)
        if self.pd is not None:
            self._send(self.pd, "/ensemble/touch", args)

    def _send(self, target: tuple, address: str, args: list) -> None:
        if self.sock is None or (target[1] == self.port and ip_of(target[0]).is_loopback):
            return
        try:
            self.sock.sendto(build(address, args), target)
        except OSError as exc:  # a full buffer or an unreachable device: drop, never block
            log.debug("metatone: could not send %s to %s: %s", address, target, exc)


def _with_velocity(touches) -> list[tuple[float, float, float, float]]:
    """A window of (t, x, y, down) as (t from its start, x, y, velocity): velocity 0 at a
    touch-down, else the distance from the previous point (how the apps measure it)."""
    t0 = touches[0][0]
    out, last = [], None
    for t, x, y, down in touches:
        v = 0.0 if down or last is None else max(0.01, math.hypot(x - last[0], y - last[1]))
        out.append((t - t0, x, y, v))
        last = (x, y)
    return out


def _cell(text: str) -> str:
    """A device id as one plain CSV field (ids are printable; commas and quotes would split or quote it)."""
    return text.replace(",", "_").replace('"', "_")


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = str(text).rpartition(":")
    try:
        return (host or "127.0.0.1", int(port))
    except ValueError:
        raise ValueError(f"metatone_pd must be HOST:PORT, got {text!r}") from None


def _local_ipv4(host: str) -> list[str]:
    if host == "localhost":
        return ["127.0.0.1"]
    if host not in ("0.0.0.0", "", "::"):
        return [host]
    found = set()
    try:
        found.update(i[4][0] for i in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET))
    except OSError:
        pass
    return sorted(ip for ip in found if not ip.startswith("127.")) or ["127.0.0.1"]
