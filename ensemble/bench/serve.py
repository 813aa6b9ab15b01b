"""`ensemble bench serve`: OSC round trip through a real server process, on loopback.

The server runs as its own process (`ensemble serve --mode duet`, recording on, as on
stage); this process plays performers over UDP and times each event from the moment
it is sent to the moment its answer arrives. In duet mode every event gets exactly one
answer (a note-on its predicted note, a note-off the end of that note), so the k-th
answer to a performer (sequence number k) belongs to their k-th event and an event with
no answer is counted as lost. The closed loop alternates note-ons and note-offs and is
also reported by kind: a note-on's answer waits for the model step and a draw, a
note-off's goes out before its step.

Runs:
0. start-up: process start to the "ready" line, over several cold starts;
1. one performer, closed loop: send, wait for the answer, send the next; beside it the
   same client against a bare asyncio UDP echo process (no model, no OSC parsing on the
   far side), before and after, in the same run: the floor a Python server on this
   loopback cannot beat; the ratio says how far above it the server is;
2. N performers (16) each sending R events/s (50) for D seconds (10), open loop, on a
   fixed schedule whatever the server does: the load the issue names.
3. with `--watchers W`: runs 1 and 2 again, the same server, while W pages watch it over
   its WebSocket (`/ensemble/watch` naming the second closed-loop performer, so the server also
   sends its LSTM cells): what watching costs the OSC performers. The watchers are
   aiohttp clients in a process of their own, as browsers on other devices would be.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
from pythonosc.osc_packet import OscPacket

from ensemble.io.osc import build
from ensemble.serverproc import start_server as start

SCALE = [60, 62, 64, 65, 67, 69, 71, 72]


def start_server(model: str | None, record: str, extra: list[str]) -> tuple[subprocess.Popen, int, float]:
    """The server process, its port, and the seconds from its start to its ready line."""
    args = ["--port", "0", "--mode", "duet", "--no-snapshot", "--record", record, "--seed", "0"]
    t0 = time.perf_counter()
    proc, port = start(args + (["--model", model] if model else []) + extra, stderr=subprocess.DEVNULL)
    return proc, port, time.perf_counter() - t0


ECHO = """
import asyncio, sys

class Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport
    def datagram_received(self, data, addr):
        self.transport.sendto(data, addr)

async def main():
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
    print(transport.get_extra_info("sockname")[1], flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


WATCHERS = """
import asyncio, json, sys
import aiohttp

async def watch(session, url, counts):
    async with session.ws_connect(url, max_msg_size=1 << 22) as ws:
        await ws.send_str(json.dumps({"address": "/ensemble/watch", "args": []}))
        counts["open"] += 1
        if counts["open"] == int(sys.argv[2]):
            print("watching", flush=True)
        cells = False
        async for message in ws:
            counts["messages"] += 1
            counts["bytes"] += len(message.data)
            if not cells and '"id":"watched"' in message.data:  # as a page does when you click them
                cells = True
                await ws.send_str(json.dumps({"address": "/ensemble/watch", "args": ["watched"]}))
            counts["cells"] += message.data.startswith('{"address":"/ensemble/cells"')

async def main():
    counts = {"open": 0, "messages": 0, "bytes": 0, "cells": 0}
    async with aiohttp.ClientSession() as session:
        tasks = [asyncio.create_task(watch(session, sys.argv[1], counts)) for _ in range(int(sys.argv[2]))]
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # until told to stop
        print(counts["messages"], counts["bytes"], counts["cells"], flush=True)
        for t in tasks:
            t.cancel()

asyncio.run(main())
"""


class Watchers:
    """W WebSocket watchers of the server's page, in a process of their own."""

    def __init__(self, url: str, n: int):
        self.proc = subprocess.Popen([sys.executable, "-c", WATCHERS, url, str(n)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        if self.proc.stdout.readline().strip() != "watching":
            self.proc.kill()
            raise RuntimeError("the watchers could not connect to the server's WebSocket")

    def stop(self) -> tuple[int, int, int]:
        """Messages, bytes and LSTM cell strips the watchers received."""
        messages, size, cells = self.proc.communicate("stop\n", timeout=20)[0].split()
        return int(messages), int(size), int(cells)


def start_echo() -> tuple[subprocess.Popen, int]:
    """A bare asyncio UDP echo server in its own process (the same Python, no ensemble)."""
    proc = subprocess.Popen([sys.executable, "-c", ECHO], stdout=subprocess.PIPE, text=True)
    return proc, int(proc.stdout.readline())


def echo_loop(port: int, events: int, warmup: int = 50) -> dict:
    """The closed loop's client work (build, send, receive, parse) against the echo."""
    peer = Peer(port)
    latencies, lost = [], 0
    for k in range(events + warmup):
        sent = time.perf_counter()
        peer.send("/ensemble/note", event_args("solo", k))
        try:
            peer.recv(1.0)
        except socket.timeout:
            lost += 1
            continue
        if k >= warmup:
            latencies.append(time.perf_counter() - sent)
    return summarize(latencies, events, lost)


def startup_times(model: str | None, engine: str | None, n: int) -> list[float]:
    """Seconds from process start to the ready line, n cold starts (each server stopped)."""
    times = []
    with tempfile.TemporaryDirectory() as record:
        for _ in range(n):
            proc, _, ready_s = start_server(model, record, ["--engine", engine] if engine else [])
            proc.terminate()
            proc.wait(20)
            times.append(ready_s)
    return times


def event_args(performer: str, k: int) -> list:
    """The k-th event of a performer: note-ons and note-offs alternate (k even: on)."""
    pitch = SCALE[(k // 2) % len(SCALE)]
    return [performer, pitch, 90 if k % 2 == 0 else 0]


class Peer:
    def __init__(self, port: int):
        self.server = ("127.0.0.1", port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]

    def send(self, address: str, args: list) -> None:
        self.sock.sendto(build(address, args), self.server)

    def recv(self, timeout: float):
        self.sock.settimeout(timeout)
        data = self.sock.recv(65536)
        message = OscPacket(data).messages[0].message
        return message.address, message.params


def hello(peer: Peer, performers: list[str]) -> None:
    for name in performers:
        peer.send("/ensemble/hello", [name, "127.0.0.1", peer.port])
    peer.send("/ensemble/status", [])
    while peer.recv(5.0)[0] != "/ensemble/status":
        pass


def closed_loop(port: int, events: int, warmup: int = 50, name: str = "solo") -> dict:
    """One performer: send, wait for its answer, send the next (a new name for each run:
    a performer belongs to the address that said hello first)."""
    peer = Peer(port)
    hello(peer, [name])
    latencies, lost = ([], []), [0, 0]  # [note-ons, note-offs]
    for k in range(events + warmup):
        sent = time.perf_counter()
        peer.send("/ensemble/note", event_args(name, k))
        try:
            while True:
                address, args = peer.recv(1.0)
                if address == "/ensemble/note" and args[3] == k + 1:
                    break
        except socket.timeout:
            lost[k % 2] += 1
            continue
        if k >= warmup:
            latencies[k % 2].append(time.perf_counter() - sent)
    result = summarize(latencies[0] + latencies[1], events, sum(lost))
    # a note-on's answer needs the step and a draw; a note-off's goes out before its step
    for k, key in enumerate(("on", "off")):  # events k, k + 2, ... of the run
        result[key] = summarize(latencies[k], (events + 1 - k) // 2, lost[k])
        result[key].pop("_ms")
    return result


async def _open_loop(port: int, performers: int, rate: float, seconds: float, prefix: str = "p") -> dict:
    loop = asyncio.get_running_loop()
    peer = Peer(port)
    names = [f"{prefix}{i:02d}" for i in range(performers)]
    hello(peer, names)
    peer.sock.setblocking(False)
    per_performer = int(rate * seconds)
    sent = {name: np.zeros(per_performer) for name in names}
    received = {name: np.full(per_performer, np.nan) for name in names}
    extra = 0

    def readable():
        nonlocal extra
        now = time.perf_counter()
        while True:
            try:
                data = peer.sock.recv(65536)
            except BlockingIOError:
                return
            message = OscPacket(data).messages[0].message
            if message.address != "/ensemble/note":
                continue
            name, seq = message.params[0], message.params[3]
            if name in received and 1 <= seq <= per_performer:
                received[name][seq - 1] = now
            else:
                extra += 1

    def fire(name: str, k: int):
        sent[name][k] = time.perf_counter()
        peer.send("/ensemble/note", event_args(name, k))

    loop.add_reader(peer.sock.fileno(), readable)
    start = loop.time() + 0.2
    for i, name in enumerate(names):
        phase = i / (performers * rate)  # spread the performers over the 20 ms period
        for k in range(per_performer):
            loop.call_at(start + phase + k / rate, fire, name, k)
    await asyncio.sleep(seconds + 0.2 + 1.0)  # the schedule plus a second for the last answers
    loop.remove_reader(peer.sock.fileno())
    latencies, lost = [], 0
    for name in names:
        ok = ~np.isnan(received[name])
        lost += int((~ok).sum())
        latencies.extend((received[name][ok] - sent[name][ok]).tolist())
    result = summarize(latencies, performers * per_performer, lost)
    result["unexpected"] = extra
    return result


def summarize(latencies, events: int, lost: int) -> dict:
    ms = np.array(latencies) * 1000
    if not len(ms):
        return {"events": events, "lost": lost, "_ms": []}
    return {"events": events, "answered": len(ms), "lost": lost, "_ms": ms.tolist(),  # popped by bench_serve
            "median_ms": float(np.median(ms)),
            "p99_ms": float(np.percentile(ms, 99)), "max_ms": float(ms.max()), "mean_ms": float(ms.mean())}


def bench_serve(model: str | None, events: int = 2000, performers: int = 16, rate: float = 50.0,
                seconds: float = 10.0, engine: str | None = None, startups: int = 0, watchers: int = 0) -> dict:
    result = {"startup_s": startup_times(model, engine, startups) if startups else []}
    echo, echo_port = start_echo()
    extra = (["--engine", engine] if engine else []) + (["--web", "127.0.0.1:0"] if watchers else [])
    try:
        with tempfile.TemporaryDirectory() as record:
            proc, port, ready_s = start_server(model, record, extra)
            result["startup_s"].append(ready_s)
            try:
                before = echo_loop(echo_port, events // 2)
                solo = closed_loop(port, events)
                after = echo_loop(echo_port, events - events // 2)
                band = asyncio.run(_open_loop(port, performers, rate, seconds))
                if watchers:
                    url = re.search(r"browsers on (http://\S+)/", proc.ready_line).group(1) + "/ws"
                    pages = Watchers(url, watchers)
                    try:
                        watched_solo = closed_loop(port, events, name="watched")
                        watched_band = asyncio.run(_open_loop(port, performers, rate, seconds, prefix="w"))
                    finally:
                        messages, size, cells = pages.stop()
                    for r in (watched_solo, watched_band):
                        r.pop("_ms")
                    result.update(watched_solo=watched_solo, watched_band=watched_band,
                                  watchers={"pages": watchers, "messages": messages, "bytes": size, "cells": cells})
            finally:
                proc.terminate()
                proc.wait(20)
    finally:
        echo.terminate()
        echo.wait(20)
    merged = np.array(before.pop("_ms") + after.pop("_ms"))
    echo_result = summarize(merged / 1000, events, before["lost"] + after["lost"])
    for r in (solo, band, echo_result):
        r.pop("_ms")
    result.update(solo=solo, band=band, echo=echo_result)
    return result


def add_arguments(p) -> None:
    p.add_argument("--model", help="model folder (default: the bundled default model)")
    p.add_argument("--events", type=int, default=2000, help="closed-loop events for one performer")
    p.add_argument("--performers", type=int, default=16, help="performers in the load run")
    p.add_argument("--rate", type=float, default=50.0, help="events per second per performer in the load run")
    p.add_argument("--seconds", type=float, default=10.0, help="length of the load run")
    p.add_argument("--engine", choices=["numpy", "int8", "torch"], help="the server's inference engine")
    p.add_argument("--startups", type=int, default=5, help="extra cold starts timed to the ready line (default 5)")
    p.add_argument("--watchers", type=int, default=0,
                   help="then run again while W web pages watch the server (WebSocket /ensemble/watch)")


def run(args) -> int:
    result = bench_serve(args.model, args.events, args.performers, args.rate, args.seconds, args.engine,
                         args.startups, args.watchers)
    starts = np.array(result["startup_s"]) * 1000
    print(f"start-up, process start to the ready line: median {np.median(starts):.0f} ms "
          f"(range {starts.min():.0f}-{starts.max():.0f} ms, {len(starts)} starts)")
    print("OSC round trip on loopback (event sent -> prediction received), server in duet mode")
    print(f"{'run':<34} {'events':>7} {'lost':>5} {'median ms':>10} {'p99 ms':>8} {'max ms':>8}")
    rows = [("bare asyncio UDP echo, closed loop", result["echo"]),
            ("1 performer, closed loop", result["solo"]),
            ("  its note-ons (step + draw)", result["solo"]["on"]),
            ("  its note-offs (before the step)", result["solo"]["off"]),
            (f"{args.performers} performers x {args.rate:g}/s x {args.seconds:g} s", result["band"])]
    if "watchers" in result:
        rows += [(f"1 performer, {args.watchers} pages watching", result["watched_solo"]),
                 (f"{args.performers} performers, {args.watchers} pages watching", result["watched_band"])]
    for label, r in rows:
        print(f"{label:<34} {r['events']:>7} {r['lost']:>5} {r.get('median_ms', float('nan')):>10.3f} "
              f"{r.get('p99_ms', float('nan')):>8.3f} {r.get('max_ms', float('nan')):>8.3f}")
    if "median_ms" in result["echo"] and "median_ms" in result["solo"]:
        print(f"1 performer / echo: {result['solo']['median_ms'] / result['echo']['median_ms']:.2f}x (medians; "
              f"the echo ran before and after the performer, same client code)")
        echo = result["echo"]["median_ms"]
        on, off = result["solo"]["on"], result["solo"]["off"]
        if "median_ms" in on and "median_ms" in off:
            print(f"  note-ons / echo: {on['median_ms'] / echo:.2f}x, note-offs / echo: {off['median_ms'] / echo:.2f}x")
    if "watchers" in result:
        w = result["watchers"]
        print(f"the {w['pages']} watching pages received {w['messages']} messages ({w['cells']} of them "
              f"LSTM cell strips), {w['bytes'] / 1e6:.1f} MB")
    if os.path.exists("/proc/loadavg"):
        with open("/proc/loadavg") as f:
            print(f"load average: {' '.join(f.read().split()[:3])} (other processes share these CPUs)")
    return 0
