"""activations="int8": int8/q8/q4 heads with integer dot products.

The reference here is written from the documented definition (DraftHead's
docstring, src/_int_dot.h), with Python integers and exact fractions -- not
the code under test:

* each state is quantized in groups of 32 columns: d = fl32(max|v| / 127),
  q = round-half-even(clip(fl32(v / d), -127, 127)), q = 0 where d = 0;
* a weight group g has integer codes w (int8/q8 as stored, q4 code - 8) and
  a scale dw_g (the float16 group scale; int8: the row's float32 scale);
  isum_g = sum(w * q) over the group's 32 columns, exactly;
* acc = fl32(acc + isum_g * fl32(dw_g * d_g)) group by group (one rounding);
  the product is acc.

Logits are compared bit for bit on heads whose SiLU is exactly the identity
(every |W h + b| >= 500, the spec's cut-off), so x = W h + b is known
exactly on every backend and both products are checked.
"""

from __future__ import annotations

import pickle
from fractions import Fraction

import numpy as np
import pytest

import eagle_fast
from eagle_fast import DraftHead, MedusaHeads

GROUP = 32
INT_WEIGHTS = ["int8", "q8", "q4"]
F32 = np.float32


# -- the reference -------------------------------------------------------------------


def round_to_f32(value: Fraction) -> np.float32:
    """The float32 nearest to an exact rational (ties to even)."""
    guess = np.float32(float(value))
    if not np.isfinite(guess):
        return guess
    best = None
    for candidate in (np.nextafter(guess, F32(-np.inf)), guess,
                      np.nextafter(guess, F32(np.inf))):
        error = abs(Fraction(float(candidate)) - value)
        even = int(np.array(candidate).view(np.uint32)) % 2 == 0
        key = (error, not even)
        if best is None or key < best[0]:
            best = (key, candidate)
    return F32(best[1])


def ref_quantize(v: np.ndarray) -> tuple[list[int], list[np.float32]]:
    """One float32 state -> (codes padded to whole groups, group scales)."""
    n = v.shape[0]
    groups = -(-n // GROUP)
    q = [0] * (groups * GROUP)
    scales = []
    for g in range(groups):
        part = [F32(x) for x in v[g * GROUP:(g + 1) * GROUP]]
        amax = max(abs(x) for x in part)
        d = F32(amax / F32(127))
        scales.append(d)
        if d == 0:
            continue
        for j, x in enumerate(part):
            y = min(max(float(F32(x / d)), -127.0), 127.0)
            q[g * GROUP + j] = round(y)          # Python rounds half to even
    return q, scales


def stored_codes(head: DraftHead, which: str) -> tuple[list[list[int]], list[list[Fraction]]]:
    """Integer codes (padded to whole groups) and per-group scales of a stored
    matrix, decoded from stored_arrays() with plain Python."""
    arrays = head.stored_arrays()
    data = arrays[f"{which}.weight"]
    scales = arrays[f"{which}.weight_scale"]
    n_cols = head.d_model if which == "projection" else head.d_proj
    groups = -(-n_cols // GROUP)
    codes, group_scales = [], []
    for r in range(data.shape[0]):
        if head.weight_dtype == "q4":
            row = []
            for g in range(groups):
                block = [int(b) for b in data[r, 16 * g:16 * g + 16]]
                row += [b & 15 for b in block] + [b >> 4 for b in block]
            row = [c - 8 for c in row]
        else:
            row = [int(c) for c in data[r]] + [0] * (groups * GROUP - n_cols)
        codes.append(row)
        if head.weight_dtype == "int8":
            group_scales.append([F32(scales[r])] * groups)
        else:
            group_scales.append([F32(s) for s in scales[r]])
    return codes, group_scales


def ref_products(codes, group_scales, states: np.ndarray) -> np.ndarray:
    """(B, rows) float32 products from the definition, exactly."""
    out = np.empty((states.shape[0], len(codes)), dtype=F32)
    for s, v in enumerate(states):
        q, d = ref_quantize(v)
        for r, (row, dw) in enumerate(zip(codes, group_scales)):
            acc = F32(0)
            for g in range(len(d)):
                scale = F32(dw[g] * d[g])
                isum = sum(row[j] * q[j] for j in range(g * GROUP, g * GROUP + GROUP))
                if isum:
                    acc = round_to_f32(Fraction(float(acc)) + isum * Fraction(float(scale)))
            out[s, r] = acc
    return out


# -- heads ----------------------------------------------------------------------------


def identity_silu_head(rng, weight_dtype, d_model, d_proj, vocab, scale=1.0, residual=False):
    """A head with |W h| >= 500 for the states of ``identity_states`` (rows of
    W are mostly of one sign, h positive), so SiLU(W h) = W h exactly."""
    signs = np.where(np.arange(d_proj) % 3 == 0, -1.0, 1.0)[:, None]
    W = signs * (4.0 + rng.standard_normal((d_proj, d_model)) * 0.5)
    L = rng.standard_normal((vocab, d_proj))
    head = DraftHead(W, np.zeros(d_proj), L, weight_dtype=weight_dtype, residual=residual,
                     activations="int8")
    return head


def identity_states(rng, count, d_model, scale=1.0):
    h = rng.uniform(300.0, 1000.0, size=(count, d_model)).astype(F32) * F32(scale)
    h[:, :min(d_model, 5)] *= F32(3)   # a few larger columns
    return h


def reference_logits(head: DraftHead, hidden: np.ndarray) -> np.ndarray:
    w_codes, w_scales = stored_codes(head, "projection")
    v = ref_products(w_codes, w_scales, hidden)
    assert (np.abs(v) >= 500).all(), "the test head must have an identity SiLU"
    x = np.where(v > 0, v, F32(0) * v).astype(F32)   # SiLU: v, or -0.0
    l_codes, l_scales = stored_codes(head, "lm_head")
    return ref_products(l_codes, l_scales, x)


def logits_of(head, hidden, **kwargs):
    result = head.predict(hidden, return_logits=True, **kwargs)
    return result.logits


def assert_bits_equal(actual, expected):
    actual = np.asarray(actual, dtype=F32)
    expected = np.asarray(expected, dtype=F32)
    assert actual.shape == expected.shape
    bad = actual.view(np.uint32) != expected.view(np.uint32)
    assert not bad.any(), (f"{int(bad.sum())} of {bad.size} differ, e.g. "
                           f"{actual[bad][:3]} vs {expected[bad][:3]}")


# -- the definition, bit for bit --------------------------------------------------------


@pytest.mark.parametrize("weight_dtype", INT_WEIGHTS)
@pytest.mark.parametrize("d_model,d_proj", [(1, 33), (32, 32), (45, 40), (70, 64)])
def test_logits_follow_the_definition_bit_for_bit(weight_dtype, d_model, d_proj):
    rng = np.random.default_rng(d_model * 10 + d_proj)
    head = identity_silu_head(rng, weight_dtype, d_model, d_proj, 7)
    # 11 states: the interleaved blocks of 8 (one partial) and single states.
    hidden = identity_states(rng, 11, d_model)
    expected = reference_logits(head, hidden)
    assert_bits_equal(logits_of(head, hidden), expected)
    for i in range(hidden.shape[0]):
        assert_bits_equal(logits_of(head, hidden[i]), expected[i])


@pytest.mark.parametrize("weight_dtype", INT_WEIGHTS)
def test_large_values_follow_the_definition(weight_dtype):
    rng = np.random.default_rng(7)
    head = identity_silu_head(rng, weight_dtype, 40, 36, 5)
    hidden = identity_states(rng, 2, 40, scale=1e25)
    assert_bits_equal(logits_of(head, hidden), reference_logits(head, hidden))


def test_reference_rounding_is_exact():
    # The reference's float32 rounding of exact rationals: ties go to even.
    one = Fraction(1)
    ulp = Fraction(2) ** -23
    assert round_to_f32(one + ulp / 2) == F32(1)                 # tie -> even (1.0)
    assert round_to_f32(one + ulp + ulp / 2) == F32(1) + 2 * np.finfo(F32).eps  # -> even
    assert round_to_f32(one + ulp / 2 + Fraction(1, 2 ** 60)) == np.nextafter(F32(1), F32(2))


# -- properties on realistic heads ----------------------------------------------------


def random_int_head(rng, weight_dtype, d_model, d_proj, vocab, activations="int8"):
    W = rng.standard_normal((d_proj, d_model)) / np.sqrt(d_model)
    b = rng.standard_normal(d_proj) * 0.1
    L = rng.standard_normal((vocab, d_proj)) / np.sqrt(d_proj)
    return DraftHead(W, b, L, weight_dtype=weight_dtype, activations=activations)


@pytest.mark.parametrize("weight_dtype", INT_WEIGHTS)
def test_batch_equals_single_states(weight_dtype):
    rng = np.random.default_rng(11)
    head = random_int_head(rng, weight_dtype, 77, 66, 90)
    hidden = rng.standard_normal((19, 77)).astype(F32)
    hidden[3] = 0.0                          # a zero state
    hidden[5, :40] = 0.0                     # zero groups
    singles = np.stack([logits_of(head, h) for h in hidden])
    for count in (1, 2, 4, 5, 7, 8, 9, 16, 19):
        assert_bits_equal(logits_of(head, hidden[:count]), singles[:count])
    tokens = head.predict(hidden, top_k=3).tokens
    assert (tokens == np.stack([head.predict(h, top_k=3).tokens for h in hidden])).all()


@pytest.mark.parametrize("weight_dtype", INT_WEIGHTS)
def test_threads_and_batch_blocks_agree_on_a_parallel_head(weight_dtype):
    # Big enough to run on two threads (>= 256 KiB of weights).
    rng = np.random.default_rng(12)
    head = random_int_head(rng, weight_dtype, 256, 200, 1500)
    hidden = rng.standard_normal((21, 256)).astype(F32)
    one = logits_of(head, hidden, num_threads=1)
    assert_bits_equal(logits_of(head, hidden, num_threads=2), one)
    assert_bits_equal(np.stack([logits_of(head, h, num_threads=2) for h in hidden]), one)


@pytest.mark.parametrize("weight_dtype", INT_WEIGHTS)
def test_close_to_the_exact_float_path(weight_dtype):
    rng = np.random.default_rng(13)
    head = random_int_head(rng, weight_dtype, 128, 96, 300)
    exact = head.to(activations="float")
    hidden = rng.standard_normal((64, 128)).astype(F32)
    fast, slow = logits_of(head, hidden), logits_of(exact, hidden)
    spread = np.abs(slow).max()
    # 8-bit activations: about 0.5 % of the logits' range, far below it.
    assert np.abs(fast - slow).max() < 0.03 * spread
    assert np.abs(fast - slow).max() > 0          # the activations were rounded
    comparison = eagle_fast.compare(exact, head, hidden, top_k=5)
    assert comparison.top1_agreement >= 0.9


@pytest.mark.parametrize("weight_dtype", INT_WEIGHTS)
def test_zero_states_give_the_bias_alone(weight_dtype):
    rng = np.random.default_rng(14)
    W = rng.standard_normal((40, 50))
    b = 600.0 + rng.uniform(0, 100, size=40)          # SiLU(b) = b exactly
    L = rng.standard_normal((8, 40))
    head = DraftHead(W, b, L, weight_dtype=weight_dtype, activations="int8")
    x = head.projection_bias[None, :].astype(F32)
    l_codes, l_scales = stored_codes(head, "lm_head")
    expected = ref_products(l_codes, l_scales, x)[0]
    assert_bits_equal(logits_of(head, np.zeros(50, F32)), expected)


def test_non_finite_states_are_rejected():
    rng = np.random.default_rng(15)
    head = random_int_head(rng, "q4", 40, 32, 20)
    for bad in (np.nan, np.inf, -np.inf):
        hidden = rng.standard_normal((3, 40)).astype(F32)
        hidden[1, 33] = bad
        with pytest.raises(ValueError, match="hidden contains NaN or inf"):
            head.predict(hidden)
        with pytest.raises(ValueError, match="hidden contains NaN or inf"):
            head.predict(hidden[1])


def test_overflow_is_reported():
    rng = np.random.default_rng(16)
    head = random_int_head(rng, "q8", 40, 32, 20)
    with pytest.raises(FloatingPointError):
        head.predict(np.full(40, 3e38, F32))


# -- the option -------------------------------------------------------------------------


@pytest.mark.parametrize("weight_dtype", [None, "float32", "float64", "bfloat16", "float16"])
def test_int8_activations_need_integer_weights(weight_dtype):
    W, b, L = np.ones((4, 6)), np.zeros(4), np.ones((5, 4))
    with pytest.raises(ValueError, match="activations='int8'"):
        DraftHead(W, b, L, weight_dtype=weight_dtype, activations="int8")
    head = DraftHead(W, b, L, weight_dtype=weight_dtype)
    assert head.activations == "float"
    with pytest.raises(ValueError, match="activations='int8'"):
        head.to(activations="int8")
    with pytest.raises(ValueError, match="activations='int8'"):
        DraftHead.from_stored(**head.stored_arrays(), activations="int8")


@pytest.mark.parametrize("bad", ["int4", "INT8", "", None, 8])
def test_unknown_activations_are_rejected(bad):
    with pytest.raises(ValueError, match="activations must be one of"):
        DraftHead(np.ones((4, 6)), np.zeros(4), np.ones((5, 4)), weight_dtype="q8",
                  activations=bad)


def test_to_and_from_stored_carry_the_option():
    rng = np.random.default_rng(17)
    exact = random_int_head(rng, "q8", 40, 32, 20, activations="float")
    fast = exact.to(activations="int8")
    assert fast.activations == "int8" and exact.activations == "float"
    assert fast.to(activations="int8") is fast
    assert "activations='int8'" in repr(fast)
    # Same stored weights, bit for bit.
    for name, array in exact.stored_arrays().items():
        assert np.array_equal(fast.stored_arrays()[name], array)
    assert fast.to("q4").activations == "int8"          # kept where it applies
    assert fast.to("float32").activations == "float"    # dropped where it does not
    rebuilt = DraftHead.from_stored(**fast.stored_arrays(), activations="int8")
    hidden = rng.standard_normal((3, 40)).astype(F32)
    assert_bits_equal(logits_of(rebuilt, hidden), logits_of(fast, hidden))
    restored = pickle.loads(pickle.dumps(fast))
    assert restored.activations == "int8"
    assert_bits_equal(logits_of(restored, hidden), logits_of(fast, hidden))


@pytest.mark.parametrize("weight_dtype", INT_WEIGHTS)
def test_save_load_then_int8_activations(weight_dtype, tmp_path):
    rng = np.random.default_rng(18)
    head = random_int_head(rng, weight_dtype, 45, 40, 30)
    path = tmp_path / "head.safetensors"
    head.save(path)
    loaded = DraftHead.load(path, activations="int8")
    assert loaded.activations == "int8"
    assert DraftHead.load(path).activations == "float"   # not stored in the file
    hidden = rng.standard_normal((4, 45)).astype(F32)
    assert_bits_equal(logits_of(loaded, hidden), logits_of(head, hidden))


def test_load_rejects_int8_activations_for_float_storage(tmp_path):
    head = DraftHead(np.ones((4, 6)), np.zeros(4), np.ones((5, 4)), weight_dtype="float16")
    path = tmp_path / "head.safetensors"
    head.save(path)
    with pytest.raises(ValueError, match="activations='int8'"):
        DraftHead.load(path, activations="int8")


def test_medusa_heads_with_int8_activations(tmp_path):
    rng = np.random.default_rng(19)
    d, vocab = 48, 30
    heads = [DraftHead(rng.standard_normal((d, d)) / 7, rng.standard_normal(d) * 0.1,
                       rng.standard_normal((vocab, d)), weight_dtype="q4", residual=True,
                       activations="int8") for _ in range(3)]
    medusa = MedusaHeads(heads)
    assert medusa.activations == "int8"
    hidden = rng.standard_normal((4, d)).astype(F32)
    together = medusa.predict(hidden, top_k=3)
    for i, head in enumerate(heads):
        alone = head.predict(hidden, top_k=3)
        assert (together.tokens[:, i] == alone.tokens).all()
        assert_bits_equal(together.token_probs[:, i], alone.token_probs)
    # A Medusa checkpoint, stored as q8 with int8 activations on loading.
    tensors = {}
    for i in range(2):
        tensors[f"{i}.0.linear.weight"] = rng.standard_normal((d, d)).astype(F32) / 7
        tensors[f"{i}.0.linear.bias"] = rng.standard_normal(d).astype(F32) * 0.1
        tensors[f"{i}.1.weight"] = rng.standard_normal((vocab, d)).astype(F32)
    from safetensors.numpy import save_file
    path = tmp_path / "medusa_lm_head.safetensors"
    save_file(tensors, str(path))
    loaded = eagle_fast.load_medusa(path, weight_dtype="q8", activations="int8")
    assert loaded.activations == "int8" and loaded.weight_dtype == "q8"
    exact = eagle_fast.load_medusa(path, weight_dtype="q8")
    assert exact.activations == "float"
    one = loaded.predict(hidden[0], top_k=2)
    assert one.tokens.shape == (2, 2)
    with pytest.raises(ValueError, match="activations='int8'"):
        eagle_fast.load_medusa(path, activations="int8")      # F32 storage


# -- the fused multiply-add the sums use (hardware FMA, or its emulation) -------------


def fma_cases():
    two = Fraction(2)
    cases = [
        # a * b = 2^-24 + 2^-60 above 1: just past the midpoint of 1 and its
        # successor -- a sum rounded to float64 first would tie and go to 1.
        (4097.0, float(16773121 * two ** -60), 1.0),
        (4097.0, float(-16773121 * two ** -60), -1.0),
        (-4097.0, float(16773121 * two ** -60), 1.0 + 2 ** -22),
        (4097.0, float(16773121 * two ** -61), 0.5),
        (3.0, 2.0 ** -30, 1.0),
        (0.0, 1.0, -0.0),
        (65024.0, 3.0e38, -3.0e38),
        (5.0, 3.0e38, 0.0),                       # overflows to inf
    ]
    rng = np.random.default_rng(20)
    for _ in range(300):
        a = float(rng.integers(-65024, 65025))
        b = float(F32(rng.standard_normal() * 2.0 ** rng.integers(-30, 30)))
        c = float(F32(-a * b * (1 + rng.standard_normal() * 2.0 ** -rng.integers(1, 30))))
        cases.append((a, b, c))
    return cases


def test_fused_multiply_add_rounds_once():
    from eagle_fast import _backend
    fma = _backend.active().draft.fma_f32
    for a, b, c in fma_cases():
        exact = Fraction(a) * Fraction(b) + Fraction(c)
        expected = round_to_f32(exact) if abs(exact) < 2 ** 128 else F32(np.inf)
        got = F32(fma(a, b, c))
        assert got == expected or (got == 0 == expected), (a, b, c, got, expected)


# -- the demo ---------------------------------------------------------------------------


def test_demo_takes_int8_activations(capsys, tmp_path):
    from eagle_fast import _cli
    assert _cli.main(["demo", "--preset", "tiny", "--weight-dtype", "q4", "--activations",
                      "int8", "--seconds", "0.01"]) == 0
    assert "weights stored as q4, int8 activations" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        _cli.main(["demo", "--preset", "tiny", "--activations", "int8"])
    assert "--activations int8 needs --weight-dtype" in capsys.readouterr().err
    path = tmp_path / "head.safetensors"
    DraftHead(np.ones((8, 16)), np.zeros(8), np.ones((50, 8)), weight_dtype="q8").save(path)
    assert _cli.main(["demo", "--checkpoint", str(path), "--activations", "int8",
                      "--seconds", "0.01"]) == 0
    capsys.readouterr()
    DraftHead(np.ones((8, 16)), np.zeros(8), np.ones((50, 8))).save(path)
    with pytest.raises(SystemExit):
        _cli.main(["demo", "--checkpoint", str(path), "--activations", "int8"])
    assert "--activations" in capsys.readouterr().err


@pytest.mark.parametrize("d_proj", [33, 40, 64])
def test_more_threads_than_groups(d_proj):
    # d_proj of 2 groups (or fewer than threads' worth): every thread's rows
    # are whole groups of 32, an empty share quantizes nothing.
    rng = np.random.default_rng(21)
    head = random_int_head(rng, "q8", 64, d_proj, 9000)
    assert head.nbytes >= 256 * 1024        # runs on the threads asked for
    hidden = rng.standard_normal((5, 64)).astype(F32)
    one = logits_of(head, hidden, num_threads=1)
    assert_bits_equal(logits_of(head, hidden, num_threads=2), one)
    assert_bits_equal(logits_of(head, hidden[2], num_threads=2), one[2])
