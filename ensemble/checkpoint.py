"""Model folders: `config.json` + `weights.safetensors` + `README.md` (the model card).

`config.json` holds the model hyper-parameters, the codec description (so the model
always carries its vocabulary exactly), a summary of the data, the training settings
and the validation loss. Weights are safetensors: loading never unpickles anything, so
a model folder from a stranger cannot run code. Every way a folder can be broken
(missing, truncated, mismatched, another format) ends in one `CheckpointError` line.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np
from safetensors import SafetensorError

from ensemble import codecs
from ensemble.errors import UserError
from ensemble.files import read_json
from ensemble.model_types import MODEL_TYPES, TOKEN_RNN, ModelConfig, ModelWeights, weight_shapes

if TYPE_CHECKING:
    from ensemble.model import TokenRNN

FORMAT = "ensemble-model"
VERSION = 1
CONFIG = "config.json"
WEIGHTS = "weights.safetensors"
CARD = "README.md"


class CheckpointError(UserError):
    """A model folder that cannot be loaded; the message is one line that says why."""


@dataclass
class Checkpoint:
    model: Union["TokenRNN", ModelWeights]  # `load`: the torch model; `load_live`: numpy weights
    codec: codecs.Codec
    meta: dict = field(default_factory=dict)
    path: Path | None = None

    @property
    def name(self) -> str:
        return self.path.name if self.path else "?"


def save(folder, model: "TokenRNN", codec, meta: dict | None = None) -> Path:
    """Write a model folder atomically: readers see the old folder or the new one, whole."""
    import torch
    from safetensors.torch import save_file

    folder = Path(folder)
    meta = dict(meta or {})
    if codec.vocab_size != model.config.vocab_size:
        raise CheckpointError(f"codec has {codec.vocab_size} tokens but the model {model.config.vocab_size}")
    config = {
        "format": FORMAT,
        "version": VERSION,
        "model_type": TOKEN_RNN,
        "model": model.config.to_dict(),
        "codec": codec.describe(),
        **meta,
    }
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    tmp.chmod(0o755)  # mkdtemp makes an owner-only folder; a model folder is ordinary data
    try:
        state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
        if model.config.tie:  # safetensors stores no shared tensors: a copy each
            state["head.weight"] = state["head.weight"].clone()
        save_file(state, str(tmp / WEIGHTS))
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        (tmp / CARD).write_text(model_card(folder.name, config))
        old = None
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
            os.replace(folder, old)
        os.replace(tmp, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def portable_path(value) -> str:
    """A path as a model card may record it: never the absolute path of the machine it
    was trained on (a shipped card said `/work/main/models/folk-notes`).

    Relative paths stay as typed; an absolute one becomes relative to the working folder
    when it lies inside it, else its folder name (`RUN/best` for a run's best or last model).
    """
    path = Path(str(value))
    if not path.is_absolute():
        return str(value)
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        pass
    if path.name in ("best", "last") and path.parent.name:
        return f"{path.parent.name}/{path.name}"
    return path.name


def portable_data(summary: dict) -> dict:
    """A corpus summary for a model card, its corpus folder and inputs as `portable_path`s."""
    out = dict(summary)
    if "corpus" in out:
        out["corpus"] = portable_path(out["corpus"])
    if isinstance(out.get("sources"), list):
        sources = [str(s) for s in out["sources"]]
        out["sources"] = [portable_path(s) for s in sources]
        if isinstance(out.get("description"), str):  # "notes tokens of /home/me/midi"
            for source in sorted(sources, key=len, reverse=True):
                out["description"] = out["description"].replace(source, portable_path(source))
    return out


def resolve(folder) -> Path:
    """A model folder, or a training run folder (whose `best/` model is meant)."""
    folder = Path(folder)
    if not (folder / CONFIG).exists() and (folder / "best" / CONFIG).exists():
        return folder / "best"
    return folder


def read_config(folder) -> dict:
    folder = resolve(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such model folder")
    path = folder / CONFIG
    config = read_json(path, CheckpointError, f"{folder}: not a model folder (no {CONFIG})")
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an ensemble model config (format is not {FORMAT!r})")
    if config.get("version") != VERSION:
        raise CheckpointError(f"{path}: format version {config.get('version')!r}, this ensemble reads {VERSION}")
    if config.get("model_type") == "gesture-classifier":  # another model type, with its own loader
        raise CheckpointError(f"{folder}: a gesture classifier, not a token model (ensemble classify --model, "
                              f"or serve --metatone-classifier)")
    return config


def _read(folder) -> tuple[Path, dict, ModelConfig, codecs.Codec, Path]:
    """The parts of a model folder both loaders need, checked: (folder, config.json,
    model config, codec, weights path)."""
    folder = resolve(folder)
    config = read_config(folder)
    model_type = config.get("model_type", TOKEN_RNN)  # folders from before model types: TokenRNN
    if model_type not in MODEL_TYPES:
        raise CheckpointError(f"{folder / CONFIG}: model type {model_type!r} is not one this ensemble knows "
                              f"({', '.join(MODEL_TYPES)})")
    try:
        model_config = MODEL_TYPES[model_type].from_dict(config["model"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{folder / CONFIG}: bad model section ({exc})") from None
    try:
        codec = codecs.load(config["codec"])
    except KeyError:
        raise CheckpointError(f"{folder / CONFIG}: no codec section") from None
    except codecs.CodecError as exc:
        raise CheckpointError(f"{folder / CONFIG}: {exc}") from None
    if codec.vocab_size != model_config.vocab_size:
        raise CheckpointError(
            f"{folder}: codec has {codec.vocab_size} tokens but the model was built for {model_config.vocab_size}"
        )
    weights_path = folder / WEIGHTS
    if not weights_path.exists():
        raise CheckpointError(f"{folder}: no {WEIGHTS}")
    return folder, config, model_config, codec, weights_path


def _check_weights(weights_path: Path, state: dict, model_config: ModelConfig) -> None:
    expected = weight_shapes(model_config)
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise CheckpointError(f"{weights_path}: weights do not match the config (missing {missing[:3]}, unexpected {extra[:3]})")
    for key, shape in expected.items():
        a = state[key]
        if tuple(a.shape) != shape:
            raise CheckpointError(f"{weights_path}: {key} has shape {tuple(a.shape)}, the config needs {shape}")
        # a diverged run or a damaged file: its NaN logits would fail every event's sampling.
        # Checked as the float32 both loaders make of it: a float64 beyond float32's range is
        # infinite there (and torch has no isfinite for float8)
        if hasattr(a, "isfinite"):  # torch
            finite = bool(a.float().isfinite().all())
        else:
            with np.errstate(over="ignore"):
                finite = bool(np.isfinite(a.astype(np.float32, copy=False)).all())
        if not finite:
            raise CheckpointError(f"{weights_path}: {key} holds NaN or infinity as float32 "
                                  f"(a diverged run or a damaged file)")
    if getattr(model_config, "tie", False) and "embed.weight" in state and "head.weight" in state:
        if not bool((state["embed.weight"] == state["head.weight"]).all()):  # (torch or numpy; shapes checked)
            # one matrix in the model: which of the two would be used is the loader's accident
            raise CheckpointError(f"{weights_path}: the config ties the embedding and the output layer, "
                                  f"but embed.weight and head.weight differ")


def _meta(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in ("format", "version", "model_type", "model", "codec")}


def load(folder, device="cpu") -> Checkpoint:
    """Load a model folder (or a run folder's best model) for inference, in eval mode."""
    from safetensors.torch import load_file

    from ensemble.model import TokenRNN

    folder, config, model_config, codec, state = _read_weights(folder, load_file)
    model = TokenRNN.from_config(model_config)
    model.load_state_dict(state)
    model.to(device).eval()
    return Checkpoint(model, codec, _meta(config), folder)


def _read_weights(folder, load_file):
    """`_read`, then the weights by `load_file` (safetensors' torch or numpy loader), checked
    against the model config: one path for both loaders, so they refuse the same files."""
    folder, config, model_config, codec, weights_path = _read(folder)
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{weights_path}: unreadable or truncated safetensors file ({exc})") from None
    _check_weights(weights_path, state, model_config)
    return folder, config, model_config, codec, state


def _load_numpy(path: str) -> dict[str, np.ndarray]:
    """safetensors' numpy loader, which also reads bfloat16: numpy has no bfloat16, so
    safetensors refuses it, yet `load` reads such a file through torch, and `load_live`
    must refuse no more than `load` does. A bfloat16 is the top half of a float32's bits.
    Other dtypes numpy lacks (float8) end in one `CheckpointError` line."""
    from safetensors import safe_open

    state, bfloat16 = {}, []
    with safe_open(path, framework="np") as f:  # checks the header and every offset first
        for key in f.keys():
            dtype = f.get_slice(key).get_dtype()
            if dtype == "BF16":
                bfloat16.append(key)
                continue
            try:
                state[key] = f.get_tensor(key)
            except (TypeError, AttributeError):  # numpy has no such dtype (safetensors 0.8 raises either)
                raise CheckpointError(f"{path}: {key} is {dtype}, a type the live loader cannot read "
                                      f"(save float32, float16 or bfloat16)") from None
    if bfloat16:
        state.update(_read_bfloat16(path, bfloat16))
    return state


def _read_bfloat16(path: str, keys: list[str]) -> dict[str, np.ndarray]:
    """The bfloat16 tensors `keys` of a safetensors file safe_open has already checked:
    an 8-byte little-endian header size, the JSON header, then the data."""
    out = {}
    with open(path, "rb") as f:
        header_size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_size))
        data = 8 + header_size
        for key in keys:
            start, end = header[key]["data_offsets"]
            f.seek(data + start)
            bits = np.fromfile(f, dtype="<u2", count=(end - start) // 2)
            out[key] = (bits.astype(np.uint32) << 16).view(np.float32).reshape(header[key]["shape"])
    return out


def load_live(folder) -> Checkpoint:
    """Load a model folder for the live server: the weights as float32 numpy arrays
    (`ModelWeights`, which has the model's `config`), without importing torch. Refuses
    what `load` refuses, and float8 weights (numpy has no float8)."""
    folder, config, model_config, codec, state = _read_weights(folder, _load_numpy)
    if any(a.dtype != np.float32 for a in state.values()):
        state = {k: np.asarray(v, dtype=np.float32) for k, v in state.items()}
    model_type = config.get("model_type", TOKEN_RNN)
    return Checkpoint(ModelWeights(model_config, state, model_type), codec, _meta(config), folder)


def _fmt(value, digits=4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and math.isfinite(value) else "n/a"


def model_card(name: str, config: dict) -> str:
    """A human-readable card: what the model is, what it learned from, how good it is."""
    m = config["model"]
    codec = config["codec"]
    data = config.get("data", {})
    val = config.get("validation", {})
    train = config.get("training", {})
    lines = [
        f"# Model card: {name}",
        "",
        config.get("description", "A TokenRNN trained with `ensemble train`."),
        "",
        "## Model",
        f"- {m['layers']} x {m['hidden']} {m['cell'].upper()}{' (layer-normalised)' if m.get('layer_norm') else ''}, "
        f"embedding {m['embedding']}, dropout {m['dropout']}",
        f"- codec `{codec['name']}`, vocabulary {m['vocab_size']} tokens",
        f"- parameters: {config.get('parameters', 'n/a')}",
        "",
        "## Data",
    ]
    lines += [f"- {k}: {v}" for k, v in data.items()] or ["- (not recorded)"]
    lines += [
        "",
        "## Validation",
        f"- loss: {_fmt(val.get('loss_nats'))} nats per token ({_fmt(val.get('loss_bits'))} bits)",
    ]
    if "loss_nats_per_note" in val:
        lines.append(f"- per note: {_fmt(val['loss_nats_per_note'])} nats ({_fmt(val.get('tokens_per_note'), 1)} tokens a note)")
    lines += [
        f"- accuracy: {_fmt(val.get('accuracy'))}",
        f"- after step {val.get('step', 'n/a')} of training",
    ]
    if "loss_nats_per_note" in val and val.get("note"):  # how the per-note figure compares
        lines.append(f"- {val['note']}")
    style = config.get("style")
    if style:
        lines += ["", "## Style (`ensemble eval style`)", "", f"`{style['command']}`: {style['what']}.", "",
                  "| settings | key agreement (the tune's own) | notes in the key's scale | tempo ratio by bpm "
                  "| phase error by bpm (ms) | in the prime's range | rhythm overlap | velocity at pp / mf / f |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, f in style["figures"].items():
            v = f["answer_velocity"]
            lines.append(
                f"| {name} | {100 * f['key_agreement']:.1f} % ({100 * f['key_agreement_tune']:.1f} %) "
                f"| {100 * f['in_scale']:.1f} % | {' / '.join(f'{x:.2f}' for x in f['tempo_ratio'].values())} "
                f"| {' / '.join(str(x) for x in f['phase_ms'].values())} | {f['in_range']:.2f} | {f['rhythm']:.2f} "
                f"| {' / '.join(f'{v[k]:.0f}' for k in ('pp', 'mf', 'f') if k in v)} |")
    lines += [
        "",
        "## Training",
    ]
    lines += [f"- {k}: {v}" for k, v in train.items()] or ["- (not recorded)"]
    if "retrain" in config:
        lines += ["", "## How to retrain", "", "```", config["retrain"], "```"]
    return "\n".join(lines) + "\n"
