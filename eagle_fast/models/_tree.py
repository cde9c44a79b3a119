"""EAGLE-2's dynamic draft tree, as EAGLE's ``topK_genrate`` grows it.

``dynamic_tree(root_token, root_logprobs, expand, top_k=, depth=, total_tokens=)``:

1. the root's ``top_k`` best draft tokens are the first candidates (score =
   their log-probability) and the first frontier;
2. ``depth`` times: ``expand(parent_rows, tokens)`` runs the frontier (node
   i is the child of row ``parent_rows[i]`` of the previous call's output --
   all 0 the first time, the root's row -- and carries ``tokens[i]``) and
   returns its log-probabilities (len(tokens), V); every frontier node's
   ``top_k`` best tokens become candidates with the cumulative score (the
   parent's score + the token's log-probability), and the ``top_k`` best of
   these ``top_k ** 2`` candidates are the next frontier;
3. the ``total_tokens - 1`` best candidates of all rounds (in candidate
   order) with the root form the tree.

Ties rank the lower index first (lower token id within a row, earlier
candidate overall), so a node's ancestors -- whose scores are never lower
and whose indices are lower -- are always chosen before it.  With ``d2t``
(EAGLE-3's reduced draft vocabulary) the log-probabilities are over draft
ids and every token is mapped to the target id ``i + d2t[i]``.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from ..speculative import DraftTree

Expand = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _top(values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k largest of each row of ``values`` (best first, ties to the lower
    index): (values, indices)."""
    flat = values.reshape(-1, values.shape[-1])
    n = flat.shape[1]
    if k < n:
        # Candidates: everything at least the k-th largest, then a stable sort.
        part = np.partition(flat, n - k, axis=1)[:, n - k][:, None]
        index = np.empty((flat.shape[0], k), dtype=np.int64)
        for r in range(flat.shape[0]):
            cand = np.flatnonzero(flat[r] >= part[r])
            order = np.argsort(-flat[r, cand], kind="stable")[:k]
            index[r] = cand[order]
    else:
        index = np.argsort(-flat, axis=1, kind="stable")[:, :k]
    top_values = np.take_along_axis(flat, index, axis=1)
    shape = values.shape[:-1] + (k,)
    return top_values.reshape(shape), index.reshape(shape)


def dynamic_tree(root_token: int, root_logprobs: np.ndarray, expand: Expand, *,
                 top_k: int, depth: int, total_tokens: int,
                 d2t: Optional[np.ndarray] = None) -> DraftTree:
    """The EAGLE-2 tree (see the module docstring)."""
    def to_target(ids: np.ndarray) -> np.ndarray:
        return ids if d2t is None else ids + d2t[ids]

    scores, ids = _top(np.asarray(root_logprobs)[None, :], top_k)
    scores, ids = scores[0], ids[0]
    cand_scores = [scores]
    cand_tokens = [to_target(ids)]
    cand_parents = [np.full(top_k, -1, dtype=np.int64)]   # candidate index, -1 = root
    frontier = np.arange(top_k, dtype=np.int64)            # their candidate indices
    parent_rows = np.zeros(top_k, dtype=np.int64)
    tokens = cand_tokens[0]
    n_candidates = top_k
    for _ in range(depth):
        logprobs = np.asarray(expand(parent_rows, tokens))
        row_scores, row_ids = _top(logprobs, top_k)            # (K, K)
        cumulative = row_scores + scores[:, None]
        cand_scores.append(cumulative.reshape(-1))
        cand_tokens.append(to_target(row_ids.reshape(-1)))
        cand_parents.append(np.repeat(frontier, top_k))
        best_scores, best = _top(cumulative.reshape(-1), top_k)
        scores = best_scores
        parent_rows = best // top_k
        tokens = to_target(row_ids.reshape(-1)[best])
        frontier = n_candidates + best
        n_candidates += top_k * top_k

    all_scores = np.concatenate(cand_scores)
    all_tokens = np.concatenate(cand_tokens)
    all_parents = np.concatenate(cand_parents)
    chosen = np.sort(_top(all_scores, total_tokens - 1)[1])
    node_of = np.full(n_candidates, -1, dtype=np.int64)
    node_of[chosen] = np.arange(1, chosen.size + 1)
    parents = np.concatenate([[-1], np.where(all_parents[chosen] < 0, 0,
                                             node_of[np.maximum(all_parents[chosen], 0)])])
    tokens_out = np.concatenate([[int(root_token)], all_tokens[chosen]])
    tree_scores = np.concatenate([[0.0], all_scores[chosen].astype(np.float64)])
    return DraftTree(tokens_out, parents, scores=tree_scores)
