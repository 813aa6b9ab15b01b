"""Structural check of an OSC datagram before python-osc parses it.

python-osc is a parser, not a validator, and it trusts what it reads. python-osc 1.10.2
loops forever on a bundle element of negative size (one 20-byte packet hung the server
for good), recurses without bound into nested bundles (RecursionError), and logs one
warning per unknown type-tag character (a 64 kB tag is 64,000 log lines). So every
datagram is walked here first, in work bounded by its length: bundle element sizes
positive, multiples of 4 and inside the datagram; nesting and message count bounded;
addresses and type tags well formed, short, and made only of the types we read.
Only then does python-osc see it.
"""

from __future__ import annotations

BUNDLE = b"#bundle\0"
MAX_DEPTH = 4          # bundles inside bundles: plenty for any real client
MAX_MESSAGES = 64      # messages in one datagram (a chord of 64 notes is still fine)
MAX_ARGS = 8           # our longest message has 4 arguments
MAX_ADDRESS = 128      # bytes in an OSC address
TYPES = frozenset("ifsbhdtTFN")  # what our addresses can carry; no arrays, no exotic types


def parse(data: bytes) -> list[tuple[str, list]]:
    """(address, arguments) of every message in a datagram: checked here first, then
    parsed by python-osc; anything wrong is one BadDatagram with the reason."""
    from pythonosc.osc_packet import OscPacket

    check_datagram(data)
    try:
        return [(t.message.address, list(t.message.params)) for t in OscPacket(data).messages]
    except Exception as exc:  # python-osc's own errors, whatever their type
        raise BadDatagram(f"{type(exc).__name__}: {exc}") from None


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
