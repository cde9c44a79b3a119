"""Speculative decoding, engine-agnostic: draft trees, lossless verification,
acceptance statistics.

* :class:`DraftTree` -- candidate continuations in topological order, with
  EAGLE's tree buffers (attention mask, position ids, retrieve indices).
* :func:`dynamic_tree` -- EAGLE-2's dynamic tree, grown by a drafter callback.
"""

from __future__ import annotations

from .dynamic_tree import dynamic_tree, max_dynamic_tree_tokens
from .tree import DraftTree

__all__ = ["DraftTree", "dynamic_tree", "max_dynamic_tree_tokens"]
