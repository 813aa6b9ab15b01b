"""OSC over UDP on the asyncio loop, with python-osc for the wire format.

The socket is read with `loop.add_reader`, and every datagram already waiting is read
in the same callback before the conductor steps: performers whose events arrive
together are stepped as one batch (an asyncio datagram transport would hand over one
datagram per loop iteration and defeat that).

Every packet is hostile until checked, in bounded work:
- its structure is walked before python-osc parses it (`ensemble.io.datagram`);
- every message is checked against the address space (`SIGNATURES`); a bad one gets
  one log line and an `/ensemble/error s s` (address, reason) reply, both rate-limited
  per source, and never delays the good messages that arrived with it;
- messages the server itself sends (errors, status, numbered predictions) are never
  answered, and nothing is ever sent to the server's own address: no storms;
- a performer id belongs to the address that said hello (see the conductor); only
  this machine and the `admin` networks steer everyone;
- replies go only to the sender or to a performer's reply address, which must be in
  the allowed networks; for a sender beyond this machine a reply is at most
  AMPLIFICATION times the size of its request (pad a status request with a blob);
- host names in a hello are looked up off the loop, with a timeout;
- bound beyond loopback, only the allowed networks are heard, at a bounded rate per
  source address and port, and per performer.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import re
import socket

from ensemble.io.datagram import BadDatagram, encode, parse
from ensemble.io.limits import Admission, QuietLog, RateLimiter, drain
from ensemble.messages import (ControlError, EventError, Goodbye, Hello, Origin, Panic, Play, Reset, SetMode,
                               SetParam, StatusRequest, check_id)

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
    # status: to the sender, to its host at port i, to host s port i, or a performer's details to them
    "/ensemble/status": ("", "i", "si", "s"),
    "/ensemble/panic": ("", "s"),
}
# what the server sends: arriving here they are another server's answers (or our own,
# reflected), and answering them with an error is how packet storms start
REPLIES = {"/ensemble/note": 4, "/ensemble/touch": 4, "/ensemble/gesture": 3}
EVENTS = frozenset(REPLIES)  # played events: rate-limited per performer when bound wider
AMPLIFICATION = 4      # a reply to a sender beyond this machine: at most this many times its request
MAX_LOOKUPS = 8        # host-name lookups in flight at once
LOOKUP_CACHE = 256


def is_reply(address: str, args: list) -> bool:
    """A message the server sends, not one it takes."""
    if address == "/ensemble/error":
        return True
    if address == "/ensemble/status":
        return len(args) == 1 and isinstance(args[0], str) and args[0].startswith("{")
    return REPLIES.get(address) == len(args)


def ip_of(host: str):
    """The address of a numeric host (an IPv6 scope such as %eth0 dropped), or ValueError."""
    return ipaddress.ip_address(host.split("%", 1)[0])


def check_port(port: int) -> None:
    """A reply port, or ControlError (a number too long to repeat is shown rounded)."""
    if not 1 <= port <= 65535:
        shown = port if abs(port) < 10 ** 9 else f"{float(port):.3g}"
        raise ControlError(f"reply port {shown} is out of range 1..65535")


SCOPE = re.compile(r"[A-Za-z0-9_.-]{1,16}")  # an interface name or number, as `ip link` shows them


def reply_host(host: str) -> str:
    """A numeric host written the one way `sendto` takes it: the address as Python writes
    it, and an IPv6 scope (fe80::1%eth0) only on a link-local address and only as an
    interface name or number. ControlError otherwise: a scope is text the sender chose,
    and a long or non-ASCII one made every send to it fail (and filled status replies)."""
    ip = ip_of(host)
    scope = host.partition("%")[2]
    if not scope:
        return str(ip)
    if ip.version != 6 or not ip.is_link_local or not SCOPE.fullmatch(scope):
        raise ControlError("a reply host's scope (%...) belongs to an IPv6 link-local address only, as an "
                           "interface name or number of at most 16 characters")
    return f"{ip}%{scope}"


def local_ip(ip) -> bool:
    """Whether an address is one of this machine's own (a socket can be bound to it): a
    system call, never a packet, never a lookup, so it never blocks. Asked only of
    addresses that name this server's port, and cached (`OscServer._local`)."""
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((str(ip), 0))
        return True
    except OSError:
        return False


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
    """One OSC message (int -> i, float -> f, str -> s), as python-osc's builder writes it."""
    return encode(address, args)


HOSTS_CACHED = 1024  # numeric hosts remembered with their parsed address (a table a sender grows)


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
        # (an output's address was checked when it was made: allowed, and not our own)
        self.server._send_bytes(self.address, build(f"/ensemble/{kind}", args), kind, checked=True)

    def describe(self) -> dict:
        return {"type": "osc", "host": self.address[0], "port": self.address[1], "name": self.name}


class OscServer:
    """The OSC transport: a UDP socket, its address space, and the performers' OSC outputs."""

    name = "osc"

    def __init__(self, conductor, cfg):
        self.conductor = conductor
        self.cfg = cfg
        self.host, self.port, self.reply_port = cfg.host, cfg.port, cfg.reply_port
        self.admin = [ipaddress.ip_network(n, strict=False) for n in cfg.admin]
        self.loopback = self._is_loopback(cfg.host)
        self.loop = conductor.loop
        self.sock: socket.socket | None = None
        self.performer_limit = RateLimiter(cfg.performer_rate)
        self.quiet = QuietLog(log, cfg.error_rate, burst=2 * cfg.error_rate)  # errors + log lines per source
        self.admission = Admission(cfg.allow, cfg.rate_limit, self.loopback, self.quiet)
        self.lookups: dict[tuple[str, int], tuple] = {}      # (host, port) -> numeric address
        self._hosts: dict[str, tuple] = {}  # numeric host -> (ip address, admin?): parsed once, not per packet
        self._locals: dict = {}  # ip address -> one of this machine's own? (only for our own port number)
        self.looking_up = 0
        self.received = self.rejected = self.malformed = self.ignored = self.errors = 0
        conductor.attach(self)

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
        bound = sock.getsockname()[:2]
        self.port = bound[1]
        return bound

    def _host(self, host: str) -> tuple:
        """(ip address, admin?) of a numeric host, from a bounded cache: parsing an address
        costs ~15 us, and every packet and reply would otherwise parse its own."""
        known = self._hosts.get(host)
        if known is None:
            ip = ip_of(host)
            if len(self._hosts) >= HOSTS_CACHED:
                self._hosts.clear()
            known = self._hosts[host] = (ip, any(ip in net for net in self.admin))
        return known

    def _is_own(self, address: tuple, ip=None) -> bool:
        if address[1] != self.port:
            return False
        ip = ip if ip is not None else self._host(address[0])[0]
        if getattr(ip, "ipv4_mapped", None) is not None:  # ::ffff:127.0.0.1 is 127.0.0.1
            ip = ip.ipv4_mapped
        return ip.is_loopback or ip.is_unspecified or self._local(ip)

    def _local(self, ip) -> bool:
        """One of this machine's addresses (its LAN address when bound to 0.0.0.0, say), from
        a bounded cache: asked only of addresses that name this server's port."""
        known = self._locals.get(ip)
        if known is None:
            if len(self._locals) >= HOSTS_CACHED:
                self._locals.clear()
            known = self._locals[ip] = local_ip(ip)
        return known

    def close(self) -> None:
        if self.sock is not None:
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None

    # -- in

    def _readable(self) -> None:
        try:
            drain(self.sock, self.datagram, log, self.conductor.backlogged)  # each event read costs a model step
        finally:
            self.conductor.flush()  # what the good packets asked for is answered, whatever came with them

    def _admitted(self, addr, ip) -> bool:
        if self._is_own(addr, ip):  # our own answers, reflected back: never a conversation
            self.ignored += 1
            return False
        if not self.admission.heard(ip, addr):
            self.rejected += 1
            return False
        return True

    def datagram(self, data: bytes, addr) -> None:
        self.received += 1
        ip, admin = self._host(addr[0])
        if not self._admitted(addr, ip):
            return
        try:
            messages = parse(data)
        except BadDatagram as exc:
            self.malformed += 1
            self._error(addr, None, "?", f"malformed OSC packet ({exc})", len(data))
            return
        # default admin: this machine
        origin = Origin(f"osc:{addr[0]}:{addr[1]}", addr[0], admin=admin)
        for address, args in messages:
            try:
                self.message(address, args, addr, origin, len(data))
            except Exception:  # a bug must cost one message, never the server
                log.exception("internal error on %s from %s", address, origin.source)

    def message(self, address: str, args: list, addr, origin: Origin, size: int = 0) -> None:
        if is_reply(address, args):
            self.ignored += 1  # never answered: another server's output, or a loop in the making
            return
        performer = args[0] if args and isinstance(args[0], str) else None
        try:
            if address == "/ensemble/status" and args and isinstance(args[-1], bytes):
                args = args[:-1]  # padding, so a status reply may be larger than a bare request
            args = check_arguments(address, args)
            if address == "/ensemble/status":
                self._status(args, addr, origin, size)
                return
            if not self.loopback and performer is not None and address in EVENTS \
                    and not self.performer_limit.allow(check_id(performer)):  # (its key: a real id)
                self.rejected += 1
                return
            if address == "/ensemble/hello" and len(args) == 3 and not self._numeric(args[1]):
                self._hello_by_name(args, addr, origin, size)
                return
            self.conductor.handle(self._event(address, args, addr), origin)
        except (EventError, ControlError, ValueError) as exc:
            self._error(addr, performer, address, str(exc), size)

    def _event(self, address: str, args: list, addr):
        """The typed event an (argument-checked) message stands for."""
        verb = address[len(PREFIX):]
        if verb in ("note", "touch", "gesture"):
            return Play(args[0], verb, tuple(args[1:]))
        if verb == "hello":
            return Hello(args[0], self._output(addr, args[1:]))
        if verb == "mode":
            return SetMode(args[0], args[1])
        if verb == "set":
            return SetParam(args[0], args[1], args[2])
        if verb == "reset":
            return Reset(args[0])
        if verb == "goodbye":
            return Goodbye(args[0])
        if verb == "panic":
            return Panic(args[0] if args else None)
        raise EventError(f"unknown address {address}")

    @staticmethod
    def _numeric(host: str) -> bool:
        try:
            ip_of(host)
            return True
        except ValueError:
            return False

    def _reply_address(self, host: str, port: int) -> tuple:
        """A numeric reply address we may send to: allowed, and not this server itself."""
        check_port(port)
        host = reply_host(host)
        ip = ip_of(host)
        if self._is_own((host, port)):
            raise ControlError(f"{host}:{port} is this server's own address; answers go to your own port")
        if not self.admission.allowed(ip):
            raise ControlError(f"reply address {host} is not in the allowed networks")
        return (host, port)

    def _output(self, addr, rest: list) -> OscOutput:
        """Where a hello's predictions go: its host and port, or the sender's host and the reply port."""
        host, port = addr[0], self.reply_port
        if len(rest) == 2:
            host, port = rest
        elif len(rest) == 1:
            port = rest[0]
        return OscOutput(self, self._reply_address(host, port))

    def _hello_by_name(self, args: list, addr, origin: Origin, size: int) -> None:
        """A hello naming a host: looked up off the loop (with a timeout); only this performer waits."""
        key = (args[1], args[2])
        check_port(key[1])  # before the lookup, which would fail on it off the loop
        if key in self.lookups:
            self.conductor.handle(Hello(args[0], self._output(addr, list(self.lookups[key]))), origin)
            return
        if self.looking_up >= MAX_LOOKUPS:
            raise ControlError("too many host-name lookups in progress; use a numeric address")
        self.looking_up += 1
        self.loop.create_task(self._look_up(key, args, addr, origin, size))

    async def _look_up(self, key, args, addr, origin: Origin, size: int) -> None:
        host, port = key
        try:
            family = self.sock.family if self.sock is not None else socket.AF_INET
            infos = await asyncio.wait_for(self.loop.getaddrinfo(host, port, family=family, type=socket.SOCK_DGRAM),
                                           self.cfg.resolve_timeout)
            numeric = infos[0][4][:2]
            if len(self.lookups) >= LOOKUP_CACHE:
                self.lookups.pop(next(iter(self.lookups)))
            self.lookups[key] = numeric
            self.message("/ensemble/hello", [args[0], *numeric], addr, origin, size)
        except (OSError, UnicodeError, asyncio.TimeoutError, IndexError) as exc:
            reason = "no answer in time" if isinstance(exc, asyncio.TimeoutError) else str(exc)
            self._error(addr, args[0], "/ensemble/hello", f"reply host {host!r} cannot be resolved ({reason})", size)
        finally:
            self.looking_up -= 1

    def output_from(self, description: dict) -> OscOutput | None:
        """One of our outputs, from a snapshot (None: another transport's)."""
        if description.get("type") != "osc":
            return None
        return OscOutput(self, self._reply_address(str(description["host"]), int(description["port"])))

    def status(self) -> dict:
        return {"received": self.received, "rejected": self.rejected, "malformed": self.malformed,
                "ignored": self.ignored, "errors": self.errors,
                "errors_suppressed": self.quiet.total_suppressed}

    def _status(self, args: list, addr, origin: Origin, size: int) -> None:
        """/ensemble/status [port | host port | performer]: the server at a glance."""
        target, detail = addr, None
        if len(args) == 1 and isinstance(args[0], int):
            target = self._reply_address(addr[0], args[0])
        elif len(args) == 2:
            if not origin.admin and args[0] != addr[0]:
                raise ControlError("a status for another host is only sent from this machine or the admin networks")
            if not self._numeric(args[0]):
                raise ControlError(f"status host {args[0]!r} must be a numeric address")
            target = self._reply_address(args[0], args[1])
        elif len(args) == 1:
            detail = args[0]
            p = self.conductor.performers.get(detail)
            if p is not None and isinstance(p.output, OscOutput):
                target = p.output.address
        status = self.conductor.handle(StatusRequest(detail, addresses=origin.admin), origin)
        status = json.dumps(status, separators=(",", ":"))
        self._reply(target, "/ensemble/status", [status], size)

    def _error(self, addr, performer: str | None, address: str, reason: str, size: int = 0) -> None:
        """One log line and one /ensemble/error, both at a bounded rate per source. It goes to
        the sender, or to the performer's reply address when the sender is that performer."""
        self.errors += 1
        key = f"{addr[0]}:{addr[1]}"
        if not self.quiet.warning(key, "%s from %s: %s", address, key, reason):
            return
        known = self.conductor.performers.get(performer) if performer else None
        target = addr
        if known is not None and known.owner == addr[0] and isinstance(known.output, OscOutput):
            target = known.output.address
        self._reply(target, "/ensemble/error", [address, reason], size)

    def _reply(self, target: tuple, osc_address: str, args: list, request_size: int) -> None:
        """An answer to a request. To a host beyond this machine it is never more than
        AMPLIFICATION x the request: an error's reason is cut to fit, and a status too
        large for its request is replaced by an error saying how much to pad."""
        data = build(osc_address, args)
        budget = AMPLIFICATION * max(request_size, 16)
        if len(data) > budget and not ip_of(target[0]).is_loopback:
            if osc_address == "/ensemble/status":
                osc_address = "/ensemble/error"
                args = ["/ensemble/status", f"reply of {len(data)} bytes: pad the request with a blob to "
                                            f"{-(-len(data) // AMPLIFICATION)} bytes"]
            room = budget - len(build(osc_address, [args[0], ""]))
            data = build(osc_address, [args[0], args[1][:max(0, room - 4)]])
            if len(data) > budget:
                return
        self._send_bytes(target, data, osc_address)

    # -- out

    def send(self, address: tuple, osc_address: str, args: list) -> None:
        self._send_bytes(address, build(osc_address, args), osc_address)

    def _send_bytes(self, address: tuple, data: bytes, what: str, checked: bool = False) -> None:
        if self.sock is None or (not checked and self._is_own(address)):
            return
        try:
            self.sock.sendto(data, address)
        except (OSError, TypeError, ValueError, OverflowError) as exc:  # a full buffer or a bad address:
            log.debug("could not send %s to %s: %s", what, address, exc)  # drop it, never block nor raise
