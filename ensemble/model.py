"""TokenRNN: the one model type. Embedding -> RNN|GRU|LSTM stack -> Linear over tokens.

It learns and continues any token stream a codec makes (text, ABC, MIDI events, packed
notes, touches, gestures). Training uses `forward` over windows of T tokens; live use
calls `step` with one token per performer, each performer owning one row of the state.

The plain RNN cell is Elman's h_t = tanh(U x_t + V h_{t-1} + b) (torch's nn.RNN with
tanh; its two bias vectors add up to b). The output is a softmax over the vocabulary,
trained with categorical cross-entropy (the logits are returned, the loss applies the
softmax). With `tie` the output layer's weight matrix is the embedding itself (inputs
and outputs share one vector per token; embedding == hidden); saved models still hold
both arrays, so the live engines need not know.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

# the config lives where the live server can read it without importing torch
from ensemble.model_types import CELLS, ModelConfig  # noqa: F401 - part of this module's interface


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
    ):
        super().__init__()
        self.config = ModelConfig(vocab_size, cell, layers, hidden, embedding, dropout, tie)
        self.embed = nn.Embedding(vocab_size, embedding)
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
