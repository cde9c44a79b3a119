"""Pure-Python (NumPy) fallback of the fused draft kernel in src/_draft_kernel.pyx.

Same API and semantics: x = SiLU(W h + b) with the spec's |v| >= 500 cut-off,
logits = L x / T (unscaled for T <= 0), softmax statistics in float64, top-k
best first with ties to the lower token id.  Used when the extension is not
built or EAGLE_FAST_BACKEND=python.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

OPENMP = False
SIMD = "none"
COMPILE_FLAGS = ""
COMPILER = "none"


def max_threads() -> int:
    return 1


def silu(v: np.ndarray) -> np.ndarray:
    """SiLU with the spec's cut-off: exactly v (or -0.0) once |v| >= 500."""
    with np.errstate(over="ignore", invalid="ignore"):
        inside = v / (1 + np.exp(-v))
        return np.where(np.abs(v) < 500, inside, np.where(v > 0, v, v * 0))


class KernelHead:
    """Weights of one head: validated C-contiguous arrays of one float dtype."""

    def __init__(self, projection_weight: np.ndarray, projection_bias: np.ndarray,
                 lm_head_weight: np.ndarray) -> None:
        self.weight = projection_weight
        self.bias = projection_bias
        self.lm_head = lm_head_weight
        self.d_proj, self.d_model = projection_weight.shape
        self.vocab = lm_head_weight.shape[0]

    def forward(self, hidden: np.ndarray, temperature: float, top_k: int,
                want_logits: bool, want_probs: bool, n_threads: int
                ) -> tuple[int, np.ndarray, np.ndarray, Optional[np.ndarray], Optional[np.ndarray]]:
        """Run the head on ``hidden`` ((d_model,) or (B, d_model), of the head's
        dtype).  Returns ``(n_bad, tokens, token_probs, logits, probs)`` shaped
        like the compiled kernel's; n_bad counts states with a non-finite softmax."""
        batch = hidden.reshape(-1, self.d_model)
        with np.errstate(all="ignore"):
            x = silu(batch @ self.weight.T + self.bias)
            scores = x @ self.lm_head.T
            if temperature > 0:
                scores = scores / scores.dtype.type(temperature)
            wide = scores.astype(np.float64)
            row_max = wide.max(axis=1, keepdims=True)
            shifted = np.exp(wide - row_max)
            total = shifted.sum(axis=1, keepdims=True)
        n_bad = int((~(np.isfinite(row_max) & np.isfinite(total))).sum())
        # Stable sort of the negated scores: best first, ties to the lower id.
        tokens = np.argsort(-scores, axis=1, kind="stable")[:, :top_k].astype(np.int64)
        token_probs = (np.take_along_axis(shifted, tokens, axis=1) / total).astype(scores.dtype)
        logits = scores if want_logits else None
        probs = (shifted / total).astype(scores.dtype) if want_probs else None
        if hidden.ndim == 1:
            return (n_bad, tokens[0], token_probs[0], None if logits is None else logits[0],
                    None if probs is None else probs[0])
        return n_bad, tokens, token_probs, logits, probs
