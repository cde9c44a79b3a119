"""Speculative decoding, engine-agnostic: draft trees, lossless verification,
acceptance statistics.

* :class:`DraftTree` -- candidate continuations in topological order, with
  EAGLE's tree buffers (attention mask, position ids, retrieve indices).
* :func:`verify_greedy`, :func:`verify_sampling` (lossless),
  :func:`verify_chain` (batched chains), :func:`verify_typical` (Medusa) --
  pure functions of (tree, target logits, rng) returning a
  :class:`Verification`.
* :class:`AcceptanceStats` -- tau, per-depth acceptance rates, histogram.
"""

from __future__ import annotations

from .stats import AcceptanceStats
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

__all__ = ["DraftTree", "Verification", "SampledVerifications", "verify_greedy",
           "verify_sampling", "verify_sampling_many", "verify_chain", "verify_typical",
           "warp_probs", "AcceptanceStats"]
