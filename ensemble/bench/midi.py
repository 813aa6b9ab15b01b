"""`ensemble bench midi`: note-in to note-out latency through real JACK MIDI ports.

    ensemble bench midi [--model DIR] [--events 300] [--period 256] [--rate 48000]

Starts its own `jackd` (dummy driver, no sound card needed), runs `ensemble serve` as a
separate process in duet mode with JACK MIDI in and out, and plays notes into the
server's input through a python-rtmidi JACK port, on channel 1; the server answers on
channel 2 (so no played note can be taken for the echo of an answer). Each latency is
`time.perf_counter` in this process from just before the note-on is sent to the moment
the predicted note-on is read from the server's output. One note at a time: note-on,
wait for the answer, note-off, wait for its end, a short pause.

The same loop is first run against a bare rtmidi echo client (no model, no server),
so the table separates what JACK itself costs (a MIDI event waits for the next period:
`period / rate` seconds) from what the server adds.

`JackServer` is also what the JACK tests use: ``jackd -n NAME --no-realtime -d dummy``,
ready when ``jack_lsp -s NAME`` answers; stopped by PID, its /dev/shm files removed.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

from ensemble import serverproc



class JackError(RuntimeError):
    pass


class JackServer:
    """A private jackd with the dummy driver; `env` points JACK clients (and child processes) at it."""

    def __init__(self, period: int = 1024, rate: int = 48000, name: str | None = None):
        self.name = name or f"ensemble-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.period, self.rate = period, rate
        self.env = dict(os.environ, JACK_NO_START_SERVER="1", JACK_DEFAULT_SERVER=self.name)
        self.proc: subprocess.Popen | None = None
        self._saved: dict[str, str | None] = {}

    @staticmethod
    def available() -> bool:
        return bool(shutil.which("jackd") and shutil.which("jack_lsp"))

    def start(self, timeout: float = 10.0) -> "JackServer":
        if not self.available():
            raise JackError("jackd and jack_lsp are not installed (Debian: jackd2)")
        self.proc = subprocess.Popen(
            ["jackd", "-n", self.name, "--no-realtime", "-d", "dummy", "-r", str(self.rate), "-p", str(self.period)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=self.env)
        deadline = time.monotonic() + timeout
        while True:  # ready when jack_lsp can talk to it
            if subprocess.run(["jack_lsp", "-s", self.name], env=self.env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL).returncode == 0:
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = self.proc.stderr.read().decode(errors="replace")[-500:] if self.proc.poll() is not None else ""
                self.stop()
                raise JackError(f"jackd -n {self.name} did not start: {err.strip() or 'timed out'}")
            time.sleep(0.02)
        for key in ("JACK_NO_START_SERVER", "JACK_DEFAULT_SERVER"):  # for rtmidi clients in this process
            self._saved[key] = os.environ.get(key)
            os.environ[key] = self.env[key]
        return self

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            if self.proc.stderr:
                self.proc.stderr.close()
            self.proc = None
        for path in glob.glob(f"/dev/shm/jack*{self.name}*"):
            try:
                os.unlink(path)
            except OSError:
                pass
        for key, value in self._saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved = {}

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class Player:
    """Two JACK ports of our own: `out` plays into the server, `ears` hears what it sends."""

    def __init__(self, tag: str | None = None):
        import rtmidi

        tag = tag or uuid.uuid4().hex[:6]
        self.out_client, self.in_client = f"player-{tag}", f"ears-{tag}"
        self.out = rtmidi.MidiOut(rtapi=rtmidi.API_UNIX_JACK, name=self.out_client)
        self.out.open_virtual_port("out")
        self.ears = rtmidi.MidiIn(rtapi=rtmidi.API_UNIX_JACK, name=self.in_client)
        self.ears.open_virtual_port("in")
        self.heard: list[tuple[float, list[int]]] = []
        self._last = 0.0

    def send(self, message: list[int], pace: float = 0.001) -> float:
        """Send one message, at least `pace` s after the previous one (the dummy driver drops
        bursts); returns perf_counter just before it went."""
        wait = self._last + pace - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        t = self._last = time.perf_counter()
        self.out.send_message(message)
        return t

    def recv(self, timeout: float = 2.0, poll: float = 0.0002):
        """The next message heard and when (perf_counter), or None after `timeout`."""
        deadline = time.perf_counter() + timeout
        while True:
            m = self.ears.get_message()
            if m is not None:
                t = time.perf_counter()
                self.heard.append((t, m[0]))
                return t, m[0]
            if time.perf_counter() > deadline:
                return None
            time.sleep(poll)

    def drain(self, quiet: float = 0.2) -> list[list[int]]:
        """Everything heard until nothing comes for `quiet` seconds."""
        out = []
        while (m := self.recv(quiet)) is not None:
            out.append(m[1])
        return out

    def unplug(self) -> None:
        """Our input port vanishes, as when a synth's cable is pulled."""
        self.ears.close_port()
        self.ears.delete()

    def replug(self) -> None:
        """... and comes back under the same name."""
        import rtmidi

        self.ears = rtmidi.MidiIn(rtapi=rtmidi.API_UNIX_JACK, name=self.in_client)
        self.ears.open_virtual_port("in")

    def close(self) -> None:
        for port in (self.out, self.ears):
            port.close_port()
            port.delete()


class Echo:
    """A bare rtmidi client that sends back every message it gets: JACK's own cost, for comparison."""

    def __init__(self, tag: str):
        import rtmidi

        self.client = f"echo-{tag}"
        self.inp = rtmidi.MidiIn(rtapi=rtmidi.API_UNIX_JACK, name=self.client)
        self.out = rtmidi.MidiOut(rtapi=rtmidi.API_UNIX_JACK, name=self.client + "-out")

    def connect(self, player: Player) -> None:
        self.inp.open_port(self.inp.get_ports().index(f"{player.out_client}:out"))
        self.out.open_port(self.out.get_ports().index(f"{player.in_client}:in"))
        self.inp.set_callback(lambda event, _: self.out.send_message(event[0]))

    def close(self) -> None:
        self.inp.cancel_callback()
        for port in (self.inp, self.out):
            port.close_port()
            port.delete()


def handshake(player: Player, channel: int = 15, timeout: float = 10.0) -> None:
    """Send a probe note until something comes back, then wait until the line is quiet."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        player.send([0x90 | channel, 60, 1])
        got = player.recv(0.1)
        player.send([0x80 | channel, 60, 0])
        if got is not None:
            player.drain()
            return
    raise JackError("nothing came back through JACK (is the server connected to our ports?)")


def measure(player: Player, events: int, warmup: int, gap: float = 0.002, timeout: float = 1.0) -> dict:
    """Note-on (channel 1) -> answering note-on (channel 2) latency, one note at a time; seconds, and the
    count lost."""
    latencies, lost = [], 0
    for i in range(warmup + events):
        pitch = 48 + (i * 7) % 36
        t0 = player.send([0x90, pitch, 90])
        got = None
        while True:  # in duet an answer is a note-on; the end of the previous answer may come first
            m = player.recv(timeout)
            if m is None or (m[1][0] == 0x91 and m[1][2] > 0):
                got = m
                break
        time.sleep(0.001)
        player.send([0x80, pitch, 0])
        if got is None:
            lost += 1
            player.drain(0.1)
            continue
        if i >= warmup:
            latencies.append(got[0] - t0)
        while (m := player.recv(timeout)) is not None and m[1][0] != 0x81:  # the answer's note-off
            pass
        time.sleep(gap)
    return {"latency_s": latencies, "lost": lost}


def summary(name: str, result: dict) -> dict:
    a = np.asarray(result["latency_s"]) * 1e3
    if len(a) == 0:
        return {"case": name, "events": 0, "lost": result["lost"]}
    return {"case": name, "events": int(len(a)), "lost": result["lost"], "median_ms": float(np.median(a)),
            "p99_ms": float(np.percentile(a, 99)), "min_ms": float(a.min()), "max_ms": float(a.max())}


def start_server(model: str, player: Player, env: dict, extra: list[str] = ()) -> tuple[subprocess.Popen, int, list]:
    """`ensemble serve` in duet mode on JACK MIDI; returns the process, its OSC port and its log lines."""
    args = ["--model", str(model), "--port", "0", "--no-record", "--no-snapshot", "--mode", "duet",
            "--midi-api", "jack", "--midi-in", f"{player.out_client}:out", "--midi-out", f"{player.in_client}:in", *extra]
    try:
        proc, port = serverproc.start_server(args, env=env)
    except serverproc.ServerStartError as exc:
        raise JackError(str(exc)) from None
    log: list[str] = []
    proc.log_reader = threading.Thread(target=lambda: log.extend(proc.stderr), daemon=True)
    proc.log_reader.start()
    return proc, port, log


def stop_server(proc: subprocess.Popen) -> int:
    """SIGTERM, wait, and let the log reader take the last lines; returns the exit code."""
    code = serverproc.stop_server(proc)
    reader = getattr(proc, "log_reader", None)
    if reader is not None:
        reader.join(5)
    return code


def osc_status(port: int) -> dict:
    from pythonosc.osc_packet import OscPacket

    from ensemble.io.osc import build

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(5)
        s.sendto(build("/ensemble/status", []), ("127.0.0.1", port))
        while True:
            message = OscPacket(s.recvfrom(65536)[0]).messages[0].message
            if message.address == "/ensemble/status":
                return json.loads(message.params[0])


def bench_midi(model: str, events: int = 300, warmup: int = 20, period: int = 256, rate: int = 48000,
               engine: str | None = None, echo: bool = True, quiet: bool = False) -> dict:
    """Latency of note-on in -> predicted note-on out through JACK, median and p99 (ms); prints a table."""
    rows = []
    with JackServer(period, rate) as jack:
        player = Player()
        try:
            if echo:
                e = Echo(uuid.uuid4().hex[:6])
                try:
                    e.connect(player)
                    handshake(player)
                    rows.append(summary("JACK echo (no server)", _echo_measure(player, events, warmup)))
                finally:
                    e.close()
                player.drain(0.1)
            extra = ["--engine", engine] if engine else []
            with tempfile.TemporaryDirectory() as tmp:
                config = Path(tmp) / "bench.toml"
                # answers on their own channel, as with a second synth voice: a player's note can then
                # never be taken for the echo of an answer (feedback_ms stays at its default)
                config.write_text('[midi.performers]\n"1" = { id = "bench", channel = 2 }\n')
                proc, port, log = start_server(model, player, jack.env, extra + ["--config", str(config)])
            try:
                handshake(player)
                result = measure(player, events, warmup)
                status = osc_status(port)
            finally:
                code = stop_server(proc)
            row = summary("ensemble serve, duet", result)
            row["server_exit"] = code
            closed = next((line for line in log if "MIDI closed" in line), "")
            found = re.search(r"(\d+) echoes suppressed", closed)
            row["suppressed"] = int(found.group(1)) if found else None
            row["engine"] = status.get("engine")
            row["model"] = f"{status.get('model')} ({status.get('cell')}, {status.get('vocab')} tokens)"
            main = [p for p in status.get("performers", []) if p["id"] == "bench"]
            row["server_events_in"] = sum(p["events_in"] for p in main)
            row["server_events_out"] = sum(p["events_out"] for p in main)
            row["sent_events"] = 2 * (events + warmup)
            rows.append(row)
        finally:
            player.close()
    report = {"period": period, "rate": rate, "period_ms": 1e3 * period / rate, "cases": rows}
    if not quiet:
        print(format_report(report))
    return report


def _echo_measure(player: Player, events: int, warmup: int) -> dict:
    """Like `measure`, against the echo client: the note-on itself comes back."""
    latencies, lost = [], 0
    for i in range(warmup + events):
        pitch = 48 + (i * 7) % 36
        t0 = player.send([0x90, pitch, 90])
        got = player.recv(1.0)
        time.sleep(0.001)
        player.send([0x80, pitch, 0])
        player.recv(1.0)
        if got is None:
            lost += 1
        elif i >= warmup:
            latencies.append(got[0] - t0)
        time.sleep(0.002)
    return {"latency_s": latencies, "lost": lost}


def format_report(report: dict) -> str:
    lines = [f"ensemble bench midi: jackd dummy driver, {report['period']} frames at {report['rate']} Hz "
             f"(a period is {report['period_ms']:.2f} ms); note-on in -> note-on out, one note at a time",
             ""]
    headers = ["case", "events", "lost", "median ms", "p99 ms", "min ms", "max ms"]
    cells = [headers]
    for r in report["cases"]:
        cells.append([r["case"], str(r["events"]), str(r["lost"])] +
                     [f"{r[k]:.2f}" if k in r else "-" for k in ("median_ms", "p99_ms", "min_ms", "max_ms")])
    widths = [max(len(c[i]) for c in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    served = [r for r in report["cases"] if "model" in r]
    for r in served:
        lines.append(f"\nserver: model {r['model']}, {r['engine']} engine, exit code {r['server_exit']}; "
                     f"it heard {r['server_events_in']} of the {r['sent_events']} events played and sent "
                     f"{r['server_events_out']}; {r['suppressed']} taken for echoes")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    default_model = Path(__file__).resolve().parents[1] / "models" / "folk-notes"
    p.add_argument("--model", default=str(default_model), metavar="DIR",
                   help="a notes-codec model folder (default: the bundled folk-notes)")
    p.add_argument("--events", type=int, default=300, metavar="N", help="timed notes (default 300)")
    p.add_argument("--warmup", type=int, default=20, metavar="N", help="untimed notes first (default 20)")
    p.add_argument("--period", type=int, default=256, metavar="FRAMES",
                   help="jackd period: MIDI waits up to one period per hop (default 256)")
    p.add_argument("--rate", type=int, default=48000, help="jackd sample rate (default 48000)")
    p.add_argument("--engine", choices=["numpy", "torch"], help="the server's inference engine (default: its own)")
    p.add_argument("--no-echo", action="store_true", help="skip the bare JACK echo baseline")
    p.add_argument("--json", metavar="FILE", help="also write the numbers to this JSON file")


def run(args: argparse.Namespace) -> int:
    if args.events < 1 or args.warmup < 0 or args.period < 16 or args.rate < 8000:
        print("ensemble bench midi: error: --events >= 1, --warmup >= 0, --period >= 16, --rate >= 8000",
              file=sys.stderr)
        return 2
    if not JackServer.available():
        print("ensemble bench midi: error: jackd is not installed (Debian: apt-get install jackd2)", file=sys.stderr)
        return 1
    try:
        report = bench_midi(args.model, args.events, args.warmup, args.period, args.rate, args.engine,
                            echo=not args.no_echo)
    except JackError as exc:
        print(f"ensemble bench midi: error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0
