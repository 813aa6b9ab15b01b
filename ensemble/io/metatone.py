"""The Metatone transport: existing Metatone iPad apps join the Neural iPad Band unchanged.

Metatone apps (Martin's PhaseRings, Singing Harp, ...) find a "classifier" server by
Bonjour (`_osclogger._udp.`) and talk OSC over UDP to whatever port it advertises:

    /metatone/online s s          device id, app name
    /metatone/offline s           device id
    /metatone/touch s f f f       device id, x, y (pixels of a 1024 x 768 screen), velocity
    /metatone/touch/ended s       device id
    /metatone/switch s s s        device id, switch name, state

and listen for `/metatone/classifier/gesture s s` (device id, gesture name: one of
`n ft st fs fsa vss bs ss c`) on port 51200 of the device (`metatone_reply_port`; 0
answers to the port a device sends from, which is what tests and simple clients use).

This transport has its own socket, so the apps need no knowledge of `/ensemble/...`.
It turns online/offline into Hello/Goodbye, keeps each device's last few seconds of
touches, and once every `gesture_interval` seconds classifies every device's window
(`ensemble.classifier`, numpy only) and answers the gesture to the device. When the
conductor serves a gestures model (a Band), each recognised gesture is played into the
band as `Play(device, "gesture", (g,))` (with a touch model, every touch is played into
it instead, and its answers come back as touches); the band's predicted gesture for a device comes
back through that device's `MetatoneOutput`, and is performed as a stream of touches
over the next interval, scheduled on the loop (`call_at`, no threads): the device's own
recorded touches of that gesture when it has played one, else the synthesiser's. Those
touches go to the device and to `metatone_pd` (the Pd patch `ensemble-touch.pd`) as
`/ensemble/touch s f f i` (device id, x 0..1, y 0..1, sequence number): a message
Metatone apps never send, so a reflected one cannot loop back into a performer.

Hostile input costs one rate-limited log line and bounded work, as in `ensemble.io.osc`:
the datagram structure is checked before python-osc parses it, each device id belongs to
the address that first used it, and a device's window of touches is bounded.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from ensemble.io.datagram import BadDatagram, parse
from ensemble.io.limits import Admission, QuietLog, RateLimiter
from ensemble.io.osc import build, ip_of
from ensemble.messages import ControlError, EventError, Goodbye, Hello, Origin, Play

log = logging.getLogger("ensemble.metatone")

GESTURE_CODES = ("n", "ft", "st", "fs", "fsa", "vss", "bs", "ss", "c")
SIGNATURES = {
    "/metatone/online": "ss",
    "/metatone/offline": "s",
    "/metatone/touch": "sfff",
    "/metatone/touch/ended": "s",
    "/metatone/switch": "sss",
}
SERVICE_TYPE = "_osclogger._udp.local."
MAX_DATAGRAMS_PER_READ = 256
MAX_WINDOW_POINTS = 1024   # touches kept per device (a finger at 120 Hz for 8 s)
MAX_PLAYED_POINTS = 240    # touches the band plays to one device in one interval
WIDTH, HEIGHT = 1024.0, 768.0


def _matches(arg, t: str) -> bool:
    if t == "s":
        return isinstance(arg, str) and arg != ""
    return isinstance(arg, (int, float)) and not isinstance(arg, bool) and np.isfinite(arg)


@dataclass
class Device:
    id: str
    reply: tuple          # (host, port) its answers go to
    origin: Origin
    touches: deque = field(default_factory=lambda: deque(maxlen=MAX_WINDOW_POINTS))  # (t, x, y, down)
    ended: bool = True    # the next touch is a touch-down
    gesture: int = 0      # the last recognised gesture
    library: dict = field(default_factory=dict)  # gesture -> [(t from start, x, y)] of its own playing
    playing: list = field(default_factory=list)  # scheduled touch handles
    seq: int = 0
    touches_in: int = 0
    touches_out: int = 0


class MetatoneOutput:
    """A device's predictions: the band's gesture for it, performed as touches."""

    def __init__(self, server: "MetatoneServer", device: str):
        self.server, self.device = server, device
        self.name = f"metatone:{device}"

    def send(self, performer: str, kind: str, values: tuple, seq: int) -> None:
        if kind == "gesture":
            self.server.perform(self.device, int(values[0]))
        elif kind == "touch":  # a touch model's prediction: one touch, at once
            self.server.send_touch(self.device, float(values[0]), float(values[1]))

    def describe(self) -> dict:
        return {"type": "metatone", "device": self.device, "name": self.name}


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
        self.device_limit = RateLimiter(cfg.performer_rate)
        self.quiet = QuietLog(log, cfg.error_rate, burst=2 * cfg.error_rate)
        self.admission = Admission(cfg.allow, cfg.rate_limit, self.loopback, self.quiet, what="metatone: ")
        self.received = self.rejected = self.malformed = self.ignored = self.errors = 0
        self.classified = 0
        self.tick_ms: deque = deque(maxlen=64)
        self.rng = np.random.default_rng(cfg.seed)
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
        """Bonjour, so the apps find us: only with the optional `zeroconf` package, and only
        when bound beyond loopback (nobody on the network could reach a loopback port)."""
        if self.loopback:
            return
        try:
            from zeroconf import ServiceInfo, Zeroconf
        except ImportError:
            log.info("metatone: python-zeroconf not installed (pip install 'ensemble[zeroconf]'): not advertised "
                     "by Bonjour; point the apps at port %d by hand", self.port)
            return
        try:
            addresses = [socket.inet_aton(ip) for ip in _local_ipv4(self.host)]
            info = ServiceInfo(SERVICE_TYPE, f"ensemble.{SERVICE_TYPE}", port=self.port, addresses=addresses,
                               server=f"{socket.gethostname()}.local.")
            zc = Zeroconf()
            self.loop.run_in_executor(None, zc.register_service, info)  # it probes the network: off the loop
            self.zeroconf = (zc, info)
            log.info("metatone: advertised %s on port %d", SERVICE_TYPE, self.port)
        except Exception as exc:  # no multicast on this network, ...: serve anyway
            log.warning("metatone: Bonjour advertisement failed (%s); point the apps at port %d by hand", exc, self.port)

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        for d in self.devices.values():
            self._stop_playing(d)
        if self.sock is not None:
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None
        if self.zeroconf is not None:
            zc, info = self.zeroconf
            try:
                zc.unregister_service(info)
                zc.close()
            except Exception as exc:
                log.debug("zeroconf close: %s", exc)
            self.zeroconf = None

    def status(self) -> dict:
        return {"port": self.port, "devices": len(self.devices), "received": self.received,
                "rejected": self.rejected, "malformed": self.malformed, "ignored": self.ignored,
                "errors": self.errors, "classified": self.classified,
                "tick_ms_max": round(max(self.tick_ms), 3) if self.tick_ms else None,
                "gestures": {d.id: GESTURE_CODES[d.gesture] for d in list(self.devices.values())[:16]}}

    def output_from(self, description: dict):
        """A restored performer's output; its device comes back when it next says anything."""
        if description.get("type") != "metatone":
            return None
        return MetatoneOutput(self, str(description["device"]))

    # -- in

    def _readable(self) -> None:
        try:
            for _ in range(MAX_DATAGRAMS_PER_READ):
                try:
                    data, addr = self.sock.recvfrom(65536)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:
                    log.debug("recvfrom: %s", exc)
                    continue
                try:
                    self.datagram(data, addr)
                except Exception:  # a bug costs one datagram, never the server
                    log.exception("metatone: internal error on a datagram from %s:%s", addr[0], addr[1])
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
        sig = SIGNATURES.get(address)
        if sig is None:  # the apps send more than we use (/metatone/app, /metatone/acceleration ...)
            self.ignored += 1
            return
        if len(args) != len(sig) or not all(_matches(a, t) for a, t in zip(args, sig)):
            got = " ".join(type(a).__name__ for a in args) or "nothing"
            raise EventError(f"takes {' '.join(sig)!r}, got {got}")
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
        else:  # /metatone/switch: recorded by the conductor's log only through its effects; nothing to do
            self._own(device_id, addr)

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
            d = self.devices[device_id] = Device(device_id, reply, origin)
            log.info("metatone: %s online (%s) from %s, answers to %s:%d", device_id, app, addr[0], *reply)
        else:
            d.reply, d.origin = reply, origin
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
        now = self.loop.time()
        d.touches.append((now, min(max(x, 0.0), WIDTH), min(max(y, 0.0), HEIGHT), d.ended or velocity == 0.0))
        d.ended = False
        d.touches_in += 1
        p = self.conductor.performers.get(device_id)
        if p is not None:
            p.last_heard = now
            if self.conductor.band is None and self.conductor.adapter.kind == "touch":
                # a touch model: every touch is its input, and its answers come back as touches
                self.conductor.handle(Play(device_id, "touch", (d.touches[-1][1] / WIDTH, d.touches[-1][2] / HEIGHT)),
                                      d.origin)

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
        devices = list(self.devices.values())
        for d in devices:
            while d.touches and d.touches[0][0] <= now - window:
                d.touches.popleft()
        gestures = self.classifier.classify_many([d.touches for d in devices], now) if devices else []
        for d, g in zip(devices, gestures):
            d.gesture = g
            self.classified += 1
            if g and d.touches:  # remember how this performer plays g, to play it back to them
                t0 = d.touches[0][0]
                d.library[g] = [(t - t0, x, y) for t, x, y, _ in d.touches]
            self._send(d.reply, "/metatone/classifier/gesture", [d.id, GESTURE_CODES[g]])
            if band is not None and d.id in self.conductor.performers:
                try:
                    self.conductor.handle(Play(d.id, "gesture", (g,)), d.origin)
                except (EventError, ControlError) as exc:
                    log.debug("metatone: %s not played into the band: %s", d.id, exc)
        self.conductor.flush()

    # -- out: the band's gestures, performed as touches

    def perform(self, device_id: str, gesture: int) -> None:
        """Play `gesture` to the device over the next interval: its own touches of that
        gesture when it has played one, else synthetic ones."""
        d = self.devices.get(device_id)
        if d is None:
            return
        self._stop_playing(d)
        points = self._points(d, gesture)[:MAX_PLAYED_POINTS]
        start = self.loop.time()
        for t, x, y in points:
            d.playing.append(self.loop.call_at(start + t, self.send_touch, device_id, x / WIDTH, y / HEIGHT))

    def _points(self, d: Device, gesture: int) -> list[tuple[float, float, float]]:
        if gesture == 0:
            return []
        own = d.library.get(gesture)
        if own:
            span = own[-1][0]
            begin = float(self.rng.uniform(0.0, max(0.0, span - self.interval)))
            return [(t - begin, x, y) for t, x, y in own if begin <= t < begin + self.interval]
        from ensemble.touch_synth import Player, _Stream, play

        s = _Stream(Player.random(self.rng), self.rng)
        play(gesture, 0.0, self.interval, s)
        return [(t, x, y) for t, x, y, _ in s.points if t < self.interval]

    def _stop_playing(self, d: Device) -> None:
        for h in d.playing:
            h.cancel()
        d.playing.clear()

    def send_touch(self, device_id: str, x: float, y: float) -> None:
        d = self.devices.get(device_id)
        if d is None:
            return
        d.seq += 1
        d.touches_out += 1
        args = [device_id, float(x), float(y), d.seq]
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


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = str(text).rpartition(":")
    try:
        return (host or "127.0.0.1", int(port))
    except ValueError:
        raise ValueError(f"metatone_pd must be HOST:PORT, got {text!r}") from None


def _local_ipv4(host: str) -> list[str]:
    if host not in ("0.0.0.0", "", "::"):
        return [host]
    found = set()
    try:
        found.update(i[4][0] for i in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET))
    except OSError:
        pass
    return sorted(ip for ip in found if not ip.startswith("127.")) or ["127.0.0.1"]
