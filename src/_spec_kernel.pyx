# Spec-exact float64 draft head: eagle_fast.eagle_draft_from_hidden's kernel.
#
# It reproduces the reference solution bit for bit, so every operation happens
# in the same order and with the same rounding as the spec's Python loops:
# each dot product is one sequential sum starting from the bias (or 0.0), no
# FMA contraction (CMakeLists.txt compiles this module with -ffp-contract=off),
# SiLU as v * (1 / (1 + exp(-v))) with the |v| >= 500 cut-off, logits divided
# (not multiplied) by the temperature, and the exp sum done the way the running
# interpreter's built-in sum() does it.  Rows are independent, so they are
# spread over threads without changing any row's result.

from cython.parallel cimport prange
from cython.view cimport array as cvarray
from libc.math cimport exp, fabs, isfinite

cimport _openmp_helpers


cdef inline double silu_spec(double v) noexcept nogil:
    cdef double sigmoid
    if fabs(v) < 500.0:
        sigmoid = 1.0 / (1.0 + exp(-v))
    elif v > 0.0:
        sigmoid = 1.0
    else:
        sigmoid = 0.0
    return v * sigmoid


cdef double sum_like_python(const double[::1] values, bint compensated) noexcept nogil:
    """Sum as ``sum(list_of_floats)`` does: left to right, with the
    Neumaier compensation that CPython >= 3.12 applies to float sums."""
    cdef Py_ssize_t i, n = values.shape[0]
    cdef double total = values[0], correction = 0.0, x, t
    if not compensated:
        for i in range(1, n):
            total = total + values[i]
        return total
    for i in range(1, n):
        x = values[i]
        t = total + x
        if fabs(total) >= fabs(x):
            correction += (total - t) + x
        else:
            correction += (x - t) + total
        total = t
    if correction != 0.0 and isfinite(correction):
        total += correction
    return total


def spec_forward(const double[::1] hidden,
                 const double[:, ::1] projection_weight,
                 const double[::1] projection_bias,
                 const double[:, ::1] lm_head_weight,
                 double temperature,
                 bint compensated_sum,
                 double[::1] logits_out,
                 double[::1] probs_out,
                 int num_threads):
    """Fill ``logits_out`` (temperature-scaled) and ``probs_out``; return the
    first index of the largest probability, or -1 when the logits or their
    softmax are not finite (overflow, or non-finite inputs).

    Arrays must be validated, C-contiguous float64 with matching shapes.
    """
    cdef Py_ssize_t best
    cdef double[::1] projected = cvarray(shape=(projection_weight.shape[0],),
                                         itemsize=sizeof(double), format="d")

    with nogil:
        best = spec_impl(hidden, projection_weight, projection_bias, lm_head_weight,
                         temperature, compensated_sum, projected, logits_out,
                         probs_out, num_threads)
    return best


cdef Py_ssize_t spec_impl(const double[::1] hidden,
                          const double[:, ::1] projection_weight,
                          const double[::1] projection_bias,
                          const double[:, ::1] lm_head_weight,
                          double temperature, bint compensated_sum,
                          double[::1] projected, double[::1] logits_out,
                          double[::1] probs_out, int num_threads) noexcept nogil:
    cdef Py_ssize_t d_model = hidden.shape[0]
    cdef Py_ssize_t d_proj = projection_weight.shape[0]
    cdef Py_ssize_t vocab = lm_head_weight.shape[0]
    cdef Py_ssize_t i, j, v, best = 0
    cdef double acc, max_logit, total
    for i in prange(d_proj, schedule='static', num_threads=num_threads):
        acc = projection_bias[i]
        for j in range(d_model):
            acc = acc + projection_weight[i, j] * hidden[j]
        projected[i] = silu_spec(acc)

    for v in prange(vocab, schedule='static', num_threads=num_threads):
        acc = 0.0
        for j in range(d_proj):
            acc = acc + lm_head_weight[v, j] * projected[j]
        if temperature > 0.0:
            acc = acc / temperature
        logits_out[v] = acc

    max_logit = logits_out[0]
    for v in range(1, vocab):
        if logits_out[v] > max_logit:
            max_logit = logits_out[v]
    for v in range(vocab):
        probs_out[v] = exp(logits_out[v] - max_logit)
    total = sum_like_python(probs_out, compensated_sum)
    if not (isfinite(max_logit) and isfinite(total)):
        return -1
    for v in range(vocab):
        probs_out[v] = probs_out[v] / total
    # First maximum of the probabilities, as max(range(V), key=probs.__getitem__)
    for v in range(1, vocab):
        if probs_out[v] > probs_out[best]:
            best = v
    return best

