"""Dynamic (EAGLE-2) draft trees: grow the tree where the draft is confident.

:func:`dynamic_tree` builds the tree EAGLE-2 builds (SafeAILab/EAGLE,
``topK_genrate`` in ``eagle/model/cnets1.py``; EAGLE-3's draft vocabulary as in
``cnets.py``), with the node order, parents and therefore the mask, position
ids and retrieve indices of EAGLE's buffers:

1. the root's ``top_k`` best tokens are its children and the first *frontier*;
2. ``depth`` rounds: the drafter expands the frontier (``expand``), every
   frontier node's ``top_k`` best tokens are scored by cumulative log-prob
   (parent's score + the token's log-prob), and the ``top_k`` best of these
   ``top_k**2`` become the next frontier, in descending score order;
3. of everything scored (``top_k + depth * top_k**2`` nodes) the best
   ``total_tokens - 1`` are kept and, as EAGLE sorts their flat indices, put in
   *scoring order*: the root's children by rank, then round by round, frontier
   row by frontier row (rows in frontier order), each row's children by rank.

Ties (equal scores or equal log-probs) go to the lowest index first: the lower
token id within a row, the earlier entry of the flat scoring list otherwise.
torch.topk leaves ties unspecified, so EAGLE itself can go either way there.
A child's score is never above its parent's (log-probs are <= 0) and the
parent comes first in the scoring list, so this rule keeps every kept node's
ancestors. That is the one deliberate difference from EAGLE: on an exact score
tie EAGLE can keep a child and drop its parent, and its ``searchsorted`` then
attaches the child to a wrong node; here that cannot happen.

Scores are accumulated in the floating dtype of ``root_logprobs`` (float16,
float32 or float64; other real dtypes become float64), as EAGLE adds them in
its model's dtype; the returned :class:`DraftTree` holds them as float64.

Log-probs may be ``-inf`` (a token of probability 0); NaN, ``+inf`` and values
above 1e-3 (logits passed by mistake) are a ValueError. A log-prob a hair above
0 (rounding in a caller's log-softmax) could lift a child above its parent; the
final selection therefore ranks each node by the smallest score on its path,
which is its own score whenever log-probs are <= 0.

Speed: the per-row top-k of every round (the only pass over V) is a compiled
kernel (``src/_tree_kernel.pyx``, fallback ``_tree_py.py``); everything else
works on the ``top_k + depth * top_k**2`` scored nodes.
"""

from __future__ import annotations

import operator
from typing import Any, Callable, Optional

import numpy as np

from .. import _backend
from .._validation import aligned, check_int
from .tree import DraftTree

__all__ = ["dynamic_tree", "max_dynamic_tree_tokens"]

ExpandFn = Callable[[np.ndarray, np.ndarray], Any]

_SCORE_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


def max_dynamic_tree_tokens(top_k: int, depth: int) -> int:
    """The largest ``total_tokens`` :func:`dynamic_tree` accepts: the root plus
    every scored node, ``1 + top_k + depth * top_k**2``."""
    return 1 + top_k + depth * top_k * top_k


# Log-probs above this are not log-probs (logits passed by mistake?).
_LOGPROB_MAX = 1e-3


def _logprob_array(value: Any, name: str, shape: tuple[int, ...], shape_text: str
                   ) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype.kind not in "fiu" or array.dtype == object:
        raise TypeError(f"{name} must be a real float array, got dtype {array.dtype}")
    if array.dtype.kind != "f":
        array = array.astype(np.float64)
    elif array.dtype not in _SCORE_DTYPES:
        array = array.astype(np.float64)
    if array.shape != shape:
        raise ValueError(f"{name} must have shape {shape_text} = {shape}, got {array.shape}")
    return array


def _row_topk(kernel: Any, rows: np.ndarray, k: int, ids: np.ndarray, vals: np.ndarray,
              name: str, vector: bool = False) -> float:
    """Each row's ``k`` largest entries, best first, ties to the lower index,
    into ``ids`` (r, k) int64 and ``vals`` (r, k) (of the rows' dtype, or
    float32 for float16 rows) by the backend's ``kernel``. NaN, +inf and
    positive log-probs raise ValueError naming ``name`` (a (V,) vector as one
    row when ``vector``). Returns the largest entry."""
    if rows.dtype == np.float16:
        rows = rows.astype(np.float32)
    elif not (rows.flags.c_contiguous and rows.flags.aligned):
        rows = aligned(np.ascontiguousarray(rows))  # the kernel reads rows in place
    top = kernel.row_topk(rows, k, ids, vals)  # the largest entry, NaN if any
    if top != top:
        where = np.argwhere(np.isnan(rows))[0][1 if vector else 0:]
        raise ValueError(f"{name} contains NaN at index {tuple(int(i) for i in where)}; "
                         "log-probs must be finite or -inf")
    if top > _LOGPROB_MAX:
        where = np.unravel_index(int(np.argmax(rows)), rows.shape)
        index = tuple(int(i) for i in where)[1 if vector else 0:]
        if top == np.inf:
            raise ValueError(f"{name} contains +inf at index {index}; "
                             "log-probs must be finite or -inf")
        raise ValueError(f"{name} holds {top:.6g} at index {index}; "
                         "log-probs must be <= 0 (pass log-softmax output, not logits)")
    return top


def _best_first(scores: np.ndarray, count: int) -> np.ndarray:
    """Indices of the ``count`` largest scores, best first, ties to the lower
    index (``scores`` is small: at most top_k**2 or the whole scoring list)."""
    return np.argsort(-scores, kind="stable")[:count]


def _map_d2t(draft_ids: np.ndarray, d2t: Optional[np.ndarray]) -> np.ndarray:
    if d2t is None:
        return draft_ids
    target = draft_ids + d2t[draft_ids]
    if target.size and int(target.min()) < 0:
        bad = int(draft_ids.flat[int(np.argmin(target))])
        raise ValueError(f"d2t maps draft token {bad} to a negative target id "
                         f"{bad + int(d2t[bad])}")
    return target


def _check_siblings_distinct(target_rows: np.ndarray) -> None:
    """With d2t, one parent's children must still carry distinct target ids
    (a one-to-one d2t guarantees it; checked where it matters, per call)."""
    ordered = np.sort(target_rows, axis=1)
    dup = np.argwhere(ordered[:, 1:] == ordered[:, :-1])
    if dup.size:
        row, col = (int(i) for i in dup[0])
        raise ValueError(f"d2t is not one-to-one: two draft tokens of one parent map to "
                         f"target id {int(ordered[row, col])}")


def dynamic_tree(root_token: int, root_logprobs: Any, expand: ExpandFn, *, top_k: int,
                 depth: int, total_tokens: int, d2t: Any = None) -> DraftTree:
    """Build EAGLE-2's dynamic draft tree (see the module docstring).

    Parameters
    ----------
    root_token : int
        The token the target produced last (node 0; a target id).
    root_logprobs : (V,) float array
        The draft's log-probabilities for the token after the root (over the
        draft vocabulary when ``d2t`` is given). ``-inf`` is allowed; NaN and
        ``+inf`` are a ValueError.
    expand : callable ``expand(parent_rows, tokens) -> logprobs``
        The drafter. Called ``depth`` times, each time with the ``top_k``
        frontier nodes: node i is a child of row ``parent_rows[i]`` of the
        previous call's output (all 0 at the first call: the root's row) and
        carries ``tokens[i]`` -- a *target* id when ``d2t`` is given, the id
        EAGLE-3 feeds back as ``input_ids``. Both are int64 arrays of length
        ``top_k``, ``tokens`` in descending score order. It returns the (top_k,
        V) log-probabilities of each node's next token (row i for node i) and
        keeps whatever state it needs per row (hidden states, KV entries).
    top_k : int
        Children per expanded node and frontier width (1 <= top_k <= V).
    depth : int
        Expansion rounds (>= 0); the tree is at most ``depth + 1`` deep.
    total_tokens : int
        Nodes in the tree, root included (EAGLE's ``total_token``):
        ``1 <= total_tokens <= 1 + top_k + depth * top_k**2``.
    d2t : (V,) integer array, optional
        EAGLE-3 draft-to-target map: draft id ``i`` is target id ``i +
        d2t[i]``. The tree's tokens (and the tokens given to ``expand``) are
        target ids.

    Returns
    -------
    DraftTree
        ``total_tokens`` nodes in EAGLE's order; ``scores`` are the cumulative
        log-probs (root 0).
    """
    root = operator.index(root_token) if not isinstance(root_token, bool) else None
    if root is None:
        raise TypeError("root_token must be an integer, got a bool")
    if root < 0:
        raise ValueError(f"root_token must be >= 0, got {root}")
    if not callable(expand):
        raise TypeError(f"expand must be callable, got {type(expand).__name__}")
    root_lp = np.asarray(root_logprobs)
    if root_lp.ndim != 1 or root_lp.shape[0] == 0:
        raise ValueError(f"root_logprobs must have shape (V,), got {root_lp.shape}")
    vocab = int(root_lp.shape[0])
    root_lp = _logprob_array(root_lp, "root_logprobs", (vocab,), "(V,)")
    score_dtype = root_lp.dtype
    top_k = check_int(top_k, "top_k", 1)
    if top_k > vocab:
        raise ValueError(f"top_k={top_k} exceeds the vocabulary of root_logprobs ({vocab})")
    depth = check_int(depth, "depth", 0)
    total_tokens = check_int(total_tokens, "total_tokens", 1)
    limit = max_dynamic_tree_tokens(top_k, depth)
    if total_tokens > limit:
        raise ValueError(f"total_tokens={total_tokens} exceeds the {limit} nodes a tree with "
                         f"top_k={top_k}, depth={depth} scores (1 + top_k + depth * top_k**2)")
    d2t_map: Optional[np.ndarray] = None
    if d2t is not None:
        d2t_arr = np.asarray(d2t)
        if d2t_arr.dtype.kind not in "iu":
            raise TypeError(f"d2t must hold integer offsets, got dtype {d2t_arr.dtype}")
        if d2t_arr.shape != (vocab,):
            raise ValueError(f"d2t must have shape (V,) = ({vocab},) to match root_logprobs, "
                             f"got {d2t_arr.shape}")
        d2t_map = d2t_arr.astype(np.int64, copy=False)

    k = top_k
    n_scored = k + depth * k * k
    kernel = _backend.active().module("tree")
    # The scoring list, in EAGLE's flat order: the root's k children, then per
    # round k x k children (frontier row by frontier row, children by rank).
    flat_scores = np.empty(n_scored, dtype=score_dtype)
    flat_tokens = np.empty(n_scored, dtype=np.int64)
    frontiers = np.empty((depth, k), dtype=np.int64)  # flat indices of each expanded frontier

    def topk_buffers(dtype: np.dtype, rows: int) -> tuple[np.ndarray, np.ndarray]:
        work = np.float32 if dtype == np.float16 else dtype
        return np.empty((rows, k), dtype=np.int64), np.empty((rows, k), dtype=work)

    ids, vals = topk_buffers(root_lp.dtype, 1)
    top = _row_topk(kernel, root_lp[None, :], k, ids, vals, "root_logprobs", vector=True)
    tokens = _map_d2t(ids[0], d2t_map)
    if d2t_map is not None and k > 1:
        _check_siblings_distinct(tokens[None, :])
    scores = vals[0].astype(score_dtype)  # a copy: vals is reused
    flat_scores[:k] = scores
    flat_tokens[:k] = tokens
    frontier_flat = np.arange(k, dtype=np.int64)
    parent_rows = np.zeros(k, dtype=np.int64)
    offset = k
    for round_ in range(depth):
        name = f"expand's output (round {round_})"
        out = expand(parent_rows.copy(), tokens.copy())
        rows = _logprob_array(out, name, (k, vocab), "(top_k, V)")
        work = np.float32 if rows.dtype == np.float16 else rows.dtype
        if ids.shape[0] != k or vals.dtype != work:  # reused from round to round
            ids, vals = topk_buffers(rows.dtype, k)
        top = max(top, _row_topk(kernel, rows, k, ids, vals, name))
        child_tokens = _map_d2t(ids, d2t_map)
        if d2t_map is not None and k > 1:
            _check_siblings_distinct(child_tokens)
        block = flat_scores[offset:offset + k * k]
        np.add(vals, scores[:, None], out=block.reshape(k, k), casting="unsafe")
        flat_tokens[offset:offset + k * k] = child_tokens.ravel()
        frontiers[round_] = frontier_flat
        best = _best_first(block, k)
        scores = block[best]
        parent_rows = best // k
        frontier_flat = offset + best
        tokens = flat_tokens[frontier_flat]
        offset += k * k

    # parent of every scored node, as a flat index + 1 (0 = the root)
    flat_parent1 = np.zeros(n_scored, dtype=np.int64)
    flat_parent1[k:] = np.repeat(frontiers.ravel() + 1, k)
    key = flat_scores
    if top > 0:
        # A slightly positive "log-prob" (rounding in a caller's log-softmax)
        # could lift a child above its parent: select by the smallest score on
        # each path instead, which equals the score whenever log-probs <= 0.
        key = flat_scores.copy()
        for start in range(k, n_scored, k * k):
            block_parents = flat_parent1[start:start + k * k] - 1
            np.minimum(key[start:start + k * k], key[block_parents],
                       out=key[start:start + k * k])
    keep = np.sort(_best_first(key, total_tokens - 1))
    node_of = np.full(n_scored + 1, -1, dtype=np.int64)  # flat index + 1 -> node
    node_of[0] = 0
    node_of[keep + 1] = np.arange(1, total_tokens, dtype=np.int64)
    parents = np.empty(total_tokens, dtype=np.int64)
    parents[0] = -1
    parents[1:] = node_of[flat_parent1[keep]]
    # Ties go to the lower index and a child's key is never above its parent's,
    # so every kept node's parent is kept (node_of >= 0); see the module docstring.
    assert (parents[1:] >= 0).all()
    tree_tokens = np.empty(total_tokens, dtype=np.int64)
    tree_tokens[0] = root
    tree_tokens[1:] = flat_tokens[keep]
    tree_scores = np.zeros(total_tokens, dtype=np.float64)
    tree_scores[1:] = flat_scores[keep]
    return DraftTree(tree_tokens, parents, scores=tree_scores)
