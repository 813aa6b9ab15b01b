"""Synthetic, labelled iPad touch streams for the 9 Neural iPad Band gestures.

THIS IS SYNTHETIC DATA. No real performer played it. It exists so that the gesture
classifier and the ensemble gesture model can be built, tested and demonstrated without
the original (unpublished here) Metatone performance logs. Each gesture is drawn from a
small hand-written generative recipe of what the gesture names say (a "fast tap" is a
short touch every 0.1-0.25 s, a "big swirl" a circle of 150-330 px, ...), varied per
player (tempo, size, favourite screen area, jitter, pauses). Real performers are far
more varied, mix gestures mid-second and use the screen in ways no recipe foresees:
a classifier trained only on this data will be worse on real iPads than its held-out
synthetic accuracy says.

Coordinates are screen pixels of a 1024 x 768 iPad (as Metatone apps send them);
`velocity` is 0 on a touch-down and the movement since the previous point of the same
touch otherwise (px), which is how the touch CSVs mark where a new touch begins.

Files written (the Metatone log formats):
- touch log: ``time,device_id,x_pos,y_pos,velocity`` with ISO 8601 times;
- gesture log: ``time,<performer 1>,<performer 2>,...``, one row per second, each
  cell the gesture number 0..8 that performer was playing in that second.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

WIDTH, HEIGHT = 1024.0, 768.0
GESTURE_CODES = ("n", "ft", "st", "fs", "fsa", "vss", "bs", "ss", "c")  # Metatone's short names, 0..8
RATE = 60.0  # points per second while a finger moves (iPad touch events arrive at ~60 Hz)


@dataclass
class Player:
    """One synthetic performer's habits: how fast, how big, where, how steady."""

    tempo: float   # > 1: faster taps and swirls
    size: float    # scale of strokes and swirls
    cx: float      # favourite area of the screen (pixels)
    cy: float
    jitter: float  # pixels of hand wobble
    pause: float   # chance of a short pause inside a gesture

    @classmethod
    def random(cls, rng: np.random.Generator) -> "Player":
        return cls(tempo=float(rng.uniform(0.8, 1.25)), size=float(rng.uniform(0.75, 1.3)),
                   cx=float(rng.uniform(250, WIDTH - 250)), cy=float(rng.uniform(200, HEIGHT - 200)),
                   jitter=float(rng.uniform(1.0, 6.0)), pause=float(rng.uniform(0.0, 0.15)))


def _clip(x: float, y: float) -> tuple[float, float]:
    return min(max(x, 0.0), WIDTH - 1), min(max(y, 0.0), HEIGHT - 1)


class _Stream:
    """Touch points (t, x, y, velocity) of one player; velocity 0 starts a touch."""

    def __init__(self, player: Player, rng: np.random.Generator):
        self.p, self.rng, self.points = player, rng, []

    def touch(self, t: float, path) -> None:
        """One touch: path is a list of (dt from touch start, x, y)."""
        last = None
        ox = oy = 0.0
        for dt, x, y in path:
            # a hand wobbles slowly (a drifting offset); a touch screen adds only sub-pixel noise
            ox = 0.9 * ox + self.rng.normal(0, 0.4 * self.p.jitter)
            oy = 0.9 * oy + self.rng.normal(0, 0.4 * self.p.jitter)
            x, y = _clip(x + ox + self.rng.normal(0, 0.5), y + oy + self.rng.normal(0, 0.5))
            v = 0.0 if last is None else max(0.01, math.hypot(x - last[0], y - last[1]))  # 0 marks touch-downs only
            self.points.append((t + dt, x, y, v))
            last = (x, y)

    def spot(self, spread: float) -> tuple[float, float]:
        return (self.p.cx + self.rng.normal(0, spread), self.p.cy + self.rng.normal(0, spread))


def _line(x0, y0, angle, length, duration):
    n = max(2, int(duration * RATE))
    return [(i / RATE, x0 + math.cos(angle) * length * i / (n - 1), y0 + math.sin(angle) * length * i / (n - 1))
            for i in range(n)]


def _circle(x0, y0, radius, period, duration, phase, direction):
    n = max(2, int(duration * RATE))
    return [(i / RATE, x0 + radius * math.cos(phase + direction * 2 * math.pi * i / RATE / period),
             y0 + radius * math.sin(phase + direction * 2 * math.pi * i / RATE / period)) for i in range(n)]


def play(gesture: int, start: float, end: float, s: _Stream) -> None:
    """Touches of one gesture from `start` to `end` seconds into s."""
    p, rng = s.p, s.rng
    t = start + rng.uniform(0, 0.1)
    if gesture == 0:
        return  # nothing
    while t < end:
        if rng.random() < p.pause * 0.2:
            t += rng.uniform(0.2, 0.6)
            continue
        if gesture in (1, 2):  # taps: one or two points each
            x, y = s.spot(60 * p.size)
            length = rng.uniform(0.03, 0.08)
            s.touch(t, [(0.0, x, y)] + ([(length, x, y)] if rng.random() < 0.5 else []))
            t += (rng.uniform(0.1, 0.25) if gesture == 1 else rng.uniform(0.6, 1.6)) / p.tempo
        elif gesture in (3, 4):  # fast strokes; 4: ever faster within each burst
            burst = 0
            while t < end and burst < 12:
                x, y = s.spot(120 * p.size)
                speed = 1.0 + (0.35 * burst if gesture == 4 else 0.0)
                duration = rng.uniform(0.12, 0.3) / speed
                s.touch(t, _line(x, y, rng.uniform(0, 2 * math.pi), rng.uniform(150, 350) * p.size, duration))
                gap = rng.uniform(0.08, 0.25) / p.tempo
                t += duration + (gap / speed if gesture == 4 else gap)
                burst += 1
            if gesture == 3:
                t += rng.uniform(0.0, 0.2)
        elif gesture == 5:  # very slow strokes: long, slow, continuous
            x, y = s.spot(150 * p.size)
            duration = min(end - t, rng.uniform(2.0, 5.0))
            length = rng.uniform(20, 60) * duration * p.size
            s.touch(t, _line(x, y, rng.uniform(0, 2 * math.pi), length, max(duration, 0.1)))
            t += duration + rng.uniform(0.1, 0.5)
        elif gesture in (6, 7):  # big swirls, small swirls
            x, y = s.spot(40 * p.size)
            radius = (rng.uniform(150, 330) if gesture == 6 else rng.uniform(15, 60)) * p.size
            period = (rng.uniform(0.9, 2.0) if gesture == 6 else rng.uniform(0.25, 0.6)) / p.tempo
            duration = min(end - t, rng.uniform(1.5, 4.0))
            s.touch(t, _circle(x, y, radius, period, max(duration, 0.1), rng.uniform(0, 2 * math.pi),
                               rng.choice((-1.0, 1.0))))
            t += duration + rng.uniform(0.05, 0.3)
        else:  # combination: taps, strokes and swirls mixed within a second or two
            part = min(end, t + rng.uniform(0.5, 1.2))
            play(int(rng.choice((1, 3, 7, 2))), t, part, s)
            t = part


def session(players: int, seconds: int, seed: int = 0, change: tuple[float, float] = (5.0, 15.0),
            follow: float = 0.4, touches: bool = True):
    """One synthetic performance: (touches per device, gesture labels per device per second).

    Each player holds a gesture for a few seconds (`change`), then switches: with
    probability `follow` to what another player is doing (ensembles converge), else to
    a random gesture. Returns ({device: [(t, x, y, v), ...]}, {device: [g per second]})."""
    rng = np.random.default_rng(seed)
    devices = [f"ipad{i + 1}" for i in range(players)]
    habits = {d: Player.random(rng) for d in devices}
    labels = {d: [0] * seconds for d in devices}
    played = {}
    next_change = {d: 0 for d in devices}
    current = {d: int(rng.integers(0, 9)) for d in devices}
    for second in range(seconds):
        for d in devices:
            if second >= next_change[d]:
                others = [current[o] for o in devices if o != d]
                current[d] = int(rng.choice(others)) if others and rng.random() < follow else int(rng.integers(0, 9))
                next_change[d] = second + int(rng.uniform(*change))
            labels[d][second] = current[d]
    for d in devices if touches else ():  # touches=False: the labels alone (gesture logs are cheap)
        s = _Stream(habits[d], np.random.default_rng([seed, devices.index(d) + 1]))
        second = 0
        while second < seconds:  # one segment of one gesture at a time
            g, end = labels[d][second], second
            while end < seconds and labels[d][end] == g:
                end += 1
            play(g, float(second), float(end), s)
            second = end
        played[d] = sorted((pt for pt in s.points if pt[0] < seconds), key=lambda pt: pt[0])
    return played, labels


def iso(start: datetime, t: float) -> str:
    return (start + timedelta(seconds=t)).isoformat(timespec="microseconds")


def write_touch_log(path, touches: dict, start: datetime) -> int:
    rows = sorted(((t, d, x, y, v) for d, pts in touches.items() for t, x, y, v in pts), key=lambda r: r[0])
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["time", "device_id", "x_pos", "y_pos", "velocity"])
        for t, d, x, y, v in rows:
            w.writerow([iso(start, t), d, f"{x:.1f}", f"{y:.1f}", f"{v:.2f}"])
    return len(rows)


def write_gesture_log(path, labels: dict, start: datetime) -> int:
    devices = list(labels)
    seconds = len(next(iter(labels.values()))) if labels else 0
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["time", *devices])
        for s in range(seconds):
            w.writerow([iso(start, s + 1.0), *(labels[d][s] for d in devices)])  # the second that just ended
    return seconds


def write_corpus(folder, sessions: int, players: int = 4, seconds: int = 300, seed: int = 0,
                 gestures_only: bool = False) -> list[Path]:
    """`sessions` pairs of touch + gesture logs in `folder` (touches-NNN.csv, gestures-NNN.csv);
    `gestures_only`: gesture logs alone (to train an ensemble gestures model)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for i in range(sessions):
        touches, labels = session(players, seconds, seed=seed * 1000 + i, touches=not gestures_only)
        start = datetime(2026, 1, 1, tzinfo=timezone.utc) + timedelta(hours=i)
        if not gestures_only:
            write_touch_log(folder / f"touches-{i:03d}.csv", touches, start)
            written.append(folder / f"touches-{i:03d}.csv")
        write_gesture_log(folder / f"gestures-{i:03d}.csv", labels, start)
        written.append(folder / f"gestures-{i:03d}.csv")
    return written


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "synth-touches", help="write SYNTHETIC labelled touch + gesture logs (Neural iPad Band)",
        description="Write synthetic Metatone touch logs (time,device_id,x_pos,y_pos,velocity) and "
                    "gesture logs (time,<performers>...) for the 9 gestures, for training and testing "
                    "the gesture classifier and gesture models without real performance data.")
    p.add_argument("--out", required=True, help="folder to write touches-NNN.csv and gestures-NNN.csv into")
    p.add_argument("--sessions", type=int, default=8)
    p.add_argument("--players", type=int, default=4)
    p.add_argument("--seconds", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gestures-only", action="store_true", help="write gesture logs only (for a gestures model)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ensemble.errors import UserError

    if not (1 <= args.players <= 16 and args.sessions >= 1 and args.seconds >= 1):
        raise UserError("--players 1..16, --sessions >= 1 and --seconds >= 1 needed")
    files = write_corpus(args.out, args.sessions, args.players, args.seconds, args.seed, args.gestures_only)
    print(f"wrote {len(files)} synthetic logs to {args.out}")
    return 0

