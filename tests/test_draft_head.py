"""DraftHead / predict against the precise float64 reference, on every backend."""

from __future__ import annotations

import math
import pickle
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import eagle_fast
from eagle_fast import DraftHead, DraftResult, predict
from reference import float64_reference, stable_topk
from support import random_head

DTYPES = [np.float64, np.float32]
DTYPE_IDS = ["float64", "float32"]
PARALLEL_BYTES = 256 * 1024

# Tolerances.  Logits: a multiple of the sum of |terms| behind each logit
# (float64 ~1e-13; float32 accumulates in float32).  Probabilities: float64
# to rtol 1e-12 (more where the logits' own tolerance is larger), float32 to
# ~1e-5.
LOGIT_RTOL = {np.float64: 1e-13, np.float32: 1e-5}


def as_dtype(arrays, dtype):
    return tuple(np.asarray(a).astype(dtype) for a in arrays)


def reference_for(head: DraftHead, hidden, temperature):
    """Reference on exactly the values the head computes with (the head's
    stored weights and the hidden state cast to its dtype)."""
    hidden = np.asarray(hidden).astype(head.dtype)
    return float64_reference(hidden, head.projection_weight, head.projection_bias,
                             head.lm_head_weight, temperature)


def check_against_reference(head: DraftHead, hidden, result: DraftResult, temperature=1.0,
                            top_k=None, ref=None):
    """result (with logits and probs) agrees with the reference (computed here
    unless given); tokens are the stable top-k of the result's own logits and
    agree with the reference's up to the logit tolerance; token_probs are the
    probs at the tokens."""
    dtype = head.dtype.type
    if ref is None:
        ref = reference_for(head, hidden, temperature)
    logit_tol = LOGIT_RTOL[dtype] * ref["logit_scale"]
    assert result.logits is not None and result.probs is not None
    assert result.logits.dtype == head.dtype and result.probs.dtype == head.dtype
    err = np.abs(result.logits.astype(np.float64) - ref["logits"])
    assert np.all(err <= logit_tol), (
        f"logits off by {err.max():.3g} (tolerance {logit_tol.ravel()[err.argmax()]:.3g})")

    probs = result.probs.astype(np.float64)
    # d(p_i)/p_i is at most the spread of the logit errors.
    spread = 2 * np.max(logit_tol, axis=-1, keepdims=True)
    if dtype is np.float64:
        rtol, atol = np.maximum(1e-12, spread), 1e-15
    else:
        rtol, atol = np.maximum(1e-5, spread), 1e-6
    err = np.abs(probs - ref["probs"])
    assert np.all(err <= atol + rtol * ref["probs"]), (
        f"probs off by {err.max():.3g} at {np.unravel_index(err.argmax(), err.shape)}")

    k = result.tokens.shape[-1] if top_k is None else top_k
    assert result.tokens.dtype == np.int64
    assert result.tokens.shape == result.logits.shape[:-1] + (k,)
    np.testing.assert_array_equal(result.tokens, stable_topk(result.logits, k))
    np.testing.assert_array_equal(
        result.token_probs, np.take_along_axis(result.probs, result.tokens, axis=-1))
    # The chosen tokens are the reference's best up to the tolerance.
    ref_sorted = -np.sort(-ref["logits"], axis=-1)[..., :k]
    chosen = np.take_along_axis(ref["logits"], result.tokens, axis=-1)
    assert np.all(chosen >= ref_sorted - 2 * np.max(logit_tol, axis=-1, keepdims=True))
    return ref


def full(head, hidden, **kwargs):
    return head.predict(hidden, return_logits=True, return_probs=True, **kwargs)


# ---------------------------------------------------------------------------
# Accuracy.
# ---------------------------------------------------------------------------

SHAPES = [(1, 1, 1), (1, 1, 2), (2, 3, 1), (5, 3, 2), (3, 5, 7), (13, 6, 11),
          (37, 13, 101), (64, 31, 1001), (16, 8, 64)]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_single_state_matches_reference(dtype, shape):
    rng = np.random.default_rng(sum(shape))
    d_model, d_proj, vocab = shape
    head = DraftHead(*random_head(rng, d_model, d_proj, vocab, dtype, lm_scale=3.0))
    assert head.dtype == np.dtype(dtype)
    for T in (1.0, 0.6, 0.0, 3.0):
        hidden = rng.standard_normal(d_model).astype(dtype)
        k = min(vocab, 5)
        result = full(head, hidden, temperature=T, top_k=k)
        assert result.logits.shape == (vocab,) and result.probs.shape == (vocab,)
        assert result.tokens.shape == (k,) and result.token_probs.shape == (k,)
        check_against_reference(head, hidden, result, T)
        assert type(result.predicted_token) is int
        assert type(result.confidence) is float
        assert result.predicted_token == int(result.tokens[0])
        assert result.confidence == float(result.token_probs[0])


HEAD_KINDS = ["serial", "parallel", "wide"]


def _batch_head(rng, dtype, kind):
    """Heads for the batch tests; no dimension is a multiple of 4 or 8 (row
    and column remainders of the blocked loops).

    * serial: under 256 KiB of weights (always one thread);
    * parallel: over 256 KiB (split over threads);
    * wide: d_model and d_proj over 1024 columns (column-blocked batches).
    """
    if kind == "wide":
        weights = random_head(rng, 1101, 1030, 37, dtype, lm_scale=3.0)
    elif kind == "parallel":
        vocab = 1003 if dtype is np.float64 else 2003
        weights = random_head(rng, 67, 45, vocab, dtype, lm_scale=3.0)
    else:
        weights = random_head(rng, 19, 11, 53, dtype, lm_scale=3.0)
    n_bytes = sum(w.nbytes for w in weights)
    assert (n_bytes >= PARALLEL_BYTES) == (kind != "serial")
    return DraftHead(*weights)


BATCH_SIZES = [1, 2, 3, 4, 5, 7, 8, 9, 17, 33]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("kind", HEAD_KINDS)
@pytest.mark.parametrize("num_threads", [1, 2])
def test_batches_match_reference(dtype, kind, num_threads):
    rng = np.random.default_rng(21)
    head = _batch_head(rng, dtype, kind)
    pool = rng.standard_normal((max(BATCH_SIZES), head.d_model)).astype(dtype)
    pool_ref = reference_for(head, pool, 0.8)
    for batch in BATCH_SIZES:
        order = rng.permutation(len(pool))[:batch]
        hidden = pool[order]
        result = full(head, hidden, top_k=3, temperature=0.8, num_threads=num_threads)
        assert result.tokens.shape == (batch, 3)
        assert result.logits.shape == (batch, head.vocab_size)
        check_against_reference(head, hidden, result, 0.8,
                                ref={name: value[order] for name, value in pool_ref.items()})
        assert isinstance(result.predicted_token, np.ndarray)
        assert result.predicted_token.shape == (batch,)
        assert result.confidence.shape == (batch,)
        np.testing.assert_array_equal(result.predicted_token, result.tokens[:, 0])
        np.testing.assert_array_equal(result.confidence, result.token_probs[:, 0])


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("kind", HEAD_KINDS)
def test_batch_rows_match_single_states_closely(dtype, kind):
    rng = np.random.default_rng(22)
    head = _batch_head(rng, dtype, kind)
    tol = 1e-12 if dtype is np.float64 else 1e-5
    for batch in (2, 5, 9):
        hidden = rng.standard_normal((batch, head.d_model)).astype(dtype)
        together = full(head, hidden, top_k=4)
        for i in range(batch):
            alone = full(head, hidden[i], top_k=4)
            np.testing.assert_allclose(together.logits[i], alone.logits, rtol=tol, atol=tol)
            np.testing.assert_allclose(together.probs[i], alone.probs, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_batch_rows_equal_single_states_exactly(dtype):
    """Row i of a batch result is exactly the result for state i alone (serial
    and parallel heads, 1 and 2 threads, batch sizes around the 4-state blocks)."""
    mismatches = []
    for kind in HEAD_KINDS:
        rng = np.random.default_rng(23)
        head = _batch_head(rng, dtype, kind)
        pool = rng.standard_normal((max(BATCH_SIZES), head.d_model)).astype(dtype)
        for num_threads in (1, 2):
            singles = [full(head, state, top_k=4, num_threads=num_threads) for state in pool]
            for batch in BATCH_SIZES:
                # A different mix of states for each batch size.
                order = rng.permutation(len(pool))[:batch]
                together = full(head, pool[order], top_k=4, num_threads=num_threads)
                for i in range(batch):
                    alone = singles[order[i]]
                    for name in ("tokens", "token_probs", "logits", "probs"):
                        a, b = getattr(together, name)[i], getattr(alone, name)
                        if not np.array_equal(a, b):
                            diff = np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))
                            mismatches.append(
                                f"{kind} head, "
                                f"{num_threads} thread(s), B={batch} row {i}: {name} "
                                f"(max diff {diff:.3g})")
    by_field = {name: sum(f": {name} " in m for m in mismatches)
                for name in ("tokens", "token_probs", "logits", "probs")}
    assert not mismatches, (f"batch rows differ from the single-state result (count by "
                            f"field: {by_field}), e.g. {mismatches[:4]}")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_thread_counts_agree(dtype):
    """num_threads changes how rows are split, not the results."""
    rng = np.random.default_rng(24)
    head = _batch_head(rng, dtype, "parallel")
    tol = 1e-12 if dtype is np.float64 else 1e-5
    for shape in [(head.d_model,), (1, head.d_model), (6, head.d_model)]:
        hidden = rng.standard_normal(shape).astype(dtype)
        results = [full(head, hidden, top_k=5, num_threads=n) for n in (1, 2, -1, None, 3)]
        for other in results[1:]:
            # Every dot product is computed the same way whatever the thread
            # count: logits and tokens are identical; the softmax sums are
            # combined per chunk, so probabilities may differ in the last bits.
            np.testing.assert_array_equal(other.logits, results[0].logits)
            np.testing.assert_array_equal(other.tokens, results[0].tokens)
            np.testing.assert_allclose(other.probs, results[0].probs, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_repeated_calls_are_deterministic(dtype):
    rng = np.random.default_rng(25)
    head = _batch_head(rng, dtype, "parallel")
    hidden = rng.standard_normal((5, head.d_model)).astype(dtype)
    first = full(head, hidden, top_k=7, num_threads=2)
    for _ in range(3):
        again = full(head, hidden, top_k=7, num_threads=2)
        for name in ("tokens", "token_probs", "logits", "probs"):
            np.testing.assert_array_equal(getattr(again, name), getattr(first, name))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_d_one_everywhere(dtype):
    head = DraftHead(np.array([[2.0]], dtype), np.array([0.5], dtype), np.array([[-3.0]], dtype))
    assert (head.d_model, head.d_proj, head.vocab_size) == (1, 1, 1)
    for hidden in (np.array([0.7], dtype), np.array([[0.7], [-2.0], [0.0]], dtype)):
        result = full(head, hidden)
        check_against_reference(head, hidden, result)
        np.testing.assert_array_equal(result.tokens, np.zeros(hidden.shape[:-1] + (1,)))
        np.testing.assert_array_equal(result.probs, np.ones(hidden.shape[:-1] + (1,)))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_lists_as_input(dtype):
    rng = np.random.default_rng(26)
    W, b, L = random_head(rng, 6, 4, 9, dtype)
    head = DraftHead(W.tolist(), b.tolist(), L.tolist(), dtype=dtype)
    assert head.dtype == np.dtype(dtype)
    hidden = rng.standard_normal((3, 6)).astype(dtype)
    result = full(head, hidden.tolist())
    check_against_reference(head, hidden, result)
    np.testing.assert_array_equal(result.probs, full(head, hidden).probs)


# ---------------------------------------------------------------------------
# Top-k.
# ---------------------------------------------------------------------------

def _tied_head(rng, dtype, vocab, d_model=9, d_proj=7, n_distinct=6):
    """An LM head whose rows repeat a few distinct rows: many exact ties."""
    W, b, _ = random_head(rng, d_model, d_proj, 1, dtype)
    distinct = rng.standard_normal((n_distinct, d_proj)).astype(dtype)
    L = distinct[rng.integers(0, n_distinct, vocab)]
    return DraftHead(W, b, L), L


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("k", [1, 2, 5, 63, 64, 65, 100, 299, 300])
def test_top_k_is_a_stable_sort_of_the_logits(dtype, k):
    rng = np.random.default_rng(27 + k)
    head = DraftHead(*random_head(rng, 12, 10, 300, dtype, lm_scale=3.0))
    for shape in [(12,), (1, 12), (5, 12)]:
        hidden = rng.standard_normal(shape).astype(dtype)
        result = full(head, hidden, top_k=k)
        assert result.tokens.shape == shape[:-1] + (k,)
        assert result.token_probs.dtype == np.dtype(dtype)
        check_against_reference(head, hidden, result, top_k=k)
        if k == 300:
            assert np.all(np.sort(result.tokens, axis=-1) == np.arange(300))
        # Without return_logits/probs: same tokens and token_probs, no arrays.
        light = head.predict(hidden, top_k=k)
        assert light.logits is None and light.probs is None
        np.testing.assert_array_equal(light.tokens, result.tokens)
        np.testing.assert_array_equal(light.token_probs, result.token_probs)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("k", [1, 3, 64, 65, 150])
def test_top_k_ties_go_to_the_lower_id(dtype, k):
    rng = np.random.default_rng(28)
    head, L = _tied_head(rng, dtype, vocab=150)
    for shape in [(9,), (4, 9)]:
        hidden = rng.standard_normal(shape).astype(dtype)
        result = full(head, hidden, top_k=k)
        np.testing.assert_array_equal(result.tokens, stable_topk(result.logits, k))
        # Expected from the distinct rows alone: group by the row each token copies.
        ref = reference_for(head, hidden, 1.0)["logits"]
        np.testing.assert_array_equal(result.tokens, stable_topk(ref, k))


IDENTICAL_ROW_SHAPES = [(5, 3, 9), (8, 7, 9), (76, 31, 9), (21, 39, 63), (57, 79, 61),
                        (8, 17, 1000), (64, 8, 20000)]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_identical_lm_head_rows_give_identical_logits(dtype):
    """Identical LM-head rows must give bit-identical logits -- otherwise the
    "ties go to the lower token id" rule (the spec's first index of the max)
    is broken: a later copy of the best row can win by a rounding error."""
    failures = []
    for d_model, d_proj, vocab in IDENTICAL_ROW_SHAPES:
        rng = np.random.default_rng(29)
        for trial in range(4):
            W, b, _ = random_head(rng, d_model, d_proj, 1, dtype)
            L = np.repeat(rng.standard_normal((1, d_proj)).astype(dtype), vocab, axis=0)
            head = DraftHead(W, b, L)
            for hidden_shape in [(d_model,), (3, d_model)]:
                hidden = rng.standard_normal(hidden_shape).astype(dtype)
                k = min(vocab, 4)
                result = full(head, hidden, top_k=k)
                logits = np.atleast_2d(result.logits)
                distinct = [np.unique(row).size for row in logits]
                tokens = np.atleast_2d(result.tokens)
                if distinct != [1] * logits.shape[0] or not np.array_equal(
                        tokens, np.broadcast_to(np.arange(k), tokens.shape)):
                    failures.append(
                        f"(d_model, d_proj, vocab)={(d_model, d_proj, vocab)} trial {trial}, "
                        f"hidden {hidden_shape}: {distinct} distinct logits per state, "
                        f"top-{k} tokens {tokens.tolist()}")
    assert not failures, (f"identical LM-head rows, {len(failures)} failing cases: "
                          + "; ".join(failures[:3]))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_all_zero_lm_head_is_uniform_token_zero(dtype):
    rng = np.random.default_rng(30)
    W, b, _ = random_head(rng, 8, 5, 1, dtype)
    for vocab in (1, 3, 64, 65, 20000):
        head = DraftHead(W, b, np.zeros((vocab, 5), dtype))
        for shape in [(8,), (3, 8)]:
            hidden = rng.standard_normal(shape).astype(dtype)
            k = min(vocab, 70)
            result = full(head, hidden, top_k=k)
            np.testing.assert_array_equal(result.logits, 0.0)
            rtol = 1e-6 if dtype is np.float32 else 1e-15
            np.testing.assert_allclose(result.probs, 1.0 / vocab, rtol=rtol)
            np.testing.assert_array_equal(result.tokens,
                                          np.broadcast_to(np.arange(k), result.tokens.shape))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("num_threads", [1, 2])
def test_top_k_across_parallel_chunks(dtype, num_threads):
    """A big vocab (parallel path): the best rows are spread over the thread
    chunks, with ties between chunks."""
    rng = np.random.default_rng(31)
    W, b, L = random_head(rng, 16, 8, 20000, dtype)
    hidden = rng.standard_normal((3, 16)).astype(dtype)
    x = reference_for(DraftHead(W, b, L), hidden[0], 1.0)["x"]
    best_row = (np.sign(x) * 2).astype(dtype)
    L = L.copy()
    planted = [19999, 0, 10000, 9999, 5, 15000]
    L[planted] = best_row
    head = DraftHead(W, b, L)
    assert head.projection_weight.nbytes + head.lm_head_weight.nbytes >= PARALLEL_BYTES
    for k in (1, 6, 10, 64, 65):
        result = full(head, hidden, top_k=k, num_threads=num_threads)
        check_against_reference(head, hidden, result, top_k=k)
        np.testing.assert_array_equal(result.tokens[0, :min(k, 6)], sorted(planted)[:k])
        single = full(head, hidden[0], top_k=k, num_threads=num_threads)
        np.testing.assert_array_equal(single.tokens[:min(k, 6)], sorted(planted)[:k])


# ---------------------------------------------------------------------------
# Temperature.
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_temperature_zero_equals_one(dtype):
    rng = np.random.default_rng(32)
    head = DraftHead(*random_head(rng, 10, 7, 70, dtype, lm_scale=3.0))
    for shape in [(10,), (4, 10)]:
        hidden = rng.standard_normal(shape).astype(dtype)
        for k in (1, 5, 65):
            zero = full(head, hidden, temperature=0.0, top_k=k)
            one = full(head, hidden, temperature=1.0, top_k=k)
            for int_zero in (full(head, hidden, temperature=0, top_k=k),):
                for name in ("tokens", "token_probs", "logits", "probs"):
                    np.testing.assert_array_equal(getattr(zero, name), getattr(one, name))
                    np.testing.assert_array_equal(getattr(int_zero, name), getattr(one, name))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("T", [0.5, 2.0, 1e-3, 7.3, 1e6, 1e300])
def test_temperature_scales_the_logits(dtype, T):
    rng = np.random.default_rng(33)
    head = DraftHead(*random_head(rng, 10, 7, 70, dtype, lm_scale=3.0))
    for shape in [(10,), (4, 10)]:
        hidden = rng.standard_normal(shape).astype(dtype)
        one = full(head, hidden)
        scaled = full(head, hidden, temperature=T, top_k=3)
        # Scaled logits are L x / T divided in float64, then rounded to the dtype.
        with np.errstate(over="ignore"):
            expected = (one.logits.astype(np.float64) / T).astype(dtype)
        np.testing.assert_array_equal(scaled.logits, expected)
        # Past float32's range L x / T underflows to 0: the reference's T = inf.
        beyond_dtype = T > float(np.finfo(dtype).max)
        check_against_reference(head, hidden, scaled, np.inf if beyond_dtype else T)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_small_temperature_sharpens_and_large_flattens(dtype):
    rng = np.random.default_rng(34)
    head = DraftHead(*random_head(rng, 10, 7, 70, dtype, lm_scale=3.0))
    hidden = rng.standard_normal(10).astype(dtype)
    cold = head.predict(hidden, temperature=1e-3)
    hot = full(head, hidden, temperature=1e6)
    assert cold.confidence == pytest.approx(1.0)
    np.testing.assert_allclose(hot.probs, 1 / 70, rtol=1e-4)
    assert cold.predicted_token == hot.predicted_token == head.predict(hidden).predicted_token


# ---------------------------------------------------------------------------
# The SiLU cut-off and huge pre-activations.
# ---------------------------------------------------------------------------

CUTOFF_BIASES = [500.0, -500.0, 499.9999, -499.9999, 1e4, -1e4, 501.0, -501.0,
                 math.nextafter(500.0, 0.0), math.nextafter(-500.0, 0.0), 1e30, -1e30,
                 40.0, -40.0, 0.0]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_huge_preactivations_match_reference(dtype):
    rng = np.random.default_rng(35)
    d_proj = len(CUTOFF_BIASES)
    bias = np.array(CUTOFF_BIASES, dtype)
    W = (rng.standard_normal((d_proj, 6)) * 1e-3).astype(dtype)
    # Keep the logits moderate: tiny weights on the huge activations.
    scale = np.where(np.abs(bias) > 1e3, 1e-33, 1e-3).astype(np.float64)
    L = (rng.standard_normal((37, d_proj)) * scale).astype(dtype)
    head = DraftHead(W, bias, L)
    for shape in [(6,), (5, 6)]:
        hidden = rng.standard_normal(shape).astype(dtype)
        result = full(head, hidden, top_k=4)
        check_against_reference(head, hidden, result)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("pre", [500.0, -500.0, 499.9999, -499.9999, 1e4, -1e4, 1e6, -1e6])
def test_cutoff_activation_exact(dtype, pre):
    """One projected unit whose pre-activation is exactly `pre` (W = 0): the
    LM head row of ones reads the activation back as the logit."""
    head = DraftHead(np.zeros((1, 3), dtype), np.array([pre], dtype),
                     np.array([[1.0], [0.0], [-1.0]], dtype))
    result = full(head, np.ones(3, dtype))
    v = float(np.asarray(pre, dtype))
    expected = v if v >= 500 else (0.0 if v <= -500 else v / (1 + math.exp(-v)))
    tol = 1e-15 if dtype is np.float64 else 1e-6
    assert result.logits[0] == pytest.approx(expected, rel=tol, abs=1e-300)
    assert result.logits[2] == pytest.approx(-expected, rel=tol, abs=1e-300)
    if v <= -500:
        assert result.logits[0] == 0.0 and not np.isnan(result.logits).any()
        np.testing.assert_allclose(result.probs, 1 / 3, rtol=1e-6)
        assert result.predicted_token == 0


# ---------------------------------------------------------------------------
# Property test over random small shapes.
# ---------------------------------------------------------------------------

@st.composite
def problems(draw):
    d_model = draw(st.integers(1, 9))
    d_proj = draw(st.integers(1, 9))
    vocab = draw(st.integers(1, 80))
    batch = draw(st.one_of(st.none(), st.integers(1, 10)))
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**32 - 1))
    scale = draw(st.sampled_from([0.01, 1.0, 10.0, 300.0]))
    T = draw(st.one_of(st.just(1.0), st.just(0.0), st.floats(0.05, 20.0)))
    k = draw(st.integers(1, vocab))
    threads = draw(st.sampled_from([None, 1, 2, -1]))
    return d_model, d_proj, vocab, batch, dtype, seed, scale, T, k, threads


@settings(max_examples=60, deadline=None)
@given(problems())
def test_matches_reference_property(problem):
    d_model, d_proj, vocab, batch, dtype, seed, scale, T, k, threads = problem
    rng = np.random.default_rng(seed)
    W, b, L = random_head(rng, d_model, d_proj, vocab, dtype)
    b = (b * scale).astype(dtype)
    head = DraftHead(W, b, L)
    shape = (d_model,) if batch is None else (batch, d_model)
    hidden = (rng.standard_normal(shape) * scale).astype(dtype)
    result = full(head, hidden, temperature=T, top_k=k, num_threads=threads)
    check_against_reference(head, hidden, result, T, top_k=k)


# ---------------------------------------------------------------------------
# Dtypes.
# ---------------------------------------------------------------------------

def test_float32_weights_stay_float32():
    rng = np.random.default_rng(40)
    head = DraftHead(*random_head(rng, 6, 4, 9, np.float32))
    assert head.dtype == np.float32
    result = full(head, rng.standard_normal(6))  # float64 hidden is cast
    for name in ("token_probs", "logits", "probs"):
        assert getattr(result, name).dtype == np.float32
    assert result.tokens.dtype == np.int64
    assert head.projection_weight.dtype == np.float32


@pytest.mark.parametrize("weight_dtype", [None, "float32", "float64", "bfloat16"])
def test_head_dtype_is_numpy_canonical_instance(weight_dtype):
    # predict's fast path tests ``hidden.dtype is head.dtype``: a head built
    # from arrays of an equal but distinct dtype instance (byte-order-normalised
    # ones are) must still hold NumPy's own instance, or every call takes the
    # slow path (it once cost 1.4 us of a 1.5 us call).
    rng = np.random.default_rng(45)
    for dtype in DTYPES:
        other_instance = np.dtype(dtype).newbyteorder("=")
        weights = [a.astype(other_instance) for a in random_head(rng, 6, 4, 9, dtype)]
        head = DraftHead(*weights, weight_dtype=weight_dtype)
        assert head.dtype is np.dtype(head.dtype.type)


def test_hidden_is_cast_to_the_head_dtype():
    rng = np.random.default_rng(41)
    for dtype in DTYPES:
        head = DraftHead(*random_head(rng, 6, 4, 9, dtype))
        hidden = rng.standard_normal((3, 6))
        expected = full(head, hidden.astype(dtype)).probs
        for given_hidden in (hidden, hidden.tolist(), hidden.astype(np.float32).astype(dtype)):
            got = full(head, given_hidden)
            assert got.probs.dtype == np.dtype(dtype)
            if given_hidden is hidden or isinstance(given_hidden, list):
                np.testing.assert_array_equal(got.probs, expected)
        for other in (hidden.astype(np.float16), hidden.astype(np.float32)):
            np.testing.assert_array_equal(full(head, other).probs,
                                          full(head, other.astype(dtype)).probs)
        ints = rng.integers(-3, 4, (3, 6))
        np.testing.assert_array_equal(full(head, ints).probs,
                                      full(head, ints.astype(dtype)).probs)
        np.testing.assert_array_equal(full(head, ints.astype(bool)).probs,
                                      full(head, ints.astype(bool).astype(dtype)).probs)


def test_integer_weights_become_float64():
    rng = np.random.default_rng(42)
    W = rng.integers(-2, 3, (4, 6))
    b = rng.integers(-2, 3, 4)
    L = rng.integers(-2, 3, (9, 4)).astype(np.int32)
    head = DraftHead(W, b, L)
    assert head.dtype == np.float64
    hidden = rng.standard_normal(6)
    check_against_reference(head, hidden, full(head, hidden))
    # Integer weights mixed with float32 take float32.
    head32 = DraftHead(W.astype(np.float32), b, L)
    assert head32.dtype == np.float32


def test_mixed_float_dtypes_raise_type_error():
    rng = np.random.default_rng(43)
    W, b, L = random_head(rng, 6, 4, 9)
    for args in [(W.astype(np.float32), b, L), (W, b.astype(np.float32), L),
                 (W, b, L.astype(np.float32))]:
        with pytest.raises(TypeError, match="dtype"):
            DraftHead(*args)
        with pytest.raises(TypeError):
            predict(rng.standard_normal(6), *args)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_dtype_argument_casts(dtype):
    rng = np.random.default_rng(44)
    W, b, L = random_head(rng, 6, 4, 9)
    mixed = (W.astype(np.float32), b, L)
    for spelling in (dtype, np.dtype(dtype), np.dtype(dtype).name):
        head = DraftHead(*mixed, dtype=spelling)
        assert head.dtype == np.dtype(dtype)
        assert head.lm_head_weight.dtype == np.dtype(dtype)
    head = DraftHead(*mixed, dtype=dtype)
    hidden = rng.standard_normal(6)
    result = full(head, hidden)
    assert result.probs.dtype == np.dtype(dtype)
    check_against_reference(head, hidden, result)
    # The cast head equals a head built from pre-cast weights.
    same = DraftHead(*as_dtype(mixed, dtype))
    np.testing.assert_array_equal(full(same, hidden).probs, result.probs)


@pytest.mark.parametrize("bad", [np.float16, np.int64, np.complex128, "U3", object, "float128"])
def test_bad_dtype_argument_raises_type_error(bad):
    rng = np.random.default_rng(45)
    try:
        np.dtype(bad)
    except TypeError:
        pytest.skip(f"{bad} is not a dtype here")
    with pytest.raises(TypeError):
        DraftHead(*random_head(rng, 6, 4, 9), dtype=bad)


def test_unsupported_float_weights_raise_unless_cast():
    rng = np.random.default_rng(46)
    W, b, L = random_head(rng, 6, 4, 9)
    with pytest.raises(TypeError, match="projection_weight"):
        DraftHead(W.astype(np.float16), b, L)
    assert DraftHead(W.astype(np.float16), b, L, dtype=np.float32).dtype == np.float32


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_float64_weights_that_overflow_float32_raise():
    W = np.ones((2, 3))
    W[1, 2] = 1e39
    with pytest.raises(ValueError, match="projection_weight"):
        DraftHead(W, np.zeros(2), np.ones((4, 2)), dtype=np.float32)


# ---------------------------------------------------------------------------
# Memory layouts.
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_non_native_byte_order_inputs(dtype):
    """Big-endian float arrays are float32/float64 data in another layout:
    they must work like native ones (as for hidden states and the spec
    function), not be rejected as an unsupported dtype."""
    rng = np.random.default_rng(49)
    weights = random_head(rng, 6, 4, 9, dtype)
    hidden = rng.standard_normal((2, 6)).astype(dtype)
    expected = full(DraftHead(*weights), hidden)
    swapped = [w.astype(w.dtype.newbyteorder(">" if np.little_endian else "<"))
               for w in weights]
    head = DraftHead(*swapped)
    assert head.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(full(head, hidden).probs, expected.probs)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_non_native_byte_order_hidden(dtype):
    rng = np.random.default_rng(48)
    head = DraftHead(*random_head(rng, 6, 4, 9, dtype))
    hidden = rng.standard_normal((2, 6)).astype(dtype)
    swapped = hidden.astype(hidden.dtype.newbyteorder(">" if np.little_endian else "<"))
    np.testing.assert_array_equal(full(head, swapped).probs, full(head, hidden).probs)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_non_contiguous_and_fortran_inputs(dtype):
    rng = np.random.default_rng(50)
    W, b, L = random_head(rng, 12, 6, 40, dtype)
    hidden = rng.standard_normal((5, 12)).astype(dtype)
    expected = full(DraftHead(W, b, L), hidden, top_k=3)

    W2 = np.zeros((6, 24), dtype)
    W2[:, ::2] = W
    b2 = np.zeros(12, dtype)
    b2[::2] = b
    L_f = np.asfortranarray(L)
    H2 = np.zeros((5, 24), dtype)
    H2[:, ::2] = hidden
    variants = [
        DraftHead(W2[:, ::2], b2[::2], L_f),
        DraftHead(np.asfortranarray(W), b, L[::-1][::-1]),
        DraftHead(W[::-1][::-1], b[::-1].copy()[::-1], np.asfortranarray(L)),
    ]
    for head in variants:
        for h in (H2[:, ::2], np.asfortranarray(hidden), hidden[::-1][::-1]):
            got = full(head, h, top_k=3)
            for name in ("tokens", "token_probs", "logits", "probs"):
                np.testing.assert_array_equal(getattr(got, name), getattr(expected, name))
        single = full(head, H2[2, ::2], top_k=3)
        np.testing.assert_array_equal(single.probs, full(DraftHead(W, b, L), hidden[2]).probs)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_read_only_inputs(dtype):
    rng = np.random.default_rng(51)
    arrays = [a.copy() for a in random_head(rng, 6, 4, 9, dtype)]
    hidden = rng.standard_normal((2, 6)).astype(dtype)
    expected = full(DraftHead(*arrays), hidden)
    for a in (*arrays, hidden):
        a.flags.writeable = False
    head = DraftHead(*arrays)
    got = full(head, hidden)
    np.testing.assert_array_equal(got.probs, expected.probs)
    np.testing.assert_array_equal(full(head, hidden[1]).probs, full(head, hidden[1].copy()).probs)


def test_inputs_are_not_modified_and_weights_are_read_only_views():
    rng = np.random.default_rng(52)
    arrays = random_head(rng, 6, 4, 9)
    copies = [a.copy() for a in arrays]
    hidden = rng.standard_normal(6)
    hidden_copy = hidden.copy()
    head = DraftHead(*arrays)
    head.predict(hidden, top_k=3, return_probs=True)
    for a, c in zip((*arrays, hidden), (*copies, hidden_copy)):
        np.testing.assert_array_equal(a, c)
    for name in ("projection_weight", "projection_bias", "lm_head_weight"):
        view = getattr(head, name)
        assert not view.flags.writeable
        with pytest.raises(ValueError):
            view[...] = 0


def test_outputs_are_fresh_arrays():
    rng = np.random.default_rng(53)
    head = DraftHead(*random_head(rng, 6, 4, 9))
    hidden = rng.standard_normal(6)
    first = full(head, hidden)
    kept = first.probs.copy()
    first.probs[:] = -1
    second = full(head, hidden)
    np.testing.assert_array_equal(second.probs, kept)


# ---------------------------------------------------------------------------
# Properties and the one-shot function.
# ---------------------------------------------------------------------------

def test_properties_and_repr(active_backend):
    rng = np.random.default_rng(54)
    head = DraftHead(*random_head(rng, 6, 4, 9, np.float32))
    assert (head.d_model, head.d_proj, head.vocab_size) == (6, 4, 9)
    assert head.dtype == np.dtype(np.float32)
    assert head.backend == active_backend[0]
    assert "DraftHead" in repr(head)
    result = head.predict(rng.standard_normal(6), top_k=2, return_probs=True)
    assert "DraftResult" in repr(result) and "probs" in repr(result)


@pytest.mark.parametrize("dtype", [None, np.float32, np.float64])
def test_one_shot_predict(dtype):
    rng = np.random.default_rng(55)
    W, b, L = random_head(rng, 8, 5, 30)
    hidden = rng.standard_normal((3, 8))
    kwargs = dict(temperature=0.7, top_k=4, return_logits=True, return_probs=True,
                  num_threads=1)
    got = predict(hidden, W, b, L, dtype=dtype, **kwargs)
    expected = DraftHead(W, b, L, dtype=dtype).predict(hidden, **kwargs)
    for name in ("tokens", "token_probs", "logits", "probs"):
        np.testing.assert_array_equal(getattr(got, name), getattr(expected, name))
    assert eagle_fast.predict is predict
    light = predict(hidden[0], W, b, L)
    assert light.logits is None and light.probs is None and light.tokens.shape == (1,)


def test_return_flags():
    rng = np.random.default_rng(56)
    head = DraftHead(*random_head(rng, 8, 5, 30))
    hidden = rng.standard_normal(8)
    both = full(head, hidden)
    only_logits = head.predict(hidden, return_logits=True)
    only_probs = head.predict(hidden, return_probs=True)
    assert only_logits.probs is None and only_probs.logits is None
    np.testing.assert_array_equal(only_logits.logits, both.logits)
    np.testing.assert_array_equal(only_probs.probs, both.probs)
    np.testing.assert_allclose(both.probs.sum(), 1.0, rtol=1e-14)


# ---------------------------------------------------------------------------
# The GIL is released: concurrent calls from Python threads.
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_concurrent_predict_from_two_threads(dtype):
    rng = np.random.default_rng(60)
    head = DraftHead(*random_head(rng, 256, 128, 4000, dtype, lm_scale=3.0))
    hiddens = [rng.standard_normal((3, 256)).astype(dtype) for _ in range(2)]
    expected = [full(head, h, top_k=5, num_threads=1) for h in hiddens]
    results: dict = {}
    errors: list = []
    barrier = threading.Barrier(2)

    def work(i):
        try:
            barrier.wait(timeout=30)
            out = []
            for _ in range(5):
                out.append(full(head, hiddens[i], top_k=5, num_threads=1))
            results[i] = out
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "predict calls did not finish"
    assert not errors, errors
    for i in range(2):
        for got in results[i]:
            for name in ("tokens", "token_probs", "logits", "probs"):
                np.testing.assert_array_equal(getattr(got, name), getattr(expected[i], name))
    check_against_reference(head, hiddens[0], expected[0])


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_pickled_head_predicts_the_same(dtype):
    rng = np.random.default_rng(62)
    head = DraftHead(*random_head(rng, 12, 5, 40, dtype))
    copy = pickle.loads(pickle.dumps(head))
    hidden = rng.standard_normal((3, 12)).astype(dtype)
    assert copy.dtype == head.dtype and copy.backend == head.backend
    for name in ("tokens", "token_probs", "logits", "probs"):
        np.testing.assert_array_equal(getattr(full(copy, hidden, top_k=3), name),
                                      getattr(full(head, hidden, top_k=3), name))


def test_gil_is_released_during_compute():
    """While one thread is inside a long predict call, another thread keeps
    running Python code: it must log times in the middle of that call."""
    if eagle_fast.backend != "compiled":
        pytest.skip("the compiled kernel's promise (NumPy decides for the fallback)")
    rng = np.random.default_rng(61)
    head = DraftHead(*random_head(rng, 512, 512, 8000, np.float32))
    hidden = rng.standard_normal((16, 512)).astype(np.float32)
    head.predict(hidden, num_threads=1)  # warm-up
    call = {}

    def work():
        call["start"] = time.perf_counter()
        head.predict(hidden, num_threads=1)
        call["end"] = time.perf_counter()

    ticks = []
    worker = threading.Thread(target=work)
    worker.start()
    while worker.is_alive():
        ticks.append(time.perf_counter())
    worker.join()
    quarter = (call["end"] - call["start"]) / 4
    inside = [t for t in ticks if call["start"] + quarter < t < call["end"] - quarter]
    assert inside, "no Python code ran while predict was computing: the GIL was held"


# ---------------------------------------------------------------------------
# Overflow.
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_overflowing_logits_raise_never_nan(dtype):
    rng = np.random.default_rng(70)
    half_max = np.finfo(dtype).max / 2
    L = random_head(rng, 4, 3, 7, dtype)[2]
    hidden = np.full(4, half_max, dtype)
    for sign in (1, -1):  # pre-activation -> +inf (x = inf) or -inf (x = NaN)
        head = DraftHead(sign * np.ones((3, 4), dtype), np.zeros(3, dtype), L)
        for batch in (hidden, hidden[None],
                      np.stack([rng.standard_normal(4).astype(dtype), hidden])):
            with pytest.raises((FloatingPointError, ValueError)):
                head.predict(batch, return_probs=True, return_logits=True)
            with pytest.raises((FloatingPointError, ValueError)):
                head.predict(batch, top_k=7)
            with pytest.raises((FloatingPointError, ValueError)):
                head.predict(batch)
    # Finite activations, logits that overflow.
    huge = np.finfo(dtype).max / 4
    head = DraftHead(np.eye(3, 4, dtype=dtype), np.zeros(3, dtype),
                     np.full((5, 3), huge, dtype))
    for T in (1.0, 1e-3):
        with pytest.raises((FloatingPointError, ValueError)):
            head.predict(np.full(4, 10, dtype), temperature=T, return_probs=True)
        with pytest.raises((FloatingPointError, ValueError)):
            head.predict(np.full((2, 4), 10, dtype), temperature=T, top_k=5)
    # Small temperature pushes finite logits over the edge.
    head = DraftHead(np.eye(3, 4, dtype=dtype), np.zeros(3, dtype),
                     np.full((5, 3), np.finfo(dtype).max / 1e3, dtype))
    head.predict(np.ones(4, dtype) * 0.1)
    with pytest.raises((FloatingPointError, ValueError)):
        head.predict(np.ones(4, dtype), temperature=1e-10)


# ---------------------------------------------------------------------------
# Bad input.
# ---------------------------------------------------------------------------

def _weights(rng=None, dtype=np.float64):
    rng = rng or np.random.default_rng(80)
    return random_head(rng, 6, 4, 9, dtype)


WEIGHT_NAMES = ["projection_weight", "projection_bias", "lm_head_weight"]


@pytest.mark.parametrize("position", range(3), ids=WEIGHT_NAMES)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_non_finite_weights_raise_at_construction(position, bad, dtype):
    args = [a.copy() for a in _weights(dtype=dtype)]
    args[position].flat[-1] = bad
    with pytest.raises(ValueError, match=WEIGHT_NAMES[position]):
        DraftHead(*args)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_non_finite_hidden_raises_at_predict(bad, dtype):
    head = DraftHead(*_weights(dtype=dtype))
    hidden = np.ones((4, 6), dtype)
    hidden[2, 3] = bad
    for h in (hidden, hidden[2], hidden.astype(np.float64), hidden.tolist()):
        for kwargs in ({}, {"top_k": 9}, {"return_probs": True}):
            with pytest.raises(ValueError, match="hidden"):
                head.predict(h, **kwargs)
    # The head still works afterwards.
    head.predict(np.ones(6, dtype))


@pytest.mark.parametrize("hidden_shape", [(5,), (7,), (2, 5), (6, 1), (3, 2, 6), (), (0, 6),
                                          (0,), (2, 0)])
def test_hidden_shape_mismatch_raises(hidden_shape):
    head = DraftHead(*_weights())
    with pytest.raises(ValueError, match="hidden"):
        head.predict(np.ones(hidden_shape))


@pytest.mark.parametrize("position,shape,name", [
    (0, (4,), "projection_weight"),
    (0, (4, 6, 1), "projection_weight"),
    (1, (5,), "projection_bias"),
    (1, (3,), "projection_bias"),
    (1, (4, 1), "projection_bias"),
    (1, (), "projection_bias"),
    (2, (9, 5), "lm_head_weight"),
    (2, (9, 3), "lm_head_weight"),
    (2, (9,), "lm_head_weight"),
    (2, (4, 9), "lm_head_weight"),
])
def test_weight_shape_mismatch_raises_naming_the_argument(position, shape, name):
    args = list(_weights())
    args[position] = np.ones(shape)
    with pytest.raises(ValueError, match=name):
        DraftHead(*args)


@pytest.mark.parametrize("position,shape", [
    (0, (0, 6)), (0, (4, 0)), (0, (0, 0)), (1, (0,)), (2, (0, 4)), (2, (9, 0)),
])
def test_empty_weights_raise(position, shape):
    args = list(_weights())
    args[position] = np.ones(shape)
    with pytest.raises(ValueError):
        DraftHead(*args)


def test_fully_empty_head_raises():
    with pytest.raises(ValueError):
        DraftHead(np.ones((0, 0)), np.ones(0), np.ones((0, 0)))
    with pytest.raises(ValueError):
        DraftHead([[]], [], [[]])


def test_ragged_lists_raise_value_error():
    W, b, L = (a.tolist() for a in _weights())
    ragged_W = [row[:] for row in W]
    ragged_W[1] = ragged_W[1][:-1]
    ragged_L = [row[:] for row in L]
    ragged_L[-1] = ragged_L[-1] + [1.0]
    with pytest.raises(ValueError):
        DraftHead(ragged_W, b, L)
    with pytest.raises(ValueError):
        DraftHead(W, b, ragged_L)
    with pytest.raises(ValueError):
        DraftHead(W, [b[0], [b[1]], b[2], b[3]], L)
    head = DraftHead(W, b, L)
    with pytest.raises(ValueError, match="hidden"):
        head.predict([[1.0] * 6, [1.0] * 5])


def _non_numeric(array: np.ndarray, kind: str) -> np.ndarray:
    if kind in ("complex", "str", "bytes"):
        return array.astype(kind)
    out = array.astype(object)
    out.flat[-1] = {"object-None": None, "object-str": "1.0", "object-complex": 1j,
                    "object-list": [1.0]}[kind]
    return out


NON_NUMERIC_KINDS = ["complex", "str", "bytes", "object-None", "object-str",
                     "object-complex", "object-list"]


@pytest.mark.parametrize("position", range(3), ids=WEIGHT_NAMES)
@pytest.mark.parametrize("kind", NON_NUMERIC_KINDS)
def test_non_numeric_weights_raise_type_error(position, kind):
    args = list(_weights())
    args[position] = _non_numeric(args[position], kind)
    with pytest.raises(TypeError, match=WEIGHT_NAMES[position]):
        DraftHead(*args)


@pytest.mark.parametrize("kind", NON_NUMERIC_KINDS)
def test_non_numeric_hidden_raises_type_error(kind):
    head = DraftHead(*_weights())
    with pytest.raises(TypeError, match="hidden"):
        head.predict(_non_numeric(np.ones(6), kind))
    with pytest.raises(TypeError, match="hidden"):
        head.predict(_non_numeric(np.ones((2, 6)), kind))


def test_object_arrays_of_numbers_are_numbers():
    rng = np.random.default_rng(83)
    weights = _weights(rng)
    hidden = rng.standard_normal((2, 6))
    expected = full(DraftHead(*weights), hidden)
    head = DraftHead(*(w.astype(object) for w in weights))
    assert head.dtype == np.float64
    np.testing.assert_array_equal(full(head, hidden.astype(object)).probs, expected.probs)
    # Python ints beyond int64 are numbers too.
    big = DraftHead([[10**20, 0], [0, 1]], [0, 0], [[1e-20, 0], [0, 1], [1, 1]])
    assert big.dtype == np.float64
    big.predict([1.0, 2.0])


def test_non_numeric_lists_raise_type_error():
    W, b, L = (a.tolist() for a in _weights())
    with pytest.raises(TypeError):
        DraftHead(W, ["a"] * 4, L)
    with pytest.raises(TypeError):
        DraftHead(W, [None] * 4, L)
    head = DraftHead(W, b, L)
    with pytest.raises(TypeError):
        head.predict(["x"] * 6)
    with pytest.raises(TypeError):
        head.predict(None)
    with pytest.raises(TypeError):
        head.predict([1j] * 6)


@pytest.mark.parametrize("T", [math.nan, math.inf, -math.inf, -1.0, -1e-300, -0.5,
                               np.float32("nan"), np.float64("inf"), "1.0", None, [1.0],
                               1 + 0j, True, 1e309])
def test_bad_temperature_raises_value_error(T):
    head = DraftHead(*_weights())
    with pytest.raises(ValueError, match="temperature"):
        head.predict(np.ones(6), temperature=T)
    with pytest.raises(ValueError, match="temperature"):
        head.predict(np.ones((2, 6)), temperature=T, top_k=9)


def test_huge_int_temperature_raises_value_error():
    # 10**400 is a real number that is not a finite float: a ValueError like
    # 1e309 (float("inf")), not an OverflowError from the float conversion.
    head = DraftHead(*_weights())
    with pytest.raises(ValueError, match="temperature"):
        head.predict(np.ones(6), temperature=10**400)


@pytest.mark.parametrize("T", [0, 1, 2, 0.5, np.float32(0.5), np.float64(2.0), np.int64(3),
                               1e-300, 1e300, -0.0])
def test_good_temperatures_are_accepted(T):
    rng = np.random.default_rng(81)
    head = DraftHead(*_weights())
    hidden = rng.standard_normal(6)
    got = full(head, hidden, temperature=T)
    expected = full(head, hidden, temperature=float(T))
    np.testing.assert_array_equal(got.logits, expected.logits)


@pytest.mark.parametrize("k", [0, -1, 10, 100])
def test_top_k_out_of_range_raises_value_error(k):
    head = DraftHead(*_weights())
    with pytest.raises(ValueError, match="top_k"):
        head.predict(np.ones(6), top_k=k)
    with pytest.raises(ValueError, match="top_k"):
        head.predict(np.ones((2, 6)), top_k=np.int64(k))


@pytest.mark.parametrize("k", [1.0, 2.5, "1", None, True, False, [1], np.float64(2.0)])
def test_top_k_not_an_int_raises_type_error(k):
    head = DraftHead(*_weights())
    with pytest.raises(TypeError, match="top_k"):
        head.predict(np.ones(6), top_k=k)


def test_numpy_integer_top_k_is_accepted():
    head = DraftHead(*_weights())
    hidden = np.ones(6)
    for k in (np.int64(3), np.int32(9), np.uint8(2)):
        np.testing.assert_array_equal(head.predict(hidden, top_k=k).tokens,
                                      head.predict(hidden, top_k=int(k)).tokens)


def test_num_threads_values(monkeypatch):
    rng = np.random.default_rng(82)
    head = _batch_head(rng, np.float64, "parallel")
    hidden = rng.standard_normal((3, head.d_model))
    # Negative counts go back from OMP_NUM_THREADS (else the usable CPUs) on
    # every backend; tests/test_api_parity.py has the rule in full.
    max_threads = 4
    monkeypatch.setenv("OMP_NUM_THREADS", str(max_threads))
    expected = full(head, hidden, num_threads=1)
    for n in (None, 1, 2, 4, -1, -max_threads, np.int64(2)):
        got = full(head, hidden, num_threads=n)
        np.testing.assert_allclose(got.probs, expected.probs, rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="num_threads"):
        head.predict(hidden, num_threads=0)
    with pytest.raises(ValueError, match="num_threads"):
        head.predict(hidden, num_threads=-(max_threads + 1))
    for bad in (1.0, "2", True, [1]):
        with pytest.raises(TypeError, match="num_threads"):
            head.predict(hidden, num_threads=bad)
    small = DraftHead(*_weights())
    with pytest.raises(ValueError, match="num_threads"):
        small.predict(np.ones(6), num_threads=0)


def test_num_threads_beyond_c_int():
    """A num_threads too large for a C int is either clamped (results as
    usual) or a ValueError naming num_threads -- not an OverflowError from the
    kernel's argument conversion (and not backend-dependent)."""
    rng = np.random.default_rng(84)
    head = _batch_head(rng, np.float64, "parallel")
    hidden = rng.standard_normal(head.d_model)
    expected = full(head, hidden, num_threads=1)
    for n in (2**31, 2**63, 10**30):
        try:
            got = full(head, hidden, num_threads=n)
        except ValueError as exc:
            assert "num_threads" in str(exc)
            continue
        np.testing.assert_array_equal(got.logits, expected.logits)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("T", [1e-50, 1e-300, 5e-324])
def test_tiny_temperature_with_zero_logits(dtype, T):
    """All-zero logits divided by a tiny positive temperature are still zero:
    a uniform distribution, not an overflow error (float32 heads must not let
    T underflow to 0 and compute 0/0)."""
    rng = np.random.default_rng(85)
    W, b, _ = random_head(rng, 6, 4, 1, dtype)
    head = DraftHead(W, b, np.zeros((5, 4), dtype))
    result = full(head, rng.standard_normal(6).astype(dtype), temperature=T)
    np.testing.assert_array_equal(result.logits, 0.0)
    np.testing.assert_allclose(result.probs, 0.2, rtol=1e-6)
    assert result.predicted_token == 0
