/* Integer dot products of the draft kernel: int8 / q8 / q4 weights times
 * activations quantized to int8 (DraftHead(..., activations="int8")).
 *
 * Activations.  Each state (a hidden state h for W, a feature vector x for L)
 * is quantized once per call, in groups of EF_IGROUP = 32 columns (the last
 * group zero padded), as llama.cpp's Q8_0:
 *     amax = max |v_j| over the group,  d = fl32(amax / 127),
 *     q_j = rint(clip(fl32(v_j / d), -127, 127))   (nearest, ties to even),
 * q = 0 where d == 0 (an all-zero group, or amax / 127 below float32's range);
 * a group holding NaN or inf gets d = NaN (and q = 0), so the dot products it
 * enters are NaN and the caller reports the bad input.
 *
 * Dot products.  Weight group g of a row has integer codes w (q8 and int8:
 * the stored int8; q4: code - 8) and a float32 scale dw_g (q8/q4: the float16
 * group scale, exact in float32; int8: the row's float32 scale, for every
 * group).  Lane l < 8 of a group is its columns 4l .. 4l + 3, and
 *     isum(g, l) = sum_k w[32g + 4l + k] * q[32g + 4l + k]      (exact, int32)
 *     s_g        = fl32(dw_g * d_g)
 *     acc_l      = fl32(acc_l + isum(g, l) * s_g)   for g = 0, 1, ... (acc_l = 0 first)
 *     dot        = ((acc_0 + acc_4) + (acc_2 + acc_6)) + ((acc_1 + acc_5) + (acc_3 + acc_7))
 * -- acc_l is updated by a fused multiply-add (one rounding; the product is
 * exact), every other operation is a correctly rounded float32 one.  The
 * AVX2 kernels below (vpmaddubsw / vpmaddwd for the integer sums -- q8/int8
 * as |w| * sign(q, w), q4 with one state as code * q - 8 * sum(q) -- and
 * vfmadd) and the plain C ones (fmaf where the target has FMA, else an exact
 * emulation in double, ef_fma_f32) give the same bits, and so does the NumPy
 * fallback (eagle_fast/_int_dot_py.py).  Each (row, state) is summed in that
 * order whatever the blocking, so a batch gives its states' single results
 * bit for bit.
 *
 * API:
 *   ef_qstates            quantized states: q (n_states, n_pad), d (n_states,
 *                         d_stride), xs8 (n_states, n_groups, 8) (8 * lane
 *                         sums of q, q4 only) -- n_pad = 32 * n_groups, d_stride
 *                         = n_groups rounded up to 8 (padded with 0)
 *   ef_qstates_alloc / _free
 *   ef_quantize_states(v, n, a, s0, s1)   states s0 .. s1 of v (n_states, n)
 *   ef_quantize_groups(v, n, a, n_states, g0, g1)   groups g0 .. g1 of every state
 *   ef_int_products(m, start, stop, a, n_states, products)
 *                         products[s * m.n_rows + r] = row r . state s for
 *                         start <= r < stop
 */
#ifndef EAGLE_FAST_INT_DOT_H
#define EAGLE_FAST_INT_DOT_H

#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "_dot_kernels.h"

#define EF_IGROUP 32

enum { EF_INT_I8 = 0, EF_INT_Q8 = 1, EF_INT_Q4 = 2 };

typedef struct {
    signed char* q;
    float* d;
    int* xs8;
    ptrdiff_t n_groups, n_pad, d_stride;
} ef_qstates;

typedef struct {
    int kind;                        /* EF_INT_I8, EF_INT_Q8, EF_INT_Q4 */
    const char* data;                /* codes, row_bytes per row */
    ptrdiff_t row_bytes, n_rows, n_cols, n_groups;
    const unsigned short* gscales;   /* q8/q4: (n_rows, n_groups) IEEE half */
    const float* row_scales;         /* int8: (n_rows,) */
} ef_imatrix;

/* fl32(a * b + c) rounded once (a fused multiply-add), for a = an integer
 * of at most 17 bits, b and c float32.  Where the target has no FMA: a * b is
 * exact in double (41 bits), the sum is rounded to double *to odd* (TwoSum
 * gives the error; an inexact even result steps one ulp towards the exact
 * sum), and that double rounds correctly to float32 (53 >= 2 * 24 + 2 bits:
 * no double-rounding error). */
static inline float ef_fma_f32(float a, float b, float c)
{
#if defined(__FP_FAST_FMAF)
    return __builtin_fmaf(a, b, c);
#else
    double p = (double) a * (double) b, z = (double) c;
    double s = p + z;
    double bz = s - p;
    double e = (p - (s - bz)) + (z - bz);
    if (e != 0.0 && s - s == 0.0) {   /* inexact and finite */
        unsigned long long bits;
        memcpy(&bits, &s, sizeof(bits));
        if ((bits & 1u) == 0) {
            bits += ((e > 0.0) == (s > 0.0)) ? 1 : (unsigned long long) -1;
            memcpy(&s, &bits, sizeof(s));
        }
    }
    return (float) s;
#endif
}

static inline ptrdiff_t ef_igroups(ptrdiff_t n) { return (n + EF_IGROUP - 1) / EF_IGROUP; }

/* 0 on success, -1 when out of memory (a is then freed). */
static inline int ef_qstates_alloc(ef_qstates* a, ptrdiff_t n_states, ptrdiff_t n,
                                   int with_sums)
{
    a->n_groups = ef_igroups(n);
    a->n_pad = a->n_groups * EF_IGROUP;
    a->d_stride = (a->n_groups + 7) / 8 * 8;
    /* 32 bytes of slack: the vector loads may read a whole group. */
    a->q = (signed char*) malloc((size_t) (n_states * a->n_pad) + 32);
    a->d = (float*) calloc((size_t) (n_states * a->d_stride), sizeof(float));
    a->xs8 = with_sums ? (int*) malloc((size_t) (n_states * a->n_groups * 8) * sizeof(int))
                       : NULL;
    if (a->q == NULL || a->d == NULL || (with_sums && a->xs8 == NULL)) {
        free(a->q); free(a->d); free(a->xs8);
        a->q = NULL; a->d = NULL; a->xs8 = NULL;
        return -1;
    }
    return 0;
}

static inline void ef_qstates_free(ef_qstates* a)
{
    free(a->q); free(a->d); free(a->xs8);
    a->q = NULL; a->d = NULL; a->xs8 = NULL;
}

/* One group of m <= 32 values (the rest of q zeroed). */
static inline float ef_quantize_group(const float* v, ptrdiff_t m, signed char* q)
{
    float amax = 0.0f, probe = 0.0f, d;
    ptrdiff_t j;
    for (j = 0; j < m; j++) {
        float a = fabsf(v[j]);
        amax = a > amax ? a : amax;
        probe += v[j] * 0.0f;   /* NaN iff some v[j] is NaN or inf */
    }
    memset(q, 0, EF_IGROUP);
    if (probe != 0.0f)
        return NAN;
    d = amax / 127.0f;
    if (d == 0.0f)
        return 0.0f;
    for (j = 0; j < m; j++) {
        float y = v[j] / d;
        y = y > 127.0f ? 127.0f : (y < -127.0f ? -127.0f : y);
        q[j] = (signed char) (int) nearbyintf(y);
    }
    return d;
}

static inline void ef_quantize_part(const float* v, ptrdiff_t n, ef_qstates* a,
                                    ptrdiff_t s0, ptrdiff_t s1, ptrdiff_t g0, ptrdiff_t g1)
{
    for (ptrdiff_t s = s0; s < s1; s++) {
        const float* row = v + s * n;
        signed char* q = a->q + s * a->n_pad;
        float* d = a->d + s * a->d_stride;
        for (ptrdiff_t g = g0; g < g1; g++) {
            ptrdiff_t j0 = g * EF_IGROUP;
            ptrdiff_t m = n - j0 < EF_IGROUP ? n - j0 : EF_IGROUP;
            d[g] = ef_quantize_group(row + j0, m, q + j0);
            if (a->xs8 != NULL) {
                int* xs = a->xs8 + (s * a->n_groups + g) * 8;
                for (int l = 0; l < 8; l++) {
                    const signed char* p = q + j0 + 4 * l;
                    xs[l] = 8 * ((int) p[0] + p[1] + p[2] + p[3]);
                }
            }
        }
    }
}

static inline void ef_quantize_states(const float* v, ptrdiff_t n, ef_qstates* a,
                                      ptrdiff_t s0, ptrdiff_t s1)
{
    ef_quantize_part(v, n, a, s0, s1, 0, a->n_groups);
}

static inline void ef_quantize_groups(const float* v, ptrdiff_t n, ef_qstates* a,
                                      ptrdiff_t n_states, ptrdiff_t g0, ptrdiff_t g1)
{
    ef_quantize_part(v, n, a, 0, n_states, g0, g1);
}

/* The integer code of row column j (q4: code - 8). */
static inline int ef_icode(const ef_imatrix* m, const char* row, ptrdiff_t j)
{
    if (m->kind == EF_INT_Q4) {
        ptrdiff_t o = j % EF_IGROUP;
        unsigned char byte = ((const unsigned char*) row)[(j - o) / 2 + o % (EF_IGROUP / 2)];
        return (o < EF_IGROUP / 2 ? (byte & 0x0F) : (byte >> 4)) - 8;
    }
    return ((const signed char*) row)[j];
}

static inline float ef_iweight_scale(const ef_imatrix* m, ptrdiff_t r, ptrdiff_t g)
{
    if (m->kind == EF_INT_I8)
        return m->row_scales[r];
    return ef_half_to_f32(m->gscales[r * m->n_groups + g]);
}

/* Plain C: one (row, state) dot product, the definition spelled out. */
static inline float ef_int_dot_plain(const ef_imatrix* m, ptrdiff_t r, const ef_qstates* a,
                                     ptrdiff_t s)
{
    const char* row = m->data + r * m->row_bytes;
    const signed char* q = a->q + s * a->n_pad;
    const float* d = a->d + s * a->d_stride;
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (ptrdiff_t g = 0; g < m->n_groups; g++) {
        float sg = ef_iweight_scale(m, r, g) * d[g];
        for (int l = 0; l < 8; l++) {
            int isum = 0;
            for (int k = 0; k < 4; k++) {
                ptrdiff_t j = g * EF_IGROUP + 4 * l + k;
                if (j < m->n_cols)
                    isum += ef_icode(m, row, j) * q[j];
            }
            acc[l] = ef_fma_f32((float) isum, sg, acc[l]);
        }
    }
    return EF_REDUCE_LANES(acc);
}

#if defined(__AVX2__) && defined(__F16C__)

#define EF_IALWAYS static inline __attribute__((always_inline))
#define EF_IUNROLL _Pragma("GCC unroll 8")

/* R rows x S states from (r0, s0), all groups; the sums stay in registers.
 * kind, R and S are constants at every call, so the loops unroll and the
 * accumulators are registers. */
EF_IALWAYS __m256i ef_icodes_avx2(int kind, const char* row, ptrdiff_t g, int tail,
                                  ptrdiff_t n_tail, int prefetch)
{
    if (kind == EF_INT_Q4) {
        const unsigned char* p = (const unsigned char*) row + g * (EF_IGROUP / 2);
        __m128i v = _mm_loadu_si128((const __m128i*) p);
        if (prefetch) __builtin_prefetch(p + 2048);
        return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(v, 4), v),
                                _mm256_set1_epi8(0x0F));
    }
    const signed char* p = (const signed char*) row + g * EF_IGROUP;
    if (prefetch) __builtin_prefetch(p + 2048);
    if (tail) {   /* a short last group: do not read past the row */
        signed char tmp[EF_IGROUP];
        memset(tmp, 0, sizeof(tmp));
        memcpy(tmp, p, (size_t) n_tail);
        return _mm256_loadu_si256((const __m256i*) tmp);
    }
    return _mm256_loadu_si256((const __m256i*) p);
}

/* acc = fma(isum, scale, acc) for one (row, state) group: w the row's
 * codes, aw = |w|, x the state's; or (unsigned_codes: q4, one state) w the
 * codes 0..15 (aw unused) and xs the state's 8 * lane sums. */
EF_IALWAYS __m256 ef_igroup_avx2(int unsigned_codes, __m256i w, __m256i aw, __m256i x, __m256i xs,
                                 const float* scale, __m256 acc)
{
    __m256i p16 = unsigned_codes ? _mm256_maddubs_epi16(w, x)
                                 : _mm256_maddubs_epi16(aw, _mm256_sign_epi8(x, w));
    __m256i p32 = _mm256_madd_epi16(p16, _mm256_set1_epi16(1));
    if (unsigned_codes) p32 = _mm256_sub_epi32(p32, xs);
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(p32), _mm256_broadcast_ss(scale), acc);
}

/* Groups gb .. gb + ng of an R x S block (ng constant on the hot path, so
 * the loop unrolls and each row prefetches once per cache line). */
EF_IALWAYS void ef_igroups_avx2(int kind, int R, int S, ptrdiff_t ng, ptrdiff_t gb,
                                const char* const* rows, const signed char* const* xq,
                                const int* const* xsum, float (*sc)[4][8],
                                ptrdiff_t g_tail, ptrdiff_t n_tail, __m256 (*acc)[4])
{
    EF_IUNROLL
    for (ptrdiff_t k = 0; k < ng; k++) {
        const ptrdiff_t g = gb + k;
        const int tail = g == g_tail;
        /* One prefetch per row and 64 bytes (4 q4 groups, 2 q8 groups). */
        const int prefetch = k % (kind == EF_INT_Q4 ? 4 : 2) == 0;
        if (S == 1) {
            /* One state: each row's codes used at once (8 rows in flight);
             * q4 as unsigned codes, code . x - 8 * sum(x). */
            const __m256i x = _mm256_loadu_si256((const __m256i*) (xq[0] + g * EF_IGROUP));
            const __m256i xs = kind == EF_INT_Q4
                ? _mm256_loadu_si256((const __m256i*) (xsum[0] + g * 8))
                : _mm256_setzero_si256();
            EF_IUNROLL for (int r = 0; r < R; r++) {
                __m256i w = ef_icodes_avx2(kind, rows[r], g, tail, n_tail, prefetch);
                __m256i aw = kind == EF_INT_Q4 ? w : _mm256_abs_epi8(w);
                acc[r][0] = ef_igroup_avx2(kind == EF_INT_Q4, w, aw, x, xs, &sc[r][0][k],
                                           acc[r][0]);
            }
        } else {
            /* Several states: each row's codes unpacked once for all of them
             * (q4 as signed code - 8, like q8: no lane sums to load). */
            __m256i w[8], aw[8];
            EF_IUNROLL for (int r = 0; r < R; r++) {
                w[r] = ef_icodes_avx2(kind, rows[r], g, tail, n_tail, prefetch);
                if (kind == EF_INT_Q4) w[r] = _mm256_sub_epi8(w[r], _mm256_set1_epi8(8));
                aw[r] = _mm256_abs_epi8(w[r]);
            }
            EF_IUNROLL for (int s = 0; s < S; s++) {
                const __m256i x = _mm256_loadu_si256(
                    (const __m256i*) (xq[s] + g * EF_IGROUP));
                EF_IUNROLL for (int r = 0; r < R; r++)
                    acc[r][s] = ef_igroup_avx2(0, w[r], aw[r], x, _mm256_setzero_si256(),
                                               &sc[r][s][k], acc[r][s]);
            }
        }
    }
}

EF_IALWAYS void ef_iblock_avx2(int kind, int R, int S, const ef_imatrix* m, ptrdiff_t r0,
                               ptrdiff_t r_step, const ef_qstates* a, ptrdiff_t s0,
                               float* products)
{
    __m256 acc[8][4];
    const ptrdiff_t G = m->n_groups;
    const ptrdiff_t g_tail = kind != EF_INT_Q4 && m->n_cols % EF_IGROUP ? G - 1 : G;
    const ptrdiff_t n_tail = m->n_cols - (G - 1) * EF_IGROUP;
    const char* rows[8];
    const unsigned short* hs[8];
    float row_scale[8];
    const signed char* xq[4];
    const float* xd[4];
    const int* xsum[4];
    EF_IUNROLL for (int r = 0; r < R; r++) {
        rows[r] = m->data + (r0 + r * r_step) * m->row_bytes;
        if (kind == EF_INT_I8) row_scale[r] = m->row_scales[r0 + r * r_step];
        else hs[r] = m->gscales + (r0 + r * r_step) * G;
        EF_IUNROLL for (int s = 0; s < S; s++) acc[r][s] = _mm256_setzero_ps();
    }
    EF_IUNROLL for (int s = 0; s < S; s++) {
        xq[s] = a->q + (s0 + s) * a->n_pad;
        xd[s] = a->d + (s0 + s) * a->d_stride;
        xsum[s] = kind == EF_INT_Q4 ? a->xs8 + (s0 + s) * G * 8 : NULL;
    }
    for (ptrdiff_t gb = 0; gb < G; gb += 8) {
        const ptrdiff_t ng = G - gb < 8 ? G - gb : 8;
        /* The scales fl32(dw * d) of these 8 groups for every (row, state). */
        float sc[8][4][8] __attribute__((aligned(32)));
        EF_IUNROLL for (int r = 0; r < R; r++) {
            __m256 dw;
            if (kind == EF_INT_I8) {
                dw = _mm256_set1_ps(row_scale[r]);
            } else if (ng == 8) {
                dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*) (hs[r] + gb)));
            } else {
                unsigned short tmp[8] = {0, 0, 0, 0, 0, 0, 0, 0};
                memcpy(tmp, hs[r] + gb, (size_t) ng * sizeof(tmp[0]));
                dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*) tmp));
            }
            EF_IUNROLL for (int s = 0; s < S; s++)
                _mm256_store_ps(sc[r][s], _mm256_mul_ps(dw, _mm256_loadu_ps(xd[s] + gb)));
        }
        if (ng == 8)
            ef_igroups_avx2(kind, R, S, 8, gb, rows, xq, xsum, sc, g_tail, n_tail, acc);
        else
            ef_igroups_avx2(kind, R, S, ng, gb, rows, xq, xsum, sc, g_tail, n_tail, acc);
    }
    EF_IUNROLL for (int r = 0; r < R; r++)
        EF_IUNROLL for (int s = 0; s < S; s++) {
            float lanes[8];
            _mm256_storeu_ps(lanes, acc[r][s]);
            products[(s0 + s) * m->n_rows + r0 + r * r_step] = EF_REDUCE_LANES(lanes);
        }
}

/* Rows start .. stop: one state 8 rows at a time (eight independent
 * accumulator chains, the codes streamed once); a batch as 2 rows x 4
 * states over row blocks that stay in L2 while every state group passes. */
#define EF_IROWS_BLOCK 16
EF_IALWAYS void ef_int_products_kind(int kind, const ef_imatrix* m, ptrdiff_t start,
                                     ptrdiff_t stop, const ef_qstates* a,
                                     ptrdiff_t n_states, float* products)
{
    ptrdiff_t r = start;
    if (n_states == 1) {
        /* Rows r, r + q, ..., r + 7q: eight read streams far apart. */
        const ptrdiff_t q = (stop - start) / 8;
        for (; r < start + q; r++) ef_iblock_avx2(kind, 8, 1, m, r, q, a, 0, products);
        for (r = start + 8 * q; r < stop; r++)
            ef_iblock_avx2(kind, 1, 1, m, r, 1, a, 0, products);
        return;
    }
    const ptrdiff_t s4 = n_states - n_states % 4;
    for (ptrdiff_t b0 = start; b0 < stop; b0 += EF_IROWS_BLOCK) {
        const ptrdiff_t b1 = b0 + EF_IROWS_BLOCK < stop ? b0 + EF_IROWS_BLOCK : stop;
        for (ptrdiff_t s = 0; s < s4; s += 4) {
            for (r = b0; r + 2 <= b1; r += 2) ef_iblock_avx2(kind, 2, 4, m, r, 1, a, s, products);
            if (r < b1) ef_iblock_avx2(kind, 1, 4, m, r, 1, a, s, products);
        }
        for (ptrdiff_t s = s4; s < n_states; s++) {
            for (r = b0; r + 2 <= b1; r += 2) ef_iblock_avx2(kind, 2, 1, m, r, 1, a, s, products);
            if (r < b1) ef_iblock_avx2(kind, 1, 1, m, r, 1, a, s, products);
        }
    }
}

static void ef_int_products_i8(const ef_imatrix* m, ptrdiff_t start, ptrdiff_t stop,
                               const ef_qstates* a, ptrdiff_t n_states, float* products)
{ ef_int_products_kind(EF_INT_I8, m, start, stop, a, n_states, products); }
static void ef_int_products_q8(const ef_imatrix* m, ptrdiff_t start, ptrdiff_t stop,
                               const ef_qstates* a, ptrdiff_t n_states, float* products)
{ ef_int_products_kind(EF_INT_Q8, m, start, stop, a, n_states, products); }
static void ef_int_products_q4(const ef_imatrix* m, ptrdiff_t start, ptrdiff_t stop,
                               const ef_qstates* a, ptrdiff_t n_states, float* products)
{ ef_int_products_kind(EF_INT_Q4, m, start, stop, a, n_states, products); }

static inline void ef_int_products(const ef_imatrix* m, ptrdiff_t start, ptrdiff_t stop,
                                   const ef_qstates* a, ptrdiff_t n_states, float* products)
{
    if (m->kind == EF_INT_Q4) ef_int_products_q4(m, start, stop, a, n_states, products);
    else if (m->kind == EF_INT_Q8) ef_int_products_q8(m, start, stop, a, n_states, products);
    else ef_int_products_i8(m, start, stop, a, n_states, products);
}

#else  /* plain C */

static inline void ef_int_products(const ef_imatrix* m, ptrdiff_t start, ptrdiff_t stop,
                                   const ef_qstates* a, ptrdiff_t n_states, float* products)
{
    for (ptrdiff_t r = start; r < stop; r++)
        for (ptrdiff_t s = 0; s < n_states; s++)
            products[s * m->n_rows + r] = ef_int_dot_plain(m, r, a, s);
}

#endif

#endif /* EAGLE_FAST_INT_DOT_H */
