"""Checkpoints: DraftHead.save/load, load_medusa, bad files, ``eagle-fast inspect``.

Files are written with the real ``safetensors`` package -- BF16 tensors from
raw bit patterns, the way the format stores them -- and predictions are
checked against an independent float64 NumPy computation of the formula on
the weights as decoded here.
"""

from __future__ import annotations

import builtins
import errno
import json
import os
import re
import stat
import struct
import sys
import threading

import numpy as np
import pytest

safetensors = pytest.importorskip("safetensors")
from safetensors.numpy import save_file  # noqa: E402

import eagle_fast  # noqa: E402
from eagle_fast import CheckpointError, DraftHead, MedusaHeads, load_medusa  # noqa: E402
from eagle_fast._cli import main as cli_main  # noqa: E402
from support import backend_independent, random_head  # noqa: E402

WEIGHT_DTYPES = ["float32", "float64", "bfloat16", "float16", "int8"]
D_MODEL, D_PROJ, VOCAB = 16, 8, 40


# -- independent helpers --------------------------------------------------------------


def bf16_bits(values: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns of float32 ``values``, round to nearest even
    (written independently of eagle_fast._storage)."""
    bits = np.asarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def bf16_values(bits: np.ndarray) -> np.ndarray:
    """float64 values of bfloat16 bit patterns."""
    return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def write_raw(path, tensors: dict, metadata=None) -> None:
    """Write ``{name: (file dtype name, array)}`` with safetensors' low-level
    serialize_file, so BF16 can be written from uint16 bit patterns."""
    names = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64",
             "I8": "int8", "I32": "int32", "I64": "int64"}
    keep, specs = [], {}
    for name, (dtype, array) in tensors.items():
        array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
        keep.append(array)
        if hasattr(safetensors, "TensorSpec"):
            specs[name] = safetensors.TensorSpec(dtype=names[dtype], shape=array.shape,
                                                 data_ptr=array.ctypes.data,
                                                 data_len=array.nbytes)
        else:
            specs[name] = {"dtype": names[dtype], "shape": list(array.shape),
                           "data": array.tobytes()}
    safetensors.serialize_file(specs, str(path), metadata=metadata)


def silu(v: np.ndarray) -> np.ndarray:
    return v / (1.0 + np.exp(-v))


def reference_probs(hidden, W, b, L, residual: bool) -> np.ndarray:
    """float64 softmax(L x), x = [h +] SiLU(W h + b), for states in rows."""
    h = np.atleast_2d(np.asarray(hidden, dtype=np.float64))
    x = silu(h @ W.T + b)
    if residual:
        x = h + x
    logits = x @ L.T
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def check_against_reference(tokens, token_probs, ref_probs, top_k, rtol=1e-4):
    """Returned top-k are the reference's best (up to float32 near-ties) and
    carry the reference probabilities."""
    tokens = np.asarray(tokens).reshape(-1, top_k)
    token_probs = np.asarray(token_probs).reshape(-1, top_k)
    for row, ref in enumerate(np.atleast_2d(ref_probs)):
        best = np.sort(ref)[::-1][:top_k]
        np.testing.assert_allclose(ref[tokens[row]], best, rtol=rtol, atol=1e-7)
        np.testing.assert_allclose(token_probs[row], ref[tokens[row]], rtol=rtol, atol=1e-7)


def own_metadata(**overrides) -> dict:
    metadata = {"format": "eagle_fast.draft_head", "format_version": "1",
                "d_model": str(D_MODEL), "d_proj": str(D_PROJ), "vocab_size": str(VOCAB),
                "activation": "silu", "residual": "false", "weight_dtype": "float32"}
    metadata.update(overrides)
    return {k: v for k, v in metadata.items() if v is not None}


def own_tensors(rng) -> dict:
    W, b, L = random_head(rng, D_MODEL, D_PROJ, VOCAB, dtype=np.float32)
    return {"projection.weight": W, "projection.bias": b, "lm_head.weight": L}


def header_of(path):
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return data, n, json.loads(data[8:8 + n])


# -- our format: round trips ------------------------------------------------------------


@pytest.mark.parametrize("weight_dtype", WEIGHT_DTYPES)
def test_round_trip_is_bit_exact(tmp_path, weight_dtype):
    rng = np.random.default_rng(1)
    head = DraftHead(*random_head(rng, D_MODEL, D_PROJ, VOCAB), weight_dtype=weight_dtype)
    path = tmp_path / "head.safetensors"
    head.save(path)
    loaded = DraftHead.load(path)
    assert loaded.weight_dtype == weight_dtype and loaded.dtype == head.dtype
    assert (loaded.d_model, loaded.d_proj, loaded.vocab_size) == (D_MODEL, D_PROJ, VOCAB)
    assert loaded.backend == eagle_fast.backend and not loaded.residual
    saved, read = head.stored_arrays(), loaded.stored_arrays()
    assert saved.keys() == read.keys()
    for name in saved:
        assert read[name].dtype == saved[name].dtype, name
        assert read[name].tobytes() == saved[name].tobytes(), name
    hidden = rng.standard_normal((3, D_MODEL))
    a = head.predict(hidden, top_k=3, return_logits=True, return_probs=True)
    b = loaded.predict(hidden, top_k=3, return_logits=True, return_probs=True)
    for field in ("tokens", "token_probs", "logits", "probs"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


@pytest.mark.parametrize("weight_dtype", WEIGHT_DTYPES)
def test_file_layout(tmp_path, weight_dtype):
    rng = np.random.default_rng(2)
    path = tmp_path / "head.safetensors"
    DraftHead(*random_head(rng, D_MODEL, D_PROJ, VOCAB), weight_dtype=weight_dtype).save(path)
    _, _, header = header_of(path)
    metadata = header.pop("__metadata__")
    assert metadata == own_metadata(weight_dtype=weight_dtype)
    matrix = {"float32": "F32", "float64": "F64", "bfloat16": "BF16", "float16": "F16",
              "int8": "I8"}[weight_dtype]
    expected = {"projection.weight": (matrix, [D_PROJ, D_MODEL]),
                "projection.bias": ("F64" if weight_dtype == "float64" else "F32", [D_PROJ]),
                "lm_head.weight": (matrix, [VOCAB, D_PROJ])}
    if weight_dtype == "int8":
        expected["projection.weight_scale"] = ("F32", [D_PROJ])
        expected["lm_head.weight_scale"] = ("F32", [VOCAB])
    assert {k: (v["dtype"], v["shape"]) for k, v in header.items()} == expected


def test_bf16_file_from_raw_bits_loads_as_those_bits(tmp_path):
    rng = np.random.default_rng(3)
    W, b, L = random_head(rng, D_MODEL, D_PROJ, VOCAB, dtype=np.float32)
    Wb, Lb = bf16_bits(W), bf16_bits(L)
    path = tmp_path / "head.safetensors"
    write_raw(path, {"projection.weight": ("BF16", Wb), "projection.bias": ("F32", b),
                     "lm_head.weight": ("BF16", Lb)}, own_metadata(weight_dtype="bfloat16"))
    head = DraftHead.load(path)
    np.testing.assert_array_equal(head.stored_arrays()["projection.weight"], Wb)
    np.testing.assert_array_equal(head.stored_arrays()["lm_head.weight"], Lb)
    hidden = rng.standard_normal((4, D_MODEL))
    result = head.predict(hidden, top_k=3)
    ref = reference_probs(hidden, bf16_values(Wb), b.astype(np.float64), bf16_values(Lb),
                          residual=False)
    check_against_reference(result.tokens, result.token_probs, ref, 3)


def test_residual_round_trip(tmp_path):
    rng = np.random.default_rng(4)
    W, b, L = random_head(rng, D_MODEL, D_MODEL, VOCAB)
    head = DraftHead(W, b, L, weight_dtype="bfloat16", residual=True)
    path = tmp_path / "residual.safetensors"
    head.save(path)
    assert header_of(path)[2]["__metadata__"]["residual"] == "true"
    loaded = DraftHead.load(path)
    assert loaded.residual
    hidden = rng.standard_normal((2, D_MODEL))
    np.testing.assert_array_equal(loaded.predict(hidden, top_k=2, return_probs=True).probs,
                                  head.predict(hidden, top_k=2, return_probs=True).probs)
    ref = reference_probs(hidden, loaded.projection_weight.astype(np.float64),
                          loaded.projection_bias.astype(np.float64),
                          loaded.lm_head_weight.astype(np.float64), residual=True)
    result = loaded.predict(hidden, top_k=2)
    check_against_reference(result.tokens, result.token_probs, ref, 2)


@pytest.mark.parametrize("weight_dtype", ["float32", "int8"])
def test_d2t_round_trip_returns_target_ids(tmp_path, weight_dtype):
    rng = np.random.default_rng(5)
    target_vocab = 1000
    targets = np.sort(rng.choice(target_vocab, VOCAB, replace=False))
    d2t = targets - np.arange(VOCAB)
    head = DraftHead(*random_head(rng, D_MODEL, D_PROJ, VOCAB), weight_dtype=weight_dtype,
                     d2t=d2t, target_vocab_size=target_vocab)
    path = tmp_path / "eagle3.safetensors"
    head.save(path)
    _, _, header = header_of(path)
    assert header["d2t"]["dtype"] == "I64" and header["d2t"]["shape"] == [VOCAB]
    assert header["__metadata__"]["target_vocab_size"] == str(target_vocab)
    loaded = DraftHead.load(path)
    assert loaded.target_vocab_size == target_vocab
    np.testing.assert_array_equal(loaded.d2t, d2t)
    hidden = rng.standard_normal((3, D_MODEL))
    result = loaded.predict(hidden, top_k=4)
    np.testing.assert_array_equal(result.tokens, targets[result.draft_tokens])
    np.testing.assert_array_equal(result.tokens, head.predict(hidden, top_k=4).tokens)


def test_d2t_written_by_hand_loads(tmp_path):
    rng = np.random.default_rng(6)
    tensors = own_tensors(rng)
    d2t = np.arange(VOCAB, dtype=np.int64) * 2  # draft i -> target 3 i
    save_file({**tensors, "d2t": d2t}, tmp_path / "h.safetensors",
              metadata=own_metadata(target_vocab_size=str(3 * VOCAB)))
    head = DraftHead.load(tmp_path / "h.safetensors")
    hidden = rng.standard_normal(D_MODEL)
    result = head.predict(hidden, top_k=2)
    np.testing.assert_array_equal(result.tokens, 3 * result.draft_tokens)
    ref = reference_probs(hidden, *(tensors[k].astype(np.float64) for k in
                                    ("projection.weight", "projection.bias", "lm_head.weight")),
                          residual=False)
    check_against_reference(result.draft_tokens, result.token_probs, ref, 2)


def test_save_replaces_an_existing_file_and_leaves_no_temporary(tmp_path):
    rng = np.random.default_rng(7)
    path = tmp_path / "head.safetensors"
    path.write_bytes(b"old contents")
    DraftHead(*random_head(rng, D_MODEL, D_PROJ, VOCAB)).save(str(path))
    assert DraftHead.load(str(path)).vocab_size == VOCAB
    assert [p.name for p in tmp_path.iterdir()] == ["head.safetensors"]


@backend_independent
def test_save_and_load_need_no_safetensors_package(tmp_path, monkeypatch):
    rng = np.random.default_rng(8)
    head = DraftHead(*random_head(rng, D_MODEL, D_PROJ, VOCAB), weight_dtype="bfloat16")
    medusa_path = tmp_path / "medusa_lm_head.safetensors"
    write_raw(medusa_path, medusa_tensors(medusa_floats(rng, 2), "BF16")[0])
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.numpy", None)
    head.save(tmp_path / "head.safetensors")
    loaded = DraftHead.load(tmp_path / "head.safetensors")
    assert loaded.stored_arrays()["lm_head.weight"].tobytes() == \
        head.stored_arrays()["lm_head.weight"].tobytes()
    assert load_medusa(medusa_path).num_heads == 2


# -- Medusa ----------------------------------------------------------------------------------


def medusa_floats(rng, n_heads=3, d_model=D_MODEL, vocab=VOCAB):
    """float32 weights of ``n_heads`` Medusa heads: (W, b, L) each."""
    return [((rng.standard_normal((d_model, d_model)) / np.sqrt(d_model)).astype(np.float32),
             (rng.standard_normal(d_model) * 0.1).astype(np.float32),
             (rng.standard_normal((vocab, d_model)) * 2 / np.sqrt(d_model)).astype(np.float32))
            for _ in range(n_heads)]


def medusa_tensors(weights, dtype):
    """{name: (file dtype, array)} of a Medusa checkpoint in ``dtype``
    (BF16 as bit patterns); and the float64 values the file holds."""
    tensors, values = {}, []
    for i, (W, b, L) in enumerate(weights):
        if dtype == "BF16":
            stored = [bf16_bits(a) for a in (W, b, L)]
            decoded = [bf16_values(a) for a in stored]
        else:
            numpy_dtype = {"F16": np.float16, "F32": np.float32}[dtype]
            stored = [a.astype(numpy_dtype) for a in (W, b, L)]
            decoded = [a.astype(np.float64) for a in stored]
        for suffix, array in zip(("0.linear.weight", "0.linear.bias", "1.weight"), stored):
            tensors[f"{i}.{suffix}"] = (dtype, array)
        values.append(decoded)
    return tensors, values


@pytest.mark.parametrize("file_dtype,weight_dtype",
                         [("BF16", "bfloat16"), ("F16", "float16"), ("F32", "float32")])
def test_medusa_checkpoint_predicts_like_float64_reference(tmp_path, file_dtype, weight_dtype):
    rng = np.random.default_rng(10)
    tensors, values = medusa_tensors(medusa_floats(rng), file_dtype)
    path = tmp_path / "medusa_lm_head.safetensors"
    if file_dtype == "BF16":
        write_raw(path, tensors)
    else:  # the NumPy API, as a user would
        save_file({name: array for name, (_, array) in tensors.items()}, path)
    medusa = load_medusa(path)
    assert isinstance(medusa, MedusaHeads)
    assert (medusa.num_heads, medusa.d_model, medusa.weight_dtype) == (3, D_MODEL, weight_dtype)
    assert all(head.residual for head in medusa.heads)
    for i, head in enumerate(medusa.heads):  # matrices kept bit for bit
        stored = head.stored_arrays()
        assert stored["projection.weight"].tobytes() == tensors[f"{i}.0.linear.weight"][1].tobytes()
        assert stored["lm_head.weight"].tobytes() == tensors[f"{i}.1.weight"][1].tobytes()
        assert stored["projection.bias"].dtype == np.float32

    top_k = 3
    one = rng.standard_normal(D_MODEL)
    result = medusa.predict(one, top_k=top_k)
    assert result.tokens.shape == (3, top_k)
    for i, (W, b, L) in enumerate(values):
        ref = reference_probs(one, W, b, L, residual=True)
        check_against_reference(result.tokens[i], result.token_probs[i], ref, top_k)

    batch = rng.standard_normal((4, D_MODEL))
    result = medusa.predict(batch, top_k=top_k)
    assert result.tokens.shape == (4, 3, top_k)
    for i, (W, b, L) in enumerate(values):
        ref = reference_probs(batch, W, b, L, residual=True)
        check_against_reference(result.tokens[:, i], result.token_probs[:, i], ref, top_k)


def test_medusa_weight_dtype_override(tmp_path):
    rng = np.random.default_rng(11)
    tensors, values = medusa_tensors(medusa_floats(rng, n_heads=2), "BF16")
    path = tmp_path / "medusa_lm_head.safetensors"
    write_raw(path, tensors)
    as_f32 = load_medusa(path, weight_dtype="float32")
    assert as_f32.weight_dtype == "float32"
    np.testing.assert_array_equal(as_f32[1].projection_weight, values[1][0].astype(np.float32))
    as_int8 = load_medusa(path, weight_dtype="int8")
    assert as_int8.weight_dtype == "int8"
    as_f64 = load_medusa(path, weight_dtype="float64")
    assert as_f64.dtype == np.float64
    hidden = rng.standard_normal(D_MODEL)
    ref = [reference_probs(hidden, *v, residual=True) for v in values]
    result = as_f64.predict(hidden, top_k=2)
    for i in range(2):
        check_against_reference(result.tokens[i], result.token_probs[i], ref[i], 2, rtol=1e-10)


# -- bad files ---------------------------------------------------------------------------------


def write_own(path, tensors, **metadata):
    save_file(tensors, path, metadata=own_metadata(**metadata))
    return path


@pytest.fixture
def good_file(tmp_path):
    path = tmp_path / "head.safetensors"
    DraftHead(*random_head(np.random.default_rng(12), D_MODEL, D_PROJ, VOCAB),
              weight_dtype="float32").save(path)
    return path


def test_missing_key(tmp_path):
    tensors = own_tensors(np.random.default_rng(13))
    del tensors["lm_head.weight"]
    path = write_own(tmp_path / "h.safetensors", tensors)
    with pytest.raises(CheckpointError, match=r"h\.safetensors: missing tensor.*'lm_head\.weight'"):
        DraftHead.load(path)


def test_extra_key(tmp_path):
    tensors = own_tensors(np.random.default_rng(14))
    tensors["lm_head.bias"] = np.zeros(VOCAB, np.float32)
    path = write_own(tmp_path / "h.safetensors", tensors)
    with pytest.raises(CheckpointError, match=r"unexpected tensor.*'lm_head\.bias'"):
        DraftHead.load(path)


def test_int8_head_without_scales(tmp_path):
    tensors = {k: v.astype(np.int8) if v.ndim == 2 else v
               for k, v in own_tensors(np.random.default_rng(14)).items()}
    path = write_own(tmp_path / "h.safetensors", tensors, weight_dtype="int8")
    with pytest.raises(CheckpointError, match=r"missing tensor.*weight_scale"):
        DraftHead.load(path)


def test_shape_mismatch(tmp_path):
    tensors = own_tensors(np.random.default_rng(15))
    tensors["lm_head.weight"] = np.zeros((VOCAB, D_PROJ + 1), np.float32)
    path = write_own(tmp_path / "h.safetensors", tensors)
    with pytest.raises(CheckpointError, match=r"shape mismatch.*'lm_head\.weight'.*\[40, 9\]"):
        DraftHead.load(path)


def test_metadata_disagreeing_with_shapes(tmp_path):
    path = write_own(tmp_path / "h.safetensors", own_tensors(np.random.default_rng(15)),
                     d_model="17")
    with pytest.raises(CheckpointError, match=r"shape mismatch.*'projection\.weight'"):
        DraftHead.load(path)


def test_unsupported_dtype(tmp_path):
    tensors = {k: (v * 100).astype(np.int32) if v.ndim == 2 else v
               for k, v in own_tensors(np.random.default_rng(16)).items()}
    path = write_own(tmp_path / "h.safetensors", tensors)
    with pytest.raises(CheckpointError, match=r"unsupported dtype I32 .*'projection\.weight'"):
        DraftHead.load(path)


def test_dtype_not_matching_weight_dtype(tmp_path):
    tensors = own_tensors(np.random.default_rng(16))
    path = write_own(tmp_path / "h.safetensors", tensors, weight_dtype="float16")
    with pytest.raises(CheckpointError, match=r"dtype F32 .*float16 head stores it as F16"):
        DraftHead.load(path)


def test_truncated_file(good_file):
    data = good_file.read_bytes()
    good_file.write_bytes(data[:-10])
    with pytest.raises(CheckpointError, match=r"truncated"):
        DraftHead.load(good_file)


def test_trailing_garbage(good_file):
    good_file.write_bytes(good_file.read_bytes() + b"\0" * 8)
    with pytest.raises(CheckpointError, match=r"8 bytes after the last tensor"):
        DraftHead.load(good_file)


def test_corrupted_header_json(good_file):
    data, n, _ = header_of(good_file)
    good_file.write_bytes(data[:8] + b"{" + b"#" * (n - 1) + data[8 + n:])
    with pytest.raises(CheckpointError, match=r"corrupted header: not valid JSON"):
        DraftHead.load(good_file)


def test_header_sizes_inconsistent(good_file):
    data, n, _ = header_of(good_file)
    header = data[8:8 + n].replace(b'"F32"', b'"F64"', 1)  # same length, twice the bytes
    good_file.write_bytes(data[:8] + header + data[8 + n:])
    with pytest.raises(CheckpointError, match=r"corrupted header: tensor '.*' \(F64, shape"):
        DraftHead.load(good_file)


def test_header_size_larger_than_file(good_file):
    data = good_file.read_bytes()
    good_file.write_bytes(struct.pack("<Q", len(data)) + data[8:])
    with pytest.raises(CheckpointError, match=r"header size \d+ is larger than the rest"):
        DraftHead.load(good_file)


@pytest.mark.parametrize("contents", [b"", b"abc"])
def test_tiny_file(tmp_path, contents):
    path = tmp_path / "tiny.safetensors"
    path.write_bytes(contents)
    with pytest.raises(CheckpointError, match=r"truncated or not a safetensors file"):
        DraftHead.load(path)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"cannot read"):
        DraftHead.load(tmp_path / "nothing.safetensors")


def test_d2t_out_of_range(tmp_path):
    tensors = own_tensors(np.random.default_rng(17))
    tensors["d2t"] = np.full(VOCAB, 5, np.int64)  # last draft token -> 44 >= 44
    path = write_own(tmp_path / "h.safetensors", tensors, target_vocab_size=str(VOCAB + 4))
    with pytest.raises(ValueError, match=r"h\.safetensors: .*outside the target vocabulary"):
        DraftHead.load(path)


def test_d2t_not_one_to_one(tmp_path):
    tensors = own_tensors(np.random.default_rng(18))
    d2t = np.zeros(VOCAB, np.int64)
    d2t[1] = -1  # draft 0 and 1 -> target 0
    tensors["d2t"] = d2t
    path = write_own(tmp_path / "h.safetensors", tensors, target_vocab_size="100")
    with pytest.raises(ValueError, match=r"not one-to-one"):
        DraftHead.load(path)


def test_d2t_without_target_vocab_size(tmp_path):
    tensors = own_tensors(np.random.default_rng(18))
    tensors["d2t"] = np.zeros(VOCAB, np.int64)
    path = write_own(tmp_path / "h.safetensors", tensors)
    with pytest.raises(CheckpointError, match=r"metadata lacks 'target_vocab_size'"):
        DraftHead.load(path)


def test_wrong_format_version(tmp_path):
    path = write_own(tmp_path / "h.safetensors", own_tensors(np.random.default_rng(19)),
                     format_version="2")
    with pytest.raises(CheckpointError, match=r"unsupported format_version '2'"):
        DraftHead.load(path)


def test_not_our_format(tmp_path):
    path = tmp_path / "h.safetensors"
    save_file(own_tensors(np.random.default_rng(20)), path)
    with pytest.raises(CheckpointError, match=r"not an eagle_fast draft head .*no format"):
        DraftHead.load(path)


def test_non_finite_weights(tmp_path):
    tensors = own_tensors(np.random.default_rng(21))
    tensors["projection.weight"][0, 0] = np.nan
    path = write_own(tmp_path / "h.safetensors", tensors)
    with pytest.raises(ValueError, match=r"h\.safetensors: .*NaN"):
        DraftHead.load(path)


def test_medusa_file_given_to_draft_head_load(tmp_path):
    tensors, _ = medusa_tensors(medusa_floats(np.random.default_rng(22), 2), "F32")
    path = tmp_path / "medusa_lm_head.safetensors"
    write_raw(path, tensors)
    with pytest.raises(CheckpointError, match=r"Medusa checkpoint.*load_medusa"):
        DraftHead.load(path)


def test_own_file_given_to_load_medusa(good_file):
    with pytest.raises(CheckpointError, match=r"DraftHead\.load"):
        load_medusa(good_file)


@pytest.mark.parametrize("case,match", [
    ("missing", r"missing tensor.*'1\.0\.linear\.bias'"),
    ("extra", r"unexpected tensor.*'0\.1\.bias'"),
    ("shape", r"shape mismatch.*'1\.1\.weight'"),
    ("not square", r"shape mismatch.*'0\.0\.linear\.weight'"),
    ("dtype", r"unsupported dtype I32"),
    ("mixed", r"unsupported dtype F16 .*'2\.1\.weight'"),
    ("deeper", r"more than one residual block"),
    ("none", r"not a Medusa checkpoint"),
])
def test_bad_medusa_files(tmp_path, case, match):
    rng = np.random.default_rng(23)
    tensors, _ = medusa_tensors(medusa_floats(rng), "F32")
    if case == "missing":
        del tensors["1.0.linear.bias"]
    elif case == "extra":
        tensors["0.1.bias"] = ("F32", np.zeros(VOCAB, np.float32))
    elif case == "shape":
        tensors["1.1.weight"] = ("F32", np.zeros((VOCAB + 1, D_MODEL), np.float32))
    elif case == "not square":
        tensors["0.0.linear.weight"] = ("F32", np.zeros((D_MODEL, D_MODEL + 1), np.float32))
    elif case == "dtype":
        for name in list(tensors):
            if not name.endswith("bias"):
                tensors[name] = ("I32", tensors[name][1].astype(np.int32))
    elif case == "mixed":
        tensors["2.1.weight"] = ("F16", tensors["2.1.weight"][1].astype(np.float16))
    elif case == "deeper":
        tensors["0.1.linear.weight"] = tensors["0.0.linear.weight"]
    elif case == "none":
        tensors = {"weight": tensors["0.0.linear.weight"]}
    path = tmp_path / "medusa_lm_head.safetensors"
    write_raw(path, tensors)
    with pytest.raises(CheckpointError, match=match):
        load_medusa(path)


def test_truncated_medusa_bf16_file(tmp_path):
    tensors, _ = medusa_tensors(medusa_floats(np.random.default_rng(24)), "BF16")
    path = tmp_path / "medusa_lm_head.safetensors"
    write_raw(path, tensors)
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(CheckpointError, match=r"truncated"):
        load_medusa(path)


# -- CLI ----------------------------------------------------------------------------------------


@backend_independent
def test_cli_inspect_own_head(tmp_path, capsys):
    rng = np.random.default_rng(30)
    path = tmp_path / "head.safetensors"
    DraftHead(*random_head(rng, D_MODEL, D_PROJ, VOCAB), weight_dtype="int8").save(path)
    assert cli_main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "eagle_fast draft head (format_version 1)" in out
    assert f"d_model={D_MODEL}, d_proj={D_PROJ}, vocab_size={VOCAB}, int8" in out
    assert re.search(r"projection\.weight\s+I8\s+\[8, 16\]", out)
    assert "lm_head.weight_scale" in out

    assert cli_main(["inspect", "--json", str(path)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "eagle_fast.draft_head" and len(info["heads"]) == 1
    head = info["heads"][0]
    assert head["bytes"] == DraftHead.load(path).nbytes
    assert head["dtypes"]["lm_head.weight"] == "I8"
    assert info["tensors"]["lm_head.weight"] == {"dtype": "I8", "shape": [VOCAB, D_PROJ],
                                                 "bytes": VOCAB * D_PROJ}


@backend_independent
def test_cli_inspect_medusa_and_unknown(tmp_path, capsys):
    tensors, _ = medusa_tensors(medusa_floats(np.random.default_rng(31)), "BF16")
    path = tmp_path / "medusa_lm_head.safetensors"
    write_raw(path, tensors)
    assert cli_main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"Medusa checkpoint, 3 heads of d_model={D_MODEL}" in out and "bfloat16" in out
    assert "head 2:" in out and "2.1.weight" in out

    other = tmp_path / "other.safetensors"
    save_file({"a": np.zeros(3)}, other)
    assert cli_main(["inspect", str(other)]) == 0
    assert "unknown format" in capsys.readouterr().out


@backend_independent
def test_cli_inspect_bad_file(tmp_path, capsys):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", 1000) + b"{}")
    assert cli_main(["inspect", str(path)]) == 1
    err = capsys.readouterr().err
    assert "eagle-fast inspect: error:" in err and "bad.safetensors" in err
    assert "header size 1000" in err


@backend_independent
@pytest.mark.parametrize("kind", ["head", "medusa"])
def test_cli_demo_checkpoint(tmp_path, capsys, kind):
    rng = np.random.default_rng(32)
    path = tmp_path / f"{kind}.safetensors"
    if kind == "head":
        DraftHead(*random_head(rng, D_MODEL, D_PROJ, VOCAB), weight_dtype="bfloat16").save(path)
    else:
        write_raw(path, medusa_tensors(medusa_floats(rng), "F16")[0])
    args = ["demo", "--checkpoint", str(path), "--seconds", "0.01", "--top-k", "2",
            "--batch", "2"]
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    assert "hidden state 1" in out and "python" in out and " NO" not in out
    if kind == "medusa":
        assert "head 2 (t+4)" in out


@backend_independent
def test_cli_demo_checkpoint_rejects_preset(tmp_path, good_file):
    with pytest.raises(SystemExit):
        cli_main(["demo", "--checkpoint", str(good_file), "--preset", "tiny"])


# -- the safetensors format, read and written by eagle_fast ------------------------------------
#
# eagle_fast reads and writes the format itself; the real safetensors package is
# the reference: it must read what eagle_fast writes, and eagle_fast must read
# what it writes.

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from eagle_fast._safetensors import (  # noqa: E402
    MAX_TENSORS, MAX_VALUES, read_safetensors, write_safetensors,
)

_NUMPY_KINDS = ["bool", "uint8", "int8", "int16", "uint16", "float16", "int32", "uint32",
                "float32", "int64", "uint64", "float64"]


@st.composite
def tensor_dicts(draw):
    """{name: array} of mixed dtypes and shapes: scalars, empty and big-endian arrays."""
    names = draw(st.lists(st.text(st.characters(codec="utf-8"), min_size=1, max_size=12)
                          .filter(lambda n: n != "__metadata__"),
                          min_size=0, max_size=6, unique=True))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    tensors = {}
    for name in names:
        dtype = np.dtype(draw(st.sampled_from(_NUMPY_KINDS)))
        shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
        array = rng.integers(0, 256, size=int(np.prod(shape)) * dtype.itemsize, dtype=np.uint8)
        if dtype.kind == "b":
            array &= 1
        if dtype.kind == "f":  # finite bit patterns, for exact comparisons
            array = rng.standard_normal(int(np.prod(shape))).astype(dtype)
        array = array.view(dtype).reshape(shape)
        if draw(st.booleans()):
            array = array.astype(dtype.newbyteorder(">"))
        tensors[name] = array
    return tensors


metadata_dicts = st.dictionaries(st.text(max_size=8), st.text(max_size=12), max_size=4)


@backend_independent
@settings(max_examples=30)
@given(tensors=tensor_dicts(), metadata=metadata_dicts)
def test_written_files_are_read_by_the_safetensors_package(tmp_path_factory, tensors,
                                                           metadata):
    path = tmp_path_factory.mktemp("w") / "t.safetensors"
    write_safetensors(path, tensors, metadata)
    read = safetensors.numpy.load_file(str(path))
    assert read.keys() == tensors.keys()
    for name, array in tensors.items():
        assert read[name].dtype == array.dtype.newbyteorder("<") and \
            read[name].shape == array.shape
        np.testing.assert_array_equal(read[name], array)
    with safetensors.safe_open(str(path), framework="numpy") as f:
        assert (f.metadata() or {}) == metadata
    data, n, header = header_of(path)
    assert n % 8 == 0  # as the package pads it
    for name, entry in header.items():  # each tensor aligned to its item size
        if name != "__metadata__":
            assert (8 + n + entry["data_offsets"][0]) % tensors[name].dtype.itemsize == 0


@backend_independent
@settings(max_examples=30)
@given(tensors=tensor_dicts(), metadata=metadata_dicts, subset=st.integers(0, 2**16))
def test_reads_files_the_safetensors_package_writes(tmp_path_factory, tensors, metadata,
                                                    subset):
    path = tmp_path_factory.mktemp("r") / "t.safetensors"
    save_file({n: a.astype(a.dtype.newbyteorder("<")) for n, a in tensors.items()},
              str(path), metadata=metadata or None)
    read, read_metadata = read_safetensors(path)
    assert read_metadata == metadata and read.keys() == tensors.keys()
    for name, array in tensors.items():
        assert read[name].dtype == array.dtype.newbyteorder("=") and read[name].flags.writeable
        np.testing.assert_array_equal(read[name], array)
    names = [n for i, n in enumerate(sorted(tensors)) if subset >> i & 1]
    assert list(read_safetensors(path, names=names)[0]) == names


@backend_independent
def test_bf16_tensors_round_trip_through_the_safetensors_package(tmp_path):
    rng = np.random.default_rng(40)
    bits = bf16_bits(rng.standard_normal((3, 5)))
    ours = tmp_path / "ours.safetensors"
    write_safetensors(ours, {"w": bits, "b": np.ones(3, np.float32)}, dtypes={"w": "BF16"})
    theirs = dict(safetensors.deserialize(ours.read_bytes()))
    assert theirs["w"]["dtype"] in ("BF16", "bfloat16") and theirs["w"]["shape"] == [3, 5]
    assert bytes(theirs["w"]["data"]) == bits.astype("<u2").tobytes()
    package = tmp_path / "package.safetensors"
    write_raw(package, {"w": ("BF16", bits)})
    np.testing.assert_array_equal(read_safetensors(package)[0]["w"], bits)


@backend_independent
def test_read_of_a_missing_tensor_names_it(tmp_path):
    path = tmp_path / "t.safetensors"
    write_safetensors(path, {"a": np.zeros(2)})
    with pytest.raises(CheckpointError, match=r"t\.safetensors: no tensor named 'b'"):
        read_safetensors(path, names=["a", "b"])


# -- one load reads one file (issue 9, item 2) -------------------------------------------------


def _write_kind(path, kind, seed):
    rng = np.random.default_rng(seed)
    if kind.startswith("medusa"):
        write_raw(path, medusa_tensors(medusa_floats(rng, 2), kind.split("-")[1])[0])
    else:
        DraftHead(*random_head(rng, D_MODEL, D_PROJ, VOCAB),
                  weight_dtype=kind.split("-")[1]).save(path)


def _load_kind(path, kind):
    heads = load_medusa(path).heads if kind.startswith("medusa") else [DraftHead.load(path)]
    return [{k: v.tobytes() for k, v in head.stored_arrays().items()} for head in heads]


@backend_independent
@pytest.mark.parametrize("kind", ["head-bfloat16", "head-float32", "head-int8",
                                  "medusa-BF16", "medusa-F16", "medusa-F32"])
def test_a_file_replaced_during_a_load_is_read_whole(tmp_path, monkeypatch, kind):
    """Another process atomically replaces the file right after the load opens
    it: the load must read the file it opened, through that one handle."""

    path, other = tmp_path / "ckpt.safetensors", tmp_path / "other.safetensors"
    _write_kind(path, kind, seed=41)
    expected = _load_kind(path, kind)
    _write_kind(other, kind, seed=42)
    assert _load_kind(other, kind) != expected
    assert header_of(other)[2] == header_of(path)[2]  # same layout: a mix would go unseen

    opens = []
    real_open, real_os_open = builtins.open, os.open

    def opened(file):
        if isinstance(file, (str, os.PathLike)) and os.fspath(file) == str(path):
            opens.append(file)
            if len(opens) == 1:
                os.replace(other, path)

    def spy_open(file, *args, **kwargs):
        handle = real_open(file, *args, **kwargs)
        opened(file)
        return handle

    def spy_os_open(file, *args, **kwargs):
        fd = real_os_open(file, *args, **kwargs)
        opened(file)
        return fd

    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(os, "open", spy_os_open)
    got = _load_kind(path, kind)
    monkeypatch.undo()
    assert len(opens) == 1
    assert got == expected


@backend_independent
@pytest.mark.parametrize("kind", ["head-bfloat16", "medusa-BF16"])
def test_loads_while_another_thread_keeps_replacing_the_file(tmp_path, kind):
    """Every load sees one whole file, old or new, however the saves interleave."""

    path = tmp_path / "ckpt.safetensors"
    versions = []
    for seed in (52, 53):
        _write_kind(tmp_path / f"v{seed}.safetensors", kind, seed)
        versions.append((tmp_path / f"v{seed}.safetensors").read_bytes())
    path.write_bytes(versions[0])
    expected = []
    for data in versions:
        path.write_bytes(data)
        expected.append(_load_kind(path, kind))
    stop = threading.Event()

    def keep_replacing():
        i = 0
        while not stop.is_set():
            i += 1
            temporary = tmp_path / f"swap{i}.tmp"
            temporary.write_bytes(versions[i % 2])
            os.replace(temporary, path)

    swapper = threading.Thread(target=keep_replacing)
    swapper.start()
    try:
        for _ in range(40):
            assert _load_kind(path, kind) in expected
    finally:
        stop.set()
        swapper.join()


# -- saving (issue 9, items 3 and 5) -----------------------------------------------------------


def _small_heads(n):
    rng = np.random.default_rng(43)
    return [DraftHead(*random_head(rng, 4, 3, 5), weight_dtype="float16") for _ in range(n)]


@backend_independent
def test_threads_saving_to_one_path(tmp_path):

    heads = _small_heads(4)
    path = tmp_path / "head.safetensors"
    barrier = threading.Barrier(len(heads))
    errors = []

    def save_many(head):
        barrier.wait()
        for _ in range(8):
            try:
                head.save(path)
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

    threads = [threading.Thread(target=save_many, args=(h,)) for h in heads]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert [p.name for p in tmp_path.iterdir()] == ["head.safetensors"]
    saved = DraftHead.load(path).stored_arrays()["lm_head.weight"].tobytes()
    assert saved in [h.stored_arrays()["lm_head.weight"].tobytes() for h in heads]


@backend_independent
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002, 0o027, 0o000])
def test_a_new_file_gets_the_mode_open_gives(tmp_path, umask):

    head = _small_heads(1)[0]
    previous = os.umask(umask)
    try:
        with open(tmp_path / "reference", "wb"):
            pass
        head.save(tmp_path / "head.safetensors")
    finally:
        os.umask(previous)
    mode = stat.S_IMODE(os.stat(tmp_path / "head.safetensors").st_mode)
    assert mode == stat.S_IMODE(os.stat(tmp_path / "reference").st_mode) == 0o666 & ~umask


@backend_independent
@pytest.mark.parametrize("mode", [0o644, 0o600, 0o640, 0o604, 0o444, 0o755, 0o4755])
def test_saving_keeps_the_mode_of_the_file_it_replaces(tmp_path, mode):

    path = tmp_path / "head.safetensors"
    path.write_bytes(b"old")
    os.chmod(path, mode)
    previous = os.umask(0o077)
    try:
        _small_heads(1)[0].save(path)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.stat(path).st_mode) == mode & 0o777  # never setuid
    assert DraftHead.load(path).d_model == 4


@backend_independent
def test_saving_keeps_the_owner_where_allowed(tmp_path):
    path = tmp_path / "head.safetensors"
    path.write_bytes(b"old")
    if os.geteuid() == 0:
        os.chown(path, 12345, 23456)
    before = os.stat(path)
    _small_heads(1)[0].save(path)
    after = os.stat(path)
    assert (after.st_uid, after.st_gid) == (before.st_uid, before.st_gid)


@backend_independent
@pytest.mark.parametrize("layout", ["absolute", "relative", "chain", "dangling"])
def test_saving_through_a_symlink_writes_its_target(tmp_path, layout):

    (tmp_path / "models").mkdir()
    (tmp_path / "links").mkdir()
    target = tmp_path / "models" / "head.safetensors"
    if layout != "dangling":
        target.write_bytes(b"old")
    link = tmp_path / "links" / "current.safetensors"
    if layout == "relative":
        link.symlink_to(os.path.join("..", "models", "head.safetensors"))
    elif layout == "chain":
        middle = tmp_path / "links" / "middle.safetensors"
        middle.symlink_to(target)
        link.symlink_to(middle)
    else:
        link.symlink_to(target)
    head = _small_heads(1)[0]
    head.save(link)
    assert link.is_symlink() and target.is_file() and not target.is_symlink()
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["head.safetensors"]
    assert DraftHead.load(target).stored_arrays()["lm_head.weight"].tobytes() == \
        head.stored_arrays()["lm_head.weight"].tobytes()


@backend_independent
@pytest.mark.parametrize("case", ["missing folder", "folder is a file", "path is a folder",
                                  "path is a pipe", "link to a folder", "read-only folder"])
def test_save_errors_are_os_errors_naming_the_path(tmp_path, case):

    if case == "missing folder":
        path, code = tmp_path / "nowhere" / "head.safetensors", errno.ENOENT
    elif case == "folder is a file":
        (tmp_path / "file").write_bytes(b"")
        path, code = tmp_path / "file" / "head.safetensors", errno.ENOTDIR
    elif case == "path is a folder":
        path, code = tmp_path / "head.safetensors", errno.EISDIR
        path.mkdir()
        (path / "keep").write_bytes(b"")
    elif case == "path is a pipe":
        path, code = tmp_path / "head.safetensors", errno.EEXIST
        os.mkfifo(path)
    elif case == "link to a folder":
        (tmp_path / "folder").mkdir()
        path, code = tmp_path / "head.safetensors", errno.EISDIR
        path.symlink_to(tmp_path / "folder")
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o500)
        path, code = folder / "head.safetensors", errno.EACCES
    with pytest.raises(OSError) as info:
        _small_heads(1)[0].save(path)
    assert info.value.errno == code and info.value.filename == str(path)
    assert str(path) in str(info.value)
    assert type(info.value).__module__ == "builtins"  # not safetensors' own error type
    leftovers = [p.name for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []
    if case in ("path is a pipe", "link to a folder"):
        assert os.path.lexists(path) and not os.path.isfile(path)


# -- hostile headers (issue 9, item 4) ---------------------------------------------------------


def write_header(path, header, data=b""):
    """A file of raw header bytes (or a JSON-encoded object) and data."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def _nested(kind, depth):
    opening, closing = {"array": ("[", "]"), "object": ('{"a":', "}")}[kind]
    return opening * depth + "0" + closing * depth


@backend_independent
@pytest.mark.parametrize("depth", [17, 100, 3_000, 100_000])
@pytest.mark.parametrize("where", ["top", "shape", "metadata", "extra field"])
@pytest.mark.parametrize("kind", ["array", "object"])
def test_deeply_nested_headers(tmp_path, depth, where, kind):
    nested = _nested(kind, depth)
    if where == "top":
        text = '{"x":' + nested + "}"
    elif where == "shape":
        text = '{"x":{"dtype":"F32","shape":' + nested + ',"data_offsets":[0,0]}}'
    elif where == "metadata":
        text = '{"__metadata__":{"a":' + nested + "}}"
    else:
        text = '{"x":{"dtype":"F32","shape":[0],"data_offsets":[0,0],"extra":' + nested + "}}"
    path = write_header(tmp_path / "deep.safetensors", text.encode())
    for load in (DraftHead.load, load_medusa, read_safetensors):
        with pytest.raises(CheckpointError, match=r"deep\.safetensors: corrupted header: "
                                                  r"JSON nested more than 16 levels"):
            load(path)


@backend_independent
def test_brackets_and_quotes_inside_strings_are_not_nesting(tmp_path):
    rng = np.random.default_rng(44)
    tricky = '[' * 5000 + '\\"{{' + '"' + '\\' + ']' * 3
    path = tmp_path / "h.safetensors"
    save_file(own_tensors(rng), path, metadata=own_metadata(note=tricky, **{"[{[": "}]"}))
    assert DraftHead.load(path).vocab_size == VOCAB
    assert read_safetensors(path)[1]["note"] == tricky


@backend_independent
@pytest.mark.parametrize("header,match", [
    ('{"x":{"dtype":"F32","shape":[1' + "0" * 5000 + '],"data_offsets":[0,4]}}',
     r"integer of 5001 digits"),
    ('{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4' + "0" * 30 + ']}}',
     r"integer of 31 digits"),
    ('{"x":{"dtype":"F32","shape":[-' + "9" * 4400 + '],"data_offsets":[0,4]}}',
     r"integer of 4400 digits"),
    ('{"x":{"dtype":"F32","shape":[NaN],"data_offsets":[0,4]}}', r"NaN is not allowed"),
    ('{"x":{"dtype":"F32","shape":[Infinity],"data_offsets":[0,4]}}', r"Infinity"),
    ('{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
     '"x":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', r"duplicate key 'x'"),
    ('{"x":{"dtype":"F32","shape":[1],"dtype":"F64","data_offsets":[0,4]}}',
     r"duplicate key 'dtype'"),
    ('{"x":{"dtype":"F32","shape":[' + ",".join(["1"] * 40) + '],"data_offsets":[0,4]}}',
     r"40 dimensions"),
    ('{"x":{"dtype":"F32","shape":[0,4611686018427387904,4],"data_offsets":[0,0]}}',
     r"impossible shape"),
    ('{"__metadata__":["a"]}', r"__metadata__ must map strings to strings"),
    ('{"__metadata__":{"a":1}}', r"__metadata__ must map strings to strings"),
    ('[]', r"not an object"),
    ('{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}', r"not valid JSON"),
    (b'{"x":"\xff"}', r"not valid JSON"),
])
def test_hostile_but_parsable_headers(tmp_path, header, match):
    raw = header if isinstance(header, bytes) else header.encode()
    path = write_header(tmp_path / "bad.safetensors", raw, data=b"\0" * 8)
    for load in (DraftHead.load, load_medusa, read_safetensors,
                 eagle_fast._checkpoint.inspect_checkpoint):
        with pytest.raises(CheckpointError, match=r"bad\.safetensors: .*" + match):
            load(path)


@backend_independent
@pytest.mark.parametrize("count", [MAX_TENSORS + 1, 3 * MAX_TENSORS])
def test_too_many_tensors(tmp_path, monkeypatch, count):
    entries = ",".join(f'"t{i}":{{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}'
                       for i in range(count))
    path = write_header(tmp_path / "many.safetensors",
                        ('{"__metadata__":{},' + entries + "}").encode())
    if count > MAX_TENSORS + 1:  # refused before the JSON is parsed

        monkeypatch.setattr(json, "loads", lambda *a, **k: pytest.fail("parsed"))
    for load in (DraftHead.load, load_medusa, read_safetensors):
        with pytest.raises(CheckpointError, match=r"many\.safetensors: .*more than "
                                                  rf"{MAX_TENSORS} tensors"):
            load(path)


@backend_independent
@pytest.mark.parametrize("kind", ["long shape", "many metadata entries", "long metadata list"])
def test_too_many_json_values_fail_before_parsing(tmp_path, monkeypatch, kind):
    n = MAX_VALUES + 10
    if kind == "long shape":
        text = '{"x":{"dtype":"F32","shape":[' + "0," * n + '0],"data_offsets":[0,0]}}'
    elif kind == "many metadata entries":
        text = '{"__metadata__":{' + ",".join(f'"{i}":""' for i in range(n // 3)) + "}}"
    else:
        text = '{"__metadata__":{"a":[' + '"",' * (n // 2) + '""]}}'
    path = write_header(tmp_path / "values.safetensors", text.encode())

    monkeypatch.setattr(json, "loads", lambda *a, **k: pytest.fail("parsed"))
    for load in (DraftHead.load, load_medusa, read_safetensors):
        with pytest.raises(CheckpointError, match=r"values\.safetensors: corrupted header: "
                                                  rf"more than {MAX_VALUES} JSON values"):
            load(path)


def _zero_medusa_header(n_heads, d_model=0, vocab=0):
    header = {}
    for i in range(n_heads):
        for suffix, shape in (("0.linear.weight", [d_model, d_model]),
                              ("0.linear.bias", [d_model]), ("1.weight", [vocab, d_model])):
            header[f"{i}.{suffix}"] = {"dtype": "F32", "shape": shape, "data_offsets": [0, 0]}
    return header


@backend_independent
@pytest.mark.parametrize("n_heads,d_model,vocab,match", [
    (257, 0, 0, r"names 257 Medusa heads; at most 256"),
    (1000, 0, 0, r"names 1000 Medusa heads; at most 256"),
    (3, 0, 0, r"head 0 has d_model=0"),
    (3, 0, 5, r"head 0 has d_model=0"),
    (2, 4, 0, r"head 0 has vocab_size=0"),
])
def test_medusa_headers_declaring_absurd_heads(tmp_path, n_heads, d_model, vocab, match):
    header = _zero_medusa_header(n_heads, d_model, vocab)
    if d_model:  # non-empty heads need their data: declare it, but keep vocab 0
        offset = 0
        for entry in header.values():
            size = 4 * int(np.prod(entry["shape"]))
            entry["data_offsets"] = [offset, offset + size]
            offset += size
        data = b"\0" * offset
    else:
        data = b""
    path = write_header(tmp_path / "medusa.safetensors", header, data)
    with pytest.raises(CheckpointError, match=r"medusa\.safetensors: .*" + match):
        load_medusa(path)
    with pytest.raises(CheckpointError, match=r"medusa\.safetensors: "):
        eagle_fast._checkpoint.inspect_checkpoint(path)


@backend_independent
def test_medusa_head_index_of_thousands_of_digits(tmp_path):
    tensors, _ = medusa_tensors(medusa_floats(np.random.default_rng(45), 1), "F32")
    tensors["9" * 5000 + ".1.weight"] = tensors["0.1.weight"]
    path = tmp_path / "medusa.safetensors"
    write_raw(path, tensors)
    with pytest.raises(CheckpointError, match=r"medusa\.safetensors: unexpected tensor"):
        load_medusa(path)


@backend_independent
@pytest.mark.parametrize("case", ["long name", "long dtype", "many extra tensors",
                                  "long format", "long weight_dtype", "long medusa name"])
def test_error_messages_stay_short(tmp_path, case):
    long = "n" * 1_000_000
    path = tmp_path / "h.safetensors"
    load = DraftHead.load
    if case == "long name":
        write_header(path, {long: {"dtype": "X", "shape": [0], "data_offsets": [0, 0]}})
    elif case == "long dtype":
        write_header(path, {"x": {"dtype": long, "shape": [0], "data_offsets": [0, 0]}})
    elif case == "many extra tensors":
        tensors = own_tensors(np.random.default_rng(54))
        tensors.update({f"extra.{i}": np.zeros(0, np.float32) for i in range(5000)})
        write_own(path, tensors)
    elif case == "long medusa name":
        tensors, _ = medusa_tensors(medusa_floats(np.random.default_rng(55), 1), "F32")
        tensors["0." + "1" * 100_000 + ".linear.weight"] = tensors["0.0.linear.weight"]
        write_raw(path, tensors)
        load = load_medusa
    else:
        field = case.split()[1]
        write_own(path, own_tensors(np.random.default_rng(54)), **{field: long})
    with pytest.raises(CheckpointError) as info:
        load(path)
    assert str(info.value).startswith(str(path)) and len(str(info.value)) < 1000


@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory):
    """The bytes of small valid checkpoints: our format in every weight dtype
    (with d2t), and a Medusa file."""
    folder = tmp_path_factory.mktemp("valid")
    rng = np.random.default_rng(56)
    files = {}
    for weight_dtype in WEIGHT_DTYPES:
        DraftHead(*random_head(rng, 6, 8, 10), weight_dtype=weight_dtype,
                  d2t=np.arange(10) * 2, target_vocab_size=30).save(folder / "h")
        files[weight_dtype] = (folder / "h").read_bytes()
    write_raw(folder / "m", medusa_tensors(medusa_floats(rng, 2, d_model=6, vocab=9), "F16")[0])
    files["medusa"] = (folder / "m").read_bytes()
    return files


@backend_independent
@pytest.mark.filterwarnings("error")
@settings(max_examples=80)
@given(data=st.data())
def test_mutated_checkpoints_load_or_raise_checkpoint_error(tmp_path_factory, checkpoint_bytes,
                                                            data):
    kind = data.draw(st.sampled_from(sorted(checkpoint_bytes)))
    raw = bytearray(checkpoint_bytes[kind])
    (n,) = struct.unpack("<Q", raw[:8])
    how = data.draw(st.sampled_from(["byte", "header char", "truncate", "insert"]))
    if how == "byte":
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    elif how == "header char":
        raw[8 + data.draw(st.integers(0, n - 1))] = data.draw(st.sampled_from(b'{}[]",:09-e. '))
    elif how == "truncate":
        raw = raw[:data.draw(st.integers(0, len(raw) - 1))]
    else:
        at = data.draw(st.integers(0, len(raw)))
        raw[at:at] = data.draw(st.binary(min_size=1, max_size=16))
    path = tmp_path_factory.mktemp("mutated") / "x.safetensors"
    path.write_bytes(bytes(raw))
    for load in (DraftHead.load, load_medusa, lambda p: load_medusa(p, weight_dtype="int8"),
                 eagle_fast._checkpoint.inspect_checkpoint, read_safetensors):
        try:
            load(path)
        except CheckpointError as exc:
            assert str(exc).startswith(str(path))


BAD_INTEGERS = ["9" * 5000, "9" * 19, "99999999999", "-3", "0", "1.5", "1e3", "", " 16",
                "16 ", "0x10", "١٦", "+16", "16\n"]


@backend_independent
@pytest.mark.parametrize("name", ["d_model", "d_proj", "vocab_size", "target_vocab_size"])
@pytest.mark.parametrize("text", BAD_INTEGERS, ids=[repr(t[:12]) for t in BAD_INTEGERS])
def test_metadata_integers_that_are_not_sane(tmp_path, name, text):
    tensors = own_tensors(np.random.default_rng(46))
    tensors["d2t"] = np.zeros(VOCAB, np.int64)
    path = write_own(tmp_path / "h.safetensors", tensors,
                     **{"target_vocab_size": str(VOCAB), name: text})
    with pytest.raises(CheckpointError,
                       match=rf"h\.safetensors: metadata {name} must be an integer"):
        DraftHead.load(path)


@pytest.mark.parametrize("value", [float(VOCAB + 5), 1.5, "100", b"100", [100], 100j,
                                   np.float64(100.0)])
def test_target_vocab_size_of_the_wrong_type(value):
    W, b, L = random_head(np.random.default_rng(47), D_MODEL, D_PROJ, VOCAB)
    with pytest.raises(TypeError, match=r"target_vocab_size must be an integer, got"):
        DraftHead(W, b, L, d2t=np.zeros(VOCAB, np.int64), target_vocab_size=value)


@pytest.mark.parametrize("value", [2**31, 10**30, 2**64 - 1, VOCAB - 1, -1])
def test_target_vocab_size_out_of_range(value):
    W, b, L = random_head(np.random.default_rng(48), D_MODEL, D_PROJ, VOCAB)
    with pytest.raises(ValueError, match=r"target_vocab_size=-?\d+ is (smaller|larger)"):
        DraftHead(W, b, L, d2t=np.zeros(VOCAB, np.int64), target_vocab_size=value)


def test_target_vocab_size_accepts_numpy_integers():
    W, b, L = random_head(np.random.default_rng(48), D_MODEL, D_PROJ, VOCAB)
    for value in (np.int64(VOCAB * 2), np.uint32(VOCAB * 2), VOCAB * 2):
        head = DraftHead(W, b, L, d2t=np.zeros(VOCAB, np.int64), target_vocab_size=value)
        assert head.target_vocab_size == VOCAB * 2 and type(head.target_vocab_size) is int


@pytest.mark.parametrize("dtype,index,offset", [
    ("uint64", 0, 2**64 - 1), ("uint64", 3, 2**63), ("uint64", 7, 2**63 - 5),
    ("int64", 1, 2**63 - 1), ("int64", 2, -2**63), ("int64", 5, 2**62 + 1),
])
@pytest.mark.parametrize("target_vocab_size", [None, 1000])
def test_64_bit_d2t_offsets_do_not_wrap(dtype, index, offset, target_vocab_size):
    W, b, L = random_head(np.random.default_rng(49), D_MODEL, D_PROJ, VOCAB)
    d2t = np.zeros(VOCAB, dtype=dtype)
    d2t[index] = offset
    with pytest.raises(ValueError, match=rf"draft token {index} to target id "
                                         rf"{index + offset}, outside"):
        DraftHead(W, b, L, d2t=d2t, target_vocab_size=target_vocab_size)


def test_d2t_beyond_the_largest_vocabulary():
    W, b, L = random_head(np.random.default_rng(50), D_MODEL, D_PROJ, VOCAB)
    d2t = np.zeros(VOCAB, np.int64)
    d2t[-1] = 2**40
    with pytest.raises(ValueError, match=rf"draft token {VOCAB - 1} to target id "
                                         rf"{VOCAB - 1 + 2**40}, outside"):
        DraftHead(W, b, L, d2t=d2t)
    d2t[-1] = 2**20  # in range: the default target vocabulary is one past the largest id
    assert DraftHead(W, b, L, d2t=d2t).target_vocab_size == VOCAB + 2**20


# -- loading: one clean error (issue 9, item 5) ------------------------------------------------


def _medusa_file_with(path, file_dtype, where, value):
    """A 2-head Medusa file (matrices ``file_dtype``, F64 bias) whose head 1
    holds ``value`` in its tensor ``where``."""
    tensors = {}
    for i, (W, b, L) in enumerate(medusa_floats(np.random.default_rng(51), 2)):
        for suffix, array in zip(("0.linear.weight", "0.linear.bias", "1.weight"), (W, b, L)):
            dtype = "F64" if suffix == "0.linear.bias" else file_dtype
            array = array.astype({"F64": np.float64, "F32": np.float32}[dtype])
            if i == 1 and suffix == where:
                array.flat[3] = value
            tensors[f"{i}.{suffix}"] = (dtype, array)
    write_raw(path, tensors)
    return path


@backend_independent
@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("value", [1e300, -1e39])
@pytest.mark.parametrize("file_dtype,where,weight_dtype", [
    *[("F64", where, weight_dtype)
      for where in ("0.linear.weight", "0.linear.bias", "1.weight")
      for weight_dtype in ("int8", "float32", "float16", "bfloat16")],
    *[("F32", "0.linear.bias", weight_dtype)
      for weight_dtype in (None, "int8", "float32", "float16", "bfloat16")],
])
def test_medusa_values_beyond_the_target_dtype_are_one_checkpoint_error(
        tmp_path, value, file_dtype, where, weight_dtype):
    """Values beyond float32 cannot be stored in any float32-computing head:
    one CheckpointError naming the file and head, no overflow warning."""
    path = _medusa_file_with(tmp_path / "medusa.safetensors", file_dtype, where, value)
    with pytest.raises(CheckpointError, match=r"medusa\.safetensors: head 1: .*too large"):
        load_medusa(path, weight_dtype=weight_dtype)
    # the twin that fits: float64 heads, or the value within range
    if file_dtype == "F64":
        assert load_medusa(path).dtype == np.float64
    ok = _medusa_file_with(tmp_path / "ok.safetensors", file_dtype, where, np.sign(value) * 2)
    assert load_medusa(ok, weight_dtype=weight_dtype or "float32").num_heads == 2
