"""EAGLE draft models on the CPU: EAGLE-1/2 and EAGLE-3 (SafeAILab/EAGLE).

Both run autoregressively in hidden-state space, one position per (target
feature, next token) pair:

* **EAGLE-1/2** (``kind == "eagle"``): ``h = fc(cat(embed(x_{j+1}), f_j))``
  (Linear 2d -> d, bias optional), then ``num_hidden_layers`` Llama decoder
  layers, of which layer 0 has no input RMSNorm; no final norm.  The output
  is the next step's feature and the input of the *target's* LM head.
* **EAGLE-3** (``kind == "eagle3"``): ``fc`` (3 d_target -> d, no bias)
  over three target layers' states -- applied only when the input is not
  d wide (chained steps feed back the layer output); one layer whose
  attention reads ``cat(input_layernorm(embed(x)), hidden_norm(h))`` (2d
  wide); logits ``lm_head(norm(h))`` over a reduced draft vocabulary, draft
  id i being target id ``i + d2t[i]``.

Layers: attention with RoPE (``rope_theta``; ``rope_scaling`` or, as
transformers >= 5 writes it, ``rope_parameters``: default, linear or Llama
3.1's ``llama3``) and
grouped-query heads, then ``h += down(SiLU(gate x) * up x)`` on the
post-attention RMSNorm.  The q/k/v projections are stacked into one matrix,
gate/up into another, so a step reads every weight once.  Every matrix
(fc, q/k/v, o, gate/up, down, the embedding and the LM head) is kept by
the project's storage machinery (``_storage.StoredMatrix``:
float32/float64, bfloat16, float16, int8, or the group-wise q8 / q4 of
llama.cpp's Q8_0 / Q4_0), and every matmul runs the draft-head kernel's
blocked driver on it: results are a float32 computation on the dequantized
weights.

Calling convention (EAGLE's ``topK_genrate``): ``input_ids`` is the whole
sequence so far, its last token the tree root; position j of the drafter
pairs token ``input_ids[j + 1]`` with the target feature of position j.
The drafter keeps the key/value cache of the positions it has run (the
"stable" prefix) between calls; ``hidden_states`` holds the features of the
positions it has not seen yet.  Tree nodes of depth i run at position
``len(input_ids) - 1 + i`` and attend to the prefix and to their ancestors;
they are never kept in the cache.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Mapping, Optional, Union

import numpy as np

from .. import _backend
from .._checkpoint import CheckpointError
from .._storage import (
    LOW_PRECISION,
    StoredMatrix,
    decode_bfloat16,
    resolve_weight_dtype,
)
from .._threads import team_size
from .._validation import check_int, resolve_num_threads
from ..speculative import DraftTree, dynamic_tree

PathLike = Union[str, "os.PathLike[str]"]

KINDS = ("eagle", "eagle3")

CONVERT_HINT = ("convert it to safetensors first: `eagle-fast convert <folder>` (on a "
                "machine with torch), or pip install torch")


# -- reading tensors --------------------------------------------------------------


@dataclass(frozen=True)
class RawTensor:
    """A tensor as read: ``values`` in a NumPy dtype (BF16: uint16 bit
    patterns) and the safetensors name of its dtype."""

    values: np.ndarray
    file_dtype: str

    def as_float(self, dtype: Any) -> np.ndarray:
        if self.file_dtype == "BF16":
            return decode_bfloat16(self.values).astype(dtype)
        return np.asarray(self.values, dtype=dtype)


_RAW_NUMPY = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I8": "i1",
              "U8": "u1", "I16": "<i2", "I32": "<i4", "I64": "<i8", "BOOL": "?"}


def _read_tensors(path: PathLike, names: Optional[list[str]] = None) -> dict[str, RawTensor]:
    """The named tensors (all when None) of one safetensors file, through the
    project's checkpoint reader; CheckpointError naming the file on problems.
    (The one place this module reads safetensors data.)"""
    from .._safetensors import SafetensorsFile

    with SafetensorsFile(path) as file:
        header = file.header
        if names is None:
            names = sorted(header.tensors)
        missing = [n for n in names if n not in header.tensors]
        if missing:
            raise header.error(f"missing tensors {missing}")
        unsupported = [n for n in names if header.tensors[n].dtype not in _RAW_NUMPY]
        if unsupported:
            raise header.error("unsupported tensor dtypes: " + ", ".join(
                f"{n} ({header.tensors[n].dtype})" for n in unsupported))
        arrays = file.read(names)
    return {n: RawTensor(arrays[n], header.tensors[n].dtype) for n in names}


def _tensor_names(path: PathLike) -> list[str]:
    from .. import _checkpoint
    return sorted(_checkpoint.read_header(path).tensors)


_TORCH_FILE_DTYPES = {"torch.float32": "F32", "torch.float64": "F64", "torch.float16": "F16",
                      "torch.bfloat16": "BF16", "torch.int8": "I8", "torch.int64": "I64",
                      "torch.int32": "I32", "torch.bool": "BOOL", "torch.uint8": "U8"}


def _torch_to_raw(tensor: Any) -> RawTensor:
    """A torch tensor as a RawTensor (bfloat16 kept bit for bit)."""
    import torch

    tensor = tensor.detach().cpu().contiguous()
    file_dtype = _TORCH_FILE_DTYPES.get(str(tensor.dtype))
    if file_dtype is None:
        raise TypeError(f"unsupported torch dtype {tensor.dtype}")
    if file_dtype == "BF16":
        return RawTensor(tensor.view(torch.int16).numpy().view(np.uint16).copy(), "BF16")
    return RawTensor(tensor.numpy().copy(), file_dtype)


def read_torch_checkpoint(path: PathLike) -> dict[str, RawTensor]:
    """A ``pytorch_model.bin`` state dict (needs torch; weights only)."""
    try:
        import torch
    except ImportError:
        raise ImportError(f"{path} is a PyTorch checkpoint, which needs torch to read; "
                          + CONVERT_HINT) from None
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch's errors vary by version
        raise CheckpointError(f"{path}: cannot read the PyTorch checkpoint: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"],
                                                                        dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a state dict ({type(state).__name__})")
    out = {}
    for name, tensor in state.items():
        if not hasattr(tensor, "detach"):
            raise CheckpointError(f"{path}: entry {name!r} is not a tensor")
        try:
            out[str(name)] = _torch_to_raw(tensor)
        except TypeError as exc:
            raise CheckpointError(f"{path}: tensor {name!r}: {exc}") from None
    return out


def _as_raw(value: Any, name: str) -> RawTensor:
    """An in-memory tensor (NumPy array, array-like or torch tensor) as a RawTensor."""
    if isinstance(value, RawTensor):
        return value
    if hasattr(value, "detach") and hasattr(value, "dtype"):
        return _torch_to_raw(value)
    array = np.asarray(value)
    kind = array.dtype.kind
    if kind == "f":
        names = {2: "F16", 4: "F32", 8: "F64"}
        if array.dtype.itemsize not in names:
            raise TypeError(f"{name}: unsupported float dtype {array.dtype}")
        return RawTensor(array, names[array.dtype.itemsize])
    if kind == "b":
        return RawTensor(array, "BOOL")
    if kind in "iu":
        return RawTensor(array.astype(np.int64), "I64")
    raise TypeError(f"{name}: expected a numeric array, got dtype {array.dtype}")


# -- configuration -----------------------------------------------------------------


@dataclass(frozen=True)
class EagleConfig:
    """The architecture of one drafter, from its ``config.json``."""

    kind: str
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    num_hidden_layers: int
    vocab_size: int          # target vocabulary (the embedding's rows)
    draft_vocab_size: int    # the LM head's rows (== vocab_size for EAGLE-1/2)
    input_size: int          # width of the target features: d, or 3 d_target (EAGLE-3)
    rms_norm_eps: float
    rope_theta: float
    rope_scaling_factor: float
    fc_bias: Optional[bool]  # None: as the checkpoint has it
    qkv_bias: bool
    # Llama 3.1 "llama3" RoPE: (factor, low_freq_factor, high_freq_factor,
    # original_max_position_embeddings); None for default/linear RoPE.
    rope_llama3: Optional[tuple[float, float, float, float]] = None

    @classmethod
    def from_dict(cls, config: Mapping[str, Any], kind: str) -> EagleConfig:
        def integer(key: str, default: Any = None, minimum: int = 1) -> int:
            value = config.get(key, default)
            if value is None:
                raise ValueError(f"config needs {key!r}")
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"config {key!r} must be an integer, got {value!r}")
            if value < minimum:
                raise ValueError(f"config {key!r} must be >= {minimum}, got {value}")
            return int(value)

        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        act = config.get("hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"config hidden_act must be 'silu', got {act!r}")
        d = integer("hidden_size")
        heads = integer("num_attention_heads")
        kv_heads = integer("num_key_value_heads", heads)
        if heads % kv_heads:
            raise ValueError(f"num_attention_heads={heads} is not a multiple of "
                             f"num_key_value_heads={kv_heads}")
        head_dim_value = config.get("head_dim") if kind == "eagle3" else None
        if head_dim_value is None:
            if d % heads:
                raise ValueError(f"hidden_size={d} is not a multiple of "
                                 f"num_attention_heads={heads}")
            head_dim = d // heads
        else:
            head_dim = integer("head_dim")
        if head_dim % 2:
            raise ValueError(f"the head dimension must be even for RoPE, got {head_dim}")
        vocab = integer("vocab_size")
        if kind == "eagle3":
            draft_vocab = integer("draft_vocab_size", vocab)
            if draft_vocab > vocab:
                raise ValueError(f"draft_vocab_size={draft_vocab} exceeds vocab_size={vocab}")
            input_size = 3 * integer("target_hidden_size", d)
            layers = 1
        else:
            draft_vocab = vocab
            input_size = d
            layers = integer("num_hidden_layers", 1)
        theta, factor, llama3 = _rope_settings(config)
        fc_bias = config.get("bias")
        if fc_bias is not None and not isinstance(fc_bias, bool):
            raise ValueError(f"config 'bias' must be true or false, got {fc_bias!r}")
        if kind == "eagle3" and fc_bias:
            raise ValueError("an EAGLE-3 fc has no bias (config 'bias' is true)")
        qkv_bias = bool(config.get("qkv_bias", False))
        return cls(kind, d, integer("intermediate_size"), heads, kv_heads, head_dim, layers,
                   vocab, draft_vocab, input_size, _positive(config, "rms_norm_eps", 1e-6),
                   theta, factor, fc_bias, qkv_bias, llama3)


ROPE_TYPES = ("default", "linear", "llama3")


def _positive(mapping: Mapping[str, Any], key: str, default: Any, what: str = "") -> float:
    """``mapping[key]`` (``default`` when absent or null) as a finite float > 0."""
    value = mapping.get(key, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value <= 0:
        raise ValueError(f"config {what}{key!r} must be a positive number, got {value!r}")
    return float(value)


def _rope_settings(config: Mapping[str, Any]
                   ) -> tuple[float, float, Optional[tuple[float, float, float, float]]]:
    """RoPE base, linear position factor and llama3 parameters of a config.

    Older configs (and SafeAILab/EAGLE's) carry ``rope_theta`` and
    ``rope_scaling`` (``type`` or ``rope_type``); transformers >= 5 writes one
    ``rope_parameters`` object holding ``rope_type`` and ``rope_theta``.  A
    type this drafter does not compute (dynamic NTK, YaRN, ...) is an error
    rather than silently default RoPE."""
    scaling = config.get("rope_scaling")
    parameters = config.get("rope_parameters")
    for name, value in (("rope_scaling", scaling), ("rope_parameters", parameters)):
        if value is not None and not isinstance(value, Mapping):
            raise ValueError(f"config {name} must be an object, got {value!r}")
    if scaling is not None and parameters is not None and \
            dict(scaling, rope_theta=None) != dict(parameters, rope_theta=None):
        raise ValueError("config has both rope_scaling and rope_parameters, and they differ")
    rope = parameters if parameters is not None else (scaling or {})
    theta = _positive(config, "rope_theta", None) if config.get("rope_theta") is not None \
        else _positive(rope, "rope_theta", 10000.0, "rope_parameters ")
    if config.get("rope_theta") is not None and rope.get("rope_theta") is not None \
            and float(rope["rope_theta"]) != theta:
        raise ValueError(f"config rope_theta={config['rope_theta']!r} differs from "
                         f"rope_parameters rope_theta={rope['rope_theta']!r}")
    kind = rope.get("rope_type", rope.get("type")) or "default"
    if kind not in ROPE_TYPES:
        raise ValueError(f"rope_scaling type {kind!r} is not supported "
                         f"(supported: {', '.join(ROPE_TYPES)})")
    if kind == "default":
        return theta, 1.0, None
    factor = _positive(rope, "factor", None, "rope_scaling ")
    if kind == "linear":
        return theta, factor, None
    low = _positive(rope, "low_freq_factor", None, "rope_scaling ")
    high = _positive(rope, "high_freq_factor", None, "rope_scaling ")
    original = _positive(rope, "original_max_position_embeddings", None, "rope_scaling ")
    if high <= low:
        raise ValueError(f"rope_scaling high_freq_factor={high:g} must exceed "
                         f"low_freq_factor={low:g}")
    return theta, 1.0, (factor, low, high, original)


def rope_inverse_frequencies(config: EagleConfig, dtype: np.dtype) -> np.ndarray:
    """theta ** (-2 i / head_dim) for the head_dim / 2 rotation pairs, in
    ``dtype``; with llama3 RoPE, wavelengths longer than
    original / low_freq_factor are divided by ``factor``, shorter than
    original / high_freq_factor kept, and the band between interpolated
    linearly in original / wavelength (Llama 3.1's definition)."""
    dtype = np.dtype(dtype)
    exponent = np.arange(0, config.head_dim, 2, dtype=dtype) / dtype.type(config.head_dim)
    inv_freq = (1.0 / (dtype.type(config.rope_theta) ** exponent)).astype(dtype)
    if config.rope_llama3 is None:
        return inv_freq
    factor, low, high, original = config.rope_llama3
    base = inv_freq.astype(np.float64)
    wavelength = 2 * math.pi / base
    smooth = np.clip((original / wavelength - low) / (high - low), 0.0, 1.0)
    # smooth == 0: long wavelengths, all divided; smooth == 1: short ones, kept
    scaled = (1 - smooth) * base / factor + smooth * base
    return scaled.astype(dtype)


def detect_kind(names: Any, config: Optional[Mapping[str, Any]] = None) -> str:
    """``"eagle3"`` for a ``midlayer.*`` checkpoint, ``"eagle"`` for ``layers.N.*``."""
    names = list(names)
    eagle3 = any(n.startswith("midlayer.") for n in names)
    eagle = any(n.startswith("layers.") for n in names)
    if eagle3 and eagle:
        raise ValueError("tensors of both layouts (midlayer.* and layers.*)")
    if eagle3:
        return "eagle3"
    if eagle:
        return "eagle"
    if config is not None and "draft_vocab_size" in config:
        return "eagle3"
    raise ValueError("no EAGLE layer tensors (layers.0.* or midlayer.*)")


# -- the model -----------------------------------------------------------------------


@dataclass
class _Layer:
    qkv: Any                  # kernel Matrix, rows q | k | v
    qkv_bias: Optional[np.ndarray]
    o: Any
    gate_up: Any              # rows gate | up
    down: Any
    post_norm: np.ndarray
    input_norm: Optional[np.ndarray]   # EAGLE-1 layers >= 1
    emb_norm: Optional[np.ndarray]     # EAGLE-3
    hidden_norm: Optional[np.ndarray]  # EAGLE-3


class _KVCache:
    """Keys and values per layer, rows = positions (stable prefix, then
    scratch rows for tree nodes)."""

    def __init__(self, n_layers: int, n_kv: int, head_dim: int, dtype: np.dtype) -> None:
        self.shape = (n_kv, head_dim)
        self.dtype = dtype
        self.n_layers = n_layers
        self.length = 0
        self.k = [np.zeros((0, n_kv, head_dim), dtype) for _ in range(n_layers)]
        self.v = [np.zeros((0, n_kv, head_dim), dtype) for _ in range(n_layers)]

    def ensure(self, rows: int) -> None:
        capacity = self.k[0].shape[0]
        if rows <= capacity:
            return
        new = max(rows, 2 * capacity, 64)
        for store in (self.k, self.v):
            for i, old in enumerate(store):
                grown = np.zeros((new,) + self.shape, self.dtype)
                grown[:capacity] = old   # the prefix and any tree rows written so far
                store[i] = grown


class EagleDrafter:
    """An EAGLE-1/2 or EAGLE-3 draft model with its own draft KV cache.

    Build with :meth:`load` (a checkpoint folder or file) or
    :meth:`from_state_dict`; draft with :meth:`draft_tree` (EAGLE-2 dynamic
    tree) or :meth:`draft_chain`; :meth:`reset` before a new sequence.

    Attributes: ``kind`` (``"eagle"`` or ``"eagle3"``), ``config``
    (:class:`EagleConfig`), ``dtype`` (compute dtype), ``weight_dtypes``
    (storage of every matrix), ``prefix_length`` (positions in the cache),
    ``d2t`` (EAGLE-3 draft -> target offsets, or None).
    """

    def __init__(self, tensors: Mapping[str, RawTensor], config: EagleConfig, *,
                 embed_tokens: Optional[RawTensor], lm_head: Optional[RawTensor],
                 weight_dtype: Optional[str], dtype: Any, source: str) -> None:
        self.config = config
        self.kind = config.kind
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype}")
        self._source = source
        self._weight_dtype = None if weight_dtype is None else resolve_weight_dtype(weight_dtype)
        if self.dtype == np.float64 and self._weight_dtype in LOW_PRECISION:
            raise ValueError(f"weight_dtype={self._weight_dtype!r} computes in float32; "
                             "it cannot be used with dtype=float64")
        self._ops: ModuleType = _backend.active().module("layers")
        self.weight_dtypes: dict[str, str] = {}
        self._matrices: dict[str, StoredMatrix] = {}
        self.nbytes = 0
        self._build(dict(tensors), embed_tokens, lm_head)
        self._cache = _KVCache(config.num_hidden_layers, config.num_key_value_heads,
                               config.head_dim, self.dtype)
        self._seen = np.zeros(0, dtype=np.int64)
        self._inv_freq = rope_inverse_frequencies(config, self.dtype)
        self._default_threads = int(self._ops.max_threads())

    # -- construction ---------------------------------------------------------------

    def _error(self, message: str) -> CheckpointError:
        return CheckpointError(f"{self._source}: {message}")

    def _storage_for(self, raw: RawTensor) -> str:
        if self._weight_dtype is not None:
            return self._weight_dtype
        if self.dtype == np.float64:
            return "float64"
        return {"BF16": "bfloat16", "F16": "float16"}.get(raw.file_dtype, "float32")

    def _matrix(self, name: str, parts: list[tuple[str, RawTensor]],
                shapes: list[tuple[int, int]]) -> Any:
        """One kernel matrix from row blocks ``parts`` (checked against ``shapes``)."""
        for (key, raw), shape in zip(parts, shapes):
            if raw.values.shape != shape:
                raise self._error(f"tensor {key!r} has shape {tuple(raw.values.shape)}, "
                                  f"expected {shape}")
            if raw.file_dtype not in ("F32", "F64", "F16", "BF16"):
                raise self._error(f"tensor {key!r} has dtype {raw.file_dtype}, expected a "
                                  "float dtype (F32, F64, F16, BF16)")
        storage = self._storage_for(parts[0][1])
        same = len({raw.file_dtype for _, raw in parts}) == 1
        try:
            if storage == "bfloat16" and same and parts[0][1].file_dtype == "BF16":
                bits = np.concatenate([raw.values for _, raw in parts]) if len(parts) > 1 \
                    else parts[0][1].values
                stored = StoredMatrix.from_arrays("bfloat16", bits, None, name)
            else:
                wide = np.float64 if storage == "float64" else np.float32
                values = [raw.as_float(wide) for _, raw in parts]
                if not all(np.isfinite(v).all() for v in values):
                    raise ValueError(f"{name} contains NaN or inf")
                stacked = np.concatenate(values) if len(values) > 1 else values[0]
                stored = StoredMatrix.encode(stacked, storage, name)
        except (ValueError, TypeError) as exc:
            raise self._error(str(exc)) from None
        self.weight_dtypes[name] = storage
        self._matrices[name] = stored
        self.nbytes += stored.nbytes
        return self._ops.Matrix(stored.data, stored.scales,
                                "native" if storage in ("float32", "float64") else storage,
                                self.dtype, stored.n_cols)

    def _vector(self, key: str, raw: Optional[RawTensor], size: int) -> np.ndarray:
        if raw is None:
            raise self._error(f"missing tensor {key!r}")
        if raw.values.shape != (size,):
            raise self._error(f"tensor {key!r} has shape {tuple(raw.values.shape)}, "
                              f"expected ({size},)")
        if raw.file_dtype not in ("F32", "F64", "F16", "BF16"):
            raise self._error(f"tensor {key!r} has dtype {raw.file_dtype}, expected a float")
        values = np.ascontiguousarray(raw.as_float(self.dtype))
        if not np.isfinite(values).all():
            raise self._error(f"tensor {key!r} contains NaN or inf")
        self.nbytes += values.nbytes
        return values

    def _build(self, tensors: dict[str, RawTensor], embed_tokens: Optional[RawTensor],
               lm_head: Optional[RawTensor]) -> None:
        c = self.config
        d, inter, q_rows = c.hidden_size, c.intermediate_size, c.num_attention_heads * c.head_dim
        kv_rows = c.num_key_value_heads * c.head_dim
        used: set[str] = set()

        def take(key: str, required: bool = True) -> Optional[RawTensor]:
            raw = tensors.get(key)
            if raw is None:
                if required:
                    raise self._error(f"missing tensor {key!r}")
                return None
            used.add(key)
            return raw

        def need(key: str) -> RawTensor:
            raw = take(key)
            assert raw is not None
            return raw

        eagle3 = c.kind == "eagle3"
        attn_in = 2 * d if eagle3 else d
        # fc
        fc = take("fc.weight")
        assert fc is not None
        fc_cols = c.input_size if eagle3 else 2 * d
        if fc.values.ndim != 2 or fc.values.shape[0] != d:
            raise self._error(f"tensor 'fc.weight' has shape {tuple(fc.values.shape)}, "
                              f"expected ({d}, {fc_cols}) (config hidden_size={d})")
        self._fc = self._matrix("fc", [("fc.weight", fc)], [(d, fc_cols)])
        fc_bias = take("fc.bias", required=False)
        if eagle3 and fc_bias is not None:
            raise self._error("an EAGLE-3 checkpoint has no 'fc.bias'")
        if c.fc_bias and fc_bias is None:
            raise self._error("missing tensor 'fc.bias' (config 'bias' is true)")
        if c.fc_bias is False and fc_bias is not None:
            raise self._error("unexpected tensor 'fc.bias' (config 'bias' is false)")
        self._fc_bias = None if fc_bias is None else self._vector("fc.bias", fc_bias, d)

        prefixes = ["midlayer."] if eagle3 else [f"layers.{i}." for i in range(c.num_hidden_layers)]
        self._layers: list[_Layer] = []
        for index, prefix in enumerate(prefixes):
            a = prefix + "self_attn."
            m = prefix + "mlp."
            parts = [(a + p + "_proj.weight", need(a + p + "_proj.weight")) for p in "qkv"]
            qkv = self._matrix(prefix + "qkv", parts,
                               [(q_rows, attn_in), (kv_rows, attn_in), (kv_rows, attn_in)])
            biases = [take(a + p + "_proj.bias", required=c.qkv_bias) for p in "qkv"]
            if not c.qkv_bias and any(b is not None for b in biases):
                raise self._error(f"unexpected q/k/v biases under {a!r} (config qkv_bias "
                                  "is not set)")
            qkv_bias = None
            if c.qkv_bias:
                qkv_bias = np.concatenate([
                    self._vector(a + p + "_proj.bias", b, n)
                    for p, b, n in zip("qkv", biases, (q_rows, kv_rows, kv_rows))])
            o = self._matrix(prefix + "o_proj", [(a + "o_proj.weight", need(a + "o_proj.weight"))],
                             [(d, q_rows)])
            gate_up = self._matrix(
                prefix + "gate_up",
                [(m + "gate_proj.weight", need(m + "gate_proj.weight")),
                 (m + "up_proj.weight", need(m + "up_proj.weight"))],
                [(inter, d), (inter, d)])
            down = self._matrix(prefix + "down_proj",
                                [(m + "down_proj.weight", need(m + "down_proj.weight"))],
                                [(d, inter)])
            post = self._vector(prefix + "post_attention_layernorm.weight",
                                take(prefix + "post_attention_layernorm.weight"), d)
            input_norm = emb_norm = hidden_norm = None
            key = prefix + "input_layernorm.weight"
            if eagle3:
                emb_norm = self._vector(key, take(key), d)
                hidden_norm = self._vector(prefix + "hidden_norm.weight",
                                           take(prefix + "hidden_norm.weight"), d)
            elif index > 0:
                input_norm = self._vector(key, take(key), d)
            elif key in tensors:
                raise self._error(f"unexpected tensor {key!r}: layer 0 of an EAGLE-1/2 "
                                  "drafter has no input norm")
            self._layers.append(_Layer(qkv, qkv_bias, o, gate_up, down, post, input_norm,
                                       emb_norm, hidden_norm))

        # Embedding (target vocabulary) and LM head.
        embed = take("embed_tokens.weight", required=False)
        if embed_tokens is not None:
            embed = embed_tokens
        if embed is None:
            raise self._error("the checkpoint has no 'embed_tokens.weight': pass "
                              "embed_tokens= (an array, or the target model's path)")
        self._embed_rows = c.vocab_size
        self._embed = self._stored("embed_tokens", embed, (c.vocab_size, d))

        self._norm = None
        self.d2t: Optional[np.ndarray] = None
        if eagle3:
            self._norm = self._vector("norm.weight", take("norm.weight"), d)
            head = take("lm_head.weight", required=lm_head is None)
            if lm_head is not None:
                head = lm_head
            assert head is not None
            self._lm_head = self._matrix("lm_head", [("lm_head.weight", head)],
                                         [(c.draft_vocab_size, d)])
            d2t = take("d2t", required=False)
            t2d = take("t2d", required=False)
            if c.draft_vocab_size != c.vocab_size:
                self.d2t = self._check_d2t(d2t, t2d)
            elif d2t is not None:
                # As EAGLE: with a full draft vocabulary, d2t is not applied.
                self._check_d2t(d2t, t2d)
        else:
            if lm_head is None:
                raise self._error("an EAGLE-1/2 drafter needs the target's LM head: pass "
                                  "lm_head= (an array of shape (vocab_size, hidden_size), "
                                  "or the target model's path)")
            self._lm_head = self._matrix("lm_head", [("lm_head", lm_head)],
                                         [(c.vocab_size, d)])
        unknown = sorted(set(tensors) - used - {"embed_tokens.weight"})
        unknown = [n for n in unknown if not n.endswith("rotary_emb.inv_freq")]
        if unknown:
            raise self._error(f"unexpected tensors for an {c.kind} drafter: {unknown[:8]}"
                              + (" ..." if len(unknown) > 8 else ""))

    def _stored(self, name: str, raw: RawTensor, shape: tuple[int, int]) -> StoredMatrix:
        if raw.values.shape != shape:
            raise self._error(f"{name} has shape {tuple(raw.values.shape)}, expected {shape} "
                              "(vocab_size, hidden_size)")
        if raw.file_dtype not in ("F32", "F64", "F16", "BF16"):
            raise self._error(f"{name} has dtype {raw.file_dtype}, expected a float")
        storage = self._storage_for(raw)
        try:
            if storage == "bfloat16" and raw.file_dtype == "BF16":
                stored = StoredMatrix.from_arrays("bfloat16", raw.values, None, name)
            else:
                values = raw.as_float(np.float64 if storage == "float64" else np.float32)
                if not np.isfinite(values).all():
                    raise ValueError(f"{name} contains NaN or inf")
                stored = StoredMatrix.encode(values, storage, name)
        except (ValueError, TypeError) as exc:
            raise self._error(str(exc)) from None
        self.weight_dtypes[name] = storage
        self._matrices[name] = stored
        self.nbytes += stored.nbytes
        return stored

    def _check_d2t(self, d2t: Optional[RawTensor], t2d: Optional[RawTensor]) -> np.ndarray:
        c = self.config
        if d2t is None:
            raise self._error(f"missing tensor 'd2t' (draft_vocab_size={c.draft_vocab_size} "
                              f"< vocab_size={c.vocab_size})")
        if d2t.file_dtype not in ("I64", "I32", "I16", "I8", "U8"):
            raise self._error(f"tensor 'd2t' has dtype {d2t.file_dtype}, expected integers")
        if d2t.values.shape != (c.draft_vocab_size,):
            raise self._error(f"tensor 'd2t' has shape {tuple(d2t.values.shape)}, expected "
                              f"({c.draft_vocab_size},) (draft_vocab_size)")
        offsets = d2t.values.astype(np.int64)
        targets = np.arange(c.draft_vocab_size) + offsets
        if targets.size and (targets.min() < 0 or targets.max() >= c.vocab_size):
            raise self._error(f"d2t maps draft tokens outside the target vocabulary "
                              f"[0, {c.vocab_size})")
        if np.unique(targets).size != targets.size:
            raise self._error("d2t is not one-to-one")
        if t2d is not None:
            if t2d.values.shape != (c.vocab_size,):
                raise self._error(f"tensor 't2d' has shape {tuple(t2d.values.shape)}, "
                                  f"expected ({c.vocab_size},) (vocab_size)")
            expected = np.zeros(c.vocab_size, dtype=bool)
            expected[targets] = True
            if not np.array_equal(t2d.values.astype(bool), expected):
                raise self._error("t2d does not mark exactly the target ids of d2t")
        return offsets

    @classmethod
    def from_state_dict(cls, tensors: Mapping[str, Any], config: Union[Mapping[str, Any],
                                                                        PathLike], *,
                        embed_tokens: Any = None, lm_head: Any = None,
                        weight_dtype: Optional[Any] = None, dtype: Any = np.float32,
                        kind: Optional[str] = None) -> EagleDrafter:
        """A drafter from in-memory weights in the published key layout
        (``fc.weight``, ``layers.0.*`` or ``midlayer.*``, ...; NumPy arrays or
        torch tensors) and its config (a dict or a ``config.json`` path).

        ``embed_tokens`` / ``lm_head``: the target's embedding and LM head
        (arrays), or a path to the target's safetensors file(s) from which
        only those tensors are read.  ``weight_dtype`` ("float32",
        "bfloat16", "float16", "int8", "q8", "q4"; see
        :class:`~eagle_fast.DraftHead` for the formats) stores every matrix so
        (None: as given, bfloat16/float16 kept); ``dtype`` is the compute dtype
        (low-precision weights compute in float32).
        """
        raw = {str(k): _as_raw(v, str(k)) for k, v in tensors.items()}
        return cls._create(raw, config, embed_tokens, lm_head, weight_dtype, dtype, kind,
                           "state dict")

    @classmethod
    def _create(cls, raw: dict[str, RawTensor], config: Any, embed_tokens: Any, lm_head: Any,
                weight_dtype: Any, dtype: Any, kind: Optional[str],
                source: str) -> EagleDrafter:
        if not isinstance(config, Mapping):
            config = _read_config(Path(config))
        try:
            if kind is None:
                kind = detect_kind(raw, config)
            parsed = EagleConfig.from_dict(config, kind)
        except ValueError as exc:
            raise CheckpointError(f"{source}: {exc}") from None
        embed_raw = _target_tensor(embed_tokens, "embed_tokens",
                                   ("model.embed_tokens.weight", "embed_tokens.weight"))
        head_raw = _target_tensor(lm_head, "lm_head", ("lm_head.weight",))
        return cls(raw, parsed, embed_tokens=embed_raw, lm_head=head_raw,
                   weight_dtype=weight_dtype, dtype=dtype, source=source)

    @classmethod
    def load(cls, path: PathLike, *, config: Any = None, embed_tokens: Any = None,
             lm_head: Any = None, weight_dtype: Optional[Any] = None,
             dtype: Any = np.float32) -> EagleDrafter:
        """A drafter from a checkpoint: a folder with ``config.json`` and
        ``model.safetensors`` (or sharded safetensors with their index, or
        ``pytorch_model.bin``, which needs torch), or a single safetensors
        file with ``config=`` (a dict or a path).  Bad files raise
        :class:`~eagle_fast.CheckpointError`.  See :meth:`from_state_dict`
        for the other arguments."""
        path = Path(path)
        if path.is_dir():
            config_path = path / "config.json"
            if config is None:
                if not config_path.is_file():
                    raise CheckpointError(f"{path}: no config.json")
                config = config_path
            raw = _read_folder(path)
        elif path.is_file():
            if config is None:
                sibling = path.parent / "config.json"
                if not sibling.is_file():
                    raise CheckpointError(f"{path}: pass config= (no config.json beside it)")
                config = sibling
            if path.suffix == ".bin":
                raw = read_torch_checkpoint(path)
            else:
                raw = _read_tensors(path)
        else:
            raise CheckpointError(f"{path}: no such file or folder")
        return cls._create(raw, config, embed_tokens, lm_head, weight_dtype, dtype, None,
                           str(path))

    # -- properties -----------------------------------------------------------------

    @property
    def prefix_length(self) -> int:
        """Positions in the draft KV cache (the stable prefix)."""
        return self._cache.length

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def input_size(self) -> int:
        """Width of the target features ``draft_tree`` takes (d, or 3 d_target)."""
        return self.config.input_size

    def stored_arrays(self) -> dict[str, np.ndarray]:
        """Every matrix as stored, by the names of ``weight_dtypes`` (``fc``,
        ``layers.0.qkv`` -- rows q | k | v --, ``layers.0.o_proj``,
        ``layers.0.gate_up`` -- rows gate | up --, ``layers.0.down_proj``,
        ``embed_tokens``, ``lm_head``; EAGLE-3: ``midlayer.*``): ``name`` the
        data (float arrays; bfloat16 as uint16 bit patterns; int8/q8 codes;
        q4 uint8, two codes per byte, see ``eagle_fast._storage``) and, for
        int8, q8 and q4, ``name + "_scale"`` (float32 per row, float16 per
        group of 32 columns).  Read-only views."""
        out: dict[str, np.ndarray] = {}
        for name, stored in self._matrices.items():
            for key, array in ((name, stored.data), (name + "_scale", stored.scales)):
                if array is not None:
                    view = array.view()
                    view.flags.writeable = False
                    out[key] = view
        return out

    def reset(self) -> None:
        """Forget the cached prefix: the next call starts a new sequence."""
        self._cache.length = 0
        self._seen = np.zeros(0, dtype=np.int64)

    def truncate(self, prefix_length: int) -> None:
        """Keep only the first ``prefix_length`` cached positions (e.g. to
        re-draft from an earlier point of the same sequence)."""
        n = check_int(prefix_length, "prefix_length", 0)
        if n > self._cache.length:
            raise ValueError(f"prefix_length={n} exceeds the {self._cache.length} cached "
                             "positions")
        self._cache.length = n
        self._seen = self._seen[:n].copy()

    def __repr__(self) -> str:
        c = self.config
        return (f"EagleDrafter(kind={c.kind!r}, hidden_size={c.hidden_size}, "
                f"heads={c.num_attention_heads}/{c.num_key_value_heads}, "
                f"intermediate_size={c.intermediate_size}, vocab_size={c.draft_vocab_size}, "
                f"dtype={self.dtype.name}, prefix_length={self.prefix_length})")

    # -- the forward pass -------------------------------------------------------------

    def _embedding(self, tokens: np.ndarray) -> np.ndarray:
        e = self._embed
        scales = None if e.scales is None else e.scales[tokens]
        rows = StoredMatrix(e.weight_dtype, e.data[tokens], scales, e.n_cols).dequantize()
        return np.ascontiguousarray(rows, dtype=self.dtype)

    def _rope_tables(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = positions.astype(self.dtype) / self.dtype.type(self.config.rope_scaling_factor)
        freqs = (t[:, None] * self._inv_freq[None, :]).astype(self.dtype)
        return np.ascontiguousarray(np.cos(freqs)), np.ascontiguousarray(np.sin(freqs))

    def _forward(self, hidden: np.ndarray, tokens: np.ndarray, positions: np.ndarray,
                 extra_mask: np.ndarray, n_threads: int) -> np.ndarray:
        """Run n rows (features ``hidden`` (n, w), tokens, positions); their
        keys/values go to cache rows ``length + extra - n ... length + extra``
        where extra = extra_mask.shape[1]; query i sees the stable prefix and
        the extra rows where ``extra_mask[i]``.  Returns the output (n, d)."""
        c, ops = self.config, self._ops
        n = tokens.shape[0]
        cache = self._cache
        stable = cache.length
        n_extra = extra_mask.shape[1]
        start = stable + n_extra - n
        cache.ensure(stable + n_extra)
        emb = self._embedding(tokens)
        if c.kind == "eagle":
            x = self._matmul(self._fc, np.ascontiguousarray(np.concatenate([emb, hidden], axis=1)),
                             n_threads)
            if self._fc_bias is not None:
                x += self._fc_bias
        elif hidden.shape[1] != c.hidden_size:
            x = self._matmul(self._fc, hidden, n_threads)
        else:
            x = hidden.copy()
        cos, sin = self._rope_tables(positions)
        q_rows = c.num_attention_heads * c.head_dim
        kv_rows = c.num_key_value_heads * c.head_dim
        eps = c.rms_norm_eps
        # Work of one attention call: the key and value bytes its queries read.
        attention_threads = team_size(
            2 * n * c.num_attention_heads * (stable + n_extra) * c.head_dim
            * self.dtype.itemsize, n_threads)
        for index, layer in enumerate(self._layers):
            if c.kind == "eagle3":
                a = np.ascontiguousarray(np.concatenate(
                    [ops.rms_norm(emb, layer.emb_norm, eps),
                     ops.rms_norm(x, layer.hidden_norm, eps)], axis=1))
            elif layer.input_norm is not None:
                a = ops.rms_norm(x, layer.input_norm, eps)
            else:
                a = x
            qkv = self._matmul(layer.qkv, a, n_threads)
            if layer.qkv_bias is not None:
                qkv += layer.qkv_bias
            q = np.ascontiguousarray(qkv[:, :q_rows]).reshape(n, c.num_attention_heads,
                                                              c.head_dim)
            k = np.ascontiguousarray(qkv[:, q_rows:q_rows + kv_rows]).reshape(
                n, c.num_key_value_heads, c.head_dim)
            v = qkv[:, q_rows + kv_rows:].reshape(n, c.num_key_value_heads, c.head_dim)
            ops.rope(q, cos, sin)
            ops.rope(k, cos, sin)
            cache.k[index][start:start + n] = k
            cache.v[index][start:start + n] = v
            attn = ops.attention(q, cache.k[index], cache.v[index], stable, extra_mask,
                                 attention_threads)
            x = x + self._matmul(layer.o, attn, n_threads)
            m = ops.rms_norm(x, layer.post_norm, eps)
            x = x + self._matmul(layer.down,
                                 ops.silu_mul(self._matmul(layer.gate_up, m, n_threads)),
                                 n_threads)
        return np.ascontiguousarray(x)

    def _matmul(self, matrix: Any, x: np.ndarray, n_threads: int) -> np.ndarray:
        """``x @ W.T``, serial below the shared work threshold
        (:func:`eagle_fast._threads.team_size`: weight bytes x rows of x)."""
        return self._ops.matmul(matrix, x, team_size(matrix.nbytes * x.shape[0], n_threads))

    def _logprobs(self, x: np.ndarray, n_threads: int) -> np.ndarray:
        if self._norm is not None:
            x = self._ops.rms_norm(x, self._norm, self.config.rms_norm_eps)
        return self._ops.log_softmax(self._matmul(self._lm_head, x, n_threads))

    # -- drafting ---------------------------------------------------------------------

    def _check_inputs(self, hidden_states: Any, input_ids: Any) -> tuple[np.ndarray, np.ndarray]:
        if hasattr(input_ids, "detach"):      # torch tensors
            input_ids = input_ids.detach().cpu().numpy()
        if hasattr(hidden_states, "detach"):
            hidden_states = hidden_states.detach().cpu().float().numpy()
        ids = np.asarray(input_ids)
        if ids.ndim == 2 and ids.shape[0] == 1:
            ids = ids[0]
        if ids.ndim != 1 or ids.size == 0:
            raise ValueError(f"input_ids must be a non-empty 1-D sequence (or shape (1, N)), "
                             f"got shape {ids.shape}")
        if ids.dtype.kind not in "iu":
            raise TypeError(f"input_ids must be integers, got dtype {ids.dtype}")
        ids = ids.astype(np.int64)
        vocab = self.config.vocab_size
        if ids.min() < 0 or ids.max() >= vocab:
            raise ValueError(f"input_ids must be in [0, vocab_size={vocab})")
        hidden = np.asarray(hidden_states)
        if hidden.ndim == 3 and hidden.shape[0] == 1:
            hidden = hidden[0]
        if hidden.ndim == 1:
            hidden = hidden[None, :]
        width = self.config.input_size
        if hidden.ndim != 2 or hidden.shape[1] != width:
            raise ValueError(f"hidden_states must have shape (n_new, {width}), got "
                             f"{np.asarray(hidden_states).shape}")
        if hidden.dtype.kind not in "fiu":
            raise TypeError(f"hidden_states must be real numbers, got dtype {hidden.dtype}")
        hidden = np.ascontiguousarray(hidden, dtype=self.dtype)
        if not np.isfinite(hidden).all():
            raise ValueError("hidden_states contains NaN or inf")
        stable = self._cache.length
        expected = ids.size - 1 - stable
        if hidden.shape[0] != expected:
            raise ValueError(
                f"hidden_states has {hidden.shape[0]} rows; with {ids.size} input_ids and "
                f"{stable} positions already cached it must have {expected} (one per "
                "position not seen yet: position j pairs input_ids[j + 1] with feature j)"
                + ("; call reset() to start a new sequence" if expected <= 0 else ""))
        if not np.array_equal(ids[1:stable + 1], self._seen):
            raise ValueError("input_ids does not continue the cached sequence (its tokens "
                             "differ from those already run); call reset() for a new sequence")
        return hidden, ids

    def _advance(self, hidden: np.ndarray, ids: np.ndarray, n_threads: int) -> np.ndarray:
        """Run the new prefix positions, keep them in the cache; returns the
        last position's output (d,)."""
        stable = self._cache.length
        n = hidden.shape[0]
        tokens = ids[stable + 1:]
        positions = np.arange(stable, stable + n)
        mask = np.tril(np.ones((n, n), dtype=bool))
        out = self._forward(hidden, tokens, positions, mask, n_threads)
        self._cache.length = stable + n
        self._seen = ids[1:stable + n + 1].copy()
        return out[-1]

    def _threads(self, num_threads: Any) -> int:
        return resolve_num_threads(num_threads, self._default_threads)

    def draft_tree(self, hidden_states: Any, input_ids: Any, *, top_k: int = 8,
                   depth: int = 5, total_tokens: int = 60,
                   num_threads: Optional[int] = None) -> DraftTree:
        """Draft an EAGLE-2 dynamic tree, as EAGLE's ``topK_genrate``.

        Parameters
        ----------
        hidden_states : array_like, (n_new, input_size)
            Target features of the positions not yet run (d wide -- the
            target's last hidden state after its final norm -- for EAGLE-1/2;
            3 d_target wide for EAGLE-3).
        input_ids : sequence of int, (N,) or (1, N)
            The whole sequence so far; its last token is the root.  Must
            satisfy ``n_new == N - 1 - prefix_length``.
        top_k, depth, total_tokens
            As EAGLE's ``EaModel``: ``top_k`` children per expanded node and
            frontier width, ``depth`` expansion rounds after the root's top-k,
            ``total_tokens`` nodes including the root.

        Returns a :class:`~eagle_fast.speculative.DraftTree` of target ids
        with cumulative draft log-probabilities as scores.
        """
        vocab = self.config.draft_vocab_size
        top_k = check_int(top_k, "top_k")
        if top_k > vocab:
            raise ValueError(f"top_k must be <= the draft vocabulary ({vocab}), got {top_k}")
        depth = check_int(depth, "depth", 0)
        total_tokens = check_int(total_tokens, "total_tokens", 1)
        candidates = top_k + depth * top_k * top_k
        if total_tokens - 1 > candidates:
            raise ValueError(f"total_tokens={total_tokens} needs more than the {candidates} "
                             f"candidates top_k={top_k}, depth={depth} produce (at most "
                             f"{candidates + 1})")
        n_threads = self._threads(num_threads)
        hidden, ids = self._check_inputs(hidden_states, input_ids)
        last = self._advance(hidden, ids, n_threads)
        root_logprobs = self._logprobs(last[None, :], n_threads)[0]
        stable = self._cache.length
        eye = np.eye(top_k, dtype=bool)
        state: dict[str, Any] = {"hidden": np.repeat(last[None, :], top_k, axis=0),
                                 "mask": np.zeros((top_k, 0), dtype=bool), "round": 0}

        def expand(parent_rows: np.ndarray, tokens: np.ndarray) -> np.ndarray:
            i = state["round"]
            hidden_in = np.ascontiguousarray(state["hidden"][parent_rows])
            mask = np.concatenate([state["mask"][parent_rows], eye], axis=1)
            positions = np.full(top_k, stable + i, dtype=np.int64)
            out = self._forward(hidden_in, np.asarray(tokens, dtype=np.int64), positions,
                                np.ascontiguousarray(mask), n_threads)
            state.update(hidden=out, mask=mask, round=i + 1)
            return self._logprobs(out, n_threads)

        try:
            return dynamic_tree(int(ids[-1]), root_logprobs, expand, top_k=top_k, depth=depth,
                                total_tokens=total_tokens, d2t=self.d2t)
        finally:
            self._cache.length = stable   # tree nodes are never kept

    def draft_chain(self, hidden_states: Any, input_ids: Any, steps: int, *,
                    num_threads: Optional[int] = None) -> DraftTree:
        """Greedy chained drafting (top_k = 1): ``steps`` tokens after the
        root, as a chain :class:`~eagle_fast.speculative.DraftTree` (same
        calling convention as :meth:`draft_tree`)."""
        steps = check_int(steps, "steps", 0)
        if steps == 0:
            hidden, ids = self._check_inputs(hidden_states, input_ids)
            self._advance(hidden, ids, self._threads(num_threads))
            return DraftTree.chain([int(ids[-1])], scores=[0.0])
        return self.draft_tree(hidden_states, input_ids, top_k=1, depth=steps - 1,
                               total_tokens=steps + 1, num_threads=num_threads)

    def step_logprobs(self, hidden_states: Any, input_ids: Any, *,
                      num_threads: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
        """Run the new prefix positions (kept in the cache) and return
        ``(output, logprobs)`` of the last one: the drafter's hidden state
        (d,) and its draft-vocabulary log-probabilities."""
        n_threads = self._threads(num_threads)
        hidden, ids = self._check_inputs(hidden_states, input_ids)
        last = self._advance(hidden, ids, n_threads)
        return last, self._logprobs(last[None, :], n_threads)[0]


# -- files ---------------------------------------------------------------------------


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text())
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: the config is not a JSON object")
    return config


def _safetensors_files(folder: Path) -> Optional[list[Path]]:
    """The safetensors files of a model folder (None when it has none)."""
    for index_name in ("model.safetensors.index.json",):
        index = folder / index_name
        if index.is_file():
            data = _read_config(index)
            weight_map = data.get("weight_map")
            if not isinstance(weight_map, dict):
                raise CheckpointError(f"{index}: no weight_map")
            return [folder / name for name in sorted(set(weight_map.values()))]
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    files = sorted(folder.glob("*.safetensors"))
    return files or None


def _read_folder(folder: Path) -> dict[str, RawTensor]:
    files = _safetensors_files(folder)
    if files is None:
        bins = [folder / "pytorch_model.bin"] if (folder / "pytorch_model.bin").is_file() \
            else sorted(folder.glob("*.bin"))
        if not bins:
            raise CheckpointError(f"{folder}: no model.safetensors or pytorch_model.bin")
        out: dict[str, RawTensor] = {}
        for b in bins:
            out.update(read_torch_checkpoint(b))
        return out
    out = {}
    for f in files:
        out.update(_read_tensors(f))
    return out


def _target_tensor(value: Any, what: str, names: tuple[str, ...]) -> Optional[RawTensor]:
    """The target's embedding / LM head: None, an array, or a path to the
    target's safetensors file(s) (only the one tensor is read)."""
    if value is None:
        return None
    if isinstance(value, (str, os.PathLike)):
        path = Path(value)
        if path.is_dir():
            files = _safetensors_files(path)
            if files is None:
                raise CheckpointError(f"{path}: no safetensors files (for {what})")
        elif path.is_file():
            files = [path]
        else:
            raise CheckpointError(f"{path}: no such file or folder (for {what})")
        for f in files:
            present = _tensor_names(f)
            for name in names:
                if name in present:
                    return _read_tensors(f, [name])[name]
        if what == "lm_head":
            # Tied embeddings: the LM head is the embedding.
            for f in files:
                present = _tensor_names(f)
                for name in ("model.embed_tokens.weight", "embed_tokens.weight"):
                    if name in present:
                        return _read_tensors(f, [name])[name]
        raise CheckpointError(f"{path}: none of {list(names)} found (for {what})")
    try:
        return _as_raw(value, what)
    except TypeError as exc:
        raise TypeError(f"{what}: {exc}") from None


# -- inspection and conversion -------------------------------------------------------


def _headers_of(path: Path) -> tuple[dict[str, tuple[str, tuple[int, ...], int]],
                                     Optional[dict[str, Any]], str]:
    """Tensor (dtype, shape, bytes) by name, the config (or None) and a
    description of the files, from safetensors headers alone."""
    from .. import _checkpoint

    config = None
    if path.is_dir():
        if (path / "config.json").is_file():
            config = _read_config(path / "config.json")
        files = _safetensors_files(path)
        if files is None:
            if (path / "pytorch_model.bin").is_file() or list(path.glob("*.bin")):
                raise CheckpointError(f"{path}: a PyTorch (.bin) checkpoint; its tensors "
                                      "cannot be listed without loading it: "
                                      "`eagle-fast convert` writes it as safetensors")
            raise CheckpointError(f"{path}: no model.safetensors or pytorch_model.bin")
    else:
        files = [path]
        sibling = path.parent / "config.json"
        if sibling.is_file():
            config = _read_config(sibling)
    tensors: dict[str, tuple[str, tuple[int, ...], int]] = {}
    for f in files:
        header = _checkpoint.read_header(f)
        for name, info in header.tensors.items():
            tensors[name] = (info.dtype, info.shape, info.nbytes)
    return tensors, config, ", ".join(str(f.name) for f in files)


def inspect_eagle(path: PathLike) -> Optional[dict[str, Any]]:
    """What an EAGLE checkpoint (folder or safetensors file) holds, from the
    headers and config alone: ``kind``, the architecture, which tensors are
    present (embedding, LM head, d2t), dtypes and bytes.  None when the
    tensors are not an EAGLE layout."""
    path = Path(path)
    tensors, config, files = _headers_of(path)
    try:
        kind = detect_kind(tensors, config)
    except ValueError:
        return None
    shapes = {n: s for n, (_, s, _) in tensors.items()}
    fc = shapes.get("fc.weight", ())
    prefix = "midlayer." if kind == "eagle3" else "layers.0."
    q = shapes.get(prefix + "self_attn.q_proj.weight", ())
    k = shapes.get(prefix + "self_attn.k_proj.weight", ())
    gate = shapes.get(prefix + "mlp.gate_proj.weight", ())
    layers = len({n.split(".")[1] for n in tensors if n.startswith("layers.")}) \
        if kind == "eagle" else 1
    info: dict[str, Any] = {
        "path": str(path), "files": files, "kind": kind,
        "hidden_size": fc[0] if fc else None,
        "input_size": (fc[1] if kind == "eagle3" else (fc[0] if fc else None)) if fc else None,
        "num_hidden_layers": layers,
        "intermediate_size": gate[0] if gate else None,
        "q_rows": q[0] if q else None, "kv_rows": k[0] if k else None,
        "has_embed_tokens": "embed_tokens.weight" in tensors,
        "has_lm_head": "lm_head.weight" in tensors,
        "draft_vocab_size": shapes["lm_head.weight"][0] if "lm_head.weight" in shapes else None,
        "has_d2t": "d2t" in tensors, "fc_bias": "fc.bias" in tensors,
        "dtypes": sorted({d for d, _, _ in tensors.values()}),
        "bytes": sum(b for _, _, b in tensors.values()),
        "config": None, "config_error": None,
    }
    if config is not None:
        try:
            parsed = EagleConfig.from_dict(config, kind)
            info["config"] = {k: getattr(parsed, k) for k in parsed.__dataclass_fields__}
        except ValueError as exc:
            info["config_error"] = str(exc)
    return info


def convert_checkpoint(source: PathLike, destination: Optional[PathLike] = None) -> Path:
    """Write a PyTorch checkpoint (``pytorch_model.bin`` or a folder holding
    it) as safetensors, every tensor bit for bit (BF16 stays BF16); the
    default destination is ``model.safetensors`` beside it.  Needs torch and
    safetensors.  Returns the written path."""
    source = Path(source)
    if source.is_dir():
        bins = [source / "pytorch_model.bin"] if (source / "pytorch_model.bin").is_file() \
            else sorted(source.glob("*.bin"))
        if not bins:
            raise CheckpointError(f"{source}: no pytorch_model.bin to convert")
    elif source.is_file():
        bins = [source]
    else:
        raise CheckpointError(f"{source}: no such file or folder")
    raw: dict[str, RawTensor] = {}
    for b in bins:
        raw.update(read_torch_checkpoint(b))
    target = Path(destination) if destination is not None else bins[0].parent / \
        "model.safetensors"
    from .._safetensors import write_safetensors

    arrays = {name: np.ascontiguousarray(tensor.values) for name, tensor in raw.items()}
    # written atomically, each tensor in its file dtype (BF16 as its bit patterns)
    write_safetensors(target, arrays, {"format": "pt"},
                      dtypes={name: tensor.file_dtype for name, tensor in raw.items()})
    return target


__all__ = ["EagleDrafter", "EagleConfig", "detect_kind", "read_torch_checkpoint",
           "inspect_eagle", "convert_checkpoint"]
