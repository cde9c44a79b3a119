"""eagle_draft_from_hidden: bit-exact against the specification's algorithm.

The oracle is tests/reference.py:spec_reference (plain Python loops); results
must be equal with ``==``, not close.  Every test runs on each backend (the
spec function uses the active backend's spec kernel).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eagle_fast import eagle_draft_from_hidden
from reference import spec_reference

KEYS = {"logits", "probs", "predicted_token", "confidence"}


def check(h, W, b, L, T=1.0) -> dict:
    """eagle_draft_from_hidden(...) == spec_reference(...), exactly; returns it."""
    got = eagle_draft_from_hidden(h, W, b, L, T)
    want = spec_reference(h, W, b, L, T)
    assert all(type(v) is float for v in want["logits"] + want["probs"])  # oracle sanity
    assert set(got) == KEYS
    assert type(got["predicted_token"]) is int
    assert type(got["confidence"]) is float
    assert type(got["logits"]) is list and type(got["probs"]) is list
    assert all(type(v) is float for v in got["logits"] + got["probs"])
    if got != want:  # a readable diff
        for key in KEYS:
            if got[key] != want[key]:
                if isinstance(want[key], list):
                    bad = [i for i, (g, w) in enumerate(zip(got[key], want[key])) if g != w]
                    pytest.fail(f"{key} differ at {bad[:10]}: got "
                                f"{[got[key][i] for i in bad[:5]]}, want "
                                f"{[want[key][i] for i in bad[:5]]}")
                pytest.fail(f"{key}: got {got[key]!r}, want {want[key]!r}")
    assert got == want
    return got


def random_inputs(rng, d_model, d_proj, vocab, scale=1.0, lm_scale=1.0):
    h = rng.standard_normal(d_model) * scale
    W = rng.standard_normal((d_proj, d_model))
    b = rng.standard_normal(d_proj)
    L = rng.standard_normal((vocab, d_proj)) * lm_scale
    return h, W, b, L


SHAPES = [(1, 1, 1), (1, 1, 2), (2, 3, 1), (3, 2, 5), (5, 4, 7), (16, 8, 50),
          (33, 17, 129), (64, 31, 1001)]
TEMPERATURES = [1.0, 0.7, 2.5, 0.0, -1.0, -0.0, 1e-3, 1e6]


# ---------------------------------------------------------------------------
# Randomized equality.
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("as_lists", [False, True], ids=["arrays", "lists"])
def test_matches_spec_on_random_inputs(shape, as_lists):
    rng = np.random.default_rng(abs(hash((shape, as_lists))) % 2**32)
    for T in TEMPERATURES:
        for scale in (0.1, 1.0, 30.0):  # 30: pre-activations beyond the cut-off
            h, W, b, L = random_inputs(rng, *shape, scale=scale)
            if as_lists:
                h, W, b, L = h.tolist(), W.tolist(), b.tolist(), L.tolist()
            check(h, W, b, L, T)


@pytest.mark.parametrize("seed", range(4))
def test_logits_bit_exact_at_full_precision(seed):
    """At |logit| ~ 1e12, round(x, 4) keeps every bit, so any difference in
    the order of operations (FMA, reassociation) would show.  L = 1e12 * I
    exposes the projected activations bit for bit, too."""
    rng = np.random.default_rng(100 + seed)
    d_model, d_proj = 37, 13
    h, W, b, _ = random_inputs(rng, d_model, d_proj, 1, scale=3.0)
    check(h, W, b, np.eye(d_proj) * 1e12)
    check(h, W, b, rng.standard_normal((29, d_proj)) * 1e12)
    check(h, W, b, rng.standard_normal((29, d_proj)) * 1e18, 1e6)
    check(h, W, b, rng.standard_normal((29, d_proj)) * 1e9, 1e-3)


def test_float32_and_int_arrays_are_read_as_float64():
    rng = np.random.default_rng(7)
    h, W, b, L = (a.astype(np.float32) for a in random_inputs(rng, 9, 5, 12))
    check(h, W, b, L)
    check(h.tolist(), W, b.tolist(), L)
    ints = [rng.integers(-3, 4, size=s) for s in [(6,), (4, 6), (4,), (10, 4)]]
    check(*ints)
    check(*(a.astype(np.int32) for a in ints))
    check(*(a.tolist() for a in ints))
    check(*(a.astype(np.uint8) for a in [np.abs(x) for x in ints]))
    check([1, 2], [[1, 0], [0, 1]], [0, 1], [[1, 1], [2, 0], [0, 2]], 1)


def test_big_endian_arrays():
    rng = np.random.default_rng(6)
    arrays = random_inputs(rng, 6, 4, 9)
    check(*(a.astype(">f8") for a in arrays), 0.8)


def test_python_ints_beyond_int64():
    """Python ints are numbers however large: the spec (and float64 math) takes
    them; NumPy stores ints beyond int64 as objects, which must not turn them
    into a TypeError."""
    check([10**20, 1], [[1e-20, 0.5]], [0.0], [[1.0], [2.0]])
    check([1.5], [[2**70]], [0], [[1e-21], [-1e-21]])


def test_mixed_lists_and_arrays_and_tuples():
    rng = np.random.default_rng(8)
    h, W, b, L = random_inputs(rng, 6, 4, 9)
    check(tuple(h), W.tolist(), b, tuple(map(tuple, L)), 0.5)


def test_non_contiguous_and_fortran_arrays():
    rng = np.random.default_rng(9)
    h, W, b, L = random_inputs(rng, 20, 10, 30)
    check(h[::2], W[:, ::2], b, L)
    check(h, np.asfortranarray(W), b[::-1].copy()[::-1], np.asfortranarray(L))
    check(h[::-1], W[::-1, ::-1], b[::-1], L[::3, ::-1])
    big = rng.standard_normal((10, 40))
    check(h, big[:, ::2], b, L)


def test_numpy_scalar_and_int_temperatures():
    rng = np.random.default_rng(10)
    h, W, b, L = random_inputs(rng, 5, 4, 8)
    check(h, W, b, L, 2)
    check(h, W, b, L, np.float64(0.3))
    check(h, W, b, L, np.float32(0.3))
    check(h, W, b, L, np.int64(3))


def test_default_temperature_is_one():
    rng = np.random.default_rng(11)
    h, W, b, L = random_inputs(rng, 5, 4, 8)
    assert eagle_draft_from_hidden(h, W, b, L) == spec_reference(h, W, b, L, 1.0)


finite = st.floats(-50, 50, allow_nan=False, allow_infinity=False, width=64)


@st.composite
def spec_problems(draw):
    d_model = draw(st.integers(1, 6))
    d_proj = draw(st.integers(1, 6))
    vocab = draw(st.integers(1, 9))
    h = draw(st.lists(finite, min_size=d_model, max_size=d_model))
    W = draw(st.lists(st.lists(finite, min_size=d_model, max_size=d_model),
                      min_size=d_proj, max_size=d_proj))
    b = draw(st.lists(st.floats(-600, 600, allow_nan=False), min_size=d_proj,
                      max_size=d_proj))
    L = draw(st.lists(st.lists(st.floats(-5, 5, allow_nan=False), min_size=d_proj,
                               max_size=d_proj), min_size=vocab, max_size=vocab))
    T = draw(st.one_of(st.just(1.0), st.just(0.0), st.floats(-10, 0),
                       st.floats(1e-2, 1e4)))
    return h, W, b, L, T


@settings(max_examples=150, deadline=None)
@given(spec_problems(), st.booleans())
def test_matches_spec_property(problem, as_arrays):
    h, W, b, L, T = problem
    if as_arrays:
        h, W, b, L = np.array(h), np.array(W), np.array(b), np.array(L)
    try:
        want = spec_reference(h, W, b, L, T)
    except (OverflowError, ValueError):
        want = None
    if want is None or not all(math.isfinite(p) for p in want["probs"]):
        # Overflowing logits: the package must raise rather than return NaN.
        with pytest.raises((ValueError, FloatingPointError)):
            eagle_draft_from_hidden(h, W, b, L, T)
        return
    assert eagle_draft_from_hidden(h, W, b, L, T) == want


# ---------------------------------------------------------------------------
# Ties and degenerate heads.
# ---------------------------------------------------------------------------

def test_duplicate_rows_first_index_wins():
    rng = np.random.default_rng(12)
    h, W, b, _ = random_inputs(rng, 6, 4, 1)
    x_sign = spec_reference(h, W, b, np.eye(4))["logits"]
    best_row = np.sign(x_sign)  # a row whose logit is sum |x_j|: the maximum
    other = rng.standard_normal((6, 4)) * 0.01
    L = np.vstack([other[:2], best_row, other[2:4], best_row, best_row, other[4:]])
    got = check(h, W, b, L)
    assert got["predicted_token"] == 2
    assert got["probs"][2] == got["probs"][5] == got["probs"][6]


def test_all_zero_lm_head_is_uniform_token_zero():
    rng = np.random.default_rng(13)
    h, W, b, _ = random_inputs(rng, 6, 4, 1)
    for vocab in (1, 3, 7, 1000):
        got = check(h, W, b, np.zeros((vocab, 4)))
        assert got["predicted_token"] == 0
        assert got["probs"] == [round(1 / vocab, 6)] * vocab
        assert got["logits"] == [0.0] * vocab


def test_all_zero_everything():
    got = check([0.0] * 3, [[0.0] * 3] * 2, [0.0] * 2, [[0.0] * 2] * 4)
    assert got["predicted_token"] == 0 and got["confidence"] == 0.25


def test_one_by_one_by_one():
    for h, w, b, lm in [(0.5, 2.0, 0.1, 3.0), (-1.0, 1.0, 0.0, -7.0), (0.0, 0.0, 0.0, 0.0),
                       (1e3, 1.0, 0.0, 1.0)]:
        for T in (1.0, 0.0, 0.1):
            got = check([h], [[w]], [b], [[lm]], T)
            assert got["predicted_token"] == 0 and got["probs"] == [1.0]
            assert got["confidence"] == 1.0


# ---------------------------------------------------------------------------
# The SiLU cut-off at |v| = 500.
# ---------------------------------------------------------------------------

CUTOFF_VALUES = [500.0, -500.0, 499.9999, -499.9999, 1e4, -1e4, 1e300, -1e300,
                 math.nextafter(500.0, 0.0), math.nextafter(500.0, math.inf),
                 math.nextafter(-500.0, 0.0), math.nextafter(-500.0, -math.inf),
                 0.0, -0.0, 40.0, -40.0, 710.0, -710.0, 745.5, -745.5]


@pytest.mark.parametrize("pre", CUTOFF_VALUES)
def test_preactivation_cutoff_via_bias(pre):
    """Pre-activation = bias exactly (W = 0); several LM-head rows so the
    softmax is not trivial.  Logits stay finite (|L| small)."""
    L = [[1e-3], [-2e-3], [0.0], [5e-4]]
    check([1.0, -2.0], [[0.0, 0.0]], [pre], L)
    if abs(pre) < 1e5:
        check([1.0, -2.0], [[0.0, 0.0]], [pre], [[1.0], [-1.0], [0.5]])


@pytest.mark.parametrize("pre", [500.0, -500.0, 499.9999, -499.9999, 1e4, -1e4])
def test_preactivation_cutoff_via_weights(pre):
    """Pre-activation reached through W h + b, mixed with ordinary rows."""
    h = [2.0, 0.5, -1.0]
    W = [[pre / 4, pre, pre / 2], [0.1, 0.2, 0.3], [pre / 2, 0.0, 0.0]]
    b = [0.0, -0.1, 0.0]
    L = [[1e-3, 1.0, -1e-3], [-1e-3, 0.5, 2e-3], [0.0, 0.0, 1e-3]]
    check(h, W, b, L)
    check(h, W, b, L, 0.0)


def test_big_negative_preactivation_gives_negative_zero_activation():
    # x = v * 0.0 = -0.0 for v <= -500: logits are (+/-)0.0, uniform softmax.
    got = check([1.0], [[1.0]], [-1e4], [[1.0], [-1.0], [3.0]])
    assert got["probs"] == [round(1 / 3, 6)] * 3
    assert got["predicted_token"] == 0


# ---------------------------------------------------------------------------
# Temperatures.
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("T", [0.0, -0.0, -1.0, -1e300, -math.inf, 1e-3, 1e-300, 1e6,
                               1e300, math.inf], ids=str)
def test_temperatures(T):
    rng = np.random.default_rng(14)
    h, W, b, L = random_inputs(rng, 7, 5, 11)
    got = check(h, W, b, L, T)
    if T <= 0:
        assert got == spec_reference(h, W, b, L, 1.0) == eagle_draft_from_hidden(h, W, b, L, 0)
    if T == math.inf:
        # Logits / inf are all (+/-)0: uniform, token 0.
        assert got["predicted_token"] == 0
        assert got["probs"] == [round(1 / 11, 6)] * 11


def test_tiny_temperature_overflow_raises():
    rng = np.random.default_rng(15)
    h, W, b, L = random_inputs(rng, 7, 5, 11)
    for T in (1e-310, 5e-324):
        with pytest.raises((ValueError, FloatingPointError)):
            eagle_draft_from_hidden(h, W, b, L, T)


@pytest.mark.parametrize("T", [math.nan, -math.nan, np.float64("nan")])
def test_nan_temperature_raises(T):
    with pytest.raises(ValueError, match="temperature"):
        eagle_draft_from_hidden([1.0], [[1.0]], [0.0], [[1.0], [2.0]], T)


@pytest.mark.parametrize("T", ["1.0", None, [1.0], 1 + 0j])
def test_non_number_temperature_raises(T):
    with pytest.raises((ValueError, TypeError), match="temperature"):
        eagle_draft_from_hidden([1.0], [[1.0]], [0.0], [[1.0], [2.0]], T)


# ---------------------------------------------------------------------------
# Overflow and huge values.
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("case", [
    ([1e200], [[1e200]], [0.0], [[1.0], [2.0]], 1.0),         # pre-activation -> inf
    ([1e200], [[-1e200]], [0.0], [[1.0], [2.0]], 1.0),        # -> -inf, x = NaN
    ([1.0], [[1.0]], [0.0], [[1e308], [1e308]], 1e-10),       # logits -> inf
    ([1.0], [[1.0]], [0.0], [[1e308], [-1e308]], 1e-10),
    ([1.0, 1.0], [[1e308, 1e308]], [0.0], [[1.0]], 1.0),      # the sum overflows
    ([1.0], [[1.0]], [1e300], [[1e10], [1.0]], 1.0),
], ids=["pre-inf", "pre-minus-inf", "logit-inf", "logit-pm-inf", "sum-overflow",
        "huge-bias"])
def test_overflow_raises_never_nan(case):
    with pytest.raises((ValueError, FloatingPointError)):
        eagle_draft_from_hidden(*case)


def test_huge_negative_logit_with_finite_softmax_matches_spec():
    # One logit overflows to -inf but the softmax stays finite (exp(-inf) = 0):
    # the result must match the spec (or raise -- it must never be NaN).
    h, W, b, L, T = [1.0], [[1.0]], [0.0], [[1.0], [-1e308], [0.5]], 1e-10
    want = spec_reference(h, W, b, L, T)
    assert want["logits"][1] == -math.inf and want["predicted_token"] == 0
    try:
        got = eagle_draft_from_hidden(h, W, b, L, T)
    except (ValueError, FloatingPointError):
        return
    assert got == want


def test_large_finite_values_without_overflow():
    rng = np.random.default_rng(16)
    h, W, b, L = random_inputs(rng, 8, 4, 6)
    check(h * 1e100, W * 1e-100, b, L)
    check(h, W, b * 1e150, L * 1e-150)
    check(h * 1e-300, W, b * 1e-300, L)  # subnormal territory


# ---------------------------------------------------------------------------
# Large heads: the parallel path (>= 256 KiB of weights).
# ---------------------------------------------------------------------------

def test_large_vocab_parallel_path():
    rng = np.random.default_rng(17)
    h, W, b, L = random_inputs(rng, 64, 8, 20000, lm_scale=0.5)
    assert W.nbytes + L.nbytes >= 256 * 1024
    for T in (1.0, 0.25):
        check(h, W, b, L, T)
    # Ties across the whole vocab (and across thread chunks): first index wins.
    L2 = np.tile(rng.standard_normal((1, 8)), (20000, 1))
    got = check(h, W, b, L2)
    assert got["predicted_token"] == 0
    L3 = L.copy()
    L3[[7, 12345, 19999]] = 100.0
    got = check(h, W, b, L3)
    x_positive = spec_reference(h, W, b, np.eye(8))["logits"]
    if sum(x_positive) > 0:
        assert got["predicted_token"] == 7


def test_wide_projection_parallel_path():
    rng = np.random.default_rng(18)
    h, W, b, L = random_inputs(rng, 128, 512, 50)
    assert W.nbytes + L.nbytes >= 256 * 1024
    check(h, W * 0.1, b, L * 0.1)
    check(h, W * 0.1, b, L * 1e12)  # every logit bit visible


# ---------------------------------------------------------------------------
# Bad inputs.
# ---------------------------------------------------------------------------

def good():
    return [1.0, 2.0, 3.0], [[1.0, 0.0, 0.5], [0.0, 1.0, 0.5]], [0.0, 0.1], \
        [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.5, -0.5]]


ARG_NAMES = ["hidden_state", "projection_weights", "projection_bias", "lm_head_weights"]


@pytest.mark.parametrize("position", range(4), ids=ARG_NAMES)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_values_raise(position, bad):
    args = [np.array(a) for a in good()]
    args[position].flat[-1] = bad
    with pytest.raises(ValueError, match=ARG_NAMES[position]):
        eagle_draft_from_hidden(*args)
    lists = [a.tolist() for a in args]
    with pytest.raises(ValueError, match=ARG_NAMES[position]):
        eagle_draft_from_hidden(*lists)


@pytest.mark.parametrize("position,value", [
    (0, [1.0, [2.0], 3.0]),
    (1, [[1.0, 0.0, 0.5], [0.0, 1.0]]),
    (3, [[1.0, 0.0], [0.0], [1.0, 1.0], [0.5, -0.5]]),
])
def test_ragged_lists_raise(position, value):
    args = list(good())
    args[position] = value
    with pytest.raises(ValueError):
        eagle_draft_from_hidden(*args)


@pytest.mark.parametrize("position,value", [
    (0, []), (1, [[]]), (1, []), (2, []), (3, []), (3, [[]]),
    (1, np.zeros((0, 3))), (3, np.zeros((4, 0))),
])
def test_empty_inputs_raise(position, value):
    args = list(good())
    args[position] = value
    with pytest.raises(ValueError):
        eagle_draft_from_hidden(*args)


def test_all_dimensions_empty_raise():
    with pytest.raises(ValueError):
        eagle_draft_from_hidden([], [[]], [], [[]])


@pytest.mark.parametrize("position,value,name", [
    (0, [1.0, 2.0], "projection_weights"),                 # d_model mismatch
    (0, [[1.0, 2.0, 3.0]], "hidden_state"),                # 2-D hidden
    (0, 1.0, "hidden_state"),                              # scalar hidden
    (1, [[1.0, 0.0], [0.0, 1.0]], "projection_weights"),
    (1, [1.0, 0.0, 0.5], "projection_weights"),            # 1-D weight
    (2, [0.0, 0.1, 0.2], "projection_bias"),
    (2, [[0.0, 0.1]], "projection_bias"),
    (3, [[1.0, 0.0, 1.0]], "lm_head_weights"),
    (3, [1.0, 0.0], "lm_head_weights"),
    (3, np.zeros((2, 2, 2)), "lm_head_weights"),
])
def test_shape_mismatches_raise_naming_the_argument(position, value, name):
    args = list(good())
    args[position] = value
    with pytest.raises(ValueError, match=name):
        eagle_draft_from_hidden(*args)


@pytest.mark.parametrize("position", range(4), ids=ARG_NAMES)
@pytest.mark.parametrize("kind", ["str", "complex", "object-None", "object-str",
                                  "object-complex", "bytes"])
def test_non_numeric_inputs_raise_type_error(position, kind):
    args = [np.array(a) for a in good()]
    bad = args[position]
    if kind == "str":
        args[position] = bad.astype(str)
    elif kind == "bytes":
        args[position] = bad.astype(bytes)
    elif kind == "complex":
        args[position] = bad.astype(complex)
    else:
        bad = bad.astype(object)
        bad.flat[-1] = {"object-None": None, "object-str": "1.0",
                        "object-complex": 1 + 1j}[kind]
        args[position] = bad
    with pytest.raises(TypeError, match=ARG_NAMES[position]):
        eagle_draft_from_hidden(*args)


@pytest.mark.parametrize("position", range(4), ids=ARG_NAMES)
def test_object_arrays_of_numbers_are_numbers(position):
    args = [np.array(a) for a in good()]
    args[position] = args[position].astype(object)
    check(*args)


def test_string_list_raises_type_error():
    h, W, b, L = good()
    with pytest.raises(TypeError):
        eagle_draft_from_hidden(["a", "b", "c"], W, b, L)
    with pytest.raises(TypeError):
        eagle_draft_from_hidden(h, W, [None, None], L)


def test_inputs_are_not_modified():
    rng = np.random.default_rng(19)
    arrays = random_inputs(rng, 6, 4, 9)
    copies = [a.copy() for a in arrays]
    eagle_draft_from_hidden(*arrays, 0.5)
    for a, c in zip(arrays, copies):
        np.testing.assert_array_equal(a, c)


def test_read_only_arrays():
    rng = np.random.default_rng(20)
    arrays = random_inputs(rng, 6, 4, 9)
    for a in arrays:
        a.flags.writeable = False
    check(*arrays)
