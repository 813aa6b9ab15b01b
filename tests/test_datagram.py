"""The hot path reads and writes plain OSC messages itself (ensemble.io.datagram): exactly
as python-osc reads and writes them, checked here on random messages and random bytes."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder

from ensemble.io.datagram import BadDatagram, _plain_message, check_datagram, encode, parse

addresses = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=30).map(
    lambda s: "/" + s)
texts = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=30)
int32 = st.integers(-(2**31), 2**31 - 1)
# (python-osc type, value) pairs of every type the server may be sent
arguments = st.one_of(
    st.tuples(st.just("i"), int32),
    st.tuples(st.just("f"), st.floats(width=32)),
    st.tuples(st.just("s"), texts),
    st.tuples(st.just("b"), st.binary(min_size=1, max_size=20)),  # (python-osc builds no empty blob)
    st.tuples(st.just("h"), st.integers(-(2**63), 2**63 - 1)),
    st.tuples(st.just("d"), st.floats()),
    st.tuples(st.sampled_from(["T", "F", "N"]), st.none()),
)


def same(a, b) -> bool:
    """Equal, with NaN equal to NaN and 0.0 told from -0.0 (the bytes must agree)."""
    if isinstance(a, float) and isinstance(b, float):
        return struct.pack(">d", a) == struct.pack(">d", b) or (math.isnan(a) and math.isnan(b))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def python_osc(data: bytes):
    m = OscMessage(data)
    return m.address, list(m.params)


def built(address, args) -> bytes:
    b = OscMessageBuilder(address)
    for t, v in args:
        b.add_arg({"T": True, "F": False, "N": None}.get(t, v), t)
    return b.build().dgram


@settings(max_examples=400, deadline=None)
@given(addresses, st.lists(arguments, max_size=8))
def test_a_plain_message_reads_exactly_as_python_osc_reads_it(address, args):
    data = built(address, args)
    check_datagram(data)
    mine = _plain_message(data)
    assert mine is not None  # every complete message of these types is read on the fast path
    assert same(list(mine), list(python_osc(data)))
    assert same(list(parse(data)[0]), list(python_osc(data)))


@settings(max_examples=600, deadline=None)
@given(addresses, st.lists(arguments, max_size=6), st.data())
def test_damaged_messages_are_read_as_python_osc_reads_them_or_refused(address, args, data):
    """Cut short, bytes flipped: whatever passes the structure check is either read exactly
    as python-osc reads it, or left to python-osc (None); nothing else."""
    raw = bytearray(built(address, args))
    for _ in range(data.draw(st.integers(0, 3))):
        if raw:
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    raw = bytes(raw[: data.draw(st.integers(0, len(raw)))])
    try:
        check_datagram(raw)
    except BadDatagram:
        return
    if raw[:1] != b"/":
        return
    mine = _plain_message(raw)
    if mine is None:
        return
    theirs = python_osc(raw)  # it must not fail where the fast path read something
    assert same(list(mine), list(theirs))


@settings(max_examples=400, deadline=None)
@given(addresses, st.lists(st.one_of(int32, st.floats(width=32), texts), max_size=8))
def test_encode_writes_the_bytes_python_osc_builds(address, args):
    b = OscMessageBuilder(address)
    for a in args:
        b.add_arg(a, "i" if isinstance(a, int) else "f" if isinstance(a, float) else "s")
    assert encode(address, args) == b.build().dgram


def test_encode_refuses_what_osc_cannot_carry():
    with pytest.raises(ValueError, match="int32|range"):
        encode("/ensemble/note", ["p", 2**31, 1])
    with pytest.raises(ValueError, match="int, float or str"):
        encode("/ensemble/note", ["p", [1], 1])
    assert encode("/ensemble/note", ["p", True, 0]) == encode("/ensemble/note", ["p", 1, 0])


def test_bundles_and_time_tags_still_go_to_python_osc():
    from pythonosc.osc_bundle_builder import IMMEDIATELY, OscBundleBuilder

    bundle = OscBundleBuilder(IMMEDIATELY)
    bundle.add_content(OscMessageBuilder("/ensemble/note").build())
    msg = OscMessageBuilder("/ensemble/hello")
    msg.add_arg("ada")
    bundle.add_content(msg.build())
    assert parse(bundle.build().dgram) == [("/ensemble/note", []), ("/ensemble/hello", ["ada"])]
    tagged = b"/x\0\0,t\0\0" + struct.pack(">II", 1, 2)  # a time tag (python-osc builds none)
    assert _plain_message(tagged) is None
    assert len(parse(tagged)[0][1]) == 1
