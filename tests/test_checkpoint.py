"""Checkpoints: DraftHead.save/load, load_medusa, bad files, ``eagle-fast inspect``.

Files are written with the real ``safetensors`` package -- BF16 tensors from
raw bit patterns, the way the format stores them -- and predictions are
checked against an independent float64 NumPy computation of the formula on
the weights as decoded here.
"""

from __future__ import annotations

import json
import re
import struct
import sys

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


def test_missing_safetensors_is_a_clear_import_error(tmp_path, monkeypatch):
    head = DraftHead(*random_head(np.random.default_rng(8), D_MODEL, D_PROJ, VOCAB))
    monkeypatch.setitem(sys.modules, "safetensors", None)
    with pytest.raises(ImportError, match=r'pip install "eagle-fast\[safetensors\]"'):
        head.save(tmp_path / "head.safetensors")


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
    good_file.write_bytes(data[:8] + b"{" * n + data[8 + n:])
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
