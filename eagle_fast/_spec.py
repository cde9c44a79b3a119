"""eagle_draft_from_hidden: the specification's function, bit for bit."""

from __future__ import annotations

import numbers
import sys
from typing import Any

import numpy as np

from . import _backend, _threads
from ._validation import aligned, check_finite, head_arrays, numeric_array

# CPython >= 3.12 sums floats with Neumaier compensation; the spec's
# ``sum(exps)`` does whatever the running interpreter does, and so do we.
_COMPENSATED_SUM = sys.version_info >= (3, 12)
# Up to this many values, round() itself is faster than NumPy's fixed costs.
_SMALL_ROUND = 64
_ARG_NAMES = ("hidden_state", "projection_weights", "projection_bias", "lm_head_weights")


def eagle_draft_from_hidden(hidden_state: Any, projection_weights: Any, projection_bias: Any,
                            lm_head_weights: Any, temperature: float = 1.0) -> dict:
    """EAGLE draft head, exactly as the specification computes it.

    A drop-in for the reference function (the plain-Python loops of the
    specification this package implements: ``x = SiLU(W h + b)`` with
    ``sigmoid = 1`` (or 0) once ``|v| >= 500``, ``logits = L x``, divided by
    ``temperature`` when it is > 0, ``softmax``, first index of the largest
    probability, outputs rounded with ``round()``): float64 throughout, the
    same order of operations, so the same rounded results.

    Parameters
    ----------
    hidden_state : array_like, shape (d_model,)
    projection_weights : array_like, shape (d_proj, d_model)
    projection_bias : array_like, shape (d_proj,)
    lm_head_weights : array_like, shape (vocab_size, d_proj)
    temperature : float, default 1.0
        Logits are divided by it when it is > 0; T <= 0 means no scaling.
        Any real number is accepted (ints and ``float("inf")`` too), as in
        the reference, except NaN.

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
    OverflowError
        A temperature > 0 too large for a float64 (e.g. the int ``10**400``):
        the reference's ``logit / temperature`` raises it too.  (T <= 0 of
        any size means no scaling.)

    Nested lists of floats (or ints) and C-contiguous float64 arrays take a
    compiled path that converts, computes and rounds without NumPy; other
    inputs are converted first (same results).
    """
    if type(temperature) is not float or temperature != temperature:
        temperature = _spec_temperature(temperature)
    backend = _backend.active()
    result = backend.spec.draft_from_hidden(
        hidden_state, projection_weights, projection_bias, lm_head_weights, temperature,
        _COMPENSATED_SUM, _threads.PARALLEL_MIN_WORK_BYTES,
        backend.draft.max_threads())
    if result is not None:
        return result
    return _draft_from_arrays(hidden_state, projection_weights, projection_bias,
                              lm_head_weights, temperature, backend)


def _spec_temperature(temperature: Any) -> float:
    """A temperature the spec accepts, as the float the kernel divides by:
    any real number but NaN.  T <= 0 (however large) means no scaling; T > 0
    beyond float64 is an OverflowError, as the reference's division gives."""
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise ValueError(f"temperature must be a real number, got {temperature!r}")
    real: Any = temperature  # any numbers.Real: compared as itself, not as a float
    if not real > 0:
        if real != real:
            raise ValueError("temperature must not be NaN")
        return 0.0  # no scaling, as the spec for any T <= 0
    try:
        value = float(temperature)
    except OverflowError:
        size = (f"an int of {temperature.bit_length()} bits" if isinstance(temperature, int)
                else repr(temperature))
        raise OverflowError(
            f"temperature ({size}) is too large for a float64; the reference "
            "function's logit / temperature raises OverflowError too") from None
    if value != value:
        raise ValueError("temperature must not be NaN")
    return value


def _draft_from_arrays(hidden_state: Any, projection_weights: Any, projection_bias: Any,
                       lm_head_weights: Any, temperature: float,
                       backend: _backend.Backend) -> dict:
    """The general path: convert and check every input with NumPy (errors
    name the argument), then run the backend's spec kernel."""
    h = numeric_array(hidden_state, "hidden_state", "(d_model,)", 1)
    weight, bias, lm_head = head_arrays(projection_weights, projection_bias, lm_head_weights,
                                        _ARG_NAMES[1:])
    if weight.shape[1] != h.shape[0]:
        raise ValueError(f"projection_weights must have shape (d_proj, d_model) with "
                         f"d_model = {h.shape[0]} (from hidden_state), got shape {weight.shape}")
    arrays = [aligned(np.ascontiguousarray(a, dtype=np.float64))
              for a in (h, weight, bias, lm_head)]
    for name, array in zip(_ARG_NAMES, arrays):
        check_finite(array, name)
    vocab = lm_head.shape[0]
    logits = np.empty(vocab)
    probs = np.empty(vocab)
    weight_bytes = arrays[1].nbytes + arrays[3].nbytes
    n_threads = _threads.team_size(weight_bytes, backend.draft.max_threads())
    best = backend.spec.spec_forward(*arrays, temperature, _COMPENSATED_SUM, logits, probs,
                                     n_threads)
    if best < 0:
        raise ValueError("the logits overflowed float64 (inputs too large); "
                         "the softmax is not defined")
    return {
        "logits": round_like_python(logits, 4),
        "probs": round_like_python(probs, 6),
        "predicted_token": int(best),
        "confidence": round(probs[best].item(), 6),
    }


def round_like_python(values: np.ndarray, ndigits: int) -> list[float]:
    """``[round(v, ndigits) for v in values]``, bit for bit, about 10x faster.

    ``round`` rounds the exact binary value half-to-even at the decimal digit;
    ``rint(v * 10**n) / 10**n`` gives the same double unless ``v * 10**n`` lies
    within its own rounding error of a half-integer (or is too large to hold
    integers exactly): those few values go through ``round`` itself.
    """
    if values.size <= _SMALL_ROUND:
        return [round(v, ndigits) for v in values.tolist()]
    scale = 10.0 ** ndigits
    with np.errstate(over="ignore", invalid="ignore"):  # huge values: handled by round
        scaled = values * scale
        magnitude = np.abs(scaled)
        to_half = np.abs(scaled - np.floor(scaled) - 0.5)
        suspect = (to_half <= magnitude * 2.0**-51) | ~(magnitude < 2.0**51)
        result = (np.rint(scaled) / scale).tolist()
    for i in np.flatnonzero(suspect).tolist():
        result[i] = round(float(values[i]), ndigits)
    return result
