"""How a head stores its two weight matrices: float32/float64, or low precision.

* ``"bfloat16"``: uint16 bit patterns (the upper half of a float32), rounded to
  nearest, ties to even -- correctly, also from float64 input.
* ``"float16"``: IEEE half (NumPy's float16, correctly rounded).
* ``"int8"``: symmetric per output row, ``w[r, j] ~ q[r, j] * scale[r]`` with
  ``scale[r] = max_j |w[r, j]| / 127`` in float32 and ``q = round(w / scale)``;
  an all-zero row gets ``q = 0`` and ``scale = 0``.

Every stored value converts exactly to float32, and low-precision heads
compute in float32: the kernels use exactly the dequantized weights (int8
rows apply their scale to the finished dot product ``q . x``, and fall back
to the dequantized row where that sum would overflow float32).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Optional

import numpy as np

from ._validation import as_kernel_array

WEIGHT_DTYPES = ("float32", "float64", "bfloat16", "float16", "int8")
LOW_PRECISION = ("bfloat16", "float16", "int8")

# The array dtype each storage type keeps its matrices in.
STORAGE_ARRAY_DTYPE: dict[str, np.dtype] = {
    "float32": np.dtype(np.float32),
    "float64": np.dtype(np.float64),
    "bfloat16": np.dtype(np.uint16),
    "float16": np.dtype(np.float16),
    "int8": np.dtype(np.int8),
}

_BF16_MAX = float(np.uint32(0x7F7F0000).view(np.float32))
_F32_MAX = float(np.finfo(np.float32).max)


def resolve_weight_dtype(weight_dtype: Any) -> str:
    """One of WEIGHT_DTYPES, from its name or a NumPy float dtype."""
    if isinstance(weight_dtype, str):
        name = weight_dtype.lower()
        name = {"bf16": "bfloat16", "fp16": "float16", "half": "float16",
                "fp32": "float32", "fp64": "float64"}.get(name, name)
    else:
        try:
            name = np.dtype(weight_dtype).name
        except TypeError:
            name = repr(weight_dtype)
    if name not in WEIGHT_DTYPES:
        raise ValueError(f"weight_dtype must be one of {', '.join(WEIGHT_DTYPES)}; "
                         f"got {weight_dtype!r}")
    return name


# Matrices are converted in blocks of rows of about this many elements, so a
# large head needs no full-size float64 (or uint32) temporaries.
_BLOCK_ELEMENTS = 1 << 20


def _row_blocks(shape: tuple[int, ...]) -> Iterator[slice]:
    rows_per_block = max(1, _BLOCK_ELEMENTS // max(1, shape[1]))
    for start in range(0, shape[0], rows_per_block):
        yield slice(start, start + rows_per_block)


def _bfloat16_bits(block: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns of a block of finite values, nearest even."""
    if block.dtype.kind == "f" and block.dtype.itemsize <= 4:
        bits = np.ascontiguousarray(block, dtype=np.float32).view(np.uint32)
    else:
        # Wider input is first rounded to float32 *to odd* (truncate, then set
        # the last bit if anything was cut off), which makes the second
        # rounding, to bfloat16, correct: no double-rounding error.
        wide = block.astype(np.float64)
        with np.errstate(over="ignore"):
            narrow = wide.astype(np.float32)
        bits = narrow.view(np.uint32)
        narrow_wide = narrow.astype(np.float64)
        inexact = narrow_wide != wide
        bits[inexact & (np.abs(narrow_wide) > np.abs(wide))] -= 1
        bits[inexact] |= 1
    rounding = ((bits >> 16) & 1) + np.uint32(0x7FFF)
    return ((bits + rounding) >> 16).astype(np.uint16)


def encode_bfloat16(values: np.ndarray) -> np.ndarray:
    """uint16 bfloat16 bit patterns of a finite 2-D array (of any real dtype),
    rounded to nearest even.  Values beyond the bfloat16 range become inf
    (the caller reports them)."""
    out = np.empty(values.shape, dtype=np.uint16)
    for rows in _row_blocks(values.shape):
        out[rows] = _bfloat16_bits(values[rows])
    return out


def decode_bfloat16(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def quantize_int8(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-row int8 of a finite 2-D array: (q int8, scale float32)."""
    q = np.empty(values.shape, dtype=np.int8)
    scales = np.empty(values.shape[0], dtype=np.float32)
    for rows in _row_blocks(values.shape):
        wide = values[rows].astype(np.float64)
        with np.errstate(over="ignore"):  # beyond float32: inf, reported by the caller
            block_scales = (np.abs(wide).max(axis=1) / 127).astype(np.float32)
        # A zero scale (an all-zero row, or one below float32's range) stores zeros.
        usable = (block_scales > 0) & np.isfinite(block_scales)
        divisor = np.where(usable, block_scales, 1).astype(np.float64)[:, None]
        block_q = np.clip(np.rint(wide / divisor), -127, 127).astype(np.int8)
        block_q[~usable] = 0
        q[rows], scales[rows] = block_q, block_scales
    return q, scales


@dataclass(frozen=True)
class StoredMatrix:
    """One weight matrix as the kernels read it: ``data`` (C-contiguous and
    aligned, of STORAGE_ARRAY_DTYPE[weight_dtype]) and, for int8, per-row
    float32 ``scales``."""

    weight_dtype: str
    data: np.ndarray
    scales: Optional[np.ndarray] = None

    @classmethod
    def encode(cls, values: np.ndarray, weight_dtype: str, name: str) -> StoredMatrix:
        """Store finite ``values`` (float or int, 2-D) as ``weight_dtype``;
        ValueError if they do not fit."""
        if weight_dtype == "int8":
            stored = cls("int8", *quantize_int8(values))
            limit = _F32_MAX  # the scales and the dequantized weights are float32
        elif weight_dtype == "bfloat16":
            stored = cls(weight_dtype, encode_bfloat16(values))
            limit = _BF16_MAX
        else:
            data = as_kernel_array(values, STORAGE_ARRAY_DTYPE[weight_dtype])
            stored = cls(weight_dtype, data)
            limit = float(np.finfo(data.dtype).max)
        if not stored.all_finite():
            big = max(float(np.abs(values[rows]).max()) for rows in _row_blocks(values.shape))
            raise ValueError(
                f"{name} holds values too large for {weight_dtype} (largest magnitude "
                f"{big:.6g}; the {weight_dtype} range ends at {limit:.6g}"
                + (", that of its float32 scales)" if weight_dtype == "int8" else ")"))
        return stored

    @classmethod
    def from_arrays(cls, weight_dtype: str, data: Any, scales: Any, name: str) -> StoredMatrix:
        """Check already-stored arrays (e.g. read from a checkpoint): dtype,
        2-D, finite values, and for int8 one finite scale >= 0 per row."""
        expected = STORAGE_ARRAY_DTYPE[weight_dtype]
        array = np.asarray(data)
        if array.dtype.newbyteorder("=") != expected:
            raise TypeError(f"{name} stored as {weight_dtype} must have dtype {expected}, "
                            f"got {array.dtype}")
        if array.ndim != 2 or 0 in array.shape:
            raise ValueError(f"{name} must be a non-empty 2-D array, got shape {array.shape}")
        array = as_kernel_array(array, expected)
        scale_array = None
        if weight_dtype == "int8":
            if scales is None:
                raise ValueError(f"{name} stored as int8 needs its per-row scales")
            scale_array = as_kernel_array(np.asarray(scales), np.dtype(np.float32))
            if scale_array.shape != (array.shape[0],):
                raise ValueError(f"{name} scales must have shape ({array.shape[0]},), "
                                 f"got {scale_array.shape}")
            if not (np.isfinite(scale_array).all() and (scale_array >= 0).all()):
                raise ValueError(f"{name} scales must be finite and >= 0")
        elif scales is not None:
            raise ValueError(f"{name} stored as {weight_dtype} takes no scales")
        stored = cls(weight_dtype, array, scale_array)
        if not stored.all_finite():
            if weight_dtype == "int8":
                raise ValueError(f"{name}: q * scale overflows float32 (scales too large)")
            raise ValueError(f"{name} contains NaN or inf")
        return stored

    def all_finite(self) -> bool:
        """Whether every dequantized weight is finite (no NaN/inf patterns, no
        int8 ``q * scale`` beyond float32), checked without dequantizing."""
        data = self.data
        if self.weight_dtype == "int8":
            assert self.scales is not None
            if not np.isfinite(self.scales).all():
                return False
            largest = np.maximum(data.max(axis=1).astype(np.int16),
                                 -data.min(axis=1).astype(np.int16)).astype(np.float32)
            with np.errstate(over="ignore"):
                return bool(np.isfinite(largest * self.scales).all())
        if self.weight_dtype == "bfloat16":
            # Exponent bits all ones: inf or NaN.
            return not any(((data[rows] & 0x7F80) == 0x7F80).any()
                           for rows in _row_blocks(data.shape))
        return all(bool(np.isfinite(data[rows]).all()) for rows in _row_blocks(data.shape))

    @property
    def shape(self) -> tuple[int, int]:
        return self.data.shape  # type: ignore[return-value]

    @property
    def nbytes(self) -> int:
        return self.data.nbytes + (0 if self.scales is None else self.scales.nbytes)

    def dequantize(self) -> np.ndarray:
        """The values the kernels compute with: float32 (float64 for a float64
        head); int8 rows are ``q * scale`` rounded to float32."""
        if self.weight_dtype == "bfloat16":
            return decode_bfloat16(self.data)
        if self.weight_dtype == "int8":
            assert self.scales is not None
            return self.data.astype(np.float32) * self.scales[:, None]
        if self.weight_dtype == "float16":
            return self.data.astype(np.float32)
        return self.data
