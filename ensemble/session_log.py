"""Reading the server's session logs: one place that knows their format.

A log is JSON lines: a header (`{"kind": "session", ...}`), then one event a line
(`t`, `dir` in/out, `performer`, `kind`, `values`, `source`, `seq`, maybe `token`).
The server writes them (`ensemble.server.recorder`); `prepare` turns what performers
played into training data and `plot roll` draws them. A log cut short by a crash is
read up to its last complete line.
"""

from __future__ import annotations

import json
from typing import Callable, Hashable


def read_session(path) -> tuple[dict, list[dict]]:
    """The header and the events of a session log; a torn last line is ignored."""
    header, events = {}, []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f):
            try:
                item = json.loads(line)
            except json.JSONDecodeError:
                if line.endswith("\n"):
                    raise ValueError(f"{path}:{n + 1}: not a JSON line") from None
                break  # the last line was cut short by a crash
            if n == 0 and item.get("kind") == "session":
                header = item
            else:
                events.append(item)
    return header, events


def notes_by_voice(events: list[dict], voice: Callable[[dict], Hashable | None]) -> dict:
    """{voice: [(start, end, pitch, velocity), ...]} from note events: each note-on ended by
    its note-off (a repeated note-on ends the sounding one), or by the end of the log.
    `voice(event)` says whose note it is, or None to leave the event out."""
    end = max((float(e["t"]) for e in events), default=0.0)
    notes: dict = {}
    sounding: dict = {}
    for e in events:
        if e.get("kind") != "note" or len(e.get("values", [])) != 2:
            continue
        who = voice(e)
        if who is None:
            continue
        t = float(e["t"])
        pitch, velocity = (int(v) for v in e["values"])
        key = (who, pitch)
        if key in sounding:
            start, v = sounding.pop(key)
            notes.setdefault(who, []).append((start, max(t, start + 0.001), pitch, v))
        if velocity > 0:
            sounding[key] = (t, velocity)
    for (who, pitch), (start, v) in sounding.items():
        notes.setdefault(who, []).append((start, max(end, start + 0.001), pitch, v))
    return {who: sorted(found, key=lambda n: (n[0], n[2])) for who, found in notes.items()}


def touches_by_performer(events: list[dict]) -> dict:
    """{performer: [(seconds since their previous touch, x, y), ...]} from what they played."""
    touches: dict = {}
    previous: dict = {}
    for e in events:
        if e.get("dir") != "in" or e.get("kind") != "touch":
            continue
        who, t = e["performer"], float(e["t"])
        x, y = (float(v) for v in e["values"])
        touches.setdefault(who, []).append((0.0 if who not in previous else t - previous[who], x, y))
        previous[who] = t
    return touches
