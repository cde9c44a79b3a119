"""Independent references for the draft head, written from the specification.

Nothing here imports eagle_fast.

* :func:`spec_reference` -- the specification's algorithm in plain Python
  loops over Python floats (builtin ``sum``, ``round``): the oracle that
  ``eagle_draft_from_hidden`` must match bit for bit.
* :func:`float64_reference` -- a precise float64 result for
  ``DraftHead.predict``: dot products and softmax in extended precision
  (``np.longdouble`` where the platform has it), rounded to float64 at the
  end, plus the magnitudes needed to scale tolerances.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

SIGMOID_CUTOFF = 500.0


def _to_float_list(value: Any) -> list:
    """Nested Python lists of floats (the spec computes in float64)."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [_to_float_list(v) for v in value]
    return float(value)


def spec_sigmoid(v: float) -> float:
    if abs(v) < SIGMOID_CUTOFF:
        return 1.0 / (1.0 + math.exp(-v))
    return 1.0 if v > 0 else 0.0


def spec_reference(hidden_state: Any, projection_weights: Any, projection_bias: Any,
                   lm_head_weights: Any, temperature: float = 1.0) -> dict:
    """The specification's draft head, operation by operation."""
    h = _to_float_list(hidden_state)
    W = _to_float_list(projection_weights)
    b = _to_float_list(projection_bias)
    L = _to_float_list(lm_head_weights)
    T = float(temperature)

    projected = []
    for i in range(len(W)):
        val = b[i]
        for j in range(len(h)):
            val += W[i][j] * h[j]
        projected.append(val * spec_sigmoid(val))

    logits = []
    for v in range(len(L)):
        val = 0.0
        for j in range(len(projected)):
            val += L[v][j] * projected[j]
        logits.append(val)

    if T > 0:
        logits = [logit / T for logit in logits]

    max_logit = max(logits)
    exps = [math.exp(logit - max_logit) for logit in logits]
    total = sum(exps)
    probs = [e / total for e in exps]
    top = max(range(len(probs)), key=lambda i: probs[i])
    return {
        "logits": [round(logit, 4) for logit in logits],
        "probs": [round(p, 6) for p in probs],
        "predicted_token": top,
        "confidence": round(probs[top], 6),
    }


def _wide_float():
    """The widest float type NumPy offers here (80-bit on x86-64 Linux)."""
    return np.longdouble


def silu_wide(v: np.ndarray) -> np.ndarray:
    """SiLU with the spec's |v| >= 500 cut-off, elementwise, in v's dtype."""
    out = np.empty_like(v)
    inside = np.abs(v) < SIGMOID_CUTOFF
    out[inside] = v[inside] / (1 + np.exp(-v[inside]))
    out[~inside] = np.where(v[~inside] > 0, v[~inside], v[~inside] * 0)
    return out


def float64_reference(hidden: Any, projection_weight: Any, projection_bias: Any,
                      lm_head_weight: Any, temperature: float = 1.0,
                      residual: bool = False) -> dict:
    """Precise reference for ``DraftHead.predict``.

    ``hidden`` is (d_model,) or (B, d_model).  Inputs are taken as the exact
    float64 values given (cast float32 data to float64 before calling to
    describe a float32 head).  Returns float64 arrays shaped like the head's
    output:

    * ``logits`` -- temperature-scaled (``L x / T``; no scaling for T <= 0);
    * ``probs`` -- their softmax;
    * ``logit_scale`` -- sum of |terms| behind each logit (|L| (|x| + |W||h| + |b|)),
      already divided by T: the natural unit for rounding-error tolerances;
    * ``x`` -- the projected activations (``h + SiLU(...)`` when ``residual``,
      as in a Medusa head).
    """
    wide = _wide_float()
    h = np.asarray(hidden, dtype=np.float64)
    single = h.ndim == 1
    H = np.atleast_2d(h).astype(wide)
    W = np.asarray(projection_weight, dtype=np.float64).astype(wide)
    b = np.asarray(projection_bias, dtype=np.float64).astype(wide)
    L = np.asarray(lm_head_weight, dtype=np.float64).astype(wide)

    pre = H @ W.T + b
    x = silu_wide(pre)
    pre_scale = np.abs(H) @ np.abs(W).T + np.abs(b)
    if residual:
        x = H + x
        pre_scale = pre_scale + np.abs(H)
    logits = x @ L.T
    scale = (np.abs(x) + pre_scale) @ np.abs(L).T
    if temperature > 0:
        logits = logits / wide(temperature)
        scale = scale / wide(temperature)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = shifted / shifted.sum(axis=1, keepdims=True)

    out = {
        "logits": logits.astype(np.float64),
        "probs": probs.astype(np.float64),
        "logit_scale": scale.astype(np.float64),
        "x": x.astype(np.float64),
    }
    if single:
        out = {k: v[0] for k, v in out.items()}
    return out


def stable_topk(logits: np.ndarray, k: int) -> np.ndarray:
    """Token ids best first, ties to the lower id (independent of NumPy's sort
    stability: a Python sort on (-logit, id))."""
    logits = np.asarray(logits)
    if logits.ndim == 2:
        return np.stack([stable_topk(row, k) for row in logits])
    order = sorted(range(logits.shape[0]), key=lambda i: (-float(logits[i]), i))
    return np.asarray(order[:k], dtype=np.int64)
