"""DraftHead: validated weights plus the fast predict path."""

from __future__ import annotations

from typing import Any, Optional, Union

import numpy as np

from . import _backend
from ._validation import (
    as_kernel_array,
    check_finite,
    check_temperature,
    check_top_k,
    head_arrays,
    real_array,
    resolve_dtype,
    resolve_num_threads,
)

# Below this many bytes of weights a call runs serially: waking an OpenMP team
# costs 1-3 us warm (~100 us when its threads sleep), more than the whole
# computation of a small head.  Measured on the 2-core dev machine (float32,
# B = 1, median us per call, 1 vs 2 threads): 80 KiB 6.0 vs 7.3, 320 KiB 13.7
# vs 11.9, 640 KiB 23.6 vs 23.3, 2.3 MiB 107 vs 47.
PARALLEL_MIN_WEIGHT_BYTES = 256 * 1024

# Up to this k the kernel keeps per-thread top-k lists while it streams the
# LM head; larger k sorts the full logits afterwards (O(V log V), still exact).
STREAMING_TOP_K_MAX = 64

_FLOAT_MAX = float(np.finfo(np.float64).max)


class DraftResult:
    """What ``DraftHead.predict`` returns.

    For one hidden state: ``tokens`` and ``token_probs`` have shape ``(k,)``,
    ``logits`` and ``probs`` shape ``(V,)``; for a batch of B states they gain
    a leading ``B`` axis.  ``logits`` are temperature-scaled (``L x / T``, or
    ``L x`` when T = 0), so ``probs == softmax(logits)``, as in the spec.
    """

    __slots__ = ("tokens", "token_probs", "logits", "probs")

    tokens: np.ndarray
    token_probs: np.ndarray
    logits: Optional[np.ndarray]
    probs: Optional[np.ndarray]

    def __init__(self, tokens: np.ndarray, token_probs: np.ndarray,
                 logits: Optional[np.ndarray] = None,
                 probs: Optional[np.ndarray] = None) -> None:
        self.tokens = tokens
        self.token_probs = token_probs
        self.logits = logits
        self.probs = probs

    @property
    def predicted_token(self) -> Union[int, np.ndarray]:
        """The top-1 token id (an int, or an int64 array of shape (B,))."""
        top = self.tokens[..., 0]
        return int(top) if top.ndim == 0 else top

    @property
    def confidence(self) -> Union[float, np.ndarray]:
        """Probability of the top-1 token (a float, or an array of shape (B,))."""
        top = self.token_probs[..., 0]
        return float(top) if top.ndim == 0 else top

    def __repr__(self) -> str:
        extra = "".join(
            f", {name}=<array {getattr(self, name).shape}>"
            for name in ("logits", "probs") if getattr(self, name) is not None
        )
        return f"DraftResult(tokens={self.tokens!r}, token_probs={self.token_probs!r}{extra})"


class DraftHead:
    """An EAGLE-style draft head: ``probs = softmax(L · SiLU(W h + b) / T)``.

    Parameters
    ----------
    projection_weight : array_like, shape (d_proj, d_model)
    projection_bias : array_like, shape (d_proj,)
    lm_head_weight : array_like, shape (vocab_size, d_proj)
    dtype : float32 or float64, optional
        Compute dtype.  By default the weights' own float dtype is kept
        (float32 stays float32); integer weights become float64; weights of
        different float dtypes are an error unless ``dtype`` is given.

    Weights are checked once here (shapes, finite values) and converted to
    C-contiguous arrays of ``dtype``; arrays that already are are not copied,
    so do not modify them afterwards.
    """

    def __init__(self, projection_weight: Any, projection_bias: Any,
                 lm_head_weight: Any, *, dtype: Optional[Any] = None) -> None:
        weight, bias, lm_head = head_arrays(
            projection_weight, projection_bias, lm_head_weight,
            ("projection_weight", "projection_bias", "lm_head_weight"))
        self._dtype = resolve_dtype(
            {"projection_weight": weight, "projection_bias": bias, "lm_head_weight": lm_head},
            dtype,
        )
        arrays = {}
        for name, array in (("projection_weight", weight), ("projection_bias", bias),
                            ("lm_head_weight", lm_head)):
            converted = as_kernel_array(array, self._dtype)
            if not np.isfinite(converted).all():
                check_finite(array, name)  # NaN/inf in the input itself
                raise ValueError(f"{name} holds values too large for {self._dtype}")
            arrays[name] = converted
        self._backend = _backend.active()
        self._kernel = self._backend.draft.KernelHead(
            arrays["projection_weight"], arrays["projection_bias"], arrays["lm_head_weight"]
        )
        self._arrays = arrays
        weight_bytes = sum(a.nbytes for a in arrays.values())
        self._parallel = weight_bytes >= PARALLEL_MIN_WEIGHT_BYTES
        self._default_threads = self._backend.draft.max_threads()
        self._d_model = self._kernel.d_model
        self._vocab_size = self._kernel.vocab
        self._streaming_top_k_max = min(STREAMING_TOP_K_MAX, self._vocab_size)

    # -- properties -----------------------------------------------------------

    @property
    def d_model(self) -> int:
        return self._d_model

    @property
    def d_proj(self) -> int:
        return self._kernel.d_proj

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    @property
    def backend(self) -> str:
        """The backend this head runs on: "compiled" or "python"."""
        return self._backend.name

    @property
    def projection_weight(self) -> np.ndarray:
        return self._read_only("projection_weight")

    @property
    def projection_bias(self) -> np.ndarray:
        return self._read_only("projection_bias")

    @property
    def lm_head_weight(self) -> np.ndarray:
        return self._read_only("lm_head_weight")

    def _read_only(self, name: str) -> np.ndarray:
        view = self._arrays[name].view()
        view.flags.writeable = False
        return view

    def __reduce__(self) -> tuple:
        # Pickles (e.g. for multiprocessing) as its weights; unpickling
        # re-validates them and binds the backend active at that time.
        arrays = self._arrays
        return (DraftHead, (arrays["projection_weight"], arrays["projection_bias"],
                            arrays["lm_head_weight"]))

    def __repr__(self) -> str:
        return (f"DraftHead(d_model={self.d_model}, d_proj={self.d_proj}, "
                f"vocab_size={self.vocab_size}, dtype={self.dtype}, backend={self.backend!r})")

    # -- inference --------------------------------------------------------------

    def _as_hidden(self, hidden: Any) -> np.ndarray:
        """``hidden`` as a C-contiguous (d_model,) or (B, d_model) array of the
        head's dtype, or a clear error."""
        array = real_array(hidden, "hidden")
        if array.ndim not in (1, 2) or array.shape[-1] != self.d_model or 0 in array.shape:
            raise ValueError(
                f"hidden must have shape (d_model,) = ({self.d_model},) or "
                f"(B, d_model) = (B, {self.d_model}) with B >= 1, got shape {array.shape}"
            )
        return as_kernel_array(array, self._dtype)

    def predict(self, hidden: Any, *, temperature: float = 1.0, top_k: int = 1,
                return_logits: bool = False, return_probs: bool = False,
                num_threads: Optional[int] = None) -> DraftResult:
        """Draft the next token for one hidden state or a batch.

        Parameters
        ----------
        hidden : array_like, shape (d_model,) or (B, d_model)
            Target-model hidden state(s); cast to the head's dtype.
        temperature : float, default 1.0
            Softmax temperature, finite and >= 0; 0 means no scaling (as the spec).
        top_k : int, default 1
            How many best tokens to return, 1 <= top_k <= vocab_size.
        return_logits, return_probs : bool
            Also return the full vocab-sized logits / probabilities.
        num_threads : int, optional
            OpenMP threads: None = default (honours OMP_NUM_THREADS), -1 = all,
            -2 = all but one, ...  Small heads always run on one thread.

        Returns
        -------
        DraftResult
            ``tokens`` (int64, best first, ties to the lower id), ``token_probs``,
            optional ``logits``/``probs``, and ``predicted_token``/``confidence``.
        """
        # The common case passes these identity/type tests in well under a
        # microsecond; anything else takes the full validation path.
        if not (type(hidden) is np.ndarray and hidden.dtype is self._dtype
                and hidden.flags.c_contiguous and 0 < hidden.ndim < 3
                and hidden.shape[-1] == self._d_model and hidden.size):
            hidden = self._as_hidden(hidden)
        if type(temperature) is not float or not 0.0 <= temperature <= _FLOAT_MAX:
            temperature = check_temperature(temperature)
        if type(top_k) is not int or not 0 < top_k <= self._streaming_top_k_max:
            top_k = check_top_k(top_k, self._vocab_size)
        if num_threads is None:
            n_threads = self._default_threads
        else:
            n_threads = resolve_num_threads(num_threads, self._default_threads)
        if not self._parallel:
            n_threads = 1

        if top_k <= STREAMING_TOP_K_MAX:
            n_bad, tokens, token_probs, logits, probs = self._kernel.forward(
                hidden, temperature, top_k, return_logits, return_probs, n_threads)
        else:
            n_bad, _, _, logits, probs = self._kernel.forward(
                hidden, temperature, 1, True, True, n_threads)
        if n_bad:
            self._raise_non_finite(hidden)
        if top_k > STREAMING_TOP_K_MAX:
            # Stable sort of the negated logits: best first, ties to the lower id.
            tokens = np.argsort(-logits, axis=-1, kind="stable")[..., :top_k].astype(np.int64)
            token_probs = np.take_along_axis(probs, tokens, axis=-1)
            logits = logits if return_logits else None
            probs = probs if return_probs else None
        return DraftResult(tokens, token_probs, logits, probs)

    def _raise_non_finite(self, hidden: np.ndarray) -> None:
        bad_rows = np.flatnonzero(~np.isfinite(hidden.reshape(-1, self._d_model)).all(axis=1))
        if bad_rows.size:
            rows = ", ".join(str(r) for r in bad_rows[:10])
            raise ValueError(f"hidden contains NaN or inf, or values beyond {self._dtype} "
                             f"(in state(s) {rows})")
        raise FloatingPointError(
            "the logits overflowed to inf or NaN in "
            f"{self.dtype}: the hidden states or weights are too large for this dtype"
        )


def predict(hidden: Any, projection_weight: Any, projection_bias: Any, lm_head_weight: Any,
            **kwargs: Any) -> DraftResult:
    """One-shot ``DraftHead(W, b, L).predict(hidden, **kwargs)``.

    Builds (and validates) the head on every call: reuse a ``DraftHead`` when
    the weights do not change.  ``dtype`` goes to the head, the rest to predict.
    """
    dtype = kwargs.pop("dtype", None)
    head = DraftHead(projection_weight, projection_bias, lm_head_weight, dtype=dtype)
    return head.predict(hidden, **kwargs)
