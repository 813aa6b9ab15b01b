"""`ensemble bench`: measure the parts that decide whether the server keeps time.

Each benchmark is one entry of `BENCHMARKS`: a name, a help line, a function that adds
its options to its own sub-parser, and a function that runs it (parsed arguments in,
exit code out). `step` lives here; the others are modules of this package (`serve`,
`fuzz`, `train`, `midi`, `web`), imported only when they run. To add one, write its
module with `add_arguments` and `run` and append a `Benchmark` to the table.

    ensemble bench step [--model DIR] [--engine numpy|int8|torch|both|all] [--batch 1 16] ...

`bench step` samples with the server's own defaults (`ServerConfig`: top-p 0.95, ...)
unless told otherwise, so it measures what `ensemble serve` does per event, and prints
the weight-streaming floor beside the step: the bytes of weights one step reads,
divided by the memory bandwidth this benchmark measures on the spot. For batches it
prints the compute floor too: the multiply-adds one call does, at the product rate it
measures on the spot (numpy: a 512 x 512 by 512 x 512 float32 product on the same BLAS
threads; the int8 engine: its own int8 product, `engine_int8.product_rate`). One slot is bound by reading its weights; 16 slots by arithmetic, so the
second floor says how close "16 slots for N times one" can get.

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
    """What decides how many threads a step may use, one line each (torch's only if it
    is already imported: the live path does without it)."""
    from ensemble.engine import blas_info

    blas = blas_info()
    env = ", ".join(f"{k}={os.environ.get(k, 'unset')}"
                    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"))
    threads = blas["threads"] if blas["threads"] is not None else "unknown"
    torch = sys.modules.get("torch")
    lines = [
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.python_implementation()} "
        f"{platform.python_version()}, numpy {np.__version__}, torch {torch.__version__ if torch else 'not imported'}",
        f"numpy BLAS: {blas['name']} {blas['version']}, {threads} threads",
        f"environment: {env}",
    ]
    if torch is not None:
        lines.insert(1, f"torch: {torch.get_num_threads()} intra-op threads, {torch.get_num_interop_threads()} "
                        f"inter-op, oneDNN (mkldnn) {'on' if torch.backends.mkldnn.enabled else 'off'} (the torch "
                        f"engine turns it off during its step)")
    return lines


def memory_bandwidth(nbytes: int = 256 << 20, repeats: int = 5) -> float:
    """Read bandwidth in bytes/s: the best of `repeats` float32 sums over a buffer far
    larger than any cache here (256 MiB), so it streams from memory as the weights of a
    big model must. One thread (numpy's reductions have none of their own)."""
    buf = np.ones(nbytes // 4, dtype=np.float32)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        buf.sum()
        best = min(best, time.perf_counter() - t0)
    del buf
    return nbytes / best


def matmul_rate(n: int = 512, repeats: int = 5) -> float:
    """float32 FLOP/s of one n x n by n x n matrix product (2 n^3 operations), the best of
    `repeats`, on the BLAS threads as set: what this core's arithmetic can do in a product
    big enough to run at BLAS's full speed, the bound a batch of slots cannot beat."""
    rng = np.random.default_rng(0)
    a, b = rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32)
    out = np.empty((n, n), dtype=np.float32)
    np.matmul(a, b, out=out)  # the first call pays for BLAS's buffers
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.matmul(a, b, out=out)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def step_flops(engine) -> int:
    """Operations one slot's step takes in its matrix products (2 per weight: a multiply
    and an add): the numpy engine's float32 arrays, the int8 engine's int8 matrices; 0
    for others (torch's products are its own). The gates' nonlinearities and the input
    table's row add are left out: a few per hidden unit against hundreds per weight column."""
    kind = getattr(engine, "kind", "")
    if kind == "int8":
        return 2 * int(engine.int8_weights)
    if kind != "numpy":
        return 0
    return 2 * int(sum(w.size for w in engine.weights) + engine.head.size)


def product_rate(kind: str) -> float | None:
    """The arithmetic rate (operations/s) a batch of `kind`'s slots cannot beat on this
    core: numpy's float32 matrix product, or the int8 engine's fixed-scale int8 product."""
    if kind == "numpy":
        return matmul_rate()
    if kind == "int8":
        from ensemble.engine_int8 import product_rate as int8_rate

        return int8_rate()
    return None


def weight_bytes(engine) -> int:
    """Bytes of weights one step of one slot reads: every gate matrix, the output layer
    and one row of per-token input (an input table or embedding row; 0 for engines that
    do not say)."""
    if hasattr(engine, "weight_bytes"):  # engines that count their own (int8: one byte a weight)
        return int(engine.weight_bytes)
    weights = getattr(engine, "weights", None)
    if weights is None:
        return 0
    return int(sum(w.nbytes for w in weights) + sum(b.nbytes for b in engine.biases if b is not None)
               + engine.head.nbytes + engine.input_row_bytes)


class threads_limited:
    """Set numpy BLAS's (and torch's, if imported) thread counts for a benchmark, restore them after."""

    def __init__(self, n: int | None):
        self.n = n

    def __enter__(self):
        from ensemble.engine import blas_info, set_blas_threads

        torch = sys.modules.get("torch")
        self._torch = torch.get_num_threads() if torch else None
        self._blas = blas_info()["threads"]
        self.blas_set = True
        if self.n:
            if torch:
                torch.set_num_threads(self.n)
            self.blas_set = set_blas_threads(self.n)
        return self

    def __exit__(self, *exc):
        from ensemble.engine import set_blas_threads

        torch = sys.modules.get("torch")
        if torch and self._torch:
            torch.set_num_threads(self._torch)
        if self.n and self._blas:
            set_blas_threads(self._blas)


# ------------------------------------------------------------------------- bench step


def _step_arguments(p: argparse.ArgumentParser) -> None:
    from ensemble.server.config import ServerConfig

    served = ServerConfig()
    p.add_argument("--model", metavar="DIR", help="model folder to load; default: a random TokenRNN (below)")
    p.add_argument("--engine", choices=["numpy", "int8", "torch", "both", "all"], default="numpy",
                   help="default: numpy (what the server runs); int8: int8 weights through onnxruntime "
                        "(pip install 'ensemble[int8]'); torch is the reference; both: numpy and torch; "
                        "all: the three")
    p.add_argument("--iterations", type=int, default=2000, metavar="N", help="timed calls per case (default 2000)")
    p.add_argument("--warmup", type=int, default=200, metavar="N", help="untimed calls first (default 200)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 16], metavar="B",
                   help="slots stepped per call (default: 1 16)")
    p.add_argument("--threads", type=int, default=1, metavar="N",
                   help="numpy BLAS (and torch) threads during the run (default 1, as served; 0: leave as they are)")
    p.add_argument("--sampler", choices=["fast", "plain"], default="fast",
                   help="sampling.Sampler (default, what the server runs) or sampling.sample (the reference)")
    p.add_argument("--temperature", type=float, default=served.temperature,
                   help=f"sampling temperature (default {served.temperature}, the server's)")
    p.add_argument("--top-k", type=int, default=served.top_k,
                   help=f"sample among the k likeliest (default {served.top_k}, the server's; 0: all)")
    p.add_argument("--top-p", type=float, default=served.top_p,
                   help=f"nucleus sampling (default {served.top_p}, the server's; 1.0: off)")
    p.add_argument("--mask-fraction", type=float, default=0.0, metavar="F",
                   help="forbid this fraction of the tokens (seeded, the same every call), as a mask the "
                        "sampler gets: duet mode forbids the notes codec's note-offs, a fifth of its tokens "
                        "(default 0: no mask)")
    p.add_argument("--no-floor", action="store_true",
                   help="skip measuring memory bandwidth and the matrix product rate (about a second)")
    p.add_argument("--seed", type=int, default=0, help="seeds the random model, the first tokens and the sampler")
    g = p.add_argument_group("random model (without --model)")
    g.add_argument("--cell", choices=["rnn", "gru", "lstm"], default="lstm", help="recurrent cell (default lstm)")
    g.add_argument("--layers", type=int, default=2, help="stacked layers, 1-3 (default 2)")
    g.add_argument("--hidden", type=int, default=256, help="hidden units per layer (default 256)")
    g.add_argument("--embedding", type=int, default=64, help="token embedding size (default 64)")
    g.add_argument("--vocab", type=int, default=1000, help="vocabulary size: the output layer's width (default 1000)")
    g.add_argument("--layer-norm", action="store_true", help="a layer-normalised LSTM (the trainer's --layer-norm)")


def _time_steps(engine, sampler, settings, rng, batch: int, iterations: int, warmup: int, mask=None):
    """Per call: ns of the step and of the sampling."""
    slots = np.array([engine.alloc_slot() for _ in range(batch)], dtype=np.intp)
    tokens = rng.integers(0, engine.vocab_size, batch).astype(np.intp)
    clock = time.perf_counter_ns
    n = warmup + iterations
    step_ns, sample_ns = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    for i in range(n):
        t0 = clock()
        logits = engine.step(slots, tokens)
        t1 = clock()
        tokens = sampler(logits, settings, rng, mask)
        t2 = clock()
        step_ns[i], sample_ns[i] = t1 - t0, t2 - t1
    for s in slots:
        engine.free_slot(int(s))
    return step_ns[warmup:], sample_ns[warmup:]


def random_weights(vocab: int, cell: str, layers: int, hidden: int, embedding: int, seed: int,
                   layer_norm: bool = False):
    """A TokenRNN's worth of random numpy weights (torch's default init scale; a layer
    normalisation's gains near 1), no torch."""
    from ensemble.model_types import ModelConfig, ModelWeights, weight_shapes

    config = ModelConfig(vocab, cell, layers, hidden, embedding, layer_norm=layer_norm)
    rng = np.random.default_rng(seed)
    arrays = {}
    for name, shape in weight_shapes(config).items():
        scale = 1.0 if name == "embed.weight" else 1.0 / np.sqrt(shape[-1] if len(shape) > 1 else hidden)
        arrays[name] = rng.uniform(-scale, scale, shape).astype(np.float32)
        if ".ln_" in name and "weight" in name:
            arrays[name] += 1.0
    return ModelWeights(config, arrays)


def bench_step(args: argparse.Namespace) -> int:
    from ensemble.engine import make_engine
    from ensemble.sampling import Sampler, SamplingSettings, sample
    from ensemble.server.config import ServerConfig

    def error(message: str) -> int:
        print(f"ensemble bench step: error: {message}", file=sys.stderr)
        return 2

    if args.iterations < 1 or args.warmup < 0 or min(args.batch) < 1 or args.threads < 0 \
            or not 0 <= args.mask_fraction < 1:
        return error("--iterations >= 1, --warmup >= 0, --batch >= 1, --threads >= 0 and "
                     "--mask-fraction in [0, 1) needed")
    try:
        settings = SamplingSettings(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    except ValueError as exc:
        return error(str(exc))
    if args.model:
        from ensemble import checkpoint

        model = checkpoint.load_live(args.model).model  # as the server loads it
        source = f"model {args.model}"
    else:
        try:
            model = random_weights(args.vocab, args.cell, args.layers, args.hidden, args.embedding, args.seed,
                                   args.layer_norm)
        except ValueError as exc:
            return error(str(exc))
        source = "random weights"
    cfg = model.config
    kinds = {"both": ["numpy", "torch"], "all": ["numpy", "int8", "torch"]}.get(args.engine, [args.engine])
    mask = None
    if args.mask_fraction > 0:
        mask = np.random.default_rng(args.seed).random(cfg.vocab_size) < args.mask_fraction
        mask[0] = False  # never everything
    served = ServerConfig()
    as_served = (settings.temperature, settings.top_k, settings.top_p) == (served.temperature, served.top_k,
                                                                             served.top_p)

    rows, floors, flops, settings_notes = [], {}, {}, []
    with threads_limited(args.threads or None) as limits:
        bandwidth = None if args.no_floor else memory_bandwidth()
        rates = {}
        for kind in kinds:
            engine = make_engine(model, kind, slots=max(args.batch))
            if engine.compute_note:
                settings_notes.append(engine.label)
            floors[kind] = weight_bytes(engine)
            flops[kind] = step_flops(engine)
            if not args.no_floor and flops[kind]:
                rates[kind] = product_rate(kind)
            for batch in args.batch:
                sampler = Sampler(cfg.vocab_size, batch) if args.sampler == "fast" else sample
                rng = np.random.default_rng(args.seed)
                step_ns, sample_ns = _time_steps(engine, sampler, settings, rng, batch, args.iterations, args.warmup,
                                                 mask)
                call_med, call_p99 = percentiles_us(step_ns + sample_ns)
                rows.append([kind, batch, call_med, call_p99, call_med / batch, call_p99 / batch,
                             percentiles_us(step_ns)[0], percentiles_us(sample_ns)[0]])
        settings_lines = thread_settings() + settings_notes  # after the engines: torch appears if it ran
        if not limits.blas_set:
            settings_lines.append(f"(numpy BLAS threads could not be set to {args.threads} in this process)")

    normalised = " (layer-normalised)" if cfg.layer_norm else ""
    print(f"ensemble bench step: {cfg.cell} {cfg.layers} x {cfg.hidden}{normalised}, embedding {cfg.embedding}, "
          f"vocab {cfg.vocab_size} ({source})")
    print(f"{args.iterations} timed calls after {args.warmup} warm-up per case; one call = step(B slots) + "
          f"sample(B rows, {args.sampler} sampler, temperature {settings.temperature}, top-k {settings.top_k}, "
          f"top-p {settings.top_p}" + (": the server's defaults, as served)" if as_served
                                       else "; the server's defaults are temperature "
                                       f"{served.temperature}, top-k {served.top_k}, top-p {served.top_p})")
          + (f", {int(mask.sum())} of {cfg.vocab_size} tokens masked" if mask is not None else ""))
    for line in settings_lines:
        print(line)
    if os.path.exists("/proc/loadavg"):
        with open("/proc/loadavg") as f:
            print(f"load average: {' '.join(f.read().split()[:3])} (other processes share these CPUs)")
    print()
    print(table(["engine", "batch", "call median us", "call p99 us", "event median us", "event p99 us",
                 "step median us", "sample median us"], rows))
    for kind in kinds:
        mine = {r[1]: r for r in rows if r[0] == kind}
        if 1 in mine and len(mine) > 1:
            print(f"{kind}: " + ", ".join(f"{b} slots cost {mine[b][2] / mine[1][2]:.1f}x one slot per call "
                                          f"(step alone {mine[b][6] / mine[1][6]:.1f}x, sampling "
                                          f"{mine[b][7] / b:.1f} us a row against {mine[1][7]:.1f} us for one)"
                                          for b in mine if b != 1))
    if bandwidth:
        for kind in kinds:
            nbytes = floors[kind]
            if not nbytes:
                continue
            floor_us = nbytes / bandwidth * 1e6
            one = [r for r in rows if r[0] == kind and r[1] == 1]
            ratio = f"; batch-1 step {one[0][6]:.1f} us = {one[0][6] / floor_us:.2f}x the floor, step + sample " \
                    f"{one[0][2]:.1f} us = {one[0][2] / floor_us:.2f}x" if one else ""
            print(f"weight-streaming floor ({kind}): {nbytes / 1e6:.2f} MB of weights per step / "
                  f"{bandwidth / 1e9:.1f} GB/s measured memory read bandwidth = {floor_us:.1f} us{ratio}"
                  + (" (weights this small stay in cache, so a step can beat it)" if nbytes < (8 << 20) else ""))
    for kind, rate in rates.items():
        for line in compute_floor_lines(kind, flops[kind], rate, rows):
            print(line)
    return 0


def compute_floor_lines(kind: str, flops: int, rate: float, rows: list[list]) -> list[str]:
    """The compute floor of each batch (its products' operations at the measured matrix
    product rate) beside its step, and what a 16-slot step of 3x one slot's would need
    (issue 15's goal) against that rate. `rows` are bench step's table rows."""
    if not flops:
        return []
    mine = {r[1]: r for r in rows if r[0] == kind}
    what = {"int8": "int8"}.get(kind, "float32")
    product = {"int8": "512^3, MatMulIntegerToFloat"}.get(kind, "512^3")
    unit = "OP" if kind == "int8" else "FLOP"  # integer operations are not floating-point ones
    lines = [f"compute floor ({kind}): {flops / 1e6:.2f} M{unit} per slot per step in its matrix products / "
             f"{rate / 1e9:.1f} G{unit}/s measured {what} matrix product rate ({product}) = "
             f"{flops / rate * 1e6:.1f} us per slot"]
    for batch, r in sorted(mine.items()):
        if batch == 1:
            continue
        floor_us = batch * flops / rate * 1e6
        lines.append(f"  {batch} slots: floor {floor_us:.1f} us, step {r[6]:.1f} us = {r[6] / floor_us:.2f}x the "
                     f"floor ({batch * flops / (r[6] * 1e-6) / 1e9:.1f} G{unit}/s)")
    if 1 in mine and 16 in mine:
        goal_us = 3 * mine[1][6]
        need = 16 * flops / (goal_us * 1e-6)
        lines.append(f"  16 slots in 3x one slot's step ({goal_us:.1f} us) would need {need / 1e9:.1f} G{unit}/s, "
                     f"{need / rate:.2f}x the measured rate" + (f": beyond this core's {what} arithmetic"
                                                                if need > rate else ""))
    return lines


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
              _lazy("ensemble.bench.serve", "add_arguments"), _lazy("ensemble.bench.serve", "run")),
    Benchmark("fuzz", "bad packets of every kind while a good performer plays: lost, latency, memory, log",
              _lazy("ensemble.bench.fuzz", "add_arguments"), _lazy("ensemble.bench.fuzz", "run")),
    Benchmark("train", "training throughput in tokens/s for a model size on this device",
              _lazy("ensemble.bench.train", "add_arguments"), _lazy("ensemble.bench.train", "run")),
    Benchmark("metatone", "Metatone apps at 60 touches/s: touches lost, gesture answers, classification tick time",
              _lazy("ensemble.bench.metatone", "add_arguments"), _lazy("ensemble.bench.metatone", "run")),
    Benchmark("midi", "MIDI latency through real JACK ports (needs jackd)",
              _lazy("ensemble.bench.midi", "add_arguments"), _lazy("ensemble.bench.midi", "run")),
    Benchmark("web", "browser round trip measured in the page (chromium): 1 and 16 performers at 20 events/s",
              _lazy("ensemble.bench.web", "add_arguments"), _lazy("ensemble.bench.web", "run")),
]
BENCHMARKS = [b for b in BENCHMARKS if b.name != "midi" or importlib.util.find_spec("ensemble.bench.midi")]


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
