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


@pytest.mark.parametrize("storage", ["float32", "float64", "bfloat16", "float16", "int8"])
@pytest.mark.parametrize("n", [1, 2, 4, 5, 9])
@pytest.mark.parametrize("rows,cols", [(37, 21), (130, 64), (7, 3)])
def test_matmul(storage, n, rows, cols):
    rng = np.random.default_rng(rows * 100 + cols + n)
    w = rng.normal(0, 1, (rows, cols))
    stored = StoredMatrix.encode(w, storage, "w")
    exact = stored.dequantize().astype(np.float64)
    compute = np.float64 if storage == "float64" else np.float32
    x = rng.normal(0, 1, (n, cols)).astype(compute)
    native = storage in ("float32", "float64")
    m = ops().Matrix(stored.data, stored.scales, "native" if native else storage, compute)
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
