/* Small SIMD helpers of the decoder-layer kernel (_layer_kernel.pyx), beside
 * the dot-product micro-kernels of _dot_kernels.h (whose lane types they use):
 *   ef_axpy_<w>(out, v, w, n)   out[j] += w * v[j] for j < n (8 lanes at a time,
 *                               then the tail one by one). */
#ifndef EAGLE_FAST_LAYER_HELPERS_H
#define EAGLE_FAST_LAYER_HELPERS_H

#include "_dot_kernels.h"

#define EF_DEFINE_AXPY(T, V, suffix)                                              \
static inline void ef_axpy_##suffix(T* out, const T* v, T w, ptrdiff_t n)         \
{                                                                                 \
    ptrdiff_t j = 0;                                                              \
    V wv = (V) {0} + w;                                                           \
    for (; j + EF_LANES <= n; j += EF_LANES)                                      \
        EF_STORE(V, out + j, EF_LOAD(V, out + j) + wv * EF_LOAD(V, v + j));       \
    for (; j < n; j++)                                                            \
        out[j] += w * v[j];                                                       \
}

EF_DEFINE_AXPY(float, ef_f32x8, f32)
EF_DEFINE_AXPY(double, ef_f64x8, f64)

#endif /* EAGLE_FAST_LAYER_HELPERS_H */
