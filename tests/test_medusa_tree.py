"""Static (Medusa) trees: TreeTemplate's buffers against hand-worked
medusa_choices and an independent re-derivation of Medusa's
generate_medusa_buffers semantics; MedusaHeads.draft_tree on every backend
against a float64 NumPy computation of the heads."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from eagle_fast import DraftHead, DraftTree, MedusaHeads, TreeTemplate
from eagle_fast.speculative import MC_SIM_7B_63
from support import backend_independent

independent = backend_independent


def _buffers(choices, top_k=10):
    return TreeTemplate.from_medusa_choices(choices, top_k=top_k).medusa_buffers()


def _check_dtypes(buffers, n):
    assert set(buffers) == {"medusa_attn_mask", "tree_indices", "medusa_position_ids",
                            "retrieve_indices"}
    assert buffers["medusa_attn_mask"].dtype == np.float32
    assert buffers["medusa_attn_mask"].shape == (1, 1, n, n)
    for key in ("tree_indices", "medusa_position_ids", "retrieve_indices"):
        assert buffers[key].dtype == np.int64
    assert buffers["tree_indices"].shape == buffers["medusa_position_ids"].shape == (n,)


# ---------------------------------------------------------------------------
# Hand-worked trees
# ---------------------------------------------------------------------------

@independent
def test_hand_worked_three_choices():
    #        0 root
    #       /  \
    #  [0] 1    2 [1]
    #      |
    # [0,0] 3
    buffers = _buffers([[0, 0], [1], [0]])  # any input order: sorted by (len, value)
    _check_dtypes(buffers, 4)
    np.testing.assert_array_equal(buffers["medusa_attn_mask"][0, 0], [
        [1, 0, 0, 0],
        [1, 1, 0, 0],
        [1, 0, 1, 0],
        [1, 1, 0, 1]])
    # candidates = [root, head0 top10 (1..10), head1 top10 (11..20)]
    assert buffers["tree_indices"].tolist() == [0, 1, 2, 11]
    assert buffers["medusa_position_ids"].tolist() == [0, 1, 1, 2]
    # leaves in decreasing node order ([0,0] then [1]), padded with -1
    assert buffers["retrieve_indices"].tolist() == [[0, 1, 3], [0, 2, -1]]


@independent
def test_hand_worked_six_choices_top_k_3():
    #           0
    #        /     \
    #   [0] 1       2 [1]
    #      / \      |
    # [0,0]3  4[0,1] 5 [1,0]
    #         |
    #         6 [0,1,2]
    choices = [[1], [0], [0, 1], [0, 0], [1, 0], [0, 1, 2]]
    template = TreeTemplate.from_medusa_choices(choices, top_k=3)
    assert template.choices == ((0,), (1,), (0, 0), (0, 1), (1, 0), (0, 1, 2))
    assert template.parents.tolist() == [-1, 0, 0, 1, 1, 2, 4]
    assert template.depths.tolist() == [0, 1, 1, 2, 2, 2, 3]
    assert template.ranks.tolist() == [-1, 0, 1, 0, 1, 0, 2]
    buffers = template.medusa_buffers()
    _check_dtypes(buffers, 7)
    np.testing.assert_array_equal(buffers["medusa_attn_mask"][0, 0], [
        [1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0],
        [1, 0, 1, 0, 0, 0, 0],
        [1, 1, 0, 1, 0, 0, 0],
        [1, 1, 0, 0, 1, 0, 0],
        [1, 0, 1, 0, 0, 1, 0],
        [1, 1, 0, 0, 1, 0, 1]])
    # candidates = [root, head0 (1..3), head1 (4..6), head2 (7..9)]
    assert buffers["tree_indices"].tolist() == [0, 1, 2, 4, 5, 4, 9]
    assert buffers["medusa_position_ids"].tolist() == [0, 1, 1, 2, 2, 2, 3]
    assert buffers["retrieve_indices"].tolist() == [
        [0, 1, 4, 6],
        [0, 2, 5, -1],
        [0, 1, 3, -1]]
    # the DraftTree shape has the same rows in increasing leaf order
    assert template.shape.retrieve_indices.tolist() == buffers["retrieve_indices"][::-1].tolist()


@independent
def test_hand_worked_chain():
    buffers = _buffers([[0], [0, 0], [0, 0, 0]])
    assert buffers["tree_indices"].tolist() == [0, 1, 11, 21]
    assert buffers["retrieve_indices"].tolist() == [[0, 1, 2, 3]]
    np.testing.assert_array_equal(buffers["medusa_attn_mask"][0, 0], np.tril(np.ones((4, 4))))


# ---------------------------------------------------------------------------
# An independent re-derivation of Medusa's buffers, from its documented
# semantics, over Python lists (list.index lookups, a backwards walk).
# ---------------------------------------------------------------------------

def medusa_semantics(choices, top_k=10):
    ordered = sorted([list(c) for c in choices], key=lambda c: (len(c), c))
    n = len(ordered) + 1
    mask = [[1.0 if j == i or j == 0 else 0.0 for j in range(n)] for i in range(n)]
    tree_indices = [0] * n
    positions = [0] * n
    for j, choice in enumerate(ordered):
        node = j + 1
        for length in range(1, len(choice)):
            mask[node][ordered.index(choice[:length]) + 1] = 1.0
        tree_indices[node] = 1 + top_k * (len(choice) - 1) + choice[-1]
        positions[node] = len(choice)
    rows, covered = [], []
    for choice in reversed(ordered):
        if choice in covered:
            continue
        row = [0]
        for length in range(1, len(choice) + 1):
            row.append(ordered.index(choice[:length]) + 1)
            covered.append(choice[:length])
        rows.append(row)
    width = max(len(r) for r in rows)
    rows = [r + [-1] * (width - len(r)) for r in rows]
    return mask, tree_indices, positions, rows


@independent
@pytest.mark.parametrize("choices, top_k", [
    (MC_SIM_7B_63, 10),
    ([[0], [0, 0], [1], [0, 1], [2], [0, 0, 0], [1, 0], [0, 2]], 10),
    ([[3], [2, 2], [2], [2, 1], [2, 1, 0], [0]], 4),
])
def test_buffers_match_medusa_semantics(choices, top_k):
    buffers = _buffers(choices, top_k)
    mask, tree_indices, positions, rows = medusa_semantics(choices, top_k)
    np.testing.assert_array_equal(buffers["medusa_attn_mask"][0, 0], np.array(mask))
    assert buffers["tree_indices"].tolist() == tree_indices
    assert buffers["medusa_position_ids"].tolist() == positions
    assert buffers["retrieve_indices"].tolist() == rows


@independent
def test_mc_sim_7b_63_shape_and_first_rows():
    assert len(MC_SIM_7B_63) == 63
    template = TreeTemplate.from_medusa_choices("mc_sim_7b_63")
    assert template == TreeTemplate.from_medusa_choices(MC_SIM_7B_63)
    assert template.num_nodes == 64 and template.max_depth == 4 and template.top_k == 10
    buffers = template.medusa_buffers()
    _check_dtypes(buffers, 64)
    depth_counts = np.bincount(template.depths).tolist()
    assert depth_counts == [1, 10, 28, 23, 2]  # counted by hand in Medusa's list
    # depth 1: [0]..[9] are nodes 1..10 and take head 0's ranks 0..9
    assert buffers["tree_indices"][:11].tolist() == list(range(11))
    # depth 2 starts with [0, 0], [0, 1], ..., [0, 9] -> head 1's ranks at 11..20
    assert template.choices[10:20] == tuple((0, r) for r in range(10))
    assert buffers["tree_indices"][11:21].tolist() == list(range(11, 21))
    # the last two nodes: [0,0,0,0] (62), [0,0,0,1] (63), at candidates 31 and 32
    assert template.choices[-2:] == ((0, 0, 0, 0), (0, 0, 0, 1))
    assert buffers["tree_indices"][-2:].tolist() == [31, 32]
    # node of [0, 0, 0] = 1 + 10 + 28 + 0 = 39; first retrieve row is the
    # last choice [0, 0, 0, 1]: root, [0] = 1, [0, 0] = 11, [0, 0, 0] = 39, 63
    assert template.choices[38] == (0, 0, 0)
    retrieve = buffers["retrieve_indices"]
    assert retrieve.shape == (int(template.shape.is_leaf.sum()), 5)
    assert retrieve[0].tolist() == [0, 1, 11, 39, 63]
    assert retrieve[1].tolist() == [0, 1, 11, 39, 62]
    assert buffers["medusa_position_ids"][[0, 1, 10, 11, 38, 39, 63]].tolist() == \
        [0, 1, 1, 2, 2, 3, 4]
    # every row of the mask has depth + 1 ones
    np.testing.assert_array_equal(buffers["medusa_attn_mask"][0, 0].sum(axis=1),
                                  template.depths + 1)


@independent
def test_buffers_are_fresh_copies():
    template = TreeTemplate.from_medusa_choices([[0], [1]])
    first = template.medusa_buffers()
    first["tree_indices"][0] = 99
    first["retrieve_indices"][0, 0] = 99
    again = template.medusa_buffers()
    assert again["tree_indices"][0] == 0 and again["retrieve_indices"][0, 0] == 0


@independent
@pytest.mark.parametrize("choices, top_k, error, match", [
    ([[0, 0]], 10, ValueError, "prefix-closed"),
    ([[0], [1, 0, 0], [1, 0]], 10, ValueError, "prefix \\[1\\]"),
    ([[0], [0]], 10, ValueError, "more than once"),
    ([[0], [10]], 10, ValueError, "rank 10"),
    ([[0], [0, 3]], 3, ValueError, "rank 3"),
    ([[0], [-1]], 10, ValueError, "rank -1"),
    ([], 10, ValueError, "at least one"),
    ([[0], []], 10, ValueError, "empty"),
    ([[0]], 0, ValueError, "top_k"),
    ([[0.5]], 10, TypeError, "integer"),
    ([7], 10, TypeError, "sequence"),
    ("no_such_tree", 10, ValueError, "mc_sim_7b_63"),
])
def test_bad_choices(choices, top_k, error, match):
    with pytest.raises(error, match=match):
        TreeTemplate.from_medusa_choices(choices, top_k=top_k)


# ---------------------------------------------------------------------------
# build: filling the template from a per-head top-k table
# ---------------------------------------------------------------------------

@independent
def test_build_from_a_topk_table():
    choices = [[1], [0], [0, 1], [0, 0], [1, 0], [0, 1, 2]]
    template = TreeTemplate.from_medusa_choices(choices, top_k=3)
    table = np.array([[10, 11, 12], [20, 21, 22], [30, 31, 32]])
    lp = np.log(np.array([[0.5, 0.3, 0.1], [0.6, 0.2, 0.1], [0.4, 0.3, 0.2]]))
    tree = template.build(7, table, lp)
    assert isinstance(tree, DraftTree)
    # node tokens: [0]->10, [1]->11, [0,0]->20, [0,1]->21, [1,0]->20, [0,1,2]->32
    assert tree.tokens.tolist() == [7, 10, 11, 20, 21, 20, 32]
    assert tree.parents.tolist() == template.parents.tolist()
    np.testing.assert_allclose(tree.scores, np.log(
        [1, 0.5, 0.3, 0.5 * 0.6, 0.5 * 0.2, 0.3 * 0.6, 0.5 * 0.2 * 0.2]), rtol=1e-13)
    # Medusa's tree_candidates = candidates[tree_indices]
    candidates = np.concatenate(([7], table.ravel()))
    assert candidates[template.tree_indices].tolist() == tree.tokens.tolist()
    # extra heads / wider tables are fine; no log-probs, no scores
    wide = np.arange(5 * 8).reshape(5, 8)
    assert template.build(0, wide).scores is None
    with pytest.raises(ValueError, match="num_heads >= 3"):
        template.build(0, table[:2])
    with pytest.raises(ValueError, match="k >= 3"):
        template.build(0, table[:, :2])
    with pytest.raises(ValueError, match="shape of head_topk_tokens"):
        template.build(0, table, lp[:, :2])
    with pytest.raises(TypeError, match="integer"):
        template.build(0, table.astype(float))
    with pytest.raises(ValueError, match="NaN"):
        template.build(0, table, np.full((3, 3), np.nan))
    with pytest.raises(ValueError, match="root_token"):
        template.build(-1, table)


@independent
def test_template_pickles_and_exposes_its_shape():
    template = TreeTemplate.from_medusa_choices("mc_sim_7b_63")
    assert pickle.loads(pickle.dumps(template)) == template
    shape = template.shape
    assert shape.num_nodes == 64
    np.testing.assert_array_equal(shape.parents, template.parents)
    np.testing.assert_array_equal(shape.depths, template.depths)
    assert "num_nodes=64" in repr(template)


# ---------------------------------------------------------------------------
# MedusaHeads.draft_tree, every backend, against float64 NumPy
# ---------------------------------------------------------------------------

def _heads(rng, n_heads, d_model, vocab, dtype):
    heads = []
    for _ in range(n_heads):
        W = rng.standard_normal((d_model, d_model)) / np.sqrt(d_model)
        b = rng.standard_normal(d_model) * 0.1
        L = rng.standard_normal((vocab, d_model)) * 1.5
        heads.append(DraftHead(W.astype(dtype), b.astype(dtype), L.astype(dtype),
                               residual=True))
    return MedusaHeads(heads)


def _float64_heads(medusa, hidden, temperature):
    """Ranked tokens and log-probs of every head, in float64 from the weights."""
    ranked, logprobs = [], []
    h = np.asarray(hidden, dtype=np.float64)
    for head in medusa:
        W = head.projection_weight.astype(np.float64)
        b = head.projection_bias.astype(np.float64)
        L = head.lm_head_weight.astype(np.float64)
        v = W @ h + b
        x = h + v / (1 + np.exp(-v))
        logits = (L @ x) / temperature
        lp = logits - logits.max()
        lp = lp - np.log(np.exp(lp).sum())
        order = np.argsort(-logits, kind="stable")
        ranked.append(order)
        logprobs.append(lp)
    return ranked, logprobs


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-10), (np.float32, 2e-5)])
@pytest.mark.parametrize("choices, top_k, temperature", [
    ("mc_sim_7b_63", 10, 1.0),
    ([[1], [0], [0, 1], [0, 0], [1, 0], [0, 1, 2], [2]], 3, 0.7),
])
def test_draft_tree_matches_float64_heads(dtype, tol, choices, top_k, temperature):
    rng = np.random.default_rng(11)
    medusa = _heads(rng, 4, 24, 300, dtype)
    hidden = rng.standard_normal(24)
    template = TreeTemplate.from_medusa_choices(choices, top_k=top_k)
    tree = medusa.draft_tree(hidden, 5, template, temperature=temperature)
    ranked, logprobs = _float64_heads(medusa, hidden, temperature)
    assert tree.tokens[0] == 5
    assert tree.parents.tolist() == template.parents.tolist()
    expected_scores = [0.0]
    for node, choice in enumerate(template.choices, start=1):
        depth = len(choice)
        assert tree.tokens[node] == ranked[depth - 1][choice[-1]], choice
        expected_scores.append(sum(logprobs[d][ranked[d][choice[d]]] for d in range(depth)))
    np.testing.assert_allclose(tree.scores, expected_scores, rtol=tol, atol=tol)
    if choices == "mc_sim_7b_63" and top_k == 10:
        # choices given directly (or by name) make a top_k=10 template
        again = medusa.draft_tree(hidden, 5, choices, temperature=temperature)
        assert again == tree


def test_draft_tree_errors():
    rng = np.random.default_rng(3)
    medusa = _heads(rng, 3, 8, 40, np.float64)
    hidden = rng.standard_normal(8)
    with pytest.raises(ValueError, match="only 3 Medusa heads"):
        medusa.draft_tree(hidden, 0, "mc_sim_7b_63")  # 4 deep
    with pytest.raises(ValueError, match="prefix-closed"):
        medusa.draft_tree(hidden, 0, [[0, 0]])
    with pytest.raises(ValueError, match="d_model"):
        medusa.draft_tree(np.stack([hidden, hidden]), 0, [[0]])
    with pytest.raises(ValueError):
        medusa.draft_tree(hidden[:5], 0, [[0]])
    small = _heads(rng, 2, 8, 6, np.float64)
    with pytest.raises(ValueError, match="top_k"):
        small.draft_tree(hidden, 0, [[0], [0, 1]])  # top_k=10 > vocab 6
    tree = small.draft_tree(hidden, 0, TreeTemplate.from_medusa_choices([[0], [0, 5]], 6))
    assert tree.num_nodes == 3
