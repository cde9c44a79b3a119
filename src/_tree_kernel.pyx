# Row top-k for dynamic draft trees (eagle_fast.speculative.dynamic_tree).
#
# EAGLE-2 takes, every round, the top_k best log-probs of each frontier row
# (a few rows of V = 32k-128k entries). One pass per row: a sorted buffer of
# the k best so far (descending; an entry equal to the buffer's smallest does
# not enter, so ties keep the lower index), fed by a vector skip-ahead scan
# (_topk_skip.h) that also spots NaN. The fallback is
# eagle_fast/speculative/_tree_py.py (same results).

from cython cimport floating
from libc.stdint cimport int64_t

cimport _build_info

SIMD = _build_info.EAGLE_FAST_SIMD.decode()
COMPILE_FLAGS = _build_info.EAGLE_FAST_COMPILE_FLAGS.decode()
COMPILER = _build_info.EAGLE_FAST_COMPILER.decode()


cdef extern from "_topk_skip.h" nogil:
    Py_ssize_t ef_skip_f32(const float* row, Py_ssize_t j, Py_ssize_t n, float thr)
    Py_ssize_t ef_skip_f64(const double* row, Py_ssize_t j, Py_ssize_t n, double thr)


cdef inline void _insert(floating* vals, int64_t* ids, Py_ssize_t p, floating x,
                         int64_t j) noexcept nogil:
    # Put x (index j) into the descending buffer whose slot p is free, behind
    # every entry >= x.
    while p > 0 and vals[p - 1] < x:
        vals[p] = vals[p - 1]
        ids[p] = ids[p - 1]
        p -= 1
    vals[p] = x
    ids[p] = j


cdef int _row_topk_one(const floating* row, Py_ssize_t n, Py_ssize_t k, int64_t* ids,
                       floating* vals) noexcept nogil:
    cdef Py_ssize_t j
    cdef floating x, thr
    cdef int nan = 0
    for j in range(k):
        x = row[j]
        if x != x:
            nan = 1
        _insert(vals, ids, j, x, j)
    thr = vals[k - 1]
    j = k
    while True:
        if floating is float:
            j = ef_skip_f32(row, j, n, thr)
        else:
            j = ef_skip_f64(row, j, n, thr)
        if j >= n:
            break
        x = row[j]
        if x != x:
            nan = 1
        else:
            _insert(vals, ids, k - 1, x, j)
            thr = vals[k - 1]
        j += 1
    return nan


def row_topk(const floating[:, ::1] rows, Py_ssize_t k, int64_t[:, ::1] out_ids,
             floating[:, ::1] out_vals):
    """Each row's k largest entries, best first, ties to the lower index, into
    ``out_ids`` / ``out_vals`` (r, k). Returns 1 if a row holds NaN (the
    outputs are then meaningless), else 0. Assumes 1 <= k <= V and validated
    shapes."""
    cdef Py_ssize_t r
    cdef Py_ssize_t n = rows.shape[1]
    cdef int nan = 0
    with nogil:
        for r in range(rows.shape[0]):
            nan |= _row_topk_one(&rows[r, 0], n, k, &out_ids[r, 0], &out_vals[r, 0])
    return nan
