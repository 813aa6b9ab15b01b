"""The int8 live engine: bigger models under a millisecond, and 16 slots for ~1.5 of one.

A one-slot step of a TokenRNN is matrix-vector products, and for a big model the time
goes into reading the weights: a 2 x 1024 LSTM over 3,660 tokens is 20.5 M weights,
82 MB in float32, which one core here streams in 3-4 ms (the float32 numpy engine's
floor, `ensemble bench step` prints it). In int8 the same weights are 20.5 MB and stay
in the 32 MB L3 cache, and the products run on the CPU's int8 dot-product instructions
(AVX512-VNNI where the CPU has it; see `column_bits` for AVX2 alone). numpy has no
int8 matrix product; onnxruntime has two that matter:

- ``MatMulNBits`` (made for token-by-token decoding): weights in blocks of `BLOCK` (128)
  inputs with one float scale each, activations quantised per row and block as they
  come (``accuracy_level`` 4). The fastest one-row product, but 16 rows cost 4-6x one.
- ``MatMulIntegerToFloat``: int8 weights with one scale per output column, uint8
  activations, int32 sums scaled back in the operator. 16 rows cost ~1.1-1.5x one
  on an Intel Xeon core, 2-4x on an AMD EPYC one (one row 10-30 % slower than
  MatMulNBits' on the Xeon, up to 2x on the EPYC; 16 rows half of MatMulNBits' on both).

So the engine builds two graphs of one step (the token's input, h, c in; logits, h', c'
out) and runs the one-slot graph (MatMulNBits) for one or two slots and the batch graph
for `BATCH_FROM` (3) slots or more. What the batch graph multiplies is always a hidden state,
and every cell's h lies in (-1, 1) (tanh, or a mix of tanh outputs), so it quantises h
with the FIXED scale 1/127 (`H_SCALE`; a state outside would be clipped): dynamic
quantisation would scale by the largest value in the whole batch, and one performer's
answer would then depend on who else played in the same call. Either graph gives a
slot the same logits whatever else is in its batch; a slot stepped alone and the same
slot stepped in a batch differ by the two quantisations (both are held to the same
bounds against torch).

The first layer's input part depends on the token alone, so, as in the numpy engine, it
is a float32 table (``table[v] = embedding[v] @ W_ih0 + biases``: one copy, in numpy,
whose rows either graph takes as its input x0), built while it fits
`engine.INPUT_TABLE_MAX_BYTES`; beyond that the embedding row meets int8 blocks of
W_ih0 (MatMulNBits, in both graphs). Weights are quantised here, in
numpy, symmetric (``s = max |w| / 127``); biases, tables and layer-norm gains stay
float32. The graphs are written with `onnx.helper` when the engine is made (about a
second: `onnx` imports slowly, which is why this is not the default engine) and each
runs in an onnxruntime session with one thread. The states live in the same
`StateBank` as the numpy engine's, so snapshots and slots behave the same.

What it costs in accuracy is measured, not assumed: tests/test_engine_int8.py keeps both
graphs' logits close to the torch model's (rnn, gru, lstm x 1-3 layers, one slot and
batched), a slot's batched logits the same whatever else is in the batch, and the
validation loss within 0.01 nats/token of the float32 model's; `ensemble eval loss
--engine int8` gives the same figure for any model and corpus.

Install it with ``pip install 'ensemble[int8]'`` (onnxruntime, onnx); `ensemble serve
--engine int8` then serves any TokenRNN with it.
"""

from __future__ import annotations

import functools

import numpy as np

from ensemble import engine as float_engine
from ensemble.engine import Engine, StateBank, as_weights
from ensemble.errors import UserError
from ensemble.model_types import LN_EPS

BLOCK = 128  # MatMulNBits: inputs per quantisation block (one float scale each); fastest of 32, 64, 128
H_SCALE = 1.0 / 127.0  # the batch graph: hidden states lie in (-1, 1), uint8 128 + round(h * 127)
BATCH_FROM = 3  # batches of this many slots or more run the batch graph: measured crossover, 2x1024 to 2x128
OPSET = 17
IR_VERSION = 8  # the ONNX IR version that came with opset 17 (see _serialise)


def _require():
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise UserError("the int8 engine needs onnxruntime and onnx: pip install 'ensemble[int8]'") from None


def quantize_blocks(w: np.ndarray, block: int = BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """A (K inputs, N outputs) float matrix -> MatMulNBits' int8 blocks (N, ceil(K/block),
    block) as uint8 with zero point 128, and their scales (N * blocks,) float32; a last
    block that K does not fill is padded with zeros."""
    K, N = w.shape
    blocks = -(-K // block)
    padded = np.zeros((blocks * block, N), dtype=np.float64)
    padded[:K] = w
    b = padded.T.reshape(N, blocks, block)
    scale = np.abs(b).max(axis=2) / 127.0
    scale[scale == 0] = 1.0
    q = np.clip(np.rint(b / scale[..., None]), -127, 127) + 128
    return q.astype(np.uint8), scale.astype(np.float32).reshape(-1)


def dequantize_blocks(q: np.ndarray, scale: np.ndarray, K: int) -> np.ndarray:
    """The (K, N) float matrix the int8 blocks stand for (what the tests compare)."""
    N, blocks, block = q.shape
    w = (q.astype(np.float32) - 128.0) * scale.reshape(N, blocks, 1)
    return w.reshape(N, blocks * block)[:, :K].T


def quantize_columns(w: np.ndarray, bits: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """A (K inputs, N outputs) float matrix -> int8 (K, N) and one scale per output
    column (N,) float32: w ~ q * scale, symmetric, an all-zero column scale 1. `bits`
    7 keeps q in [-63, 63] (see `column_bits`)."""
    top = 2 ** (bits - 1) - 1
    scale = np.abs(w).max(axis=0) / top
    scale[scale == 0] = 1.0
    q = np.clip(np.rint(w / scale), -top, top)
    return q.astype(np.int8), scale.astype(np.float32)


@functools.cache
def column_bits() -> int:
    """8, or 7 where this CPU's uint8 x int8 product saturates: the bits the batch
    graph's weight columns get.

    Without VNNI (AVX2 only: AMD EPYC before Zen 4, older Intel), onnxruntime's MLAS kernel
    multiplies uint8 activations by int8 weights with vpmaddubsw, which adds each pair of
    products into a *saturating* int16: 2 x 255 x 127 = 64,770 does not fit, and a hidden
    state near +1 (uint8 255) against large weights comes out clipped, 20-30 % of the
    largest logit off, silently (measured on an EPYC Zen 1, onnxruntime 1.31 and 1.32). Weights in
    [-63, 63] keep every pair within 2 x 255 x 63 = 32,130; onnxruntime's own quantiser
    offers the same (`reduce_range`). Which kernel runs is onnxruntime's choice, so it is
    probed, not guessed from CPU flags: one product whose every pair would saturate, at
    one row and at 16 (a one-row product may take another kernel), checked against the
    exact sum."""
    _require()
    import onnxruntime as ort
    from onnx import TensorProto, helper

    K, N = 256, 32
    g = _Graph(batched=True, bits=8)
    g.rename(g.linear("x", np.full((K, N), 1.0), None, "w"), "y")  # every weight quantises to 127
    f32 = TensorProto.FLOAT
    graph = helper.make_graph(g.nodes, "probe", [helper.make_tensor_value_info("x", f32, ["B", K])],
                              [helper.make_tensor_value_info("y", f32, ["B", N])], g.initializers)
    session = ort.InferenceSession(_serialise(graph), _options(ort), providers=["CPUExecutionProvider"])
    for rows in (1, 16):
        x = np.ones((rows, K), dtype=np.float32)  # uint8 255 with zero point 128: h = 127/127
        if not np.allclose(session.run(None, {"x": x})[0], K, rtol=1e-3):
            return 7
    return 8


def dequantize_columns(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The (K, N) float matrix the int8 columns stand for."""
    return q.astype(np.float32) * scale


def _table_fits(vocab: int, width: int) -> bool:
    return vocab * width * 4 <= float_engine.INPUT_TABLE_MAX_BYTES


class _Graph:
    """An ONNX graph for one step, written node by node. `batched`: products of hidden
    states run as fixed-scale MatMulIntegerToFloat (the batch graph, weight columns of
    `bits`), else MatMulNBits."""

    def __init__(self, batched: bool, bits: int = 8):
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
        self.batched, self.bits = batched, bits
        self.nodes, self.initializers = [], []
        self.names = 0

    def name(self, hint: str) -> str:
        self.names += 1
        return f"{hint}_{self.names}"

    def const(self, array: np.ndarray, hint: str) -> str:
        name = self.name(hint)
        self.initializers.append(self.numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(self, op_type: str, inputs: list[str], outputs: int | list[str] = 1, domain: str = "", **attrs):
        outs = [self.name(op_type.lower()) for _ in range(outputs)] if isinstance(outputs, int) else outputs
        self.nodes.append(self.helper.make_node(op_type, inputs, outs, domain=domain, **attrs))
        return outs[0] if len(outs) == 1 else outs

    def rename(self, old: str, new: str) -> None:
        for node in self.nodes:
            for names in (node.input, node.output):
                for i, n in enumerate(names):
                    if n == old:
                        names[i] = new

    def layer_norm(self, x: str, gain: np.ndarray, shift: np.ndarray, hint: str) -> str:
        """Layer normalisation over x's last axis (opset 17's LayerNormalization, with
        torch's epsilon), then `gain` and `shift`, which may be wider than that axis
        ((4, H) for the gates: one each per gate)."""
        width = gain.shape[-1]
        ones = self.const(np.ones(width, dtype=np.float32), hint + "_one")
        zeros = self.const(np.zeros(width, dtype=np.float32), hint + "_zero")
        normed = self.op("LayerNormalization", [x, ones, zeros], axis=-1, epsilon=LN_EPS)
        scaled = self.op("Mul", [normed, self.const(gain.astype(np.float32), hint + "_gain")])
        return self.op("Add", [scaled, self.const(shift.astype(np.float32), hint + "_shift")])

    def blocks(self, x: str, w: np.ndarray, bias: np.ndarray | None, hint: str) -> str:
        """x @ w (+ bias), w in int8 blocks, x quantised per row and block as it comes
        (MatMulNBits, accuracy level 4): any x, and a one-row product at its fastest."""
        K, N = w.shape
        q, scale = quantize_blocks(w)
        inputs = [x, self.const(q, hint + "_q"), self.const(scale, hint + "_s")]
        if bias is not None:  # MatMulNBits' own bias input (after zero points and g_idx, not given)
            inputs += ["", "", self.const(bias.astype(np.float32), hint + "_b")]
        return self.op("MatMulNBits", inputs, domain="com.microsoft", K=K, N=N, bits=8, block_size=BLOCK,
                       accuracy_level=4)

    def linear(self, h: str, w: np.ndarray, bias: np.ndarray | None, hint: str) -> str:
        """h @ w (+ bias) for a hidden state h in (-1, 1). The batch graph quantises h
        with the fixed H_SCALE and multiplies int8 columns (MatMulIntegerToFloat: 16 rows
        cost about what one does); the one-slot graph uses `blocks`."""
        if not self.batched:
            return self.blocks(h, w, bias, hint)
        h_scale, zero = self.const(np.float32(H_SCALE), hint + "_hs"), self.const(np.uint8(128), hint + "_hz")
        hq = self.op("QuantizeLinear", [h, h_scale, zero])
        q, scale = quantize_columns(w, self.bits)
        inputs = [hq, self.const(q, hint + "_q"), h_scale, self.const(scale, hint + "_s"), zero]
        if bias is not None:
            inputs += ["", self.const(bias.astype(np.float32), hint + "_b")]
        return self.op("MatMulIntegerToFloat", inputs, domain="com.microsoft")

    def token_input(self, weights, table: bool) -> str:
        """The first layer's input part, embedding[tokens] @ W_ih0 (+ its biases): the
        graph's input x0 (the engine's float32 table rows, see `input_table`), or, with
        no table, the embedding row times int8 blocks of W_ih0. The same in both graphs."""
        if table:
            return "x0"
        embedding, w, bias = _first_layer(weights)
        rows = self.op("Gather", [self.const(embedding.astype(np.float32), "embed"), "tokens"], axis=0)
        return self.blocks(rows, w, bias, "l0_x")


def _first_layer(weights) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The embedding, the first layer's input weights (E, gates) and the biases that go
    with its input part: b_ih + b_hh (rnn, lstm), b_ih (gru: b_hn stays with the
    hidden part), none (layer-normalised)."""
    cfg, a = weights.config, weights.arrays
    w = np.asarray(a["rnn.weight_ih_l0"], dtype=np.float64).T
    if cfg.layer_norm:
        bias = None
    elif cfg.cell == "gru":
        bias = np.asarray(a["rnn.bias_ih_l0"], dtype=np.float64)
    else:
        bias = np.asarray(a["rnn.bias_ih_l0"], dtype=np.float64) + np.asarray(a["rnn.bias_hh_l0"], dtype=np.float64)
    return np.asarray(a["embed.weight"], dtype=np.float64), w, bias


def input_table(weights) -> np.ndarray | None:
    """table[v] = embedding[v] @ W_ih0 + biases, float32 (vocab, gates), while it fits
    `engine.INPUT_TABLE_MAX_BYTES`; None beyond. One copy, fed to both graphs."""
    embedding, w, bias = _first_layer(weights)
    if not _table_fits(embedding.shape[0], w.shape[1]):
        return None
    return np.ascontiguousarray(embedding @ w + (0.0 if bias is None else bias), dtype=np.float32)


def build_step_model(weights, batched: bool = False, table: bool = True, bits: int = 8) -> bytes:
    """The serialised ONNX model of one step: x0 (B, gates) float32, the input table's
    rows (`table`), or tokens (B,) int64; h (B, L*H), c (B, L*H) -> logits (B, vocab),
    h', c' (c only for LSTM). `batched`: the batch graph (see the module doc), its
    weight columns of `bits` (`column_bits`)."""
    from onnx import TensorProto, helper

    cfg = weights.config
    L, H, cell = cfg.layers, cfg.hidden, cfg.cell
    a = {k: np.asarray(v, dtype=np.float64) for k, v in weights.arrays.items()}
    g = _Graph(batched, bits)
    gates = {"rnn": 1, "gru": 3, "lstm": 4}[cell]
    splits = g.const(np.full(gates, H, dtype=np.int64), "split")
    hs, cs = [], []
    x = None  # the layer below's h; for layer 0 the token's input part stands in
    for layer in range(L):
        cut = lambda src: g.op("Slice", [src, g.const(np.array([layer * H]), "start"),  # noqa: E731
                                         g.const(np.array([(layer + 1) * H]), "end"), g.const(np.array([1]), "axis")])
        h = cut("h")
        w_ih, w_hh = a[f"rnn.weight_ih_l{layer}"], a[f"rnn.weight_hh_l{layer}"]
        if cfg.layer_norm:  # no biases: the normalisation's shifts take their place
            b_ih = b_hh = None
        else:
            b_ih, b_hh = a[f"rnn.bias_ih_l{layer}"], a[f"rnn.bias_hh_l{layer}"]
        if cell == "gru":  # n = tanh(W_in x + b_in + r * (W_hn h + b_hn)): the two halves stay apart
            gx = g.token_input(weights, table) if layer == 0 else g.linear(x, w_ih.T, b_ih, f"l{layer}_x")
            gh = g.linear(h, w_hh.T, b_hh, f"l{layer}_h")
            xr, xz, xn = g.op("Split", [gx, splits], 3, axis=1)
            hr, hz, hn = g.op("Split", [gh, splits], 3, axis=1)
            r = g.op("Sigmoid", [g.op("Add", [xr, hr])])
            z = g.op("Sigmoid", [g.op("Add", [xz, hz])])
            n = g.op("Tanh", [g.op("Add", [xn, g.op("Mul", [r, hn])])])
            new_h = g.op("Add", [n, g.op("Mul", [z, g.op("Sub", [h, n])])])  # (1 - z) n + z h
        else:
            bias = None if b_ih is None else b_ih + b_hh
            if layer == 0:  # the token's part (with the biases) + h_0 @ W_hh
                pre = g.op("Add", [g.token_input(weights, table), g.linear(h, w_hh.T, None, "l0_h")])
            else:  # one product of [x, h] with the stacked input and recurrent weights
                pre = g.linear(g.op("Concat", [x, h], axis=1), np.concatenate([w_ih.T, w_hh.T], axis=0),
                               bias, f"l{layer}")
            if cell == "rnn":
                new_h = g.op("Tanh", [pre])
            else:  # torch's gate order: i, f, g, o
                if cfg.layer_norm:  # each gate normalised on its own: (B, 4, H), then its gain and shift
                    pre = g.layer_norm(g.op("Reshape", [pre, g.const(np.array([-1, 4, H]), "shape")]),
                                       a[f"rnn.ln_gates_weight_l{layer}"].reshape(4, H),
                                       a[f"rnn.ln_gates_bias_l{layer}"].reshape(4, H), "gates")
                    pre = g.op("Reshape", [pre, g.const(np.array([-1, 4 * H]), "shape")])
                i, f, gg, o = g.op("Split", [pre, splits], 4, axis=1)
                new_c = g.op("Add", [g.op("Mul", [g.op("Sigmoid", [f]), cut("c")]),
                                     g.op("Mul", [g.op("Sigmoid", [i]), g.op("Tanh", [gg])])])
                cell_out = new_c
                if cfg.layer_norm:
                    cell_out = g.layer_norm(new_c, a[f"rnn.ln_cell_weight_l{layer}"],
                                            a[f"rnn.ln_cell_bias_l{layer}"], "cell")
                new_h = g.op("Mul", [g.op("Sigmoid", [o]), g.op("Tanh", [cell_out])])
                cs.append(new_c)
        hs.append(new_h)
        x = new_h
    g.rename(g.linear(x, a["head.weight"].T, a["head.bias"], "head"), "logits")
    outputs = ["logits", "h_out"] + (["c_out"] if cell == "lstm" else [])
    for name, parts in (("h_out", hs), ("c_out", cs)):
        if len(parts) > 1:
            g.op("Concat", parts, [name], axis=1)
        elif parts:  # one layer: the state is the graph's output under its own name
            g.rename(parts[0], name)
    f32 = TensorProto.FLOAT
    first = (helper.make_tensor_value_info("x0", f32, ["B", gates * H]) if table
             else helper.make_tensor_value_info("tokens", TensorProto.INT64, ["B"]))
    inputs = [first, helper.make_tensor_value_info("h", f32, ["B", L * H])]
    if cell == "lstm":
        inputs.append(helper.make_tensor_value_info("c", f32, ["B", L * H]))
    shapes = {"logits": ["B", cfg.vocab_size], "h_out": ["B", L * H], "c_out": ["B", L * H]}
    graph = helper.make_graph(g.nodes, "ensemble_step", inputs,
                              [helper.make_tensor_value_info(n, f32, shapes[n]) for n in outputs], g.initializers)
    return _serialise(graph)


def _serialise(graph) -> bytes:
    """A graph as a model file onnxruntime reads: opset 17 and Microsoft's domain, at
    the IR version opset 17 came with (8). onnx writes its own latest IR version
    otherwise, which an older onnxruntime refuses ("Unsupported model IR version: 14",
    onnx 1.23 beside onnxruntime 1.31)."""
    from onnx import helper

    model = helper.make_model(graph, producer_name="ensemble", ir_version=IR_VERSION,
                              opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)])
    return model.SerializeToString()


def _options(ort):
    """Session options for a live step: one thread (as the numpy engine: a step is too
    small to split), sequential, every graph optimisation, warnings off."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return options


class Int8Engine(Engine):
    """TokenRNN inference with int8 weights (onnxruntime). See the module doc."""

    kind = "int8"

    def __init__(self, model, slots: int = 16):
        _require()
        import onnxruntime as ort

        weights = as_weights(model)
        cfg = weights.config
        super().__init__(weights, StateBank(cfg.layers, cfg.hidden, cfg.cell == "lstm", slots))
        self.layers, self.hidden, self.cell = cfg.layers, cfg.hidden, cfg.cell
        options = _options(ort)
        self.input_table = input_table(weights)
        table = self.input_table is not None
        self.column_bits = column_bits()
        make = lambda batched: ort.InferenceSession(  # noqa: E731
            build_step_model(weights, batched, table, self.column_bits), options, providers=["CPUExecutionProvider"])
        # one slot: MatMulNBits, the fastest one-row product; batches: fixed-scale int8
        # columns, whose 16 rows cost ~1.5x one (MatMulNBits' cost 4-6x)
        self.session, self.batch_session = make(False), make(True)
        self.weight_bytes = self._step_bytes(cfg, table)
        self.int8_weights = self._int8_weights(cfg)

    @property
    def compute_note(self) -> str:
        if self.column_bits == 8:
            return ""
        return f"{self.column_bits}-bit weight columns in batches (this CPU's uint8 x int8 product saturates at 8 bits)"

    @staticmethod
    def _int8_weights(cfg) -> int:
        """int8 weights one slot's step multiplies: every gate matrix that meets a hidden
        state, and the output layer (not the first layer's input part: a table row)."""
        G = {"rnn": 1, "gru": 3, "lstm": 4}[cfg.cell] * cfg.hidden
        return cfg.hidden * G + (cfg.layers - 1) * 2 * cfg.hidden * G + cfg.hidden * cfg.vocab_size

    @staticmethod
    def _step_bytes(cfg, table: bool) -> int:
        """Bytes of weights one slot's step reads: int8 matrices, one byte a weight, and
        the first layer's input (a float32 table row, or a float32 embedding row and int8
        blocks of its weights)."""
        G = {"rnn": 1, "gru": 3, "lstm": 4}[cfg.cell] * cfg.hidden
        first = 4 * G if table else 4 * cfg.embedding + cfg.embedding * G
        return Int8Engine._int8_weights(cfg) + first

    def step(self, slots, tokens) -> np.ndarray:
        slots, tokens, sl, _ = self._arrays(slots, tokens)
        bank = self.bank
        L, H = self.layers, self.hidden
        h_cols = slice(bank.h_start, bank.h_start + L * H)
        if self.input_table is not None:
            feeds = {"x0": self.input_table.take(tokens, axis=0)}
        else:
            feeds = {"tokens": tokens.astype(np.int64)}
        feeds["h"] = bank.rows[slots, h_cols]
        if bank.c is not None:
            feeds["c"] = bank.c[slots].reshape(len(sl), L * H)
        out = (self.batch_session if len(sl) >= BATCH_FROM else self.session).run(None, feeds)
        bank.rows[slots, h_cols] = out[1]
        if bank.c is not None:
            bank.c[slots] = out[2].reshape(len(sl), L, H)
        return out[0]


def product_rate(n: int = 512, repeats: int = 5) -> float:
    """Operations per second (2 per multiply-add) of the batch graph's product on this
    core: an n x n float32 input quantised with the fixed `H_SCALE`, times n x n int8
    columns (MatMulIntegerToFloat), one thread, the best of `repeats`. `bench step`'s
    compute floor for the int8 engine, as `bench.matmul_rate` is numpy's."""
    _require()
    import time

    import onnxruntime as ort
    from onnx import TensorProto, helper

    g = _Graph(batched=True, bits=column_bits())
    rng = np.random.default_rng(0)
    g.rename(g.linear("x", rng.uniform(-1, 1, (n, n)), None, "w"), "y")
    f32 = TensorProto.FLOAT
    graph = helper.make_graph(g.nodes, "product", [helper.make_tensor_value_info("x", f32, [n, n])],
                              [helper.make_tensor_value_info("y", f32, [n, n])], g.initializers)
    session = ort.InferenceSession(_serialise(graph), _options(ort), providers=["CPUExecutionProvider"])
    feeds = {"x": rng.uniform(-1, 1, (n, n)).astype(np.float32)}
    session.run(None, feeds)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        session.run(None, feeds)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best
