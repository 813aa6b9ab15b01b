"""`ensemble bench metatone`: N Metatone apps at R touches/s each, through a real server.

Measures what decides whether the band keeps time: touches lost between the apps and
the server (sent minus counted), gesture answers each device got (one per interval
expected), and how long one classification tick holds the loop (all devices' 5 s
windows through the numpy bidirectional LSTM) — median and max over the run.
"""

from __future__ import annotations

import asyncio
import math
import socket
import statistics
import threading
import time

from ensemble.io.osc import build


def add_arguments(p) -> None:
    from ensemble.server.config import DEFAULT_CLASSIFIER, DEFAULT_MODEL

    p.add_argument("--model", default=str(DEFAULT_MODEL.parent / "ipad-band"), help="a gestures model (the band)")
    p.add_argument("--classifier", default=str(DEFAULT_CLASSIFIER), help="a gesture-classifier model")
    p.add_argument("--devices", type=int, default=4)
    p.add_argument("--rate", type=float, default=60.0, help="touches per second per device")
    p.add_argument("--seconds", type=float, default=10.0)


def run(args) -> int:
    from ensemble.server.cli import serve
    from ensemble.server.config import ServerConfig

    cfg = ServerConfig(model=args.model, port=0, record="", snapshot="", metatone=0, metatone_reply_port=0,
                       metatone_classifier=args.classifier, log_level="warning")
    ready, box = threading.Event(), {}

    def server():
        async def main():
            box["loop"], box["stop"] = asyncio.get_running_loop(), asyncio.Event()
            await serve(cfg, ready=lambda info: (box.update(info), ready.set()), stop=box["stop"])
        asyncio.run(main())

    thread = threading.Thread(target=server, daemon=True)
    thread.start()
    if not ready.wait(60):
        print("server did not start")
        return 1
    metatone = box["metatone"]
    target = ("127.0.0.1", metatone.port)
    socks = []
    for i in range(args.devices):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        s.sendto(build("/metatone/online", [f"bench{i}", "bench"]), target)
        socks.append(s)
    answers = [0] * args.devices
    sent = 0
    start = time.perf_counter()
    n = 0
    while (now := time.perf_counter()) - start < args.seconds:
        for i, s in enumerate(socks):  # small swirls, one point per device per period
            a = 2 * math.pi * n / 20
            s.sendto(build("/metatone/touch", [f"bench{i}", 512 + 40 * math.cos(a), 384 + 40 * math.sin(a),
                                               0.0 if n == 0 else 12.0]), target)
            sent += 1
            while True:
                try:
                    data, _ = s.recvfrom(65536)
                except BlockingIOError:
                    break
                answers[i] += b"/metatone/classifier/gesture" in data
        n += 1
        time.sleep(max(0.0, start + n / args.rate - time.perf_counter()))
    time.sleep(0.2)
    received = sum(d.touches_in for d in metatone.devices.values())
    ticks = list(metatone.tick_ms)
    box["loop"].call_soon_threadsafe(box["stop"].set)
    thread.join(30)
    print(f"{args.devices} devices x {args.rate:g} touches/s for {args.seconds:g} s: sent {sent}, "
          f"counted by the server {received}, lost {sent - received}")
    print(f"gesture answers per device: {answers} (one per {cfg.gesture_interval:g} s expected)")
    if ticks:
        print(f"classification tick (all devices): median {statistics.median(ticks):.1f} ms, max {max(ticks):.1f} ms "
              f"over {len(ticks)} ticks")
    return 0
