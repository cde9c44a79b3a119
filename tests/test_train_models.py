"""bench/train_models.py: the bench's trained models load in the published layouts.

A tiny configuration (a few files, width 32, a dozen steps) is trained once
per module into a temporary cache; then the target loads with
``transformers``, the Medusa file with ``eagle_fast.load_medusa`` (and
predicts what NumPy computes from the file's tensors by hand), and the EAGLE
folder has exactly EAGLE-1's keys and shapes and runs in
``eagle_fast.EagleDrafter`` as the training module's PyTorch model does.
Needs torch, transformers and tokenizers (bench-only dependencies): skipped
without them.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

import eagle_fast  # noqa: E402

BENCH = Path(__file__).resolve().parent.parent / "bench" / "train_models.py"


def _load_module():
    spec = importlib.util.spec_from_file_location("eagle_fast_bench_train_models", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


tm = _load_module()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    cache = tmp_path_factory.mktemp("bench-cache")
    artifacts = tm.prepare(tm.tiny_config(), cache, progress=False, threads=1)
    return artifacts


def _silu(x):
    return x / (1.0 + np.exp(-x))


def test_manifest_and_cache(trained, tmp_path):
    m = json.loads((trained.root / "manifest.json").read_text())
    assert m == json.loads(json.dumps(trained.manifest))
    assert 0.0 <= m["target"]["heldout_top1"] <= 1.0
    assert len(m["medusa"]["heldout_top1_vs_target"]) == m["medusa"]["num_heads"] == 2
    assert 0.0 <= m["eagle"]["heldout_top1_vs_target"] <= 1.0
    assert m["target"]["steps"] == m["medusa"]["steps"] == m["eagle"]["steps"] == 12
    # On a copy of the cache: a second prepare finds every stage cached (same
    # run ids, nothing retrained) ...
    shutil.copytree(trained.root, tmp_path / trained.root.name)
    again = tm.prepare(tm.tiny_config(), tmp_path, progress=False, threads=1)
    for stage in ("tokenizer", "target", "medusa", "eagle"):
        assert again.manifest[stage]["run_id"] == m[stage]["run_id"]
    # ... and a changed drafter config retrains that drafter only.
    changed = tm.tiny_config()
    changed = dataclasses.replace(changed, eagle=dataclasses.replace(changed.eagle, max_steps=3))
    third = tm.prepare(changed, tmp_path, progress=False, threads=1)
    assert third.manifest["eagle"]["run_id"] != m["eagle"]["run_id"]
    assert third.manifest["eagle"]["steps"] == 3
    for stage in ("tokenizer", "target", "medusa"):
        assert third.manifest[stage]["run_id"] == m[stage]["run_id"]


def test_corpus_split_is_deterministic_and_disjoint():
    config = tm.tiny_config().corpus
    a, b = tm.build_corpus(config), tm.build_corpus(config)
    assert a.train_files == b.train_files and a.heldout_files == b.heldout_files
    assert a.fingerprint == b.fingerprint
    assert not set(a.train_files) & set(a.heldout_files)
    for rel in a.heldout_files:
        assert tm._path_hash(rel) % 100 < config.heldout_percent
    for rel in a.train_files:
        assert tm._path_hash(rel) % 100 >= config.heldout_percent
        assert not {"test", "site-packages"} & set(Path(rel).parts)


def test_target_and_tokenizer_load_with_transformers(trained):
    tok = transformers.AutoTokenizer.from_pretrained(str(trained.target_dir))
    text = "def f(x):\n    return x + 1\n"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    assert tok.eos_token == tm.EOS_TOKEN and tok.eos_token_id == trained.eos_token_id
    model = transformers.AutoModelForCausalLM.from_pretrained(str(trained.target_dir))
    assert type(model).__name__ == "LlamaForCausalLM"
    assert not model.config.tie_word_embeddings
    assert model.config.num_key_value_heads == 2 and model.config.vocab_size == len(tok)
    # the reloaded model reproduces the held-out figures of the manifest
    heldout = np.load(trained.heldout_tokens)
    windows = tm._eval_windows(heldout, trained.config.target.context,
                               trained.config.target.eval_sequences)
    again = tm.evaluate_target(model, windows)
    assert again["heldout_loss"] == pytest.approx(trained.manifest["target"]["heldout_loss"],
                                                  abs=1e-3)
    assert again["heldout_top1"] == trained.manifest["target"]["heldout_top1"]


def _target_features(trained, n=24):
    model = transformers.AutoModelForCausalLM.from_pretrained(str(trained.target_dir),
                                                              dtype=torch.float64)
    ids = np.load(trained.heldout_tokens)[:n].astype(np.int64)
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(ids)[None], output_hidden_states=True)
    return model, ids, out.hidden_states[-1][0].numpy(), out.logits[0].numpy()


def test_medusa_file_loads_and_predicts_as_by_hand(trained):
    config = json.loads((trained.medusa_dir / "config.json").read_text())
    assert config["medusa_num_heads"] == 2 and config["medusa_num_layers"] == 1
    assert Path(config["base_model_name_or_path"]) == trained.target_dir
    tensors = safetensors_numpy.load_file(str(trained.medusa_path))
    d, vocab = 32, trained.manifest["tokenizer"]["vocab_size"]
    assert {k: v.shape for k, v in tensors.items()} == {
        f"{i}.{name}": shape for i in range(2) for name, shape in
        (("0.linear.weight", (d, d)), ("0.linear.bias", (d,)), ("1.weight", (vocab, d)))}
    heads = eagle_fast.load_medusa(trained.medusa_path)
    assert len(heads) == 2
    _, _, hidden, _ = _target_features(trained)
    h = hidden.astype(np.float32)
    result = heads.predict(h, top_k=1)
    for i in range(2):
        w, b, lm = (tensors[f"{i}.{k}"].astype(np.float64)
                    for k in ("0.linear.weight", "0.linear.bias", "1.weight"))
        x = h + _silu(h @ w.T + b)
        logits = x @ lm.T
        tokens = np.asarray(result.tokens)[:, i, 0]  # (B, num_heads, k)
        expected = logits.argmax(-1)
        top2 = np.sort(logits, axis=-1)[:, -2:]
        clear = (top2[:, 1] - top2[:, 0]) > 1e-4  # ignore float32 near-ties
        assert clear.sum() > len(clear) // 2
        assert np.array_equal(tokens[clear], expected[clear])


def test_eagle_folder_has_the_published_layout(trained):
    config = json.loads((trained.eagle_dir / "config.json").read_text())
    assert config["bias"] is True and config["num_hidden_layers"] == 1
    assert config["architectures"] == ["LlamaForCausalLM"] and config["model_type"] == "llama"
    d, vocab = config["hidden_size"], config["vocab_size"]
    inter, hd = config["intermediate_size"], d // config["num_attention_heads"]
    kv = config["num_key_value_heads"] * hd
    tensors = safetensors_numpy.load_file(str(trained.eagle_dir / "model.safetensors"))
    assert {k: v.shape for k, v in tensors.items()} == {
        "fc.weight": (d, 2 * d), "fc.bias": (d,),
        "layers.0.self_attn.q_proj.weight": (d, d),
        "layers.0.self_attn.k_proj.weight": (kv, d),
        "layers.0.self_attn.v_proj.weight": (kv, d),
        "layers.0.self_attn.o_proj.weight": (d, d),
        "layers.0.mlp.gate_proj.weight": (inter, d),
        "layers.0.mlp.up_proj.weight": (inter, d),
        "layers.0.mlp.down_proj.weight": (d, inter),
        "layers.0.post_attention_layernorm.weight": (d,),
        "embed_tokens.weight": (vocab, d),
    }
    target = safetensors_numpy.load_file(str(trained.target_dir / "model.safetensors"))
    np.testing.assert_array_equal(tensors["embed_tokens.weight"],
                                  target["model.embed_tokens.weight"])


def test_eagle_drafter_runs_as_the_training_model(trained):
    """EagleDrafter on the saved folder (float64) gives, position by position
    with its KV cache, the outputs of the training module's PyTorch model."""
    model, ids, hidden, _ = _target_features(trained)
    config = json.loads((trained.eagle_dir / "config.json").read_text())
    tensors = safetensors_numpy.load_file(str(trained.eagle_dir / "model.safetensors"))
    lm_head = model.lm_head.weight.detach()
    torch_model = tm.EagleTorch(config, torch.from_numpy(tensors["embed_tokens.weight"]),
                                lm_head.float()).double()
    own = {k: torch.from_numpy(v).double() for k, v in tensors.items()}
    with torch.no_grad():
        for name, value in torch_model.published_state_dict().items():
            value.copy_(own[name])
        n = len(ids) - 1
        expected = torch_model(torch.from_numpy(hidden[:n])[None],
                               torch.from_numpy(ids[1:n + 1])[None])[0].numpy()
    drafter = eagle_fast.EagleDrafter.load(trained.eagle_dir, lm_head=trained.target_dir,
                                           dtype=np.float64)
    for j in range(n):
        out, logprobs = drafter.step_logprobs(hidden[j:j + 1], ids[:j + 2])
        np.testing.assert_allclose(out, expected[j], rtol=1e-9, atol=1e-9)
    full = expected[-1] @ lm_head.double().numpy().T
    np.testing.assert_allclose(logprobs, full - np.logaddexp.reduce(full), atol=1e-9)


def test_heldout_prompts_stay_inside_one_file(trained):
    stream = np.load(trained.heldout_tokens)
    prompts = tm.heldout_prompts(trained, 5, 16, seed=3)
    assert prompts == [] or len(prompts) == 5
    for p in prompts:
        assert p.shape == (16,) and trained.eos_token_id not in p
        # p occurs in the stream (found by brute force)
        assert any(np.array_equal(stream[s:s + 16], p) for s in range(len(stream) - 15))
    again = tm.heldout_prompts(trained, 5, 16, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(prompts, again))
    with pytest.raises(ValueError, match="no held-out window"):
        tm.heldout_prompts(trained, 1, len(stream) + 1)
