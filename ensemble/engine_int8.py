"""The int8 live engine: bigger models under a millisecond, with onnxruntime.

A one-slot step of a TokenRNN is matrix-vector products, and for a big model the time
goes into reading the weights: a 2 x 1024 LSTM over 3,660 tokens is 20.5 M weights,
82 MB in float32, which one core here streams in 3-4 ms (the float32 numpy engine's
floor, `ensemble bench step` prints it). In int8 the same weights are 20.5 MB and stay
in the 32 MB L3 cache, and the products run on the CPU's int8 dot-product instructions
(AVX512-VNNI here). numpy has no int8 or bf16 matrix product; onnxruntime has one made
for exactly this (token-by-token decoding): the `MatMulNBits` operator, weights
quantised in blocks of `BLOCK` (128) inputs with one float scale each, activations
quantised on the fly (``accuracy_level`` 4).

How it is built: every weight matrix of the model (each layer's input and recurrent
gate weights, the output layer) is quantised here, in numpy, symmetric per block of 128
inputs per output (``q = round(w / s) + 128``, ``s = max |w| / 127``); the embedding
and the biases stay float32. One ONNX graph holds a whole step for a batch of B rows
(tokens, h, c in; logits, h', c' out), built with `onnx.helper` when the engine is made
(about a second: `onnx` imports slowly, which is why this is not the default engine)
and run by one onnxruntime session with one thread. The states live in the same
`StateBank` as the numpy engine's, so snapshots and slots behave the same.

What it costs in accuracy is measured, not assumed: tests/test_engine_int8.py keeps its
logits close to the torch model's (rnn, gru, lstm x 1-3 layers, batched and not) and
its validation loss within 0.01 nats/token of the float32 model's; `ensemble eval loss
--engine int8` gives the same figure for any model and corpus.

Install it with ``pip install 'ensemble[int8]'`` (onnxruntime, onnx); `ensemble serve
--engine int8` then serves any TokenRNN with it.
"""

from __future__ import annotations

import numpy as np

from ensemble.engine import Engine, StateBank, as_weights
from ensemble.errors import UserError
from ensemble.model_types import LN_EPS

BLOCK = 128  # inputs per quantisation block (one float scale each): measured fastest of 32, 64, 128
OPSET = 17


def _require():
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise UserError("the int8 engine needs onnxruntime and onnx: pip install 'ensemble[int8]'") from None


def quantize(w: np.ndarray, block: int = BLOCK) -> tuple[np.ndarray, np.ndarray]:
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


def dequantize(q: np.ndarray, scale: np.ndarray, K: int) -> np.ndarray:
    """The (K, N) float matrix the int8 weights stand for (what the tests compare)."""
    N, blocks, block = q.shape
    w = (q.astype(np.float32) - 128.0) * scale.reshape(N, blocks, 1)
    return w.reshape(N, blocks * block)[:, :K].T


class _Graph:
    """An ONNX graph for one step, written node by node."""

    def __init__(self):
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
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

    def linear(self, x: str, w: np.ndarray, bias: np.ndarray | None, hint: str) -> str:
        """x @ w (+ bias), w (K, N) quantised to int8 blocks."""
        K, N = w.shape
        q, scale = quantize(w)
        inputs = [x, self.const(q, hint + "_q"), self.const(scale, hint + "_s")]
        if bias is not None:  # MatMulNBits' own bias input (after zero points and g_idx, not given)
            inputs += ["", "", self.const(bias.astype(np.float32), hint + "_b")]
        return self.op("MatMulNBits", inputs, domain="com.microsoft", K=K, N=N, bits=8, block_size=BLOCK,
                       accuracy_level=4)


def build_step_model(weights) -> bytes:
    """The serialised ONNX model of one step: tokens (B,) int64, h (B, L*H), c (B, L*H)
    -> logits (B, vocab), h', c' (c only for LSTM)."""
    from onnx import TensorProto, helper

    cfg = weights.config
    L, H, cell = cfg.layers, cfg.hidden, cfg.cell
    a = {k: np.asarray(v, dtype=np.float64) for k, v in weights.arrays.items()}
    g = _Graph()
    x = g.op("Gather", [g.const(a["embed.weight"].astype(np.float32), "embed"), "tokens"], axis=0)
    gates = {"rnn": 1, "gru": 3, "lstm": 4}[cell]
    splits = g.const(np.full(gates, H, dtype=np.int64), "split")
    hs, cs = [], []
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
            gx = g.linear(x, w_ih.T, b_ih, f"l{layer}_x")
            gh = g.linear(h, w_hh.T, b_hh, f"l{layer}_h")
            xr, xz, xn = g.op("Split", [gx, splits], 3, axis=1)
            hr, hz, hn = g.op("Split", [gh, splits], 3, axis=1)
            r = g.op("Sigmoid", [g.op("Add", [xr, hr])])
            z = g.op("Sigmoid", [g.op("Add", [xz, hz])])
            n = g.op("Tanh", [g.op("Add", [xn, g.op("Mul", [r, hn])])])
            new_h = g.op("Add", [n, g.op("Mul", [z, g.op("Sub", [h, n])])])  # (1 - z) n + z h
        else:  # one product of [x, h] with the stacked input and recurrent weights
            both = g.op("Concat", [x, h], axis=1)
            pre = g.linear(both, np.concatenate([w_ih.T, w_hh.T], axis=0),
                           None if b_ih is None else b_ih + b_hh, f"l{layer}")
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
    inputs = [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["B"]),
              helper.make_tensor_value_info("h", f32, ["B", L * H])]
    if cell == "lstm":
        inputs.append(helper.make_tensor_value_info("c", f32, ["B", L * H]))
    shapes = {"logits": ["B", cfg.vocab_size], "h_out": ["B", L * H], "c_out": ["B", L * H]}
    graph = helper.make_graph(g.nodes, "ensemble_step", inputs,
                              [helper.make_tensor_value_info(n, f32, shapes[n]) for n in outputs], g.initializers)
    model = helper.make_model(graph, producer_name="ensemble",
                              opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)])
    return model.SerializeToString()


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
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # as the numpy engine: a live step is too small to split
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self.session = ort.InferenceSession(build_step_model(weights), options, providers=["CPUExecutionProvider"])
        self.weight_bytes = sum(int(np.prod(s)) for s in self._matrix_shapes(cfg))  # one byte each

    @staticmethod
    def _matrix_shapes(cfg):
        gates = {"rnn": 1, "gru": 3, "lstm": 4}[cfg.cell]
        for layer in range(cfg.layers):
            yield (cfg.embedding if layer == 0 else cfg.hidden, gates * cfg.hidden)
            yield (cfg.hidden, gates * cfg.hidden)
        yield (cfg.hidden, cfg.vocab_size)

    def step(self, slots, tokens) -> np.ndarray:
        slots, tokens, sl, _ = self._arrays(slots, tokens)
        bank = self.bank
        L, H = self.layers, self.hidden
        h_cols = slice(bank.h_start, bank.h_start + L * H)
        feeds = {"tokens": tokens.astype(np.int64), "h": bank.rows[slots, h_cols]}
        if bank.c is not None:
            feeds["c"] = bank.c[slots].reshape(len(sl), L * H)
        out = self.session.run(None, feeds)
        bank.rows[slots, h_cols] = out[1]
        if bank.c is not None:
            bank.c[slots] = out[2].reshape(len(sl), L, H)
        return out[0]
