"""ggml's own Q8_0 / Q4_0 draft head, an optional contender of bench_predict.py.

When ``ggml-python`` (the ``ggml`` module: ctypes bindings over a ggml it
builds from source) is importable, bench_predict times, beside eagle_fast's
q8 / q4 heads, the same head computed by ggml's CPU backend:

    logits = mul_mat(L, silu(mul_mat(W, h) + b)),  softmax,  argmax

with W and L quantized by ggml's own ``ggml_quantize_chunk`` to GGML_TYPE_Q8_0
(blocks of 32 int8 + one fp16 scale, 34 bytes / 32 weights) or GGML_TYPE_Q4_0
(blocks of 32 4-bit codes + one fp16 scale, 18 bytes / 32 weights) from the
same float32 weights; b stays float32.  ggml quantizes the activations (h, then
x) to Q8_0 inside mul_mat and uses its integer dot products (AVX2
``vpmaddubsw`` / ``vpmaddwd`` in a native build), so its results are not those
of an exact computation on the dequantized weights: its token check is a
top-1 agreement with the float32 head over a few states instead.

Timing: the graph (one per batch size) and its compute plan (``ggml_graph_plan``
with the bench's thread count, work buffer allocated once) are built once,
outside the timed call; the timed call is ``ggml_graph_compute`` on that graph
(which enters ggml's thread pool -- OpenMP in a default build -- every call, as
llama.cpp does per token) plus reading the B argmax tokens.  The input tensor's
data pointer is the bench's hidden-state array itself (no copy).  These
"plain" heads keep the weights in ggml's standard block layout.

For Q4_0 a second head runs as llama.cpp runs it on AVX2 ("ggml Q4_0
repacked", GgmlRepackedHead): W and L in the CPU backend's CPU_REPACK buffer
(re-laid as Q4_0_8x8 blocks, 8 rows interleaved, the same bytes, for ggml's
gemv / gemm kernels) and the graph computed by ``ggml_backend_graph_compute``
(which keeps its plan's work buffer between calls); the states are copied in
once, when its graph is built.  ggml has no x86 repack for Q8_0.

Each head also runs on 1 thread (rows "..., 1 thread"): ggml's thread
barriers spin, so on a loaded machine one thread can beat two.

``python bench/_ggml_contender.py`` checks the wrapper: ggml's logits equal,
to float32 rounding, float64 NumPy on ggml's own dequantized weights and
Q8_0-rounded activations (without that rounding they differ by ~1 %).

Not a dependency of eagle_fast: ``pip install ggml-python`` (e.g. with
``CMAKE_ARGS="-DGGML_NATIVE=ON"``) to enable it.
"""

from __future__ import annotations

import ctypes
from typing import Any, Optional, Sequence

import numpy as np

try:
    import ggml
    IMPORT_ERROR: Optional[str] = None
except Exception as error:  # ImportError, or the shared library failing to load
    ggml = None
    IMPORT_ERROR = f"{type(error).__name__}: {error}"

# eagle_fast weight dtype -> ggml type name
GGML_TYPES = {"q8": "Q8_0", "q4": "Q4_0"}


def unavailable_reason() -> Optional[str]:
    """Why the ggml contender cannot run, or None when it can."""
    if ggml is None:
        return f"ggml-python not importable ({IMPORT_ERROR}): pip install ggml-python"
    return None


def describe() -> str:
    """One line on the ggml build (version and the CPU features it uses)."""
    if ggml is None:
        return "not importable"
    features = [name for name in ("avx", "avx2", "fma", "f16c", "avx_vnni", "avx512",
                                  "llamafile")
                if getattr(ggml, f"ggml_cpu_has_{name}", lambda: 0)()]
    version = getattr(ggml, "__version__", "?")
    return f"ggml-python {version}, CPU features: {' '.join(features) or 'none'}"


def _context(mem_size: int, no_alloc: bool) -> Any:
    params = ggml.ggml_init_params(mem_size=mem_size, mem_buffer=None, no_alloc=no_alloc)
    ctx = ggml.ggml_init(params)
    if ctx is None:
        raise MemoryError(f"ggml_init failed ({mem_size} bytes)")
    return ctx


class GgmlHead:
    """W, b, L as ggml tensors of one quantized type; their data live in NumPy
    buffers this object owns (``ggml_quantize_chunk`` writes them)."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray, lm_head: np.ndarray,
                 weight_dtype: str, n_threads: int) -> None:
        reason = unavailable_reason()
        if reason is not None:
            raise RuntimeError(reason)
        if weight_dtype not in GGML_TYPES:
            raise ValueError(f"weight_dtype must be one of {sorted(GGML_TYPES)}, "
                             f"got {weight_dtype!r}")
        ggml.ggml_cpu_init()
        self.weight_dtype = weight_dtype
        self.type_name = GGML_TYPES[weight_dtype]
        self.ggml_type = getattr(ggml, f"GGML_TYPE_{self.type_name}")
        self.n_threads = n_threads
        self.d_proj, self.d_model = weight.shape
        self.vocab = lm_head.shape[0]
        self._buffers: list[np.ndarray] = []
        self._ctx = _context(4 * ggml.ggml_tensor_overhead(), no_alloc=True)
        self.weight = self._quantized(weight)
        self.lm_head = self._quantized(lm_head)
        self.bias = ggml.ggml_new_tensor_1d(self._ctx, ggml.GGML_TYPE_F32, self.d_proj)
        self._attach(self.bias, np.array(bias, dtype=np.float32))
        self.nbytes = sum(int(ggml.ggml_nbytes(t))
                          for t in (self.weight, self.bias, self.lm_head))

    def _attach(self, tensor: Any, array: np.ndarray) -> None:
        self._buffers.append(array)
        tensor.contents.data = array.ctypes.data

    def _quantized(self, matrix: np.ndarray) -> Any:
        rows, cols = matrix.shape
        source = np.ascontiguousarray(matrix, dtype=np.float32)
        tensor = ggml.ggml_new_tensor_2d(self._ctx, self.ggml_type, cols, rows)
        data = np.empty(int(ggml.ggml_nbytes(tensor)), dtype=np.uint8)
        written = ggml.ggml_quantize_chunk(
            self.ggml_type, source.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
            data.ctypes.data, 0, rows, cols, None)
        if written != data.nbytes:
            raise RuntimeError(f"ggml_quantize_chunk wrote {written} bytes, "
                               f"expected {data.nbytes}")
        self._attach(tensor, data)
        return tensor

    def graph(self, hidden: np.ndarray, n_threads: Optional[int] = None) -> GgmlGraph:
        """The graph for these states, computed on ``n_threads`` (default: the head's)."""
        return GgmlGraph(self, hidden, self.n_threads if n_threads is None else n_threads)

    def __del__(self) -> None:
        if getattr(self, "_ctx", None) is not None:
            ggml.ggml_free(self._ctx)
            self._ctx = None


class GgmlGraph:
    """The head's graph for one batch of states (``hidden`` (d_model,) or
    (B, d_model) float32, used in place), with its compute plan."""

    def __init__(self, head: GgmlHead, hidden: np.ndarray, n_threads: int) -> None:
        if hidden.dtype != np.float32 or not hidden.flags.c_contiguous:
            raise ValueError("hidden must be C-contiguous float32")
        self.head = head                        # keeps the weights alive
        self.hidden = hidden
        batch = 1 if hidden.ndim == 1 else hidden.shape[0]
        self.batch = batch
        activations = 4 * batch * (3 * head.d_proj + 2 * head.vocab + 1) + (1 << 20)
        self._ctx = _context(ggml.ggml_graph_overhead() + 16 * ggml.ggml_tensor_overhead()
                             + activations, no_alloc=False)
        ctx = self._ctx
        inputs = ggml.ggml_new_tensor_2d(ctx, ggml.GGML_TYPE_F32, head.d_model, batch)
        inputs.contents.data = hidden.ctypes.data
        projected = ggml.ggml_mul_mat(ctx, head.weight, inputs)          # (B, d_proj)
        features = ggml.ggml_silu(ctx, ggml.ggml_add(ctx, projected, head.bias))
        logits = ggml.ggml_mul_mat(ctx, head.lm_head, features)          # (B, vocab)
        self.tokens = ggml.ggml_argmax(ctx, ggml.ggml_soft_max(ctx, logits))
        self.logits = logits
        self._graph = ggml.ggml_new_graph(ctx)
        ggml.ggml_build_forward_expand(self._graph, self.tokens)
        self.n_threads = n_threads
        self._plan = ggml.ggml_graph_plan(self._graph, n_threads, None)
        self._work = np.empty(max(1, int(self._plan.work_size)), dtype=np.uint8)
        self._plan.work_data = ctypes.cast(self._work.ctypes.data,
                                           ctypes.POINTER(ctypes.c_uint8))
        self._plan_ref = ctypes.byref(self._plan)
        self._out = (ctypes.c_int32 * batch).from_address(
            ggml.ggml_get_data(self.tokens))

    def run(self) -> np.ndarray:
        """One forward pass: the top-1 token of each state, shape (B,)."""
        status = ggml.ggml_graph_compute(self._graph, self._plan_ref)
        if status != 0:
            raise RuntimeError(f"ggml_graph_compute returned status {status}")
        return np.frombuffer(self._out, dtype=np.int32).copy()

    def logits_array(self) -> np.ndarray:
        """The last run's logits, (B, vocab) float32 (a copy)."""
        pointer = ggml.ggml_get_data(self.logits)
        count = self.batch * self.head.vocab
        flat = np.frombuffer((ctypes.c_float * count).from_address(pointer), np.float32)
        return flat.reshape(self.batch, self.head.vocab).copy()

    def __del__(self) -> None:
        if getattr(self, "_ctx", None) is not None:
            ggml.ggml_free(self._ctx)
            self._ctx = None


def _repack_buffer_type() -> Any:
    """The CPU backend's "CPU_REPACK" extra buffer type, or None."""
    device = ggml.ggml_backend_dev_by_type(ggml.GGML_BACKEND_DEVICE_TYPE_CPU)
    registry = ggml.ggml_backend_dev_backend_reg(device)
    address = ggml.ggml_backend_reg_get_proc_address(registry,
                                                     b"ggml_backend_dev_get_extra_bufts")
    if not address:
        return None
    get_extra = ctypes.CFUNCTYPE(ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p)(address)
    types = get_extra(device)
    index = 0
    while types[index]:
        if ggml.ggml_backend_buft_name(types[index]) == b"CPU_REPACK":
            return types[index]
        index += 1
    return None


class GgmlRepackedHead:
    """The Q4_0 head as llama.cpp runs it on an AVX2 CPU: W and L in the CPU
    backend's "CPU_REPACK" buffer, where ``ggml_backend_tensor_set`` re-lays
    the Q4_0 blocks 8 rows at a time (Q4_0_8x8; same bytes) for ggml's
    gemv/gemm kernels; b in a plain CPU buffer; graphs computed by
    ``ggml_backend_graph_compute`` on a CPU backend.  (ggml has no AVX2 repack
    for Q8_0, so there is no Q8_0 twin.)"""

    def __init__(self, weight: np.ndarray, bias: np.ndarray, lm_head: np.ndarray,
                 weight_dtype: str, n_threads: int) -> None:
        if weight_dtype != "q4":
            raise ValueError("only q4 (Q4_0) has a repacked layout on x86")
        plain = GgmlHead(weight, bias, lm_head, weight_dtype, n_threads)
        buffer_type = _repack_buffer_type()
        if buffer_type is None:
            raise RuntimeError("this ggml build has no CPU_REPACK buffer type")
        self.weight_dtype, self.type_name = weight_dtype, "Q4_0r"
        self.ggml_type, self.n_threads = plain.ggml_type, n_threads
        self.d_proj, self.d_model, self.vocab = plain.d_proj, plain.d_model, plain.vocab
        self.nbytes = plain.nbytes
        self._ctx = _context(2 * ggml.ggml_tensor_overhead(), no_alloc=True)
        self._bias_ctx = _context(ggml.ggml_tensor_overhead(), no_alloc=True)
        self.weight = ggml.ggml_new_tensor_2d(self._ctx, self.ggml_type, self.d_model,
                                              self.d_proj)
        self.lm_head = ggml.ggml_new_tensor_2d(self._ctx, self.ggml_type, self.d_proj,
                                               self.vocab)
        self.bias = ggml.ggml_new_tensor_1d(self._bias_ctx, ggml.GGML_TYPE_F32, self.d_proj)
        self._backend = ggml.ggml_backend_cpu_init()
        self._buffer = ggml.ggml_backend_alloc_ctx_tensors_from_buft(self._ctx, buffer_type)
        self._bias_buffer = ggml.ggml_backend_alloc_ctx_tensors(self._bias_ctx, self._backend)
        if not self._buffer or not self._bias_buffer:
            raise MemoryError("ggml_backend_alloc_ctx_tensors failed")
        for mine, theirs in ((self.weight, plain.weight), (self.lm_head, plain.lm_head),
                             (self.bias, plain.bias)):
            ggml.ggml_backend_tensor_set(mine, theirs.contents.data, 0,
                                         ggml.ggml_nbytes(theirs))
        del plain

    def graph(self, hidden: np.ndarray, n_threads: Optional[int] = None) -> GgmlBackendGraph:
        return GgmlBackendGraph(self, hidden, self.n_threads if n_threads is None else n_threads)

    def __del__(self) -> None:
        if getattr(self, "_ctx", None) is not None:
            ggml.ggml_backend_buffer_free(self._buffer)
            ggml.ggml_backend_buffer_free(self._bias_buffer)
            ggml.ggml_backend_free(self._backend)
            ggml.ggml_free(self._ctx)
            ggml.ggml_free(self._bias_ctx)
            self._ctx = None


class GgmlBackendGraph:
    """A GgmlRepackedHead's graph for one batch of states, in a CPU backend
    buffer (the states are copied in once, here), computed on its own CPU
    backend with ``n_threads``."""

    def __init__(self, head: GgmlRepackedHead, hidden: np.ndarray, n_threads: int) -> None:
        if hidden.dtype != np.float32 or not hidden.flags.c_contiguous:
            raise ValueError("hidden must be C-contiguous float32")
        self.head, self.n_threads = head, n_threads
        self.batch = batch = 1 if hidden.ndim == 1 else hidden.shape[0]
        self._ctx = ctx = _context(ggml.ggml_graph_overhead() + 16 * ggml.ggml_tensor_overhead(),
                                   no_alloc=True)
        inputs = ggml.ggml_new_tensor_2d(ctx, ggml.GGML_TYPE_F32, head.d_model, batch)
        projected = ggml.ggml_mul_mat(ctx, head.weight, inputs)
        features = ggml.ggml_silu(ctx, ggml.ggml_add(ctx, projected, head.bias))
        self.logits = ggml.ggml_mul_mat(ctx, head.lm_head, features)
        self.tokens = ggml.ggml_argmax(ctx, ggml.ggml_soft_max(ctx, self.logits))
        self._graph = ggml.ggml_new_graph(ctx)
        ggml.ggml_build_forward_expand(self._graph, self.tokens)
        self._backend = ggml.ggml_backend_cpu_init()
        ggml.ggml_backend_cpu_set_n_threads(self._backend, n_threads)
        self._buffer = ggml.ggml_backend_alloc_ctx_tensors(ctx, self._backend)
        if not self._buffer:
            raise MemoryError("ggml_backend_alloc_ctx_tensors failed")
        ggml.ggml_backend_tensor_set(inputs, hidden.ctypes.data, 0, hidden.nbytes)
        self._hidden = hidden
        self._out = np.empty(batch, dtype=np.int32)

    def run(self) -> np.ndarray:
        status = ggml.ggml_backend_graph_compute(self._backend, self._graph)
        if status != 0:
            raise RuntimeError(f"ggml_backend_graph_compute returned status {status}")
        ggml.ggml_backend_tensor_get(self.tokens, self._out.ctypes.data, 0, self._out.nbytes)
        return self._out.copy()

    def logits_array(self) -> np.ndarray:
        out = np.empty((self.batch, self.head.vocab), dtype=np.float32)
        ggml.ggml_backend_tensor_get(self.logits, out.ctypes.data, 0, out.nbytes)
        return out

    def __del__(self) -> None:
        if getattr(self, "_ctx", None) is not None:
            ggml.ggml_backend_buffer_free(self._buffer)
            ggml.ggml_backend_free(self._backend)
            ggml.ggml_free(self._ctx)
            self._ctx = None


def make_heads(weights: Sequence[np.ndarray], weight_dtypes: Sequence[str],
               n_threads: int) -> dict[str, Any]:
    """One GgmlHead per requested weight dtype that ggml has (q8, q4), keyed by
    the bench contender's name ("ggml Q8_0", "ggml Q4_0"), and for q4 the
    repacked one too ("ggml Q4_0 repacked", when this ggml has CPU_REPACK and
    d_proj, vocab are multiples of 8).  None when d_model or d_proj is not a
    multiple of 32 (ggml's block size; it would abort)."""
    heads: dict[str, Any] = {}
    weight, _, lm_head = weights
    if weight.shape[1] % 32 or weight.shape[0] % 32:
        return heads            # ggml's blocks of 32 along d_model and d_proj
    repackable = weight.shape[0] % 8 == 0 and lm_head.shape[0] % 8 == 0
    for d in weight_dtypes:
        if d in GGML_TYPES:
            heads[f"ggml {GGML_TYPES[d]}"] = GgmlHead(*weights, weight_dtype=d,
                                                       n_threads=n_threads)
        if d == "q4" and repackable and _repack_buffer_type() is not None:
            heads["ggml Q4_0 repacked"] = GgmlRepackedHead(*weights, weight_dtype=d,
                                                            n_threads=n_threads)
    return heads


def graphs(heads: dict[str, Any], hidden: np.ndarray) -> list[tuple[str, Any]]:
    """The contenders for one batch of states, by name: each head on its thread
    count and, when that is not 1, also on 1 thread ("ggml Q4_0, 1 thread"):
    ggml's thread barriers spin, so on a loaded machine one thread can beat two."""
    out = []
    for name, head in heads.items():
        out.append((name, head.graph(hidden)))
        if head.n_threads != 1:
            out.append((one_thread_name(name), head.graph(hidden, 1)))
    return out


def one_thread_name(name: str) -> str:
    return f"{name}, 1 thread"


def top1_agreement(head: Any, hidden: np.ndarray, reference_tokens: np.ndarray
                   ) -> int:
    """How many of the states (rows of ``hidden``) get ``reference_tokens``."""
    graph = head.graph(np.ascontiguousarray(hidden, dtype=np.float32))
    tokens = graph.run()
    return int(np.count_nonzero(tokens == np.asarray(reference_tokens).reshape(-1)))


def _q8_0_round_trip(a: np.ndarray) -> np.ndarray:
    """Rows of ``a`` rounded as ggml's Q8_0 activations: blocks of 32, scale
    max|a| / 127 stored as fp16, codes round(a / scale) (the unrounded scale)."""
    blocks = a.reshape(a.shape[0], -1, 32).astype(np.float32)
    scale = np.abs(blocks).max(axis=-1, keepdims=True) / np.float32(127)
    codes = np.round(blocks / np.where(scale == 0, np.float32(1), scale))
    return (codes * scale.astype(np.float16).astype(np.float32)).reshape(a.shape)


def _dequantized(head: GgmlHead, tensor: Any, shape: tuple[int, int]) -> np.ndarray:
    """A quantized tensor of ``head`` dequantized by ggml (its to_float), in float64."""
    out = np.empty(shape, np.float32)
    ggml.ggml_get_type_traits(head.ggml_type).contents.to_float(
        ctypes.c_void_p(tensor.contents.data),
        out.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), out.size)
    return out.astype(np.float64)


def self_test() -> None:
    """ggml's logits against float64 NumPy on ggml's own dequantized weights and
    Q8_0-rounded activations (the model of what its Q8_0 / Q4_0 dot products
    compute), and its tokens against those logits' argmax."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((128, 256), dtype=np.float32) * np.float32(0.05)
    bias = rng.standard_normal(128, dtype=np.float32) * np.float32(0.05)
    lm_head = rng.standard_normal((1000, 128), dtype=np.float32) * np.float32(0.5)
    hidden = rng.standard_normal((16, 256), dtype=np.float32)
    for weight_dtype in GGML_TYPES:
        head = GgmlHead(weight, bias, lm_head, weight_dtype, n_threads=2)
        w = _dequantized(head, head.weight, weight.shape)
        lm = _dequantized(head, head.lm_head, lm_head.shape)
        z = _q8_0_round_trip(hidden) @ w.T + bias
        x = (z / (1 + np.exp(-z))).astype(np.float32)
        want = _q8_0_round_trip(x) @ lm.T
        kinds = [(GGML_TYPES[weight_dtype], head)]
        if weight_dtype == "q4" and _repack_buffer_type() is not None:
            kinds.append(("Q4_0 repacked", GgmlRepackedHead(weight, bias, lm_head, "q4", 2)))
        for name, one in kinds:
            for states in (hidden, hidden[3].copy()):        # B = 16 (gemm), B = 1 (gemv)
                graph = one.graph(states)
                tokens = graph.run()
                logits = graph.logits_array()
                expected = np.atleast_2d(want[3] if states.ndim == 1 else want)
                error = float(np.abs(logits - expected).max())
                assert error < 1e-4 * float(np.abs(expected).max()), (name, error)
                assert np.array_equal(tokens, logits.argmax(axis=1)), name
                print(f"{name}, B={graph.batch}: max |logit - model| {error:.2e} "
                      f"(max |logit| {np.abs(expected).max():.2f}); tokens = argmax")


if __name__ == "__main__":
    print(unavailable_reason() or describe())
    if ggml is not None:
        self_test()
