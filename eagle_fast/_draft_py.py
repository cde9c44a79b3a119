"""Pure-Python (NumPy) fallback of the fused draft kernel in src/_draft_kernel.pyx.

Same API and semantics: x = SiLU(W h + b) with the spec's |v| >= 500 cut-off,
logits = L x / T (unscaled for T <= 0), softmax statistics in float64, top-k
best first with ties to the lower token id.  Used when the extension is not
built or EAGLE_FAST_BACKEND=python.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from ._storage import StoredMatrix

# (n_bad, tokens, token_probs, logits or None, probs or None)
ForwardResult = Tuple[int, np.ndarray, np.ndarray, Optional[np.ndarray], Optional[np.ndarray]]

OPENMP = False
SIMD = "none"
COMPILE_FLAGS = ""
COMPILER = "none"


def max_threads() -> int:
    return 1


def matvec(matrix: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """``matrix @ vector`` with every row reduced by the same loop, so equal
    rows give equal results, which keeps ties between tokens exact.  BLAS gemv
    blocks rows and does not guarantee that; NumPy's own einsum loop does
    (the test suite checks it on rows of every alignment)."""
    return np.einsum("ij,j->i", matrix, vector)


def silu(v: np.ndarray) -> np.ndarray:
    """SiLU with the spec's cut-off: exactly v (or -0.0) once |v| >= 500."""
    with np.errstate(over="ignore", invalid="ignore"):
        inside = v / (1 + np.exp(-v))
        return np.where(np.abs(v) < 500, inside, np.where(v > 0, v, v * 0))


def _as_compute(matrix: np.ndarray, weight_dtype: str,
                scales: Optional[np.ndarray]) -> np.ndarray:
    """A stored matrix as the float values it stands for (native ones unchanged)."""
    if weight_dtype == "native":
        return matrix
    return StoredMatrix(weight_dtype, matrix, scales).dequantize()


class KernelHead:
    """Weights of one head: validated C-contiguous arrays.  The bias sets the
    compute dtype; low-precision matrices ("bfloat16" bit patterns, "float16",
    "int8" with per-row scales) are converted to float32 once, here, which
    costs 2-4x their memory but keeps every call a plain float32 computation."""

    def __init__(self, projection_weight: np.ndarray, projection_bias: np.ndarray,
                 lm_head_weight: np.ndarray, weight_dtype: str = "native",
                 projection_scales: Optional[np.ndarray] = None,
                 lm_head_scales: Optional[np.ndarray] = None, residual: bool = False) -> None:
        self.weight = _as_compute(projection_weight, weight_dtype, projection_scales)
        self.bias = projection_bias
        self.lm_head = _as_compute(lm_head_weight, weight_dtype, lm_head_scales)
        self.d_proj, self.d_model = projection_weight.shape
        self.vocab = lm_head_weight.shape[0]
        self.type_num = projection_bias.dtype.num
        self.residual = residual
        if residual and self.d_proj != self.d_model:
            raise ValueError("a residual head needs d_proj == d_model")

    def forward(self, hidden: np.ndarray, temperature: float, top_k: int,
                want_logits: bool, want_probs: bool, n_threads: int) -> ForwardResult:
        """Run the head on ``hidden`` ((d_model,) or (B, d_model), of the head's
        dtype).  Returns ``(n_bad, tokens, token_probs, logits, probs)`` shaped
        like the compiled kernel's; n_bad counts states with a non-finite softmax."""
        # State by state, so a batch gives exactly the results of single calls.
        states = [hidden] if hidden.ndim == 1 else list(hidden)
        results = [self._forward_one(state, temperature, top_k) for state in states]
        n_bad = sum(result[0] for result in results)
        fields = [np.stack([result[i] for result in results]) for i in range(1, 5)]
        if hidden.ndim == 1:
            fields = [field[0] for field in fields]
        tokens, token_probs, logits, probs = fields
        return (n_bad, tokens, token_probs, logits if want_logits else None,
                probs if want_probs else None)

    def _forward_one(self, state: np.ndarray, temperature: float, top_k: int
                     ) -> tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(n_bad, tokens, token_probs, logits, probs) of one state."""
        with np.errstate(all="ignore"):
            x = silu(matvec(self.weight, state) + self.bias)
            if self.residual:
                x = state + x
            scores = matvec(self.lm_head, x)
            if temperature > 0:
                # Divide in float64: a tiny T must not underflow to 0 in float32.
                scores = (scores.astype(np.float64) / temperature).astype(scores.dtype)
            wide = scores.astype(np.float64)
            top = wide.max()
            shifted = np.exp(wide - top)
            total = shifted.sum()
        n_bad = 0 if (np.isfinite(top) and np.isfinite(total)) else 1
        # Stable sort of the negated scores: best first, ties to the lower id.
        tokens = np.argsort(-scores, kind="stable")[:top_k].astype(np.int64)
        token_probs = (shifted[tokens] / total).astype(scores.dtype)
        return n_bad, tokens, token_probs, scores, (shifted / total).astype(scores.dtype)


def forward_heads(kernels: list[KernelHead], hidden: np.ndarray, temperature: float,
                  top_k: int, n_threads: int) -> tuple[int, np.ndarray, np.ndarray]:
    """Several heads on the same ``hidden``: ``(n_bad, tokens, token_probs)``
    shaped (num_heads, k) or (num_heads, B, k), as the compiled kernel's."""
    results = [kernel.forward(hidden, temperature, top_k, False, False, n_threads)
               for kernel in kernels]
    return (sum(result[0] for result in results), np.stack([result[1] for result in results]),
            np.stack([result[2] for result in results]))
