# Decoder-layer kernels of the EAGLE draft models (eagle_fast.models): the
# compiled twin of eagle_fast/models/_layers_py.py, same API.
#
# * Matrix / matmul: y = x W^T for a few rows x (the K frontier nodes of one
#   tree depth, or the new prefix positions), every weight row read from
#   memory once for all rows: the dot-product micro-kernels and converting
#   loads of _dot_kernels.h (float32/float64, bfloat16, float16, int8 with
#   per-row scales), rows split into one contiguous chunk per thread.  One
#   state streams 4 rows at a time (8 for int8); several states go 3 rows x 4
#   states per step over blocks of ROW_BLOCK rows (the draft head's blocking).
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


cdef extern from "_dot_kernels.h" nogil:
    void ef_acc_1x1_f32(const float* row, const float* x, Py_ssize_t n, float* acc)
    void ef_acc_1x1_f64(const double* row, const double* x, Py_ssize_t n, double* acc)
    void ef_acc_4x1_f32(const float* r0, const float* r1, const float* r2,
                        const float* r3, const float* x, Py_ssize_t n, float* acc)
    void ef_acc_4x1_f64(const double* r0, const double* r1, const double* r2,
                        const double* r3, const double* x, Py_ssize_t n, double* acc)
    void ef_acc_3x4_f32(const float* r0, const float* r1, const float* r2,
                        const float* x0, const float* x1, const float* x2,
                        const float* x3, Py_ssize_t n, float* acc0, float* acc1,
                        float* acc2)
    void ef_acc_3x4_f64(const double* r0, const double* r1, const double* r2,
                        const double* x0, const double* x1, const double* x2,
                        const double* x3, Py_ssize_t n, double* acc0, double* acc1,
                        double* acc2)
    float ef_finish_f32(const float* acc, const float* row, const float* x,
                        Py_ssize_t n_vec, Py_ssize_t n)
    double ef_finish_f64(const double* acc, const double* row, const double* x,
                         Py_ssize_t n_vec, Py_ssize_t n)
    void ef_acc_1x1_bf16(const unsigned short* row, const float* x, Py_ssize_t n, float* acc)
    void ef_acc_1x1_f16(const unsigned short* row, const float* x, Py_ssize_t n, float* acc)
    void ef_acc_1x1_i8(const signed char* row, const float* x, Py_ssize_t n, float* acc)
    void ef_acc_4x1_bf16(const unsigned short* r0, const unsigned short* r1,
                         const unsigned short* r2, const unsigned short* r3,
                         const float* x, Py_ssize_t n, float* acc)
    void ef_acc_4x1_f16(const unsigned short* r0, const unsigned short* r1,
                        const unsigned short* r2, const unsigned short* r3,
                        const float* x, Py_ssize_t n, float* acc)
    float ef_finish_bf16(const float* acc, const unsigned short* row, const float* x,
                         Py_ssize_t n_vec, Py_ssize_t n)
    float ef_finish_f16(const float* acc, const unsigned short* row, const float* x,
                        Py_ssize_t n_vec, Py_ssize_t n)
    float ef_finish_i8(const float* acc, const signed char* row, const float* x,
                       Py_ssize_t n_vec, Py_ssize_t n)
    void ef_acc_8x1_i8(const signed char* r0, Py_ssize_t row_step, const float* x,
                       Py_ssize_t n, float* acc)
    void ef_acc_3x4_bf16(const unsigned short* r0, const unsigned short* r1,
                         const unsigned short* r2, const float* x0, const float* x1,
                         const float* x2, const float* x3, Py_ssize_t n, float* acc0,
                         float* acc1, float* acc2)
    void ef_acc_3x4_f16(const unsigned short* r0, const unsigned short* r1,
                        const unsigned short* r2, const float* x0, const float* x1,
                        const float* x2, const float* x3, Py_ssize_t n, float* acc0,
                        float* acc1, float* acc2)
    void ef_acc_3x4_i8(const signed char* r0, const signed char* r1, const signed char* r2,
                       const float* x0, const float* x1, const float* x2, const float* x3,
                       Py_ssize_t n, float* acc0, float* acc1, float* acc2)


cdef extern from "_layer_helpers.h" nogil:
    void ef_axpy_f32(float* out, const float* v, float w, Py_ssize_t n)
    void ef_axpy_f64(double* out, const double* v, double w, Py_ssize_t n)


cdef enum:
    LANES = 8
    COL_BLOCK = 1024
    ROW_BLOCK = 12
    STORED_NATIVE = 0
    STORED_BF16 = 1
    STORED_F16 = 2
    STORED_I8 = 3

STORAGE_CODES = {"native": STORED_NATIVE, "bfloat16": STORED_BF16,
                 "float16": STORED_F16, "int8": STORED_I8}

ctypedef struct Stored:
    const char* data
    const float* scales
    int storage
    Py_ssize_t n_rows, n_cols, itemsize, row_bytes


cdef class Matrix:
    """One weight matrix as stored (see eagle_fast/models/_layers_py.py)."""
    cdef Stored m
    cdef object _keep
    cdef readonly object compute
    cdef readonly Py_ssize_t rows, cols
    cdef readonly str storage

    def __init__(self, data, scales, str storage, compute):
        data = np.ascontiguousarray(data)
        if scales is not None:
            scales = np.ascontiguousarray(scales, dtype=np.float32)
        self._keep = (data, scales)
        self.compute = np.dtype(compute)
        self.storage = storage
        code = STORAGE_CODES[storage]
        if code != STORED_NATIVE and self.compute != np.float32:
            raise ValueError("low-precision weights compute in float32")
        if code == STORED_NATIVE and data.dtype != self.compute:
            raise ValueError("native weights must be of the compute dtype")
        self.m.data = <const char*> <size_t> data.ctypes.data
        self.m.scales = <const float*> <size_t> scales.ctypes.data if scales is not None else NULL
        self.m.storage = code
        self.m.n_rows = data.shape[0]
        self.m.n_cols = data.shape[1]
        self.m.itemsize = data.dtype.itemsize
        self.m.row_bytes = self.m.n_cols * self.m.itemsize
        self.rows = self.m.n_rows
        self.cols = self.m.n_cols


cdef inline const char* row_at(const Stored* m, Py_ssize_t r) noexcept nogil:
    return m.data + r * m.row_bytes


cdef inline void acc_spread(const Stored* m, Py_ssize_t r, Py_ssize_t stride,
                            const floating* x, Py_ssize_t n, floating* acc) noexcept nogil:
    cdef const char* w = row_at(m, r)
    cdef Py_ssize_t step = stride * m.row_bytes
    if floating is double:
        ef_acc_4x1_f64(<const double*> w, <const double*> (w + step),
                       <const double*> (w + 2 * step), <const double*> (w + 3 * step), x, n, acc)
    elif m.storage == STORED_NATIVE:
        ef_acc_4x1_f32(<const float*> w, <const float*> (w + step),
                       <const float*> (w + 2 * step), <const float*> (w + 3 * step), x, n, acc)
    elif m.storage == STORED_BF16:
        ef_acc_4x1_bf16(<const unsigned short*> w, <const unsigned short*> (w + step),
                        <const unsigned short*> (w + 2 * step),
                        <const unsigned short*> (w + 3 * step), x, n, acc)
    elif m.storage == STORED_F16:
        ef_acc_4x1_f16(<const unsigned short*> w, <const unsigned short*> (w + step),
                       <const unsigned short*> (w + 2 * step),
                       <const unsigned short*> (w + 3 * step), x, n, acc)
    else:
        ef_acc_8x1_i8(<const signed char*> w, stride * m.n_cols, x, n, acc)


cdef inline void acc_one(const Stored* m, Py_ssize_t r, Py_ssize_t col0,
                         const floating* x, Py_ssize_t n, floating* acc) noexcept nogil:
    cdef const char* w = row_at(m, r) + col0 * m.itemsize
    if floating is double:
        ef_acc_1x1_f64(<const double*> w, x, n, acc)
    elif m.storage == STORED_NATIVE:
        ef_acc_1x1_f32(<const float*> w, x, n, acc)
    elif m.storage == STORED_BF16:
        ef_acc_1x1_bf16(<const unsigned short*> w, x, n, acc)
    elif m.storage == STORED_F16:
        ef_acc_1x1_f16(<const unsigned short*> w, x, n, acc)
    else:
        ef_acc_1x1_i8(<const signed char*> w, x, n, acc)


cdef inline void acc_3x4(const Stored* m, Py_ssize_t r, Py_ssize_t col0,
                         const floating* x, Py_ssize_t xs, Py_ssize_t n,
                         floating* acc, Py_ssize_t accs) noexcept nogil:
    cdef const char* w = row_at(m, r) + col0 * m.itemsize
    cdef Py_ssize_t step = m.row_bytes
    if floating is double:
        ef_acc_3x4_f64(<const double*> w, <const double*> (w + step),
                       <const double*> (w + 2 * step), x, x + xs, x + 2 * xs, x + 3 * xs, n,
                       acc, acc + accs, acc + 2 * accs)
    elif m.storage == STORED_NATIVE:
        ef_acc_3x4_f32(<const float*> w, <const float*> (w + step),
                       <const float*> (w + 2 * step), x, x + xs, x + 2 * xs, x + 3 * xs, n,
                       acc, acc + accs, acc + 2 * accs)
    elif m.storage == STORED_BF16:
        ef_acc_3x4_bf16(<const unsigned short*> w, <const unsigned short*> (w + step),
                        <const unsigned short*> (w + 2 * step), x, x + xs, x + 2 * xs,
                        x + 3 * xs, n, acc, acc + accs, acc + 2 * accs)
    elif m.storage == STORED_F16:
        ef_acc_3x4_f16(<const unsigned short*> w, <const unsigned short*> (w + step),
                       <const unsigned short*> (w + 2 * step), x, x + xs, x + 2 * xs,
                       x + 3 * xs, n, acc, acc + accs, acc + 2 * accs)
    else:
        ef_acc_3x4_i8(<const signed char*> w, <const signed char*> (w + step),
                      <const signed char*> (w + 2 * step), x, x + xs, x + 2 * xs, x + 3 * xs,
                      n, acc, acc + accs, acc + 2 * accs)


cdef inline floating finish(const Stored* m, Py_ssize_t r, const floating* acc,
                            const floating* x, Py_ssize_t n_vec) noexcept nogil:
    cdef const char* w = row_at(m, r)
    if floating is double:
        return ef_finish_f64(acc, <const double*> w, x, n_vec, m.n_cols)
    elif m.storage == STORED_NATIVE:
        return ef_finish_f32(acc, <const float*> w, x, n_vec, m.n_cols)
    elif m.storage == STORED_BF16:
        return ef_finish_bf16(acc, <const unsigned short*> w, x, n_vec, m.n_cols)
    elif m.storage == STORED_F16:
        return ef_finish_f16(acc, <const unsigned short*> w, x, n_vec, m.n_cols)
    else:
        return ef_finish_i8(acc, <const signed char*> w, x, n_vec, m.n_cols) * m.scales[r]


cdef inline Py_ssize_t lane_buffer_size(Py_ssize_t n_states) noexcept nogil:
    return max(8, ROW_BLOCK * n_states) * LANES


cdef void chunk_products(Py_ssize_t start, Py_ssize_t stop, const Stored* m,
                         const floating* states, Py_ssize_t n_states,
                         floating* out, floating* lanes) noexcept nogil:
    """out[s, r] = states[s] . row(r) for start <= r < stop."""
    cdef Py_ssize_t n_rows = m.n_rows, n_cols = m.n_cols
    cdef Py_ssize_t n_vec = n_cols - n_cols % LANES
    cdef Py_ssize_t r, s, u, row0, col0, width, col_block, n_block_rows, n_grouped_rows
    cdef Py_ssize_t block, col_step, n_spread, stride
    cdef Py_ssize_t n_grouped = n_states - n_states % 4
    cdef const floating* x
    if n_states == 1:
        n_spread = 8 if (floating is float and m.storage == STORED_I8) else 4
        stride = (stop - start) // n_spread
        for r in range(start, start + stride):
            memset(lanes, 0, n_spread * LANES * sizeof(floating))
            acc_spread(m, r, stride, states, n_vec, lanes)
            for u in range(n_spread):
                out[r + u * stride] = finish(m, r + u * stride, lanes + u * LANES, states, n_vec)
        for r in range(start + n_spread * stride, stop):
            memset(lanes, 0, LANES * sizeof(floating))
            acc_one(m, r, 0, states, n_vec, lanes)
            out[r] = finish(m, r, lanes, states, n_vec)
        return
    col_block = COL_BLOCK if n_states > 8 else n_vec
    for block in range((stop - start + ROW_BLOCK - 1) // ROW_BLOCK):
        row0 = start + block * ROW_BLOCK
        n_block_rows = min(<Py_ssize_t> ROW_BLOCK, stop - row0)
        n_grouped_rows = n_block_rows - n_block_rows % 3
        memset(lanes, 0, n_block_rows * n_states * LANES * sizeof(floating))
        for col_step in range((n_vec + col_block - 1) // col_block if col_block else 0):
            col0 = col_step * col_block
            width = min(col_block, n_vec - col0)
            for s in range(0, n_grouped, 4):
                x = states + s * n_cols + col0
                for r in range(0, n_grouped_rows, 3):
                    acc_3x4(m, row0 + r, col0, x, n_cols, width,
                            lanes + (r * n_states + s) * LANES, n_states * LANES)
                for r in range(n_grouped_rows, n_block_rows):
                    for u in range(4):
                        acc_one(m, row0 + r, col0, x + u * n_cols, width,
                                lanes + (r * n_states + s + u) * LANES)
            for s in range(n_grouped, n_states):
                x = states + s * n_cols + col0
                for r in range(n_block_rows):
                    acc_one(m, row0 + r, col0, x, width, lanes + (r * n_states + s) * LANES)
        for r in range(n_block_rows):
            for s in range(n_states):
                out[s * n_rows + row0 + r] = finish(
                    m, row0 + r, lanes + (r * n_states + s) * LANES, states + s * n_cols, n_vec)


cdef int matmul_impl(const Stored* m, const floating* x, Py_ssize_t n_states,
                     floating* out, int n_threads) except -1 nogil:
    cdef Py_ssize_t n_chunks = n_threads, c, start, stop
    cdef Py_ssize_t lane_size = lane_buffer_size(n_states)
    cdef floating* lanes
    if m.n_rows < 64 * n_chunks:
        n_chunks = 1
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
    cdef int threads = n_threads if n * heads * total >= 4096 else 1
    scratch = <floating*> malloc(max(1, threads) * max(1, total) * sizeof(floating))
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
