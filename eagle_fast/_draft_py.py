"""Pure-Python (NumPy) fallback of the fused draft kernel in src/_draft_kernel.pyx.

Same API and semantics: x = SiLU(W h + b) with the spec's |v| >= 500 cut-off,
logits = L x / T (unscaled for T <= 0), the softmax shifted by the largest
logit (exp in the head's dtype, sums in float64), top-k best first with ties
to the lower token id.  Used when the extension is not
built or EAGLE_FAST_BACKEND=python.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Tuple

import numpy as np

from ._int_dot_py import IntMatrix, fma32, int_products
from ._storage import StoredMatrix

# (n_bad, tokens, token_probs, logits or None, probs or None)
ForwardResult = Tuple[int, np.ndarray, np.ndarray, Optional[np.ndarray], Optional[np.ndarray]]

OPENMP = False
SIMD = "none"
COMPILE_FLAGS = ""
COMPILER = "none"


def max_threads() -> int:
    return 1


def fma_f32(a: float, b: float, c: float) -> float:
    """fl32(a * b + c), one rounding, as the integer dot products accumulate
    (a: an integer of at most 20 bits); for the tests."""
    with np.errstate(all="ignore"):
        return float(fma32(np.array([a], np.float32), np.array([b], np.float32),
                           np.array([c], np.float32))[0])


# Per-call costs are most of a small head's time, so the hot calls skip
# NumPy's Python-level wrappers where NumPy exposes the function underneath.
#
# The products keep two promises: a batch gives exactly what its states give
# one by one, and equal LM-head rows give equal logits (ties stay exact).
# Every state's product is one BLAS matrix-vector product (gemv) with the
# same arguments whatever the batch: a single state is ``_dot(matrix,
# vector)``, a batch ``_matmul(matrix[None], states[:, :, None])``, whose loop
# over the stacked states calls that same gemv on each (one NumPy call for
# the whole batch), so a state's products do not depend on the batch (the
# test suite checks it bit for bit at every alignment and at batch sizes
# around the blocks).  gemv is 2-4x faster
# than einsum's loop at 256 x 128 x 1000 and costs less to call at 16 x 8 x 50
# (one NumPy call per matrix whatever the batch).  gemv does not promise equal
# results for equal rows (its kernels take rows in blocks, with another kernel
# for the remainder), so a head whose LM head has repeated rows copies each
# repeat's logit from its first occurrence after the product.
# * ``_ignore_fp_errors()`` / ``_restore_fp_errors(token)`` is
#   ``np.errstate(all="ignore")`` (overflow and NaN are reported through
#   n_bad, never as warnings): NumPy >= 2 keeps the error state in a context
#   variable, which is thread- and task-safe to set directly.
try:
    from numpy._core.multiarray import c_einsum as _einsum
except ImportError:  # NumPy < 2 spells the module numpy.core
    _einsum = np.einsum
try:
    from numpy._core._multiarray_umath import _extobj_contextvar, _make_extobj
except ImportError:

    def _ignore_fp_errors() -> Any:
        state = np.errstate(all="ignore")
        state.__enter__()
        return state

    def _restore_fp_errors(token: Any) -> None:
        token.__exit__(None, None, None)
else:
    _IGNORE = _make_extobj(all="ignore")

    def _ignore_fp_errors() -> Any:
        return _extobj_contextvar.set(_IGNORE)

    _restore_fp_errors = _extobj_contextvar.reset

_add_reduce = np.add.reduce
_add = np.add
_max_reduce = np.maximum.reduce
_matmul = np.matmul
_dot = np.dot
_exp = np.exp
_subtract = np.subtract
_divide = np.divide
_FLOAT64 = np.dtype(np.float64)


def _as_int64(indices: np.ndarray) -> np.ndarray:
    """argmax's intp indices as int64 (the same array where intp is int64)."""
    return indices.astype(np.int64)


if np.dtype(np.intp) == np.int64:
    def _as_int64(indices: np.ndarray) -> np.ndarray:  # noqa: F811
        return indices

def repeated_rows(matrix: np.ndarray) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """``(repeats, firsts)``: the rows of ``matrix`` equal in value (as
    floats: -0.0 == 0.0) to an earlier row, and that earlier row's index (the
    first occurrence); None when all rows differ.  One einsum pass fingerprints
    the rows (equal rows get equal fingerprints: einsum's loop treats every row
    alike); rows with equal fingerprints are then compared element by element."""
    probe = np.asarray(np.random.default_rng(0x5EED).uniform(0.5, 1.5, matrix.shape[1]),
                       dtype=matrix.dtype)
    errors = _ignore_fp_errors()
    try:
        fingerprint = _einsum("ij,j->i", matrix, probe)
    finally:
        _restore_fp_errors(errors)
    fingerprint[np.isnan(fingerprint)] = np.inf  # inf - inf: still a candidate
    order = np.argsort(fingerprint, kind="stable")  # equal prints stay in row order
    ordered = fingerprint[order]
    change = np.flatnonzero(ordered[1:] != ordered[:-1]) + 1
    starts = np.concatenate(([0], change))
    stops = np.concatenate((change, [order.size]))
    repeats: list[np.ndarray] = []
    firsts: list[np.ndarray] = []
    for run in np.flatnonzero(stops - starts > 1).tolist():
        rows = order[starts[run]:stops[run]]
        while rows.size > 1:
            equal = (matrix[rows[1:]] == matrix[rows[0]]).all(axis=1)
            repeats.append(rows[1:][equal])
            firsts.append(np.full(int(equal.sum()), rows[0], dtype=np.intp))
            rows = rows[1:][~equal]
    if not repeats or not sum(r.size for r in repeats):
        return None
    return np.concatenate(repeats).astype(np.intp), np.concatenate(firsts)


def _as_compute(matrix: np.ndarray, weight_dtype: str,
                scales: Optional[np.ndarray], n_cols: int = -1) -> np.ndarray:
    """A stored matrix as the float values it stands for (native ones unchanged)."""
    if weight_dtype == "native":
        return matrix
    return StoredMatrix(weight_dtype, matrix, scales, n_cols).dequantize()


class KernelHead:
    """Weights of one head: validated C-contiguous arrays.  The bias sets the
    compute dtype; low-precision matrices ("bfloat16" bit patterns, "float16",
    "int8" with per-row scales, "q8"/"q4" with group scales) are converted
    to float32 once, here, which
    costs 2-4x their memory but keeps every call a plain float32 computation.
    ``activations="int8"`` (int8/q8/q4 only) keeps the integer codes instead
    and takes integer dot products with int8-quantized states
    (eagle_fast._int_dot_py, the compiled _int_dot.h's arithmetic)."""

    def __init__(self, projection_weight: np.ndarray, projection_bias: np.ndarray,
                 lm_head_weight: np.ndarray, weight_dtype: str = "native",
                 projection_scales: Optional[np.ndarray] = None,
                 lm_head_scales: Optional[np.ndarray] = None, residual: bool = False,
                 d_model: int = -1, activations: str = "float") -> None:
        self.activations = activations
        self._int: Optional[tuple[IntMatrix, IntMatrix]] = None
        if activations == "int8":
            if weight_dtype not in ("int8", "q8", "q4"):
                raise ValueError("activations='int8' needs int8, q8 or q4 weights")
            self._int = (
                IntMatrix(StoredMatrix(weight_dtype, projection_weight, projection_scales,
                                       d_model)),
                IntMatrix(StoredMatrix(weight_dtype, lm_head_weight, lm_head_scales,
                                       projection_bias.shape[0])))
        elif activations != "float":
            raise ValueError(f"activations must be 'float' or 'int8', got {activations!r}")
        self.bias = projection_bias
        if self._int is None:
            self.weight = _as_compute(projection_weight, weight_dtype, projection_scales,
                                      d_model)
            self.lm_head = _as_compute(lm_head_weight, weight_dtype, lm_head_scales,
                                       projection_bias.shape[0])
            self.d_proj, self.d_model = self.weight.shape
        else:   # the float copies are never used
            self.d_proj, self.d_model = self._int[0].n_rows, self._int[0].n_cols
        self.vocab = lm_head_weight.shape[0]
        self.type_num = projection_bias.dtype.num
        self.residual = residual
        self._float64 = projection_bias.dtype == np.float64
        if residual and self.d_proj != self.d_model:
            raise ValueError("a residual head needs d_proj == d_model")
        # The stacked forms the float products take (see above), made once;
        # integer dot products treat equal rows alike by themselves.
        self._repeats: Optional[Tuple[np.ndarray, np.ndarray]] = None
        if self._int is None:
            self._weight3 = self.weight[None]
            self._lm_head3 = self.lm_head[None]
            self._repeats = repeated_rows(self.lm_head)
        # A 0-d array of the dtype adds faster than the Python scalar 1.
        self._one = np.ones((), projection_bias.dtype)

    def _products(self, which: int, states: np.ndarray, n_states: int,
                  single: bool) -> np.ndarray:
        """``states @ M.T`` for M = W (``which`` 0) or L (1): the integer
        products of int8 activations, else one gemv per state (``np.dot``
        alone, a stacked matmul for a batch -- the same gemv either way)."""
        if self._int is not None:
            ints = self._int[which]
            out = int_products(ints, states.reshape(n_states, ints.n_cols))
            return out[0] if single else out
        dense = self.weight if which == 0 else self.lm_head
        n_in = dense.shape[1]
        if single:
            return _dot(dense, states)
        stacked = self._weight3 if which == 0 else self._lm_head3
        return _matmul(stacked, states.reshape(n_states, n_in, 1)).reshape(
            n_states, dense.shape[0])

    def forward(self, hidden: np.ndarray, temperature: float, top_k: int,
                want_logits: bool, want_probs: bool, n_threads: int) -> ForwardResult:
        """Run the head on ``hidden`` ((d_model,) or (B, d_model), of the head's
        dtype).  Returns ``(n_bad, tokens, token_probs, logits, probs)`` shaped
        like the compiled kernel's; n_bad counts states with a non-finite softmax.

        Every state's result is exactly what it gets alone: the products are
        one gemv per state whatever the batch (see above); everything after
        is elementwise or per row."""
        float64 = self._float64
        single = hidden.ndim == 1
        n_states = 1 if single else hidden.shape[0]
        errors = _ignore_fp_errors()
        try:
            # A batch as a stack of column vectors (B, d, 1); the elementwise
            # steps run on plain (d_proj,) or (B, d_proj) views (cheaper to
            # broadcast).
            v = self._products(0, hidden, n_states, single)
            v += self.bias
            # SiLU with the spec's cut-off.  For v >= 500, v / (1 + exp(-v))
            # already is exactly v (1 + exp(-v) rounds to 1), and so is -0.0
            # in float32 for v <= -500 (exp overflows); float64 needs the
            # cut-off spelled out (v * 0 keeps the sign; NaN/-inf give NaN).
            e = _exp(-v)
            _add(e, self._one, out=e)
            x = _divide(v, e, out=e)
            if float64:
                x = np.where(v > -500, x, v * 0)
            if self.residual:
                x += hidden
            scores = self._products(1, x, n_states, single)
            if self._repeats is not None:
                scores[..., self._repeats[0]] = scores[..., self._repeats[1]]
            if temperature > 0 and temperature != 1.0:  # (x / 1.0 is x)
                if float64:
                    scores /= temperature
                else:
                    # Divide in float64: a tiny T must not underflow to 0 in float32.
                    scores = (scores.astype(np.float64) / temperature).astype(np.float32)
            if single:
                return self._finish_one(scores, top_k, want_logits, want_probs)
            # The softmax is shifted by the largest logit; a non-finite
            # largest logit makes the total NaN, so the totals alone tell
            # whether a state's softmax is finite.
            shifted = _subtract(scores, _max_reduce(scores, axis=1, keepdims=True))
            _exp(shifted, out=shifted)
            total = _add_reduce(shifted, axis=1, keepdims=True, dtype=_FLOAT64)
        finally:
            _restore_fp_errors(errors)
        n_bad = 0
        # The totals are in [1, V]: their sum is finite unless one is not
        # (summed as a list: cheaper than a NumPy reduction for small B).
        if not math.isfinite(sum(total.ravel().tolist())):
            n_bad = hidden.shape[0] - int(np.count_nonzero(np.isfinite(total)))
        if top_k == 1:
            tokens = _as_int64(scores.argmax(axis=1, keepdims=True))
            token_probs = (1.0 / total).astype(scores.dtype, copy=False)
        else:
            # Stable sort of the negated scores: best first, ties to the lower id.
            tokens = np.argsort(-scores, axis=1, kind="stable")[:, :top_k].astype(
                np.int64, copy=False)
            token_probs = (np.take_along_axis(shifted, tokens, axis=1) / total).astype(
                scores.dtype, copy=False)
        probs = (shifted / total).astype(scores.dtype, copy=False) if want_probs else None
        return n_bad, tokens, token_probs, scores if want_logits else None, probs

    @staticmethod
    def _finish_one(scores: np.ndarray, top_k: int, want_logits: bool,
                    want_probs: bool) -> ForwardResult:
        """The softmax and top-k of one state's (V,) logits, with the batch
        path's arithmetic in 1-D (the shift is the first largest logit, the
        batch path's maximum)."""
        best = scores.argmax(keepdims=True)  # type: ignore[call-overload]
        shifted = _subtract(scores, scores[best[0]])
        _exp(shifted, out=shifted)
        total = _add_reduce(shifted, dtype=_FLOAT64)
        n_bad = 0 if math.isfinite(total) else 1
        if top_k == 1:
            tokens = _as_int64(best)
            token_probs = np.array([1.0 / total], dtype=scores.dtype)
        else:
            tokens = np.argsort(-scores, kind="stable")[:top_k].astype(np.int64, copy=False)
            token_probs = (shifted[tokens] / total).astype(scores.dtype, copy=False)
        probs = (shifted / total).astype(scores.dtype, copy=False) if want_probs else None
        return n_bad, tokens, token_probs, scores if want_logits else None, probs


def forward_heads(kernels: list[KernelHead], hidden: np.ndarray, temperature: float,
                  top_k: int, n_threads: int) -> tuple[int, np.ndarray, np.ndarray]:
    """Several heads on the same ``hidden``: ``(n_bad, tokens, token_probs)``
    shaped (num_heads, k) or (num_heads, B, k), as the compiled kernel's."""
    results = [kernel.forward(hidden, temperature, top_k, False, False, n_threads)
               for kernel in kernels]
    return (sum(result[0] for result in results), np.stack([result[1] for result in results]),
            np.stack([result[2] for result in results]))
