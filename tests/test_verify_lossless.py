"""Losslessness, statistically: speculative sampling must emit tokens with
exactly the target's distribution.

For small vocabularies with a known target p (p1 for the first token, p2[y]
after token y, a flat p3 after that) and draft q, 10^5 seeded verifications
are run (one kernel call per distinct tree) and the emitted tokens -- the
first, and the joint of the first two (where a verification emits only one
token the second is drawn from p2[first], as the next target step would) --
are compared with p by a chi-square test (scipy.stats.chisquare).  A case
passes when the p-value is above ALPHA = 1e-4; every seed is fixed, so the
outcome is reproducible.  Controls -- deliberately wrong rules run through
the same check -- must fail it (test the test).  Run with ``-s`` to see the
p-values.
"""

from __future__ import annotations

import numpy as np
import pytest

from eagle_fast.speculative import DraftTree, verify_chain, verify_sampling_many, warp_probs

stats = pytest.importorskip("scipy.stats")

N = 100_000
ALPHA = 1e-4


# -- the check ------------------------------------------------------------------

def chi2_pvalue(counts: np.ndarray, probs: np.ndarray) -> float:
    """Chi-square goodness of fit of counts to probs; any count in a cell of
    probability 0 is an outright failure (p-value 0).  Cells expecting fewer
    than 5 are pooled."""
    counts = np.asarray(counts, dtype=np.float64).ravel()
    probs = np.asarray(probs, dtype=np.float64).ravel()
    total = counts.sum()
    zero = probs <= 1e-15
    if counts[zero].sum() > 0:
        return 0.0
    observed, expected = counts[~zero], probs[~zero] / probs[~zero].sum() * total
    small = expected < 5
    if small.any():
        observed = np.append(observed[~small], observed[small].sum())
        expected = np.append(expected[~small], expected[small].sum())
    if observed.shape[0] < 2:
        return 1.0
    return float(stats.chisquare(observed, expected).pvalue)


def report(name: str, pvalue: float) -> None:
    print(f"\nchi2 {name}: p = {pvalue:.3g}")


def assert_first_token(name, first, p1):
    pvalue = chi2_pvalue(np.bincount(first, minlength=p1.shape[0]), p1)
    report(name + " (first token)", pvalue)
    assert pvalue > ALPHA, f"{name}: emitted first tokens do not follow p (p = {pvalue:.3g})"


def joint_pvalue(first, second, p1, p2, rng) -> float:
    vocab = p1.shape[0]
    second = second.copy()
    missing = second < 0
    if missing.any():  # one token emitted: the next target step draws the second
        cdf = np.cumsum(p2[first[missing]], axis=1)
        u = rng.random(int(missing.sum()))[:, None]
        second[missing] = np.minimum((cdf <= u * cdf[:, -1:]).sum(axis=1), vocab - 1)
    counts = np.bincount(first * vocab + second, minlength=vocab * vocab)
    return chi2_pvalue(counts, p1[:, None] * p2)


def assert_joint(name, first, second, p1, p2, rng):
    pvalue = joint_pvalue(first, second, p1, p2, rng)
    report(name + " (first two tokens)", pvalue)
    assert pvalue > ALPHA, f"{name}: the first two tokens do not follow p (p = {pvalue:.3g})"


# -- models -------------------------------------------------------------------------

def logits_of(p: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Logits whose softmax at ``temperature`` is p (zeros -> a finite -1e4)."""
    return np.where(p > 0, np.log(np.maximum(p, 1e-300)) * temperature, -1e4)


def model(vocab: int, seed: int, concentration: float = 1.0):
    rng = np.random.default_rng(seed)
    p1 = rng.dirichlet(np.full(vocab, concentration))
    p2 = rng.dirichlet(np.full(vocab, concentration), size=vocab)
    return p1, p2


def emitted_first_two(tree: DraftTree, many):
    nodes = np.maximum(many.accepted_nodes, 0)
    acc = many.num_accepted
    first = np.where(acc >= 1, tree.tokens[nodes[:, 1 % nodes.shape[1]]], many.next_token)
    if nodes.shape[1] > 2:
        deeper = tree.tokens[nodes[:, 2]]
    else:
        deeper = np.full(acc.shape, -1)
    second = np.where(acc >= 2, deeper, np.where(acc == 1, many.next_token, -1))
    return first, second


def tree_logits(tree: DraftTree, p1, p2, temperature=1.0):
    """Row 0: p1; a depth-1 node with token y: p2[y]; deeper rows: flat."""
    vocab = p1.shape[0]
    rows = []
    for node in range(tree.num_nodes):
        depth = tree.depths[node]
        p = p1 if depth == 0 else p2[tree.tokens[node]] if depth == 1 else np.full(vocab, 1 / vocab)
        rows.append(logits_of(p, temperature))
    return np.array(rows)


# -- deterministic trees (EAGLE-2's rule) ----------------------------------------------

#     root
#   /  |  \
#  a   b   c        a, b, c = the draft's top 3 (given), d, e, f below
#  |\  |
#  d e f
def det_tree(a, b, c, d, e, f):
    return DraftTree([0, a, b, c, d, e, f], [-1, 0, 0, 0, 1, 1, 2])


@pytest.mark.parametrize("case", ["general", "disjoint", "one_hot", "temperature", "warped"])
def test_deterministic_tree_lossless(case):
    vocab = 6
    p1, p2 = model(vocab, seed=1)
    tree = det_tree(2, 0, 5, 1, 3, 4)
    temperature, top_k, top_p = 1.0, 0, 1.0
    if case == "disjoint":      # p is 0 on every drafted token at depth 1
        p1 = np.array([0, 0.3, 0, 0.5, 0.2, 0])
    elif case == "one_hot":     # p1 certain of one of the drafted tokens
        p1 = np.eye(vocab)[5]
    elif case == "temperature":
        temperature = 0.6
    logits = tree_logits(tree, p1, p2, temperature)
    if case == "warped":
        temperature, top_k, top_p = 0.8, 4, 0.85
        p1 = warp_probs(logits[0], temperature=temperature, top_k=top_k, top_p=top_p)
        p2 = np.array([warp_probs(logits_of(p2[y]), temperature=temperature, top_k=top_k,
                                  top_p=top_p) for y in range(vocab)])
    many = verify_sampling_many(tree, logits, N, temperature=temperature, top_k=top_k,
                                top_p=top_p, rng=np.random.default_rng(100))
    first, second = emitted_first_two(tree, many)
    assert_first_token(f"deterministic tree, {case}", first, p1)
    assert_joint(f"deterministic tree, {case}", first, second, p1, p2,
                 np.random.default_rng(101))


def test_deterministic_tree_covering_the_vocabulary():
    vocab = 5
    p1, p2 = model(vocab, seed=2)
    tree = DraftTree([0, 4, 3, 2, 1, 0], [-1, 0, 0, 0, 0, 0])
    many = verify_sampling_many(tree, tree_logits(tree, p1, p2), N, temperature=1.0,
                                rng=np.random.default_rng(7))
    first, _ = emitted_first_two(tree, many)
    assert (many.num_accepted == 1).all()   # some child is always accepted
    assert_first_token("deterministic tree covering V", first, p1)


# Controls: the same check on wrong rules, written out here.

def broken_deterministic(p1, children, rng, *, renormalise: bool, always: bool = False):
    """First emitted token of a depth-1 deterministic tree under a wrong rule:
    ``always`` accepts the first child; ``renormalise=False`` tests each child
    against the original p and draws the correction from the original p."""
    children = np.asarray(children)
    if always:
        return np.full(N, children[0])
    u = rng.random((N, children.shape[0] + 1))
    out = np.full(N, -1)
    p = np.tile(p1, (N, 1))
    z = np.ones(N)
    for j, x in enumerate(children):
        open_ = out < 0
        accept = open_ & (u[:, j] * z < p[:, x])
        out[accept] = x
        if renormalise:
            reject = open_ & ~accept
            z[reject] -= p[reject, x]
            p[reject, x] = 0
    open_ = out < 0
    cdf = np.cumsum(p[open_], axis=1)
    out[open_] = np.minimum((cdf <= (u[open_, -1] * z[open_])[:, None]).sum(axis=1),
                            p1.shape[0] - 1)
    return out


def test_controls_deterministic_fail():
    vocab = 6
    p1, _ = model(vocab, seed=1)
    children = [2, 0, 5]
    rng = np.random.default_rng(3)
    # the written-out rule with renormalisation passes: the check is fair...
    good = broken_deterministic(p1, children, rng, renormalise=True)
    assert_first_token("control: written-out EAGLE-2 rule", good, p1)
    # ...and each broken twin fails it.
    for label, first in [
        ("accept always", broken_deterministic(p1, children, rng, renormalise=True,
                                               always=True)),
        ("no renormalisation", broken_deterministic(p1, children, rng, renormalise=False)),
    ]:
        pvalue = chi2_pvalue(np.bincount(first, minlength=vocab), p1)
        report(f"control (must fail): deterministic tree, {label}", pvalue)
        assert pvalue < ALPHA


# -- sampled trees (EAGLE's first-release rule) ------------------------------------------

def draw_without_replacement(q: np.ndarray, count: int, rng) -> np.ndarray:
    """(N, count) tokens, each row drawn from q without replacement."""
    out = np.empty((N, count), dtype=np.int64)
    weights = np.tile(q, (N, 1))
    for j in range(count):
        cdf = np.cumsum(weights, axis=1)
        u = rng.random(N)[:, None] * cdf[:, -1:]
        out[:, j] = np.minimum((cdf <= u).sum(axis=1), q.shape[0] - 1)
        weights[np.arange(N), out[:, j]] = 0
    return out


def run_sampled(p1, p2, q1, q2, root_children, rng, *, claimed_q1=None, temperature=1.0,
                depth=2):
    """N verifications of sampled trees: the root's ``root_children`` children
    drawn from q1 without replacement and, at ``depth`` 2, one child under each
    first-level node y drawn from q2[y]; trees are grouped so that each
    distinct tree is verified in one call.  ``claimed_q1`` lies to the
    verifier about q1 (a control)."""
    vocab = p1.shape[0]
    level1 = draw_without_replacement(q1, root_children, rng)
    level2 = np.empty((N, root_children if depth == 2 else 0), dtype=np.int64)
    for j in range(level2.shape[1]):
        cdf = np.cumsum(q2[level1[:, j]], axis=1)
        u = rng.random(N)[:, None]
        level2[:, j] = np.minimum((cdf <= u * cdf[:, -1:]).sum(axis=1), vocab - 1)
    drafted = np.hstack([level1, level2])
    codes = drafted @ (vocab ** np.arange(drafted.shape[1]))     # one integer per tree
    codes, first_run, inverse, counts = np.unique(codes, return_index=True,
                                                  return_inverse=True, return_counts=True)
    keys = drafted[first_run]
    parents = [-1] + [0] * root_children + list(range(1, level2.shape[1] + 1))
    first = np.empty(N, dtype=np.int64)
    second = np.empty(N, dtype=np.int64)
    groups = np.split(np.argsort(inverse.ravel(), kind="stable"), np.cumsum(counts)[:-1])
    shown_q1 = q1 if claimed_q1 is None else claimed_q1
    flat = np.full(vocab, 1 / vocab)
    for g, key in enumerate(keys):
        top = key[:root_children]
        tokens = np.concatenate([[0], key])
        q = np.vstack([flat] + [shown_q1] * root_children + [q2[y] for y in top[:level2.shape[1]]])
        tree = DraftTree(tokens, parents, draft_probs=q)
        logits = np.vstack([logits_of(p1, temperature)]
                           + [logits_of(p2[y], temperature) for y in top]
                           + [logits_of(flat, temperature)] * level2.shape[1])
        many = verify_sampling_many(tree, logits, int(counts[g]), temperature=temperature,
                                    rng=np.random.default_rng(int(rng.integers(2**63))))
        f, s = emitted_first_two(tree, many)
        first[groups[g]] = f
        second[groups[g]] = s
    return first, second


@pytest.mark.parametrize("case", ["general", "q_equals_p", "disjoint", "one_hot",
                                  "three_children"])
def test_sampled_tree_lossless(case):
    vocab = 5
    p1, p2 = model(vocab, seed=4)
    q1, q2 = model(vocab, seed=5, concentration=0.7)
    children = 2
    if case == "q_equals_p":
        q1, q2 = p1, p2
    elif case == "disjoint":    # q on {0, 1, 2}, p on {3, 4} at the first step
        p1 = np.array([0, 0, 0, 0.35, 0.65])
        q1 = np.array([0.5, 0.3, 0.2, 0, 0])
    elif case == "one_hot":
        p1 = np.eye(vocab)[1]
    elif case == "three_children":   # depth 1: the root's 3 children from q1
        vocab = 7
        p1, p2 = model(vocab, seed=6)
        q1, q2 = model(vocab, seed=7, concentration=0.5)
        children = 3
    rng = np.random.default_rng(200)
    first, second = run_sampled(p1, p2, q1, q2, children, rng,
                                depth=1 if case == "three_children" else 2)
    assert_first_token(f"sampled tree, {case}", first, p1)
    assert_joint(f"sampled tree, {case}", first, second, p1, p2, rng)


def test_sampled_tree_at_temperature():
    vocab = 5
    p1, p2 = model(vocab, seed=8)
    q1, q2 = model(vocab, seed=9)
    rng = np.random.default_rng(300)
    first, second = run_sampled(p1, p2, q1, q2, 2, rng, temperature=1.7)
    assert_joint("sampled tree, T = 1.7", first, second, p1, p2, rng)


def test_control_sampled_tree_with_wrong_q_fails():
    # The tree's children come from q1, the verifier is told uniform: not lossless.
    vocab = 5
    p1, p2 = model(vocab, seed=4)
    q1, q2 = model(vocab, seed=5, concentration=0.7)
    rng = np.random.default_rng(200)
    first, second = run_sampled(p1, p2, q1, q2, 2, rng, claimed_q1=np.full(vocab, 1 / vocab))
    pvalue = chi2_pvalue(np.bincount(first, minlength=vocab), p1)
    report("control (must fail): sampled tree verified with the wrong q", pvalue)
    assert pvalue < ALPHA


# -- chains (standard speculative sampling) --------------------------------------------

def run_chain(p1, p2, q1, q2, rng, *, broken_recovery=False):
    vocab = p1.shape[0]
    x1 = draw_without_replacement(q1, 1, rng)[:, 0]
    cdf = np.cumsum(q2[x1], axis=1)
    x2 = np.minimum((cdf <= rng.random(N)[:, None] * cdf[:, -1:]).sum(axis=1), vocab - 1)
    draft_probs = np.stack([np.tile(q1, (N, 1)), q2[x1]], axis=1)
    target_probs = np.stack([np.tile(p1, (N, 1)), p2[x1], np.full((N, vocab), 1 / vocab)],
                            axis=1)
    tokens = np.stack([x1, x2], axis=1)
    if broken_recovery:   # control: recover from p instead of max(p - q, 0)
        draft_probs = draft_probs.copy()
        out = verify_chain(tokens, draft_probs, target_probs, rng=rng)
        stop = (out >= 0).sum(axis=1) - 1
        rejected = stop < 2
        idx = np.flatnonzero(rejected)
        cdf = np.cumsum(target_probs[idx, stop[idx]], axis=1)
        out[idx, stop[idx]] = np.minimum((cdf <= rng.random(idx.size)[:, None]).sum(axis=1),
                                         vocab - 1)
    else:
        out = verify_chain(tokens, draft_probs, target_probs, rng=rng)
    assert out.shape == (N, 3)
    return out[:, 0], out[:, 1]


@pytest.mark.parametrize("case", ["general", "q_equals_p", "disjoint", "one_hot"])
def test_chain_lossless(case):
    vocab = 6
    p1, p2 = model(vocab, seed=10)
    q1, q2 = model(vocab, seed=11, concentration=0.6)
    if case == "q_equals_p":
        q1, q2 = p1, p2
    elif case == "disjoint":
        p1 = np.array([0.6, 0.4, 0, 0, 0, 0])
        q1 = np.array([0, 0, 0.1, 0.2, 0.3, 0.4])
    elif case == "one_hot":
        p1 = np.eye(vocab)[3]
    rng = np.random.default_rng(400)
    first, second = run_chain(p1, p2, q1, q2, rng)
    if case == "q_equals_p":
        assert (second >= 0).all()      # q = p: nothing is ever rejected
    assert_first_token(f"chain, {case}", first, p1)
    assert_joint(f"chain, {case}", first, second, p1, p2, rng)


def test_control_chain_recovering_from_p_fails():
    vocab = 6
    p1, p2 = model(vocab, seed=10)
    q1, q2 = model(vocab, seed=11, concentration=0.6)
    rng = np.random.default_rng(400)
    first, _ = run_chain(p1, p2, q1, q2, rng, broken_recovery=True)
    pvalue = chi2_pvalue(np.bincount(first, minlength=vocab), p1)
    report("control (must fail): chain recovering from p", pvalue)
    assert pvalue < ALPHA


def written_out_sampled(p, q, children, rng, *, remove_siblings: bool):
    """First emitted token of a depth-1 sampled tree (``children`` drawn from q
    without replacement), by the recursive rule written out here; with
    ``remove_siblings=False`` it tests every child against q itself instead of
    q_i (q without the earlier siblings) -- a subtle bug."""
    drafted = draw_without_replacement(q, children, rng)
    u = rng.random((N, children + 1))
    rows = np.arange(N)
    target = np.tile(p, (N, 1))
    out = np.full(N, -1)
    removed = np.zeros((N, p.shape[0]), dtype=bool)
    for j in range(children):
        x = drafted[:, j]
        q_i = np.tile(q, (N, 1))
        if remove_siblings:
            q_i[removed] = 0
            q_i /= q_i.sum(axis=1, keepdims=True)
        open_ = out < 0
        accept = open_ & (u[:, j] * q_i[rows, x] < target[rows, x])
        out[accept] = x[accept]
        reject = open_ & ~accept
        residual = np.maximum(target[reject] - q_i[reject], 0)
        target[reject] = residual / residual.sum(axis=1, keepdims=True)
        removed[rows, x] = True
    open_ = out < 0
    cdf = np.cumsum(target[open_], axis=1)
    out[open_] = np.minimum((cdf <= u[open_, -1:] * cdf[:, -1:]).sum(axis=1), p.shape[0] - 1)
    return out


def test_control_sampled_tree_without_sibling_removal_fails():
    vocab = 6
    p, _ = model(vocab, seed=12)
    q, _ = model(vocab, seed=13, concentration=0.5)
    good = written_out_sampled(p, q, 3, np.random.default_rng(5), remove_siblings=True)
    assert_first_token("control: written-out recursive rule", good, p)
    bad = written_out_sampled(p, q, 3, np.random.default_rng(5), remove_siblings=False)
    pvalue = chi2_pvalue(np.bincount(bad, minlength=vocab), p)
    report("control (must fail): sampled tree, q instead of q_i", pvalue)
    assert pvalue < ALPHA
