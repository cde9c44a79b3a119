/* Dot-product micro-kernels of the fused draft kernel (_draft_kernel.pyx).
 *
 * Every dot product row . x of length n is computed with the same arithmetic,
 * whichever kernel and blocking computes it: 8 lanes of partial sums (lane l
 * sums the columns j < n_vec with j % 8 == l, n_vec = n rounded down to a
 * multiple of 8), the lanes reduced in one fixed order, then the columns from
 * n_vec on added one by one (ef_finish).  Kernels keep the lanes in memory
 * between calls, so callers may split the columns into blocks (any multiple
 * of 8) and group rows and states as they like: a batch gives bit-identical
 * results to its states one by one, and no compiler reassociation is needed.
 *
 * The lanes are a GCC/Clang vector-extension type: one AVX register of
 * float32 on x86-64-v3, two SSE registers on the baseline, NEON on arm64;
 * -ffp-contract=fast turns acc += w * x into FMA where the target has it.
 * (Other compilers stop here, and pip then installs the pure-Python fallback.)
 *
 * Lane accumulators are plain T[8] arrays (no alignment needed):
 *   ef_acc_1x1(row, x, n, acc)                      acc += row . x
 *   ef_acc_4x1(r0, r1, r2, r3, x, n, acc)           acc[u] += r_u . x
 *   ef_acc_3x4(r0, r1, r2, x0, x1, x2, x3, n, acc0, acc1, acc2)
 *                                    acc_u[s] += r_u . x_s (12 accumulators:
 *                                    enough independent FMA chains to hide
 *                                    their latency, 7 loads per 12 FMAs)
 *   ef_finish(acc, row, x, n_vec, n) -> reduced lanes + tail columns
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
#define EF_STORE(V, p, value) do { V v_ = (value); memcpy((p), &v_, sizeof(v_)); } while (0)

#define EF_DEFINE_DOTS(T, V, suffix)                                              \
static inline void ef_acc_1x1_##suffix(const T* row, const T* x, ptrdiff_t n,    \
                                       T* acc)                                    \
{                                                                                 \
    V a = EF_LOAD(V, acc);                                                        \
    for (ptrdiff_t j = 0; j < n; j += EF_LANES)                                   \
        a += EF_LOAD(V, row + j) * EF_LOAD(V, x + j);                             \
    EF_STORE(V, acc, a);                                                          \
}                                                                                 \
                                                                                  \
static inline void ef_acc_4x1_##suffix(const T* r0, const T* r1, const T* r2,    \
                                       const T* r3, const T* x, ptrdiff_t n,     \
                                       T* acc)                                    \
{                                                                                 \
    V a0 = EF_LOAD(V, acc), a1 = EF_LOAD(V, acc + 8);                             \
    V a2 = EF_LOAD(V, acc + 16), a3 = EF_LOAD(V, acc + 24);                       \
    for (ptrdiff_t j = 0; j < n; j += EF_LANES) {                                 \
        V xv = EF_LOAD(V, x + j);                                                 \
        a0 += EF_LOAD(V, r0 + j) * xv;                                            \
        a1 += EF_LOAD(V, r1 + j) * xv;                                            \
        a2 += EF_LOAD(V, r2 + j) * xv;                                            \
        a3 += EF_LOAD(V, r3 + j) * xv;                                            \
    }                                                                             \
    EF_STORE(V, acc, a0); EF_STORE(V, acc + 8, a1);                               \
    EF_STORE(V, acc + 16, a2); EF_STORE(V, acc + 24, a3);                         \
}                                                                                 \
                                                                                  \
static inline void ef_acc_3x4_##suffix(const T* r0, const T* r1, const T* r2,    \
                                       const T* x0, const T* x1, const T* x2,    \
                                       const T* x3, ptrdiff_t n, T* acc0,         \
                                       T* acc1, T* acc2)                          \
{                                                                                 \
    V a00 = EF_LOAD(V, acc0), a01 = EF_LOAD(V, acc0 + 8);                         \
    V a02 = EF_LOAD(V, acc0 + 16), a03 = EF_LOAD(V, acc0 + 24);                   \
    V a10 = EF_LOAD(V, acc1), a11 = EF_LOAD(V, acc1 + 8);                         \
    V a12 = EF_LOAD(V, acc1 + 16), a13 = EF_LOAD(V, acc1 + 24);                   \
    V a20 = EF_LOAD(V, acc2), a21 = EF_LOAD(V, acc2 + 8);                         \
    V a22 = EF_LOAD(V, acc2 + 16), a23 = EF_LOAD(V, acc2 + 24);                   \
    for (ptrdiff_t j = 0; j < n; j += EF_LANES) {                                 \
        V w0 = EF_LOAD(V, r0 + j), w1 = EF_LOAD(V, r1 + j);                       \
        V w2 = EF_LOAD(V, r2 + j), v;                                             \
        v = EF_LOAD(V, x0 + j); a00 += w0 * v; a10 += w1 * v; a20 += w2 * v;      \
        v = EF_LOAD(V, x1 + j); a01 += w0 * v; a11 += w1 * v; a21 += w2 * v;      \
        v = EF_LOAD(V, x2 + j); a02 += w0 * v; a12 += w1 * v; a22 += w2 * v;      \
        v = EF_LOAD(V, x3 + j); a03 += w0 * v; a13 += w1 * v; a23 += w2 * v;      \
    }                                                                             \
    EF_STORE(V, acc0, a00); EF_STORE(V, acc0 + 8, a01);                           \
    EF_STORE(V, acc0 + 16, a02); EF_STORE(V, acc0 + 24, a03);                     \
    EF_STORE(V, acc1, a10); EF_STORE(V, acc1 + 8, a11);                           \
    EF_STORE(V, acc1 + 16, a12); EF_STORE(V, acc1 + 24, a13);                     \
    EF_STORE(V, acc2, a20); EF_STORE(V, acc2 + 8, a21);                           \
    EF_STORE(V, acc2 + 16, a22); EF_STORE(V, acc2 + 24, a23);                     \
}                                                                                 \
                                                                                  \
static inline T ef_finish_##suffix(const T* acc, const T* row, const T* x,       \
                                   ptrdiff_t n_vec, ptrdiff_t n)                  \
{                                                                                 \
    T total = ((acc[0] + acc[4]) + (acc[2] + acc[6]))                             \
            + ((acc[1] + acc[5]) + (acc[3] + acc[7]));                            \
    for (ptrdiff_t j = n_vec; j < n; j++)                                         \
        total += row[j] * x[j];                                                   \
    return total;                                                                 \
}

EF_DEFINE_DOTS(float, ef_f32x8, f32)
EF_DEFINE_DOTS(double, ef_f64x8, f64)

/* Memory read-bandwidth probe for the benchmarks: sums n floats (n a multiple
 * of 64) as 8 concurrent sequential streams, 8 lanes each. */
static inline float ef_sum_8_streams_f32(const float* data, ptrdiff_t n)
{
    ptrdiff_t part = n / 8, j;
    ef_f32x8 a[8] = {{0}};
    for (j = 0; j < part; j += EF_LANES)
        for (int s = 0; s < 8; s++)
            a[s] += EF_LOAD(ef_f32x8, data + s * part + j);
    for (int s = 1; s < 8; s++) a[0] += a[s];
    return ((a[0][0] + a[0][4]) + (a[0][2] + a[0][6])) + ((a[0][1] + a[0][5]) + (a[0][3] + a[0][7]));
}

#endif /* EAGLE_FAST_DOT_KERNELS_H */
