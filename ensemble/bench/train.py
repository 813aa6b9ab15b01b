"""`ensemble bench train`: training throughput (tokens/s) for a model size on this device.

It times the very loop `ensemble train` runs (forward over a window, cross-entropy,
backward, clipping, AdamW step, state carried), on a prepared corpus or on random
tokens, after a few warm-up steps. On CUDA it uses the same bf16 autocast and cuDNN RNN.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from ensemble.model import CELLS, TokenRNN
from ensemble.train import IGNORE, SIZES, autocast, pick_device


def bench_train(vocab: int, size: str, cell: str, seq_len: int, batch: int, steps: int, warmup: int,
                device_name: str, data: str | None = None) -> dict:
    device = pick_device(device_name)
    if data:
        from ensemble.data import load_prepared

        corpus = load_prepared(data)
        vocab = corpus.codec.vocab_size
        stream = np.concatenate([p.tokens for p in corpus.train])
    else:
        stream = np.random.default_rng(0).integers(0, vocab, size=batch * (seq_len + 1) * 64)
    layers, hidden, embedding = SIZES[size]
    model = TokenRNN(vocab, cell, layers, hidden, embedding).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=device.type == "cuda")
    state = model.initial_state(batch, device)
    span = seq_len + 1
    windows = len(stream) // span - batch
    times = []
    for i in range(warmup + steps):
        start = (i * batch) % max(1, windows)
        chunk = np.stack([stream[(start + b) * span:(start + b + 1) * span] for b in range(batch)])
        x = torch.from_numpy(chunk[:, :-1]).to(device)
        y = torch.from_numpy(chunk[:, 1:]).to(device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        began = time.perf_counter()
        with autocast(device):
            logits, state = model(x, state)
        loss = F.cross_entropy(logits.float().reshape(-1, vocab), y.reshape(-1), ignore_index=IGNORE)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        state = state.detach()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - began)
    per_step = float(np.median(times))
    return {"device": str(device), "vocab": vocab, "size": f"{layers}x{hidden} {cell}", "batch": batch,
            "seq_len": seq_len, "median_step_ms": per_step * 1000, "tokens_per_s": batch * seq_len / per_step,
            "threads": torch.get_num_threads(),
            "parameters": sum(p.numel() for p in model.parameters())}


def add_arguments(p) -> None:
    p.add_argument("--data", help="a prepared corpus (default: random tokens of --vocab)")
    p.add_argument("--vocab", type=int, default=3660, help="vocabulary size for random tokens (default 3660)")
    p.add_argument("--size", default="m", choices=list(SIZES), help="model size preset (default m: 2x256)")
    p.add_argument("--cell", default="lstm", choices=list(CELLS), help="recurrent cell (default lstm)")
    p.add_argument("--seq-len", type=int, default=64, help="tokens per window (default 64)")
    p.add_argument("--batch", type=int, default=32, help="parallel streams per step (default 32)")
    p.add_argument("--steps", type=int, default=20, help="timed steps (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda (default auto)")


def run(args) -> int:
    r = bench_train(args.vocab, args.size, args.cell, args.seq_len, args.batch, args.steps, args.warmup,
                    args.device, args.data)
    print(f"training throughput on {r['device']} ({r['threads']} threads): {r['size']}, "
          f"{r['parameters']:,} parameters, vocab {r['vocab']}, batch {r['batch']} x {r['seq_len']}")
    print(f"  median step {r['median_step_ms']:.1f} ms, {r['tokens_per_s']:,.0f} tokens/s")
    return 0
