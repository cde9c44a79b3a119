# Decoder-layer kernels of the EAGLE draft models (eagle_fast.models): the
# compiled twin of eagle_fast/models/_layers_py.py, same API.
#
# * Matrix / matmul: y = x W^T for a few rows x (the K frontier nodes of one
#   tree depth, or the new prefix positions), every weight row read from
#   memory once for all rows: the draft-head kernel's own blocked driver and
#   converting loads (chunk_products of _stored_matmul.pxi over _dot_kernels.h:
#   float32/float64, bfloat16, float16, int8 with per-row scales, q8/q4 with
#   float16 group scales), rows split into one contiguous chunk per thread.
# * Thread counts come from the caller (eagle_fast.models.eagle), which keeps
#   small calls serial (eagle_fast._threads.team_size: a work threshold shared
#   with the draft head); the kernels split whatever they are given, and the
#   split never changes a result.
# * rms_norm, rope (rotate-half, in place), silu_mul (SwiGLU), log_softmax.
# * attention: grouped-query attention of n queries over the draft KV cache:
#   the first n_stable rows always visible, the next E rows where the (n, E)
#   mask says (causal for new positions, the tree mask for tree nodes); one
#   (query, head) pair per parallel task, softmax with a running maximum.
#
# Callers pass validated, C-contiguous arrays of the compute dtype.

from cython cimport floating
from cython.parallel cimport prange, threadid
from libc.math cimport INFINITY, exp, log, sqrt
from libc.stdlib cimport free, malloc
from libc.string cimport memset

import numpy as np

cimport _openmp_helpers

OPENMP = bool(_openmp_helpers.EAGLE_FAST_OPENMP)


def max_threads():
    """OpenMP's default team size (honours OMP_NUM_THREADS); 1 without OpenMP."""
    return _openmp_helpers.omp_get_max_threads()


# Stored matrices and their blocked dot products (chunk_products): the same
# code as the draft-head kernel's.
include "_stored_matmul.pxi"


cdef extern from "_layer_helpers.h" nogil:
    void ef_axpy_f32(float* out, const float* v, float w, Py_ssize_t n)
    void ef_axpy_f64(double* out, const double* v, double w, Py_ssize_t n)


cdef class Matrix:
    """One weight matrix as stored (see eagle_fast/models/_layers_py.py)."""
    cdef StoredMatrix m
    cdef object _keep
    cdef readonly object compute
    cdef readonly Py_ssize_t rows, cols, nbytes
    cdef readonly str storage

    def __init__(self, data, scales, str storage, compute, Py_ssize_t n_cols=-1):
        data = np.ascontiguousarray(data)
        code = STORAGE_CODES[storage]
        if (scales is None) != (code in (STORED_NATIVE, STORED_BF16, STORED_F16)):
            raise ValueError(f"{storage} weights take scales" if scales is None
                             else f"{storage} weights take no scales")
        if scales is not None:
            scales = np.ascontiguousarray(
                scales, dtype=np.float16 if code in (STORED_Q8, STORED_Q4) else np.float32)
        self._keep = (data, scales)
        self.compute = np.dtype(compute)
        self.storage = storage
        if code != STORED_NATIVE and self.compute != np.float32:
            raise ValueError("low-precision weights compute in float32")
        if code == STORED_NATIVE and data.dtype != self.compute:
            raise ValueError("native weights must be of the compute dtype")
        self.m.data = <const char*> <size_t> data.ctypes.data
        self.m.scales = NULL
        self.m.group_scales = NULL
        self.m.n_groups = 0
        self.m.storage = code
        self.m.n_rows = data.shape[0]
        self.m.itemsize = data.dtype.itemsize
        self.m.row_bytes = data.shape[1] * self.m.itemsize
        self.m.n_cols = n_cols if n_cols >= 0 else data.shape[1]
        if code in (STORED_Q8, STORED_Q4):
            self.m.group_scales = <const unsigned short*> <size_t> scales.ctypes.data
            self.m.n_groups = scales.shape[1]
        elif scales is not None:
            self.m.scales = <const float*> <size_t> scales.ctypes.data
        self.rows = self.m.n_rows
        self.cols = self.m.n_cols
        self.nbytes = data.nbytes + (0 if scales is None else scales.nbytes)


cdef int matmul_impl(const StoredMatrix* m, const floating* x, Py_ssize_t n_states,
                     floating* out, int n_threads) except -1 nogil:
    # One contiguous chunk of rows per thread (never more chunks than rows).
    cdef Py_ssize_t n_chunks = max(1, min(<Py_ssize_t> n_threads, m.n_rows)), c, start, stop
    cdef Py_ssize_t lane_size = lane_buffer_size(n_states)
    cdef floating* lanes
    lanes = <floating*> malloc(n_chunks * lane_size * sizeof(floating))
    if lanes == NULL:
        with gil:
            raise MemoryError()
    if n_chunks == 1:
        chunk_products(0, m.n_rows, m, x, n_states, out, lanes)
    else:
        for c in prange(n_chunks, schedule='static', num_threads=n_threads):
            start = m.n_rows * c // n_chunks
            stop = m.n_rows * (c + 1) // n_chunks
            chunk_products(start, stop, m, x, n_states, out, lanes + c * lane_size)
    free(lanes)
    return 0


def matmul(Matrix matrix, x, int n_threads=1):
    """``x @ W.T``: (n, cols) -> (n, rows) in the compute dtype."""
    cdef Py_ssize_t n = x.shape[0]
    out = np.empty((n, matrix.rows), dtype=matrix.compute)
    cdef float[:, ::1] x32, o32
    cdef double[:, ::1] x64, o64
    if matrix.compute == np.float64:
        x64 = x
        o64 = out
        with nogil:
            matmul_impl(&matrix.m, &x64[0, 0], n, &o64[0, 0], max(1, n_threads))
    else:
        x32 = x
        o32 = out
        with nogil:
            matmul_impl(&matrix.m, &x32[0, 0], n, &o32[0, 0], max(1, n_threads))
    return out


def rms_norm(floating[:, ::1] x, floating[::1] weight, double eps):
    """weight * x / sqrt(mean(x^2) + eps) per row."""
    cdef Py_ssize_t n = x.shape[0], d = x.shape[1], i, j
    out_array = np.empty((n, d), dtype=np.float64 if floating is double else np.float32)
    cdef floating[:, ::1] out = out_array
    cdef double total
    cdef floating scale
    with nogil:
        for i in range(n):
            total = 0
            for j in range(d):
                total += <double> x[i, j] * x[i, j]
            scale = <floating> (1.0 / sqrt(total / d + eps))
            for j in range(d):
                out[i, j] = weight[j] * (x[i, j] * scale)
    return out_array


def rope(floating[:, :, ::1] x, floating[:, ::1] cos, floating[:, ::1] sin):
    """In place: each head's halves (a, b) -> (a cos - b sin, b cos + a sin)."""
    cdef Py_ssize_t n = x.shape[0], heads = x.shape[1], half = x.shape[2] // 2, t, h, i
    cdef floating a, b, c, s
    with nogil:
        for t in range(n):
            for h in range(heads):
                for i in range(half):
                    a = x[t, h, i]
                    b = x[t, h, i + half]
                    c = cos[t, i]
                    s = sin[t, i]
                    x[t, h, i] = a * c - b * s
                    x[t, h, i + half] = b * c + a * s


def silu_mul(floating[:, ::1] gate_up):
    """SiLU(gate) * up of the stacked (n, 2I) product -> (n, I)."""
    cdef Py_ssize_t n = gate_up.shape[0], inter = gate_up.shape[1] // 2, i, j
    out_array = np.empty((n, inter), dtype=np.float64 if floating is double else np.float32)
    cdef floating[:, ::1] out = out_array
    cdef floating g
    with nogil:
        for i in range(n):
            for j in range(inter):
                g = gate_up[i, j]
                out[i, j] = g / (1 + exp(-g)) * gate_up[i, inter + j]
    return out_array


def log_softmax(floating[:, ::1] logits):
    """Per row, in place (statistics in double); returns the array."""
    cdef Py_ssize_t n = logits.shape[0], v = logits.shape[1], i, j
    cdef double m, total
    cdef floating shift
    with nogil:
        for i in range(n):
            m = -INFINITY
            for j in range(v):
                if logits[i, j] > m:
                    m = logits[i, j]
            total = 0
            for j in range(v):
                total += exp(logits[i, j] - m)
            shift = <floating> (m + log(total))
            for j in range(v):
                logits[i, j] = logits[i, j] - shift
    return logits.base


cdef void attend_one(const floating* q, const floating* k, const floating* v,
                     Py_ssize_t kv_stride, Py_ssize_t head_dim, Py_ssize_t n_stable,
                     const unsigned char* mask, Py_ssize_t n_extra, floating* scores,
                     floating* out) noexcept nogil:
    """One query head over the visible cache rows (k, v at the kv head,
    row stride kv_stride)."""
    cdef Py_ssize_t t, j, total = n_stable + n_extra
    cdef Py_ssize_t n_vec = head_dim - head_dim % LANES
    cdef floating scale = <floating> (1.0 / sqrt(<double> head_dim))
    cdef floating m = -INFINITY, dot, w
    cdef floating lanes[LANES]
    cdef double denom = 0
    for t in range(total):
        if t >= n_stable and not mask[t - n_stable]:
            scores[t] = -INFINITY
            continue
        # q . k_t with the SIMD lanes of _dot_kernels.h
        memset(lanes, 0, LANES * sizeof(floating))
        if floating is float:
            ef_acc_1x1_f32(k + t * kv_stride, q, n_vec, lanes)
            dot = ef_finish_f32(lanes, k + t * kv_stride, q, n_vec, head_dim)
        else:
            ef_acc_1x1_f64(k + t * kv_stride, q, n_vec, lanes)
            dot = ef_finish_f64(lanes, k + t * kv_stride, q, n_vec, head_dim)
        dot = dot * scale
        scores[t] = dot
        if dot > m:
            m = dot
    for j in range(head_dim):
        out[j] = 0
    for t in range(total):
        if scores[t] == -INFINITY:
            continue
        w = <floating> exp(scores[t] - m)
        denom += w
        if floating is float:
            ef_axpy_f32(out, v + t * kv_stride, w, head_dim)
        else:
            ef_axpy_f64(out, v + t * kv_stride, w, head_dim)
    for j in range(head_dim):
        out[j] = <floating> (out[j] / denom)


def attention(floating[:, :, ::1] q, floating[:, :, ::1] k, floating[:, :, ::1] v,
              Py_ssize_t n_stable, extra_mask, int n_threads=1):
    """q (n, H, hd); k, v (>= n_stable + E, KV, hd); extra_mask (n, E) bool.
    Returns (n, H * hd)."""
    cdef Py_ssize_t n = q.shape[0], heads = q.shape[1], hd = q.shape[2]
    cdef Py_ssize_t n_kv = k.shape[1], group = heads // n_kv
    mask_array = np.ascontiguousarray(extra_mask, dtype=np.uint8)
    cdef unsigned char[:, ::1] mask = mask_array
    cdef Py_ssize_t n_extra = mask.shape[1], total = n_stable + n_extra, task, i, h, g
    out_array = np.empty((n, heads * hd), dtype=np.float64 if floating is double else np.float32)
    cdef floating[:, ::1] out = out_array
    cdef floating* scratch
    cdef const unsigned char* mask_ptr = &mask[0, 0] if n_extra > 0 else NULL
    cdef int threads = max(1, n_threads)
    scratch = <floating*> malloc(threads * max(1, total) * sizeof(floating))
    if scratch == NULL:
        raise MemoryError()
    try:
        with nogil:
            for task in prange(n * heads, schedule='static', num_threads=threads):
                i = task // heads
                h = task % heads
                g = h // group
                attend_one(&q[i, h, 0], &k[0, g, 0], &v[0, g, 0], n_kv * hd, hd, n_stable,
                           mask_ptr + i * n_extra, n_extra,
                           scratch + threadid() * total,
                           &out[i, h * hd])
    finally:
        free(scratch)
    return out_array
