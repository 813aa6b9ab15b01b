"""OSC datagrams: checked before anything parses them; plain messages read and written fast.

python-osc is a parser, not a validator, and it trusts what it reads. python-osc 1.10.2
loops forever on a bundle element of negative size (one 20-byte packet hung the server
for good), recurses without bound into nested bundles (RecursionError), and logs one
warning per unknown type-tag character (a 64 kB tag is 64,000 log lines). So every
datagram is walked here first, in work bounded by its length: bundle element sizes
positive, multiples of 4 and inside the datagram; nesting and message count bounded;
addresses and type tags well formed, short, and made only of the types we read.

Then a plain message (what every performer sends: one message, no bundle) whose
arguments are all complete is read here with `struct`, the way python-osc reads it;
anything else (bundles, time tags, a truncated or odd argument) goes to python-osc.
python-osc's own parse and build cost ~40 us and ~25 us a message on these machines,
as much as the model step, so the hot path reads and writes its few shapes itself:
`encode` writes exactly the bytes `OscMessageBuilder` writes. Both are tested equal to
python-osc's on random messages (tests/test_datagram.py).
"""

from __future__ import annotations

import struct

BUNDLE = b"#bundle\0"
MAX_DEPTH = 4          # bundles inside bundles: plenty for any real client
MAX_MESSAGES = 64      # messages in one datagram (a chord of 64 notes is still fine)
MAX_ARGS = 8           # our longest message has 4 arguments
MAX_ADDRESS = 128      # bytes in an OSC address
TYPES = frozenset("ifsbhdtTFN")  # what our addresses can carry; no arrays, no exotic types


def parse(data: bytes) -> list[tuple[str, list]]:
    """(address, arguments) of every message in a datagram: checked here first, then
    read (plain messages) or parsed by python-osc; anything wrong is one BadDatagram."""
    check_datagram(data)
    if data[:1] == b"/":
        message = _plain_message(data)
        if message is not None:
            return [message]
    from pythonosc.osc_packet import OscPacket

    try:
        return [(t.message.address, list(t.message.params)) for t in OscPacket(data).messages]
    except Exception as exc:  # python-osc's own errors, whatever their type
        raise BadDatagram(f"{type(exc).__name__}: {exc}") from None


_I32, _F32, _I64, _F64 = struct.Struct(">i"), struct.Struct(">f"), struct.Struct(">q"), struct.Struct(">d")
_FIXED = {0x69: _I32, 0x66: _F32, 0x68: _I64, 0x64: _F64}  # i f h d
_CONSTANT = {0x54: True, 0x46: False, 0x4E: None}  # T F N


def _plain_message(data: bytes) -> tuple[str, list] | None:
    """A checked, plain message read as python-osc reads it; None where python-osc should
    decide (a time tag, an argument cut short, a blob of odd size, text not UTF-8)."""
    n = len(data)
    nul = data.find(b"\0")
    try:
        address = data[:nul].decode("utf-8")
    except UnicodeDecodeError:
        return None
    index = (nul + 4) & ~3
    if index >= n:
        return address, []
    tag_nul = data.find(b"\0", index)
    tags = data[index + 1:tag_nul]
    index = (tag_nul + 4) & ~3
    args = []
    for t in tags:
        fixed = _FIXED.get(t)
        if fixed is not None:
            end = index + fixed.size
            if end > n:
                return None
            args.append(fixed.unpack_from(data, index)[0])
            index = end
        elif t == 0x73:  # s
            nul = data.find(b"\0", index)
            end = (nul + 4) & ~3
            if nul < 0 or end > n:
                return None
            try:
                args.append(data[index:nul].decode("utf-8"))
            except UnicodeDecodeError:
                return None
            index = end
        elif t in _CONSTANT:
            args.append(_CONSTANT[t])
        elif t == 0x62:  # b
            if index + 4 > n:
                return None
            size = _I32.unpack_from(data, index)[0]
            start = index + 4
            if size < 0 or start + size > n:
                return None
            args.append(data[start:start + size])
            index = start + size + (-size % 4)
        else:  # a time tag, or anything new: python-osc's
            return None
    return address, args


def _padded(b: bytes) -> bytes:
    return b + b"\0" * (4 - len(b) % 4)


_PREFIXES: dict[tuple[str, str], bytes] = {}  # (address, type tag) -> their bytes


def encode(address: str, args) -> bytes:
    """One OSC message: int -> i (int32), float -> f (float32), str -> s, the bytes
    python-osc's `OscMessageBuilder` writes for them; ValueError for anything else (or an
    int beyond int32)."""
    tag = "".join("i" if isinstance(a, int) else "f" if isinstance(a, float) else "s" if isinstance(a, str)
                  else "?" for a in args)
    prefix = _PREFIXES.get((address, tag))
    if prefix is None:
        if "?" in tag:
            raise ValueError(f"OSC arguments must be int, float or str, got {[type(a).__name__ for a in args]}")
        prefix = _padded(address.encode("utf-8")) + _padded(("," + tag).encode("ascii"))
        if len(_PREFIXES) < 256:
            _PREFIXES[(address, tag)] = prefix
    parts = [prefix]
    try:
        for a, t in zip(args, tag):
            parts.append(_I32.pack(a) if t == "i" else _F32.pack(a) if t == "f" else _padded(a.encode("utf-8")))
    except struct.error as exc:
        raise ValueError(f"OSC argument out of range: {exc}") from None
    return b"".join(parts)


class BadDatagram(ValueError):
    """A datagram that must not reach the parser; the text says why, in a few words."""


def _string_end(data: bytes, start: int, end: int, limit: int, what: str) -> int:
    """Index just past a NUL-terminated, 4-byte-padded OSC string in data[start:end]."""
    nul = data.find(b"\0", start, min(end, start + limit + 1))
    if nul < 0:
        raise BadDatagram(f"{what} not terminated within {limit} bytes")
    stop = (nul + 4) & ~3
    if stop > end:
        raise BadDatagram(f"{what} runs past the end of its element")
    return stop


def _check_message(data: bytes, start: int, end: int) -> None:
    if data[start:start + 1] != b"/":
        raise BadDatagram("an element is neither a message (/...) nor a bundle (#bundle)")
    index = _string_end(data, start, end, MAX_ADDRESS, "address")
    if index == end:
        return  # no type tag: no arguments
    if data[index:index + 1] != b",":
        raise BadDatagram("type tag does not start with ','")
    tag_end = _string_end(data, index, end, MAX_ARGS + 1, "type tag")
    tags = data[index + 1:data.find(b"\0", index)].decode("ascii", "replace")
    unknown = set(tags) - TYPES
    if unknown:
        raise BadDatagram(f"unsupported argument type {''.join(sorted(unknown))!r}")
    if tag_end > end:
        raise BadDatagram("type tag runs past the end")


def check_datagram(data: bytes) -> int:
    """The number of messages in `data`, or BadDatagram saying what is wrong with it."""
    if len(data) % 4:
        raise BadDatagram(f"length {len(data)} is not a multiple of 4")
    count = 0
    # (start, end, depth) of elements still to walk; iterative, so no recursion to exhaust
    todo = [(0, len(data), 1)]
    while todo:
        start, end, depth = todo.pop()
        if data.startswith(BUNDLE, start):
            if depth > MAX_DEPTH:
                raise BadDatagram(f"bundles nested deeper than {MAX_DEPTH}")
            index = start + len(BUNDLE) + 8  # the time tag
            if index > end:
                raise BadDatagram("bundle cut short in its time tag")
            while index < end:
                if index + 4 > end:
                    raise BadDatagram("bundle element size cut short")
                size = int.from_bytes(data[index:index + 4], "big", signed=True)
                index += 4
                if size <= 0 or size % 4 or index + size > end:
                    raise BadDatagram(f"bundle element of size {size} (must be positive, a multiple "
                                      f"of 4, and inside the datagram)")
                todo.append((index, index + size, depth + 1))
                index += size
        else:
            count += 1
            if count > MAX_MESSAGES:
                raise BadDatagram(f"more than {MAX_MESSAGES} messages in one datagram")
            _check_message(data, start, end)
    return count
