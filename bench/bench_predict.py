"""Microbenchmark of eagle_fast's draft-head prediction against its alternatives.

Usage::

    python bench/bench_predict.py [--quick] [--sizes NAME|DxPxV ...]
        [--batches 1 4 16 64] [--dtype float32|float64 ...] [--repeats N]
        [--weight-dtypes float32 bfloat16 float16 int8 q8 q4] [--no-int-activations]
        [--accuracy-size NAME|DxPxV] [--accuracy-states N]
        [--json PATH] [--plot PATH]

The head is ``x = SiLU(W h + b)``, ``logits = L x / T``, ``softmax``, top-1,
with the "flat" random weights (below; fixed seed) at each size
``(d_model, d_proj, vocab)`` and batch size B.  Contenders:

* ``eagle_fast`` compiled, best SIMD level, through a reused ``DraftHead``;
* ``eagle_fast`` compiled, baseline SIMD level (when it differs);
* ``eagle_fast`` Python (NumPy) fallback backend;
* in float32 runs, ``eagle_fast`` compiled, best SIMD level, with W and L
  stored as each of ``--weight-dtypes`` bfloat16, float16, int8, q8, q4 (the same
  weights converted by ``DraftHead(..., weight_dtype=...)``); they are
  contenders of the same round-robin, so their ratios come from one run;
* beside each int8/q8/q4 head, the same head with ``activations="int8"``
  (states quantized to int8, integer dot products; ``weights`` column
  ``int8+a8``, ``q8+a8``, ``q4+a8``), unless ``--no-int-activations``; its
  tokens are checked against its exact twin's dequantized logits with a
  looser near-tie rule (its logits are rounded, ``INT_ACT_NEAR_TIE``);
* NumPy written by hand, as a user would;
* PyTorch CPU (``F.linear``, ``silu``, ``softmax``, ``argmax``), if importable;
* in float32 runs with q8 / q4 among ``--weight-dtypes``, ggml's own Q8_0 / Q4_0
  head (``ggml Q8_0``, ``ggml Q4_0``: ggml's quantizer and ``mul_mat`` on the same
  weights; ggml's threads = the read probe's, and again on 1 thread; and
  ``ggml Q4_0 repacked``, Q4_0 re-laid 8 rows at a time as llama.cpp runs it on
  AVX2) when ``ggml-python`` is importable, else a row saying why; see
  bench/_ggml_contender.py.  Its check column is the
  top-1 agreement with the float32 head over 64 states (ggml rounds the
  activations to Q8_0), beside eagle_fast's head of the same storage;
* at sizes up to 256x128x1000 and B = 1, the specification's function:
  its reference (plain-Python loops on lists, outputs rounded, as the spec
  writes it; ``spec_reference`` below), and ``eagle_fast.eagle_draft_from_hidden``
  -- compiled on nested lists and on float64 arrays, and the Python fallback
  on lists -- each with its speed-up over the reference (``vs reference``,
  printed under the table; ``ratio_spec_reference`` in the JSON), beside
  NumPy by hand from the same lists (``np.asarray`` of each, then the NumPy
  head in float64: what a user with those lists would otherwise write);
  under the table, the Python fallback's speed-up over NumPy by hand too;
* read probes: eagle_fast's compiled ``read_probe`` sums every weight byte
  once, on 1 thread and on all threads, 8 concurrent streams per thread.
  The faster one is the reference bandwidth: at batch 1 a draft head is
  memory-bound, so this is its speed limit.

Methodology
-----------
* Everything runs in one process, alternately: after two warm-up calls of
  each contender, every timed repeat runs each contender once (round-robin, with
  the starting contender rotated), so slow drifts and noise from the machine
  hit all contenders alike.  The reported time is the median of the repeats
  (``time.perf_counter``; garbage collection is off while timing).
* A call faster than 100 us is timed as an inner loop of many calls per
  repeat (about 5 ms worth) and the loop time divided by the count.
* An optional contender (the Python fallback) whose warm-up call takes longer
  than ``OPTIONAL_MAX_CALL_S`` is skipped at that size and batch.
* OpenBLAS worker threads busy-wait for a while after every NumPy BLAS call
  and would steal the cores of whichever contender runs next.  The script
  sets ``OPENBLAS_THREAD_TIMEOUT=4`` (the shortest spin, 2**4 cycles) before
  importing NumPy unless it is already set.  ``OPENBLAS_CORETYPE`` is left as
  the environment has it; the header prints the BLAS in use.
* The predicted tokens of every contender are checked against NumPy's logits
  for the same inputs: float64 runs must match exactly; float32 runs may
  differ only on near-ties (top logits within rounding).  A low-precision
  head is checked against NumPy's float32 logits computed with its own
  dequantized weights (what its kernel computes with), by the float32 rule.
  Anything else is printed as a warning.
* Timing does not depend on the weights' values, so only the flat head is
  timed.

Columns: the contender's weight storage (``weights``) and the bytes it stores
(``stored``: W + b + L, plus int8's per-row and q8/q4's per-group scales -- ``DraftHead.nbytes``,
what one B = 1 call streams); median time per call; GB/s of those stored
bytes; that bandwidth as a % of the read probe's; the speed ratio vs NumPy
(``numpy_time / time``, > 1 means faster than NumPy; NumPy always uses the
run's float32/float64 weights), vs PyTorch, and vs the eagle_fast head at the
best SIMD level with weights in the compute dtype (``vs f32``, in float64 runs
``vs f64``; ``ratio_eagle_fast`` in the JSON).

Accuracy of the low-precision weights
-------------------------------------
One table (at ``--accuracy-size``, default 4k-4k-32k; ``--quick``: 4k-1k-32k,
whose heads are 4x faster to convert; it reuses the timed heads when that
size is timed in float32) compares each low-precision head with the float32
head through ``eagle_fast.compare`` (batched) over ``--accuracy-states``
standard normal hidden states (default 256, ``--quick`` 64; 0, or no float32
in ``--dtype``, turns the table off): top-1 agreement, top-5 overlap, max |delta
confidence| (each head's probability of its own top-1 token) and mean
KL(p_float32 || p_other) in nats, at T = 1; int8/q8/q4 also with
``activations="int8"`` (rows ``int8+a8``, ``q8+a8``, ``q4+a8``).  Two
synthetic heads:

* "flat": every entry of W, b and L ~ N(0, 0.02^2) -- the timed head.  With
  standard normal hidden states its logits have a std of about 1 (at
  4k-4k-32k), so the softmax is nearly uniform (median top-1 probability
  ~ 1e-3): a pessimistic case, where the top tokens are separated by tiny gaps.
* "peaked": the flat head's W, b and L's row directions, but L's rows
  rescaled to heavy-tailed norms ``exp(N(0, 1))`` (log-normal: a few tokens
  with large norms dominate, roughly like the frequent tokens of a trained
  head), times one global scale.  The scale is calibrated so the median
  top-1 probability over 128 separate standard normal hidden states is 0.6:
  their logits are computed once in float64 and are linear in the scale, so
  a bisection on them finds it exactly.  Only the L scale is searched; the
  construction itself is fixed in advance, not tuned to any metric.

For each head the table prints the float32 head's median (p10, p90) top-1
probability over the measured states and how many distinct top-1 tokens
they have, so the reader sees how flat or peaked it really is.  Real trained
heads differ from both.  The peaked head is not an easy case either: its top
tokens win through large row norms rather than through alignment with x, and
a logit's rounding error grows with its row's norm (int8: per-row scale
max|w|/127), so near-ties between dominant tokens can flip -- int8's top-1
agreement may come out lower here than on the flat head.

Results go to ``--json`` (default ``bench/results/bench_predict.json``; the
accuracy table under ``"accuracy"``) and, when matplotlib is importable, a
bar chart of the ratio vs NumPy (all eagle_fast contenders, low-precision
ones included) to ``--plot`` (default ``bench/results/bench_predict.png``).
"""

from __future__ import annotations

import os

# Must precede the NumPy import: OpenBLAS reads it when it starts its threads.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import argparse  # noqa: E402
import gc  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable, Optional, Sequence  # noqa: E402

import numpy as np  # noqa: E402

import eagle_fast  # noqa: E402
from eagle_fast import _backend  # noqa: E402

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    torch = None

try:        # bench/_ggml_contender.py (beside this script): ggml's Q8_0 / Q4_0, optional
    import _ggml_contender
except ImportError:
    _ggml_contender = None

SEED = 20240601
TEMPERATURE = 1.0
FAST_CALL_S = 100e-6          # calls faster than this are timed in an inner loop
REPEAT_TARGET_S = 5e-3        # ... of about this long per repeat
OPTIONAL_MAX_CALL_S = 2.0     # skip an optional contender slower than this per call
SPEC_LOOPS_MAX_WEIGHTS = 200_000  # the spec's reference only up to this size (B = 1)
PROBE_MIN_BYTES = 1 << 20     # no read probe for heads that fit in cache
DEFAULT_REPEATS = 9
QUICK_REPEATS = 7
F32_NEAR_TIE_RTOL = 1e-4      # float32 tokens may differ when logits are this close
INT_ACT_NEAR_TIE = 5e-2       # ... int8-activation tokens (rounded logits), this close
INT_ACTIVATION_WEIGHTS = ("int8", "q8", "q4")   # storages activations="int8" applies to
INT_ACT_SUFFIX = " a8"        # contender-name suffix of the int8-activation twin
LOW_PRECISION = ("bfloat16", "float16", "int8", "q8", "q4")
# Bytes per weight of each low-precision storage (q8/q4: with their float16
# group scales, one per 32 weights), for the memory estimate.
LOW_PRECISION_BYTES = {"bfloat16": 2.0, "float16": 2.0, "int8": 1.0, "q8": 34 / 32,
                       "q4": 18 / 32}
WEIGHT_DTYPES = ("float32",) + LOW_PRECISION   # --weight-dtypes choices (float32 runs)
FLAT_SCALE = 0.02             # std of every weight of the "flat" head (the timed one)
PEAKED_LOG_NORM_SIGMA = 1.0   # "peaked" head: L row norms ~ exp(N(0, sigma^2)) ...
PEAKED_TARGET_TOP1 = 0.6      # ... times one global scale calibrated to this median top-1 prob
CALIBRATION_STATES = 128      # hidden states the calibration uses (not the measured ones)
ACCURACY_TOP_K = 5
DEFAULT_ACCURACY_STATES = 256
QUICK_ACCURACY_STATES = 64
GGML_CHECK_STATES = 64        # states of the ggml rows' top-1 sanity check
DEFAULT_ACCURACY_SIZE = "4k-4k-32k"
QUICK_ACCURACY_SIZE = "4k-1k-32k"    # 4x fewer weights to convert than 4k-4k-32k
RESULTS_DIR = Path(__file__).resolve().parent / "results"

NUMPY = "numpy"
TORCH = "torch"
SPEC_REFERENCE = "spec reference (pure Python)"
NUMPY_FROM_LISTS = "numpy by hand (from lists)"
PYTHON_FALLBACK = "eagle_fast python"


@dataclass(frozen=True)
class Size:
    name: str
    d_model: int
    d_proj: int
    vocab: int

    @property
    def n_weights(self) -> int:
        return self.d_proj * self.d_model + self.d_proj + self.vocab * self.d_proj

    @property
    def shape_label(self) -> str:
        return f"{self.d_model}x{self.d_proj}x{self.vocab}"


SIZES = {
    size.name: size for size in (
        Size("tiny", 16, 8, 50),
        Size("small", 256, 128, 1000),
        Size("4k-1k-32k", 4096, 1024, 32000),
        Size("4k-4k-32k", 4096, 4096, 32000),
        Size("4k-4k-128k", 4096, 4096, 128256),
    )
}
DEFAULT_SIZES = list(SIZES)
QUICK_SIZES = ["tiny", "small", "4k-4k-32k"]
DEFAULT_BATCHES = [1, 4, 16, 64]
QUICK_BATCHES = [1, 4]


@dataclass
class Contender:
    name: str
    run: Callable[[], Any]      # one call; returns the predicted token(s), or None (probes)
    is_probe: bool = False
    optional: bool = False      # may be skipped when too slow
    weight_dtype: str = ""
    weight_bytes: Optional[int] = None


@dataclass
class Measurement:
    name: str
    is_probe: bool = False
    median_s: Optional[float] = None
    times_s: list[float] = field(default_factory=list)
    calls_per_repeat: int = 0
    weight_dtype: str = ""      # how the contender's weights are stored
    weight_bytes: Optional[int] = None   # bytes of weights one call streams (as stored)
    gbps: Optional[float] = None
    pct_probe: Optional[float] = None
    ratio_numpy: Optional[float] = None
    ratio_torch: Optional[float] = None
    ratio_eagle_fast: Optional[float] = None   # vs eagle_fast, weights in the compute dtype
    ratio_spec_reference: Optional[float] = None   # spec function rows: vs the reference
    check: str = ""             # token check vs NumPy's logits ("" for probes)
    note: str = ""              # why it was skipped


@dataclass
class CaseResult:
    size: str
    d_model: int
    d_proj: int
    vocab: int
    batch: int
    dtype: str
    weight_bytes: int
    probe_gbps: Optional[float]
    measurements: list[Measurement]


@dataclass
class HeadKind:
    """How one synthetic head of the accuracy table was built, and how peaked
    its float32 softmax really is on the measured hidden states."""
    kind: str                   # "flat" or "peaked"
    description: str
    lm_head_scale: float        # L = this * N(0, 1) entries (peaked: * row norms)
    median_top1_prob: float     # float32 head, over the measured states
    p10_top1_prob: float
    p90_top1_prob: float
    distinct_top1_tokens: int
    calibration_median_top1: Optional[float] = None   # float64, calibration states


@dataclass
class AccuracyRow:
    head_kind: str
    weight_dtype: str
    comparison: eagle_fast.Comparison   # against the float32 head


@dataclass
class AccuracyResult:
    size: str
    d_model: int
    d_proj: int
    vocab: int
    n_states: int
    head_kinds: list[HeadKind]
    rows: list[AccuracyRow]


# -- environment --------------------------------------------------------------

def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def available_memory_bytes() -> Optional[int]:
    """Memory available to new allocations, or None when unknown."""
    try:
        import psutil
        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def blas_info() -> list[dict[str, Any]]:
    """The BLAS libraries NumPy (and torch) use: threadpoolctl's view when it
    is importable, else NumPy's build configuration."""
    try:
        import threadpoolctl
        return threadpoolctl.threadpool_info()
    except ImportError:
        config = np.show_config(mode="dicts")
        return [config["Build Dependencies"]["blas"]]


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def collect_header() -> dict[str, Any]:
    env_keys = ("OPENBLAS_THREAD_TIMEOUT", "OPENBLAS_CORETYPE", "OPENBLAS_NUM_THREADS",
                "OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS",
                "EAGLE_FAST_BACKEND", "EAGLE_FAST_SIMD")
    memory = available_memory_bytes()
    return {
        "eagle_fast_version": eagle_fast.__version__,
        "build_info": eagle_fast.build_info(),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "usable_cpus": usable_cpus(),
        "eagle_fast_threads": eagle_fast.build_info()["max_threads"],
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "torch": torch.__version__ if torch is not None else None,
        "ggml": (_ggml_contender.unavailable_reason() or _ggml_contender.describe()
                 if _ggml_contender is not None else "bench/_ggml_contender.py not found"),
        "blas": blas_info(),
        "environment": {key: os.environ[key] for key in env_keys if key in os.environ},
        "memory_available_bytes": memory,
    }


def print_header(header: dict[str, Any]) -> None:
    print("eagle_fast draft-head benchmark")
    print(f"  eagle_fast   {header['eagle_fast_version']}")
    for key, value in header["build_info"].items():
        print(f"    {key:22s} {value}")
    print(f"  CPU          {header['cpu']}")
    print(f"  threads      {header['cpus']} CPUs, {header['usable_cpus']} usable; "
          f"eagle_fast {header['eagle_fast_threads']}, torch {header['torch_threads']}")
    print(f"  python       {header['python']}")
    print(f"  numpy        {header['numpy']}")
    print(f"  torch        {header['torch'] or 'not importable: torch contender skipped'}")
    print(f"  ggml         {header['ggml']}")
    for lib in header["blas"]:
        print("  BLAS         " + ", ".join(f"{k}={v}" for k, v in lib.items()
                                           if k not in ("include directory", "pc file directory")))
    for key, value in header["environment"].items():
        print(f"  env          {key}={value}")
    memory = header["memory_available_bytes"]
    print(f"  memory       {format_bytes(memory)} available" if memory else
          "  memory       unknown")
    print()


# -- formatting ---------------------------------------------------------------

def format_time(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.2f} us"
    if seconds < 1.0:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.3f} s"


def format_bytes(n: float) -> str:
    units = ["B", "KB", "MB", "GB"]
    while n >= 1000 and len(units) > 1:
        n /= 1000
        units.pop(0)
    return f"{n:.0f} B" if units[0] == "B" else f"{n:.2f} {units[0]}"


def format_optional(value: Optional[float], spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


# -- inputs -------------------------------------------------------------------

def make_weights(size: Size, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The "flat" head (the one timed): W, b, L with entries ~ N(0, FLAT_SCALE^2),
    generated directly in ``dtype``."""
    rng = np.random.default_rng([SEED, size.d_model, size.d_proj, size.vocab])
    weight = rng.standard_normal((size.d_proj, size.d_model), dtype=dtype)
    weight *= dtype.type(FLAT_SCALE)
    bias = rng.standard_normal(size.d_proj, dtype=dtype)
    bias *= dtype.type(FLAT_SCALE)
    lm_head = rng.standard_normal((size.vocab, size.d_proj), dtype=dtype)
    lm_head *= dtype.type(FLAT_SCALE)
    return weight, bias, lm_head


def silu_features(hidden: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """x = SiLU(W h + b) in float64, for (B, d_model) states."""
    z = hidden.astype(np.float64) @ weight.T.astype(np.float64) + bias
    return z / (1 + np.exp(-z))


def median_top1_prob(logits: np.ndarray) -> float:
    """Median over states (rows) of the largest softmax probability, in float64."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    return float(np.median(1 / np.exp(shifted).sum(axis=1)))


def make_peaked_weights(size: Size) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray],
                                             float, float]:
    """The "peaked" head: the flat head's W, b and row directions of L, with
    L's rows rescaled to log-normal norms, ``exp(N(0, PEAKED_LOG_NORM_SIGMA^2))``
    (a few tokens with large norms dominate, like frequent tokens of a trained
    head), times one global scale.  The scale is calibrated so that the median
    top-1 probability over CALIBRATION_STATES hidden states (standard normal,
    not the measured ones) is PEAKED_TARGET_TOP1: the logits are computed once
    in float64 and are linear in the scale, so a bisection on them is exact.

    Returns ((W, b, L) in float32, the global scale, the calibrated median)."""
    weight, bias, lm_head = make_weights(size, np.dtype(np.float32))
    rng = np.random.default_rng([SEED, 1, size.d_model, size.d_proj, size.vocab])
    norms = np.exp(PEAKED_LOG_NORM_SIGMA * rng.standard_normal(size.vocab))
    lm_head *= norms.astype(np.float32)[:, None]

    hidden = np.random.default_rng([SEED, 2, size.d_model]).standard_normal(
        (CALIBRATION_STATES, size.d_model))
    x = silu_features(hidden, weight, bias)
    base = np.empty((CALIBRATION_STATES, size.vocab))
    rows = max(1, (64 << 20) // (8 * size.d_proj))      # float64 copies of L in ~64 MB chunks
    for start in range(0, size.vocab, rows):
        base[:, start:start + rows] = x @ lm_head[start:start + rows].T.astype(np.float64)
    base /= TEMPERATURE
    low, high = -30.0, 30.0                              # log of the scale
    for _ in range(40):
        mid = (low + high) / 2
        if median_top1_prob(math.exp(mid) * base) < PEAKED_TARGET_TOP1:
            low = mid
        else:
            high = mid
    scale = math.exp((low + high) / 2)
    calibrated = median_top1_prob(scale * base)
    lm_head *= np.float32(scale)
    return (weight, bias, lm_head), scale, calibrated


def make_accuracy_hidden(size: Size, n_states: int) -> np.ndarray:
    """Standard normal hidden states (n_states, d_model), float32, seeded apart
    from the timing and calibration states."""
    rng = np.random.default_rng([SEED, 3, size.d_model])
    return rng.standard_normal((n_states, size.d_model), dtype=np.float32)


def make_hidden(size: Size, batch: int, dtype: np.dtype) -> np.ndarray:
    """One state of shape (d_model,) for B = 1, else (B, d_model)."""
    rng = np.random.default_rng([SEED, batch, size.d_model])
    shape = (size.d_model,) if batch == 1 else (batch, size.d_model)
    return rng.standard_normal(shape, dtype=dtype)


def memory_needed(size: Size, itemsize: int, max_batch: int, low_precision_bytes: float = 0
                  ) -> int:
    """Weights (plus ``low_precision_bytes`` per weight for the low-precision
    heads, and a float32 dequantized copy while their tokens are checked), plus
    the vocab-sized temporaries of NumPy, torch and the Python fallback (a few
    copies of the logits, some in float64), plus slack."""
    per_state = size.vocab * (4 * itemsize + 5 * 8)
    per_weight = itemsize + low_precision_bytes + (4 if low_precision_bytes else 0)
    return int(size.n_weights * per_weight) + max_batch * per_state + 256 * 2**20


# -- contenders ---------------------------------------------------------------

def numpy_forward(hidden: np.ndarray, weight: np.ndarray, bias: np.ndarray,
                  lm_head: np.ndarray, temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """The head in NumPy, written straightforwardly: (logits, probs)."""
    x = hidden @ weight.T + bias
    x = x / (1 + np.exp(-x))
    logits = x @ lm_head.T / temperature
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs = e / e.sum(axis=-1, keepdims=True)
    return logits, probs


def spec_reference(hidden: list[float], weight: list[list[float]], bias: list[float],
                   lm_head: list[list[float]], temperature: float) -> dict:
    """The specification's function as it writes it: plain-Python loops on
    lists (each dot product one left-to-right sum from the bias or 0.0, SiLU
    with the |v| >= 500 cut-off, logits divided by T > 0, softmax with the
    built-in sum, first index of the largest probability), outputs rounded
    to 4 / 6 places -- what eagle_draft_from_hidden replaces, bit for bit."""
    projected = []
    for i in range(len(weight)):
        value = bias[i]
        for j in range(len(hidden)):
            value += weight[i][j] * hidden[j]
        sigmoid = 1.0 / (1.0 + math.exp(-value)) if abs(value) < 500 else (
            1.0 if value > 0 else 0.0)
        projected.append(value * sigmoid)
    logits = []
    for v in range(len(lm_head)):
        value = 0.0
        for j in range(len(projected)):
            value += lm_head[v][j] * projected[j]
        logits.append(value)
    if temperature > 0:
        logits = [value / temperature for value in logits]
    top = max(logits)
    exps = [math.exp(value - top) for value in logits]
    total = sum(exps)
    probs = [e / total for e in exps]
    best = max(range(len(probs)), key=lambda v: probs[v])
    return {"logits": [round(value, 4) for value in logits],
            "probs": [round(p, 6) for p in probs],
            "predicted_token": best, "confidence": round(probs[best], 6)}


def spec_call(backend: _backend.Backend, args: Sequence[Any]) -> int:
    """One timed eagle_draft_from_hidden call on ``backend``: the predicted token."""
    previous = _backend._active
    _backend._active = backend
    try:
        return eagle_fast.eagle_draft_from_hidden(*args, TEMPERATURE)["predicted_token"]
    finally:
        _backend._active = previous


def spec_function_on(backend: str, *args: Any) -> dict:
    """eagle_draft_from_hidden on ``backend`` (the active one is restored)."""
    previous = _backend.active()
    _backend._active = _backend.load(backend)
    try:
        return eagle_fast.eagle_draft_from_hidden(*args)
    finally:
        _backend._active = previous


def head_on(backend: str, simd_level: Optional[str], weights: Sequence[np.ndarray],
            weight_dtype: Optional[str] = None) -> eagle_fast.DraftHead:
    """A DraftHead on the given backend; the active backend is restored after."""
    previous = _backend.active()
    _backend.use(backend, simd_level)
    try:
        return eagle_fast.DraftHead(*weights, weight_dtype=weight_dtype)
    finally:
        _backend.use(previous.name, previous.simd_level if previous.name == "compiled" else None)


def storage_label(head: eagle_fast.DraftHead) -> str:
    """The ``weights`` column: the storage, ``+a8`` for int8 activations."""
    return head.weight_dtype + ("+a8" if head.activations == "int8" else "")


def draft_head_contender(name: str, head: eagle_fast.DraftHead, hidden: np.ndarray,
                         optional: bool = False) -> Contender:
    return Contender(name, lambda: head.predict(hidden, temperature=TEMPERATURE).tokens,
                     optional=optional, weight_dtype=storage_label(head),
                     weight_bytes=head.nbytes)


def torch_contender(hidden: np.ndarray, weights: Sequence[np.ndarray]) -> Contender:
    weight, bias, lm_head = (torch.from_numpy(a) for a in weights)   # shares memory

    def run() -> np.ndarray:
        with torch.inference_mode():
            x = F.silu(F.linear(torch.from_numpy(hidden), weight, bias))
            logits = F.linear(x, lm_head) / TEMPERATURE
            probs = torch.softmax(logits, dim=-1)
            return probs.argmax(dim=-1).numpy()

    return Contender(TORCH, run, weight_dtype=weights[0].dtype.name,
                     weight_bytes=sum(a.nbytes for a in weights))


def read_probe(weights: Sequence[np.ndarray], n_threads: int) -> Contender:
    """Read every weight byte once with eagle_fast's compiled read probe: each
    thread sums its share as 8 concurrent streams (no arithmetic to speak of),
    so this is the memory read bandwidth a single-state head can reach."""
    probe = _backend.load("compiled").draft.read_probe
    flat = [a.reshape(-1).view(np.float32) for a in weights]
    label = "1 thread" if n_threads == 1 else f"{n_threads} threads"
    return Contender(f"read probe, {label}",
                     lambda: [probe(a, n_threads) for a in flat], is_probe=True,
                     weight_dtype=weights[0].dtype.name,
                     weight_bytes=sum(a.nbytes for a in weights))


def make_heads(weights: Sequence[np.ndarray], low_precision: Sequence[str],
               int_activations: bool = True) -> dict[str, eagle_fast.DraftHead]:
    """One reusable DraftHead per eagle_fast contender, by contender name:
    the best compiled SIMD level (first: the reference of the "vs f32"
    column), the baseline one (if different), the Python fallback, then the
    best compiled level with each ``low_precision`` weight dtype (int8/q8/q4
    followed by their ``activations="int8"`` twin, which shares the stored
    weights).  Built once per size: construction validates (and converts)
    all the weights."""
    heads = {}
    levels = _backend.simd_levels_available()          # best first
    if levels:
        heads[f"eagle_fast {levels[0]}"] = head_on("compiled", levels[0], weights)
        if levels[0] != "baseline":
            heads["eagle_fast baseline"] = head_on("compiled", "baseline", weights)
    heads[PYTHON_FALLBACK] = head_on("python", None, weights)
    if levels:
        for weight_dtype in low_precision:
            name = f"eagle_fast {levels[0]} {weight_dtype}"
            heads[name] = head_on("compiled", levels[0], weights, weight_dtype)
            if int_activations and weight_dtype in INT_ACTIVATION_WEIGHTS:
                heads[name + INT_ACT_SUFFIX] = heads[name].to(activations="int8")
    return heads


def build_contenders(size: Size, batch: int, weights: Sequence[np.ndarray],
                     heads: dict[str, eagle_fast.DraftHead], hidden: np.ndarray,
                     probe_threads: int, ggml_heads: Optional[dict[str, Any]] = None
                     ) -> tuple[list[Contender], list[Measurement]]:
    """The contenders to run for one case, and rows for those skipped here."""
    contenders = [draft_head_contender(name, head, hidden, optional=name == PYTHON_FALLBACK)
                  for name, head in heads.items()]
    skipped: list[Measurement] = []
    for name, graph in _ggml_contender.graphs(ggml_heads, hidden) if ggml_heads else ():
        # the graph and its plan are built here, once: the timed call is the compute
        contenders.append(Contender(name, graph.run, weight_dtype=graph.head.type_name,
                                    weight_bytes=graph.head.nbytes))
    if not _backend.simd_levels_available():
        skipped.append(Measurement("eagle_fast compiled", note="compiled backend not built"))
    weight_dtype = weights[0].dtype.name
    weight_bytes = sum(a.nbytes for a in weights)
    contenders.append(Contender(
        NUMPY, lambda: numpy_forward(hidden, *weights, TEMPERATURE)[1].argmax(axis=-1),
        weight_dtype=weight_dtype, weight_bytes=weight_bytes))
    if torch is not None:
        contenders.append(torch_contender(hidden, weights))
    else:
        skipped.append(Measurement(TORCH, note="torch not importable"))
    if batch == 1 and size.n_weights <= SPEC_LOOPS_MAX_WEIGHTS:
        lists = [hidden.tolist()] + [a.tolist() for a in weights]
        arrays = [np.asarray(a, dtype=np.float64) for a in [hidden, *weights]]
        want = spec_reference(*lists, TEMPERATURE)
        contenders.append(Contender(
            SPEC_REFERENCE, lambda: spec_reference(*lists, TEMPERATURE)["predicted_token"],
            weight_dtype="list", weight_bytes=weight_bytes))
        # What a user with the same nested lists would otherwise write:
        # convert them with NumPy, then the head in NumPy (float64).
        contenders.append(Contender(
            NUMPY_FROM_LISTS,
            lambda: numpy_forward(*(np.asarray(a) for a in lists), TEMPERATURE)[1].argmax(),
            weight_dtype="list", weight_bytes=weight_bytes))
        backends = (["compiled"] if _backend.compiled_available() else []) + ["python"]
        for backend in backends:
            spec = _backend.load(backend)
            label = "" if backend == "compiled" else " python"
            for form, args in (("lists", lists), ("arrays", arrays)):
                if backend == "python" and form == "arrays":
                    continue
                got = spec_function_on(backend, *args, TEMPERATURE)
                if got != want:
                    print(f"  WARNING: eagle_draft_from_hidden{label} ({form}) differs from "
                          "the spec's reference")
                contenders.append(Contender(
                    f"eagle_draft_from_hidden{label} ({form})",
                    lambda spec=spec, args=args: spec_call(spec, args), optional=True,
                    weight_dtype="list" if form == "lists" else "float64",
                    weight_bytes=weight_bytes))
    # Tiny heads sit in cache: a probe there would only time call overhead.
    if _backend.compiled_available() and size.n_weights * 4 >= PROBE_MIN_BYTES:
        contenders.append(read_probe(weights, 1))
        contenders.append(read_probe(weights, probe_threads))
    return contenders, skipped


# -- timing -------------------------------------------------------------------

def time_one(run: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = run()
    return time.perf_counter() - start, result


def measure(contenders: list[Contender], repeats: int
            ) -> tuple[list[Measurement], dict[str, Any]]:
    """Warm up, then time all contenders round-robin.

    Returns one Measurement per contender and each one's last result (for
    the token check)."""
    measurements = {c.name: Measurement(c.name, is_probe=c.is_probe,
                                        weight_dtype=c.weight_dtype,
                                        weight_bytes=c.weight_bytes)
                    for c in contenders}
    results: dict[str, Any] = {}
    active: list[Contender] = []
    for contender in contenders:
        contender.run()                                  # first call: allocations, caches
        elapsed, results[contender.name] = time_one(contender.run)
        if contender.optional and elapsed > OPTIONAL_MAX_CALL_S:
            measurements[contender.name].note = (
                f"skipped: one call takes {format_time(elapsed)} > {OPTIONAL_MAX_CALL_S:g} s")
            continue
        calls = 1 if elapsed >= FAST_CALL_S else max(1, round(REPEAT_TARGET_S / elapsed))
        measurements[contender.name].calls_per_repeat = calls
        active.append(contender)

    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for repeat in range(repeats):
            shift = repeat % len(active)
            for contender in active[shift:] + active[:shift]:
                m = measurements[contender.name]
                run = contender.run
                start = time.perf_counter()
                for _ in range(m.calls_per_repeat):
                    run()
                m.times_s.append((time.perf_counter() - start) / m.calls_per_repeat)
    finally:
        if gc_was_enabled:
            gc.enable()
    for m in measurements.values():
        if m.times_s:
            m.median_s = statistics.median(m.times_s)
    return list(measurements.values()), results


def check_tokens(tokens: Any, ref_logits: np.ndarray, dtype: np.dtype,
                 rtol: float = F32_NEAR_TIE_RTOL) -> str:
    """Compare predicted tokens with the argmax of NumPy's logits (B, V).

    float64 must match exactly; float32 may differ on near-ties only (top
    logits within ``rtol``, relative to max(1, |top|))."""
    batch = ref_logits.shape[0]
    tokens = np.asarray(tokens).reshape(batch, -1)[:, 0]
    best = ref_logits.argmax(axis=1)
    wrong = np.flatnonzero(tokens != best)
    if wrong.size == 0:
        return "ok"
    if dtype == np.float32:
        top = ref_logits[wrong, best[wrong]]
        gap = top - ref_logits[wrong, tokens[wrong]]
        if np.all(gap <= rtol * np.maximum(1.0, np.abs(top))):
            return f"ok ({wrong.size} near-tie)"
    return f"MISMATCH {wrong.size}/{batch}"


def summarize(measurements: list[Measurement], reference: Optional[str]) -> Optional[float]:
    """Fill in bandwidth (of each contender's weight bytes as stored) and the
    ratios vs NumPy, torch and the ``reference`` eagle_fast head; returns the
    probe's GB/s (the faster probe)."""
    timed = {m.name: m for m in measurements if m.median_s is not None}
    for m in timed.values():
        if m.weight_bytes is not None:
            m.gbps = m.weight_bytes / m.median_s / 1e9
    probe_gbps = max((m.gbps for m in timed.values() if m.is_probe and m.gbps), default=None)
    numpy_s = timed[NUMPY].median_s if NUMPY in timed else None
    torch_s = timed[TORCH].median_s if TORCH in timed else None
    ref_s = timed[reference].median_s if reference in timed else None
    spec_s = timed[SPEC_REFERENCE].median_s if SPEC_REFERENCE in timed else None
    for m in timed.values():
        if spec_s is not None and (m.name in (SPEC_REFERENCE, NUMPY_FROM_LISTS)
                                   or m.name.startswith("eagle_draft_from_hidden")):
            m.ratio_spec_reference = spec_s / m.median_s
        if probe_gbps and m.gbps is not None:
            m.pct_probe = 100 * m.gbps / probe_gbps
        if numpy_s is not None:
            m.ratio_numpy = numpy_s / m.median_s
        if torch_s is not None:
            m.ratio_torch = torch_s / m.median_s
        if ref_s is not None:
            m.ratio_eagle_fast = ref_s / m.median_s
    return probe_gbps


def print_case(case: CaseResult) -> None:
    print(f"== {case.size} ({case.d_model} x {case.d_proj} x {case.vocab}), B={case.batch}, "
          f"{case.dtype}: weights {format_bytes(case.weight_bytes)}, "
          f"probe {format_optional(case.probe_gbps, '.1f', ' GB/s')} ==")
    vs_eagle_fast = "vs f32" if case.dtype == "float32" else "vs f64"
    print(f"  {'contender':33s} {'weights':>8s} {'stored':>10s} {'median':>11s} {'GB/s':>7s} "
          f"{'%probe':>7s} {'vs numpy':>9s} {'vs torch':>9s} {vs_eagle_fast:>8s}  check")
    for m in case.measurements:
        if m.median_s is None:
            print(f"  {m.name:33s} {m.note}")
            continue
        stored = "-" if m.weight_bytes is None else format_bytes(m.weight_bytes)
        print(f"  {m.name:33s} {m.weight_dtype:>8s} {stored:>10s} "
              f"{format_time(m.median_s):>11s} {format_optional(m.gbps, '7.2f'):>7s} "
              f"{format_optional(m.pct_probe, '6.0f', '%'):>7s} "
              f"{format_optional(m.ratio_numpy, '8.2f', 'x'):>9s} "
              f"{format_optional(m.ratio_torch, '8.2f', 'x'):>9s} "
              f"{format_optional(m.ratio_eagle_fast, '7.2f', 'x'):>8s}  {m.check}")
    # The per-call comparisons of issue 9 item 12, from this run's medians:
    # the fallback against NumPy by hand, the spec function against its
    # reference and against NumPy by hand from the same lists.
    timed = {m.name: m for m in case.measurements if m.median_s is not None}
    if PYTHON_FALLBACK in timed and timed[PYTHON_FALLBACK].ratio_numpy is not None:
        print(f"  {PYTHON_FALLBACK} vs numpy by hand: "
              f"{timed[PYTHON_FALLBACK].ratio_numpy:.2f}x (> 1: the fallback is faster)")
    from_lists = timed.get(NUMPY_FROM_LISTS)
    for m in case.measurements:
        if m.ratio_spec_reference is not None and m.name != SPEC_REFERENCE:
            extra = ""
            if (from_lists is not None and m.name != NUMPY_FROM_LISTS
                    and m.median_s is not None and from_lists.median_s is not None):
                extra = f", vs {NUMPY_FROM_LISTS}: {from_lists.median_s / m.median_s:.1f}x"
            print(f"  {m.name} vs the spec's reference: {m.ratio_spec_reference:.1f}x{extra}")
    for m in case.measurements:
        if m.check.startswith("MISMATCH"):
            print(f"  WARNING: {m.name} predicted tokens differ from NumPy's argmax "
                  f"({m.check})")
    print(flush=True)


def dequantized_logits(heads: dict[str, eagle_fast.DraftHead], size: Size,
                       batches: Sequence[int]) -> dict[tuple[str, int], np.ndarray]:
    """NumPy's float32 logits, per (low-precision contender, batch), computed
    with the weights exactly as that head dequantizes them: the reference its
    tokens are checked against (one dequantized copy alive at a time)."""
    logits = {}
    for name, head in heads.items():
        if head.weight_dtype not in LOW_PRECISION or head.activations != "float":
            continue   # an int8-activation twin is checked against its exact twin's
        weights = (head.projection_weight, head.projection_bias, head.lm_head_weight)
        for batch in batches:
            hidden = make_hidden(size, batch, np.dtype(np.float32))
            logits[name, batch] = np.atleast_2d(numpy_forward(hidden, *weights, TEMPERATURE)[0])
        del weights
        gc.collect()
    return logits


def bench_size(size: Size, dtype: np.dtype, batches: Sequence[int], repeats: int,
               probe_threads: int, low_precision: Sequence[str],
               accuracy: Optional[Callable[[dict[str, eagle_fast.DraftHead]], None]] = None,
               int_activations: bool = True) -> list[CaseResult]:
    """Time all contenders at one size and dtype, for every batch.  Low-precision
    heads are timed only in float32 runs (they compute in float32).  If given,
    ``accuracy`` is called last with the float32 run's heads by weight dtype."""
    weights = make_weights(size, dtype)
    weight_bytes = sum(a.nbytes for a in weights)
    heads = make_heads(weights, low_precision if dtype == np.float32 else (), int_activations)
    reference = next(iter(heads))       # best compiled level (or the Python fallback)
    lp_logits = dequantized_logits(heads, size, batches)
    ggml_heads, ggml_checks, ggml_skipped = ggml_setup(weights, heads, low_precision
                                                       if dtype == np.float32 else (),
                                                       probe_threads)
    cases = []
    for batch in batches:
        hidden = make_hidden(size, batch, dtype)
        contenders, skipped = build_contenders(size, batch, weights, heads, hidden,
                                               probe_threads, ggml_heads)
        measurements, results = measure(contenders, repeats)
        ref_logits = np.atleast_2d(numpy_forward(hidden, *weights, TEMPERATURE)[0])
        for m in measurements:
            if not m.is_probe and m.median_s is not None:
                twin = m.name.removesuffix(INT_ACT_SUFFIX)
                m.check = ggml_checks.get(m.name) or check_tokens(
                    results[m.name], lp_logits.get((twin, batch), ref_logits), dtype,
                    INT_ACT_NEAR_TIE if twin != m.name else F32_NEAR_TIE_RTOL)
        measurements += skipped + ggml_skipped
        probe_gbps = summarize(measurements, reference)
        case = CaseResult(size.name, size.d_model, size.d_proj, size.vocab, batch,
                          dtype.name, weight_bytes, probe_gbps, measurements)
        print_case(case)
        cases.append(case)
        del contenders, results, ref_logits
        gc.collect()
    if accuracy is not None and dtype == np.float32:
        by_dtype = {head.weight_dtype: head for name, head in heads.items()
                    if (name == reference or head.weight_dtype in LOW_PRECISION)
                    and head.activations == "float"}
        del heads, weights, lp_logits, ggml_heads    # free what the accuracy run does not use
        gc.collect()
        accuracy(by_dtype)
    return cases


def ggml_setup(weights: Sequence[np.ndarray], heads: dict[str, eagle_fast.DraftHead],
               low_precision: Sequence[str], n_threads: int
               ) -> tuple[dict[str, Any], dict[str, str], list[Measurement]]:
    """ggml's Q8_0 / Q4_0 heads for the q8 / q4 among ``low_precision`` (by
    contender name), their check strings (top-1 agreement with the float32
    head over GGML_CHECK_STATES states, beside eagle_fast's head of the same
    storage), and a skipped row when ggml is not importable."""
    wanted = [d for d in low_precision if d in ("q8", "q4")]
    if not wanted:
        return {}, {}, []
    reason = ("bench/_ggml_contender.py not importable" if _ggml_contender is None
              else _ggml_contender.unavailable_reason())
    if reason is not None:
        return {}, {}, [Measurement("ggml Q8_0 / Q4_0", note=f"skipped: {reason}")]
    ggml_heads = _ggml_contender.make_heads(weights, wanted, n_threads)
    if not ggml_heads:
        return {}, {}, [Measurement("ggml Q8_0 / Q4_0", note="skipped: d_model and d_proj "
                                    "must be multiples of ggml's block size 32")]
    states = np.random.default_rng([SEED, 4, weights[0].shape[1]]).standard_normal(
        (GGML_CHECK_STATES, weights[0].shape[1]), dtype=np.float32)
    want = numpy_forward(states, *weights, TEMPERATURE)[0].argmax(axis=1)
    checks = {}
    for name, ggml_head in ggml_heads.items():
        agree = _ggml_contender.top1_agreement(ggml_head, states, want)
        ours = next((h for h in heads.values() if h.weight_dtype == ggml_head.weight_dtype),
                    None)
        theirs = "" if ours is None else (
            f", eagle_fast {ggml_head.weight_dtype} "
            f"{int(np.count_nonzero(top1_probs(ours, states)[0] == want))}")
        checks[name] = f"top-1 vs f32 {agree}/{GGML_CHECK_STATES}{theirs}"
        checks[_ggml_contender.one_thread_name(name)] = checks[name]
    return ggml_heads, checks, []


# -- accuracy -----------------------------------------------------------------

def top1_probs(head: eagle_fast.DraftHead, hidden: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The head's top-1 token and its probability for each state (batched)."""
    tokens, probs = [], []
    for start in range(0, hidden.shape[0], 64):
        result = head.predict(hidden[start:start + 64], temperature=TEMPERATURE)
        tokens.append(result.tokens[:, 0])
        probs.append(result.token_probs[:, 0])
    return np.concatenate(tokens), np.concatenate(probs).astype(np.float64)


def accuracy_kind(kind: str, description: str, heads: dict[str, eagle_fast.DraftHead],
                  hidden: np.ndarray, low_precision: Sequence[str], lm_head_scale: float,
                  calibrated: Optional[float] = None, int_activations: bool = True
                  ) -> tuple[HeadKind, list[AccuracyRow]]:
    """Compare each low-precision head with the float32 one (``heads["float32"]``),
    int8/q8/q4 also with ``activations="int8"`` (rows ``<dtype>+a8``); a head
    missing from ``heads`` is made with ``to()``."""
    reference = heads["float32"]
    tokens, probs = top1_probs(reference, hidden)
    info = HeadKind(kind, description, lm_head_scale, float(np.median(probs)),
                    float(np.percentile(probs, 10)), float(np.percentile(probs, 90)),
                    int(np.unique(tokens).size), calibrated)
    rows = []
    for weight_dtype in low_precision:
        other = heads[weight_dtype] if weight_dtype in heads else reference.to(weight_dtype)
        comparison = eagle_fast.compare(reference, other, hidden, top_k=ACCURACY_TOP_K,
                                        temperature=TEMPERATURE)
        rows.append(AccuracyRow(kind, weight_dtype, comparison))
        if int_activations and weight_dtype in INT_ACTIVATION_WEIGHTS:
            fast = other.to(activations="int8")
            comparison = eagle_fast.compare(reference, fast, hidden, top_k=ACCURACY_TOP_K,
                                            temperature=TEMPERATURE)
            rows.append(AccuracyRow(kind, storage_label(fast), comparison))
            del fast
        del other
    return info, rows


def run_accuracy(size: Size, n_states: int, low_precision: Sequence[str],
                 flat_heads: Optional[dict[str, eagle_fast.DraftHead]] = None,
                 int_activations: bool = True) -> AccuracyResult:
    """Accuracy of each low-precision weight dtype vs float32 on the flat and
    the peaked head, over the same ``n_states`` hidden states.  ``flat_heads``
    (by weight dtype) are the timed heads when this size was just timed."""
    started = time.perf_counter()
    hidden = make_accuracy_hidden(size, n_states)
    if flat_heads is None:
        flat_heads = {"float32": eagle_fast.DraftHead(*make_weights(size, np.dtype(np.float32)))}
    flat = accuracy_kind(
        "flat", f"W, b, L ~ N(0, {FLAT_SCALE}^2) (the timed head)", flat_heads, hidden,
        low_precision, FLAT_SCALE, int_activations=int_activations)
    del flat_heads
    gc.collect()
    weights, scale, calibrated = make_peaked_weights(size)
    peaked_heads = {"float32": eagle_fast.DraftHead(*weights)}
    del weights
    peaked = accuracy_kind(
        "peaked", f"flat W, b; L rows with norms exp(N(0, {PEAKED_LOG_NORM_SIGMA:g}^2)), "
        f"times a global scale calibrated to median top-1 prob {PEAKED_TARGET_TOP1:g}",
        peaked_heads, hidden, low_precision, FLAT_SCALE * scale, calibrated,
        int_activations=int_activations)
    del peaked_heads
    gc.collect()
    result = AccuracyResult(size.name, size.d_model, size.d_proj, size.vocab, n_states,
                            [flat[0], peaked[0]], flat[1] + peaked[1])
    print_accuracy(result, time.perf_counter() - started)
    return result


def print_accuracy(result: AccuracyResult, elapsed_s: float) -> None:
    print(f"== accuracy vs the float32 head: {result.size} ({result.d_model} x "
          f"{result.d_proj} x {result.vocab}), {result.n_states} standard normal hidden "
          f"states, T={TEMPERATURE:g}, top-{ACCURACY_TOP_K} ({elapsed_s:.1f} s) ==")
    for info in result.head_kinds:
        calibrated = ("" if info.calibration_median_top1 is None else
                      f"; calibrated on {CALIBRATION_STATES} other states: "
                      f"{info.calibration_median_top1:.3f}")
        print(f"  {info.kind:7s} {info.description}")
        print(f"  {'':7s} float32 top-1 prob: median {info.median_top1_prob:.4f} "
              f"(p10 {info.p10_top1_prob:.4f}, p90 {info.p90_top1_prob:.4f}){calibrated}; "
              f"{info.distinct_top1_tokens} distinct top-1 tokens")
    print(f"  {'head':7s} {'weights':>8s} {'top-1 agree':>12s} "
          f"{f'top-{ACCURACY_TOP_K} overlap':>14s} {'max|dconf|':>11s} {'mean KL':>10s}")
    for row in result.rows:
        c = row.comparison
        print(f"  {row.head_kind:7s} {row.weight_dtype:>8s} {100 * c.top1_agreement:11.2f}% "
              f"{100 * c.topk_overlap:13.2f}% {c.max_abs_confidence_delta:11.2e} "
              f"{c.mean_kl:10.2e}")
    print(flush=True)


# -- output -------------------------------------------------------------------

def write_json(path: Path, header: dict[str, Any], cases: list[CaseResult],
               accuracy: Optional[AccuracyResult], skipped: list[str],
               elapsed_s: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "header": header,
        "methodology": {
            "temperature": TEMPERATURE, "seed": SEED, "fast_call_s": FAST_CALL_S,
            "repeat_target_s": REPEAT_TARGET_S, "optional_max_call_s": OPTIONAL_MAX_CALL_S,
            "flat_scale": FLAT_SCALE, "peaked_log_norm_sigma": PEAKED_LOG_NORM_SIGMA,
            "peaked_target_top1": PEAKED_TARGET_TOP1,
            "calibration_states": CALIBRATION_STATES, "accuracy_top_k": ACCURACY_TOP_K,
        },
        "cases": [asdict(case) for case in cases],
        "accuracy": None if accuracy is None else asdict(accuracy),
        "skipped_sizes": skipped,
        "elapsed_s": elapsed_s,
    }
    path.write_text(json.dumps(document, indent=1, default=str))
    print(f"results written to {path}")


def write_plot(path: Path, cases: list[CaseResult]) -> None:
    """Grouped bars of the ratio vs NumPy, one group per case (log scale)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names: list[str] = []
    for case in cases:
        for m in case.measurements:
            if m.ratio_numpy is not None and not m.is_probe and m.name != NUMPY \
                    and m.name not in names:
                names.append(m.name)
    width = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(max(8.0, 1.2 * len(cases)), 5))
    for i, name in enumerate(names):
        xs, ys = [], []
        for j, case in enumerate(cases):
            ratio = next((m.ratio_numpy for m in case.measurements if m.name == name), None)
            if ratio is not None:
                xs.append(j + (i - (len(names) - 1) / 2) * width)
                ys.append(ratio)
        ax.bar(xs, ys, width, label=name)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xticks(range(len(cases)))
    ax.set_xticklabels([f"{c.size}\nB={c.batch} {c.dtype}" for c in cases], fontsize=8)
    ax.set_ylabel("speed vs NumPy (numpy time / time)")
    ax.set_title("eagle_fast draft head: speed relative to NumPy (> 1 is faster)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"plot written to {path}")


# -- main ---------------------------------------------------------------------

def parse_size(text: str) -> Size:
    if text in SIZES:
        return SIZES[text]
    try:
        d_model, d_proj, vocab = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"unknown size {text!r}: use one of {', '.join(SIZES)} or D_MODELxD_PROJxVOCAB"
        ) from None
    return Size(text, d_model, d_proj, vocab)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark eagle_fast's DraftHead.predict against NumPy, torch and "
                    "pure Python (see the module docstring for the methodology).")
    parser.add_argument("--quick", action="store_true",
                        help=f"sizes {' '.join(QUICK_SIZES)}, batches "
                             f"{' '.join(map(str, QUICK_BATCHES))}, {QUICK_REPEATS} repeats")
    parser.add_argument("--sizes", nargs="+", type=parse_size, metavar="SIZE",
                        help=f"names ({', '.join(SIZES)}) or D_MODELxD_PROJxVOCAB")
    parser.add_argument("--batches", nargs="+", type=int, metavar="B",
                        help=f"batch sizes (default {' '.join(map(str, DEFAULT_BATCHES))})")
    parser.add_argument("--dtype", nargs="+", choices=("float32", "float64"),
                        default=["float32"], help="compute dtype(s) (default float32)")
    parser.add_argument("--weight-dtypes", nargs="+", choices=WEIGHT_DTYPES,
                        default=list(WEIGHT_DTYPES), metavar="WEIGHT_DTYPE",
                        help="how eagle_fast stores W and L in float32 runs: "
                             f"{', '.join(WEIGHT_DTYPES)} (default all); float32 is "
                             "always timed, as the reference of the low-precision ones")
    parser.add_argument("--no-int-activations", dest="int_activations", action="store_false",
                        help="do not time (nor compare) int8/q8/q4 heads with "
                             "activations='int8' beside the exact ones")
    parser.add_argument("--accuracy-size", type=parse_size, metavar="SIZE",
                        help="size of the flat and peaked heads of the accuracy table "
                             f"(default {DEFAULT_ACCURACY_SIZE}, --quick {QUICK_ACCURACY_SIZE})")
    parser.add_argument("--accuracy-states", type=int, metavar="N",
                        help="hidden states for the accuracy table (default "
                             f"{DEFAULT_ACCURACY_STATES}, --quick {QUICK_ACCURACY_STATES}; "
                             "0: no accuracy table)")
    parser.add_argument("--repeats", type=int,
                        help=f"timed repeats per contender (default {DEFAULT_REPEATS}, "
                             f"--quick {QUICK_REPEATS})")
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "bench_predict.json",
                        help="where to write all results (default %(default)s)")
    parser.add_argument("--plot", type=Path, default=RESULTS_DIR / "bench_predict.png",
                        help="bar chart of the ratio vs NumPy, when matplotlib is "
                             "importable (default %(default)s)")
    args = parser.parse_args(argv)
    if args.sizes is None:
        args.sizes = [SIZES[name] for name in (QUICK_SIZES if args.quick else DEFAULT_SIZES)]
    if args.batches is None:
        args.batches = QUICK_BATCHES if args.quick else DEFAULT_BATCHES
    if args.repeats is None:
        args.repeats = QUICK_REPEATS if args.quick else DEFAULT_REPEATS
    if args.accuracy_size is None:
        args.accuracy_size = SIZES[QUICK_ACCURACY_SIZE if args.quick else DEFAULT_ACCURACY_SIZE]
    if args.accuracy_states is None:
        args.accuracy_states = QUICK_ACCURACY_STATES if args.quick else DEFAULT_ACCURACY_STATES
    if args.repeats < 1 or min(args.batches) < 1:
        parser.error("--repeats and --batches must be >= 1")
    if args.accuracy_states < 0:
        parser.error("--accuracy-states must be >= 0")
    args.low_precision = [name for name in LOW_PRECISION if name in args.weight_dtypes]
    return args


def same_shape(a: Size, b: Size) -> bool:
    return (a.d_model, a.d_proj, a.vocab) == (b.d_model, b.d_proj, b.vocab)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    header = collect_header()
    print_header(header)
    cases: list[CaseResult] = []
    skipped: list[str] = []
    accuracy: list[AccuracyResult] = []
    want_accuracy = (args.accuracy_states > 0 and bool(args.low_precision)
                     and "float32" in args.dtype)

    def run_accuracy_with(flat_heads: Optional[dict[str, eagle_fast.DraftHead]]) -> None:
        accuracy.append(run_accuracy(args.accuracy_size, args.accuracy_states,
                                     args.low_precision, flat_heads, args.int_activations))

    probe_threads = max(2, usable_cpus())
    for dtype in (np.dtype(name) for name in args.dtype):
        low_precision = args.low_precision if dtype == np.float32 else []
        if dtype != np.float32 and args.low_precision:
            print(f"{dtype.name} run: low-precision weights compute in float32, "
                  f"timed in float32 runs only\n")
        for size in args.sizes:
            lp_bytes = sum(LOW_PRECISION_BYTES[name] for name in low_precision)
            needed = memory_needed(size, dtype.itemsize, max(args.batches), lp_bytes)
            available = available_memory_bytes()
            if available is not None and needed > available:
                message = (f"{size.name} ({size.shape_label}) {dtype.name}: needs about "
                           f"{format_bytes(needed)}, only {format_bytes(available)} "
                           f"available")
                print(f"SKIPPED {message}\n")
                skipped.append(message)
                continue
            measure_accuracy = (want_accuracy and not accuracy and dtype == np.float32
                                and same_shape(size, args.accuracy_size))
            cases += bench_size(size, dtype, args.batches, args.repeats, probe_threads,
                                low_precision,
                                run_accuracy_with if measure_accuracy else None,
                                args.int_activations)
            gc.collect()
    if want_accuracy and not accuracy:      # the accuracy size was not timed in float32
        run_accuracy_with(None)
    elapsed = time.perf_counter() - started
    print(f"total time {elapsed:.1f} s")
    write_json(args.json, header, cases, accuracy[0] if accuracy else None, skipped, elapsed)
    if importlib.util.find_spec("matplotlib") is not None:
        write_plot(args.plot, cases)
    else:
        print("matplotlib not importable: no plot")
    return 0


if __name__ == "__main__":
    sys.exit(main())
