# Fused draft-head kernel: x = SiLU(W h + b), logits = L x / T, softmax, top-k.
#
# Two passes over the weights, each streaming its matrix from memory once:
#   pass 1  projection dot products, then bias + SiLU, into a scratch x (B x d_proj);
#   pass 2  LM-head dot products, then per chunk of rows the softmax statistics
#           (running max and sum of exp) and the top-k selection, read back while
#           the chunk's logits are still in cache.
# Rows are split into one contiguous chunk per thread; every chunk keeps its own
# softmax statistics and top-k list, merged after the loop.
#
# Dot products: every one is computed with the same arithmetic whatever the
# batch size or thread count -- 8 SIMD lanes of partial sums kept across column
# blocks, reduced in a fixed order at the end (_dot_kernels.h) -- so a batch
# gives bit-identical results to the same states one by one, and equal rows
# give equal logits.
# Register blocking: one state uses 4 rows spread over the chunk (4 long read
# streams per thread; 8 for int8); a batch uses 3 rows x 4 states per step over
# blocks of ROW_BLOCK rows, so each weight row is read from memory once for all
# states (with many states, in column blocks that keep 4 states' slice in L1).
#
# Storage: W and L are float32/float64 (the compute dtype) or, with float32
# compute, bfloat16 / float16 / int8 (per-row scales), converted exactly to
# float32 in registers as they are loaded -- the arithmetic stays that of the
# float32 kernel on the dequantized weights (int8 rows: on q, times the row
# scale at the end; a row whose unscaled sum overflows float32 is recomputed
# on its dequantized values, see finish_row).  A head may be residual (Medusa:
# x = h + SiLU(W h + b)); forward_heads runs several heads in one call.
#
# Callers (eagle_fast._head, _medusa) pass validated, C-contiguous, aligned arrays;
# outputs are allocated here through NumPy's C API, which keeps a small call
# down to about a microsecond.

from cython cimport floating
from cython.parallel cimport parallel, prange
from libc.math cimport INFINITY, exp, fabs, isfinite
from libc.stdint cimport INT64_MAX, int64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memset

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


# Stored weight matrices and their blocked dot products, shared with the EAGLE
# layer kernel.
include "_stored_matmul.pxi"

cdef extern from "_dot_kernels.h" nogil:
    float ef_sum_8_streams_f32(const float* data, Py_ssize_t n)


ctypedef struct HeadWeights:
    StoredMatrix weight       # W (d_proj, d_model)
    const void* bias          # b (d_proj,), of the compute dtype
    StoredMatrix lm_head      # L (vocab, d_proj)
    bint residual             # x = h + SiLU(W h + b) (Medusa); needs d_proj == d_model
    const IntWeights* ints    # activations="int8": W and L for _int_dot.h, else NULL


# ---------------------------------------------------------------------------
# Integer dot products (activations="int8", _int_dot.h): the states are
# quantized to int8 once per call (h before pass 1, x between the passes),
# then int8/q8/q4 rows take vpmaddubsw/vpmaddwd dot products with them.
# ---------------------------------------------------------------------------

cdef extern from "_int_dot.h" nogil:
    ctypedef struct ef_qstates:
        pass
    ctypedef struct ef_imatrix:
        int kind
        const char* data
        Py_ssize_t row_bytes, n_rows, n_cols, n_groups
        const unsigned short* gscales
        const float* row_scales
    int EF_INT_I8, EF_INT_Q8, EF_INT_Q4
    int ef_qstates_alloc(ef_qstates* a, Py_ssize_t n_states, Py_ssize_t n, int with_sums)
    void ef_qstates_free(ef_qstates* a)
    void ef_quantize_states(const float* v, Py_ssize_t n, ef_qstates* a, Py_ssize_t s0,
                            Py_ssize_t s1)
    void ef_quantize_groups(const float* v, Py_ssize_t n, ef_qstates* a, Py_ssize_t n_states,
                            Py_ssize_t g0, Py_ssize_t g1)
    void ef_int_products(const ef_imatrix* m, Py_ssize_t start, Py_ssize_t stop,
                         const ef_qstates* a, Py_ssize_t n_states, float* products)
    float ef_fma_f32(float a, float b, float c)

def fma_f32(float a, float b, float c):
    """fl32(a * b + c), one rounding, as the integer dot products accumulate
    (a: an integer of at most 20 bits); for the tests."""
    return ef_fma_f32(a, b, c)


ctypedef struct IntWeights:
    ef_imatrix weight
    ef_imatrix lm_head


cdef inline void int_chunk_products(const ef_imatrix* m, Py_ssize_t start, Py_ssize_t stop,
                                    const ef_qstates* acts, Py_ssize_t n_states,
                                    floating* products) noexcept nogil:
    if floating is float:
        ef_int_products(m, start, stop, acts, n_states, products)


cdef inline void quantize_states(const floating* states, Py_ssize_t n, Py_ssize_t n_states,
                                 ef_qstates* acts) noexcept nogil:
    """Quantize all the states (rows of n values) into acts."""
    if floating is float:
        ef_quantize_states(states, n, acts, 0, n_states)


cdef inline void quantize_groups(const floating* states, Py_ssize_t n, Py_ssize_t n_states,
                                 Py_ssize_t g0, Py_ssize_t g1, ef_qstates* acts) noexcept nogil:
    """Quantize groups g0 .. g1 of every state into acts."""
    if floating is float:
        ef_quantize_groups(states, n, acts, n_states, g0, g1)


# ---------------------------------------------------------------------------
# Epilogues.
# ---------------------------------------------------------------------------

cdef inline floating silu(floating v) noexcept nogil:
    # The spec's cut-off: beyond |v| >= 500 the sigmoid is exactly 1 or 0.
    if fabs(v) < 500:
        return v / (1 + exp(-v))
    elif v > 0:
        return v
    return v * 0   # -0.0 for finite v, NaN for NaN/-inf, like the spec


cdef void projection_chunk(Py_ssize_t start, Py_ssize_t stop, const floating* bias,
                           floating* x, Py_ssize_t d_proj, Py_ssize_t n_states,
                           const floating* residual) noexcept nogil:
    """x[s, i] = SiLU(x[s, i] + b[i]) in place, plus residual[s, i] (the hidden
    state, for Medusa heads) unless residual is NULL."""
    cdef Py_ssize_t s, i
    for s in range(n_states):
        for i in range(start, stop):
            x[s * d_proj + i] = silu(x[s * d_proj + i] + bias[i])
        if residual != NULL:
            for i in range(start, stop):
                x[s * d_proj + i] = residual[s * d_proj + i] + x[s * d_proj + i]


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


cdef extern from "_verify_kernels.h" nogil:
    # sum_j exp((row[j] - m) * inv_t) in double, a vectorized exp (relative
    # error < 2e-16 before rounding) for the non-positive arguments a shifted
    # softmax has; NaN in, NaN out.
    double ef_exp_sum_f32(const float* row, Py_ssize_t n, double m, double inv_t)
    double ef_exp_sum_f64(const double* row, Py_ssize_t n, double m, double inv_t)


cdef void softmax_topk_chunk(Py_ssize_t start, Py_ssize_t stop, floating* logits,
                             Py_ssize_t vocab, Py_ssize_t n_states, double temperature,
                             Py_ssize_t top_k, double* chunk_max, double* chunk_sum,
                             floating* top_values, int64_t* top_ids) noexcept nogil:
    """Scale the chunk's logits by 1/T in place, fold them, in row order, into
    this chunk's top-k list of every state, then take the chunk's softmax
    statistics: its largest logit m (the top-k list's first; NaN never ranks)
    and sum(exp(l - m)) in one vectorized pass (a libm exp per logit was a
    sixth of a B = 64 call).  A NaN logit makes the sum NaN, +inf makes it
    inf - inf = NaN, so non-finite logits still fail the merge."""
    cdef Py_ssize_t s, r
    cdef floating value
    cdef double m
    cdef floating* row_logits
    cdef floating* best
    for s in range(n_states):
        row_logits = logits + s * vocab
        best = top_values + s * top_k
        for r in range(start, stop):
            value = row_logits[r]
            if temperature > 0:
                # Divide in double: a tiny T must not underflow to 0 in float32.
                value = <floating> (value / temperature)
                row_logits[r] = value
            topk_insert(best, top_ids + s * top_k, top_k, value, r)
        m = best[0] if top_ids[s * top_k] != INT64_MAX else -INFINITY
        chunk_max[s] = m
        if floating is float:
            chunk_sum[s] = ef_exp_sum_f32(row_logits + start, stop - start, m, 1.0)
        else:
            chunk_sum[s] = ef_exp_sum_f64(row_logits + start, stop - start, m, 1.0)


cdef bint merge_state(Py_ssize_t n_chunks, Py_ssize_t n_states, Py_ssize_t state,
                      Py_ssize_t top_k, const double* chunk_max, const double* chunk_sum,
                      const floating* top_values, const int64_t* top_ids,
                      floating* best_values, int64_t* best_ids,
                      floating* token_probs, double* max_out,
                      double* sum_out) noexcept nogil:
    """Combine the chunks' statistics and top-k lists of one state; False if
    the softmax is not finite (non-finite inputs or overflow)."""
    cdef Py_ssize_t c, r, slot
    cdef double m = -INFINITY, total = 0.0
    for c in range(n_chunks):
        slot = c * n_states + state
        if chunk_max[slot] > m:
            m = chunk_max[slot]
    for c in range(n_chunks):
        slot = c * n_states + state
        total += chunk_sum[slot] * exp(chunk_max[slot] - m)
    if not (isfinite(m) and isfinite(total)):
        return False
    for r in range(top_k):
        best_values[r] = -INFINITY
        best_ids[r] = INT64_MAX
    for c in range(n_chunks):
        slot = (c * n_states + state) * top_k
        for r in range(top_k):
            if top_ids[slot + r] == INT64_MAX:
                break
            topk_insert(best_values, best_ids, top_k, top_values[slot + r],
                        top_ids[slot + r])
    for r in range(top_k):
        token_probs[r] = <floating> (exp(best_values[r] - m) / total)
    max_out[0] = m
    sum_out[0] = total
    return True


cdef void probs_chunk(Py_ssize_t start, Py_ssize_t stop, const floating* logits,
                      floating* probs, double m, double total) noexcept nogil:
    cdef Py_ssize_t v
    for v in range(start, stop):
        probs[v] = <floating> (exp(logits[v] - m) / total)


# ---------------------------------------------------------------------------
# The whole forward pass for one dtype.
# ---------------------------------------------------------------------------

cdef inline Py_ssize_t chunk_start(Py_ssize_t n, Py_ssize_t chunk,
                                   Py_ssize_t n_chunks) noexcept nogil:
    return n * chunk // n_chunks


cdef void pass_one_chunk(Py_ssize_t c, Py_ssize_t n_chunks, const HeadWeights* head,
                         const floating* hidden, Py_ssize_t n_states,
                         floating* x, floating* lanes, const ef_qstates* acts,
                         ef_qstates* x_acts) noexcept nogil:
    """x for chunk c of the projection rows; with int8 activations (acts: the
    quantized h) the chunks are whole groups of GROUP rows, and each quantizes
    its own groups of x into x_acts (no barrier needed before pass two's)."""
    cdef Py_ssize_t d_proj = head.weight.n_rows
    cdef Py_ssize_t start = chunk_start(d_proj, c, n_chunks)
    cdef Py_ssize_t stop = chunk_start(d_proj, c + 1, n_chunks)
    cdef Py_ssize_t n_groups = (d_proj + GROUP - 1) // GROUP
    if acts != NULL:
        start = min(d_proj, chunk_start(n_groups, c, n_chunks) * GROUP)
        stop = min(d_proj, chunk_start(n_groups, c + 1, n_chunks) * GROUP)
        int_chunk_products(&head.ints.weight, start, stop, acts, n_states, x)
    else:
        chunk_products(start, stop, &head.weight, hidden, n_states, x,
                       lanes + c * lane_buffer_size(n_states))
    projection_chunk(start, stop, <const floating*> head.bias, x, d_proj, n_states,
                     hidden if head.residual else NULL)
    if acts != NULL and stop > start:   # start is then a multiple of GROUP
        quantize_groups(x, d_proj, n_states, start // GROUP, (stop + GROUP - 1) // GROUP,
                        x_acts)


cdef void pass_two_chunk(Py_ssize_t c, Py_ssize_t n_chunks, const StoredMatrix* lm_head,
                         const floating* x, Py_ssize_t n_states, floating* logits,
                         double temperature, Py_ssize_t top_k, double* stats,
                         floating* top_values, int64_t* top_ids,
                         floating* lanes, const ef_imatrix* int_lm_head,
                         const ef_qstates* acts) noexcept nogil:
    cdef Py_ssize_t vocab = lm_head.n_rows
    cdef Py_ssize_t start = chunk_start(vocab, c, n_chunks)
    cdef Py_ssize_t stop = chunk_start(vocab, c + 1, n_chunks)
    cdef Py_ssize_t slot = c * n_states
    if acts != NULL:
        int_chunk_products(int_lm_head, start, stop, acts, n_states, logits)
    else:
        chunk_products(start, stop, lm_head, x, n_states, logits,
                       lanes + c * lane_buffer_size(n_states))
    softmax_topk_chunk(start, stop, logits, vocab, n_states, temperature, top_k,
                       stats + slot, stats + n_chunks * n_states + slot,
                       top_values + slot * top_k, top_ids + slot * top_k)


cdef Py_ssize_t forward_impl(const HeadWeights* head, const floating* hidden,
                             Py_ssize_t n_states, double temperature, Py_ssize_t top_k,
                             int64_t* tokens, floating* token_probs,
                             floating* logits, floating* probs,
                             int n_threads) except -1 nogil:
    """Returns the number of states whose softmax was not finite."""
    cdef const StoredMatrix* lm_head = &head.lm_head
    cdef Py_ssize_t vocab = lm_head.n_rows
    cdef Py_ssize_t n_chunks = n_threads
    cdef Py_ssize_t n_slots = n_chunks * n_states
    cdef Py_ssize_t c, s, i, n_bad = 0
    cdef double m, total
    cdef floating* x = <floating*> malloc(n_states * head.weight.n_rows * sizeof(floating))
    cdef double* stats = <double*> malloc(2 * n_slots * sizeof(double))
    # Per-chunk top-k lists, then room for one merged list.
    cdef floating* top_values = <floating*> malloc((n_slots + 1) * top_k * sizeof(floating))
    cdef int64_t* top_ids = <int64_t*> malloc((n_slots + 1) * top_k * sizeof(int64_t))
    # Per-chunk lane buffers of the dot-product kernels.
    cdef floating* lanes = <floating*> malloc(
        n_chunks * lane_buffer_size(n_states) * sizeof(floating))
    cdef floating* logits_scratch = NULL
    # activations="int8": the quantized hidden states and features.
    cdef ef_qstates acts[2]
    cdef ef_qstates* qh = NULL
    cdef ef_qstates* qx = NULL
    cdef const ef_imatrix* int_lm_head = NULL
    cdef int q4 = 0
    memset(acts, 0, sizeof(acts))
    if logits == NULL:
        logits = logits_scratch = <floating*> malloc(n_states * vocab * sizeof(floating))
    try:
        if (x == NULL or stats == NULL or top_values == NULL or top_ids == NULL
                or lanes == NULL or logits == NULL):
            with gil:
                raise MemoryError()
        if head.ints != NULL:
            int_lm_head = &head.ints.lm_head
            q4 = head.ints.weight.kind == EF_INT_Q4
            if (ef_qstates_alloc(&acts[0], n_states, head.weight.n_cols, q4) != 0
                    or ef_qstates_alloc(&acts[1], n_states, head.weight.n_rows, q4) != 0):
                with gil:
                    raise MemoryError()
            qh = &acts[0]
            qx = &acts[1]
            # h once, serially (B x d_model values): pass one needs all of it.
            quantize_states(hidden, head.weight.n_cols, n_states, qh)
        for i in range(n_slots * top_k):
            top_values[i] = -INFINITY
            top_ids[i] = INT64_MAX

        if n_threads == 1:
            # Small problems: no OpenMP region, so a call costs about a microsecond.
            pass_one_chunk(0, 1, head, hidden, n_states, x, lanes, qh, qx)
            pass_two_chunk(0, 1, lm_head, x, n_states, logits, temperature, top_k, stats,
                           top_values, top_ids, lanes, int_lm_head, qx)
        else:
            with parallel(num_threads=n_threads):
                for c in prange(n_chunks, schedule='static'):
                    pass_one_chunk(c, n_chunks, head, hidden, n_states, x, lanes, qh, qx)
                for c in prange(n_chunks, schedule='static'):
                    pass_two_chunk(c, n_chunks, lm_head, x, n_states, logits, temperature,
                                   top_k, stats, top_values, top_ids, lanes, int_lm_head, qx)

        for s in range(n_states):
            if not merge_state(n_chunks, n_states, s, top_k, stats, stats + n_slots,
                               top_values, top_ids, top_values + n_slots * top_k,
                               top_ids + n_slots * top_k, token_probs + s * top_k,
                               &m, &total):
                n_bad += 1
                continue
            for i in range(top_k):
                tokens[s * top_k + i] = top_ids[n_slots * top_k + i]
            if probs != NULL:
                if n_threads == 1:
                    probs_chunk(0, vocab, logits + s * vocab, probs + s * vocab, m, total)
                else:
                    for c in prange(n_chunks, schedule='static', num_threads=n_threads):
                        probs_chunk(chunk_start(vocab, c, n_chunks),
                                    chunk_start(vocab, c + 1, n_chunks),
                                    logits + s * vocab, probs + s * vocab, m, total)
        return n_bad
    finally:
        free(x)
        free(stats)
        free(top_values)
        free(top_ids)
        free(lanes)
        free(logits_scratch)
        ef_qstates_free(&acts[0])
        ef_qstates_free(&acts[1])


def read_probe(const float[::1] data, int n_threads):
    """Read ``data`` once: each of ``n_threads`` threads sums its share as 8
    concurrent streams.  Returns the sum.  bench/ times it as the machine's
    memory read bandwidth, the limit of a single-state draft head."""
    cdef Py_ssize_t block = 64 * 1024, n_blocks = data.shape[0] // block, i
    cdef const float* base = &data[0]
    cdef float total = 0
    with nogil:
        for i in prange(n_blocks, schedule='static', num_threads=n_threads):
            total += ef_sum_8_streams_f32(base + i * block, block)
        for i in range(n_blocks * block, data.shape[0]):
            total += base[i]
    return total


cdef StoredMatrix stored_matrix(cnp.ndarray data, object scales, int storage,
                               Py_ssize_t n_cols):
    """n_cols: the column count (q4 rows hold two per byte; -1: data's)."""
    cdef StoredMatrix m
    m.data = <const char*> cnp.PyArray_DATA(data)
    m.scales = NULL
    m.group_scales = NULL
    m.storage = storage
    m.n_rows = cnp.PyArray_DIMS(data)[0]
    m.itemsize = cnp.PyArray_ITEMSIZE(data)
    m.row_bytes = cnp.PyArray_DIMS(data)[1] * m.itemsize
    m.n_cols = n_cols if n_cols >= 0 else cnp.PyArray_DIMS(data)[1]
    m.n_groups = 0
    if storage == STORED_Q8 or storage == STORED_Q4:
        m.group_scales = <const unsigned short*> cnp.PyArray_DATA(<cnp.ndarray> scales)
        m.n_groups = cnp.PyArray_DIMS(<cnp.ndarray> scales)[1]
    elif scales is not None:
        m.scales = <const float*> cnp.PyArray_DATA(<cnp.ndarray> scales)
    return m


cdef ef_imatrix int_matrix(const StoredMatrix* m):
    """An int8/q8/q4 matrix as _int_dot.h reads it."""
    cdef ef_imatrix out
    out.kind = (EF_INT_Q4 if m.storage == STORED_Q4 else
                EF_INT_Q8 if m.storage == STORED_Q8 else EF_INT_I8)
    out.data = m.data
    out.row_bytes = m.row_bytes
    out.n_rows = m.n_rows
    out.n_cols = m.n_cols
    out.n_groups = (m.n_cols + GROUP - 1) // GROUP
    out.gscales = m.group_scales
    out.row_scales = m.scales
    return out


cdef Py_ssize_t run_head(const HeadWeights* head, int type_num, const void* hidden,
                         Py_ssize_t n_states, double temperature, Py_ssize_t top_k,
                         int64_t* tokens, void* token_probs, void* logits, void* probs,
                         int n_threads) except -1 nogil:
    """forward_impl for the head's compute dtype."""
    if type_num == cnp.NPY_FLOAT64:
        return forward_impl(head, <const double*> hidden, n_states, temperature, top_k,
                            tokens, <double*> token_probs, <double*> logits,
                            <double*> probs, n_threads)
    return forward_impl(head, <const float*> hidden, n_states, temperature, top_k, tokens,
                        <float*> token_probs, <float*> logits, <float*> probs, n_threads)


cdef class KernelHead:
    """Weights of one draft head, held as raw pointers for cheap calls.

    Takes validated C-contiguous arrays (the caller checks everything) and
    keeps references to them, so the pointers stay valid.  The bias sets the
    compute dtype (float32 or float64); ``weight_dtype`` says how the two
    matrices are stored: "native" (the compute dtype), or, with a float32
    bias, "bfloat16" (uint16 bit patterns), "float16" or "int8" (with float32
    row scales ``projection_scales`` / ``lm_head_scales``), "q8" / "q4" (with
    float16 group scales of shape (rows, groups); q4 rows are uint8, two
    codes per byte, padded to whole groups: ``d_model`` gives the projection's
    column count).  ``residual``
    makes it a Medusa head, x = h + SiLU(W h + b) (d_proj == d_model).
    ``activations="int8"`` (int8/q8/q4 only) quantizes the states to int8
    and takes integer dot products (_int_dot.h).
    """
    cdef object _arrays
    cdef HeadWeights head
    cdef IntWeights ints
    cdef readonly int type_num
    cdef readonly Py_ssize_t d_model, d_proj, vocab
    cdef readonly str activations

    def __init__(self, cnp.ndarray projection_weight, cnp.ndarray projection_bias,
                 cnp.ndarray lm_head_weight, str weight_dtype="native",
                 projection_scales=None, lm_head_scales=None, bint residual=False,
                 Py_ssize_t d_model=-1, str activations="float"):
        cdef int storage = STORAGE_CODES[weight_dtype]
        self._arrays = (projection_weight, projection_bias, lm_head_weight,
                        projection_scales, lm_head_scales)
        self.type_num = cnp.PyArray_TYPE(projection_bias)
        if storage != STORED_NATIVE and self.type_num != cnp.NPY_FLOAT32:
            raise ValueError("low-precision weights compute in float32")
        self.head.weight = stored_matrix(projection_weight, projection_scales, storage, d_model)
        self.head.lm_head = stored_matrix(lm_head_weight, lm_head_scales, storage,
                                          cnp.PyArray_DIMS(projection_bias)[0])
        self.head.bias = cnp.PyArray_DATA(projection_bias)
        self.head.residual = residual
        self.head.ints = NULL
        self.activations = activations
        if activations == "int8":
            if storage not in (STORED_I8, STORED_Q8, STORED_Q4):
                raise ValueError("activations='int8' needs int8, q8 or q4 weights")
            self.ints.weight = int_matrix(&self.head.weight)
            self.ints.lm_head = int_matrix(&self.head.lm_head)
            self.head.ints = &self.ints
        elif activations != "float":
            raise ValueError(f"activations must be 'float' or 'int8', got {activations!r}")
        self.d_proj = self.head.weight.n_rows
        self.d_model = self.head.weight.n_cols
        self.vocab = self.head.lm_head.n_rows
        if residual and self.d_proj != self.d_model:
            raise ValueError("a residual head needs d_proj == d_model")

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
        cdef const void* hidden_ptr = cnp.PyArray_DATA(hidden)
        cdef int64_t* tokens_ptr = <int64_t*> cnp.PyArray_DATA(tokens)
        cdef void* token_probs_ptr = cnp.PyArray_DATA(token_probs)
        with nogil:
            n_bad = run_head(&self.head, self.type_num, hidden_ptr, n_states, temperature,
                             top_k, tokens_ptr, token_probs_ptr, logits_ptr, probs_ptr,
                             n_threads)
        return n_bad, tokens, token_probs, logits, probs


def forward_heads(list kernels, cnp.ndarray hidden, double temperature, Py_ssize_t top_k,
                  int n_threads):
    """Run several heads of one d_model and compute dtype (Medusa) on the same
    ``hidden``, all in one GIL-free call.

    Returns ``(n_bad, tokens, token_probs)`` shaped (num_heads, k) for one
    state, (num_heads, B, k) for a batch; n_bad counts (head, state) pairs
    whose softmax is not finite.
    """
    cdef Py_ssize_t n_heads = len(kernels), i, n_bad = 0
    cdef int ndim = cnp.PyArray_NDIM(hidden)
    cdef Py_ssize_t n_states = 1 if ndim == 1 else cnp.PyArray_DIMS(hidden)[0]
    cdef KernelHead kernel = kernels[0]
    cdef int type_num = kernel.type_num
    cdef cnp.npy_intp dims[3]
    dims[0] = n_heads
    dims[1] = n_states
    dims[ndim] = top_k
    tokens = cnp.PyArray_EMPTY(ndim + 1, dims, cnp.NPY_INT64, 0)
    token_probs = cnp.PyArray_EMPTY(ndim + 1, dims, type_num, 0)
    cdef int64_t* tokens_ptr = <int64_t*> cnp.PyArray_DATA(tokens)
    cdef char* token_probs_ptr = <char*> cnp.PyArray_DATA(token_probs)
    cdef Py_ssize_t itemsize = cnp.PyArray_ITEMSIZE(token_probs)
    cdef const void* hidden_ptr = cnp.PyArray_DATA(hidden)
    cdef HeadWeights* heads = <HeadWeights*> malloc(n_heads * sizeof(HeadWeights))
    if heads == NULL:
        raise MemoryError()
    try:
        for i in range(n_heads):
            kernel = kernels[i]
            heads[i] = kernel.head
        with nogil:
            for i in range(n_heads):
                n_bad += run_head(&heads[i], type_num, hidden_ptr, n_states, temperature,
                                  top_k, tokens_ptr + i * n_states * top_k,
                                  token_probs_ptr + i * n_states * top_k * itemsize,
                                  NULL, NULL, n_threads)
    finally:
        free(heads)
    return n_bad, tokens, token_probs
