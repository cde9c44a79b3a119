"""NumPy fallback of the tree verification kernels (src/_verify_kernel.pyx).

Same API and the same arithmetic, step for step: probabilities in float64,
``exp((x - max) / T)`` unnormalised with a running mass, one uniform per
acceptance test (row r of ``uniforms`` drives run r; its last column draws the
final token).  Sums may round differently from the kernel's (NumPy sums
pairwise), so results agree except when a uniform falls within rounding of an
acceptance boundary.
"""

from __future__ import annotations

from typing import Optional

import numpy as np


def _warp(row: np.ndarray, inv_t: float, top_k: int,
          top_p: float) -> Optional[tuple[np.ndarray, float]]:
    """Unnormalised warped probabilities of one logits row and their sum, or
    None when the row is not finite (see the kernel's warp_row)."""
    if not np.isfinite(row).all():
        return None
    r = row.astype(np.float64)
    m = float(r.max())
    vocab = r.shape[0]
    if 0 < top_k < vocab:
        threshold = np.partition(r, vocab - top_k)[vocab - top_k]
        p = np.where(r >= threshold, np.exp((r - m) * inv_t), 0.0)
    else:
        p = np.exp((r - m) * inv_t)
    z = float(p.sum())
    if top_p < 1.0:
        order = np.lexsort((np.arange(vocab), -p))   # by probability, ties: lower id
        values = p[order]
        above = np.cumsum(values) - values           # mass ranked above each entry
        p[order[(above >= top_p * z) & (values > 0)]] = 0.0
        z = float(p.sum())
    return p, z


def _draw_rows(p: np.ndarray, z: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse CDF per row: the first token whose cumulative weight exceeds
    u * z (the last positive one if rounding puts u * z at the very top)."""
    cumulative = np.cumsum(p, axis=1)
    tokens = (cumulative <= (u * z)[:, None]).sum(axis=1)
    positive = p > 0
    last = p.shape[1] - 1 - np.argmax(positive[:, ::-1], axis=1)
    return np.where(tokens < p.shape[1], tokens, last).astype(np.int64)


# Runs advanced together hold one (runs, V) float64 block of probabilities.
_BLOCK_ELEMENTS = 1 << 22


def _sample_block(tokens: np.ndarray, offsets: np.ndarray, child_ids: np.ndarray,
                  logits: np.ndarray, q: Optional[np.ndarray], inv_t: float, top_k: int,
                  top_p: float, uniforms: np.ndarray, paths: np.ndarray,
                  lengths: np.ndarray, next_tokens: np.ndarray) -> int:
    """The kernel's sample_one for a block of runs at once.  All runs that sit
    at the same node have made the same number of acceptance tests (it
    depends only on the path), so they advance together: node by node in
    breadth-first order, each node's runs try its children in node order."""
    n = tokens.shape[0]
    runs = uniforms.shape[0]
    paths[:, 0] = 0
    groups: list[tuple[int, np.ndarray, int, int]] = [(0, np.arange(runs), 0, 1)]
    head = 0
    while head < len(groups):
        node, members, k, length = groups[head]
        head += 1
        if members.size == 0:
            continue
        warped = _warp(logits[node], inv_t, top_k, top_p)
        if warped is None:
            return node
        p = np.repeat(warped[0][None, :], members.size, axis=0)
        z = np.full(members.size, warped[1])
        alive = np.arange(members.size)       # rows of p still undecided here
        start, stop = int(offsets[node]), int(offsets[node + 1])
        for ci in range(start, stop):
            if alive.size == 0:
                break
            c = int(child_ids[ci])
            x = int(tokens[c])
            u = uniforms[members[alive], k]
            if q is None:
                px = p[alive, x]
                accept = u * z[alive] < px
                reject = alive[~accept]
                z_old = z[reject]
                z[reject] = z_old - p[reject, x]
                p[reject, x] = 0.0
                small = reject[z[reject] <= 1e-9 * z_old]
                if small.size:
                    z[small] = p[small].sum(axis=1)
                    accept[np.isin(alive, small[z[small] <= 0])] = True
            else:
                qrow = q[c]
                earlier = [int(tokens[child_ids[cj]]) for cj in range(start, ci)]
                if x in earlier:
                    continue
                removed = sum(float(qrow[t]) for t in dict.fromkeys(earlier))
                denom = 1.0 - removed
                if denom <= 0 or qrow[x] <= 0:
                    continue
                qx = float(qrow[x]) / denom
                accept = u * qx * z[alive] < p[alive, x]
                reject = alive[~accept]
                if reject.size:
                    residual = np.maximum(p[reject] * (1.0 / z[reject])[:, None]
                                          - qrow.astype(np.float64)[None, :] * (1.0 / denom),
                                          0.0)
                    new_z = residual.sum(axis=1)
                    p[reject] = residual
                    empty = new_z <= 0
                    z[reject[~empty]] = new_z[~empty]
                    accept[np.isin(alive, reject[empty])] = True
            k += 1
            taken = members[alive[accept]]
            if taken.size:
                paths[taken, length] = c
                groups.append((c, taken, k, length + 1))
            alive = alive[~accept]
        done = members[alive]
        if done.size:
            lengths[done] = length
            next_tokens[done] = _draw_rows(p[alive], z[alive], uniforms[done, n - 1])
    return -1


def sample(tokens: np.ndarray, parents: np.ndarray, offsets: np.ndarray,
           child_ids: np.ndarray, logits: np.ndarray, draft_probs: np.ndarray, has_q: bool,
           temperature: float, top_k: int, top_p: float, uniforms: np.ndarray,
           paths: np.ndarray, lengths: np.ndarray, next_tokens: np.ndarray,
           work: Optional[np.ndarray] = None) -> int:
    """See the kernel's ``sample`` (runs advanced in blocks, same arithmetic;
    ``work`` is not needed)."""
    inv_t = 1.0 / temperature
    q = draft_probs if has_q else None
    block = max(1, _BLOCK_ELEMENTS // logits.shape[1])
    for lo in range(0, uniforms.shape[0], block):
        hi = min(lo + block, uniforms.shape[0])
        bad = _sample_block(tokens, offsets, child_ids, logits, q, inv_t, int(top_k),
                            float(top_p), uniforms[lo:hi], paths[lo:hi], lengths[lo:hi],
                            next_tokens[lo:hi])
        if bad >= 0:
            return bad
    return -1


def greedy(tokens: np.ndarray, parents: np.ndarray, offsets: np.ndarray,
           child_ids: np.ndarray, logits: np.ndarray) -> tuple[Optional[np.ndarray], int, int]:
    """See the kernel's ``greedy``: (path, next_token, bad_row)."""
    n = tokens.shape[0]
    min_leaf = np.empty(n, dtype=np.int64)
    for i in range(n - 1, -1, -1):
        kids = child_ids[offsets[i]:offsets[i + 1]]
        min_leaf[i] = i if kids.size == 0 else int(min_leaf[kids].min())
    queue, depth, best_arg = [0], [0], []
    head = 0
    while head < len(queue):
        node = queue[head]
        row = logits[node]
        if not np.isfinite(row).all():
            return None, -1, node
        a = int(np.argmax(row))
        best_arg.append(a)
        for c in child_ids[offsets[node]:offsets[node + 1]]:
            if tokens[c] == a:
                queue.append(int(c))
                depth.append(depth[head] + 1)
        head += 1
    best = 0
    for i in range(1, len(queue)):
        if depth[i] > depth[best] or (depth[i] == depth[best]
                                      and min_leaf[queue[i]] < min_leaf[queue[best]]):
            best = i
    path = np.empty(depth[best] + 1, dtype=np.int64)
    node = queue[best]
    for i in range(depth[best], -1, -1):
        path[i] = node
        node = int(parents[node])
    return path, best_arg[best], -1
