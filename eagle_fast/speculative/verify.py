"""Verification: which of a draft tree's tokens the target model accepts.

Every function takes the target's logits (or probabilities) for the tree's
nodes -- row i is the target's prediction for the token *after* node i, from
one forward pass over the tree (:attr:`DraftTree.attention_mask`,
:attr:`DraftTree.position_ids`) -- and returns a :class:`Verification`: the
accepted root-to-node path and the token the target emits after it (the
correction where the path stops early, the "bonus" token where it reaches a
leaf).  One verification therefore yields ``num_accepted + 1`` tokens.

* :func:`verify_greedy` -- exact for greedy decoding: the same tokens the
  target would produce one at a time.
* :func:`verify_sampling` -- lossless for sampling: the emitted tokens have
  exactly the target's (warped) distribution.  Deterministic trees (top-k
  trees, no ``draft_probs``) use EAGLE-2's rule; sampled trees (with
  ``draft_probs``) the recursive rejection rule of EAGLE's first release.
* :func:`verify_chain` -- classic speculative sampling for a batch of chains,
  with vLLM's output convention.
* :func:`verify_typical` -- Medusa's typical acceptance (fast, not lossless).

Only the rows a verification reaches are read (greedy: the root and each
accepted node; sampling: also softmaxed), so non-finite logits are reported
only where they are read.  The compiled kernels read float32 and float64
logits in place; other floating dtypes are converted to float32.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import _backend
from .tree import DraftTree

__all__ = ["Verification", "SampledVerifications", "verify_greedy", "verify_sampling",
           "verify_sampling_many", "verify_chain", "verify_typical", "warp_probs"]


@dataclass(frozen=True, eq=False)
class Verification:
    """The outcome of verifying one draft tree.

    Attributes
    ----------
    accepted_nodes : (num_accepted + 1,) int64
        Node ids along the accepted path, starting with the root 0.
    accepted_tokens : (num_accepted,) int64
        Their draft tokens (the root's excluded).
    num_accepted : int
        Number of accepted draft tokens.
    next_token : int
        The token the target emits after them: the correction, or the bonus
        token when the path reached a leaf.
    """

    accepted_nodes: np.ndarray
    accepted_tokens: np.ndarray
    num_accepted: int
    next_token: int

    @property
    def tokens(self) -> np.ndarray:
        """(num_accepted + 1,) int64: every token this verification emits."""
        return np.append(self.accepted_tokens, np.int64(self.next_token))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Verification):
            return NotImplemented
        return (np.array_equal(self.accepted_nodes, other.accepted_nodes)
                and self.next_token == other.next_token)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"Verification(accepted_nodes={self.accepted_nodes.tolist()}, "
                f"accepted_tokens={self.accepted_tokens.tolist()}, "
                f"num_accepted={self.num_accepted}, next_token={self.next_token})")


@dataclass(frozen=True, eq=False)
class SampledVerifications:
    """Many sampling verifications of one tree (:func:`verify_sampling_many`).

    ``accepted_nodes`` (N, max_depth + 1) int64, each row a path padded with -1;
    ``num_accepted`` (N,) int64; ``next_token`` (N,) int64.
    """

    accepted_nodes: np.ndarray
    num_accepted: np.ndarray
    next_token: np.ndarray
    tree_tokens: np.ndarray  # the tree's tokens, to rebuild single Verifications

    def __len__(self) -> int:
        return int(self.num_accepted.shape[0])

    def __getitem__(self, r: int) -> Verification:
        """Run r as a :class:`Verification`."""
        length = int(self.num_accepted[r]) + 1
        return _verification_from_path(self.tree_tokens, self.accepted_nodes[r, :length],
                                       int(self.next_token[r]))


# -- validation ----------------------------------------------------------------

def _check_tree(tree: Any) -> DraftTree:
    if not isinstance(tree, DraftTree):
        raise TypeError(f"tree must be a DraftTree, got {type(tree).__name__}")
    return tree


def _check_logits(tree: DraftTree, target_logits: Any, name: str = "target_logits"
                  ) -> np.ndarray:
    logits = np.asarray(target_logits)
    if logits.dtype.kind not in "f":
        raise TypeError(f"{name} must be a float array, got dtype {logits.dtype}")
    if logits.dtype not in (np.float32, np.float64):
        logits = logits.astype(np.float32)
    n = tree.num_nodes
    if logits.ndim != 2 or logits.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n}, V) for a tree of {n} nodes "
                         f"(row i = the target's logits after node i), got {logits.shape}")
    vocab = logits.shape[1]
    if vocab == 0:
        raise ValueError(f"{name} has an empty vocabulary (shape {logits.shape})")
    top = int(tree.tokens.max())
    if top >= vocab:
        raise ValueError(f"the tree holds token {top}, beyond {name}'s vocabulary of {vocab}")
    return np.ascontiguousarray(logits)


def _check_temperature(temperature: Any) -> float:
    try:
        t = float(temperature)
    except (TypeError, ValueError):
        raise TypeError(f"temperature must be a number, got {temperature!r}") from None
    if not math.isfinite(t) or t < 0:
        raise ValueError(f"temperature must be finite and >= 0, got {temperature!r}")
    return t


def _check_warp(top_p: Any, top_k: Any) -> tuple[float, int]:
    top_p = float(top_p)
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    if isinstance(top_k, bool) or int(top_k) != top_k or top_k < 0:
        raise ValueError(f"top_k must be an integer >= 0 (0 = off), got {top_k!r}")
    return top_p, int(top_k)


def _check_rng(rng: Any) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise TypeError("rng must be a numpy.random.Generator (np.random.default_rng(seed)), "
                        f"got {type(rng).__name__}")
    return rng


def _bad_row(name: str, row: int) -> ValueError:
    return ValueError(f"{name}[{row}] contains NaN or inf (mask tokens with a large "
                      "negative finite value instead of -inf)")


def _verification_from_path(tokens: np.ndarray, path: np.ndarray,
                            next_token: int) -> Verification:
    path = np.ascontiguousarray(path, dtype=np.int64)
    accepted = tokens[path[1:]]
    path.flags.writeable = False
    accepted.flags.writeable = False
    return Verification(path, accepted, int(path.shape[0] - 1), int(next_token))


def _min_leaf(tree: DraftTree) -> np.ndarray:
    """For each node, the lowest leaf id in its subtree (its first row of
    retrieve_indices)."""
    n = tree.num_nodes
    out = np.arange(n, dtype=np.int64)
    out[~tree.is_leaf] = n
    parents = tree.parents
    for i in range(n - 1, 0, -1):   # children after parents
        p = parents[i]
        if out[i] < out[p]:
            out[p] = out[i]
    return out


# -- greedy --------------------------------------------------------------------

def verify_greedy(tree: DraftTree, target_logits: Any) -> Verification:
    """Greedy verification: the longest path whose every token is the target's
    argmax at its parent (first maximum, i.e. the lowest token id on ties).

    The accepted path is a walk from the root: at each node the child whose
    token is the argmax of the node's row.  When several children share that
    token (a malformed tree), the deepest walk wins and among equally deep
    ones the first path in :attr:`DraftTree.retrieve_indices` -- exactly
    EAGLE's ``evaluate_posterior`` (greedy branch) on the tree's
    retrieve_indices.  ``next_token`` is the argmax of the last accepted row.
    Reads only the rows of the nodes reached, once each.
    """
    tree = _check_tree(tree)
    logits = _check_logits(tree, target_logits)
    kernel = _backend.active().module("verify")
    path, next_token, bad = kernel.greedy(tree.tokens, tree.parents, tree.child_offsets,
                                          tree.child_ids, logits)
    if bad >= 0:
        raise _bad_row("target_logits", bad)
    return _verification_from_path(tree.tokens, path, next_token)


# -- sampling ------------------------------------------------------------------

def warp_probs(logits: Any, *, temperature: float, top_k: int = 0,
               top_p: float = 1.0) -> np.ndarray:
    """The target distribution :func:`verify_sampling` uses, for rows of
    logits (..., V), in float64: HF's order of logits warpers --
    temperature (``logits / T``), then top-k (keep every token whose logit is
    >= the k-th largest, ties included, as ``TopKLogitsWarper``), then top-p
    (keep a token iff the probability of the tokens ranked above it is
    < top_p, as ``TopPLogitsWarper``: at least one token is kept; ranked by
    probability, equal ones by lower token id), then softmax.  (EAGLE's
    ``prepare_logits_processor`` applies top-p before top-k; with both set the
    two orders can differ.)"""
    t = _check_temperature(temperature)
    if t == 0:
        raise ValueError("warp_probs needs temperature > 0 (0 means greedy)")
    top_p, top_k = _check_warp(top_p, top_k)
    rows = np.asarray(logits, dtype=np.float64)
    if rows.ndim == 0 or rows.shape[-1] == 0:
        raise ValueError(f"logits must have shape (..., V) with V >= 1, got {rows.shape}")
    flat = rows.reshape(-1, rows.shape[-1])
    from . import _verify_py
    out = np.empty_like(flat)
    for r in range(flat.shape[0]):
        warped = _verify_py._warp(flat[r], 1.0 / t, top_k, top_p)
        if warped is None:
            raise _bad_row("logits", r)
        out[r] = warped[0] / warped[1]
    return out.reshape(rows.shape)


def _sampling_inputs(tree: DraftTree, target_logits: Any, temperature: Any, top_p: Any,
                     top_k: Any) -> tuple[np.ndarray, np.ndarray, bool, float, float, int]:
    tree = _check_tree(tree)
    logits = _check_logits(tree, target_logits)
    t = _check_temperature(temperature)
    top_p, top_k = _check_warp(top_p, top_k)
    q = tree.draft_probs
    if q is not None:
        if q.shape[1] != logits.shape[1]:
            raise ValueError(f"tree.draft_probs has a vocabulary of {q.shape[1]}, "
                             f"target_logits one of {logits.shape[1]}")
        return logits, q, True, t, top_p, top_k
    return logits, np.zeros((1, 1), dtype=np.float64), False, t, top_p, top_k


_scratch = threading.local()


def _work_buffer(vocab: int) -> np.ndarray:
    """This thread's kernel scratch (3 V doubles), kept between calls."""
    work = getattr(_scratch, "work", None)
    if work is None or work.shape[0] < 3 * vocab:
        work = np.zeros(3 * vocab, dtype=np.float64)
        _scratch.work = work
    return work


def _run_sampling(tree: DraftTree, logits: np.ndarray, q: np.ndarray, has_q: bool,
                  t: float, top_p: float, top_k: int, uniforms: np.ndarray
                  ) -> SampledVerifications:
    runs = uniforms.shape[0]
    paths = np.full((runs, tree.max_depth + 1), -1, dtype=np.int64)
    lengths = np.zeros(runs, dtype=np.int64)
    next_tokens = np.zeros(runs, dtype=np.int64)
    kernel = _backend.active().module("verify")
    bad = kernel.sample(tree.tokens, tree.parents, tree.child_offsets, tree.child_ids,
                        logits, q, has_q, t, top_k, top_p, uniforms, paths, lengths,
                        next_tokens, _work_buffer(logits.shape[1]))
    if bad >= 0:
        raise _bad_row("target_logits", bad)
    return SampledVerifications(paths, lengths - 1, next_tokens, tree.tokens)


def verify_sampling(tree: DraftTree, target_logits: Any, *, temperature: float,
                    top_p: float = 1.0, top_k: int = 0,
                    rng: np.random.Generator) -> Verification:
    """Lossless verification for sampling at ``temperature`` (0 = greedy:
    :func:`verify_greedy`, ``rng`` unused).

    p is the target's distribution of each row after :func:`warp_probs`
    (temperature, then top-k, then top-p).  From the root, the children of
    the current node are tried in node order:

    * deterministic tree (``tree.draft_probs is None``, e.g. a top-k tree;
      EAGLE-2's rule): accept child x with probability p(x); else set
      p(x) = 0 and renormalise;
    * sampled tree (each node's children drawn from the draft distribution q
      without replacement, q of child i = ``tree.draft_probs[i]``; the rule of
      EAGLE's first release): accept child x with probability
      min(1, p(x) / q_i(x)), q_i = q with the earlier siblings' tokens removed
      and renormalised; else p <- max(p - q_i, 0), renormalised.  A child whose
      q_i(x) is 0 (a repeated token) is not tried.

    An accepted child becomes the current node (its own row gives the new p);
    when every child is rejected, or at a leaf, ``next_token`` is drawn from
    what is left of p.  Each acceptance test uses one uniform from ``rng``
    (``rng.random(n)`` per call), so the same seed gives the same result.
    Only the rows visited are read and softmaxed.
    """
    logits, q, has_q, t, top_p, top_k = _sampling_inputs(tree, target_logits, temperature,
                                                         top_p, top_k)
    rng = _check_rng(rng)
    if t == 0:
        return verify_greedy(tree, logits)
    uniforms = rng.random((1, tree.num_nodes))
    many = _run_sampling(tree, logits, q, has_q, t, top_p, top_k, uniforms)
    return many[0]


def verify_sampling_many(tree: DraftTree, target_logits: Any, num_runs: int, *,
                         temperature: float, top_p: float = 1.0, top_k: int = 0,
                         rng: np.random.Generator) -> SampledVerifications:
    """``num_runs`` independent :func:`verify_sampling` runs of one tree in one
    kernel call (the same core; run r equals the r-th of ``num_runs``
    successive :func:`verify_sampling` calls with the same ``rng``) -- for
    measuring acceptance and for statistical tests.  ``temperature`` must be
    > 0."""
    logits, q, has_q, t, top_p, top_k = _sampling_inputs(tree, target_logits, temperature,
                                                         top_p, top_k)
    rng = _check_rng(rng)
    if t == 0:
        raise ValueError("verify_sampling_many needs temperature > 0")
    if isinstance(num_runs, bool) or int(num_runs) != num_runs or num_runs < 0:
        raise ValueError(f"num_runs must be an integer >= 0, got {num_runs!r}")
    uniforms = rng.random((int(num_runs), tree.num_nodes))
    return _run_sampling(tree, logits, q, has_q, t, top_p, top_k, uniforms)


# -- chains (classic speculative sampling) --------------------------------------

def _check_probs(name: str, probs: Any, shape_text: str, ndim: int) -> np.ndarray:
    array = np.asarray(probs)
    if array.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be a float array, got dtype {array.dtype}")
    array = np.asarray(array, dtype=np.float64)
    if array.ndim != ndim:
        raise ValueError(f"{name} must have shape {shape_text}, got {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contain NaN or inf")
    if (array < 0).any():
        raise ValueError(f"{name} contain negative probabilities")
    if array.size:
        sums = array.sum(axis=-1)
        bad = np.argwhere(np.abs(sums - 1.0) > 1e-4)
        if bad.size:
            where = tuple(int(i) for i in bad[0])
            raise ValueError(f"{name}[{', '.join(map(str, where))}] sums to "
                             f"{sums[where]:.6g}, not 1")
    return array


def _draw_rows(p: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse-CDF draw of one token per row of unnormalised weights p."""
    cumulative = np.cumsum(p, axis=1)
    target = u * cumulative[:, -1]
    tokens = (cumulative <= target[:, None]).sum(axis=1)
    last_positive = p.shape[1] - 1 - np.argmax((p > 0)[:, ::-1], axis=1)
    return np.minimum(tokens, last_positive).astype(np.int64)


def verify_chain(draft_tokens: Any, draft_probs: Any, target_probs: Any, *,
                 rng: np.random.Generator) -> np.ndarray:
    """Standard speculative sampling for a batch of B chains of k draft tokens.

    Parameters
    ----------
    draft_tokens : (B, k) int
    draft_probs : (B, k, V)
        Row j: the draft distribution token j was drawn from.
    target_probs : (B, k + 1, V)
        Row j: the target's distribution for position j (after the tokens
        before it); row k is for the bonus token.

    Token j is accepted with probability min(1, p(x) / q(x)) (a token with
    q(x) = 0 is rejected); the first rejection emits a token drawn from
    max(p - q, 0) renormalised and ends the chain; when all k are accepted a
    bonus token is drawn from row k.  Uniforms: ``rng.random((B, k))`` for the
    tests, then ``rng.random(B)`` for the final draws.

    Returns
    -------
    (B, k + 1) int64: accepted tokens, then the recovered or bonus token,
    padded with -1 (vLLM's rejection sampler's convention).
    """
    rng = _check_rng(rng)
    tokens = np.asarray(draft_tokens)
    if tokens.dtype.kind not in "iu":
        raise TypeError(f"draft_tokens must be an integer array, got dtype {tokens.dtype}")
    if tokens.ndim != 2:
        raise ValueError(f"draft_tokens must have shape (B, k), got {tokens.shape}")
    batch, k = tokens.shape
    q = _check_probs("draft_probs", draft_probs, "(B, k, V)", 3)
    p = _check_probs("target_probs", target_probs, "(B, k + 1, V)", 3)
    if q.shape[:2] != (batch, k):
        raise ValueError(f"draft_probs must have shape ({batch}, {k}, V), got {q.shape}")
    if p.shape[:2] != (batch, k + 1):
        raise ValueError(f"target_probs must have shape ({batch}, {k + 1}, V), got {p.shape}")
    vocab = p.shape[2]
    if vocab == 0 or (k and q.shape[2] != vocab):
        raise ValueError(f"draft_probs and target_probs need one vocabulary >= 1, got "
                         f"{q.shape[2]} and {vocab}")
    tokens = tokens.astype(np.int64)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab):
        raise ValueError(f"draft_tokens must lie in [0, {vocab}), got "
                         f"[{tokens.min()}, {tokens.max()}]")
    u = rng.random((batch, k))
    u_final = np.asarray(rng.random(batch))
    rows = np.arange(batch)[:, None]
    cols = np.arange(k)[None, :]
    px = p[rows, cols, tokens] if k else np.zeros((batch, 0))
    qx = q[rows, cols, tokens] if k else np.zeros((batch, 0))
    accept = (qx > 0) & (u * qx < px)
    # first rejection, or k when all are accepted
    num_accepted = np.where(accept.all(axis=1), k,
                            np.argmin(accept, axis=1) if k else 0).astype(np.int64)
    out = np.full((batch, k + 1), -1, dtype=np.int64)
    keep = cols < num_accepted[:, None]
    out[:, :k][keep] = tokens[keep]
    stop = num_accepted
    final = p[np.arange(batch), stop].copy()
    rejected = stop < k
    if rejected.any():
        idx = np.flatnonzero(rejected)
        residual = np.maximum(p[idx, stop[idx]] - q[idx, stop[idx]], 0.0)
        empty = residual.sum(axis=1) <= 0     # p == q: rejection had probability 0
        residual[empty] = p[idx[empty], stop[idx[empty]]]
        final[idx] = residual
    out[np.arange(batch), stop] = _draw_rows(final, u_final)
    return out


# -- typical acceptance (Medusa) ------------------------------------------------

def verify_typical(tree: DraftTree, target_logits: Any, *, temperature: float,
                   posterior_threshold: float = 0.09,
                   posterior_alpha: float = 0.3) -> Verification:
    """Medusa's typical acceptance (``evaluate_posterior``, not lossless).

    With p = softmax(row / T) of a node's row, its child x is acceptable when
    ``p(x) > min(posterior_threshold, posterior_alpha * exp(-H))``, H =
    -sum p log(p + 1e-5) (Medusa's entropy, with its 1e-5).  The accepted
    path is the longest whose every token is acceptable; among the longest,
    the one with the highest summed log p; on equal sums, the first in
    retrieve_indices.  ``next_token`` follows Medusa: the greedy argmax of the
    last accepted node's (unwarped) row.  Temperature 0 means greedy
    (:func:`verify_greedy`), as in Medusa.  Reads the rows of the nodes
    reached.
    """
    tree = _check_tree(tree)
    logits = _check_logits(tree, target_logits)
    t = _check_temperature(temperature)
    threshold = float(posterior_threshold)
    alpha = float(posterior_alpha)
    if not (math.isfinite(threshold) and math.isfinite(alpha)):
        raise ValueError("posterior_threshold and posterior_alpha must be finite")
    if t == 0:
        return verify_greedy(tree, logits)
    offsets, child_ids, tokens = tree.child_offsets, tree.child_ids, tree.tokens
    queue = [0]
    depth = {0: 0}
    loglik = {0: 0.0}
    head = 0
    while head < len(queue):
        node = queue[head]
        head += 1
        kids = child_ids[offsets[node]:offsets[node + 1]]
        if kids.size == 0:
            continue
        row = logits[node]
        if not np.isfinite(row).all():
            raise _bad_row("target_logits", node)
        scaled = row.astype(np.float64) / t
        p = np.exp(scaled - scaled.max())
        p /= p.sum()
        entropy = -float(np.sum(p * np.log(p + 1e-5)))
        limit = min(threshold, alpha * math.exp(-entropy))
        for c in kids:
            pc = float(p[tokens[c]])
            if pc > limit:
                c = int(c)
                queue.append(c)
                depth[c] = depth[node] + 1
                loglik[c] = loglik[node] + math.log(pc)
    min_leaf = _min_leaf(tree)
    best = 0
    for c in queue[1:]:
        key = (depth[c], loglik[c], -min_leaf[c])
        if key > (depth[best], loglik[best], -min_leaf[best]):
            best = c
    last = logits[best]
    if not np.isfinite(last).all():
        raise _bad_row("target_logits", best)
    return _verification_from_path(tokens, tree.path(best), int(np.argmax(last)))
