"""The shared work threshold (eagle_fast._threads): which thread count each
kernel call is given, and that the serial and parallel paths either side of
it give identical bits.

The rule: a call's work is its weight bytes x states (attention: the key and
value bytes its queries read); each thread needs PARALLEL_MIN_WORK_BYTES of
it.  The suite runs with a small threshold (conftest.py); the tests here set
their own.  Nothing is timed.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from eagle_fast import DraftHead, EagleDrafter, MedusaHeads, _threads
from eagle_fast._storage import StoredMatrix
from support import PRODUCTION_MIN_WORK_BYTES, backend_independent, random_head

STORAGES = ["float32", "float64", "bfloat16", "float16", "int8", "q8", "q4"]


def brute_force_team(work, n_threads, min_bytes):
    """The most threads t <= n_threads that each get min_bytes of work (1 at least)."""
    if min_bytes <= 0:
        return n_threads
    return max(t for t in range(1, n_threads + 1) if t == 1 or t * min_bytes <= work)


def capped(num_threads, default):
    """resolve_num_threads' cap: no more threads than CPUs (or the default)."""
    return min(num_threads, max(default, os.cpu_count() or 1))


def bits(a):
    a = np.ascontiguousarray(a)
    return a.view(np.uint64 if a.dtype == np.float64 else np.uint32)


@backend_independent
@pytest.mark.parametrize("min_bytes", [0, 1, 7, 1000, 128 * 1024, PRODUCTION_MIN_WORK_BYTES])
def test_team_size_is_the_most_threads_that_each_get_the_minimum(monkeypatch, min_bytes):
    monkeypatch.setattr(_threads, "PARALLEL_MIN_WORK_BYTES", min_bytes)
    works = {0, 1, 6, 7, 13, 14, 999, 1000, 1999, 2000, 2001, 3000, 7 << 20}
    works |= {k * min_bytes + d for k in range(1, 6) for d in (-1, 0, 1)}
    for work in sorted(w for w in works if w >= 0):
        for n in range(1, 6):
            assert _threads.team_size(work, n) == brute_force_team(work, n, min_bytes), (
                work, n)


@backend_independent
def test_production_threshold_keeps_small_drafters_serial_and_large_heads_parallel(
        monkeypatch):
    """What the value was chosen for (README, "Threads and a busy machine"):
    every product of the bench's small drafter (d = 128, vocabulary 2048,
    8 frontier nodes) is serial; Llama-7B-size heads and EAGLE layers stay
    on every thread."""
    monkeypatch.setattr(_threads, "PARALLEL_MIN_WORK_BYTES", PRODUCTION_MIN_WORK_BYTES)
    small_drafter = {"fc": (128, 256), "qkv": (256, 128), "o": (128, 128),
                     "gate_up": (704, 128), "down": (128, 352), "lm_head": (2048, 128)}
    for name, (rows, cols) in small_drafter.items():
        for states in (1, 8, 9):
            assert _threads.team_size(rows * cols * 4 * states, 2) == 1, (name, states)
    attention_bytes = 2 * 8 * 4 * 256 * 32 * 4     # 8 nodes, 4 heads, 256 positions
    assert _threads.team_size(attention_bytes, 2) == 1
    head_7b = (4096 * 4096 + 32000 * 4096) * 4      # float32 draft head, one state
    assert _threads.team_size(head_7b, 2) == 2
    assert _threads.team_size(head_7b // 4, 2) == 2  # the same head in int8
    assert _threads.team_size(4096 * 4096 * 2, 2) == 2  # one bfloat16 EAGLE-7B matrix
    assert _threads.team_size(head_7b, 64) == 64


# ---------------------------------------------------------------------------
# Which thread count reaches the kernels.
# ---------------------------------------------------------------------------

class RecordingKernel:
    """Stands in for a head's kernel: records the n_threads of each call."""

    def __init__(self, kernel):
        self.kernel = kernel
        self.threads = []

    def forward(self, *args):
        self.threads.append(args[-1])
        return self.kernel.forward(*args)


def test_predict_gives_the_kernel_the_threads_of_its_work(monkeypatch):
    rng = np.random.default_rng(0)
    W, b, L = random_head(rng, 24, 20, 50, np.float32)
    head = DraftHead(W, b, L)
    nbytes = W.nbytes + b.nbytes + L.nbytes
    min_bytes = nbytes // 3 + 1     # one state: 1 thread; 6 states: 2 threads per 2
    monkeypatch.setattr(_threads, "PARALLEL_MIN_WORK_BYTES", min_bytes)
    recorder = RecordingKernel(head._kernel)
    head._kernel = recorder
    expected = []
    for batch in (1, 2, 3, 6, 12):
        hidden = rng.standard_normal((batch, 24)).astype(np.float32)
        for num_threads in (1, 2, 3):
            head.predict(hidden[0] if batch == 1 else hidden, num_threads=num_threads)
            expected.append(brute_force_team(
                nbytes * batch, capped(num_threads, head._default_threads), min_bytes))
    assert recorder.threads == expected
    assert {1, 2} <= set(expected)


def test_medusa_gives_forward_heads_the_threads_of_one_head(monkeypatch):
    rng = np.random.default_rng(1)
    heads = [DraftHead(*random_head(rng, 16, 16, 40, np.float32), residual=True)
             for _ in range(3)]
    medusa = MedusaHeads(heads)
    one_head = heads[0].nbytes
    monkeypatch.setattr(_threads, "PARALLEL_MIN_WORK_BYTES", one_head)
    seen = []
    draft = medusa._draft
    original = draft.forward_heads

    def recording(kernels, hidden, temperature, top_k, n_threads):
        seen.append(n_threads)
        return original(kernels, hidden, temperature, top_k, n_threads)

    monkeypatch.setattr(draft, "forward_heads", recording)
    hidden = rng.standard_normal((4, 16)).astype(np.float32)
    serial = medusa.predict(hidden[0], top_k=3, num_threads=1)
    for states, expected in ((hidden[0], 1), (hidden[:2], 2), (hidden[:3], 3)):
        result = medusa.predict(states, top_k=3, num_threads=3)
        assert seen[-1] == min(expected, capped(3, heads[0]._default_threads))
    # The thread count changes no bit.
    again = medusa.predict(hidden[0], top_k=3, num_threads=3)
    assert np.array_equal(again.tokens, serial.tokens)
    assert np.array_equal(bits(again.token_probs), bits(serial.token_probs))
    assert result.tokens.shape == (3, 3, 3)


D, HEADS, KV, INTER, VOCAB = 16, 4, 2, 24, 40
HD = D // HEADS


def small_drafter(rng):
    w = {"fc.weight": rng.normal(0, 0.3, (D, 2 * D)), "fc.bias": rng.normal(0, 0.1, D),
         "layers.0.self_attn.q_proj.weight": rng.normal(0, 0.3, (HEADS * HD, D)),
         "layers.0.self_attn.k_proj.weight": rng.normal(0, 0.3, (KV * HD, D)),
         "layers.0.self_attn.v_proj.weight": rng.normal(0, 0.3, (KV * HD, D)),
         "layers.0.self_attn.o_proj.weight": rng.normal(0, 0.3, (D, HEADS * HD)),
         "layers.0.mlp.gate_proj.weight": rng.normal(0, 0.3, (INTER, D)),
         "layers.0.mlp.up_proj.weight": rng.normal(0, 0.3, (INTER, D)),
         "layers.0.mlp.down_proj.weight": rng.normal(0, 0.3, (D, INTER)),
         "layers.0.post_attention_layernorm.weight": 1 + rng.normal(0, 0.1, D),
         "embed_tokens.weight": rng.normal(0, 1.0, (VOCAB, D))}
    config = {"architectures": ["LlamaForCausalLM"], "hidden_size": D,
              "intermediate_size": INTER, "num_attention_heads": HEADS,
              "num_key_value_heads": KV, "num_hidden_layers": 1, "vocab_size": VOCAB,
              "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "hidden_act": "silu",
              "max_position_embeddings": 2048, "bias": True}
    return EagleDrafter.from_state_dict(w, config, lm_head=rng.normal(0, 3.0, (VOCAB, D)))


class RecordingOps:
    """The drafter's layer ops, recording each product's and attention's
    (work in bytes from the shapes, n_threads)."""

    def __init__(self, ops):
        self.ops = ops
        self.calls = []

    def __getattr__(self, name):
        return getattr(self.ops, name)

    def matmul(self, matrix, x, n_threads=1):
        self.calls.append(("matmul", matrix.rows * matrix.cols * 4 * x.shape[0], n_threads))
        return self.ops.matmul(matrix, x, n_threads)

    def attention(self, q, k, v, n_stable, extra_mask, n_threads=1):
        n, heads, head_dim = q.shape
        work = 2 * n * heads * (n_stable + extra_mask.shape[1]) * head_dim * 4
        self.calls.append(("attention", work, n_threads))
        return self.ops.attention(q, k, v, n_stable, extra_mask, n_threads)


def test_drafter_calls_get_the_threads_of_their_work_and_the_same_bits(monkeypatch):
    rng = np.random.default_rng(2)
    drafter = small_drafter(rng)
    ops = RecordingOps(drafter._ops)
    drafter._ops = ops
    ids = rng.integers(0, VOCAB, 9)
    hidden = rng.standard_normal((8, D)).astype(np.float32)

    def tree(min_bytes, num_threads):
        monkeypatch.setattr(_threads, "PARALLEL_MIN_WORK_BYTES", min_bytes)
        drafter.reset()
        ops.calls.clear()
        out = drafter.draft_tree(hidden, ids, top_k=3, depth=3, total_tokens=12,
                                 num_threads=num_threads)
        return out, list(ops.calls)

    serial, calls = tree(PRODUCTION_MIN_WORK_BYTES, 2)
    assert calls and all(threads == 1 for _, _, threads in calls)
    works = sorted({work for _, work, _ in calls})
    min_bytes = works[len(works) // 2] // 2     # about half the calls go parallel
    for threshold, num_threads in ((0, 2), (min_bytes, 2), (min_bytes, 3), (0, 1)):
        got, calls = tree(threshold, num_threads)
        n = capped(num_threads, drafter._default_threads)
        assert [t for _, _, t in calls] == [
            brute_force_team(work, n, threshold) for _, work, _ in calls]
        assert got.tokens.tolist() == serial.tokens.tolist()
        assert got.parents.tolist() == serial.parents.tolist()
        assert np.array_equal(bits(got.scores), bits(serial.scores)), (threshold, num_threads)
    _, calls = tree(min_bytes, 2)
    assert {t for _, _, t in calls} == {1, 2}


# ---------------------------------------------------------------------------
# The kernels split whatever they are given: identical bits for any thread
# count, down to fewer rows than threads (the layer kernels no longer keep
# small matrices serial themselves).
# ---------------------------------------------------------------------------

def layer_ops():
    from eagle_fast import _backend
    return _backend.active().module("layers")


@pytest.mark.parametrize("storage", STORAGES)
def test_layer_products_have_the_same_bits_on_any_thread_count(storage):
    rng = np.random.default_rng(len(storage))
    compute = np.float64 if storage == "float64" else np.float32
    for rows, cols in ((1, 5), (2, 33), (3, 64), (7, 3), (37, 21), (130, 64)):
        w = rng.normal(0, 1, (rows, cols))
        stored = StoredMatrix.encode(w, storage, "w")
        native = storage in ("float32", "float64")
        m = layer_ops().Matrix(stored.data, stored.scales, "native" if native else storage,
                               compute, stored.n_cols)
        exact = stored.dequantize().astype(np.float64)
        for n in (1, 4, 9):
            x = rng.normal(0, 1, (n, cols)).astype(compute)
            one = layer_ops().matmul(m, x, 1)
            tol = 1e-12 if compute == np.float64 else 1e-4
            np.testing.assert_allclose(one, x.astype(np.float64) @ exact.T, rtol=tol,
                                       atol=tol * np.sqrt(cols))
            for threads in (2, 3, 8):
                assert np.array_equal(bits(layer_ops().matmul(m, x, threads)), bits(one)), (
                    rows, cols, n, threads)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_attention_has_the_same_bits_on_any_thread_count(dtype):
    rng = np.random.default_rng(5)
    for n, n_stable, n_extra in ((1, 0, 1), (2, 3, 2), (5, 40, 5)):
        q = rng.normal(0, 1, (n, 4, 6)).astype(dtype)
        k = rng.normal(0, 1, (n_stable + n_extra, 2, 6)).astype(dtype)
        v = rng.normal(0, 1, (n_stable + n_extra, 2, 6)).astype(dtype)
        mask = rng.random((n, n_extra)) < 0.6
        mask[:, -1] = True
        one = layer_ops().attention(q, k, v, n_stable, mask, 1)
        for threads in (2, 3, 8):
            assert np.array_equal(bits(layer_ops().attention(q, k, v, n_stable, mask, threads)),
                                  bits(one)), (n, n_stable, threads)


@pytest.mark.parametrize("weight_dtype", ["float32", "float64", "bfloat16", "int8", "q4"])
def test_draft_head_either_side_of_the_threshold_gives_the_same_bits(monkeypatch,
                                                                     weight_dtype):
    """predict with the head's work just under and just over the threshold
    (serial, then two threads) against num_threads=1: identical logits and
    tokens, the documented guarantee (the softmax sums are combined per
    chunk of rows, so probabilities may differ in their last bits); and
    logits close to a float64 reference."""
    rng = np.random.default_rng(7)
    dtype = np.float64 if weight_dtype == "float64" else np.float32
    W, b, L = random_head(rng, 40, 36, 301, dtype, lm_scale=3.0)
    head = DraftHead(W, b, L) if weight_dtype in ("float32", "float64") else \
        DraftHead(W, b, L, weight_dtype=weight_dtype)
    hidden = rng.standard_normal((3, 40)).astype(dtype)
    serial = head.predict(hidden, top_k=5, return_logits=True, return_probs=True,
                          num_threads=1)
    wq, lq = head.projection_weight.astype(np.float64), head.lm_head_weight.astype(np.float64)
    v = hidden.astype(np.float64) @ wq.T + b
    logits = (v / (1 + np.exp(-v))) @ lq.T
    np.testing.assert_allclose(serial.logits, logits, rtol=1e-4, atol=1e-4)
    work = head.nbytes * 3
    for min_bytes in (work // 2 + 1, work // 2, 0):   # serial, 2 threads, every thread
        monkeypatch.setattr(_threads, "PARALLEL_MIN_WORK_BYTES", min_bytes)
        got = head.predict(hidden, top_k=5, return_logits=True, return_probs=True,
                           num_threads=2)
        assert np.array_equal(got.tokens, serial.tokens)
        assert np.array_equal(bits(got.logits), bits(serial.logits)), min_bytes
        tol = 1e-13 if dtype == np.float64 else 1e-6
        for name in ("probs", "token_probs"):
            np.testing.assert_allclose(getattr(got, name), getattr(serial, name), rtol=tol,
                                       atol=0)
