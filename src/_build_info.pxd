# Facts about how a kernel module was compiled, for eagle_fast.build_info().
# EAGLE_FAST_COMPILE_FLAGS and EAGLE_FAST_COMPILER are defined by CMakeLists.txt.

cdef extern from *:
    """
    #ifndef EAGLE_FAST_COMPILE_FLAGS
    #define EAGLE_FAST_COMPILE_FLAGS ""
    #endif
    #ifndef EAGLE_FAST_COMPILER
    #define EAGLE_FAST_COMPILER "unknown"
    #endif
    #if defined(__AVX512F__)
    #define EAGLE_FAST_SIMD "avx512"
    #elif defined(__AVX2__) && defined(__FMA__)
    #define EAGLE_FAST_SIMD "avx2-fma"
    #elif defined(__SSE2__) || defined(_M_X64)
    #define EAGLE_FAST_SIMD "sse2"
    #elif defined(__ARM_NEON)
    #define EAGLE_FAST_SIMD "neon"
    #else
    #define EAGLE_FAST_SIMD "generic"
    #endif
    """
    const char* EAGLE_FAST_COMPILE_FLAGS
    const char* EAGLE_FAST_COMPILER
    const char* EAGLE_FAST_SIMD
