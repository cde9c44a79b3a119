"""Batches of 9+ states: the packed, cache-blocked tiles (src/_gemm_blocks.h).

The x86-64-v3 kernel packs many states into column-block panels and runs
3-row x 4-state tiles over blocks of 512 columns and 48 rows (float32
compute; float64, q8/q4 and the baseline build keep the unpacked loop,
checked here alike).  Each (row, state) dot product must keep the arithmetic
of the single-state kernel, so batch rows are bit-identical to single states,
at every blocking edge: B not a multiple of the 4-state tile (9, 63, 65) and
a multiple (64); d (the column count of W and of L) not a multiple of the
column block nor of 8, or below 8; row counts leaving 0, 1 and 2 rows past a
multiple of the 3-row tile, per 48-row block and per thread chunk; 1 and 2
threads.  The results must also agree with a float64 NumPy reference on the
weights the head stores.
"""

from __future__ import annotations

import numpy as np
import pytest

from eagle_fast import DraftHead
from reference import float64_reference
from support import TEST_MIN_WORK_BYTES, random_head

WEIGHT_DTYPES = ["float32", "bfloat16", "float16", "int8", "q8", "float64"]
BATCHES = (9, 63, 64, 65)

# (d_model, d_proj, vocab).  530 columns: a block of 512, one of 16, and 2
# tail columns; 259: one short block of 256 and 3 tail columns.  Rows (48-row
# blocks, then what is left past a multiple of 3): on 1 thread 259 = 5 * 48 + 19
# (1 left), 701 = 14 * 48 + 29 (2 left); on 2 threads 129 + 130 (0, 1 left) and
# 350 + 351 (2, 0 left).  Big enough for 2 threads in every storage.
PARALLEL_SHAPE = (530, 259, 701)
# Columns below 8 (all tail) and exactly 8; serial.
SMALL_SHAPE = (5, 8, 97)


def _bf16_to_f64(bits):
    return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def _stored_as_f64(head, name, n_cols):
    """A stored matrix decoded exactly to float64 with NumPy."""
    arrays = head.stored_arrays()
    data, scales = arrays[f"{name}.weight"], arrays.get(f"{name}.weight_scale")
    kind = head.weight_dtype
    if kind == "bfloat16":
        return _bf16_to_f64(data)
    if kind == "int8":
        return data.astype(np.float64) * scales.astype(np.float64)[:, None]
    if kind == "q8":
        assert scales.shape[1] == -(-n_cols // 32)  # groups of 32 columns
        per_col = np.repeat(scales.astype(np.float64), 32, axis=1)[:, :n_cols]
        return data[:, :n_cols].astype(np.float64) * per_col
    return data.astype(np.float64)


def _reference(head, hidden):
    W = _stored_as_f64(head, "projection", head.d_model)
    L = _stored_as_f64(head, "lm_head", head.d_proj)
    b = head.stored_arrays()["projection.bias"].astype(np.float64)
    return float64_reference(hidden.astype(np.float64), W, b, L, 1.0)


def _head(weight_dtype, shape, seed):
    rng = np.random.default_rng(seed)
    dtype = np.float64 if weight_dtype == "float64" else np.float32
    weights = random_head(rng, *shape, dtype=dtype, lm_scale=3.0)
    if weight_dtype in ("float32", "float64"):
        head = DraftHead(*weights)
    else:
        head = DraftHead(*weights, weight_dtype=weight_dtype)
    pool = rng.standard_normal((max(BATCHES), shape[0])).astype(head.dtype)
    return head, pool, rng


@pytest.mark.parametrize("weight_dtype", WEIGHT_DTYPES)
@pytest.mark.parametrize("shape", [PARALLEL_SHAPE, SMALL_SHAPE], ids=["parallel", "small"])
def test_packed_batches_equal_single_states_and_reference(weight_dtype, shape):
    head, pool, rng = _head(weight_dtype, shape, 131)
    if shape is PARALLEL_SHAPE:
        assert head.nbytes >= 2 * TEST_MIN_WORK_BYTES  # 2 threads really split rows
    ref = _reference(head, pool)
    rtol = 1e-12 if weight_dtype == "float64" else 1e-5
    mismatches = []
    for num_threads in (1, 2):
        singles = [head.predict(state, return_logits=True, num_threads=num_threads)
                   for state in pool]
        for batch in BATCHES:
            order = rng.permutation(len(pool))[:batch]
            together = head.predict(pool[order], top_k=3, return_logits=True,
                                    num_threads=num_threads)
            for i, j in enumerate(order):
                if not np.array_equal(together.logits[i], singles[j].logits):
                    mismatches.append(f"threads={num_threads} B={batch} row {i}")
            err = np.abs(together.logits.astype(np.float64) - ref["logits"][order])
            tol = rtol * ref["logit_scale"][order]
            assert np.all(err <= tol), (
                f"threads={num_threads} B={batch}: logits off by {err.max():.3g} "
                f"(tolerance {tol.ravel()[err.argmax()]:.3g})")
    assert not mismatches, f"{len(mismatches)} batch rows differ, e.g. {mismatches[:4]}"


def test_thread_counts_give_identical_packed_batches():
    """How rows split over threads (and so over 48-row blocks) changes no bit."""
    head, pool, _ = _head("float32", PARALLEL_SHAPE, 132)
    one = head.predict(pool, top_k=5, return_logits=True, num_threads=1)
    two = head.predict(pool, top_k=5, return_logits=True, num_threads=2)
    np.testing.assert_array_equal(one.logits, two.logits)
    np.testing.assert_array_equal(one.tokens, two.tokens)
