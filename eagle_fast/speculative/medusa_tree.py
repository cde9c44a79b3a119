"""Static (Medusa) draft trees: one fixed shape, filled from per-head top-k tables.

A Medusa tree is a set of *choices* (FasterDecoding/Medusa's ``medusa_choices``):
the choice ``(c0, c1, ..., c_{d-1})`` is the node reached from the root by
taking the c0-th ranked token of head 0, then the c1-th ranked token of head
1, and so on; it sits at depth d and carries the ``c_{d-1}``-th token of head
``d - 1``. Every prefix of a choice must itself be a choice (prefix-closed).

Node order (shared by :class:`TreeTemplate`, the :class:`DraftTree` it builds
and Medusa's buffers): node 0 is the root, node j + 1 is the j-th choice after
sorting by ``(len(choice), choice)`` -- Medusa's order, breadth first.

Medusa's buffers and their conventions, named once here
(:meth:`TreeTemplate.medusa_buffers` returns them exactly as Medusa's
``generate_medusa_buffers`` does, so code written against Medusa can use them
as they are):

* ``medusa_attn_mask`` -- float32, shape ``(1, 1, n, n)``: 1.0 where column j
  is row i or one of its ancestors (the :attr:`DraftTree.attention_mask`
  as 0/1 floats with two leading singleton axes), 0.0 elsewhere.
* ``tree_indices`` -- int64 ``(n,)``: where each node's token is found in
  Medusa's flat candidate list ``candidates = [root token, head 0's top_k
  tokens, head 1's top_k tokens, ...]``: 0 for the root, ``1 + top_k * (d -
  1) + rank`` for a node at depth d (the ``+ 1`` skips the root). Medusa fixes
  ``TOPK = 10``; the template's ``top_k`` (default 10) plays that role.
  ``tree_candidates = candidates[tree_indices]`` are the tree's tokens.
* ``medusa_position_ids`` -- int64 ``(n,)``: the node depths (root 0).
* ``retrieve_indices`` -- int64 ``(n_leaves, max_depth + 1)``: one row per
  root-to-leaf path, root (0) first, padded with -1, leaves in *decreasing*
  node order (Medusa walks its sorted choices backwards; the
  :attr:`DraftTree.retrieve_indices` has the same rows in increasing order).
  Medusa's padding -1 indexes the zero it appends to ``tree_candidates``
  (``tree_candidates_ext``), so padded slots read token 0, not a node.
"""

from __future__ import annotations

import operator
from typing import Any, Optional, Sequence, Union

import numpy as np

from .medusa_choices import MEDUSA_CHOICES
from .tree import DraftTree

__all__ = ["TreeTemplate"]

Choices = Union[str, Sequence[Sequence[int]]]

# Medusa's TOPK: how many ranked tokens of each head its candidate list holds.
MEDUSA_TOP_K = 10


def _readonly(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


def _normalise_choices(choices: Choices) -> list[tuple[int, ...]]:
    if isinstance(choices, str):
        try:
            return [tuple(c) for c in MEDUSA_CHOICES[choices]]
        except KeyError:
            raise ValueError(f"unknown Medusa tree {choices!r}; shipped trees: "
                             f"{sorted(MEDUSA_CHOICES)}") from None
    if isinstance(choices, np.ndarray) and choices.ndim == 2:
        choices = choices.tolist()
    out = []
    for i, choice in enumerate(choices):
        if isinstance(choice, (str, bytes)) or not hasattr(choice, "__iter__"):
            raise TypeError(f"choices[{i}] must be a sequence of ranks, got {choice!r}")
        ranks = []
        for rank in choice:
            if isinstance(rank, bool):
                raise TypeError(f"choices[{i}] holds a bool ({choice!r})")
            try:
                ranks.append(operator.index(rank))
            except TypeError:
                raise TypeError(f"choices[{i}] must hold integer ranks, got {choice!r}") from None
        out.append(tuple(ranks))
    return out


class TreeTemplate:
    """A static (Medusa) tree shape: which ranked token of which head each
    node takes (see the module docstring for the node order and buffers).

    Build one with :meth:`from_medusa_choices`; fill it with tokens with
    :meth:`build` (any per-head top-k table) or
    :meth:`eagle_fast.MedusaHeads.draft_tree` (runs the heads).
    """

    __slots__ = ("_choices", "_top_k", "_parents", "_depths", "_ranks", "_shape", "_cache")

    def __init__(self, choices: Sequence[tuple[int, ...]], top_k: int,
                 parents: np.ndarray, depths: np.ndarray, ranks: np.ndarray) -> None:
        # Internal: use from_medusa_choices.
        self._choices = tuple(choices)
        self._top_k = top_k
        self._parents = _readonly(parents)
        self._depths = _readonly(depths)
        self._ranks = _readonly(ranks)
        self._shape = DraftTree(np.zeros(len(parents), dtype=np.int64), parents)
        self._cache: dict[str, Any] = {}

    @classmethod
    def from_medusa_choices(cls, choices: Choices, top_k: int = MEDUSA_TOP_K
                            ) -> "TreeTemplate":
        """The template of Medusa ``choices`` (a list of rank tuples, or the
        name of a shipped tree, e.g. ``"mc_sim_7b_63"``).

        ``top_k`` is how many ranked tokens each head contributes (Medusa's
        ``TOPK``, 10); every rank must be below it. Empty, duplicate or
        non-prefix-closed choices, negative ranks and ranks >= ``top_k`` are a
        ValueError.
        """
        if isinstance(top_k, bool):
            raise TypeError("top_k must be an integer, got a bool")
        top_k = operator.index(top_k)
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        items = _normalise_choices(choices)
        if not items:
            raise ValueError("choices must hold at least one choice (Medusa's buffers "
                             "need a non-empty tree)")
        for choice in items:
            if not choice:
                raise ValueError("a choice must not be empty (the root is implicit)")
            bad = [r for r in choice if r < 0 or r >= top_k]
            if bad:
                raise ValueError(f"choice {list(choice)} has rank {bad[0]}; ranks must be in "
                                 f"[0, top_k) = [0, {top_k})")
        ordered = sorted(items, key=lambda c: (len(c), c))
        for a, b in zip(ordered, ordered[1:]):
            if a == b:
                raise ValueError(f"choice {list(a)} appears more than once")
        node_of = {choice: j + 1 for j, choice in enumerate(ordered)}
        n = len(ordered) + 1
        parents = np.empty(n, dtype=np.int64)
        depths = np.empty(n, dtype=np.int64)
        ranks = np.empty(n, dtype=np.int64)
        parents[0], depths[0], ranks[0] = -1, 0, -1
        for j, choice in enumerate(ordered, start=1):
            if len(choice) == 1:
                parents[j] = 0
            else:
                parent = node_of.get(choice[:-1])
                if parent is None:
                    raise ValueError(f"choices are not prefix-closed: {list(choice)} is there "
                                     f"but its prefix {list(choice[:-1])} is not")
                parents[j] = parent
            depths[j] = len(choice)
            ranks[j] = choice[-1]
        return cls(ordered, top_k, parents, depths, ranks)

    # -- shape ------------------------------------------------------------
    @property
    def choices(self) -> tuple[tuple[int, ...], ...]:
        """The choices in node order (node j + 1 is ``choices[j]``)."""
        return self._choices

    @property
    def top_k(self) -> int:
        """Ranked tokens per head (Medusa's ``TOPK``)."""
        return self._top_k

    @property
    def num_nodes(self) -> int:
        """Nodes, root included (``len(choices) + 1``)."""
        return int(self._parents.shape[0])

    def __len__(self) -> int:
        return self.num_nodes

    @property
    def parents(self) -> np.ndarray:
        """(n,) int64: each node's parent (-1 for the root)."""
        return self._parents

    @property
    def depths(self) -> np.ndarray:
        """(n,) int64: depth of each node (root 0); node i takes its token from
        head ``depths[i] - 1``."""
        return self._depths

    @property
    def ranks(self) -> np.ndarray:
        """(n,) int64: each node's rank within its head's top-k (root -1)."""
        return self._ranks

    @property
    def max_depth(self) -> int:
        """Depth of the deepest node = the number of heads the tree needs."""
        return int(self._depths.max())

    @property
    def shape(self) -> DraftTree:
        """The tree's shape as a :class:`DraftTree` (all tokens 0): its
        attention mask, position ids, retrieve indices, children."""
        return self._shape

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TreeTemplate):
            return NotImplemented
        return self._choices == other._choices and self._top_k == other._top_k

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"TreeTemplate(num_nodes={self.num_nodes}, max_depth={self.max_depth}, "
                f"num_leaves={int(self._shape.is_leaf.sum())}, top_k={self._top_k})")

    def __reduce__(self) -> tuple[Any, ...]:
        return (TreeTemplate.from_medusa_choices, (list(self._choices), self._top_k))

    # -- Medusa's buffers ---------------------------------------------------
    @property
    def tree_indices(self) -> np.ndarray:
        """(n,) int64: Medusa's ``tree_indices`` (see the module docstring)."""
        value = self._cache.get("tree_indices")
        if value is None:
            value = np.zeros(self.num_nodes, dtype=np.int64)
            value[1:] = 1 + self._top_k * (self._depths[1:] - 1) + self._ranks[1:]
            value = self._cache["tree_indices"] = _readonly(value)
        return value

    def medusa_buffers(self) -> dict[str, np.ndarray]:
        """What Medusa's ``generate_medusa_buffers`` returns for these choices,
        as fresh NumPy arrays: ``medusa_attn_mask`` (1, 1, n, n) float32,
        ``tree_indices`` (n,) int64, ``medusa_position_ids`` (n,) int64,
        ``retrieve_indices`` (n_leaves, max_depth + 1) int64 (conventions in the
        module docstring)."""
        mask = self._shape.attention_mask.astype(np.float32)[None, None]
        return {
            "medusa_attn_mask": mask,
            "tree_indices": self.tree_indices.copy(),
            "medusa_position_ids": self._depths.copy(),
            "retrieve_indices": self._shape.retrieve_indices[::-1].copy(),
        }

    # -- filling in tokens ------------------------------------------------
    def build(self, root_token: int, head_topk_tokens: Any,
              head_topk_logprobs: Any = None) -> DraftTree:
        """The :class:`DraftTree` of this shape for one step.

        ``head_topk_tokens`` is a (num_heads, k) integer table, row h the
        ranked tokens of head h (best first), with ``num_heads >= max_depth``
        and ``k`` above every rank used; node i gets
        ``head_topk_tokens[depths[i] - 1, ranks[i]]`` (Medusa's
        ``tree_candidates``). ``head_topk_logprobs``, the same shape, gives
        the log-probs of those tokens; the tree's ``scores`` are then their sums
        along each path (root 0), else the tree has no scores.
        """
        if isinstance(root_token, bool):
            raise TypeError("root_token must be an integer, got a bool")
        root = operator.index(root_token)
        if root < 0:
            raise ValueError(f"root_token must be >= 0, got {root}")
        table = np.asarray(head_topk_tokens)
        if table.dtype.kind not in "iu":
            raise TypeError(f"head_topk_tokens must be an integer array, got dtype {table.dtype}")
        need_k = int(self._ranks.max()) + 1
        if (table.ndim != 2 or table.shape[0] < self.max_depth or table.shape[1] < need_k):
            raise ValueError(
                f"head_topk_tokens must have shape (num_heads, k) with num_heads >= "
                f"{self.max_depth} (the tree's depth) and k >= {need_k} (its largest rank + 1), "
                f"got {table.shape}")
        heads = self._depths[1:] - 1
        ranks = self._ranks[1:]
        tokens = np.empty(self.num_nodes, dtype=np.int64)
        tokens[0] = root
        tokens[1:] = table[heads, ranks]
        if tokens.min() < 0:
            raise ValueError("head_topk_tokens holds negative token ids")
        scores: Optional[np.ndarray] = None
        if head_topk_logprobs is not None:
            lp = np.asarray(head_topk_logprobs)
            if lp.dtype.kind not in "fiu":
                raise TypeError(f"head_topk_logprobs must be a float array, got dtype {lp.dtype}")
            if lp.shape != table.shape:
                raise ValueError(f"head_topk_logprobs must have the shape of head_topk_tokens "
                                 f"{table.shape}, got {lp.shape}")
            node_lp = lp[heads, ranks].astype(np.float64)
            if np.isnan(node_lp).any() or np.isposinf(node_lp).any():
                raise ValueError("head_topk_logprobs holds NaN or +inf")
            scores = np.zeros(self.num_nodes, dtype=np.float64)
            # nodes are sorted by depth, so one vectorised step per level
            bounds = np.searchsorted(self._depths, np.arange(1, self.max_depth + 2))
            for lo, hi in zip(bounds[:-1], bounds[1:]):
                scores[lo:hi] = node_lp[lo - 1:hi - 1] + scores[self._parents[lo:hi]]
        return DraftTree(tokens, self._parents, scores=scores)
