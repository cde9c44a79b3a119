# Weight matrices as the kernels store them, and their blocked dot products:
# products[s, r] = states[s] . row(r) over a chunk of rows.  Included (Cython
# ``include``) by the draft-head kernel (_draft_kernel.pyx) and the EAGLE
# decoder-layer kernel (models/_layer_kernel.pyx), so both run one driver.
#
# Storage: the compute dtype itself (float32/float64), or, with float32
# compute, bfloat16 bit patterns, IEEE half, int8 with a float32 scale per
# row, q8 (int8 codes, an IEEE-half scale per group of 32 columns) or q4
# (4-bit codes, two per byte, half scales per group of 32); low-precision
# rows are converted exactly to float32 in registers as they are read, so the
# arithmetic is the float32 kernel's on the dequantized weights (int8: on q,
# times the row scale at the end; see finish_row).
#
# Every dot product is computed with the same arithmetic whatever the batch
# size or thread count -- 8 SIMD lanes of partial sums kept across column
# blocks, reduced in a fixed order at the end (_dot_kernels.h) -- so a batch
# gives bit-identical results to the same states one by one.
# Register blocking: one state uses 4 rows spread over the chunk (4 long read
# streams; 8 for int8/q8/q4); a batch uses 3 rows x 4 states per step over
# blocks of ROW_BLOCK rows, so each weight row is read from memory once for all
# states (with many states, in column blocks that keep 4 states' slice in L1).
# From 9 states on, float32 compute (AVX builds) packs the states into panels
# and tiles rows x states x columns for the caches (_gemm_blocks.h,
# packed_products): the same lanes in the same order, so the same bits.
# The row loops are specialized per storage type (chunk_products dispatches
# once per call): with every type's loads in one loop body, the compiler no
# longer splits it per type, and the small batched products of the EAGLE
# drafters ran 1.3-1.5x slower (352 x 128 at B = 8, float32/bfloat16/int8).

from cython cimport floating
from libc.math cimport isfinite
from libc.stdlib cimport free
from libc.string cimport memset

cdef enum:
    COL_BLOCK = 1024   # columns per block for many states: 4 states x 4 KiB in L1
    ROW_BLOCK = 12     # rows sharing one block of states (batched path; 3 | 12)

# ---------------------------------------------------------------------------
# Dot-product micro-kernels (_dot_kernels.h): 8 lanes of partial sums per
# (row, state), kept in a lane buffer between column blocks, then reduced in a
# fixed order; every path computes bit-identical dot products.
# ---------------------------------------------------------------------------

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
    # Low-precision storage (bf16 bit patterns, IEEE half, int8), float32 compute.
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
    float ef_dot_dequantized_i8(const signed char* row, float scale, const float* x,
                                Py_ssize_t n_vec, Py_ssize_t n)
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
    # Group-wise q8 / q4 rows (codes and IEEE-half group scales).
    ctypedef struct ef_q8_row:
        const signed char* q
        const unsigned short* d
    ctypedef struct ef_q4_row:
        const unsigned char* q
        const unsigned short* d
    void ef_acc_1x1_q8(ef_q8_row row, const float* x, Py_ssize_t n, float* acc)
    void ef_acc_1x1_q4(ef_q4_row row, const float* x, Py_ssize_t n, float* acc)
    void ef_acc_3x4_q8(ef_q8_row r0, ef_q8_row r1, ef_q8_row r2, const float* x0,
                       const float* x1, const float* x2, const float* x3, Py_ssize_t n,
                       float* acc0, float* acc1, float* acc2)
    void ef_acc_3x4_q4(ef_q4_row r0, ef_q4_row r1, ef_q4_row r2, const float* x0,
                       const float* x1, const float* x2, const float* x3, Py_ssize_t n,
                       float* acc0, float* acc1, float* acc2)
    void ef_acc_8x1r_q8(const ef_q8_row* rows, const float* x, Py_ssize_t n, float* acc)
    void ef_acc_8x1r_q4(const ef_q4_row* rows, const float* x, Py_ssize_t n, float* acc)
    float ef_finish_q8(const float* acc, ef_q8_row row, const float* x,
                       Py_ssize_t n_vec, Py_ssize_t n)
    float ef_finish_q4(const float* acc, ef_q4_row row, const float* x,
                       Py_ssize_t n_vec, Py_ssize_t n)



# Packed, cache-blocked tiles for many states (float32 compute; see
# packed_products).
cdef extern from "_gemm_blocks.h" nogil:
    enum:
        EF_GEMM_PACKED   # 1 where the tiles fit the registers (AVX)
        EF_GEMM_MC
        EF_GEMM_NR
    void* ef_gemm_alloc(size_t n)
    void ef_gemm_pack_f32(const float* states, Py_ssize_t n_states, Py_ssize_t n_cols,
                          Py_ssize_t n_vec, float* packed)
    void ef_gemm_block_f32(const float* rows, Py_ssize_t row_step, Py_ssize_t n_rows,
                           Py_ssize_t n_next, const float* packed, Py_ssize_t n_groups,
                           Py_ssize_t n_vec, float* lanes)
    void ef_gemm_block_bf16(const unsigned short* rows, Py_ssize_t row_step,
                            Py_ssize_t n_rows, Py_ssize_t n_next, const float* packed,
                            Py_ssize_t n_groups, Py_ssize_t n_vec, float* lanes)
    void ef_gemm_block_f16(const unsigned short* rows, Py_ssize_t row_step,
                           Py_ssize_t n_rows, Py_ssize_t n_next, const float* packed,
                           Py_ssize_t n_groups, Py_ssize_t n_vec, float* lanes)
    void ef_gemm_block_i8(const signed char* rows, Py_ssize_t row_step, Py_ssize_t n_rows,
                          Py_ssize_t n_next, const float* packed, Py_ssize_t n_groups,
                          Py_ssize_t n_vec, float* lanes)

cdef enum:
    LANES = 8          # partial sums per dot product (_dot_kernels.h)


cdef inline void acc_1x1(const floating* row, const floating* x, Py_ssize_t n,
                         floating* acc) noexcept nogil:
    if floating is float:
        ef_acc_1x1_f32(row, x, n, acc)
    else:
        ef_acc_1x1_f64(row, x, n, acc)


cdef inline void acc_4x1(const floating* r0, const floating* r1, const floating* r2,
                         const floating* r3, const floating* x, Py_ssize_t n,
                         floating* acc) noexcept nogil:
    if floating is float:
        ef_acc_4x1_f32(r0, r1, r2, r3, x, n, acc)
    else:
        ef_acc_4x1_f64(r0, r1, r2, r3, x, n, acc)


cdef inline void acc_3x4(const floating* r0, const floating* r1, const floating* r2,
                         const floating* x0, const floating* x1, const floating* x2,
                         const floating* x3, Py_ssize_t n, floating* acc0,
                         floating* acc1, floating* acc2) noexcept nogil:
    if floating is float:
        ef_acc_3x4_f32(r0, r1, r2, x0, x1, x2, x3, n, acc0, acc1, acc2)
    else:
        ef_acc_3x4_f64(r0, r1, r2, x0, x1, x2, x3, n, acc0, acc1, acc2)


cdef inline floating finish(const floating* acc, const floating* row, const floating* x,
                            Py_ssize_t n_vec, Py_ssize_t n) noexcept nogil:
    if floating is float:
        return ef_finish_f32(acc, row, x, n_vec, n)
    else:
        return ef_finish_f64(acc, row, x, n_vec, n)


# ---------------------------------------------------------------------------
# Weight matrices as stored (see the top of this file); low-precision rows
# are converted exactly to float32 as they are read.
# ---------------------------------------------------------------------------

cdef enum:
    STORED_NATIVE = 0   # float32 or float64, the compute dtype
    STORED_BF16 = 1
    STORED_F16 = 2
    STORED_I8 = 3
    STORED_Q8 = 4       # int8 codes, an IEEE-half scale per group of 32 columns
    STORED_Q4 = 5       # 4-bit codes, two per byte, half scales per group of 32
    GROUP = 32          # columns per q8/q4 group

STORAGE_CODES = {"native": STORED_NATIVE, "bfloat16": STORED_BF16,
                 "float16": STORED_F16, "int8": STORED_I8, "q8": STORED_Q8,
                 "q4": STORED_Q4}

ctypedef struct StoredMatrix:
    const char* data
    const float* scales       # int8 row scales, else NULL
    const unsigned short* group_scales   # q8/q4 (n_rows, n_groups) half scales
    int storage
    Py_ssize_t n_rows, n_cols, itemsize, row_bytes, n_groups

# One specialization of the row loops per storage type (a fused type of empty
# tags, so each loop holds only its own loads; chunk_products picks one per call).
ctypedef struct native_rows:
    char unused
ctypedef struct bf16_rows:
    char unused
ctypedef struct f16_rows:
    char unused
ctypedef struct i8_rows:
    char unused
ctypedef struct q8_rows:
    char unused
ctypedef struct q4_rows:
    char unused

ctypedef fused storage_tag:
    native_rows
    bf16_rows
    f16_rows
    i8_rows
    q8_rows
    q4_rows


cdef inline const char* row_at(const StoredMatrix* m, Py_ssize_t r) noexcept nogil:
    return m.data + r * m.row_bytes


cdef inline ef_q8_row q8_row(const StoredMatrix* m, Py_ssize_t r, Py_ssize_t col0) noexcept nogil:
    """Row r of a q8 matrix from column col0 (a multiple of GROUP) on."""
    cdef ef_q8_row row
    row.q = <const signed char*> (row_at(m, r) + col0)
    row.d = m.group_scales + r * m.n_groups + col0 // GROUP
    return row


cdef inline ef_q4_row q4_row(const StoredMatrix* m, Py_ssize_t r, Py_ssize_t col0) noexcept nogil:
    """Row r of a q4 matrix from column col0 (a multiple of GROUP) on."""
    cdef ef_q4_row row
    row.q = <const unsigned char*> (row_at(m, r) + col0 // 2)
    row.d = m.group_scales + r * m.n_groups + col0 // GROUP
    return row


cdef inline Py_ssize_t spread_rows(const storage_tag* tag,
                                   const StoredMatrix* m) noexcept nogil:
    """Rows one state reads at a time.  Four read streams saturate memory;
    int8 rows, 1 byte per FMA, are compute-bound with only four FMA chains in
    flight, so they take eight."""
    return 8 if (storage_tag is i8_rows or storage_tag is q8_rows
                 or storage_tag is q4_rows) else 4


cdef inline void acc_spread_rows(const storage_tag* tag, const StoredMatrix* m, Py_ssize_t r,
                                 Py_ssize_t stride,
                                 const floating* x, Py_ssize_t n,
                                 floating* acc) noexcept nogil:
    """acc[u] += row(r + u * stride) . x for u < spread_rows(m)."""
    cdef const char* w = row_at(m, r)
    cdef ef_q8_row q8_rows[8]
    cdef ef_q4_row q4_rows[8]
    cdef int u
    cdef Py_ssize_t step = stride * m.row_bytes
    if floating is double or storage_tag is native_rows:
        acc_4x1(<const floating*> w, <const floating*> (w + step),
                <const floating*> (w + 2 * step), <const floating*> (w + 3 * step), x, n, acc)
    elif storage_tag is bf16_rows:
        ef_acc_4x1_bf16(<const unsigned short*> w, <const unsigned short*> (w + step),
                        <const unsigned short*> (w + 2 * step),
                        <const unsigned short*> (w + 3 * step), x, n, acc)
    elif storage_tag is f16_rows:
        ef_acc_4x1_f16(<const unsigned short*> w, <const unsigned short*> (w + step),
                       <const unsigned short*> (w + 2 * step),
                       <const unsigned short*> (w + 3 * step), x, n, acc)
    elif storage_tag is q8_rows:
        for u in range(8):
            q8_rows[u] = q8_row(m, r + u * stride, 0)
        ef_acc_8x1r_q8(q8_rows, x, n, acc)
    elif storage_tag is q4_rows:
        for u in range(8):
            q4_rows[u] = q4_row(m, r + u * stride, 0)
        ef_acc_8x1r_q4(q4_rows, x, n, acc)
    else:
        ef_acc_8x1_i8(<const signed char*> w, stride * m.n_cols, x, n, acc)


cdef inline void acc_1x1_row(const storage_tag* tag, const StoredMatrix* m, Py_ssize_t r,
                             Py_ssize_t col0,
                             const floating* x, Py_ssize_t n, floating* acc) noexcept nogil:
    """acc += row(r)[col0 : col0 + n] . x"""
    cdef const char* w = row_at(m, r) + col0 * m.itemsize
    if floating is double or storage_tag is native_rows:
        acc_1x1(<const floating*> w, x, n, acc)
    elif storage_tag is q8_rows:
        ef_acc_1x1_q8(q8_row(m, r, col0), x, n, acc)
    elif storage_tag is q4_rows:
        ef_acc_1x1_q4(q4_row(m, r, col0), x, n, acc)
    elif storage_tag is bf16_rows:
        ef_acc_1x1_bf16(<const unsigned short*> w, x, n, acc)
    elif storage_tag is f16_rows:
        ef_acc_1x1_f16(<const unsigned short*> w, x, n, acc)
    else:
        ef_acc_1x1_i8(<const signed char*> w, x, n, acc)


cdef inline void acc_3x4_rows(const storage_tag* tag, const StoredMatrix* m, Py_ssize_t r,
                              Py_ssize_t col0,
                              const floating* x, Py_ssize_t x_stride, Py_ssize_t n,
                              floating* acc, Py_ssize_t acc_stride) noexcept nogil:
    """acc[u * acc_stride + s * LANES] += row(r + u)[col0 : col0 + n] . x[s * x_stride:]
    for 3 rows u and 4 states s."""
    cdef const char* w = row_at(m, r) + col0 * m.itemsize
    cdef Py_ssize_t step = m.row_bytes
    if floating is double or storage_tag is native_rows:
        acc_3x4(<const floating*> w, <const floating*> (w + step),
                <const floating*> (w + 2 * step), x, x + x_stride, x + 2 * x_stride,
                x + 3 * x_stride, n, acc, acc + acc_stride, acc + 2 * acc_stride)
    elif storage_tag is q8_rows:
        ef_acc_3x4_q8(q8_row(m, r, col0), q8_row(m, r + 1, col0), q8_row(m, r + 2, col0),
                      x, x + x_stride, x + 2 * x_stride, x + 3 * x_stride, n, acc,
                      acc + acc_stride, acc + 2 * acc_stride)
    elif storage_tag is q4_rows:
        ef_acc_3x4_q4(q4_row(m, r, col0), q4_row(m, r + 1, col0), q4_row(m, r + 2, col0),
                      x, x + x_stride, x + 2 * x_stride, x + 3 * x_stride, n, acc,
                      acc + acc_stride, acc + 2 * acc_stride)
    elif storage_tag is bf16_rows:
        ef_acc_3x4_bf16(<const unsigned short*> w, <const unsigned short*> (w + step),
                        <const unsigned short*> (w + 2 * step), x, x + x_stride,
                        x + 2 * x_stride, x + 3 * x_stride, n, acc, acc + acc_stride,
                        acc + 2 * acc_stride)
    elif storage_tag is f16_rows:
        ef_acc_3x4_f16(<const unsigned short*> w, <const unsigned short*> (w + step),
                       <const unsigned short*> (w + 2 * step), x, x + x_stride,
                       x + 2 * x_stride, x + 3 * x_stride, n, acc, acc + acc_stride,
                       acc + 2 * acc_stride)
    else:
        ef_acc_3x4_i8(<const signed char*> w, <const signed char*> (w + step),
                      <const signed char*> (w + 2 * step), x, x + x_stride, x + 2 * x_stride,
                      x + 3 * x_stride, n, acc, acc + acc_stride, acc + 2 * acc_stride)


cdef inline floating finish_row(const storage_tag* tag, const StoredMatrix* m, Py_ssize_t r,
                                const floating* acc,
                                const floating* x, Py_ssize_t n_vec) noexcept nogil:
    """The finished dot product row(r) . x (scaled, for int8 rows).

    Int8: scale * (q . x), unless q . x overflowed (or met a non-finite x):
    then the float32 dot product on the dequantized row, which overflows only
    where a float32 head on the dequantized weights does.  Each (row, state)
    decides on its own values, so batches still equal single states."""
    cdef const char* w = row_at(m, r)
    cdef float dot
    if floating is double or storage_tag is native_rows:
        return finish(acc, <const floating*> w, x, n_vec, m.n_cols)
    elif storage_tag is bf16_rows:
        return ef_finish_bf16(acc, <const unsigned short*> w, x, n_vec, m.n_cols)
    elif storage_tag is f16_rows:
        return ef_finish_f16(acc, <const unsigned short*> w, x, n_vec, m.n_cols)
    elif storage_tag is q8_rows:
        return ef_finish_q8(acc, q8_row(m, r, 0), x, n_vec, m.n_cols)
    elif storage_tag is q4_rows:
        return ef_finish_q4(acc, q4_row(m, r, 0), x, n_vec, m.n_cols)
    else:
        dot = ef_finish_i8(acc, <const signed char*> w, x, n_vec, m.n_cols)
        if isfinite(dot):
            return dot * m.scales[r]
        return ef_dot_dequantized_i8(<const signed char*> w, m.scales[r], x, n_vec, m.n_cols)


# ---------------------------------------------------------------------------
# products[s, r] = states[s] . weight[r] for the rows of one chunk.
# ---------------------------------------------------------------------------

cdef inline Py_ssize_t lane_buffer_size(Py_ssize_t n_states) noexcept nogil:
    """Lane-buffer elements one chunk needs (see chunk_products)."""
    return max(8, ROW_BLOCK * n_states) * LANES


cdef enum:
    PACKED_MIN_STATES = 9   # fewer states: the unpacked loop is as fast (_gemm_blocks.h)


cdef bint packed_products(const storage_tag* tag, Py_ssize_t start, Py_ssize_t stop,
                          const StoredMatrix* m, const floating* states, Py_ssize_t n_states,
                          floating* products) noexcept nogil:
    """tagged_products for many states through packed, cache-blocked tiles
    (_gemm_blocks.h): the same lanes, so the same results.  Returns False,
    having done nothing, for float64, q8/q4 rows, builds without AVX, or when
    its buffers cannot be allocated."""
    cdef Py_ssize_t n_rows = m.n_rows, n_cols = m.n_cols
    cdef Py_ssize_t n_vec = n_cols - n_cols % LANES
    cdef Py_ssize_t n_groups = (n_states + EF_GEMM_NR - 1) // EF_GEMM_NR
    cdef Py_ssize_t row_step = m.row_bytes // m.itemsize
    cdef Py_ssize_t n_lanes = n_groups * EF_GEMM_NR * LANES
    cdef Py_ssize_t mc = EF_GEMM_MC, block, row0, n_block, n_next, r, s
    cdef float* packed
    cdef float* lanes
    cdef const char* rows
    if floating is double or storage_tag is q8_rows or storage_tag is q4_rows:
        return False
    else:
        if not EF_GEMM_PACKED:
            return False
        packed = <float*> ef_gemm_alloc(n_groups * EF_GEMM_NR * n_vec * sizeof(float))
        lanes = <float*> ef_gemm_alloc((EF_GEMM_MC + 2) * n_lanes * sizeof(float))
        if packed == NULL or lanes == NULL:
            free(packed)
            free(lanes)
            return False
        ef_gemm_pack_f32(states, n_states, n_cols, n_vec, packed)
        for block in range((stop - start + mc - 1) // mc):
            row0 = start + block * mc
            n_block = min(mc, stop - row0)
            n_next = min(mc, stop - row0 - n_block)
            rows = row_at(m, row0)
            if storage_tag is native_rows:
                ef_gemm_block_f32(<const float*> rows, row_step, n_block, n_next, packed,
                                  n_groups, n_vec, lanes)
            elif storage_tag is bf16_rows:
                ef_gemm_block_bf16(<const unsigned short*> rows, row_step, n_block, n_next,
                                   packed, n_groups, n_vec, lanes)
            elif storage_tag is f16_rows:
                ef_gemm_block_f16(<const unsigned short*> rows, row_step, n_block, n_next,
                                  packed, n_groups, n_vec, lanes)
            else:
                ef_gemm_block_i8(<const signed char*> rows, row_step, n_block, n_next,
                                 packed, n_groups, n_vec, lanes)
            for r in range(n_block):
                for s in range(n_states):
                    products[s * n_rows + row0 + r] = finish_row(
                        tag, m, row0 + r, lanes + r * n_lanes + s * LANES,
                        states + s * n_cols, n_vec)
        free(packed)
        free(lanes)
        return True


cdef void tagged_products(const storage_tag* tag, Py_ssize_t start, Py_ssize_t stop,
                          const StoredMatrix* m, const floating* states, Py_ssize_t n_states,
                          floating* products, floating* lanes) noexcept nogil:
    cdef Py_ssize_t n_rows = m.n_rows, n_cols = m.n_cols
    cdef Py_ssize_t n_vec = n_cols - n_cols % LANES
    cdef Py_ssize_t r, s, u, row0, col0, width, col_block, n_block_rows, n_grouped_rows, stride
    cdef Py_ssize_t block, col_step, n_spread
    cdef Py_ssize_t n_grouped = n_states - n_states % 4
    cdef const floating* x

    if n_states == 1:
        # Rows r, r + q, r + 2q, ...: a few long read streams, one x.
        n_spread = spread_rows(tag, m)
        stride = (stop - start) // n_spread
        for r in range(start, start + stride):
            memset(lanes, 0, n_spread * LANES * sizeof(floating))
            acc_spread_rows(tag, m, r, stride, states, n_vec, lanes)
            for u in range(n_spread):
                products[r + u * stride] = finish_row(
                    tag, m, r + u * stride, lanes + u * LANES, states, n_vec)
        for r in range(start + n_spread * stride, stop):
            memset(lanes, 0, LANES * sizeof(floating))
            acc_1x1_row(tag, m, r, 0, states, n_vec, lanes)
            products[r] = finish_row(tag, m, r, lanes, states, n_vec)
        return

    if n_states >= PACKED_MIN_STATES and packed_products(tag, start, stop, m, states, n_states,
                                                         products):
        return

    # Batched: ROW_BLOCK rows against groups of 4 states, 3 rows x 4 states
    # per step (low-precision rows converted as they are loaded).  Few states
    # fit in cache whole, so rows stream in one piece; many states are cut
    # into column blocks that stay in L1.
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
                    acc_3x4_rows(tag, m, row0 + r, col0, x, n_cols, width,
                                 lanes + (r * n_states + s) * LANES, n_states * LANES)
                for r in range(n_grouped_rows, n_block_rows):
                    for u in range(4):
                        acc_1x1_row(tag, m, row0 + r, col0, x + u * n_cols, width,
                                    lanes + (r * n_states + s + u) * LANES)
            for s in range(n_grouped, n_states):
                x = states + s * n_cols + col0
                for r in range(n_block_rows):
                    acc_1x1_row(tag, m, row0 + r, col0, x, width,
                                lanes + (r * n_states + s) * LANES)
        for r in range(n_block_rows):
            for s in range(n_states):
                products[s * n_rows + row0 + r] = finish_row(
                    tag, m, row0 + r, lanes + (r * n_states + s) * LANES, states + s * n_cols,
                    n_vec)



cdef void chunk_products(Py_ssize_t start, Py_ssize_t stop, const StoredMatrix* m,
                         const floating* states, Py_ssize_t n_states,
                         floating* products, floating* lanes) noexcept nogil:
    """products[s, r] = states[s] . row(r) for start <= r < stop (lanes: a
    lane_buffer_size(n_states) scratch)."""
    if floating is double or m.storage == STORED_NATIVE:
        tagged_products(<native_rows*> NULL, start, stop, m, states, n_states, products, lanes)
    elif m.storage == STORED_BF16:
        tagged_products(<bf16_rows*> NULL, start, stop, m, states, n_states, products, lanes)
    elif m.storage == STORED_F16:
        tagged_products(<f16_rows*> NULL, start, stop, m, states, n_states, products, lanes)
    elif m.storage == STORED_I8:
        tagged_products(<i8_rows*> NULL, start, stop, m, states, n_states, products, lanes)
    elif m.storage == STORED_Q8:
        tagged_products(<q8_rows*> NULL, start, stop, m, states, n_states, products, lanes)
    else:
        tagged_products(<q4_rows*> NULL, start, stop, m, states, n_states, products, lanes)
