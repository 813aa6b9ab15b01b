"""`ensemble bench`: measure the parts that decide whether the server keeps time.

Each benchmark is one entry of `BENCHMARKS`: a name, a help line, a function that adds
its options to its own sub-parser, and a function that runs it (parsed arguments in,
exit code out). To add one (train, serve, midi, ...), write those two functions and
append a `Benchmark` to the table; `add_parser` registers whatever is in the table.

    ensemble bench step [--model DIR] [--engine numpy|torch|both] [--batch 1 16] ...

Latencies are `time.perf_counter_ns` around each call, reported as median and p99 in
microseconds; numbers on these shared machines are noisy (+-30 %), so compare runs made
one after the other on the same machine, and say which machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import sys
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Benchmark:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


# ------------------------------------------------------------------ shared helpers


def percentiles_us(ns) -> tuple[float, float]:
    """(median, p99) in microseconds of a list of nanosecond durations."""
    a = np.asarray(ns, dtype=np.float64)
    return float(np.median(a)) / 1e3, float(np.percentile(a, 99)) / 1e3


def table(headers: list[str], rows: list[list], align: str | None = None) -> str:
    """A plain text table; `align` is one of 'l'/'r' per column (default: text left, numbers right)."""
    cells = [[str(h) for h in headers]] + [[f"{v:.1f}" if isinstance(v, float) else str(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    if align is None:
        align = "".join("r" if rows and isinstance(rows[0][i], (int, float)) else "l" for i in range(len(headers)))
    def line(r):
        return "  ".join(c.rjust(w) if a == "r" else c.ljust(w) for c, w, a in zip(r, widths, align)).rstrip()
    out = [line(cells[0]), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells[1:]]
    return "\n".join(out)


def thread_settings() -> list[str]:
    """What decides how many threads a step may use, one line each."""
    import torch

    from ensemble.engine import blas_info

    blas = blas_info()
    env = ", ".join(f"{k}={os.environ.get(k, 'unset')}"
                    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"))
    threads = blas["threads"] if blas["threads"] is not None else "unknown"
    return [
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.python_implementation()} "
        f"{platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}",
        f"torch: {torch.get_num_threads()} intra-op threads, {torch.get_num_interop_threads()} inter-op, "
        f"oneDNN (mkldnn) {'on' if torch.backends.mkldnn.enabled else 'off'} (the torch engine turns it off "
        f"during its step)",
        f"numpy BLAS: {blas['name']} {blas['version']}, {threads} threads",
        f"environment: {env}",
    ]


class threads_limited:
    """Set torch's and numpy BLAS's thread counts for a benchmark, restore them after."""

    def __init__(self, n: int | None):
        self.n = n

    def __enter__(self):
        import torch

        from ensemble.engine import blas_info, set_blas_threads

        self._torch = torch.get_num_threads()
        self._blas = blas_info()["threads"]
        self.blas_set = True
        if self.n:
            torch.set_num_threads(self.n)
            self.blas_set = set_blas_threads(self.n)
        return self

    def __exit__(self, *exc):
        import torch

        from ensemble.engine import set_blas_threads

        torch.set_num_threads(self._torch)
        if self.n and self._blas:
            set_blas_threads(self._blas)


# ------------------------------------------------------------------------- bench step


def _step_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="DIR", help="model folder to load; default: a random TokenRNN (below)")
    p.add_argument("--engine", choices=["numpy", "torch", "both"], default="both", help="default: both")
    p.add_argument("--iterations", type=int, default=2000, metavar="N", help="timed calls per case (default 2000)")
    p.add_argument("--warmup", type=int, default=200, metavar="N", help="untimed calls first (default 200)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 16], metavar="B",
                   help="slots stepped per call (default: 1 16)")
    p.add_argument("--threads", type=int, default=1, metavar="N",
                   help="torch and numpy BLAS threads during the run (default 1; 0: leave as they are)")
    p.add_argument("--sampler", choices=["fast", "plain"], default="fast",
                   help="engine.Sampler (default) or sampling.sample; both draw the same tokens")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest (default 0: all)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (default 1.0: off)")
    p.add_argument("--seed", type=int, default=0, help="seeds the random model, the first tokens and the sampler")
    g = p.add_argument_group("random model (without --model)")
    g.add_argument("--cell", choices=["rnn", "gru", "lstm"], default="lstm", help="recurrent cell (default lstm)")
    g.add_argument("--layers", type=int, default=2, help="stacked layers, 1-3 (default 2)")
    g.add_argument("--hidden", type=int, default=256, help="hidden units per layer (default 256)")
    g.add_argument("--embedding", type=int, default=64, help="token embedding size (default 64)")
    g.add_argument("--vocab", type=int, default=1000, help="vocabulary size: the output layer's width (default 1000)")


def _time_steps(engine, sampler, settings, rng, batch: int, iterations: int, warmup: int):
    """Per call: ns of the step, of the sampling, and of both."""
    slots = np.array([engine.alloc_slot() for _ in range(batch)], dtype=np.intp)
    tokens = rng.integers(0, engine.vocab_size, batch).astype(np.intp)
    clock = time.perf_counter_ns
    n = warmup + iterations
    step_ns, sample_ns = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    for i in range(n):
        t0 = clock()
        logits = engine.step(slots, tokens)
        t1 = clock()
        tokens = sampler(logits, settings, rng)
        t2 = clock()
        step_ns[i], sample_ns[i] = t1 - t0, t2 - t1
    for s in slots:
        engine.free_slot(int(s))
    return step_ns[warmup:], sample_ns[warmup:]


def bench_step(args: argparse.Namespace) -> int:
    import torch

    from ensemble.engine import Sampler, make_engine
    from ensemble.model import TokenRNN
    from ensemble.sampling import SamplingSettings, sample

    def error(message: str) -> int:
        print(f"ensemble bench step: error: {message}", file=sys.stderr)
        return 2

    if args.iterations < 1 or args.warmup < 0 or min(args.batch) < 1 or args.threads < 0:
        return error("--iterations >= 1, --warmup >= 0, --batch >= 1 and --threads >= 0 needed")
    try:
        settings = SamplingSettings(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    except ValueError as exc:
        return error(str(exc))
    if args.model:
        from ensemble import checkpoint

        model = checkpoint.load(args.model).model
        source = f"model {args.model}"
    else:
        torch.manual_seed(args.seed)
        try:
            model = TokenRNN(args.vocab, args.cell, args.layers, args.hidden, args.embedding).eval()
        except ValueError as exc:
            return error(str(exc))
        source = "random weights"
    cfg = model.config
    kinds = ["numpy", "torch"] if args.engine == "both" else [args.engine]

    rows = []
    with threads_limited(args.threads or None) as limits:
        settings_lines = thread_settings()
        if not limits.blas_set:
            settings_lines.append(f"(numpy BLAS threads could not be set to {args.threads} in this process)")
        for kind in kinds:
            engine = make_engine(model, kind, slots=max(args.batch))
            for batch in args.batch:
                sampler = Sampler(cfg.vocab_size, batch) if args.sampler == "fast" else sample
                rng = np.random.default_rng(args.seed)
                step_ns, sample_ns = _time_steps(engine, sampler, settings, rng, batch, args.iterations, args.warmup)
                call_med, call_p99 = percentiles_us(step_ns + sample_ns)
                rows.append([kind, batch, call_med, call_p99, call_med / batch, call_p99 / batch,
                             percentiles_us(step_ns)[0], percentiles_us(sample_ns)[0]])

    print(f"ensemble bench step: {cfg.cell} {cfg.layers} x {cfg.hidden}, embedding {cfg.embedding}, "
          f"vocab {cfg.vocab_size} ({source})")
    print(f"{args.iterations} timed calls after {args.warmup} warm-up per case; one call = step(B slots) + "
          f"sample(B rows, {args.sampler} sampler, temperature {settings.temperature}, top-k {settings.top_k}, "
          f"top-p {settings.top_p})")
    for line in settings_lines:
        print(line)
    print()
    print(table(["engine", "batch", "call median us", "call p99 us", "event median us", "event p99 us",
                 "step median us", "sample median us"], rows))
    return 0


# ---------------------------------------------------------------------- registration

def _lazy(module: str, name: str):
    """A sub-benchmark's function, imported only when it runs (keeps `ensemble --help` light)."""

    def call(arg):
        import importlib

        return getattr(importlib.import_module(module), name)(arg)

    return call


BENCHMARKS: list[Benchmark] = [
    Benchmark("step", "latency of one model step plus sampling, per call and per event",
              _step_arguments, bench_step),
    Benchmark("serve", "OSC round trip through a running server: 1 performer, and 16 at 50 events/s",
              _lazy("ensemble.bench_serve", "add_arguments"), _lazy("ensemble.bench_serve", "run")),
    Benchmark("fuzz", "bad packets of every kind while a good performer plays: lost, latency, memory, log",
              _lazy("ensemble.bench_fuzz", "add_arguments"), _lazy("ensemble.bench_fuzz", "run")),
    Benchmark("train", "training throughput in tokens/s for a model size on this device",
              _lazy("ensemble.bench_train", "add_arguments"), _lazy("ensemble.bench_train", "run")),
    Benchmark("metatone", "Metatone apps at 60 touches/s: touches lost, gesture answers, classification tick time",
              _lazy("ensemble.bench_metatone", "add_arguments"), _lazy("ensemble.bench_metatone", "run")),
    Benchmark("midi", "MIDI latency through real JACK ports (needs jackd)",
              _lazy("ensemble.bench_midi", "add_arguments"), _lazy("ensemble.bench_midi", "run")),
]
BENCHMARKS = [b for b in BENCHMARKS if b.name != "midi" or importlib.util.find_spec("ensemble.bench_midi")]


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench", help="measure latency and throughput",
        description="Measure the parts of the hot path (and more); see `ensemble bench BENCHMARK --help`.",
    )
    sub = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK")
    for b in BENCHMARKS:
        p = sub.add_parser(b.name, help=b.help, description=b.help)
        b.add_arguments(p)
        p.set_defaults(func=b.run)

    def usage(args):
        parser.print_help()
        return 2

    parser.set_defaults(func=usage)
