"""TransformersTarget against plain transformers forwards of tiny random models.

References are independent of the code under test: a fresh, cache-free
``model(input_ids)`` over the prefix plus a node's root-to-node path (float64,
sdpa: exact to ~1e-15), forward pre-hooks on the decoder layers for EAGLE-3's
layer inputs, and ``model.generate(do_sample=False)`` for a greedy loop.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from eagle_fast.integrations.transformers import (  # noqa: E402
    TransformersTarget, drafter_features, drafter_weights, resolve_hidden_layers)
from eagle_fast.speculative import DraftTree, Target, TargetOutput, eagle3_layer_indices  # noqa: E402
from support import backend_independent  # noqa: E402

pytestmark = backend_independent

VOCAB = 96
TOL = 1e-9


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    # These models are tiny: one thread is ~10x faster than several contending
    # ones on a loaded machine.
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def tiny_model(kind: str = "llama", *, layers: int = 2, seed: int = 0, attention: str = "sdpa",
               dtype=None):
    """A random ``kind`` causal LM, hidden 32, 4 heads / 2 KV heads, from a config."""
    common = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                  num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=256, initializer_range=0.15,
                  bos_token_id=None, eos_token_id=None, pad_token_id=None)
    if kind == "llama":
        config, cls = transformers.LlamaConfig(**common), transformers.LlamaForCausalLM
    elif kind == "qwen2":
        config, cls = transformers.Qwen2Config(**common), transformers.Qwen2ForCausalLM
    elif kind == "qwen3":
        config = transformers.Qwen3Config(head_dim=8, **common)
        cls = transformers.Qwen3ForCausalLM
    elif kind == "mistral":
        config = transformers.MistralConfig(sliding_window=None, **common)
        cls = transformers.MistralForCausalLM
    else:
        raise ValueError(kind)
    return build(cls, config, seed, attention, dtype or torch.float64)


def build(cls, config, seed=0, attention="sdpa", dtype=None):
    dtype = dtype or torch.float64
    torch.manual_seed(seed)
    try:
        model = cls._from_config(config, dtype=dtype, attn_implementation=attention)
    except TypeError:  # transformers < 4.56 calls it torch_dtype
        torch.manual_seed(seed)
        model = cls._from_config(config, torch_dtype=dtype, attn_implementation=attention)
    return model.eval()


KINDS = ["llama", "qwen2", "qwen3", "mistral"]


@pytest.fixture(scope="module", params=KINDS)
def model(request):
    return tiny_model(request.param, seed=KINDS.index(request.param))


def full_forward(model, ids):
    """Logits and final-norm hidden states of every position, no cache."""
    with torch.no_grad():
        out = model(torch.tensor([list(ids)]), output_hidden_states=True, use_cache=False)
    return out.logits[0].numpy(), out.hidden_states[-1][0].numpy()


def random_tree(rng, n, vocab=VOCAB, root=None):
    parents = [-1] + [int(rng.integers(0, i)) for i in range(1, n)]
    tokens = rng.integers(0, vocab, size=n)
    if root is not None:
        tokens[0] = root
    return DraftTree(tokens, parents)


def path_tokens(tree, node):
    return tree.tokens[tree.path(node)].tolist()


def test_protocol_conformance(model):
    target = TransformersTarget(model)
    assert isinstance(target, Target)
    assert target.vocab_size == VOCAB and target.hidden_size == 32
    assert target.hidden_layers is None and target.cached_length == 0
    assert target.dtype == np.float64


def test_prefill_matches_full_forward(model):
    rng = np.random.default_rng(1)
    prompt = rng.integers(0, VOCAB, size=7)
    target = TransformersTarget(model)
    out = target.prefill(prompt)
    assert isinstance(out, TargetOutput)
    logits, hidden = full_forward(model, prompt)
    assert out.logits.shape == (1, VOCAB) and out.hidden_states.shape == (7, 32)
    assert out.logits.dtype == np.float64
    np.testing.assert_allclose(out.logits[0], logits[-1], rtol=0, atol=TOL)
    np.testing.assert_allclose(out.hidden_states, hidden, rtol=0, atol=TOL)
    # the hidden states are the LM head's input (after the final norm)
    lm_head = model.get_output_embeddings().weight.detach().numpy()
    np.testing.assert_allclose(out.hidden_states[-1] @ lm_head.T, out.logits[0], rtol=0,
                               atol=TOL)
    assert target.cached_length == 7
    # (1, P) input is accepted too and restarts the sequence
    out2 = target.prefill(prompt[None, :4])
    np.testing.assert_allclose(out2.logits[0], full_forward(model, prompt[:4])[0][-1],
                               rtol=0, atol=TOL)
    assert target.cached_length == 4


@pytest.mark.parametrize("seed", [0, 1])
def test_tree_forward_equals_path_forwards(model, seed):
    rng = np.random.default_rng(10 + seed)
    prompt = rng.integers(0, VOCAB, size=int(rng.integers(1, 9)))
    tree = random_tree(rng, 12)
    target = TransformersTarget(model)
    target.prefill(prompt)
    out = target.forward_tree(tree)
    assert out.logits.shape == (12, VOCAB) and out.hidden_states.shape == (12, 32)
    for node in range(tree.num_nodes):
        logits, hidden = full_forward(model, list(prompt) + path_tokens(tree, node))
        np.testing.assert_allclose(out.logits[node], logits[-1], rtol=0, atol=TOL,
                                   err_msg=f"node {node}")
        np.testing.assert_allclose(out.hidden_states[node], hidden[-1], rtol=0, atol=TOL,
                                   err_msg=f"node {node}")
    assert target.cached_length == prompt.shape[0]  # pending until commit


@pytest.mark.parametrize("accepted", [[0], [0, 1], [0, 1, 3], [0, 2, 5], [0, 1, 3, 6]])
def test_commit_keeps_exactly_the_accepted_path(accepted):
    #        0
    #       / \
    #      1   2
    #     / \   \
    #    3   4   5
    #    |
    #    6
    model = tiny_model("llama", seed=3)
    tree = DraftTree([5, 17, 23, 41, 42, 60, 77], [-1, 0, 0, 1, 1, 2, 3])
    prompt = [1, 2, 3, 4]
    target = TransformersTarget(model)
    target.prefill(prompt)
    target.forward_tree(tree)
    target.commit(np.array(accepted))
    assert target.cached_length == len(prompt) + len(accepted)
    kept = prompt + tree.tokens[accepted].tolist()
    # the next round: a fresh tree on top of the compacted cache
    follow = DraftTree([9, 10, 11, 12], [-1, 0, 0, 1])
    out = target.forward_tree(follow)
    for node in range(follow.num_nodes):
        logits, hidden = full_forward(model, kept + path_tokens(follow, node))
        np.testing.assert_allclose(out.logits[node], logits[-1], rtol=0, atol=TOL)
        np.testing.assert_allclose(out.hidden_states[node], hidden[-1], rtol=0, atol=TOL)


def test_many_rounds_of_random_trees_and_paths(model):
    """Ten rounds: random trees, a random accepted path each, against full
    forwards of the sequence so far."""
    rng = np.random.default_rng(7)
    sequence = rng.integers(0, VOCAB, size=5).tolist()
    target = TransformersTarget(model)
    target.prefill(sequence)
    root = int(rng.integers(0, VOCAB))
    for _ in range(10):
        tree = random_tree(rng, int(rng.integers(1, 9)), root=root)
        out = target.forward_tree(tree)
        node = int(rng.integers(0, tree.num_nodes))
        path = tree.path(node)
        logits, hidden = full_forward(model, sequence + path_tokens(tree, node))
        k = len(path)
        np.testing.assert_allclose(out.logits[path], logits[-k:], rtol=0, atol=TOL)
        np.testing.assert_allclose(out.hidden_states[path], hidden[-k:], rtol=0, atol=TOL)
        target.commit(path)
        sequence += path_tokens(tree, node)
        assert target.cached_length == len(sequence)
        root = int(rng.integers(0, VOCAB))


def layer_inputs(model, ids, layers):
    """Inputs of the given decoder layers (forward pre-hooks), concatenated;
    index == num_layers means the final norm's output."""
    captured = {}
    decoder_layers = model.model.layers
    hooks = []
    for i in set(layers):
        if i < len(decoder_layers):
            def hook(module, args, kwargs, i=i):
                captured[i] = (args[0] if args else kwargs["hidden_states"])[0].detach().clone()
            hooks.append(decoder_layers[i].register_forward_pre_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            out = model(torch.tensor([list(ids)]), use_cache=False, output_hidden_states=True)
    finally:
        for h in hooks:
            h.remove()
    captured[len(decoder_layers)] = out.hidden_states[-1][0]
    return torch.cat([captured[i] for i in layers], dim=-1).numpy()


def test_eagle3_layers_are_the_pre_norm_inputs_of_layers_2_mid_and_l_minus_3():
    assert eagle3_layer_indices(32) == (2, 16, 29)
    assert eagle3_layer_indices(7) == (2, 3, 4)
    with pytest.raises(ValueError, match="L >= 7"):
        eagle3_layer_indices(6)
    model = tiny_model("llama", layers=8, seed=5)
    target = TransformersTarget(model, hidden_layers="eagle3")
    assert target.hidden_layers == (2, 4, 5) and target.hidden_size == 96
    rng = np.random.default_rng(3)
    prompt = rng.integers(0, VOCAB, size=6).tolist()
    out = target.prefill(prompt)
    np.testing.assert_allclose(out.hidden_states, layer_inputs(model, prompt, (2, 4, 5)),
                               rtol=0, atol=TOL)
    tree = random_tree(rng, 9)
    out = target.forward_tree(tree)
    for node in range(tree.num_nodes):
        ref = layer_inputs(model, prompt + path_tokens(tree, node), (2, 4, 5))[-1]
        np.testing.assert_allclose(out.hidden_states[node], ref, rtol=0, atol=TOL)
    feats = drafter_features(model, prompt, hidden_layers="eagle3")
    np.testing.assert_allclose(feats.hidden_states, layer_inputs(model, prompt, (2, 4, 5)),
                               rtol=0, atol=TOL)


def test_explicit_hidden_layers_including_embeddings_and_final_norm():
    model = tiny_model("qwen2", layers=2, seed=6)
    target = TransformersTarget(model, hidden_layers=[2, 0, 1])
    assert target.hidden_size == 96
    prompt = [4, 8, 15, 16, 23]
    out = target.prefill(prompt)
    np.testing.assert_allclose(out.hidden_states, layer_inputs(model, prompt, (2, 0, 1)),
                               rtol=0, atol=TOL)
    assert resolve_hidden_layers(model, "last") is None
    for bad, exc in [([3], ValueError), ([], ValueError), ("eagle4", ValueError),
                     ([1.5], TypeError), (3, TypeError)]:
        with pytest.raises(exc):
            TransformersTarget(model, hidden_layers=bad)


def greedy_accept(tree, logits):
    """Reference greedy acceptance: walk from the root, following the child
    whose token is the target's argmax (first max), until none matches."""
    node, path = 0, [0]
    while True:
        best = int(np.argmax(logits[node]))
        match = [c for c in range(tree.num_nodes)
                 if tree.parents[c] == node and tree.tokens[c] == best]
        if not match:
            return path, best
        node = match[0]
        path.append(node)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("drafts", ["oracle-chain", "random-tree"])
def test_minimal_greedy_loop_equals_generate(kind, drafts):
    model = tiny_model(kind, seed=11)
    rng = np.random.default_rng(2)
    prompt = rng.integers(0, VOCAB, size=5).tolist()
    max_new = 24
    with torch.no_grad():
        expected = model.generate(torch.tensor([prompt]), max_new_tokens=max_new,
                                  min_new_tokens=max_new, do_sample=False)[0, 5:].tolist()
    target = TransformersTarget(model)
    out = target.prefill(prompt)
    root = int(np.argmax(out.logits[0]))
    emitted = [root]
    forwards = 0
    while len(emitted) < max_new:
        if drafts == "oracle-chain":
            # the target's own next guesses, half of them spoiled
            guesses = expected[len(emitted):len(emitted) + 4]
            guesses = [g if rng.random() < 0.7 else (g + 1) % VOCAB for g in guesses]
            tree = DraftTree.chain([root] + guesses)
        else:
            tree = random_tree(rng, 10, root=root)
            # plant the right continuation on one branch now and then
            if rng.random() < 0.5:
                tokens = tree.tokens.copy()
                tokens[1] = expected[len(emitted)] if len(emitted) < max_new else 0
                tree = DraftTree(tokens, tree.parents)
        out = target.forward_tree(tree)
        forwards += 1
        path, root = greedy_accept(tree, out.logits)
        target.commit(path)
        emitted += tree.tokens[path[1:]].tolist() + [root]
    assert emitted[:max_new] == expected
    assert target.cached_length == len(prompt) + len(emitted) - 1
    if drafts == "oracle-chain":
        assert forwards < max_new - 1  # some guesses were accepted


def test_eager_attention_float32_agrees_to_rounding():
    model = tiny_model("mistral", seed=4, attention="eager", dtype=torch.float32)
    target = TransformersTarget(model)
    assert target.dtype == np.float32
    prompt = [7, 1, 3, 9]
    target.prefill(prompt)
    tree = random_tree(np.random.default_rng(0), 8)
    out = target.forward_tree(tree)
    assert out.logits.dtype == np.float32
    for node in range(tree.num_nodes):
        logits, hidden = full_forward(model, prompt + path_tokens(tree, node))
        np.testing.assert_allclose(out.logits[node], logits[-1], rtol=0, atol=2e-5)
    target.commit(tree.path(tree.num_nodes - 1))


def test_drafter_helpers(model):
    prompt = [5, 6, 7, 8]
    feats = drafter_features(model, np.array(prompt))
    logits, hidden = full_forward(model, prompt)
    np.testing.assert_allclose(feats.logits, logits, rtol=0, atol=TOL)
    np.testing.assert_allclose(feats.hidden_states, hidden, rtol=0, atol=TOL)
    weights = drafter_weights(model)
    assert weights["embed_tokens"].shape == (VOCAB, 32)
    assert weights["lm_head"].dtype == np.float32
    np.testing.assert_array_equal(
        weights["lm_head"], model.lm_head.weight.detach().numpy().astype(np.float32))
    np.testing.assert_array_equal(
        weights["embed_tokens"],
        model.model.embed_tokens.weight.detach().numpy().astype(np.float32))


def test_misuse_raises_clear_errors():
    model = tiny_model("llama", seed=1)
    target = TransformersTarget(model)
    tree = DraftTree([1, 2, 3], [-1, 0, 1])
    with pytest.raises(RuntimeError, match="before prefill"):
        target.forward_tree(tree)
    target.prefill([1, 2])
    with pytest.raises(RuntimeError, match="without a pending tree"):
        target.commit([0])
    with pytest.raises(TypeError, match="DraftTree"):
        target.forward_tree([1, 2, 3])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        target.forward_tree(DraftTree([1, VOCAB], [-1, 0]))
    target.forward_tree(tree)
    with pytest.raises(RuntimeError, match="not committed"):
        target.forward_tree(tree)
    for bad in ([1, 2], [0, 2], [0, 1, 1], [], [0, 3]):
        with pytest.raises(ValueError):
            target.commit(bad)
    with pytest.raises(TypeError):
        target.commit([0.0, 1.0])
    target.commit([0, 1, 2])
    assert target.cached_length == 5
    for bad, exc in [([], ValueError), ([[1, 2], [3, 4]], ValueError), ([1.0], TypeError),
                     ([-1], ValueError), ([VOCAB], ValueError)]:
        with pytest.raises(exc):
            target.prefill(bad)
    target.reset()
    assert target.cached_length == 0
    with pytest.raises(RuntimeError, match="before prefill"):
        target.forward_tree(tree)
    with pytest.raises(TypeError, match="causal LM"):
        TransformersTarget(object())


def test_unsupported_attention_and_sliding_window(monkeypatch):
    model = tiny_model("llama", seed=2)
    monkeypatch.setattr(model.config, "_attn_implementation", "flex_attention")
    with pytest.raises(ValueError, match="sdpa"):
        TransformersTarget(model)
    config = transformers.MistralConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, sliding_window=6)
    mistral = build(transformers.MistralForCausalLM, config)
    target = TransformersTarget(mistral)
    target.prefill([1, 2, 3, 4])
    with pytest.raises(NotImplementedError, match="sliding window"):
        target.forward_tree(DraftTree.chain([1, 2, 3]))
    target.forward_tree(DraftTree.chain([1, 2]))


def test_core_package_imports_without_torch():
    code = ("import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None\n"
            "import eagle_fast, eagle_fast.speculative, eagle_fast.integrations\n"
            "from eagle_fast.speculative import Target, TargetOutput, DraftTree\n"
            "try:\n"
            "    import eagle_fast.integrations.transformers\n"
            "except ImportError as e:\n"
            "    assert 'eagle-fast[transformers]' in str(e), e\n"
            "else:\n"
            "    raise SystemExit('imported without torch')\n"
            "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd="/")
    assert result.returncode == 0, result.stderr


# -- speculative.generate end to end: token for token model.generate ----------------

def hf_greedy(model, prompt, max_new, eos=None):
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=max_new, do_sample=False,
                             eos_token_id=eos, pad_token_id=eos)
    return out[0, len(prompt):].tolist()


def medusa_heads(num_heads, seed=0, d=32):
    import eagle_fast
    from support import random_head
    rng = np.random.default_rng(seed)
    return eagle_fast.MedusaHeads([
        eagle_fast.DraftHead(*random_head(rng, d, d, VOCAB), residual=True)
        for _ in range(num_heads)])


class SpoiledOracle:
    """Chains of the target's own greedy continuation, each guess spoiled with
    probability ``spoil`` (a drafter that is often but not always right)."""

    def __init__(self, expected, prompt_length, steps=4, spoil=0.3, seed=0):
        self.expected, self.prompt_length = expected, prompt_length
        self.steps, self.spoil = steps, spoil
        self.rng = np.random.default_rng(seed)

    def __call__(self, ids):
        done = len(ids) - self.prompt_length      # tokens emitted so far
        guesses = self.expected[done:done + self.steps]
        return [g if self.rng.random() > self.spoil else (g + 5) % VOCAB for g in guesses]


class RandomTrees:
    def __init__(self, n=10, seed=0):
        self.rng = np.random.default_rng(seed)
        self.n = n

    def propose(self, context):
        return random_tree(self.rng, int(self.rng.integers(1, self.n + 1)),
                           root=context.root_token)

    def reset(self):
        pass


DRAFTER_KINDS = ["plain", "oracle-chain", "random-trees", "medusa-tree", "medusa-mc-sim-63",
                 "medusa-chain"]


def make_drafter(kind, expected, prompt_length):
    if kind == "plain":
        return None, None
    if kind == "oracle-chain":
        return SpoiledOracle(expected, prompt_length), None
    if kind == "random-trees":
        return RandomTrees(), None
    if kind == "medusa-tree":
        return medusa_heads(3), [(0,), (1,), (2,), (0, 0), (0, 1), (1, 0), (0, 0, 0)]
    if kind == "medusa-mc-sim-63":
        return medusa_heads(4, seed=1), "mc_sim_7b_63"
    return medusa_heads(3, seed=2), "chain"


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("drafter_kind", DRAFTER_KINDS)
def test_generate_greedy_equals_model_generate(kind, drafter_kind):
    from eagle_fast.speculative import generate

    model = tiny_model(kind, seed=21)
    target = TransformersTarget(model)
    for prompt in ([5], [17, 3, 44, 9, 2, 71]):
        expected = hf_greedy(model, prompt, 20)
        drafter, tree = make_drafter(drafter_kind, expected, len(prompt))
        result = generate(target, drafter, prompt, max_new_tokens=20, tree=tree)
        assert result.tokens.tolist() == expected, (drafter_kind, prompt)
        assert result.finish_reason == "length"
        if drafter_kind == "oracle-chain":
            assert result.stats.mean_acceptance_length > 1.5


@pytest.mark.parametrize("drafter_kind", ["plain", "oracle-chain", "medusa-tree"])
def test_generate_stops_at_eos_and_max_new_tokens_inside_a_tree(drafter_kind):
    from eagle_fast.speculative import generate

    model = tiny_model("llama", seed=22)
    target = TransformersTarget(model)
    prompt = [8, 6, 4]
    free = hf_greedy(model, prompt, 30)
    position = next(i for i in range(5, 30) if free[i] not in free[:i])
    eos = free[position]
    expected_eos = hf_greedy(model, prompt, 30, eos=eos)
    assert expected_eos == free[:position + 1]
    drafter, tree = make_drafter(drafter_kind, free, len(prompt))
    result = generate(target, drafter, prompt, max_new_tokens=30, eos_token_id=eos, tree=tree)
    assert result.tokens.tolist() == expected_eos and result.finish_reason == "eos"
    for max_new in (1, 7, 11):
        drafter, tree = make_drafter(drafter_kind, free, len(prompt))
        result = generate(target, drafter, prompt, max_new_tokens=max_new, tree=tree)
        assert result.tokens.tolist() == free[:max_new]


def test_generate_sampling_with_top_k_1_is_greedy_and_medusa_needs_last_layer():
    from eagle_fast.speculative import generate

    model = tiny_model("qwen2", seed=23)
    target = TransformersTarget(model)
    expected = hf_greedy(model, [1, 2, 3], 12)
    result = generate(target, RandomTrees(seed=3), [1, 2, 3], max_new_tokens=12,
                      temperature=0.9, top_k=1, rng=0)
    assert result.tokens.tolist() == expected
    sampled = generate(target, medusa_heads(3), [1, 2, 3], max_new_tokens=12, temperature=1.0,
                       rng=1, tree=[(0,), (1,), (0, 0)])
    assert sampled.tokens.shape == (12,)
    eagle3 = TransformersTarget(model, hidden_layers=[0, 1, 2])
    with pytest.raises(ValueError, match="d_model"):
        generate(eagle3, medusa_heads(3), [1, 2, 3], max_new_tokens=5)


def test_llama3_rope_frequencies_equal_transformers():
    """The drafter's llama3 RoPE frequencies are Llama 3.1's, as transformers
    computes them (Llama-3.1-8B settings)."""
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from eagle_fast.models.eagle import EagleConfig, rope_inverse_frequencies
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    hf_config = LlamaConfig(hidden_size=4096, num_attention_heads=32, num_key_value_heads=8,
                            max_position_embeddings=131072, rope_theta=500000.0,
                            rope_scaling=scaling)
    expected, _ = ROPE_INIT_FUNCTIONS["llama3"](hf_config, "cpu")
    ours = EagleConfig.from_dict({
        "hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32,
        "num_key_value_heads": 8, "vocab_size": 128256, "rope_theta": 500000.0,
        "rope_scaling": scaling}, "eagle")
    got = rope_inverse_frequencies(ours, np.float64)
    np.testing.assert_allclose(got, expected.double().numpy(), rtol=1e-6)
    plain = 500000.0 ** (-np.arange(0, 128, 2) / 128)
    assert not np.allclose(got, plain, rtol=1e-3)    # the scaling did something
