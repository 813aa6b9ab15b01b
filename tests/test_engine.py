"""The live engines against the torch model itself: same logits, slot by slot.

Real tiny TokenRNNs (random weights), every cell and depth (and the layer-normalised
LSTM, "lstm-ln"), slots stepped in shuffled
groups of every size so both the one-slot-at-a-time path and the batched path run.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from ensemble import engine as engine_module
from ensemble.engine import NumpyEngine, Sampler, SlotError, TorchEngine, make_engine, padded_width
from ensemble.model import TokenRNN
from ensemble.sampling import SamplingSettings, forbidden_mask, sample

TOL = 1e-5


def tiny_model(cell="lstm", layers=2, vocab=41, hidden=24, embedding=8, dropout=0.0, seed=0) -> TokenRNN:
    """cell "lstm-ln": a layer-normalised LSTM, its gains and shifts made unequal."""
    torch.manual_seed(seed)
    layer_norm = cell == "lstm-ln"
    model = TokenRNN(vocab, "lstm" if layer_norm else cell, layers, hidden, embedding, dropout,
                     layer_norm=layer_norm).eval()
    with torch.no_grad():  # larger than the default init, so the gates leave their linear range
        for name, p in model.named_parameters():
            p.mul_(2.0)
            if ".ln_" in name:  # gains of 2 and shifts of 0 everywhere would hide a mixed-up gate
                p.add_(torch.randn_like(p) * 0.5)
    return model


def reference_run(model, n_slots, schedule):
    """Logits of the torch model stepping the given groups of slots, with RNNState rows."""
    state = model.initial_state(n_slots)
    out = []
    with torch.no_grad():
        for group, tokens in schedule:
            idx = torch.as_tensor(group)
            logits, new = model.step(torch.as_tensor(tokens), state.rows(idx))
            state.put_rows(idx, new)
            out.append(logits.numpy())
    return out, state


def random_schedule(n_slots, steps, vocab, seed):
    """`steps` rounds; each round steps every slot once, in shuffled groups of 1..n_slots."""
    rng = np.random.default_rng(seed)
    schedule = []
    for _ in range(steps):
        order = rng.permutation(n_slots)
        cuts = np.sort(rng.choice(np.arange(1, n_slots), size=rng.integers(0, n_slots), replace=False))
        for group in np.split(order, cuts):
            schedule.append((group, rng.integers(0, vocab, len(group))))
    return schedule


@pytest.mark.parametrize("kind", ["numpy", "numpy-embedding", "torch"])
@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm", "lstm-ln"])
def test_engine_matches_model_step(cell, layers, kind):
    """numpy: with the input table (the default at these sizes); numpy-embedding: without."""
    n_slots = 6
    model = tiny_model(cell, layers)
    schedule = random_schedule(n_slots, 50, model.config.vocab_size, seed=layers)
    sizes = {len(g) for g, _ in schedule}
    assert 1 in sizes and max(sizes) > engine_module.GEMV_MAX_BATCH  # both numpy paths run
    expected, final = reference_run(model, n_slots, schedule)

    if kind == "numpy-embedding":
        eng = NumpyEngine(model, slots=n_slots, input_table=False)
        assert eng.input_table is None and eng.bank.h_start == 1 + model.config.embedding
    else:
        eng = make_engine(model, kind, slots=n_slots)
    if kind == "numpy":
        assert eng.input_table is not None and eng.embedding is None and eng.bank.h_start == 1
    assert [eng.alloc_slot() for _ in range(n_slots)] == list(range(n_slots))
    worst = 0.0
    for (group, tokens), want in zip(schedule, expected):
        got = eng.step(group, tokens)
        assert got.shape == (len(group), model.config.vocab_size) and got.dtype == np.float32
        worst = max(worst, float(np.abs(got - want).max()))
    # layer normalisation divides by each step's spread, which magnifies float32 rounding
    # (torch's and numpy's sums differ in their last bits): measured at most 1.3e-5 on
    # logits of up to 2.6, and its unnormalised c grows (up to ~10 here): relative there
    tol, c_rtol = (5e-5, 1e-5) if cell == "lstm-ln" else (TOL, 0)
    assert worst < tol, f"{cell} x {layers} {kind}: max |logit difference| {worst}"
    for slot in range(n_slots):  # and the states themselves
        state = eng.get_state(slot)
        np.testing.assert_allclose(state["h"], final.h[:, slot].numpy(), atol=tol, rtol=0)
        if cell.startswith("lstm"):
            np.testing.assert_allclose(state["c"], final.c[:, slot].numpy(), atol=tol, rtol=c_rtol)
        else:
            assert "c" not in state


def test_input_table_only_up_to_its_size_limit(monkeypatch):
    """The table is vocabulary x gate columns of float32: built when it fits the limit,
    else the engine steps the embedding; both give the model's logits."""
    model = tiny_model("lstm", 2, vocab=41, hidden=24, embedding=8)
    table_bytes = 41 * 4 * 24 * 4
    monkeypatch.setattr(engine_module, "INPUT_TABLE_MAX_BYTES", table_bytes)
    assert NumpyEngine(model).input_table.shape == (41, 4 * 24)
    monkeypatch.setattr(engine_module, "INPUT_TABLE_MAX_BYTES", table_bytes - 1)
    eng = NumpyEngine(model)
    assert eng.input_table is None and eng.embedding.shape == (41, 8)
    assert eng.input_row_bytes == 8 * 4 and NumpyEngine(model, input_table=True).input_row_bytes == 4 * 24 * 4


def test_padded_weights_match():
    """hidden 256 LSTM: 1024 gate columns and a 1024-token head get padded; same logits."""
    model = tiny_model("lstm", 1, vocab=1024, hidden=256, embedding=16)
    assert padded_width(1024) > 1024
    eng = NumpyEngine(model, slots=5)
    assert eng.gate_width == padded_width(1024) and eng.head.shape[1] == padded_width(1024)
    schedule = random_schedule(5, 10, 1024, seed=3)
    expected, _ = reference_run(model, 5, schedule)
    for _ in range(5):
        eng.alloc_slot()
    for (group, tokens), want in zip(schedule, expected):
        np.testing.assert_allclose(eng.step(group, tokens), want, atol=TOL, rtol=0)
    logits = eng.step_one(0, 7)
    assert logits.shape == (1024,)


@pytest.mark.parametrize("cell", ["gru", "lstm", "lstm-ln"])
def test_slot_result_does_not_depend_on_batch_mates(cell):
    model = tiny_model(cell, 2)
    vocab = model.config.vocab_size
    rng = np.random.default_rng(7)
    mine = rng.integers(0, vocab, 30)
    alone = make_engine(model, "numpy", slots=8)
    crowd = make_engine(model, "numpy", slots=8)
    a = alone.alloc_slot()
    slots = [crowd.alloc_slot() for _ in range(8)]
    target = slots[5]
    for t in range(30):
        want = alone.step([a], [mine[t]])[0].copy()
        others = [s for s in slots if s != target]
        mates = list(rng.choice(others, size=rng.integers(0, 8), replace=False))
        group = mates + [target]
        rng.shuffle(group)
        tokens = [mine[t] if s == target else rng.integers(0, vocab) for s in group]
        got = crowd.step(group, tokens)[group.index(target)]
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    np.testing.assert_allclose(crowd.get_state(target)["h"], alone.get_state(a)["h"], atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_reset_slot_gives_initial_state(kind):
    model = tiny_model("lstm", 2)
    eng = make_engine(model, kind, slots=3)
    s0, s1 = eng.alloc_slot(), eng.alloc_slot()
    fresh = eng.step([s1], [5])[0].copy()
    for t in [3, 1, 4, 1, 5]:
        eng.step([s0, s1], [t, t])
    assert np.abs(eng.get_state(s0)["h"]).max() > 0.01
    eng.reset_slot(s0)
    state = eng.get_state(s0)
    assert not state["h"].any() and not state["c"].any()
    np.testing.assert_array_equal(eng.step([s0], [5])[0], fresh)
    # a freed slot comes back from alloc_slot in its initial state too
    eng.free_slot(s1)
    assert eng.alloc_slot() == s1
    assert not eng.get_state(s1)["h"].any()


def test_state_snapshot_roundtrip_across_engines():
    model = tiny_model("gru", 2)
    np_eng, torch_eng = NumpyEngine(model, slots=2), TorchEngine(model, slots=2)
    a = np_eng.alloc_slot()
    for t in [1, 2, 3, 4]:
        np_eng.step([a], [t])
    snap = np_eng.get_state(a)
    assert snap["h"].dtype == np.float32 and snap["h"].shape == (2, 24)
    snap["h"][...] += 0  # a copy, not a view of the bank
    b = torch_eng.alloc_slot()
    torch_eng.set_state(b, snap)
    c = np_eng.alloc_slot()
    np_eng.set_state(c, snap)
    want = np_eng.step([a], [9])[0].copy()
    np.testing.assert_allclose(torch_eng.step([b], [9])[0], want, atol=TOL, rtol=0)
    np.testing.assert_array_equal(np_eng.step([c], [9])[0], want)
    with pytest.raises(ValueError):
        np_eng.set_state(c, {"h": np.zeros((3, 24))})
    with pytest.raises(ValueError):
        np_eng.set_state(c, {"h": snap["h"], "c": snap["h"]})  # a GRU has no c


def test_bank_grows_and_keeps_states():
    model = tiny_model("lstm", 1)
    eng = NumpyEngine(model, slots=2)
    ref = NumpyEngine(model, slots=8)
    slots = [eng.alloc_slot(), eng.alloc_slot()]
    refs = [ref.alloc_slot(), ref.alloc_slot()]
    eng.step(slots, [1, 2])
    ref.step(refs, [1, 2])
    slots.append(eng.alloc_slot())  # full: doubles
    refs.append(ref.alloc_slot())
    assert eng.capacity == 4 and slots == [0, 1, 2]
    assert eng.bank.h.shape == (1, 4, 24)
    for t in range(5):
        np.testing.assert_array_equal(eng.step(slots, [t, t + 1, t + 2]), ref.step(refs, [t, t + 1, t + 2]))


def test_bad_steps_are_refused():
    model = tiny_model("rnn", 1)
    eng = NumpyEngine(model, slots=4)
    a, b = eng.alloc_slot(), eng.alloc_slot()
    with pytest.raises(SlotError):
        eng.step([3], [1])  # never allocated
    with pytest.raises(SlotError):
        eng.step([a, b, a, b], [1, 2, 3, 4])  # twice in one batch
    with pytest.raises(ValueError):
        eng.step([a], [model.config.vocab_size])
    with pytest.raises(ValueError):
        eng.step([a], [-1])
    with pytest.raises(ValueError):
        eng.step([a, b], [1])
    eng.free_slot(b)
    with pytest.raises(SlotError):
        eng.step_one(b, 1)
    with pytest.raises(SlotError):
        eng.free_slot(b)
    with pytest.raises(ValueError):
        make_engine(model, "onnx")


def test_engines_run_private_eval_copies():
    model = tiny_model("lstm", 2, dropout=0.5).train()  # dropout would change every step
    eng = TorchEngine(model, slots=1)
    ref = NumpyEngine(model, slots=1)
    assert model.training  # the caller's model is left as it was
    with torch.no_grad():  # later changes to the model reach neither engine
        for p in model.parameters():
            p.zero_()
    model.eval()
    fresh = make_engine(tiny_model("lstm", 2, dropout=0.5), "numpy", slots=1)
    s, r, f = eng.alloc_slot(), ref.alloc_slot(), fresh.alloc_slot()
    for t in [1, 2, 3]:
        want = fresh.step([f], [t])
        np.testing.assert_allclose(eng.step([s], [t]), want, atol=TOL, rtol=0)
        np.testing.assert_array_equal(ref.step([r], [t]), want)
        assert np.abs(want).max() > 0.1


# ----------------------------------------------------------------------------- sampling
# (the Sampler's own tests, exactness and distribution, are in test_sampling.py)


def test_sampler_on_engine_logits_feeds_back():
    model = tiny_model("lstm", 2)
    eng = NumpyEngine(model, slots=4)
    slots = [eng.alloc_slot() for _ in range(4)]
    sampler, settings = Sampler(model.config.vocab_size, 4), SamplingSettings(temperature=0.9, top_k=10)
    ra, rb = np.random.default_rng(1), np.random.default_rng(1)
    tokens = np.zeros(4, dtype=np.intp)
    for _ in range(20):
        logits = eng.step(slots, tokens)
        want = sample(logits, settings, ra)
        tokens = sampler(logits, settings, rb)
        np.testing.assert_array_equal(tokens, want)


# -------------------------------------------------------------------------- bench step


def _numbers(text: str, engine: str, batch: int) -> list[float]:
    for line in text.splitlines():
        parts = line.split()
        if parts[:2] == [engine, str(batch)]:
            return [float(x) for x in parts[2:]]
    raise AssertionError(f"no row for {engine} batch {batch} in:\n{text}")


def test_bench_step_smoke(capsys):
    from ensemble.cli import main

    rc = main(["bench", "step", "--iterations", "50", "--warmup", "5", "--batch", "1", "4", "--engine", "both",
               "--vocab", "50", "--hidden", "32", "--embedding", "8", "--cell", "gru"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "top-p 0.95: the server's defaults, as served" in out
    assert re.search(r"weight-streaming floor \(numpy\): [\d.]+ MB of weights per step / [\d.]+ GB/s", out)
    assert re.search(r"compute floor \(numpy\): 0\.03 MFLOP per slot per step .* / [\d.]+ GFLOP/s measured", out)
    assert re.search(r"  4 slots: floor [\d.]+ us, step [\d.]+ us = [\d.]+x the floor", out)
    assert "compute floor (torch)" not in out  # its products are torch's, not these arrays'
    assert re.search(r"4 slots cost [\d.]+x one slot per call \(step alone [\d.]+x, sampling [\d.]+ us a row "
                     r"against [\d.]+ us for one\)", out)
    assert re.search(r"median", out) and re.search(r"p99", out)
    assert "gru 2 x 32" in out and "numpy BLAS" in out and "torch:" in out
    for engine in ("numpy", "torch"):
        for batch in (1, 4):
            call_med, call_p99, event_med, event_p99, step_med, sample_med = _numbers(out, engine, batch)
            assert 0 < call_med <= call_p99 and 0 < event_med <= event_p99
            assert event_med == pytest.approx(call_med / batch, rel=0.01, abs=0.1)
            assert step_med > 0 and sample_med > 0
    rc = main(["bench", "step", "--iterations", "20", "--warmup", "2", "--batch", "1", "--engine", "numpy",
               "--vocab", "50", "--hidden", "32", "--embedding", "8", "--layer-norm", "--no-floor"])
    assert rc == 0 and "lstm 2 x 32 (layer-normalised)" in capsys.readouterr().out
    assert main(["bench", "step", "--cell", "gru", "--layer-norm", "--no-floor"]) == 2
    assert "lstm cell only" in capsys.readouterr().err


def test_compute_floor_counts_the_products_of_a_step():
    from ensemble.bench import compute_floor_lines, matmul_rate, step_flops

    eng = NumpyEngine(tiny_model("lstm", 2, vocab=50, hidden=32, embedding=8))
    # with the input table: h_0 @ (32 x 128), [h_0, h_1] @ (64 x 128), [h_1, 1] @ (33 x 50)
    assert step_flops(eng) == 2 * (32 * 128 + 64 * 128 + 33 * 50)
    assert step_flops(NumpyEngine(tiny_model("lstm", 2, vocab=50, hidden=32, embedding=8), input_table=False)) \
        == 2 * (41 * 128 + 64 * 128 + 33 * 50)  # [1, x, h_0]: the embedding and bias rows too
    assert step_flops(TorchEngine(tiny_model())) == 0
    rate = matmul_rate(n=64, repeats=2)
    assert 1e6 < rate < 1e13  # FLOP/s of some real core
    rows = [["numpy", 1, 0.0, 0.0, 0.0, 0.0, 10.0, 0.0], ["numpy", 16, 0.0, 0.0, 0.0, 0.0, 20.0, 0.0]]
    lines = compute_floor_lines("numpy", 1_000_000, 1e9, rows)  # 1 ms a slot at 1 GFLOP/s
    assert lines[1] == "  16 slots: floor 16000.0 us, step 20.0 us = 0.00x the floor (800.0 GFLOP/s)"
    assert lines[2].startswith("  16 slots in 3x one slot's step (30.0 us) would need 533.3 GFLOP/s, 533.33x")
    assert lines[2].endswith("beyond this core's float32 arithmetic")
    assert compute_floor_lines("int8", 0, 1e9, rows) == []


def test_bench_step_loads_a_model_folder(tmp_path, capsys):
    from ensemble import checkpoint
    from ensemble.cli import main
    from ensemble.codecs.text import TextCodec

    codec = TextCodec("abcdefgh ")
    model = tiny_model("rnn", 1, vocab=codec.vocab_size, hidden=16)
    checkpoint.save(tmp_path / "m", model, codec)
    rc = main(["bench", "step", "--model", str(tmp_path / "m"), "--engine", "numpy", "--iterations", "50",
               "--warmup", "0", "--batch", "2", "--threads", "0", "--no-floor", "--top-p", "1.0",
               "--mask-fraction", "0.3"])
    out = capsys.readouterr().out
    assert rc == 0 and f"vocab {codec.vocab_size}" in out and "rnn 1 x 16" in out
    assert "the server's defaults are" in out and "floor" not in out and "tokens masked" in out
    assert len(_numbers(out, "numpy", 2)) == 6
    with pytest.raises(SystemExit):
        main(["bench", "step", "--engine", "onnx"])
    assert main(["bench", "step", "--model", str(tmp_path / "missing")]) == 1


# ---------------------------------------------------------------- the live path, no torch


def test_serve_imports_no_torch_and_answers(notes_model):
    """`ensemble serve` (a real process) starts, answers a played note, and never imports
    torch (nor mido, with no MIDI port): `python -X importtime` lists every module the
    process imported."""
    from ensemble.serverproc import start_server
    from oscpeer import OscPeer

    proc, port = start_server(["--port", "0", "--model", str(notes_model), "--mode", "duet", "--no-record",
                               "--no-snapshot", "--seed", "0"], python_args=("-X", "importtime"))
    try:
        peer = OscPeer(port)
        peer.send("/ensemble/hello", "p", "127.0.0.1", peer.port)
        peer.send("/ensemble/note", "p", 60, 100)
        before, status = peer.until_status()
        assert status["engine"] == "numpy" and status["events_stepped"] == 1
        assert any(args[0] == "p" for args in before)  # the answer to the note
        peer.close()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    imported = [row.split("|")[-1].strip() for row in err.splitlines() if row.startswith("import time:")]
    assert "ensemble.engine" in imported and "ensemble.server.conductor" in imported
    assert not [m for m in imported if m == "torch" or m.startswith("torch.")], "serve imported torch"
    assert "mido" not in imported, "serve imported mido with no MIDI port asked for"


def test_load_live_gives_the_same_engine_without_torch(notes_model, tmp_path):
    """checkpoint.load_live reads the weights with safetensors.numpy; the engine built from
    them steps exactly like the one built from the torch model, and refuses what load refuses."""
    import subprocess
    import sys

    from ensemble import checkpoint
    from ensemble.model_types import ModelWeights

    live = checkpoint.load_live(notes_model)
    full = checkpoint.load(notes_model)
    assert isinstance(live.model, ModelWeights) and live.model.config == full.model.config
    assert live.codec.describe() == full.codec.describe() and live.meta == full.meta
    a, b = make_engine(live.model, "numpy", slots=2), make_engine(full.model, "numpy", slots=2)
    t = make_engine(live.model, "torch", slots=2)  # the torch engine, rebuilt from numpy weights
    sa, sb, st = a.alloc_slot(), b.alloc_slot(), t.alloc_slot()
    for token in [1, 5, 9, 2, 7]:
        want = b.step([sb], [token])
        np.testing.assert_array_equal(a.step([sa], [token]), want)
        np.testing.assert_allclose(t.step([st], [token]), want, atol=TOL, rtol=0)
    # in a fresh interpreter: loading and stepping import no torch
    code = ("import sys; from ensemble import checkpoint; from ensemble.engine import make_engine, Sampler; "
            "from ensemble.sampling import SamplingSettings; import numpy as np; "
            f"c = checkpoint.load_live({str(notes_model)!r}); e = make_engine(c.model); s = e.alloc_slot(); "
            "Sampler(e.vocab_size)(e.step([s], [1]), SamplingSettings(top_p=0.95), np.random.default_rng(0)); "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            "assert 'mido' not in sys.modules, 'mido imported (MIDI files are not read on the live path)'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    # broken folders: the same one-line errors as `load`
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((notes_model / "config.json").read_text())
    data = (notes_model / "weights.safetensors").read_bytes()
    (bad / "weights.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(checkpoint.CheckpointError, match="truncated"):
        checkpoint.load_live(bad)
    import json

    config = json.loads((notes_model / "config.json").read_text())
    assert config["model_type"] == "token-rnn"
    config["model"]["hidden"] *= 2
    if config["model"].get("tie"):  # a valid config (tied: embedding = hidden) whose weights do not fit it
        config["model"]["embedding"] = config["model"]["hidden"]
    (bad / "config.json").write_text(json.dumps(config))
    (bad / "weights.safetensors").write_bytes(data)
    with pytest.raises(checkpoint.CheckpointError, match="shape"):
        checkpoint.load_live(bad)
    config["model_type"] = "transformer"
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(checkpoint.CheckpointError, match="model type 'transformer'"):
        checkpoint.load_live(bad)


def test_weights_with_nan_or_infinity_are_refused_by_both_loaders(notes_model, tmp_path):
    from safetensors.numpy import load_file, save_file

    from ensemble import checkpoint

    state = load_file(str(notes_model / "weights.safetensors"))
    for value in (np.nan, np.inf):
        bad = tmp_path / f"bad-{value}"
        bad.mkdir()
        (bad / "config.json").write_text((notes_model / "config.json").read_text())
        broken = dict(state)
        broken["head.bias"] = broken["head.bias"].copy()
        broken["head.bias"][3] = value
        save_file(broken, str(bad / "weights.safetensors"))
        for load in (checkpoint.load_live, checkpoint.load):
            with pytest.raises(checkpoint.CheckpointError, match="head.bias holds NaN or infinity"):
                load(bad)


def test_bfloat16_weights_load_live_as_they_load_in_torch(notes_model, tmp_path):
    """numpy has no bfloat16 and safetensors' numpy loader refuses it; `load` reads it through
    torch, so `load_live` must too, to the same float32 values. Float8, which the live loader
    cannot read, is one CheckpointError line, not a TypeError."""
    import torch
    from safetensors.torch import load_file, save_file

    from ensemble import checkpoint

    state = load_file(str(notes_model / "weights.safetensors"))
    for dtype, readable in ((torch.bfloat16, True), (torch.float16, True), (torch.float8_e4m3fn, False)):
        folder = tmp_path / str(dtype).removeprefix("torch.")
        folder.mkdir()
        (folder / "config.json").write_text((notes_model / "config.json").read_text())
        save_file({k: v.to(dtype) for k, v in state.items()}, str(folder / "weights.safetensors"))
        if not readable:
            with pytest.raises(checkpoint.CheckpointError, match="F8.*live loader cannot read"):
                checkpoint.load_live(folder)
            checkpoint.load(folder)  # torch reads float8 (its finite check runs on the float32 copy)
            continue
        live, full = checkpoint.load_live(folder).model.arrays, checkpoint.load(folder).model.state_dict()
        for key, value in full.items():
            assert live[key].dtype == np.float32
            np.testing.assert_array_equal(live[key], value.numpy(), err_msg=key)
            assert not np.array_equal(live[key], state[key].numpy()), "the file was not saved in reduced precision"


def test_weights_beyond_float32_or_untied_where_tied_are_refused_by_both_loaders(tmp_path):
    """A float64 weight beyond float32's range would be infinite in the float32 model both
    loaders make; a tied model whose file holds two different matrices would be one or the
    other depending on the loader. Each is one CheckpointError line from both."""
    from safetensors.numpy import load_file, save_file

    from ensemble import checkpoint

    from pathlib import Path

    tied = Path(__file__).resolve().parents[1] / "models" / "folk-notes"
    state = load_file(str(tied / "weights.safetensors"))
    assert json.loads((tied / "config.json").read_text())["model"]["tie"]
    huge = {k: v.astype(np.float64) for k, v in state.items()}
    huge["head.bias"][0] = 1e300
    untied = dict(state)
    untied["head.weight"] = state["head.weight"] + np.float32(0.001)
    for name, weights, reason in (("huge", huge, "head.bias holds NaN or infinity as float32"),
                                  ("untied", untied, "embed.weight and head.weight differ")):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text((tied / "config.json").read_text())
        save_file(weights, str(folder / "weights.safetensors"))
        for load in (checkpoint.load_live, checkpoint.load):
            with pytest.raises(checkpoint.CheckpointError, match=reason):
                load(folder)


def test_weight_shapes_match_the_torch_model():
    from ensemble.model_types import weight_shapes

    for cell in ("rnn", "gru", "lstm", "lstm-ln"):
        for layers in (1, 2, 3):
            model = tiny_model(cell, layers)
            assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == weight_shapes(model.config)


@pytest.mark.parametrize("name", ["folk-notes", "folk-abc"])
def test_shipped_models_live_engine_matches_torch(name):
    """The shipped models as the server loads them (numpy weights) against their torch model."""
    from pathlib import Path

    from ensemble import checkpoint

    folder = Path(__file__).resolve().parents[1] / "models" / name
    live, full = checkpoint.load_live(folder), checkpoint.load(folder)
    vocab = full.model.config.vocab_size
    schedule = random_schedule(5, 6, vocab, seed=1)
    expected, _ = reference_run(full.model, 5, schedule)
    eng = make_engine(live.model, "numpy", slots=5)
    for _ in range(5):
        eng.alloc_slot()
    worst = max(float(np.abs(eng.step(g, t) - want).max()) for (g, t), want in zip(schedule, expected))
    assert worst < 2e-5, worst  # float32 rounding on logits of up to ~20 in magnitude
