"""A scripted Metatone app: plays known gestures to a server, in real time, over OSC.

    python -m ensemble.metatone_player play --port 9000 --devices 4 --seconds 12 --truth truth.csv
    python -m ensemble.metatone_player score --truth truth.csv --predicted recordings/metatone-gestures-*.csv

`play` behaves like a Metatone app (`/metatone/online`, `/metatone/touch` with velocity 0
at each touch-down and the distance moved otherwise, `/metatone/touch/ended`,
`/metatone/offline`) and plays each of the 9 gestures for `--seconds` seconds per device,
every device in its own order, writing what it played as a gesture log (`--truth`,
one row a second, the gesture played through that second). With the server recording,
the server writes the touch log it heard and the gestures it recognised live
(`metatone-touches-*.csv`, `metatone-gestures-*.csv`); `score` compares a gesture log
(the server's live one, or `ensemble classify` output) with the truth, second by second.

These strokes are scripted, not played by a person: they are a check of the classifier
on touches that arrive over the network in real time and were written independently of
`ensemble.touch_synth` (other shapes and timing: eased strokes that go back and forth,
accelerating phrases that restart, Lissajous drags, circles that wander, taps from a
Poisson process, combinations that switch every 1-2 s), not a measure of accuracy on
real performers.
"""

from __future__ import annotations

import argparse
import csv
import math
import socket
import sys
import time
from datetime import datetime, timezone

import numpy as np

from ensemble.io.datagram import encode

CODES = ("n", "ft", "st", "fs", "fsa", "vss", "bs", "ss", "c")
W, H = 1024.0, 768.0
HZ = 60.0  # touch points a second while a finger moves


def _clip(x, y):
    return min(max(x, 0.0), W - 1), min(max(y, 0.0), H - 1)


class Script:
    """(t, kind, x, y) for one device: kind "down" | "move" | "end"; t in seconds."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.events: list[tuple[float, str, float, float]] = []
        self.cx, self.cy = float(rng.uniform(300, W - 300)), float(rng.uniform(250, H - 250))

    def touch(self, t: float, path: list[tuple[float, float, float]]) -> float:
        """One touch along `path` [(dt, x, y)]; returns when it ends."""
        for i, (dt, x, y) in enumerate(path):
            self.events.append((t + dt, "down" if i == 0 else "move", *_clip(x, y)))
        end = t + path[-1][0] + 0.01
        self.events.append((end, "end", 0.0, 0.0))
        return end

    def wander(self, step: float) -> tuple[float, float]:
        self.cx = min(max(self.cx + self.rng.normal(0, step), 150), W - 150)
        self.cy = min(max(self.cy + self.rng.normal(0, step), 120), H - 120)
        return self.cx, self.cy

    # -- the gestures, each from `start` to `end`

    def taps(self, start, end, mean_gap):
        t = start + self.rng.exponential(mean_gap)
        while t < end:
            x, y = self.wander(30)
            path = [(0.0, x, y)]
            if self.rng.random() < 0.3:  # a finger that slips a little before lifting
                path.append((1 / HZ, x + self.rng.normal(0, 2), y + self.rng.normal(0, 2)))
            self.touch(t, path)
            t += max(0.06, self.rng.exponential(mean_gap)) if mean_gap < 0.5 else self.rng.uniform(0.8, 2.0)

    def strokes(self, start, end, accelerate: bool):
        t = start
        angle = self.rng.uniform(0, 2 * math.pi)
        k = 0
        while t < end:
            if accelerate:
                duration = 0.5 * (0.72 ** (k % 8))  # a phrase of 8 ever faster strokes, then again
            else:
                duration = self.rng.uniform(0.15, 0.35)
            length = self.rng.uniform(200, 450)
            x0, y0 = self.wander(40)
            angle = angle + math.pi + self.rng.normal(0, 0.3)  # back and forth
            n = max(3, int(duration * HZ))
            path = []
            for i in range(n):
                u = i / (n - 1)
                s = u * u * (3 - 2 * u)  # eased: slow at both ends
                path.append((i / HZ, x0 + math.cos(angle) * length * (s - 0.5), y0 + math.sin(angle) * length * (s - 0.5)))
            t = self.touch(t, path) + (self.rng.uniform(0.05, 0.2) if not accelerate or k % 8 else 0.6)
            k += 1

    def swirl(self, start, end, radius, period, hold):
        t = start
        while t < end - 0.2:
            x0, y0 = self.wander(50)
            r = radius * self.rng.uniform(0.8, 1.2)
            d = min(hold * self.rng.uniform(0.7, 1.3), end - t)
            direction = 1 if self.rng.random() < 0.5 else -1
            phase = self.rng.uniform(0, 2 * math.pi)
            path = []
            for i in range(max(3, int(d * HZ))):
                a = phase + direction * 2 * math.pi * (i / HZ) / period
                drift = 0.2 * r * math.sin(0.5 * a)  # circles that wander a little
                path.append((i / HZ, x0 + (r + drift) * math.cos(a), y0 + r * math.sin(a)))
            t = self.touch(t, path) + self.rng.uniform(0.1, 0.4)

    def drag(self, start, end):  # very slow swirl: a slow Lissajous drag
        t = start
        while t < end - 0.5:
            x0, y0 = self.wander(40)
            d = min(self.rng.uniform(2.5, 5.0), end - t)
            ax, ay = self.rng.uniform(60, 160), self.rng.uniform(60, 160)
            path = [(i / HZ, x0 + ax * math.sin(0.9 * i / HZ), y0 + ay * math.sin(0.6 * i / HZ + 1.0))
                    for i in range(int(d * HZ))]
            t = self.touch(t, path) + self.rng.uniform(0.2, 0.6)

    def play(self, gesture: int, start: float, end: float) -> None:
        if gesture == 1:
            self.taps(start, end, 0.14)
        elif gesture == 2:
            self.taps(start, end, 1.2)
        elif gesture in (3, 4):
            self.strokes(start, end, accelerate=gesture == 4)
        elif gesture == 5:
            self.drag(start, end)
        elif gesture == 6:
            self.swirl(start, end, radius=240, period=1.1, hold=2.5)
        elif gesture == 7:
            self.swirl(start, end, radius=40, period=0.45, hold=1.5)
        elif gesture == 8:  # combination: switches between taps, strokes and swirls every 1-2 s
            t = start
            while t < end:
                part = min(end, t + self.rng.uniform(1.0, 2.0))
                choice = int(self.rng.integers(3))
                if choice == 0:
                    self.taps(t, part, 0.14)
                elif choice == 1:
                    self.strokes(t, part, accelerate=False)
                else:
                    self.swirl(t, part, radius=float(self.rng.uniform(40, 240)), period=0.8, hold=1.0)
                t = part


def scripts(devices: int, seconds: float, seed: int) -> tuple[list[Script], list[list[int]]]:
    """Every device plays all 9 gestures, `seconds` each, in its own order."""
    rng = np.random.default_rng(seed)
    out, orders = [], []
    for _ in range(devices):
        order = [int(g) for g in rng.permutation(9)]
        s = Script(np.random.default_rng(rng.integers(1 << 31)))
        for i, g in enumerate(order):
            s.play(g, i * seconds, (i + 1) * seconds - min(0.3, 0.1 * seconds))  # a breath between gestures
        s.events.sort(key=lambda e: e[0])
        out.append(s)
        orders.append(order)
    return out, orders


def run_play(args) -> int:
    devices = [f"scripted{i + 1}" for i in range(args.devices)]
    plays, orders = scripts(args.devices, args.seconds, args.seed)
    target = (args.host, args.port)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    merged = sorted((t, d, kind, x, y) for d, s in zip(devices, plays) for t, kind, x, y in s.events)
    for d in devices:
        sock.sendto(encode("/metatone/online", [d, "metatone_player"]), target)
    start_wall = time.time()
    start = time.perf_counter()
    last: dict = {}
    for t, d, kind, x, y in merged:
        wait = start + t - time.perf_counter()
        if wait > 0:
            time.sleep(wait)  # the script's own clock: a touch is due then
        if kind == "end":
            sock.sendto(encode("/metatone/touch/ended", [d]), target)
            last.pop(d, None)
            continue
        v = 0.0 if kind == "down" or d not in last else max(0.01, math.hypot(x - last[d][0], y - last[d][1]))
        last[d] = (x, y)
        sock.sendto(encode("/metatone/touch", [d, float(x), float(y), float(v)]), target)
    for d in devices:
        sock.sendto(encode("/metatone/offline", [d, "metatone_player"]), target)
    total = 9 * args.seconds
    with open(args.truth, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["time", *devices])
        for second in range(int(total)):
            stamp = datetime.fromtimestamp(start_wall + second + 1.0, timezone.utc).isoformat(timespec="microseconds")
            w.writerow([stamp, *(order[int(second // args.seconds)] for order in orders)])
    print(f"played {len(merged)} touch events to {args.host}:{args.port} from {args.devices} devices in "
          f"{time.perf_counter() - start:.1f} s; truth in {args.truth}", file=sys.stderr)
    return 0


def score(truth_path, predicted_path, window: float = 5.0, seconds: float = 12.0) -> dict:
    """Accuracy of a gesture log against the truth, second by second (nearest truth row at
    or after each predicted time), on all seconds and on the "steady" ones whose whole
    5 s window lies inside one played gesture."""
    from ensemble.classifier import read_gesture_log

    devices, truth = read_gesture_log(truth_path)
    got_devices, predicted = read_gesture_log(predicted_path)
    t0 = truth[0][0] - 1.0
    confusion = np.zeros((9, 9), dtype=int)
    steady = np.zeros((9, 9), dtype=int)
    for t, gs in predicted:
        k = int(math.ceil(t - t0 - 1e-6)) - 1  # the truth second that ends at or after t
        if not 0 <= k < len(truth):
            continue
        for d, g in zip(got_devices, gs):
            if d not in devices:
                continue
            true = truth[k][1][devices.index(d)]
            confusion[true, g] += 1
            # the window (t - window, t] inside one gesture's seconds (a, b]: a <= t - window and t <= b
            if math.floor((t - window - t0) / seconds + 1e-9) == math.floor((t - t0 - 1e-6) / seconds):
                steady[true, g] += 1
    acc = lambda m: float(np.trace(m) / m.sum()) if m.sum() else float("nan")  # noqa: E731
    return {"seconds": int(confusion.sum()), "accuracy": acc(confusion), "steady_seconds": int(steady.sum()),
            "steady_accuracy": acc(steady), "confusion": confusion.tolist(), "steady_confusion": steady.tolist()}


def run_score(args) -> int:
    import json

    result = score(args.truth, args.predicted, seconds=args.seconds)
    print(json.dumps({k: v for k, v in result.items() if "confusion" not in k}))
    for name in ("confusion", "steady_confusion"):
        print(f"\n{name} (rows: true, columns: predicted)")
        print("| true \\ predicted | " + " | ".join(CODES) + " |")
        print("|---" * 10 + "|")
        for code, row in zip(CODES, result[name]):
            print(f"| **{code}** | " + " | ".join(str(v) for v in row) + " |")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m ensemble.metatone_player", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(required=True)
    a = sub.add_parser("play", help="play scripted gestures to a server's Metatone port")
    a.add_argument("--host", default="127.0.0.1")
    a.add_argument("--port", type=int, required=True, help="the server's --metatone port")
    a.add_argument("--devices", type=int, default=4)
    a.add_argument("--seconds", type=float, default=12.0, help="seconds of each gesture")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--truth", required=True, help="gesture log to write: what was played")
    a.set_defaults(func=run_play)
    s = sub.add_parser("score", help="compare a gesture log with the truth")
    s.add_argument("--truth", required=True)
    s.add_argument("--predicted", required=True, help="a gesture log: the server's live one or `ensemble classify` output")
    s.add_argument("--seconds", type=float, default=12.0, help="seconds of each gesture (as played)")
    s.set_defaults(func=run_score)
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
