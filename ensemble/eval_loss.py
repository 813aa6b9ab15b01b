"""`ensemble eval loss`: a model's validation loss as a live engine computes it.

The trainer reports validation loss from the torch model; this runs the held-out pieces
of a prepared corpus through the engine the server would use (`numpy`, `int8`, or the
`torch` reference), each piece from a fresh state with the state carried through it, and
prints nats (and bits) per token. So a reduced-precision engine is judged by what it
costs the model, not by how far its logits move: `ensemble eval loss --model M --data
CORPUS --engine numpy int8` prints both and their difference.

Pieces are stepped side by side, one engine slot each, `--batch` at a time.
"""

from __future__ import annotations

import math
import time

import numpy as np

from ensemble.errors import UserError


def piece_losses(engine, pieces, batch: int = 16) -> tuple[float, int]:
    """Summed negative log-likelihood (nats) of every token after the first of each piece,
    and how many tokens that is."""
    total, count = 0.0, 0
    slots = [engine.alloc_slot() for _ in range(batch)]
    try:
        for start in range(0, len(pieces), batch):
            group = [p for p in pieces[start:start + batch] if len(p) >= 2]
            for s in slots:
                engine.reset_slot(s)
            longest = max((len(p) for p in group), default=0)
            for t in range(longest - 1):
                live = [j for j, p in enumerate(group) if t + 1 < len(p)]
                logits = engine.step([slots[j] for j in live], [int(group[j][t]) for j in live])
                logits = np.asarray(logits, dtype=np.float64)
                top = logits.max(axis=1, keepdims=True)
                lse = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
                targets = np.array([group[j][t + 1] for j in live])
                total += float((lse - logits[np.arange(len(live)), targets]).sum())
                count += len(live)
    finally:
        for s in slots:
            engine.free_slot(s)
    return total, count


def run(args) -> int:
    from ensemble import checkpoint
    from ensemble.data import load_prepared
    from ensemble.engine import make_engine, set_blas_threads

    if args.pieces is not None and args.pieces < 1:
        raise UserError("--pieces must be >= 1")
    set_blas_threads(1)
    ckpt = checkpoint.load_live(args.model)
    corpus = load_prepared(args.data)
    if corpus.codec.describe() != ckpt.codec.describe():
        raise UserError(f"{args.data} was prepared with another codec than {args.model}'s "
                        f"({corpus.codec.name}, {corpus.codec.vocab_size} tokens vs {ckpt.codec.vocab_size})")
    pieces = [p.tokens for p in corpus.val]
    if not pieces:
        raise UserError(f"{args.data}: no validation pieces")
    pieces = pieces[: args.pieces] if args.pieces else pieces
    results = {}
    for kind in args.engine:
        try:
            engine = make_engine(ckpt.model, kind, slots=args.batch)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        began = time.perf_counter()
        nll, n = piece_losses(engine, pieces, args.batch)
        results[kind] = nll / n
        print(f"{kind:>6}: {nll / n:.4f} nats/token ({nll / n / math.log(2):.4f} bits) over {n:,} tokens of "
              f"{len(pieces)} held-out pieces, {time.perf_counter() - began:.1f} s")
    if len(results) > 1:
        first = args.engine[0]
        for kind in args.engine[1:]:
            print(f"{kind} - {first}: {results[kind] - results[first]:+.4f} nats/token")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("loss", help="validation loss through a live engine (numpy, int8, torch)",
                       description=__doc__.split("\n\n")[1])
    p.add_argument("--model", required=True, help="a model folder")
    p.add_argument("--data", required=True, help="a prepared corpus (its validation pieces are used)")
    p.add_argument("--engine", nargs="+", default=["numpy"], choices=["numpy", "int8", "torch"],
                   help="engines to run (the first is the one the others are compared with)")
    p.add_argument("--pieces", type=int, help="only the first N validation pieces")
    p.add_argument("--batch", type=int, default=16, help="pieces stepped side by side")
    p.set_defaults(func=run)
