"""The touch codec (one token per iPad touch) and the gestures codec (one per ensemble state)."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ensemble import codecs
from ensemble.codecs import CodecError
from ensemble.codecs.gestures import GESTURES, GesturesCodec
from ensemble.codecs.touch import TouchCodec, TouchEvent

touch = TouchCodec()
gestures = GesturesCodec()


# ---------------------------------------------------------------------- touch


def test_touch_vocabulary_and_packing_order():
    assert touch.vocab_size == 16 * 16 * 8 == 2048
    assert touch.encode_event(0.0, 0.0, 0.0) == 0
    assert touch.encode_event(0.03, 0.0, 0.0) == 1  # time is the lowest digit
    assert touch.encode_event(0.0, 0.0, 1 / 16) == 8  # then y
    assert touch.encode_event(0.0, 1 / 16, 0.0) == 128  # x is the most significant
    assert touch.encode_event(99.0, 1.0, 1.0) == 2047


def test_every_touch_token_round_trips_to_its_bin_centres():
    for token in range(touch.vocab_size):
        e = touch.decode_token(token)
        assert touch.encode_event(e.dt, e.x, e.y) == token
        xb, yb, tb = touch.packing.unpack(token)
        assert (e.x, e.y) == ((xb + 0.5) / 16, (yb + 0.5) / 16)


@given(st.floats(0, 30), st.floats(0, 1), st.floats(0, 1))
def test_touch_decodes_within_half_a_bin(dt, x, y):
    e = touch.decode_token(touch.encode_event(dt, x, y))
    assert abs(e.x - x) <= 0.5 / 16 + 1e-12 and abs(e.y - y) <= 0.5 / 16 + 1e-12
    assert touch.encode_event(e.dt, e.x, e.y) == touch.encode_event(dt, x, y)


def test_touch_time_bins_are_monotonic_and_tell_strokes_taps_and_pauses_apart():
    tb = [touch.packing.unpack(touch.encode_event(i / 500, 0.5, 0.5))[2] for i in range(0, 1500)]
    assert tb == sorted(tb) and set(tb) == set(range(8))
    bin_of = lambda dt: touch.packing.unpack(touch.encode_event(dt, 0.5, 0.5))[2]
    stroke, fast_tap, slow_tap, pause = bin_of(1 / 60), bin_of(0.08), bin_of(0.35), bin_of(3.0)
    assert stroke == 0 and pause == 7 and len({stroke, fast_tap, slow_tap, pause}) == 4
    assert touch.decode_token(0).dt == pytest.approx(0.01)  # a decoded stroke still moves in time


def test_touch_clips_outside_the_screen_but_rejects_nan():
    assert touch.encode_event(0.1, -0.3, 1.7) == touch.encode_event(0.1, 0.0, 1.0)
    assert touch.encode_event(0.1, float("inf"), float("-inf")) == touch.encode_event(0.1, 1.0, 0.0)
    for bad in ((float("nan"), 0.5, 0.5), (0.1, float("nan"), 0.5), (0.1, 0.5, float("nan")),
                (-1.0, 0.5, 0.5), (0.1, "left", 0.5)):
        with pytest.raises(CodecError):
            touch.encode_event(*bad)
    for token in (-1, 2048, None):
        with pytest.raises(CodecError, match="token"):
            touch.decode_token(token)


def test_touch_sequences_and_describe():
    events = [TouchEvent(0.0, 0.1, 0.2), TouchEvent(0.016, 0.12, 0.25), TouchEvent(1.5, 0.9, 0.9)]
    tokens = touch.encode(events)
    assert touch.encode(touch.decode(tokens)) == tokens
    for c in (touch, TouchCodec(x_bins=8, y_bins=4, time_bins=6, min_dt=0.01, max_dt=1.0)):
        description = json.loads(json.dumps(c.describe()))
        assert description["name"] == "touch" and codecs.load(description) == c
    assert TouchCodec(x_bins=8, y_bins=4, time_bins=6).vocab_size == 192
    assert TouchCodec(x_bins=8) != touch
    with pytest.raises(CodecError):
        TouchCodec(x_bins=0)


# ---------------------------------------------------------------------- gestures


def test_gesture_names():
    assert len(GESTURES) == 9 and GESTURES[0] == "nothing" and GESTURES[8] == "combination"


def test_first_performer_is_the_lowest_digit():
    assert gestures.vocab_size == 9**4 == 6561
    assert gestures.encode_state((1, 0, 0, 0)) == 1
    assert gestures.encode_state((0, 1, 0, 0)) == 9
    assert gestures.encode_state((0, 0, 1, 0)) == 81
    assert gestures.encode_state((0, 0, 0, 1)) == 729
    assert gestures.encode_state((8, 8, 8, 8)) == 6560
    assert gestures.decode_token(9) == (0, 1, 0, 0)


def test_every_state_is_its_own_token():
    states = list(itertools.product(range(9), repeat=4))
    tokens = gestures.encode(states)
    assert tokens == [sum(g * 9**i for i, g in enumerate(s)) for s in states]
    assert sorted(tokens) == list(range(6561))
    assert gestures.decode(tokens) == states


@given(st.integers(1, 6).flatmap(lambda n: st.lists(st.integers(0, 8), min_size=n, max_size=n)))
def test_any_ensemble_size_round_trips(state):
    c = GesturesCodec(performers=len(state))
    token = c.encode_state(state)
    assert 0 <= token < 9 ** len(state) == c.vocab_size
    assert c.decode_token(token) == tuple(state)


def test_gesture_errors_name_the_performer():
    with pytest.raises(CodecError, match="performer 2"):
        gestures.encode_state((0, 1, 9, 0))
    with pytest.raises(CodecError, match="performer 0"):
        gestures.encode_state((-1, 0, 0, 0))
    with pytest.raises(CodecError, match="performer 3"):
        gestures.encode_state((0, 0, 0, 1.5))
    with pytest.raises(CodecError, match="4 gestures"):
        gestures.encode_state((0, 0, 0))
    for token in (-1, 6561, True):
        with pytest.raises(CodecError):
            gestures.decode_token(token)
    with pytest.raises(CodecError):
        GesturesCodec(performers=0)


def test_gestures_describe_and_load():
    for c in (gestures, GesturesCodec(performers=3)):
        description = json.loads(json.dumps(c.describe()))
        assert description == {"name": "gestures", "performers": c.performers}
        assert codecs.load(description) == c
    assert GesturesCodec(3) != gestures
