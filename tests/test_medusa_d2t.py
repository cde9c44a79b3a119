"""Medusa heads (residual=True, MedusaHeads) and EAGLE-3 draft vocabularies
(d2t), on every backend, against the float64 reference of tests/reference.py."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from eagle_fast import DraftHead, DraftResult, MedusaHeads
from reference import float64_reference
from support import random_head
from test_draft_head import check_against_reference, full

WEIGHT_DTYPES = ["float64", "float32", "bfloat16", "float16", "int8"]


def residual_reference(head: DraftHead, hidden, temperature=1.0):
    hidden = np.asarray(hidden).astype(head.dtype)
    return float64_reference(hidden, head.projection_weight, head.projection_bias,
                             head.lm_head_weight, temperature, residual=True)


def medusa_weights(rng, n_heads, d_model, vocab):
    return [random_head(rng, d_model, d_model, vocab, lm_scale=3.0) for _ in range(n_heads)]


# ---------------------------------------------------------------------------
# residual=True: x = h + SiLU(W h + b).
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("weight_dtype", WEIGHT_DTYPES)
@pytest.mark.parametrize("d_model, vocab", [(1, 3), (13, 101), (67, 1001), (160, 1200)])
def test_residual_head_matches_reference(weight_dtype, d_model, vocab):
    rng = np.random.default_rng(d_model + vocab)
    head = DraftHead(*random_head(rng, d_model, d_model, vocab, lm_scale=3.0),
                     weight_dtype=weight_dtype, residual=True)
    assert head.residual
    hidden = rng.standard_normal((5, d_model))
    for T in (1.0, 0.0):
        batch = full(head, hidden, temperature=T, top_k=min(3, vocab))
        check_against_reference(head, hidden, batch, T,
                                ref=residual_reference(head, hidden, T))
        single = full(head, hidden[3], temperature=T, top_k=min(3, vocab))
        np.testing.assert_array_equal(single.logits, batch.logits[3])


def test_residual_differs_from_plain_head():
    # The residual term must really be added (a head without it disagrees).
    rng = np.random.default_rng(3)
    weights = random_head(rng, 8, 8, 50)
    hidden = rng.standard_normal(8) * 5
    plain = full(DraftHead(*weights), hidden).logits
    residual = full(DraftHead(*weights, residual=True), hidden).logits
    assert not np.allclose(plain, residual)


def test_residual_needs_square_projection():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="d_proj == d_model"):
        DraftHead(*random_head(rng, 8, 6, 20), residual=True)
    with pytest.raises(TypeError, match="residual must be a bool"):
        DraftHead(*random_head(rng, 8, 8, 20), residual="yes")


# ---------------------------------------------------------------------------
# MedusaHeads.
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("weight_dtype", ["float32", "bfloat16", "int8"])
@pytest.mark.parametrize("d_model, vocab", [(13, 101), (96, 1500)])
def test_medusa_rows_are_each_heads_prediction(weight_dtype, d_model, vocab):
    rng = np.random.default_rng(d_model)
    heads = [DraftHead(*w, weight_dtype=weight_dtype, residual=True)
             for w in medusa_weights(rng, 3, d_model, vocab)]
    medusa = MedusaHeads(heads)
    assert (medusa.num_heads, len(medusa), medusa.d_model) == (3, 3, d_model)
    assert medusa.weight_dtype == weight_dtype and medusa[1] is heads[1]
    hidden = rng.standard_normal((4, d_model)).astype(np.float32)

    batch = medusa.predict(hidden, top_k=4, temperature=0.8)
    assert batch.tokens.shape == batch.token_probs.shape == (4, 3, 4)
    single = medusa.predict(hidden[2], top_k=4, temperature=0.8)
    assert single.tokens.shape == (3, 4)
    np.testing.assert_array_equal(single.tokens, batch.tokens[2])
    np.testing.assert_array_equal(single.token_probs, batch.token_probs[2])
    for i, head in enumerate(heads):
        own = head.predict(hidden, top_k=4, temperature=0.8)
        np.testing.assert_array_equal(batch.tokens[:, i], own.tokens)
        np.testing.assert_array_equal(batch.token_probs[:, i], own.token_probs)
        ref = residual_reference(head, hidden, 0.8)
        top2 = -np.sort(-ref["logits"], axis=-1)[:, :2]
        clear = top2[:, 0] - top2[:, 1] > 1e-4 * ref["logit_scale"].max(axis=-1)
        np.testing.assert_array_equal(batch.tokens[clear, i, 0],
                                      ref["logits"][clear].argmax(axis=-1))


def test_medusa_large_top_k_and_mixed_storage():
    rng = np.random.default_rng(5)
    weights = medusa_weights(rng, 2, 9, 120)
    heads = [DraftHead(*weights[0], residual=True, dtype=np.float32),
             DraftHead(*weights[1], residual=True, weight_dtype="float16")]
    medusa = MedusaHeads(heads)
    assert medusa.weight_dtype == "mixed"
    hidden = rng.standard_normal(9)
    result = medusa.predict(hidden, top_k=100)  # beyond the streaming top-k
    for i, head in enumerate(heads):
        np.testing.assert_array_equal(result.tokens[i], head.predict(hidden, top_k=100).tokens)


def test_medusa_pickles():
    rng = np.random.default_rng(13)
    medusa = MedusaHeads([DraftHead(*w, residual=True, weight_dtype="bfloat16")
                          for w in medusa_weights(rng, 2, 7, 30)])
    copy = pickle.loads(pickle.dumps(medusa))
    hidden = rng.standard_normal((3, 7))
    np.testing.assert_array_equal(copy.predict(hidden, top_k=3).tokens,
                                  medusa.predict(hidden, top_k=3).tokens)
    assert copy.weight_dtype == "bfloat16"


def test_medusa_rejects_bad_heads_and_arguments():
    rng = np.random.default_rng(6)
    w = medusa_weights(rng, 2, 8, 30)
    residual = DraftHead(*w[0], residual=True)
    with pytest.raises(ValueError, match="at least one head"):
        MedusaHeads([])
    with pytest.raises(TypeError, match="not a DraftHead"):
        MedusaHeads([residual, w[1]])
    with pytest.raises(ValueError, match="not residual"):
        MedusaHeads([residual, DraftHead(*w[1])])
    with pytest.raises(ValueError, match="differs from head 0"):
        MedusaHeads([residual, DraftHead(*random_head(rng, 9, 9, 30), residual=True)])
    with pytest.raises(ValueError, match="differs from head 0"):
        MedusaHeads([residual, DraftHead(*w[1], residual=True, dtype=np.float32)])
    with pytest.raises(ValueError, match="d2t"):
        MedusaHeads([DraftHead(*w[1], residual=True, d2t=np.zeros(30, np.int64))])
    medusa = MedusaHeads([residual, DraftHead(*random_head(rng, 8, 8, 20), residual=True)])
    with pytest.raises(ValueError, match="top_k"):
        medusa.predict(np.zeros(8), top_k=21)  # the smaller head has 20 tokens
    with pytest.raises(ValueError, match="hidden must have shape"):
        medusa.predict(np.zeros(7))
    with pytest.raises(ValueError, match="NaN or inf"):
        medusa.predict(np.full(8, np.nan))


# ---------------------------------------------------------------------------
# d2t: EAGLE-3 reduced draft vocabulary.
# ---------------------------------------------------------------------------

def draft_vocab_head(rng, vocab=40, target=100, **kwargs):
    targets = np.sort(rng.choice(target, size=vocab, replace=False))
    d2t = targets - np.arange(vocab)
    head = DraftHead(*random_head(rng, 6, 5, vocab, lm_scale=3.0), d2t=d2t,
                     target_vocab_size=target, **kwargs)
    return head, targets


@pytest.mark.parametrize("weight_dtype", ["float64", "int8"])
def test_d2t_returns_target_ids(weight_dtype):
    rng = np.random.default_rng(7)
    head, targets = draft_vocab_head(rng, weight_dtype=weight_dtype)
    assert head.target_vocab_size == 100
    np.testing.assert_array_equal(head.d2t + np.arange(40), targets)
    hidden = rng.standard_normal((3, 6))
    result = full(head, hidden, top_k=5)
    # Draft-vocabulary outputs are the plain formula's; tokens are mapped.
    assert result.logits.shape == (3, 40)
    in_draft_ids = DraftResult(result.draft_tokens, result.token_probs, result.logits,
                               result.probs)
    check_against_reference(head, hidden, in_draft_ids, top_k=5,
                            ref=float64_reference(hidden.astype(head.dtype),
                                                  head.projection_weight,
                                                  head.projection_bias, head.lm_head_weight))
    np.testing.assert_array_equal(result.tokens, targets[result.draft_tokens])


def test_d2t_scatter_to_target():
    rng = np.random.default_rng(8)
    head, targets = draft_vocab_head(rng)
    hidden = rng.standard_normal(6)
    draft = full(head, hidden)
    scattered = full(head, hidden, scatter_to_target=True)
    assert scattered.logits.shape == scattered.probs.shape == (100,)
    np.testing.assert_array_equal(scattered.logits[targets], draft.logits)
    np.testing.assert_array_equal(scattered.probs[targets], draft.probs)
    others = np.setdiff1d(np.arange(100), targets)
    assert np.all(scattered.logits[others] == -np.inf) and np.all(scattered.probs[others] == 0)
    assert int(np.argmax(scattered.probs)) == scattered.predicted_token
    with pytest.raises(ValueError, match="scatter_to_target"):
        DraftHead(*random_head(rng, 3, 3, 4)).predict(np.zeros(3), scatter_to_target=True)


def test_d2t_default_target_vocab_and_identity():
    rng = np.random.default_rng(9)
    weights = random_head(rng, 4, 4, 10)
    head = DraftHead(*weights, d2t=np.arange(10) * 2)  # draft i -> target 3 i
    assert head.target_vocab_size == 28
    hidden = rng.standard_normal(4)
    result = head.predict(hidden, top_k=3)
    np.testing.assert_array_equal(result.tokens, 3 * result.draft_tokens)
    plain = DraftHead(*weights).predict(hidden, top_k=3)
    assert plain.draft_tokens is None
    identity = DraftHead(*weights, d2t=np.zeros(10, np.int32)).predict(hidden, top_k=3)
    np.testing.assert_array_equal(identity.tokens, plain.tokens)


def test_d2t_survives_pickle_and_to():
    rng = np.random.default_rng(10)
    head, targets = draft_vocab_head(rng, residual=False)
    hidden = rng.standard_normal(6)
    for copy in (pickle.loads(pickle.dumps(head)), head.to("bfloat16").to("float64")):
        assert copy.target_vocab_size == 100
        np.testing.assert_array_equal(copy.d2t, head.d2t)
        assert set(copy.predict(hidden, top_k=5).tokens) <= set(targets)
    residual = DraftHead(*random_head(rng, 5, 5, 9), residual=True)
    assert pickle.loads(pickle.dumps(residual)).residual
    assert residual.to("int8").residual


@pytest.mark.parametrize("d2t, target, error, match", [
    (np.arange(40) * 0 + 100, 100, ValueError, r"draft token 0 to target id 100, outside"),
    (np.full(40, -1), 100, ValueError, r"draft token 0 to target id -1, outside"),
    (np.r_[1, np.zeros(39, np.int64)], 100, ValueError,
     "not one-to-one: draft tokens 0 and 1 both map to target id 1"),
    (np.zeros(39, np.int64), 100, ValueError, r"shape \(vocab_size,\) = \(40,\)"),
    (np.zeros(40), 100, TypeError, "integer offsets"),
    (np.zeros(40, np.int64), 39, ValueError, "smaller than the draft vocabulary"),
])
def test_bad_d2t(d2t, target, error, match):
    rng = np.random.default_rng(11)
    with pytest.raises(error, match=match):
        DraftHead(*random_head(rng, 6, 5, 40), d2t=d2t, target_vocab_size=target)


def test_target_vocab_size_needs_d2t():
    rng = np.random.default_rng(12)
    with pytest.raises(ValueError, match="only applies to a head with d2t"):
        DraftHead(*random_head(rng, 3, 3, 4), target_vocab_size=10)
