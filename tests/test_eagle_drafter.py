"""EagleDrafter (EAGLE-1/2 and EAGLE-3) against the independent float64
reference in eagle_reference.py: outputs, log-probs, trees, KV-cache reuse,
checkpoints in the published key layouts, and clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

import eagle_fast
from eagle_fast import CheckpointError, EagleDrafter
from eagle_reference import Reference

safetensors = pytest.importorskip("safetensors")

D, HEADS, KV, INTER, VOCAB = 16, 4, 2, 24, 40
HD = D // HEADS
D_TARGET, DRAFT_VOCAB = 12, 30


def eagle1_weights(rng, layers=1, bias=True, qkv_bias=False, scale=0.3):
    w = {"fc.weight": rng.normal(0, scale, (D, 2 * D))}
    if bias:
        w["fc.bias"] = rng.normal(0, 0.1, D)
    for i in range(layers):
        p = f"layers.{i}."
        w[p + "self_attn.q_proj.weight"] = rng.normal(0, scale, (HEADS * HD, D))
        w[p + "self_attn.k_proj.weight"] = rng.normal(0, scale, (KV * HD, D))
        w[p + "self_attn.v_proj.weight"] = rng.normal(0, scale, (KV * HD, D))
        if qkv_bias:
            w[p + "self_attn.q_proj.bias"] = rng.normal(0, 0.1, HEADS * HD)
            w[p + "self_attn.k_proj.bias"] = rng.normal(0, 0.1, KV * HD)
            w[p + "self_attn.v_proj.bias"] = rng.normal(0, 0.1, KV * HD)
        w[p + "self_attn.o_proj.weight"] = rng.normal(0, scale, (D, HEADS * HD))
        w[p + "mlp.gate_proj.weight"] = rng.normal(0, scale, (INTER, D))
        w[p + "mlp.up_proj.weight"] = rng.normal(0, scale, (INTER, D))
        w[p + "mlp.down_proj.weight"] = rng.normal(0, scale, (D, INTER))
        w[p + "post_attention_layernorm.weight"] = 1 + rng.normal(0, 0.1, D)
        if i > 0:
            w[p + "input_layernorm.weight"] = 1 + rng.normal(0, 0.1, D)
    w["embed_tokens.weight"] = rng.normal(0, 1.0, (VOCAB, D))
    return w


def eagle1_config(layers=1, bias=True, qkv_bias=False, theta=10000.0, scaling=None):
    c = {"architectures": ["LlamaForCausalLM"], "hidden_size": D, "intermediate_size": INTER,
         "num_attention_heads": HEADS, "num_key_value_heads": KV, "num_hidden_layers": layers,
         "vocab_size": VOCAB, "rms_norm_eps": 1e-6, "rope_theta": theta, "hidden_act": "silu",
         "max_position_embeddings": 2048, "bias": bias}
    if qkv_bias:
        c["qkv_bias"] = True
    if scaling is not None:
        c["rope_scaling"] = {"type": "linear", "factor": scaling}
    return c


def eagle3_weights(rng, scale=0.3, draft_vocab=DRAFT_VOCAB):
    w = {"fc.weight": rng.normal(0, scale, (D, 3 * D_TARGET))}
    p = "midlayer."
    w[p + "self_attn.q_proj.weight"] = rng.normal(0, scale, (HEADS * HD, 2 * D))
    w[p + "self_attn.k_proj.weight"] = rng.normal(0, scale, (KV * HD, 2 * D))
    w[p + "self_attn.v_proj.weight"] = rng.normal(0, scale, (KV * HD, 2 * D))
    w[p + "self_attn.o_proj.weight"] = rng.normal(0, scale, (D, HEADS * HD))
    w[p + "mlp.gate_proj.weight"] = rng.normal(0, scale, (INTER, D))
    w[p + "mlp.up_proj.weight"] = rng.normal(0, scale, (INTER, D))
    w[p + "mlp.down_proj.weight"] = rng.normal(0, scale, (D, INTER))
    w[p + "post_attention_layernorm.weight"] = 1 + rng.normal(0, 0.1, D)
    w[p + "input_layernorm.weight"] = 1 + rng.normal(0, 0.1, D)
    w[p + "hidden_norm.weight"] = 1 + rng.normal(0, 0.1, D)
    w["norm.weight"] = 1 + rng.normal(0, 0.1, D)
    w["lm_head.weight"] = rng.normal(0, 1.0, (draft_vocab, D))
    targets = np.sort(rng.choice(VOCAB, draft_vocab, replace=False))
    w["d2t"] = (targets - np.arange(draft_vocab)).astype(np.int64)
    t2d = np.zeros(VOCAB, dtype=bool)
    t2d[targets] = True
    w["t2d"] = t2d
    w["embed_tokens.weight"] = rng.normal(0, 1.0, (VOCAB, D))
    return w


def eagle3_config(draft_vocab=DRAFT_VOCAB):
    return {"architectures": ["LlamaForCausalLMEagle3"], "hidden_size": D,
            "intermediate_size": INTER, "num_attention_heads": HEADS,
            "num_key_value_heads": KV, "num_hidden_layers": 1, "vocab_size": VOCAB,
            "draft_vocab_size": draft_vocab, "target_hidden_size": D_TARGET,
            "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "hidden_act": "silu",
            "max_position_embeddings": 2048}


def reference_for(weights, config, lm_head=None):
    kind = "eagle3" if "draft_vocab_size" in config else "eagle"
    scaling = config.get("rope_scaling") or config.get("rope_parameters") or {}
    kind_name = scaling.get("type", scaling.get("rope_type"))
    llama3 = None
    if kind_name == "llama3":
        llama3 = (scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"],
                  scaling["original_max_position_embeddings"])
    cfg = {"kind": kind, "d": D, "heads": HEADS, "kv_heads": KV, "hd": HD,
           "layers": config["num_hidden_layers"], "eps": config["rms_norm_eps"],
           "theta": config.get("rope_theta", scaling.get("rope_theta")),
           "factor": scaling.get("factor", 1.0) if kind_name == "linear" else 1.0,
           "llama3": llama3}
    w = {k: v for k, v in weights.items() if k != "embed_tokens.weight"}
    w["embed"] = weights["embed_tokens.weight"]
    if lm_head is not None:
        w["lm_head"] = lm_head
    return Reference(cfg, w)


def sequence(rng, n_tokens, width):
    ids = rng.integers(0, VOCAB, n_tokens)
    hidden = rng.normal(0, 1.0, (n_tokens - 1, width))
    return hidden, ids


# -- the forward pass against the reference --------------------------------------------


@pytest.mark.parametrize("layers,bias,qkv_bias,scaling", [
    (1, True, False, None), (2, False, True, 2.0), (1, True, False, 4.0)])
def test_eagle1_logprobs_match_reference(layers, bias, qkv_bias, scaling):
    rng = np.random.default_rng(1)
    w = eagle1_weights(rng, layers, bias, qkv_bias)
    lm = rng.normal(0, 1.0, (VOCAB, D))
    config = eagle1_config(layers, bias, qkv_bias, scaling=scaling)
    drafter = EagleDrafter.from_state_dict(w, config, lm_head=lm, dtype=np.float64)
    assert drafter.kind == "eagle"
    ref = reference_for(w, config, lm)
    hidden, ids = sequence(rng, 9, D)
    out, lp = drafter.step_logprobs(hidden, ids)
    ref_out = ref.outputs(list(hidden), list(ids[1:]))
    np.testing.assert_allclose(out, ref_out[-1], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(lp, ref.logprobs(ref_out[-1]), rtol=1e-10, atol=1e-10)


def test_eagle3_logprobs_match_reference():
    rng = np.random.default_rng(2)
    w = eagle3_weights(rng)
    config = eagle3_config()
    drafter = EagleDrafter.from_state_dict(w, config, dtype=np.float64)
    assert drafter.kind == "eagle3" and drafter.input_size == 3 * D_TARGET
    ref = reference_for(w, config)
    hidden, ids = sequence(rng, 8, 3 * D_TARGET)
    out, lp = drafter.step_logprobs(hidden, ids)
    ref_out = ref.outputs(list(hidden), list(ids[1:]))
    np.testing.assert_allclose(out, ref_out[-1], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(lp, ref.logprobs(ref_out[-1]), rtol=1e-10, atol=1e-10)
    assert lp.shape == (DRAFT_VOCAB,)


# Two llama3 settings for the 2 rotation pairs of HD = 4 (wavelengths 2 pi and
# 2 pi * 100 at theta 1e4): pair 1 in the interpolated band, then in the divided one.
LLAMA3_SETTINGS = [
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 2048},
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 100},
]


@pytest.mark.parametrize("kind", ["eagle", "eagle3"])
@pytest.mark.parametrize("setting", range(len(LLAMA3_SETTINGS)))
def test_llama3_rope_matches_reference(kind, setting):
    rng = np.random.default_rng(40 + setting)
    if kind == "eagle":
        w, config, width = eagle1_weights(rng, 1), eagle1_config(1), D
        lm = rng.normal(0, 1.0, (VOCAB, D))
    else:
        w, config, width, lm = eagle3_weights(rng), eagle3_config(), 3 * D_TARGET, None
    config["rope_theta"] = 10000.0
    config["rope_scaling"] = dict(LLAMA3_SETTINGS[setting])
    drafter = EagleDrafter.from_state_dict(w, config, lm_head=lm, dtype=np.float64)
    hidden, ids = sequence(rng, 12, width)
    out, lp = drafter.step_logprobs(hidden, ids)
    ref_out = reference_for(w, config, lm).outputs(list(hidden), list(ids[1:]))
    np.testing.assert_allclose(out, ref_out[-1], rtol=1e-10, atol=1e-10)
    # the scaling matters at these positions: plain RoPE is far off
    plain = reference_for(w, dict(config, rope_scaling=None), lm).outputs(
        list(hidden), list(ids[1:]))
    assert np.abs(plain[-1] - ref_out[-1]).max() > 1e-4
    # transformers >= 5 writes the same as one rope_parameters object
    modern = {k: v for k, v in config.items() if k not in ("rope_theta", "rope_scaling")}
    modern["rope_parameters"] = dict(config["rope_scaling"], rope_theta=10000.0)
    again = EagleDrafter.from_state_dict(w, modern, lm_head=lm, dtype=np.float64)
    np.testing.assert_array_equal(again.step_logprobs(hidden, ids)[1], lp)


def test_rope_parameters_carry_the_base():
    rng = np.random.default_rng(44)
    w, lm = eagle1_weights(rng, 1), rng.normal(0, 1.0, (VOCAB, D))
    old = eagle1_config(1, theta=500.0, scaling=2.0)
    modern = {k: v for k, v in old.items() if k not in ("rope_theta", "rope_scaling")}
    modern["rope_parameters"] = {"rope_type": "linear", "factor": 2.0, "rope_theta": 500.0}
    hidden, ids = sequence(rng, 7, D)
    a = EagleDrafter.from_state_dict(w, old, lm_head=lm, dtype=np.float64)
    b = EagleDrafter.from_state_dict(w, modern, lm_head=lm, dtype=np.float64)
    np.testing.assert_array_equal(a.step_logprobs(hidden, ids)[1], b.step_logprobs(hidden, ids)[1])


@pytest.mark.parametrize("rope,match", [
    ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, "dynamic.*not supported"),
    ({"rope_parameters": {"rope_type": "yarn", "factor": 2.0}}, "yarn.*not supported"),
    ({"rope_scaling": dict(LLAMA3_SETTINGS[0], low_freq_factor=None)}, "low_freq_factor"),
    ({"rope_scaling": dict(LLAMA3_SETTINGS[0], high_freq_factor=1.0)}, "must exceed"),
    ({"rope_scaling": {"type": "linear"}}, "factor"),
    ({"rope_scaling": {"type": "linear", "factor": -1}}, "factor"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 5.0}}, "differs"),
    ({"rope_parameters": [1, 2]}, "object"),
    ({"rope_scaling": {"type": "linear", "factor": 2.0},
      "rope_parameters": {"rope_type": "linear", "factor": 3.0}}, "both"),
])
def test_bad_rope_configs(rope, match):
    rng = np.random.default_rng(45)
    config = dict(eagle1_config(1), **rope)
    with pytest.raises(ValueError, match=match):
        EagleDrafter.from_state_dict(eagle1_weights(rng, 1), config,
                                     lm_head=np.zeros((VOCAB, D)))


def test_reference_is_sensitive_to_the_details():
    """The reference (and so the tests) tell the skipped layer-0 norm, the
    fc, the cat order and RoPE apart: breaking one changes the output."""
    rng = np.random.default_rng(3)
    w = eagle3_weights(rng)
    config = eagle3_config()
    hidden, ids = sequence(rng, 6, 3 * D_TARGET)
    base = reference_for(w, config).outputs(list(hidden), list(ids[1:]))[-1]
    swapped = dict(w)
    swapped["midlayer.input_layernorm.weight"] = w["midlayer.hidden_norm.weight"]
    swapped["midlayer.hidden_norm.weight"] = w["midlayer.input_layernorm.weight"]
    other = reference_for(swapped, config).outputs(list(hidden), list(ids[1:]))[-1]
    assert np.abs(other - base).max() > 1e-3
    c = dict(config, rope_theta=10000.0)
    other = reference_for(w, c).outputs(list(hidden), list(ids[1:]))[-1]
    assert np.abs(other - base).max() > 1e-3


def test_float32_and_low_precision_follow_float64():
    rng = np.random.default_rng(4)
    w = eagle1_weights(rng, 1)
    lm = rng.normal(0, 1.0, (VOCAB, D))
    config = eagle1_config(1)
    hidden, ids = sequence(rng, 7, D)
    exact = EagleDrafter.from_state_dict(w, config, lm_head=lm, dtype=np.float64)
    _, lp64 = exact.step_logprobs(hidden, ids)
    f32 = EagleDrafter.from_state_dict(w, config, lm_head=lm)
    _, lp32 = f32.step_logprobs(hidden, ids)
    assert lp32.dtype == np.float32
    np.testing.assert_allclose(lp32, lp64, atol=2e-4)
    for weight_dtype, tol in (("bfloat16", 0.03), ("float16", 0.003), ("int8", 0.03)):
        low = EagleDrafter.from_state_dict(w, config, lm_head=lm, weight_dtype=weight_dtype)
        assert set(low.weight_dtypes.values()) == {weight_dtype}
        _, lp = low.step_logprobs(hidden, ids)
        np.testing.assert_allclose(np.exp(lp), np.exp(lp64), atol=tol)
    with pytest.raises(ValueError, match="float32"):
        EagleDrafter.from_state_dict(w, config, lm_head=lm, weight_dtype="int8",
                                     dtype=np.float64)


# -- trees -------------------------------------------------------------------------------


def assert_tree(tree, tokens, parents):
    assert tree.tokens.tolist() == tokens
    assert tree.parents.tolist() == parents


@pytest.mark.parametrize("top_k,depth,total", [(3, 3, 16), (2, 2, 5), (4, 1, 21), (1, 4, 6),
                                               (6, 11, 40)])
def test_eagle1_tree_matches_exhaustive_rebuild(top_k, depth, total):
    rng = np.random.default_rng(5 + top_k)
    w = eagle1_weights(rng, 1)
    lm = rng.normal(0, 1.0, (VOCAB, D))
    config = eagle1_config(1)
    drafter = EagleDrafter.from_state_dict(w, config, lm_head=lm, dtype=np.float64)
    hidden, ids = sequence(rng, 7, D)
    tree = drafter.draft_tree(hidden, ids, top_k=top_k, depth=depth, total_tokens=total)
    ref_tokens, ref_parents = reference_for(w, config, lm).tree(hidden, list(ids), top_k, depth,
                                                                 total)
    assert_tree(tree, ref_tokens, ref_parents)
    assert tree.num_nodes == total
    assert drafter.prefix_length == 6   # tree nodes are not kept
    # (6, 11, 40): the tree's 66 cache rows outgrow the cache's first allocation
    # mid-tree; the rows of earlier depths must survive the growth.


def test_eagle3_tree_maps_through_d2t_and_matches_rebuild():
    rng = np.random.default_rng(6)
    w = eagle3_weights(rng)
    config = eagle3_config()
    drafter = EagleDrafter.from_state_dict(w, config, dtype=np.float64)
    hidden, ids = sequence(rng, 6, 3 * D_TARGET)
    tree = drafter.draft_tree(hidden, ids, top_k=3, depth=3, total_tokens=14)
    ref_tokens, ref_parents = reference_for(w, config).tree(hidden, list(ids), 3, 3, 14)
    assert_tree(tree, ref_tokens, ref_parents)
    targets = set((np.arange(DRAFT_VOCAB) + w["d2t"]).tolist())
    assert set(tree.tokens[1:].tolist()) <= targets


def test_float32_tree_equals_float64_tree():
    rng = np.random.default_rng(7)
    w = eagle1_weights(rng, 1)
    lm = rng.normal(0, 3.0, (VOCAB, D))
    config = eagle1_config(1)
    hidden, ids = sequence(rng, 7, D)
    t64 = EagleDrafter.from_state_dict(w, config, lm_head=lm, dtype=np.float64).draft_tree(
        hidden, ids, top_k=3, depth=2, total_tokens=10)
    t32 = EagleDrafter.from_state_dict(w, config, lm_head=lm).draft_tree(
        hidden, ids, top_k=3, depth=2, total_tokens=10)
    assert t32 == DraftTreeLike(t64)


class DraftTreeLike:
    def __init__(self, tree):
        self.tree = tree

    def __eq__(self, other):
        return (other.tokens.tolist() == self.tree.tokens.tolist()
                and other.parents.tolist() == self.tree.parents.tolist())


def test_chain_is_greedy():
    rng = np.random.default_rng(8)
    w = eagle1_weights(rng, 1)
    lm = rng.normal(0, 1.0, (VOCAB, D))
    config = eagle1_config(1)
    drafter = EagleDrafter.from_state_dict(w, config, lm_head=lm, dtype=np.float64)
    ref = reference_for(w, config, lm)
    hidden, ids = sequence(rng, 6, D)
    chain = drafter.draft_chain(hidden, ids, 4)
    feats, toks = list(hidden), list(ids[1:])
    expected = [int(ids[-1])]
    for _ in range(4):
        out = ref.outputs(feats, toks)[-1]
        token = int(np.argmax(ref.logprobs(out)))
        expected.append(token)
        feats.append(out)
        toks.append(token)
    assert chain.tokens.tolist() == expected
    assert chain.parents.tolist() == [-1, 0, 1, 2, 3]


# -- the KV cache ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["eagle", "eagle3"])
def test_kv_cache_reuse_equals_fresh_recomputation(kind):
    rng = np.random.default_rng(9)
    if kind == "eagle":
        w, config = eagle1_weights(rng, 2), eagle1_config(2)
        lm, width = rng.normal(0, 1.0, (VOCAB, D)), D
    else:
        w, config, lm, width = eagle3_weights(rng), eagle3_config(), None, 3 * D_TARGET
    hidden, ids = sequence(rng, 14, width)
    cached = EagleDrafter.from_state_dict(w, config, lm_head=lm, dtype=np.float64)
    # Three calls, as a decoding loop makes them: 6, then 3, then 4 new positions.
    for stop in (7, 10, 14):
        tree = cached.draft_tree(hidden[cached.prefix_length:stop - 1], ids[:stop],
                                 top_k=3, depth=2, total_tokens=12)
        fresh = EagleDrafter.from_state_dict(w, config, lm_head=lm, dtype=np.float64)
        expected = fresh.draft_tree(hidden[:stop - 1], ids[:stop], top_k=3, depth=2,
                                    total_tokens=12)
        assert tree.tokens.tolist() == expected.tokens.tolist()
        assert tree.parents.tolist() == expected.parents.tolist()
        np.testing.assert_allclose(tree.scores, expected.scores, rtol=1e-12, atol=1e-12)
        assert cached.prefix_length == stop - 1
    _, lp_cached = cached.step_logprobs(rng.normal(0, 1, (1, width)), np.append(ids, 3))
    cached.reset()
    assert cached.prefix_length == 0


def test_inputs_must_continue_the_cached_sequence():
    rng = np.random.default_rng(10)
    w, config = eagle1_weights(rng, 1), eagle1_config(1)
    lm = rng.normal(0, 1.0, (VOCAB, D))
    drafter = EagleDrafter.from_state_dict(w, config, lm_head=lm)
    hidden, ids = sequence(rng, 8, D)
    drafter.draft_tree(hidden[:4], ids[:5], top_k=2, depth=1, total_tokens=4)
    with pytest.raises(ValueError, match="rows"):
        drafter.draft_tree(hidden[:4], ids, top_k=2, depth=1, total_tokens=4)
    other = ids.copy()
    other[2] = (other[2] + 1) % VOCAB
    with pytest.raises(ValueError, match="continue"):
        drafter.draft_tree(hidden[4:], other, top_k=2, depth=1, total_tokens=4)
    with pytest.raises(ValueError, match="NaN"):
        bad = hidden[4:].copy()
        bad[0, 0] = np.nan
        drafter.draft_tree(bad, ids, top_k=2, depth=1, total_tokens=4)
    with pytest.raises(ValueError, match="total_tokens"):
        drafter.draft_tree(hidden[4:], ids, top_k=2, depth=1, total_tokens=8)
    with pytest.raises(ValueError, match="shape"):
        drafter.draft_tree(hidden[4:, :5], ids, top_k=2, depth=1, total_tokens=4)


# -- checkpoints ------------------------------------------------------------------------


def bf16_bits(values):
    bits = np.asarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def bf16_values(bits):
    return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def write_raw(path, tensors):
    """``{name: (file dtype, array)}`` through safetensors' serialize_file."""
    names = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64",
             "I64": "int64", "BOOL": "bool"}
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
    safetensors.serialize_file(specs, str(path))


def file_tensors(weights, file_dtype):
    out = {}
    for k, v in weights.items():
        v = np.asarray(v)
        if v.dtype.kind == "b":
            out[k] = ("BOOL", v)
        elif v.dtype.kind in "iu":
            out[k] = ("I64", v.astype(np.int64))
        elif file_dtype == "BF16":
            out[k] = ("BF16", bf16_bits(v))
        else:
            out[k] = (file_dtype, v.astype({"F32": np.float32, "F64": np.float64}[file_dtype]))
    return out


def rounded(weights, file_dtype):
    """The float64 values a file of ``file_dtype`` holds."""
    def one(v):
        if np.asarray(v).dtype.kind != "f":
            return v
        if file_dtype == "BF16":
            return bf16_values(bf16_bits(v))
        return np.asarray(v, dtype=np.float32).astype(np.float64)
    return {k: one(v) for k, v in weights.items()}


@pytest.mark.parametrize("file_dtype", ["F32", "BF16"])
def test_eagle1_folder_with_target_lm_head_file(tmp_path, file_dtype):
    rng = np.random.default_rng(11)
    w = eagle1_weights(rng, 1)
    embed = w.pop("embed_tokens.weight")
    lm = rng.normal(0, 1.0, (VOCAB, D))
    folder = tmp_path / "eagle"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(eagle1_config(1)))
    write_raw(folder / "model.safetensors", file_tensors(w, file_dtype))
    target = tmp_path / "target.safetensors"
    write_raw(target, {"lm_head.weight": ("BF16", bf16_bits(lm)),
                       "model.embed_tokens.weight": ("BF16", bf16_bits(embed)),
                       "model.norm.weight": ("F32", np.ones(D, np.float32))})
    drafter = EagleDrafter.load(folder, lm_head=target, embed_tokens=target, dtype=np.float64)
    exact = rounded(dict(w, **{"embed_tokens.weight": embed}), file_dtype)
    exact["embed_tokens.weight"] = bf16_values(bf16_bits(embed))
    ref = reference_for(exact, eagle1_config(1), bf16_values(bf16_bits(lm)))
    hidden, ids = sequence(rng, 6, D)
    out, lp = drafter.step_logprobs(hidden, ids)
    ref_out = ref.outputs(list(hidden), list(ids[1:]))[-1]
    np.testing.assert_allclose(lp, ref.logprobs(ref_out), rtol=1e-9, atol=1e-9)
    # float32 compute keeps BF16 files as bfloat16, bit for bit.
    f32 = EagleDrafter.load(folder, lm_head=target, embed_tokens=target)
    expected_storage = "bfloat16" if file_dtype == "BF16" else "float32"
    assert f32.weight_dtypes["fc"] == expected_storage
    assert f32.weight_dtypes["lm_head"] == "bfloat16"


def test_eagle3_single_file_with_config(tmp_path):
    rng = np.random.default_rng(12)
    w = eagle3_weights(rng)
    path = tmp_path / "eagle3.safetensors"
    write_raw(path, file_tensors(w, "BF16"))
    cfg_path = tmp_path / "other.json"
    cfg_path.write_text(json.dumps(eagle3_config()))
    drafter = EagleDrafter.load(path, config=cfg_path, dtype=np.float64)
    ref = reference_for(rounded(w, "BF16"), eagle3_config())
    hidden, ids = sequence(rng, 5, 3 * D_TARGET)
    tree = drafter.draft_tree(hidden, ids, top_k=2, depth=2, total_tokens=7)
    assert_tree(tree, *ref.tree(hidden, list(ids), 2, 2, 7))


def test_pytorch_bin_needs_torch_or_loads(tmp_path):
    rng = np.random.default_rng(13)
    w = eagle1_weights(rng, 1)
    lm = rng.normal(0, 1.0, (VOCAB, D))
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(eagle1_config(1)))
    try:
        import torch
    except ImportError:
        (folder / "pytorch_model.bin").write_bytes(b"not really")
        with pytest.raises(ImportError, match="convert"):
            EagleDrafter.load(folder, lm_head=lm)
        return
    torch.save({k: torch.tensor(v) for k, v in w.items()}, folder / "pytorch_model.bin")
    drafter = EagleDrafter.load(folder, lm_head=lm, dtype=np.float64)
    ref = reference_for(w, eagle1_config(1), lm)
    hidden, ids = sequence(rng, 5, D)
    _, lp = drafter.step_logprobs(hidden, ids)
    np.testing.assert_allclose(lp, ref.logprobs(ref.outputs(list(hidden), list(ids[1:]))[-1]),
                               atol=1e-10)


def _write_eagle1(tmp_path, w, config):
    folder = tmp_path / "ck"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    write_raw(folder / "model.safetensors", file_tensors(w, "F32"))
    return folder


@pytest.mark.parametrize("change,match", [
    (lambda w, c: w.pop("layers.0.mlp.up_proj.weight"), "missing tensor"),
    (lambda w, c: w.update({"layers.0.self_attn.k_proj.weight": np.zeros((HEADS * HD, D))}),
     "k_proj.weight.*shape"),
    (lambda w, c: w.update({"layers.0.extra.weight": np.zeros((2, 2))}), "unexpected"),
    (lambda w, c: w.update({"layers.0.input_layernorm.weight": np.ones(D)}), "no input norm"),
    (lambda w, c: c.update({"num_key_value_heads": 3}), "multiple"),
    (lambda w, c: c.update({"hidden_size": 32}), "fc.weight"),
    (lambda w, c: c.update({"bias": False}), "fc.bias"),
    (lambda w, c: c.update({"hidden_act": "gelu"}), "silu"),
    (lambda w, c: c.update({"rope_scaling": {"type": "yarn", "factor": 2}}), "rope_scaling"),
])
def test_bad_eagle1_checkpoints(tmp_path, change, match):
    rng = np.random.default_rng(14)
    w = eagle1_weights(rng, 1)
    config = eagle1_config(1)
    change(w, config)
    folder = _write_eagle1(tmp_path, w, config)
    with pytest.raises(CheckpointError, match=match):
        EagleDrafter.load(folder, lm_head=np.zeros((VOCAB, D)))


def test_wrong_lm_head_and_missing_lm_head(tmp_path):
    rng = np.random.default_rng(15)
    w = eagle1_weights(rng, 1)
    folder = _write_eagle1(tmp_path, w, eagle1_config(1))
    with pytest.raises(CheckpointError, match="lm_head"):
        EagleDrafter.load(folder, lm_head=np.zeros((VOCAB + 1, D)))
    with pytest.raises(CheckpointError, match="LM head"):
        EagleDrafter.load(folder)
    w.pop("embed_tokens.weight")
    folder = _write_eagle1(tmp_path, w, eagle1_config(1))
    with pytest.raises(CheckpointError, match="embed_tokens"):
        EagleDrafter.load(folder, lm_head=np.zeros((VOCAB, D)))
    with pytest.raises(CheckpointError, match="lm_head.weight"):
        bad = tmp_path / "t.safetensors"
        write_raw(bad, {"x": ("F32", np.zeros(3, np.float32))})
        EagleDrafter.load(folder, lm_head=bad)


@pytest.mark.parametrize("change,match", [
    (lambda w, c: w.update({"d2t": w["d2t"][:-1]}), "d2t"),
    (lambda w, c: w.update({"d2t": np.zeros(DRAFT_VOCAB, np.int64) + VOCAB}), "outside"),
    (lambda w, c: w.pop("d2t"), "d2t"),
    (lambda w, c: w.update({"t2d": ~w["t2d"]}), "t2d"),
    (lambda w, c: w.update({"lm_head.weight": np.zeros((DRAFT_VOCAB + 1, D))}), "lm_head"),
    (lambda w, c: w.pop("midlayer.hidden_norm.weight"), "hidden_norm"),
    (lambda w, c: c.update({"target_hidden_size": D_TARGET + 1}), "fc.weight"),
])
def test_bad_eagle3_checkpoints(tmp_path, change, match):
    rng = np.random.default_rng(16)
    w = eagle3_weights(rng)
    config = eagle3_config()
    change(w, config)
    path = tmp_path / "e3.safetensors"
    write_raw(path, file_tensors(w, "F32"))
    with pytest.raises(CheckpointError, match=match):
        EagleDrafter.load(path, config=config)


def test_corrupted_file_is_a_checkpoint_error(tmp_path):
    rng = np.random.default_rng(17)
    folder = _write_eagle1(tmp_path, eagle1_weights(rng, 1), eagle1_config(1))
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[:-10])
    with pytest.raises(CheckpointError):
        EagleDrafter.load(folder, lm_head=np.zeros((VOCAB, D)))
    with pytest.raises(CheckpointError, match="no such"):
        EagleDrafter.load(tmp_path / "nowhere.safetensors")
    lone = tmp_path / "lone" / "e.safetensors"
    lone.parent.mkdir()
    lone.write_bytes((folder / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="config="):
        EagleDrafter.load(lone)


def test_exported():
    assert eagle_fast.EagleDrafter is EagleDrafter
    assert "EagleDrafter" in eagle_fast.__all__


# -- the command line ----------------------------------------------------------------------


def test_cli_inspect_recognises_both_kinds(tmp_path, capsys):
    from eagle_fast._cli import main

    rng = np.random.default_rng(18)
    folder = _write_eagle1(tmp_path, eagle1_weights(rng, 1), eagle1_config(1))
    assert main(["inspect", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "EAGLE-1/2 draft model" in out and "hidden_size=16" in out and "LM head" in out
    e3 = tmp_path / "e3" / "model.safetensors"
    e3.parent.mkdir()
    write_raw(e3, file_tensors(eagle3_weights(rng), "BF16"))
    (e3.parent / "config.json").write_text(json.dumps(eagle3_config()))
    assert main(["inspect", str(e3)]) == 0
    out = capsys.readouterr().out
    assert "EAGLE-3 draft model" in out and f"draft vocabulary={DRAFT_VOCAB}" in out
    assert "BF16" in out
    assert main(["inspect", str(e3.parent), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["kind"] == "eagle3"
    (e3.parent / "config.json").write_text(json.dumps(
        dict(eagle3_config(), rope_scaling=LLAMA3_SETTINGS[0])))
    assert main(["inspect", str(e3)]) == 0
    assert "rope scaling=llama3 (factor 8" in capsys.readouterr().out


def test_cli_convert_bin_to_safetensors(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    from eagle_fast._cli import main

    rng = np.random.default_rng(19)
    w = eagle3_weights(rng)
    folder = tmp_path / "bin3"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(eagle3_config()))
    state = {k: torch.tensor(v) for k, v in w.items()}
    state["fc.weight"] = state["fc.weight"].to(torch.bfloat16)
    torch.save(state, folder / "pytorch_model.bin")
    assert main(["convert", str(folder)]) == 0
    assert (folder / "model.safetensors").is_file()
    from_bin = EagleDrafter.load(folder / "pytorch_model.bin", dtype=np.float64)
    converted = EagleDrafter.load(folder / "model.safetensors", dtype=np.float64)
    assert converted.weight_dtypes == from_bin.weight_dtypes
    hidden, ids = sequence(rng, 5, 3 * D_TARGET)
    t1 = from_bin.draft_tree(hidden, ids, top_k=2, depth=2, total_tokens=6)
    t2 = converted.draft_tree(hidden, ids, top_k=2, depth=2, total_tokens=6)
    assert t1 == t2
    capsys.readouterr()
    assert main(["inspect", str(folder / "model.safetensors"), "--json"]) == 0
    assert "BF16" in json.loads(capsys.readouterr().out)["dtypes"]   # kept bit for bit
    assert EagleDrafter.load(folder / "model.safetensors").weight_dtypes["fc"] == "bfloat16"


def test_eagle3_full_vocabulary_and_torch_inputs():
    rng = np.random.default_rng(20)
    w = eagle3_weights(rng, draft_vocab=VOCAB)
    config = eagle3_config(draft_vocab=VOCAB)
    drafter = EagleDrafter.from_state_dict(w, config, dtype=np.float64)
    assert drafter.d2t is None          # a full draft vocabulary is not mapped (as EAGLE)
    hidden, ids = sequence(rng, 6, 3 * D_TARGET)
    tree = drafter.draft_tree(hidden, ids, top_k=3, depth=2, total_tokens=9)
    assert_tree(tree, *reference_for(w, config).tree(hidden, list(ids), 3, 2, 9))
    torch = pytest.importorskip("torch")
    again = EagleDrafter.from_state_dict({k: torch.tensor(v) for k, v in w.items()}, config,
                                         dtype=np.float64)
    assert again.draft_tree(torch.tensor(hidden)[None], torch.tensor(ids)[None], top_k=3,
                            depth=2, total_tokens=9) == tree


# -- group-wise q8 / q4 drafters ---------------------------------------------------------
#
# The stored codes are recomputed here from the documented rules (llama.cpp's
# Q8_0 / Q4_0 rounding, eagle_fast._storage) with plain loops in float64, and
# decoded back from the documented layout; the drafter (float32 compute) must
# then match the float64 reference run on those decoded weights.  Every matrix
# of these small drafters has short groups (16, 24 or 36 columns: d = 16 is not
# a multiple of 32).

GROUP = 32
GROUPED_DTYPES = ["q8", "q4"]


def q8_encode(w):
    """Q8_0 of float64 rows: (codes int64, scales float16), plain loops."""
    rows, cols = w.shape
    n_groups = -(-cols // GROUP)
    codes = np.zeros((rows, cols), dtype=np.int64)
    scales = np.zeros((rows, n_groups), dtype=np.float16)
    for r in range(rows):
        for g in range(n_groups):
            part = w[r, GROUP * g:GROUP * (g + 1)]
            scale = np.float16(max(abs(float(v)) for v in part) / 127)
            scales[r, g] = scale
            if scale != 0:
                for i, v in enumerate(part):
                    codes[r, GROUP * g + i] = min(127, max(-127, round(float(v) / float(scale))))
    return codes, scales


def q4_encode(w):
    """Q4_0 of float64 rows: (codes 0..15 int64 (rows, 32 * groups), scales
    float16): scale = fp16(m / -8) for m the group's first value of largest
    magnitude, code = clip(round(w / scale) + 8, 0, 15), padding code 8."""
    rows, cols = w.shape
    n_groups = -(-cols // GROUP)
    codes = np.full((rows, GROUP * n_groups), 8, dtype=np.int64)
    scales = np.zeros((rows, n_groups), dtype=np.float16)
    for r in range(rows):
        for g in range(n_groups):
            part = [float(v) for v in w[r, GROUP * g:GROUP * (g + 1)]]
            m = part[0]
            for v in part:
                if abs(v) > abs(m):
                    m = v
            scale = np.float16(m / -8)
            scales[r, g] = scale
            if scale != 0:
                for i, v in enumerate(part):
                    codes[r, GROUP * g + i] = min(15, max(0, round(v / float(scale)) + 8))
    return codes, scales


def q4_unpack(data):
    """Codes of packed q4 rows: byte i of group g holds column 32 g + i in its
    low nibble and 32 g + 16 + i in its high nibble."""
    rows, n_bytes = data.shape
    codes = np.zeros((rows, 2 * n_bytes), dtype=np.int64)
    for r in range(rows):
        for b in range(n_bytes):
            g, i = divmod(b, 16)
            byte = int(data[r, b])
            codes[r, GROUP * g + i] = byte & 15
            codes[r, GROUP * g + 16 + i] = byte >> 4
    return codes


def decode(arrays, name, weight_dtype, cols):
    """float64 weights of stored matrix ``name`` from its codes and scales."""
    scales = arrays[name + "_scale"]
    assert scales.dtype == np.float16 and scales.shape[1] == -(-cols // GROUP)
    per_column = np.repeat(scales.astype(np.float64), GROUP, axis=1)[:, :cols]
    if weight_dtype == "q8":
        q = arrays[name].astype(np.int64)
    else:
        q = q4_unpack(arrays[name])[:, :cols] - 8
    return q * per_column


def matrices_of(w, lm, kind):
    """Stored-matrix name -> the float64 rows it stacks (the drafter's layout)."""
    prefixes = ["midlayer."] if kind == "eagle3" else sorted(
        {k[:k.index(".", 7) + 1] for k in w if k.startswith("layers.")})
    out = {"fc": w["fc.weight"], "embed_tokens": w["embed_tokens.weight"],
           "lm_head": w["lm_head.weight"] if kind == "eagle3" else lm}
    for p in prefixes:
        a, m = p + "self_attn.", p + "mlp."
        out[p + "qkv"] = np.concatenate([w[a + c + "_proj.weight"] for c in "qkv"])
        out[p + "o_proj"] = w[a + "o_proj.weight"]
        out[p + "gate_up"] = np.concatenate([w[m + "gate_proj.weight"], w[m + "up_proj.weight"]])
        out[p + "down_proj"] = w[m + "down_proj.weight"]
    return out


def unstack(w, decoded, kind):
    """The published key layout of ``w`` with every matrix replaced by its decoded rows."""
    out = dict(w)
    prefixes = ["midlayer."] if kind == "eagle3" else sorted(
        {k[:k.index(".", 7) + 1] for k in w if k.startswith("layers.")})
    out["fc.weight"] = decoded["fc"]
    out["embed_tokens.weight"] = decoded["embed_tokens"]
    if kind == "eagle3":
        out["lm_head.weight"] = decoded["lm_head"]
    for p in prefixes:
        a, m = p + "self_attn.", p + "mlp."
        qkv = decoded[p + "qkv"]
        rows = [HEADS * HD, KV * HD, KV * HD]
        for c, part in zip("qkv", np.split(qkv, np.cumsum(rows)[:-1])):
            out[a + c + "_proj.weight"] = part
        out[a + "o_proj.weight"] = decoded[p + "o_proj"]
        gate, up = np.split(decoded[p + "gate_up"], 2)
        out[m + "gate_proj.weight"], out[m + "up_proj.weight"] = gate, up
        out[m + "down_proj.weight"] = decoded[p + "down_proj"]
    return out


def grouped_case(kind, seed):
    rng = np.random.default_rng(seed)
    if kind == "eagle3":
        return rng, eagle3_weights(rng), eagle3_config(), None, 3 * D_TARGET
    lm = rng.normal(0, 1.0, (VOCAB, D))
    return (rng, eagle1_weights(rng, 2, bias=True, qkv_bias=True), eagle1_config(2, True, True),
            lm, D)


@pytest.mark.parametrize("kind", ["eagle", "eagle3"])
@pytest.mark.parametrize("weight_dtype", GROUPED_DTYPES)
def test_grouped_drafter_stores_every_matrix_in_the_documented_layout(kind, weight_dtype):
    _, w, config, lm, _ = grouped_case(kind, 30)
    drafter = EagleDrafter.from_state_dict(w, config, lm_head=lm, weight_dtype=weight_dtype)
    assert set(drafter.weight_dtypes.values()) == {weight_dtype}
    arrays = drafter.stored_arrays()
    expected = matrices_of(w, lm, kind)
    assert set(drafter.weight_dtypes) == set(expected)
    nbytes = 0
    for name, values in expected.items():
        # The drafter rounds the given (float64) weights to float32 first.
        values = values.astype(np.float32).astype(np.float64)
        rows, cols = values.shape
        data, scales = arrays[name], arrays[name + "_scale"]
        assert not data.flags.writeable
        if weight_dtype == "q8":
            codes, want_scales = q8_encode(values)
            assert data.dtype == np.int8 and data.shape == (rows, cols)
            np.testing.assert_array_equal(data, codes, err_msg=name)
        else:
            codes, want_scales = q4_encode(values)
            assert data.dtype == np.uint8 and data.shape == (rows, 16 * -(-cols // GROUP))
            np.testing.assert_array_equal(q4_unpack(data), codes, err_msg=name)
        np.testing.assert_array_equal(scales, want_scales, err_msg=name)
        nbytes += data.nbytes + scales.nbytes
    vectors = sum(np.asarray(v).size * 4 for k, v in w.items()
                  if np.asarray(v).ndim == 1 and k not in ("d2t", "t2d"))
    assert drafter.nbytes == nbytes + vectors


@pytest.mark.parametrize("kind", ["eagle", "eagle3"])
@pytest.mark.parametrize("weight_dtype", GROUPED_DTYPES)
def test_grouped_drafter_is_float32_on_its_decoded_weights(kind, weight_dtype):
    """Outputs, log-probs and the EAGLE-2 tree of a q8/q4 drafter equal the
    float64 reference run on the weights decoded from its stored arrays (to
    float32 rounding).  (How far quantization moves acceptance is measured by
    bench/bench_generate.py on a trained drafter, not on these random ones.)"""
    rng, w, config, lm, width = grouped_case(kind, 31)
    drafter = EagleDrafter.from_state_dict(w, config, lm_head=lm, weight_dtype=weight_dtype)
    arrays = drafter.stored_arrays()
    expected = matrices_of(w, lm, kind)
    decoded = {name: decode(arrays, name, weight_dtype, values.shape[1])
               for name, values in expected.items()}
    ref = reference_for(unstack(w, decoded, kind), config,
                        None if lm is None else decoded["lm_head"])
    hidden, ids = sequence(rng, 8, width)
    out, lp = drafter.step_logprobs(hidden, ids)
    assert out.dtype == np.float32 and lp.dtype == np.float32
    ref_out = ref.outputs(list(hidden), list(ids[1:]))
    np.testing.assert_allclose(out, ref_out[-1], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(lp, ref.logprobs(ref_out[-1]), rtol=1e-4, atol=2e-4)
    # Decoding the wrong layout (q4's nibbles swapped) is caught by the same check.
    if weight_dtype == "q4":
        swapped = dict(arrays)
        swapped["fc"] = ((arrays["fc"] >> 4) | (arrays["fc"] << 4)).astype(np.uint8)
        wrong = dict(decoded, fc=decode(swapped, "fc", "q4", expected["fc"].shape[1]))
        bad = reference_for(unstack(w, wrong, kind), config,
                            None if lm is None else wrong["lm_head"])
        assert np.abs(bad.outputs(list(hidden), list(ids[1:]))[-1] - out).max() > 1e-2
    # The tree: the reference's exhaustive rebuild on the decoded weights.
    drafter.reset()
    tree = drafter.draft_tree(hidden, ids, top_k=3, depth=2, total_tokens=9)
    assert_tree(tree, *ref.tree(hidden, list(ids), 3, 2, 9))


@pytest.mark.parametrize("weight_dtype", GROUPED_DTYPES)
def test_grouped_drafter_frontier_batches_equal_single_rows(weight_dtype):
    """A tree depth runs its K frontier nodes as one batch; each node's
    log-probs equal running that node alone (bit for bit on the compiled
    kernels, which reduce every dot product in one fixed order)."""
    from eagle_fast import _backend

    rng, w, config, lm, _ = grouped_case("eagle", 32)
    drafter = EagleDrafter.from_state_dict(w, config, lm_head=lm, weight_dtype=weight_dtype)
    hidden, ids = sequence(rng, 6, D)
    drafter.step_logprobs(hidden, ids)
    prefix = drafter.prefix_length
    states = rng.normal(0, 1.0, (5, D)).astype(np.float32)
    tokens = rng.integers(0, VOCAB, 5)
    positions = np.full(5, prefix, dtype=np.int64)
    batch = drafter._logprobs(drafter._forward(states, tokens, positions,
                                               np.eye(5, dtype=bool), 1), 1)
    for i in range(5):
        one = drafter._logprobs(drafter._forward(states[i:i + 1], tokens[i:i + 1],
                                                 positions[i:i + 1], np.ones((1, 1), bool), 1),
                                1)
        if _backend.active().name == "compiled":
            np.testing.assert_array_equal(one[0], batch[i])
        else:
            np.testing.assert_allclose(one[0], batch[i], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("weight_dtype", GROUPED_DTYPES)
@pytest.mark.parametrize("file_dtype", ["F32", "BF16"])
def test_grouped_drafter_from_a_checkpoint_folder(tmp_path, weight_dtype, file_dtype):
    """Loading a checkpoint with weight_dtype q8/q4 quantizes the file's values:
    the same stored arrays and log-probs, bit for bit, as from_state_dict on
    those values."""
    rng, w, config, lm, _ = grouped_case("eagle", 33)
    folder = tmp_path / "eagle"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    write_raw(folder / "model.safetensors", file_tensors(w, file_dtype))
    loaded = EagleDrafter.load(folder, lm_head=lm, weight_dtype=weight_dtype)
    direct = EagleDrafter.from_state_dict(rounded(w, file_dtype), config, lm_head=lm,
                                          weight_dtype=weight_dtype)
    a, b = loaded.stored_arrays(), direct.stored_arrays()
    assert set(a) == set(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    hidden, ids = sequence(rng, 7, D)
    np.testing.assert_array_equal(loaded.step_logprobs(hidden, ids)[1],
                                  direct.step_logprobs(hidden, ids)[1])


def test_grouped_drafter_errors():
    rng, w, config, lm, _ = grouped_case("eagle", 34)
    for weight_dtype in GROUPED_DTYPES:
        with pytest.raises(ValueError, match="float32"):
            EagleDrafter.from_state_dict(w, config, lm_head=lm, weight_dtype=weight_dtype,
                                         dtype=np.float64)
    with pytest.raises(ValueError, match="q8, q4"):
        EagleDrafter.from_state_dict(w, config, lm_head=lm, weight_dtype="q5")
    # Beyond the float16 scales' range: 127 * 65504 (q8), 8 * 65504 (q4).
    for weight_dtype, big in (("q8", 1e7), ("q4", 6e5)):
        huge = dict(w)
        huge["layers.1.mlp.down_proj.weight"] = w["layers.1.mlp.down_proj.weight"].copy()
        huge["layers.1.mlp.down_proj.weight"][3, 5] = big
        with pytest.raises(CheckpointError, match=f"down_proj holds values too large for "
                                                  f"{weight_dtype}"):
            EagleDrafter.from_state_dict(huge, config, lm_head=lm, weight_dtype=weight_dtype)
        # just inside the range it stores
        huge["layers.1.mlp.down_proj.weight"][3, 5] = big / 2
        EagleDrafter.from_state_dict(huge, config, lm_head=lm, weight_dtype=weight_dtype)
    bad_lm = lm.copy()
    bad_lm[0, 0] = np.nan
    with pytest.raises(CheckpointError, match="NaN"):
        EagleDrafter.from_state_dict(w, config, lm_head=bad_lm, weight_dtype="q4")
