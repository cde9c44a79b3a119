"""How a head stores its two weight matrices: float32/float64, or low precision.

* ``"bfloat16"``: uint16 bit patterns (the upper half of a float32), rounded to
  nearest, ties to even -- correctly, also from float64 input.
* ``"float16"``: IEEE half (NumPy's float16, correctly rounded).
* ``"int8"``: symmetric per output row, ``w[r, j] ~ q[r, j] * scale[r]`` with
  ``scale[r] = max_j |w[r, j]| / 127`` in float32 and ``q = round(w / scale)``;
  an all-zero row gets ``q = 0`` and ``scale = 0``.
* ``"q8"`` (llama.cpp's Q8_0): each row in groups of GROUP_SIZE = 32 columns
  (the last one shorter when d is not a multiple of 32), one float16 scale
  per group, ``scale = fp16(max |w| / 127)`` (the quotient in float64, then
  rounded to nearest even float16), ``q = clip(round(w / scale), -127, 127)``
  (half to even); int8 codes (rows, d), scales (rows, ceil(d / 32)).
* ``"q4"`` (llama.cpp's Q4_0, symmetric): ``scale = fp16(m / -8)`` with ``m``
  the group's value of largest magnitude (the first, on ties), ``code =
  clip(round(w / scale) + 8, 0, 15)``, weight ``(code - 8) * scale``; two codes
  per byte -- byte i of a group holds column i in its low nibble and column
  i + 16 in its high one -- so codes are uint8 (rows, 16 * ceil(d / 32)), the
  last group padded with code 8 (weight 0).
  A q8/q4 group whose scale is 0 (all zeros, or below float16's range) stores
  weight 0; codes have at most 8 significant bits and scales 11, so every
  dequantized weight ``q * scale`` is exact in float32.

Every stored value converts exactly to float32, and low-precision heads
compute in float32: the kernels use exactly the dequantized weights (int8
rows apply their scale to the finished dot product ``q . x``, and fall back
to the dequantized row where that sum would overflow float32; q8/q4 groups
are dequantized in registers, ``q * scale``, before the multiply-add).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Optional

import numpy as np

from ._validation import as_kernel_array

WEIGHT_DTYPES = ("float32", "float64", "bfloat16", "float16", "int8", "q8", "q4")
LOW_PRECISION = ("bfloat16", "float16", "int8", "q8", "q4")
# Group-wise formats: one float16 scale per GROUP_SIZE weights along a row.
GROUPED = ("q8", "q4")
GROUP_SIZE = 32

# The array dtype each storage type keeps its matrices in.
STORAGE_ARRAY_DTYPE: dict[str, np.dtype] = {
    "float32": np.dtype(np.float32),
    "float64": np.dtype(np.float64),
    "bfloat16": np.dtype(np.uint16),
    "float16": np.dtype(np.float16),
    "int8": np.dtype(np.int8),
    "q8": np.dtype(np.int8),
    "q4": np.dtype(np.uint8),
}
# The dtype of each storage type's scales (None: no scales).
SCALE_DTYPE: dict[str, Optional[np.dtype]] = {
    "float32": None, "float64": None, "bfloat16": None, "float16": None,
    "int8": np.dtype(np.float32), "q8": np.dtype(np.float16), "q4": np.dtype(np.float16),
}
_F16_MAX = float(np.finfo(np.float16).max)


def n_groups(n_cols: int) -> int:
    """Groups of GROUP_SIZE columns of a q8/q4 row (the last one may be short)."""
    return -(-n_cols // GROUP_SIZE)


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


def _group_blocks(values: np.ndarray, rows: slice) -> np.ndarray:
    """float64 rows of ``values`` as (rows, groups, GROUP_SIZE), the last group
    padded with zeros."""
    wide = values[rows].astype(np.float64)
    pad = n_groups(wide.shape[1]) * GROUP_SIZE - wide.shape[1]
    if pad:
        wide = np.concatenate([wide, np.zeros((wide.shape[0], pad))], axis=1)
    return wide.reshape(wide.shape[0], -1, GROUP_SIZE)


def _f16_scales(target: np.ndarray) -> np.ndarray:
    """Group scales rounded to float16 (nearest even; beyond its range: inf,
    reported by the caller)."""
    with np.errstate(over="ignore"):
        return target.astype(np.float16)


def quantize_q8(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Group-wise int8 (llama.cpp's Q8_0 rounding) of a finite 2-D array:
    (q int8 (rows, d), scale float16 (rows, groups)); see the module notes."""
    rows_, cols = values.shape
    q = np.empty((rows_, cols), dtype=np.int8)
    scales = np.empty((rows_, n_groups(cols)), dtype=np.float16)
    for rows in _row_blocks(values.shape):
        groups = _group_blocks(values, rows)
        block_scales = _f16_scales(np.abs(groups).max(axis=2) / 127)
        wide_scales = block_scales.astype(np.float64)
        usable = (wide_scales > 0) & np.isfinite(wide_scales)
        divisor = np.where(usable, wide_scales, 1)[:, :, None]
        block_q = np.clip(np.rint(groups / divisor), -127, 127)
        block_q[~usable] = 0
        q[rows] = block_q.reshape(groups.shape[0], -1)[:, :cols].astype(np.int8)
        scales[rows] = block_scales
    return q, scales


def quantize_q4(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Group-wise symmetric 4-bit (llama.cpp's Q4_0 rounding) of a finite 2-D
    array: (packed codes uint8 (rows, groups * 16), scale float16 (rows,
    groups)); see the module notes for the layout."""
    rows_, cols = values.shape
    groups_per_row = n_groups(cols)
    packed = np.empty((rows_, groups_per_row * GROUP_SIZE // 2), dtype=np.uint8)
    scales = np.empty((rows_, groups_per_row), dtype=np.float16)
    for rows in _row_blocks(values.shape):
        groups = _group_blocks(values, rows)
        # The value of largest magnitude maps to code 0 (-8 * scale): the
        # scale carries its sign.
        at = np.abs(groups).argmax(axis=2)[:, :, None]
        extreme = np.take_along_axis(groups, at, axis=2)[:, :, 0]
        block_scales = _f16_scales(extreme / -8)
        wide_scales = block_scales.astype(np.float64)
        usable = (wide_scales != 0) & np.isfinite(wide_scales)
        divisor = np.where(usable, wide_scales, 1)[:, :, None]
        codes = np.clip(np.rint(groups / divisor) + 8, 0, 15)
        codes[~usable] = 8
        codes = codes.astype(np.uint8)
        half = GROUP_SIZE // 2
        packed[rows] = (codes[:, :, :half] | (codes[:, :, half:] << 4)).reshape(
            groups.shape[0], -1)
        scales[rows] = block_scales
    return packed, scales


def unpack_q4(packed: np.ndarray) -> np.ndarray:
    """The 4-bit codes (0..15) of packed q4 rows, (rows, groups * 32)."""
    half = GROUP_SIZE // 2
    blocks = packed.reshape(packed.shape[0], -1, half)
    return np.concatenate([blocks & 0x0F, blocks >> 4], axis=2).reshape(packed.shape[0], -1)


@dataclass(frozen=True)
class StoredMatrix:
    """One weight matrix as the kernels read it: ``data`` (C-contiguous and
    aligned, of STORAGE_ARRAY_DTYPE[weight_dtype]) and, for int8, per-row
    float32 ``scales``; for q8/q4, float16 ``scales`` of shape (rows, groups).
    ``n_cols`` is the matrix's column count (q4 data holds two per byte, the
    last group padded)."""

    weight_dtype: str
    data: np.ndarray
    scales: Optional[np.ndarray] = None
    n_cols: int = -1

    def __post_init__(self) -> None:
        if self.n_cols < 0:
            object.__setattr__(self, "n_cols", int(self.data.shape[1]))

    @classmethod
    def encode(cls, values: np.ndarray, weight_dtype: str, name: str) -> StoredMatrix:
        """Store finite ``values`` (float or int, 2-D) as ``weight_dtype``;
        ValueError if they do not fit."""
        if weight_dtype == "int8":
            stored = cls("int8", *quantize_int8(values))
            limit = _F32_MAX  # the scales and the dequantized weights are float32
        elif weight_dtype == "q8":
            stored = cls("q8", *quantize_q8(values))
            limit = 127 * _F16_MAX  # float16 scales
        elif weight_dtype == "q4":
            stored = cls("q4", *quantize_q4(values), n_cols=int(values.shape[1]))
            limit = 8 * _F16_MAX
        elif weight_dtype == "bfloat16":
            stored = cls(weight_dtype, encode_bfloat16(values))
            limit = _BF16_MAX
        else:
            data = as_kernel_array(values, STORAGE_ARRAY_DTYPE[weight_dtype])
            stored = cls(weight_dtype, data)
            limit = float(np.finfo(data.dtype).max)
        if stored.scales is not None:
            object.__setattr__(stored, "scales", as_kernel_array(stored.scales,
                                                                 stored.scales.dtype))
            object.__setattr__(stored, "data", as_kernel_array(stored.data, stored.data.dtype))
        if not stored.all_finite():
            big = max(float(np.abs(values[rows]).max()) for rows in _row_blocks(values.shape))
            note = {"int8": ", that of its float32 scales)",
                    "q8": ", that of its float16 scales)",
                    "q4": ", that of its float16 scales)"}.get(weight_dtype, ")")
            raise ValueError(
                f"{name} holds values too large for {weight_dtype} (largest magnitude "
                f"{big:.6g}; the {weight_dtype} range ends at {limit:.6g}" + note)
        return stored

    @classmethod
    def from_arrays(cls, weight_dtype: str, data: Any, scales: Any, name: str,
                    n_cols: Optional[int] = None) -> StoredMatrix:
        """Check already-stored arrays (e.g. read from a checkpoint): dtype,
        2-D, finite values, and for int8 one finite scale >= 0 per row, for
        q8/q4 one finite float16 scale per row and group.  ``n_cols`` (q4
        only: its column count; default 2 * data.shape[1])."""
        expected = STORAGE_ARRAY_DTYPE[weight_dtype]
        array = np.asarray(data)
        if array.dtype.newbyteorder("=") != expected:
            raise TypeError(f"{name} stored as {weight_dtype} must have dtype {expected}, "
                            f"got {array.dtype}")
        if array.ndim != 2 or 0 in array.shape:
            raise ValueError(f"{name} must be a non-empty 2-D array, got shape {array.shape}")
        array = as_kernel_array(array, expected)
        cols = int(array.shape[1])
        if weight_dtype == "q4":
            if array.shape[1] % (GROUP_SIZE // 2):
                raise ValueError(f"{name} stored as q4 must have a multiple of "
                                 f"{GROUP_SIZE // 2} bytes per row (groups of {GROUP_SIZE} "
                                 f"4-bit codes), got shape {array.shape}")
            full = 2 * cols
            if n_cols is None:
                cols = full
            else:
                if isinstance(n_cols, bool) or not isinstance(n_cols, (int, np.integer)):
                    raise TypeError(f"{name}: n_cols must be an int, got {n_cols!r}")
                cols = int(n_cols)
                if not full - GROUP_SIZE < cols <= full:
                    raise ValueError(f"{name}: {cols} columns do not fit {array.shape[1]} "
                                     f"bytes of q4 codes per row (between "
                                     f"{full - GROUP_SIZE + 1} and {full})")
                pad = unpack_q4(array)[:, cols:]
                if (pad != 8).any():
                    raise ValueError(f"{name}: the padding codes past column {cols} "
                                     "must be 8 (weight 0)")
        elif n_cols is not None and n_cols != cols:
            raise ValueError(f"{name}: n_cols={n_cols!r} does not match its shape {array.shape}")
        scale_array = None
        scale_dtype = SCALE_DTYPE[weight_dtype]
        if scale_dtype is not None:
            if scales is None:
                what = "per-row" if weight_dtype == "int8" else "per-group"
                raise ValueError(f"{name} stored as {weight_dtype} needs its {what} scales")
            raw = np.asarray(scales)
            if raw.dtype.newbyteorder("=") != scale_dtype:
                raise TypeError(f"{name} scales of a {weight_dtype} matrix must have dtype "
                                f"{scale_dtype}, got {raw.dtype}")
            scale_array = as_kernel_array(raw, scale_dtype)
            want = ((array.shape[0],) if weight_dtype == "int8"
                    else (array.shape[0], n_groups(cols)))
            if scale_array.shape != want:
                raise ValueError(f"{name} scales must have shape {want}, "
                                 f"got {scale_array.shape}")
            if not np.isfinite(scale_array).all():
                raise ValueError(f"{name} scales must be finite")
            if weight_dtype != "q4" and not (scale_array >= 0).all():
                raise ValueError(f"{name} scales must be finite and >= 0")
            if weight_dtype == "q8" and (array == -128).any():
                raise ValueError(f"{name} stored as q8 must have codes in [-127, 127]")
        elif scales is not None:
            raise ValueError(f"{name} stored as {weight_dtype} takes no scales")
        stored = cls(weight_dtype, array, scale_array, cols)
        if not stored.all_finite():
            if weight_dtype == "int8":
                raise ValueError(f"{name}: q * scale overflows float32 (scales too large)")
            raise ValueError(f"{name} contains NaN or inf")
        return stored

    def all_finite(self) -> bool:
        """Whether every dequantized weight is finite (no NaN/inf patterns, no
        int8 ``q * scale`` beyond float32), checked without dequantizing."""
        data = self.data
        if self.weight_dtype in GROUPED:
            # q * scale with a finite float16 scale is exact in float32.
            assert self.scales is not None
            return bool(np.isfinite(self.scales).all())
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
        return (int(self.data.shape[0]), self.n_cols)

    @property
    def nbytes(self) -> int:
        return self.data.nbytes + (0 if self.scales is None else self.scales.nbytes)

    def dequantize(self) -> np.ndarray:
        """The values the kernels compute with: float32 (float64 for a float64
        head); int8 rows are ``q * scale`` rounded to float32; q8 and q4
        weights are ``q * scale`` and ``(code - 8) * scale``, exact in float32."""
        if self.weight_dtype == "bfloat16":
            return decode_bfloat16(self.data)
        if self.weight_dtype == "int8":
            assert self.scales is not None
            return self.data.astype(np.float32) * self.scales[:, None]
        if self.weight_dtype in GROUPED:
            assert self.scales is not None
            out = np.empty(self.shape, dtype=np.float32)
            for rows in _row_blocks(self.shape):
                if self.weight_dtype == "q8":
                    q = self.data[rows].astype(np.float32)
                else:
                    q = unpack_q4(self.data[rows])[:, :self.n_cols].astype(np.float32) - 8
                scale = np.repeat(self.scales[rows].astype(np.float32), GROUP_SIZE, axis=1)
                out[rows] = q * scale[:, :self.n_cols]
            return out
        if self.weight_dtype == "float16":
            return self.data.astype(np.float32)
        return self.data
