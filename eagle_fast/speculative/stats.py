"""Acceptance statistics of speculative decoding, as data.

Conventions (vLLM's ``vllm/v1/spec_decode/metrics.py``): one verification is
one target forward; it emits ``num_accepted + 1`` tokens (the accepted draft
tokens and the target's own next token).

* mean acceptance length tau = 1 + accepted / verifications -- the figure
  papers report (EAGLE's tau, vLLM's "mean acceptance length");
* acceptance rate at depth d (1-based) = fraction of verifications that
  accepted at least d draft tokens (vLLM's per-position acceptance rate);
  ``conditional_acceptance_rates`` divides by those that reached depth d - 1;
* tokens per target forward = emitted tokens / verifications (equal to tau:
  each verification costs one target forward).
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

import numpy as np

from .verify import SampledVerifications, Verification

__all__ = ["AcceptanceStats"]


class AcceptanceStats:
    """Accumulates verifications: ``stats.add(verification)`` after each target
    forward (or ``stats.add_many(...)``), then read :attr:`mean_acceptance_length`,
    :attr:`acceptance_rates`, :attr:`histogram`, :meth:`as_dict`."""

    __slots__ = ("_counts", "_drafted")

    def __init__(self, verifications: Optional[Iterable[Verification]] = None) -> None:
        # _counts[a] = number of verifications that accepted a draft tokens.
        self._counts = np.zeros(1, dtype=np.int64)
        self._drafted = 0  # draft tokens offered (tree nodes minus roots), when known
        for v in verifications or ():
            self.add(v)

    # -- accumulation -------------------------------------------------------
    def _count(self, num_accepted: np.ndarray) -> None:
        if num_accepted.size == 0:
            return
        if int(num_accepted.min()) < 0:
            raise ValueError("num_accepted must be >= 0")
        top = int(num_accepted.max())
        if top >= self._counts.shape[0]:
            self._counts = np.concatenate(
                [self._counts, np.zeros(top + 1 - self._counts.shape[0], dtype=np.int64)])
        self._counts += np.bincount(num_accepted, minlength=self._counts.shape[0])

    def add(self, verification: Verification, *, num_draft_tokens: Optional[int] = None
            ) -> None:
        """Count one verification (one target forward).  ``num_draft_tokens``
        (the tree's nodes minus the root) feeds :attr:`draft_acceptance_rate`."""
        if not isinstance(verification, Verification):
            raise TypeError(f"expected a Verification, got {type(verification).__name__}")
        self._count(np.array([verification.num_accepted], dtype=np.int64))
        if num_draft_tokens is not None:
            self._drafted += int(num_draft_tokens)

    def add_many(self, verifications: SampledVerifications | Any) -> None:
        """Count a batch: a :class:`SampledVerifications`, or an array of
        num_accepted values."""
        if isinstance(verifications, SampledVerifications):
            values = verifications.num_accepted
        else:
            values = np.asarray(verifications)
            if values.dtype.kind not in "iu":
                raise TypeError("add_many takes SampledVerifications or integer counts")
        self._count(np.asarray(values, dtype=np.int64).reshape(-1))

    def merge(self, other: "AcceptanceStats") -> "AcceptanceStats":
        """A new AcceptanceStats holding both."""
        out = AcceptanceStats()
        out._count(np.repeat(np.arange(self._counts.shape[0]), self._counts))
        out._count(np.repeat(np.arange(other._counts.shape[0]), other._counts))
        out._drafted = self._drafted + other._drafted
        return out

    # -- figures ------------------------------------------------------------
    @property
    def num_verifications(self) -> int:
        """Verifications counted = target forwards."""
        return int(self._counts.sum())

    @property
    def num_accepted_tokens(self) -> int:
        return int((np.arange(self._counts.shape[0]) * self._counts).sum())

    @property
    def num_emitted_tokens(self) -> int:
        """Accepted tokens plus one target token per verification."""
        return self.num_accepted_tokens + self.num_verifications

    @property
    def mean_acceptance_length(self) -> float:
        """tau = 1 + accepted / verifications (NaN before any verification)."""
        calls = self.num_verifications
        return float("nan") if calls == 0 else 1.0 + self.num_accepted_tokens / calls

    @property
    def tokens_per_target_forward(self) -> float:
        """Emitted tokens per target forward (= tau)."""
        calls = self.num_verifications
        return float("nan") if calls == 0 else self.num_emitted_tokens / calls

    @property
    def histogram(self) -> np.ndarray:
        """histogram[a] = verifications that accepted exactly a draft tokens."""
        return self._counts.copy()

    @property
    def acceptance_rates(self) -> np.ndarray:
        """rates[d - 1] = fraction of verifications accepting >= d draft tokens,
        d = 1 .. the longest accepted so far."""
        calls = self.num_verifications
        if calls == 0:
            return np.zeros(0)
        at_least = self._counts[::-1].cumsum()[::-1]   # at_least[a] = #(accepted >= a)
        return at_least[1:] / calls

    @property
    def conditional_acceptance_rates(self) -> np.ndarray:
        """rates[d - 1] = P(accepted >= d | accepted >= d - 1)."""
        calls = self.num_verifications
        if calls == 0:
            return np.zeros(0)
        at_least = self._counts[::-1].cumsum()[::-1]
        return at_least[1:] / at_least[:-1]

    @property
    def draft_acceptance_rate(self) -> float:
        """Accepted / offered draft tokens (NaN unless ``num_draft_tokens`` was
        given to :meth:`add`)."""
        return float("nan") if self._drafted == 0 else self.num_accepted_tokens / self._drafted

    def as_dict(self) -> dict[str, Any]:
        """Plain-Python figures (JSON-ready)."""
        return {
            "num_verifications": self.num_verifications,
            "num_accepted_tokens": self.num_accepted_tokens,
            "num_emitted_tokens": self.num_emitted_tokens,
            "mean_acceptance_length": self.mean_acceptance_length,
            "tokens_per_target_forward": self.tokens_per_target_forward,
            "acceptance_rates": self.acceptance_rates.tolist(),
            "conditional_acceptance_rates": self.conditional_acceptance_rates.tolist(),
            "histogram": self.histogram.tolist(),
            "draft_acceptance_rate": self.draft_acceptance_rate,
        }

    def __repr__(self) -> str:
        rates = ", ".join(f"{r:.3f}" for r in self.acceptance_rates)
        return (f"AcceptanceStats(verifications={self.num_verifications}, "
                f"tau={self.mean_acceptance_length:.3f}, "
                f"acceptance_rates=[{rates}], histogram={self.histogram.tolist()})")
