"""MedusaHeads: several residual draft heads that read the same hidden state.

Medusa head i guesses the token i + 1 steps after the next one, from the same
hidden state: ``x_i = h + SiLU(W_i h + b_i)``, ``logits_i = L_i x_i``.  One
``predict`` validates the hidden state once and runs every head in one
GIL-free kernel call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator, Optional, Sequence, Union

import numpy as np

from ._head import STREAMING_TOP_K_MAX, DraftHead, DraftResult
from ._threads import team_size
from ._validation import check_temperature, check_top_k, resolve_num_threads

if TYPE_CHECKING:
    from .speculative.medusa_tree import TreeTemplate
    from .speculative.tree import DraftTree


class MedusaHeads:
    """A sequence of residual :class:`DraftHead` s sharing d_model, compute
    dtype and backend (e.g. from :func:`eagle_fast.load_medusa`).

    ``predict(hidden, top_k=k)`` returns a :class:`DraftResult` whose
    ``tokens``/``token_probs`` are shaped ``(num_heads, k)`` for one state and
    ``(B, num_heads, k)`` for a batch; head i's row is its guess for the token
    i + 1 steps after the next one.
    """

    def __init__(self, heads: Sequence[DraftHead]) -> None:
        heads = tuple(heads)
        if not heads:
            raise ValueError("MedusaHeads needs at least one head")
        for i, head in enumerate(heads):
            if not isinstance(head, DraftHead):
                raise TypeError(f"head {i} is not a DraftHead: {head!r}")
            if not head.residual:
                raise ValueError(f"head {i} is not residual; Medusa heads compute "
                                 "x = h + SiLU(W h + b) (DraftHead(..., residual=True))")
            if head.d2t is not None:
                raise ValueError(f"head {i} has a d2t map; Medusa heads predict over the "
                                 "full vocabulary")
        first = heads[0]
        for i, head in enumerate(heads[1:], start=1):
            if (head.d_model, head.dtype, head.backend) != (first.d_model, first.dtype,
                                                            first.backend):
                raise ValueError(
                    f"head {i} (d_model={head.d_model}, dtype={head.dtype}, backend="
                    f"{head.backend!r}) differs from head 0 (d_model={first.d_model}, "
                    f"dtype={first.dtype}, backend={first.backend!r})")
        self._heads = heads
        self._kernels = [head._kernel for head in heads]
        self._draft = first._backend.draft
        self._min_vocab = min(head.vocab_size for head in heads)
        # Each head is one parallel region: its own bytes are a call's work.
        self._head_bytes = max(head.nbytes for head in heads)
        self._default_threads = first._default_threads

    @property
    def heads(self) -> tuple[DraftHead, ...]:
        return self._heads

    @property
    def num_heads(self) -> int:
        return len(self._heads)

    @property
    def d_model(self) -> int:
        return self._heads[0].d_model

    @property
    def dtype(self) -> np.dtype:
        return self._heads[0].dtype

    @property
    def weight_dtype(self) -> str:
        """The heads' storage type ("mixed" if they differ)."""
        kinds = {head.weight_dtype for head in self._heads}
        return kinds.pop() if len(kinds) == 1 else "mixed"

    @property
    def activations(self) -> str:
        """The heads' ``activations`` ("float", "int8"; "mixed" if they differ)."""
        kinds = {head.activations for head in self._heads}
        return kinds.pop() if len(kinds) == 1 else "mixed"

    @property
    def nbytes(self) -> int:
        return sum(head.nbytes for head in self._heads)

    def __len__(self) -> int:
        return len(self._heads)

    def __getitem__(self, index: int) -> DraftHead:
        return self._heads[index]

    def __iter__(self) -> Iterator[DraftHead]:
        return iter(self._heads)

    def __reduce__(self) -> tuple:
        # Pickles as its heads (each as its stored weights).
        return (MedusaHeads, (self._heads,))

    def __repr__(self) -> str:
        first = self._heads[0]
        return (f"MedusaHeads(num_heads={self.num_heads}, d_model={self.d_model}, "
                f"vocab_size={first.vocab_size}, weight_dtype={self.weight_dtype!r}, "
                f"backend={first.backend!r})")

    def predict(self, hidden: Any, *, temperature: float = 1.0, top_k: int = 1,
                num_threads: Optional[int] = None) -> DraftResult:
        """Every head's top-k for one hidden state or a batch (see the class
        docstring for shapes; arguments as :meth:`DraftHead.predict`)."""
        first = self._heads[0]
        hidden = first._as_hidden(hidden)
        temperature = check_temperature(temperature)
        top_k = check_top_k(top_k, self._min_vocab)
        n_threads = resolve_num_threads(num_threads, self._default_threads)
        n_threads = team_size(self._head_bytes * (hidden.shape[0] if hidden.ndim == 2 else 1),
                              n_threads)
        if top_k <= STREAMING_TOP_K_MAX:
            n_bad, tokens, token_probs = self._draft.forward_heads(
                self._kernels, hidden, temperature, top_k, n_threads)
        else:
            results = [head.predict(hidden, temperature=temperature, top_k=top_k,
                                    num_threads=num_threads) for head in self._heads]
            n_bad = 0
            tokens = np.stack([result.tokens for result in results])
            token_probs = np.stack([result.token_probs for result in results])
        if n_bad:
            first._raise_non_finite(hidden)
        if hidden.ndim == 2:
            # (num_heads, B, k) -> (B, num_heads, k)
            tokens = np.ascontiguousarray(tokens.transpose(1, 0, 2))
            token_probs = np.ascontiguousarray(token_probs.transpose(1, 0, 2))
        return DraftResult(tokens, token_probs)

    def draft_tree(self, hidden: Any, root_token: int,
                   choices_or_template: Union["TreeTemplate", str, Sequence[Sequence[int]]],
                   *, temperature: float = 1.0, num_threads: Optional[int] = None
                   ) -> "DraftTree":
        """The Medusa draft tree for one hidden state.

        Runs every head once (one kernel call, ``top_k`` = the template's
        ``top_k``) and fills the template (:class:`TreeTemplate`, or Medusa
        choices / a shipped tree's name, made into one with ``top_k=10``) with
        the ranked tokens: node ``(c0, ..., c_{d-1})`` gets head ``d - 1``'s
        ``c_{d-1}``-th token (Medusa's ``tree_candidates``; ``root_token`` is
        node 0). ``scores`` are the sums of the chosen tokens' log-probs
        (softmax of ``logits / temperature``) along each path, root 0, taken
        from the kernel's probabilities (where a float32 probability underflows
        to 0, that head runs once more for its exact log-softmax). A tree
        deeper than the number of heads is a ValueError.
        """
        from .speculative.medusa_tree import TreeTemplate

        if isinstance(choices_or_template, TreeTemplate):
            template = choices_or_template
        else:
            template = TreeTemplate.from_medusa_choices(choices_or_template)
        if template.max_depth > self.num_heads:
            raise ValueError(f"the tree is {template.max_depth} deep but there are only "
                             f"{self.num_heads} Medusa heads (one per depth)")
        hidden_array = np.asarray(hidden)
        if hidden_array.ndim != 1:
            raise ValueError(f"hidden must have shape (d_model,) = ({self.d_model},) for "
                             f"draft_tree, got shape {hidden_array.shape}")
        result = self.predict(hidden_array, temperature=temperature, top_k=template.top_k,
                              num_threads=num_threads)
        with np.errstate(divide="ignore"):
            logprobs = np.log(result.token_probs.astype(np.float64))
        underflow = np.flatnonzero((result.token_probs == 0).any(axis=1))
        for h in underflow:  # a probability below the dtype's range: exact log-softmax
            full = self._heads[h].predict(hidden_array, temperature=temperature,
                                          top_k=template.top_k, return_logits=True,
                                          num_threads=num_threads)
            assert full.logits is not None
            logits = full.logits.astype(np.float64)
            top = logits.max()
            lse = top + np.log(np.exp(logits - top).sum())
            logprobs[h] = logits[result.tokens[h]] - lse
        return template.build(root_token, result.tokens, logprobs)
