# OpenMP shim shared by every kernel (after scikit-learn's _openmp_helpers).
# The same kernel source builds with and without OpenMP: without it the stubs
# report a single thread and Cython's prange loops run serially.

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define EAGLE_FAST_OPENMP 1
    #else
    #define EAGLE_FAST_OPENMP 0
    static int omp_get_max_threads(void) { return 1; }
    #endif
    """
    bint EAGLE_FAST_OPENMP
    int omp_get_max_threads() noexcept nogil
