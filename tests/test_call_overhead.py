"""Per-call overhead at small sizes, and that the shortcuts taken for it change
no result and no error.

* eagle_draft_from_hidden reads nested lists of floats (and float64 arrays)
  in the compiled module, without NumPy: every input form gives the spec's
  result, and everything unusual still gets the general path's errors.
* The fallback's predict runs a whole batch through each NumPy call.
* Speed itself is measured by bench/bench_predict.py (side by side with the
  reference function and NumPy), never by timed tests.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from eagle_fast import DraftHead, _backend, _validation, eagle_draft_from_hidden
from reference import spec_reference
from support import backend_independent, random_head


def plain_loops(hidden, weights, bias, lm_head, temperature=1.0):
    """The spec's draft head as plain Python loops on lists (what a user of
    the reference function runs), results rounded as the spec's."""
    projected = []
    for i in range(len(weights)):
        value = bias[i]
        for j in range(len(hidden)):
            value += weights[i][j] * hidden[j]
        sigmoid = 1.0 / (1.0 + math.exp(-value)) if abs(value) < 500 else float(value > 0)
        projected.append(value * sigmoid)
    logits = []
    for row in lm_head:
        value = 0.0
        for j in range(len(projected)):
            value += row[j] * projected[j]
        logits.append(value)
    if temperature > 0:
        logits = [v / temperature for v in logits]
    top = max(logits)
    exps = [math.exp(v - top) for v in logits]
    total = sum(exps)
    probs = [e / total for e in exps]
    best = max(range(len(probs)), key=lambda v: probs[v])
    return {"logits": [round(v, 4) for v in logits], "probs": [round(p, 6) for p in probs],
            "predicted_token": best, "confidence": round(probs[best], 6)}


def inputs(seed, d_model=16, d_proj=8, vocab=50):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(d_model), rng.standard_normal((d_proj, d_model)),
            rng.standard_normal(d_proj), rng.standard_normal((vocab, d_proj)))


def read_only(array):
    copy = array.copy()
    copy.setflags(write=False)
    return copy


def unaligned(array):
    """A C-contiguous copy of ``array`` whose data is not 8-byte aligned."""
    raw = np.zeros(array.nbytes + 1, np.uint8)
    view = raw[1:].view(array.dtype).reshape(array.shape)
    view[...] = array
    assert not view.flags.aligned and view.flags.c_contiguous
    return view


# ---------------------------------------------------------------------------
# eagle_draft_from_hidden: every input form, one result.
# ---------------------------------------------------------------------------

FORMS = {
    "lists": lambda a: a.tolist(),
    "arrays": lambda a: a,
    "read-only": lambda a: read_only(a),
    "unaligned": unaligned,
    "fortran": np.asfortranarray,
    "float32": lambda a: a.astype(np.float32),
    "big-endian": lambda a: a.astype(">f8"),
    "tuples": lambda a: tuple(map(tuple, a)) if a.ndim == 2 else tuple(a),
    "numpy-scalars": lambda a: list(a) if a.ndim == 1 else [list(r) for r in a],
    "ints": lambda a: np.rint(a * 4).astype(int).tolist(),
    "mixed-ints": lambda a: [int(v) if i % 2 else v for i, v in enumerate(a.tolist())]
    if a.ndim == 1 else a.tolist(),
}


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("shape", [(1, 1, 1), (16, 8, 50), (5, 3, 200)],
                         ids=lambda s: "x".join(map(str, s)))
def test_every_input_form_gives_the_spec_result(form, shape):
    arrays = [FORMS[form](a) for a in inputs(1, *shape)]
    for T in (1.0, 0.7, 0.0):
        assert eagle_draft_from_hidden(*arrays, T) == spec_reference(*arrays, T)


def test_each_argument_may_take_its_own_form():
    h, W, b, L = inputs(2)
    want = spec_reference(h, W, b, L)
    for i in range(4):
        args = [h, W, b, L]
        args[i] = args[i].tolist()
        assert eagle_draft_from_hidden(*args) == want
        args = [a.tolist() for a in (h, W, b, L)]
        args[i] = unaligned([h, W, b, L][i])
        assert eagle_draft_from_hidden(*args) == want


BAD = [
    (0, lambda h: h[:-1], ValueError, "projection_weights"),
    (0, lambda h: [], ValueError, "hidden_state"),
    (0, lambda h: h[:3] + ["x"] + h[4:], TypeError, "hidden_state"),
    (0, lambda h: h[:3] + [math.nan] + h[4:], ValueError, "hidden_state"),
    (0, lambda h: h[:3] + [True] + h[4:], None, None),           # a bool is a number
    (0, lambda h: h[:3] + [10**400] + h[4:], ValueError, "hidden_state"),
    (1, lambda W: W[:2] + [W[2][:-1]] + W[3:], ValueError, "projection_weights"),
    (1, lambda W: W[:2] + [math.inf] + W[3:], ValueError, "projection_weights"),
    (1, lambda W: W[:2] + [W[2][:3] + [-math.inf] + W[2][4:]] + W[3:], ValueError,
     "projection_weights"),
    (2, lambda b: b + [0.5], ValueError, "projection_bias"),
    (2, lambda b: b[:1] + [1j] + b[2:], TypeError, "projection_bias"),
    (3, lambda L: [row[:-1] for row in L], ValueError, "lm_head_weights"),
    (3, lambda L: [], ValueError, "lm_head_weights"),
    (3, lambda L: L[:5] + [[None] * len(L[0])] + L[6:], TypeError, "lm_head_weights"),
]


@pytest.mark.parametrize("position, change, error, name", BAD)
def test_unusual_list_inputs_get_the_general_paths_answer(position, change, error, name):
    """Lists the compiled shortcut does not take (other element types, ragged
    or mismatched, empty, NaN/inf, huge ints) get exactly the general path's
    result or error, which names the argument."""
    args = [a.tolist() for a in inputs(3)]
    args[position] = change(args[position])
    if error is None:
        assert eagle_draft_from_hidden(*args) == spec_reference(*args)
        return
    with pytest.raises(error, match=name):
        eagle_draft_from_hidden(*args)


def test_overflowing_logits_still_raise_from_lists():
    with pytest.raises(ValueError, match="overflow"):
        eagle_draft_from_hidden([1.0], [[1.0]], [0.0], [[1e308], [1e308]], 1e-10)


def test_lists_and_float64_arrays_need_no_numpy_conversion(monkeypatch, active_backend):
    """On the compiled backend, nested lists of floats and float64 arrays go
    straight to the kernel: the NumPy conversion of the general path (about
    as slow as the reference's loops at small sizes) is not called."""
    if active_backend[0] != "compiled":
        pytest.skip("the fallback's spec loops cost far more than converting")

    def no_conversion(value, name):
        raise AssertionError(f"{name} went through the NumPy conversion")

    monkeypatch.setattr(_validation, "_as_array", no_conversion)
    h, W, b, L = inputs(4)
    want = spec_reference(h, W, b, L, 0.5)
    assert eagle_draft_from_hidden(h.tolist(), W.tolist(), b.tolist(), L.tolist(), 0.5) == want
    assert eagle_draft_from_hidden(h, W, b, L, 0.5) == want


def test_compiled_spec_function_matches_plain_loops_on_lists():
    """The list fast path gives what the plain-Python loops it replaces give
    (its speed is measured by bench/bench_predict.py, not here)."""
    args = [a.tolist() for a in inputs(5)]
    assert eagle_draft_from_hidden(*args) == plain_loops(*args)


# ---------------------------------------------------------------------------
# The fallback's predict: one NumPy pass per batch.
# ---------------------------------------------------------------------------

@backend_independent
@pytest.mark.parametrize("shape", [(16, 8, 50), (256, 128, 1000)],
                         ids=lambda s: "x".join(map(str, s)))
def test_fallback_batch_costs_a_constant_number_of_products(monkeypatch, shape):
    """The fallback multiplies a whole batch in one NumPy call per matrix
    (stacked matmul: one BLAS gemv per state inside it; it used to loop over
    the states in Python, then to use einsum's slower loop), a single state
    with np.dot (the same gemv), with results equal to the states alone."""
    from eagle_fast import _draft_py
    calls = []
    for name in ("_matmul", "_dot"):
        real = getattr(_draft_py, name)
        monkeypatch.setattr(_draft_py, name, lambda *a, _real=real, _name=name, **k:
                            calls.append((_name, [np.shape(x) for x in a])) or _real(*a, **k))
    previous = _backend.active()
    _backend.use("python")
    try:
        rng = np.random.default_rng(6)
        d_model, d_proj, vocab = shape
        head = DraftHead(*random_head(rng, d_model, d_proj, vocab))
        hidden = rng.standard_normal((9, d_model))
        for batch in (hidden[0], hidden[:1], hidden[:4], hidden):
            calls.clear()
            head.predict(batch, top_k=2)
            if batch.ndim == 1:    # np.dot: one gemv per matrix
                assert calls == [("_dot", [(d_proj, d_model), (d_model,)]),
                                 ("_dot", [(vocab, d_proj), (d_proj,)])]
            else:                  # each matrix as a stack of one, the states as columns
                n = batch.shape[0]
                assert calls == [("_matmul", [(1, d_proj, d_model), (n, d_model, 1)]),
                                 ("_matmul", [(1, vocab, d_proj), (n, d_proj, 1)])]
        together = head.predict(hidden, top_k=3, return_logits=True, return_probs=True)
        for i, state in enumerate(hidden):
            alone = head.predict(state, top_k=3, return_logits=True, return_probs=True)
            for name in ("tokens", "token_probs", "logits", "probs"):
                np.testing.assert_array_equal(getattr(together, name)[i], getattr(alone, name))
    finally:
        _backend._active = previous


@backend_independent
@pytest.mark.parametrize("compensated", [False, True])
@pytest.mark.parametrize("shape", [(1, 1, 1), (9, 6, 17), (40, 13, 301)],
                         ids=lambda s: "x".join(map(str, s)))
def test_spec_kernels_agree_in_both_summation_modes(compensated, shape):
    """Both spec kernels, with the built-in sum's plain and compensated
    behaviour (whichever this interpreter has), give the same bits, and the
    fallback's values are the plain loops'."""
    h, W, b, L = inputs(8, *shape)
    W[0, 0] = 1e17 if shape[0] > 1 else W[0, 0]   # where compensation shows
    outputs = []
    backends = ["python"] + (["compiled"] if _backend.compiled_available() else [])
    for name in backends:
        spec = _backend.load(name).spec
        logits, probs = np.empty(shape[2]), np.empty(shape[2])
        best = spec.spec_forward(h, W, b, L, 0.9, compensated, logits, probs, 1)
        outputs.append((best, logits.tolist(), probs.tolist()))
    assert all(out == outputs[0] for out in outputs)
    # The logits are the spec's own float loops' (the summation mode only
    # changes the softmax's sum).
    projected = []
    for row, bias in zip(W.tolist(), b.tolist()):
        acc = bias
        for w, x in zip(row, h.tolist()):
            acc += w * x
        projected.append(acc * (1.0 / (1.0 + math.exp(-acc)) if abs(acc) < 500 else
                                float(acc > 0)))
    logits = []
    for row in L.tolist():
        acc = 0.0
        for w, x in zip(row, projected):
            acc += w * x
        logits.append(acc / 0.9)
    assert outputs[0][1] == logits


@pytest.mark.parametrize("position", range(4))
@pytest.mark.parametrize("kind", ["float32-scalars", "fractions", "bools", "float64-scalars"])
def test_list_elements_of_other_number_types(position, kind):
    """Lists holding NumPy scalars, fractions or bools are read as their
    float64 values, as NumPy converts them, on every backend."""
    import fractions
    convert = {"float32-scalars": np.float32, "fractions": fractions.Fraction,
               "bools": lambda v: v > 0, "float64-scalars": np.float64}[kind]
    args = [a.tolist() for a in inputs(9, 6, 4, 11)]
    if kind == "float32-scalars":
        args = [np.asarray(a, np.float32).astype(np.float64).tolist() for a in args]
    value = args[position]
    args[position] = ([convert(v) for v in value] if position in (0, 2) else
                      [[convert(v) for v in row] for row in value])
    as_floats = [np.asarray(a, dtype=np.float64) for a in args]
    assert eagle_draft_from_hidden(*args, 0.8) == spec_reference(*as_floats, 0.8)


@pytest.mark.parametrize("position", range(4))
def test_complex_list_elements_raise(position):
    args = [a.tolist() for a in inputs(10, 6, 4, 11)]
    if position in (0, 2):
        args[position] = args[position][:-1] + [1j]
    else:
        args[position] = args[position][:-1] + [args[position][-1][:-1] + [1j]]
    with pytest.raises(TypeError):
        eagle_draft_from_hidden(*args)


# ---------------------------------------------------------------------------
# The fallback's products: one gemv per state, with repeated LM-head rows
# copied from their first occurrence.
# ---------------------------------------------------------------------------

def _python_head(*weights, **options):
    previous = _backend.active()
    _backend.use("python")
    try:
        return DraftHead(*weights, **options)
    finally:
        _backend._active = previous


BENCH_SHAPES = pytest.mark.parametrize("shape", [(16, 8, 50), (256, 128, 1000)],
                                       ids=lambda s: "x".join(map(str, s)))


def brute_force_repeats(matrix):
    """(repeat, first occurrence) pairs by comparing every pair of rows."""
    pairs = []
    for i in range(matrix.shape[0]):
        for j in range(i):
            if np.array_equal(matrix[i], matrix[j]):
                pairs.append((i, j))
                break
    return sorted(pairs)


@backend_independent
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_repeated_rows_match_brute_force(dtype):
    from eagle_fast._draft_py import repeated_rows
    rng = np.random.default_rng(12)
    for vocab, n_distinct, width in [(40, 40, 7), (60, 5, 9), (33, 2, 1), (50, 20, 16)]:
        distinct = rng.standard_normal((n_distinct, width)).astype(dtype)
        distinct[0] = 0.0
        matrix = distinct[rng.integers(0, n_distinct, vocab)].copy()
        # Same values, other bits: -0.0 equals 0.0; huge rows whose
        # fingerprints overflow to inf are still told apart exactly.
        zeros = np.flatnonzero((matrix == 0).all(axis=1))
        matrix[zeros[::2]] = -0.0
        if vocab > 40:
            matrix[-3:] = np.finfo(dtype).max
            matrix[-1, 0] = np.finfo(dtype).max / 2
        found = repeated_rows(matrix)
        got = [] if found is None else sorted(zip(found[0].tolist(), found[1].tolist()))
        assert got == brute_force_repeats(matrix)


@backend_independent
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fallback_gemv_head_ties_and_batches(dtype):
    """A fallback head whose LM head repeats rows at every
    position: copies of a row get exactly the same logit (so ties go to the
    lower id), and a batch gives its states' own results bit for bit."""
    rng = np.random.default_rng(13)
    W, b, _ = random_head(rng, 67, 75, 1, dtype=dtype)
    distinct = rng.standard_normal((5, 75)).astype(dtype)
    L = distinct[rng.integers(0, 5, 1003)]
    head = _python_head(W, b, L)
    assert head._kernel._repeats is not None
    pool = rng.standard_normal((9, 67)).astype(dtype)
    together = head.predict(pool, top_k=3, return_logits=True, return_probs=True)
    for i, state in enumerate(pool):
        alone = head.predict(state, top_k=3, return_logits=True, return_probs=True)
        for name in ("tokens", "token_probs", "logits", "probs"):
            np.testing.assert_array_equal(getattr(together, name)[i], getattr(alone, name))
        assert all(np.unique(alone.logits[L_rows]).size == 1
                   for L_rows in (np.flatnonzero((L == row).all(axis=1)) for row in distinct))
        best = np.flatnonzero(alone.logits == alone.logits.max())
        assert alone.tokens[0] == best[0]


@backend_independent
@BENCH_SHAPES
@pytest.mark.parametrize("batch", [None, 1, 4])
def test_fallback_fast_path_matches_float64(shape, batch):
    """The fallback at the benchmark's sizes against float64 NumPy (the
    tolerances of the float32 kernels)."""
    rng = np.random.default_rng(14)
    W, b, L = random_head(rng, *shape, lm_scale=3.0)
    head = _python_head(W.astype(np.float32), b.astype(np.float32), L.astype(np.float32))
    hidden = rng.standard_normal(shape[0] if batch is None else (batch, shape[0]))
    got = head.predict(hidden.astype(np.float32), top_k=2, return_probs=True)
    w32, b32, l32 = (a.astype(np.float32).astype(np.float64) for a in (W, b, L))
    v = hidden.astype(np.float32).astype(np.float64) @ w32.T + b32
    logits = (v / (1 + np.exp(-v))) @ l32.T
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    np.testing.assert_allclose(got.probs, probs, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got.token_probs, np.take_along_axis(
        probs, np.atleast_1d(got.tokens).reshape(np.shape(got.tokens)), axis=-1),
        rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------
# The spec fast path reads arrays without a NaN/inf pass: non-finite inputs
# are caught through the logits, with the general path's errors.
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("position", range(4))
@pytest.mark.parametrize("zeros", [False, True], ids=["dense", "with-zeros"])
def test_non_finite_arrays_raise_naming_the_argument(bad, position, zeros):
    """NaN/inf anywhere in any float64 array input (first, middle, last
    element; with zero hidden values and zero weight columns, where inf * 0
    is NaN) raises the ValueError naming that argument, never a result."""
    names = ["hidden_state", "projection_weights", "projection_bias", "lm_head_weights"]
    h, W, b, L = inputs(15, 12, 8, 30)
    if zeros:
        h[::2] = 0.0
        W[:, 1::3] = 0.0
        L[:, ::2] = 0.0
    args = [h, W, b, L]
    for index in (0, args[position].size // 2, args[position].size - 1):
        changed = [a.copy() for a in args]
        changed[position].flat[index] = bad
        with pytest.raises(ValueError, match=names[position]):
            eagle_draft_from_hidden(*changed, 0.8)


def test_logits_overflowing_to_minus_inf_give_the_references_result():
    """Finite inputs whose logit overflows to -inf: the reference returns a
    result (that token's probability is 0), and so do lists and arrays."""
    h = [1.0, 2.0]
    W = [[1e3, 0.0], [0.0, 1.0]]
    b = [0.0, 0.0]
    L = [[-1e306, 0.0], [1.0, 1.0], [0.5, -0.5]]
    want = spec_reference(h, W, b, L, 1e-3)
    assert want["logits"][0] == -math.inf
    assert eagle_draft_from_hidden(h, W, b, L, 1e-3) == want
    assert eagle_draft_from_hidden(*(np.array(a) for a in (h, W, b, L)), 1e-3) == want


@pytest.mark.parametrize("form", ["lists", "arrays"])
def test_spec_fast_path_thread_settings_change_no_result(form, active_backend):
    """The fast path with any thread setting (lists always run serially)
    gives the reference's result."""
    spec = _backend.active().spec
    args = [a if form == "arrays" else a.tolist() for a in inputs(16, 40, 24, 300)]
    want = spec_reference(*args, 0.9)
    for min_bytes, threads in [(0, 2), (0, 1), (1 << 40, 2)]:
        got = spec.draft_from_hidden(*args, 0.9, _spec_compensated(), min_bytes, threads)
        assert got is None or got == want
    assert eagle_draft_from_hidden(*args, 0.9) == want


def _spec_compensated():
    from eagle_fast._spec import _COMPENSATED_SUM
    return _COMPENSATED_SUM
