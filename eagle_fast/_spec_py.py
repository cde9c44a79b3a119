"""Pure-Python fallback of src/_spec_kernel.pyx: the spec's draft head in plain
float64 loops, in the spec's order of operations (so results are bit-exact)."""

from __future__ import annotations

import math
from typing import Optional

import numpy as np


def _silu(v: float) -> float:
    if abs(v) < 500.0:
        sigmoid = 1.0 / (1.0 + math.exp(-v))
    elif v > 0.0:
        sigmoid = 1.0
    else:
        sigmoid = 0.0
    return v * sigmoid


def _sum_like_python(values: list[float], compensated: bool) -> float:
    """Left-to-right sum; with ``compensated`` the Neumaier correction that
    CPython >= 3.12's built-in sum() applies to floats."""
    total = values[0]
    if not compensated:
        for x in values[1:]:
            total = total + x
        return total
    correction = 0.0
    for x in values[1:]:
        t = total + x
        if abs(total) >= abs(x):
            correction += (total - t) + x
        else:
            correction += (x - t) + total
        total = t
    if correction != 0.0 and math.isfinite(correction):
        total += correction
    return total


def spec_forward(hidden: np.ndarray, projection_weight: np.ndarray,
                 projection_bias: np.ndarray, lm_head_weight: np.ndarray,
                 temperature: float, compensated_sum: bool,
                 logits_out: np.ndarray, probs_out: np.ndarray,
                 num_threads: int) -> int:
    """Fill ``logits_out`` (temperature-scaled) and ``probs_out``; return the
    first index of the largest probability, or -1 if the result is not finite."""
    h = hidden.tolist()
    projected = []
    for row, bias in zip(projection_weight.tolist(), projection_bias.tolist()):
        acc = bias
        for w, x in zip(row, h):
            acc = acc + w * x
        projected.append(_silu(acc))
    logits = []
    for row in lm_head_weight.tolist():
        acc = 0.0
        for w, x in zip(row, projected):
            acc = acc + w * x
        if temperature > 0.0:
            acc = acc / temperature
        logits.append(acc)
    max_logit = logits[0]
    for value in logits[1:]:
        if value > max_logit:
            max_logit = value
    exps = [math.exp(value - max_logit) for value in logits]
    total = _sum_like_python(exps, compensated_sum)
    if not (math.isfinite(max_logit) and math.isfinite(total)):
        return -1
    probs = [e / total for e in exps]
    best = 0
    for v in range(1, len(probs)):
        if probs[v] > probs[best]:
            best = v
    logits_out[:] = logits
    probs_out[:] = probs
    return best


def draft_from_hidden(hidden_state: object, projection_weights: object,
                      projection_bias: object, lm_head_weights: object, temperature: float,
                      compensated_sum: bool, parallel_min_bytes: int,
                      max_threads: int) -> Optional[dict]:
    """The compiled module's shortcut for common inputs; the fallback has
    none (its loops cost far more than converting), so it always returns None
    and eagle_draft_from_hidden takes its general path."""
    return None
