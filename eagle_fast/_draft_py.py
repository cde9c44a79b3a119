"""Pure-Python (NumPy) fallback of the fused draft kernel in src/_draft_kernel.pyx.

Same API and semantics: x = SiLU(W h + b) with the spec's |v| >= 500 cut-off,
logits = L x / T (unscaled for T <= 0), softmax statistics in float64, top-k
best first with ties to the lower token id.  Used when the extension is not
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
    (a: an integer of at most 17 bits); for the tests."""
    with np.errstate(all="ignore"):
        return float(fma32(np.array([a], np.float32), np.array([b], np.float32),
                           np.array([c], np.float32))[0])


# Per-call costs are most of a small head's time, so the hot calls skip
# NumPy's Python-level wrappers where NumPy exposes the function underneath:
#
# * ``_einsum("ij,bj->bi", matrix, vectors)`` is ``vectors @ matrix.T`` with
#   every (vector, row) pair reduced by the same loop over the row, so equal
#   rows give equal results (which keeps ties between tokens exact) and a
#   batch gives exactly what its vectors give one by one.  BLAS gemv/gemm
#   block rows and guarantee neither; NumPy's own einsum loop does (the test
#   suite checks it on rows of every alignment and on batch sizes around the
#   blocks).  np.einsum's wrapper costs as much as the product of a small head.
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

    def forward(self, hidden: np.ndarray, temperature: float, top_k: int,
                want_logits: bool, want_probs: bool, n_threads: int) -> ForwardResult:
        """Run the head on ``hidden`` ((d_model,) or (B, d_model), of the head's
        dtype).  Returns ``(n_bad, tokens, token_probs, logits, probs)`` shaped
        like the compiled kernel's; n_bad counts states with a non-finite softmax.

        The whole batch goes through each NumPy call at once (per-call costs
        dominate small heads), and still every state's result is exactly what
        it gets alone: the products are einsum's loop, one dot product per
        (state, row) whatever the batch; everything after is elementwise or
        per row."""
        states = hidden if hidden.ndim == 2 else hidden[None]
        float64 = self._float64
        errors = _ignore_fp_errors()
        try:
            if self._int is not None:
                v = int_products(self._int[0], states)
            else:
                v = _einsum("ij,bj->bi", self.weight, states)
            v += self.bias
            # SiLU with the spec's cut-off.  For v >= 500, v / (1 + exp(-v))
            # already is exactly v (1 + exp(-v) rounds to 1), and so is -0.0
            # in float32 for v <= -500 (exp overflows); float64 needs the
            # cut-off spelled out (v * 0 keeps the sign; NaN/-inf give NaN).
            e = np.exp(-v)
            e += 1
            x = v / e
            if float64:
                x = np.where(v > -500, x, v * 0)
            if self.residual:
                x = states + x
            if self._int is not None:
                scores = int_products(self._int[1], x)
            else:
                scores = _einsum("ij,bj->bi", self.lm_head, x)
            if temperature > 0 and temperature != 1.0:  # (x / 1.0 is x)
                if float64:
                    scores = scores / temperature
                else:
                    # Divide in float64: a tiny T must not underflow to 0 in float32.
                    scores = (scores.astype(np.float64) / temperature).astype(np.float32)
            wide = scores if float64 else scores.astype(np.float64)
            # The softmax is shifted by the largest logit; the first one is
            # the top token (what a stable sort of -logits puts first), and
            # its exp term is exp(0) = 1.  A non-finite largest logit makes
            # the total NaN, so the totals alone tell whether a state's
            # softmax is finite.
            if hidden.ndim == 1:
                return self._finish_one(scores[0], wide[0], top_k, want_logits, want_probs)
            shifted = np.exp(wide - wide.max(axis=1, keepdims=True))
            total = _add_reduce(shifted, axis=1, keepdims=True)
        finally:
            _restore_fp_errors(errors)
        n_bad = 0
        if not math.isfinite(_add_reduce(total, axis=None)):  # the totals are in [1, V]
            n_bad = states.shape[0] - int(np.count_nonzero(np.isfinite(total)))
        if top_k == 1:
            tokens = scores.argmax(axis=1, keepdims=True).astype(np.int64, copy=False)
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
    def _finish_one(scores: np.ndarray, wide: np.ndarray, top_k: int, want_logits: bool,
                    want_probs: bool) -> ForwardResult:
        """The softmax and top-k of one state's (V,) logits (``wide``: in
        float64), with the batch path's arithmetic in 1-D."""
        best = scores.argmax()
        shifted = np.exp(wide - wide[best])
        total = _add_reduce(shifted)
        n_bad = 0 if math.isfinite(total) else 1
        if top_k == 1:
            tokens = np.array([best], dtype=np.int64)
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
