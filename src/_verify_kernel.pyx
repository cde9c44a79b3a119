# Tree verification kernels: greedy walk and lossless sampling over a DraftTree.
#
# The target's logits are an (n, V) matrix, row i for the token after node i.
# Only the rows the walk reaches are read:
#   greedy    one row per node reached (the root, then every child whose token
#             is its parent row's argmax): a max pass (also the finiteness
#             check), then a short pass for the first index holding the max;
#   sampling  per visited row a max pass, then one exp pass: for deterministic
#             trees without top-k/top-p it only sums exp((x - m)/T) (p(x) of a
#             child is computed when tried; the final draw recomputes exp block
#             by block); otherwise it writes p into a double scratch (top-k: a
#             quickselect on a copy; top-p: a weighted quickselect of the cut); rejections
#             of a sampled tree's children cost one pass each (p - q); the final
#             token one cumulative pass with early exit.
# Rows are float32 or float64 (fused), read in place; draft probabilities too.
# Random numbers come in from Python (numpy Generator) as an (N, n) matrix of
# uniforms: verification k uses row k -- column j for its j-th acceptance test,
# column n - 1 for the final token -- so a batch of N runs equals N single runs.
#
# Callers (eagle_fast.speculative.verify) pass validated, C-contiguous data:
# tree arrays from a DraftTree, tokens < V.

from cython cimport floating
from libc.stdint cimport int64_t
from libc.stdlib cimport free, malloc

import numpy as np

cdef enum:
    DRAW_BLOCK = 256   # entries summed at a time when drawing the final token
    SMALL_TOP_K = 64   # top-k by one insertion pass up to here, else quickselect


ctypedef fused qfloat:
    float
    double


cdef extern from "_verify_kernels.h" nogil:
    bint ef_row_argmax_f32(const float* row, Py_ssize_t n, double* max_out,
                           Py_ssize_t* index_out)
    bint ef_row_argmax_f64(const double* row, Py_ssize_t n, double* max_out,
                           Py_ssize_t* index_out)
    double ef_exp_shift_f32(const float* row, Py_ssize_t n, double m, double inv_t, double* p)
    double ef_exp_shift_f64(const double* row, Py_ssize_t n, double m, double inv_t, double* p)
    double ef_sum_f64(const double* p, Py_ssize_t n)
    double ef_exp_sum_f32(const float* row, Py_ssize_t n, double m, double inv_t)
    double ef_exp_sum_f64(const double* row, Py_ssize_t n, double m, double inv_t)
    double ef_exp1(double x)
    double ef_residual_f32(double* p, const float* q, Py_ssize_t n, double inv_z,
                           double inv_denom)
    double ef_residual_f64(double* p, const double* q, Py_ssize_t n, double inv_z,
                           double inv_denom)


cdef inline bint row_argmax(const floating* row, Py_ssize_t V, double* m,
                            Py_ssize_t* index) noexcept nogil:
    """Max and first index of the max of the row; False on NaN or +-inf."""
    if floating is float:
        return ef_row_argmax_f32(row, V, m, index)
    else:
        return ef_row_argmax_f64(row, V, m, index)


cdef double kth_largest(double* a, Py_ssize_t n, Py_ssize_t k) noexcept nogil:
    """The k-th largest value (1-based) of a[0:n]; reorders a (Hoare quickselect)."""
    cdef Py_ssize_t lo = 0, hi = n - 1, target = k - 1, i, j
    cdef double pivot, x, y, z, t
    while lo < hi:
        x = a[lo]
        y = a[lo + (hi - lo) // 2]
        z = a[hi]
        if x < y:
            x, y = y, x
        if y < z:
            y, z = z, y
            if x < y:
                x, y = y, x
        pivot = y  # median of three
        i = lo
        j = hi
        while i <= j:
            while a[i] > pivot:
                i += 1
            while a[j] < pivot:
                j -= 1
            if i <= j:
                t = a[i]
                a[i] = a[j]
                a[j] = t
                i += 1
                j -= 1
        if target <= j:
            hi = j
        elif target >= i:
            lo = i
        else:
            return a[target]
    return a[lo]


cdef double topp_cutoff(double* a, Py_ssize_t n, double limit) noexcept nogil:
    """The smallest value v of a[0:n] whose strictly larger entries weigh < limit
    (the last value top-p keeps); reorders a.  A weighted quickselect with a
    three-way partition: expected O(n), where a sort would be O(n log n)."""
    cdef Py_ssize_t lo = 0, hi = n, lt, gt, i
    cdef double above = 0.0, best = a[0], pivot, x, y, z, t, mass_gt, mass_eq
    while lo < hi:
        x = a[lo]
        y = a[lo + (hi - lo) // 2]
        z = a[hi - 1]
        if x < y:
            x, y = y, x
        if y < z:
            y, z = z, y
            if x < y:
                x, y = y, x
        pivot = y
        lt = lo
        i = lo
        gt = hi
        mass_gt = 0.0
        mass_eq = 0.0
        while i < gt:          # [lo, lt) > pivot, [lt, i) == pivot, [gt, hi) < pivot
            t = a[i]
            if t > pivot:
                a[i] = a[lt]
                a[lt] = t
                mass_gt += t
                lt += 1
                i += 1
            elif t < pivot:
                gt -= 1
                a[i] = a[gt]
                a[gt] = t
            else:
                mass_eq += t
                i += 1
        if above + mass_gt < limit:
            best = pivot       # kept; look for a smaller kept value below it
            above += mass_gt + mass_eq
            lo = gt
        else:
            hi = lt            # the cut lies among the larger values
    return best


cdef double kth_largest_small(const floating* row, Py_ssize_t V, Py_ssize_t k,
                              double* top) noexcept nogil:
    """The k-th largest entry of the row (k <= SMALL_TOP_K, k < V) in one pass:
    a sorted list of the k best so far; an entry only costs a comparison
    unless it beats the current k-th."""
    cdef Py_ssize_t j, pos
    cdef double v
    for j in range(k):
        v = row[j]
        pos = j
        while pos > 0 and top[pos - 1] < v:
            top[pos] = top[pos - 1]
            pos -= 1
        top[pos] = v
    for j in range(k, V):
        v = row[j]
        if v > top[k - 1]:
            pos = k - 1
            while pos > 0 and top[pos - 1] < v:
                top[pos] = top[pos - 1]
                pos -= 1
            top[pos] = v
    return top[k - 1]


cdef bint warp_row(const floating* row, Py_ssize_t V, double inv_t, Py_ssize_t top_k,
                   double top_p, double* p, double* scratch, int64_t* kept,
                   double* z_out) noexcept nogil:
    """Unnormalised target probabilities of one row into p (their sum into z_out):
    exp((x - max) / T), then top-k (keep every entry >= the k-th largest),
    then top-p (keep an entry iff the mass ranked above it is < top_p; ranked
    by probability, ties to the lower id).  False on a non-finite entry.
    With top-k, only the kept entries go through exp; top-p works on the list
    of positive entries (``kept``, in id order) and a copy of their values."""
    cdef double m, z, threshold, above, limit, cutoff, v
    cdef Py_ssize_t j, i, count = 0, index
    if not row_argmax(row, V, &m, &index):
        return False
    if 0 < top_k < V:
        if top_k <= SMALL_TOP_K:
            threshold = kth_largest_small(row, V, top_k, scratch)
        else:
            for j in range(V):
                scratch[j] = row[j]
            threshold = kth_largest(scratch, V, top_k)
        z = 0.0
        for j in range(V):
            p[j] = 0.0
        for j in range(V):
            if row[j] >= threshold:
                v = ef_exp1((row[j] - m) * inv_t)
                p[j] = v
                z += v
                kept[count] = j
                count += 1
    else:
        z = exp_shift(row, V, m, inv_t, p)
        if top_p < 1.0:
            for j in range(V):
                if p[j] > 0:
                    kept[count] = j
                    count += 1
    if top_p < 1.0:
        for i in range(count):
            scratch[i] = p[kept[i]]
        limit = top_p * z
        cutoff = topp_cutoff(scratch, count, limit)
        above = 0.0
        for i in range(count):
            if p[kept[i]] > cutoff:
                above += p[kept[i]]
        z = 0.0
        for i in range(count):   # ties at the cutoff: lower ids first, while mass < limit
            j = kept[i]
            if p[j] < cutoff:
                p[j] = 0.0
            elif p[j] == cutoff:
                if above < limit:
                    above += p[j]
                else:
                    p[j] = 0.0
            z += p[j]
    z_out[0] = z
    return True


cdef int64_t draw(const double* p, Py_ssize_t V, double z, double u) noexcept nogil:
    """Inverse CDF: the first token whose cumulative weight exceeds u * z.
    Whole blocks are skipped by their (vectorized) sums, then the block that
    crosses the target is scanned."""
    cdef double target = u * z, acc = 0.0, block_sum
    cdef Py_ssize_t j, start = 0, width
    cdef int64_t last = -1
    while start < V:
        width = DRAW_BLOCK if V - start > DRAW_BLOCK else V - start
        block_sum = ef_sum_f64(p + start, width)
        if acc + block_sum > target:
            for j in range(start, start + width):
                if p[j] > 0:
                    acc += p[j]
                    last = j
                    if acc > target:
                        return j
        else:
            acc += block_sum
            if block_sum > 0:
                for j in range(start + width - 1, start - 1, -1):
                    if p[j] > 0:
                        last = j
                        break
        start += width
    return last if last >= 0 else 0  # u * z at the very top, by rounding


cdef inline double exp_sum(const floating* row, Py_ssize_t V, double m,
                           double inv_t) noexcept nogil:
    if floating is float:
        return ef_exp_sum_f32(row, V, m, inv_t)
    else:
        return ef_exp_sum_f64(row, V, m, inv_t)


cdef inline double exp_shift(const floating* row, Py_ssize_t V, double m, double inv_t,
                             double* p) noexcept nogil:
    if floating is float:
        return ef_exp_shift_f32(row, V, m, inv_t, p)
    else:
        return ef_exp_shift_f64(row, V, m, inv_t, p)


cdef inline bint is_dropped(const int64_t* dropped, Py_ssize_t n_dropped,
                            int64_t x) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n_dropped):
        if dropped[i] == x:
            return True
    return False


cdef int64_t draw_lazy(const floating* row, Py_ssize_t V, double m, double inv_t,
                       const int64_t* dropped, Py_ssize_t n_dropped, double z,
                       double u) noexcept nogil:
    """``draw`` over p[j] = exp((row[j] - m) / T), the dropped tokens at 0,
    without p in memory: block sums of exp, then the crossing block term by
    term (the same exp, so the same values)."""
    cdef double target = u * z, acc = 0.0, block_sum, e
    cdef Py_ssize_t j, i, start = 0, width
    cdef int64_t last = -1
    while start < V:
        width = DRAW_BLOCK if V - start > DRAW_BLOCK else V - start
        block_sum = exp_sum(row + start, width, m, inv_t)
        for i in range(n_dropped):
            if start <= dropped[i] < start + width and not is_dropped(dropped, i, dropped[i]):
                block_sum -= ef_exp1((row[dropped[i]] - m) * inv_t)
        if acc + block_sum > target:
            for j in range(start, start + width):
                if is_dropped(dropped, n_dropped, j):
                    continue
                e = ef_exp1((row[j] - m) * inv_t)
                if e > 0:
                    acc += e
                    last = j
                    if acc > target:
                        return j
        else:
            acc += block_sum
            if block_sum > 0:
                last = start + width - 1
                while last >= start and is_dropped(dropped, n_dropped, last):
                    last -= 1
        start += width
    return last if last >= 0 else 0


cdef int64_t sample_one(const int64_t* tokens, const int64_t* parents,
                        const int64_t* offsets, const int64_t* child_ids, Py_ssize_t n,
                        const floating* logits, Py_ssize_t V, const qfloat* q, bint has_q,
                        double inv_t, Py_ssize_t top_k, double top_p, const double* u,
                        double* p, double* scratch, int64_t* kept, int64_t* dropped,
                        int64_t* path, int64_t* path_len, int64_t* next_token) noexcept nogil:
    """One verification of a tree by sampling (see eagle_fast.speculative.verify).
    Returns -1, or the node whose row is not finite.

    Deterministic trees without top-k / top-p run *lazily*: p is never
    written out -- a row costs its argmax pass and one exp-sum pass; p(x) of a
    child is computed when it is tried, rejected tokens are listed in
    ``dropped`` (at most n), and the final draw recomputes exp block by block.
    Otherwise p is materialised by warp_row."""
    cdef Py_ssize_t node = 0, length = 1, k = 0, ci, cj, ck, n_dropped = 0, index, i
    cdef int64_t c, x, tok, accepted
    cdef double z, z_old, removed, denom, qx, new_z, px, m = 0.0
    cdef bint dup, seen
    cdef bint lazy_rows = (not has_q) and not (0 < top_k < V) and not (top_p < 1.0)
    cdef bint lazy = lazy_rows
    cdef const qfloat* qrow
    cdef const floating* row
    path[0] = 0
    while True:
        row = logits + node * V
        lazy = lazy_rows
        n_dropped = 0
        if lazy:
            if not row_argmax(row, V, &m, &index):
                return node
            z = exp_sum(row, V, m, inv_t)
        elif not warp_row(row, V, inv_t, top_k, top_p, p, scratch, kept, &z):
            return node
        accepted = -1
        for ci in range(offsets[node], offsets[node + 1]):
            c = child_ids[ci]
            x = tokens[c]
            if not has_q:
                # Deterministic tree (EAGLE-2): accept x with probability p(x);
                # else drop x from p (renormalisation = the running mass z).
                if lazy:
                    px = 0.0 if is_dropped(dropped, n_dropped, x) else ef_exp1(
                        (row[x] - m) * inv_t)
                else:
                    px = p[x]
                if u[k] * z < px:
                    accepted = c
                    k += 1
                    break
                k += 1
                z_old = z
                z -= px
                if lazy:
                    dropped[n_dropped] = x
                    n_dropped += 1
                else:
                    p[x] = 0.0
                if z <= 1e-9 * z_old:  # cancellation: sum the rest afresh
                    if lazy:           # (materialising p from here on)
                        exp_shift(row, V, m, inv_t, p)
                        for i in range(n_dropped):
                            p[dropped[i]] = 0.0
                        lazy = False
                    z = ef_sum_f64(p, V)
                    if z <= 0:
                        # Rounding only: all mass was on rejected tokens.
                        accepted = c
                        break
                continue
            # Sampled tree (EAGLE, first release): q_i = the child's draft row
            # with its earlier siblings' tokens removed, renormalised.
            qrow = q + c * V
            removed = 0.0
            dup = False
            for cj in range(offsets[node], ci):
                tok = tokens[child_ids[cj]]
                if tok == x:
                    dup = True
                    break
                seen = False
                for ck in range(offsets[node], cj):
                    if tokens[child_ids[ck]] == tok:
                        seen = True
                        break
                if not seen:
                    removed += qrow[tok]
            denom = 1.0 - removed
            if dup or denom <= 0 or qrow[x] <= 0:
                continue  # x could not have been drawn: not tried (as EAGLE)
            qx = qrow[x] / denom
            if u[k] * qx * z < p[x]:  # u < p(x) / q_i(x), with p = p / z
                accepted = c
                k += 1
                break
            k += 1
            # p <- max(p - q_i, 0), renormalised (earlier siblings' tokens have
            # p = 0 already: each was rejected, so p < q_i there).
            if qfloat is float:
                new_z = ef_residual_f32(p, qrow, V, 1.0 / z, 1.0 / denom)
            else:
                new_z = ef_residual_f64(p, qrow, V, 1.0 / z, 1.0 / denom)
            if new_z <= 0:
                # p == q_i up to rounding, where rejection has probability 0.
                accepted = c
                break
            z = new_z
        if accepted < 0:
            break
        path[length] = accepted
        length += 1
        node = accepted  # a leaf's next token comes from its own row, next round
    path_len[0] = length
    if lazy:
        next_token[0] = draw_lazy(row, V, m, inv_t, dropped, n_dropped, z, u[n - 1])
    else:
        next_token[0] = draw(p, V, z, u[n - 1])
    return -1


def sample(const int64_t[::1] tokens, const int64_t[::1] parents,
           const int64_t[::1] offsets, const int64_t[::1] child_ids,
           const floating[:, ::1] logits, const qfloat[:, ::1] draft_probs, bint has_q,
           double temperature, Py_ssize_t top_k, double top_p,
           const double[:, ::1] uniforms, int64_t[:, ::1] paths,
           int64_t[::1] lengths, int64_t[::1] next_tokens, double[::1] work):
    """Run ``uniforms.shape[0]`` sampling verifications of one tree (row r of
    ``uniforms`` drives run r) into paths (N, max_depth + 1, pre-filled with -1),
    lengths (N,) and next_tokens (N,).  ``work`` is scratch of >= 3 V doubles
    (the caller keeps it between calls: fresh pages would cost a page fault
    per 4 KiB).  Returns -1, or the first node whose logits row is not finite."""
    cdef Py_ssize_t n = tokens.shape[0], V = logits.shape[1], r
    cdef Py_ssize_t n_runs = uniforms.shape[0]
    cdef int64_t bad = -1
    cdef double inv_t = 1.0 / temperature
    if work.shape[0] < 3 * V:
        raise ValueError(f"work needs {3 * V} doubles, got {work.shape[0]}")
    cdef double* p = &work[0]
    cdef double* scratch = &work[V]
    cdef int64_t* kept = <int64_t*> &work[2 * V]
    cdef int64_t* dropped = <int64_t*> malloc(n * sizeof(int64_t))
    if dropped == NULL:
        raise MemoryError()
    with nogil:
        for r in range(n_runs):
            bad = sample_one(&tokens[0], &parents[0], &offsets[0], &child_ids[0], n,
                             &logits[0, 0], V, &draft_probs[0, 0], has_q,
                             inv_t, top_k, top_p, &uniforms[r, 0], p, scratch, kept, dropped,
                             &paths[r, 0], &lengths[r], &next_tokens[r])
            if bad >= 0:
                break
    free(dropped)
    return bad


def greedy(const int64_t[::1] tokens, const int64_t[::1] parents,
           const int64_t[::1] offsets, const int64_t[::1] child_ids,
           const floating[:, ::1] logits):
    """Greedy verification: returns (path, next_token, bad_row).  Walks from the
    root through children whose token is the parent row's argmax (first max);
    of the deepest nodes reached, keeps the one whose subtree holds the
    lowest-numbered leaf (= the first such path in retrieve_indices)."""
    cdef Py_ssize_t n = tokens.shape[0], V = logits.shape[1]
    cdef Py_ssize_t i, ci, head = 0, tail = 1, best, length
    cdef int64_t node, c, a
    cdef int64_t bad = -1
    cdef bint ok = True
    cdef double row_max
    cdef Py_ssize_t row_index
    path_array = np.empty(n, dtype=np.int64)
    cdef int64_t[::1] path = path_array
    cdef int64_t* work = <int64_t*> malloc(4 * n * sizeof(int64_t))
    if work == NULL:
        raise MemoryError()
    cdef int64_t* min_leaf = work
    cdef int64_t* queue = work + n
    cdef int64_t* depth = work + 2 * n
    cdef int64_t* best_arg = work + 3 * n
    with nogil:
        for i in range(n - 1, -1, -1):
            if offsets[i] == offsets[i + 1]:
                min_leaf[i] = i
            else:
                min_leaf[i] = n
                for ci in range(offsets[i], offsets[i + 1]):
                    c = child_ids[ci]
                    if min_leaf[c] < min_leaf[i]:
                        min_leaf[i] = min_leaf[c]
        queue[0] = 0
        depth[0] = 0
        while head < tail:
            node = queue[head]
            ok = row_argmax(&logits[node, 0], V, &row_max, &row_index)
            a = row_index
            if not ok:
                bad = node
                break
            best_arg[head] = a
            for ci in range(offsets[node], offsets[node + 1]):
                c = child_ids[ci]
                if tokens[c] == a:
                    queue[tail] = c
                    depth[tail] = depth[head] + 1
                    tail += 1
            head += 1
        best = 0
        if bad < 0:
            for i in range(1, tail):
                if depth[i] > depth[best] or (depth[i] == depth[best]
                                              and min_leaf[queue[i]] < min_leaf[queue[best]]):
                    best = i
            length = depth[best] + 1
            node = queue[best]
            for i in range(length - 1, -1, -1):
                path[i] = node
                node = parents[node]
    next_token = int(best_arg[best]) if bad < 0 else -1
    free(work)
    if bad >= 0:
        return None, -1, int(bad)
    return path_array[:length], next_token, -1
