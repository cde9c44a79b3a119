"""DraftTree: the candidate continuations a draft model proposes, as one tree.

Conventions, named once here (EAGLE's tree buffers, without their ``+1`` /
``-2`` offsets):

* nodes are in topological order; node 0 is the **root**: the last token the
  target produced (known, not a guess); ``parents[0] == -1`` and
  ``parents[i] < i`` for every other node;
* ``depths[i]`` is the number of edges from the root (root 0); the target runs
  node i at sequence position ``prefix_length + depths[i]``
  (:attr:`DraftTree.position_ids`);
* ``attention_mask[i, j]`` is true iff node j is node i or one of its
  ancestors (so column 0 is all true);
* ``retrieve_indices`` has one row per leaf, leaves in increasing node order;
  row r lists the nodes on the root-to-leaf path (root first), padded with -1
  to ``max_depth + 1`` columns.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

__all__ = ["DraftTree"]


def _readonly(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


def _int_vector(name: str, values: Any) -> np.ndarray:
    array = np.asarray(values)
    if array.dtype == object or array.dtype.kind not in "iub":
        if array.size == 0 and array.dtype.kind == "f":
            array = array.astype(np.int64)
        else:
            raise TypeError(f"{name} must be an integer array, got dtype {array.dtype}")
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if array.dtype.kind == "u" and array.size and int(array.max()) > np.iinfo(np.int64).max:
        raise ValueError(f"{name} holds values beyond int64")
    return np.ascontiguousarray(array, dtype=np.int64)


class DraftTree:
    """An immutable token tree in topological order (see the module docstring).

    Parameters
    ----------
    tokens : (n,) integer array
        ``tokens[0]`` is the root (the token the target produced last);
        ``tokens[i]`` the candidate token of node i (target-vocabulary ids).
    parents : (n,) integer array
        ``parents[0] == -1``; ``0 <= parents[i] < i`` otherwise.
    scores : (n,) float array, optional
        Cumulative draft log-probability of each node's path (root 0).
    draft_probs : (n, V) float array, optional
        Row i is the draft distribution node i's token was drawn from (row 0,
        the root's, is not used). Needed to verify *sampled* trees losslessly.

    Derived arrays (``depths``, ``attention_mask``, ``position_ids``,
    ``retrieve_indices``, ...) are computed on first use and cached; every
    array is read-only.
    """

    __slots__ = ("_tokens", "_parents", "_depths", "_scores", "_draft_probs", "_cache")

    def __init__(self, tokens: Any, parents: Any, *, scores: Any = None,
                 draft_probs: Any = None) -> None:
        tokens = _int_vector("tokens", tokens)
        parents = _int_vector("parents", parents)
        n = tokens.shape[0]
        if n == 0:
            raise ValueError("a DraftTree needs at least the root node (tokens is empty)")
        if parents.shape[0] != n:
            raise ValueError(f"parents has {parents.shape[0]} entries, tokens has {n}")
        if parents[0] != -1:
            raise ValueError(f"parents[0] must be -1 (node 0 is the root), got {parents[0]}")
        if n > 1:
            rest = parents[1:]
            node_ids = np.arange(1, n)
            bad = np.flatnonzero((rest < 0) | (rest >= node_ids))
            if bad.size:
                i = int(bad[0]) + 1
                raise ValueError(
                    f"parents[{i}] = {parents[i]} is out of range or not topological: "
                    f"every node i > 0 needs 0 <= parents[i] < i")
        if tokens.size and int(tokens.min()) < 0:
            i = int(np.argmin(tokens))
            raise ValueError(f"tokens[{i}] = {tokens[i]} is negative")
        # parents[i] < i, so its depth is already known (a list: no NumPy
        # scalar per node)
        depth_list = [0] * n
        for i, parent in enumerate(parents.tolist()[1:], start=1):
            depth_list[i] = depth_list[parent] + 1
        depths = np.array(depth_list, dtype=np.int64)
        self._tokens = _readonly(tokens)
        self._parents = _readonly(parents)
        self._depths = _readonly(depths)
        self._scores = None if scores is None else _readonly(self._check_scores(scores, n))
        self._draft_probs = (None if draft_probs is None
                             else _readonly(self._check_draft_probs(draft_probs, n)))
        self._cache: dict[str, Any] = {}

    # -- validation of the optional per-node data -------------------------
    @staticmethod
    def _check_scores(scores: Any, n: int) -> np.ndarray:
        array = np.asarray(scores)
        if array.dtype.kind not in "fiu":
            raise TypeError(f"scores must be a float array, got dtype {array.dtype}")
        array = np.ascontiguousarray(array, dtype=np.float64)
        if array.shape != (n,):
            raise ValueError(f"scores must have shape ({n},), got {array.shape}")
        if np.isnan(array).any():
            raise ValueError("scores contain NaN")
        return array

    @staticmethod
    def _check_draft_probs(draft_probs: Any, n: int) -> np.ndarray:
        array = np.asarray(draft_probs)
        if array.dtype.kind not in "fiu":
            raise TypeError(f"draft_probs must be a float array, got dtype {array.dtype}")
        if array.dtype not in (np.float32, np.float64):
            array = array.astype(np.float64)
        array = np.ascontiguousarray(array)
        if array.ndim != 2 or array.shape[0] != n or array.shape[1] == 0:
            raise ValueError(f"draft_probs must have shape ({n}, V), got {array.shape}")
        body = array[1:]
        if body.size:
            if not np.isfinite(body).all():
                raise ValueError("draft_probs contain NaN or inf")
            if (body < 0).any():
                raise ValueError("draft_probs contain negative probabilities")
            sums = body.sum(axis=1, dtype=np.float64)
            bad = np.flatnonzero(np.abs(sums - 1.0) > 1e-4)
            if bad.size:
                i = int(bad[0]) + 1
                raise ValueError(f"draft_probs[{i}] sums to {sums[i - 1]:.6g}, not 1")
        return array

    # -- construction helpers ---------------------------------------------
    @classmethod
    def chain(cls, tokens: Sequence[int] | np.ndarray, *, scores: Any = None,
              draft_probs: Any = None) -> "DraftTree":
        """A single path: ``tokens[0]`` is the root, each later token the child
        of the one before it."""
        tokens = _int_vector("tokens", tokens)
        parents = np.arange(-1, tokens.shape[0] - 1, dtype=np.int64)
        return cls(tokens, parents, scores=scores, draft_probs=draft_probs)

    # -- fields -----------------------------------------------------------
    @property
    def tokens(self) -> np.ndarray:
        """(n,) int64: the root's token, then each node's candidate token."""
        return self._tokens

    @property
    def parents(self) -> np.ndarray:
        """(n,) int64: each node's parent (-1 for the root)."""
        return self._parents

    @property
    def depths(self) -> np.ndarray:
        """(n,) int64: edges from the root (root 0)."""
        return self._depths

    @property
    def scores(self) -> Optional[np.ndarray]:
        """(n,) float64 cumulative draft log-probabilities, or None."""
        return self._scores

    @property
    def draft_probs(self) -> Optional[np.ndarray]:
        """(n, V) draft distributions each node's token was drawn from, or None."""
        return self._draft_probs

    @property
    def num_nodes(self) -> int:
        return int(self._tokens.shape[0])

    def __len__(self) -> int:
        return self.num_nodes

    @property
    def max_depth(self) -> int:
        return int(self._depths.max())

    # -- derived, cached --------------------------------------------------
    def _cached(self, key: str, build: Any) -> Any:
        value = self._cache.get(key)
        if value is None:
            value = build()
            self._cache[key] = value
        return value

    @property
    def position_ids(self) -> np.ndarray:
        """(n,) int64 position offsets (= depths); add the prefix length."""
        return self._depths

    @property
    def attention_mask(self) -> np.ndarray:
        """(n, n) bool: ``[i, j]`` iff j is i or an ancestor of i."""
        def build() -> np.ndarray:
            n = self.num_nodes
            mask = np.zeros((n, n), dtype=bool)
            mask[0, 0] = True
            for i in range(1, n):
                mask[i] = mask[self._parents[i]]
                mask[i, i] = True
            return _readonly(mask)
        return self._cached("attention_mask", build)

    @property
    def is_leaf(self) -> np.ndarray:
        """(n,) bool: nodes without children."""
        def build() -> np.ndarray:
            leaf = np.ones(self.num_nodes, dtype=bool)
            leaf[self._parents[1:]] = False
            return _readonly(leaf)
        return self._cached("is_leaf", build)

    @property
    def leaves(self) -> np.ndarray:
        """int64 node ids of the leaves, increasing."""
        return self._cached("leaves", lambda: _readonly(np.flatnonzero(self.is_leaf)
                                                        .astype(np.int64)))

    @property
    def retrieve_indices(self) -> np.ndarray:
        """(n_leaves, max_depth + 1) int64: root-to-leaf paths, padded with -1."""
        def build() -> np.ndarray:
            leaves = self.leaves
            out = np.full((leaves.shape[0], self.max_depth + 1), -1, dtype=np.int64)
            for row, leaf in enumerate(leaves):
                node = int(leaf)
                for col in range(int(self._depths[node]), -1, -1):
                    out[row, col] = node
                    node = int(self._parents[node])
            return _readonly(out)
        return self._cached("retrieve_indices", build)

    @property
    def child_offsets(self) -> np.ndarray:
        """(n + 1,) int64 CSR offsets into :attr:`child_ids`: the children of node
        i are ``child_ids[child_offsets[i]:child_offsets[i + 1]]``, in node order."""
        return self._cached("child_csr", self._build_children)[0]

    @property
    def child_ids(self) -> np.ndarray:
        """(n - 1,) int64 node ids grouped by parent (see :attr:`child_offsets`)."""
        return self._cached("child_csr", self._build_children)[1]

    def _build_children(self) -> tuple[np.ndarray, np.ndarray]:
        parents = self._parents[1:]
        order = np.argsort(parents, kind="stable")
        child_ids = (order + 1).astype(np.int64)
        counts = np.bincount(parents, minlength=self.num_nodes)
        offsets = np.zeros(self.num_nodes + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        return _readonly(offsets), _readonly(child_ids)

    def children(self, node: int) -> np.ndarray:
        """The children of ``node``, in node order."""
        offsets = self.child_offsets
        return self.child_ids[offsets[node]:offsets[node + 1]]

    def path(self, node: int) -> np.ndarray:
        """Node ids from the root to ``node`` (inclusive)."""
        if not 0 <= node < self.num_nodes:
            raise IndexError(f"node {node} out of range for a tree of {self.num_nodes} nodes")
        out = []
        while node >= 0:
            out.append(node)
            node = int(self._parents[node])
        return np.array(out[::-1], dtype=np.int64)

    # -- misc -------------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DraftTree):
            return NotImplemented
        return (np.array_equal(self._tokens, other._tokens)
                and np.array_equal(self._parents, other._parents))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"DraftTree(num_nodes={self.num_nodes}, max_depth={self.max_depth}, "
                f"num_leaves={int(self.is_leaf.sum())}, root_token={int(self._tokens[0])})")

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self._tokens, self._parents, self._scores, self._draft_probs))


def _rebuild(tokens: np.ndarray, parents: np.ndarray, scores: Optional[np.ndarray],
             draft_probs: Optional[np.ndarray]) -> DraftTree:
    return DraftTree(tokens, parents, scores=scores, draft_probs=draft_probs)
