"""Input checks, done once at the Python boundary.

Kernels (compiled or fallback) receive C-contiguous, aligned float32/float64
arrays of the right shapes and never check anything themselves.  Errors name the
argument and what was expected: ``TypeError`` for a wrong kind of value,
``ValueError`` for a wrong shape or value.
"""

from __future__ import annotations

import math
import numbers
import operator
import os
from typing import Any, Optional

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

# The largest vocabulary (draft or target) a head accepts: token ids are int32
# in every tokenizer we know of.
MAX_VOCAB_SIZE = 2**31 - 1


def check_int(value: Any, name: str, minimum: int = 1) -> int:
    """``value`` as a Python int >= ``minimum`` (bools and non-integers are a
    TypeError naming ``name``, smaller values a ValueError)."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got a bool")
    try:
        number = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} "
                        f"{value!r}") from None
    if number < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {number}")
    return number


def _as_array(value: Any, name: str) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    try:
        return np.asarray(value)
    except ValueError as exc:  # ragged nested lists
        raise ValueError(f"{name} must be a rectangular array; got ragged input ({exc})") from None


def real_array(value: Any, name: str) -> np.ndarray:
    """``value`` as an ndarray of a real numeric dtype (not yet converted)."""
    array = _as_array(value, name)
    if array.dtype == object and all(
            isinstance(v, numbers.Real) and not isinstance(v, bool) for v in array.flat):
        # Python ints beyond int64 land in object arrays; as numbers they are fine.
        try:
            array = array.astype(np.float64)
        except OverflowError:
            raise ValueError(f"{name} holds a number too large for float64") from None
    kind = array.dtype.kind
    if kind == "c":
        raise TypeError(f"{name} must be real, got complex dtype {array.dtype}")
    if kind not in "fiub":
        raise TypeError(f"{name} must be numeric, got dtype {array.dtype}")
    return array


def numeric_array(value: Any, name: str, shape_text: str, ndim: int) -> np.ndarray:
    """``value`` as a real ndarray with ``ndim`` dimensions, none of them empty."""
    array = real_array(value, name)
    if array.ndim != ndim:
        raise ValueError(f"{name} must have shape {shape_text}, got shape {array.shape}")
    if 0 in array.shape:
        raise ValueError(f"{name} must not be empty, got shape {array.shape}")
    return array


def head_arrays(projection_weight: Any, projection_bias: Any, lm_head_weight: Any,
                names: tuple[str, str, str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The three weight arrays of a head, real and of consistent shapes
    (W: (d_proj, d_model), b: (d_proj,), L: (vocab_size, d_proj)); ``names``
    are the caller's argument names, used in the error messages."""
    weight_name, bias_name, lm_head_name = names
    weight = numeric_array(projection_weight, weight_name, "(d_proj, d_model)", 2)
    bias = numeric_array(projection_bias, bias_name, "(d_proj,)", 1)
    lm_head = numeric_array(lm_head_weight, lm_head_name, "(vocab_size, d_proj)", 2)
    d_proj = weight.shape[0]
    if bias.shape != (d_proj,):
        raise ValueError(
            f"{bias_name} must have shape (d_proj,) = ({d_proj},) to match "
            f"{weight_name} {weight.shape}, got shape {bias.shape}"
        )
    if lm_head.shape[1] != d_proj:
        raise ValueError(
            f"{lm_head_name} must have shape (vocab_size, d_proj) with d_proj = {d_proj} "
            f"(from {weight_name} {weight.shape}), got shape {lm_head.shape}"
        )
    return weight, bias, lm_head


def resolve_dtype(arrays: dict[str, np.ndarray], dtype: Optional[Any]) -> np.dtype:
    """The head's dtype: ``dtype`` when given, else the float dtype the weights
    share (integer and bool weights are cast to it; float64 if none is float)."""
    if dtype is not None:
        resolved = np.dtype(dtype)
        if resolved not in FLOAT_DTYPES:
            raise TypeError(f"dtype must be float32 or float64, got {resolved}")
        return resolved
    # Byte order does not matter here: conversion to native order is free of loss.
    # np.dtype(type) is NumPy's canonical instance: DraftHead.predict's fast
    # path compares dtypes by identity.
    float_kinds = {name: np.dtype(a.dtype.type) for name, a in arrays.items()
                   if a.dtype.kind == "f"}
    for name, found in float_kinds.items():
        if found not in FLOAT_DTYPES:
            raise TypeError(
                f"{name} has dtype {found}; eagle_fast computes in float32 or float64: "
                "cast it, or pass dtype=np.float32 / np.float64 to convert all weights"
            )
    distinct = set(float_kinds.values())
    if len(distinct) > 1:
        listing = ", ".join(f"{n} is {d}" for n, d in float_kinds.items())
        raise TypeError(
            f"weights have mixed dtypes ({listing}); pass dtype=np.float32 or "
            "dtype=np.float64 to convert them to one"
        )
    return distinct.pop() if distinct else np.dtype(np.float64)


def aligned(array: np.ndarray) -> np.ndarray:
    """``array``, or an aligned copy of it when its data is not aligned for
    its dtype (e.g. ``np.frombuffer`` at an odd offset).  Kernels load
    elements in place, and a misaligned load is undefined behaviour in C."""
    return array if array.flags.aligned else array.copy()


def as_kernel_array(array: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """C-contiguous, aligned array of ``dtype`` (no copy when it already is
    one).  Values beyond the dtype's range become inf, which callers check for."""
    with np.errstate(over="ignore"):
        return aligned(np.ascontiguousarray(array, dtype=dtype))


def check_finite(array: np.ndarray, name: str) -> None:
    if not np.isfinite(array).all():
        bad = np.argwhere(~np.isfinite(array))[0]
        where = tuple(int(i) for i in bad)
        raise ValueError(f"{name} contains NaN or inf (first at index {where})")


def check_temperature(temperature: Any) -> float:
    """Finite and >= 0 (0 means no scaling, as the spec); anything else is a ValueError."""
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise ValueError(f"temperature must be a real number, got {temperature!r}")
    try:
        value = float(temperature)
    except OverflowError:
        value = math.inf
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"temperature must be finite and >= 0, got {temperature!r}")
    return value


def check_top_k(top_k: Any, vocab_size: int) -> int:
    if isinstance(top_k, bool):
        raise TypeError("top_k must be an integer, got a bool")
    try:
        k = operator.index(top_k)
    except TypeError:
        raise TypeError(f"top_k must be an integer, got {top_k!r}") from None
    if not 1 <= k <= vocab_size:
        raise ValueError(f"top_k must be in [1, vocab_size={vocab_size}], got {k}")
    return k


def check_bool(value: Any, name: str) -> bool:
    """A bool or NumPy bool as a bool; anything else (``"no"``, 0, None) is a
    TypeError rather than its truth value."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TypeError(f"{name} must be a bool, got {value!r}")


def available_threads() -> int:
    """What a negative ``num_threads`` counts back from, the same on every
    backend (with or without OpenMP): OMP_NUM_THREADS when it is set (its
    first value, as OpenMP reads it), else the CPUs this process may use."""
    first = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if first.isdigit() and int(first) > 0:
        return int(first)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def resolve_num_threads(num_threads: Any, default: int) -> int:
    """scikit-learn's convention: None -> ``default``, the backend's own (the
    OpenMP default, which honours OMP_NUM_THREADS; 1 without OpenMP); n > 0
    -> n; n < 0 -> available_threads() + 1 + n (-1 = all, -2 = all but one),
    a ValueError when that leaves no thread; 0 is a ValueError.  Which values
    are accepted does not depend on the backend.  More threads than CPUs are
    capped at the CPU count: the kernels are memory-bound and
    oversubscription only adds waiting."""
    if num_threads is None:
        return default
    if isinstance(num_threads, bool):
        raise TypeError("num_threads must be an integer or None, got a bool")
    try:
        n = operator.index(num_threads)
    except TypeError:
        raise TypeError(f"num_threads must be an integer or None, got {num_threads!r}") from None
    if n == 0:
        raise ValueError("num_threads=0 is invalid: use None for the default, or n >= 1")
    if n < 0:
        available = available_threads()
        resolved = available + 1 + n
        if resolved < 1:
            raise ValueError(
                f"num_threads={n} leaves no thread ({available} available: OMP_NUM_THREADS, "
                "else the CPUs this process may use)"
            )
        return resolved
    return min(n, max(default, os.cpu_count() or 1))


def check_target_vocab_size(target_vocab_size: Any, vocab_size: int) -> int:
    """An int in ``[vocab_size, MAX_VOCAB_SIZE]``; TypeError for anything but
    an integer (bools and floats included), ValueError outside the range."""
    if isinstance(target_vocab_size, (bool, np.bool_)):
        raise TypeError("target_vocab_size must be an integer, got a bool")
    try:
        limit = operator.index(target_vocab_size)
    except TypeError:
        raise TypeError(f"target_vocab_size must be an integer, got "
                        f"{type(target_vocab_size).__name__} {target_vocab_size!r}") from None
    if limit < vocab_size:
        raise ValueError(f"target_vocab_size={limit} is smaller than the draft "
                         f"vocabulary ({vocab_size})")
    if limit > MAX_VOCAB_SIZE:
        raise ValueError(f"target_vocab_size={limit} is larger than the largest "
                         f"supported vocabulary ({MAX_VOCAB_SIZE})")
    return limit


def check_d2t(d2t: Any, vocab_size: int,
              target_vocab_size: Any) -> tuple[np.ndarray, np.ndarray, int]:
    """An EAGLE-3 draft-to-target map (``target_id = draft_id + d2t[draft_id]``)
    as ``(offsets, target_ids, target_vocab_size)``, both arrays int64.  The
    map must cover the draft vocabulary, stay inside ``[0,
    target_vocab_size)`` (by default one past the largest target id; at most
    ``MAX_VOCAB_SIZE``) and be one-to-one."""
    limit = None if target_vocab_size is None else \
        check_target_vocab_size(target_vocab_size, vocab_size)
    array = real_array(d2t, "d2t")
    if array.dtype.kind not in "iu":
        raise TypeError(f"d2t must hold integer offsets, got dtype {array.dtype}")
    if array.shape != (vocab_size,):
        raise ValueError(f"d2t must have shape (vocab_size,) = ({vocab_size},), "
                         f"got shape {array.shape}")
    shown_limit = MAX_VOCAB_SIZE if limit is None else limit
    # 64-bit offsets beyond +-2**62 are out of range anyway; caught before the
    # int64 arithmetic, where they could wrap (uint64 2**64 - 1 is not -1).
    if array.dtype.itemsize == 8:
        bound = array.dtype.type(2**62)
        wild = array > bound
        if array.dtype.kind == "i":
            wild |= array < -bound
        if wild.any():
            i = int(np.flatnonzero(wild)[0])
            raise ValueError(f"d2t maps draft token {i} to target id {i + int(array[i])}, "
                             f"outside the target vocabulary [0, {shown_limit})")
    offsets = array.astype(np.int64)
    targets = np.arange(vocab_size, dtype=np.int64) + offsets
    if limit is None:
        limit = max(int(targets.max()) + 1, vocab_size)
        if limit > MAX_VOCAB_SIZE:
            i = int(np.argmax(targets))
            raise ValueError(f"d2t maps draft token {i} to target id {int(targets[i])}, "
                             f"outside the target vocabulary [0, {MAX_VOCAB_SIZE})")
    outside = np.flatnonzero((targets < 0) | (targets >= limit))
    if outside.size:
        i = int(outside[0])
        raise ValueError(f"d2t maps draft token {i} to target id {int(targets[i])}, outside "
                         f"the target vocabulary [0, {limit})")
    order = np.argsort(targets, kind="stable")
    repeated = np.flatnonzero(targets[order][1:] == targets[order][:-1])
    if repeated.size:
        first, second = (int(i) for i in order[repeated[0]:repeated[0] + 2])
        raise ValueError(f"d2t is not one-to-one: draft tokens {first} and {second} both "
                         f"map to target id {int(targets[first])}")
    return offsets, targets, limit
