"""DraftHead: validated weights plus the fast predict path."""

from __future__ import annotations

import os
from typing import Any, Optional, Union

import numpy as np

from . import _backend
from ._storage import (
    GROUPED,
    LOW_PRECISION,
    STORAGE_ARRAY_DTYPE,
    StoredMatrix,
    resolve_weight_dtype,
)
from ._threads import team_size
from ._validation import (
    as_kernel_array,
    check_bool,
    check_d2t,
    check_finite,
    check_temperature,
    check_top_k,
    head_arrays,
    real_array,
    resolve_dtype,
    resolve_num_threads,
)


# Up to this k the kernel keeps per-thread top-k lists while it streams the
# LM head; larger k sorts the full logits afterwards (O(V log V), still exact).
STREAMING_TOP_K_MAX = 64

_FLOAT_MAX = float(np.finfo(np.float64).max)

# The ``activations`` option: "float" (exact) or "int8" (integer dot products).
ACTIVATIONS = ("float", "int8")
# Weight storages "int8" activations apply to.
INT_ACTIVATION_WEIGHTS = ("int8", "q8", "q4")


def check_activations(activations: Any, weight_dtype: str) -> str:
    """``activations`` checked against a head's storage type."""
    if not isinstance(activations, str) or activations not in ACTIVATIONS:
        raise ValueError(f"activations must be one of {', '.join(map(repr, ACTIVATIONS))}, "
                         f"got {activations!r}")
    if activations == "int8" and weight_dtype not in INT_ACTIVATION_WEIGHTS:
        raise ValueError(f"activations='int8' applies to int8, q8 and q4 weights only, "
                         f"not weight_dtype={weight_dtype!r} (use activations='float')")
    return activations


class DraftResult:
    """What ``DraftHead.predict`` returns.

    For one hidden state: ``tokens`` and ``token_probs`` have shape ``(k,)``,
    ``logits`` and ``probs`` shape ``(V,)``; for a batch of B states they gain
    a leading ``B`` axis.  ``logits`` are temperature-scaled (``L x / T``, or
    ``L x`` when T = 0), so ``probs == softmax(logits)``, as in the spec.

    For a head with an EAGLE-3 draft vocabulary (``d2t``), ``tokens`` are
    target-vocabulary ids and ``draft_tokens`` the draft-vocabulary ids they
    come from (None otherwise); ``logits``/``probs`` are over the draft
    vocabulary unless ``predict(..., scatter_to_target=True)``.
    """

    __slots__ = ("tokens", "token_probs", "logits", "probs", "draft_tokens")

    tokens: np.ndarray
    token_probs: np.ndarray
    logits: Optional[np.ndarray]
    probs: Optional[np.ndarray]
    draft_tokens: Optional[np.ndarray]

    def __init__(self, tokens: np.ndarray, token_probs: np.ndarray,
                 logits: Optional[np.ndarray] = None,
                 probs: Optional[np.ndarray] = None,
                 draft_tokens: Optional[np.ndarray] = None) -> None:
        self.tokens = tokens
        self.token_probs = token_probs
        self.logits = logits
        self.probs = probs
        self.draft_tokens = draft_tokens

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
            for name in ("logits", "probs", "draft_tokens") if getattr(self, name) is not None
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
    weight_dtype : str, optional
        How W and L are stored: ``"float32"``, ``"float64"`` (the compute
        dtype itself; the default), or low precision -- ``"bfloat16"``,
        ``"float16"`` (2 bytes per weight), ``"int8"`` (1 byte, symmetric
        per output row with a float32 scale), ``"q8"`` (int8 in groups of 32
        along a row with a float16 scale each, 8.5 bits per weight) or
        ``"q4"`` (4-bit codes in groups of 32, symmetric, a float16 scale
        each, 4.5 bits per weight).  Low-precision heads compute in
        float32, with a float32 bias; see ``eagle_fast._storage`` for the exact
        rounding.  Weights beyond the float16/bfloat16 range are an error.
    residual : bool, default False
        A Medusa head: ``x = h + SiLU(W h + b)`` (needs d_proj == d_model).
    d2t : array_like of int, shape (vocab_size,), optional
        EAGLE-3 reduced draft vocabulary: draft token ``i`` is target token
        ``i + d2t[i]``; ``tokens`` are then target ids.  Must be one-to-one
        and inside ``[0, target_vocab_size)``.
    target_vocab_size : int, optional
        Size of the target vocabulary (default: one past the largest target
        id of ``d2t``), an integer of at most ``2**31 - 1``; only with ``d2t``.
    activations : {"float", "int8"}, default "float"
        How int8/q8/q4 heads take their dot products.  ``"float"``: exactly
        a float32 computation on the dequantized weights.  ``"int8"``:
        llama.cpp-style integer dot products -- each state (h for W, the
        features x for L) is quantized once per call to int8 in groups of 32
        columns (Q8_0: ``d = fl32(max|v| / 127)``, ``q = rint(clip(fl32(v /
        d), -127, 127))``, nearest with ties to even; ``q = 0`` where ``d =
        0``), the integer sum ``w . q`` of each 32-column group is exact
        (int32), and only its scaling by ``fl32(dw * d)`` and the float32
        sum over the groups (one fused multiply-add each, in column order)
        are rounded: every backend and SIMD level gives the same bits, and a batch
        equals its states one by one.  Faster on AVX2 at a small cost in accuracy
        (``eagle_fast.compare``); a runtime choice, not stored in
        checkpoints.  Other weight dtypes only take ``"float"``.  Full
        definition: ``eagle_fast._int_dot_py``.

    Weights are checked once here (shapes, finite values) and converted to
    C-contiguous, aligned arrays; arrays that already are in the stored form
    are not copied, so do not modify them afterwards.
    """

    def __init__(self, projection_weight: Any, projection_bias: Any,
                 lm_head_weight: Any, *, dtype: Optional[Any] = None,
                 weight_dtype: Optional[Any] = None, residual: bool = False,
                 d2t: Any = None, target_vocab_size: Optional[int] = None,
                 activations: str = "float") -> None:
        weight, bias, lm_head = head_arrays(
            projection_weight, projection_bias, lm_head_weight,
            ("projection_weight", "projection_bias", "lm_head_weight"))
        inputs = {"projection_weight": weight, "projection_bias": bias,
                  "lm_head_weight": lm_head}
        stored_as = None if weight_dtype is None else resolve_weight_dtype(weight_dtype)
        if stored_as in LOW_PRECISION:
            if dtype is not None and np.dtype(dtype) != np.float32:
                raise TypeError(f"weight_dtype={stored_as!r} computes in float32; "
                                f"dtype must be float32 or None, got {np.dtype(dtype)}")
            compute_dtype = np.dtype(np.float32)
        elif stored_as is not None:
            compute_dtype = np.dtype(stored_as)
            if dtype is not None and np.dtype(dtype) != compute_dtype:
                raise TypeError(f"dtype={np.dtype(dtype)} contradicts "
                                f"weight_dtype={stored_as!r}")
        else:
            compute_dtype = resolve_dtype(inputs, dtype)
            stored_as = compute_dtype.name
        check_activations(activations, stored_as)

        def convert(name: str, array: np.ndarray, dtype: np.dtype) -> np.ndarray:
            converted = as_kernel_array(array, dtype)
            if not np.isfinite(converted).all():
                check_finite(array, name)  # NaN/inf in the input itself
                raise ValueError(f"{name} holds values too large for {dtype}")
            return converted

        if stored_as in LOW_PRECISION:
            # NaN/inf are rejected before conversion, so they are never stored.
            check_finite(weight, "projection_weight")
            check_finite(lm_head, "lm_head_weight")
            stored_weight = StoredMatrix.encode(weight, stored_as, "projection_weight")
            stored_lm_head = StoredMatrix.encode(lm_head, stored_as, "lm_head_weight")
        else:
            stored_weight = StoredMatrix(
                stored_as, convert("projection_weight", weight, compute_dtype))
            stored_lm_head = StoredMatrix(
                stored_as, convert("lm_head_weight", lm_head, compute_dtype))
        self._bind(stored_weight, convert("projection_bias", bias, compute_dtype),
                   stored_lm_head, residual, d2t, target_vocab_size, activations)

    @classmethod
    def from_stored(cls, weight_dtype: Optional[str] = None, projection_weight: Any = None,
                    projection_bias: Any = None, lm_head_weight: Any = None, *,
                    projection_scales: Any = None, lm_head_scales: Any = None,
                    residual: bool = False, d2t: Any = None,
                    target_vocab_size: Optional[int] = None, d_model: Optional[int] = None,
                    activations: str = "float", **stored: Any) -> DraftHead:
        """A head from weights already in their stored form (as
        :meth:`stored_arrays` returns them, or as read from a checkpoint):
        ``bfloat16`` as uint16 bit patterns, ``float16``, ``int8`` with float32
        per-row scales, ``q8`` (int8 codes, float16 scales of shape
        (rows, groups)), ``q4`` (uint8, two codes per byte, float16 scales),
        or ``float32``/``float64``.  Nothing is re-rounded;
        everything is checked (dtypes, shapes, finite values).  ``residual``,
        ``d2t``, ``target_vocab_size`` and ``activations`` as in the constructor.

        ``weight_dtype`` may be left out: it follows from the dtype of
        ``projection_weight`` (uint16 is bfloat16) and its scales (float16
        scales: q8 for int8 codes, q4 for uint8).  ``d_model`` is needed for a
        q4 head whose d_model is not a multiple of 32 (its rows are stored
        padded to whole groups; default: 32 per group).  The arrays may also be
        passed under the names :meth:`stored_arrays` gives them
        (``projection.weight``, ..., ``lm_head.weight_scale``), so
        ``DraftHead.from_stored(**head.stored_arrays(), residual=head.residual,
        d2t=head.d2t, target_vocab_size=head.target_vocab_size)`` rebuilds
        ``head`` bit for bit (add ``d_model=head.d_model`` for q4)."""
        arrays = {"projection_weight": projection_weight, "projection_bias": projection_bias,
                  "lm_head_weight": lm_head_weight, "projection_scales": projection_scales,
                  "lm_head_scales": lm_head_scales}
        for name, value in stored.items():
            if name not in _STORED_NAMES:
                raise TypeError(f"from_stored() got an unexpected keyword argument {name!r}")
            argument = _STORED_NAMES[name]
            if arrays[argument] is not None:
                raise TypeError(f"from_stored() got both {argument} and {name!r}")
            arrays[argument] = value
        for argument in ("projection_weight", "projection_bias", "lm_head_weight"):
            if arrays[argument] is None:
                raise TypeError(f"from_stored() missing the array {argument!r}")
        if weight_dtype is None:
            weight_dtype = _stored_weight_dtype(arrays["projection_weight"],
                                                arrays["projection_scales"])
        stored_as = resolve_weight_dtype(weight_dtype)
        check_activations(activations, stored_as)
        projection_bias = arrays["projection_bias"]
        bias = real_array(projection_bias, "projection_bias")
        if stored_as != "q4" and d_model is not None:
            raise TypeError("d_model only applies to a q4 head (its rows are padded)")
        weight = StoredMatrix.from_arrays(stored_as, arrays["projection_weight"],
                                          arrays["projection_scales"], "projection_weight",
                                          n_cols=d_model)
        lm_head = StoredMatrix.from_arrays(
            stored_as, arrays["lm_head_weight"], arrays["lm_head_scales"], "lm_head_weight",
            n_cols=weight.shape[0] if stored_as == "q4" else None)
        bias_dtype = np.float32 if stored_as in LOW_PRECISION else np.dtype(stored_as)
        if stored_as in GROUPED:
            # Shapes by column count (q4 rows hold two codes per byte).
            head_arrays(np.empty(weight.shape, np.int8), bias,
                        np.empty(lm_head.shape, np.int8),
                        ("projection_weight", "projection_bias", "lm_head_weight"))
        else:
            head_arrays(weight.data, bias, lm_head.data,
                        ("projection_weight", "projection_bias", "lm_head_weight"))
        if bias.dtype.kind == "f" and bias.dtype.newbyteorder("=") != bias_dtype:
            raise TypeError(f"projection_bias of a {stored_as} head must be "
                            f"{np.dtype(bias_dtype)}, got {bias.dtype}")
        bias = as_kernel_array(bias, np.dtype(bias_dtype))
        check_finite(bias, "projection_bias")
        head = cls.__new__(cls)
        head._bind(weight, bias, lm_head, residual, d2t, target_vocab_size, activations)
        return head

    def _bind(self, weight: StoredMatrix, bias: np.ndarray, lm_head: StoredMatrix,
              residual: Any, d2t: Any, target_vocab_size: Any,
              activations: str = "float") -> None:
        """Check the head's options, then hand validated stored weights to the
        active backend's kernel."""
        d_proj, d_model = weight.shape
        vocab_size = lm_head.shape[0]
        residual = check_bool(residual, "residual")
        if residual and d_proj != d_model:
            raise ValueError(f"a residual (Medusa) head needs d_proj == d_model, got "
                             f"projection_weight of shape {weight.shape}")
        self._d2t: Optional[np.ndarray] = None
        self._target_ids: Optional[np.ndarray] = None
        self._target_vocab_size: Optional[int] = None
        if d2t is not None:
            self._d2t, self._target_ids, self._target_vocab_size = check_d2t(
                d2t, vocab_size, target_vocab_size)
        elif target_vocab_size is not None:
            raise ValueError("target_vocab_size only applies to a head with d2t")
        self._residual = bool(residual)
        self._weight = weight
        self._bias = bias
        self._lm_head = lm_head
        # The canonical dtype instance: predict's fast path tests identity.
        self._dtype = np.dtype(bias.dtype.type)
        self._weight_dtype = weight.weight_dtype
        self._backend = _backend.active()
        low_precision = weight.weight_dtype in LOW_PRECISION
        self._kernel = self._backend.draft.KernelHead(
            weight.data, bias, lm_head.data,
            weight.weight_dtype if low_precision else "native", weight.scales, lm_head.scales,
            self._residual, weight.n_cols, activations)
        self._activations = activations
        self._nbytes = weight.nbytes + bias.nbytes + lm_head.nbytes
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
        """Compute dtype: of hidden states, outputs and the bias."""
        return self._dtype

    @property
    def weight_dtype(self) -> str:
        """How W and L are stored: float32, float64, bfloat16, float16, int8,
        q8 or q4."""
        return self._weight_dtype

    @property
    def activations(self) -> str:
        """How the dot products are taken: "float" (exact) or "int8" (states
        quantized to int8, integer dot products; int8/q8/q4 heads)."""
        return self._activations

    @property
    def residual(self) -> bool:
        """True for a Medusa head: x = h + SiLU(W h + b)."""
        return self._residual

    @property
    def d2t(self) -> Optional[np.ndarray]:
        """EAGLE-3 draft-to-target offsets (int64, read-only), or None."""
        return None if self._d2t is None else _read_only(self._d2t)

    @property
    def target_vocab_size(self) -> Optional[int]:
        """Size of the target vocabulary ``tokens`` index (None without d2t)."""
        return self._target_vocab_size

    @property
    def nbytes(self) -> int:
        """Bytes of stored weights (both matrices, bias, int8 scales): what a
        single-state predict streams from memory."""
        return self._nbytes

    @property
    def backend(self) -> str:
        """The backend this head runs on: "compiled" or "python"."""
        return self._backend.name

    @property
    def projection_weight(self) -> np.ndarray:
        """W as the kernel computes with it (dequantized to float32 for
        low-precision heads, a new array on each access)."""
        return _read_only(self._weight.dequantize())

    @property
    def projection_bias(self) -> np.ndarray:
        return _read_only(self._bias)

    @property
    def lm_head_weight(self) -> np.ndarray:
        """L as the kernel computes with it (see ``projection_weight``)."""
        return _read_only(self._lm_head.dequantize())

    def stored_arrays(self) -> dict[str, np.ndarray]:
        """The weights exactly as stored (read-only), by their checkpoint
        tensor names: ``projection.weight``, ``projection.bias``,
        ``lm_head.weight`` and, for int8/q8/q4, ``projection.weight_scale`` and
        ``lm_head.weight_scale``.  bfloat16 matrices are uint16 bit patterns;
        q4 matrices are uint8, two codes per byte, rows padded to groups of 32.
        :meth:`from_stored` takes them back as they are:
        ``DraftHead.from_stored(**head.stored_arrays())`` (plus ``residual``,
        ``d2t`` and ``target_vocab_size`` for such heads)."""
        arrays = {"projection.weight": self._weight.data, "projection.bias": self._bias,
                  "lm_head.weight": self._lm_head.data}
        if self._weight.scales is not None and self._lm_head.scales is not None:
            arrays["projection.weight_scale"] = self._weight.scales
            arrays["lm_head.weight_scale"] = self._lm_head.scales
        return {name: _read_only(array) for name, array in arrays.items()}

    def to(self, weight_dtype: Any = None, *, activations: Optional[str] = None) -> DraftHead:
        """This head with its matrices stored as ``weight_dtype`` (default:
        as now) and the given ``activations`` (default: this head's where it
        applies to the new storage, else "float"); this very head if nothing
        changes.  Converting a low-precision head re-rounds its dequantized
        weights; the bias becomes the new compute dtype.  Changing only
        ``activations`` shares the stored weights, bit for bit."""
        stored_as = self._weight_dtype if weight_dtype is None else resolve_weight_dtype(
            weight_dtype)
        if activations is None:
            activations = (self._activations if stored_as in INT_ACTIVATION_WEIGHTS
                           else "float")
        check_activations(activations, stored_as)
        if stored_as == self._weight_dtype:
            if activations == self._activations:
                return self
            head = DraftHead.__new__(DraftHead)
            head._bind(self._weight, self._bias, self._lm_head, self._residual, self._d2t,
                       self._target_vocab_size, activations)
            return head
        return DraftHead(self._weight.dequantize(), self._bias, self._lm_head.dequantize(),
                         weight_dtype=stored_as, residual=self._residual, d2t=self._d2t,
                         target_vocab_size=self._target_vocab_size, activations=activations)

    def __reduce__(self) -> tuple:
        # Pickles (e.g. for multiprocessing) as its stored weights, bit for
        # bit; unpickling re-checks them and binds the backend active then.
        return (_restore_head, (self._weight_dtype, self._weight.data, self._bias,
                                self._lm_head.data, self._weight.scales, self._lm_head.scales,
                                self._residual, self._d2t, self._target_vocab_size,
                                self._weight.n_cols if self._weight_dtype == "q4" else None,
                                self._activations))

    def __repr__(self) -> str:
        extra = ", residual=True" if self._residual else ""
        if self._activations != "float":
            extra += f", activations={self._activations!r}"
        if self._target_vocab_size is not None:
            extra += f", target_vocab_size={self._target_vocab_size}"
        return (f"DraftHead(d_model={self.d_model}, d_proj={self.d_proj}, "
                f"vocab_size={self.vocab_size}, weight_dtype={self.weight_dtype!r}, "
                f"dtype={self.dtype}{extra}, backend={self.backend!r})")

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
                num_threads: Optional[int] = None,
                scatter_to_target: bool = False) -> DraftResult:
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
            Also return the full vocab-sized logits / probabilities (bools or
            NumPy bools only: anything else is a TypeError).
        num_threads : int, optional
            OpenMP threads: None = default (honours OMP_NUM_THREADS), -1 = all,
            -2 = all but one, ... (counted back from OMP_NUM_THREADS, else the
            usable CPUs, on every backend); 0 or a count that leaves no thread
            is a ValueError.  An upper bound: each thread needs 8 MiB of work
            (weight bytes x states, eagle_fast._threads), so small heads run on
            one thread.
        scatter_to_target : bool, default False
            Heads with ``d2t`` only: return ``logits``/``probs`` over the target
            vocabulary (tokens outside the draft vocabulary get -inf / 0).

        Returns
        -------
        DraftResult
            ``tokens`` (int64, best first, ties to the lower id), ``token_probs``,
            optional ``logits``/``probs``, and ``predicted_token``/``confidence``.
        """
        # The common case passes these identity/type tests in well under a
        # microsecond; anything else takes the full validation path (carray:
        # C-contiguous, aligned and writeable; a read-only array is checked
        # there, and not copied).
        if not (type(hidden) is np.ndarray and hidden.dtype is self._dtype
                and hidden.flags.carray and 0 < hidden.ndim < 3
                and hidden.shape[-1] == self._d_model and hidden.size):
            hidden = self._as_hidden(hidden)
        if type(temperature) is not float or not 0.0 <= temperature <= _FLOAT_MAX:
            temperature = check_temperature(temperature)
        if type(top_k) is not int or not 0 < top_k <= self._streaming_top_k_max:
            top_k = check_top_k(top_k, self._vocab_size)
        if (type(return_logits) is not bool or type(return_probs) is not bool
                or type(scatter_to_target) is not bool):
            return_logits = check_bool(return_logits, "return_logits")
            return_probs = check_bool(return_probs, "return_probs")
            scatter_to_target = check_bool(scatter_to_target, "scatter_to_target")
        if num_threads is None:
            n_threads = self._default_threads
        else:
            n_threads = resolve_num_threads(num_threads, self._default_threads)
        if n_threads > 1:   # serial below the shared work threshold (_threads.py)
            n_threads = team_size(self._nbytes * (hidden.shape[0] if hidden.ndim == 2 else 1),
                                  n_threads)

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
        if self._target_ids is None:
            if scatter_to_target:
                raise ValueError("scatter_to_target=True needs a head with a d2t map")
            return DraftResult(tokens, token_probs, logits, probs)
        if scatter_to_target:
            logits = self._scatter(logits, -np.inf)
            probs = self._scatter(probs, 0.0)
        return DraftResult(self._target_ids[tokens], token_probs, logits, probs,
                           draft_tokens=tokens)

    def _scatter(self, values: Optional[np.ndarray], fill: float) -> Optional[np.ndarray]:
        """Draft-vocabulary ``values`` placed at their target ids, ``fill`` elsewhere."""
        if values is None or self._target_ids is None or self._target_vocab_size is None:
            return values
        full = np.full(values.shape[:-1] + (self._target_vocab_size,), fill, values.dtype)
        full[..., self._target_ids] = values
        return full

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

    # -- checkpoints --------------------------------------------------------------

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Write this head to a safetensors file at ``path``, bit for bit as
        stored, with its configuration in the file's metadata (format in
        ``eagle_fast._checkpoint``), atomically; OSError naming ``path`` if it
        cannot be written."""
        from ._checkpoint import save_head
        save_head(self, path)

    @classmethod
    def load(cls, path: Union[str, os.PathLike], *, activations: str = "float") -> DraftHead:
        """The head :meth:`save` wrote to ``path``, bit for bit, on the active
        backend, with the given ``activations`` (a runtime option, not
        stored: see the constructor).  A bad file raises
        ``eagle_fast.CheckpointError`` (a ValueError) naming the problem; an
        ``activations`` that does not apply to its storage, a ValueError.
        Medusa checkpoints load with :func:`eagle_fast.load_medusa`."""
        from ._checkpoint import load_head
        return load_head(path, activations=activations)


# stored_arrays()'s names -> from_stored's arguments.
_STORED_NAMES = {"projection.weight": "projection_weight", "projection.bias": "projection_bias",
                 "lm_head.weight": "lm_head_weight",
                 "projection.weight_scale": "projection_scales",
                 "lm_head.weight_scale": "lm_head_scales"}


def _stored_weight_dtype(projection_weight: Any, projection_scales: Any = None) -> str:
    """The weight_dtype a stored projection matrix's dtype (and its scales')
    stands for."""
    dtype = np.asarray(projection_weight).dtype.newbyteorder("=")
    if projection_scales is not None and np.asarray(projection_scales).dtype == np.float16:
        if dtype == np.int8:
            return "q8"
        if dtype == np.uint8:
            return "q4"
    for name, array_dtype in STORAGE_ARRAY_DTYPE.items():
        if dtype == array_dtype:
            return name
    raise TypeError(f"cannot tell the weight_dtype of a stored projection_weight of dtype "
                    f"{dtype}; pass weight_dtype= ({', '.join(STORAGE_ARRAY_DTYPE)})")


def _read_only(array: np.ndarray) -> np.ndarray:
    view = array.view()
    view.flags.writeable = False
    return view


def _restore_head(weight_dtype: str, weight: np.ndarray, bias: np.ndarray,
                  lm_head: np.ndarray, weight_scales: Optional[np.ndarray],
                  lm_head_scales: Optional[np.ndarray], residual: bool,
                  d2t: Optional[np.ndarray], target_vocab_size: Optional[int],
                  d_model: Optional[int] = None, activations: str = "float") -> DraftHead:
    return DraftHead.from_stored(weight_dtype, weight, bias, lm_head,
                                 projection_scales=weight_scales,
                                 lm_head_scales=lm_head_scales, residual=residual, d2t=d2t,
                                 target_vocab_size=target_vocab_size, d_model=d_model,
                                 activations=activations)


def predict(hidden: Any, projection_weight: Any, projection_bias: Any, lm_head_weight: Any,
            **kwargs: Any) -> DraftResult:
    """One-shot ``DraftHead(W, b, L).predict(hidden, **kwargs)``.

    Builds (and validates) the head on every call: reuse a ``DraftHead`` when
    the weights do not change.  ``dtype``, ``weight_dtype`` and
    ``activations`` go to the head, the rest to predict.
    """
    dtype = kwargs.pop("dtype", None)
    weight_dtype = kwargs.pop("weight_dtype", None)
    activations = kwargs.pop("activations", "float")
    head = DraftHead(projection_weight, projection_bias, lm_head_weight, dtype=dtype,
                     weight_dtype=weight_dtype, activations=activations)
    return head.predict(hidden, **kwargs)
