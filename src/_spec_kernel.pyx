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


cdef inline void rows4(const double* matrix, const double* vec, Py_ssize_t row,
                       Py_ssize_t n, const double* init, double* out) noexcept nogil:
    """out[k] = init[k] (or 0.0) + m[row+k, 0] * vec[0] + m[row+k, 1] * vec[1] + ...,
    for k < 4, each summed left to right (no FMA: -ffp-contract=off)."""
    cdef const double* r0 = matrix + row * n
    cdef const double* r1 = r0 + n
    cdef const double* r2 = r1 + n
    cdef const double* r3 = r2 + n
    cdef double a0 = 0.0, a1 = 0.0, a2 = 0.0, a3 = 0.0, x
    cdef Py_ssize_t j
    if init != NULL:
        a0 = init[0]
        a1 = init[1]
        a2 = init[2]
        a3 = init[3]
    for j in range(n):
        x = vec[j]
        a0 = a0 + r0[j] * x
        a1 = a1 + r1[j] * x
        a2 = a2 + r2[j] * x
        a3 = a3 + r3[j] * x
    out[0] = a0
    out[1] = a1
    out[2] = a2
    out[3] = a3


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
                         probs_out, num_threads, False)
    return best


cdef Py_ssize_t spec_impl(const double[::1] hidden,
                          const double[:, ::1] projection_weight,
                          const double[::1] projection_bias,
                          const double[:, ::1] lm_head_weight,
                          double temperature, bint compensated_sum,
                          double[::1] projected, double[::1] logits_out,
                          double[::1] probs_out, int num_threads,
                          bint strict) noexcept nogil:
    """spec_forward's computation; ``strict``: also return -1 when any logit
    is not finite (the fast path's finiteness check of the inputs, below)."""
    cdef Py_ssize_t d_model = hidden.shape[0]
    cdef Py_ssize_t d_proj = projection_weight.shape[0]
    cdef Py_ssize_t vocab = lm_head_weight.shape[0]
    cdef Py_ssize_t i, j, v, blk, best = 0
    cdef double acc, max_logit, total
    # Every row is still one sequential sum in the spec's order; the rows are
    # taken 4 at a time only so that 4 independent sums are in flight (the
    # additions of one sum wait on each other).
    for blk in prange(d_proj // 4, schedule='static', num_threads=num_threads):
        rows4(&projection_weight[0, 0], &hidden[0], 4 * blk, d_model,
              &projection_bias[4 * blk], &projected[4 * blk])
        for i in range(4 * blk, 4 * blk + 4):
            projected[i] = silu_spec(projected[i])
    for i in range(d_proj - d_proj % 4, d_proj):
        acc = projection_bias[i]
        for j in range(d_model):
            acc = acc + projection_weight[i, j] * hidden[j]
        projected[i] = silu_spec(acc)

    for blk in prange(vocab // 4, schedule='static', num_threads=num_threads):
        rows4(&lm_head_weight[0, 0], &projected[0], 4 * blk, d_proj, NULL,
              &logits_out[4 * blk])
        if temperature > 0.0:
            for v in range(4 * blk, 4 * blk + 4):
                logits_out[v] = logits_out[v] / temperature
    for v in range(vocab - vocab % 4, vocab):
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
    if strict:
        for v in range(vocab):
            if not isfinite(logits_out[v]):
                return -1
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


# ---------------------------------------------------------------------------
# The whole call for the common inputs, without NumPy: eagle_draft_from_hidden
# calls this first.  Nested lists of floats (what the spec's callers pass) are
# read straight into C buffers, float64 C-contiguous arrays are read in place,
# the kernel runs, and the outputs are rounded to Python lists here.  Anything
# else -- other element types, ragged or mismatched shapes, empty, NaN/inf,
# unaligned or non-native arrays, a non-finite softmax -- returns None, and the
# caller takes its general path, which converts with NumPy and raises the
# error naming the argument.  So this path changes no result and no error.
#
# Arrays are not scanned for NaN/inf here (that pass read every weight once
# more, a third of the call at 256 x 128 x 1000): a non-finite input always
# makes some logit non-finite, and then the kernel (strict) returns -1 and the
# general path checks the inputs and names the bad one.  (A NaN/inf weight or
# hidden value gives NaN/±inf in its W h + b entry -- inf * 0 is NaN -- whose
# SiLU is inf or NaN, which reaches every logit through its L column -- again
# 0 * inf is NaN; a NaN/inf in L reaches its own logit.)  Finite inputs whose
# logits overflow go the general path too, which gives the reference's result.
# ---------------------------------------------------------------------------

from cpython.buffer cimport PyObject_CheckBuffer
from cpython.float cimport PyFloat_AS_DOUBLE
from libc.math cimport floor, rint
from libc.stdint cimport uintptr_t

import builtins

cdef object _python_round = builtins.round


cdef extern from *:
    """
    #include <math.h>
    /* How many items ahead ef_copy_floats asks for the float objects: each
       item is a pointer to a separate object, and reading the objects one
       after the other waits for every cache miss in turn; prefetching keeps
       several in flight (about 1.6x faster on 1000 x 128 lists). */
    #define EF_PREFETCH_AHEAD 16
    #if defined(__GNUC__) || defined(__clang__)
    #define EF_PREFETCH(p) __builtin_prefetch(p)
    #else
    #define EF_PREFETCH(p) ((void)0)
    #endif
    /* Copy the leading run of finite exact floats of list[start:n] to out;
       returns the index of the first item that is not one (n if none).
       ``next`` (a list, or None): the row read next, whose first objects are
       prefetched towards the end of this one. */
    static Py_ssize_t ef_copy_floats(PyObject* list, double* out, Py_ssize_t start,
                                     Py_ssize_t n, PyObject* next) {
        PyObject** items = ((PyListObject*)list)->ob_item;
        PyObject** next_items = NULL;
        Py_ssize_t j, next_n = 0;
        if (PyList_CheckExact(next)) {
            next_items = ((PyListObject*)next)->ob_item;
            next_n = PyList_GET_SIZE(next);
        }
        for (j = start; j < n; j++) {
            PyObject* item = items[j];
            double value;
            if (j + EF_PREFETCH_AHEAD < n) {
                EF_PREFETCH(items[j + EF_PREFETCH_AHEAD]);
            } else if (j + EF_PREFETCH_AHEAD - n < next_n) {
                EF_PREFETCH(next_items[j + EF_PREFETCH_AHEAD - n]);
            }
            if (!PyFloat_CheckExact(item)) break;
            value = PyFloat_AS_DOUBLE(item);
            if (!isfinite(value)) break;
            out[j] = value;
        }
        return j;
    }
    """
    Py_ssize_t ef_copy_floats(list row, double* out, Py_ssize_t start, Py_ssize_t n,
                              object next_row)


cdef int fill_row(list row, double* out, Py_ssize_t n, object next_row) except -1:
    """Copy ``row`` (a list of exactly ``n`` finite floats or ints) to ``out``;
    0 if it is anything else.  ``next_row``: the list read next (prefetched
    near the end of this one), or None."""
    cdef Py_ssize_t j = 0
    cdef object item
    cdef double value
    if len(row) != n:
        return 0
    while True:
        # Floats are read in C, without reference counting (the GIL is held
        # and the list is not touched meanwhile); ints one by one here.
        j = ef_copy_floats(row, out, j, n, next_row)
        if j == n:
            return 1
        item = row[j]
        if type(item) is not int:
            return 0
        try:
            value = float(item)  # correctly rounded, as NumPy converts
        except OverflowError:
            return 0
        if not isfinite(value):
            return 0
        out[j] = value
        j += 1


cdef bint aligned8(const double* data) noexcept nogil:
    return (<uintptr_t>data) % sizeof(double) == 0


cdef object vector_of(object value, Py_ssize_t n):
    """``value`` as a buffer of ``n`` float64 (n < 0: any n >= 1), or None
    (lists: of finite values; arrays are checked through the logits)."""
    cdef double[::1] filled
    cdef const double[::1] view
    cdef Py_ssize_t size
    if type(value) is list:
        size = len(<list>value)
        if size == 0 or (n >= 0 and size != n):
            return None
        filled = cvarray(shape=(size,), itemsize=sizeof(double), format="d")
        if not fill_row(<list>value, &filled[0], size, None):
            return None
        return filled
    if not PyObject_CheckBuffer(value):
        return None
    try:
        view = value
    except (ValueError, TypeError, BufferError):
        return None
    size = view.shape[0]
    if size == 0 or (n >= 0 and size != n) or not aligned8(&view[0]):
        return None
    return value


cdef object matrix_of(object value, Py_ssize_t n_cols):
    """``value`` as a (rows >= 1, n_cols) buffer of float64, or None (lists:
    of finite values; arrays are checked through the logits)."""
    cdef double[:, ::1] filled
    cdef const double[:, ::1] view
    cdef Py_ssize_t i, n_rows
    cdef object row, following
    if type(value) is list:
        n_rows = len(<list>value)
        if n_rows == 0:
            return None
        filled = cvarray(shape=(n_rows, n_cols), itemsize=sizeof(double), format="d")
        for i in range(n_rows):
            row = (<list>value)[i]
            following = (<list>value)[i + 1] if i + 1 < n_rows else None
            if type(row) is not list or not fill_row(<list>row, &filled[i, 0], n_cols,
                                                     following):
                return None
        return filled
    if not PyObject_CheckBuffer(value):
        return None
    try:
        view = value
    except (ValueError, TypeError, BufferError):
        return None
    n_rows = view.shape[0]
    if (n_rows == 0 or view.shape[1] != n_cols
            or not aligned8(&view[0, 0])):
        return None
    return value


cdef list rounded(const double[::1] values, int ndigits):
    """``[round(v, ndigits) for v in values]``, bit for bit.  ``round`` rounds
    the exact binary value half to even at the decimal digit; ``rint(v * 10**n)
    / 10**n`` is the same double unless ``v * 10**n`` lies within its own
    rounding error of a half-integer (or is too large to hold integers
    exactly): those few values go through Python's ``round`` itself (as
    ``eagle_fast._spec.round_like_python`` does)."""
    cdef Py_ssize_t i, n = values.shape[0]
    cdef double scale = 10.0 ** ndigits, v, scaled, magnitude
    cdef list out = [None] * n
    for i in range(n):
        v = values[i]
        scaled = v * scale
        magnitude = fabs(scaled)
        if (magnitude < 2.0 ** 51
                and fabs(scaled - floor(scaled) - 0.5) > magnitude * 2.0 ** -51):
            out[i] = rint(scaled) / scale
        else:
            out[i] = _python_round(v, ndigits)
    return out


def draft_from_hidden(object hidden_state, object projection_weights,
                      object projection_bias, object lm_head_weights,
                      double temperature, bint compensated_sum,
                      Py_ssize_t parallel_min_bytes, int max_threads):
    """eagle_draft_from_hidden's result dict for the common inputs, or None
    (then the caller's general path decides: see the comment above).
    ``temperature`` is already a validated float; the call runs on up to
    ``max_threads`` threads, each with >= ``parallel_min_bytes`` of weights
    (eagle_fast._threads.team_size), when neither matrix came as lists:
    reading lists (serial) takes about 5x the kernel's time, so threads
    could save at most a tenth of the call, and waking them after that long
    costs as much (measured at 256 x 128 x 1000: serial lists were faster)."""
    h_data = vector_of(hidden_state, -1)
    if h_data is None:
        return None
    cdef const double[::1] h = h_data
    w_data = matrix_of(projection_weights, h.shape[0])
    if w_data is None:
        return None
    cdef const double[:, ::1] w = w_data
    b_data = vector_of(projection_bias, w.shape[0])
    if b_data is None:
        return None
    l_data = matrix_of(lm_head_weights, w.shape[0])
    if l_data is None:
        return None
    cdef const double[::1] b = b_data
    cdef const double[:, ::1] lm = l_data
    cdef Py_ssize_t d_proj = w.shape[0], vocab = lm.shape[0], best
    cdef double[::1] projected = cvarray(shape=(d_proj,), itemsize=sizeof(double), format="d")
    cdef double[::1] logits = cvarray(shape=(vocab,), itemsize=sizeof(double), format="d")
    cdef double[::1] probs = cvarray(shape=(vocab,), itemsize=sizeof(double), format="d")
    cdef int n_threads = 1
    cdef Py_ssize_t work = ((w.shape[0] * w.shape[1] + lm.shape[0] * lm.shape[1])
                            * <Py_ssize_t>sizeof(double))
    if type(projection_weights) is not list and type(lm_head_weights) is not list:
        # eagle_fast._threads.team_size's rule: parallel_min_bytes per thread.
        if parallel_min_bytes <= 0:
            n_threads = max_threads
        elif work >= 2 * parallel_min_bytes:
            n_threads = <int> min(<Py_ssize_t> max_threads, work // parallel_min_bytes)
    with nogil:
        best = spec_impl(h, w, b, lm, temperature, compensated_sum, projected, logits,
                         probs, n_threads, True)
    if best < 0:
        return None
    return {
        "logits": rounded(logits, 4),
        "probs": rounded(probs, 6),
        "predicted_token": best,
        "confidence": _python_round(probs[best], 6),
    }
