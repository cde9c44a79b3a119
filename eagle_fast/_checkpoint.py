"""Checkpoints: draft heads in safetensors files.

**Our format** (``DraftHead.save`` / ``DraftHead.load``): one head per file,
tensors ``projection.weight`` (d_proj, d_model), ``projection.bias``
(d_proj,), ``lm_head.weight`` (vocab_size, d_proj), for int8 heads also
``projection.weight_scale`` (d_proj,) and ``lm_head.weight_scale``
(vocab_size,) in F32, and for an EAGLE-3 reduced draft vocabulary ``d2t``
(vocab_size,) in I64.  Matrices are stored exactly as the head stores them
(safetensors dtype F32, F64, BF16, F16 or I8); the bias is F32 (F64 for a
float64 head).  The header's ``__metadata__`` holds the configuration, all
values strings: ``format="eagle_fast.draft_head"``, ``format_version="1"``,
``d_model``, ``d_proj``, ``vocab_size``, ``activation="silu"``, ``residual``
(``"true"``/``"false"``), ``weight_dtype`` and, with ``d2t``,
``target_vocab_size``.

**Medusa** (``load_medusa``): ``medusa_lm_head.safetensors`` as the Medusa
project saves it, head ``i`` being ``{i}.0.linear.weight`` (d_model,
d_model), ``{i}.0.linear.bias`` (d_model,) and ``{i}.1.weight`` (vocab,
d_model): one residual block ``x = h + SiLU(W h + b)`` and an LM head.

**Reading.**  Before any tensor data is touched, the header is parsed and
checked here (``read_header``): a safetensors file is an 8-byte little-endian
header size N, N bytes of JSON mapping each tensor name to its ``dtype``,
``shape`` and ``data_offsets`` [begin, end) (relative to the end of the
header; tensors tile the data region exactly, in offset order), plus an
optional ``__metadata__`` str -> str map, then the raw little-endian data.
A truncated file, a bad header or inconsistent offsets is a
``CheckpointError`` naming the problem, never a NumPy or parser error.
Then the keys, dtypes, shapes and configuration are checked against what the
format needs.  Only then is data read: through the ``safetensors`` package's
NumPy API (``safe_open(path, framework="numpy")``) for the dtypes NumPy has,
and -- NumPy having no bfloat16 -- BF16 tensors by ``_read_raw``: the
tensor's bytes at its validated offsets, viewed as little-endian uint16 bit
patterns, which is exactly how bfloat16 heads store their matrices.  Nothing
goes through PyTorch.  Finally the head is built (which checks finite values,
int8 scales and ``d2t``); any failure is raised with the file's path and no
head is returned.

**Writing** uses ``safetensors.serialize_file`` (the low-level API: the NumPy
``save_file`` cannot write BF16), to a temporary file in the same folder that
then replaces ``path``, so an interrupted save never leaves half a file.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from ._head import DraftHead
from ._medusa import MedusaHeads
from ._storage import WEIGHT_DTYPES, decode_bfloat16, resolve_weight_dtype

PathLike = Union[str, "os.PathLike[str]"]

FORMAT = "eagle_fast.draft_head"
FORMAT_VERSION = "1"
MEDUSA_FORMAT = "medusa"

INSTALL_HINT = 'pip install "eagle-fast[safetensors]"'

# Bytes per element of every fixed-size safetensors dtype (the file format's
# names); used to check that offsets and shapes agree.
_DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8, "C64": 8,
}

# The dtypes a head's tensors may have, as NumPy reads them (BF16: bit patterns).
_NUMPY_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"), "I8": np.dtype("i1"), "I64": np.dtype("<i8"),
}

# weight_dtype -> safetensors dtype of its matrices, and of the bias.
_MATRIX_DTYPE = {"float32": "F32", "float64": "F64", "bfloat16": "BF16",
                 "float16": "F16", "int8": "I8"}
_BIAS_DTYPE = {"float32": "F32", "float64": "F64", "bfloat16": "F32",
               "float16": "F32", "int8": "F32"}
# safetensors dtype of a Medusa checkpoint's matrices -> weight_dtype.
_MEDUSA_STORAGE = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64"}
# Names serialize_file takes (it names dtypes the framework way).
_SERIALIZE_NAMES = {"F32": "float32", "F64": "float64", "BF16": "bfloat16",
                    "F16": "float16", "I8": "int8", "I64": "int64"}

# safetensors itself refuses headers above 100 MB.
_MAX_HEADER_BYTES = 100_000_000


class CheckpointError(ValueError):
    """A checkpoint file that cannot be loaded: truncated or corrupted, not
    of the expected format, or with missing, extra or inconsistent tensors.
    The message starts with the file's path."""


# -- the raw safetensors header ------------------------------------------------


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's header entry: file dtype name, shape, byte range in the file."""

    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute file offsets
    stop: int

    @property
    def nbytes(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class Header:
    path: Path
    file_bytes: int
    metadata: dict[str, str]
    tensors: dict[str, TensorInfo] = field(default_factory=dict)

    def error(self, message: str) -> CheckpointError:
        return CheckpointError(f"{self.path}: {message}")


def read_header(path: PathLike) -> Header:
    """Parse and check the header of the safetensors file at ``path``: sizes,
    JSON, dtypes, shapes and offsets (every tensor inside the file, tensors
    tiling the data region).  CheckpointError on any inconsistency."""
    path = Path(path)

    def fail(message: str) -> CheckpointError:
        return CheckpointError(f"{path}: {message}")

    try:
        with open(path, "rb") as f:
            file_bytes = os.fstat(f.fileno()).st_size
            if file_bytes < 8:
                raise fail(f"truncated or not a safetensors file: {file_bytes} bytes, "
                           "less than the 8-byte header size")
            (header_bytes,) = struct.unpack("<Q", f.read(8))
            if header_bytes > file_bytes - 8:
                raise fail(f"header size {header_bytes} is larger than the rest of the "
                           f"file ({file_bytes - 8} bytes): truncated or not a "
                           "safetensors file")
            if header_bytes > _MAX_HEADER_BYTES:
                raise fail(f"header size {header_bytes} is implausibly large "
                           "(not a safetensors file?)")
            raw = f.read(header_bytes)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if len(raw) != header_bytes:
        raise fail("truncated while reading the header")
    try:
        parsed = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise fail(f"corrupted header: not valid JSON ({exc})") from None
    if not isinstance(parsed, dict):
        raise fail("corrupted header: the JSON is not an object")

    metadata = parsed.pop("__metadata__", None) or {}
    if not (isinstance(metadata, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())):
        raise fail("corrupted header: __metadata__ must map strings to strings")

    data_start = 8 + header_bytes
    data_bytes = file_bytes - data_start
    tensors: dict[str, TensorInfo] = {}
    for name, entry in parsed.items():
        if not (isinstance(entry, dict) and isinstance(entry.get("dtype"), str)
                and _is_int_list(entry.get("shape"))
                and _is_int_list(entry.get("data_offsets"))
                and len(entry["data_offsets"]) == 2):
            raise fail(f"corrupted header: tensor {name!r} needs a dtype, a shape and "
                       f"two data_offsets, got {entry!r}")
        dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in _DTYPE_SIZES:
            raise fail(f"tensor {name!r} has unknown dtype {dtype!r}")
        if min(shape, default=0) < 0 or not 0 <= begin <= end:
            raise fail(f"corrupted header: tensor {name!r} has negative sizes or "
                       f"offsets (shape {shape}, data_offsets {[begin, end]})")
        expected = math.prod(shape) * _DTYPE_SIZES[dtype]
        if end - begin != expected:
            raise fail(f"corrupted header: tensor {name!r} ({dtype}, shape {shape}) "
                       f"needs {expected} bytes, its data_offsets {[begin, end]} "
                       f"span {end - begin}")
        if end > data_bytes:
            raise fail(f"truncated: tensor {name!r} ends at byte {data_start + end}, "
                       f"the file has {file_bytes} bytes")
        tensors[name] = TensorInfo(dtype, tuple(shape), data_start + begin, data_start + end)

    # As safetensors requires: the tensors tile the data region, no gaps or overlaps.
    position = data_start
    for name, info in sorted(tensors.items(), key=lambda item: (item[1].start, item[1].stop)):
        if info.start != position:
            raise fail(f"corrupted header: tensor {name!r} starts at byte {info.start}, "
                       f"expected {position} (overlapping or missing data)")
        position = info.stop
    if position != file_bytes:
        raise fail(f"{file_bytes - position} bytes after the last tensor "
                   "(corrupted header or a file that is not safetensors)")
    return Header(path, file_bytes, dict(metadata), tensors)


def _is_int_list(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value)


# -- reading and writing tensor data --------------------------------------------


def _safetensors() -> Any:
    try:
        import safetensors
    except ImportError:
        raise ImportError("reading and writing checkpoints needs the safetensors "
                          f"package: {INSTALL_HINT}") from None
    return safetensors


def _read_raw(header: Header, name: str) -> np.ndarray:
    """One tensor's bytes at its (validated) offsets, as a native-order array
    of its NumPy dtype; used for BF16, which NumPy (hence the safetensors
    NumPy API) has no dtype for: the result is uint16 bit patterns."""
    info = header.tensors[name]
    with open(header.path, "rb") as f:
        f.seek(info.start)
        data = f.read(info.nbytes)
    if len(data) != info.nbytes:
        raise header.error(f"truncated while reading tensor {name!r}")
    little = _NUMPY_DTYPES[info.dtype]
    return np.frombuffer(data, dtype=little).reshape(info.shape).astype(
        little.newbyteorder("="))


def _read_tensors(header: Header, names: list[str]) -> dict[str, np.ndarray]:
    """The named tensors (whose dtypes are in _NUMPY_DTYPES, already checked)."""
    safetensors = _safetensors()
    arrays: dict[str, np.ndarray] = {}
    numpy_names = [n for n in names if header.tensors[n].dtype != "BF16"]
    try:
        if numpy_names:
            with safetensors.safe_open(str(header.path), framework="numpy") as f:
                for name in numpy_names:
                    arrays[name] = f.get_tensor(name)
        for name in names:
            if header.tensors[name].dtype == "BF16":
                arrays[name] = _read_raw(header, name)
    except CheckpointError:
        raise
    except Exception as exc:  # safetensors' own error type varies by version
        raise header.error(f"cannot read tensor data: {exc}") from exc
    for name in names:
        info, array = header.tensors[name], arrays[name]
        if array.dtype.newbyteorder("<") != _NUMPY_DTYPES[info.dtype] or \
                array.shape != info.shape:
            raise header.error(f"tensor {name!r} read as {array.dtype} {array.shape}, "
                               f"expected {info.dtype} {info.shape}")
    return arrays


def _write(path: PathLike, arrays: dict[str, tuple[str, np.ndarray]],
           metadata: dict[str, str]) -> None:
    """Write ``{name: (file dtype, array)}`` with ``metadata`` to ``path``,
    via a temporary file in the same folder."""
    safetensors = _safetensors()
    path = Path(path)
    keep_alive = []
    specs: dict[str, Any] = {}
    for name, (file_dtype, array) in arrays.items():
        little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
        keep_alive.append(little)
        dtype_name = _SERIALIZE_NAMES[file_dtype]
        if hasattr(safetensors, "TensorSpec"):  # safetensors >= 0.7
            specs[name] = safetensors.TensorSpec(
                dtype=dtype_name, shape=little.shape, data_ptr=little.ctypes.data,
                data_len=little.nbytes)
        else:
            specs[name] = {"dtype": dtype_name, "shape": list(little.shape),
                           "data": little.tobytes()}
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        safetensors.serialize_file(specs, str(temporary), metadata=metadata)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
    finally:
        del keep_alive


# -- our format -------------------------------------------------------------------


_HEAD_KEYS = ("projection.weight", "projection.bias", "lm_head.weight")
_SCALE_KEYS = ("projection.weight_scale", "lm_head.weight_scale")


def save_head(head: DraftHead, path: PathLike) -> None:
    """Write ``head`` (a DraftHead) to ``path`` in our safetensors format,
    bit for bit as it is stored."""
    weight_dtype = head.weight_dtype
    matrix, bias = _MATRIX_DTYPE[weight_dtype], _BIAS_DTYPE[weight_dtype]
    file_dtypes = {"projection.weight": matrix, "projection.bias": bias,
                   "lm_head.weight": matrix, "projection.weight_scale": "F32",
                   "lm_head.weight_scale": "F32"}
    arrays = {name: (file_dtypes[name], array)
              for name, array in head.stored_arrays().items()}
    metadata = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "d_model": str(head.d_model), "d_proj": str(head.d_proj),
        "vocab_size": str(head.vocab_size), "activation": "silu",
        "residual": "true" if head.residual else "false", "weight_dtype": weight_dtype,
    }
    if head.d2t is not None:
        arrays["d2t"] = ("I64", np.asarray(head.d2t, dtype=np.int64))
        metadata["target_vocab_size"] = str(head.target_vocab_size)
    _write(path, arrays, metadata)


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


def _metadata_int(header: Header, name: str, minimum: int = 1) -> int:
    text = header.metadata.get(name)
    if text is None:
        raise header.error(f"metadata lacks {name!r}")
    if not (text.isascii() and text.isdigit() and int(text) >= minimum):
        raise header.error(f"metadata {name} must be an integer >= {minimum}, got {text!r}")
    return int(text)


def _check_keys(header: Header, expected: set[str], what: str) -> None:
    present = set(header.tensors)
    missing, extra = sorted(expected - present), sorted(present - expected)
    if missing:
        raise header.error(f"missing tensor(s) {', '.join(map(repr, missing))} "
                           f"for {what}")
    if extra:
        raise header.error(f"unexpected tensor(s) {', '.join(map(repr, extra))} "
                           f"in {what} (it holds {', '.join(sorted(expected))})")


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
            f"metadata format {meta['format']!r}"
        raise header.error(f"not an eagle_fast draft head checkpoint ({found}; "
                           f"expected format {FORMAT!r})")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise header.error(f"unsupported format_version {version!r}: this eagle_fast "
                           f"reads version {FORMAT_VERSION!r} (a newer eagle_fast wrote it?)")
    weight_dtype = meta.get("weight_dtype", "")
    if weight_dtype not in WEIGHT_DTYPES:
        raise header.error(f"metadata weight_dtype must be one of "
                           f"{', '.join(WEIGHT_DTYPES)}, got {weight_dtype!r}")
    if meta.get("activation") != "silu":
        raise header.error(f"unsupported activation {meta.get('activation')!r} "
                           "(eagle_fast heads use 'silu')")
    residual_text = meta.get("residual")
    if residual_text not in ("true", "false"):
        raise header.error(f"metadata residual must be 'true' or 'false', "
                           f"got {residual_text!r}")
    residual = residual_text == "true"
    d_model = _metadata_int(header, "d_model")
    d_proj = _metadata_int(header, "d_proj")
    vocab = _metadata_int(header, "vocab_size")
    if residual and d_proj != d_model:
        raise header.error(f"a residual head needs d_proj == d_model, the metadata "
                           f"says d_proj={d_proj}, d_model={d_model}")

    has_d2t = "d2t" in header.tensors
    expected = set(_HEAD_KEYS) | (set(_SCALE_KEYS) if weight_dtype == "int8" else set())
    _check_keys(header, expected | ({"d2t"} if has_d2t else set()),
                f"a {weight_dtype} eagle_fast head")
    target_vocab = None
    if has_d2t:
        target_vocab = _metadata_int(header, "target_vocab_size")
    elif "target_vocab_size" in meta:
        raise header.error("metadata has target_vocab_size but the file holds no 'd2t'")

    matrix = (_MATRIX_DTYPE[weight_dtype],)
    what = f"a {weight_dtype} head"
    _check_tensor(header, "projection.weight", matrix, (d_proj, d_model),
                  "(d_proj, d_model)", what)
    _check_tensor(header, "projection.bias", (_BIAS_DTYPE[weight_dtype],), (d_proj,),
                  "(d_proj,)", what)
    _check_tensor(header, "lm_head.weight", matrix, (vocab, d_proj),
                  "(vocab_size, d_proj)", what)
    if weight_dtype == "int8":
        _check_tensor(header, "projection.weight_scale", ("F32",), (d_proj,),
                      "(d_proj,)", what)
        _check_tensor(header, "lm_head.weight_scale", ("F32",), (vocab,),
                      "(vocab_size,)", what)
    if has_d2t:
        _check_tensor(header, "d2t", ("I64",), (vocab,), "(vocab_size,)", what)
    keys = {name: name for name in header.tensors}
    return HeadPlan(weight_dtype, d_model, d_proj, vocab, residual, keys, target_vocab)


def load_head(path: PathLike) -> DraftHead:
    """The DraftHead saved at ``path`` (by ``DraftHead.save``), bit for bit."""
    header = read_header(path)
    plan = plan_head(header)
    arrays = _read_tensors(header, sorted(header.tensors))
    try:
        return DraftHead.from_stored(
            plan.weight_dtype, arrays["projection.weight"], arrays["projection.bias"],
            arrays["lm_head.weight"], projection_scales=arrays.get("projection.weight_scale"),
            lm_head_scales=arrays.get("lm_head.weight_scale"), residual=plan.residual,
            d2t=arrays.get("d2t"), target_vocab_size=plan.target_vocab_size)
    except (ValueError, TypeError) as exc:
        raise header.error(str(exc)) from exc


# -- Medusa -------------------------------------------------------------------------

_MEDUSA_KEY = re.compile(r"(\d+)\.(0\.linear\.weight|0\.linear\.bias|1\.weight)")
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
                           f"(medusa_num_layers > 1, e.g. {deeper[0]!r}) are not supported")
    count = _medusa_heads_in(header)
    if count == 0:
        raise header.error("not a Medusa checkpoint: no tensors named like "
                           "'{i}.0.linear.weight', '{i}.0.linear.bias', '{i}.1.weight'")
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


def load_medusa(path: PathLike, *, weight_dtype: Optional[str] = None) -> MedusaHeads:
    """The heads of a Medusa checkpoint (``medusa_lm_head.safetensors``) as
    ``eagle_fast.MedusaHeads``; head ``i`` guesses the token ``i + 1`` steps
    after the next one.

    Each head is residual, ``x = h + SiLU(W h + b)``, ``logits = L x``.  By
    default the matrices keep the file's storage (BF16 -> ``"bfloat16"``, F16
    -> ``"float16"``, F32 -> ``"float32"``, F64 -> ``"float64"``), bit for
    bit; ``weight_dtype`` stores them otherwise (e.g. ``"int8"``).  The bias
    becomes the heads' compute dtype (float32, or float64 for float64 heads).
    """
    header = read_header(path)
    plans = plan_medusa(header)
    target = None if weight_dtype is None else resolve_weight_dtype(weight_dtype)
    arrays = _read_tensors(header, sorted(header.tensors))
    try:
        heads = []
        for plan in plans:
            keys = plan.keys
            weight, bias, lm_head = (arrays[keys[role]] for role in _HEAD_KEYS)
            bias_dtype = header.tensors[keys["projection.bias"]].dtype
            compute = np.float64 if (target or plan.weight_dtype) == "float64" else np.float32
            bias = _as_float(bias, bias_dtype).astype(compute)
            if target is None or target == plan.weight_dtype:
                head = DraftHead.from_stored(plan.weight_dtype, weight, bias, lm_head,
                                             residual=True)
            else:
                matrix_dtype = header.tensors[keys["projection.weight"]].dtype
                head = DraftHead(_as_float(weight, matrix_dtype), bias,
                                 _as_float(lm_head, matrix_dtype), weight_dtype=target,
                                 residual=True)
            heads.append(head)
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
