"""The same public API on every backend: num_threads, boolean flags, the spec
function's temperatures, and the stored-weights round trip."""

from __future__ import annotations

import fractions
import math

import numpy as np
import pytest

import eagle_fast
from eagle_fast import DraftHead, MedusaHeads, eagle_draft_from_hidden
from reference import spec_reference
from support import random_head

WEIGHT_DTYPES = ["float32", "float64", "bfloat16", "float16", "int8"]


def small_head(seed=0, **kwargs):
    rng = np.random.default_rng(seed)
    return DraftHead(*random_head(rng, 6, 6, 9), **kwargs)


def parallel_head(seed=0):
    """Weights above the 256 KiB at which predict runs threads."""
    rng = np.random.default_rng(seed)
    return DraftHead(*random_head(rng, 64, 128, 300))


# ---------------------------------------------------------------------------
# num_threads: one rule on every backend.
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("available", [1, 3])
@pytest.mark.parametrize("make", [small_head, parallel_head], ids=["serial", "parallel"])
def test_negative_num_threads_count_back_from_omp_num_threads(monkeypatch, available, make):
    """-1 .. -available are accepted (and change no result); one more, and 0,
    are ValueErrors -- the same on every backend, with or without OpenMP
    (the fallback used to refuse -2 whatever the machine)."""
    monkeypatch.setenv("OMP_NUM_THREADS", str(available))
    head = make()
    medusa = MedusaHeads([small_head(1, residual=True), small_head(2, residual=True)])
    hidden = np.random.default_rng(5).standard_normal((2, head.d_model))
    expected = head.predict(hidden, top_k=3, return_logits=True)
    for n in range(-available, 0):
        got = head.predict(hidden, top_k=3, return_logits=True, num_threads=n)
        np.testing.assert_array_equal(got.logits, expected.logits)
        np.testing.assert_array_equal(got.tokens, expected.tokens)
        medusa.predict(hidden[:, :6], num_threads=n)
    for bad in (0, -available - 1, -available - 5):
        with pytest.raises(ValueError, match="num_threads"):
            head.predict(hidden, num_threads=bad)
        with pytest.raises(ValueError, match="num_threads"):
            medusa.predict(hidden[:, :6], num_threads=bad)


def test_num_threads_without_omp_num_threads_counts_usable_cpus(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    try:
        usable = len(__import__("os").sched_getaffinity(0))
    except AttributeError:
        usable = __import__("os").cpu_count() or 1
    head = small_head()
    hidden = np.ones(6)
    head.predict(hidden, num_threads=-usable)
    with pytest.raises(ValueError, match="num_threads"):
        head.predict(hidden, num_threads=-usable - 1)


# ---------------------------------------------------------------------------
# Boolean flags: bools and NumPy bools only.
# ---------------------------------------------------------------------------

NOT_BOOLS = ["no", "", "False", 0, 1, 1.0, None, [], [True], np.int64(1), np.array([True])]


@pytest.mark.parametrize("flag", ["return_logits", "return_probs", "scatter_to_target"])
@pytest.mark.parametrize("value", NOT_BOOLS, ids=repr)
def test_predict_flags_must_be_bools(flag, value):
    head = small_head()
    with pytest.raises(TypeError, match=flag):
        head.predict(np.ones(6), **{flag: value})
    with pytest.raises(TypeError, match=flag):
        head.predict(np.ones((3, 6)), top_k=9, **{flag: value})


@pytest.mark.parametrize("value", NOT_BOOLS, ids=repr)
def test_residual_must_be_a_bool(value):
    rng = np.random.default_rng(3)
    with pytest.raises(TypeError, match="residual"):
        DraftHead(*random_head(rng, 6, 6, 9), residual=value)
    head = small_head()
    arrays = head.stored_arrays()
    with pytest.raises(TypeError, match="residual"):
        DraftHead.from_stored(**arrays, residual=value)


def test_numpy_bools_work_like_bools():
    rng = np.random.default_rng(4)
    W, b, L = random_head(rng, 6, 5, 9)
    d2t = np.arange(9) * 2 - np.arange(9)     # draft i -> target 2 i
    head = DraftHead(W, b, L, d2t=d2t)
    hidden = rng.standard_normal((2, 6))
    for a in (True, False):
        for c in (True, False):
            plain = head.predict(hidden, return_logits=a, return_probs=c,
                                 scatter_to_target=a)
            numpy = head.predict(hidden, return_logits=np.bool_(a), return_probs=np.bool_(c),
                                 scatter_to_target=np.bool_(a))
            for name in ("tokens", "token_probs", "logits", "probs", "draft_tokens"):
                x, y = getattr(plain, name), getattr(numpy, name)
                assert (x is None) == (y is None), name
                if x is not None:
                    np.testing.assert_array_equal(x, y)
    assert DraftHead(W[:5, :5], b[:5], L[:, :5], residual=np.True_).residual is True


# ---------------------------------------------------------------------------
# eagle_draft_from_hidden: every real temperature the reference accepts.
# ---------------------------------------------------------------------------

def spec_inputs():
    rng = np.random.default_rng(6)
    return ([float(v) for v in rng.standard_normal(5)],
            rng.standard_normal((4, 5)).tolist(), rng.standard_normal(4).tolist(),
            rng.standard_normal((7, 4)).tolist())


@pytest.mark.parametrize("T", [-10**400, -2**1024, -10**30, fractions.Fraction(-10**400),
                               -math.inf, 0, -0.0], ids=repr)
def test_any_temperature_at_most_zero_means_no_scaling(T):
    """The reference only divides when T > 0: however negative T is (an int
    beyond float64 included), the result is the unscaled one."""
    inputs = spec_inputs()
    assert eagle_draft_from_hidden(*inputs, T) == spec_reference(*inputs, 0.0)


@pytest.mark.parametrize("T", [10**300, 2**1023, fractions.Fraction(1, 3), 7,
                               np.int64(3), math.inf], ids=repr)
def test_positive_temperatures_within_float64(T):
    inputs = spec_inputs()
    assert eagle_draft_from_hidden(*inputs, T) == spec_reference(*inputs, float(T))


@pytest.mark.parametrize("T", [10**400, 2**1024, fractions.Fraction(10**400, 3)], ids=repr)
def test_positive_temperature_beyond_float64_is_the_references_overflow_error(T):
    """The reference's ``logit / T`` raises OverflowError for a T > 0 that no
    float64 holds; eagle_draft_from_hidden raises the same, naming temperature."""
    inputs = spec_inputs()
    with pytest.raises(OverflowError):
        [logit / T for logit in (0.5, -1.0)]   # what the reference does with it
    with pytest.raises(OverflowError, match="temperature"):
        eagle_draft_from_hidden(*inputs, T)


# ---------------------------------------------------------------------------
# stored_arrays() -> from_stored() round trip.
# ---------------------------------------------------------------------------

def assert_same_head(copy, head, hidden):
    assert (copy.weight_dtype, copy.dtype, copy.residual, copy.target_vocab_size) == (
        head.weight_dtype, head.dtype, head.residual, head.target_vocab_size)
    a, b = copy.stored_arrays(), head.stored_arrays()
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        np.testing.assert_array_equal(a[name].view(np.uint8), b[name].view(np.uint8))
    if head.d2t is None:
        assert copy.d2t is None
    else:
        np.testing.assert_array_equal(copy.d2t, head.d2t)
    x = copy.predict(hidden, top_k=3, return_logits=True)
    y = head.predict(hidden, top_k=3, return_logits=True)
    np.testing.assert_array_equal(x.tokens, y.tokens)
    np.testing.assert_array_equal(x.logits, y.logits)


@pytest.mark.parametrize("weight_dtype", WEIGHT_DTYPES)
@pytest.mark.parametrize("kind", ["plain", "residual", "d2t"])
def test_from_stored_takes_stored_arrays_back(weight_dtype, kind):
    rng = np.random.default_rng(7)
    W, b, L = random_head(rng, 8, 8, 13)
    options = {"residual": True} if kind == "residual" else {}
    if kind == "d2t":
        options = {"d2t": rng.permutation(40)[:13] - np.arange(13), "target_vocab_size": 40}
    head = DraftHead(W, b, L, weight_dtype=weight_dtype, **options)
    hidden = rng.standard_normal((2, 8))
    extra = {"residual": head.residual, "d2t": head.d2t,
             "target_vocab_size": head.target_vocab_size}
    arrays = head.stored_arrays()
    assert_same_head(DraftHead.from_stored(**arrays, **extra), head, hidden)
    assert_same_head(DraftHead.from_stored(weight_dtype, **arrays, **extra), head, hidden)
    if kind == "plain":
        assert_same_head(DraftHead.from_stored(**arrays), head, hidden)


def test_from_stored_names_are_checked():
    head = small_head(weight_dtype="int8")
    arrays = head.stored_arrays()
    with pytest.raises(TypeError, match="projection_weight"):
        DraftHead.from_stored(projection_weight=arrays["projection.weight"], **arrays)
    with pytest.raises(TypeError, match="lm_head.weights"):
        DraftHead.from_stored(**arrays, **{"lm_head.weights": arrays["lm_head.weight"]})
    del arrays["lm_head.weight"]
    with pytest.raises(TypeError, match="lm_head_weight"):
        DraftHead.from_stored(**arrays)
    with pytest.raises(TypeError, match="weight_dtype"):
        DraftHead.from_stored(projection_weight=np.zeros((2, 2), np.int32),
                              projection_bias=np.zeros(2), lm_head_weight=np.zeros((3, 2)))


def test_positional_from_stored_still_works():
    head = small_head(weight_dtype="bfloat16")
    a = head.stored_arrays()
    copy = DraftHead.from_stored("bfloat16", a["projection.weight"], a["projection.bias"],
                                 a["lm_head.weight"])
    assert_same_head(copy, head, np.ones(6))
    assert eagle_fast.DraftHead is DraftHead
