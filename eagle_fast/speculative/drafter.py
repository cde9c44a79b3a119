"""The drafter protocol: what proposes the draft tree of each round.

A drafter is asked once per round, with a :class:`DraftContext`, for a
:class:`DraftTree` whose root is the token the target emitted last (vLLM's
proposer interface, transformers' candidate generator).  The context is what
the target produced since the previous call:

* ``input_ids`` -- the whole sequence so far; its last token is the root
  (emitted, not yet run through the target);
* ``hidden_states`` -- the target's features (:attr:`Target.hidden_layers`)
  of the positions run since the previous call, one row per position, the
  last row being the position *before* the root: row ``j`` belongs to
  position ``N - 1 - k + j`` (``N = len(input_ids)``, ``k`` rows), whose next
  token is ``input_ids[N - k + j]``.  After the prefill these are every
  prompt position; after a round the accepted path's nodes (root and accepted
  tokens).

Adapters (:func:`as_drafter` picks one): :class:`MedusaDrafter` (Medusa heads,
static tree or chain), :class:`EagleTreeDrafter` (an ``EagleDrafter``:
EAGLE-2 dynamic tree or chain), :class:`ChainDrafter` (any function guessing
the next tokens from the sequence: n-gram / prompt lookup, tests),
:class:`NoDrafter` (plain decoding: the root alone).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Protocol, Sequence, Union, runtime_checkable

import numpy as np

from .tree import DraftTree

__all__ = ["Drafter", "DraftContext", "MedusaDrafter", "EagleTreeDrafter", "ChainDrafter",
           "NoDrafter", "as_drafter"]


@dataclass(frozen=True)
class DraftContext:
    """The drafter's input for one round (module docstring)."""

    input_ids: np.ndarray
    hidden_states: np.ndarray

    @property
    def root_token(self) -> int:
        """The token the target emitted last: the tree's node 0."""
        return int(self.input_ids[-1])


@runtime_checkable
class Drafter(Protocol):
    """Proposes one draft tree per round."""

    def propose(self, context: DraftContext) -> DraftTree:
        """The draft tree for this round; ``tree.tokens[0]`` must be
        ``context.root_token``."""
        ...

    def reset(self) -> None:
        """Forget any per-sequence state (called before each generation)."""
        ...


class NoDrafter:
    """No drafting: every round's tree is the root alone (plain decoding,
    one target forward per token)."""

    def propose(self, context: DraftContext) -> DraftTree:
        return DraftTree.chain([context.root_token])

    def reset(self) -> None:
        pass

    def __repr__(self) -> str:
        return "NoDrafter()"


class ChainDrafter:
    """A chain of guesses from ``guess(input_ids) -> sequence of token ids``
    (the tokens after the root; may be empty), capped at ``max_steps``."""

    def __init__(self, guess: Callable[[np.ndarray], Sequence[int]], *,
                 max_steps: Optional[int] = None) -> None:
        if not callable(guess):
            raise TypeError(f"guess must be callable, got {type(guess).__name__}")
        if max_steps is not None and (isinstance(max_steps, bool) or int(max_steps) < 0):
            raise ValueError(f"max_steps must be None or >= 0, got {max_steps!r}")
        self.guess = guess
        self.max_steps = None if max_steps is None else int(max_steps)

    def propose(self, context: DraftContext) -> DraftTree:
        guesses = [int(t) for t in self.guess(context.input_ids)]
        if self.max_steps is not None:
            guesses = guesses[:self.max_steps]
        return DraftTree.chain([context.root_token] + guesses)

    def reset(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"ChainDrafter({self.guess!r}, max_steps={self.max_steps})"


def _chain_steps(tree: Any, default: int) -> Optional[int]:
    """Chain length if ``tree`` asks for a chain ("chain" or {"chain": k}), else None."""
    if isinstance(tree, str) and tree == "chain":
        return default
    if isinstance(tree, Mapping) and "chain" in tree:
        if len(tree) != 1:
            raise ValueError(f'a chain tree takes only {{"chain": steps}}, got {dict(tree)}')
        steps = tree["chain"]
        if isinstance(steps, bool) or int(steps) != steps or steps < 0:
            raise ValueError(f"chain steps must be an integer >= 0, got {steps!r}")
        return int(steps)
    return None


class MedusaDrafter:
    """Medusa heads as a drafter: one kernel call per round on the hidden state
    before the root (the target's last hidden state after its final norm),
    filling a static tree.

    ``tree``: None (Medusa's ``mc_sim_7b_63`` when there are >= 4 heads and
    every head's vocabulary has >= 10 tokens, else the top-1 chain of every
    head), Medusa choices / a shipped tree's name / a :class:`TreeTemplate`,
    ``"chain"`` (the top-1 token of every head) or ``{"chain": k}`` (of the
    first k heads).
    """

    def __init__(self, heads: Any, tree: Any = None) -> None:
        from .._medusa import MedusaHeads
        from .medusa_tree import TreeTemplate

        if not isinstance(heads, MedusaHeads):
            raise TypeError(f"heads must be MedusaHeads, got {type(heads).__name__}")
        self.heads = heads
        if tree is None:
            small_vocab = min(h.vocab_size for h in heads.heads) < 10
            tree = "chain" if heads.num_heads < 4 or small_vocab else "mc_sim_7b_63"
        steps = _chain_steps(tree, heads.num_heads)
        if steps is not None:
            if steps > heads.num_heads:
                raise ValueError(f"a chain of {steps} needs {steps} Medusa heads, there are "
                                 f"{heads.num_heads}")
            self.template: Optional[TreeTemplate] = (
                None if steps == 0 else
                TreeTemplate.from_medusa_choices([(0,) * d for d in range(1, steps + 1)],
                                                 top_k=1))
        elif isinstance(tree, TreeTemplate):
            self.template = tree
        else:
            self.template = TreeTemplate.from_medusa_choices(tree)
        if self.template is not None and self.template.max_depth > heads.num_heads:
            raise ValueError(f"the tree is {self.template.max_depth} deep but there are only "
                             f"{heads.num_heads} Medusa heads (one per depth)")

    def propose(self, context: DraftContext) -> DraftTree:
        if self.template is None:
            return DraftTree.chain([context.root_token])
        hidden = context.hidden_states
        if hidden.ndim != 2 or hidden.shape[0] == 0 or hidden.shape[1] != self.heads.d_model:
            raise ValueError(f"Medusa heads of d_model={self.heads.d_model} need hidden states "
                             f"(k, {self.heads.d_model}), got {hidden.shape} (use the target's "
                             f"final-norm hidden states: hidden_layers=None)")
        return self.heads.draft_tree(hidden[-1], context.root_token, self.template)

    def reset(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"MedusaDrafter({self.heads!r}, template={self.template!r})"


class EagleTreeDrafter:
    """An EAGLE-1/2 or EAGLE-3 drafter (``EagleDrafter``: ``draft_tree``,
    ``draft_chain``, ``reset``) as a drafter.

    ``tree``: None (``top_k=8, depth=5, total_tokens=60``, EAGLE's meaning),
    a mapping with any of ``top_k`` / ``depth`` / ``total_tokens``, ``"chain"``
    (greedy chain of 5) or ``{"chain": k}``.
    """

    def __init__(self, drafter: Any, tree: Any = None) -> None:
        for name in ("draft_tree", "draft_chain", "reset"):
            if not callable(getattr(drafter, name, None)):
                raise TypeError(f"{type(drafter).__name__} has no {name}() (expected an "
                                f"EagleDrafter)")
        self.drafter = drafter
        self.chain_steps = _chain_steps(tree, 5)
        options = {"top_k": 8, "depth": 5, "total_tokens": 60}
        if self.chain_steps is None and tree is not None:
            if not isinstance(tree, Mapping):
                raise TypeError(f'tree for an EAGLE drafter must be None, "chain" or a mapping '
                                f'of top_k / depth / total_tokens, got {tree!r}')
            unknown = set(tree) - set(options)
            if unknown:
                raise ValueError(f"unknown EAGLE tree options {sorted(unknown)}; expected "
                                 f"top_k, depth, total_tokens")
            options.update(tree)
        self.options = options

    def propose(self, context: DraftContext) -> DraftTree:
        if self.chain_steps is not None:
            return self.drafter.draft_chain(context.hidden_states, context.input_ids,
                                            self.chain_steps)
        return self.drafter.draft_tree(context.hidden_states, context.input_ids, **self.options)

    def reset(self) -> None:
        self.drafter.reset()

    def __repr__(self) -> str:
        how = f"chain={self.chain_steps}" if self.chain_steps is not None else str(self.options)
        return f"EagleTreeDrafter({self.drafter!r}, {how})"


DrafterLike = Union[None, Drafter, Callable[[np.ndarray], Sequence[int]], Any]


def as_drafter(drafter: DrafterLike, tree: Any = None) -> Any:
    """Wrap what the user passed: None -> :class:`NoDrafter`; an object with
    ``propose``/``reset`` -> itself (``tree`` must be None); ``MedusaHeads`` ->
    :class:`MedusaDrafter`; an ``EagleDrafter`` -> :class:`EagleTreeDrafter`; a
    callable -> :class:`ChainDrafter`."""
    from .._medusa import MedusaHeads

    if drafter is None:
        if tree is not None:
            raise ValueError("tree= needs a drafter")
        return NoDrafter()
    if isinstance(drafter, MedusaHeads):
        return MedusaDrafter(drafter, tree)
    if callable(getattr(drafter, "propose", None)) and callable(getattr(drafter, "reset", None)):
        if tree is not None:
            raise ValueError(f"tree= is for MedusaHeads / EagleDrafter; "
                             f"{type(drafter).__name__} proposes its own trees")
        return drafter
    if callable(getattr(drafter, "draft_tree", None)) and callable(
            getattr(drafter, "draft_chain", None)):
        return EagleTreeDrafter(drafter, tree)
    if callable(drafter):
        steps = _chain_steps(tree, 0) if tree is not None else None
        if tree is not None and steps is None:
            raise ValueError('a guessing function takes tree=None or {"chain": max_steps}')
        return ChainDrafter(drafter, max_steps=steps)
    raise TypeError(f"cannot draft with {type(drafter).__name__}: pass MedusaHeads, an "
                    f"EagleDrafter, a Drafter (propose/reset), a guessing function or None")
