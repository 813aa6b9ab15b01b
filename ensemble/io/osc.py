"""OSC over UDP on the asyncio loop, with python-osc for the wire format.

The socket is read with `loop.add_reader`, and every datagram already waiting is read
in the same callback before the conductor steps: performers whose events arrive
together are stepped as one batch (an asyncio datagram transport would hand over one
datagram per loop iteration and defeat that).

Every message is checked against the address space (`SIGNATURES`): a malformed packet,
an unknown address, a wrong argument count or type gets one log line and an
`/ensemble/error s s` (address, reason) reply; the loop goes on. Errors about a known
performer go to their reply address, all others (and /ensemble/status) to the sender.
Bound beyond loopback, only the allowed networks are heard, at a bounded rate each.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import time

from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc import osc_packet
from pythonosc.osc_packet import OscPacket
from pythonosc.parsing import osc_types

from ensemble.server.conductor import Conductor, ControlError
from ensemble.server.events import EventError

log = logging.getLogger("ensemble.osc")

PREFIX = "/ensemble/"
# address -> accepted argument signatures ("s" string, "i" integer, "f" number)
SIGNATURES = {
    "/ensemble/hello": ("s", "ssi", "si"),
    "/ensemble/note": ("sii",),
    "/ensemble/touch": ("sff",),
    "/ensemble/gesture": ("si",),
    "/ensemble/mode": ("ss",),
    "/ensemble/set": ("ssf", "sss"),  # string values: style settings such as scale "D dorian"
    "/ensemble/reset": ("s",),
    "/ensemble/goodbye": ("s",),
    "/ensemble/status": ("",),
    "/ensemble/panic": ("",),
}
MAX_DATAGRAMS_PER_READ = 256


def _matches(arg, t: str) -> bool:
    if t == "s":
        return isinstance(arg, str) and arg != ""
    if isinstance(arg, bool):
        return False
    if t == "i":
        return isinstance(arg, int) or (isinstance(arg, float) and arg.is_integer())
    return isinstance(arg, (int, float))  # "f": an int is a fine number


def check_arguments(address: str, args: list) -> list:
    """The arguments converted to their types, or EventError saying what was expected."""
    signatures = SIGNATURES.get(address)
    if signatures is None:
        raise EventError(f"unknown address {address} (known: {', '.join(sorted(SIGNATURES))})")
    for sig in signatures:
        if len(sig) == len(args) and all(_matches(a, t) for a, t in zip(args, sig)):
            return [int(a) if t == "i" else float(a) if t == "f" else a for a, t in zip(args, sig)]
    got = " ".join(type(a).__name__ for a in args) or "nothing"
    want = " or ".join(repr(" ".join(s)) if s else "no arguments" for s in signatures)
    raise EventError(f"{address} takes {want}; got {got}")


def build(address: str, args: list) -> bytes:
    b = OscMessageBuilder(address)
    for a in args:
        b.add_arg(a, "i" if isinstance(a, int) else "f" if isinstance(a, float) else "s")
    return b.build().dgram


class OscOutput:
    """Predictions for one performer, as OSC to their reply address."""

    def __init__(self, server: "OscServer", address: tuple[str, int]):
        self.server = server
        self.address = address
        self.name = f"osc:{address[0]}:{address[1]}"

    def send(self, performer: str, kind: str, values: tuple, seq: int) -> None:
        if kind == "note":
            args = [performer, int(values[0]), int(values[1]), seq]
        elif kind == "touch":
            args = [performer, float(values[0]), float(values[1]), seq]
        elif kind == "gesture":
            args = [performer, int(values[0]), seq]
        else:
            args = [performer, *values, seq]
        self.server.send(self.address, f"/ensemble/{kind}", args)

    def describe(self) -> dict:
        return {"type": "osc", "host": self.address[0], "port": self.address[1], "name": self.name}


class OscServer:
    def __init__(self, conductor: Conductor, host: str = "127.0.0.1", port: int = 5005,
                 reply_port: int = 5006, allow=None, rate_limit: float = 1000.0):
        self.conductor = conductor
        self.host, self.port, self.reply_port = host, port, reply_port
        self.allow = [ipaddress.ip_network(n, strict=False) for n in (allow or [])]
        self.rate_limit = rate_limit
        self.loopback = self._is_loopback(host)
        self.loop = conductor.loop
        self.sock: socket.socket | None = None
        self._buckets: dict[str, list[float]] = {}
        self.received = 0
        self.rejected = 0
        conductor.reply = self.send

    @staticmethod
    def _is_loopback(host: str) -> bool:
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return host == "localhost"

    def start(self) -> tuple[str, int]:
        infos = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)
        family, _, _, _, address = infos[0]
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind(address)
        sock.setblocking(False)
        self.sock = sock
        self.loop.add_reader(sock.fileno(), self._readable)
        self.port = sock.getsockname()[1]
        return sock.getsockname()[:2]

    def close(self) -> None:
        if self.sock is not None:
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None

    # -- in

    def _readable(self) -> None:
        for _ in range(MAX_DATAGRAMS_PER_READ):
            try:
                data, addr = self.sock.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # e.g. ICMP port unreachable reported on the socket
                log.debug("recvfrom: %s", exc)
                continue
            self.datagram(data, addr)
        self.conductor.flush()

    def _admitted(self, addr) -> bool:
        if self.loopback:
            return True
        ip = ipaddress.ip_address(addr[0])
        if not ip.is_loopback and not any(ip in net for net in self.allow):  # this machine is always heard
            self.rejected += 1
            log.warning("dropped a packet from %s: not in the allowed networks", addr[0])
            return False
        now = time.monotonic()
        bucket = self._buckets.setdefault(addr[0], [float(self.rate_limit), now])  # token bucket
        bucket[0] = min(self.rate_limit, bucket[0] + (now - bucket[1]) * self.rate_limit)
        bucket[1] = now
        if bucket[0] < 1:
            self.rejected += 1
            return False
        bucket[0] -= 1
        return True

    def datagram(self, data: bytes, addr) -> None:
        self.received += 1
        if not self._admitted(addr):
            return
        source = f"osc:{addr[0]}:{addr[1]}"
        try:
            packet = OscPacket(data)
        except (osc_packet.ParseError, osc_types.ParseError, ValueError, IndexError, TypeError) as exc:
            self._error(addr, None, "?", f"malformed OSC packet ({exc})")
            return
        for timed in packet.messages:
            try:
                self.message(timed.message.address, list(timed.message.params), addr, source)
            except Exception:  # a bug must cost one message, never the server
                log.exception("internal error on %s from %s", timed.message.address, source)

    def message(self, address: str, args: list, addr, source: str) -> None:
        performer = args[0] if args and isinstance(args[0], str) else None
        try:
            args = check_arguments(address, args)
            self.conductor.control(address, args, addr, source, make_output=lambda pid, rest: self._output(addr, rest))
        except (EventError, ControlError, ValueError) as exc:
            self._error(addr, performer, address, str(exc))

    def _output(self, addr, rest: list) -> OscOutput:
        """Where a hello's predictions go: its host and port, or the sender's host and the reply port."""
        host, port = addr[0], self.reply_port
        if len(rest) == 2:
            host, port = rest
        elif len(rest) == 1:
            port = rest[0]
        if not 1 <= port <= 65535:
            raise ControlError(f"reply port {port} is out of range 1..65535")
        return OscOutput(self, self._resolve(host, port))

    def _resolve(self, host: str, port: int) -> tuple:
        """The numeric address, looked up once per hello (not on every packet sent)."""
        try:
            ipaddress.ip_address(host)
            return (host, port)
        except ValueError:
            pass
        try:
            family = self.sock.family if self.sock is not None else socket.AF_INET
            return socket.getaddrinfo(host, port, family, socket.SOCK_DGRAM)[0][4][:2]
        except (OSError, UnicodeError) as exc:
            raise ControlError(f"reply host {host!r} cannot be resolved ({exc})") from None

    def output_from(self, description: dict) -> OscOutput:
        return OscOutput(self, (description["host"], int(description["port"])))

    def _error(self, addr, performer: str | None, address: str, reason: str) -> None:
        self.conductor.errors += 1
        log.warning("%s from %s:%s: %s", address, addr[0], addr[1], reason)
        known = self.conductor.performers.get(performer) if performer else None
        target = known.output.address if known is not None and isinstance(known.output, OscOutput) else addr
        self.send(target, "/ensemble/error", [address, reason])

    # -- out

    def send(self, address: tuple, osc_address: str, args: list) -> None:
        if self.sock is None:
            return
        try:
            self.sock.sendto(build(osc_address, args), address)
        except (BlockingIOError, OSError) as exc:  # a full buffer or a bad address: drop, never block
            log.debug("could not send %s to %s: %s", osc_address, address, exc)
