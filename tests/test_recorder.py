"""The session log's lines: written by hand for speed, read back as the JSON they must be."""

import asyncio
import json
import random

import numpy as np

from ensemble.server.recorder import Recorder, event_line
from ensemble.session_log import read_session


def as_json(t, direction, performer, kind, values, source, seq, token) -> str:
    """The line as the recorder wrote it before: json.dumps of the event's dict."""
    item = {"t": t, "dir": direction, "performer": performer, "kind": kind, "values": list(values),
            "source": source, "seq": seq}
    if token is not None:
        item["token"] = token
    return json.dumps(item) + "\n"


def random_text(rng: random.Random) -> str:
    alphabet = "ab_-.:0123456789 \"\\/\t\n\x00\x1f\x7fé€😀"
    return "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 12)))


def random_value(rng: random.Random):
    """A number, or now and then a string (a hello's output, a setting's name or value)."""
    return rng.choice([rng.randrange(-2**40, 2**40), rng.randrange(128), rng.uniform(-1, 1), rng.random() * 1e-9,
                       rng.uniform(-1e300, 1e300), 0.0, -0.0, 1.0, 5e-324, random_text(rng)])


def test_every_line_is_the_very_text_json_dumps_writes():
    rng = random.Random(0)
    for _ in range(5000):
        event = (round(rng.random() * 10 ** rng.randrange(0, 7), 6), rng.choice(["in", "out"]), random_text(rng),
                 rng.choice(["note", "touch", "gesture", random_text(rng)]),
                 tuple(random_value(rng) for _ in range(rng.randrange(0, 4))), random_text(rng),
                 rng.choice([None, rng.randrange(1, 10**9)]), rng.choice([None, rng.randrange(0, 40000)]))
        assert event_line(*event) == as_json(*event), event


def test_values_json_cannot_write_fast_are_still_lines_json_reads():
    # NaN, a bool, a None source: json.dumps's own text, as before
    for event in [(1.0, "in", "p", "touch", (float("nan"), float("inf")), "s", None, None),
                  (1.0, "in", "p", "note", (60, True), "s", None, None),
                  (1.0, "in", "p", "note", (60, 90), None, None, 5)]:
        assert event_line(*event) == as_json(*event)
    # a numpy number, which json.dumps refused (and took the rest of that turn's lines with
    # it): written as the number it is
    line = event_line(2.0, "out", "p", "note", (np.int64(61), np.float32(0.5)), "s", np.int64(3), np.intp(7))
    assert json.loads(line) == {"t": 2.0, "dir": "out", "performer": "p", "kind": "note", "values": [61, 0.5],
                                "source": "s", "seq": 3, "token": 7}


def test_a_value_nothing_can_write_costs_its_own_line_only(tmp_path):
    recorder = Recorder(tmp_path, {})
    recorder.open()
    for values in [(60, 90), (np.longdouble(1.5),), (61, 90), ({(1, 2): 3},), (62, 90)]:
        recorder._pending.append((1.0, "in", "p", "note", values, "s", None, None))
    recorder._write_pending()  # (what the loop runs after a turn that recorded all five)
    recorder.close()
    lines = [json.loads(line) for line in recorder.path.open()][1:]
    assert [e["values"] for e in lines] == [[60, 90], ["1.5"], [61, 90], [62, 90]]  # a longdouble as its text
    assert recorder.lines == 4 and recorder.failed == 1  # tuple keys: no JSON at all


def test_a_recorded_session_reads_back_event_for_event(tmp_path):
    async def main():
        recorder = Recorder(tmp_path, {"model": "m"}, asyncio.get_running_loop())
        recorder.open()
        played = [60, 90]
        recorder.record("in", "ana", "note", played, "osc:127.0.0.1:9000", token=1234)
        played[0] = 99  # the caller's list changes before the line is written: the log keeps what was played
        recorder.record("out", "ana", "note", (62, 0), "osc:127.0.0.1:5006", seq=4)
        recorder.record("in", "ana", "touch", (0.25, 0.75), "web")
        assert recorder.lines == 0  # written in the loop's next turn, after the answers went out
        await asyncio.sleep(0)
        assert recorder.lines == 3
        recorder.close()
        return recorder.path

    header, events = read_session(asyncio.run(main()))
    assert header["model"] == "m"
    assert [(e["dir"], e["values"], e["source"], e["seq"], e.get("token")) for e in events] == [
        ("in", [60, 90], "osc:127.0.0.1:9000", None, 1234), ("out", [62, 0], "osc:127.0.0.1:5006", 4, None),
        ("in", [0.25, 0.75], "web", None, None)]
    assert all(isinstance(e["t"], float) and e["t"] >= 0 for e in events)
