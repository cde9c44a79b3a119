"""``eagle-fast`` command line: ``info``, ``demo``, ``inspect`` and ``convert``."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

from . import _backend, build_info
from ._checkpoint import FORMAT, MEDUSA_FORMAT, CheckpointError, inspect_checkpoint, load_medusa
from ._head import DraftHead
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


def _random_head(d_model: int, d_proj: int, vocab: int, dtype: str,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    weight = rng.standard_normal((d_proj, d_model), dtype=np.float32) / np.sqrt(d_model)
    bias = rng.standard_normal(d_proj, dtype=np.float32) * 0.1
    # A scale that gives a peaked distribution, like a trained LM head.
    lm_head = rng.standard_normal((vocab, d_proj), dtype=np.float32) * (4 / np.sqrt(d_proj))
    return weight.astype(dtype), bias.astype(dtype), lm_head.astype(dtype)


def _median_us(head: Model, hidden: np.ndarray, top_k: int, seconds: float) -> float:
    """Median µs per call over batches of calls lasting ~1 ms each."""
    head.predict(hidden, top_k=top_k)  # warm-up
    start = time.perf_counter()
    head.predict(hidden, top_k=top_k)
    once = max(time.perf_counter() - start, 1e-7)
    calls = max(1, int(1e-3 / once))
    samples: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(samples) < 7 or (time.perf_counter() < deadline and len(samples) < 1000):
        start = time.perf_counter()
        for _ in range(calls):
            head.predict(hidden, top_k=top_k)
        samples.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(samples)


def demo(preset: str, dtype: str, weight_dtype: Optional[str], batch: int, top_k: int,
         seconds: float) -> None:
    d_model, d_proj, vocab = PRESETS[preset]
    rng = np.random.default_rng(0)
    weights = _random_head(d_model, d_proj, vocab, dtype, rng)
    shape = (d_model,) if batch == 1 else (batch, d_model)
    hidden = rng.standard_normal(shape).astype(dtype) * 2
    stored = f", weights stored as {weight_dtype}" if weight_dtype else ""
    print(f"eagle_fast demo: preset {preset} (d_model={d_model}, d_proj={d_proj}, "
          f"vocab={vocab}), {dtype}{stored}, batch {batch}, top_k {top_k}")
    _run_demo(lambda: DraftHead(*weights, weight_dtype=weight_dtype), hidden, top_k, seconds)


def demo_checkpoint(path: str, batch: int, top_k: int, seconds: float) -> None:
    """The demo on the head(s) of a checkpoint, with random hidden states."""
    info = inspect_checkpoint(path)
    if info["format"] not in (FORMAT, MEDUSA_FORMAT):
        raise CheckpointError(f"{path}: neither an eagle_fast draft head nor a Medusa "
                              "checkpoint (see eagle-fast inspect)")

    def load() -> Model:
        return load_medusa(path) if info["format"] == MEDUSA_FORMAT else DraftHead.load(path)

    model = load()
    rng = np.random.default_rng(0)
    shape = (model.d_model,) if batch == 1 else (batch, model.d_model)
    hidden = rng.standard_normal(shape).astype(model.dtype) * 2
    print(f"eagle_fast demo: checkpoint {path}")
    print(f"  {_describe(info)}; compute dtype {model.dtype}, batch {batch}, top_k {top_k}")
    _run_demo(load, hidden, top_k, seconds)


def _run_demo(make: Callable[[], Model], hidden: np.ndarray, top_k: int,
              seconds: float) -> None:
    """Predictions of ``make()`` on ``hidden``, and µs per call on every backend
    (``make`` is called once per backend, heads binding the active one)."""
    info = build_info()
    print(f"active backend: {info['backend']} (SIMD level {info['simd_level']}, "
          f"OpenMP {'on' if info['openmp'] else 'off'}, {info['max_threads']} threads)")

    backends: list[tuple[str, Optional[str]]] = [
        ("compiled", level) for level in _backend.simd_levels_available()]
    backends.append(("python", None))
    saved = _backend.active()
    rows = []
    try:
        for name, level in backends:
            _backend.use(name, level)
            model = make()
            result = model.predict(hidden, top_k=top_k)
            rows.append((name if level is None else f"{name} ({level})", result,
                         _median_us(model, hidden, top_k, seconds)))
    finally:
        _backend._active = saved

    first = rows[0][1]
    medusa = isinstance(model, MedusaHeads)
    # As (states, heads, k) whatever the model and batch.
    per_head = 3 if medusa else 2
    tokens = first.tokens.reshape((-1,) + first.tokens.shape[-per_head + 1:])
    probs = first.token_probs.reshape(tokens.shape)
    if not medusa:
        tokens, probs = tokens[:, None, :], probs[:, None, :]
    for state in range(min(len(tokens), 4)):
        for head in range(tokens.shape[1]):
            guesses = ", ".join(f"{t} (p={p:.4f})"
                                for t, p in zip(tokens[state, head], probs[state, head]))
            label = f"hidden state {state}" + (f", head {head} (t+{head + 2})" if medusa else "")
            print(f"  {label}: draft token {guesses}")
    print(f"\n{'backend':<24}{'per call':>12}{'speed-up':>10}  same tokens")
    python_us = rows[-1][2]
    for label, result, us in rows:
        agrees = np.array_equal(result.tokens, first.tokens)
        per_call = f"{us:.1f} µs" if us < 1000 else f"{us / 1000:.2f} ms"
        print(f"{label:<24}{per_call:>12}{python_us / us:>9.1f}x  {'yes' if agrees else 'NO'}")


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
              f"rope_theta={c['rope_theta']:g}, rope scaling={c['rope_scaling_factor']:g}, "
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


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="eagle-fast", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="print build and backend information as JSON")
    demo_parser = commands.add_parser(
        "demo", help="run a draft head (of a preset size on random weights, or from a "
                     "checkpoint) on random hidden states and time it")
    demo_parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                             help="head size on random weights (default llama-7b)")
    demo_parser.add_argument("--checkpoint", metavar="PATH", default=None,
                             help="a safetensors checkpoint (eagle_fast head or Medusa) "
                                  "instead of a preset")
    demo_parser.add_argument("--dtype", choices=("float32", "float64"), default=None,
                             help="preset weight dtype (default float32)")
    demo_parser.add_argument("--weight-dtype", choices=LOW_PRECISION, default=None,
                             help="store the preset's matrices in low precision "
                                  "(computes in float32)")
    demo_parser.add_argument("--batch", type=int, default=1)
    demo_parser.add_argument("--top-k", type=int, default=1)
    demo_parser.add_argument("--seconds", type=float, default=1.0,
                             help="timing budget per backend (default 1 s)")
    inspect_parser = commands.add_parser(
        "inspect", help="what a safetensors checkpoint holds: format, heads, dims, "
                        "dtypes, bytes")
    inspect_parser.add_argument("path", metavar="PATH")
    inspect_parser.add_argument("--json", action="store_true", help="print JSON")
    convert_parser = commands.add_parser(
        "convert", help="write a PyTorch checkpoint (pytorch_model.bin, or a folder with it) "
                        "as safetensors, bit for bit (needs torch)")
    convert_parser.add_argument("path", metavar="PATH")
    convert_parser.add_argument("--output", metavar="OUT", default=None,
                                help="default: model.safetensors beside the .bin")
    args = parser.parse_args(argv)
    if args.command == "info":
        print(json.dumps(build_info(), indent=2))
        return 0
    try:
        if args.command == "inspect":
            inspect_command(args.path, args.json)
        elif args.command == "convert":
            from .models.eagle import convert_checkpoint

            written = convert_checkpoint(args.path, args.output)
            print(f"wrote {written}")
        else:
            if args.batch < 1:
                parser.error("--batch must be >= 1")
            if args.checkpoint is not None:
                if (args.preset, args.dtype, args.weight_dtype) != (None, None, None):
                    parser.error("--checkpoint takes its sizes and dtypes from the file; "
                                 "drop --preset/--dtype/--weight-dtype")
                demo_checkpoint(args.checkpoint, args.batch, args.top_k, args.seconds)
            else:
                if args.weight_dtype is not None and args.dtype == "float64":
                    parser.error("--weight-dtype computes in float32; drop --dtype float64")
                demo(args.preset or "llama-7b", args.dtype or "float32", args.weight_dtype,
                     args.batch, args.top_k, args.seconds)
    except (CheckpointError, ImportError) as exc:
        print(f"eagle-fast {args.command}: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
