"""``eagle-fast generate``: a tiny random Llama + tokenizer saved to disk, tiny
Medusa and EAGLE checkpoints; greedy speculative text equals the model's own
``model.generate`` text; argument and environment errors are clean."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from eagle_fast import _cli

from support import backend_independent

D, INTER, HEADS = 32, 64, 4
PROMPT = "def add(a, b):\n    return"
CORPUS = ["def f(x):\n    return x + 1\n", "class A:\n    pass\n",
          "for i in range(10):\n    print(i)\n", "import os\nimport sys\n",
          "if a == b:\n    return a\nelse:\n    return b\n"] * 4


@pytest.fixture(scope="module")
def torch_lib():
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("tokenizers")
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def folders(torch_lib, tmp_path_factory):
    """(target folder, medusa folder, eagle folder, model, tokenizer)."""
    import transformers
    from safetensors.numpy import save_file
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    torch = torch_lib
    root = tmp_path_factory.mktemp("generate_cli")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")
    vocab = tok.get_vocab_size()
    eos = tok.token_to_id("<eos>")
    config = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=D, intermediate_size=INTER, num_hidden_layers=2,
        num_attention_heads=HEADS, num_key_value_heads=2, max_position_embeddings=256,
        initializer_range=0.2, tie_word_embeddings=False, bos_token_id=None,
        eos_token_id=eos, pad_token_id=eos)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).float().eval()
    target = root / "target"
    model.save_pretrained(str(target))
    tokenizer.save_pretrained(str(target))

    rng = np.random.default_rng(0)
    lm_head = model.lm_head.weight.detach().numpy().astype(np.float32)
    medusa = root / "medusa"
    medusa.mkdir()
    tensors = {}
    for i in range(3):  # residual heads near the LM head: they often guess right
        tensors[f"{i}.0.linear.weight"] = (rng.standard_normal((D, D)) * 0.05).astype(np.float32)
        tensors[f"{i}.0.linear.bias"] = np.zeros(D, np.float32)
        tensors[f"{i}.1.weight"] = lm_head.copy()
    save_file(tensors, str(medusa / "medusa_lm_head.safetensors"))
    (medusa / "config.json").write_text(json.dumps({"medusa_num_heads": 3,
                                                    "medusa_num_layers": 1}))

    def w(*shape, scale=0.1):
        return (rng.standard_normal(shape) * scale).astype(np.float32)
    eagle = root / "eagle"
    eagle.mkdir()
    tensors = {"fc.weight": w(D, 2 * D), "fc.bias": w(D),
               "embed_tokens.weight": model.model.embed_tokens.weight.detach().numpy().copy(),
               "layers.0.post_attention_layernorm.weight": np.ones(D, np.float32),
               "layers.0.mlp.gate_proj.weight": w(INTER, D),
               "layers.0.mlp.up_proj.weight": w(INTER, D),
               "layers.0.mlp.down_proj.weight": w(D, INTER)}
    for p in "qkvo":
        tensors[f"layers.0.self_attn.{p}_proj.weight"] = w(D, D)
    save_file(tensors, str(eagle / "model.safetensors"))
    (eagle / "config.json").write_text(json.dumps({
        "hidden_size": D, "intermediate_size": INTER, "num_attention_heads": HEADS,
        "num_key_value_heads": HEADS, "num_hidden_layers": 1, "vocab_size": vocab,
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "hidden_act": "silu", "bias": True}))
    return target, medusa, eagle, model, tokenizer


def _reference_text(model, tokenizer, new_tokens):
    """The model's own greedy continuation (transformers' generate), decoded."""
    import torch

    ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=new_tokens, do_sample=False,
                             eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.eos_token_id)
    new = out[0, ids.shape[1]:].tolist()
    assert len(new) >= 1
    return PROMPT + tokenizer.decode(new, skip_special_tokens=True)


@pytest.mark.parametrize("drafter, extra", [
    ("medusa", []), ("medusa", ["--kind", "chain"]), ("eagle", []),
    ("eagle", ["--kind", "chain", "--depth", "3"]),
    ("eagle", ["--top-k", "3", "--depth", "3", "--total-tokens", "10"]), (None, []),
    ("eagle", ["--weight-dtype", "q8"]), ("eagle", ["--weight-dtype", "q4"]),
    ("eagle", ["--weight-dtype", "q4", "--kind", "chain", "--depth", "3"]),
    ("eagle", ["--weight-dtype", "int8"]), ("medusa", ["--weight-dtype", "q4"])])
def test_greedy_text_equals_model_generate(folders, capsys, drafter, extra):
    target, medusa, eagle, model, tokenizer = folders
    n = 16
    argv = ["generate", "--target", str(target), "--prompt", PROMPT,
            "--max-new-tokens", str(n), *extra]
    if drafter is not None:
        argv += ["--drafter", str({"medusa": medusa, "eagle": eagle}[drafter])]
    assert _cli.main(argv) == 0
    out, err = capsys.readouterr()
    assert out == _reference_text(model, tokenizer, n) + "\n"
    assert "tau" in err and "tokens/s" in err
    if "--weight-dtype" in extra:
        assert extra[extra.index("--weight-dtype") + 1] in err   # said in the summary


def test_medusa_file_sampling_and_baseline(folders, capsys):
    target, medusa, _, _, _ = folders
    argv = ["generate", "--target", str(target), "--prompt", PROMPT, "--max-new-tokens", "8",
            "--drafter", str(medusa / "medusa_lm_head.safetensors")]
    assert _cli.main(argv + ["--baseline"]) == 0
    assert "same tokens: yes" in capsys.readouterr().err
    runs = []
    for _ in range(2):
        assert _cli.main(argv + ["--temperature", "1", "--top-p", "0.9", "--seed", "3"]) == 0
        runs.append(capsys.readouterr().out)
    assert runs[0] == runs[1] and runs[0].startswith(PROMPT)


@backend_independent
@pytest.mark.parametrize("extra, message", [
    (["--max-new-tokens", "0"], "expected an integer >= 1"),
    (["--temperature", "-1"], "expected a finite number >= 0"),
    (["--temperature", "nan"], "expected a finite number >= 0"),
    (["--top-p", "0"], "(0, 1]"),
    (["--top-p", "0.5"], "--top-p needs --temperature > 0"),
    (["--top-k", "4"], "need --drafter"),
    (["--kind", "medusa"], "need --drafter"),
    (["--kind", "bogus"], "invalid choice"),
    (["--weight-dtype", "q8"], "need --drafter"),
    (["--weight-dtype", "q5"], "invalid choice"),
    (["--weight-dtype", "float64"], "invalid choice"),
])
def test_bad_arguments_are_usage_errors(capsys, tmp_path, extra, message):
    with pytest.raises(SystemExit) as info:
        _cli.main(["generate", "--target", str(tmp_path), "--prompt", "x", *extra])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


@backend_independent
def test_missing_prompt_is_a_usage_error(capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        _cli.main(["generate", "--target", str(tmp_path)])
    assert info.value.code == 2
    assert "--prompt" in capsys.readouterr().err


@backend_independent
def test_missing_torch_is_a_clear_error(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    assert _cli.main(["generate", "--target", str(tmp_path), "--prompt", "x"]) == 1
    err = capsys.readouterr().err
    assert 'pip install ".[transformers]"' in err and "Traceback" not in err


@backend_independent
def test_bad_folders_are_errors(folders, capsys, tmp_path):
    target, medusa, eagle, _, _ = folders
    assert _cli.main(["generate", "--target", str(tmp_path), "--prompt", "x"]) == 1
    assert "no config.json" in capsys.readouterr().err
    assert _cli.main(["generate", "--target", str(target), "--prompt", "x",
                      "--drafter", str(tmp_path / "nothing")]) == 1
    assert "no such file or folder" in capsys.readouterr().err
    assert _cli.main(["generate", "--target", str(target), "--prompt", "x",
                      "--drafter", str(eagle), "--kind", "medusa"]) == 1
    assert "not medusa" in capsys.readouterr().err
    assert _cli.main(["generate", "--target", str(target), "--prompt", "x",
                      "--drafter", str(medusa), "--kind", "chain", "--depth", "5"]) == 1
    assert "3 Medusa heads" in capsys.readouterr().err


@backend_independent
def test_long_run_with_progress_bar(folders, capsys):
    pytest.importorskip("tqdm")
    target, medusa, _, model, tokenizer = folders
    n = 70  # above the progress bar's threshold
    assert _cli.main(["generate", "--target", str(target), "--prompt", PROMPT,
                      "--drafter", str(medusa), "--max-new-tokens", str(n)]) == 0
    out, err = capsys.readouterr()
    assert out == _reference_text(model, tokenizer, n) + "\n"
    assert "generate:" in err  # the bar's label


def test_eagle3_drafter_feeds_three_target_layers(folders, capsys, tmp_path):
    """An EAGLE-3 checkpoint (midlayer.*, its own LM head over a draft
    vocabulary with d2t, no embedding) on a 7-layer target: the CLI feeds it the
    target's layers (2, 3, 4) and the target's embedding; the text is the
    target's own greedy text."""
    import torch
    import transformers
    from safetensors.numpy import save_file

    _, _, _, small, tokenizer = folders
    vocab, draft_vocab = small.config.vocab_size, 64
    config = transformers.LlamaConfig(**{**small.config.to_dict(), "num_hidden_layers": 7})
    torch.manual_seed(1)
    model = transformers.LlamaForCausalLM(config).float().eval()
    target = tmp_path / "target7"
    model.save_pretrained(str(target))
    tokenizer.save_pretrained(str(target))
    rng = np.random.default_rng(1)

    def w(*shape, scale=0.1):
        return (rng.standard_normal(shape) * scale).astype(np.float32)
    p = "midlayer."
    tensors = {"fc.weight": w(D, 3 * D), "norm.weight": np.ones(D, np.float32),
               "lm_head.weight": w(draft_vocab, D, scale=1.0),
               p + "input_layernorm.weight": np.ones(D, np.float32),
               p + "hidden_norm.weight": np.ones(D, np.float32),
               p + "post_attention_layernorm.weight": np.ones(D, np.float32),
               p + "self_attn.o_proj.weight": w(D, D),
               p + "mlp.gate_proj.weight": w(INTER, D), p + "mlp.up_proj.weight": w(INTER, D),
               p + "mlp.down_proj.weight": w(D, INTER)}
    for name in "qkv":
        tensors[p + f"self_attn.{name}_proj.weight"] = w(D, 2 * D)
    targets = np.sort(rng.choice(vocab, draft_vocab, replace=False))
    tensors["d2t"] = (targets - np.arange(draft_vocab)).astype(np.int64)
    t2d = np.zeros(vocab, dtype=bool)
    t2d[targets] = True
    tensors["t2d"] = t2d
    eagle3 = tmp_path / "eagle3"
    eagle3.mkdir()
    save_file(tensors, str(eagle3 / "model.safetensors"))
    (eagle3 / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLMEagle3"], "hidden_size": D, "intermediate_size": INTER,
        "num_attention_heads": HEADS, "num_key_value_heads": HEADS, "num_hidden_layers": 1,
        "vocab_size": vocab, "draft_vocab_size": draft_vocab, "target_hidden_size": D,
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "hidden_act": "silu"}))
    n = 16
    for extra in ([], ["--weight-dtype", "q4"]):
        assert _cli.main(["generate", "--target", str(target), "--drafter", str(eagle3),
                          "--prompt", PROMPT, "--max-new-tokens", str(n), *extra]) == 0
        out, err = capsys.readouterr()
        assert out == _reference_text(model, tokenizer, n) + "\n"
        assert "EAGLE-3" in err and "dynamic tree" in err
