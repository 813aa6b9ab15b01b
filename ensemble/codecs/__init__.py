"""Codecs: musical things <-> integer tokens.

Every codec is pure (no I/O, no torch) and shares one small interface, so the trainer,
`ensemble prepare` and the live server all use the very same object and can never
disagree about what a token means:

- ``encode(x) -> list[int]`` and ``decode(tokens) -> x``
- ``vocab_size``: the number of distinct tokens
- ``describe() -> dict``: a JSON-able description that `load` turns back into an equal
  codec; a checkpoint stores it, so a model always carries its codec exactly.

A codec also declares what the rest of the code needs to know about it, so nothing
outside `codecs/` asks for its name (adding a codec = its module, a line in `_MODULES`,
its tests):

- ``input_kind``: what its training input is: "text", "abc" (both strings),
  "notes" (played notes: it has ``encode_notes``, ``encode_midi`` and ``decode_midi``),
  "touch" or "gestures";
- ``sources``: the kinds of file `prepare` may read for it ("abc", "text", "csv",
  "midi", "score", "session");
- ``live``: the live event it takes and gives ("note", "touch", "gesture": one token
  per event, so the server can serve it), or None (generate only);
- optionally ``forbidden`` (tokens never sampled), ``start_token``, ``stop_token`` and
  ``prime(text)`` (how a text prime is fed).

Codec modules register themselves by name with `register`; `load` imports the module
named in the description on demand, so loading a text model never imports MIDI code.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Protocol, runtime_checkable

from ensemble.errors import UserError


class CodecError(ValueError, UserError):
    """A description or an input that a codec cannot handle."""


@runtime_checkable
class Codec(Protocol):
    name: str
    input_kind: str
    sources: tuple
    live: str | None

    @property
    def vocab_size(self) -> int: ...

    def encode(self, x: Any) -> list[int]: ...

    def decode(self, tokens: list[int]) -> Any: ...

    def describe(self) -> dict: ...


# name -> module that defines it; the module calls `register` when imported.
_MODULES = {
    "text": "ensemble.codecs.text",
    "abc": "ensemble.codecs.abc",
    "performance": "ensemble.codecs.performance",
    "notes": "ensemble.codecs.notes",
    "touch": "ensemble.codecs.touch",
    "gestures": "ensemble.codecs.gestures",
}
_BUILDERS: dict[str, Callable[[dict], Codec]] = {}


def register(name: str, from_description: Callable[[dict], Codec]) -> None:
    """Make `load` able to rebuild codecs called `name` from their descriptions."""
    _BUILDERS[name] = from_description


def names() -> list[str]:
    """Every codec name that `load` knows."""
    return sorted(_MODULES)


def load(description: dict) -> Codec:
    """Rebuild the codec that `codec.describe()` described."""
    if not isinstance(description, dict) or "name" not in description:
        raise CodecError(f"codec description must be a dict with a 'name', got {description!r:.80}")
    name = description["name"]
    if name not in _BUILDERS:
        module = _MODULES.get(name)
        if module is None:
            raise CodecError(f"unknown codec {name!r}; known: {', '.join(names())}")
        importlib.import_module(module)
    try:
        return _BUILDERS[name](description)
    except (KeyError, TypeError, ValueError) as exc:
        raise CodecError(f"bad description for codec {name!r}: {exc}") from exc
