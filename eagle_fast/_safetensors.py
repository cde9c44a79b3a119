"""The safetensors file format, read and written here (no safetensors package).

A safetensors file is an 8-byte little-endian header size N, N bytes of JSON
mapping each tensor name to its ``dtype``, ``shape`` and ``data_offsets``
[begin, end) (relative to the end of the header; the tensors tile the data
region exactly), plus an optional ``__metadata__`` str -> str map, then the
raw little-endian tensor data.

**Reading** (:class:`SafetensorsFile`, :func:`read_safetensors`) opens the
file once and reads everything -- header, then each requested tensor by its
offsets -- from that one handle, so a file replaced while it is read (an
atomic save by another process) is read whole, old or new, never a mix.  The
header is untrusted input and is bounded before it is parsed: its size
(``MAX_HEADER_BYTES``), its JSON nesting (``MAX_NESTING``, scanned without
recursion), its number of entries (``MAX_TENSORS``) and of values in all
(``MAX_VALUES``: parsing stays within a few hundred MB of memory); JSON integers longer
than 20 digits, duplicate keys and NaN/Infinity are refused while parsing.
Then every entry is checked: known dtype, at most ``MAX_NDIM`` dimensions,
sizes that agree with the shape, offsets inside the file, tensors tiling the
data region.  Any failure is a :class:`CheckpointError` starting with the
file's path.  Tensors come back as native-order NumPy arrays; types NumPy
lacks come back as their bit patterns: BF16 as uint16, the F8 types as
uint8 (the header's dtype says which).

**Writing** (:func:`write_safetensors`) lays the tensors out as the
safetensors package does (header padded with spaces to a multiple of 8 bytes,
tensors ordered by decreasing item size, then name, so each is aligned),
writes a uniquely named temporary file in the target's folder, flushes it to
disk and renames it over the target: an interrupted or concurrent save never
leaves half a file.  The file gets the mode ``open()`` would give it (0o666
less the umask, or an existing file's permissions); a path that is a
symbolic link writes the link's target.  Failures are ``OSError`` naming the caller's path.
"""

from __future__ import annotations

import errno
import io
import json
import math
import os
import secrets
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Mapping, Optional, Union

import numpy as np

PathLike = Union[str, "os.PathLike[str]"]

# Bounds on an untrusted header.  A safetensors header nests 3 deep
# (object -> tensor entry -> shape); the safetensors package refuses headers
# above 100 MB; real checkpoints hold at most a few thousand tensors per file.
MAX_HEADER_BYTES = 100_000_000
MAX_NESTING = 16
MAX_TENSORS = 100_000
MAX_VALUES = 2 << 20  # strings + commas: a tensor entry has about 10
MAX_NDIM = 32
_MAX_INT_DIGITS = 20  # 2**64 has 20 digits
_MAX_BYTES = 2**63 - 1  # of a tensor's shape product, as NumPy allows

# Bytes per element of every fixed-size safetensors dtype (the format's names).
DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8, "C64": 8,
}

# How each dtype is read: the little-endian NumPy dtype (bit patterns for the
# types NumPy has not: BF16 -> uint16, F8 -> uint8).
READ_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"), "U8": np.dtype("u1"), "I8": np.dtype("i1"),
    "F8_E5M2": np.dtype("u1"), "F8_E4M3": np.dtype("u1"), "F8_E8M0": np.dtype("u1"),
    "I16": np.dtype("<i2"), "U16": np.dtype("<u2"), "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"), "I32": np.dtype("<i4"), "U32": np.dtype("<u4"),
    "F32": np.dtype("<f4"), "I64": np.dtype("<i8"), "U64": np.dtype("<u8"),
    "F64": np.dtype("<f8"), "C64": np.dtype("<c8"),
}

# The file dtype a NumPy dtype is written as, unless the caller says otherwise
# (uint16 bit patterns written as BF16, say).
_WRITE_DTYPES = {"b": {1: "BOOL"}, "u": {1: "U8", 2: "U16", 4: "U32", 8: "U64"},
                 "i": {1: "I8", 2: "I16", 4: "I32", 8: "I64"},
                 "f": {2: "F16", 4: "F32", 8: "F64"}, "c": {8: "C64"}}

_READ_CHUNK = 1 << 24  # bytes per read call
_SCAN_CHUNK = 1 << 20  # brackets per step of the nesting scan


class CheckpointError(ValueError):
    """A checkpoint file that cannot be loaded: truncated or corrupted, not
    of the expected format, or with missing, extra or inconsistent tensors.
    The message starts with the file's path."""


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
    """A checked safetensors header: every tensor lies inside the file."""

    path: Path
    file_bytes: int
    metadata: dict[str, str]
    tensors: dict[str, TensorInfo] = field(default_factory=dict)

    def error(self, message: str) -> CheckpointError:
        return CheckpointError(f"{self.path}: {message}")


def shown(text: str, limit: int = 100) -> str:
    """``repr(text)``, cut short (a hostile file's names can be megabytes long)."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


# -- reading -----------------------------------------------------------------------


class SafetensorsFile:
    """A safetensors file opened once: the header is read and checked on
    opening, tensors are read on request from the same handle.  Use as a
    context manager (or call :meth:`close`)."""

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        try:
            self._file: io.BufferedReader = open(self.path, "rb")
        except OSError as exc:
            raise CheckpointError(f"{self.path}: cannot read: {exc.strerror or exc}") from exc
        try:
            self.header = _read_header(self.path, self._file)
        except BaseException:
            self._file.close()
            raise

    def __enter__(self) -> SafetensorsFile:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def read(self, names: Optional[Iterable[str]] = None) -> dict[str, np.ndarray]:
        """The named tensors (all by default) as native-order arrays."""
        tensors = self.header.tensors
        wanted = list(tensors) if names is None else list(names)
        unknown = [name for name in wanted if name not in tensors]
        if unknown:
            raise self.header.error(f"no tensor named {shown(unknown[0])} in the file")
        return {name: self._read_one(name, tensors[name]) for name in wanted}

    def _read_one(self, name: str, info: TensorInfo) -> np.ndarray:
        buffer = np.empty(info.nbytes, dtype=np.uint8)
        view = buffer.data
        done = 0
        try:
            self._file.seek(info.start)
            while done < info.nbytes:
                got = self._file.readinto(view[done:done + _READ_CHUNK])
                if not got:
                    break
                done += got
        except OSError as exc:
            raise self.header.error(f"cannot read tensor {shown(name)}: "
                                    f"{exc.strerror or exc}") from exc
        if done != info.nbytes:
            raise self.header.error(f"truncated while reading tensor {shown(name)}")
        if info.dtype == "BOOL" and (buffer > 1).any():
            raise self.header.error(f"tensor {shown(name)} (BOOL) holds bytes other than 0 and 1")
        little = READ_DTYPES[info.dtype]
        array = buffer.view(little).reshape(info.shape)
        native = little.newbyteorder("=")
        return array if native == little else array.astype(native)


def read_safetensors(path: PathLike, *, names: Optional[Iterable[str]] = None
                     ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """``(tensors, metadata)`` of the safetensors file at ``path``, read
    through one open handle: the named tensors (all by default), checked as
    described in this module, and the header's ``__metadata__``."""
    with SafetensorsFile(path) as file:
        return file.read(names), dict(file.header.metadata)


def read_header(path: PathLike) -> Header:
    """The checked header of the safetensors file at ``path`` (no tensor data read)."""
    with SafetensorsFile(path) as file:
        return file.header


class _HeaderProblem(ValueError):
    """Raised by the JSON hooks; becomes a CheckpointError naming the path."""


def _bounded_int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > _MAX_INT_DIGITS:
        raise _HeaderProblem(f"an integer of {digits} digits")
    return int(text)


def _no_constant(text: str) -> Any:
    raise _HeaderProblem(f"{text} is not allowed")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _HeaderProblem(f"duplicate key {key[:100]!r}")
            seen.add(key)
    return result


_NOT_STRUCTURAL = bytes(b for b in range(256) if b not in b'[]{}",')


@dataclass
class _Shape:
    """What a scan of JSON text finds without parsing it."""

    deepest: int = 0  # nesting
    entries: int = 0  # objects at the second level (tensor entries, __metadata__)
    values: int = 0  # upper bound on the number of values: strings + commas + 1


def _scan_json(raw: bytes) -> _Shape:
    """Escaped backslashes and quotes dropped, then only quotes, brackets and
    commas kept; those preceded by an even number of quotes are structural.
    In chunks, so memory stays small; stops once a bound is exceeded."""
    if b"\\" in raw:
        raw = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    kept = np.frombuffer(raw.translate(None, _NOT_STRUCTURAL), dtype=np.uint8)
    found, depth, quotes, commas = _Shape(), 0, 0, 0
    for start in range(0, kept.size, _SCAN_CHUNK):
        chunk = kept[start:start + _SCAN_CHUNK]
        quote = chunk == ord('"')
        seen = quotes + np.cumsum(quote, dtype=np.int64)
        quotes = int(seen[-1])
        outside = chunk[~quote & (seen % 2 == 0)]
        comma = outside == ord(",")
        commas += int(np.count_nonzero(comma))
        brackets = outside[~comma]
        found.values = quotes // 2 + commas + 1
        if brackets.size:
            opening = (brackets == ord("{")) | (brackets == ord("["))
            depths = depth + np.cumsum(np.where(opening, 1, -1), dtype=np.int64)
            found.deepest = max(found.deepest, int(depths.max()))
            found.entries += int(np.count_nonzero((brackets == ord("{")) & (depths == 2)))
            depth = int(depths[-1])
        if found.deepest > MAX_NESTING or found.entries > MAX_TENSORS + 1 or \
                found.values > MAX_VALUES:
            break
    return found


def _is_int_list(value: Any) -> bool:
    return isinstance(value, list) and set(map(type, value)) <= {int}  # no bools


def _read_header(path: Path, f: IO[bytes]) -> Header:
    def fail(message: str) -> CheckpointError:
        return CheckpointError(f"{path}: {message}")

    try:
        file_bytes = os.fstat(f.fileno()).st_size
        if file_bytes < 8:
            raise fail(f"truncated or not a safetensors file: {file_bytes} bytes, "
                       "less than the 8-byte header size")
        (header_bytes,) = struct.unpack("<Q", f.read(8))
        if header_bytes > file_bytes - 8:
            raise fail(f"header size {header_bytes} is larger than the rest of the "
                       f"file ({file_bytes - 8} bytes): truncated or not a "
                       "safetensors file")
        if header_bytes > MAX_HEADER_BYTES:
            raise fail(f"header size {header_bytes} is implausibly large (more than "
                       f"{MAX_HEADER_BYTES} bytes; not a safetensors file?)")
        raw = f.read(header_bytes)
    except OSError as exc:
        raise fail(f"cannot read: {exc.strerror or exc}") from exc
    if len(raw) != header_bytes:
        raise fail("truncated while reading the header")

    found = _scan_json(raw)
    if found.deepest > MAX_NESTING:
        raise fail(f"corrupted header: JSON nested more than {MAX_NESTING} levels deep "
                   "(a safetensors header nests 3)")
    if found.entries > MAX_TENSORS + 1:
        raise fail(f"corrupted header: more than {MAX_TENSORS} tensors")
    if found.values > MAX_VALUES:
        raise fail(f"corrupted header: more than {MAX_VALUES} JSON values "
                   f"(strings, numbers, lists and objects)")
    try:
        parsed = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys,
                            parse_int=_bounded_int, parse_constant=_no_constant)
    except _HeaderProblem as exc:
        raise fail(f"corrupted header: {exc}") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise fail(f"corrupted header: not valid JSON ({exc})") from None
    if not isinstance(parsed, dict):
        raise fail("corrupted header: the JSON is not an object")
    if len(parsed) - ("__metadata__" in parsed) > MAX_TENSORS:
        raise fail(f"corrupted header: more than {MAX_TENSORS} tensors")

    metadata = parsed.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not (isinstance(metadata, dict)
            and all(isinstance(v, str) for v in metadata.values())):
        raise fail("corrupted header: __metadata__ must map strings to strings")

    data_start = 8 + header_bytes
    data_bytes = file_bytes - data_start
    tensors: dict[str, TensorInfo] = {}
    for name, entry in parsed.items():
        if not (isinstance(entry, dict) and isinstance(entry.get("dtype"), str)
                and _is_int_list(entry.get("shape"))
                and _is_int_list(entry.get("data_offsets"))
                and len(entry["data_offsets"]) == 2):
            raise fail(f"corrupted header: tensor {shown(name)} needs a dtype, a shape "
                       f"and two data_offsets, got {str(entry)[:200]}")
        dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in DTYPE_SIZES:
            raise fail(f"tensor {shown(name)} has unknown dtype {shown(dtype, 20)}")
        if len(shape) > MAX_NDIM:
            raise fail(f"corrupted header: tensor {shown(name)} has {len(shape)} dimensions "
                       f"(at most {MAX_NDIM})")
        if min(shape, default=0) < 0 or not 0 <= begin <= end:
            raise fail(f"corrupted header: tensor {shown(name)} has negative sizes or "
                       f"offsets (shape {shape}, data_offsets {[begin, end]})")
        if math.prod(max(n, 1) for n in shape) * DTYPE_SIZES[dtype] > _MAX_BYTES:
            raise fail(f"corrupted header: tensor {shown(name)} has an impossible shape {shape}")
        expected = math.prod(shape) * DTYPE_SIZES[dtype]
        if end - begin != expected:
            raise fail(f"corrupted header: tensor {shown(name)} ({dtype}, shape {shape}) "
                       f"needs {expected} bytes, its data_offsets {[begin, end]} "
                       f"span {end - begin}")
        if end > data_bytes:
            raise fail(f"truncated: tensor {shown(name)} ends at byte {data_start + end}, "
                       f"the file has {file_bytes} bytes")
        tensors[name] = TensorInfo(dtype, tuple(shape), data_start + begin, data_start + end)

    # As safetensors requires: the tensors tile the data region, no gaps or overlaps.
    position = data_start
    for name, info in sorted(tensors.items(), key=lambda item: (item[1].start, item[1].stop)):
        if info.start != position:
            raise fail(f"corrupted header: tensor {shown(name)} starts at byte {info.start}, "
                       f"expected {position} (overlapping or missing data)")
        position = info.stop
    if position != file_bytes:
        raise fail(f"{file_bytes - position} bytes after the last tensor "
                   "(corrupted header or a file that is not safetensors)")
    return Header(path, file_bytes, dict(metadata), tensors)


# -- writing -----------------------------------------------------------------------


def write_safetensors(path: PathLike, tensors: Mapping[str, np.ndarray],
                      metadata: Optional[Mapping[str, str]] = None, *,
                      dtypes: Optional[Mapping[str, str]] = None) -> None:
    """Write ``tensors`` (name -> array) and ``metadata`` (str -> str) to a
    safetensors file at ``path``, atomically (see the module docstring).
    ``dtypes`` gives a tensor's file dtype where it is not the array's own,
    e.g. ``"BF16"`` for uint16 bit patterns."""
    dtypes = dict(dtypes or {})
    entries = []
    for name, array in tensors.items():
        if not isinstance(name, str) or name == "__metadata__":
            raise ValueError(f"invalid tensor name {name!r}")
        array = np.asarray(array)
        kind_sizes = _WRITE_DTYPES.get(array.dtype.kind, {})
        file_dtype = dtypes.get(name) or kind_sizes.get(array.dtype.itemsize)
        if file_dtype is None or DTYPE_SIZES.get(file_dtype) != array.dtype.itemsize:
            raise TypeError(f"tensor {name!r}: cannot store dtype {array.dtype} as "
                            f"{file_dtype or 'a safetensors dtype'}")
        little = np.asarray(array, dtype=array.dtype.newbyteorder("<"), order="C")
        entries.append((name, file_dtype, little))
    # Largest items first, then by name: every tensor starts aligned to its item size.
    entries.sort(key=lambda entry: (-entry[2].dtype.itemsize, entry[0]))

    header: dict[str, Any] = {}
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise TypeError("metadata must map strings to strings")
        header["__metadata__"] = dict(metadata)
    offset = 0
    for name, file_dtype, little in entries:
        header[name] = {"dtype": file_dtype, "shape": list(little.shape),
                        "data_offsets": [offset, offset + little.nbytes]}
        offset += little.nbytes
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)

    def write(f: IO[bytes]) -> None:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for _, _, little in entries:
            if little.nbytes:
                f.write(little.reshape(-1).view(np.uint8).data)

    replace_atomically(path, write)


def replace_atomically(path: PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write(f)`` on a new temporary file beside ``path``'s target (a
    symbolic link is followed), flush it to disk and rename it over the
    target.  The file gets ``open()``'s mode (0o666 less the umask), or the
    permissions (and, where allowed, the owner) of the file it replaces; an
    existing target that is not a regular file (a folder, a device, a pipe)
    is left alone.  OSError names ``path``."""
    named = os.fspath(path)
    try:
        target = os.path.realpath(named)
        folder, base = os.path.split(target)
        try:
            existing = os.stat(target)
        except FileNotFoundError:
            existing = None
        if existing is not None and not stat.S_ISREG(existing.st_mode):
            # Never replace a folder, device or pipe by a checkpoint.
            code = errno.EISDIR if stat.S_ISDIR(existing.st_mode) else errno.EEXIST
            raise OSError(code, "not a regular file", target)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | \
            getattr(os, "O_BINARY", 0)
        for attempt in range(100):
            temporary = os.path.join(folder, f".{base}.{secrets.token_hex(8)}.tmp")
            try:
                fd = os.open(temporary, flags, 0o666)  # the umask applies, as for open()
                break
            except FileExistsError:
                if attempt == 99:
                    raise
    except OSError as exc:
        raise _naming(exc, named) from exc
    try:
        with os.fdopen(fd, "wb") as f:
            if existing is not None:
                _copy_owner_and_permissions(existing, f.fileno(), temporary)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, target)
    except BaseException as exc:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise _naming(exc, named) from exc
        raise


def _copy_owner_and_permissions(existing: os.stat_result, fd: int, name: str) -> None:
    if hasattr(os, "fchown") and (existing.st_uid, existing.st_gid) != \
            (os.fstat(fd).st_uid, os.fstat(fd).st_gid):
        try:
            os.fchown(fd, existing.st_uid, existing.st_gid)
        except OSError:  # not allowed: the file is the writer's, as open() would make it
            pass
    mode = stat.S_IMODE(existing.st_mode) & 0o777  # no setuid/setgid/sticky bits
    if hasattr(os, "fchmod"):
        os.fchmod(fd, mode)
    else:  # Windows
        os.chmod(name, mode)


def _naming(exc: OSError, path: str) -> OSError:
    """``exc`` as an OSError of the same kind that names ``path``."""
    if exc.errno is None:
        return OSError(f"cannot write {path}: {exc}")
    return OSError(exc.errno, f"cannot write checkpoint ({exc.strerror})", path)


__all__ = ["CheckpointError", "Header", "TensorInfo", "SafetensorsFile", "read_safetensors",
           "read_header", "write_safetensors", "DTYPE_SIZES", "READ_DTYPES"]
