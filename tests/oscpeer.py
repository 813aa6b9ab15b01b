"""Test helpers: a UDP OSC peer (python-osc wire format) and the server run in a thread or a process."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import threading

from pythonosc.osc_packet import OscPacket

from ensemble.io.osc import build
from ensemble.serverproc import start_server


class OscPeer:
    """One UDP socket that sends to the server and receives its replies (ephemeral port)."""

    def __init__(self, server_port: int):
        self.server = ("127.0.0.1", server_port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]

    def send(self, address: str, *args) -> None:
        self.sock.sendto(build(address, list(args)), self.server)

    def send_raw(self, data: bytes) -> None:
        self.sock.sendto(data, self.server)

    def recv(self, timeout: float = 5.0) -> tuple[str, list]:
        """The next message; raises socket.timeout if none comes (a failure, not a wait)."""
        self.sock.settimeout(timeout)
        data, _ = self.sock.recvfrom(65536)
        message = OscPacket(data).messages[0].message
        return message.address, list(message.params)

    def recv_until(self, address: str, timeout: float = 5.0) -> list:
        while True:
            got, args = self.recv(timeout)
            if got == address:
                return args

    def until_status(self, timeout: float = 5.0) -> tuple[list, dict]:
        """Ask for /ensemble/status; return what arrived before it (argument lists) and the status."""
        import json

        self.send("/ensemble/status")
        before = []
        while True:
            address, args = self.recv(timeout)
            if address == "/ensemble/status":
                return before, json.loads(args[0])
            before.append(args)

    def drain(self) -> int:
        """Throw away what has arrived and not been read (after a server has stopped, all
        of its sends are here: loopback delivers at send time); how many datagrams."""
        self.sock.setblocking(False)
        n = 0
        try:
            while True:
                self.sock.recvfrom(65536)
                n += 1
        except BlockingIOError:
            return n
        finally:
            self.sock.setblocking(True)

    def close(self) -> None:
        self.sock.close()


class ServerThread:
    """`ensemble.server.cli.serve` on its own event loop in a thread (in-process, fast)."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.ready = threading.Event()
        self.info = None
        self.error = None

    def __enter__(self):
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        if not self.ready.wait(30) or self.error:
            raise RuntimeError(f"server did not start: {self.error}")
        return self

    def _run(self):
        from ensemble.server.cli import serve

        async def main():
            self.loop = asyncio.get_running_loop()
            self.stop = asyncio.Event()
            await serve(self.cfg, ready=self._ready, stop=self.stop)

        try:
            asyncio.run(main())
        except Exception as exc:  # surfaced by __enter__
            self.error = exc
            self.ready.set()

    def _ready(self, info):
        self.info = info
        self.ready.set()

    @property
    def port(self) -> int:
        return self.info["port"]

    @property
    def conductor(self):
        return self.info["conductor"]

    def __exit__(self, *exc):
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(30)


def start_server_process(args: list[str]) -> tuple[subprocess.Popen, int]:
    """`ensemble serve ARGS` as a real process; returns it and its port once it says it is ready."""
    return start_server(args)
