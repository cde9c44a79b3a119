"""eagle_draft_from_hidden: the specification's function, bit for bit."""

from __future__ import annotations

import math
import numbers
import sys
from typing import Any

import numpy as np

from . import _backend
from ._head import PARALLEL_MIN_WEIGHT_BYTES
from ._validation import check_finite, numeric_array

# CPython >= 3.12 sums floats with Neumaier compensation; the spec's
# ``sum(exps)`` does whatever the running interpreter does, and so do we.
_COMPENSATED_SUM = sys.version_info >= (3, 12)


def eagle_draft_from_hidden(hidden_state: Any, projection_weights: Any, projection_bias: Any,
                            lm_head_weights: Any, temperature: float = 1.0) -> dict:
    """EAGLE draft head, exactly as the specification computes it.

    A drop-in for the reference function: float64 throughout, the same order
    of operations, so the same rounded results.

    Parameters
    ----------
    hidden_state : array_like, shape (d_model,)
    projection_weights : array_like, shape (d_proj, d_model)
    projection_bias : array_like, shape (d_proj,)
    lm_head_weights : array_like, shape (vocab_size, d_proj)
    temperature : float, default 1.0
        Logits are divided by it when it is > 0; T <= 0 means no scaling.

    Returns
    -------
    dict
        ``logits`` (temperature-scaled, rounded to 4 places), ``probs`` (6
        places), ``predicted_token`` (first index of the largest probability)
        and ``confidence`` (its probability, 6 places).

    Raises
    ------
    ValueError
        Wrong or mismatched shapes, empty or ragged inputs, NaN/inf values,
        a NaN temperature, or logits that overflow float64.
    TypeError
        Non-numeric or complex inputs.
    """
    h = numeric_array(hidden_state, "hidden_state", "(d_model,)", 1)
    weight = numeric_array(projection_weights, "projection_weights", "(d_proj, d_model)", 2)
    bias = numeric_array(projection_bias, "projection_bias", "(d_proj,)", 1)
    lm_head = numeric_array(lm_head_weights, "lm_head_weights", "(vocab_size, d_proj)", 2)
    d_model = h.shape[0]
    d_proj = weight.shape[0]
    if weight.shape[1] != d_model:
        raise ValueError(f"projection_weights must have shape (d_proj, d_model) with "
                         f"d_model = {d_model} (from hidden_state), got shape {weight.shape}")
    if bias.shape != (d_proj,):
        raise ValueError(f"projection_bias must have shape (d_proj,) = ({d_proj},), "
                         f"got shape {bias.shape}")
    if lm_head.shape[1] != d_proj:
        raise ValueError(f"lm_head_weights must have shape (vocab_size, d_proj) with "
                         f"d_proj = {d_proj}, got shape {lm_head.shape}")
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise ValueError(f"temperature must be a real number, got {temperature!r}")
    temperature = float(temperature)  # OverflowError for a huge int, as the spec
    if math.isnan(temperature):
        raise ValueError("temperature must not be NaN")

    arrays = []
    for name, array in (("hidden_state", h), ("projection_weights", weight),
                        ("projection_bias", bias), ("lm_head_weights", lm_head)):
        array = np.ascontiguousarray(array, dtype=np.float64)
        check_finite(array, name)
        arrays.append(array)

    vocab = lm_head.shape[0]
    logits = np.empty(vocab)
    probs = np.empty(vocab)
    weight_bytes = arrays[1].nbytes + arrays[3].nbytes
    spec = _backend.active().spec
    n_threads = _backend.active().draft.max_threads() if (
        weight_bytes >= PARALLEL_MIN_WEIGHT_BYTES) else 1
    best = spec.spec_forward(*arrays, temperature, _COMPENSATED_SUM, logits, probs, n_threads)
    if best < 0:
        raise ValueError("the logits overflowed float64 (inputs too large); "
                         "the softmax is not defined")
    return {
        "logits": [round(value, 4) for value in logits.tolist()],
        "probs": [round(value, 6) for value in probs.tolist()],
        "predicted_token": int(best),
        "confidence": round(probs[best].item(), 6),
    }
