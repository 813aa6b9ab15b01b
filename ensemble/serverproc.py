"""`ensemble serve` as a child process, for tests and benchmarks: start it, wait for its
ready line (it prints one when it listens), stop it with SIGTERM as a user would."""

from __future__ import annotations

import re
import signal
import subprocess
import sys

READY = re.compile(r"ready on udp (\S+):(\d+),")


class ServerStartError(RuntimeError):
    pass


def start_server(args: list[str], *, env: dict | None = None, stderr=subprocess.PIPE,
                 python_args: tuple[str, ...] = ()) -> tuple[subprocess.Popen, int]:
    """`ensemble serve ARGS`; returns the process and its OSC port once it says it is ready
    (the whole ready line is `proc.ready_line`; `python_args` go to the interpreter)."""
    proc = subprocess.Popen([sys.executable, *python_args, "-m", "ensemble", "serve", *args],
                            stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
    line = proc.stdout.readline()
    proc.ready_line = line
    match = READY.search(line)
    if not match:
        proc.kill()
        said = proc.stderr.read() if stderr is subprocess.PIPE else ""
        raise ServerStartError(f"the server did not start: {line.strip()} {said.strip()}".strip())
    return proc, int(match.group(2))


def stop_server(proc: subprocess.Popen, timeout: float = 20.0) -> int:
    """SIGTERM (every note ended, states saved, log closed), then its exit code; killed if it hangs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()
