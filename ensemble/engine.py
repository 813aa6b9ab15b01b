"""The live inference engine: one token in per performer, next-token logits out.

The trainer stays torch; the server's hot path runs a copy of the model's weights in
numpy, which on these small CPUs is several times faster per event than torch eager
(see DESIGN.md, "The hot path", and `ensemble bench step`):

- **StateBank**: the hidden states of every performer, one *slot* each, in one
  preallocated array; `alloc_slot` / `free_slot` / `reset_slot`, `get_state` /
  `set_state` (plain numpy arrays, for snapshots), growable.
- **NumpyEngine**: float32 copies of a TokenRNN's weights, the gate weights of each
  layer fused so that ONE matmul of [x, h] gives all the gates of all the stepped
  slots, and the first layer's input part precomputed per token (the *input table*);
  preallocated buffers and in-place ufuncs, so a step allocates (almost) nothing.
  rnn, gru and lstm cells, 1-3 layers.
- **TorchEngine**: the same interface around the torch model itself (inference mode,
  oneDNN off during the step): the reference the numpy engine is tested against.
- **Sampler** (defined in `ensemble.sampling`, importable from here too): the server's
  sampler, the distribution of `ensemble.sampling.sample` without its sorts.

`make_engine(model, kind="numpy", slots=16)` builds either engine, from a torch TokenRNN
or from a `ModelWeights` (numpy arrays, what `checkpoint.load_live` gives the server):
this module imports no torch; only the torch engine does, when it is built.

How the numpy step is laid out
------------------------------
Each slot's state is one row of ``bank.rows``::

    [ 1 | x (embedding) | h_0 | h_1 | ... | h_{L-1} | 1 ]

so the input of every matmul is a contiguous slice of that row: layer 0 reads
``[1, x, h_0]`` (its bias is the weight row that meets the leading 1), layer l reads
``[h_{l-1}, h_l]`` (h_{l-1} already holds this step's output of the layer below), and
the output layer reads ``[h_{L-1}, 1]`` (its bias meets the trailing 1). LSTM cells keep
``c`` in ``bank.c`` (slots, layers, hidden). A single slot is stepped in place, on its
bank row; a batch is gathered into a work buffer, stepped, and scattered back; small
batches go row by row, because a matrix-vector product per row is cheaper than one
small-M matrix product there (measured, see `GEMV_MAX_BATCH`).

The input table: the first layer's gates are ``[1, x, h_0] @ W0``, and the ``[1, x]``
part depends on the token alone, so the engine computes it for every token once, when
it is built (``table[v] = [1, embedding[v]] @ W0[:1 + E]``, in float64, then float32),
and a step reads one table row and multiplies only ``h_0`` by the recurrent rows of
``W0``. That removes the embedding's share of the first layer's matrix product (a tied
2 x 256 model's first layer reads 513 rows of weights without the table, 256 with it)
and the embedding copy; the bank rows then hold no ``x`` (``[1 | h_0 | ... | 1]``, the
leading 1 unused). The table is vocabulary x gates floats (folk-notes: 3.7 MB), so it
is built only up to `INPUT_TABLE_MAX_BYTES`; beyond that the engine steps the
embedding as above.

Gate columns are reordered so the sigmoid gates are contiguous (LSTM: i, f, o, g; GRU:
r, z, n_x, n_h) and their weights are pre-scaled by 1/2 (exact in floating point):
sigmoid(a) = (1 + tanh(a / 2)) / 2, so one `tanh` call covers every gate. GRU's
candidate n = tanh(W_in x + b_in + r * (W_hn h + b_hn)) cannot add its input and hidden
parts before r multiplies the hidden part, so they get separate columns (n_x with zeros
in the h rows, n_h with zeros in the x rows) of the same single matmul.

A layer-normalised LSTM (``config.layer_norm``) has no biases and is not pre-scaled
(scaling before a normalisation would change nothing but its epsilon's weight): after
the matmul, the gates are viewed as (B, 4, hidden) and normalised in place, each gate on
its own, then multiplied by their gains and shifted, and it is these (for i, f, o) that
are halved; the cell state is normalised in h's columns before its tanh. The input
table still applies: the normalisation comes after the input and recurrent parts are
summed. Every buffer is preallocated, as for the other cells.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence, Union

import numpy as np

from ensemble.model_types import LN_EPS, TOKEN_RNN, ModelWeights
from ensemble.sampling import Sampler, SamplingSettings, sample  # noqa: F401 - Sampler lives on here for callers

if TYPE_CHECKING:
    from ensemble.model import TokenRNN

KINDS = ("numpy", "torch", "int8")
AnyModel = Union["TokenRNN", ModelWeights]


def as_weights(model: AnyModel) -> ModelWeights:
    """numpy weights of a torch TokenRNN (copied) or of a ModelWeights (as they are)."""
    return model if isinstance(model, ModelWeights) else ModelWeights.from_torch(model)

# Batches up to this size are stepped one slot at a time (matrix-vector products);
# larger ones as one matrix product. On the 2-core EPYC machines with OpenBLAS, small-M
# GEMM packs the whole weight matrix on every call: a (4 x 512) @ (512 x 1040) product
# costs about as much as 4 separate products (a (4 x 257) @ (257 x 3660) head more),
# 16 rows cost 6-10 rows' worth. Measured crossover: 4-6 rows.
GEMV_MAX_BATCH = 4


# The largest input table (see the module doc) the numpy engine builds: a step reads one
# of its rows, so its size costs memory and build time, not step time.
INPUT_TABLE_MAX_BYTES = 64 << 20


def padded_width(n: int) -> int:
    """Columns to allocate for an n-column weight matrix: OpenBLAS small-M GEMM slows
    down by up to 2x when a row is a multiple of 1 KiB (n = 1024 floats, 2048, ...;
    cache-set aliasing); 16 more columns avoid it (measured; matrix-vector products
    do not care)."""
    return n + 16 if n >= 1024 and n % 256 == 0 else n


class SlotError(ValueError):
    """A slot that is not allocated, out of range, or given twice in one batch."""


# ----------------------------------------------------------------------------- slots


class _Slots:
    """Slot bookkeeping shared by both banks: which slots are in use, growth."""

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"a state bank needs at least 1 slot, got {capacity}")
        self.in_use = np.zeros(capacity, dtype=bool)
        self._used: set[int] = set()  # the same, for cheap checks on the hot path
        self.generation = 0  # bumped whenever the storage is reallocated

    @property
    def capacity(self) -> int:
        return len(self.in_use)

    @property
    def used(self) -> list[int]:
        return np.flatnonzero(self.in_use).tolist()

    def alloc(self) -> int:
        """A free slot (the lowest), in its initial state; grows the bank when full."""
        free = np.flatnonzero(~self.in_use)
        if len(free) == 0:
            slot = self.capacity
            self.grow(2 * self.capacity)
        else:
            slot = int(free[0])
        self._clear(slot)
        self.in_use[slot] = True
        self._used.add(slot)
        return slot

    def free(self, slot: int) -> None:
        slot = self.check(slot)
        self.in_use[slot] = False
        self._used.discard(slot)

    def reset(self, slot: int) -> None:
        """Put a slot back to the state a new stream starts from (zeros)."""
        self.check(slot)
        self._clear(slot)

    def grow(self, capacity: int) -> None:
        """Make room for `capacity` slots (never shrinks); states are kept."""
        if capacity <= self.capacity:
            return
        self._resize(capacity)
        in_use = np.zeros(capacity, dtype=bool)
        in_use[: self.capacity] = self.in_use
        self.in_use = in_use
        self.generation += 1

    def check(self, slot) -> int:
        if not (isinstance(slot, (int, np.integer)) and int(slot) in self._used):
            raise SlotError(f"slot {slot!r} is not allocated (capacity {self.capacity}, in use {self.used})")
        return int(slot)

    def check_many(self, slots: list[int]) -> None:
        """All slots allocated and distinct (a slot twice in one batch would lose a step)."""
        if not self._used.issuperset(slots):
            raise SlotError(f"slots {sorted(set(slots) - self._used)} are not allocated (in use {self.used})")
        if len(set(slots)) != len(slots):
            raise SlotError(f"a slot appears twice in one batch: {slots}")

    # storage hooks
    def _clear(self, slot: int) -> None:
        raise NotImplementedError

    def _resize(self, capacity: int) -> None:
        raise NotImplementedError


def _check_state(state: dict, layers: int, hidden: int, lstm: bool) -> tuple[np.ndarray, np.ndarray | None]:
    keys = {"h", "c"} if lstm else {"h"}
    if not isinstance(state, dict) or set(state) != keys:
        got = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"a state is a dict with keys {sorted(keys)}, got {got}")
    arrays = []
    for key in sorted(keys, reverse=True):  # h, then c
        a = np.asarray(state[key], dtype=np.float32)
        if a.shape != (layers, hidden):
            raise ValueError(f"state[{key!r}] must have shape {(layers, hidden)}, got {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"state[{key!r}] holds NaN or infinity")
        arrays.append(a)
    return arrays[0], (arrays[1] if lstm else None)


class StateBank(_Slots):
    """The hidden states of all slots, numpy float32, in the row layout the engine steps.

    ``rows`` (capacity, width): per slot ``[1 | x | h_0 .. h_{L-1} | 1]``;
    ``c`` (capacity, layers, hidden) for LSTM, else None. ``h`` and ``c_view`` give
    (layers, capacity, hidden) views, the layout of `RNNState`. Views go stale when the
    bank grows (`generation` changes).
    """

    def __init__(self, layers: int, hidden: int, lstm: bool, capacity: int = 16, input_width: int = 0):
        super().__init__(capacity)
        self.layers, self.hidden, self.lstm = layers, hidden, lstm
        self.h_start = 1 + input_width
        self.width = self.h_start + layers * hidden + 1
        self.template = np.zeros(self.width, dtype=np.float32)
        self.template[0] = self.template[-1] = 1.0
        self.rows = np.tile(self.template, (capacity, 1))
        self.c = np.zeros((capacity, layers, hidden), dtype=np.float32) if lstm else None

    def _clear(self, slot: int) -> None:
        self.rows[slot] = self.template
        if self.c is not None:
            self.c[slot] = 0.0

    def _resize(self, capacity: int) -> None:
        rows = np.tile(self.template, (capacity, 1))
        rows[: self.capacity] = self.rows
        self.rows = rows
        if self.c is not None:
            c = np.zeros((capacity, self.layers, self.hidden), dtype=np.float32)
            c[: self.capacity] = self.c
            self.c = c

    @property
    def h(self) -> np.ndarray:
        """(layers, capacity, hidden) view of the hidden states."""
        L, H = self.layers, self.hidden
        return self.rows[:, self.h_start : self.h_start + L * H].reshape(-1, L, H).transpose(1, 0, 2)

    @property
    def c_view(self) -> np.ndarray | None:
        """(layers, capacity, hidden) view of the LSTM cell states (None for rnn/gru)."""
        return None if self.c is None else self.c.transpose(1, 0, 2)

    def get(self, slot: int) -> dict:
        slot = self.check(slot)
        L, H = self.layers, self.hidden
        state = {"h": self.rows[slot, self.h_start : self.h_start + L * H].reshape(L, H).copy()}
        if self.c is not None:
            state["c"] = self.c[slot].copy()
        return state

    def set(self, slot: int, state: dict) -> None:
        slot = self.check(slot)
        h, c = _check_state(state, self.layers, self.hidden, self.lstm)
        self.rows[slot, self.h_start : self.h_start + h.size] = h.reshape(-1)
        if c is not None:
            self.c[slot] = c


class TorchStateBank(_Slots):
    """The same bank as torch tensors h, c (layers, capacity, hidden), for TorchEngine."""

    def __init__(self, layers: int, hidden: int, lstm: bool, capacity: int = 16):
        import torch

        super().__init__(capacity)
        self.layers, self.hidden, self.lstm = layers, hidden, lstm
        self.h = torch.zeros(layers, capacity, hidden)
        self.c = torch.zeros(layers, capacity, hidden) if lstm else None

    def _clear(self, slot: int) -> None:
        self.h[:, slot] = 0.0
        if self.c is not None:
            self.c[:, slot] = 0.0

    def _resize(self, capacity: int) -> None:
        import torch

        def bigger(t):
            new = torch.zeros(self.layers, capacity, self.hidden)
            new[:, : t.shape[1]] = t
            return new

        self.h = bigger(self.h)
        if self.c is not None:
            self.c = bigger(self.c)

    def get(self, slot: int) -> dict:
        slot = self.check(slot)
        state = {"h": self.h[:, slot].numpy().copy()}
        if self.c is not None:
            state["c"] = self.c[:, slot].numpy().copy()
        return state

    def set(self, slot: int, state: dict) -> None:
        import torch

        slot = self.check(slot)
        h, c = _check_state(state, self.layers, self.hidden, self.lstm)
        self.h[:, slot] = torch.from_numpy(h)
        if c is not None:
            self.c[:, slot] = torch.from_numpy(c)


# ---------------------------------------------------------------------------- engines


class Engine:
    """What the server needs from an engine; both engines share it.

    ``step(slots, tokens)`` advances the given slots by one token each and returns their
    next-token logits (B, vocab) as float32 numpy, in the order of `slots`. The numpy
    engine returns a view of a reused buffer: it is valid until the next step (copy it
    to keep it). Slots in one call must be distinct and allocated.
    """

    kind = "?"

    def __init__(self, model: AnyModel, bank):
        self.config = model.config
        self.vocab_size = model.config.vocab_size
        self.bank = bank

    compute_note = ""  # what this machine changed about how the engine computes, if anything

    @property
    def label(self) -> str:
        """The engine as the ready line and `bench step` name it."""
        return f"{self.kind} engine" + (f", {self.compute_note}" if self.compute_note else "")

    # slots
    @property
    def capacity(self) -> int:
        return self.bank.capacity

    @property
    def slots_in_use(self) -> list[int]:
        return self.bank.used

    def alloc_slot(self) -> int:
        return self.bank.alloc()

    def free_slot(self, slot: int) -> None:
        self.bank.free(slot)

    def reset_slot(self, slot: int) -> None:
        self.bank.reset(slot)

    def grow(self, capacity: int) -> None:
        self.bank.grow(capacity)

    def get_state(self, slot: int) -> dict:
        """{"h": (layers, hidden)[, "c": (layers, hidden)]} float32 copies; for snapshots."""
        return self.bank.get(slot)

    def set_state(self, slot: int, state: dict) -> None:
        """Restore what `get_state` returned (either engine's)."""
        self.bank.set(slot, state)

    # stepping
    def _arrays(self, slots, tokens) -> tuple[np.ndarray, np.ndarray, list[int], list[int]]:
        """slots and tokens as intp arrays and as lists, checked (Python-level checks:
        cheaper than numpy reductions for the batch sizes a server sees)."""
        slots = np.asarray(slots, dtype=np.intp).reshape(-1)
        tokens = np.asarray(tokens, dtype=np.intp).reshape(-1)
        sl, tk = slots.tolist(), tokens.tolist()
        if len(sl) != len(tk) or not sl:
            raise ValueError(f"one token per slot needed, got {len(sl)} slots and {len(tk)} tokens")
        if min(tk) < 0 or max(tk) >= self.vocab_size:
            raise ValueError(f"tokens must be in 0..{self.vocab_size - 1}, got {tk}")
        self.bank.check_many(sl)
        return slots, tokens, sl, tk

    def _check_token(self, token) -> int:
        if not (isinstance(token, (int, np.integer)) and 0 <= token < self.vocab_size):
            raise ValueError(f"token must be an int in 0..{self.vocab_size - 1}, got {token!r}")
        return int(token)

    def step(self, slots: Sequence[int] | np.ndarray, tokens: Sequence[int] | np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def step_one(self, slot: int, token: int) -> np.ndarray:
        """One slot, one token -> logits (vocab,)."""
        return self.step([slot], [token])[0]


def _fused_layers(weights: ModelWeights) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per layer: the fused gate matrix M (in + hidden, G*hidden) and bias (G*hidden,),
    float64, gate columns in engine order and sigmoid gates pre-scaled by 1/2 (for a
    layer-normalised LSTM: not scaled and no bias; `_layer_norm_params` scale instead,
    after the normalisation)."""
    cfg = weights.config
    H = cfg.hidden
    out = []
    for layer in range(cfg.layers):
        w_ih, w_hh = (np.asarray(weights.arrays[f"rnn.{name}_l{layer}"], dtype=np.float64)
                      for name in ("weight_ih", "weight_hh"))
        if cfg.layer_norm:
            b_ih = b_hh = np.zeros(w_ih.shape[0])
        else:
            b_ih, b_hh = (np.asarray(weights.arrays[f"rnn.{name}_l{layer}"], dtype=np.float64)
                          for name in ("bias_ih", "bias_hh"))
        n_in = w_ih.shape[1]
        if cfg.cell == "rnn":
            M = np.concatenate([w_ih.T, w_hh.T], axis=0)
            b = b_ih + b_hh
        elif cfg.cell == "lstm":
            blocks = lambda a: [a[k * H : (k + 1) * H] for k in LSTM_ORDER]  # noqa: E731
            M = np.concatenate([np.concatenate(blocks(w_ih), 0).T, np.concatenate(blocks(w_hh), 0).T], axis=0)
            b = np.concatenate(blocks(b_ih + b_hh))
            if not cfg.layer_norm:
                M[:, : 3 * H] *= 0.5
                b[: 3 * H] *= 0.5
        else:  # gru; torch: r, z, n -> engine: r, z, n_x, n_h
            M = np.zeros((n_in + H, 4 * H))
            M[:n_in, : 2 * H] = w_ih[: 2 * H].T
            M[n_in:, : 2 * H] = w_hh[: 2 * H].T
            M[:n_in, 2 * H : 3 * H] = w_ih[2 * H :].T
            M[n_in:, 3 * H :] = w_hh[2 * H :].T
            b = np.concatenate([b_ih[: 2 * H] + b_hh[: 2 * H], b_ih[2 * H :], b_hh[2 * H :]])
            M[:, : 2 * H] *= 0.5
            b[: 2 * H] *= 0.5
        out.append((M, b))
    return out


LSTM_ORDER = [0, 1, 3, 2]  # torch's gates i, f, g, o -> the engine's i, f, o, g


def _layer_norm_params(weights: ModelWeights, layer: int) -> tuple[np.ndarray, ...]:
    """A layer-normalised LSTM layer's gains and shifts as the engine applies them:
    gates (4, hidden) each in engine order, the sigmoid gates' (i, f, o) halved (what
    the 1/2 pre-scale does for a plain LSTM: sigmoid(a) = (1 + tanh(a / 2)) / 2), and
    the cell's (hidden,)."""
    H = weights.config.hidden
    get = lambda name: np.asarray(weights.arrays[f"rnn.{name}_l{layer}"], dtype=np.float64)  # noqa: E731
    gates = []
    for name in ("ln_gates_weight", "ln_gates_bias"):
        a = get(name).reshape(4, H)[LSTM_ORDER]
        a[:3] *= 0.5
        gates.append(np.ascontiguousarray(a, dtype=np.float32))
    return (*gates, *(np.ascontiguousarray(get(n), dtype=np.float32) for n in ("ln_cell_weight", "ln_cell_bias")))


def _normalise(a: np.ndarray, mean: np.ndarray, square: np.ndarray, average: np.ndarray) -> None:
    """Layer normalisation without gain and shift, in place along the last axis, as
    torch's: biased variance, `LN_EPS` inside the square root. `mean` has `a`'s shape
    with 1 last, `square` `a`'s shape: preallocated, so nothing is allocated. `average`
    is a (width, 1) column of 1 / width: a mean as a matrix product is a fifth of the
    cost of `np.mean` here (1.5 against 7 us for 4 x 256, measured)."""
    np.matmul(a, average, out=mean)
    np.subtract(a, mean, out=a)
    np.multiply(a, a, out=square)
    np.matmul(square, average, out=mean)
    np.add(mean, LN_EPS, out=mean)
    np.sqrt(mean, out=mean)
    np.divide(a, mean, out=a)


class _Plan:
    """Preallocated views for stepping B rows: per layer, the matmul input, the gates and
    their parts, the state it updates. Built once per slot (B = 1, on the bank) or per
    batch size (on the work buffers)."""

    __slots__ = ("x", "layers", "head_in", "rows", "c", "norms")


class NumpyEngine(Engine):
    """TokenRNN inference in numpy float32 with a bank of slots. See the module doc."""

    kind = "numpy"

    def __init__(self, model: AnyModel, slots: int = 16, input_table: bool | None = None):
        """`input_table`: precompute the first layer's input part per token (None: when
        the table fits in `INPUT_TABLE_MAX_BYTES`)."""
        weights = as_weights(model)
        cfg = weights.config
        E, H, L = cfg.embedding, cfg.hidden, cfg.layers
        fused = _fused_layers(weights)
        gate_width = padded_width(fused[0][0].shape[1])
        if input_table is None:
            input_table = cfg.vocab_size * gate_width * 4 <= INPUT_TABLE_MAX_BYTES
        x_width = 0 if input_table else E
        super().__init__(weights, StateBank(L, H, cfg.cell == "lstm", slots, x_width))
        self.cell, self.layers, self.hidden = cfg.cell, L, H
        self.ln_params = [_layer_norm_params(weights, l) for l in range(L)] if cfg.layer_norm else None
        f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)
        pad = lambda M: np.pad(M, ((0, 0), (0, gate_width - M.shape[1])))  # zero columns: gates that stay 0
        embedding = np.asarray(weights.arrays["embed.weight"], dtype=np.float64)
        self.weights, self.biases = [], []
        self.embedding = self.input_table = None
        for layer, (M, b) in enumerate(fused):
            if layer == 0:
                x_rows = np.concatenate([b[None, :], M[:E]], axis=0)  # [1, x] meets these rows
                if input_table:  # table[v] = [1, x_v] @ x_rows; the step multiplies h_0 only
                    ones = np.ones((cfg.vocab_size, 1))
                    self.input_table = f32(pad(np.concatenate([ones, embedding], axis=1) @ x_rows))
                    self.weights.append(f32(pad(M[E:])))
                else:  # input [1, x, h_0]: the bias is the first weight row
                    self.embedding = f32(embedding)
                    self.weights.append(f32(pad(np.concatenate([x_rows, M[E:]], axis=0))))
                self.biases.append(None)
            else:
                self.weights.append(f32(pad(M)))
                self.biases.append(None if cfg.layer_norm else f32(pad(b[None, :])[0]))
        head_w = np.asarray(weights.arrays["head.weight"], dtype=np.float64)
        head_b = np.asarray(weights.arrays["head.bias"], dtype=np.float64)
        head = np.concatenate([head_w.T, head_b[None, :]], axis=0)  # input [h_{L-1}, 1]
        self.head = f32(np.pad(head, ((0, 0), (0, padded_width(self.vocab_size) - self.vocab_size))))
        self.gate_width = gate_width
        # column ranges of each layer's matmul input, and of each h, in a bank row
        hs = self.bank.h_start
        self._h_cols = [slice(hs + l * H, hs + (l + 1) * H) for l in range(L)]
        first = slice(hs, hs + H) if input_table else slice(0, hs + H)
        self._in_cols = [first] + [slice(hs + (l - 1) * H, hs + (l + 1) * H) for l in range(1, L)]
        self._head_cols = slice(hs + (L - 1) * H, hs + L * H + 1)
        self._x_cols = slice(1, 1 + x_width)
        self._make_buffers()

    @property
    def input_row_bytes(self) -> int:
        """Bytes of the per-token input one step of one slot reads (a table or embedding row)."""
        rows = self.input_table if self.input_table is not None else self.embedding
        return int(rows[0].nbytes)

    def _make_buffers(self) -> None:
        cap, bank = self.capacity, self.bank
        self._generation = bank.generation
        self._rows_buf = np.empty((cap, bank.width), dtype=np.float32)
        self._c_buf = np.empty((cap, self.layers, self.hidden), dtype=np.float32) if bank.lstm else None
        self._gates = np.zeros((cap, self.gate_width), dtype=np.float32)
        self._x_gates = np.zeros((cap, self.gate_width), dtype=np.float32)  # table rows of a batch
        self._logits = np.zeros((cap, self.head.shape[1]), dtype=np.float32)
        self._logit_rows = [self._logits[j : j + 1] for j in range(cap)]
        if self.ln_params is not None:
            H = self.hidden
            self._ln_mean = np.zeros((cap, 4, 1), dtype=np.float32)
            self._ln_square = np.zeros((cap, 4, H), dtype=np.float32)
            self._ln_c_mean = np.zeros((cap, 1), dtype=np.float32)
            self._ln_c_square = np.zeros((cap, H), dtype=np.float32)
            self._ln_average = np.full((H, 1), 1.0 / H, dtype=np.float32)
        self._slot_plans: dict[int, _Plan] = {}
        self._batch_plans: dict[int, _Plan] = {}

    def _plan(self, rows: np.ndarray, c: np.ndarray | None) -> _Plan:
        """Views for stepping `rows` (B, width) with cell states `c` (B, layers, hidden)."""
        B, H = rows.shape[0], self.hidden
        g = self._gates[:B]  # (B, padded width); the gates use the first G * hidden columns
        p = _Plan()
        p.rows, p.c = rows, c
        p.x = rows[:, self._x_cols]
        p.head_in = rows[:, self._head_cols]
        p.layers = []
        for l in range(self.layers):
            x, h, W, b = rows[:, self._in_cols[l]], rows[:, self._h_cols[l]], self.weights[l], self.biases[l]
            if self.cell == "rnn":
                parts = (g[:, :H],)
            elif self.cell == "lstm":
                parts = (g[:, : 3 * H], g[:, :H], g[:, H : 2 * H], g[:, 2 * H : 3 * H], g[:, 3 * H : 4 * H], c[:, l])
            else:
                parts = (g[:, : 2 * H], g[:, :H], g[:, H : 2 * H], g[:, 2 * H : 3 * H], g[:, 3 * H : 4 * H])
            p.layers.append((x, W, b, g, h) + parts)
        p.norms = None
        if self.ln_params is not None:  # per layer: the gates as (B, 4, H) (a view of g), buffers, gains
            g4 = g[:, : 4 * H].reshape(B, 4, H)
            assert np.shares_memory(g4, g)  # normalised in place
            buffers = (self._ln_mean[:B], self._ln_square[:B], self._ln_c_mean[:B], self._ln_c_square[:B])
            p.norms = [(g4,) + buffers + self.ln_params[l] for l in range(self.layers)]
        return p

    def _slot_plan(self, slot: int) -> _Plan:
        plan = self._slot_plans.get(slot)
        if plan is None:
            c = None if self.bank.c is None else self.bank.c[slot : slot + 1]
            plan = self._slot_plans[slot] = self._plan(self.bank.rows[slot : slot + 1], c)
        return plan

    def _batch_plan(self, B: int) -> _Plan:
        plan = self._batch_plans.get(B)
        if plan is None:
            c = None if self._c_buf is None else self._c_buf[:B]
            plan = self._batch_plans[B] = self._plan(self._rows_buf[:B], c)
        return plan

    def _token_input(self, plan: _Plan, token: int) -> np.ndarray | None:
        """One slot's input for `_run`: its table row, or (no table) None after putting
        the token's embedding into the plan's row."""
        if self.input_table is None:
            plan.x[0] = self.embedding[token]
            return None
        return self.input_table[token : token + 1]

    def _run(self, plan: _Plan, out: np.ndarray, x_gates: np.ndarray | None) -> None:
        """Step the rows of `plan` and write logits to `out`. `x_gates`: the input table
        rows of the tokens (B, gate width), or None when the embedding is already in the
        rows (no table)."""
        dot, add, mul, tanh = np.dot, np.add, np.multiply, np.tanh
        cell = self.cell
        for k, layer in enumerate(plan.layers):
            x, W, b, g, h = layer[:5]
            dot(x, W, out=g)
            if b is not None:
                add(g, b, out=g)
            elif x_gates is not None:  # layer 0 with the table: + [1, x] @ W0's input rows
                add(g, x_gates, out=g)
                x_gates = None
            if plan.norms is not None:  # each gate normalised, then its gain and shift
                g4, mean, square = plan.norms[k][:3]
                _normalise(g4, mean, square, self._ln_average)
                mul(g4, plan.norms[k][5], out=g4)
                add(g4, plan.norms[k][6], out=g4)
            if cell == "lstm":
                sig, i, f, o, gg, c = layer[5:]
                tanh(g, out=g)                  # all of g: contiguous (padding columns are 0)
                mul(sig, 0.5, out=sig)
                add(sig, 0.5, out=sig)          # i, f, o = sigmoid
                mul(f, c, out=c)
                mul(i, gg, out=i)
                add(c, i, out=c)                # c = f * c + i * g
                if plan.norms is not None:      # h = o * tanh(LN(c) * gain + shift)
                    _, _, _, c_mean, c_square, _, _, c_gain, c_shift = plan.norms[k]
                    np.copyto(h, c)
                    _normalise(h, c_mean, c_square, self._ln_average)
                    mul(h, c_gain, out=h)
                    add(h, c_shift, out=h)
                    tanh(h, out=h)
                else:
                    tanh(c, out=h)
                mul(h, o, out=h)                # h = o * tanh(c)
            elif cell == "gru":
                rz, r, z, nx, nh = layer[5:]
                tanh(rz, out=rz)
                mul(rz, 0.5, out=rz)
                add(rz, 0.5, out=rz)            # r, z = sigmoid
                mul(r, nh, out=nh)
                add(nx, nh, out=nx)
                tanh(nx, out=nx)                # n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
                np.subtract(h, nx, out=h)
                mul(h, z, out=h)
                add(h, nx, out=h)               # h = n + z * (h - n) = (1 - z) * n + z * h
            else:
                tanh(layer[5], out=h)
        dot(plan.head_in, self.head, out=out)

    def _sync(self) -> None:
        if self._generation != self.bank.generation:
            self._make_buffers()

    def step_one(self, slot: int, token: int) -> np.ndarray:
        """One slot, one token -> logits (vocab,), a view of a reused buffer."""
        self._sync()
        plan = self._slot_plan(self.bank.check(slot))
        out = self._logit_rows[0]
        self._run(plan, out, self._token_input(plan, self._check_token(token)))
        return out[0, : self.vocab_size]

    def step(self, slots, tokens) -> np.ndarray:
        self._sync()
        slots, tokens, sl, tk = self._arrays(slots, tokens)
        B = len(sl)
        if B <= GEMV_MAX_BATCH:
            rows = self._logit_rows
            for j in range(B):
                plan = self._slot_plan(sl[j])
                self._run(plan, rows[j], self._token_input(plan, tk[j]))
            return self._logits[:B, : self.vocab_size]
        plan = self._batch_plan(B)
        bank = self.bank
        np.take(bank.rows, slots, axis=0, out=plan.rows, mode="clip")
        if plan.c is not None:
            np.take(bank.c, slots, axis=0, out=plan.c, mode="clip")
        if self.input_table is None:
            x_gates = None
            np.take(self.embedding, tokens, axis=0, out=plan.x, mode="clip")
        else:
            x_gates = self._x_gates[:B]
            np.take(self.input_table, tokens, axis=0, out=x_gates, mode="clip")
        out = self._logits[:B]
        self._run(plan, out, x_gates)
        bank.rows[slots] = plan.rows
        if plan.c is not None:
            bank.c[slots] = plan.c
        return out[:, : self.vocab_size]


class TorchEngine(Engine):
    """The reference engine: the torch model's own `step` over a torch state bank.

    Runs a private eval-mode float32 CPU copy of the model (later changes to the model
    do not reach it, as with NumpyEngine), under `torch.inference_mode()` with oneDNN
    disabled during the step (its LSTM path is 2-3x slower for one step). Thread
    settings (`torch.set_num_threads`) are the caller's.
    """

    kind = "torch"

    def __init__(self, model: AnyModel, slots: int = 16):
        import copy

        import torch

        cfg = model.config
        super().__init__(model, TorchStateBank(cfg.layers, cfg.hidden, cfg.cell == "lstm", slots))
        if isinstance(model, ModelWeights):
            self.model = model.to_torch()
        else:
            self.model = copy.deepcopy(model).to("cpu", torch.float32).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def step(self, slots, tokens) -> np.ndarray:
        import torch
        from ensemble.model import RNNState

        slots, tokens, sl, _ = self._arrays(slots, tokens)
        mkldnn = torch.backends.mkldnn
        previous = mkldnn.enabled
        mkldnn.enabled = False
        try:
            with torch.inference_mode():
                bank = self.bank
                if len(sl) == 1:
                    index = slice(sl[0], sl[0] + 1)
                    state = RNNState(bank.h[:, index], None if bank.c is None else bank.c[:, index])
                else:
                    index = torch.from_numpy(slots)
                    state = RNNState(bank.h.index_select(1, index),
                                     None if bank.c is None else bank.c.index_select(1, index))
                logits, new = self.model.step(torch.from_numpy(tokens), state)
                bank.h[:, index] = new.h
                if bank.c is not None:
                    bank.c[:, index] = new.c
        finally:
            mkldnn.enabled = previous
        return logits.numpy()


# each model type's live engines, by kind; a "module:Class" string is imported when asked
# for (the int8 engine needs onnxruntime, an optional extra)
ENGINES = {TOKEN_RNN: {"numpy": NumpyEngine, "torch": TorchEngine, "int8": "ensemble.engine_int8:Int8Engine"}}


def make_engine(model: AnyModel, kind: str = "numpy", slots: int = 16) -> Engine:
    """An engine of `kind` ("numpy" for live use, "int8" for big models, "torch" for
    reference) with `slots` slots, for a torch TokenRNN or a ModelWeights (whose model
    type picks the engine class)."""
    engines = ENGINES[getattr(model, "model_type", TOKEN_RNN)]
    if kind not in engines:
        raise ValueError(f"engine kind must be one of {', '.join(engines)}, got {kind!r}")
    engine = engines[kind]
    if isinstance(engine, str):
        import importlib

        module, _, name = engine.partition(":")
        engine = getattr(importlib.import_module(module), name)
    return engine(model, slots)


# ------------------------------------------------------------------- numpy's BLAS threads


def blas_info() -> dict:
    """numpy's BLAS: name, version and its thread count (threadpoolctl reads them)."""
    import threadpoolctl

    info = {"name": "?", "version": "?", "threads": None}
    for pool in threadpoolctl.threadpool_info():
        if pool.get("user_api") == "blas":
            info.update(name=pool.get("internal_api", "?"), version=pool.get("version", "?"),
                        threads=pool.get("num_threads"))
            break
    return info


def set_blas_threads(n: int) -> bool:
    """Limit numpy's BLAS to n threads for the rest of the process; False when no BLAS
    thread pool was found to limit."""
    import threadpoolctl

    threadpoolctl.threadpool_limits(int(n), user_api="blas")  # stays in force (no `with`)
    return any(pool.get("user_api") == "blas" for pool in threadpoolctl.threadpool_info())
