"""The spec function's fast rounding must equal Python's round() bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, strategies as st

from eagle_fast._spec import round_like_python
from support import backend_independent

pytestmark = backend_independent


def _check(values, ndigits):
    values = np.asarray(values, dtype=np.float64)
    expected = [round(v, ndigits) for v in values.tolist()]
    got = round_like_python(values, ndigits)
    assert [float(v).hex() for v in got] == [float(v).hex() for v in expected]
    assert all(type(v) is float for v in got)


@pytest.mark.parametrize("ndigits", [4, 6])
def test_half_way_cases_and_their_neighbours(ndigits):
    scale = 10.0 ** ndigits
    halves = (np.arange(-2000, 2000) + 0.5) / scale
    near = np.concatenate([np.nextafter(halves, np.inf), np.nextafter(halves, -np.inf),
                           halves, np.nextafter(np.nextafter(halves, np.inf), np.inf)])
    _check(near, ndigits)


@pytest.mark.parametrize("ndigits", [4, 6])
def test_special_magnitudes(ndigits):
    _check([0.0, -0.0, 5e-324, -5e-324, 1e-300, 0.5, -0.5, 1.0, 2.5, 1e10, -1e15 + 0.5,
            2.0**51, 2.0**52 + 1, 1e20, -1e300, 1.7976931348623157e308, 0.00005, 0.0000005,
            1.00005, 0.123456789, 1 / 3, 2 / 3], ndigits)


@given(st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=50),
       st.sampled_from([4, 6]))
def test_random_floats(values, ndigits):
    _check(values, ndigits)


def test_random_probabilities_and_logits():
    rng = np.random.default_rng(0)
    _check(rng.random(100_000), 6)
    _check(rng.standard_normal(100_000) * 30, 4)
