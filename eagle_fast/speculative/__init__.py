"""Speculative decoding, engine-agnostic: draft trees, lossless verification,
acceptance statistics.

* :class:`DraftTree` -- candidate continuations in topological order, with
  EAGLE's tree buffers (attention mask, position ids, retrieve indices).
* :class:`TreeTemplate` -- a static (Medusa) tree shape from ``medusa_choices``,
  with Medusa's buffers; :data:`MC_SIM_7B_63`, Medusa's default tree.
* :func:`dynamic_tree` -- EAGLE-2's dynamic tree, grown by a drafter callback.
* :func:`verify_greedy`, :func:`verify_sampling` (lossless),
  :func:`verify_chain` (batched chains), :func:`verify_typical` (Medusa) --
  pure functions of (tree, target logits, rng) returning a
  :class:`Verification`.
* :class:`AcceptanceStats` -- tau, per-depth acceptance rates, histogram.
* :class:`Target` -- the protocol a target model implements (prefill, one
  forward per tree, commit the accepted path); :class:`TargetOutput`.
  ``eagle_fast.integrations.transformers.TransformersTarget`` wraps a
  ``transformers`` causal LM in it.
* :func:`generate` -- the speculative loop (draft, one target forward,
  verify, commit); drafters behind :class:`Drafter` (``propose(context) ->
  DraftTree``): :class:`MedusaDrafter`, :class:`EagleTreeDrafter`,
  :class:`ChainDrafter`, :class:`NoDrafter` (:func:`as_drafter` picks one).
"""

from __future__ import annotations

from .drafter import (ChainDrafter, DraftContext, Drafter, EagleTreeDrafter, MedusaDrafter,
                      NoDrafter, as_drafter)
from .dynamic import dynamic_tree, max_dynamic_tree_tokens
from .medusa_choices import MC_SIM_7B_63, MEDUSA_CHOICES
from .loop import GenerationResult, GenerationTimings, generate
from .medusa_tree import TreeTemplate
from .stats import AcceptanceStats
from .target import Target, TargetOutput, eagle3_layer_indices
from .tree import DraftTree
from .verify import (
    SampledVerifications,
    Verification,
    verify_chain,
    verify_greedy,
    verify_sampling,
    verify_sampling_many,
    verify_typical,
    warp_probs,
)

__all__ = ["DraftTree", "TreeTemplate", "MC_SIM_7B_63", "MEDUSA_CHOICES", "dynamic_tree",
           "max_dynamic_tree_tokens",
           "Verification", "SampledVerifications", "verify_greedy", "verify_sampling",
           "verify_sampling_many", "verify_chain", "verify_typical", "warp_probs",
           "AcceptanceStats", "Target", "TargetOutput", "eagle3_layer_indices",
           "generate", "GenerationResult", "GenerationTimings",
           "Drafter", "DraftContext", "MedusaDrafter", "EagleTreeDrafter", "ChainDrafter",
           "NoDrafter", "as_drafter"]
