"""Int8 heads have the range of the float32 computation on their dequantized weights.

The int8 kernel sums ``q . x`` (integers up to 127 times float32 values) and
applies the row scale after; that sum can overflow float32 where ``scale *
(q . x)`` -- and the dequantized computation ``sum((q * scale) * x)`` -- is
perfectly finite.  Such heads must still return finite results:

* int8 heads whose *pre-scale* sum overflows, in the LM head (large
  activations) or in the projection (large hidden states, only some states
  of a batch), for odd sizes, heads big enough for threads, column blocks,
  single states and batches of every blocking, plain and Medusa (residual)
  heads: with power-of-two scales (``q * 2**-e`` is exact, and so is the
  scaling of every partial sum), the int8 head must give bit for bit the
  results of a float32 head on the dequantized weights (``q * 2**-e``,
  built here with NumPy), and batch rows must equal single states;
* scales that are not powers of two (the issue's example, weights quantized
  by the constructor): finite, and within float32 tolerance of a float64
  reference on the dequantized weights (decoded here from ``stored_arrays``);
* a genuine overflow (the dequantized float32 computation overflows too)
  still raises FloatingPointError.
"""

from __future__ import annotations

import numpy as np
import pytest

from eagle_fast import DraftHead, MedusaHeads
from reference import float64_reference

F32_MAX = float(np.finfo(np.float32).max)   # just below 2**128
LOGIT_RTOL = 1e-5


def full(head, hidden, **kwargs):
    return head.predict(hidden, return_logits=True, return_probs=True, **kwargs)


def int8_rows(rng, n_rows, n_cols, hot_fraction):
    """Int8 rows: "hot" rows of same-sign |q| in [32, 127] (their sums cannot
    cancel), the others random in [-127, 127].  Returns (q, hot mask)."""
    q = rng.integers(-127, 128, (n_rows, n_cols))
    hot = rng.random(n_rows) < hot_fraction
    signs = rng.choice([-1, 1], n_rows)[:, None]
    q[hot] = (signs * rng.integers(32, 128, (n_rows, n_cols)))[hot]
    return q.astype(np.int8), hot


def big_values(rng, n, exponent, fraction):
    """float64 values: a ``fraction`` of them (at least one) 2**exponent * [1, 2),
    the rest N(0, 1)."""
    values = rng.standard_normal(n)
    big = rng.permutation(n)[:max(1, round(fraction * n))]
    values[big] = 2.0 ** exponent * (1 + rng.random(big.size))
    return values


def overflow_exponent(n):
    """E such that 32 * (n / 4) values of 2**E overflow float32: a hot row's
    pre-scale sum over a quarter of its columns passes 2**129."""
    return 129 - int(np.floor(np.log2(8 * n)))


def pow2_int8_head(rng, d_model, d_proj, vocab, where, residual=False):
    """An int8 head (from_stored) with power-of-two row scales whose pre-scale
    sums overflow in ``where`` ("lm_head" or "projection"), the float32 head
    on the same dequantized weights, and hidden states (12 plain ones, then 5
    large ones when the projection overflows)."""
    qW, _ = int8_rows(rng, d_proj, d_model, 0.5)
    qL, hot_L = int8_rows(rng, vocab, d_proj, 0.5 if where == "lm_head" else 0.0)
    hidden = rng.standard_normal((17, d_model))
    if where == "lm_head":
        # x ~ b: a quarter or more of b is 2**E (SiLU is the identity beyond 500).
        e = overflow_exponent(d_proj)
        bias = big_values(rng, d_proj, e, 0.5)
        sW = 2.0 ** rng.integers(-12, -8, d_proj)
        sL = 2.0 ** rng.integers(-30, -24, vocab)   # logits stay below 2**115
    else:
        # States 12..16 hold 2**E values: W h overflows before the scale.
        e = overflow_exponent(d_model)
        hidden[12:] = [big_values(rng, d_model, e, 0.5) for _ in range(5)]
        bias = rng.standard_normal(d_proj)
        sW = 2.0 ** rng.integers(-80, -76, d_proj)   # x below about 2**65
        # Residual heads add h itself (2**E) to x: scale L down to match.
        sL = 2.0 ** (rng.integers(-40, -30, vocab) if residual else rng.integers(-8, -4, vocab))
    sW, sL, bias = (a.astype(np.float32) for a in (sW, sL, bias))
    head = DraftHead.from_stored("int8", qW, bias, qL, projection_scales=sW,
                                 lm_head_scales=sL, residual=residual)
    W32 = qW.astype(np.float32) * sW[:, None]   # exact: power-of-two scales
    L32 = qL.astype(np.float32) * sL[:, None]
    reference = DraftHead(W32, bias, L32, residual=residual)
    assert reference.weight_dtype == "float32"
    # The premise: some pre-scale sums overflow float32.
    h32 = hidden.astype(np.float32).astype(np.float64)
    pre_w = np.abs(h32 @ qW.astype(np.float64).T)
    if where == "projection":
        assert pre_w[12:].max() > 2 * F32_MAX and pre_w[:12].max() < F32_MAX
    else:
        x = np.maximum(bias.astype(np.float64), 0)
        assert np.abs(qL[hot_L].astype(np.float64) @ x).min() > 2 * F32_MAX
    return head, reference, hidden


def assert_same(got, want, what):
    for name in ("tokens", "token_probs", "logits", "probs"):
        a, b = getattr(got, name), getattr(want, name)
        if a is None and b is None:
            continue
        assert a.dtype == b.dtype and a.shape == b.shape, (what, name)
        assert np.array_equal(a, b), (
            f"{what}: {name} differ at {np.argwhere(a != b)[:5].tolist()}")


# (d_model, d_proj, vocab): tiny; odd (vector tails); > 256 KiB (threads);
# > 1024 columns (column blocks, B > 8).
SIZES = [(5, 3, 7), (43, 67, 1001), (256, 256, 2000), (1101, 1030, 37)]


@pytest.mark.parametrize("where", ["lm_head", "projection"])
@pytest.mark.parametrize("size", SIZES, ids=lambda s: "x".join(map(str, s)))
def test_int8_pre_scale_overflow_gives_the_dequantized_float32_results(size, where):
    rng = np.random.default_rng([{"lm_head": 1, "projection": 2}[where], *size])
    head, reference, hidden = pow2_int8_head(rng, *size, where)
    states = range(12, 17) if where == "projection" else range(17)
    for num_threads in (1, 2):
        for T, k in ((1.0, 3), (0.0, 1), (0.5, 70)):
            k = min(k, size[2])
            kw = dict(temperature=T, top_k=k, num_threads=num_threads)
            singles = []
            for s in states:
                got, want = full(head, hidden[s], **kw), full(reference, hidden[s], **kw)
                assert np.isfinite(got.logits).all()
                assert_same(got, want, f"state {s} T={T} threads={num_threads}")
                singles.append(got)
            # Batches of every blocking (3 x 4 groups, leftovers, column blocks),
            # mixing plain and large states.
            for batch in (2, 3, 4, 5, 9, 17):
                order = rng.permutation(17)[:batch]
                got = full(head, hidden[order], **kw)
                assert_same(got, full(reference, hidden[order], **kw), f"batch {batch}")
                for i, s in enumerate(order):
                    if s in states:
                        single = singles[list(states).index(s)]
                        assert np.array_equal(got.logits[i], single.logits)
                        assert np.array_equal(got.tokens[i], single.tokens)


@pytest.mark.parametrize("size", [(5, 5, 7), (64, 64, 300)], ids=["tiny", "small"])
def test_int8_medusa_heads_with_pre_scale_overflow(size):
    d_model, _, vocab = size
    rng = np.random.default_rng(7)
    pairs = [pow2_int8_head(rng, d_model, d_model, vocab, "projection", residual=True)
             for _ in range(3)]
    hidden = pairs[0][2]
    medusa = MedusaHeads([head for head, _, _ in pairs])
    reference = MedusaHeads([ref for _, ref, _ in pairs])
    for states in (hidden[12], hidden[10:15], hidden):
        got = medusa.predict(states, top_k=3, num_threads=2)
        want = reference.predict(states, top_k=3, num_threads=2)
        np.testing.assert_array_equal(got.tokens, want.tokens)
        np.testing.assert_array_equal(got.token_probs, want.token_probs)


def decoded(head):
    """(W, b, L) of an int8 head as exact float64 values, from its stored arrays."""
    a = head.stored_arrays()
    W = a["projection.weight"].astype(np.float64) * a["projection.weight_scale"][:, None]
    L = a["lm_head.weight"].astype(np.float64) * a["lm_head.weight_scale"][:, None]
    return W, a["projection.bias"].astype(np.float64), L


def check_against_float64(head, hidden):
    result = full(head, hidden, top_k=2)
    assert np.isfinite(result.logits).all() and np.isfinite(result.probs).all()
    ref = float64_reference(np.asarray(hidden, np.float32).astype(np.float64), *decoded(head))
    err = np.abs(result.logits.astype(np.float64) - ref["logits"])
    assert np.all(err <= LOGIT_RTOL * ref["logit_scale"]), err.max()
    np.testing.assert_allclose(result.probs, ref["probs"], atol=1e-6)
    return result


def test_the_issues_example():
    head = DraftHead(np.zeros((2, 2)), [1e37, 0], [[1, 0], [.5, .5]], weight_dtype="int8")
    result = check_against_float64(head, np.zeros(2))
    assert result.predicted_token == 0
    # Both rows overflow before the scale: they are the float32 computation
    # on the dequantized weights.
    reference = DraftHead(head.projection_weight, head.projection_bias, head.lm_head_weight)
    assert_same(full(head, np.zeros(2)), full(reference, np.zeros(2)), "example")


@pytest.mark.parametrize("size", SIZES[:3], ids=lambda s: "x".join(map(str, s)))
def test_int8_quantized_heads_with_huge_activations_stay_finite(size):
    """Weights quantized by the constructor (scales max|row| / 127, not powers
    of two), activations near 1e37 and hidden states near 1e36."""
    d_model, d_proj, vocab = size
    rng = np.random.default_rng(d_proj)
    W = rng.standard_normal((d_proj, d_model)) * 1e-3 / d_model
    b = big_values(rng, d_proj, 120, 0.3)
    L = rng.standard_normal((vocab, d_proj)) / d_proj
    head = DraftHead(W, b, L, weight_dtype="int8")
    check_against_float64(head, rng.standard_normal(d_model))
    check_against_float64(head, rng.standard_normal((5, d_model)))
    # Large hidden states through a small W.
    head = DraftHead(W * 1e-6, rng.standard_normal(d_proj), L, weight_dtype="int8")
    hidden = rng.standard_normal((4, d_model)) * 1e36
    assert np.abs(hidden @ (W * 1e-6).T).max() < 1e34   # exact result: modest
    check_against_float64(head, hidden)
    check_against_float64(head, hidden[1])


@pytest.mark.parametrize("weight_dtype", ["int8", "float32"])
def test_a_genuine_overflow_still_raises(weight_dtype):
    # x = 3e38; L's rows sum to 2 (or 1.5): the logits exceed float32 in any storage.
    head = DraftHead(np.zeros((2, 2)), [3e38, 3e38], [[1, 1], [1, .5]],
                     weight_dtype=weight_dtype)
    with pytest.raises(FloatingPointError, match="overflowed"):
        head.predict(np.zeros(2))
    with pytest.raises(FloatingPointError, match="overflowed"):
        head.predict(np.zeros((3, 2)))
