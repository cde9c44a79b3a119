/* Skip-ahead scan of the row top-k kernel (_tree_kernel.pyx).
 *
 * ef_skip_<t>(row, j, n, thr) returns the first index i in [j, n) with
 * row[i] > thr or row[i] NaN, or n if there is none.  A streaming top-k keeps
 * its k best in a small sorted buffer and compares every entry with the
 * buffer's smallest (thr); almost every entry of a long row loses, so the scan
 * compares 16 floats (8 doubles) per step with one vector test, in GCC/Clang
 * vector extensions (AVX on x86-64-v3, SSE on the baseline, NEON on arm64),
 * and falls back to the entries one by one only inside a block that has a hit.
 * Ordered comparisons only: no -ffast-math, NaN stays detectable (x != x).
 */
#ifndef EAGLE_FAST_TOPK_SKIP_H
#define EAGLE_FAST_TOPK_SKIP_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if !(defined(__GNUC__) || defined(__clang__))
#error "eagle_fast's top-k scan needs GCC or Clang vector extensions"
#endif

typedef float ef_sk_f32x8 __attribute__((vector_size(32)));
typedef int32_t ef_sk_i32x8 __attribute__((vector_size(32)));
typedef double ef_sk_f64x4 __attribute__((vector_size(32)));
typedef int64_t ef_sk_i64x4 __attribute__((vector_size(32)));

static inline int ef_sk_any(const void* mask) {
    uint64_t w[4];
    memcpy(w, mask, sizeof(w));
    return (w[0] | w[1] | w[2] | w[3]) != 0;
}

static inline ptrdiff_t ef_skip_f32(const float* row, ptrdiff_t j, ptrdiff_t n, float thr) {
    const ef_sk_f32x8 t = (ef_sk_f32x8){0, 0, 0, 0, 0, 0, 0, 0} + thr;
    for (; j + 16 <= n; j += 16) {
        ef_sk_f32x8 a, b;
        memcpy(&a, row + j, sizeof(a));
        memcpy(&b, row + j + 8, sizeof(b));
        ef_sk_i32x8 m = (a > t) | (a != a) | (b > t) | (b != b);
        if (ef_sk_any(&m)) break;
    }
    for (; j < n; j++) {
        float x = row[j];
        if (x > thr || x != x) return j;
    }
    return n;
}

static inline ptrdiff_t ef_skip_f64(const double* row, ptrdiff_t j, ptrdiff_t n, double thr) {
    const ef_sk_f64x4 t = (ef_sk_f64x4){0, 0, 0, 0} + thr;
    for (; j + 8 <= n; j += 8) {
        ef_sk_f64x4 a, b;
        memcpy(&a, row + j, sizeof(a));
        memcpy(&b, row + j + 4, sizeof(b));
        ef_sk_i64x4 m = (a > t) | (a != a) | (b > t) | (b != b);
        if (ef_sk_any(&m)) break;
    }
    for (; j < n; j++) {
        double x = row[j];
        if (x > thr || x != x) return j;
    }
    return n;
}

#endif
