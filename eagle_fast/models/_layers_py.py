"""Pure-Python (NumPy) fallback of the decoder-layer kernels (src/_layer_kernel.pyx).

The operations of one EAGLE draft step, on C-contiguous arrays of the compute
dtype (float32 or float64) that the caller (``eagle_fast.models.eagle``) has
validated:

* ``Matrix(data, scales, storage, compute, n_cols=-1)`` -- one weight matrix
  as stored (the compute dtype itself, ``"native"``, or with float32 compute
  bfloat16 bit patterns, IEEE half, int8 with per-row float32 scales, or
  q8/q4 with float16 group scales; ``n_cols``: the column count of q4 data,
  two codes per byte, its last group padded); ``matmul(m, x)``
  is ``x @ W.T`` for a batch of rows ``x`` (n, cols), on exactly the
  dequantized weights.
* ``rms_norm(x, weight, eps)`` -- Llama's RMSNorm per row.
* ``rope(x, cos, sin)`` -- rotary embedding in place on (n, heads, head_dim),
  rotate-half convention, ``cos``/``sin`` (n, head_dim / 2).
* ``attention(q, k, v, n_stable, extra_mask)`` -- grouped-query attention of
  the n query rows against the first ``n_stable`` cache rows (all visible)
  and the next ``extra_mask.shape[1]`` rows (visible where the mask is true:
  causal for new prefix positions, the tree mask for tree nodes).
* ``silu_mul(gate_up)`` -- SwiGLU ``SiLU(g) * u`` of the stacked (n, 2I) product.
* ``log_softmax(logits)`` -- per row, in place.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from .._storage import StoredMatrix

OPENMP = False

# Rows dequantized at a time (bounds the float32 temporaries of a large matrix).
_BLOCK_ELEMENTS = 1 << 22


def max_threads() -> int:
    return 1


class Matrix:
    """One weight matrix (rows, cols) as stored; see the module docstring."""

    def __init__(self, data: np.ndarray, scales: Optional[np.ndarray], storage: str,
                 compute: np.dtype, n_cols: int = -1) -> None:
        if (scales is None) != (storage in ("native", "bfloat16", "float16")):
            raise ValueError(f"{storage} weights take scales" if scales is None
                             else f"{storage} weights take no scales")
        self.storage = storage
        self.compute = np.dtype(compute)
        self.data = data
        self.scales = scales
        self.rows = int(data.shape[0])
        self.cols = int(n_cols) if n_cols >= 0 else int(data.shape[1])
        self.nbytes = int(data.nbytes) + (0 if scales is None else int(scales.nbytes))

    def dense_block(self, start: int, stop: int) -> np.ndarray:
        if self.storage == "native":
            return self.data[start:stop]
        scales = None if self.scales is None else self.scales[start:stop]
        return StoredMatrix(self.storage, self.data[start:stop], scales,
                            self.cols).dequantize()


def matmul(matrix: Matrix, x: np.ndarray, n_threads: int = 1) -> np.ndarray:
    """``x @ W.T``: (n, cols) -> (n, rows) in the compute dtype."""
    if matrix.storage == "native":
        return np.ascontiguousarray(x @ matrix.data.T)
    out = np.empty((x.shape[0], matrix.rows), dtype=matrix.compute)
    step = max(1, _BLOCK_ELEMENTS // matrix.cols)
    for start in range(0, matrix.rows, step):
        stop = min(start + step, matrix.rows)
        out[:, start:stop] = x @ matrix.dense_block(start, stop).T
    return out


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    variance = np.mean(x * x, axis=-1, keepdims=True)
    return weight * (x / np.sqrt(variance + x.dtype.type(eps)))


def rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> None:
    """In place on x (n, heads, head_dim): (a, b) halves -> (a cos - b sin, b cos + a sin)."""
    half = x.shape[-1] // 2
    a = x[..., :half].copy()
    b = x[..., half:].copy()
    c = cos[:, None, :]
    s = sin[:, None, :]
    x[..., :half] = a * c - b * s
    x[..., half:] = b * c + a * s


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, n_stable: int,
              extra_mask: np.ndarray, n_threads: int = 1) -> np.ndarray:
    """q (n, H, hd); k, v (>= n_stable + E, KV, hd); extra_mask (n, E) bool.
    Returns (n, H * hd)."""
    n, n_heads, head_dim = q.shape
    n_kv = k.shape[1]
    group = n_heads // n_kv
    n_extra = extra_mask.shape[1]
    total = n_stable + n_extra
    keys = np.repeat(k[:total], group, axis=1)      # (T, H, hd)
    values = np.repeat(v[:total], group, axis=1)
    scores = np.einsum("nhd,thd->nht", q, keys) / q.dtype.type(np.sqrt(head_dim))
    visible = np.ones((n, total), dtype=bool)
    visible[:, n_stable:] = extra_mask
    scores = np.where(visible[:, None, :], scores, -np.inf)
    scores -= scores.max(axis=-1, keepdims=True)
    weights = np.exp(scores)
    weights /= weights.sum(axis=-1, keepdims=True)
    out = np.einsum("nht,thd->nhd", weights, values)
    return np.ascontiguousarray(out.reshape(n, n_heads * head_dim))


def silu_mul(gate_up: np.ndarray) -> np.ndarray:
    half = gate_up.shape[1] // 2
    gate = gate_up[:, :half]
    with np.errstate(over="ignore"):
        return np.ascontiguousarray(gate / (1 + np.exp(-gate)) * gate_up[:, half:])


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Per row, in place; returns ``logits``."""
    logits -= logits.max(axis=-1, keepdims=True)
    logits -= np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    return logits
