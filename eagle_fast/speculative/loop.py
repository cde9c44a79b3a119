"""Speculative generation: draft, verify in one target forward, commit, repeat.

:func:`generate` drives a :class:`~eagle_fast.speculative.Target` and a drafter
(:mod:`eagle_fast.speculative.drafter`) and never reaches into either beyond
their protocols.  One round:

1. the drafter proposes a :class:`DraftTree` rooted at the last emitted token;
2. the target runs the whole tree in one forward (logits per node);
3. verification picks the accepted path and the next token
   (:func:`verify_greedy` at temperature 0, lossless :func:`verify_sampling`
   above);
4. the target keeps the accepted path's KV cache; the accepted tokens and the
   next token are emitted; the next token is the next tree's root.

Greedy generation emits exactly the target's own greedy tokens, whatever the
drafter proposes; sampling emits sequences with exactly the target's (warped)
distribution.  Generation stops at the first ``eos_token_id`` (emitted) or
after ``max_new_tokens`` tokens, even in the middle of an accepted path; in
the last rounds the tree is cut to the depth that can still be emitted.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from .drafter import DraftContext, as_drafter
from .stats import AcceptanceStats
from .target import check_token_ids
from .tree import DraftTree
from .verify import verify_greedy, verify_sampling, warp_probs

__all__ = ["generate", "GenerationResult", "GenerationTimings"]


@dataclass(frozen=True)
class GenerationTimings:
    """Wall time of one :func:`generate` call, in seconds, split by phase:
    ``target_forward`` (prefill, tree forwards and the target's cache
    compaction in ``commit``), ``drafting``, ``verification`` (including the
    first token's choice) and ``bookkeeping`` (the rest)."""

    drafting: float
    target_forward: float
    verification: float
    bookkeeping: float
    total: float

    def as_dict(self) -> dict[str, float]:
        return {"drafting": self.drafting, "target_forward": self.target_forward,
                "verification": self.verification, "bookkeeping": self.bookkeeping,
                "total": self.total}


@dataclass(frozen=True)
class GenerationResult:
    """What :func:`generate` returns.

    Attributes
    ----------
    tokens : (m,) int64
        The new tokens only (an emitted EOS included), ``m <= max_new_tokens``.
    stats : AcceptanceStats
        One verification per tree forward (the prefill is not one).
    timings : GenerationTimings
    finish_reason : str
        ``"eos"`` or ``"length"``.
    """

    tokens: np.ndarray
    stats: AcceptanceStats
    timings: GenerationTimings
    finish_reason: str

    @property
    def num_target_forwards(self) -> int:
        """Target forwards: the prefill plus one per tree."""
        return 1 + self.stats.num_verifications

    @property
    def tokens_per_second(self) -> float:
        total = self.timings.total
        return float("nan") if total <= 0 else self.tokens.shape[0] / total

    def __repr__(self) -> str:
        return (f"GenerationResult(tokens={self.tokens.shape[0]}, "
                f"finish_reason={self.finish_reason!r}, "
                f"tau={self.stats.mean_acceptance_length:.3f}, "
                f"target_forwards={self.num_target_forwards}, "
                f"tokens_per_second={self.tokens_per_second:.1f})")


def _eos_set(eos_token_id: Any) -> frozenset[int]:
    if eos_token_id is None:
        return frozenset()
    values = [eos_token_id] if np.ndim(eos_token_id) == 0 else list(eos_token_id)
    out = set()
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"eos_token_id must be None, a token id >= 0 or a collection of "
                             f"them, got {eos_token_id!r}")
        out.add(int(v))
    return frozenset(out)


def _check_max_new(max_new_tokens: Any) -> int:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)):
        raise TypeError(f"max_new_tokens must be an int, got {max_new_tokens!r}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    return int(max_new_tokens)


def _first_token(logits: np.ndarray, temperature: float, top_p: float, top_k: int,
                 rng: Optional[np.random.Generator]) -> int:
    """The token after the prompt, from the prefill's last row: argmax (first
    maximum) at temperature 0, else a draw from the warped distribution."""
    row = np.asarray(logits, dtype=np.float64)
    if not np.isfinite(row).all():
        raise ValueError("the target's prefill logits contain NaN or inf")
    if temperature == 0:
        return int(np.argmax(row))
    assert rng is not None
    p = warp_probs(row, temperature=temperature, top_k=top_k, top_p=top_p)
    cdf = np.cumsum(p)
    token = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
    return min(token, row.shape[0] - 1)


def _prune(tree: DraftTree, max_depth: int) -> DraftTree:
    """``tree`` without its nodes deeper than ``max_depth`` (ancestors come
    first, so the kept nodes stay topological)."""
    if tree.max_depth <= max_depth:
        return tree
    keep = np.flatnonzero(tree.depths <= max_depth)
    new_index = np.full(tree.num_nodes, -1, dtype=np.int64)
    new_index[keep] = np.arange(keep.shape[0])
    parents = np.where(keep == 0, -1, new_index[tree.parents[keep]])
    return DraftTree(tree.tokens[keep], parents,
                     scores=None if tree.scores is None else tree.scores[keep],
                     draft_probs=None if tree.draft_probs is None else tree.draft_probs[keep])


def generate(target: Any, drafter: Any, input_ids: Any, *, max_new_tokens: int,
             temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0,
             eos_token_id: Any = None, rng: Any = None, tree: Any = None
             ) -> GenerationResult:
    """Speculative generation of up to ``max_new_tokens`` tokens after ``input_ids``.

    Parameters
    ----------
    target : Target
        E.g. ``eagle_fast.integrations.transformers.TransformersTarget(model)``.
        Its cache is reset (prefilled with ``input_ids``).
    drafter : MedusaHeads, EagleDrafter, Drafter, callable or None
        What proposes the trees (:func:`~eagle_fast.speculative.drafter.as_drafter`):
        Medusa heads (static tree), an EAGLE-1/2/3 drafter (dynamic tree), any
        object with ``propose(context) -> DraftTree`` and ``reset()``, a
        function ``guess(input_ids) -> tokens`` (chain), or None (plain
        decoding).  Its state is reset first.
    input_ids : (P,) or (1, P) integers
        The prompt, P >= 1.
    max_new_tokens : int
        Upper bound on the new tokens (0: nothing is run).
    temperature, top_p, top_k :
        0 = greedy (exactly the target's own greedy tokens).  Above 0: the
        target's distribution after HF-order warping (temperature, top-k,
        top-p; :func:`warp_probs`), sampled losslessly.
    eos_token_id : int, collection of ints or None
        Stop after emitting one of these.
    rng : numpy.random.Generator, int seed or None
        Randomness for temperature > 0 (None: a fresh default generator).
    tree : optional
        The tree shape, for the drafter kinds that take one: Medusa choices, a
        shipped tree's name or a ``TreeTemplate``; EAGLE ``{"top_k", "depth",
        "total_tokens"}``; ``"chain"`` or ``{"chain": steps}`` for a chain.

    Returns
    -------
    GenerationResult
        ``tokens`` (new tokens, EOS included), ``stats``, ``timings``,
        ``finish_reason``.
    """
    start = time.perf_counter()
    max_new = _check_max_new(max_new_tokens)
    t = float(temperature)
    if not math.isfinite(t) or t < 0:
        raise ValueError(f"temperature must be finite and >= 0, got {temperature!r}")
    eos = _eos_set(eos_token_id)
    vocab = int(target.vocab_size)
    prompt = check_token_ids("input_ids", input_ids, vocab)
    proposer = as_drafter(drafter, tree)
    generator: Optional[np.random.Generator] = None
    if t > 0:
        generator = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        warp_probs(np.zeros(1), temperature=t, top_k=top_k, top_p=top_p)  # validates warping
    stats = AcceptanceStats()
    drafting = forward = verification = 0.0
    emitted: list[int] = []
    finish = "length"

    def finish_timings() -> GenerationTimings:
        total = time.perf_counter() - start
        return GenerationTimings(drafting=drafting, target_forward=forward,
                                 verification=verification,
                                 bookkeeping=max(total - drafting - forward - verification, 0.0),
                                 total=total)

    if max_new == 0:
        return GenerationResult(np.zeros(0, dtype=np.int64), stats, finish_timings(), "length")

    proposer.reset()
    tick = time.perf_counter()
    out = target.prefill(prompt)
    forward += time.perf_counter() - tick
    tick = time.perf_counter()
    root = _first_token(out.logits[-1], t, top_p, top_k, generator)
    verification += time.perf_counter() - tick
    emitted.append(root)
    sequence = prompt.tolist() + [root]
    new_hidden = out.hidden_states
    if root in eos:
        finish = "eos"
    while finish != "eos" and len(emitted) < max_new:
        tick = time.perf_counter()
        draft = proposer.propose(DraftContext(np.array(sequence, dtype=np.int64), new_hidden))
        drafting += time.perf_counter() - tick
        if not isinstance(draft, DraftTree):
            raise TypeError(f"the drafter returned {type(draft).__name__}, not a DraftTree")
        if int(draft.tokens[0]) != root:
            raise ValueError(f"the drafter's tree has root token {int(draft.tokens[0])}, "
                             f"expected the last emitted token {root}")
        # nodes deeper than the tokens still to emit cannot change the output
        draft = _prune(draft, max_new - len(emitted) - 1)
        tick = time.perf_counter()
        out = target.forward_tree(draft)
        forward += time.perf_counter() - tick
        tick = time.perf_counter()
        if t == 0:
            result = verify_greedy(draft, out.logits)
        else:
            assert generator is not None
            result = verify_sampling(draft, out.logits, temperature=t, top_p=top_p,
                                     top_k=top_k, rng=generator)
        verification += time.perf_counter() - tick
        stats.add(result, num_draft_tokens=draft.num_nodes - 1)
        new_tokens = result.tokens.tolist()
        for token in new_tokens:
            emitted.append(int(token))
            if token in eos:
                finish = "eos"
                break
            if len(emitted) == max_new:
                break
        tick = time.perf_counter()
        target.commit(result.accepted_nodes)  # also on the last round: a consistent cache
        forward += time.perf_counter() - tick
        if finish == "eos" or len(emitted) >= max_new:
            break
        sequence += new_tokens
        root = int(new_tokens[-1])
        new_hidden = out.hidden_states[result.accepted_nodes]
    return GenerationResult(np.array(emitted, dtype=np.int64), stats, finish_timings(), finish)
