"""Group-wise formats: weight_dtype = "q8" and "q4" (groups of 32 columns).

Beside the checks test_low_precision.py runs on every low-precision type
(float64 reference on the weights decoded there with plain NumPy, batches
equal to single states, ties, round trips, ...), this module proves, on
every backend:

* the encodings: q8 is llama.cpp's Q8_0 rounding (scale = float16 of the
  group's max |w| / 127, q = round(w / scale)); q4 its Q4_0 rounding (scale =
  float16 of the group's value of largest magnitude / -8, code = round(w /
  scale) + 8 clipped to 0..15), recomputed here in float64; a short last
  group (d not a multiple of 32) is padded with zero weights;
* exactly computable heads give the exact logits, bit for bit (a last-bit
  error in one decoded weight of any group, full or short, fails);
* save/load round trips are bit-exact; bad stored arrays are rejected;
* Medusa heads and compare() work on q8/q4 heads.
"""

from __future__ import annotations

import numpy as np
import pytest

import eagle_fast
from eagle_fast import DraftHead, MedusaHeads
from support import random_head
from test_low_precision import assert_same_results, assert_same_stored, dequantized, full

GROUP = 32
GROUPED = ["q8", "q4"]


def groups_of(values):
    """float64 (rows, groups, 32), the last group padded with zeros."""
    values = np.asarray(values, dtype=np.float64)
    n = -(-values.shape[1] // GROUP)
    padded = np.zeros((values.shape[0], n * GROUP))
    padded[:, :values.shape[1]] = values
    return padded.reshape(values.shape[0], n, GROUP)


def unpack_codes(data):
    """q4 codes (rows, 32 * groups): low nibble of byte i = column i of its
    group, high nibble = column i + 16."""
    out = np.zeros((data.shape[0], 2 * data.shape[1]), dtype=np.int64)
    for col in range(out.shape[1]):
        g, o = divmod(col, GROUP)
        byte = data[:, 16 * g + o % 16].astype(np.int64)
        out[:, col] = byte % 16 if o < 16 else byte // 16
    return out


@pytest.mark.parametrize("d_model", [32, 45, 64, 70, 1])
def test_q8_is_q8_0_rounding(d_model):
    rng = np.random.default_rng(200)
    W = rng.standard_normal((9, d_model)) * np.exp(rng.standard_normal((9, 1)))
    W[0, :] = 0.0                                    # all-zero groups: q = 0, scale 0
    head = DraftHead(W, np.zeros(9), np.ones((3, 9)), weight_dtype="q8")
    a = head.stored_arrays()
    q, scales = a["projection.weight"], a["projection.weight_scale"]
    assert q.dtype == np.int8 and q.shape == (9, d_model)
    assert scales.dtype == np.float16 and scales.shape == (9, -(-d_model // GROUP))
    g = groups_of(W)
    want_scales = (np.abs(g).max(axis=2) / 127).astype(np.float16)
    np.testing.assert_array_equal(scales, want_scales)
    s = want_scales.astype(np.float64)
    want_q = np.where(s[:, :, None] > 0,
                      np.clip(np.rint(g / np.where(s > 0, s, 1)[:, :, None]), -127, 127), 0)
    np.testing.assert_array_equal(q, want_q.reshape(9, -1)[:, :d_model])
    # The dequantized weights are q * scale exactly (float32 can hold them).
    W32 = head.projection_weight.astype(np.float64)
    np.testing.assert_array_equal(W32, q * np.repeat(s, GROUP, axis=1)[:, :d_model])


@pytest.mark.parametrize("d_model", [32, 45, 64, 70, 1])
def test_q4_is_q4_0_rounding_and_pads_short_groups(d_model):
    rng = np.random.default_rng(201)
    W = rng.standard_normal((9, d_model)) * np.exp(rng.standard_normal((9, 1)))
    W[0, :] = 0.0
    head = DraftHead(W, np.zeros(9), np.ones((3, 9)), weight_dtype="q4")
    assert head.d_model == d_model
    a = head.stored_arrays()
    data, scales = a["projection.weight"], a["projection.weight_scale"]
    n_groups = -(-d_model // GROUP)
    assert data.dtype == np.uint8 and data.shape == (9, 16 * n_groups)
    assert scales.dtype == np.float16 and scales.shape == (9, n_groups)
    g = groups_of(W)
    extreme = np.take_along_axis(g, np.abs(g).argmax(axis=2)[:, :, None], axis=2)[:, :, 0]
    want_scales = (extreme / -8).astype(np.float16)
    np.testing.assert_array_equal(scales, want_scales)
    s = want_scales.astype(np.float64)
    safe = np.where(s != 0, s, 1)[:, :, None]
    want_codes = np.where(s[:, :, None] != 0, np.clip(np.rint(g / safe) + 8, 0, 15), 8)
    codes = unpack_codes(data)
    np.testing.assert_array_equal(codes, want_codes.reshape(9, -1))
    assert (codes[:, d_model:] == 8).all()           # padding: weight 0
    W32 = head.projection_weight.astype(np.float64)
    assert W32.shape == (9, d_model)
    np.testing.assert_array_equal(
        W32, (codes[:, :d_model] - 8) * np.repeat(s, GROUP, axis=1)[:, :d_model])


def exact_group_rows(rng, shape, weight_dtype):
    """Rows k * 2**e with e per group in a narrow range and, per group, one
    |k| at the format's extreme (q8: 127, q4: -8): the encoding is exact
    (scale 2**e) and every float32 sum of products below is exact."""
    lo, hi = (-127, 128) if weight_dtype == "q8" else (-8, 8)
    k = rng.integers(lo, hi, shape).astype(np.float64)
    n_groups = -(-shape[1] // GROUP)
    extreme = 127 if weight_dtype == "q8" else -8
    for g in range(n_groups):
        width = min(GROUP, shape[1] - GROUP * g)
        k[np.arange(shape[0]), GROUP * g + rng.integers(0, width, shape[0])] = extreme
    e = rng.integers(-3, 1, (shape[0], n_groups))
    return k * np.repeat(2.0 ** e, GROUP, axis=1)[:, :shape[1]]


@pytest.mark.parametrize("weight_dtype", GROUPED)
@pytest.mark.parametrize("d_proj", [19, 64, 70, 101])
def test_exactly_computable_logits_are_exact(weight_dtype, d_proj):
    """x = SiLU(512) = 512 (hidden 0): logits = 512 * row sums of L, exact in
    float32; the W path: x = 1024 + W h with 3 entries of h in {-1, 1}, the
    rest 0 (x: 17 bits), and L = c I with c = 127 (q8) or -8 (q4), stored
    exactly (scale 1)."""
    rng = np.random.default_rng(202 + d_proj)
    L = exact_group_rows(rng, (3000, d_proj), weight_dtype)
    W, _, _ = random_head(rng, 11, d_proj, 1)
    head = DraftHead(W, np.full(d_proj, 512.0), L, weight_dtype=weight_dtype)
    np.testing.assert_array_equal(dequantized(head)[2], L)
    expected = 512 * L.sum(axis=1)
    d_model = d_proj + 5
    W = exact_group_rows(rng, (d_proj, d_model), weight_dtype) / 8
    c = 127.0 if weight_dtype == "q8" else -8.0
    head_w = DraftHead(W, np.full(d_proj, 1024.0), c * np.eye(d_proj),
                       weight_dtype=weight_dtype)
    np.testing.assert_array_equal(dequantized(head_w)[0], W)
    np.testing.assert_array_equal(dequantized(head_w)[2], c * np.eye(d_proj))
    hidden = np.zeros((6, d_model))
    for row in hidden:
        row[rng.choice(d_model, 3, replace=False)] = rng.choice([-1.0, 1.0], 3)
    expected_w = c * (1024 + hidden @ W.T)
    for model, states, ref in [(head, np.zeros((5, 11)), np.tile(expected, (5, 1))),
                               (head, np.zeros(11), expected),
                               (head_w, hidden, expected_w), (head_w, hidden[2], expected_w[2])]:
        assert np.array_equal(ref.astype(np.float32), ref)
        for num_threads in (1, 2):
            got = model.predict(states, temperature=0.0, return_logits=True,
                                num_threads=num_threads)
            np.testing.assert_array_equal(got.logits, ref.astype(np.float32))


@pytest.mark.parametrize("weight_dtype", GROUPED)
def test_save_load_round_trip_is_bit_exact(weight_dtype, tmp_path):
    rng = np.random.default_rng(203)
    for d_model, d_proj, vocab in [(70, 45, 99), (64, 32, 50), (5, 3, 7)]:
        head = DraftHead(*random_head(rng, d_model, d_proj, vocab, lm_scale=3.0),
                         weight_dtype=weight_dtype)
        path = tmp_path / f"{weight_dtype}-{d_model}.safetensors"
        head.save(path)
        loaded = DraftHead.load(path)
        assert (loaded.weight_dtype, loaded.d_model, loaded.d_proj) == (
            weight_dtype, d_model, d_proj)
        assert loaded.nbytes == head.nbytes
        assert_same_stored(loaded, head)
        hidden = rng.standard_normal((4, d_model)).astype(np.float32)
        assert_same_results(full(loaded, hidden, top_k=3), full(head, hidden, top_k=3))


def test_q4_from_stored_needs_d_model_and_checks_it():
    rng = np.random.default_rng(204)
    head = DraftHead(*random_head(rng, 45, 13, 20), weight_dtype="q4")
    a = head.stored_arrays()
    args = ("q4", a["projection.weight"], a["projection.bias"], a["lm_head.weight"])
    kw = {"projection_scales": a["projection.weight_scale"],
          "lm_head_scales": a["lm_head.weight_scale"]}
    assert DraftHead.from_stored(*args, **kw, d_model=45).d_model == 45
    # Without d_model: whole groups (the padding columns are weight 0).
    padded = DraftHead.from_stored(*args, **kw)
    assert padded.d_model == 64
    np.testing.assert_array_equal(padded.projection_weight[:, 45:], 0)
    for bad in (32, 65, 0):
        with pytest.raises(ValueError, match="columns"):
            DraftHead.from_stored(*args, **kw, d_model=bad)
    with pytest.raises(TypeError):
        DraftHead.from_stored(*args, **kw, d_model=45.0)
    with pytest.raises(TypeError, match="d_model"):
        DraftHead.from_stored("q8", *args[1:], d_model=45,
                              **{k: np.zeros((v.shape[0], 2), np.float16) for k, v in kw.items()})
    # Non-zero padding codes (garbage past column 45) are rejected.
    data = np.array(a["projection.weight"])
    data[:, 16 + 15] = 0x00                          # columns 47 and 63 -> code 0
    with pytest.raises(ValueError, match="padding"):
        DraftHead.from_stored("q4", data, *args[2:], **kw, d_model=45)


BAD_STORED = [
    ("q8", "projection_scales", lambda s: s.astype(np.float32), TypeError),
    ("q8", "projection_scales", lambda s: s[:, :-1], ValueError),
    ("q8", "lm_head_scales", lambda s: s.ravel(), ValueError),
    ("q8", "lm_head_scales", lambda s: np.where(s == s.flat[0], np.float16(np.inf), s), ValueError),
    ("q8", "lm_head_scales", lambda s: np.full_like(s, np.nan), ValueError),
    ("q8", "lm_head_scales", lambda s: -s, ValueError),
    ("q8", "projection_scales", lambda s: None, ValueError),
    ("q8", "projection_weight", lambda w: np.full_like(w, -128), ValueError),
    ("q8", "projection_weight", lambda w: w.astype(np.int16), TypeError),
    ("q4", "projection_weight", lambda w: w.astype(np.int8), TypeError),
    ("q4", "projection_weight", lambda w: w[:, :8], ValueError),
    ("q4", "lm_head_weight", lambda w: np.concatenate([w, w], axis=1), ValueError),
    ("q4", "lm_head_scales", lambda s: np.full_like(s, np.inf), ValueError),
    ("q4", "projection_scales", lambda s: s[:-1], ValueError),
    ("q4", "lm_head_scales", lambda s: None, ValueError),
    ("q4", "projection_bias", lambda b: b[:-1], ValueError),
]


@pytest.mark.parametrize("weight_dtype, argument, change, error", BAD_STORED,
                         ids=[f"{c[0]}-{c[1]}-{i}" for i, c in enumerate(BAD_STORED)])
def test_from_stored_rejects_bad_group_arrays(weight_dtype, argument, change, error):
    head = DraftHead(*random_head(np.random.default_rng(205), 40, 36, 9),
                     weight_dtype=weight_dtype)
    a = head.stored_arrays()
    kwargs = {"projection_weight": a["projection.weight"],
              "projection_bias": a["projection.bias"],
              "lm_head_weight": a["lm_head.weight"],
              "projection_scales": a["projection.weight_scale"],
              "lm_head_scales": a["lm_head.weight_scale"]}
    if weight_dtype == "q4":
        kwargs["d_model"] = 40
    DraftHead.from_stored(weight_dtype, **kwargs)  # unchanged: accepted
    kwargs[argument] = change(kwargs[argument])
    with pytest.raises(error):
        DraftHead.from_stored(weight_dtype, **kwargs)


def test_weight_dtype_follows_from_the_stored_dtypes():
    rng = np.random.default_rng(206)
    for weight_dtype in GROUPED:
        head = DraftHead(*random_head(rng, 64, 32, 9), weight_dtype=weight_dtype)
        a = dict(head.stored_arrays())
        assert DraftHead.from_stored(**a).weight_dtype == weight_dtype


def test_values_beyond_the_float16_scales_are_rejected():
    W, b, L = random_head(np.random.default_rng(207), 4, 5, 7)
    W[0, 0] = 1e7                                    # / 127 > 65504 (float16 max)
    with pytest.raises(ValueError, match="too large for q8"):
        DraftHead(W, b, L, weight_dtype="q8")
    assert DraftHead(W / 2, b, L, weight_dtype="q8").weight_dtype == "q8"
    W[0, 0] = 6e5                                    # / 8 > 65504
    with pytest.raises(ValueError, match="too large for q4"):
        DraftHead(W, b, L, weight_dtype="q4")


@pytest.mark.parametrize("weight_dtype", GROUPED)
def test_medusa_heads_and_compare(weight_dtype):
    rng = np.random.default_rng(208)
    d, vocab = 40, 300
    heads = [DraftHead(*random_head(rng, d, d, vocab, lm_scale=3.0), residual=True,
                       weight_dtype=weight_dtype) for _ in range(3)]
    medusa = MedusaHeads(heads)
    assert medusa.weight_dtype == weight_dtype
    hidden = rng.standard_normal((5, d)).astype(np.float32)
    together = medusa.predict(hidden, top_k=3)
    for i, head in enumerate(heads):
        alone = head.predict(hidden, top_k=3)
        np.testing.assert_array_equal(together.tokens[:, i], alone.tokens)
        np.testing.assert_array_equal(together.token_probs[:, i], alone.token_probs)
    # compare: against the float32 head on the same dequantized weights, agreement is total.
    head = heads[0]
    same = DraftHead(head.projection_weight, head.projection_bias, head.lm_head_weight,
                     residual=True)
    report = eagle_fast.compare(same, head, hidden, top_k=3)
    assert report.top1_agreement == 1.0 and report.topk_overlap == 1.0
    assert report.mean_kl == 0.0


@pytest.mark.parametrize("weight_dtype", GROUPED)
def test_large_weights_stay_finite_where_the_float32_computation_is(weight_dtype):
    """Scales near float16's top and logits near float32's: a q8/q4 head is
    the float32 computation on its dequantized weights, so it overflows
    exactly where that computation does (here: nowhere), with no pre-scale
    sum to overflow first."""
    rng = np.random.default_rng(209)
    top = 127 * 60000.0 if weight_dtype == "q8" else 8 * 60000.0
    L = rng.uniform(-1, 1, (50, 40)) * top
    W = np.eye(40, 33)
    head = DraftHead(W, np.full(40, 1e30), L, weight_dtype=weight_dtype)
    same = DraftHead(head.projection_weight, head.projection_bias, head.lm_head_weight)
    hidden = rng.standard_normal((3, 33)).astype(np.float32)
    got = full(head, hidden, top_k=2, temperature=0.0)
    assert np.isfinite(got.logits).all() and np.abs(got.logits).max() > 1e35
    assert_same_results(got, full(same, hidden, top_k=2, temperature=0.0))
