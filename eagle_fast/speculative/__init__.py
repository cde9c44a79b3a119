"""Speculative decoding, engine-agnostic: draft trees, lossless verification,
acceptance statistics.

* :class:`DraftTree` -- candidate continuations in topological order, with
  EAGLE's tree buffers (attention mask, position ids, retrieve indices).
* :class:`TreeTemplate` -- a static (Medusa) tree shape from ``medusa_choices``,
  with Medusa's buffers; :data:`MC_SIM_7B_63`, Medusa's default tree.
* :func:`dynamic_tree` -- EAGLE-2's dynamic tree, grown by a drafter callback.
"""

from __future__ import annotations

from .dynamic_tree import dynamic_tree, max_dynamic_tree_tokens
from .medusa_choices import MC_SIM_7B_63, MEDUSA_CHOICES
from .medusa_tree import TreeTemplate
from .tree import DraftTree

__all__ = ["DraftTree", "TreeTemplate", "MC_SIM_7B_63", "MEDUSA_CHOICES", "dynamic_tree",
           "max_dynamic_tree_tokens"]
