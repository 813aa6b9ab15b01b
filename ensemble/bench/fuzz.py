"""`ensemble bench fuzz`: a good performer plays while bad packets of every kind pour in.

The server runs as its own process (`ensemble serve --mode duet`, as on stage). One
performer plays 50 events a second and times each answer (duet: exactly one answer
per event, numbered); meanwhile a second socket sends bad packets of every kind the
hostile-input issue found (bundles of negative size, deep nesting, random bytes,
truncated messages, wrong types, unknown addresses and performers, our own replies
sent back, hellos pointing at the server itself, a flood of new performer ids, status
requests), round-robin, at a fixed rate. Reported: the good performer's answers (lost,
median, p99), whether the server lived, its memory before and after, and how many
log lines the flood cost. Every loop is bounded in count and time; loopback only.
"""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
import time

import numpy as np
from pythonosc.osc_packet import OscPacket

from ensemble.io.osc import build
from ensemble.serverproc import start_server, stop_server

SCALE = [60, 62, 64, 65, 67, 69, 71, 72]


def bad_packets(server_port: int) -> list[tuple[str, object]]:
    """(kind, packet or a function of a counter giving one)."""
    deep = b"/ensemble/status\0\0\0\0"
    for _ in range(400):
        deep = b"#bundle\0" + b"\0" * 8 + len(deep).to_bytes(4, "big") + deep
    return [
        ("negative bundle size", b"#bundle\0" + b"\0" * 7 + b"\1" + b"\xff\xff\xff\xfc"),
        ("bundles nested 400 deep", deep),
        ("random bytes", lambda k: np.random.default_rng(k).bytes(int(k % 200) * 4 + 4)),
        ("truncated message", build("/ensemble/note", ["fuzz", 60, 90])[:-3]),
        ("wrong types", build("/ensemble/note", ["fuzz", "sixty", 1.5])),
        ("unknown address", build("/ensemble/fly", ["me", 1])),
        ("unknown performer", build("/ensemble/note", ["nobody", 60, 90])),
        ("our own answers sent back", build("/ensemble/note", ["good", 60, 90, 7])),
        ("errors sent back", build("/ensemble/error", ["/ensemble/note", "oops"])),
        ("hello to the server itself", build("/ensemble/hello", ["loop", "127.0.0.1", server_port])),
        ("a new performer id each time", lambda k: build("/ensemble/hello", [f"id{k}", "127.0.0.1", 9])),
        ("8 kB type tag", build("/ensemble/note", ["x"]).replace(b",s\0\0", b"," + b"x" * 8191 + b"\0" * 4)),
        ("status request", build("/ensemble/status", [])),
    ]


def rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return -1


async def _run(port: int, packets: int, rate: float, good_rate: float) -> dict:
    loop = asyncio.get_running_loop()
    good = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    good.bind(("127.0.0.1", 0))
    good.setblocking(False)
    fuzz = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    fuzz.bind(("127.0.0.1", 0))
    fuzz.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)  # its answers are not read
    server = ("127.0.0.1", port)
    good.sendto(build("/ensemble/hello", ["good", "127.0.0.1", good.getsockname()[1]]), server)
    seconds = packets / rate
    events = int(seconds * good_rate)
    sent = np.zeros(events)
    answered = np.full(events, np.nan)

    def readable():
        now = time.perf_counter()
        while True:
            try:
                data = good.recv(65536)
            except BlockingIOError:
                return
            message = OscPacket(data).messages[0].message
            if message.address == "/ensemble/note" and 1 <= message.params[3] <= events:
                answered[message.params[3] - 1] = now

    def play(k: int):
        sent[k] = time.perf_counter()
        pitch = SCALE[(k // 2) % len(SCALE)]
        good.sendto(build("/ensemble/note", ["good", pitch, 90 if k % 2 == 0 else 0]), server)

    kinds = bad_packets(port)
    counts = {name: 0 for name, _ in kinds}

    async def flood():
        batch = max(1, int(rate / 1000))  # a burst every millisecond
        start = loop.time()
        for k in range(0, packets, batch):
            for j in range(k, min(k + batch, packets)):
                name, packet = kinds[j % len(kinds)]
                data = packet(j) if callable(packet) else packet
                try:
                    fuzz.sendto(data, server)
                except OSError:  # our own send buffer full: try the next one
                    pass
                counts[name] += 1
            delay = start + (k + batch) / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)

    loop.add_reader(good.fileno(), readable)
    await asyncio.sleep(0.2)  # the hello is in
    start = loop.time() + 0.1
    for k in range(events):
        loop.call_at(start + k / good_rate, play, k)
    await flood()
    await asyncio.sleep(max(0.0, start + events / good_rate - loop.time()) + 1.0)
    loop.remove_reader(good.fileno())
    good.close()
    fuzz.close()
    ok = ~np.isnan(answered)
    ms = (answered[ok] - sent[ok]) * 1000
    return {"events": events, "lost": int((~ok).sum()), "median_ms": float(np.median(ms)) if len(ms) else float("nan"),
            "p99_ms": float(np.percentile(ms, 99)) if len(ms) else float("nan"), "seconds": seconds,
            "bad_packets": sum(counts.values()), "kinds": counts}


def bench_fuzz(model: str | None, packets: int, rate: float, good_rate: float) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        log_path = os.path.join(folder, "server.log")
        args = ["--port", "0", "--mode", "duet", "--no-snapshot", "--no-record", "--seed", "0"]
        with open(log_path, "w") as log:
            proc, port = start_server(args + (["--model", model] if model else []), stderr=log)
            try:
                rss_before = rss_kb(proc.pid)
                result = asyncio.run(_run(port, packets, rate, good_rate))
                result["rss_before_kb"], result["rss_after_kb"] = rss_before, rss_kb(proc.pid)
                result["alive"] = proc.poll() is None
            finally:
                stop_server(proc)
        with open(log_path) as f:
            result["log_lines"] = sum(1 for _ in f)
    return result


def add_arguments(p) -> None:
    p.add_argument("--model", help="model folder (default: the bundled default model)")
    p.add_argument("--packets", type=int, default=100_000, help="bad packets in all, every kind in turn")
    p.add_argument("--rate", type=float, default=5000.0, help="bad packets per second")
    p.add_argument("--good-rate", type=float, default=50.0, help="the good performer's events per second")


def run(args) -> int:
    r = bench_fuzz(args.model, args.packets, args.rate, args.good_rate)
    print(f"{r['bad_packets']} bad packets in {r['seconds']:.1f} s ({len(r['kinds'])} kinds, round-robin) "
          f"while one performer played {r['events']} events at {args.good_rate:g}/s (duet)")
    print(f"  good performer: {r['events'] - r['lost']} answered, {r['lost']} lost, median {r['median_ms']:.3f} ms, "
          f"p99 {r['p99_ms']:.3f} ms")
    print(f"  server: {'alive' if r['alive'] else 'DEAD'}, RSS {r['rss_before_kb'] / 1024:.0f} -> "
          f"{r['rss_after_kb'] / 1024:.0f} MB, {r['log_lines']} log lines")
    return 0 if r["alive"] and r["lost"] == 0 else 1
