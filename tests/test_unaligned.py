"""Unaligned arrays: every entry point realigns them before a kernel reads them.

An array can be C-contiguous yet unaligned (``np.frombuffer`` at an odd
offset, a field of a packed record, a tensor at an odd offset of a file).  A
kernel that loads its elements in place then performs misaligned loads,
which is undefined behaviour in C (UBSan reports it; some CPUs fault).  So
the boundary must copy such arrays.  For every entry point, every array it
takes, the dtypes it accepts (float32, float64, the uint16 / float16 / int8
storage arrays, int64 d2t) and offsets 1, 2, 3 (those that misalign the
dtype):

* the results equal those of the same call on aligned copies, bit for bit;
* every array a kernel receives is C-contiguous and aligned -- checked by
  wrapping the active backend's kernel entry points (``KernelHead``,
  ``forward_heads``, ``spec_forward``, the tree kernels' ``row_topk``), on
  every backend.

Under the ASan+UBSan build (.ci/sanitize) a misaligned load would also abort
the run.
"""

from __future__ import annotations

import pickle
import types

import numpy as np
import pytest

import eagle_fast
from eagle_fast import DraftHead, MedusaHeads, _backend
from eagle_fast.speculative import dynamic_tree
from support import random_head

WEIGHT_DTYPES = [None, "float32", "float64", "bfloat16", "float16", "int8"]


def unaligned(array, offset: int) -> np.ndarray:
    """A writeable C-contiguous copy of ``array`` whose data starts ``offset``
    bytes past a 64-byte boundary."""
    array = np.asarray(array)
    buffer = bytearray(array.nbytes + 64 + offset)
    start = (-np.frombuffer(buffer, np.uint8).ctypes.data) % 64 + offset
    out = np.frombuffer(buffer, array.dtype, count=array.size, offset=start)
    out = out.reshape(array.shape)
    out[...] = array
    assert out.flags.c_contiguous
    assert out.flags.aligned == (offset % array.dtype.alignment == 0)
    return out


def misaligning_offsets(dtype) -> list[int]:
    """Offsets 1, 2, 3 that misalign ``dtype`` (int8 is never misaligned: 1)."""
    alignment = np.dtype(dtype).alignment
    return [o for o in (1, 2, 3) if o % alignment] or [1]


# Kernel entry points that take any buffer and check its alignment themselves
# (the spec function's fast path declines an unaligned buffer: None).
SELF_CHECKING = {"draft_from_hidden"}


class KernelInputs:
    """The active backend, wrapped so that every array a kernel entry point
    receives is recorded (``KernelHead`` and every public function of the
    draft, spec and other kernel modules); ``check()`` asserts they were all
    C-contiguous and aligned."""

    def __init__(self, real: _backend.Backend) -> None:
        self.bad: list[str] = []
        self.count = 0
        record = self.record

        def checked(module):
            namespace = types.SimpleNamespace(**{n: getattr(module, n) for n in dir(module)})
            for name in dir(module):
                value = getattr(module, name)
                if (name.startswith("_") or not callable(value) or isinstance(value, type)
                        or name in SELF_CHECKING):
                    continue

                def function(*args, _value=value, _name=name, **kwargs):
                    for i, arg in enumerate(args):
                        record(arg, f"{module.__name__}.{_name} argument {i}")
                    return _value(*args, **kwargs)
                setattr(namespace, name, function)
            return namespace

        class CheckedKernelHead(real.draft.KernelHead):
            def __init__(self, *args):
                for i, arg in enumerate(args):
                    record(arg, f"KernelHead argument {i}")
                super().__init__(*args)

            def forward(self, hidden, *args):
                record(hidden, "KernelHead.forward hidden")
                return super().forward(hidden, *args)

        class CheckedBackend(_backend.Backend):
            def module(self, concern):
                return checked(real.module(concern))

        draft = checked(real.draft)
        draft.KernelHead = CheckedKernelHead
        self.backend = CheckedBackend(real.name, real.simd_level, draft,  # type: ignore
                                      checked(real.spec))

    def record(self, array, what: str) -> None:
        if isinstance(array, np.ndarray):
            self.count += 1
            if not (array.flags.c_contiguous and array.flags.aligned):
                self.bad.append(f"{what}: {array.dtype} {array.shape} at address "
                                f"{array.ctypes.data:#x}")

    def check(self, calls_expected: bool = True) -> None:
        assert self.count or not calls_expected, "no kernel was called"
        assert not self.bad, "kernels received unaligned arrays: " + "; ".join(self.bad)


@pytest.fixture
def kernel_inputs(active_backend):
    real = _backend.active()
    inputs = KernelInputs(real)
    _backend._active = inputs.backend
    try:
        yield inputs
    finally:
        _backend._active = real


def outputs(result) -> list:
    return [getattr(result, name) for name in
            ("tokens", "token_probs", "logits", "probs", "draft_tokens")]


def assert_same(a, b) -> None:
    for x, y in zip(outputs(a), outputs(b)):
        if x is None or y is None:
            assert x is None and y is None
        else:
            assert x.dtype == y.dtype and np.array_equal(x, y)


def run(head, hidden):
    return head.predict(hidden, top_k=3, return_logits=True, return_probs=True)


def weights(dtype, d_model=13, d_proj=11, vocab=80, seed=1):
    return [a.astype(dtype) for a in
            random_head(np.random.default_rng(seed), d_model, d_proj, vocab)]


# ---------------------------------------------------------------------------
# Weights at construction, stored arrays, hidden states.
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("input_dtype", [np.float32, np.float64])
@pytest.mark.parametrize("weight_dtype", WEIGHT_DTYPES)
def test_weights_at_construction(kernel_inputs, weight_dtype, input_dtype):
    W, b, L = weights(input_dtype)
    expected = DraftHead(W, b, L, weight_dtype=weight_dtype)
    hidden = np.random.default_rng(2).standard_normal((5, 13))
    for offset in misaligning_offsets(input_dtype):
        for position in range(3):
            args = [W, b, L]
            args[position] = unaligned(args[position], offset)
            head = DraftHead(*args, weight_dtype=weight_dtype)
            assert_same(run(head, hidden), run(expected, hidden))
            assert_same(run(head, hidden[1]), run(expected, hidden[1]))
            for name, array in head.stored_arrays().items():
                assert array.tobytes() == expected.stored_arrays()[name].tobytes(), name
                assert array.flags.aligned, name
    kernel_inputs.check()


@pytest.mark.parametrize("weight_dtype", ["float32", "float64", "bfloat16", "float16", "int8"])
def test_from_stored_arrays(kernel_inputs, weight_dtype):
    W, b, L = weights(np.float64)
    expected = DraftHead(W, b, L, weight_dtype=weight_dtype)
    stored = expected.stored_arrays()
    keyword = {"projection.weight": "projection_weight", "projection.bias": "projection_bias",
               "lm_head.weight": "lm_head_weight", "projection.weight_scale": "projection_scales",
               "lm_head.weight_scale": "lm_head_scales"}
    kwargs = {keyword[name]: array for name, array in stored.items()}
    hidden = np.random.default_rng(3).standard_normal((4, 13))
    for name, array in stored.items():
        for offset in misaligning_offsets(array.dtype):
            changed = dict(kwargs)
            changed[keyword[name]] = unaligned(array, offset)
            head = DraftHead.from_stored(weight_dtype, **changed)
            assert_same(run(head, hidden), run(expected, hidden))
            # Pickling goes through from_stored too.
            assert_same(run(pickle.loads(pickle.dumps(head)), hidden), run(expected, hidden))
            assert all(a.flags.aligned for a in head.stored_arrays().values())
    kernel_inputs.check()


@pytest.mark.parametrize("hidden_dtype", [np.float32, np.float64])
@pytest.mark.parametrize("weight_dtype", ["float32", "float64", "bfloat16", "int8"])
def test_hidden_states(kernel_inputs, weight_dtype, hidden_dtype):
    """The fast path (hidden of the head's dtype) included; read-only too."""
    head = DraftHead(*weights(np.float64), weight_dtype=weight_dtype)
    pool = np.random.default_rng(4).standard_normal((9, 13)).astype(hidden_dtype)
    for offset in misaligning_offsets(hidden_dtype):
        for states in (pool[0], pool[:1], pool[:5], pool):
            moved = unaligned(states, offset)
            assert_same(run(head, moved), run(head, states))
            moved.flags.writeable = False
            assert_same(run(head, moved), run(head, states))
            # Beyond the streaming top-k (full sort of the logits).
            assert_same(head.predict(moved, top_k=70), head.predict(states, top_k=70))
    kernel_inputs.check()


def test_one_shot_predict_and_compare(kernel_inputs):
    W, b, L = weights(np.float32)
    hidden = np.random.default_rng(5).standard_normal((3, 13)).astype(np.float32)
    for weight_dtype in (None, "bfloat16", "int8"):
        expected = eagle_fast.predict(hidden, W, b, L, weight_dtype=weight_dtype, top_k=2)
        got = eagle_fast.predict(*(unaligned(a, 2) for a in (hidden, W, b, L)),
                                 weight_dtype=weight_dtype, top_k=2)
        assert_same(got, expected)
    head, low = DraftHead(W, b, L), DraftHead(W, b, L, weight_dtype="int8")
    want = eagle_fast.compare(head, low, hidden)
    got = eagle_fast.compare(head, low, unaligned(hidden, 1))
    assert (got.top1_agreement, got.topk_overlap, got.max_abs_confidence_delta,
            got.mean_kl) == (want.top1_agreement, want.topk_overlap,
                             want.max_abs_confidence_delta, want.mean_kl)
    kernel_inputs.check()


@pytest.mark.parametrize("d2t_dtype", [np.int64, np.int32, np.uint16])
def test_d2t(kernel_inputs, d2t_dtype):
    W, b, L = weights(np.float32)
    d2t = (np.arange(80) * 3 % 211 - np.arange(80)).astype(np.int64)
    d2t = d2t - min(0, d2t.min()) if d2t_dtype == np.uint16 else d2t
    d2t = d2t.astype(d2t_dtype)
    expected = DraftHead(W, b, L, d2t=d2t, target_vocab_size=300)
    hidden = np.random.default_rng(6).standard_normal(13).astype(np.float32)
    for offset in misaligning_offsets(d2t_dtype):
        head = DraftHead(W, b, L, d2t=unaligned(d2t, offset), target_vocab_size=300)
        assert_same(run(head, hidden), run(expected, hidden))
    kernel_inputs.check()


@pytest.mark.parametrize("weight_dtype", ["float32", "float16", "int8"])
def test_medusa_heads(kernel_inputs, weight_dtype):
    rng = np.random.default_rng(7)
    raw = [random_head(rng, 12, 12, 80) for _ in range(3)]
    expected = MedusaHeads([DraftHead(*w, residual=True, weight_dtype=weight_dtype)
                            for w in raw])
    medusa = MedusaHeads([DraftHead(*(unaligned(a, 3) for a in w), residual=True,
                                    weight_dtype=weight_dtype) for w in raw])
    pool = rng.standard_normal((6, 12)).astype(np.float32)
    for offset in (1, 2, 3):
        for states in (pool[0], pool):
            for top_k in (2, 70):
                got = medusa.predict(unaligned(states, offset), top_k=top_k)
                want = expected.predict(states, top_k=top_k)
                assert np.array_equal(got.tokens, want.tokens)
                assert np.array_equal(got.token_probs, want.token_probs)
    kernel_inputs.check()


# ---------------------------------------------------------------------------
# The spec function.
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_spec_function(kernel_inputs, dtype):
    rng = np.random.default_rng(8)
    W, b, L = (a.astype(dtype) for a in random_head(rng, 9, 7, 23))
    h = rng.standard_normal(9).astype(dtype)
    expected = eagle_fast.eagle_draft_from_hidden(h, W, b, L, temperature=0.8)
    for offset in misaligning_offsets(dtype):
        for position in range(4):
            args = [h, W, b, L]
            args[position] = unaligned(args[position], offset)
            assert eagle_fast.eagle_draft_from_hidden(*args, temperature=0.8) == expected
        moved = [unaligned(a, offset) for a in (h, W, b, L)]
        assert eagle_fast.eagle_draft_from_hidden(*moved, temperature=0.8) == expected
    # The fallback's fast path may compute everything itself.
    kernel_inputs.check(calls_expected=_backend.active().name == "compiled")


# ---------------------------------------------------------------------------
# A checkpoint whose tensors sit at odd file offsets.
# ---------------------------------------------------------------------------

def test_checkpoint_with_odd_tensor_offsets(kernel_inputs, tmp_path):
    """safetensors pads its own headers to 8 bytes, but the format does not
    require it: a file whose header length is odd puts every tensor at an
    odd offset.  Written by hand here, loaded, and run."""
    pytest.importorskip("safetensors")
    import json
    import struct

    saved = tmp_path / "aligned.safetensors"
    for weight_dtype in ("float32", "bfloat16", "int8"):
        head = DraftHead(*weights(np.float32), weight_dtype=weight_dtype)
        head.save(saved)
        raw = saved.read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8:8 + n])
        text = json.dumps(header, separators=(",", ":"))
        text += " " * ((1 - len(text)) % 8)   # header length = 1 (mod 8)
        assert len(text) % 8 == 1
        odd = tmp_path / f"odd-{weight_dtype}.safetensors"
        odd.write_bytes(struct.pack("<Q", len(text)) + text.encode() + raw[8 + n:])
        loaded = DraftHead.load(odd)
        hidden = np.random.default_rng(9).standard_normal((3, 13))
        assert_same(run(loaded, hidden), run(head, hidden))
    kernel_inputs.check()


# ---------------------------------------------------------------------------
# Dynamic trees: the row top-k kernel reads the drafter's log-probs in place.
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dynamic_tree_logprobs(kernel_inputs, dtype):
    vocab, top_k = 40, 3
    rng = np.random.default_rng(10)
    table = rng.standard_normal((50, vocab))
    table = (table - np.log(np.exp(table).sum(axis=1, keepdims=True))).astype(dtype)

    def build(offset):
        calls = iter(range(1, 50))

        def expand(parent_rows, tokens):
            rows = table[[next(calls) for _ in parent_rows]]
            return rows if offset is None else unaligned(rows, offset)
        root = table[0] if offset is None else unaligned(table[0], offset)
        tree = dynamic_tree(5, root, expand, top_k=top_k, depth=3, total_tokens=12)
        return tree.tokens, tree.parents, tree.scores

    expected = build(None)
    for offset in misaligning_offsets(dtype):
        for got, want in zip(build(offset), expected):
            assert got.dtype == want.dtype and np.array_equal(got, want)
    kernel_inputs.check()
