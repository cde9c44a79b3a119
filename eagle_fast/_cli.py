"""``eagle-fast`` command line: ``info``, ``demo``, ``inspect`` and ``convert``."""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import statistics
import sys
import time
from typing import Any, Callable, Optional, Sequence, TextIO, Union

import numpy as np

from . import __version__, _backend, _generate_cli, build_info
from ._checkpoint import FORMAT, MEDUSA_FORMAT, CheckpointError, inspect_checkpoint, load_medusa
from ._head import ACTIVATIONS, INT_ACTIVATION_WEIGHTS, DraftHead, DraftResult, check_activations
from ._medusa import MedusaHeads
from ._storage import LOW_PRECISION

Model = Union[DraftHead, MedusaHeads]

# (d_model, d_proj, vocab_size)
PRESETS = {
    "tiny": (16, 8, 50),
    "small": (1024, 512, 8000),
    "llama-7b": (4096, 4096, 32000),
    "llama-3-8b": (4096, 4096, 128256),
}

DESCRIPTION = """\
Run and time EAGLE-style speculative-decoding draft heads on this CPU
(x = SiLU(W h + b), logits = L x, probs = softmax(logits / T), top-k).
"""

EPILOG = """\
examples:
  eagle-fast demo                         a Llama-7B-sized head on random weights
  eagle-fast demo --preset tiny --top-k 4 --batch 3
  eagle-fast demo --weight-dtype int8     the same head stored in 1 byte per weight
  eagle-fast demo --weight-dtype q4       4-bit groups of 32 (4.5 bits per weight)
  eagle-fast demo --weight-dtype q4 --activations int8
                                          q4 with integer dot products (int8 states)
  eagle-fast demo --checkpoint draft_head.safetensors
  eagle-fast inspect medusa_lm_head.safetensors --json
  eagle-fast info                         how the kernels were built (JSON)
  eagle-fast generate --target DIR --drafter EAGLE_DIR --prompt "def main():"
  eagle-fast generate --target DIR --drafter EAGLE_DIR --prompt P --weight-dtype q4
                                          the drafter in 4-bit groups: the same text
"""

# Bytes per weight of each storage type.
_STORED_BYTES = {"float32": 4, "float64": 8, "bfloat16": 2, "float16": 2, "int8": 1,
                 "q8": 34 / 32, "q4": 18 / 32}
# Weights per block while building random weights (bounds the temporaries).
_BLOCK_WEIGHTS = 1 << 20
# The calibration head that the demo's time estimate is scaled from.
_CALIBRATION_WEIGHTS = 1 << 21
# Python, NumPy and the package themselves, for the memory estimate.
_BASE_BYTES = 64 << 20


class _DemoError(Exception):
    """A demo that cannot run here (printed as an error, exit status 1)."""


class _UsageError(Exception):
    """Arguments that do not fit the head (an argparse error, exit status 2)."""


# -- argument types ----------------------------------------------------------------

def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number of seconds > 0, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
    return value


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text}")
    return value


# -- random weights and the cost of a demo -------------------------------------

def _random_head(d_model: int, d_proj: int, vocab: int, dtype: str, rng: np.random.Generator,
                 progress: Optional[Callable[[float], None]] = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """W, b, L of a random head, filled block by block (no full-size temporaries)
    from float32 normals; ``progress(fraction)`` is called after each block."""
    weight = np.empty((d_proj, d_model), dtype=dtype)
    lm_head = np.empty((vocab, d_proj), dtype=dtype)
    total, done = weight.size + lm_head.size, 0
    # W: unit-variance pre-activations; L: a scale that gives a peaked
    # distribution, like a trained LM head.
    for matrix, scale in ((weight, 1 / math.sqrt(d_model)), (lm_head, 4 / math.sqrt(d_proj))):
        rows = max(1, _BLOCK_WEIGHTS // matrix.shape[1])
        for start in range(0, matrix.shape[0], rows):
            block = rng.standard_normal((min(rows, matrix.shape[0] - start), matrix.shape[1]),
                                        dtype=np.float32)
            block *= np.float32(scale)
            matrix[start:start + len(block)] = block
            done += block.size
            del block  # before the next one is drawn
            if progress is not None:
                progress(done / total)
    bias = (rng.standard_normal(d_proj, dtype=np.float32) * np.float32(0.1)).astype(dtype)
    return weight, bias, lm_head


def _available_memory() -> Optional[int]:
    """Bytes of memory available to a new allocation (Linux: MemAvailable),
    or None when unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def _demo_memory(n_weights: int, n_bias: int, vocab: int, d_model: int, itemsize: int,
                 weight_dtype: Optional[str], batch: int) -> int:
    """Peak bytes of a preset demo: the random weights (and the block being
    drawn); the extra of the one head alive at a time -- its low-precision
    copy, the fallback's float32 copy of that (8 bytes per weight while it is
    dequantized), a 1-byte finiteness mask while a head is checked; and per
    hidden state the vocab-sized logits and softmax temporaries of NumPy and
    of the fallback (float64)."""
    weights = (n_weights + n_bias) * itemsize
    stored = _STORED_BYTES[weight_dtype] if weight_dtype else 0
    extra = int(n_weights * (stored + (8 if weight_dtype else 0) + 1))
    per_state = vocab * 6 * 8 + d_model * 8
    return _BASE_BYTES + weights + _BLOCK_WEIGHTS * 4 + extra + batch * per_state


def _calibrate(d_model: int, d_proj: int, vocab: int, dtype: str,
               weight_dtype: Optional[str], backends: list[tuple[str, Optional[str]]]) -> float:
    """Seconds per weight to build the random weights and then a head on each
    of ``backends``, measured on a small head of the same dtypes."""
    d_model_c, d_proj_c = min(d_model, 256), min(d_proj, 256)
    vocab_c = max(1, min(vocab, _CALIBRATION_WEIGHTS // d_proj_c))
    n_c = d_proj_c * d_model_c + vocab_c * d_proj_c
    saved = _backend.active()
    start = time.perf_counter()
    try:
        weights = _random_head(d_model_c, d_proj_c, vocab_c, dtype, np.random.default_rng(1))
        for backend in backends:
            _backend.use(*backend)
            DraftHead(*weights, weight_dtype=weight_dtype)
    finally:
        _backend._active = saved
    return (time.perf_counter() - start) / n_c


def _seconds_text(seconds: float) -> str:
    return "under 1 s" if seconds < 1 else f"about {seconds:.0f} s"


def _timing_text(seconds: float) -> str:
    contenders = len(_all_backends()) + 1  # and NumPy by hand
    return (f"{seconds:g} s of timing for each of {contenders} contenders (more if one "
            "call takes longer than a ninth of that)")


class _Progress:
    """``building random weights: 42 %`` on a terminal's stderr, updated in place."""

    def __init__(self, label: str, stream: Optional[TextIO] = None) -> None:
        self.stream: TextIO = sys.stderr if stream is None else stream
        self.label, self.shown = label, -1
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())

    def __call__(self, fraction: float) -> None:
        percent = int(fraction * 100)
        if self.live and percent != self.shown:
            self.shown = percent
            self.stream.write(f"\r{self.label}: {percent:3d} %")
            self.stream.flush()

    def done(self) -> None:
        if self.live and self.shown >= 0:
            self.stream.write("\r" + " " * (len(self.label) + 7) + "\r")
            self.stream.flush()


# -- the demo ------------------------------------------------------------------------

def _all_backends() -> list[tuple[str, Optional[str]]]:
    backends: list[tuple[str, Optional[str]]] = [
        ("compiled", level) for level in _backend.simd_levels_available()]
    backends.append(("python", None))
    return backends


def demo(preset: str, dtype: str, weight_dtype: Optional[str], batch: int, top_k: int,
         seconds: float, activations: str = "float") -> None:
    d_model, d_proj, vocab = PRESETS[preset]
    if top_k > vocab:
        raise _UsageError(f"--top-k {top_k} is larger than the vocabulary ({vocab})")
    backends = _all_backends()
    n_weights = d_proj * d_model + vocab * d_proj
    stored = f", weights stored as {weight_dtype}" if weight_dtype else ""
    if activations != "float":
        stored += f", {activations} activations"
    print(f"eagle_fast demo: preset {preset} (d_model={d_model}, d_proj={d_proj}, "
          f"vocab={vocab}), {dtype}{stored}, batch {batch}, top_k {top_k}")
    memory = _demo_memory(n_weights, d_proj, vocab, d_model, np.dtype(dtype).itemsize,
                          weight_dtype, batch)
    _check_memory(memory)
    setup = _calibrate(d_model, d_proj, vocab, dtype, weight_dtype, backends) * n_weights
    print(f"cost: about {_bytes_text(memory)} of memory, {_seconds_text(setup)} to build "
          f"the random weights and a head per backend, then {_timing_text(seconds)}",
          flush=True)

    rng = np.random.default_rng(0)
    progress = _Progress("building random weights")
    start = time.perf_counter()
    weights = _random_head(d_model, d_proj, vocab, dtype, rng, progress)
    progress.done()
    print(f"random weights built in {time.perf_counter() - start:.1f} s", flush=True)
    shape = (d_model,) if batch == 1 else (batch, d_model)
    hidden = rng.standard_normal(shape).astype(dtype) * 2
    _run_demo(lambda: DraftHead(*weights, weight_dtype=weight_dtype, activations=activations),
              hidden, top_k, seconds, numpy_weights=[(*weights, False, None)])


def demo_checkpoint(path: str, batch: int, top_k: int, seconds: float,
                    activations: str = "float") -> None:
    """The demo on the head(s) of a checkpoint, with random hidden states."""
    info = inspect_checkpoint(path)
    if info["format"] not in (FORMAT, MEDUSA_FORMAT):
        raise CheckpointError(f"{path}: neither an eagle_fast draft head nor a Medusa "
                              "checkpoint (see eagle-fast inspect)")
    try:
        check_activations(activations, info["heads"][0]["weight_dtype"])
    except ValueError as exc:
        raise _UsageError(f"--activations: {exc}") from exc
    vocab = min(head["vocab_size"] for head in info["heads"])
    if top_k > vocab:
        raise _UsageError(f"--top-k {top_k} is larger than the checkpoint's vocabulary "
                          f"({vocab})")
    # One loaded copy at a time, plus NumPy's and the fallback's float32 copy
    # of a low-precision file (twice that while it is dequantized; else the
    # finiteness check), plus the vocab-sized temporaries of a batch.
    n_weights = sum(h["d_proj"] * (h["d_model"] + h["vocab_size"]) for h in info["heads"])
    low = info["heads"][0]["weight_dtype"] in LOW_PRECISION
    memory = (_BASE_BYTES + info["file_bytes"] + (8 if low else 1) * n_weights
              + batch * len(info["heads"]) * vocab * 6 * 8)
    _check_memory(memory)

    def load() -> Model:
        if info["format"] == MEDUSA_FORMAT:
            return load_medusa(path, activations=activations)
        return DraftHead.load(path, activations=activations)

    print(f"eagle_fast demo: checkpoint {path}")
    print(f"  {_describe(info)}; batch {batch}, top_k {top_k}")
    print(f"cost: about {_bytes_text(memory)} of memory, loading the file once per "
          f"backend, then {_timing_text(seconds)}", flush=True)
    d_model = info["heads"][0]["d_model"]
    dtype = np.float64 if info["heads"][0]["weight_dtype"] == "float64" else np.float32
    rng = np.random.default_rng(0)
    shape = (d_model,) if batch == 1 else (batch, d_model)
    hidden = rng.standard_normal(shape).astype(dtype) * 2
    _run_demo(load, hidden, top_k, seconds)


def _check_memory(needed: int) -> None:
    available = _available_memory()
    if available is not None and needed > available:
        raise _DemoError(f"this demo needs about {_bytes_text(needed)} of memory and "
                         f"{_bytes_text(available)} is available; choose a smaller "
                         "--preset or --batch")


def _numpy_predictor(heads: list[tuple[np.ndarray, np.ndarray, np.ndarray, bool,
                                       Optional[np.ndarray]]],
                     hidden: np.ndarray, top_k: int) -> Callable[[], np.ndarray]:
    """The draft head(s) written in NumPy by hand, as a user would without
    eagle_fast: returns a function giving the top-k tokens, shaped as
    eagle_fast's (``heads``: (W, b, L, residual, d2t) each; more than one is
    a Medusa model)."""
    def one(weight: np.ndarray, bias: np.ndarray, lm_head: np.ndarray, residual: bool,
            d2t: Optional[np.ndarray]) -> np.ndarray:
        v = hidden @ weight.T + bias
        with np.errstate(over="ignore"):
            x = v / (1 + np.exp(-v))
        if residual:
            x = x + hidden
        logits = x @ lm_head.T
        e = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probs = e / e.sum(axis=-1, keepdims=True)
        if top_k == 1:
            tokens = probs.argmax(axis=-1)[..., None]
        else:
            best = np.argpartition(-probs, top_k - 1, axis=-1)[..., :top_k]
            order = np.argsort(-np.take_along_axis(probs, best, axis=-1), axis=-1,
                               kind="stable")
            tokens = np.take_along_axis(best, order, axis=-1)
        return tokens if d2t is None else tokens + d2t[tokens]

    def run() -> np.ndarray:
        if len(heads) == 1:
            return one(*heads[0])
        return np.stack([one(*head) for head in heads], axis=-2)

    return run


def _numpy_weights(model: Model) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, bool,
                                               Optional[np.ndarray]]]:
    heads = model.heads if isinstance(model, MedusaHeads) else (model,)
    return [(head.projection_weight, head.projection_bias, head.lm_head_weight,
             head.residual, head.d2t) for head in heads]


def _timed_us(call: Callable[[], Any], seconds: float) -> float:
    """Median µs per call over batches of calls lasting ~1 ms each."""
    call()  # warm-up
    start = time.perf_counter()
    call()
    once = max(time.perf_counter() - start, 1e-7)
    calls = max(1, int(1e-3 / once))
    samples: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(samples) < 7 or (time.perf_counter() < deadline and len(samples) < 1000):
        start = time.perf_counter()
        for _ in range(calls):
            call()
        samples.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(samples)


def _run_demo(make: Callable[[], Model], hidden: np.ndarray, top_k: int, seconds: float,
              numpy_weights: Optional[list] = None) -> None:
    """Predictions of ``make()`` on ``hidden``, then µs per call of NumPy by
    hand and of every backend, row by row (``make`` is called once per backend,
    heads binding the active one; ``numpy_weights``: the float weights NumPy
    uses, by default the model's own, dequantized)."""
    info = build_info()
    print(f"active backend: {info['backend']} (SIMD level {info['simd_level']}, "
          f"OpenMP {'on' if info['openmp'] else 'off'}, {info['max_threads']} threads)")
    backends = _all_backends()
    saved = _backend.active()
    try:
        _backend.use(*backends[0])
        model: Optional[Model] = make()
        assert model is not None
        reference = model.predict(hidden, top_k=top_k)
        _print_predictions(reference, isinstance(model, MedusaHeads))

        print(f"\n{'contender':<24}{'per call':>12}{'vs NumPy':>10}  same tokens", flush=True)
        numpy_call = _numpy_predictor(numpy_weights or _numpy_weights(model), hidden, top_k)
        numpy_us = _timed_us(numpy_call, seconds)
        numpy_agrees = np.array_equal(numpy_call(), reference.tokens)
        _print_row("NumPy by hand", numpy_us, numpy_us,
                   "yes" if numpy_agrees else "no (rounds differently; see below)")
        del numpy_call
        for index, (name, level) in enumerate(backends):
            _backend.use(name, level)
            if index > 0:
                model = None  # one head in memory at a time
                model = make()
            assert model is not None
            call = functools.partial(model.predict, hidden, top_k=top_k)
            result = call()
            us = _timed_us(call, seconds)
            del call
            agrees = np.array_equal(result.tokens, reference.tokens)
            _print_row(name if level is None else f"{name} ({level})", us, numpy_us,
                       "yes" if agrees else "NO")
    finally:
        _backend._active = saved
    print("\nvs NumPy: how many times faster than the same head written in NumPy by hand "
          "(W h + b, SiLU, L x, softmax, top-k; float weights"
          + (", dequantized" if model is not None and model.weight_dtype in LOW_PRECISION
             else "") + ").")
    if not numpy_agrees:
        print("NumPy's BLAS sums in another order (and computes with the float weights), so "
              "near-tied tokens can come out in another order.")


def _print_predictions(result: DraftResult, medusa: bool) -> None:
    # As (states, heads, k) whatever the model and batch.
    per_head = 3 if medusa else 2
    tokens = result.tokens.reshape((-1,) + result.tokens.shape[-per_head + 1:])
    probs = result.token_probs.reshape(tokens.shape)
    if not medusa:
        tokens, probs = tokens[:, None, :], probs[:, None, :]
    for state in range(min(len(tokens), 4)):
        for head in range(tokens.shape[1]):
            guesses = ", ".join(f"{t} (p={p:.4f})"
                                for t, p in zip(tokens[state, head], probs[state, head]))
            label = f"hidden state {state}" + (f", head {head} (t+{head + 2})" if medusa else "")
            print(f"  {label}: draft token {guesses}")


def _print_row(label: str, us: float, numpy_us: float, agrees: str) -> None:
    per_call = f"{us:.1f} µs" if us < 1000 else f"{us / 1000:.2f} ms"
    print(f"{label:<24}{per_call:>12}{numpy_us / us:>9.2f}x  {agrees}", flush=True)


# -- inspect -------------------------------------------------------------------------

def _describe(info: dict[str, Any]) -> str:
    """One line: the format and the heads' configuration."""
    heads = info["heads"]
    if info["format"] == FORMAT:
        head = heads[0]
        text = (f"eagle_fast draft head (format_version {info['format_version']}): "
                f"{_head_text(head)}")
        if head["residual"]:
            text += ", residual"
        if head["target_vocab_size"] is not None:
            text += f", d2t -> target vocabulary {head['target_vocab_size']}"
        return text
    if info["format"] == MEDUSA_FORMAT:
        return f"Medusa checkpoint, {len(heads)} heads of {_head_text(heads[0])}, residual"
    return "unknown format (neither an eagle_fast draft head nor a Medusa checkpoint)"


def _head_text(head: dict[str, Any]) -> str:
    return (f"d_model={head['d_model']}, d_proj={head['d_proj']}, "
            f"vocab_size={head['vocab_size']}, {head['weight_dtype']}")


def _bytes_text(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _rope_text(config: dict) -> str:
    llama3 = config.get("rope_llama3")
    if llama3 is not None:
        factor, low, high, original = llama3
        return (f"llama3 (factor {factor:g}, low/high freq factor {low:g}/{high:g}, "
                f"original context {original:g})")
    return f"{config['rope_scaling_factor']:g}"


def _eagle_text(info: dict[str, Any]) -> str:
    kind = "EAGLE-3" if info["kind"] == "eagle3" else "EAGLE-1/2"
    text = (f"{kind} draft model: hidden_size={info['hidden_size']}, "
            f"layers={info['num_hidden_layers']}, intermediate_size="
            f"{info['intermediate_size']}, q/kv rows={info['q_rows']}/{info['kv_rows']}")
    if info["kind"] == "eagle3":
        text += (f", input (3 x target hidden)={info['input_size']}, draft vocabulary="
                 f"{info['draft_vocab_size']}" + (", d2t" if info["has_d2t"] else ""))
    else:
        text += ", fc bias" if info["fc_bias"] else ", no fc bias"
        text += "; needs the target's LM head"
    if not info["has_embed_tokens"]:
        text += "; needs the target's embed_tokens"
    return text


def inspect_eagle_command(path: str, as_json: bool) -> bool:
    """Describe an EAGLE checkpoint (folder or file); False if it is not one."""
    from .models.eagle import inspect_eagle

    info = inspect_eagle(path)
    if info is None:
        return False
    if as_json:
        print(json.dumps(info, indent=2, default=str))
        return True
    print(f"{info['path']}: {info['files']}, {_bytes_text(info['bytes'])}")
    print(f"  format: {_eagle_text(info)}")
    print(f"  dtypes: {', '.join(info['dtypes'])}")
    if info["config"] is not None:
        c = info["config"]
        print(f"  config: heads={c['num_attention_heads']}/{c['num_key_value_heads']}, "
              f"head_dim={c['head_dim']}, vocab_size={c['vocab_size']}, "
              f"rope_theta={c['rope_theta']:g}, rope scaling={_rope_text(c)}, "
              f"rms_norm_eps={c['rms_norm_eps']:g}")
    elif info["config_error"] is not None:
        print(f"  config: INVALID: {info['config_error']}")
    else:
        print("  config: none beside the file (EagleDrafter.load needs config=)")
    return True


def inspect_command(path: str, as_json: bool) -> None:
    from pathlib import Path

    if Path(path).is_dir():
        if not inspect_eagle_command(path, as_json):
            raise CheckpointError(f"{path}: not an EAGLE checkpoint folder")
        return
    info = inspect_checkpoint(path)
    if info["format"] == "unknown" and inspect_eagle_command(path, as_json):
        return
    if as_json:
        print(json.dumps(info, indent=2))
        return
    print(f"{info['path']}: {_bytes_text(info['file_bytes'])}")
    print(f"  format: {_describe(info)}")
    for i, head in enumerate(info["heads"]):
        label = "head" if info["format"] == FORMAT else f"head {i}"
        dtypes = ", ".join(f"{role} {dtype}" for role, dtype in sorted(head["dtypes"].items()))
        print(f"  {label}: {_head_text(head)}, {_bytes_text(head['bytes'])} ({dtypes})")
    print(f"  tensors ({len(info['tensors'])}):")
    width = max((len(name) for name in info["tensors"]), default=0)
    for name, tensor in info["tensors"].items():
        print(f"    {name:<{width}}  {tensor['dtype']:<5} {str(tensor['shape']):<16}"
              f"{_bytes_text(tensor['bytes']):>12}")
    if info["metadata"]:
        print("  metadata: " + ", ".join(f"{k}={v}" for k, v in sorted(info["metadata"].items())))


# -- main ----------------------------------------------------------------------------

def _parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The command's parser and its ``demo`` subparser."""
    active = _backend.active()
    backend = active.name + ("" if active.name == "python" else f" {active.simd_level}")
    parser = argparse.ArgumentParser(
        prog="eagle-fast", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version",
                        version=f"eagle-fast {__version__} (backend: {backend})")
    commands = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND")
    commands.add_parser("info", help="print build and backend information as JSON",
                        description="Print how eagle_fast was built and which backend "
                                    "runs (eagle_fast.build_info()) as JSON.")
    demo_parser = commands.add_parser(
        "demo", help="run a draft head (of a preset size on random weights, or from a "
                     "checkpoint) on random hidden states and time it against NumPy",
        description="Run a draft head on random hidden states: print its draft tokens "
                    "and the time per call of NumPy by hand and of every eagle_fast "
                    "backend.  Prints what it will cost (memory, seconds) first.")
    demo_parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                             help="head size on random weights: "
                                  + ", ".join(f"{name} {'x'.join(map(str, dims))}"
                                              for name, dims in PRESETS.items())
                                  + " (d_model x d_proj x vocab; default llama-7b)")
    demo_parser.add_argument("--checkpoint", metavar="PATH", default=None,
                             help="a safetensors checkpoint (eagle_fast head or Medusa) "
                                  "instead of a preset")
    demo_parser.add_argument("--dtype", choices=("float32", "float64"), default=None,
                             help="preset weight dtype (default float32)")
    demo_parser.add_argument("--weight-dtype", choices=LOW_PRECISION, default=None,
                             help="store the preset's matrices in low precision "
                                  "(computes in float32)")
    demo_parser.add_argument("--activations", choices=ACTIVATIONS, default="float",
                             help="int8: quantize the hidden states and features to "
                                  "int8 and take integer dot products (faster, slightly "
                                  "rounded; int8/q8/q4 weights only; default float, exact)")
    demo_parser.add_argument("--batch", type=_positive_int, default=1, metavar="B",
                             help="hidden states per call (default 1)")
    demo_parser.add_argument("--top-k", type=_positive_int, default=1, metavar="K",
                             help="draft tokens per state (default 1)")
    demo_parser.add_argument("--seconds", type=_positive_seconds, default=1.0, metavar="S",
                             help="timing budget per contender (default 1)")
    inspect_parser = commands.add_parser(
        "inspect", help="what a safetensors checkpoint holds: format, heads, dims, "
                        "dtypes, bytes",
        description="Show what a safetensors checkpoint holds (format, heads, dims, "
                    "dtypes, bytes), read from its header alone.")
    inspect_parser.add_argument("path", metavar="PATH")
    inspect_parser.add_argument("--json", action="store_true", help="print JSON")
    convert_parser = commands.add_parser(
        "convert", help="write a PyTorch checkpoint (pytorch_model.bin, or a folder with it) "
                        "as safetensors, bit for bit (needs torch)",
        description="Write a PyTorch checkpoint (pytorch_model.bin, or a folder with it) "
                    "as safetensors, bit for bit (needs torch).")
    convert_parser.add_argument("path", metavar="PATH")
    convert_parser.add_argument("--output", metavar="OUT", default=None,
                                help="default: model.safetensors beside the .bin")
    generate_parser = commands.add_parser(
        "generate", help="speculative generation with a transformers model folder and a "
                         "Medusa or EAGLE drafter (needs torch and transformers)",
        description="Generate text from --prompt with the target model in --target (a "
                    "transformers folder with its tokenizer, float32 on the CPU), drafted "
                    "by the Medusa or EAGLE-1/2/3 checkpoint in --drafter; print the text, "
                    "the mean acceptance length tau and tokens/s.  At --temperature 0 the "
                    "text is exactly the target's own greedy output.")
    _generate_cli.add_arguments(generate_parser, _positive_int, _non_negative_float,
                                _probability)
    parser.set_defaults(generate_parser=generate_parser)
    return parser, demo_parser


def _run(argv: Optional[Sequence[str]]) -> int:
    parser, demo_parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "demo":
        if args.checkpoint is not None:
            if (args.preset, args.dtype, args.weight_dtype) != (None, None, None):
                demo_parser.error("--checkpoint takes its sizes and dtypes from the file; "
                                  "drop --preset/--dtype/--weight-dtype")
        elif args.weight_dtype is not None and args.dtype == "float64":
            demo_parser.error("--weight-dtype computes in float32; drop --dtype float64")
        elif args.activations != "float" and args.weight_dtype not in INT_ACTIVATION_WEIGHTS:
            demo_parser.error(f"--activations {args.activations} needs --weight-dtype int8, "
                              "q8 or q4")
    if args.command == "generate":
        problem = _generate_cli.check_arguments(args)
        if problem is not None:
            args.generate_parser.error(problem)
    try:
        if args.command == "info":
            print(json.dumps(build_info(), indent=2))
        elif args.command == "inspect":
            inspect_command(args.path, args.json)
        elif args.command == "convert":
            from .models.eagle import convert_checkpoint

            written = convert_checkpoint(args.path, args.output)
            print(f"wrote {written}")
        elif args.command == "generate":
            return _generate_cli.run(args)
        elif args.checkpoint is not None:
            demo_checkpoint(args.checkpoint, args.batch, args.top_k, args.seconds,
                            args.activations)
        else:
            demo(args.preset or "llama-7b", args.dtype or "float32", args.weight_dtype,
                 args.batch, args.top_k, args.seconds, args.activations)
    except _UsageError as exc:
        demo_parser.error(str(exc))
    except (_DemoError, _generate_cli.GenerateError, CheckpointError, ImportError,
            MemoryError) as exc:
        print(f"eagle-fast {args.command}: error: {exc or type(exc).__name__}",
              file=sys.stderr)
        return 1
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The ``eagle-fast`` command; returns its exit status."""
    try:
        try:
            status = _run(argv)
        finally:  # also after --help/--version (SystemExit): their output may not fit
            sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (eagle-fast info | head -1): stop quietly.  Point
        # stdout at devnull so that the interpreter's final flush does not fail.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return 1
    except KeyboardInterrupt:
        print("eagle-fast: interrupted", file=sys.stderr)
        return 130
    return status


if __name__ == "__main__":
    raise SystemExit(main())
