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
 * group).  Per group the exact integer sum, then one fused multiply-add:
 *     isum_g = sum_j w[32g + j] * q[32g + j]      (j < 32; exact, |isum| < 2^19)
 *     s_g    = fl32(dw_g * d_g)
 *     acc    = fl32(acc + isum_g * s_g)   for g = 0, 1, ... (acc = 0 first)
 * and the dot product is acc -- one rounding per group (the product is
 * exact), as llama.cpp sums a block before scaling it.  The AVX2 kernels
 * below (vpmaddubsw / vpmaddwd for the integer sums -- q8/int8 as
 * |q| * sign(w, q), q4 as code * q - 8 * sum(q) -- and vfmadd) and the plain C
 * one (fmaf where the target has FMA, else an exact emulation in double,
 * ef_fma_f32) give the same bits, and so does the NumPy fallback
 * (eagle_fast/_int_dot_py.py).  Each (row, state) is summed in that order
 * whatever the kernel or blocking, so a batch gives its states' single
 * results bit for bit.
 *
 * Kernels (AVX2).  Few states (q4: < 4, q8/int8: < 5): 8 rows at a time,
 * one state, each row's 32-column group summed in a vector and the 8 rows'
 * sums transposed into one vector (lane = row) before its scale.  More:
 * the states are also stored interleaved, EF_IBLOCK = 8 to a block -- 4 columns of
 * each of a block's 8 states in one vector, lane = state -- and each weight
 * row's 4 codes are broadcast against it, so one multiply serves 8 states and
 * the integer sums need no reduction (q4 sums 8 such products in int16, which
 * 8 * 2 * 15 * 127 < 2^15 allows); tiles of 4 rows x 2 blocks, so an
 * activation load serves 4 rows and a weight broadcast 16 states.
 *
 * API:
 *   ef_qstates            quantized states: q (n_states, n_pad), d (n_states,
 *                         d_stride), xs (n_states, n_groups) (8 * group sums
 *                         of q, q4 only), and from EF_IBLOCK_MIN(_Q4)
 *                         states (AVX2 builds) the interleaved copy qi (n_blocks, n_groups,
 *                         8 column quads, 8 states, 4), di / xsi (n_blocks,
 *                         n_groups, 8) -- n_pad = 32 * n_groups, d_stride =
 *                         n_groups rounded up to 8 (padded with 0), padding
 *                         states zero
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
#define EF_IBLOCK 8        /* states per interleaved block */
/* Interleaved from this many states (q4 / q8 and int8; measured): a partial
 * block costs a full one, still less than that many single-state passes. */
#define EF_IBLOCK_MIN_Q4 4
#define EF_IBLOCK_MIN 5

#if defined(__AVX2__) && defined(__F16C__)
#define EF_INT_INTERLEAVED 1
#else
#define EF_INT_INTERLEAVED 0
#endif

enum { EF_INT_I8 = 0, EF_INT_Q8 = 1, EF_INT_Q4 = 2 };

typedef struct {
    signed char* q;
    float* d;
    int* xs;
    signed char* qi;
    float* di;
    int* xsi;
    ptrdiff_t n_groups, n_pad, d_stride, n_blocks;
} ef_qstates;

typedef struct {
    int kind;                        /* EF_INT_I8, EF_INT_Q8, EF_INT_Q4 */
    const char* data;                /* codes, row_bytes per row */
    ptrdiff_t row_bytes, n_rows, n_cols, n_groups;
    const unsigned short* gscales;   /* q8/q4: (n_rows, n_groups) IEEE half */
    const float* row_scales;         /* int8: (n_rows,) */
} ef_imatrix;

/* fl32(a * b + c) rounded once (a fused multiply-add), for a = an integer
 * of at most 20 bits, b and c float32.  Where the target has no FMA: a * b is
 * exact in double (44 bits), the sum is rounded to double *to odd* (TwoSum
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

static inline void ef_qstates_free(ef_qstates* a)
{
    free(a->q); free(a->d); free(a->xs);
    free(a->qi); free(a->di); free(a->xsi);
    memset(a, 0, sizeof(*a));
}

/* 0 on success, -1 when out of memory (a is then freed). */
static inline int ef_qstates_alloc(ef_qstates* a, ptrdiff_t n_states, ptrdiff_t n,
                                   int with_sums)
{
    memset(a, 0, sizeof(*a));
    a->n_groups = ef_igroups(n);
    a->n_pad = a->n_groups * EF_IGROUP;
    a->d_stride = (a->n_groups + 7) / 8 * 8;
    a->n_blocks = EF_INT_INTERLEAVED
        && n_states >= (with_sums ? EF_IBLOCK_MIN_Q4 : EF_IBLOCK_MIN)
        ? (n_states + EF_IBLOCK - 1) / EF_IBLOCK : 0;
    /* 32 bytes of slack: the vector loads may read a whole group. */
    a->q = (signed char*) malloc((size_t) (n_states * a->n_pad) + 32);
    a->d = (float*) calloc((size_t) (n_states * a->d_stride), sizeof(float));
    if (with_sums)
        a->xs = (int*) malloc((size_t) (n_states * a->n_groups) * sizeof(int));
    if (a->n_blocks > 0) {
        const size_t cells = (size_t) (a->n_blocks * a->n_groups * EF_IBLOCK);
        a->qi = (signed char*) calloc(cells * EF_IGROUP, 1);
        a->di = (float*) calloc(cells, sizeof(float));
        if (with_sums) a->xsi = (int*) calloc(cells, sizeof(int));
    }
    if (a->q == NULL || a->d == NULL || (with_sums && a->xs == NULL)
            || (a->n_blocks > 0 && (a->qi == NULL || a->di == NULL
                                    || (with_sums && a->xsi == NULL)))) {
        ef_qstates_free(a);
        return -1;
    }
    return 0;
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
    const ptrdiff_t G = a->n_groups;
    for (ptrdiff_t s = s0; s < s1; s++) {
        const float* row = v + s * n;
        signed char* q = a->q + s * a->n_pad;
        float* d = a->d + s * a->d_stride;
        for (ptrdiff_t g = g0; g < g1; g++) {
            const ptrdiff_t j0 = g * EF_IGROUP;
            const ptrdiff_t m = n - j0 < EF_IGROUP ? n - j0 : EF_IGROUP;
            int sum = 0;
            d[g] = ef_quantize_group(row + j0, m, q + j0);
            if (a->xs != NULL)   /* q4's 8 * sum(q) offsets */
                for (int j = 0; j < EF_IGROUP; j++) sum += q[j0 + j];
            if (a->xs != NULL) a->xs[s * G + g] = 8 * sum;
            if (a->n_blocks > 0) {
                /* The interleaved copy: cell (block, g), lane s % 8. */
                const ptrdiff_t cell = (s / EF_IBLOCK * G + g) * EF_IBLOCK;
                const int lane = (int) (s % EF_IBLOCK);
                for (int k = 0; k < EF_IGROUP / 4; k++)
                    memcpy(a->qi + (cell + k) * EF_IGROUP + 4 * lane, q + j0 + 4 * k, 4);
                a->di[cell + lane] = d[g];
                if (a->xsi != NULL) a->xsi[cell + lane] = 8 * sum;
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
    float acc = 0.0f;
    for (ptrdiff_t g = 0; g < m->n_groups; g++) {
        const float sg = ef_iweight_scale(m, r, g) * d[g];
        const ptrdiff_t j1 = (g + 1) * EF_IGROUP < m->n_cols ? (g + 1) * EF_IGROUP : m->n_cols;
        int isum = 0;
        for (ptrdiff_t j = g * EF_IGROUP; j < j1; j++)
            isum += ef_icode(m, row, j) * q[j];
        acc = ef_fma_f32((float) isum, sg, acc);
    }
    return acc;
}

#if defined(__AVX2__) && defined(__F16C__)

#define EF_IALWAYS static inline __attribute__((always_inline))
#define EF_IUNROLL _Pragma("GCC unroll 8")
/* Keeps a running sum in its register: without it GCC reassociates the
 * integer additions into a tree and spills every product. */
#define EF_IKEEP(v) __asm__("" : "+x"(v))

/* The codes of group g of a row: q4 as unsigned 0..15 (column order), q8 /
 * int8 as stored (a short last group zero padded: no read past the row). */
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
    if (tail) {
        signed char tmp[EF_IGROUP];
        memset(tmp, 0, sizeof(tmp));
        memcpy(tmp, p, (size_t) n_tail);
        return _mm256_loadu_si256((const __m256i*) tmp);
    }
    return _mm256_loadu_si256((const __m256i*) p);
}

/* Half sums of 8 rows: lane r of 128-bit half h of the result is the sum of
 * p[r]'s lanes 4h .. 4h + 3 (exact), rows 0..3 in u[0], 4..7 in u[1]:
 * (u[0], u[1]) -> one vector per half, via permute2x128 (0x20 / 0x31). */
EF_IALWAYS void ef_ihalf_sums8_avx2(const __m256i* p, __m256i* u)
{
    __m256i t[4];
    EF_IUNROLL for (int i = 0; i < 4; i++)
        t[i] = _mm256_add_epi32(_mm256_unpacklo_epi32(p[2 * i], p[2 * i + 1]),
                                _mm256_unpackhi_epi32(p[2 * i], p[2 * i + 1]));
    EF_IUNROLL for (int i = 0; i < 2; i++)
        u[i] = _mm256_add_epi32(_mm256_unpacklo_epi64(t[2 * i], t[2 * i + 1]),
                                _mm256_unpackhi_epi64(t[2 * i], t[2 * i + 1]));
}

/* lane r = the sum of p[r]'s 8 int32 lanes (exact). */
EF_IALWAYS __m256i ef_isum8_avx2(const __m256i* p)
{
    __m256i u[2];
    ef_ihalf_sums8_avx2(p, u);
    return _mm256_add_epi32(_mm256_permute2x128_si256(u[0], u[1], 0x20),
                            _mm256_permute2x128_si256(u[0], u[1], 0x31));
}

/* out[k] = (v[0][k], ..., v[7][k]): an 8 x 8 float transpose. */
EF_IALWAYS void ef_transpose8_avx2(const __m256* v, __m256* out)
{
    __m256 t[8], u[8];
    EF_IUNROLL for (int i = 0; i < 4; i++) {
        t[2 * i] = _mm256_unpacklo_ps(v[2 * i], v[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(v[2 * i], v[2 * i + 1]);
    }
    EF_IUNROLL for (int i = 0; i < 2; i++) {
        u[4 * i + 0] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
        u[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
        u[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
        u[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
    }
    EF_IUNROLL for (int k = 0; k < 4; k++) {
        out[k] = _mm256_permute2f128_ps(u[k], u[4 + k], 0x20);
        out[4 + k] = _mm256_permute2f128_ps(u[k], u[4 + k], 0x31);
    }
}

/* Eight rows (pointers rows[r], scales row r of m as index[r]) times one
 * state s, all groups: lane r of the result is row r's dot product. */
EF_IALWAYS __m256 ef_irows8_avx2(int kind, const ef_imatrix* m, const ptrdiff_t* index,
                                 const ef_qstates* a, ptrdiff_t s, int prefetch_rows)
{
    const ptrdiff_t G = m->n_groups;
    const ptrdiff_t g_tail = kind != EF_INT_Q4 && m->n_cols % EF_IGROUP ? G - 1 : G;
    const ptrdiff_t n_tail = m->n_cols - (G - 1) * EF_IGROUP;
    const signed char* xq = a->q + s * a->n_pad;
    const float* xd = a->d + s * a->d_stride;
    const int* xsum = kind == EF_INT_Q4 ? a->xs + s * G : NULL;
    const char* rows[8];
    __m256 acc = _mm256_setzero_ps(), dw[8];
    EF_IUNROLL for (int r = 0; r < 8; r++) rows[r] = m->data + index[r] * m->row_bytes;
    if (kind == EF_INT_I8) {
        const __m256 row_scales = _mm256_setr_ps(
            m->row_scales[index[0]], m->row_scales[index[1]], m->row_scales[index[2]],
            m->row_scales[index[3]], m->row_scales[index[4]], m->row_scales[index[5]],
            m->row_scales[index[6]], m->row_scales[index[7]]);
        EF_IUNROLL for (int k = 0; k < 8; k++) dw[k] = row_scales;
    }
    for (ptrdiff_t gb = 0; gb < G; gb += 8) {
        const ptrdiff_t ng = G - gb < 8 ? G - gb : 8;
        if (kind != EF_INT_I8) {
            /* The 8 rows' scales of groups gb .. gb + 7, as (group: rows). */
            __m256 by_row[8];
            EF_IUNROLL for (int r = 0; r < 8; r++) {
                const unsigned short* h = m->gscales + index[r] * G + gb;
                if (ng == 8) {
                    by_row[r] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*) h));
                } else {
                    unsigned short tmp[8] = {0, 0, 0, 0, 0, 0, 0, 0};
                    memcpy(tmp, h, (size_t) ng * sizeof(tmp[0]));
                    by_row[r] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*) tmp));
                }
            }
            ef_transpose8_avx2(by_row, dw);
        }
        ptrdiff_t k = 0;
        if (kind == EF_INT_Q4) {
            /* Two groups per 32-byte load: its low nibbles are columns 0..15
             * of g and g + 1, its high nibbles 16..31; the two int16 sums
             * (<= 2 * 2 * 15 * 127) add before one vpmaddwd, and the row
             * reduction leaves g in the low lanes, g + 1 in the high ones. */
            for (; k + 2 <= ng; k += 2) {
                const ptrdiff_t g = gb + k;
                const __m256i nib = _mm256_set1_epi8(0x0F);
                const __m256i x_lo = _mm256_set_m128i(
                    _mm_loadu_si128((const __m128i*) (xq + (g + 1) * EF_IGROUP)),
                    _mm_loadu_si128((const __m128i*) (xq + g * EF_IGROUP)));
                const __m256i x_hi = _mm256_set_m128i(
                    _mm_loadu_si128((const __m128i*) (xq + (g + 1) * EF_IGROUP + 16)),
                    _mm_loadu_si128((const __m128i*) (xq + g * EF_IGROUP + 16)));
                __m256i p[8], u[2];
                EF_IUNROLL for (int r = 0; r < 8; r++) {
                    const unsigned char* c = (const unsigned char*) rows[r] + g * (EF_IGROUP / 2);
                    const __m256i v = _mm256_loadu_si256((const __m256i*) c);
                    if (prefetch_rows && k % 4 == 0) __builtin_prefetch(c + 2048);
                    const __m256i p16 = _mm256_add_epi16(
                        _mm256_maddubs_epi16(_mm256_and_si256(v, nib), x_lo),
                        _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(v, 4), nib),
                                             x_hi));
                    p[r] = _mm256_madd_epi16(p16, _mm256_set1_epi16(1));
                }
                ef_ihalf_sums8_avx2(p, u);
                EF_IUNROLL for (int h = 0; h < 2; h++) {
                    __m256i isum = _mm256_permute2x128_si256(u[0], u[1], h ? 0x31 : 0x20);
                    isum = _mm256_sub_epi32(isum, _mm256_set1_epi32(xsum[g + h]));
                    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum),
                                          _mm256_mul_ps(dw[k + h], _mm256_set1_ps(xd[g + h])),
                                          acc);
                }
            }
        }
        for (; k < ng; k++) {
            const ptrdiff_t g = gb + k;
            const int tail = g == g_tail;
            const int prefetch = prefetch_rows && k % (kind == EF_INT_Q4 ? 4 : 2) == 0;
            const __m256i x = _mm256_loadu_si256((const __m256i*) (xq + g * EF_IGROUP));
            const __m256i ax = _mm256_abs_epi8(x);
            __m256i p[8];
            EF_IUNROLL for (int r = 0; r < 8; r++) {
                const __m256i w = ef_icodes_avx2(kind, rows[r], g, tail, n_tail, prefetch);
                const __m256i p16 = kind == EF_INT_Q4 ? _mm256_maddubs_epi16(w, x)
                    : _mm256_maddubs_epi16(ax, _mm256_sign_epi8(w, x));
                p[r] = _mm256_madd_epi16(p16, _mm256_set1_epi16(1));
            }
            __m256i isum = ef_isum8_avx2(p);
            if (kind == EF_INT_Q4) isum = _mm256_sub_epi32(isum, _mm256_set1_epi32(xsum[g]));
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum),
                                  _mm256_mul_ps(dw[k], _mm256_set1_ps(xd[g])), acc);
        }
    }
    return acc;
}

/* Store lanes 0 .. n - 1 of v to products[index[r]] (column c). */
EF_IALWAYS void ef_istore_rows(__m256 v, int n, const ptrdiff_t* index, ptrdiff_t s,
                               const ef_imatrix* m, float* products)
{
    float lanes[8];
    _mm256_storeu_ps(lanes, v);
    for (int r = 0; r < n; r++) products[s * m->n_rows + index[r]] = lanes[r];
}

/* Up to 4 rows (codes[i]: 32 * n_groups codes, q4 unsigned; dwf[i]: group
 * scales) times NB interleaved blocks of 8 states from block b0: lane = state.
 * NB = 2 loads each row's codes once for both blocks. */
#define EF_ITILE 4
EF_IALWAYS void ef_itile_blocks_avx2(int kind, int NB, const signed char* const* codes,
                                     const float* const* dwf, const ef_qstates* a,
                                     ptrdiff_t b0, ptrdiff_t n_states, ptrdiff_t r0,
                                     int n_rows_valid, ptrdiff_t n_rows,
                                     const char* next_rows, ptrdiff_t next_bytes,
                                     float* products)
{
    /* The next tile's stored rows (next_bytes from next_rows) are prefetched
     * during the first blocks, a cache line per group or two, so their read
     * from memory overlaps this tile's arithmetic. */
    const ptrdiff_t line_every = kind == EF_INT_Q4 ? 4 : 2;
    const ptrdiff_t G = a->n_groups;
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[2][EF_ITILE];
    EF_IUNROLL for (int n = 0; n < NB; n++)
        EF_IUNROLL for (int i = 0; i < EF_ITILE; i++) acc[n][i] = _mm256_setzero_ps();
    for (ptrdiff_t g = 0; g < G; g++) {
        const signed char* xg[2];
        ptrdiff_t cell[2];
        EF_IUNROLL for (int n = 0; n < NB; n++) {
            cell[n] = ((b0 + n) * G + g) * EF_IBLOCK;
            xg[n] = a->qi + cell[n] * EF_IGROUP;
        }
        if (b0 == 0 && g % line_every == 0) {
            const ptrdiff_t line = g / line_every * 64;
            for (int i = 0; i < EF_ITILE; i++)
                if (line < next_bytes) __builtin_prefetch(next_rows + i * next_bytes + line);
        }
        __m256i isum[2][EF_ITILE];
        EF_IUNROLL for (int n = 0; n < NB; n++)
            EF_IUNROLL for (int i = 0; i < EF_ITILE; i++) isum[n][i] = _mm256_setzero_si256();
        EF_IUNROLL for (int k = 0; k < EF_IGROUP / 4; k++) {
            __m256i x[2], ax[2];
            EF_IUNROLL for (int n = 0; n < NB; n++) {
                x[n] = _mm256_loadu_si256((const __m256i*) (xg[n] + k * EF_IGROUP));
                ax[n] = _mm256_abs_epi8(x[n]);
            }
            EF_IUNROLL for (int i = 0; i < EF_ITILE; i++) {
                int w4;
                memcpy(&w4, codes[i] + g * EF_IGROUP + 4 * k, 4);
                const __m256i w = _mm256_set1_epi32(w4);
                EF_IUNROLL for (int n = 0; n < NB; n++) {
                    if (kind == EF_INT_Q4) {
                        /* int16 sums: 8 * 2 * 15 * 127 < 2^15. */
                        isum[n][i] = _mm256_add_epi16(isum[n][i],
                                                      _mm256_maddubs_epi16(w, x[n]));
                    } else {
                        isum[n][i] = _mm256_add_epi32(isum[n][i], _mm256_madd_epi16(
                            _mm256_maddubs_epi16(ax[n], _mm256_sign_epi8(w, x[n])), ones));
                    }
                    EF_IKEEP(isum[n][i]);
                }
            }
        }
        EF_IUNROLL for (int n = 0; n < NB; n++) {
            const __m256 d = _mm256_loadu_ps(a->di + cell[n]);
            const __m256i xs = kind == EF_INT_Q4
                ? _mm256_loadu_si256((const __m256i*) (a->xsi + cell[n]))
                : _mm256_setzero_si256();
            EF_IUNROLL for (int i = 0; i < EF_ITILE; i++) {
                __m256i v = isum[n][i];
                if (kind == EF_INT_Q4) v = _mm256_sub_epi32(_mm256_madd_epi16(v, ones), xs);
                acc[n][i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(v),
                                            _mm256_mul_ps(_mm256_set1_ps(dwf[i][g]), d),
                                            acc[n][i]);
            }
        }
    }
    EF_IUNROLL for (int n = 0; n < NB; n++) {
        const ptrdiff_t s0 = (b0 + n) * EF_IBLOCK;
        const ptrdiff_t s_end = s0 + EF_IBLOCK < n_states ? s0 + EF_IBLOCK : n_states;
        EF_IUNROLL for (int i = 0; i < EF_ITILE; i++) {
            if (i >= n_rows_valid) break;
            float lanes[8];
            _mm256_storeu_ps(lanes, acc[n][i]);
            for (ptrdiff_t s = s0; s < s_end; s++) products[s * n_rows + r0 + i] = lanes[s - s0];
        }
    }
}

EF_IALWAYS void ef_itile_avx2(int kind, const signed char* const* codes,
                              const float* const* dwf, const ef_qstates* a,
                              ptrdiff_t n_states, ptrdiff_t r0, int n_rows_valid,
                              ptrdiff_t n_rows, const char* next_rows,
                              ptrdiff_t next_bytes, float* products)
{
    ptrdiff_t b = 0;
    for (; b + 2 <= a->n_blocks; b += 2)
        ef_itile_blocks_avx2(kind, 2, codes, dwf, a, b, n_states, r0, n_rows_valid, n_rows,
                             next_rows, next_bytes, products);
    if (b < a->n_blocks)
        ef_itile_blocks_avx2(kind, 1, codes, dwf, a, b, n_states, r0, n_rows_valid, n_rows,
                             next_rows, next_bytes, products);
}

/* Rows start .. stop times the interleaved blocks; -1 when out of memory. */
EF_IALWAYS int ef_int_products_blocks(int kind, const ef_imatrix* m, ptrdiff_t start,
                                      ptrdiff_t stop, const ef_qstates* a,
                                      ptrdiff_t n_states, float* products)
{
    const ptrdiff_t G = m->n_groups, n_pad = a->n_pad;
    /* Rows whose codes the tile can read in place (q8/int8 with whole groups)
     * skip the copy; q4 rows are unpacked, short q8/int8 rows padded. */
    const int in_place = kind != EF_INT_Q4 && m->n_cols % EF_IGROUP == 0;
    char* scratch = (char*) malloc((size_t) EF_ITILE * ((in_place ? 0 : n_pad)
                                                         + G * sizeof(float)) + 64);
    if (scratch == NULL) return -1;
    float* dw_all = (float*) scratch;
    signed char* code_all = (signed char*) (dw_all + EF_ITILE * G);
    for (ptrdiff_t r0 = start; r0 < stop; r0 += EF_ITILE) {
        const int n_valid = stop - r0 < EF_ITILE ? (int) (stop - r0) : EF_ITILE;
        const signed char* codes[EF_ITILE];
        const float* dwf[EF_ITILE];
        for (int i = 0; i < EF_ITILE; i++) {
            const ptrdiff_t r = r0 + (i < n_valid ? i : n_valid - 1);
            const char* row = m->data + r * m->row_bytes;
            float* dw = dw_all + i * G;
            signed char* buf = code_all + i * n_pad;
            if (kind == EF_INT_I8) {
                for (ptrdiff_t g = 0; g < G; g++) dw[g] = m->row_scales[r];
            } else {
                /* float16 -> float32, 8 at a time (exact either way). */
                const unsigned short* h = m->gscales + r * G;
                ptrdiff_t g = 0;
                for (; g + 8 <= G; g += 8)
                    _mm256_storeu_ps(dw + g, _mm256_cvtph_ps(
                        _mm_loadu_si128((const __m128i*) (h + g))));
                for (; g < G; g++) dw[g] = ef_half_to_f32(h[g]);
            }
            dwf[i] = dw;
            if (in_place) {
                codes[i] = (const signed char*) row;
            } else if (kind == EF_INT_Q4) {
                for (ptrdiff_t g = 0; g < G; g++) {
                    const __m128i v = _mm_loadu_si128(
                        (const __m128i*) (row + g * (EF_IGROUP / 2)));
                    const __m128i lo = _mm_set1_epi8(0x0F);
                    _mm_storeu_si128((__m128i*) (buf + g * EF_IGROUP), _mm_and_si128(v, lo));
                    _mm_storeu_si128((__m128i*) (buf + g * EF_IGROUP + 16),
                                     _mm_and_si128(_mm_srli_epi16(v, 4), lo));
                }
                codes[i] = buf;
            } else {
                memset(buf, 0, (size_t) n_pad);
                memcpy(buf, row, (size_t) m->n_cols);
                codes[i] = buf;
            }
        }
        const ptrdiff_t next = r0 + EF_ITILE;
        ef_itile_avx2(kind, codes, dwf, a, n_states, r0, n_valid, m->n_rows,
                      m->data + next * m->row_bytes,
                      next + EF_ITILE <= stop ? m->row_bytes : 0, products);
    }
    free(scratch);
    return 0;
}

/* Rows start .. stop of every state.  Batches of EF_IBLOCK_MIN(_Q4) or more
 * states take the interleaved tiles; fewer, 8 rows per state (one state: rows r,
 * r + q, ..., r + 7q, eight read streams far apart). */
EF_IALWAYS int ef_int_products_kind(int kind, const ef_imatrix* m, ptrdiff_t start,
                                    ptrdiff_t stop, const ef_qstates* a,
                                    ptrdiff_t n_states, float* products)
{
    ptrdiff_t index[8];
    if (a->n_blocks > 0 && ef_int_products_blocks(kind, m, start, stop, a, n_states,
                                                  products) == 0)
        return 0;
    if (n_states == 1) {
        const ptrdiff_t q = (stop - start) / 8;
        for (ptrdiff_t r = start; r < start + q; r++) {
            EF_IUNROLL for (int i = 0; i < 8; i++) index[i] = r + i * q;
            ef_istore_rows(ef_irows8_avx2(kind, m, index, a, 0, 1), 8, index, 0, m, products);
        }
        start += 8 * q;
    }
    for (ptrdiff_t r = start; r < stop; r += 8) {
        const int n = stop - r < 8 ? (int) (stop - r) : 8;
        EF_IUNROLL for (int i = 0; i < 8; i++) index[i] = r + (i < n ? i : n - 1);
        for (ptrdiff_t s = 0; s < n_states; s++)
            ef_istore_rows(ef_irows8_avx2(kind, m, index, a, s, n_states == 1), n, index, s,
                           m, products);
    }
    return 0;
}

static int ef_int_products_i8(const ef_imatrix* m, ptrdiff_t start, ptrdiff_t stop,
                              const ef_qstates* a, ptrdiff_t n_states, float* products)
{ return ef_int_products_kind(EF_INT_I8, m, start, stop, a, n_states, products); }
static int ef_int_products_q8(const ef_imatrix* m, ptrdiff_t start, ptrdiff_t stop,
                              const ef_qstates* a, ptrdiff_t n_states, float* products)
{ return ef_int_products_kind(EF_INT_Q8, m, start, stop, a, n_states, products); }
static int ef_int_products_q4(const ef_imatrix* m, ptrdiff_t start, ptrdiff_t stop,
                              const ef_qstates* a, ptrdiff_t n_states, float* products)
{ return ef_int_products_kind(EF_INT_Q4, m, start, stop, a, n_states, products); }

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
