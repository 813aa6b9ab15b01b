"""`ensemble bench web`: browser -> server -> browser round trip, measured inside the page.

The server runs as its own process (`ensemble serve --mode duet --web 127.0.0.1:0`,
recording on, as on stage); Debian's chromium, headless and driven by Playwright, opens
the server's own page and runs the benchmark there: N WebSockets (one per performer, as
N browsers would), each saying hello and then playing note-on/note-off at R events/s
for D seconds on a fixed schedule. Each event is timed with `performance.now()` from
just before `ws.send` to the `onmessage` of its answer: in duet mode every event gets
exactly one answer, so the answer numbered k (its seq) belongs to the k-th event, and
an event with no answer is counted as lost. Runs: 1 performer, then 16.

The browser is Debian's chromium (`--chromium PATH`, default /usr/bin/chromium; nothing
is downloaded), driven by default through the DevTools protocol with nothing enabled but
`Runtime.evaluate` (`DevToolsPage` below, over aiohttp): a user's browser has no debugger
recording its traffic. `--driver playwright` drives it through Playwright instead, as the
tests do; Playwright turns on the Network domain, so every WebSocket frame is also
reported to its driver process, which on a 2-core machine costs the page several
milliseconds of p99 with 16 performers (measured; README, "Browser").
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ensemble import serverproc

READY = re.compile(r"browsers on (http://\S+/)")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# runs in the page: resolves with {name: [[sent ms, answered ms | null], ...]}
PAGE_BENCH = """async ([performers, rate, seconds, warmup]) => {
  const url = `ws://${location.host}/ws`;
  const scale = [60, 62, 64, 65, 67, 69, 71, 72];
  const events = Math.round(rate * (seconds + warmup));
  const open = (name) => new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    const p = {name, ws, sent: new Array(events).fill(0), got: new Array(events).fill(null)};
    ws.onmessage = (e) => {
      const t = performance.now();
      const m = JSON.parse(e.data);
      if (m.address === "/ensemble/note" && m.args[0] === name) {
        const seq = m.args[3];
        if (seq >= 1 && seq <= events && p.got[seq - 1] === null) p.got[seq - 1] = t;
      } else if (m.address === "/ensemble/status") resolve(p);
      else if (m.address === "/ensemble/error") reject(new Error(m.args.join(": ")));
    };
    ws.onopen = () => {
      ws.send(JSON.stringify({address: "/ensemble/hello", args: [name, "duet"]}));
      ws.send(JSON.stringify({address: "/ensemble/status", args: [name]}));
    };
    ws.onerror = () => reject(new Error("websocket error"));
  });
  const ps = await Promise.all(Array.from({length: performers}, (_, i) => open(`web${String(i).padStart(2, "0")}`)));
  const period = 1000 / rate;
  await new Promise((done) => {
    let finished = 0;
    ps.forEach((p, i) => setTimeout(() => {
      let k = 0;
      const fire = () => {
        const pitch = scale[(k >> 1) % scale.length];
        p.sent[k] = performance.now();
        p.ws.send(JSON.stringify({address: "/ensemble/note", args: [p.name, pitch, k % 2 ? 0 : 90]}));
        if (++k === events) { clearInterval(timer); finished++; if (finished === ps.length) setTimeout(done, 1000); }
      };
      const timer = setInterval(fire, period);
    }, (i * period) / performers));  // spread the performers over one period
  });
  const out = {};
  for (const p of ps) { out[p.name] = p.sent.map((s, k) => [s, p.got[k]]).slice(Math.round(rate * warmup)); p.ws.close(); }
  return out;
}"""


def start_server(model: str | None, record: str) -> tuple[subprocess.Popen, str]:
    args = ["--port", "0", "--mode", "duet", "--no-snapshot", "--record", record, "--seed", "0",
            "--web", "127.0.0.1:0"] + (["--model", model] if model else [])
    proc, _ = serverproc.start_server(args, stderr=subprocess.DEVNULL)
    match = READY.search(proc.ready_line)
    if not match:
        proc.kill()
        raise RuntimeError(f"the server gave no page address: {proc.ready_line.strip()}")
    return proc, match.group(1)


class DevToolsPage:
    """One chromium page driven over the DevTools protocol: `evaluate` and nothing else
    (no domain is enabled, so the browser reports no events to us)."""

    def __init__(self, chromium: str, url: str, profile: str, extra_args=()):
        self.proc = subprocess.Popen([chromium, *ARGS, *extra_args, "--remote-debugging-port=0",
                                      f"--user-data-dir={profile}", url],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.profile, self.url, self.ids = Path(profile), url, 0
        self.session = self.ws = None

    async def open(self, timeout: float = 30.0) -> None:
        """Wait for the browser's DevTools port, its page target and the page's load."""
        import aiohttp

        deadline = time.monotonic() + timeout
        port_file = self.profile / "DevToolsActivePort"  # chromium writes its port here
        self.session = aiohttp.ClientSession()
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with status {self.proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"chromium gave no page for {self.url} within {timeout:g} s")
            try:
                port = int(port_file.read_text().split()[0])
                async with self.session.get(f"http://127.0.0.1:{port}/json/list") as r:
                    pages = [t for t in await r.json() if t.get("type") == "page" and t.get("url", "").startswith(self.url)]
                if pages:
                    break
            except (OSError, ValueError, IndexError, aiohttp.ClientError):
                pass
            await asyncio.sleep(0.05)
        self.ws = await self.session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0)
        # the target names the URL before the page has left about:blank, and a context can be
        # replaced under an evaluate while it navigates: ask until it is our page, loaded
        loaded = f"location.href.startsWith({json.dumps(self.url)}) && document.readyState === 'complete'"
        while True:
            try:
                if await self.evaluate(loaded, await_promise=False):
                    return
            except RuntimeError:
                if self.proc.poll() is not None:
                    raise
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.url} did not finish loading within {timeout:g} s")
            await asyncio.sleep(0.05)

    async def evaluate(self, expression: str, await_promise: bool = True):
        """The expression's value (JSON), after its promise settles when it gives one."""
        self.ids += 1
        await self.ws.send_json({"id": self.ids, "method": "Runtime.evaluate",
                                 "params": {"expression": expression, "awaitPromise": await_promise,
                                            "returnByValue": True}})
        async for msg in self.ws:
            reply = json.loads(msg.data)
            if reply.get("id") != self.ids:
                continue
            if "error" in reply:
                raise RuntimeError(f"DevTools: {reply['error'].get('message')}")
            if "exceptionDetails" in reply["result"]:
                details = reply["result"]["exceptionDetails"]
                raise RuntimeError(f"in the page: {details.get('exception', {}).get('description', details.get('text'))}")
            return reply["result"]["result"].get("value")
        raise RuntimeError("chromium closed the DevTools connection")

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.session is not None:
            await self.session.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def _bench_devtools(url: str, performers, rate, seconds, warmup, chromium, profile, extra_args) -> list:
    page = DevToolsPage(chromium, url, profile, extra_args)
    try:
        await page.open()
        return [await page.evaluate(f"({PAGE_BENCH})({json.dumps([n, rate, seconds, warmup])})") for n in performers]
    finally:
        await page.close()


def _bench_playwright(url: str, performers, rate, seconds, warmup, chromium, profile, extra_args) -> list:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(profile, executable_path=chromium, headless=True,
                                                        args=ARGS + list(extra_args))
        page = browser.new_page()
        page.goto(url)
        raws = [page.evaluate(PAGE_BENCH, [n, rate, seconds, warmup]) for n in performers]
        browser.close()
    return raws


def summarize(result: dict) -> dict:
    pairs = [pair for events in result.values() for pair in events]
    ms = np.array([got - sent for sent, got in pairs if got is not None])
    lost = sum(1 for _, got in pairs if got is None)
    if not len(ms):
        return {"events": len(pairs), "lost": lost}
    return {"events": len(pairs), "lost": lost, "median_ms": float(np.median(ms)),
            "p99_ms": float(np.percentile(ms, 99)), "max_ms": float(ms.max())}


def bench_web(model: str | None, performers: list[int], rate: float, seconds: float, chromium: str,
              warmup: float = 1.0, extra_args: list[str] = (), driver: str = "devtools") -> list[tuple[int, dict]]:
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_server(model, os.path.join(tmp, "rec"))
        try:
            how = (performers, rate, seconds, warmup, chromium, os.path.join(tmp, "profile"), list(extra_args))
            if driver == "playwright":
                raws = _bench_playwright(url, *how)
            else:
                raws = asyncio.run(_bench_devtools(url, *how))
        finally:
            proc.terminate()
            proc.wait(20)
    return [(n, summarize(raw)) for n, raw in zip(performers, raws)]


def add_arguments(p) -> None:
    p.add_argument("--model", help="model folder (default: the bundled default model)")
    p.add_argument("--performers", type=int, nargs="+", default=[1, 16], help="browser performers per run")
    p.add_argument("--rate", type=float, default=20.0, help="events per second per performer")
    p.add_argument("--seconds", type=float, default=10.0, help="length of each run (after 1 s of warm-up)")
    p.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium",
                   help="the browser to drive (Debian's chromium; Playwright downloads nothing)")
    p.add_argument("--driver", choices=("devtools", "playwright"), default="devtools",
                   help="how the browser is driven: devtools (default: Runtime.evaluate only, nothing "
                        "recorded) or playwright (as the tests do; it reports every WebSocket frame to "
                        "its driver, which costs the page CPU)")
    p.add_argument("--browser-arg", action="append", default=[], metavar="FLAG",
                   help="an extra chromium flag (repeatable), e.g. --browser-arg=--single-process: one process "
                        "instead of renderer + network service + browser, which on a starved CPU shows how much "
                        "of the round trip is the browser's own process hops")


def run(args) -> int:
    if not os.access(args.chromium, os.X_OK):
        print(f"bench web: no browser at {args.chromium} (apt-get install chromium, or --chromium PATH)",
              file=sys.stderr)
        return 2
    results = bench_web(args.model, args.performers, args.rate, args.seconds, args.chromium,
                        extra_args=args.browser_arg, driver=args.driver)
    load = os.getloadavg()
    print("Browser round trip on loopback (page ws.send -> its answer's onmessage, performance.now()), "
          f"server in duet mode, chromium driven by {args.driver}" + (f", chromium {' '.join(args.browser_arg)}" if args.browser_arg else ""))
    print(f"{'run':<34} {'events':>7} {'lost':>5} {'median ms':>10} {'p99 ms':>8} {'max ms':>8}")
    for n, r in results:
        label = f"{n} performer{'s' if n > 1 else ''} x {args.rate:g}/s x {args.seconds:g} s"
        print(f"{label:<34} {r['events']:>7} {r['lost']:>5} {r.get('median_ms', float('nan')):>10.3f} "
              f"{r.get('p99_ms', float('nan')):>8.3f} {r.get('max_ms', float('nan')):>8.3f}")
    print(f"{os.cpu_count()} CPUs shared with the browser and anything else running; load average "
          f"{load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    return 0
