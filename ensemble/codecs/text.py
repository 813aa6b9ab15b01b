"""Characters <-> tokens (Karpathy's char-rnn).

The vocabulary is the sorted set of characters of the training corpus, saved with the
model through `describe()`. Token 0 is reserved for characters the model never saw:
`encode` maps them to it (or skips them, or raises, as asked), `decode` writes it as
U+FFFD, and generation masks it so a model never *produces* an unknown character.
"""

from __future__ import annotations

from typing import Iterable

from ensemble.codecs import CodecError, register

UNKNOWN = 0
UNKNOWN_CHAR = "\ufffd"


class TextCodec:
    name = "text"
    input_kind, sources, live = "text", ("abc", "text", "csv"), None

    def __init__(self, chars: Iterable[str]):
        chars = sorted(set(chars))
        for c in chars:
            if not isinstance(c, str) or len(c) != 1:
                raise CodecError(f"text vocabulary entries must be single characters, got {c!r}")
        self.chars = chars
        self._index = {c: i + 1 for i, c in enumerate(chars)}

    @classmethod
    def from_corpus(cls, text: str) -> "TextCodec":
        return cls(set(text))

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + 1

    @property
    def forbidden(self) -> list[int]:
        """Tokens a sampler should never draw."""
        return [UNKNOWN]

    def unknown_in(self, text: str) -> set[str]:
        """The characters of `text` that are not in the vocabulary."""
        return {c for c in text if c not in self._index}

    def encode(self, text: str, errors: str = "replace") -> list[int]:
        """Text -> tokens. errors: 'replace' (unknown token), 'skip' or 'strict' (raise)."""
        if errors not in ("replace", "skip", "strict"):
            raise ValueError(f"errors must be replace, skip or strict, got {errors!r}")
        index = self._index
        if errors == "replace":
            return [index.get(c, UNKNOWN) for c in text]
        if errors == "skip":
            return [index[c] for c in text if c in index]
        unknown = self.unknown_in(text)
        if unknown:
            raise CodecError(f"characters not in the vocabulary: {''.join(sorted(unknown))!r}")
        return [index[c] for c in text]

    def decode(self, tokens: Iterable[int]) -> str:
        chars = self.chars
        out = []
        for t in tokens:
            t = int(t)
            if not 0 <= t < self.vocab_size:
                raise CodecError(f"token {t} is out of range 0..{self.vocab_size - 1}")
            out.append(UNKNOWN_CHAR if t == UNKNOWN else chars[t - 1])
        return "".join(out)

    def describe(self) -> dict:
        return {"name": self.name, "chars": "".join(self.chars)}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TextCodec) and other.chars == self.chars


register("text", lambda d: TextCodec(d["chars"]))
