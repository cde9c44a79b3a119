/* Row passes of the verification kernel (_verify_kernel.pyx), in GCC/Clang
 * vector extensions so that they vectorize without -ffast-math (lanes are
 * explicit, reductions happen in a fixed order at the end):
 *
 *   ef_row_argmax_<t>(row, n, &max, &index) -> 1, or 0 on NaN / +-inf
 *       one pass: max, first index of the max (lowest id on ties), and a
 *       finiteness check (v - v is NaN exactly for NaN and infinities);
 *   ef_exp_shift_<t>(row, n, m, inv_t, p) -> sum
 *       p[j] = exp((row[j] - m) * inv_t) (double), and their sum, one pass;
 *   ef_exp_sum_<t>(row, n, m, inv_t) -> the same sum, nothing stored;
 *   ef_exp1(x) -> the same exp of one argument;
 *   ef_sum_f64(p, n), ef_residual_<q>(p, q, n, inv_z, inv_denom) -> sum
 *       p[j] = max(p[j] * inv_z - q[j] * inv_denom, 0) and the new sum.
 *
 * exp is a double-precision vector exp for arguments <= 0 (the only ones a
 * shifted softmax needs; float32 rows are widened first): x = n ln2 + r,
 * |r| <= ln2 / 2, exp(r) by its degree-12 Taylor polynomial (relative error
 * < 2e-16 before rounding), times 2^n built in the exponent bits;
 * x < -708.39 gives 0.  (A float32 exp was tried: ~20% faster on a loaded
 * machine, where the pass is bound by the stores of p, at 1e-6 relative
 * error -- not worth disagreeing with the float64 fallback.)
 */
#ifndef EAGLE_FAST_VERIFY_KERNELS_H
#define EAGLE_FAST_VERIFY_KERNELS_H

#include <stddef.h>
#include <string.h>

#if !(defined(__GNUC__) || defined(__clang__))
#error "eagle_fast's verification kernels need GCC or Clang vector extensions"
#endif

typedef float ef_vf8 __attribute__((vector_size(32)));
typedef int ef_vi8 __attribute__((vector_size(32)));
typedef double ef_vd4 __attribute__((vector_size(32)));
typedef long long ef_vl4 __attribute__((vector_size(32)));
typedef float ef_vf4 __attribute__((vector_size(16)));

#define EF_VLOAD(V, p) ({ V v_; memcpy(&v_, (p), sizeof(v_)); v_; })
#define EF_VSTORE(p, v) do { __typeof__(v) s_ = (v); memcpy((p), &s_, sizeof(s_)); } while (0)
#define EF_SELECT(M, T, mask, a, b) ((T) (((M) (a) & (mask)) | ((M) (b) & ~(mask))))

/* -- argmax + finiteness ------------------------------------------------- */

/* One pass over a row of T, LANES lanes of vector type VT with index lanes VI
 * (the same width): the lanes keep their own max and its first index, merged
 * in lane order at the end (ties to the lower index). */
#define EF_ROW_ARGMAX(name, T, VT, VI, LANES)                                            \
static inline int name(const T* row, ptrdiff_t n, double* max_out, ptrdiff_t* index_out) \
{                                                                                         \
    ptrdiff_t j, nv = n - n % (LANES);                                                    \
    T best = row[0];                                                                      \
    ptrdiff_t best_index = 0;                                                             \
    T bad_sum = 0;                                                                        \
    if (nv >= (LANES)) {                                                                  \
        VT m = EF_VLOAD(VT, row);                                                         \
        VI idx, step;                                                                     \
        for (int l = 0; l < (LANES); l++) {                                               \
            idx[l] = l;                                                                   \
            step[l] = (LANES);                                                            \
        }                                                                                 \
        VI lane = idx;                                                                    \
        VT bad = m - m;                                                                   \
        for (j = (LANES); j < nv; j += (LANES)) {                                         \
            VT v = EF_VLOAD(VT, row + j);                                                 \
            lane += step;                                                                 \
            VI gt = v > m;                                                                \
            m = EF_SELECT(VI, VT, gt, v, m);                                              \
            idx = (idx & ~gt) | (lane & gt);                                              \
            bad += v - v;                                                                 \
        }                                                                                 \
        best = m[0];                                                                      \
        best_index = (ptrdiff_t) idx[0];                                                  \
        for (int l = 1; l < (LANES); l++) {                                               \
            if (m[l] > best || (m[l] == best && idx[l] < best_index)) {                   \
                best = m[l];                                                              \
                best_index = (ptrdiff_t) idx[l];                                          \
            }                                                                             \
        }                                                                                 \
        for (int l = 0; l < (LANES); l++)                                                 \
            bad_sum += bad[l];                                                            \
    } else {                                                                              \
        nv = 0;                                                                           \
    }                                                                                     \
    for (j = nv; j < n; j++) {                                                            \
        T v = row[j];                                                                     \
        bad_sum += v - v;                                                                 \
        if (v > best) {                                                                   \
            best = v;                                                                     \
            best_index = j;                                                               \
        }                                                                                 \
    }                                                                                     \
    *max_out = best;                                                                      \
    *index_out = best_index;                                                              \
    return bad_sum == 0;                                                                  \
}

EF_ROW_ARGMAX(ef_row_argmax_f32, float, ef_vf8, ef_vi8, 8)
EF_ROW_ARGMAX(ef_row_argmax_f64, double, ef_vd4, ef_vl4, 4)

/* -- exp ------------------------------------------------------------------ */

static inline ef_vd4 ef_exp_nonpositive(ef_vd4 x)
{
    const ef_vd4 lowest = {-708.39, -708.39, -708.39, -708.39};
    const double magic = 6755399441055744.0;  /* 1.5 * 2^52: rounds to an integer */
    const ef_vd4 vmagic = {magic, magic, magic, magic};
    ef_vl4 under = x < lowest;
    x = EF_SELECT(ef_vl4, ef_vd4, under, lowest, x);
    ef_vd4 t = x * 1.4426950408889634 + vmagic;
    ef_vd4 k = t - vmagic;                                /* round(x / ln 2) */
    ef_vd4 r = (x - k * 6.93147180369123816490e-01) - k * 1.90821492927058770002e-10;
    ef_vd4 p = r * (1.0 / 479001600.0) + (1.0 / 39916800.0);
    p = p * r + (1.0 / 3628800.0);
    p = p * r + (1.0 / 362880.0);
    p = p * r + (1.0 / 40320.0);
    p = p * r + (1.0 / 5040.0);
    p = p * r + (1.0 / 720.0);
    p = p * r + (1.0 / 120.0);
    p = p * r + (1.0 / 24.0);
    p = p * r + (1.0 / 6.0);
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    ef_vl4 bits, magic_bits;
    memcpy(&bits, &t, sizeof(bits));
    memcpy(&magic_bits, &vmagic, sizeof(magic_bits));
    ef_vl4 scale_bits = ((bits - magic_bits) + 1023) << 52;
    ef_vd4 scale;
    memcpy(&scale, &scale_bits, sizeof(scale));
    ef_vd4 zero = {0.0, 0.0, 0.0, 0.0};
    return EF_SELECT(ef_vl4, ef_vd4, under, zero, p * scale);
}

/* One lane group of 4 through exp, the tail padded with a huge negative. */
static inline double ef_exp_tail(const double* shifted, ptrdiff_t count, double* p)
{
    ef_vd4 x = {-1e300, -1e300, -1e300, -1e300};
    double e[4];
    double sum = 0.0;
    for (ptrdiff_t l = 0; l < count; l++)
        x[l] = shifted[l];
    EF_VSTORE(e, ef_exp_nonpositive(x));
    for (ptrdiff_t l = 0; l < count; l++) {
        p[l] = e[l];
        sum += e[l];
    }
    return sum;
}

/* p[j] = exp((row[j] - m) * inv_t) and their sum; LOADX widens 4 elements. */
#define EF_EXP_SHIFT(name, T, LOADX)                                                    \
static inline double name(const T* row, ptrdiff_t n, double m, double inv_t, double* p) \
{                                                                                        \
    ptrdiff_t j, n4 = n - n % 4;                                                         \
    ef_vd4 acc = {0.0, 0.0, 0.0, 0.0};                                                   \
    const ef_vd4 vm = {m, m, m, m};                                                      \
    double tail[4];                                                                      \
    for (j = 0; j < n4; j += 4) {                                                        \
        ef_vd4 e = ef_exp_nonpositive(((LOADX) - vm) * inv_t);                           \
        EF_VSTORE(p + j, e);                                                             \
        acc += e;                                                                        \
    }                                                                                    \
    for (j = n4; j < n; j++)                                                             \
        tail[j - n4] = ((double) row[j] - m) * inv_t;                                    \
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ef_exp_tail(tail, n - n4, p + n4);  \
}

EF_EXP_SHIFT(ef_exp_shift_f32, float, __builtin_convertvector(EF_VLOAD(ef_vf4, row + j), ef_vd4))
EF_EXP_SHIFT(ef_exp_shift_f64, double, EF_VLOAD(ef_vd4, row + j))

/* The same exp of one argument (lanes are independent: identical values). */
static inline double ef_exp1(double x)
{
    ef_vd4 v = {x, x, x, x};
    return ef_exp_nonpositive(v)[0];
}

/* sum_j exp((row[j] - m) * inv_t) without storing the terms. */
#define EF_EXP_SUM(name, T, LOADX)                                                      \
static inline double name(const T* row, ptrdiff_t n, double m, double inv_t)            \
{                                                                                        \
    ptrdiff_t j, n4 = n - n % 4;                                                         \
    ef_vd4 acc = {0.0, 0.0, 0.0, 0.0};                                                   \
    const ef_vd4 vm = {m, m, m, m};                                                      \
    double tail[4], ignored[4];                                                          \
    for (j = 0; j < n4; j += 4)                                                          \
        acc += ef_exp_nonpositive(((LOADX) - vm) * inv_t);                               \
    for (j = n4; j < n; j++)                                                             \
        tail[j - n4] = ((double) row[j] - m) * inv_t;                                    \
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ef_exp_tail(tail, n - n4, ignored); \
}

EF_EXP_SUM(ef_exp_sum_f32, float, __builtin_convertvector(EF_VLOAD(ef_vf4, row + j), ef_vd4))
EF_EXP_SUM(ef_exp_sum_f64, double, EF_VLOAD(ef_vd4, row + j))

/* -- sums and residuals ---------------------------------------------------- */

static inline double ef_sum_f64(const double* p, ptrdiff_t n)
{
    ptrdiff_t j, n4 = n - n % 4;
    ef_vd4 acc = {0.0, 0.0, 0.0, 0.0};
    double sum;
    for (j = 0; j < n4; j += 4)
        acc += EF_VLOAD(ef_vd4, p + j);
    sum = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for (j = n4; j < n; j++)
        sum += p[j];
    return sum;
}

#define EF_RESIDUAL(name, Q, LOADQ)                                                     \
static inline double name(double* p, const Q* q, ptrdiff_t n, double inv_z,             \
                          double inv_denom)                                             \
{                                                                                        \
    ptrdiff_t j, n4 = n - n % 4;                                                         \
    ef_vd4 acc = {0.0, 0.0, 0.0, 0.0}, zero = {0.0, 0.0, 0.0, 0.0};                      \
    double sum;                                                                          \
    for (j = 0; j < n4; j += 4) {                                                        \
        ef_vd4 v = EF_VLOAD(ef_vd4, p + j) * inv_z - (LOADQ) * inv_denom;                \
        v = EF_SELECT(ef_vl4, ef_vd4, v > zero, v, zero);                                \
        EF_VSTORE(p + j, v);                                                             \
        acc += v;                                                                        \
    }                                                                                    \
    sum = (acc[0] + acc[1]) + (acc[2] + acc[3]);                                         \
    for (j = n4; j < n; j++) {                                                           \
        double v = p[j] * inv_z - (double) q[j] * inv_denom;                             \
        v = v > 0 ? v : 0.0;                                                             \
        p[j] = v;                                                                        \
        sum += v;                                                                        \
    }                                                                                    \
    return sum;                                                                          \
}

EF_RESIDUAL(ef_residual_f32, float, __builtin_convertvector(EF_VLOAD(ef_vf4, q + j), ef_vd4))
EF_RESIDUAL(ef_residual_f64, double, EF_VLOAD(ef_vd4, q + j))

#endif
