import numpy as np
import pytest
from hypothesis import given, strategies as st

from ensemble.codecs.packing import MixedRadix

radices_st = st.lists(st.integers(1, 12), min_size=1, max_size=5)


@st.composite
def radices_and_values(draw):
    radices = draw(radices_st)
    values = tuple(draw(st.integers(0, r - 1)) for r in radices)
    return radices, values


@given(radices_and_values())
def test_pack_unpack_identity(rv):
    radices, values = rv
    mr = MixedRadix(radices)
    token = mr.pack(values)
    assert 0 <= token < mr.size
    assert mr.unpack(token) == values


@given(radices_st)
def test_bijection_onto_range(radices):
    mr = MixedRadix(radices)
    assert mr.size == int(np.prod(radices))
    if mr.size <= 5000:
        tokens = np.arange(mr.size)
        assert np.array_equal(mr.pack(mr.unpack(tokens)), tokens)


@given(st.data())
def test_order_preserving(data):
    radices = data.draw(radices_st)
    mr = MixedRadix(radices)
    a = tuple(data.draw(st.integers(0, r - 1)) for r in radices)
    b = tuple(data.draw(st.integers(0, r - 1)) for r in radices)
    assert (a < b) == (mr.pack(a) < mr.pack(b))
    assert (a == b) == (mr.pack(a) == mr.pack(b))


def test_first_position_most_significant():
    mr = MixedRadix([9, 9, 9, 9])
    assert mr.size == 9**4
    assert mr.pack((1, 0, 0, 0)) == 9**3
    assert mr.pack((0, 0, 0, 1)) == 1


def test_numpy_arrays_match_tuples():
    mr = MixedRadix([16, 88, 8])
    rng = np.random.default_rng(0)
    values = np.stack([rng.integers(0, r, size=(4, 5)) for r in mr.radices], axis=-1)
    tokens = mr.pack(values)
    assert tokens.shape == (4, 5)
    assert tokens[2, 3] == mr.pack(tuple(int(v) for v in values[2, 3]))
    assert np.array_equal(mr.unpack(tokens), values)


def test_out_of_range_names_position_and_bound():
    mr = MixedRadix([4, 3])
    with pytest.raises(ValueError, match="position 1 .*0..2"):
        mr.pack((1, 3))
    with pytest.raises(ValueError, match="position 0"):
        mr.pack(np.array([[5, 0]]))
    with pytest.raises(ValueError, match="out of range"):
        mr.unpack(12)
    with pytest.raises(ValueError, match="expected 2 values"):
        mr.pack((1,))
    with pytest.raises(ValueError, match="not an integer"):
        mr.pack((1.5, 0))
