"""NumPy fallback of the integer dot products (src/_int_dot.h), for heads
with ``activations="int8"``: the same activation quantization and the same
float32 operations in the same order, so it gives the compiled kernels'
results bit for bit.

States are quantized in groups of 32 columns (Q8_0): ``d = fl32(max|v| / 127)``,
``q = rint(clip(fl32(v / d), -127, 127))`` (ties to even), ``q = 0`` where
``d == 0``, ``d = NaN`` for a group holding NaN or inf.  A weight group g of a
row has integer codes w (q8/int8: as stored; q4: code - 8) and a float32
scale dw_g (q8/q4: the float16 group scale; int8: the row scale).  Per group
the exact integer sum ``isum_g = sum w * q`` over its 32 columns, then
``acc = fl32(acc + isum_g * fl32(dw_g * d_g))`` group after group, one
rounding (a fused multiply-add, emulated here exactly in float64 with
rounding to odd); the dot product is ``acc``.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ._storage import GROUP_SIZE, StoredMatrix, n_groups, unpack_q4

# Rows per block of the integer products (bounds the (B, rows, groups, 8) temporaries).
_ROW_ELEMENTS = 1 << 20


def fma32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """fl32(a * b + c) with one rounding, for float32 ``a`` holding integers
    of at most 20 bits and float32 ``b``, ``c``: a * b is exact in float64,
    the sum is rounded to float64 *to odd* (TwoSum gives its error; an inexact
    result with an even last bit steps one ulp towards the exact sum), and
    that rounds correctly to float32 (53 >= 2 * 24 + 2 bits)."""
    p = a.astype(np.float64) * b.astype(np.float64)
    z = c.astype(np.float64)
    s = p + z
    bz = s - p
    e = (p - (s - bz)) + (z - bz)
    bits = s.view(np.int64)
    fix = (e != 0) & np.isfinite(s) & ((bits & 1) == 0)
    if fix.any():
        step = np.where((e > 0) == (s > 0), 1, -1)
        bits = np.where(fix, bits + step, bits)
    return bits.view(np.float64).astype(np.float32)


def quantize_states(states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(q int8 (B, groups * 32), d float32 (B, groups)) of float32 states (B, n)."""
    count, n = states.shape
    groups = n_groups(n)
    padded = np.zeros((count, groups * GROUP_SIZE), dtype=np.float32)
    padded[:, :n] = states
    blocks = padded.reshape(count, groups, GROUP_SIZE)
    with np.errstate(all="ignore"):
        finite = np.isfinite(blocks).all(axis=2)
        d = (np.abs(blocks).max(axis=2) / np.float32(127)).astype(np.float32)
        usable = finite & (d > 0)
        divisor = np.where(usable, d, np.float32(1))[:, :, None]
        q = np.rint(np.clip(blocks / divisor, np.float32(-127), np.float32(127)))
    q[~usable] = 0
    d[~finite] = np.nan
    return q.astype(np.int8).reshape(count, -1), d


class IntMatrix:
    """An int8/q8/q4 matrix as integer codes (rows, groups, 32) (int8; q4:
    code - 8) and float32 scales (rows, groups)."""

    def __init__(self, stored: StoredMatrix) -> None:
        rows, cols = stored.shape
        groups = n_groups(cols)
        assert stored.scales is not None
        if stored.weight_dtype == "q4":
            codes = (unpack_q4(stored.data).astype(np.int8) - 8).astype(np.int8)
        else:
            codes = np.zeros((rows, groups * GROUP_SIZE), dtype=np.int8)
            codes[:, :cols] = stored.data
        if stored.weight_dtype == "int8":
            scales = np.repeat(stored.scales.astype(np.float32)[:, None], groups, axis=1)
        else:
            scales = stored.scales.astype(np.float32)
        self.codes = codes.reshape(rows, groups, GROUP_SIZE)
        self.scales = scales
        self.n_rows, self.n_cols = rows, cols

    def products(self, q: np.ndarray, d: np.ndarray) -> np.ndarray:
        """(B, rows) float32 dot products with quantized states (q, d)."""
        count, groups = d.shape
        xq = q.astype(np.int32).reshape(count, groups, GROUP_SIZE)
        out = np.empty((count, self.n_rows), dtype=np.float32)
        step = max(1, _ROW_ELEMENTS // max(1, count * groups))
        with np.errstate(all="ignore"):
            for start in range(0, self.n_rows, step):
                rows = slice(start, start + step)
                # Exact: |isum| <= 32 * 127 * 127 < 2**19.
                isum = np.einsum("rgk,bgk->brg", self.codes[rows].astype(np.int32), xq)
                scale = self.scales[None, rows, :] * d[:, None, :]   # (B, rows, groups)
                isum32 = isum.astype(np.float32)
                acc = np.zeros(isum.shape[:2], dtype=np.float32)
                for g in range(groups):
                    acc = fma32(isum32[:, :, g], scale[:, :, g], acc)
                out[:, rows] = acc
        return out


def int_products(matrix: IntMatrix, states: np.ndarray,
                 quantized: Optional[tuple[np.ndarray, np.ndarray]] = None) -> np.ndarray:
    """(B, rows) products of ``matrix`` with float32 ``states`` (B, n)."""
    q, d = quantize_states(states) if quantized is None else quantized
    return matrix.products(q, d)
