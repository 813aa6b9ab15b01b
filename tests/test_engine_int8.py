"""The int8 engine (onnxruntime) against the torch model: close logits, the same loss.

int8 weights cannot give the very logits float32 gives; what must hold is that they
change what the model predicts by a measured, small amount: every cell and depth, slots
stepped in shuffled groups (one at a time and batched), and the validation loss of real
trained models within 0.01 nats/token of the float32 engine's.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="the int8 engine needs onnxruntime (pip install 'ensemble[int8]')")
pytest.importorskip("onnx", reason="the int8 engine needs onnx (pip install 'ensemble[int8]')")

from test_engine import random_schedule, reference_run, tiny_model  # noqa: E402

from ensemble.engine import as_weights, make_engine  # noqa: E402
from ensemble import engine as engine_module  # noqa: E402
from ensemble.engine_int8 import (BLOCK, IR_VERSION, _Graph, _options, _serialise, build_step_model,  # noqa: E402
                                  column_bits, dequantize_blocks, dequantize_columns, quantize_blocks,
                                  quantize_columns)


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm", "lstm-ln"])
def test_int8_engine_predicts_what_the_model_predicts(cell, layers):
    n_slots = 6
    model = tiny_model(cell, layers, hidden=40, embedding=12)  # 12 + 40: blocks that K does not fill
    if cell == "lstm-ln":  # gains near their start of 1, where trained ones stay (tiny_model's are ~2)
        import torch

        with torch.no_grad():
            for name, p in model.named_parameters():
                if ".ln_" in name and "weight" in name:
                    p.mul_(0.5)
    schedule = random_schedule(n_slots, 40, model.config.vocab_size, seed=layers)
    expected, final = reference_run(model, n_slots, schedule)
    eng = make_engine(model, "int8", slots=n_slots)
    assert eng.kind == "int8" and [eng.alloc_slot() for _ in range(n_slots)] == list(range(n_slots))
    kl, worst, scale, agree = [], 0.0, 0.0, []
    for (group, tokens), want in zip(schedule, expected):
        got = eng.step(group, tokens)
        assert got.shape == (len(group), model.config.vocab_size) and got.dtype == np.float32
        p, q = softmax(want.astype(np.float64)), softmax(got.astype(np.float64))
        kl += list((p * (np.log(p) - np.log(q))).sum(axis=1))
        worst = max(worst, float(np.abs(got - want).max()))
        scale = max(scale, float(np.abs(want).max()))
        agree += list(got.argmax(axis=1) == want.argmax(axis=1))
    # measured: KL 3e-6..6e-5 nats, max |difference| 0.6-1.8 % of the largest logit
    assert np.mean(kl) < 2e-3 and max(kl) < 2e-2, f"{cell} x {layers}: KL mean {np.mean(kl):.2e} max {max(kl):.2e}"
    # layer normalisation magnifies the weights' rounding: measured up to 4.5 % (lstm-ln x 3)
    bound = 0.08 if cell == "lstm-ln" else 0.05
    assert worst < bound * scale, f"{cell} x {layers}: max |logit difference| {worst:.4f} of {scale:.2f}"
    assert np.mean(agree) > 0.9
    # the states it carries stay close too (measured: at most 0.04 of 1, mean 0.01; lstm-ln x 3,
    # stepped through both graphs, 0.105 at one element)
    state_bound = 0.15 if cell == "lstm-ln" else 0.1
    for slot in range(n_slots):
        diff = np.abs(eng.get_state(slot)["h"] - final.h[:, slot].numpy())
        assert diff.max() < state_bound and diff.mean() < 0.02


def test_quantized_blocks_stand_for_the_weights():
    rng = np.random.default_rng(0)
    K = 2 * BLOCK + 6  # the last block is mostly padding
    w = rng.standard_normal((K, 9)) * np.linspace(0.01, 3, 9)  # columns of very different sizes
    w[:, 4] = 0.0  # an all-zero column (a scale of 0 would divide by zero)
    q, scale = quantize_blocks(w)
    assert q.dtype == np.uint8 and q.shape == (9, 3, BLOCK) and scale.shape == (9 * 3,)
    back = dequantize_blocks(q, scale, K)
    assert back.shape == w.shape
    per_block = np.repeat(scale.reshape(9, 3), BLOCK, axis=1)[:, :K].T
    assert np.all(np.abs(back - w) <= per_block / 2 + 1e-7)  # within half a step of its block
    assert np.all(back[:, 4] == 0.0) and np.all(q[:, -1, 6:] == 128)  # padding is zero


def test_quantized_columns_stand_for_the_weights():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((70, 9)) * np.linspace(0.01, 3, 9)
    w[:, 4] = 0.0
    q, scale = quantize_columns(w)
    assert q.dtype == np.int8 and q.shape == (70, 9) and scale.shape == (9,)
    back = dequantize_columns(q, scale)
    assert np.all(np.abs(back - w) <= scale / 2 + 1e-7)  # within half a step of its column
    assert np.all(back[:, 4] == 0.0) and np.all(np.abs(q[:, [0, 1, 2, 3, 5, 6, 7, 8]]).max(axis=0) == 127)


def test_seven_bit_columns_stay_within_63():
    w = np.random.default_rng(1).standard_normal((50, 6))
    q, scale = quantize_columns(w, bits=7)
    assert np.abs(q).max(axis=0).tolist() == [63] * 6
    assert np.all(np.abs(dequantize_columns(q, scale) - w) <= scale / 2 + 1e-7)


def batch_product(w: np.ndarray, x: np.ndarray, bits: int) -> np.ndarray:
    """x @ w through the batch graph's product (fixed-scale uint8 x, int8 columns)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    g = _Graph(batched=True, bits=bits)
    g.rename(g.linear("x", w, None, "w"), "y")
    f32 = TensorProto.FLOAT
    graph = helper.make_graph(g.nodes, "p", [helper.make_tensor_value_info("x", f32, ["B", w.shape[0]])],
                              [helper.make_tensor_value_info("y", f32, ["B", w.shape[1]])], g.initializers)
    session = ort.InferenceSession(_serialise(graph), _options(ort), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x.astype(np.float32)})[0]


@pytest.mark.parametrize("rows", [1, 16])
def test_the_batch_product_is_right_on_this_cpu(rows):
    """The columns get the bits this CPU's kernel multiplies without saturating: states
    near +-1 against weights near their column's largest stay within quantisation
    error (8-bit columns on an AVX2 core without VNNI came out 20-30 % off)."""
    rng = np.random.default_rng(rows)
    w = rng.uniform(-1, 1, (256, 64))
    x = np.sign(rng.uniform(-1, 1, (rows, 256))) * rng.uniform(0.9, 1.0, (rows, 256))
    exact = x @ w
    bits = column_bits()
    assert bits in (7, 8)
    assert np.abs(batch_product(w, x, bits) - exact).max() < 0.02 * np.abs(exact).max()


def test_column_bits_are_seven_exactly_where_eight_saturate():
    rng = np.random.default_rng(0)
    w = rng.uniform(-1, 1, (256, 64))
    x = np.ones((16, 256))
    exact = x @ w
    eight_bits_wrong = np.abs(batch_product(w, x, 8) - exact).max() > 0.02 * np.abs(exact).max()
    assert column_bits() == (7 if eight_bits_wrong else 8)


def test_step_models_name_an_ir_version_older_onnxruntimes_read():
    import onnx

    model = onnx.load_from_string(build_step_model(as_weights(tiny_model("gru", 1, hidden=8, embedding=4)), True))
    assert model.ir_version == IR_VERSION == 8


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_a_slots_batched_logits_do_not_depend_on_its_companions(cell):
    """The batch graph quantises hidden states with a fixed scale: what one performer
    gets does not change with who else played in the same call."""
    model = tiny_model(cell, 2, hidden=40, embedding=12)
    eng = make_engine(model, "int8", slots=6)
    slots = [eng.alloc_slot() for _ in range(6)]
    for t in range(5):  # states of different sizes in every slot
        eng.step(slots, [(7 * t + 3 * s) % model.config.vocab_size for s in slots])
    saved = [eng.get_state(s) for s in slots]
    with_three = eng.step(slots[:3], [5, 9, 10])[0].copy()
    for s, state in zip(slots, saved):
        eng.set_state(s, state)
    with_five = eng.step([slots[0]] + slots[2:], [5, 11, 12, 13, 14])[0].copy()
    assert np.array_equal(with_three, with_five)


def test_int8_without_the_input_table(monkeypatch):
    """Beyond the table's size limit the first layer multiplies the embedding row."""
    monkeypatch.setattr(engine_module, "INPUT_TABLE_MAX_BYTES", 0)
    model = tiny_model("lstm", 2, hidden=40, embedding=12)
    schedule = random_schedule(4, 30, model.config.vocab_size, seed=3)
    expected, _ = reference_run(model, 4, schedule)
    eng = make_engine(model, "int8", slots=4)
    assert [eng.alloc_slot() for _ in range(4)] == list(range(4))
    # h_0 @ W_hh0, [x, h_1] @ W_1 and the head in int8; the float32 embedding row and int8 W_ih0
    assert eng.weight_bytes == 40 * 160 + 80 * 160 + 40 * 41 + 12 * 4 + 12 * 160
    assert eng.int8_weights == 40 * 160 + 80 * 160 + 40 * 41  # what meets a hidden state (W_ih0 is not counted)
    for (group, tokens), want in zip(schedule, expected):
        got = eng.step(group, tokens)
        assert np.abs(got - want).max() < 0.05 * np.abs(want).max()


def test_int8_validation_loss_is_within_a_hundredth_of_a_nat(notes_model, text_run, ln_text_run):
    """What int8 costs a real trained model: the held-out loss through the engine."""
    from ensemble import checkpoint
    from ensemble.codecs.notes import NotesCodec
    from ensemble.data import text_pieces
    from ensemble.eval_loss import piece_losses

    from conftest import melody_pieces

    notes = [p.tokens for p in melody_pieces(NotesCodec(), n_pieces=8, seed=5)]  # unseen melodies
    text_ckpt, ln_ckpt = checkpoint.load_live(text_run / "best"), checkpoint.load_live(ln_text_run / "best")
    text = [p.tokens for p in text_pieces("the quick brown fox jumps over the lazy dog.\n" * 40,
                                          text_ckpt.codec, piece_chars=400)]
    for model, pieces in ((checkpoint.load_live(notes_model).model, notes), (text_ckpt.model, text),
                          (ln_ckpt.model, text)):  # layer normalisation magnifies int8's rounding: measured here
        losses = {}
        for kind, batch in (("numpy", 4), ("int8", 4), ("int8", 1)):  # int8: the batch graph, the one-slot graph
            nll, n = piece_losses(make_engine(model, kind, slots=4), pieces, batch=batch)
            losses[kind, batch] = nll / n
        assert all(abs(losses[key] - losses["numpy", 4]) < 0.01 for key in losses), losses


def test_int8_states_are_the_numpy_engines_states(notes_model):
    """Snapshots move between engines: the same bank layout, the same get/set."""
    from ensemble import checkpoint

    weights = checkpoint.load_live(notes_model).model
    a, b = make_engine(weights, "numpy", slots=2), make_engine(weights, "int8", slots=2)
    sa, sb = a.alloc_slot(), b.alloc_slot()
    for token in (5, 17, 300, 2):
        a.step_one(sa, token)
    b.set_state(sb, a.get_state(sa))
    got, want = b.step_one(sb, 9), a.step_one(sa, 9)
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()


def test_eval_loss_compares_engines_on_a_corpus(notes_model, tmp_path):
    import subprocess

    from conftest import ENSEMBLE, melody_pieces
    from ensemble.codecs.notes import NotesCodec
    from ensemble.data import write_prepared

    write_prepared(tmp_path / "corpus", NotesCodec(), melody_pieces(NotesCodec(), n_pieces=10, seed=9),
                   val_fraction=0.3, seed=0)
    r = subprocess.run(ENSEMBLE + ["eval", "loss", "--model", str(notes_model), "--data", str(tmp_path / "corpus"),
                                   "--engine", "numpy", "int8", "torch"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    figures = {line.split(":")[0].strip(): float(line.split(":")[1].split()[0]) for line in r.stdout.splitlines()
               if line.split(":")[0].strip() in ("numpy", "int8", "torch")}
    assert set(figures) == {"numpy", "int8", "torch"}
    assert abs(figures["numpy"] - figures["torch"]) < 1e-4 and abs(figures["int8"] - figures["numpy"]) < 0.01
    assert "int8 - numpy" in r.stdout


def test_bench_step_prints_the_int8_compute_floor(capsys):
    """The int8 engine's compute floor: its int8 matrices' operations at the int8
    product rate onnxruntime reaches on this core (MatMulIntegerToFloat, one thread)."""
    from ensemble.bench import step_flops
    from ensemble.cli import main
    from ensemble.engine_int8 import product_rate

    model = tiny_model("lstm", 2, hidden=40, embedding=12)
    assert step_flops(make_engine(model, "int8")) == 2 * (40 * 160 + 80 * 160 + 40 * 41)
    assert 1e7 < product_rate(n=64, repeats=2) < 1e14
    rc = main(["bench", "step", "--engine", "int8", "--iterations", "30", "--warmup", "3", "--batch", "1", "16",
               "--vocab", "60", "--hidden", "32", "--embedding", "8"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "compute floor (int8): 0.03 MOP per slot per step" in out
    assert "measured int8 matrix product rate (512^3, MatMulIntegerToFloat)" in out
    assert "16 slots in 3x one slot's step" in out
