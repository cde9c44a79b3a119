"""speculative.generate with a NumPy target (no torch): greedy output equal to
step-by-step greedy decoding of the same model, whatever the drafter; the
drafter's calling convention; EOS / max_new_tokens inside an accepted path;
losslessness at T > 0 by a chi-square test on the joint of the generated
tokens, with a broken verification rule that must fail the same test."""

from __future__ import annotations

import itertools
import sys

import numpy as np
import pytest

import eagle_fast
from eagle_fast.speculative import (AcceptanceStats, ChainDrafter, DraftContext, DraftTree,
                                    Drafter, EagleTreeDrafter, MedusaDrafter, NoDrafter, Target,
                                    TargetOutput, Verification, as_drafter, generate)
from support import backend_independent, random_head

scipy_stats = pytest.importorskip("scipy.stats")


class TrigramTarget:
    """A Target whose next-token logits depend on the last two tokens only
    (``table[a, b]``, the first position seeing ``a = 0``), with hidden states
    ``embed[a] + 2 * embed[b]`` -- a stand-in that checks the protocol's
    bookkeeping (prefix, pending tree, commit) as it goes."""

    def __init__(self, vocab: int, d: int = 16, seed: int = 0, scale: float = 3.0) -> None:
        rng = np.random.default_rng(seed)
        self.vocab_size = vocab
        self.hidden_size = d
        self.hidden_layers = None
        self.table = rng.standard_normal((vocab, vocab, vocab)) * scale
        self.embed = rng.standard_normal((vocab, d))
        self.sequence: list[int] = []
        self.pending = None
        self.forwards = 0
        self.depths: list[int] = []

    @property
    def cached_length(self) -> int:
        return len(self.sequence)

    def logits_after(self, seq) -> np.ndarray:
        a = seq[-2] if len(seq) >= 2 else 0
        return self.table[a, seq[-1]]

    def hidden_after(self, seq) -> np.ndarray:
        a = seq[-2] if len(seq) >= 2 else 0
        return self.embed[a] + 2 * self.embed[seq[-1]]

    def reset(self) -> None:
        self.sequence, self.pending = [], None

    def prefill(self, input_ids) -> TargetOutput:
        self.sequence = [int(t) for t in np.asarray(input_ids).reshape(-1)]
        self.pending = None
        self.forwards += 1
        hidden = np.array([self.hidden_after(self.sequence[:j + 1])
                           for j in range(len(self.sequence))])
        return TargetOutput(self.logits_after(self.sequence)[None].copy(), hidden)

    def forward_tree(self, tree: DraftTree) -> TargetOutput:
        assert self.pending is None, "forward_tree twice without commit"
        self.forwards += 1
        rows, hidden = [], []
        for node in range(tree.num_nodes):
            seq = self.sequence + tree.tokens[tree.path(node)].tolist()
            rows.append(self.logits_after(seq))
            hidden.append(self.hidden_after(seq))
        self.pending = tree
        self.depths.append(tree.max_depth)
        return TargetOutput(np.array(rows), np.array(hidden))

    def commit(self, accepted_nodes) -> None:
        tree, self.pending = self.pending, None
        nodes = np.asarray(accepted_nodes)
        assert nodes[0] == 0 and all(tree.parents[b] == a for a, b in zip(nodes, nodes[1:]))
        self.sequence += tree.tokens[nodes].tolist()


def greedy_reference(target, prompt, max_new, eos=()):
    seq, out = list(prompt), []
    while len(out) < max_new:
        token = int(np.argmax(target.logits_after(seq)))
        out.append(token)
        seq.append(token)
        if token in eos:
            break
    return out


class RandomTreeDrafter:
    """Random trees (tokens and shapes) rooted at the last token; optionally
    plants the target's greedy continuation along node 1's branch."""

    def __init__(self, vocab, n=8, seed=0, oracle=None, spoil=0.0):
        self.vocab, self.n, self.seed = vocab, n, seed
        self.oracle, self.spoil = oracle, spoil
        self.rng = np.random.default_rng(seed)   # not reset per sequence
        self.calls = 0

    def reset(self):
        self.calls = 0

    def propose(self, context: DraftContext) -> DraftTree:
        self.calls += 1
        rng = self.rng
        n = int(rng.integers(1, self.n + 1))
        parents = [-1] + [int(rng.integers(0, i)) for i in range(1, n)]
        tokens = rng.integers(0, self.vocab, size=n)
        tokens[0] = context.root_token
        if self.oracle is not None:
            # plant the greedy continuation along the first-child chain
            seq, node = context.input_ids.tolist(), 0
            while True:
                kids = [i for i in range(n) if parents[i] == node]
                if not kids:
                    break
                guess = int(np.argmax(self.oracle.logits_after(seq)))
                if rng.random() < self.spoil:
                    guess = (guess + 1) % self.vocab
                node = kids[0]
                tokens[node] = guess
                seq.append(guess)
        return DraftTree(tokens, parents)


def test_protocols_are_runtime_checkable():
    assert isinstance(TrigramTarget(5), Target)
    for drafter in (NoDrafter(), ChainDrafter(lambda ids: []), RandomTreeDrafter(5)):
        assert isinstance(drafter, Drafter)


@pytest.mark.parametrize("kind", ["none", "oracle-chain", "random-chain", "random-tree",
                                  "oracle-tree", "medusa-tree", "medusa-chain"])
@pytest.mark.parametrize("prompt", [[3], [1, 4, 1, 5, 9, 2]])
def test_greedy_equals_step_by_step_greedy(kind, prompt):
    vocab = 12
    target = TrigramTarget(vocab, seed=1)
    rng = np.random.default_rng(0)
    tree = None
    if kind == "none":
        drafter = None
    elif kind == "oracle-chain":
        twin = TrigramTarget(vocab, seed=1)

        def drafter(ids):
            return greedy_reference(twin, ids.tolist(), 4)
    elif kind == "random-chain":
        def drafter(ids):
            return rng.integers(0, vocab, size=3).tolist()
    elif kind == "random-tree":
        drafter = RandomTreeDrafter(vocab, seed=2)
    elif kind == "oracle-tree":
        drafter = RandomTreeDrafter(vocab, seed=3, oracle=TrigramTarget(vocab, seed=1),
                                    spoil=0.2)
    else:
        heads = eagle_fast.MedusaHeads([
            eagle_fast.DraftHead(*random_head(rng, 16, 16, vocab), residual=True)
            for _ in range(3)])
        drafter = heads
        tree = "chain" if kind == "medusa-chain" else [(0,), (1,), (0, 0), (0, 1), (1, 0),
                                                       (0, 0, 0), (0, 0, 1)]
    expected = greedy_reference(target, prompt, 30)
    result = generate(target, drafter, prompt, max_new_tokens=30, tree=tree)
    assert result.tokens.tolist() == expected
    assert result.tokens.dtype == np.int64
    assert result.finish_reason == "length"
    assert result.num_target_forwards == target.forwards
    assert isinstance(result.stats, AcceptanceStats)
    # every emitted token came from a verification or the prefill
    assert result.stats.num_emitted_tokens + 1 >= 30
    if kind in ("oracle-chain", "oracle-tree"):
        assert result.stats.mean_acceptance_length > 1.5
    if kind == "none":
        assert result.stats.mean_acceptance_length == 1.0
    timings = result.timings
    parts = timings.drafting + timings.target_forward + timings.verification + \
        timings.bookkeeping
    assert timings.total >= 0 and abs(parts - timings.total) < 1e-6 + 1e-9 * timings.total


@pytest.mark.parametrize("max_new", [1, 2, 5, 6, 7, 13])
def test_max_new_tokens_exact_even_inside_an_accepted_chain(max_new):
    vocab = 10
    target = TrigramTarget(vocab, seed=4)

    twin = TrigramTarget(vocab, seed=4)

    def oracle(ids):
        return greedy_reference(twin, ids.tolist(), 5)   # always fully accepted: 6 per round

    result = generate(target, oracle, [2, 7], max_new_tokens=max_new)
    assert result.tokens.tolist() == greedy_reference(target, [2, 7], max_new)
    assert result.finish_reason == "length"
    assert result.num_target_forwards == 1 + -(-(max_new - 1) // 6)
    # the last tree is cut to what can still be emitted (a depth-d path emits d + 1)
    if max_new > 1:
        assert target.depths[-1] == min(5, (max_new - 1) - 6 * (len(target.depths) - 1) - 1)
    # the target's cache stays consistent: it holds the prompt and what was committed
    assert target.pending is None
    assert target.sequence[:2 + max_new - 1] == [2, 7] + result.tokens[:-1].tolist()


def test_eos_stops_inside_an_accepted_chain_and_is_emitted():
    vocab = 10
    target = TrigramTarget(vocab, seed=5)
    free = greedy_reference(target, [1, 2], 40)
    # an EOS whose first occurrence is well inside the run
    position = next(i for i in range(4, 40) if free[i] not in free[:i])
    eos = free[position]

    twin = TrigramTarget(vocab, seed=5)

    def oracle(ids):
        return greedy_reference(twin, ids.tolist(), 5)

    for drafter in (oracle, None, RandomTreeDrafter(vocab, seed=1)):
        result = generate(target, drafter, [1, 2], max_new_tokens=40, eos_token_id=eos)
        assert result.tokens.tolist() == free[:position + 1]
        assert result.finish_reason == "eos"
    # a collection of EOS ids; EOS as the very first token
    result = generate(target, oracle, [1, 2], max_new_tokens=40, eos_token_id=[eos, 99])
    assert result.tokens.tolist() == free[:position + 1]
    result = generate(target, oracle, [1, 2], max_new_tokens=40, eos_token_id=free[0])
    assert result.tokens.tolist() == free[:1] and result.num_target_forwards == 1


def test_max_new_tokens_zero_runs_nothing():
    target = TrigramTarget(6)
    result = generate(target, None, [1, 2], max_new_tokens=0)
    assert result.tokens.shape == (0,) and target.forwards == 0


class RecordingEagle:
    """Duck-typed EagleDrafter: checks the context contract (hidden rows of
    the positions not yet seen, paired with the following tokens)."""

    def __init__(self, target):
        self.target = target
        self.seen = 0
        self.calls = []

    def reset(self):
        self.seen = 0

    def _check(self, hidden_states, input_ids):
        ids = np.asarray(input_ids).tolist()
        k = hidden_states.shape[0]
        assert self.seen + k == len(ids) - 1   # rows for every position but the root's
        for j in range(k):
            pos = self.seen + j
            np.testing.assert_allclose(hidden_states[j], self.target.hidden_after(ids[:pos + 1]))
        self.seen += k

    def draft_tree(self, hidden_states, input_ids, *, top_k, depth, total_tokens):
        self._check(hidden_states, input_ids)
        self.calls.append(("tree", top_k, depth, total_tokens))
        root = int(np.asarray(input_ids)[-1])
        return DraftTree([root, (root + 1) % 7, (root + 2) % 7], [-1, 0, 1])

    def draft_chain(self, hidden_states, input_ids, steps):
        self._check(hidden_states, input_ids)
        self.calls.append(("chain", steps))
        root = int(np.asarray(input_ids)[-1])
        return DraftTree.chain([root] + [(root + i) % 7 for i in range(1, steps + 1)])


@pytest.mark.parametrize("tree, call", [(None, ("tree", 8, 5, 60)),
                                        ({"top_k": 3, "total_tokens": 10}, ("tree", 3, 5, 10)),
                                        ("chain", ("chain", 5)),
                                        ({"chain": 2}, ("chain", 2))])
def test_eagle_adapter_calling_convention(tree, call):
    target = TrigramTarget(7, seed=6)
    eagle = RecordingEagle(target)
    result = generate(target, eagle, [3, 1, 4], max_new_tokens=20, tree=tree)
    assert result.tokens.tolist() == greedy_reference(target, [3, 1, 4], 20)
    assert set(eagle.calls) == {call}
    assert isinstance(as_drafter(eagle, tree), EagleTreeDrafter)


def test_medusa_adapter_defaults_and_errors():
    rng = np.random.default_rng(0)
    heads4 = eagle_fast.MedusaHeads([eagle_fast.DraftHead(*random_head(rng, 16, 16, 20),
                                                          residual=True) for _ in range(4)])
    assert as_drafter(heads4).template.num_nodes == 64   # mc_sim_7b_63 + root
    heads2 = eagle_fast.MedusaHeads(list(heads4)[:2])
    assert as_drafter(heads2).template.num_nodes == 3    # a chain of the two heads
    assert as_drafter(heads4, {"chain": 1}).template.num_nodes == 2
    assert as_drafter(heads4, {"chain": 0}).template is None
    with pytest.raises(ValueError, match="heads"):
        MedusaDrafter(heads2, "mc_sim_7b_63")
    with pytest.raises(ValueError, match="heads"):
        MedusaDrafter(heads2, {"chain": 3})
    target = TrigramTarget(20, d=12)
    with pytest.raises(ValueError, match="d_model"):
        generate(target, heads2, [1, 2], max_new_tokens=5)


def test_bad_arguments():
    target = TrigramTarget(6)
    for kwargs, exc in [({"max_new_tokens": -1}, ValueError), ({"max_new_tokens": 2.0}, TypeError),
                        ({"max_new_tokens": 3, "temperature": -1.0}, ValueError),
                        ({"max_new_tokens": 3, "temperature": float("nan")}, ValueError),
                        ({"max_new_tokens": 3, "temperature": 1.0, "top_p": 0.0}, ValueError),
                        ({"max_new_tokens": 3, "eos_token_id": -2}, ValueError),
                        ({"max_new_tokens": 3, "tree": "chain"}, ValueError)]:
        with pytest.raises(exc):
            generate(target, None, [1, 2], **kwargs)
    with pytest.raises(ValueError, match="vocabulary"):
        generate(target, None, [1, 6], max_new_tokens=3)
    with pytest.raises(TypeError, match="cannot draft"):
        generate(target, 42, [1, 2], max_new_tokens=3)

    class WrongRoot:
        def propose(self, context):
            return DraftTree.chain([(context.root_token + 1) % 6, 0])

        def reset(self):
            pass

    with pytest.raises(ValueError, match="root token"):
        generate(target, WrongRoot(), [1, 2], max_new_tokens=3)


def test_sampling_is_reproducible_and_top_k_1_is_greedy():
    target = TrigramTarget(9, seed=7)
    a = generate(target, RandomTreeDrafter(9, seed=4), [1, 2], max_new_tokens=25,
                 temperature=0.8, rng=123)
    b = generate(target, RandomTreeDrafter(9, seed=4), [1, 2], max_new_tokens=25,
                 temperature=0.8, rng=np.random.default_rng(123))
    drafter = RandomTreeDrafter(9, seed=4)
    assert a.tokens.tolist() == b.tokens.tolist()
    g = generate(target, drafter, [1, 2], max_new_tokens=25, temperature=0.7, top_k=1, rng=5)
    assert g.tokens.tolist() == greedy_reference(target, [1, 2], 25)


# -- losslessness at T > 0 ------------------------------------------------------

V_STAT = 3
LENGTH = 3          # the first token from the prefill, two more through trees
RUNS = 3000


def reference_warp(logits, temperature, top_k, top_p):
    """HF's order: temperature, top-k (ties kept), top-p (keep a token iff the
    mass ranked above it is < top_p), softmax -- written out plainly."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    if top_k:
        z = np.where(z >= np.sort(z)[::-1][top_k - 1], z, -np.inf)
    p = np.exp(z - z.max())
    p /= p.sum()
    if top_p < 1.0:
        order = sorted(range(len(p)), key=lambda i: (-p[i], i))
        above, keep = 0.0, np.zeros(len(p), dtype=bool)
        for i in order:
            keep[i] = above < top_p
            above += p[i]
        p = np.where(keep, p, 0.0)
        p /= p.sum()
    return p


def exact_distribution(target, prompt, temperature, top_k, top_p):
    cells = list(itertools.product(range(V_STAT), repeat=LENGTH))
    probs = []
    for cell in cells:
        seq, p = list(prompt), 1.0
        for token in cell:
            dist = reference_warp(target.logits_after(seq), temperature, top_k, top_p)
            p *= dist[token]
            seq.append(token)
        probs.append(p)
    return cells, np.array(probs)


def chi_square_pvalue(target, drafter, prompt, temperature, top_k=0, top_p=1.0, seed=0):
    rng = np.random.default_rng(seed)
    cells, probs = exact_distribution(target, prompt, temperature, top_k, top_p)
    index = {c: i for i, c in enumerate(cells)}
    counts = np.zeros(len(cells))
    for _ in range(RUNS):
        out = generate(target, drafter, prompt, max_new_tokens=LENGTH,
                       temperature=temperature, top_k=top_k, top_p=top_p, rng=rng)
        counts[index[tuple(out.tokens.tolist())]] += 1
    keep = probs > 0
    assert counts[~keep].sum() == 0, "a sequence of probability 0 was generated"
    # pool the rare cells so every expected count is >= 5
    expected = probs[keep] * RUNS
    observed = counts[keep]
    order = np.argsort(expected)
    rare = order[np.cumsum(expected[order]) < 10]
    pooled_e, pooled_o = np.delete(expected, rare), np.delete(observed, rare)
    if rare.size:
        pooled_e = np.append(pooled_e, expected[rare].sum())
        pooled_o = np.append(pooled_o, observed[rare].sum())
    return scipy_stats.chisquare(pooled_o, pooled_e).pvalue


STAT_CASES = [
    pytest.param("tree", 1.0, 0, 1.0, id="random-trees-T1"),
    pytest.param("chain", 0.7, 0, 1.0, id="oracle-chains-T0.7"),
    pytest.param("tree", 1.3, 2, 0.9, id="random-trees-T1.3-topk2-topp0.9"),
]


# One backend is enough here: the verification kernels' losslessness is tested
# on every backend in test_verify; this checks the loop around them.
@backend_independent
@pytest.mark.parametrize("drafts, temperature, top_k, top_p", STAT_CASES)
def test_sampled_sequences_follow_the_target_distribution(drafts, temperature, top_k, top_p):
    target = TrigramTarget(V_STAT, seed=8, scale=1.5)
    if drafts == "tree":
        drafter = RandomTreeDrafter(V_STAT, n=6, seed=9)
    else:
        twin = TrigramTarget(V_STAT, seed=8, scale=1.5)

        def drafter(ids):
            return greedy_reference(twin, ids.tolist(), 3)
    p = chi_square_pvalue(target, drafter, [0, 1], temperature, top_k, top_p, seed=11)
    assert p > 1e-4, f"chi-square p = {p:.3g}"


@backend_independent
def test_the_chi_square_test_catches_a_broken_rule(monkeypatch):
    """Accept every first child outright (no rejection step): biased towards the
    drafter's guesses -- must fail the same test."""
    loop = sys.modules["eagle_fast.speculative.loop"]
    real = loop.verify_sampling

    def accept_first_children(tree, logits, **kwargs):
        honest = real(tree, logits, **kwargs)
        path = [0]
        while len(tree.children(path[-1])):
            path.append(int(tree.children(path[-1])[0]))
        if len(path) == 1:
            return honest
        nodes = np.array(path)
        return Verification(nodes, tree.tokens[nodes[1:]], len(path) - 1,
                            int(np.argmax(logits[path[-1]])))

    monkeypatch.setattr(loop, "verify_sampling", accept_first_children)
    target = TrigramTarget(V_STAT, seed=8, scale=1.5)
    p = chi_square_pvalue(target, RandomTreeDrafter(V_STAT, n=6, seed=9), [0, 1], 1.0, seed=11)
    assert p < 1e-6, f"the broken rule passed: p = {p:.3g}"


test_protocols_are_runtime_checkable = backend_independent(test_protocols_are_runtime_checkable)
test_bad_arguments = backend_independent(test_bad_arguments)
test_max_new_tokens_zero_runs_nothing = backend_independent(test_max_new_tokens_zero_runs_nothing)


@backend_independent
def test_prune_keeps_the_shallow_nodes_in_order():
    from eagle_fast.speculative.loop import _prune

    #      0
    #     / \
    #    1   2
    #   / \   \
    #  3   4   5
    #  |
    #  6
    probs = np.full((7, 4), 0.25)
    tree = DraftTree([7, 3, 4, 5, 6, 8, 9], [-1, 0, 0, 1, 1, 2, 3],
                     scores=np.arange(7) * -1.0, draft_probs=probs)
    assert _prune(tree, 3) is tree
    cut = _prune(tree, 1)
    assert cut.tokens.tolist() == [7, 3, 4] and cut.parents.tolist() == [-1, 0, 0]
    assert cut.scores.tolist() == [0.0, -1.0, -2.0] and cut.draft_probs.shape == (3, 4)
    cut = _prune(tree, 2)
    assert cut.tokens.tolist() == [7, 3, 4, 5, 6, 8]
    assert cut.parents.tolist() == [-1, 0, 0, 1, 1, 2]
    assert _prune(tree, 0).tokens.tolist() == [7]


def eagle_drafter_for(target, weight_dtype, seed=0):
    """A random EAGLE-1 drafter over ``target``'s hidden size and vocabulary,
    its matrices stored as ``weight_dtype``."""
    d, vocab, inter = target.hidden_size, target.vocab_size, 40
    rng = np.random.default_rng(seed)
    heads, kv = 4, 2
    hd = d // heads

    def w(*shape):
        return rng.normal(0, 0.3, shape)
    weights = {"fc.weight": w(d, 2 * d), "fc.bias": w(d),
               "layers.0.self_attn.q_proj.weight": w(heads * hd, d),
               "layers.0.self_attn.k_proj.weight": w(kv * hd, d),
               "layers.0.self_attn.v_proj.weight": w(kv * hd, d),
               "layers.0.self_attn.o_proj.weight": w(d, heads * hd),
               "layers.0.mlp.gate_proj.weight": w(inter, d),
               "layers.0.mlp.up_proj.weight": w(inter, d),
               "layers.0.mlp.down_proj.weight": w(d, inter),
               "layers.0.post_attention_layernorm.weight": np.ones(d),
               "embed_tokens.weight": target.embed}
    config = {"hidden_size": d, "intermediate_size": inter, "num_attention_heads": heads,
              "num_key_value_heads": kv, "num_hidden_layers": 1, "vocab_size": vocab,
              "bias": True}
    return eagle_fast.EagleDrafter.from_state_dict(
        weights, config, lm_head=rng.normal(0, 1.0, (vocab, d)), weight_dtype=weight_dtype)


@pytest.mark.parametrize("weight_dtype", ["float32", "bfloat16", "float16", "int8", "q8",
                                          "q4"])
@pytest.mark.parametrize("tree", [None, {"top_k": 3, "depth": 3, "total_tokens": 12},
                                  {"chain": 4}])
def test_quantized_eagle_drafters_keep_greedy_output(weight_dtype, tree):
    """Whatever the drafter's storage (d = 48: full and short q8/q4 groups),
    greedy speculative generation emits the target's own greedy tokens."""
    target = TrigramTarget(12, d=48, seed=7)
    drafter = eagle_drafter_for(target, weight_dtype)
    assert set(drafter.weight_dtypes.values()) == {weight_dtype}
    prompt = [1, 4, 1, 5, 9, 2]
    result = generate(target, drafter, prompt, max_new_tokens=20, tree=tree)
    assert result.tokens.tolist() == greedy_reference(target, prompt, 20)
    assert result.stats.num_verifications >= 1
