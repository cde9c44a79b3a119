"""How far one draft head's predictions are from another's (e.g. a quantized
head from its float32 original), measured on the same hidden states."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ._head import DraftHead

# States per predict call: bounds the float64 (B, V) work arrays to ~64 MB at
# vocab 128k.
_CHUNK = 64


@dataclass(frozen=True)
class Comparison:
    """Agreement of ``other`` with ``reference`` over ``n_states`` hidden states.

    top1_agreement: fraction of states where both predict the same token.
    topk_overlap: mean |top-k(reference) ∩ top-k(other)| / k.
    max_abs_confidence_delta: max over states of |confidence_ref - confidence_other|
        (each head's probability of its own predicted token).
    mean_kl: mean KL(p_ref ‖ p_other) in nats, computed in float64 from the logits.
    """

    n_states: int
    k: int
    top1_agreement: float
    topk_overlap: float
    max_abs_confidence_delta: float
    mean_kl: float


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    wide = logits.astype(np.float64)
    wide -= wide.max(axis=-1, keepdims=True)
    return wide - np.log(np.exp(wide).sum(axis=-1, keepdims=True))


def compare(reference: DraftHead, other: DraftHead, hidden: Any, *, top_k: int = 5,
            temperature: float = 1.0) -> Comparison:
    """Compare two heads of the same shape on ``hidden`` ((d_model,) or (B, d_model)).

    Both heads run their own fast path (``predict`` with logits); the metrics
    are computed in float64.  See :class:`Comparison` for what is measured.
    """
    if (reference.d_model, reference.d_proj, reference.vocab_size) != (
            other.d_model, other.d_proj, other.vocab_size):
        raise ValueError(
            "heads differ in shape: (d_model, d_proj, vocab_size) = "
            f"{(reference.d_model, reference.d_proj, reference.vocab_size)} vs "
            f"{(other.d_model, other.d_proj, other.vocab_size)}")
    states = np.asarray(hidden)
    if states.ndim == 1:
        states = states[None, :]
    if states.ndim != 2 or states.shape[0] == 0:
        raise ValueError(f"hidden must have shape (d_model,) or (B, d_model) with B >= 1, "
                         f"got shape {np.shape(hidden)}")
    agree = overlap = kl_total = 0.0
    max_delta = 0.0
    for start in range(0, states.shape[0], _CHUNK):
        chunk = states[start:start + _CHUNK]
        ref = reference.predict(chunk, top_k=top_k, temperature=temperature,
                                return_logits=True)
        oth = other.predict(chunk, top_k=top_k, temperature=temperature,
                            return_logits=True)
        assert ref.logits is not None and oth.logits is not None
        agree += float((ref.tokens[:, 0] == oth.tokens[:, 0]).sum())
        overlap += sum(len(np.intersect1d(a, b)) for a, b in zip(ref.tokens, oth.tokens))
        delta = np.abs(ref.token_probs[:, 0].astype(np.float64)
                       - oth.token_probs[:, 0].astype(np.float64))
        max_delta = max(max_delta, float(delta.max()))
        log_ref = _log_softmax(ref.logits)
        log_oth = _log_softmax(oth.logits)
        kl_total += float((np.exp(log_ref) * (log_ref - log_oth)).sum())
    n = states.shape[0]
    return Comparison(n_states=n, k=top_k, top1_agreement=agree / n,
                      topk_overlap=overlap / (n * top_k),
                      max_abs_confidence_delta=max_delta, mean_kl=kl_total / n)
