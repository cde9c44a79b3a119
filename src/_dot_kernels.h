/* Dot-product micro-kernels of the fused draft kernel (_draft_kernel.pyx).
 *
 * Every dot product row . x of length n is computed with the same arithmetic,
 * whichever kernel and blocking computes it: 8 lanes of partial sums (lane l
 * sums the columns j < n_vec with j % 8 == l, n_vec = n rounded down to a
 * multiple of 8), the lanes reduced in one fixed order, then the columns from
 * n_vec on added one by one (ef_finish_<w>).  Kernels keep the lanes in memory
 * between calls, so callers may split the columns into blocks (any multiple
 * of 8) and group rows and states as they like: a batch gives bit-identical
 * results to its states one by one, and no compiler reassociation is needed.
 *
 * The lanes are a GCC/Clang vector-extension type: one AVX register of
 * float32 on x86-64-v3, two SSE registers on the baseline, NEON on arm64;
 * -ffp-contract=fast turns acc += w * x into FMA where the target has it.
 * (Other compilers stop here, and pip then installs the pure-Python fallback.)
 *
 * Weights are stored as the compute type T (float32 or float64) or, for
 * float32 compute, as bfloat16 bit patterns, IEEE half or int8 (with a float32
 * scale per row, applied by the caller to the finished dot).  Every stored
 * value converts exactly to float32, so a converting kernel computes the very
 * dot product the float32 kernel computes on the converted row: the same
 * lanes, the same order, whichever path (single state or batch) runs it.
 * The int8 sum q . x (|q| <= 127) can overflow float32 where the scaled
 * result is finite; for such rows the caller computes
 * ef_dot_dequantized_i8, the float32 kernel's dot product on the
 * dequantized row fl(q * scale).
 *
 * Kernels, one set per storage <w> in f32, f64, bf16, f16, i8; rows are of
 * the storage type, x and the lane accumulators (plain T[8] arrays, no
 * alignment needed) of the compute type:
 *   ef_acc_1x1_<w>(row, x, n, acc)                   acc += row . x
 *   ef_acc_4x1_<w>(r0, r1, r2, r3, x, n, acc)       acc[u] += r_u . x
 *   ef_acc_3x4_<w>(r0, r1, r2, x0, x1, x2, x3, n, acc0, acc1, acc2)
 *                                    acc_u[s] += r_u . x_s (12 accumulators:
 *                                    enough independent FMA chains to hide
 *                                    their latency, 7 loads per 12 FMAs)
 *   ef_finish_<w>(acc, row, x, n_vec, n) -> reduced lanes + tail columns
 *   ef_acc_8x1_i8(r0, step, x, n, acc)  acc[u] += row(r0 + u * step) . x, u < 8
 *   ef_dot_dequantized_i8(row, scale, x, n_vec, n) -> fl(row * scale) . x
 * where n is a multiple of 8 for the ef_acc_* kernels and acc[i] means the
 * 8 lanes at acc + 8 * i.
 */
#ifndef EAGLE_FAST_DOT_KERNELS_H
#define EAGLE_FAST_DOT_KERNELS_H

#include <stddef.h>
#include <string.h>

#if !(defined(__GNUC__) || defined(__clang__))
#error "eagle_fast's dot kernels need GCC or Clang vector extensions"
#endif

#define EF_LANES 8

typedef float ef_f32x8 __attribute__((vector_size(8 * sizeof(float))));
typedef double ef_f64x8 __attribute__((vector_size(8 * sizeof(double))));

/* Unaligned vector load / store (memcpy compiles to one vector move). */
#define EF_LOAD(V, p) ({ V v_; memcpy(&v_, (p), sizeof(v_)); v_; })
/* Software prefetch of the weight streams, 2 KiB ahead: with 4-8 concurrent
 * row streams per thread the hardware prefetchers alone leave bandwidth
 * unused (measured at 4096x4096x32000, B = 1: bfloat16 11.0 -> 8.8 ms, int8
 * 5.8 -> 4.7 ms, float32 18.8 -> 17.3 ms; 1 and 4 KiB ahead were slower). */
#define EF_PREFETCH_BYTES 2048
#define EF_PREFETCH(p) __builtin_prefetch((const char*) (p) + EF_PREFETCH_BYTES)
#define EF_STORE(V, p, value) do { V v_ = (value); memcpy((p), &v_, sizeof(v_)); } while (0)

static inline ef_f32x8 ef_load_f32(const float* p) { return EF_LOAD(ef_f32x8, p); }
static inline float ef_scalar_f32(float w) { return w; }
static inline ef_f64x8 ef_load_f64(const double* p) { return EF_LOAD(ef_f64x8, p); }
static inline double ef_scalar_f64(double w) { return w; }

typedef unsigned short ef_u16x8 __attribute__((vector_size(8 * sizeof(unsigned short))));
typedef unsigned int ef_u32x8 __attribute__((vector_size(8 * sizeof(unsigned int))));
typedef int ef_i32x8 __attribute__((vector_size(8 * sizeof(int))));
typedef signed char ef_i8x8 __attribute__((vector_size(8)));

static inline float ef_bits_to_f32(unsigned int bits)
{
    float f;
    memcpy(&f, &bits, sizeof(f));
    return f;
}

/* Loads of 8 stored weights as a lane vector of the compute type
 * (ef_load_<w>), and of one weight (ef_scalar_<w>, for the tail columns).
 *
 * Converting loads.  GCC's __builtin_convertvector
 * widens 8-bit and 16-bit vectors element by element on x86, so x86 targets
 * spell the widening out with intrinsics (one vpmovzx/vpmovsx per 8 weights on
 * AVX2, unpacks on SSE2); other targets (NEON) use the generic form. */
#if defined(__AVX2__) || defined(__SSE2__)
#include <immintrin.h>
#endif

#if defined(__SSE2__)
static inline ef_f32x8 ef_pack_f32x4(__m128 lo, __m128 hi)
{
    ef_f32x8 v;
    memcpy(&v, &lo, sizeof(lo));
    memcpy((char*) &v + sizeof(lo), &hi, sizeof(hi));
    return v;
}
#endif

/* bfloat16 is the upper half of a float32. */
static inline ef_f32x8 ef_load_bf16(const unsigned short* p)
{
#if defined(__AVX2__)
    __m256i bits = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*) p));
    return (ef_f32x8) _mm256_castsi256_ps(_mm256_slli_epi32(bits, 16));
#elif defined(__SSE2__)
    __m128i h = _mm_loadu_si128((const __m128i*) p), zero = _mm_setzero_si128();
    return ef_pack_f32x4(_mm_castsi128_ps(_mm_unpacklo_epi16(zero, h)),
                         _mm_castsi128_ps(_mm_unpackhi_epi16(zero, h)));
#else
    ef_u32x8 bits = __builtin_convertvector(EF_LOAD(ef_u16x8, p), ef_u32x8) << 16;
    return (ef_f32x8) bits;
#endif
}

static inline float ef_scalar_bf16(unsigned short h)
{
    return ef_bits_to_f32((unsigned int) h << 16);
}

/* IEEE half -> float32: F16C's vcvtph2ps where the target has it, else the
 * exact integer re-biasing below (normal, subnormal, zero, inf/NaN). */
static inline ef_u32x8 ef_half_bits_to_f32_bits(ef_u32x8 h)
{
    const unsigned int inf_exp = 0x7c00u << 13;
    ef_u32x8 sign = (h & 0x8000u) << 16;
    ef_u32x8 bits = (h & 0x7fffu) << 13;
    ef_u32x8 exponent = bits & inf_exp;
    bits += (127u - 15u) << 23;
    bits += (ef_u32x8) (exponent == inf_exp) & ((128u - 16u) << 23);
    /* Subnormals: let the FPU normalise them (exact). */
    ef_u32x8 magic = (ef_u32x8) {0} + (113u << 23);
    ef_f32x8 sub = (ef_f32x8) (bits + (1u << 23)) - (ef_f32x8) magic;
    ef_u32x8 is_sub = (ef_u32x8) (exponent == 0);
    bits = (is_sub & (ef_u32x8) sub) | (~is_sub & bits);
    return bits | sign;
}

#if defined(__F16C__)
static inline ef_f32x8 ef_load_f16(const unsigned short* p)
{
    return (ef_f32x8) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*) p));
}
#elif defined(__SSE2__)
/* ef_half_bits_to_f32_bits on 4 lanes, spelled out in SSE2 (GCC splits the
 * 8-lane generic form badly). */
static inline __m128 ef_half4_to_f32(__m128i h)
{
    const __m128i inf_exp = _mm_set1_epi32(0x7c00 << 13);
    const __m128i rebias = _mm_set1_epi32((127 - 15) << 23);
    __m128i sign = _mm_slli_epi32(_mm_and_si128(h, _mm_set1_epi32(0x8000)), 16);
    __m128i bits = _mm_slli_epi32(_mm_and_si128(h, _mm_set1_epi32(0x7fff)), 13);
    __m128i exponent = _mm_and_si128(bits, inf_exp);
    bits = _mm_add_epi32(bits, rebias);
    bits = _mm_add_epi32(bits, _mm_and_si128(_mm_cmpeq_epi32(exponent, inf_exp), rebias));
    __m128i is_sub = _mm_cmpeq_epi32(exponent, _mm_setzero_si128());
    __m128 sub = _mm_sub_ps(_mm_castsi128_ps(_mm_add_epi32(bits, _mm_set1_epi32(1 << 23))),
                            _mm_castsi128_ps(_mm_set1_epi32(113 << 23)));
    bits = _mm_or_si128(_mm_and_si128(is_sub, _mm_castps_si128(sub)),
                        _mm_andnot_si128(is_sub, bits));
    return _mm_castsi128_ps(_mm_or_si128(bits, sign));
}

static inline ef_f32x8 ef_load_f16(const unsigned short* p)
{
    __m128i h = _mm_loadu_si128((const __m128i*) p), zero = _mm_setzero_si128();
    return ef_pack_f32x4(ef_half4_to_f32(_mm_unpacklo_epi16(h, zero)),
                         ef_half4_to_f32(_mm_unpackhi_epi16(h, zero)));
}
#else
static inline ef_f32x8 ef_load_f16(const unsigned short* p)
{
    ef_u32x8 h = __builtin_convertvector(EF_LOAD(ef_u16x8, p), ef_u32x8);
    return (ef_f32x8) ef_half_bits_to_f32_bits(h);
}
#endif

static inline float ef_scalar_f16(unsigned short h)
{
    ef_u32x8 v = (ef_u32x8) {0} + h;
    return ef_bits_to_f32(ef_half_bits_to_f32_bits(v)[0]);
}

static inline ef_f32x8 ef_load_i8(const signed char* p)
{
#if defined(__AVX2__)
    __m128i q = _mm_loadl_epi64((const __m128i*) p);
    return (ef_f32x8) _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
#elif defined(__SSE2__)
    __m128i q = _mm_loadl_epi64((const __m128i*) p);
    __m128i q16 = _mm_srai_epi16(_mm_unpacklo_epi8(q, q), 8);
    return ef_pack_f32x4(_mm_cvtepi32_ps(_mm_srai_epi32(_mm_unpacklo_epi16(q16, q16), 16)),
                         _mm_cvtepi32_ps(_mm_srai_epi32(_mm_unpackhi_epi16(q16, q16), 16)));
#else
    /* Via int32: a direct char -> float conversion compiles to scalar code. */
    return __builtin_convertvector(__builtin_convertvector(EF_LOAD(ef_i8x8, p), ef_i32x8),
                                   ef_f32x8);
#endif
}

static inline float ef_scalar_i8(signed char q)
{
    return (float) q;
}

/* The fixed reduction order of the 8 lanes. */
#define EF_REDUCE_LANES(acc) \
    (((acc)[0] + (acc)[4]) + ((acc)[2] + (acc)[6])) + (((acc)[1] + (acc)[5]) + ((acc)[3] + (acc)[7]))

/* total + w * x for the tail columns: one fused multiply-add where the target
 * has FMA (as -ffp-contract=fast makes of the lanes' acc += w * x), else a
 * rounded product and sum.  Spelled out because whether the compiler fuses a
 * scalar loop depends on how it vectorizes that loop (GCC 12 at x86-64-v3
 * fused the int8 tail and not the float32 one), and every storage type must
 * compute the float32 kernel's dot product. */
#if defined(__FP_FAST_FMAF)
#define ef_madd_float(total, w, x) __builtin_fmaf((w), (x), (total))
#else
#define ef_madd_float(total, w, x) ((total) + (w) * (x))
#endif
#if defined(__FP_FAST_FMA)
#define ef_madd_double(total, w, x) __builtin_fma((w), (x), (total))
#else
#define ef_madd_double(total, w, x) ((total) + (w) * (x))
#endif

/* Row handles.  The kernels address a row through a handle R and column
 * indices: plain storage <w> (f32, f64, bf16, f16, i8) uses a pointer to the
 * row's first weight; the group-wise q8 and q4 (groups of EF_GROUP columns,
 * one IEEE-half scale each) a pointer to the codes and one to the scales,
 * both at the row's first column (a multiple of EF_GROUP).  Per storage:
 *   EF_GROUP_<w>                   columns one group load covers (8 or 32)
 *   ef_gload_<w>(row, j, w)        w[0 .. EF_GROUP_<w>/8) = columns j.. of the
 *                                  row as the compute type (j a multiple of
 *                                  EF_GROUP_<w>)
 *   ef_vload_<w>(row, j)           columns j .. j+7 (j a multiple of 8)
 *   ef_sload_<w>(row, j)           column j
 *   ef_pf_<w>(row, j)              prefetch ahead of column j */
#define EF_GROUP 32
/* Fully unrolled short loops keep their accumulators in registers. */
#define EF_UNROLL8 _Pragma("GCC unroll 8")

typedef struct { const signed char* q; const unsigned short* d; } ef_q8_row;
typedef struct { const unsigned char* q; const unsigned short* d; } ef_q4_row;

/* An IEEE-half scale as float32 (exact). */
static inline float ef_half_to_f32(unsigned short h)
{
#if defined(__F16C__)
    return _cvtsh_ss(h);
#else
    return ef_scalar_f16(h);
#endif
}

#define EF_PLAIN_ROWS(W, T, V, suffix)                                            \
enum { EF_GROUP_##suffix = EF_LANES };                                            \
static inline void ef_gload_##suffix(const W* row, ptrdiff_t j, V* w)             \
{ w[0] = ef_load_##suffix(row + j); }                                             \
static inline V ef_vload_##suffix(const W* row, ptrdiff_t j)                      \
{ return ef_load_##suffix(row + j); }                                             \
static inline T ef_sload_##suffix(const W* row, ptrdiff_t j)                      \
{ return ef_scalar_##suffix(row[j]); }                                            \
static inline void ef_pf_##suffix(const W* row, ptrdiff_t j) { EF_PREFETCH(row + j); }

EF_PLAIN_ROWS(float, float, ef_f32x8, f32)
EF_PLAIN_ROWS(double, double, ef_f64x8, f64)
EF_PLAIN_ROWS(unsigned short, float, ef_f32x8, bf16)
EF_PLAIN_ROWS(unsigned short, float, ef_f32x8, f16)
EF_PLAIN_ROWS(signed char, float, ef_f32x8, i8)

/* q8: w = q * scale, |q| <= 127 and a half scale: exact in float32. */
enum { EF_GROUP_q8 = EF_GROUP };
static inline void ef_gload_q8(ef_q8_row row, ptrdiff_t j, ef_f32x8* w)
{
    ef_f32x8 s = (ef_f32x8) {0} + ef_half_to_f32(row.d[j / EF_GROUP]);
    for (int k = 0; k < EF_GROUP / EF_LANES; k++)
        w[k] = ef_load_i8(row.q + j + EF_LANES * k) * s;
}
static inline ef_f32x8 ef_vload_q8(ef_q8_row row, ptrdiff_t j)
{
    return ef_load_i8(row.q + j) * ((ef_f32x8) {0} + ef_half_to_f32(row.d[j / EF_GROUP]));
}
static inline float ef_sload_q8(ef_q8_row row, ptrdiff_t j)
{
    return ef_scalar_i8(row.q[j]) * ef_half_to_f32(row.d[j / EF_GROUP]);
}
static inline void ef_pf_q8(ef_q8_row row, ptrdiff_t j) { EF_PREFETCH(row.q + j); }

/* q4: a group of 32 codes in 16 bytes, byte i holding column i (low nibble)
 * and column i + 16 (high nibble); w = (code - 8) * scale, exact in float32. */
enum { EF_GROUP_q4 = EF_GROUP };
static inline void ef_q4_codes(const unsigned char* g, signed char* out)
{
#if defined(__SSE2__)
    __m128i v = _mm_loadu_si128((const __m128i*) g), nib = _mm_set1_epi8(0x0F);
    __m128i eight = _mm_set1_epi8(8);
    _mm_storeu_si128((__m128i*) out, _mm_sub_epi8(_mm_and_si128(v, nib), eight));
    _mm_storeu_si128((__m128i*) (out + 16),
                     _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(v, 4), nib), eight));
#else
    for (int i = 0; i < EF_GROUP / 2; i++) {
        out[i] = (signed char) ((g[i] & 0x0F) - 8);
        out[i + EF_GROUP / 2] = (signed char) ((g[i] >> 4) - 8);
    }
#endif
}
static inline void ef_gload_q4(ef_q4_row row, ptrdiff_t j, ef_f32x8* w)
{
    ef_f32x8 s = (ef_f32x8) {0} + ef_half_to_f32(row.d[j / EF_GROUP]);
#if defined(__AVX2__)
    /* code * scale - 8 * scale: the product and the difference are exact
     * (the result, (code - 8) * scale, is a float32), fused or not. */
    ef_f32x8 m = s * -8.0f;
    __m128i v = _mm_loadu_si128((const __m128i*) (row.q + j / 2));
    __m128i nib = _mm_set1_epi8(0x0F);
    __m128i lo = _mm_and_si128(v, nib), hi = _mm_and_si128(_mm_srli_epi16(v, 4), nib);
    w[0] = (ef_f32x8) _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo)) * s + m;
    w[1] = (ef_f32x8) _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8))) * s + m;
    w[2] = (ef_f32x8) _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi)) * s + m;
    w[3] = (ef_f32x8) _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8))) * s + m;
#else
    signed char codes[EF_GROUP];
    ef_q4_codes(row.q + j / 2, codes);
    for (int k = 0; k < EF_GROUP / EF_LANES; k++)
        w[k] = ef_load_i8(codes + EF_LANES * k) * s;
#endif
}
static inline float ef_sload_q4(ef_q4_row row, ptrdiff_t j)
{
    ptrdiff_t o = j % EF_GROUP;
    unsigned char byte = row.q[(j - o) / 2 + o % (EF_GROUP / 2)];
    int code = o < EF_GROUP / 2 ? (byte & 0x0F) : (byte >> 4);
    return (float) (code - 8) * ef_half_to_f32(row.d[j / EF_GROUP]);
}
static inline ef_f32x8 ef_vload_q4(ef_q4_row row, ptrdiff_t j)
{
    signed char codes[EF_GROUP];
    ptrdiff_t o = j % EF_GROUP;
    ef_q4_codes(row.q + (j - o) / 2, codes);
    return ef_load_i8(codes + o) * ((ef_f32x8) {0} + ef_half_to_f32(row.d[j / EF_GROUP]));
}
static inline void ef_pf_q4(ef_q4_row row, ptrdiff_t j) { EF_PREFETCH(row.q + j / 2); }

/* The kernels, one definition for every storage type: R is the row handle,
 * G the columns of one group load.  Within each accumulator the columns are
 * added in increasing order, 8 at a time (lane l: columns j % 8 == l), so
 * every storage type computes the float32 kernel's dot product on its
 * converted weights; columns past the last whole group go 8 at a time. */
#define EF_DEFINE_DOTS(R, T, V, suffix)                                           \
static inline void ef_acc_1x1_##suffix(R row, const T* x, ptrdiff_t n, T* acc)    \
{                                                                                 \
    enum { G = EF_GROUP_##suffix, K = EF_GROUP_##suffix / EF_LANES };             \
    V a = EF_LOAD(V, acc), w[K];                                                  \
    ptrdiff_t j = 0;                                                              \
    for (; j + G <= n; j += G) {                                                  \
        ef_gload_##suffix(row, j, w);                                             \
        EF_UNROLL8                                                                \
        for (int k = 0; k < K; k++) a += w[k] * EF_LOAD(V, x + j + EF_LANES * k); \
    }                                                                             \
    for (; j < n; j += EF_LANES)                                                  \
        a += ef_vload_##suffix(row, j) * EF_LOAD(V, x + j);                       \
    EF_STORE(V, acc, a);                                                          \
}                                                                                 \
                                                                                  \
static inline void ef_acc_4x1_##suffix(R r0, R r1, R r2, R r3, const T* x,        \
                                       ptrdiff_t n, T* acc)                       \
{                                                                                 \
    enum { G = EF_GROUP_##suffix, K = EF_GROUP_##suffix / EF_LANES };             \
    V a0 = EF_LOAD(V, acc), a1 = EF_LOAD(V, acc + 8);                             \
    V a2 = EF_LOAD(V, acc + 16), a3 = EF_LOAD(V, acc + 24);                       \
    V w[K];                                                                       \
    ptrdiff_t j = 0;                                                              \
    /* Row by row within a group: 4 rows of K vectors would not fit the */       \
    /* registers; x's group stays in L1. */                                       \
    for (; j + G <= n; j += G) {                                                  \
        ef_pf_##suffix(r0, j); ef_pf_##suffix(r1, j);                             \
        ef_pf_##suffix(r2, j); ef_pf_##suffix(r3, j);                             \
        ef_gload_##suffix(r0, j, w);                                              \
        for (int k = 0; k < K; k++) a0 += w[k] * EF_LOAD(V, x + j + EF_LANES * k);\
        ef_gload_##suffix(r1, j, w);                                              \
        for (int k = 0; k < K; k++) a1 += w[k] * EF_LOAD(V, x + j + EF_LANES * k);\
        ef_gload_##suffix(r2, j, w);                                              \
        for (int k = 0; k < K; k++) a2 += w[k] * EF_LOAD(V, x + j + EF_LANES * k);\
        ef_gload_##suffix(r3, j, w);                                              \
        for (int k = 0; k < K; k++) a3 += w[k] * EF_LOAD(V, x + j + EF_LANES * k);\
    }                                                                             \
    for (; j < n; j += EF_LANES) {                                                \
        V xv = EF_LOAD(V, x + j);                                                 \
        a0 += ef_vload_##suffix(r0, j) * xv; a1 += ef_vload_##suffix(r1, j) * xv; \
        a2 += ef_vload_##suffix(r2, j) * xv; a3 += ef_vload_##suffix(r3, j) * xv; \
    }                                                                             \
    EF_STORE(V, acc, a0); EF_STORE(V, acc + 8, a1);                               \
    EF_STORE(V, acc + 16, a2); EF_STORE(V, acc + 24, a3);                         \
}                                                                                 \
                                                                                  \
static inline void ef_acc_3x4_##suffix(R r0, R r1, R r2,                          \
                                       const T* x0, const T* x1,                  \
                                       const T* x2, const T* x3,                  \
                                       ptrdiff_t n, T* acc0, T* acc1,             \
                                       T* acc2)                                   \
{                                                                                 \
    enum { G = EF_GROUP_##suffix, K = EF_GROUP_##suffix / EF_LANES };             \
    V a00 = EF_LOAD(V, acc0), a01 = EF_LOAD(V, acc0 + 8);                         \
    V a02 = EF_LOAD(V, acc0 + 16), a03 = EF_LOAD(V, acc0 + 24);                   \
    V a10 = EF_LOAD(V, acc1), a11 = EF_LOAD(V, acc1 + 8);                         \
    V a12 = EF_LOAD(V, acc1 + 16), a13 = EF_LOAD(V, acc1 + 24);                   \
    V a20 = EF_LOAD(V, acc2), a21 = EF_LOAD(V, acc2 + 8);                         \
    V a22 = EF_LOAD(V, acc2 + 16), a23 = EF_LOAD(V, acc2 + 24);                   \
    V w0[K], w1[K], w2[K];                                                        \
    ptrdiff_t j = 0, jj;                                                          \
    for (; j < n; j += (j + G <= n) ? G : EF_LANES) {                             \
        int kk = (j + G <= n) ? K : 1;                                            \
        if (kk == K) {                                                            \
            ef_gload_##suffix(r0, j, w0); ef_gload_##suffix(r1, j, w1);           \
            ef_gload_##suffix(r2, j, w2);                                         \
        } else {                                                                  \
            w0[0] = ef_vload_##suffix(r0, j); w1[0] = ef_vload_##suffix(r1, j);   \
            w2[0] = ef_vload_##suffix(r2, j);                                     \
        }                                                                         \
        if (EF_PREFETCH_ROWS_##suffix) {                                          \
            ef_pf_##suffix(r0, j); ef_pf_##suffix(r1, j); ef_pf_##suffix(r2, j);  \
        }                                                                         \
        EF_UNROLL8                                                                \
        for (int k = 0; k < kk; k++) {                                            \
            V v;                                                                  \
            jj = j + EF_LANES * k;                                                \
            v = EF_LOAD(V, x0 + jj); a00 += w0[k] * v; a10 += w1[k] * v; a20 += w2[k] * v; \
            v = EF_LOAD(V, x1 + jj); a01 += w0[k] * v; a11 += w1[k] * v; a21 += w2[k] * v; \
            v = EF_LOAD(V, x2 + jj); a02 += w0[k] * v; a12 += w1[k] * v; a22 += w2[k] * v; \
            v = EF_LOAD(V, x3 + jj); a03 += w0[k] * v; a13 += w1[k] * v; a23 += w2[k] * v; \
        }                                                                         \
    }                                                                             \
    EF_STORE(V, acc0, a00); EF_STORE(V, acc0 + 8, a01);                           \
    EF_STORE(V, acc0 + 16, a02); EF_STORE(V, acc0 + 24, a03);                     \
    EF_STORE(V, acc1, a10); EF_STORE(V, acc1 + 8, a11);                           \
    EF_STORE(V, acc1 + 16, a12); EF_STORE(V, acc1 + 24, a13);                     \
    EF_STORE(V, acc2, a20); EF_STORE(V, acc2 + 8, a21);                           \
    EF_STORE(V, acc2 + 16, a22); EF_STORE(V, acc2 + 24, a23);                     \
}                                                                                 \
                                                                                  \
static inline T ef_finish_##suffix(const T* acc, R row, const T* x,               \
                                   ptrdiff_t n_vec, ptrdiff_t n)                  \
{                                                                                 \
    T total = EF_REDUCE_LANES(acc);                                               \
    for (ptrdiff_t j = n_vec; j < n; j++)                                         \
        total = ef_madd_##T(total, ef_sload_##suffix(row, j), x[j]);              \
    return total;                                                                 \
}

/* Narrow rows in the 3x4 kernel: the prefetches cost more than they gain. */
#define EF_PREFETCH_ROWS_f32 1
#define EF_PREFETCH_ROWS_f64 1
#define EF_PREFETCH_ROWS_bf16 0
#define EF_PREFETCH_ROWS_f16 0
#define EF_PREFETCH_ROWS_i8 0
#define EF_PREFETCH_ROWS_q8 0
#define EF_PREFETCH_ROWS_q4 0

EF_DEFINE_DOTS(const float*, float, ef_f32x8, f32)
EF_DEFINE_DOTS(const double*, double, ef_f64x8, f64)
EF_DEFINE_DOTS(const unsigned short*, float, ef_f32x8, bf16)
EF_DEFINE_DOTS(const unsigned short*, float, ef_f32x8, f16)
EF_DEFINE_DOTS(const signed char*, float, ef_f32x8, i8)
EF_DEFINE_DOTS(ef_q8_row, float, ef_f32x8, q8)
EF_DEFINE_DOTS(ef_q4_row, float, ef_f32x8, q4)

/* Eight rows at once for one state (the B = 1 path of int8/q8/q4, which are
 * compute-bound): eight independent FMA chains hide the FMA latency, four
 * do not.  acc[u] += rows[u] . x for u < 8. */
#define EF_DEFINE_8X1(R, suffix)                                                  \
static inline void ef_acc_8x1r_##suffix(const R* rows, const float* x,            \
                                        ptrdiff_t n, float* acc)                  \
{                                                                                 \
    enum { G = EF_GROUP_##suffix, K = EF_GROUP_##suffix / EF_LANES };             \
    ef_f32x8 a[8], w[K];                                                          \
    ptrdiff_t j = 0;                                                              \
    for (int u = 0; u < 8; u++) a[u] = EF_LOAD(ef_f32x8, acc + 8 * u);            \
    for (; j + G <= n; j += G) {                                                  \
        EF_UNROLL8                                                                \
        for (int u = 0; u < 8; u++) {                                             \
            ef_pf_##suffix(rows[u], j);                                           \
            ef_gload_##suffix(rows[u], j, w);                                     \
            EF_UNROLL8                                                            \
            for (int k = 0; k < K; k++)                                           \
                a[u] += w[k] * EF_LOAD(ef_f32x8, x + j + EF_LANES * k);           \
        }                                                                         \
    }                                                                             \
    for (; j < n; j += EF_LANES)                                                  \
        for (int u = 0; u < 8; u++)                                               \
            a[u] += ef_vload_##suffix(rows[u], j) * EF_LOAD(ef_f32x8, x + j);     \
    for (int u = 0; u < 8; u++) EF_STORE(ef_f32x8, acc + 8 * u, a[u]);            \
}

EF_DEFINE_8X1(ef_q8_row, q8)
EF_DEFINE_8X1(ef_q4_row, q4)

/* Int8 rows, one byte per FMA, are compute-bound: eight rows give eight
 * independent FMA chains, enough to hide the FMA latency (four are not). */
static inline void ef_acc_8x1_i8(const signed char* r0, ptrdiff_t row_step,
                                 const float* x, ptrdiff_t n, float* acc)
{
    ef_f32x8 a[8];
    for (int u = 0; u < 8; u++) a[u] = EF_LOAD(ef_f32x8, acc + 8 * u);
    for (ptrdiff_t j = 0; j < n; j += EF_LANES) {
        ef_f32x8 xv = EF_LOAD(ef_f32x8, x + j);
        for (int u = 0; u < 8; u++) {
            EF_PREFETCH(r0 + u * row_step + j);
            a[u] += ef_load_i8(r0 + u * row_step + j) * xv;
        }
    }
    for (int u = 0; u < 8; u++) EF_STORE(ef_f32x8, acc + 8 * u, a[u]);
}

/* The dot product of the dequantized int8 row fl(q[j] * scale) with x,
 * computed exactly as ef_acc_1x1_f32 + ef_finish_f32 compute it on a float32
 * row (the same lanes, products and order; with FMA contraction, the same
 * fused operations), i.e. exactly what a float32 head on the dequantized
 * weights gives.  The slow path for rows whose pre-scale sum q . x is not
 * finite: one multiply more per weight, and no overflow where the float32
 * computation has none. */
static inline float ef_dot_dequantized_i8(const signed char* row, float scale,
                                          const float* x, ptrdiff_t n_vec, ptrdiff_t n)
{
    float acc[EF_LANES];
    ef_f32x8 a = {0};
    ef_f32x8 s = (ef_f32x8) {0} + scale;
    for (ptrdiff_t j = 0; j < n_vec; j += EF_LANES) {
        ef_f32x8 w = ef_load_i8(row + j) * s;
        a += w * EF_LOAD(ef_f32x8, x + j);
    }
    EF_STORE(ef_f32x8, acc, a);
    float total = EF_REDUCE_LANES(acc);
    for (ptrdiff_t j = n_vec; j < n; j++) {
        float w = ef_scalar_i8(row[j]) * scale;
        total = ef_madd_float(total, w, x[j]);
    }
    return total;
}

/* Memory read-bandwidth probe for the benchmarks: sums n floats (n a multiple
 * of 64) as 8 concurrent sequential streams, 8 lanes each, prefetching ahead
 * as the kernels do. */
static inline float ef_sum_8_streams_f32(const float* data, ptrdiff_t n)
{
    ptrdiff_t part = n / 8, j;
    ef_f32x8 a[8] = {{0}};
    for (j = 0; j < part; j += EF_LANES)
        for (int s = 0; s < 8; s++) {
            EF_PREFETCH(data + s * part + j);
            a[s] += EF_LOAD(ef_f32x8, data + s * part + j);
        }
    for (int s = 1; s < 8; s++) a[0] += a[s];
    return ((a[0][0] + a[0][4]) + (a[0][2] + a[0][6])) + ((a[0][1] + a[0][5]) + (a[0][3] + a[0][7]));
}

#endif /* EAGLE_FAST_DOT_KERNELS_H */
