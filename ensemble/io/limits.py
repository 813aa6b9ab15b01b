"""Bounded per-key rate limits: for packets, error replies and log lines.

Everything keyed by something a sender chooses (a source address and port, a performer
id) is a table that a hostile sender could grow without end; each table here holds at
most `max_keys` entries and forgets the longest idle first. A token bucket per key
allows `rate` events a second with bursts of `burst`.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections import OrderedDict
from typing import Callable


class RateLimiter:
    def __init__(self, rate: float, burst: float | None = None, max_keys: int = 4096, clock=time.monotonic):
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(1.0, rate))
        self.max_keys = max_keys
        self.clock = clock
        self._buckets: OrderedDict = OrderedDict()  # key -> [tokens, last time]

    def allow(self, key) -> bool:
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._buckets.popitem(last=False)  # the longest unused key
            bucket = self._buckets[key] = [self.burst, now]
        else:
            self._buckets.move_to_end(key)
            bucket[0] = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
            bucket[1] = now
        if bucket[0] < 1.0:
            return False
        bucket[0] -= 1.0
        return True

    def forget(self, key) -> None:
        self._buckets.pop(key, None)

    def __len__(self) -> int:
        return len(self._buckets)


class QuietLog:
    """Log lines (and whatever goes with them) per source, at most `rate` a second each;
    the next line that gets through says how many were suppressed in between."""

    def __init__(self, logger: logging.Logger, rate: float = 5.0, burst: float = 10.0, max_keys: int = 4096):
        self.log = logger
        self.limiter = RateLimiter(rate, burst, max_keys)
        self.suppressed: dict = {}
        self.total_suppressed = 0

    def allow(self, key) -> bool:
        """True if one more line (or reply) for `key` may go out now."""
        if self.limiter.allow(key):
            return True
        if len(self.suppressed) < self.limiter.max_keys or key in self.suppressed:
            self.suppressed[key] = self.suppressed.get(key, 0) + 1
        self.total_suppressed += 1
        return False

    def warning(self, key, message: str, *args) -> bool:
        if not self.allow(key):
            return False
        missed = self.suppressed.pop(key, 0)
        if missed:
            message += " (%d more from %s suppressed)"
            args = (*args, missed, key)
        self.log.warning(message, *args)
        return True


class Admission:
    """Who is heard on one of our UDP ports. Bound to loopback: everyone (only this machine
    can reach it). Bound wider: this machine and the allowed networks, each source address
    and port at most `rate` datagrams a second. Refusals are logged at a bounded rate."""

    def __init__(self, allow: list[str], rate: float, loopback: bool, quiet: QuietLog, what: str = ""):
        self.allow = [ipaddress.ip_network(n, strict=False) for n in allow]
        self.loopback = loopback
        self.source_limit = RateLimiter(rate)
        self.quiet = quiet
        self.what = what

    def allowed(self, ip) -> bool:
        """May this address be heard (or answered)? This machine always is."""
        return ip.is_loopback or any(ip in net for net in self.allow)

    def heard(self, ip, addr) -> bool:
        if self.loopback:
            return True
        if not self.allowed(ip):
            self.quiet.warning(addr[0], "%sdropped a packet from %s: not in the allowed networks", self.what, addr[0])
            return False
        return self.source_limit.allow(addr[:2])


MAX_DATAGRAMS_PER_READ = 256  # one readable event reads at most this many: a flood yields to the loop


def drain(sock, handle, log: logging.Logger, full: Callable[[], bool] | None = None) -> None:
    """Read what a non-blocking UDP socket holds and `handle(data, addr)` each datagram,
    at most MAX_DATAGRAMS_PER_READ of them, and none more once `full()` says what was
    read is enough work for one turn of the loop (the rest wait for the next readable
    event, so a flood cannot keep the loop from its timers and its other sockets). A
    socket error (an ICMP port unreachable reported on it) skips to the next datagram;
    a bug in `handle` costs its own datagram, never the others."""
    for _ in range(MAX_DATAGRAMS_PER_READ):
        if full is not None and full():
            return
        try:
            data, addr = sock.recvfrom(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.debug("recvfrom: %s", exc)
            continue
        try:
            handle(data, addr)
        except Exception:
            log.exception("internal error on a datagram from %s:%s", addr[0], addr[1])
