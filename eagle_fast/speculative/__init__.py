"""Speculative decoding, engine-agnostic: draft trees, lossless verification,
acceptance statistics.

* :class:`DraftTree` -- candidate continuations in topological order, with
  EAGLE's tree buffers (attention mask, position ids, retrieve indices).
"""

from __future__ import annotations

from .tree import DraftTree

__all__ = ["DraftTree"]
