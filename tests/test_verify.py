"""Verification (greedy, typical, chain conventions, errors) against independent
references: EAGLE's / Medusa's evaluate_posterior re-derived over the tree's
retrieve_indices in plain NumPy, hand-worked cases, and brute force.  The
statistical (losslessness) tests are in test_verify_lossless.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from eagle_fast.speculative import (
    AcceptanceStats,
    DraftTree,
    Verification,
    verify_chain,
    verify_greedy,
    verify_sampling,
    verify_sampling_many,
    verify_typical,
    warp_probs,
)

#        0 (root, token 7)
#       / \
#  (1) 3   4 (2)
#     / \    \
# (3) 5  6 (4) 8 (5)
#     |
# (6) 9
HAND = DraftTree([7, 3, 4, 5, 6, 8, 9], [-1, 0, 0, 1, 1, 2, 3])


def one_hot_logits(n, vocab, argmax_tokens, dtype=np.float32):
    logits = np.zeros((n, vocab), dtype=dtype)
    for row, token in enumerate(argmax_tokens):
        logits[row, token] = 5.0
    return logits


# -- greedy ---------------------------------------------------------------------

def eagle_greedy_reference(tree, logits):
    """EAGLE's evaluate_posterior, greedy branch, over retrieve_indices: per
    path, the count of leading tokens equal to the argmax of the row before;
    the first path of maximal count; the next token is the argmax of the row
    of its last accepted node."""
    ri = tree.retrieve_indices
    counts = []
    for row in ri:
        count = 0
        for j in range(1, ri.shape[1]):
            node = row[j]
            if node < 0 or tree.tokens[node] != np.argmax(logits[row[j - 1]]):
                break
            count += 1
        counts.append(count)
    best = int(np.argmax(counts))       # first maximum
    path = ri[best, :counts[best] + 1]
    return path.tolist(), int(np.argmax(logits[path[-1]]))


def test_greedy_hand_drawn():
    # root argmax 3 -> node 1; node 1 argmax 5 -> node 3; node 3 argmax 2 (not 9)
    logits = one_hot_logits(7, 10, [3, 5, 0, 2, 0, 0, 0])
    v = verify_greedy(HAND, logits)
    assert isinstance(v, Verification)
    assert v.accepted_nodes.tolist() == [0, 1, 3]
    assert v.accepted_tokens.tolist() == [3, 5]
    assert v.num_accepted == 2 and v.next_token == 2
    assert v.tokens.tolist() == [3, 5, 2]
    # full path to the leaf: bonus token from the leaf's row
    logits = one_hot_logits(7, 10, [3, 5, 0, 9, 0, 0, 4])
    v = verify_greedy(HAND, logits)
    assert v.accepted_nodes.tolist() == [0, 1, 3, 6] and v.next_token == 4
    # nothing accepted: the correction is the root row's argmax
    logits = one_hot_logits(7, 10, [1, 0, 0, 0, 0, 0, 0])
    v = verify_greedy(HAND, logits)
    assert v.accepted_nodes.tolist() == [0] and v.num_accepted == 0 and v.next_token == 1
    assert v.accepted_tokens.shape == (0,)


def test_greedy_first_max_tie_rule():
    logits = np.zeros((7, 10), dtype=np.float64)
    logits[0, [3, 4]] = 1.0   # tie between tokens 3 and 4: the lowest id (3) wins
    v = verify_greedy(HAND, logits)
    assert v.accepted_nodes.tolist() == [0, 1] and v.next_token == 0


def test_greedy_duplicate_children_prefers_longer_then_first_path():
    # root's children 1 and 2 share token 3; only node 2's subtree goes on.
    tree = DraftTree([0, 3, 3, 5, 6], [-1, 0, 0, 1, 2])
    logits = one_hot_logits(5, 8, [3, 1, 6, 0, 0])
    v = verify_greedy(tree, logits)
    assert v.accepted_nodes.tolist() == [0, 2, 4]
    # both go on equally: the first path in retrieve_indices (leaf 3, via node 1)
    logits = one_hot_logits(5, 8, [3, 5, 6, 0, 0])
    assert verify_greedy(tree, logits).accepted_nodes.tolist() == [0, 1, 3]


@st.composite
def trees_and_logits(draw):
    n = draw(st.integers(1, 14))
    vocab = draw(st.integers(2, 6))
    parents = [-1] + [draw(st.integers(0, i - 1)) for i in range(1, n)]
    tokens = draw(st.lists(st.integers(0, vocab - 1), min_size=n, max_size=n))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    values = draw(st.lists(st.integers(-2, 2), min_size=n * vocab, max_size=n * vocab))
    logits = np.array(values, dtype=dtype).reshape(n, vocab)   # small ints: many ties
    return DraftTree(tokens, parents), logits


@given(trees_and_logits())
def test_greedy_matches_eagle_reference(case):
    tree, logits = case
    v = verify_greedy(tree, logits)
    path, next_token = eagle_greedy_reference(tree, logits)
    assert v.accepted_nodes.tolist() == path
    assert v.next_token == next_token
    assert v.accepted_tokens.tolist() == tree.tokens[path[1:]].tolist()


@given(trees_and_logits())
def test_greedy_is_longest_valid_path_brute_force(case):
    # every node whose path is all-argmax, by brute force over all nodes
    tree, logits = case
    valid = [node for node in range(tree.num_nodes)
             if all(tree.tokens[b] == np.argmax(logits[a])
                    for a, b in zip(tree.path(node)[:-1], tree.path(node)[1:]))]
    v = verify_greedy(tree, logits)
    assert v.num_accepted == max(int(tree.depths[node]) for node in valid)
    assert int(v.accepted_nodes[-1]) in valid


def test_sampling_temperature_zero_is_greedy():
    logits = one_hot_logits(7, 10, [3, 5, 0, 2, 0, 0, 0])
    v = verify_sampling(HAND, logits, temperature=0, rng=np.random.default_rng(0))
    assert v == verify_greedy(HAND, logits)
    assert v.accepted_nodes.tolist() == [0, 1, 3] and v.next_token == 2


def test_greedy_reads_float32_and_float64_alike():
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((7, 50))
    logits[0, 3] = logits[1, 5] = 10
    a = verify_greedy(HAND, logits)
    b = verify_greedy(HAND, logits.astype(np.float32))
    assert a.accepted_nodes.tolist() == b.accepted_nodes.tolist() == [0, 1, 3]
    assert a.next_token == b.next_token


# -- typical (Medusa) -----------------------------------------------------------

def medusa_typical_reference(tree, logits, temperature, threshold, alpha):
    """Medusa's evaluate_posterior (typical branch) over retrieve_indices, in
    float64, then Medusa's next token (argmax of the last accepted row)."""
    ri = tree.retrieve_indices
    lengths, logliks = [], []
    for row in ri:
        length, loglik = 0, 0.0
        for j in range(1, ri.shape[1]):
            node = row[j]
            if node < 0:
                break
            z = logits[row[j - 1]].astype(np.float64) / temperature
            p = np.exp(z - z.max())
            p /= p.sum()
            entropy = -np.sum(p * np.log(p + 1e-5))
            px = p[tree.tokens[node]]
            if not px > min(threshold, alpha * np.exp(-entropy)):
                break
            length += 1
            loglik += np.log(px)
        lengths.append(length)
        logliks.append(loglik)
    best_length = max(lengths)
    candidates = [r for r in range(len(ri)) if lengths[r] == best_length]
    best = candidates[int(np.argmax([logliks[r] for r in candidates]))]
    path = ri[best, :best_length + 1]
    return path.tolist(), int(np.argmax(logits[path[-1]]))


def test_typical_hand_made():
    # root row: p(3) ~ 0.6, p(4) ~ 0.3 over 10 tokens; both exceed the threshold,
    # node 1's row flat (entropy high): node 1's children need p > min(.09, .3/10)
    # = 0.03; node 2's row peaked on 8.
    logits = np.full((7, 10), -4.0)
    logits[0, 3], logits[0, 4] = math.log(6.0) + 2, math.log(3.0) + 2
    logits[1] = 0.0
    logits[2, 8] = 3.0
    v = verify_typical(HAND, logits, temperature=1.0)
    ref = medusa_typical_reference(HAND, logits, 1.0, 0.09, 0.3)
    assert v.accepted_nodes.tolist() == ref[0] and v.next_token == ref[1]
    # node 1 (flat row): each child has p = 0.1 > 0.03, accepted; depth 2 through
    # node 1 (nodes 3, 4) and node 2 (node 5); node 3 continues to 6 if row 3 allows.
    assert v.num_accepted >= 2
    # by the formula: with row 3 peaked on 9, path 0-1-3-6 is the only depth 3
    logits[3] = -4.0
    logits[3, 9] = 4.0
    v = verify_typical(HAND, logits, temperature=1.0)
    assert v.accepted_nodes.tolist() == [0, 1, 3, 6]
    assert v.next_token == int(np.argmax(logits[6]))


@given(trees_and_logits(), st.sampled_from([0.5, 1.0, 1.7]),
       st.sampled_from([(0.09, 0.3), (0.3, 0.9), (0.01, 0.05)]))
def test_typical_matches_medusa_reference(case, temperature, params):
    tree, logits = case
    logits = logits * 1.3 + np.arange(logits.shape[1]) * 0.01   # break likelihood ties
    v = verify_typical(tree, logits, temperature=temperature, posterior_threshold=params[0],
                       posterior_alpha=params[1])
    path, next_token = medusa_typical_reference(tree, logits, temperature, *params)
    assert v.accepted_nodes.tolist() == path and v.next_token == next_token


def test_typical_temperature_zero_is_greedy():
    logits = one_hot_logits(7, 10, [3, 5, 0, 2, 0, 0, 0])
    v = verify_typical(HAND, logits, temperature=0)
    assert v.accepted_nodes.tolist() == [0, 1, 3] and v.next_token == 2


# -- sampling: conventions --------------------------------------------------------

def test_sampling_same_seed_same_result_and_batch_equals_calls():
    rng = np.random.default_rng(7)
    logits = rng.standard_normal((7, 12)) * 2
    q = rng.dirichlet(np.ones(12), size=7)
    for tree in (HAND, DraftTree(HAND.tokens, HAND.parents, draft_probs=q)):
        a = verify_sampling(tree, logits, temperature=0.8, rng=np.random.default_rng(5))
        b = verify_sampling(tree, logits, temperature=0.8, rng=np.random.default_rng(5))
        assert a.accepted_nodes.tolist() == b.accepted_nodes.tolist()
        assert a.next_token == b.next_token
        gen = np.random.default_rng(11)
        singles = [verify_sampling(tree, logits, temperature=0.8, top_k=6, top_p=0.9, rng=gen)
                   for _ in range(40)]
        many = verify_sampling_many(tree, logits, 40, temperature=0.8, top_k=6, top_p=0.9,
                                    rng=np.random.default_rng(11))
        assert len(many) == 40
        for r, single in enumerate(singles):
            assert many[r].accepted_nodes.tolist() == single.accepted_nodes.tolist()
            assert many[r].next_token == single.next_token
            assert many.num_accepted[r] == single.num_accepted


def test_sampling_certain_target_accepts_its_tokens():
    # p puts all its mass on the tree's path 0-1-3-6 (one-hot rows, logits -1e4
    # elsewhere): always accepted, bonus from row 6.
    logits = np.full((7, 10), -1e4)
    for node, token in [(0, 3), (1, 5), (3, 9), (6, 2)]:
        logits[node, token] = 0.0
    many = verify_sampling_many(HAND, logits, 200, temperature=1.0,
                                rng=np.random.default_rng(0))
    assert (many.num_accepted == 3).all() and (many.next_token == 2).all()
    assert (many.accepted_nodes == [0, 1, 3, 6]).all()


def test_warp_probs_matches_hf_definition():
    # HF: TemperatureLogitsWarper, TopKLogitsWarper (< k-th largest -> -inf),
    # TopPLogitsWarper (ascending sort, remove cumulative <= 1 - top_p, keep >= 1).
    rng = np.random.default_rng(2)
    for _ in range(20):
        logits = rng.standard_normal(30) * 2
        t, k, top_p = rng.uniform(0.3, 2), int(rng.integers(0, 35)), rng.uniform(0.05, 1)
        z = logits / t
        if 0 < k < 30:
            z = np.where(z < np.sort(z)[-k], -np.inf, z)
        order = np.argsort(z)                     # ascending, no ties here
        probs = np.exp(z[order] - z.max())
        probs /= probs.sum()
        remove = np.cumsum(probs) <= 1 - top_p
        remove[-1] = False
        z[order[remove]] = -np.inf
        expected = np.exp(z - z.max())
        expected /= expected.sum()
        np.testing.assert_allclose(warp_probs(logits, temperature=t, top_k=k, top_p=top_p),
                                   expected, rtol=1e-12, atol=1e-15)


def test_warp_probs_matches_transformers_warpers():
    torch = pytest.importorskip("torch")
    logits_process = pytest.importorskip("transformers.generation.logits_process")
    rng = np.random.default_rng(4)
    logits = rng.standard_normal((5, 40))
    processors = logits_process.LogitsProcessorList([
        logits_process.TemperatureLogitsWarper(0.7),
        logits_process.TopKLogitsWarper(12),
        logits_process.TopPLogitsWarper(0.8),
    ])
    warped = processors(None, torch.tensor(logits))
    expected = torch.softmax(warped, dim=-1).numpy()
    np.testing.assert_allclose(warp_probs(logits, temperature=0.7, top_k=12, top_p=0.8),
                               expected, rtol=1e-9, atol=1e-12)


# -- chains: conventions ----------------------------------------------------------

def test_chain_conventions():
    vocab = 4
    eye = np.eye(vocab)
    tokens = np.array([[1, 2], [1, 2], [3, 0]])
    q = np.stack([eye[[1, 2]], eye[[1, 2]], eye[[3, 0]]])
    p = np.stack([
        eye[[1, 2, 3]],          # agrees everywhere: both accepted, bonus 3
        eye[[1, 0, 3]],          # rejects token 2: recovers 0 from max(p - q, 0)
        eye[[2, 0, 1]],          # rejects the first: recovers 2
    ])
    out = verify_chain(tokens, q, p, rng=np.random.default_rng(0))
    assert out.dtype == np.int64 and out.shape == (3, 3)
    assert out.tolist() == [[1, 2, 3], [1, 0, -1], [2, -1, -1]]
    # q = p: always accepted (min(1, p/q) = 1)
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(vocab), size=(50, 3))
    drafts = np.array([[rng.choice(vocab, p=probs[b, j]) for j in range(2)] for b in range(50)])
    out = verify_chain(drafts, probs[:, :2], probs, rng=rng)
    assert (out[:, :2] == drafts).all() and (out[:, 2] >= 0).all()
    # k = 0: just the bonus token
    out = verify_chain(np.zeros((2, 0), dtype=np.int64), np.zeros((2, 0, vocab)),
                       eye[[[2], [1]]], rng=rng)
    assert out.tolist() == [[2], [1]]


# -- statistics -------------------------------------------------------------------

def test_acceptance_stats():
    stats = AcceptanceStats()
    assert math.isnan(stats.mean_acceptance_length)
    logits = one_hot_logits(7, 10, [3, 5, 0, 9, 0, 0, 4])
    stats.add(verify_greedy(HAND, logits), num_draft_tokens=6)          # 3 accepted
    stats.add(verify_greedy(HAND, one_hot_logits(7, 10, [1] * 7)))      # 0 accepted
    stats.add(verify_greedy(HAND, one_hot_logits(7, 10, [4, 0, 8, 0, 0, 1, 0])))  # 2
    assert stats.num_verifications == 3
    assert stats.num_accepted_tokens == 5 and stats.num_emitted_tokens == 8
    assert stats.mean_acceptance_length == pytest.approx(1 + 5 / 3)
    assert stats.tokens_per_target_forward == pytest.approx(8 / 3)
    assert stats.histogram.tolist() == [1, 0, 1, 1]
    np.testing.assert_allclose(stats.acceptance_rates, [2 / 3, 2 / 3, 1 / 3])
    np.testing.assert_allclose(stats.conditional_acceptance_rates, [2 / 3, 1, 1 / 2])
    assert stats.draft_acceptance_rate == pytest.approx(5 / 6)
    d = stats.as_dict()
    assert d["histogram"] == [1, 0, 1, 1] and d["mean_acceptance_length"] == pytest.approx(8 / 3)
    assert "tau=2.667" in repr(stats)
    merged = stats.merge(stats)
    assert merged.histogram.tolist() == [2, 0, 2, 2]
    batch = AcceptanceStats()
    batch.add_many(np.array([3, 0, 2]))
    assert batch.histogram.tolist() == stats.histogram.tolist()


# -- errors -----------------------------------------------------------------------

def test_bad_inputs():
    logits = np.zeros((7, 10), dtype=np.float32)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"shape \(7, V\)"):
        verify_greedy(HAND, logits[:6])
    with pytest.raises(ValueError, match="vocabulary"):
        verify_greedy(HAND, logits[:, :9])         # token 9 needs V >= 10
    with pytest.raises(TypeError, match="DraftTree"):
        verify_greedy([0, 1], logits)
    with pytest.raises(TypeError, match="float"):
        verify_greedy(HAND, logits.astype(np.int32))
    bad = logits.copy()
    bad[0, 4] = np.nan
    for call in (lambda: verify_greedy(HAND, bad),
                 lambda: verify_sampling(HAND, bad, temperature=1, rng=rng),
                 lambda: verify_typical(HAND, bad, temperature=1)):
        with pytest.raises(ValueError, match=r"target_logits\[0\].*NaN or inf"):
            call()
    bad = logits.copy()
    bad[0, 3] = 5
    bad[1, 2] = np.inf                             # row 1 is visited (token 3 accepted)
    with pytest.raises(ValueError, match=r"target_logits\[1\]"):
        verify_greedy(HAND, bad)
    with pytest.raises(ValueError, match="temperature"):
        verify_sampling(HAND, logits, temperature=-1, rng=rng)
    with pytest.raises(ValueError, match="top_p"):
        verify_sampling(HAND, logits, temperature=1, top_p=0, rng=rng)
    with pytest.raises(ValueError, match="top_k"):
        verify_sampling(HAND, logits, temperature=1, top_k=-2, rng=rng)
    with pytest.raises(TypeError, match="Generator"):
        verify_sampling(HAND, logits, temperature=1, rng=0)
    q_tree = DraftTree(HAND.tokens, HAND.parents, draft_probs=np.full((7, 12), 1 / 12))
    with pytest.raises(ValueError, match="draft_probs has a vocabulary"):
        verify_sampling(q_tree, logits, temperature=1, rng=rng)
    eye = np.eye(4)
    with pytest.raises(ValueError, match="sums to"):
        verify_chain([[1]], [[eye[1] * 0.5]], [eye[[1, 2]]], rng=rng)
    with pytest.raises(ValueError, match="negative"):
        verify_chain([[1]], [[eye[1] * 2 - eye[0]]], [eye[[1, 2]]], rng=rng)
    with pytest.raises(ValueError, match="NaN or inf"):
        verify_chain([[1]], [[eye[1] * np.nan]], [eye[[1, 2]]], rng=rng)
    with pytest.raises(ValueError, match=r"target_probs must have shape \(1, 2, V\)"):
        verify_chain([[1]], [[eye[1]]], [eye[[1]]], rng=rng)
    with pytest.raises(ValueError, match=r"draft_tokens must lie in \[0, 4\)"):
        verify_chain([[7]], [[eye[1]]], [eye[[1, 2]]], rng=rng)


# -- the kernels' row passes at realistic widths (vector lanes and tails) ------------

@pytest.mark.parametrize("vocab", [7, 8, 9, 33, 1003, 4099])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_greedy_argmax_wide_rows(vocab, dtype):
    rng = np.random.default_rng(vocab)
    tokens = rng.integers(0, vocab, size=6)
    tree = DraftTree.chain(tokens)
    for trial in range(20):
        logits = rng.integers(-3, 3, size=(6, vocab)).astype(dtype)   # many ties
        depth = int(rng.integers(0, 6))
        for i in range(depth):
            logits[i, tokens[i + 1]] = 3      # the max (possibly tied further on)
        if trial % 2:
            logits[:, 0] = 3                  # a tie at index 0 wins
        v = verify_greedy(tree, logits)
        path, next_token = eagle_greedy_reference(tree, logits)
        assert v.accepted_nodes.tolist() == path and v.next_token == next_token


@pytest.mark.parametrize("vocab", [5, 8, 1003, 32003])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("warp", [(1.0, 0, 1.0), (0.7, 0, 1.0), (1.3, 40, 1.0), (0.9, 0, 0.8),
                                  (1.0, 7, 0.5), (1.1, 100, 0.9)])
def test_sampling_final_draw_is_the_inverse_cdf(vocab, dtype, warp):
    # A root-only tree: the next token is the inverse CDF of p at the run's last
    # uniform -- computed here from float64 NumPy (warp_probs) and rng's stream.
    temperature, top_k, top_p = warp
    rng = np.random.default_rng(vocab)
    logits = (rng.standard_normal((1, vocab)) * 3).astype(dtype)
    tree = DraftTree([0], [-1])
    runs = 200
    many = verify_sampling_many(tree, logits, runs, temperature=temperature, top_k=top_k,
                                top_p=top_p, rng=np.random.default_rng(1))
    u = np.random.default_rng(1).random((runs, 1))[:, 0]
    p = warp_probs(logits[0].astype(np.float64), temperature=temperature, top_k=top_k,
                   top_p=top_p)
    cdf = np.cumsum(p)
    expected = np.searchsorted(cdf, u * cdf[-1], side="right")
    assert (many.num_accepted == 0).all()
    assert np.mean(many.next_token == expected) >= 0.995   # rounding at a boundary only
    assert (p[many.next_token] > 0).all()


def test_kernel_and_fallback_share_the_api(active_backend):
    from eagle_fast import _backend
    from support import require_compiled
    module = _backend.active().module("verify")
    fallback = _backend.load("python").module("verify")
    for name in ("greedy", "sample"):
        assert callable(getattr(module, name)) and callable(getattr(fallback, name))
    if active_backend[0] == "compiled":
        path = module.__file__ or ""
        assert path.endswith((".so", ".pyd")) or not require_compiled(), path
        expected = "_verify_kernel_v3" if active_backend[1] == "x86-64-v3" else "_verify_kernel"
        assert module.__name__.rsplit(".", 1)[1] == expected
