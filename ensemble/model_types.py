"""Model types as the live path sees them: configs, weight shapes and numpy weights, no torch.

A model folder's `config.json` names its model type (``"model_type"``; folders written
before it existed are TokenRNNs). The server loads the weights with
`safetensors.numpy` into a `ModelWeights` and the model type builds its own live engine
from them (`ensemble.engine.make_engine`), so `ensemble serve` never imports torch:
torch costs most of a second to import and is only needed to train (and for the
reference `--engine torch`, which imports it when asked).

TokenRNN (`ensemble.model`) is the one model type today; a new one adds its config
class to `MODEL_TYPES`, its shapes to `weight_shapes` and its engines to
`ensemble.engine.ENGINES`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np

CELLS = ("rnn", "gru", "lstm")
TOKEN_RNN = "token-rnn"
GATES = {"rnn": 1, "gru": 3, "lstm": 4}
LN_EPS = 1e-5  # layer normalisation's epsilon, the same in the torch model and every engine


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a TokenRNN; stored in a checkpoint's config.json."""

    vocab_size: int
    cell: str = "lstm"
    layers: int = 2
    hidden: int = 256
    embedding: int = 64
    dropout: float = 0.0
    tie: bool = False  # the output layer's weights are the embedding's (embedding == hidden)
    # LSTM only: each gate's pre-activation and the cell state are layer-normalised
    # (`ensemble.model.LayerNormLSTM`, README "Layer normalisation")
    layer_norm: bool = False

    def __post_init__(self):
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {', '.join(CELLS)}, got {self.cell!r}")
        if not 1 <= self.layers <= 3:
            raise ValueError(f"layers must be 1..3, got {self.layers}")
        if self.vocab_size < 2 or self.hidden < 1 or self.embedding < 1:
            raise ValueError(f"vocab_size >= 2, hidden >= 1 and embedding >= 1 needed, got {self}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.tie and self.embedding != self.hidden:
            raise ValueError(f"tied embeddings need embedding == hidden, got embedding {self.embedding} "
                             f"and hidden {self.hidden}")
        if self.layer_norm and self.cell != "lstm":
            raise ValueError(f"layer normalisation is built for the lstm cell only, got {self.cell!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        for key in ("tie", "layer_norm"):  # off: folders stay readable by versions without the option
            if not d[key]:
                del d[key]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown model config keys: {', '.join(sorted(unknown))}")
        return cls(**d)


MODEL_TYPES = {TOKEN_RNN: ModelConfig}


def weight_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The name and shape of every weight a TokenRNN of this config has (its torch
    state_dict, tested against the torch model)."""
    V, E, H, G = config.vocab_size, config.embedding, config.hidden, GATES[config.cell]
    shapes = {"embed.weight": (V, E)}
    for layer in range(config.layers):
        shapes[f"rnn.weight_ih_l{layer}"] = (G * H, E if layer == 0 else H)
        shapes[f"rnn.weight_hh_l{layer}"] = (G * H, H)
        if config.layer_norm:  # the normalisation's shift is the gates' bias; the cell has its own
            shapes[f"rnn.ln_gates_weight_l{layer}"] = (G * H,)
            shapes[f"rnn.ln_gates_bias_l{layer}"] = (G * H,)
            shapes[f"rnn.ln_cell_weight_l{layer}"] = (H,)
            shapes[f"rnn.ln_cell_bias_l{layer}"] = (H,)
        else:
            shapes[f"rnn.bias_ih_l{layer}"] = (G * H,)
            shapes[f"rnn.bias_hh_l{layer}"] = (G * H,)
    shapes["head.weight"] = (V, H)
    shapes["head.bias"] = (V,)
    return shapes


@dataclass
class ModelWeights:
    """A model's config and its weights as float32 numpy arrays (state_dict names): what
    the live engines are built from. Stands in for the torch model on the live path
    (it has the `config` the server reads); `to_torch` rebuilds the torch model."""

    config: ModelConfig
    arrays: dict[str, np.ndarray]
    model_type: str = TOKEN_RNN

    def __post_init__(self):
        shapes = weight_shapes(self.config)
        missing = sorted(set(shapes) - set(self.arrays))
        extra = sorted(set(self.arrays) - set(shapes))
        if missing or extra:
            raise ValueError(f"weights do not match the config (missing {missing[:3]}, unexpected {extra[:3]})")
        for key, shape in shapes.items():
            if tuple(self.arrays[key].shape) != shape:
                raise ValueError(f"{key} has shape {tuple(self.arrays[key].shape)}, the config needs {shape}")

    @classmethod
    def from_torch(cls, model) -> "ModelWeights":
        """A float32 copy of a TokenRNN's weights (later changes to the model do not reach it)."""
        state = model.state_dict()
        return cls(model.config, {k: v.detach().cpu().float().numpy().copy() for k, v in state.items()})

    def to_torch(self):
        """The torch TokenRNN with these weights, in eval mode (imports torch)."""
        import torch

        from ensemble.model import TokenRNN

        model = TokenRNN.from_config(self.config)
        model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in self.arrays.items()})
        return model.eval()
