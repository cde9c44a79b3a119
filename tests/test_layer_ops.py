"""The decoder-layer ops of the EAGLE drafters (compiled kernel and NumPy
fallback, whichever backend is active) against plain float64 formulas, on
shapes that reach every blocking path: 1..9 rows, column counts that are not
multiples of 8, every weight storage."""

from __future__ import annotations

import numpy as np
import pytest

from eagle_fast import _backend
from eagle_fast._storage import StoredMatrix


def ops():
    return _backend.active().module("layers")


@pytest.mark.parametrize("storage", ["float32", "float64", "bfloat16", "float16", "int8", "q8",
                                     "q4"])
@pytest.mark.parametrize("n", [1, 2, 4, 5, 9])
@pytest.mark.parametrize("rows,cols", [(37, 21), (130, 64), (7, 3), (29, 70)])
def test_matmul(storage, n, rows, cols):
    rng = np.random.default_rng(rows * 100 + cols + n)
    w = rng.normal(0, 1, (rows, cols))
    stored = StoredMatrix.encode(w, storage, "w")
    exact = stored.dequantize().astype(np.float64)
    compute = np.float64 if storage == "float64" else np.float32
    x = rng.normal(0, 1, (n, cols)).astype(compute)
    native = storage in ("float32", "float64")
    m = ops().Matrix(stored.data, stored.scales, "native" if native else storage, compute,
                     stored.n_cols)
    for threads in (1, 2):
        y = ops().matmul(m, x, threads)
        assert y.shape == (n, rows) and y.dtype == compute
        expected = x.astype(np.float64) @ exact.T
        tol = 1e-12 if compute == np.float64 else 1e-4
        np.testing.assert_allclose(y, expected, rtol=tol, atol=tol * np.sqrt(cols))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_norm_rope_swiglu_softmax(dtype):
    rng = np.random.default_rng(3)
    x = rng.normal(0, 2, (3, 10)).astype(dtype)
    w = rng.normal(1, 0.1, 10).astype(dtype)
    tol = 1e-12 if dtype == np.float64 else 2e-6
    x64 = x.astype(np.float64)
    expected = w * x64 / np.sqrt((x64 ** 2).mean(axis=1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(ops().rms_norm(x, w, 1e-5), expected, rtol=tol, atol=tol)

    heads = rng.normal(0, 1, (3, 2, 6)).astype(dtype)
    angles = rng.uniform(-3, 3, (3, 3))
    cos, sin = np.cos(angles).astype(dtype), np.sin(angles).astype(dtype)
    expected = heads.astype(np.float64).copy()
    for t in range(3):
        for h in range(2):
            for i in range(3):
                a, b = heads[t, h, i], heads[t, h, i + 3]
                expected[t, h, i] = a * cos[t, i] - b * sin[t, i]
                expected[t, h, i + 3] = b * cos[t, i] + a * sin[t, i]
    ops().rope(heads, cos, sin)
    np.testing.assert_allclose(heads, expected, rtol=tol, atol=tol)

    gu = rng.normal(0, 2, (2, 8)).astype(dtype)
    g, u = gu[:, :4].astype(np.float64), gu[:, 4:].astype(np.float64)
    np.testing.assert_allclose(ops().silu_mul(gu), g / (1 + np.exp(-g)) * u, rtol=tol,
                               atol=tol)

    logits = rng.normal(0, 5, (2, 7)).astype(dtype)
    l64 = logits.astype(np.float64)
    expected = l64 - np.log(np.exp(l64).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(ops().log_softmax(logits), expected, rtol=tol, atol=tol * 10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_stable,n_extra", [(0, 3), (5, 4), (6, 0), (40, 12)])
def test_attention_with_mask(dtype, n_stable, n_extra):
    rng = np.random.default_rng(n_stable + 10 * n_extra)
    n, H, KV, hd = max(n_extra, 1), 4, 2, 6
    q = rng.normal(0, 1, (n, H, hd)).astype(dtype)
    k = rng.normal(0, 1, (n_stable + n_extra + 3, KV, hd)).astype(dtype)  # spare rows
    v = rng.normal(0, 1, k.shape).astype(dtype)
    mask = rng.random((n, n_extra)) < 0.5
    if n_stable == 0:
        mask[:, 0] = True   # something visible
    out = ops().attention(q, k, v, n_stable, mask, 2)
    expected = np.zeros((n, H * hd))
    for i in range(n):
        for h in range(H):
            g = h // (H // KV)
            visible = list(range(n_stable)) + [n_stable + j for j in range(n_extra) if mask[i, j]]
            s = np.array([q[i, h].astype(np.float64) @ k[t, g] for t in visible]) / np.sqrt(hd)
            p = np.exp(s - s.max())
            p /= p.sum()
            expected[i, h * hd:(h + 1) * hd] = sum(pi * v[t, g] for pi, t in zip(p, visible))
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(out, expected, rtol=tol, atol=tol)


def decoded_q(data, scales, storage, cols):
    """float64 weights of q8/q4 rows from the documented layout (plain loops):
    q8 codes times their group's float16 scale; q4 byte i of group g holds
    column 32 g + i (low nibble) and 32 g + 16 + i (high), weight (code - 8) * scale."""
    rows = data.shape[0]
    out = np.zeros((rows, cols))
    for r in range(rows):
        for j in range(cols):
            g, i = divmod(j, 32)
            scale = float(scales[r, g])
            if storage == "q8":
                q = int(data[r, j])
            else:
                byte = int(data[r, 16 * g + i % 16])
                q = (byte & 15 if i < 16 else byte >> 4) - 8
            out[r, j] = q * scale
    return out


@pytest.mark.parametrize("storage", ["q8", "q4"])
@pytest.mark.parametrize("rows,cols", [(41, 16), (130, 70), (13, 32), (9, 5)])
def test_grouped_matmul_on_decoded_weights_and_batch_equals_single(storage, rows, cols):
    """q8/q4 matrices (full and short groups): the float64 product on the
    weights decoded here; a batch's rows equal the rows run alone (bit for
    bit on the compiled kernels)."""
    from eagle_fast import _backend

    rng = np.random.default_rng(rows + cols)
    stored = StoredMatrix.encode(rng.normal(0, 1, (rows, cols)), storage, "w")
    exact = decoded_q(stored.data, stored.scales, storage, cols)
    m = ops().Matrix(stored.data, stored.scales, storage, np.float32, stored.n_cols)
    assert (m.rows, m.cols) == (rows, cols)
    x = rng.normal(0, 1, (9, cols)).astype(np.float32)
    for threads in (1, 2):
        y = ops().matmul(m, x, threads)
        assert y.shape == (9, rows) and y.dtype == np.float32
        np.testing.assert_allclose(y, x.astype(np.float64) @ exact.T, rtol=1e-5,
                                   atol=1e-5 * np.sqrt(cols))
        for i in (0, 4, 8):
            one = ops().matmul(m, np.ascontiguousarray(x[i:i + 1]), threads)[0]
            if _backend.active().name == "compiled":
                np.testing.assert_array_equal(one, y[i])
            else:
                np.testing.assert_allclose(one, y[i], rtol=1e-5, atol=1e-5 * np.sqrt(cols))
    # An exactly computable product (integer inputs; small powers of two as
    # scales) is exact, bit for bit: a wrong code, nibble or scale fails.
    k = rng.integers(-7, 8, (rows, cols)).astype(np.float64)
    k[:, ::32] = -8 if storage == "q4" else 127   # each group's extreme: scale 2**e
    k *= 2.0 ** rng.integers(-2, 2, (rows, 1))
    exact_stored = StoredMatrix.encode(k, storage, "w")
    np.testing.assert_array_equal(decoded_q(exact_stored.data, exact_stored.scales, storage,
                                            cols), k)
    m = ops().Matrix(exact_stored.data, exact_stored.scales, storage, np.float32, cols)
    xi = rng.integers(-3, 4, (5, cols)).astype(np.float32)
    np.testing.assert_array_equal(ops().matmul(m, xi, 1), xi.astype(np.float64) @ k.T)


def test_matrix_needs_its_scales():
    stored = StoredMatrix.encode(np.ones((3, 40)), "q8", "w")
    with pytest.raises(ValueError, match="scales"):
        ops().Matrix(stored.data, None, "q8", np.float32)
