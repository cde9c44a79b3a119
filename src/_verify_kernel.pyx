# Tree verification kernels: greedy walk and lossless sampling over a DraftTree.
#
# The target's logits are an (n, V) matrix, row i for the token after node i.
# Only the rows the walk reaches are read:
#   greedy    one row per node reached (the root, then every child whose token
#             is its parent row's argmax): a max pass (also the finiteness
#             check), then a short pass for the first index holding the max;
#   sampling  per visited row a max pass, then one pass writing exp((x - m)/T)
#             into a double scratch and summing it (top-k: a quickselect on a
#             copy first; top-p: a sort of the surviving entries); rejections
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
from libc.math cimport INFINITY, exp
from libc.stdint cimport int64_t
from libc.stdlib cimport free, malloc, qsort

import numpy as np

ctypedef fused qfloat:
    float
    double


cdef struct ValueIndex:
    double value
    int64_t index


cdef int rank_desc(const void* a, const void* b) noexcept nogil:
    # Larger value first; equal values keep the lower token id first.
    cdef const ValueIndex* x = <const ValueIndex*> a
    cdef const ValueIndex* y = <const ValueIndex*> b
    if x.value > y.value:
        return -1
    if x.value < y.value:
        return 1
    return -1 if x.index < y.index else (1 if x.index > y.index else 0)


cdef inline bint row_max(const floating* row, Py_ssize_t V, double* out) noexcept nogil:
    """Max of the row into ``out``; False if the row holds NaN or +-inf.  Eight
    independent lanes, so the compiler can keep them in vector registers."""
    cdef floating m[8]
    cdef floating bad[8]
    cdef Py_ssize_t j, l, V8 = V - V % 8
    cdef floating v, best
    cdef floating total_bad = 0
    for l in range(8):
        m[l] = row[0]
        bad[l] = 0
    for j in range(0, V8, 8):
        for l in range(8):
            v = row[j + l]
            m[l] = v if v > m[l] else m[l]
            bad[l] += v - v          # NaN iff v is NaN or infinite
    best = m[0]
    for l in range(8):
        best = m[l] if m[l] > best else best
        total_bad += bad[l]
    for j in range(V8, V):
        v = row[j]
        best = v if v > best else best
        total_bad += v - v
    out[0] = best
    return total_bad == 0


cdef inline int64_t row_argmax(const floating* row, Py_ssize_t V, bint* ok) noexcept nogil:
    """Lowest index of the row's maximum; ``ok`` false on a non-finite entry."""
    cdef double m
    cdef Py_ssize_t j
    ok[0] = row_max(row, V, &m)
    if not ok[0]:
        return 0
    for j in range(V):
        if row[j] == m:
            return j
    return 0


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


cdef bint warp_row(const floating* row, Py_ssize_t V, double inv_t, Py_ssize_t top_k,
                   double top_p, double* p, double* scratch, ValueIndex* pairs,
                   double* z_out) noexcept nogil:
    """Unnormalised target probabilities of one row into p (their sum into z_out):
    exp((x - max) / T), then top-k (keep every entry >= the k-th largest),
    then top-p (keep an entry iff the mass ranked above it is < top_p; ranked
    by probability, ties to the lower id).  False on a non-finite entry."""
    cdef double m, z = 0.0, threshold = -INFINITY, above, limit
    cdef Py_ssize_t j, count
    if not row_max(row, V, &m):
        return False
    if 0 < top_k < V:
        for j in range(V):
            scratch[j] = row[j]
        threshold = kth_largest(scratch, V, top_k)
        for j in range(V):
            if row[j] >= threshold:
                p[j] = exp((row[j] - m) * inv_t)
                z += p[j]
            else:
                p[j] = 0.0
    else:
        for j in range(V):
            p[j] = exp((row[j] - m) * inv_t)
            z += p[j]
    if top_p < 1.0:
        count = 0
        for j in range(V):
            if p[j] > 0:
                pairs[count].value = p[j]
                pairs[count].index = j
                count += 1
        qsort(pairs, count, sizeof(ValueIndex), rank_desc)
        above = 0.0
        limit = top_p * z
        for j in range(count):
            if above >= limit:
                p[pairs[j].index] = 0.0
            else:
                above += pairs[j].value
        z = 0.0
        for j in range(V):
            z += p[j]
    z_out[0] = z
    return True


cdef inline double mass(const double* p, Py_ssize_t V) noexcept nogil:
    cdef double z = 0.0
    cdef Py_ssize_t j
    for j in range(V):
        z += p[j]
    return z


cdef int64_t draw(const double* p, Py_ssize_t V, double z, double u) noexcept nogil:
    """Inverse CDF: the first token whose cumulative weight exceeds u * z."""
    cdef double target = u * z, acc = 0.0
    cdef Py_ssize_t j
    cdef int64_t last = 0
    for j in range(V):
        if p[j] > 0:
            acc += p[j]
            last = j
            if acc > target:
                return j
    return last  # u * z at the very top, by rounding


cdef int64_t sample_one(const int64_t* tokens, const int64_t* parents,
                        const int64_t* offsets, const int64_t* child_ids, Py_ssize_t n,
                        const floating* logits, Py_ssize_t V, const qfloat* q, bint has_q,
                        double inv_t, Py_ssize_t top_k, double top_p, const double* u,
                        double* p, double* scratch, ValueIndex* pairs,
                        int64_t* path, int64_t* path_len, int64_t* next_token) noexcept nogil:
    """One verification of a tree by sampling (see eagle_fast.speculative.verify).
    Returns -1, or the node whose row is not finite."""
    cdef Py_ssize_t node = 0, length = 1, k = 0, ci, cj, ck, t
    cdef int64_t c, x, tok, accepted
    cdef double z, z_old, removed, denom, qx, v, new_z, inv_z, inv_denom
    cdef bint dup, seen
    cdef const qfloat* qrow
    path[0] = 0
    while True:
        if not warp_row(logits + node * V, V, inv_t, top_k, top_p, p, scratch, pairs, &z):
            return node
        accepted = -1
        for ci in range(offsets[node], offsets[node + 1]):
            c = child_ids[ci]
            x = tokens[c]
            if not has_q:
                # Deterministic tree (EAGLE-2): accept x with probability p(x);
                # else drop x from p (renormalisation = the running mass z).
                if u[k] * z < p[x]:
                    accepted = c
                    k += 1
                    break
                k += 1
                z_old = z
                z -= p[x]
                p[x] = 0.0
                if z <= 1e-9 * z_old:  # cancellation: sum the rest afresh
                    z = mass(p, V)
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
            inv_z = 1.0 / z
            inv_denom = 1.0 / denom
            new_z = 0.0
            for t in range(V):
                v = p[t] * inv_z - qrow[t] * inv_denom
                v = v if v > 0 else 0.0
                p[t] = v
                new_z += v
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
    next_token[0] = draw(p, V, z, u[n - 1])
    return -1


def sample(const int64_t[::1] tokens, const int64_t[::1] parents,
           const int64_t[::1] offsets, const int64_t[::1] child_ids,
           const floating[:, ::1] logits, const qfloat[:, ::1] draft_probs, bint has_q,
           double temperature, Py_ssize_t top_k, double top_p,
           const double[:, ::1] uniforms, int64_t[:, ::1] paths,
           int64_t[::1] lengths, int64_t[::1] next_tokens):
    """Run ``uniforms.shape[0]`` sampling verifications of one tree (row r of
    ``uniforms`` drives run r) into paths (N, max_depth + 1, pre-filled with -1),
    lengths (N,) and next_tokens (N,).  Returns -1, or the first node whose
    logits row is not finite."""
    cdef Py_ssize_t n = tokens.shape[0], V = logits.shape[1], r
    cdef Py_ssize_t n_runs = uniforms.shape[0]
    cdef int64_t bad = -1
    cdef double inv_t = 1.0 / temperature
    cdef double* p = <double*> malloc(V * sizeof(double))
    cdef double* scratch = <double*> malloc(V * sizeof(double))
    cdef ValueIndex* pairs = <ValueIndex*> malloc(V * sizeof(ValueIndex))
    if p == NULL or scratch == NULL or pairs == NULL:
        free(p)
        free(scratch)
        free(pairs)
        raise MemoryError()
    with nogil:
        for r in range(n_runs):
            bad = sample_one(&tokens[0], &parents[0], &offsets[0], &child_ids[0], n,
                             &logits[0, 0], V, &draft_probs[0, 0], has_q,
                             inv_t, top_k, top_p, &uniforms[r, 0], p, scratch, pairs,
                             &paths[r, 0], &lengths[r], &next_tokens[r])
            if bad >= 0:
                break
    free(p)
    free(scratch)
    free(pairs)
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
            a = row_argmax(&logits[node, 0], V, &ok)
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
