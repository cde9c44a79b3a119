# Fused draft-head kernel: x = SiLU(W h + b), logits = L x / T, softmax, top-k.
#
# Two passes over the weights, each streaming its matrix exactly once:
#   pass 1  projection + bias + SiLU into a small scratch x (B x d_proj);
#   pass 2  LM-head dot products fused with the softmax statistics (running
#           max and sum of exp) and the top-k selection.
# Rows are split into one contiguous chunk per thread; every chunk keeps its
# own softmax statistics and top-k list, merged after the loop.  Vocab-sized
# arrays are written only when the caller asks for logits or probabilities.
#
# Inner loops: for one state, 4 rows spread over the chunk (4 long
# concurrent read streams per thread) against x; for a batch, 2 rows x 4
# states, so each weight row is read from memory once for all states.  The
# module is compiled with reassociation allowed (see CMakeLists.txt), which
# lets the compiler turn every accumulator into a SIMD vector of partial sums.
#
# Callers (eagle_fast._head) pass validated, C-contiguous arrays of one dtype;
# outputs are allocated here through NumPy's C API, which keeps a small call
# down to about a microsecond.

from cython cimport floating
from cython.parallel cimport parallel, prange
from libc.math cimport INFINITY, exp, fabs, isfinite
from libc.stdint cimport INT64_MAX, int64_t
from libc.stdlib cimport free, malloc

cimport numpy as cnp

cimport _build_info
cimport _openmp_helpers

cnp.import_array()

OPENMP = bool(_openmp_helpers.EAGLE_FAST_OPENMP)
SIMD = _build_info.EAGLE_FAST_SIMD.decode()
COMPILE_FLAGS = _build_info.EAGLE_FAST_COMPILE_FLAGS.decode()
COMPILER = _build_info.EAGLE_FAST_COMPILER.decode()


def max_threads():
    """OpenMP's default team size (honours OMP_NUM_THREADS); 1 without OpenMP."""
    return _openmp_helpers.omp_get_max_threads()


cdef extern from *:
    """
    #if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    static int eagle_fast_cpu_has_x86_64_v3(void) {
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")
            && __builtin_cpu_supports("f16c") && __builtin_cpu_supports("bmi2");
    }
    #else
    static int eagle_fast_cpu_has_x86_64_v3(void) { return 0; }
    #endif
    """
    int eagle_fast_cpu_has_x86_64_v3() noexcept nogil


def cpu_has_x86_64_v3():
    """True when this CPU runs x86-64-v3 code (AVX2, FMA, F16C, BMI2)."""
    return bool(eagle_fast_cpu_has_x86_64_v3())


# ---------------------------------------------------------------------------
# Dot-product micro-kernels.  Independent accumulators per (row, state) pair;
# with reassociation each becomes a vector register of partial sums.
# ---------------------------------------------------------------------------

cdef inline floating dot_1x1(const floating* row, const floating* x,
                             Py_ssize_t n) noexcept nogil:
    cdef floating acc = 0
    cdef Py_ssize_t j
    for j in range(n):
        acc += row[j] * x[j]
    return acc


cdef inline void dot_4x1(const floating* r0, const floating* r1,
                         const floating* r2, const floating* r3,
                         const floating* x, Py_ssize_t n,
                         floating* out) noexcept nogil:
    cdef floating a0 = 0, a1 = 0, a2 = 0, a3 = 0, xj
    cdef Py_ssize_t j
    for j in range(n):
        xj = x[j]
        a0 += r0[j] * xj
        a1 += r1[j] * xj
        a2 += r2[j] * xj
        a3 += r3[j] * xj
    out[0] = a0
    out[1] = a1
    out[2] = a2
    out[3] = a3


cdef inline void dot_2x4(const floating* r0, const floating* r1,
                         const floating* x0, const floating* x1,
                         const floating* x2, const floating* x3,
                         Py_ssize_t n, floating* out) noexcept nogil:
    # out[u * 4 + s] = row u . state s
    cdef floating a00 = 0, a01 = 0, a02 = 0, a03 = 0
    cdef floating a10 = 0, a11 = 0, a12 = 0, a13 = 0
    cdef floating w0, w1
    cdef Py_ssize_t j
    for j in range(n):
        w0 = r0[j]
        w1 = r1[j]
        a00 += w0 * x0[j]
        a01 += w0 * x1[j]
        a02 += w0 * x2[j]
        a03 += w0 * x3[j]
        a10 += w1 * x0[j]
        a11 += w1 * x1[j]
        a12 += w1 * x2[j]
        a13 += w1 * x3[j]
    out[0] = a00
    out[1] = a01
    out[2] = a02
    out[3] = a03
    out[4] = a10
    out[5] = a11
    out[6] = a12
    out[7] = a13


# ---------------------------------------------------------------------------
# Epilogues: what happens to each finished dot product.
# ---------------------------------------------------------------------------

cdef struct Epilogue:
    bint projection          # pass 1: bias + SiLU into x_out; else pass 2
    const void* bias         # pass 1
    void* x_out              # pass 1: (n_states, n_rows)
    void* logits             # pass 2: (n_states, vocab) or NULL
    double temperature       # pass 2: <= 0 means no scaling (as the spec)
    Py_ssize_t n_rows
    Py_ssize_t n_states
    Py_ssize_t top_k
    double* chunk_max        # pass 2: (n_chunks, n_states) running max
    double* chunk_sum        # pass 2: (n_chunks, n_states) sum of exp(l - max)
    void* top_values         # pass 2: (n_chunks, n_states, top_k), best first
    int64_t* top_ids


cdef inline floating silu(floating v) noexcept nogil:
    # The spec's cut-off: beyond |v| >= 500 the sigmoid is exactly 1 or 0.
    if fabs(v) < 500:
        return v / (1 + exp(-v))
    elif v > 0:
        return v
    return v * 0   # -0.0 for finite v, NaN for NaN/-inf, like the spec


cdef inline bint ranks_before(floating v1, int64_t i1,
                              floating v2, int64_t i2) noexcept nogil:
    # Larger value first; equal values keep the lower token id first.
    return v1 > v2 or (v1 == v2 and i1 < i2)


cdef inline void topk_insert(floating* values, int64_t* ids, Py_ssize_t k,
                             floating v, int64_t i) noexcept nogil:
    # values/ids are sorted best first and padded with (-inf, INT64_MAX).
    cdef Py_ssize_t pos = k - 1
    if not ranks_before(v, i, values[pos], ids[pos]):
        return
    while pos > 0 and ranks_before(v, i, values[pos - 1], ids[pos - 1]):
        values[pos] = values[pos - 1]
        ids[pos] = ids[pos - 1]
        pos -= 1
    values[pos] = v
    ids[pos] = i


cdef inline void emit(const Epilogue* ep, Py_ssize_t chunk, Py_ssize_t row,
                      Py_ssize_t state, floating value) noexcept nogil:
    cdef Py_ssize_t slot
    cdef double logit, m
    if ep.projection:
        value = value + (<const floating*> ep.bias)[row]
        (<floating*> ep.x_out)[state * ep.n_rows + row] = silu(value)
        return
    if ep.temperature > 0:
        value = value / <floating> ep.temperature
    if ep.logits != NULL:
        (<floating*> ep.logits)[state * ep.n_rows + row] = value
    slot = chunk * ep.n_states + state
    # Online softmax: keep sum(exp(l - max)) exact under a moving max.
    logit = value
    m = ep.chunk_max[slot]
    if logit > m:
        ep.chunk_sum[slot] = ep.chunk_sum[slot] * exp(m - logit) + 1.0
        ep.chunk_max[slot] = logit
    else:
        ep.chunk_sum[slot] += exp(logit - m)
    topk_insert((<floating*> ep.top_values) + slot * ep.top_k,
                ep.top_ids + slot * ep.top_k, ep.top_k, value, row)


# ---------------------------------------------------------------------------
# One chunk of rows of a weight matrix against every state.
# ---------------------------------------------------------------------------

cdef void rows_times_states(Py_ssize_t chunk, Py_ssize_t n_chunks,
                            const floating* weight, Py_ssize_t n_rows,
                            Py_ssize_t n_cols, const floating* states,
                            Py_ssize_t n_states, const Epilogue* ep) noexcept nogil:
    cdef Py_ssize_t start = n_rows * chunk // n_chunks
    cdef Py_ssize_t stop = n_rows * (chunk + 1) // n_chunks
    cdef Py_ssize_t r, s, u, stride, blocked_stop
    cdef floating out[8]
    cdef const floating* x

    if n_states == 1:
        # Rows r, r + q, r + 2q, r + 3q: four long streams, one pass over x.
        stride = (stop - start) // 4
        for r in range(start, start + stride):
            dot_4x1(weight + r * n_cols,
                    weight + (r + stride) * n_cols,
                    weight + (r + 2 * stride) * n_cols,
                    weight + (r + 3 * stride) * n_cols,
                    states, n_cols, out)
            for u in range(4):
                emit(ep, chunk, r + u * stride, 0, out[u])
        for r in range(start + 4 * stride, stop):
            emit(ep, chunk, r, 0, dot_1x1(weight + r * n_cols, states, n_cols))
        return

    # Batched: rows r and r + q against 4 states at a time; each weight row
    # is streamed from memory once and reused from cache for every state.
    stride = (stop - start) // 2
    blocked_stop = n_states - n_states % 4
    for r in range(start, start + stride):
        for s in range(0, blocked_stop, 4):
            x = states + s * n_cols
            dot_2x4(weight + r * n_cols, weight + (r + stride) * n_cols,
                    x, x + n_cols, x + 2 * n_cols, x + 3 * n_cols, n_cols, out)
            for u in range(4):
                emit(ep, chunk, r, s + u, out[u])
                emit(ep, chunk, r + stride, s + u, out[4 + u])
        for s in range(blocked_stop, n_states):
            x = states + s * n_cols
            emit(ep, chunk, r, s, dot_1x1(weight + r * n_cols, x, n_cols))
            emit(ep, chunk, r + stride, s,
                 dot_1x1(weight + (r + stride) * n_cols, x, n_cols))
    for r in range(start + 2 * stride, stop):
        for s in range(n_states):
            emit(ep, chunk, r, s,
                 dot_1x1(weight + r * n_cols, states + s * n_cols, n_cols))


# ---------------------------------------------------------------------------
# Merging per-chunk results.
# ---------------------------------------------------------------------------

cdef bint merge_state(const Epilogue* ep, Py_ssize_t n_chunks, Py_ssize_t state,
                      floating* best_values, int64_t* best_ids,
                      floating* token_probs, double* max_out,
                      double* sum_out) noexcept nogil:
    """Combine the chunks' statistics and top-k lists of one state; False if
    the softmax is not finite (non-finite inputs or overflow)."""
    cdef Py_ssize_t c, r, slot, k = ep.top_k
    cdef double m = -INFINITY, total = 0.0
    cdef const floating* values
    for c in range(n_chunks):
        slot = c * ep.n_states + state
        if ep.chunk_max[slot] > m:
            m = ep.chunk_max[slot]
    for c in range(n_chunks):
        slot = c * ep.n_states + state
        total += ep.chunk_sum[slot] * exp(ep.chunk_max[slot] - m)
    if not (isfinite(m) and isfinite(total)):
        return False
    for r in range(k):
        best_values[r] = -INFINITY
        best_ids[r] = INT64_MAX
    for c in range(n_chunks):
        slot = (c * ep.n_states + state) * k
        values = (<const floating*> ep.top_values) + slot
        for r in range(k):
            if ep.top_ids[slot + r] == INT64_MAX:
                break
            topk_insert(best_values, best_ids, k, values[r], ep.top_ids[slot + r])
    for r in range(k):
        token_probs[r] = <floating> (exp(best_values[r] - m) / total)
    max_out[0] = m
    sum_out[0] = total
    return True


cdef void probs_chunk(Py_ssize_t chunk, Py_ssize_t n_chunks, const floating* logits,
                      floating* probs, Py_ssize_t vocab, double m,
                      double total) noexcept nogil:
    cdef Py_ssize_t start = vocab * chunk // n_chunks
    cdef Py_ssize_t stop = vocab * (chunk + 1) // n_chunks
    cdef Py_ssize_t v
    for v in range(start, stop):
        probs[v] = <floating> (exp(logits[v] - m) / total)


# ---------------------------------------------------------------------------
# The whole forward pass for one dtype.
# ---------------------------------------------------------------------------

cdef Py_ssize_t forward_impl(const floating* weight, const floating* bias,
                             const floating* lm_head, Py_ssize_t d_model,
                             Py_ssize_t d_proj, Py_ssize_t vocab,
                             const floating* hidden, Py_ssize_t n_states,
                             double temperature, Py_ssize_t top_k,
                             int64_t* tokens, floating* token_probs,
                             floating* logits, floating* probs,
                             int n_threads) except -1 nogil:
    """Returns the number of states whose softmax was not finite."""
    cdef Py_ssize_t n_chunks = n_threads
    cdef Py_ssize_t n_slots = n_chunks * n_states
    cdef Py_ssize_t c, s, i, n_bad = 0
    cdef double m, total
    cdef Epilogue projection, head
    cdef const Epilogue* projection_ep = &projection
    cdef const Epilogue* head_ep = &head
    cdef floating* x = <floating*> malloc(n_states * d_proj * sizeof(floating))
    cdef double* stats = <double*> malloc(2 * n_slots * sizeof(double))
    cdef floating* top_values = <floating*> malloc(
        (n_slots * top_k + top_k) * sizeof(floating))
    cdef int64_t* top_ids = <int64_t*> malloc((n_slots * top_k + top_k) * sizeof(int64_t))
    cdef floating* logits_scratch = NULL
    if probs != NULL and logits == NULL:
        logits = logits_scratch = <floating*> malloc(n_states * vocab * sizeof(floating))
    try:
        if (x == NULL or stats == NULL or top_values == NULL or top_ids == NULL
                or (probs != NULL and logits == NULL)):
            with gil:
                raise MemoryError()
        for i in range(n_slots):
            stats[i] = -INFINITY
            stats[n_slots + i] = 0.0
        for i in range(n_slots * top_k):
            top_values[i] = -INFINITY
            top_ids[i] = INT64_MAX

        projection.projection = True
        projection.bias = bias
        projection.x_out = x
        projection.n_rows = d_proj
        projection.n_states = n_states

        head.projection = False
        head.logits = logits
        head.temperature = temperature
        head.n_rows = vocab
        head.n_states = n_states
        head.top_k = top_k
        head.chunk_max = stats
        head.chunk_sum = stats + n_slots
        head.top_values = top_values
        head.top_ids = top_ids

        if n_threads == 1:
            # Small problems: no OpenMP region, so a call costs microseconds.
            rows_times_states(0, 1, weight, d_proj, d_model, hidden, n_states,
                              projection_ep)
            rows_times_states(0, 1, lm_head, vocab, d_proj, x, n_states, head_ep)
        else:
            with parallel(num_threads=n_threads):
                for c in prange(n_chunks, schedule='static'):
                    rows_times_states(c, n_chunks, weight, d_proj, d_model,
                                      hidden, n_states, projection_ep)
                for c in prange(n_chunks, schedule='static'):
                    rows_times_states(c, n_chunks, lm_head, vocab, d_proj,
                                      x, n_states, head_ep)

        # The merged top-k of a state goes to spare space past the chunks'.
        for s in range(n_states):
            if not merge_state(head_ep, n_chunks, s,
                               top_values + n_slots * top_k,
                               top_ids + n_slots * top_k,
                               token_probs + s * top_k, &m, &total):
                n_bad += 1
                continue
            for i in range(top_k):
                tokens[s * top_k + i] = top_ids[n_slots * top_k + i]
            if probs != NULL:
                if n_threads == 1:
                    probs_chunk(0, 1, logits + s * vocab, probs + s * vocab,
                                vocab, m, total)
                else:
                    for c in prange(n_chunks, schedule='static',
                                    num_threads=n_threads):
                        probs_chunk(c, n_chunks, logits + s * vocab,
                                    probs + s * vocab, vocab, m, total)
        return n_bad
    finally:
        free(x)
        free(stats)
        free(top_values)
        free(top_ids)
        free(logits_scratch)


cdef class KernelHead:
    """Weights of one draft head, held as raw pointers for cheap calls.

    Takes validated C-contiguous arrays of one dtype (float32 or float64) and
    keeps references to them, so the pointers stay valid.
    """
    cdef object _arrays
    cdef const void* weight
    cdef const void* bias
    cdef const void* lm_head
    cdef int type_num
    cdef readonly Py_ssize_t d_model, d_proj, vocab

    def __init__(self, projection_weight, projection_bias, lm_head_weight):
        cdef const float[:, ::1] w32, l32
        cdef const float[::1] b32
        cdef const double[:, ::1] w64, l64
        cdef const double[::1] b64
        self._arrays = (projection_weight, projection_bias, lm_head_weight)
        if projection_weight.dtype.itemsize == 8:
            self.type_num = cnp.NPY_FLOAT64
            w64 = projection_weight
            b64 = projection_bias
            l64 = lm_head_weight
            self.weight = &w64[0, 0]
            self.bias = &b64[0]
            self.lm_head = &l64[0, 0]
        else:
            self.type_num = cnp.NPY_FLOAT32
            w32 = projection_weight
            b32 = projection_bias
            l32 = lm_head_weight
            self.weight = &w32[0, 0]
            self.bias = &b32[0]
            self.lm_head = &l32[0, 0]
        self.d_proj, self.d_model = projection_weight.shape
        self.vocab = lm_head_weight.shape[0]

    def forward(self, cnp.ndarray hidden, double temperature, Py_ssize_t top_k,
                bint want_logits, bint want_probs, int n_threads):
        """Run the head on ``hidden``: (d_model,) or (B, d_model), C-contiguous,
        of the head's dtype (the caller validates).

        Returns ``(n_bad, tokens, token_probs, logits, probs)``: tokens (int64)
        and token_probs shaped (k,) or (B, k), logits/probs (V,) or (B, V) when
        asked for, else None; n_bad counts states whose softmax is not finite
        (their outputs are undefined).
        """
        cdef int ndim = cnp.PyArray_NDIM(hidden)
        cdef Py_ssize_t n_states = 1 if ndim == 1 else cnp.PyArray_DIMS(hidden)[0]
        cdef cnp.npy_intp dims[2]
        cdef Py_ssize_t n_bad
        cdef void* hidden_ptr = cnp.PyArray_DATA(hidden)
        cdef void* logits_ptr = NULL
        cdef void* probs_ptr = NULL
        dims[0] = n_states
        dims[ndim - 1] = top_k
        tokens = cnp.PyArray_EMPTY(ndim, dims, cnp.NPY_INT64, 0)
        token_probs = cnp.PyArray_EMPTY(ndim, dims, self.type_num, 0)
        logits = probs = None
        dims[ndim - 1] = self.vocab
        if want_logits:
            logits = cnp.PyArray_EMPTY(ndim, dims, self.type_num, 0)
            logits_ptr = cnp.PyArray_DATA(logits)
        if want_probs:
            probs = cnp.PyArray_EMPTY(ndim, dims, self.type_num, 0)
            probs_ptr = cnp.PyArray_DATA(probs)
        cdef int64_t* tokens_ptr = <int64_t*> cnp.PyArray_DATA(tokens)
        cdef void* token_probs_ptr = cnp.PyArray_DATA(token_probs)
        with nogil:
            if self.type_num == cnp.NPY_FLOAT64:
                n_bad = forward_impl(
                    <const double*> self.weight, <const double*> self.bias,
                    <const double*> self.lm_head, self.d_model, self.d_proj, self.vocab,
                    <const double*> hidden_ptr, n_states, temperature, top_k, tokens_ptr,
                    <double*> token_probs_ptr, <double*> logits_ptr, <double*> probs_ptr,
                    n_threads)
            else:
                n_bad = forward_impl(
                    <const float*> self.weight, <const float*> self.bias,
                    <const float*> self.lm_head, self.d_model, self.d_proj, self.vocab,
                    <const float*> hidden_ptr, n_states, temperature, top_k, tokens_ptr,
                    <float*> token_probs_ptr, <float*> logits_ptr, <float*> probs_ptr,
                    n_threads)
        return n_bad, tokens, token_probs, logits, probs
