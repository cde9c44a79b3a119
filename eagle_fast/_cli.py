"""``eagle-fast`` command line: ``info`` and ``demo``."""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Optional, Sequence

import numpy as np

from . import _backend, build_info
from ._head import DraftHead

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


def _median_us(head: DraftHead, hidden: np.ndarray, top_k: int, seconds: float) -> float:
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


def demo(preset: str, dtype: str, batch: int, top_k: int, seconds: float) -> None:
    d_model, d_proj, vocab = PRESETS[preset]
    rng = np.random.default_rng(0)
    weights = _random_head(d_model, d_proj, vocab, dtype, rng)
    shape = (d_model,) if batch == 1 else (batch, d_model)
    hidden = rng.standard_normal(shape).astype(dtype) * 2
    info = build_info()
    print(f"eagle_fast demo: preset {preset} (d_model={d_model}, d_proj={d_proj}, "
          f"vocab={vocab}), {dtype}, batch {batch}, top_k {top_k}")
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
            head = DraftHead(*weights)
            result = head.predict(hidden, top_k=top_k)
            rows.append((name if level is None else f"{name} ({level})", result,
                         _median_us(head, hidden, top_k, seconds)))
    finally:
        _backend._active = saved

    first = rows[0][1]
    tokens = np.atleast_2d(first.tokens)
    probs = np.atleast_2d(first.token_probs)
    for state in range(min(len(tokens), 4)):
        guesses = ", ".join(f"{t} (p={p:.4f})" for t, p in zip(tokens[state], probs[state]))
        print(f"  hidden state {state}: draft token {guesses}")
    print(f"\n{'backend':<24}{'per call':>12}{'speed-up':>10}  same tokens")
    python_us = rows[-1][2]
    for label, result, us in rows:
        agrees = np.array_equal(np.atleast_2d(result.tokens), tokens)
        per_call = f"{us:.1f} µs" if us < 1000 else f"{us / 1000:.2f} ms"
        print(f"{label:<24}{per_call:>12}{python_us / us:>9.1f}x  {'yes' if agrees else 'NO'}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="eagle-fast", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="print build and backend information as JSON")
    demo_parser = commands.add_parser(
        "demo", help="run a draft head of a preset size on random weights and time it")
    demo_parser.add_argument("--preset", choices=sorted(PRESETS), default="llama-7b")
    demo_parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    demo_parser.add_argument("--batch", type=int, default=1)
    demo_parser.add_argument("--top-k", type=int, default=1)
    demo_parser.add_argument("--seconds", type=float, default=1.0,
                             help="timing budget per backend (default 1 s)")
    args = parser.parse_args(argv)
    if args.command == "info":
        print(json.dumps(build_info(), indent=2))
    else:
        if args.batch < 1:
            parser.error("--batch must be >= 1")
        demo(args.preset, args.dtype, args.batch, args.top_k, args.seconds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
