"""TokenRNN: the one model type. Embedding -> RNN|GRU|LSTM stack -> Linear over tokens.

It learns and continues any token stream a codec makes (text, ABC, MIDI events, packed
notes, touches, gestures). Training uses `forward` over windows of T tokens; live use
calls `step` with one token per performer, each performer owning one row of the state.

The plain RNN cell is Elman's h_t = tanh(U x_t + V h_{t-1} + b) (torch's nn.RNN with
tanh; its two bias vectors add up to b). The output is a softmax over the vocabulary,
trained with categorical cross-entropy (the logits are returned, the loss applies the
softmax). With `tie` the output layer's weight matrix is the embedding itself (inputs
and outputs share one vector per token; embedding == hidden); saved models still hold
both arrays, so the live engines need not know. With `layer_norm` (LSTM only) the
stack is a `LayerNormLSTM` instead of torch's nn.LSTM.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# the config lives where the live server can read it without importing torch
from ensemble.model_types import CELLS, LN_EPS, ModelConfig  # noqa: F401 - part of this module's interface


@dataclass
class RNNState:
    """Hidden state of a TokenRNN: h (and c for LSTM), each (layers, batch, hidden).

    Row b of the batch belongs to one stream (a training stream; in tests, a performer:
    the live server keeps its bank in the numpy engine); `rows` takes rows out and
    `put_rows` writes them back.
    """

    h: Tensor
    c: Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.h.shape[1]

    def tensors(self) -> tuple[Tensor, ...]:
        return (self.h,) if self.c is None else (self.h, self.c)

    def _map(self, fn) -> "RNNState":
        return RNNState(fn(self.h), None if self.c is None else fn(self.c))

    def rows(self, index) -> "RNNState":
        """The state of the given batch rows (an int, a slice, a list or a tensor of ints)."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        return self._map(lambda t: t[:, index])

    def put_rows(self, index, other: "RNNState") -> None:
        """Write `other`'s rows into the given rows of this state, in place (the reference a
        live engine is tested against steps a bank of performers this way)."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        self.h[:, index] = other.h
        if self.c is not None:
            self.c[:, index] = other.c

    def detach(self) -> "RNNState":
        """Cut the graph (truncated BPTT keeps the values, not the history)."""
        return self._map(lambda t: t.detach())

    def reset_rows(self, keep: Tensor) -> "RNNState":
        """Zero the rows where `keep` (shape (batch,), bool) is False; a new piece starts there."""
        mask = keep.to(self.h.dtype).view(1, -1, 1)
        return self._map(lambda t: t * mask)

    def clone(self) -> "RNNState":
        return self._map(lambda t: t.clone())

    def to(self, device) -> "RNNState":
        return self._map(lambda t: t.to(device))


def _ln_forward(a: Tensor) -> tuple[Tensor, Tensor]:
    """a normalised along the last axis, and 1 / sigma (biased variance, `LN_EPS`)."""
    d = a - a.mean(-1, keepdim=True)
    inv_sigma = torch.rsqrt(d.square().mean(-1, keepdim=True) + LN_EPS)
    return d * inv_sigma, inv_sigma


def _ln_back(dn: Tensor, n: Tensor, inv_sigma: Tensor) -> Tensor:
    """d loss / d a for n = (a - mean) / sigma along the last axis."""
    return (dn - dn.mean(-1, keepdim=True) - n * (dn * n).mean(-1, keepdim=True)) * inv_sigma


class _LayerNormLSTMLayer(torch.autograd.Function):
    """One layer of `LayerNormLSTM` over a whole window, with its backward written out.

    Autograd over the step-by-step loop records ~15 small operations a step and replays
    ~30 backwards, and on a CPU their bookkeeping, not their arithmetic, is most of the
    time. This forward saves what the backward needs (normalised gates, 1 / sigma,
    activations, every c) and the backward walks the window in reverse with plain
    tensor operations, summing the weight, gain and shift gradients once at the end:
    one layer's forward + backward at batch 32, 64 steps, 256 units takes 58 ms against
    autograd's 120 on one core here. tests/test_model.py checks it with gradcheck
    (float64) and against the equations.
    """

    @staticmethod
    def forward(ctx, gx, h0, c0, w_hh, gain, shift, cgain, cshift):
        """gx (B, T, 4H): the input part of every step; h0, c0 (B, H); w_hh (4H, H);
        gain, shift (4, H); cgain, cshift (H,) -> y (B, T, H), h_T, c_T."""
        B, T, G = gx.shape
        H = G // 4
        ys = gx.new_empty(B, T, H)
        ns = gx.new_empty(B, T, 4, H)      # normalised gates
        inv = gx.new_empty(B, T, 4, 1)     # 1 / sigma of the gates
        acts = gx.new_empty(B, T, 4, H)    # i, f, g, o after their nonlinearities
        cs = gx.new_empty(B, T + 1, H)     # c_0 .. c_T
        ncs = gx.new_empty(B, T, H)
        cinv = gx.new_empty(B, T, 1)
        ths = gx.new_empty(B, T, H)
        cs[:, 0] = c0
        h = h0
        for t in range(T):
            n, inv[:, t] = _ln_forward(torch.addmm(gx[:, t], h, w_hh.t()).view(B, 4, H))
            ns[:, t] = n
            z = torch.addcmul(shift, n, gain)
            act = acts[:, t]
            torch.sigmoid(z, out=act)
            torch.tanh(z[:, 2], out=act[:, 2])
            i, f, g, o = act.unbind(1)
            c = torch.addcmul(f * cs[:, t], i, g)
            cs[:, t + 1] = c
            nc, cinv[:, t] = _ln_forward(c)
            ncs[:, t] = nc
            th = torch.tanh(torch.addcmul(cshift, nc, cgain))
            ths[:, t] = th
            h = o * th
            ys[:, t] = h
        ctx.save_for_backward(h0, w_hh, gain, cgain, ys, ns, inv, acts, cs, ncs, cinv, ths)
        return ys, h, cs[:, T].clone()

    @staticmethod
    def backward(ctx, dy, dhT, dcT):
        h0, w_hh, gain, cgain, ys, ns, inv, acts, cs, ncs, cinv, ths = ctx.saved_tensors
        B, T, H = ys.shape
        dz_all = ys.new_empty(B, T, 4, H)
        da_all = ys.new_empty(B, T, 4 * H)
        du_all = ys.new_empty(B, T, H)
        dh = dhT.clone() if dhT is not None else ys.new_zeros(B, H)
        dc = dcT.clone() if dcT is not None else ys.new_zeros(B, H)
        if dy is not None:
            dy = dy.contiguous()
        for t in range(T - 1, -1, -1):
            if dy is not None:
                dh = dh + dy[:, t]
            act = acts[:, t]
            i, f, g, o = act.unbind(1)
            th = ths[:, t]
            dz = dz_all[:, t]
            dz[:, 3] = dh * th * o * (1 - o)
            du = dh * o * (1 - th * th)
            du_all[:, t] = du
            dc = dc + _ln_back(du * cgain, ncs[:, t], cinv[:, t])
            dz[:, 0] = dc * g * i * (1 - i)
            dz[:, 1] = dc * cs[:, t] * f * (1 - f)
            dz[:, 2] = dc * i * (1 - g * g)
            dc = dc * f
            da = _ln_back(dz * gain, ns[:, t], inv[:, t]).view(B, 4 * H)
            da_all[:, t] = da
            dh = da @ w_hh
        h_prev = torch.cat([h0.unsqueeze(1), ys[:, :-1]], 1)
        dw = da_all.reshape(-1, 4 * H).t() @ h_prev.reshape(-1, H)
        dgain = (dz_all * ns).sum((0, 1))
        dshift = dz_all.sum((0, 1))
        dcgain = (du_all * ncs).sum((0, 1))
        dcshift = du_all.sum((0, 1))
        return da_all, dh, dc, dw, dgain, dshift, dcgain, dcshift



class LayerNormLSTM(nn.Module):
    """A stacked LSTM with layer normalisation (Ba, Kiros & Hinton 2016), the interface
    of nn.LSTM(batch_first=True): ``forward(x (B, T, in), (h0, c0) (L, B, H)) -> y, (h, c)``.

    Per layer and step, in torch's gate order (i, f, g, o)::

        a = W_ih x_t + W_hh h_{t-1}                  (no bias: the normalisation's shift is it)
        a_k = LN(a_k) * gain_k + shift_k             for each gate k in i, f, g, o separately
        c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
        h_t = sigmoid(o) * tanh(LN(c_t) * gain_c + shift_c)

    Each gate is normalised on its own (as TensorFlow's LayerNormBasicLSTMCell does), so
    a gate's scale cannot swamp another's; the stored c is the unnormalised one. Why
    normalise: the recurrent pre-activations keep one scale whatever the weights grow
    to, which is said to allow larger learning rates and to train faster per step (the
    README's "Layer normalisation" measures whether it does here). Why not by default:
    torch has no fused kernel for it, so each layer runs step by step in Python
    (`_LayerNormLSTMLayer`, with a hand-written backward) and trains fewer tokens a
    second than nn.LSTM's fused kernel, and each live step costs the normalisations too.

    Initialised as nn.LSTM is (uniform +-1/sqrt(hidden)), gains 1, shifts 0 except the
    forget gate's, 1 (the usual start that keeps the cell's memory at first).
    """

    def __init__(self, input_size: int, hidden: int, num_layers: int = 1, dropout: float = 0.0):
        super().__init__()
        self.hidden, self.num_layers, self.dropout = hidden, num_layers, dropout
        bound = 1.0 / math.sqrt(hidden)
        for k in range(num_layers):
            n_in = input_size if k == 0 else hidden
            params = {
                "weight_ih": torch.empty(4 * hidden, n_in).uniform_(-bound, bound),
                "weight_hh": torch.empty(4 * hidden, hidden).uniform_(-bound, bound),
                "ln_gates_weight": torch.ones(4 * hidden),
                "ln_gates_bias": torch.zeros(4 * hidden),
                "ln_cell_weight": torch.ones(hidden),
                "ln_cell_bias": torch.zeros(hidden),
            }
            params["ln_gates_bias"][hidden : 2 * hidden] = 1.0  # the forget gate
            for name, value in params.items():
                self.register_parameter(f"{name}_l{k}", nn.Parameter(value))

    def _layer(self, k: int) -> list[Tensor]:
        return [getattr(self, f"{name}_l{k}") for name in
                ("weight_ih", "weight_hh", "ln_gates_weight", "ln_gates_bias", "ln_cell_weight", "ln_cell_bias")]

    def forward(self, x: Tensor, hx: tuple[Tensor, Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        h0, c0 = hx
        H = self.hidden
        hs, cs = [], []
        for k in range(self.num_layers):
            w_ih, w_hh, gain, shift, cell_gain, cell_shift = self._layer(k)
            gain, shift = gain.view(4, H), shift.view(4, H)
            gx = F.linear(x, w_ih)  # the input part of every step at once
            with torch.autocast(x.device.type, enabled=False):  # the loop in float32, bf16 autocast or not
                x, h, c = _LayerNormLSTMLayer.apply(gx.float(), h0[k].float(), c0[k].float(), w_hh, gain, shift,
                                                    cell_gain, cell_shift)
            hs.append(h)
            cs.append(c)
            if k < self.num_layers - 1 and self.dropout > 0 and self.training:
                x = F.dropout(x, self.dropout, training=True)
        return x, (torch.stack(hs), torch.stack(cs))


class TokenRNN(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        cell: str = "lstm",
        layers: int = 2,
        hidden: int = 256,
        embedding: int = 64,
        dropout: float = 0.0,
        tie: bool = False,
        layer_norm: bool = False,
    ):
        super().__init__()
        self.config = ModelConfig(vocab_size, cell, layers, hidden, embedding, dropout, tie, layer_norm)
        self.embed = nn.Embedding(vocab_size, embedding)
        if layer_norm:
            self.rnn = LayerNormLSTM(embedding, hidden, layers, dropout if layers > 1 else 0.0)
        else:
            rnn_class = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}[cell]
            extra = {"nonlinearity": "tanh"} if cell == "rnn" else {}
            self.rnn = rnn_class(
                embedding, hidden, num_layers=layers, batch_first=True,
                dropout=dropout if layers > 1 else 0.0, **extra,
            )
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, vocab_size)
        if tie:  # one matrix both reads tokens in and scores them out (Press & Wolf 2017)
            self.head.weight = self.embed.weight

    def untie(self) -> None:
        """Give the output layer weights of its own (a copy of the shared ones), e.g. to
        fine-tune it alone."""
        if self.config.tie:
            self.head.weight = nn.Parameter(self.embed.weight.detach().clone())
            self.config = replace(self.config, tie=False)

    def set_dropout(self, p: float) -> None:
        """Change dropout mid-run (the trainer chooses it once it knows its speed)."""
        self.drop.p = p
        if self.config.layers > 1:
            self.rnn.dropout = p
        self.config = replace(self.config, dropout=p)

    @classmethod
    def from_config(cls, config: ModelConfig) -> "TokenRNN":
        return cls(**config.to_dict())

    def initial_state(self, batch_size: int, device=None) -> RNNState:
        """The state a new stream (or performer) starts from: zeros."""
        cfg = self.config
        device = device if device is not None else self.head.weight.device
        shape = (cfg.layers, batch_size, cfg.hidden)
        h = torch.zeros(shape, device=device)
        c = torch.zeros(shape, device=device) if cfg.cell == "lstm" else None
        return RNNState(h, c)

    def forward(self, tokens: Tensor, state: RNNState | None = None) -> tuple[Tensor, RNNState]:
        """tokens (B, T) int -> logits (B, T, vocab) and the state after the last step."""
        if state is None:
            state = self.initial_state(tokens.shape[0], tokens.device)
        x = self.embed(tokens)
        hx = state.h if state.c is None else (state.h, state.c)
        y, hx = self.rnn(x, hx)
        logits = self.head(self.drop(y))
        new = RNNState(hx) if state.c is None else RNNState(*hx)
        return logits, new

    def step(self, tokens: Tensor, state: RNNState | None = None) -> tuple[Tensor, RNNState]:
        """tokens (B,) int -> logits (B, vocab) for the next token, and the new state."""
        logits, state = self.forward(tokens.view(-1, 1), state)
        return logits[:, 0], state
