"""eagle_fast: fast CPU inference for EAGLE-style speculative-decoding draft heads.

A draft head maps a target model's hidden state ``h`` to a guess of the next
token: ``x = SiLU(W h + b)``, ``logits = L x``, ``probs = softmax(logits / T)``.

* :class:`DraftHead` / :func:`predict` -- the fast NumPy API (float32/float64,
  single states or batches, top-k, optional full logits/probs); weights
  stored as float32/float64 or, 2-4x smaller and faster, ``weight_dtype=``
  ``"bfloat16"``, ``"float16"`` or ``"int8"``.
* :func:`compare` -- how closely one head (say, quantized) follows another.
* :class:`MedusaHeads` -- several residual (Medusa) heads run in one call;
  ``DraftHead(..., d2t=...)`` maps an EAGLE-3 draft vocabulary to target ids.
* ``DraftHead.save(path)`` / ``DraftHead.load(path)`` and
  :func:`load_medusa` -- safetensors checkpoints (no extra package needed);
  bad files raise :class:`CheckpointError`.
* :class:`EagleDrafter` -- EAGLE-1/2 and EAGLE-3 draft models (safetensors or
  ``.bin`` checkpoints in the published layouts) with their own draft KV
  cache, drafting EAGLE-2 dynamic trees as EAGLE's ``topK_genrate``.
* :func:`eagle_draft_from_hidden` -- the reference function whose semantics
  the package follows (the README's "reference function"), bit-exact.
* :mod:`eagle_fast.speculative` -- speculative decoding: :class:`DraftTree`,
  static Medusa trees (:class:`TreeTemplate`, ``MedusaHeads.draft_tree``) and
  EAGLE-2 dynamic trees (:func:`dynamic_tree`); verification
  (:func:`verify_greedy`, lossless :func:`verify_sampling`,
  :func:`verify_chain`, :func:`verify_typical` -> :class:`Verification`) and
  :class:`AcceptanceStats` (tau, per-depth acceptance rates); the loop
  :func:`generate` over a :class:`Target` (``eagle_fast.integrations.
  transformers.TransformersTarget`` wraps a transformers model) and a
  :class:`Drafter`.
* ``backend`` -- ``"compiled"`` (fused Cython/OpenMP kernels) or ``"python"``
  (the fallback); :func:`build_info` tells how the kernels were built.
  Set ``EAGLE_FAST_BACKEND=python`` before import to force the fallback;
  without its compiled kernels the package warns at import and says why.
"""

from __future__ import annotations

from typing import Any

from . import _backend
from ._checkpoint import CheckpointError, load_medusa
from ._compare import Comparison, compare
from ._head import DraftHead, DraftResult, predict
from ._medusa import MedusaHeads
from ._spec import eagle_draft_from_hidden
from .models import EagleDrafter
from ._storage import WEIGHT_DTYPES
from .speculative import (
    AcceptanceStats,
    Drafter,
    DraftTree,
    GenerationResult,
    Target,
    TargetOutput,
    TreeTemplate,
    Verification,
    dynamic_tree,
    generate,
    verify_chain,
    verify_greedy,
    verify_sampling,
    verify_typical,
)

__version__ = "0.1.0"
__all__ = ["DraftHead", "DraftResult", "predict", "MedusaHeads", "load_medusa",
           "CheckpointError", "compare", "Comparison",
           "WEIGHT_DTYPES", "DraftTree", "TreeTemplate", "dynamic_tree", "EagleDrafter",
           "Verification", "verify_greedy", "verify_sampling", "verify_chain",
           "verify_typical", "AcceptanceStats",
           "generate", "GenerationResult", "Target", "TargetOutput", "Drafter",
           "eagle_draft_from_hidden", "build_info", "backend"]


def build_info() -> dict[str, Any]:
    """How the active backend was built and what it will use.

    Keys: ``backend``, ``simd_level`` (kernel chosen for this CPU),
    ``simd_levels_available``, ``simd`` (instruction set the kernel was
    compiled for), ``openmp``, ``max_threads``, ``compiler``, ``compile_flags``.
    """
    active = _backend.active()
    draft = active.draft
    return {
        "backend": active.name,
        "simd_level": active.simd_level,
        "simd_levels_available": _backend.simd_levels_available(),
        "simd": draft.SIMD,
        "openmp": bool(draft.OPENMP),
        "max_threads": int(draft.max_threads()),
        "compiler": draft.COMPILER,
        "compile_flags": draft.COMPILE_FLAGS,
    }


def __getattr__(name: str) -> Any:
    # ``eagle_fast.backend`` always names the backend currently in use.
    if name == "backend":
        return _backend.active().name
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
