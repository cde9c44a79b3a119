"""Checkpoints: draft heads in safetensors files.

**Our format** (``DraftHead.save`` / ``DraftHead.load``): one head per file,
tensors ``projection.weight`` (d_proj, d_model), ``projection.bias``
(d_proj,), ``lm_head.weight`` (vocab_size, d_proj), for int8 heads also
``projection.weight_scale`` (d_proj,) and ``lm_head.weight_scale``
(vocab_size,) in F32, for q8/q4 heads per-group F16 scales
``projection.weight_scale`` (d_proj, ceil(d_model / 32)) and
``lm_head.weight_scale`` (vocab_size, ceil(d_proj / 32)), and for an EAGLE-3
reduced draft vocabulary ``d2t`` (vocab_size,) in I64.  Matrices are stored
exactly as the head stores them (safetensors dtype F32, F64, BF16, F16, I8
(int8, q8) or U8 (q4: two 4-bit codes per byte, each row padded to whole
groups of 32, so (d_proj, 16 * ceil(d_model / 32)))); the bias is F32 (F64 for a
float64 head).  The header's ``__metadata__`` holds the configuration, all
values strings: ``format="eagle_fast.draft_head"``, ``format_version="1"``,
``d_model``, ``d_proj``, ``vocab_size``, ``activation="silu"``, ``residual``
(``"true"``/``"false"``), ``weight_dtype`` and, with ``d2t``,
``target_vocab_size``.

**Medusa** (``load_medusa``): ``medusa_lm_head.safetensors`` as the Medusa
project saves it, head ``i`` being ``{i}.0.linear.weight`` (d_model,
d_model), ``{i}.0.linear.bias`` (d_model,) and ``{i}.1.weight`` (vocab,
d_model): one residual block ``x = h + SiLU(W h + b)`` and an LM head.

**Reading.**  The file is opened once and read through that one handle
(``eagle_fast._safetensors``: also when another process replaces it
meanwhile, one load reads one file).  Its header is bounded and checked before
it is parsed (size, nesting, number of tensors, integer sizes), then fully
(dtypes, shapes, offsets: every tensor inside the file, tensors tiling the
data region).  A truncated file, a bad or hostile header or inconsistent
offsets is a ``CheckpointError`` naming the problem, never a NumPy or parser
error.  Then the keys, dtypes, shapes and configuration are checked against
what the format needs (dims and ``target_vocab_size`` bounded by
``MAX_DIM``, Medusa files by ``MAX_MEDUSA_HEADS``).  Only then is data read,
BF16 matrices as the uint16 bit patterns bfloat16 heads store.  Nothing goes
through PyTorch or the safetensors package.  Finally the head is built (which
checks finite values, int8 scales and ``d2t``); any failure is raised with
the file's path and no head is returned.

**Writing** goes to a uniquely named temporary file in the target's folder
that then replaces the target (a symbolic link's target), so an interrupted
or concurrent save never leaves half a file; the file gets the mode ``open()``
would give it, or keeps the mode of the file it replaces.  Write errors are
``OSError`` naming the path.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Optional, Union

import numpy as np

from ._head import DraftHead, check_activations
from ._medusa import MedusaHeads
from ._safetensors import (CheckpointError, Header, SafetensorsFile, read_header, shown,
                           write_safetensors)
from ._storage import (
    GROUP_SIZE,
    GROUPED,
    WEIGHT_DTYPES,
    decode_bfloat16,
    n_groups,
    resolve_weight_dtype,
)
from ._validation import MAX_VOCAB_SIZE

PathLike = Union[str, "os.PathLike[str]"]

FORMAT = "eagle_fast.draft_head"
FORMAT_VERSION = "1"
MEDUSA_FORMAT = "medusa"

# Bounds on what a file may declare: dims and target_vocab_size, and the
# number of Medusa heads (Medusa models have 3 to 5).
MAX_DIM = MAX_VOCAB_SIZE
MAX_MEDUSA_HEADS = 256

# weight_dtype -> safetensors dtype of its matrices, and of the bias.
_MATRIX_DTYPE = {"float32": "F32", "float64": "F64", "bfloat16": "BF16",
                 "float16": "F16", "int8": "I8", "q8": "I8", "q4": "U8"}
_BIAS_DTYPE = {"float32": "F32", "float64": "F64", "bfloat16": "F32",
               "float16": "F32", "int8": "F32", "q8": "F32", "q4": "F32"}
# weight_dtype -> safetensors dtype of its scales (per row for int8, per
# group of GROUP_SIZE columns for q8/q4).
_SCALE_DTYPE = {"int8": "F32", "q8": "F16", "q4": "F16"}
# safetensors dtype of a Medusa checkpoint's matrices -> weight_dtype.
_MEDUSA_STORAGE = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64"}


def _read_tensors(file: SafetensorsFile) -> dict[str, np.ndarray]:
    """Every tensor of ``file`` (dtypes and shapes already checked by a plan)."""
    return file.read(sorted(file.header.tensors))


# -- our format -------------------------------------------------------------------


_HEAD_KEYS = ("projection.weight", "projection.bias", "lm_head.weight")
_SCALE_KEYS = ("projection.weight_scale", "lm_head.weight_scale")


def save_head(head: DraftHead, path: PathLike) -> None:
    """Write ``head`` (a DraftHead) to ``path`` in our safetensors format,
    bit for bit as it is stored."""
    weight_dtype = head.weight_dtype
    matrix, bias = _MATRIX_DTYPE[weight_dtype], _BIAS_DTYPE[weight_dtype]
    file_dtypes = {"projection.weight": matrix, "projection.bias": bias,
                   "lm_head.weight": matrix,
                   "projection.weight_scale": _SCALE_DTYPE.get(weight_dtype, "F32"),
                   "lm_head.weight_scale": _SCALE_DTYPE.get(weight_dtype, "F32"), "d2t": "I64"}
    arrays = dict(head.stored_arrays())
    metadata = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "d_model": str(head.d_model), "d_proj": str(head.d_proj),
        "vocab_size": str(head.vocab_size), "activation": "silu",
        "residual": "true" if head.residual else "false", "weight_dtype": weight_dtype,
    }
    if head.d2t is not None:
        arrays["d2t"] = np.asarray(head.d2t, dtype=np.int64)
        metadata["target_vocab_size"] = str(head.target_vocab_size)
    write_safetensors(path, arrays, metadata,
                      dtypes={name: file_dtypes[name] for name in arrays})


@dataclass(frozen=True)
class HeadPlan:
    """A checked description of one head in a file (no data read yet)."""

    weight_dtype: str
    d_model: int
    d_proj: int
    vocab_size: int
    residual: bool
    keys: dict[str, str]  # role (our key names) -> key in the file
    target_vocab_size: Optional[int] = None

    def nbytes(self, header: Header) -> int:
        return sum(header.tensors[key].nbytes for key in self.keys.values())


def _metadata_int(header: Header, name: str, minimum: int = 1,
                  maximum: int = MAX_DIM) -> int:
    text = header.metadata.get(name)
    if text is None:
        raise header.error(f"metadata lacks {name!r}")
    # Digits only, and few enough that int() is cheap and never refuses.
    if not (text.isascii() and text.isdigit() and len(text) <= 18
            and minimum <= int(text) <= maximum):
        raise header.error(f"metadata {name} must be an integer in [{minimum}, {maximum}], "
                           f"got {shown(text, 40)}")
    return int(text)


def _listing(names: list[str], quote: bool = True, limit: int = 6) -> str:
    """Some of ``names``, then how many there are in all."""
    parts = [shown(n) if quote else n for n in names[:limit]]
    if len(names) > limit:
        parts.append(f"... ({len(names)} in all)")
    return ", ".join(parts)


def _check_keys(header: Header, expected: set[str], what: str) -> None:
    present = set(header.tensors)
    missing, extra = sorted(expected - present), sorted(present - expected)
    if missing:
        raise header.error(f"missing tensor(s) {_listing(missing)} "
                           f"for {what}")
    if extra:
        raise header.error(f"unexpected tensor(s) {_listing(extra)} "
                           f"in {what} (it holds {_listing(sorted(expected), quote=False)})")


def _check_tensor(header: Header, key: str, dtypes: tuple[str, ...],
                  shape: tuple[int, ...], shape_text: str, what: str) -> None:
    info = header.tensors[key]
    if info.dtype not in dtypes:
        allowed = " or ".join(dtypes)
        raise header.error(f"unsupported dtype {info.dtype} for tensor {key!r}: "
                           f"{what} stores it as {allowed}")
    if info.shape != shape:
        raise header.error(f"shape mismatch: tensor {key!r} has shape {list(info.shape)}, "
                           f"expected {shape_text} = {list(shape)}")


def plan_head(header: Header) -> HeadPlan:
    """Check a file in our format (metadata, keys, dtypes, shapes)."""
    meta = header.metadata
    if meta.get("format") != FORMAT:
        if _medusa_heads_in(header):
            raise header.error("this is a Medusa checkpoint, not a single draft head: "
                               "load it with eagle_fast.load_medusa")
        found = "no format metadata" if "format" not in meta else \
            f"metadata format {shown(meta['format'])}"
        raise header.error(f"not an eagle_fast draft head checkpoint ({found}; "
                           f"expected format {FORMAT!r})")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise header.error(f"unsupported format_version {shown(version or '')}: this eagle_fast "
                           f"reads version {FORMAT_VERSION!r} (a newer eagle_fast wrote it?)")
    weight_dtype = meta.get("weight_dtype", "")
    if weight_dtype not in WEIGHT_DTYPES:
        raise header.error(f"metadata weight_dtype must be one of "
                           f"{', '.join(WEIGHT_DTYPES)}, got {shown(weight_dtype)}")
    if meta.get("activation") != "silu":
        raise header.error(f"unsupported activation {shown(meta.get('activation', ''))} "
                           "(eagle_fast heads use 'silu')")
    residual_text = meta.get("residual")
    if residual_text not in ("true", "false"):
        raise header.error(f"metadata residual must be 'true' or 'false', "
                           f"got {shown(residual_text or '')}")
    residual = residual_text == "true"
    d_model = _metadata_int(header, "d_model")
    d_proj = _metadata_int(header, "d_proj")
    vocab = _metadata_int(header, "vocab_size")
    if residual and d_proj != d_model:
        raise header.error(f"a residual head needs d_proj == d_model, the metadata "
                           f"says d_proj={d_proj}, d_model={d_model}")

    has_d2t = "d2t" in header.tensors
    expected = set(_HEAD_KEYS) | (set(_SCALE_KEYS) if weight_dtype in _SCALE_DTYPE else set())
    _check_keys(header, expected | ({"d2t"} if has_d2t else set()),
                f"a {weight_dtype} eagle_fast head")
    target_vocab = None
    if has_d2t:
        target_vocab = _metadata_int(header, "target_vocab_size")
    elif "target_vocab_size" in meta:
        raise header.error("metadata has target_vocab_size but the file holds no 'd2t'")

    matrix = (_MATRIX_DTYPE[weight_dtype],)
    what = f"a {weight_dtype} head"
    if weight_dtype == "q4":  # two codes per byte, rows padded to whole groups
        half = GROUP_SIZE // 2
        _check_tensor(header, "projection.weight", matrix, (d_proj, half * n_groups(d_model)),
                      f"(d_proj, {half} * ceil(d_model / {GROUP_SIZE}))", what)
        lm_head_cols = half * n_groups(d_proj)
        lm_head_label = f"(vocab_size, {half} * ceil(d_proj / {GROUP_SIZE}))"
    else:
        _check_tensor(header, "projection.weight", matrix, (d_proj, d_model),
                      "(d_proj, d_model)", what)
        lm_head_cols, lm_head_label = d_proj, "(vocab_size, d_proj)"
    _check_tensor(header, "projection.bias", (_BIAS_DTYPE[weight_dtype],), (d_proj,),
                  "(d_proj,)", what)
    _check_tensor(header, "lm_head.weight", matrix, (vocab, lm_head_cols), lm_head_label, what)
    if weight_dtype in GROUPED:
        _check_tensor(header, "projection.weight_scale", ("F16",),
                      (d_proj, n_groups(d_model)),
                      f"(d_proj, ceil(d_model / {GROUP_SIZE}))", what)
        _check_tensor(header, "lm_head.weight_scale", ("F16",), (vocab, n_groups(d_proj)),
                      f"(vocab_size, ceil(d_proj / {GROUP_SIZE}))", what)
    if weight_dtype == "int8":
        _check_tensor(header, "projection.weight_scale", ("F32",), (d_proj,),
                      "(d_proj,)", what)
        _check_tensor(header, "lm_head.weight_scale", ("F32",), (vocab,),
                      "(vocab_size,)", what)
    if has_d2t:
        _check_tensor(header, "d2t", ("I64",), (vocab,), "(vocab_size,)", what)
    keys = {name: name for name in header.tensors}
    return HeadPlan(weight_dtype, d_model, d_proj, vocab, residual, keys, target_vocab)


def load_head(path: PathLike, *, activations: str = "float") -> DraftHead:
    """The DraftHead saved at ``path`` (by ``DraftHead.save``), bit for bit,
    with the given ``activations`` (not stored in the file)."""
    with SafetensorsFile(path) as file:
        header = file.header
        plan = plan_head(header)
        arrays = _read_tensors(file)
    check_activations(activations, plan.weight_dtype)
    try:
        return DraftHead.from_stored(
            plan.weight_dtype, arrays["projection.weight"], arrays["projection.bias"],
            arrays["lm_head.weight"], projection_scales=arrays.get("projection.weight_scale"),
            lm_head_scales=arrays.get("lm_head.weight_scale"), residual=plan.residual,
            d2t=arrays.get("d2t"), target_vocab_size=plan.target_vocab_size,
            d_model=plan.d_model if plan.weight_dtype == "q4" else None,
            activations=activations)
    except (ValueError, TypeError) as exc:
        raise header.error(str(exc)) from exc


# -- Medusa -------------------------------------------------------------------------

# Head indices as the Medusa project writes them: no leading zeros, and short
# enough that int() is cheap.
_MEDUSA_KEY = re.compile(r"(0|[1-9]\d{0,8})\.(0\.linear\.weight|0\.linear\.bias|1\.weight)")
_MEDUSA_DEEPER = re.compile(r"\d+\.[1-9]\d*\.linear\.(weight|bias)")


def _medusa_heads_in(header: Header) -> int:
    """How many heads the file's key names suggest (0: not Medusa-like)."""
    indices = {int(m.group(1)) for m in map(_MEDUSA_KEY.fullmatch, header.tensors) if m}
    return len(indices)


def plan_medusa(header: Header) -> list[HeadPlan]:
    """Check a Medusa checkpoint: keys, dtypes and shapes of every head."""
    if header.metadata.get("format") == FORMAT:
        raise header.error("this is an eagle_fast draft head, not a Medusa checkpoint: "
                           "load it with eagle_fast.DraftHead.load")
    deeper = sorted(k for k in header.tensors if _MEDUSA_DEEPER.fullmatch(k))
    if deeper:
        raise header.error(f"Medusa heads with more than one residual block "
                           f"(medusa_num_layers > 1, e.g. {shown(deeper[0])}) are not supported")
    count = _medusa_heads_in(header)
    if count == 0:
        raise header.error("not a Medusa checkpoint: no tensors named like "
                           "'{i}.0.linear.weight', '{i}.0.linear.bias', '{i}.1.weight'")
    if count > MAX_MEDUSA_HEADS:
        raise header.error(f"the file names {count} Medusa heads; at most "
                           f"{MAX_MEDUSA_HEADS} are supported")
    expected = {f"{i}.{part}" for i in range(count)
                for part in ("0.linear.weight", "0.linear.bias", "1.weight")}
    _check_keys(header, expected, f"a Medusa checkpoint of {count} heads")

    first_weight, first_lm_head = header.tensors["0.0.linear.weight"], header.tensors["0.1.weight"]
    for key, info in (("0.0.linear.weight", first_weight), ("0.1.weight", first_lm_head)):
        if len(info.shape) != 2:
            raise header.error(f"shape mismatch: tensor {key!r} must be 2-D, got shape "
                               f"{list(info.shape)}")
    matrix_dtype = first_weight.dtype
    if matrix_dtype not in _MEDUSA_STORAGE:
        raise header.error(f"unsupported dtype {matrix_dtype} for tensor "
                           f"'0.0.linear.weight' (Medusa weights load from "
                           f"{', '.join(_MEDUSA_STORAGE)})")
    d_model, vocab = first_weight.shape[1], first_lm_head.shape[0]
    for dim, text in ((d_model, "d_model"), (vocab, "vocab_size")):
        if not 1 <= dim <= MAX_DIM:
            raise header.error(f"head 0 has {text}={dim}; it must be in [1, {MAX_DIM}]")
    what = f"this {matrix_dtype} Medusa checkpoint"
    plans = []
    for i in range(count):
        keys = {"projection.weight": f"{i}.0.linear.weight",
                "projection.bias": f"{i}.0.linear.bias", "lm_head.weight": f"{i}.1.weight"}
        _check_tensor(header, keys["projection.weight"], (matrix_dtype,), (d_model, d_model),
                      "(d_model, d_model)", what)
        _check_tensor(header, keys["projection.bias"], tuple(_MEDUSA_STORAGE), (d_model,),
                      "(d_model,)", what)
        _check_tensor(header, keys["lm_head.weight"], (matrix_dtype,), (vocab, d_model),
                      "(vocab_size, d_model)", what)
        plans.append(HeadPlan(_MEDUSA_STORAGE[matrix_dtype], d_model, d_model, vocab,
                              True, keys))
    return plans


def _as_float(array: np.ndarray, file_dtype: str) -> np.ndarray:
    return decode_bfloat16(array) if file_dtype == "BF16" else array


def _to_compute(bias: np.ndarray, dtype: type) -> np.ndarray:
    """A Medusa bias in its head's compute dtype; ValueError (no overflow
    warning) when its values do not fit."""
    with np.errstate(over="ignore", invalid="ignore"):
        converted: np.ndarray = bias.astype(dtype)
    if not np.isfinite(converted).all() and np.isfinite(bias).all():
        raise ValueError(f"projection_bias holds values too large for {np.dtype(dtype)}")
    return converted


def load_medusa(path: PathLike, *, weight_dtype: Optional[str] = None,
                activations: str = "float") -> MedusaHeads:
    """The heads of a Medusa checkpoint (``medusa_lm_head.safetensors``) as
    ``eagle_fast.MedusaHeads``; head ``i`` guesses the token ``i + 1`` steps
    after the next one.

    Each head is residual, ``x = h + SiLU(W h + b)``, ``logits = L x``.  By
    default the matrices keep the file's storage (BF16 -> ``"bfloat16"``, F16
    -> ``"float16"``, F32 -> ``"float32"``, F64 -> ``"float64"``), bit for
    bit; ``weight_dtype`` stores them otherwise (e.g. ``"int8"``).  The bias
    becomes the heads' compute dtype (float32, or float64 for float64 heads).
    ``activations="int8"`` (int8/q8/q4 storage; a runtime option, not stored)
    takes integer dot products, see :class:`eagle_fast.DraftHead`.
    """
    target = None if weight_dtype is None else resolve_weight_dtype(weight_dtype)
    with SafetensorsFile(path) as file:
        header = file.header
        plans = plan_medusa(header)
        arrays = _read_tensors(file)
    check_activations(activations, target or plans[0].weight_dtype)
    heads = []
    for i, plan in enumerate(plans):
        keys = plan.keys
        weight, bias, lm_head = (arrays[keys[role]] for role in _HEAD_KEYS)
        try:
            bias = _as_float(bias, header.tensors[keys["projection.bias"]].dtype)
            if target is None or target == plan.weight_dtype:
                compute = np.float64 if plan.weight_dtype == "float64" else np.float32
                head = DraftHead.from_stored(plan.weight_dtype, weight,
                                             _to_compute(bias, compute), lm_head,
                                             residual=True, activations=activations)
            else:  # the constructor converts (and checks) the bias itself
                matrix_dtype = header.tensors[keys["projection.weight"]].dtype
                head = DraftHead(_as_float(weight, matrix_dtype), bias,
                                 _as_float(lm_head, matrix_dtype), weight_dtype=target,
                                 residual=True, activations=activations)
        except (ValueError, TypeError) as exc:
            raise header.error(f"head {i}: {exc}") from exc
        heads.append(head)
    try:
        return MedusaHeads(heads)
    except (ValueError, TypeError) as exc:
        raise header.error(str(exc)) from exc


# -- inspection ----------------------------------------------------------------------


def inspect_checkpoint(path: PathLike) -> dict[str, Any]:
    """What the safetensors file at ``path`` holds, from its header alone
    (needs no safetensors package): ``format`` ("eagle_fast.draft_head",
    "medusa" or "unknown"), ``heads`` (a dict per head: d_model, d_proj,
    vocab_size, weight_dtype, residual, bytes, target_vocab_size), ``tensors``
    (dtype, shape, bytes each), ``metadata`` and ``file_bytes``.  A file of a
    known format is fully checked: the same errors as loading it."""
    header = read_header(path)
    if header.metadata.get("format") == FORMAT:
        kind, plans = FORMAT, [plan_head(header)]
    elif _medusa_heads_in(header):
        kind, plans = MEDUSA_FORMAT, plan_medusa(header)
    else:
        kind, plans = "unknown", []
    heads = []
    for plan in plans:
        keys = plan.keys
        heads.append({
            "d_model": plan.d_model, "d_proj": plan.d_proj, "vocab_size": plan.vocab_size,
            "weight_dtype": plan.weight_dtype, "residual": plan.residual,
            "target_vocab_size": plan.target_vocab_size,
            "dtypes": {role: header.tensors[key].dtype for role, key in keys.items()},
            "bytes": plan.nbytes(header),
        })
    return {
        "path": str(header.path),
        "format": kind,
        "format_version": header.metadata.get("format_version") if kind == FORMAT else None,
        "file_bytes": header.file_bytes,
        "metadata": header.metadata,
        "heads": heads,
        "tensors": {name: {"dtype": info.dtype, "shape": list(info.shape),
                           "bytes": info.nbytes}
                    for name, info in sorted(header.tensors.items())},
    }


__all__ = ["CheckpointError", "FORMAT", "FORMAT_VERSION", "save_head",
           "load_head", "load_medusa", "inspect_checkpoint", "read_header"]
