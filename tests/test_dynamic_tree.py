"""dynamic_tree (EAGLE-2): against an exhaustive search of the same scoring rule,
hand-worked ties, the d2t mapping, chains and bad input; its row top-k kernel
against a brute-force sort. Every test runs on every backend (the row top-k is
a kernel)."""

from __future__ import annotations

import hashlib
import itertools

import numpy as np
import pytest

from eagle_fast import _backend
from eagle_fast.speculative import DraftTree, dynamic_tree, max_dynamic_tree_tokens


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max()
    return x - np.log(np.exp(x).sum())


def path_logprobs(path: tuple, vocab: int, salt: int = 0) -> np.ndarray:
    """Draft log-probs after ``path`` (a tuple of tokens, root first): a
    deterministic function of the whole path, so a wrong parent shows."""
    digest = hashlib.sha256(repr((salt, path)).encode()).digest()
    seed = int.from_bytes(digest[:8], "little")
    logits = np.random.default_rng(seed).standard_normal(vocab) * 2.0
    return _log_softmax(logits)


class PathDrafter:
    """An ``expand`` callback that keeps, per output row, the path of its node
    (as EAGLE keeps a hidden state per row) and records every call."""

    def __init__(self, root_token: int, vocab: int, salt: int = 0) -> None:
        self.vocab = vocab
        self.salt = salt
        self.rows = [(root_token,)]
        self.calls: list[tuple[list[int], list[int]]] = []

    def root_logprobs(self) -> np.ndarray:
        return path_logprobs(self.rows[0], self.vocab, self.salt)

    def __call__(self, parent_rows: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        assert parent_rows.dtype == np.int64 and tokens.dtype == np.int64
        self.calls.append((parent_rows.tolist(), tokens.tolist()))
        self.rows = [self.rows[p] + (int(t),) for p, t in zip(parent_rows, tokens)]
        return np.stack([path_logprobs(path, self.vocab, self.salt) for path in self.rows])


def exhaustive_reference(root: int, vocab: int, top_k: int, depth: int, total_tokens: int,
                         salt: int = 0):
    """EAGLE-2's rule written out over paths, independently of the code under
    test: every candidate's score, the frontier of each round, the kept nodes
    and their order (scoring order: root's children by rank, then per round
    frontier row by frontier row, children by rank). Returns (tokens, parents,
    scores) of the tree."""
    def ranked(lp: np.ndarray) -> list[int]:
        # best first; the test's scores are distinct, so no tie rule is needed
        return sorted(range(vocab), key=lambda t: -lp[t])[:top_k]

    lp_root = path_logprobs((root,), vocab, salt)
    # scored entries: (scoring position, path, score)
    scored = []
    frontier = []
    for rank, t in enumerate(ranked(lp_root)):
        scored.append(((0, 0, rank), (root, t), float(lp_root[t])))
        frontier.append(((root, t), float(lp_root[t])))
    for round_ in range(depth):
        candidates = []
        for row, (path, score) in enumerate(frontier):
            lp = path_logprobs(path, vocab, salt)
            for rank, t in enumerate(ranked(lp)):
                entry = ((round_ + 1, row, rank), path + (t,), score + float(lp[t]))
                candidates.append(entry)
                scored.append(entry)
        best = sorted(candidates, key=lambda e: -e[2])[:top_k]
        frontier = [(path, score) for _, path, score in best]
    kept = sorted(scored, key=lambda e: -e[2])[:total_tokens - 1]
    kept.sort(key=lambda e: e[0])
    node_of = {(root,): 0}
    tokens, parents, scores = [root], [-1], [0.0]
    for i, (_, path, score) in enumerate(kept, start=1):
        node_of[path] = i
        tokens.append(path[-1])
        parents.append(node_of[path[:-1]])
        scores.append(score)
    return tokens, parents, scores


def test_scores_in_the_test_are_distinct():
    # the exhaustive reference needs no tie rule only if no two scores tie
    vocab, top_k, depth = 6, 3, 3
    _, _, scores = exhaustive_reference(2, vocab, top_k, depth,
                                        max_dynamic_tree_tokens(top_k, depth))
    assert len(set(scores)) == len(scores)


@pytest.mark.parametrize("top_k, depth", [(2, 2), (2, 3), (3, 2), (3, 3), (1, 3), (4, 1),
                                          (3, 0), (6, 2)])
def test_against_exhaustive_search(top_k, depth):
    vocab, root = 6, 4
    limit = max_dynamic_tree_tokens(top_k, depth)
    for total_tokens in sorted({1, 2, top_k + 1, (limit + 1) // 2, limit - 1, limit}):
        if total_tokens < 1:
            continue
        drafter = PathDrafter(root, vocab)
        tree = dynamic_tree(root, drafter.root_logprobs(), drafter, top_k=top_k, depth=depth,
                            total_tokens=total_tokens)
        tokens, parents, scores = exhaustive_reference(root, vocab, top_k, depth, total_tokens)
        assert isinstance(tree, DraftTree)
        assert tree.tokens.tolist() == tokens, total_tokens
        assert tree.parents.tolist() == parents, total_tokens
        np.testing.assert_allclose(tree.scores, scores, rtol=0, atol=1e-12)
        assert len(drafter.calls) == depth


def test_callback_protocol_first_round_and_frontier_order():
    vocab, root, top_k = 6, 1, 3
    drafter = PathDrafter(root, vocab)
    lp_root = drafter.root_logprobs()
    dynamic_tree(root, lp_root, drafter, top_k=top_k, depth=2, total_tokens=8)
    first_rows, first_tokens = drafter.calls[0]
    assert first_rows == [0, 0, 0]
    assert first_tokens == np.argsort(-lp_root)[:top_k].tolist()
    # second call: the best 3 of the 9 grandchildren, in descending score order
    candidates = []
    for row, t in enumerate(first_tokens):
        lp = path_logprobs((root, t), vocab)
        for c in np.argsort(-lp)[:top_k]:
            candidates.append((lp_root[t] + lp[c], row, int(c)))
    candidates.sort(key=lambda e: -e[0])
    rows, tokens = drafter.calls[1]
    assert rows == [row for _, row, _ in candidates[:top_k]]
    assert tokens == [c for _, _, c in candidates[:top_k]]


def test_eagle_buffers_of_a_small_tree():
    # root 0 over V = 4; hand-made log-probs, top_k = 2, depth = 1.
    lp_root = np.log([0.6, 0.3, 0.1, 1e-9])
    rows = {  # by the node's token
        0: np.log([0.05, 0.05, 0.5, 0.4]),   # scores -0.511-0.693, -0.511-0.916
        1: np.log([0.9, 0.04, 0.03, 0.03]),  # scores -1.204-0.105, -1.204-3.219
    }

    def expand(parent_rows, tokens):
        assert parent_rows.tolist() == [0, 0] and tokens.tolist() == [0, 1]
        return np.stack([rows[t] for t in tokens.tolist()])

    tree = dynamic_tree(9, lp_root, expand, top_k=2, depth=1, total_tokens=5)
    # scored, flat: [tok0 -0.51, tok1 -1.20 | (0)->2 -1.20, (0)->3 -1.43,
    # (1)->0 -1.31, (1)->1 -4.42]; the best 4: flats 0, 1, 2, 4 (sorted)
    #        0 (9)
    #       /     \
    #   1 (0)     2 (1)
    #     |         |
    #   3 (2)     4 (0)
    assert tree.tokens.tolist() == [9, 0, 1, 2, 0]
    assert tree.parents.tolist() == [-1, 0, 0, 1, 2]
    np.testing.assert_allclose(tree.scores, [0, np.log(.6), np.log(.3), np.log(.6 * .5),
                                             np.log(.3 * .9)])
    assert tree.position_ids.tolist() == [0, 1, 1, 2, 2]
    np.testing.assert_array_equal(tree.retrieve_indices, [[0, 1, 3], [0, 2, 4]])
    np.testing.assert_array_equal(tree.attention_mask, [
        [1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 0, 1, 0, 0], [1, 1, 0, 1, 0], [1, 0, 1, 0, 1]])


def test_ties_keep_ancestors_and_go_to_the_lowest_index():
    # Two equally likely root children, then certainty (log-prob 0) forever:
    # every node on the two paths scores log(0.5). Ties go to the lowest flat
    # index, so with 3 kept nodes: both root children, then the first one's
    # child -- never a grandchild without its parent (which EAGLE's
    # torch.topk could pick on this tie).
    lp_root = np.array([np.log(0.5), np.log(0.5), -np.inf, -np.inf])
    certain = np.array([[0.0, -np.inf, -np.inf, -np.inf]] * 2)
    with np.errstate(divide="ignore"):
        tree = dynamic_tree(3, lp_root, lambda rows, toks: certain, top_k=2, depth=3,
                            total_tokens=4)
    assert tree.tokens.tolist() == [3, 0, 1, 0]
    assert tree.parents.tolist() == [-1, 0, 0, 1]
    # all 6 finite nodes
    tree = dynamic_tree(3, lp_root, lambda rows, toks: certain, top_k=2, depth=2,
                        total_tokens=7)
    assert tree.parents.tolist() == [-1, 0, 0, 1, 2, 3, 4]
    assert np.isfinite(tree.scores).all()
    # ties within a row: lower token id first
    flat = np.full(5, np.log(0.2))
    tree = dynamic_tree(0, flat, lambda r, t: np.tile(flat, (3, 1)), top_k=3, depth=1,
                        total_tokens=4)
    assert tree.tokens.tolist() == [0, 0, 1, 2]


def test_random_ties_stay_ancestor_closed():
    rng = np.random.default_rng(5)
    vocab = 5
    levels = np.log(np.array([0.4, 0.2, 0.2, 0.1, 0.1]))

    def expand(rows, toks):
        return np.stack([levels[rng.permutation(vocab)] for _ in toks])

    for _ in range(30):
        top_k, depth = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        lp = levels[rng.permutation(vocab)]
        total = int(rng.integers(1, max_dynamic_tree_tokens(top_k, depth) + 1))
        tree = dynamic_tree(0, lp, expand, top_k=top_k, depth=depth, total_tokens=total)
        assert tree.num_nodes == total
        parents = tree.parents
        # a child's score never exceeds its parent's
        assert (tree.scores[1:] <= tree.scores[parents[1:]] + 1e-12).all()


def test_top_k_one_is_a_chain_of_greedy_tokens():
    vocab, root = 7, 2
    drafter = PathDrafter(root, vocab, salt=3)
    tree = dynamic_tree(root, drafter.root_logprobs(), drafter, top_k=1, depth=4,
                        total_tokens=6)
    assert tree.parents.tolist() == [-1, 0, 1, 2, 3, 4]
    path = (root,)
    for node in range(1, 6):
        path = path + (int(np.argmax(path_logprobs(path, vocab, 3))),)
        assert tree.tokens[node] == path[-1]
    assert tree == DraftTree.chain(list(path))


def test_d2t_maps_draft_ids_to_target_ids_and_feeds_target_ids_back():
    vocab_draft, root = 6, 50
    d2t = np.array([3, 10, 20, 7, 40, 2])  # target = draft + d2t[draft]
    target_of = np.arange(vocab_draft) + d2t
    draft_of = {int(t): d for d, t in enumerate(target_of)}
    seen = []

    # a drafter over the draft vocabulary whose log-probs depend on the path
    # of *target* ids (what EAGLE-3 embeds as input_ids)
    rows = [(root,)]

    def expand(parent_rows, tokens):
        nonlocal rows
        seen.extend(tokens.tolist())
        rows = [rows[p] + (int(t),) for p, t in zip(parent_rows, tokens)]
        return np.stack([path_logprobs(path, vocab_draft) for path in rows])

    tree = dynamic_tree(root, path_logprobs((root,), vocab_draft), expand, top_k=2, depth=3,
                        total_tokens=9, d2t=d2t)
    assert set(seen) <= set(target_of.tolist())
    assert set(tree.tokens[1:].tolist()) <= set(target_of.tolist())
    # the same tree in draft space: rebuild the exhaustive reference with the
    # draft ids mapped along each path
    ref_tokens, ref_parents, ref_scores = _exhaustive_d2t(root, vocab_draft, target_of, 2, 3, 9)
    assert tree.tokens.tolist() == ref_tokens
    assert tree.parents.tolist() == ref_parents
    np.testing.assert_allclose(tree.scores, ref_scores, atol=1e-12)
    assert all(draft_of[t] >= 0 for t in tree.tokens[1:].tolist())


def _exhaustive_d2t(root, vocab, target_of, top_k, depth, total_tokens):
    def ranked(lp):
        return sorted(range(vocab), key=lambda t: -lp[t])[:top_k]
    scored, frontier = [], []
    lp_root = path_logprobs((root,), vocab)
    for rank, d in enumerate(ranked(lp_root)):
        t = int(target_of[d])
        scored.append(((0, 0, rank), (root, t), float(lp_root[d])))
        frontier.append(((root, t), float(lp_root[d])))
    for round_ in range(depth):
        cands = []
        for row, (path, score) in enumerate(frontier):
            lp = path_logprobs(path, vocab)
            for rank, d in enumerate(ranked(lp)):
                cands.append(((round_ + 1, row, rank), path + (int(target_of[d]),),
                              score + float(lp[d])))
        scored += cands
        frontier = [(p, s) for _, p, s in sorted(cands, key=lambda e: -e[2])[:top_k]]
    kept = sorted(sorted(scored, key=lambda e: -e[2])[:total_tokens - 1], key=lambda e: e[0])
    node_of = {(root,): 0}
    tokens, parents, scores = [root], [-1], [0.0]
    for i, (_, path, score) in enumerate(kept, start=1):
        node_of[path] = i
        tokens.append(path[-1])
        parents.append(node_of[path[:-1]])
        scores.append(score)
    return tokens, parents, scores


def test_float32_scores_accumulate_in_float32():
    drafter = PathDrafter(0, 6)
    lp32 = drafter.root_logprobs().astype(np.float32)

    def expand(rows, toks):
        return drafter(rows, toks).astype(np.float32)
    tree = dynamic_tree(0, lp32, expand, top_k=2, depth=2, total_tokens=7)
    assert tree.scores.dtype == np.float64
    # float32 sums: each score is exactly representable in float32
    np.testing.assert_array_equal(tree.scores.astype(np.float32).astype(np.float64), tree.scores)


def test_depth_zero_calls_nothing():
    def expand(rows, toks):
        raise AssertionError("expand called")
    tree = dynamic_tree(5, np.log([0.1, 0.2, 0.3, 0.4]), expand, top_k=3, depth=0,
                        total_tokens=3)
    assert tree.tokens.tolist() == [5, 3, 2]
    assert tree.parents.tolist() == [-1, 0, 0]
    root_only = dynamic_tree(5, np.log([0.1, 0.2, 0.3, 0.4]), expand, top_k=3, depth=0,
                             total_tokens=1)
    assert root_only.tokens.tolist() == [5]


def _uniform(rows, toks):
    return np.full((len(toks), 4), np.log(0.25))


LP4 = np.log([0.1, 0.2, 0.3, 0.4])


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(top_k=0, depth=1, total_tokens=2), ValueError, "top_k"),
    (dict(top_k=5, depth=1, total_tokens=2), ValueError, "top_k=5 exceeds"),
    (dict(top_k=2, depth=-1, total_tokens=2), ValueError, "depth"),
    (dict(top_k=2, depth=1, total_tokens=0), ValueError, "total_tokens"),
    (dict(top_k=2, depth=1, total_tokens=8), ValueError, "exceeds the 7 nodes"),
    (dict(top_k=2.0, depth=1, total_tokens=2), TypeError, "top_k"),
    (dict(top_k=True, depth=1, total_tokens=2), TypeError, "top_k"),
])
def test_bad_parameters(kwargs, error, match):
    with pytest.raises(error, match=match):
        dynamic_tree(0, LP4, _uniform, **kwargs)
    # the largest allowed total works
    assert dynamic_tree(0, LP4, _uniform, top_k=2, depth=1, total_tokens=7).num_nodes == 7


@pytest.mark.parametrize("root_lp, error, match", [
    (np.log([[0.5, 0.5]]), ValueError, "shape \\(V,\\)"),
    (np.array([]), ValueError, "shape \\(V,\\)"),
    (np.array([0.0, np.nan, -1, -2]), ValueError, "NaN"),
    (np.array([0.0, np.inf, -1, -2]), ValueError, "\\+inf"),
    (np.array([0.0, 3.0, -1, -2]), ValueError, "<= 0"),
    (np.array(["a", "b"]), TypeError, "float"),
])
def test_bad_root_logprobs(root_lp, error, match):
    with pytest.raises(error, match=match):
        dynamic_tree(0, root_lp, _uniform, top_k=1, depth=1, total_tokens=2)


def test_minus_inf_log_probs_are_allowed():
    with np.errstate(divide="ignore"):
        lp = np.log([0.0, 0.5, 0.5, 0.0])
    tree = dynamic_tree(0, lp, _uniform, top_k=2, depth=1, total_tokens=3)
    assert tree.tokens.tolist() == [0, 1, 2]


@pytest.mark.parametrize("output, match", [
    (np.zeros((2, 3)), "shape \\(top_k, V\\)"),
    (np.zeros((3, 4)), "shape \\(top_k, V\\)"),
    (np.array([[0.0, np.nan, -1, -1]] * 2), "NaN"),
    (np.array([[0.0, np.inf, -1, -1]] * 2), "\\+inf"),
])
def test_bad_expand_output(output, match):
    with pytest.raises(ValueError, match=match):
        dynamic_tree(0, LP4, lambda r, t: output, top_k=2, depth=1, total_tokens=3)


def test_bad_root_token_expand_and_d2t():
    with pytest.raises(ValueError, match="root_token"):
        dynamic_tree(-1, LP4, _uniform, top_k=1, depth=1, total_tokens=2)
    with pytest.raises(TypeError, match="expand"):
        dynamic_tree(0, LP4, None, top_k=1, depth=1, total_tokens=2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="d2t must have shape"):
        dynamic_tree(0, LP4, _uniform, top_k=1, depth=1, total_tokens=2, d2t=[0, 0])
    with pytest.raises(TypeError, match="d2t"):
        dynamic_tree(0, LP4, _uniform, top_k=1, depth=1, total_tokens=2, d2t=[0.0] * 4)
    with pytest.raises(ValueError, match="negative target id"):
        dynamic_tree(0, LP4, _uniform, top_k=1, depth=1, total_tokens=2, d2t=[0, 0, 0, -9])
    # not one-to-one: draft tokens 2 and 3 both map to target 3
    with pytest.raises(ValueError, match="one-to-one"):
        dynamic_tree(0, LP4, lambda r, t: np.tile(np.log([0.1, 0.1, 0.4, 0.4]), (2, 1)),
                     top_k=2, depth=1, total_tokens=3, d2t=[0, 0, 1, 0])


def test_exhaustive_at_every_total_is_a_prefix_of_the_score_order():
    # keeping more nodes never drops one: the kept set grows with total_tokens
    vocab, top_k, depth, root = 6, 3, 2, 0
    previous: set = set()
    for total in range(1, max_dynamic_tree_tokens(top_k, depth) + 1):
        drafter = PathDrafter(root, vocab, salt=9)
        tree = dynamic_tree(root, drafter.root_logprobs(), drafter, top_k=top_k, depth=depth,
                            total_tokens=total)
        paths = {tuple(tree.tokens[tree.path(i)].tolist()) for i in range(tree.num_nodes)}
        assert previous <= paths
        previous = paths
    assert len(previous) == max_dynamic_tree_tokens(top_k, depth)
    assert all(len(p) <= depth + 2 for p in previous)
    assert len(list(itertools.chain(previous))) == len(previous)


# ---------------------------------------------------------------------------
# The row top-k kernel (compiled and fallback) against a brute-force sort
# ---------------------------------------------------------------------------

def brute_topk(rows, k):
    ids = np.array([sorted(range(rows.shape[1]), key=lambda j: (-row[j], j))[:k]
                    for row in rows], dtype=np.int64)
    return ids, np.take_along_axis(rows, ids, axis=1)


def _kernel_topk(rows, k):
    ids = np.full((rows.shape[0], k), -7, dtype=np.int64)
    vals = np.full((rows.shape[0], k), 7, dtype=rows.dtype)
    top = _backend.active().module("tree").row_topk(rows, k, ids, vals)
    assert isinstance(top, float)
    return int(np.isnan(top)), ids, vals


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("vocab", [1, 5, 16, 17, 40, 203])
def test_row_topk_kernel_against_brute_force(dtype, vocab):
    rng = np.random.default_rng(vocab)
    for trial in range(6):
        if trial % 3 == 0:  # many ties
            rows = rng.integers(-4, 1, size=(3, vocab)).astype(dtype)
        elif trial % 3 == 1:  # ties and -inf
            rows = np.where(rng.random((3, vocab)) < 0.3, -np.inf,
                            rng.integers(-3, 1, size=(3, vocab))).astype(dtype)
        else:
            rows = -rng.random((3, vocab)).astype(dtype)
        for k in sorted({1, min(2, vocab), min(3, vocab), vocab}):
            nan, ids, vals = _kernel_topk(rows, k)
            ref_ids, ref_vals = brute_topk(rows, k)
            assert nan == 0
            assert _backend.active().module("tree").row_topk(rows, k, ids, vals) == rows.max()
            np.testing.assert_array_equal(ids, ref_ids)
            np.testing.assert_array_equal(vals, ref_vals)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_topk_kernel_reports_nan_anywhere(dtype):
    for vocab, k in [(40, 3), (203, 10), (7, 7)]:
        for pos in sorted({0, k - 1, min(k, vocab - 1), vocab // 2, vocab - 1}):
            rows = -np.ones((2, vocab), dtype=dtype)
            rows[1, pos] = np.nan
            assert _kernel_topk(rows, k)[0] == 1, (vocab, k, pos)
        assert _kernel_topk(-np.ones((2, vocab), dtype=dtype), k)[0] == 0


def test_row_topk_kernel_on_a_large_row_with_a_late_maximum():
    # the winner sits in the vector scan's tail and mid-block
    rows = np.full((2, 128256), -5.0, dtype=np.float32)
    rows[0, 128255] = -0.5
    rows[0, 70001] = -1.0
    rows[1, 3] = -2.0
    nan, ids, vals = _kernel_topk(rows, 3)
    assert nan == 0
    assert ids[0].tolist() == [128255, 70001, 0]
    assert ids[1].tolist() == [3, 0, 1]
    np.testing.assert_array_equal(vals[0], np.float32([-0.5, -1.0, -5.0]))


def test_float16_log_probs_and_read_only_non_contiguous_input():
    drafter = PathDrafter(0, 6)
    lp = drafter.root_logprobs()
    tree64 = dynamic_tree(0, lp, drafter, top_k=2, depth=2, total_tokens=6)
    drafter16 = PathDrafter(0, 6)
    tree16 = dynamic_tree(0, lp.astype(np.float16), lambda r, t: drafter16(r, t).astype(
        np.float16), top_k=2, depth=1, total_tokens=4)
    assert tree16.tokens[1:3].tolist() == tree64.tokens[1:3].tolist()
    strided = np.repeat(lp, 2)[::2]
    strided.flags.writeable = False
    assert not strided.flags.c_contiguous
    rows = np.repeat(np.tile(lp, (2, 1)), 2, axis=1)[:, ::2]
    rows.flags.writeable = False
    tree = dynamic_tree(0, strided, lambda r, t: rows, top_k=2, depth=2, total_tokens=9)
    plain = np.tile(lp, (2, 1))
    same = dynamic_tree(0, lp.copy(), lambda r, t: plain, top_k=2, depth=2, total_tokens=9)
    assert tree == same
    np.testing.assert_array_equal(tree.scores, same.scores)


def test_slightly_positive_log_probs_still_keep_ancestors():
    # a caller's log-softmax may round the best log-prob to a hair above 0;
    # the child then outscores its parent, yet a kept child keeps its parent
    lp_root = np.array([-1.0, -1.00001, -3.0, -4.0])
    rows = np.array([[5e-4, -2.0, -3.0, -4.0], [-2.0, -2.5, -3.0, -4.0]])
    tree = dynamic_tree(7, lp_root, lambda r, t: rows, top_k=2, depth=1, total_tokens=2)
    assert tree.tokens.tolist() == [7, 0] and tree.parents.tolist() == [-1, 0]
    tree = dynamic_tree(7, lp_root, lambda r, t: rows, top_k=2, depth=1, total_tokens=3)
    assert tree.tokens.tolist() == [7, 0, 0] and tree.parents.tolist() == [-1, 0, 1]
    np.testing.assert_allclose(tree.scores, [0, -1.0, -1.0 + 5e-4])


def test_function_does_not_shadow_a_module():
    """``eagle_fast.speculative.dynamic_tree`` is the function only; its module
    is ``eagle_fast.speculative.dynamic`` (a module of the same name was
    hidden behind the function: ``import eagle_fast.speculative.dynamic_tree
    as m`` gave the function)."""
    import importlib

    import eagle_fast.speculative as speculative
    module = importlib.import_module("eagle_fast.speculative.dynamic")
    assert speculative.dynamic_tree is module.dynamic_tree and callable(module.dynamic_tree)
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("eagle_fast.speculative.dynamic_tree")
