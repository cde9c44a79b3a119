"""DraftTree: buffers against hand-drawn trees and a brute-force construction."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from eagle_fast.speculative import DraftTree
from support import backend_independent

pytestmark = backend_independent

#        0 (root, token 7)
#       / \
#  (1) 3   4 (2)
#     / \    \
# (3) 5  6 (4) 8 (5)
#     |
# (6) 9
HAND_TOKENS = [7, 3, 4, 5, 6, 8, 9]
HAND_PARENTS = [-1, 0, 0, 1, 1, 2, 3]


def test_hand_drawn_tree_buffers():
    tree = DraftTree(HAND_TOKENS, HAND_PARENTS)
    assert tree.depths.tolist() == [0, 1, 1, 2, 2, 2, 3]
    assert tree.position_ids.tolist() == [0, 1, 1, 2, 2, 2, 3]
    expected_mask = np.array([
        [1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0],
        [1, 0, 1, 0, 0, 0, 0],
        [1, 1, 0, 1, 0, 0, 0],
        [1, 1, 0, 0, 1, 0, 0],
        [1, 0, 1, 0, 0, 1, 0],
        [1, 1, 0, 1, 0, 0, 1],
    ], dtype=bool)
    assert tree.attention_mask.dtype == bool
    np.testing.assert_array_equal(tree.attention_mask, expected_mask)
    # leaves 4, 5, 6 in increasing node order, padded to max_depth + 1 = 4
    np.testing.assert_array_equal(tree.retrieve_indices, [
        [0, 1, 4, -1],
        [0, 2, 5, -1],
        [0, 1, 3, 6],
    ])
    assert tree.leaves.tolist() == [4, 5, 6]
    assert tree.children(1).tolist() == [3, 4]
    assert tree.children(6).tolist() == []
    assert tree.path(6).tolist() == [0, 1, 3, 6]
    assert tree.num_nodes == len(tree) == 7 and tree.max_depth == 3
    for name in ("tokens", "parents", "depths", "attention_mask", "retrieve_indices"):
        array = getattr(tree, name)
        assert array.dtype in (np.int64, np.bool_)
        with pytest.raises(ValueError):
            array[0] = 1  # read-only


def test_root_only_and_chain():
    root = DraftTree([5], [-1])
    np.testing.assert_array_equal(root.retrieve_indices, [[0]])
    np.testing.assert_array_equal(root.attention_mask, [[True]])
    chain = DraftTree.chain([1, 2, 3, 4])
    assert chain.parents.tolist() == [-1, 0, 1, 2]
    np.testing.assert_array_equal(chain.retrieve_indices, [[0, 1, 2, 3]])
    np.testing.assert_array_equal(chain.attention_mask, np.tril(np.ones((4, 4), bool)))


@pytest.mark.parametrize("parents, message", [
    ([0, 0, 1], "parents\\[0\\] must be -1"),
    ([-1, 1, 0], "parents\\[1\\]"),
    ([-1, 0, 5], "parents\\[2\\]"),
    ([-1, 0, -1], "parents\\[2\\]"),
    ([-1, 2, 0], "parents\\[1\\]"),
    ([-1, 0], "entries"),
])
def test_bad_parents(parents, message):
    with pytest.raises(ValueError, match=message):
        DraftTree([1, 2, 3], parents)


def test_bad_inputs():
    with pytest.raises(ValueError, match="empty"):
        DraftTree([], [])
    with pytest.raises(TypeError):
        DraftTree([1.5, 2.0], [-1, 0])
    with pytest.raises(ValueError, match="negative"):
        DraftTree([1, -2], [-1, 0])
    with pytest.raises(ValueError, match="shape"):
        DraftTree([1, 2], [-1, 0], scores=[0.0])
    with pytest.raises(ValueError, match="NaN"):
        DraftTree([1, 2], [-1, 0], scores=[0.0, np.nan])
    with pytest.raises(ValueError, match="sums to"):
        DraftTree([1, 2], [-1, 0], draft_probs=[[0, 0], [0.5, 0.2]])
    with pytest.raises(ValueError, match="negative"):
        DraftTree([1, 2], [-1, 0], draft_probs=[[0, 0], [1.5, -0.5]])
    with pytest.raises(ValueError, match="NaN or inf"):
        DraftTree([1, 2], [-1, 0], draft_probs=[[0, 0], [np.nan, 1]])
    with pytest.raises(ValueError, match="shape"):
        DraftTree([1, 2], [-1, 0], draft_probs=[0.5, 0.5])


def _brute_force(parents):
    """Ancestor sets by walking up from every node; paths to every leaf."""
    n = len(parents)
    mask = np.zeros((n, n), bool)
    depth = np.zeros(n, int)
    for i in range(n):
        j = i
        while j != -1:
            mask[i, j] = True
            depth[i] += 1
            j = parents[j]
    depth -= 1
    leaves = [i for i in range(n) if i not in set(parents[1:])]
    width = depth.max() + 1
    rows = []
    for leaf in leaves:
        path = []
        j = leaf
        while j != -1:
            path.append(j)
            j = parents[j]
        path = path[::-1]
        rows.append(path + [-1] * (width - len(path)))
    return mask, depth, np.array(rows)


@given(st.lists(st.floats(0, 1, exclude_max=True), min_size=0, max_size=40),
       st.integers(0, 2**31))
def test_random_trees_against_brute_force(fractions, seed):
    parents = [-1] + [int(f * i) for i, f in enumerate(fractions, start=1)]
    tokens = np.random.default_rng(seed).integers(0, 100, len(parents))
    tree = DraftTree(tokens, parents)
    mask, depth, rows = _brute_force(parents)
    np.testing.assert_array_equal(tree.attention_mask, mask)
    np.testing.assert_array_equal(tree.depths, depth)
    np.testing.assert_array_equal(tree.retrieve_indices, rows)
    for i in range(len(parents)):
        assert tree.children(i).tolist() == [j for j in range(1, len(parents))
                                             if parents[j] == i]
    assert pickle.loads(pickle.dumps(tree)) == tree
