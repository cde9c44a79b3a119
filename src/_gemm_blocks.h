/* Packed, cache-blocked batched dot products of the fused draft kernel
 * (_draft_kernel.pyx, chunk_products, many states).
 *
 * The arithmetic is that of _dot_kernels.h: each (row, state) dot product has
 * 8 lanes of partial sums, lane l summing the columns j < n_vec with
 * j % 8 == l in increasing order.  Only the order in which the (row, state)
 * pairs and the column blocks are visited changes, which a lane's sequence of
 * FMAs does not see: the lanes live in a buffer between column blocks.  So
 * these results are bit-identical to ef_acc_1x1_<w> + ef_finish_<w> on one
 * state (the caller finishes the lanes with ef_finish_<w>, tails included).
 *
 * Loop nest, per block of EF_GEMM_MC rows (the caller's loop):
 *   for each column block of EF_GEMM_KC columns          (X panel: L2)
 *     for each group of 4 states                          (X micro-panel: L1)
 *       for each 3 rows of the row block                  (W slice: L2)
 *         ef_gemm_3x4_<w>: 12 accumulators over the block's columns
 * The states are packed once per call into column-block panels: with col0
 * a block's first column, kc its width, i < kc a multiple of 8 and l < 8,
 *   packed[4 n_groups col0 + 4 kc g + 4 i + 8 s + l] = states[4 g + s][col0 + i + l],
 * so one group's block of columns is one contiguous 4 * kc-value stream (no
 * 4 KiB aliasing between the 4 states' rows, which are 16 KiB apart at
 * d = 4096), padded with zero states up to a multiple of 4.  Without the
 * column blocks every 12 rows re-read all states (1 MiB at B = 64, d = 4096)
 * from L3; with them a row block of EF_GEMM_MC rows reads them once, and
 * each weight slice is read from memory once and from L2 once per group.
 * Rows past a multiple of 3 repeat the block's last row into scratch lanes.
 *
 * Measured on a loaded 2-core Zen 3 (2.45 GHz: about 39 G float32
 * multiply-adds/s per core at peak), one thread, CPU time of a whole
 * 4096 x 4096 x 32000 call at B = 64 (about 30 ms of it softmax and top-k):
 * unpacked loop 450-530 ms (about 20 G multiply-adds/s), these tiles
 * 290-360 ms (27-32 G/s; 32 G/s with everything in cache).  bfloat16 /
 * float16 / int8 rows gain less (1.1-1.2x): their conversions repeat once
 * per state group (converting each column block once into a float32 buffer
 * measured no faster).  At B <= 8 the unpacked loop, whose rows stream in one
 * piece, is as fast or faster, so it keeps those.
 */
#ifndef EAGLE_FAST_GEMM_BLOCKS_H
#define EAGLE_FAST_GEMM_BLOCKS_H

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "_dot_kernels.h"

/* Block sizes, measured at 4096 x 4096, B = 64 (one thread, KC 128..1024 x
 * MC 24..192; 512 x 48 was best, 256 x 96 about 20 % slower, noisy): at
 * B = 64 a group's panel is 8 KiB (L1), the column block of all states
 * 128 KiB, the row block's weights 96 KiB and its lanes 96 KiB (L2). */
#define EF_GEMM_KC 512    /* columns per block (a multiple of 8) */
#define EF_GEMM_MC 48     /* rows per block (a multiple of 3) */
/* The 3 x 4 tile holds 12 lane vectors: 12 of the 16 AVX registers, but 24
 * SSE (or NEON) registers, which spill: without AVX the caller keeps the
 * unpacked loop (measured on the baseline build, B = 64: 41 ms unpacked,
 * 62 ms packed). */
#if defined(__AVX__)
#define EF_GEMM_PACKED 1
#else
#define EF_GEMM_PACKED 0
#endif
#define EF_GEMM_NR 4      /* states per micro-tile */
#define EF_GEMM_MR 3      /* rows per micro-tile */

/* A 64-byte aligned buffer of at least n bytes (free with free()); NULL if
 * none can be had. */
static inline void* ef_gemm_alloc(size_t n)
{
    return aligned_alloc(64, (n / 64 + 1) * 64);
}

/* Pack states (n_states x n_cols, row-major) columns [0, n_vec) into panels
 * (layout above); n_groups = ceil(n_states / 4), padding states are zeros. */
#define EF_DEFINE_GEMM_PACK(T, suffix)                                            \
static inline void ef_gemm_pack_##suffix(const T* states, ptrdiff_t n_states,     \
                                         ptrdiff_t n_cols, ptrdiff_t n_vec,       \
                                         T* packed)                               \
{                                                                                 \
    ptrdiff_t n_groups = (n_states + EF_GEMM_NR - 1) / EF_GEMM_NR;               \
    for (ptrdiff_t col0 = 0; col0 < n_vec; col0 += EF_GEMM_KC) {                  \
        ptrdiff_t kc = n_vec - col0 < EF_GEMM_KC ? n_vec - col0 : EF_GEMM_KC;    \
        for (ptrdiff_t g = 0; g < n_groups; g++) {                                \
            T* p = packed + col0 * n_groups * EF_GEMM_NR + g * kc * EF_GEMM_NR;   \
            for (ptrdiff_t s = 0; s < EF_GEMM_NR; s++) {                          \
                ptrdiff_t state = g * EF_GEMM_NR + s;                             \
                for (ptrdiff_t i = 0; i < kc; i += EF_LANES) {                    \
                    T* dst = p + i * EF_GEMM_NR + s * EF_LANES;                   \
                    if (state < n_states)                                         \
                        memcpy(dst, states + state * n_cols + col0 + i,           \
                               EF_LANES * sizeof(T));                             \
                    else                                                          \
                        memset(dst, 0, EF_LANES * sizeof(T));                     \
                }                                                                 \
            }                                                                     \
        }                                                                         \
    }                                                                             \
}

/* acc[u * acc_stride + 8 * s + l] += lanes of rows r_u (columns [0, n), n a
 * multiple of 8) . the panel's state s, u < 3, s < 4; with pf, also prefetch
 * each row pf bytes ahead (once per 64-byte line). */
#define EF_DEFINE_GEMM_3X4(W, T, V, suffix)                                       \
static inline void ef_gemm_3x4_##suffix(const W* r0, const W* r1, const W* r2,    \
                                        const T* panel, ptrdiff_t n,              \
                                        T* acc, ptrdiff_t acc_stride)             \
{                                                                                 \
    T* c0 = acc; T* c1 = acc + acc_stride; T* c2 = acc + 2 * acc_stride;          \
    V a00 = EF_LOAD(V, c0), a01 = EF_LOAD(V, c0 + 8);                             \
    V a02 = EF_LOAD(V, c0 + 16), a03 = EF_LOAD(V, c0 + 24);                       \
    V a10 = EF_LOAD(V, c1), a11 = EF_LOAD(V, c1 + 8);                             \
    V a12 = EF_LOAD(V, c1 + 16), a13 = EF_LOAD(V, c1 + 24);                       \
    V a20 = EF_LOAD(V, c2), a21 = EF_LOAD(V, c2 + 8);                             \
    V a22 = EF_LOAD(V, c2 + 16), a23 = EF_LOAD(V, c2 + 24);                       \
    for (ptrdiff_t j = 0; j < n; j += EF_LANES) {                                 \
        const T* p = panel + j * EF_GEMM_NR;                                      \
        V w0 = ef_vload_##suffix(r0, j), w1 = ef_vload_##suffix(r1, j);           \
        V w2 = ef_vload_##suffix(r2, j), v;                                       \
        v = EF_LOAD(V, p);      a00 += w0 * v; a10 += w1 * v; a20 += w2 * v;      \
        v = EF_LOAD(V, p + 8);  a01 += w0 * v; a11 += w1 * v; a21 += w2 * v;      \
        v = EF_LOAD(V, p + 16); a02 += w0 * v; a12 += w1 * v; a22 += w2 * v;      \
        v = EF_LOAD(V, p + 24); a03 += w0 * v; a13 += w1 * v; a23 += w2 * v;      \
    }                                                                             \
    EF_STORE(V, c0, a00); EF_STORE(V, c0 + 8, a01);                               \
    EF_STORE(V, c0 + 16, a02); EF_STORE(V, c0 + 24, a03);                         \
    EF_STORE(V, c1, a10); EF_STORE(V, c1 + 8, a11);                               \
    EF_STORE(V, c1 + 16, a12); EF_STORE(V, c1 + 24, a13);                         \
    EF_STORE(V, c2, a20); EF_STORE(V, c2 + 8, a21);                               \
    EF_STORE(V, c2 + 16, a22); EF_STORE(V, c2 + 24, a23);                         \
}

/* The lanes of rows [0, n_rows) (n_rows <= EF_GEMM_MC; row u at
 * rows + u * row_step weights) against all packed states:
 *   lanes[(u * n_groups * 4 + s) * 8 + l]  (state s; zeroed here first);
 * lanes has room for (EF_GEMM_MC + 2) * n_groups * 4 * 8 values (the last two
 * rows are scratch).  While a column block runs, the next one is prefetched
 * (after the last, the first of the n_next rows that follow), a few lines
 * per micro-tile: spread out, the weights arrive at about the rate they are
 * used, without bursts that the memory system cannot keep in flight. */
#define EF_DEFINE_GEMM_BLOCK(W, T, V, suffix)                                     \
static inline void ef_gemm_block_##suffix(const W* rows, ptrdiff_t row_step,      \
                                          ptrdiff_t n_rows, ptrdiff_t n_next,     \
                                          const T* packed, ptrdiff_t n_groups,    \
                                          ptrdiff_t n_vec, T* lanes)              \
{                                                                                 \
    ptrdiff_t acc_stride = n_groups * EF_GEMM_NR * EF_LANES;                      \
    ptrdiff_t n_tiles = (n_rows + EF_GEMM_MR - 1) / EF_GEMM_MR;                  \
    memset(lanes, 0, (size_t) ((n_rows + 2) * acc_stride) * sizeof(T));          \
    for (ptrdiff_t col0 = 0; col0 < n_vec; col0 += EF_GEMM_KC) {                  \
        ptrdiff_t kc = n_vec - col0 < EF_GEMM_KC ? n_vec - col0 : EF_GEMM_KC;    \
        const T* panels = packed + col0 * n_groups * EF_GEMM_NR;                  \
        /* The block to prefetch: n_pf_rows rows from pf_base, pf_cols wide. */   \
        const char* pf_base = (const char*) (rows + col0 + kc);                   \
        ptrdiff_t n_pf_rows = n_rows, pf_cols = n_vec - col0 - kc;                \
        if (pf_cols <= 0) {                                                       \
            pf_base = (const char*) (rows + n_rows * row_step);                   \
            n_pf_rows = n_next;                                                   \
            pf_cols = n_vec;                                                      \
        }                                                                         \
        pf_cols = pf_cols < EF_GEMM_KC ? pf_cols : EF_GEMM_KC;                    \
        ptrdiff_t pf_row_lines = (pf_cols * (ptrdiff_t) sizeof(W) + 63) / 64;     \
        ptrdiff_t n_pf = n_pf_rows * pf_row_lines;                                \
        ptrdiff_t pf_per_tile = (n_pf + n_groups * n_tiles - 1) / (n_groups * n_tiles); \
        ptrdiff_t pf_next = 0;                                                    \
        for (ptrdiff_t g = 0; g < n_groups; g++) {                                \
            const T* panel = panels + g * kc * EF_GEMM_NR;                        \
            for (ptrdiff_t t = 0; t < n_tiles; t++) {                             \
                ptrdiff_t u = t * EF_GEMM_MR;                                     \
                ptrdiff_t u1 = u + 1 < n_rows ? u + 1 : n_rows - 1;               \
                ptrdiff_t u2 = u + 2 < n_rows ? u + 2 : n_rows - 1;               \
                /* Repeated rows accumulate into the scratch rows past n_rows. */ \
                T* acc = lanes + u * acc_stride + g * EF_GEMM_NR * EF_LANES;      \
                for (ptrdiff_t i = 0; i < pf_per_tile && pf_next < n_pf; i++, pf_next++) \
                    __builtin_prefetch(pf_base                                    \
                        + (pf_next / pf_row_lines) * row_step * (ptrdiff_t) sizeof(W) \
                        + (pf_next % pf_row_lines) * 64);                         \
                ef_gemm_3x4_##suffix(rows + u * row_step + col0,                  \
                                     rows + u1 * row_step + col0,                 \
                                     rows + u2 * row_step + col0,                 \
                                     panel, kc, acc, acc_stride);                 \
            }                                                                     \
        }                                                                         \
    }                                                                             \
}

/* Float32 compute, weights stored as float32, bfloat16, IEEE half or int8
 * (unscaled: the caller's finish applies the row scale).  Float64 stays on
 * the unpacked kernels: its 8 lanes are two AVX registers, and 12 of them do
 * not fit; q8/q4 rows are (codes, scales) handles, not plain pointers. */
EF_DEFINE_GEMM_PACK(float, f32)
EF_DEFINE_GEMM_3X4(float, float, ef_f32x8, f32)
EF_DEFINE_GEMM_3X4(unsigned short, float, ef_f32x8, bf16)
EF_DEFINE_GEMM_3X4(unsigned short, float, ef_f32x8, f16)
EF_DEFINE_GEMM_3X4(signed char, float, ef_f32x8, i8)
EF_DEFINE_GEMM_BLOCK(float, float, ef_f32x8, f32)
EF_DEFINE_GEMM_BLOCK(unsigned short, float, ef_f32x8, bf16)
EF_DEFINE_GEMM_BLOCK(unsigned short, float, ef_f32x8, f16)
EF_DEFINE_GEMM_BLOCK(signed char, float, ef_f32x8, i8)

#endif /* EAGLE_FAST_GEMM_BLOCKS_H */
