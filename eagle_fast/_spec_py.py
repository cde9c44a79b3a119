"""Pure-Python fallback of src/_spec_kernel.pyx: the spec's draft head in plain
float64 arithmetic, in the spec's order of operations (so results are bit-exact).

Each dot product is one left-to-right sum starting from the bias (or 0.0), as
the spec's ``val += w * x`` loop; it runs as ``sum(map(mul, row, x), start)``
(C speed) where the built-in ``sum`` adds floats plainly (CPython < 3.12), and
as ``functools.reduce(add, ...)`` where it compensates (>= 3.12).
"""

from __future__ import annotations

import math
import sys
from functools import reduce
from itertools import repeat
from operator import add, mul
from typing import Any, Optional

import numpy as np


# CPython >= 3.12's built-in sum() adds floats with Neumaier compensation.
_SUM_COMPENSATES = sys.version_info >= (3, 12)


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


def _forward_lists(h: list, weight: list, bias: list, lm_head: list, temperature: float,
                   compensated_sum: bool) -> tuple[list[float], list[float], int]:
    """(logits, probs, best) of float lists, or best = -1 when not finite.
    ``compensated_sum`` says whether the built-in sum() compensates."""
    if compensated_sum:
        projected = [_silu(reduce(add, map(mul, row, h), b)) for row, b in zip(weight, bias)]
        logits = [reduce(add, map(mul, row, projected), 0.0) for row in lm_head]
    else:
        projected = [_silu(sum(map(mul, row, h), b)) for row, b in zip(weight, bias)]
        logits = [sum(map(mul, row, projected), 0.0) for row in lm_head]
    if temperature > 0.0:
        logits = [value / temperature for value in logits]
    max_logit = max(logits)
    exps = [math.exp(value - max_logit) for value in logits]
    # The built-in sum() is the spec's own when it compensates as asked.
    total = sum(exps) if compensated_sum == _SUM_COMPENSATES else _sum_like_python(
        exps, compensated_sum)
    if not (math.isfinite(max_logit) and math.isfinite(total)):
        return logits, exps, -1
    probs = [e / total for e in exps]
    return logits, probs, probs.index(max(probs))  # the first largest


def spec_forward(hidden: np.ndarray, projection_weight: np.ndarray,
                 projection_bias: np.ndarray, lm_head_weight: np.ndarray,
                 temperature: float, compensated_sum: bool,
                 logits_out: np.ndarray, probs_out: np.ndarray,
                 num_threads: int) -> int:
    """Fill ``logits_out`` (temperature-scaled) and ``probs_out``; return the
    first index of the largest probability, or -1 if the result is not finite."""
    logits, probs, best = _forward_lists(
        hidden.tolist(), projection_weight.tolist(), projection_bias.tolist(),
        lm_head_weight.tolist(), temperature, compensated_sum)
    if best >= 0:
        logits_out[:] = logits
        probs_out[:] = probs
    return best


_FLOAT = {float}
_LIST = {list}


def draft_from_hidden(hidden_state: Any, projection_weights: Any, projection_bias: Any,
                      lm_head_weights: Any, temperature: float, compensated_sum: bool,
                      parallel_min_bytes: int, max_threads: int) -> Optional[dict]:
    """The whole call on nested lists (or float64 arrays), straight from the
    lists (no NumPy checks and conversions), when that is certain to give the general path's result;
    None otherwise (eagle_draft_from_hidden then takes its general path, as
    with the compiled module's version).

    The checks cost far less than checking every element's type: the hidden
    state must be exact floats, the weights lists of the right lengths whose
    sum is finite (one NaN/inf makes it non-finite; an overflow or a
    non-number only sends the call to the general path), and every logit
    must come out an exact float -- a NumPy scalar or complex weight would
    make it something else, while ints, bools and Fractions meet a float
    state and are converted as NumPy converts them."""
    # float64 arrays become the lists the loops run on anyway.
    h, weight, bias, lm_head = (
        value.tolist() if type(value) is np.ndarray and value.dtype == np.float64 else value
        for value in (hidden_state, projection_weights, projection_bias, lm_head_weights))
    if not (type(h) is list and type(weight) is list and type(bias) is list
            and type(lm_head) is list and h and weight and lm_head
            and len(bias) == len(weight) and set(map(type, h)) == _FLOAT):
        return None
    d_model, d_proj = len(h), len(weight)
    try:
        if not (set(map(type, weight)) == set(map(type, lm_head)) == _LIST
                and set(map(len, weight)) == {d_model} and set(map(len, lm_head)) == {d_proj}
                and math.isfinite(sum(h) + sum(bias) + sum(map(sum, weight))
                                  + sum(map(sum, lm_head)))):
            return None
        logits, probs, best = _forward_lists(h, weight, bias, lm_head, temperature,
                                             compensated_sum)
    except (TypeError, OverflowError):
        return None
    if best < 0 or set(map(type, logits)) != _FLOAT:
        return None
    return {"logits": list(map(round, logits, repeat(4))),
            "probs": list(map(round, probs, repeat(6))),
            "predicted_token": best, "confidence": round(probs[best], 6)}
