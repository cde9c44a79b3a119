"""Low-precision draft heads: weight_dtype = "bfloat16", "float16", "int8".

What this module proves, on every backend (conftest runs each test on
compiled-x86-64-v3, compiled-baseline and python):

* predict computes, to float32 tolerance, the float64 result on the
  *dequantized stored weights* -- decoded here with plain NumPy from
  ``stored_arrays()``, never with eagle_fast's own helpers -- for single
  states and batches, dimensions that are not multiples of 8, heads big
  enough for the multi-threaded path, and temperatures 1, 0.5 and 0;
* batch rows are bit-identical to single states, and equal LM-head rows tie
  to the lower token id, for every storage type;
* the encodings: bfloat16 and float16 are the nearest value, ties to even
  (checked against the neighbouring bit patterns, from float32 and float64
  input), float16 equals NumPy's float16, int8 is symmetric per row;
* bad input is rejected (non-finite weights, values out of range, bad
  dtype arguments, inconsistent stored arrays);
* ``to()``, ``nbytes``, ``from_stored``/pickle round trips, hidden casts;
* ``compare()`` against metrics computed here by hand;
* a Hypothesis property: the top-1 token is the reference's first argmax
  wherever the reference's top two logits are not within tolerance.
"""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import eagle_fast
from eagle_fast import DraftHead
from reference import float64_reference
from support import random_head

LOW = ["bfloat16", "float16", "int8"]
ALL = ["float32", "float64"] + LOW
# Low-precision heads compute in float32: same tolerances as a float32 head
# in test_draft_head.py (a multiple of the sum of |terms| behind each logit).
LOGIT_RTOL = 1e-5
PARALLEL_BYTES = 256 * 1024


# ---------------------------------------------------------------------------
# Independent decoding and references.
# ---------------------------------------------------------------------------

def bf16_to_f64(bits) -> np.ndarray:
    bits = np.asarray(bits).astype(np.uint32)
    return (bits << 16).view(np.float32).astype(np.float64)


def f16_to_f64(bits) -> np.ndarray:
    return np.asarray(bits).astype(np.uint16).view(np.float16).astype(np.float64)


def decode(weight_dtype, data, scales=None) -> np.ndarray:
    """A stored matrix as exact float64 values, checking the storage dtype."""
    expected = {"bfloat16": np.uint16, "float16": np.float16, "int8": np.int8,
                "float32": np.float32, "float64": np.float64}[weight_dtype]
    assert data.dtype == expected
    if weight_dtype == "bfloat16":
        return bf16_to_f64(data)
    if weight_dtype == "int8":
        assert scales.dtype == np.float32 and scales.shape == (data.shape[0],)
        return data.astype(np.float64) * scales.astype(np.float64)[:, None]
    assert scales is None
    return data.astype(np.float64)


def dequantized(head):
    """(W, b, L) in float64, decoded from head.stored_arrays()."""
    a = head.stored_arrays()
    W = decode(head.weight_dtype, a["projection.weight"], a.get("projection.weight_scale"))
    L = decode(head.weight_dtype, a["lm_head.weight"], a.get("lm_head.weight_scale"))
    return W, a["projection.bias"].astype(np.float64), L


def head_reference(head, hidden, temperature=1.0):
    hidden = np.asarray(hidden).astype(head.dtype).astype(np.float64)
    return float64_reference(hidden, *dequantized(head), temperature)


def at_temperature(ref, T):
    """The T = 1 reference rescaled to temperature T (T = 0: unscaled)."""
    if T <= 0:
        return ref
    logits = ref["logits"] / T
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return {"logits": logits, "logit_scale": ref["logit_scale"] / T,
            "probs": e / e.sum(axis=-1, keepdims=True)}


def stable_topk(logits, k):
    """Best first, ties to the lower id (lexsort: id is the secondary key)."""
    logits = np.atleast_2d(np.asarray(logits, np.float64))
    ids = np.arange(logits.shape[-1])
    return np.stack([np.lexsort((ids, -row))[:k] for row in logits])


def check_result(result, ref, k):
    """Logits/probs within float32 tolerance of ref; tokens the stable top-k
    of the result's logits and the reference's best up to the tolerance."""
    tol = LOGIT_RTOL * ref["logit_scale"]
    assert result.logits.dtype == np.float32 and result.probs.dtype == np.float32
    err = np.abs(result.logits.astype(np.float64) - ref["logits"])
    assert np.all(err <= tol), f"logits off by {err.max():.3g}"
    spread = 2 * np.max(tol, axis=-1, keepdims=True)
    err = np.abs(result.probs.astype(np.float64) - ref["probs"])
    assert np.all(err <= 1e-6 + np.maximum(1e-5, spread) * ref["probs"]), (
        f"probs off by {err.max():.3g}")
    tokens = np.atleast_2d(result.tokens)
    np.testing.assert_array_equal(tokens, stable_topk(result.logits, k))
    np.testing.assert_array_equal(
        result.token_probs, np.take_along_axis(result.probs, result.tokens, axis=-1))
    ref_logits = np.atleast_2d(ref["logits"])
    best = -np.sort(-ref_logits, axis=-1)[:, :k]
    chosen = np.take_along_axis(ref_logits, tokens, axis=-1)
    assert np.all(chosen >= best - np.atleast_2d(spread))


def full(head, hidden, **kwargs):
    return head.predict(hidden, return_logits=True, return_probs=True, **kwargs)


def from_stored_kwargs(arrays):
    kwargs = {"projection_weight": arrays["projection.weight"],
              "projection_bias": arrays["projection.bias"],
              "lm_head_weight": arrays["lm_head.weight"]}
    if "projection.weight_scale" in arrays:
        kwargs["projection_scales"] = arrays["projection.weight_scale"]
        kwargs["lm_head_scales"] = arrays["lm_head.weight_scale"]
    return kwargs


def assert_same_stored(a, b):
    sa, sb = a.stored_arrays(), b.stored_arrays()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert sa[name].dtype == sb[name].dtype and sa[name].shape == sb[name].shape
        assert sa[name].tobytes() == sb[name].tobytes(), name


def assert_same_results(a, b):
    for name in ("tokens", "token_probs", "logits", "probs"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


# ---------------------------------------------------------------------------
# 1. Accuracy against the float64 reference on the dequantized weights.
# ---------------------------------------------------------------------------

# (d_model, d_proj, vocab, pool of states): odd sizes (vector tails);
# > 256 KiB stored even as int8 (threads); > 1024 columns (column blocks).
KINDS = {"odd": (43, 67, 1001, 17), "parallel": (256, 256, 2000, 17),
         "wide": (1101, 1030, 37, 5)}


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("weight_dtype", LOW)
def test_matches_float64_reference_on_dequantized_weights(weight_dtype, kind):
    d_model, d_proj, vocab, n_pool = KINDS[kind]
    rng = np.random.default_rng(100 + d_model)
    head = DraftHead(*random_head(rng, d_model, d_proj, vocab, lm_scale=3.0),
                     weight_dtype=weight_dtype)
    assert head.dtype == np.float32 and head.weight_dtype == weight_dtype
    assert (head.nbytes >= PARALLEL_BYTES) == (kind != "odd")
    pool = rng.standard_normal((n_pool, d_model))  # float64: cast by predict
    pool_ref = head_reference(head, pool)
    for T, k in ((1.0, 5), (0.5, 100), (0.0, 1)):
        k = min(k, vocab)
        ref = at_temperature(pool_ref, T)
        single = full(head, pool[0], temperature=T, top_k=k, num_threads=2)
        assert single.logits.shape == (vocab,) and single.tokens.shape == (k,)
        check_result(single, {name: v[0] for name, v in ref.items()}, k)
        for batch in (1, 3, 5, 17):
            order = rng.permutation(n_pool)[:batch]
            result = full(head, pool[order], temperature=T, top_k=k, num_threads=2)
            assert result.tokens.shape == (len(order), k)
            check_result(result, {name: v[order] for name, v in ref.items()}, k)


def exact_rows(rng, shape, weight_dtype, exponents):
    """Rows k * 2**e (|k| <= 127, one |k| == 127 per row, e per row): exact in
    every storage type, int8 with scale 2**e."""
    k = rng.integers(-127, 128, shape).astype(np.float64)
    k[np.arange(shape[0]), rng.integers(0, shape[1], shape[0])] = 127
    return k * 2.0 ** rng.integers(*exponents, (shape[0], 1))


@pytest.mark.parametrize("weight_dtype", LOW)
def test_exactly_computable_logits_are_exact(weight_dtype):
    """Heads whose every float32 operation is exact (SiLU past its 500 cut-off
    is the identity): the logits must equal the float64 values bit for bit,
    so even a last-bit error in decoding a weight (vector part or tail
    columns, single or batched path) fails."""
    rng = np.random.default_rng(120)
    lo = {"bfloat16": -133, "float16": -24, "int8": -60}[weight_dtype]
    # L: x = SiLU(512) = 512 exactly (hidden 0); logits = 512 * row sums.
    L = exact_rows(rng, (20000, 19), weight_dtype, (lo, 6))
    W, _, _ = random_head(rng, 11, 19, 1)
    head = DraftHead(W, np.full(19, 512.0), L, weight_dtype=weight_dtype)
    np.testing.assert_array_equal(dequantized(head)[2], L)  # incl. subnormals
    expected = 512 * L.sum(axis=1)
    # W: x = 1024 + W h (hidden in {-1, 0, 1}); L = 127 I gives logits 127 x.
    W = exact_rows(rng, (67, 11), weight_dtype, (-4, -1))
    head_w = DraftHead(W, np.full(67, 1024.0), 127 * np.eye(67), weight_dtype=weight_dtype)
    np.testing.assert_array_equal(dequantized(head_w)[0], W)
    hidden = rng.integers(-1, 2, (5, 11)).astype(np.float64)
    expected_w = 127 * (1024 + hidden @ W.T)
    for states, ref_logits in [(np.zeros((5, 11)), np.tile(expected, (5, 1))),
                               (np.zeros(11), expected), (hidden, expected_w),
                               (hidden[2], expected_w[2])]:
        model = head if ref_logits.shape[-1] == 20000 else head_w
        assert np.array_equal(ref_logits.astype(np.float32), ref_logits)
        for num_threads in (1, 2):
            got = model.predict(states, temperature=0.0, return_logits=True,
                                num_threads=num_threads)
            np.testing.assert_array_equal(got.logits, ref_logits.astype(np.float32))


# ---------------------------------------------------------------------------
# 2. Batches equal single states bit for bit; equal rows tie to the lower id.
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("weight_dtype", ALL)
def test_batch_rows_equal_single_states_exactly(weight_dtype):
    mismatches = []
    for d_model, d_proj, vocab in [(19, 11, 53), (67, 75, 4003), (1101, 1030, 37)]:
        rng = np.random.default_rng(102)
        head = DraftHead(*random_head(rng, d_model, d_proj, vocab, lm_scale=3.0),
                         weight_dtype=weight_dtype)
        pool = rng.standard_normal((17, d_model)).astype(head.dtype)
        for num_threads in (1, 2):
            singles = [full(head, state, top_k=4, num_threads=num_threads) for state in pool]
            for batch in (1, 2, 3, 4, 5, 8, 9, 13, 17):
                order = rng.permutation(17)[:batch]
                together = full(head, pool[order], top_k=4, num_threads=num_threads)
                for i, j in enumerate(order):
                    for name in ("tokens", "token_probs", "logits", "probs"):
                        if not np.array_equal(getattr(together, name)[i],
                                              getattr(singles[j], name)):
                            mismatches.append(f"{(d_model, d_proj, vocab)} threads="
                                              f"{num_threads} B={batch} row {i}: {name}")
    assert not mismatches, f"{len(mismatches)} mismatches, e.g. {mismatches[:4]}"


@pytest.mark.parametrize("weight_dtype", ALL)
def test_equal_lm_head_rows_give_equal_logits_and_lower_ids(weight_dtype):
    rng = np.random.default_rng(103)
    for d_model, d_proj, vocab in [(43, 67, 1001), (16, 67, 20000)]:
        W, b, _ = random_head(rng, d_model, d_proj, 1)
        distinct = rng.standard_normal((3, d_proj))
        L = distinct[rng.integers(0, 3, vocab)]
        head = DraftHead(W, b, L, weight_dtype=weight_dtype)
        for shape in [(d_model,), (5, d_model)]:
            result = full(head, rng.standard_normal(shape), top_k=70, num_threads=2)
            logits = np.atleast_2d(result.logits)
            assert all(np.unique(row).size <= 3 for row in logits)
            np.testing.assert_array_equal(np.atleast_2d(result.tokens),
                                          stable_topk(result.logits, 70))
            # Copies of the best row first, in id order.
            best = np.atleast_2d(result.tokens)[:, 0]
            for row, top in zip(logits, best):
                assert top == np.flatnonzero(row == row.max())[0]


@pytest.mark.parametrize("weight_dtype", LOW)
def test_low_precision_is_the_float32_kernel_on_the_dequantized_weights(weight_dtype):
    """bfloat16/float16 weights convert exactly to float32, so the head's
    results are bit for bit those of a float32 head on the decoded weights
    (decoded here with NumPy) -- vector lanes and tail columns alike, single
    states and batches.  Int8 likewise with power-of-two row scales (then
    scale * (q . x) is exactly the dot product with the dequantized row)."""
    rng = np.random.default_rng(104)
    for d_model, d_proj, vocab in [(13, 21, 301), (67, 75, 4003), (1101, 1030, 37)]:
        W, b, L = random_head(rng, d_model, d_proj, vocab, lm_scale=3.0)
        if weight_dtype == "int8":
            scales = [2.0 ** rng.integers(-9, -5, n).astype(np.float32) for n in (d_proj, vocab)]
            head = DraftHead.from_stored(
                "int8", rng.integers(-127, 128, W.shape).astype(np.int8), b.astype(np.float32),
                rng.integers(-127, 128, L.shape).astype(np.int8),
                projection_scales=scales[0], lm_head_scales=scales[1])
        else:
            head = DraftHead(W, b, L, weight_dtype=weight_dtype)
        W64, b64, L64 = dequantized(head)
        reference = DraftHead(W64.astype(np.float32), b64.astype(np.float32),
                              L64.astype(np.float32))
        assert np.array_equal(reference.projection_weight.astype(np.float64), W64)
        pool = rng.standard_normal((9, d_model)).astype(np.float32)
        for states in (pool[0], pool[:4], pool):
            for num_threads in (1, 2):
                kw = dict(top_k=3, temperature=0.7, num_threads=num_threads)
                assert_same_results(full(head, states, **kw), full(reference, states, **kw))


# ---------------------------------------------------------------------------
# 3. Encodings.
# ---------------------------------------------------------------------------

def check_nearest_even(values, bits, to_f64, inf_mag):
    """Each pattern in ``bits`` decodes to a value nearest ``values`` among
    itself and its two magnitude neighbours; on an exact tie it is even.
    (Differences of nearby float64 values are exact, so ties are exact.)"""
    x = np.asarray(values, np.float64).ravel()
    p = np.asarray(bits).astype(np.int64).ravel()
    dist = np.abs(x - to_f64(p))
    sign, mag = p & 0x8000, p & 0x7FFF
    up = np.where(mag + 1 < inf_mag, sign | (mag + 1), -1)
    down = np.where(mag > 0, sign | (mag - 1), (sign ^ 0x8000) | 1)
    for neighbour in (up, down):
        ok = neighbour >= 0
        other = np.abs(x[ok] - to_f64(neighbour[ok]))
        assert np.all(dist[ok] <= other), f"not nearest: {x[ok][dist[ok] > other][:5]}"
        ties = dist[ok] == other
        assert np.all(p[ok][ties] % 2 == 0), f"tie not even: {x[ok][ties & (p[ok] % 2 == 1)]}"


def random_and_tie_values(rng, to_f64, max_mag, exp_range):
    """Random magnitudes over ``exp_range`` (powers of two), exact midpoints of
    adjacent patterns and midpoints nudged by 2**-35 (relative) both ways."""
    n = 3000
    values = 2.0 ** rng.uniform(*exp_range, n) * (1 + rng.random(n))
    lo = rng.integers(0, max_mag, n)
    mids = (to_f64(lo) + to_f64(lo + 1)) / 2
    nudged = np.concatenate([mids * (1 + 2.0**-35), mids * (1 - 2.0**-35)])
    all_values = np.concatenate([values, mids, nudged])
    return all_values * rng.choice([-1.0, 1.0], all_values.size)


def encode_via_head(values, weight_dtype):
    """Store ``values`` as the projection weight of a head; its stored bits."""
    W = np.asarray(values).reshape(-1, 1)
    head = DraftHead(W, np.zeros(W.shape[0], W.dtype), np.ones((1, W.shape[0]), W.dtype),
                     weight_dtype=weight_dtype)
    data = head.stored_arrays()["projection.weight"].ravel()
    return data.view(np.uint16) if weight_dtype == "float16" else data


@pytest.mark.parametrize("input_dtype", [np.float32, np.float64])
def test_bfloat16_is_nearest_ties_to_even(input_dtype):
    rng = np.random.default_rng(104)
    values = random_and_tie_values(rng, bf16_to_f64, 0x7F7E, (-140, 126))
    values = values.astype(input_dtype)
    check_nearest_even(values, encode_via_head(values, "bfloat16"), bf16_to_f64, 0x7F80)


# (float64 input, expected bfloat16 pattern)
BF16_CASES = [
    (1 + 2**-8, 0x3F80), (1 + 3 * 2**-8, 0x3F82), (1 + 2**-8 + 2**-30, 0x3F81),
    (-(1 + 2**-8 + 2**-30), 0xBF81), (1 + 2**-8 - 2**-30, 0x3F80),
    (2.0**-133, 0x0001), (1.5 * 2**-133, 0x0002), (2.0**-134, 0x0000),
    (2.0**-134 + 2**-180, 0x0001), (-(2.0**-134 + 2**-180), 0x8001), (1e-50, 0x0000),
    (2.0**-127 * 1.25, 0x0050), (0.0, 0x0000), (-0.0, 0x8000), (-2.5, 0xC020),
    (float(np.uint32(0x7F7F7FFF).view(np.float32)), 0x7F7F),
]


def test_bfloat16_edge_cases_from_float64_and_float32():
    x = np.array([c[0] for c in BF16_CASES])
    expected = np.array([c[1] for c in BF16_CASES], np.uint16)
    got = encode_via_head(x, "bfloat16")
    assert [hex(v) for v in got] == [hex(v) for v in expected]
    # As float32 the 2**-30 / 2**-180 parts are gone: exact ties, to even.
    got32 = encode_via_head(x.astype(np.float32), "bfloat16")
    assert hex(got32[2]) == "0x3f80" and hex(got32[3]) == "0xbf80"
    assert hex(got32[8]) == "0x0" and hex(got32[9]) == "0x8000"
    check_nearest_even(x.astype(np.float32), got32, bf16_to_f64, 0x7F80)


def test_bfloat16_range_ends_at_the_tie_with_infinity():
    tie = float(np.uint32(0x7F7F8000).view(np.float32))  # halfway to 2**128
    below = encode_via_head(np.array([np.nextafter(tie, 0.0)]), "bfloat16")
    assert below.tolist() == [0x7F7F]
    for value in (tie, -tie, 3.4e38, float(np.finfo(np.float32).max)):
        with pytest.raises(ValueError, match="bfloat16"):
            DraftHead(np.array([[value]]), [0.0], [[1.0]], weight_dtype="bfloat16")


@pytest.mark.parametrize("input_dtype", [np.float32, np.float64])
def test_float16_is_numpy_float16_and_nearest_even(input_dtype):
    rng = np.random.default_rng(105)
    values = random_and_tie_values(rng, f16_to_f64, 0x7BFE, (-26, 14.9))
    extra = [1 + 2**-11, 1 + 2**-11 + 2**-40, 6e-8, 2.0**-25, 2.0**-25 + 2**-60, -3e-5,
             65519.0, -65504.0]
    values = np.concatenate([values, extra]).astype(input_dtype)
    bits = encode_via_head(values, "float16")
    np.testing.assert_array_equal(bits, values.astype(np.float16).view(np.uint16))
    check_nearest_even(values, bits, f16_to_f64, 0x7C00)
    if input_dtype is np.float64:  # no double rounding through float32
        assert bits[-7] == 0x3C01 and bits[-4] == 0x0001
    for big in (65520.0, 1e5, -1e5):
        with pytest.raises(ValueError, match="float16"):
            DraftHead([[big]], [0.0], [[1.0]], weight_dtype="float16")


def test_int8_is_symmetric_per_row():
    rng = np.random.default_rng(106)
    W = rng.standard_normal((8, 37)) * np.array([1, 1e-3, 1e3, 1, 1, 1, 1, 1])[:, None]
    W[3] = 0.0
    W[4] = 0.0
    W[4, 5] = -2.5                           # a single (negative) nonzero
    W[5] = np.round(np.linspace(-127, 127, 37))  # integers: exact
    W[6, 0] = -abs(W[6]).max() * 2           # negative maximum
    head = DraftHead(W, np.zeros(8), W[:, :8].T.copy(), weight_dtype="int8")
    stored = head.stored_arrays()
    for q, scale, w in [(stored["projection.weight"], stored["projection.weight_scale"], W),
                        (stored["lm_head.weight"], stored["lm_head.weight_scale"],
                         W[:, :8].T)]:
        assert q.dtype == np.int8 and scale.dtype == np.float32 and scale.shape == (len(w),)
        q64, s64 = q.astype(np.float64), scale.astype(np.float64)
        np.testing.assert_array_equal(scale, [np.float32(np.abs(r).max() / 127) for r in w])
        assert np.all(np.abs(q64) <= 127)
        nonzero = np.abs(w).max(axis=1) > 0
        np.testing.assert_array_equal(np.abs(q64).max(axis=1)[nonzero], 127)
        np.testing.assert_array_equal(q64[~nonzero], 0)
        np.testing.assert_array_equal(scale[~nonzero], 0)
        err = np.abs(w - q64 * s64[:, None])
        assert np.all(err <= s64[:, None] * (0.5 + 1e-6)), err.max()
    np.testing.assert_array_equal(stored["projection.weight"][5], np.round(W[5]))
    np.testing.assert_array_equal(stored["projection.weight"][4],
                                  np.where(np.arange(37) == 5, -127, 0))


def test_int8_all_zero_rows_give_finite_outputs():
    rng = np.random.default_rng(107)
    W, b, L = random_head(rng, 12, 9, 40)
    W[2] = 0.0
    L[[0, 7, 39]] = 0.0
    head = DraftHead(W, b, L, weight_dtype="int8")
    for shape in [(12,), (4, 12)]:
        hidden = rng.standard_normal(shape)
        result = full(head, hidden, top_k=5)
        assert np.isfinite(result.logits).all() and np.isfinite(result.probs).all()
        np.testing.assert_array_equal(result.logits[..., [0, 7, 39]], 0.0)
        check_result(result, head_reference(head, hidden), 5)


# ---------------------------------------------------------------------------
# 4. Bad input.
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("position", [0, 1, 2], ids=["W", "b", "L"])
@pytest.mark.parametrize("weight_dtype", LOW)
def test_non_finite_weights_are_rejected(weight_dtype, position, bad):
    args = list(random_head(np.random.default_rng(108), 6, 4, 9))
    args[position][-1, ...] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        DraftHead(*args, weight_dtype=weight_dtype)


@pytest.mark.parametrize("big", [1e39, 1e41])
def test_int8_weights_beyond_float32_are_rejected(big):
    W, b, L = random_head(np.random.default_rng(109), 4, 5, 7)
    W[0, 0] = big
    with pytest.raises(ValueError, match="too large for int8"):
        DraftHead(W, b, L, weight_dtype="int8")


def test_bad_weight_dtype_and_dtype_arguments():
    W, b, L = random_head(np.random.default_rng(110), 4, 5, 7)
    for bad in ("float8", "int4", "", "bfloat", np.int16):
        with pytest.raises(ValueError, match="weight_dtype"):
            DraftHead(W, b, L, weight_dtype=bad)
    for weight_dtype in LOW:
        with pytest.raises(TypeError):
            DraftHead(W, b, L, dtype=np.float64, weight_dtype=weight_dtype)
        assert DraftHead(W, b, L, dtype=np.float32, weight_dtype=weight_dtype).dtype == np.float32
    with pytest.raises(TypeError):
        DraftHead(W, b, L, dtype=np.float32, weight_dtype="float64")
    assert DraftHead(W, b, L, weight_dtype="bf16").weight_dtype == "bfloat16"
    assert DraftHead(W, b, L, weight_dtype="fp16").weight_dtype == "float16"


def _bits(pattern):
    def change(array):
        array = np.array(array)
        array.view(np.uint16).flat[3] = pattern
        return array
    return change


def _scale(value):
    def change(scales):
        scales = np.array(scales)
        scales[1] = value
        return scales
    return change


def _case(weight_dtype, argument, change, error, what, marks=()):
    return pytest.param(weight_dtype, argument, change, error, marks=marks,
                        id=f"{weight_dtype}-{argument}-{what}")


FROM_STORED_ERRORS = [
    _case("bfloat16", "projection_weight", lambda a: a.astype(np.float32), TypeError, "f32"),
    _case("float16", "lm_head_weight", lambda a: a.astype(np.float32), TypeError, "f32"),
    _case("int8", "lm_head_weight", lambda a: a.astype(np.int16), TypeError, "int16"),
    _case("bfloat16", "lm_head_weight", _bits(0x7FC0), ValueError, "nan"),
    _case("bfloat16", "projection_weight", _bits(0xFF80), ValueError, "-inf"),
    _case("float16", "lm_head_weight", _bits(0x7E00), ValueError, "nan"),
    _case("float16", "projection_weight", _bits(0x7C00), ValueError, "inf"),
    _case("int8", "lm_head_scales", lambda s: s[:-1], ValueError, "shape"),
    _case("int8", "lm_head_scales", _scale(-1.0), ValueError, "negative"),
    _case("int8", "lm_head_scales", _scale(np.nan), ValueError, "nan"),
    _case("int8", "lm_head_scales", _scale(np.inf), ValueError, "inf"),
    _case("int8", "projection_scales", lambda s: None, ValueError, "missing"),
    _case("bfloat16", "lm_head_scales", lambda s: np.ones(9, np.float32), ValueError, "given"),
    _case("float16", "projection_bias", lambda b: b.astype(np.float64), TypeError, "f64"),
    _case("int8", "projection_bias", lambda b: b * np.nan, ValueError, "nan"),
    _case("bfloat16", "projection_bias", lambda b: b[:3], ValueError, "shape"),
    _case("int8", "lm_head_scales", _scale(3e38), ValueError, "overflow"),
]


@pytest.mark.parametrize("weight_dtype, argument, change, error", FROM_STORED_ERRORS)
def test_from_stored_rejects_bad_arrays(weight_dtype, argument, change, error):
    head = DraftHead(*random_head(np.random.default_rng(111), 6, 4, 9),
                     weight_dtype=weight_dtype)
    kwargs = from_stored_kwargs(head.stored_arrays())
    DraftHead.from_stored(weight_dtype, **kwargs)  # unchanged: accepted
    kwargs[argument] = change(kwargs.get(argument))
    with pytest.raises(error):
        DraftHead.from_stored(weight_dtype, **kwargs)


# ---------------------------------------------------------------------------
# 5. Conversions, sizes, round trips, hidden casts.
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("weight_dtype", LOW)
def test_to_equals_direct_construction(weight_dtype):
    rng = np.random.default_rng(112)
    for dtype in (np.float32, np.float64):
        W, b, L = random_head(rng, 13, 11, 300, dtype)
        base = DraftHead(W, b, L)
        converted = base.to(weight_dtype)
        assert converted.weight_dtype == weight_dtype and converted.dtype == np.float32
        assert_same_stored(converted, DraftHead(W, b, L, weight_dtype=weight_dtype))
        assert converted.to(weight_dtype) is converted
        assert base.to(dtype) is base and base.to(np.dtype(dtype).name) is base
    alias = {"bfloat16": "bf16", "float16": "fp16", "int8": "int8"}[weight_dtype]
    assert converted.to(alias) is converted


def test_nbytes():
    d_model, d_proj, vocab = 64, 48, 500
    W, b, L = random_head(np.random.default_rng(113), d_model, d_proj, vocab)
    n_weights = W.size + L.size
    expected = {"float64": 8 * (n_weights + d_proj), "float32": 4 * (n_weights + d_proj),
                "bfloat16": 2 * n_weights + 4 * d_proj, "float16": 2 * n_weights + 4 * d_proj,
                "int8": n_weights + 4 * (d_proj + vocab) + 4 * d_proj}
    heads = {name: DraftHead(W, b, L, weight_dtype=name) for name in ALL}
    for name, head in heads.items():
        assert head.weight_dtype == name and head.nbytes == expected[name], name
    assert heads["float32"].nbytes / heads["bfloat16"].nbytes > 1.95
    assert heads["float32"].nbytes / heads["int8"].nbytes > 3.5


@pytest.mark.parametrize("weight_dtype", ALL)
def test_from_stored_and_pickle_round_trips_are_bit_exact(weight_dtype):
    rng = np.random.default_rng(114)
    head = DraftHead(*random_head(rng, 21, 13, 77, lm_scale=3.0), weight_dtype=weight_dtype)
    hidden = rng.standard_normal((3, 21)).astype(head.dtype)
    expected = full(head, hidden, top_k=4)
    arrays = head.stored_arrays()
    assert all(not a.flags.writeable for a in arrays.values())
    for copy in (DraftHead.from_stored(weight_dtype, **from_stored_kwargs(arrays)),
                 pickle.loads(pickle.dumps(head))):
        assert copy.weight_dtype == weight_dtype and copy.dtype == head.dtype
        assert copy.nbytes == head.nbytes
        assert_same_stored(copy, head)
        assert_same_results(full(copy, hidden, top_k=4), expected)


@pytest.mark.parametrize("weight_dtype", LOW)
def test_float64_hidden_is_cast_to_float32(weight_dtype):
    rng = np.random.default_rng(115)
    head = DraftHead(*random_head(rng, 10, 9, 50), weight_dtype=weight_dtype)
    hidden = rng.standard_normal((4, 10))  # float64, not float32-exact
    got = full(head, hidden, top_k=3)
    assert got.logits.dtype == np.float32 and got.token_probs.dtype == np.float32
    assert_same_results(got, full(head, hidden.astype(np.float32), top_k=3))
    assert_same_results(full(head, hidden[1].tolist(), top_k=3),
                        full(head, hidden[1].astype(np.float32), top_k=3))


# ---------------------------------------------------------------------------
# 6. compare().
# ---------------------------------------------------------------------------

def test_compare_identical_and_permuted_heads():
    rng = np.random.default_rng(116)
    W, b, L = random_head(rng, 10, 9, 50, lm_scale=3.0)
    head = DraftHead(W, b, L, weight_dtype="int8")
    hidden = rng.standard_normal((100, 10))
    for other in (head, pickle.loads(pickle.dumps(head))):
        c = eagle_fast.compare(head, other, hidden, top_k=5)
        assert (c.n_states, c.k) == (100, 5)
        assert c.top1_agreement == 1.0 and c.topk_overlap == 1.0
        assert c.max_abs_confidence_delta == 0.0 and abs(c.mean_kl) < 1e-9
    permuted = DraftHead(W, b, L[rng.permutation(50)], weight_dtype="int8")
    c = eagle_fast.compare(head, permuted, hidden, top_k=5)
    assert c.top1_agreement < 0.2 and c.topk_overlap < 0.4 and c.mean_kl > 0.1


def _log_softmax(logits):
    z = logits - logits.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


@pytest.mark.parametrize("T", [1.0, 0.5])
def test_compare_metrics_match_a_hand_computation(T):
    rng = np.random.default_rng(118)
    W, b, L = random_head(rng, 3, 4, 6, lm_scale=3.0)
    ref_head = DraftHead(W.astype(np.float32), b.astype(np.float32), L.astype(np.float32))
    other = DraftHead(W, b, L + 0.7 * rng.standard_normal(L.shape), weight_dtype="bfloat16")
    hidden = rng.standard_normal((70, 3))  # more than one chunk of 64 states
    k = 3
    la = ref_head.predict(hidden, temperature=T, return_logits=True).logits.astype(np.float64)
    lb = other.predict(hidden, temperature=T, return_logits=True).logits.astype(np.float64)
    ta, tb = stable_topk(la, k), stable_topk(lb, k)
    log_pa, log_pb = _log_softmax(la), _log_softmax(lb)
    top1 = np.mean(ta[:, 0] == tb[:, 0])
    overlap = np.mean([len(set(a) & set(b_)) / k for a, b_ in zip(ta, tb)])
    conf_a = np.exp(np.take_along_axis(log_pa, ta[:, :1], axis=1))
    conf_b = np.exp(np.take_along_axis(log_pb, tb[:, :1], axis=1))
    kl = np.mean(np.sum(np.exp(log_pa) * (log_pa - log_pb), axis=1))
    assert 0 < top1 < 1 and 0 < overlap < 1 and kl > 0  # a non-trivial case

    c = eagle_fast.compare(ref_head, other, hidden, top_k=k, temperature=T)
    assert (c.n_states, c.k) == (70, k)
    assert c.top1_agreement == pytest.approx(top1, abs=1e-12)
    assert c.topk_overlap == pytest.approx(overlap, abs=1e-12)
    assert c.max_abs_confidence_delta == pytest.approx(np.abs(conf_a - conf_b).max(),
                                                       abs=1e-6)
    assert c.mean_kl == pytest.approx(kl, rel=1e-9, abs=1e-12)


def test_compare_shapes():
    rng = np.random.default_rng(119)
    W, b, L = random_head(rng, 5, 4, 20)
    head = DraftHead(W, b, L, weight_dtype="float16")
    other = head.to("int8")
    hidden = rng.standard_normal((3, 5))
    one = eagle_fast.compare(head, other, hidden[0], top_k=2)
    assert one == eagle_fast.compare(head, other, hidden[:1], top_k=2)
    assert one.n_states == 1
    with pytest.raises(ValueError, match="differ in shape"):
        eagle_fast.compare(head, DraftHead(W, b, L[:19]), hidden)
    for bad in (np.zeros((2, 3, 5)), np.zeros((0, 5)), np.zeros((3, 6))):
        with pytest.raises(ValueError):
            eagle_fast.compare(head, other, bad)


# ---------------------------------------------------------------------------
# 7. Property: the top-1 token is the reference's first argmax.
# ---------------------------------------------------------------------------

@st.composite
def small_problems(draw):
    return (draw(st.sampled_from(LOW)), draw(st.integers(1, 12)), draw(st.integers(1, 12)),
            draw(st.integers(1, 60)), draw(st.one_of(st.none(), st.integers(1, 6))),
            draw(st.integers(0, 2**32 - 1)), draw(st.sampled_from([0.01, 1.0, 30.0])),
            draw(st.sampled_from([0.0, 1.0, 0.3])))


@given(small_problems())
def test_top1_is_the_reference_argmax_property(problem):
    weight_dtype, d_model, d_proj, vocab, batch, seed, scale, T = problem
    rng = np.random.default_rng(seed)
    W, b, L = random_head(rng, d_model, d_proj, vocab, lm_scale=scale)
    head = DraftHead(W, b, L, weight_dtype=weight_dtype)
    hidden = rng.standard_normal((batch or 1, d_model)) * scale
    result = full(head, hidden if batch else hidden[0], temperature=T)
    ref = head_reference(head, hidden, T)
    tol = LOGIT_RTOL * ref["logit_scale"].max(axis=1)
    top = np.atleast_1d(result.predicted_token)
    for i, logits in enumerate(ref["logits"]):
        if vocab > 1:
            second, first = np.sort(logits)[-2:]
            if first - second <= 2 * tol[i]:
                continue
        assert top[i] == np.argmax(logits)
    check_result(result, ref if batch else {n: v[0] for n, v in ref.items()}, 1)
