"""Speculative decoding, engine-agnostic: draft trees, lossless verification,
acceptance statistics.

* :class:`DraftTree` -- candidate continuations in topological order, with
  EAGLE's tree buffers (attention mask, position ids, retrieve indices).
* :class:`Target` -- the protocol a target model implements (prefill, one
  forward per tree, commit the accepted path); :class:`TargetOutput`.
  ``eagle_fast.integrations.transformers.TransformersTarget`` wraps a
  ``transformers`` causal LM in it.
"""

from __future__ import annotations

from .target import Target, TargetOutput, eagle3_layer_indices
from .tree import DraftTree

__all__ = ["DraftTree", "Target", "TargetOutput", "eagle3_layer_indices"]
