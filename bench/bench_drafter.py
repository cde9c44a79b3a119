"""Benchmark: EAGLE-1/2 drafter (EagleDrafter) at the EAGLE-LLaMA2-7B size.

d = 4096, intermediate 11008, 32 heads, V = 32000, one decoder layer, random
weights, a 512-token prefix in the draft KV cache.  Timed side by side in one
run, round-robin, medians:

* **step** -- one draft step of a tree: the top_k = 8 frontier nodes through
  fc, the layer (attention over the prefix + the tree rows) and the target's
  LM head with log-softmax;
* **tree** -- one whole ``draft_tree`` call (1 new prefix position, then
  depth = 5 rounds of 8 nodes, total_tokens = 60);

for eagle_fast in float32, bfloat16 and int8 storage, PyTorch CPU running
the same layer and LM head (float32 and bfloat16, when torch is installed),
and the bytes-over-bandwidth limit: the matrices' stored bytes (plus the KV
cache) divided by the read bandwidth of eagle_fast's read probe.

    python bench/bench_drafter.py [--repeats 7] [--threads N] [--small]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, Callable

import numpy as np

import eagle_fast
from eagle_fast import EagleDrafter, _backend

SIZES = {
    "7b": dict(d=4096, inter=11008, heads=32, vocab=32000, prefix=512),
    "small": dict(d=512, inter=1376, heads=8, vocab=4000, prefix=128),
}
TOP_K, DEPTH, TOTAL = 8, 5, 60


def make_state_dict(size: dict, rng: np.random.Generator) -> tuple[dict, dict, np.ndarray]:
    d, inter, heads, vocab = size["d"], size["inter"], size["heads"], size["vocab"]

    def normal(shape: tuple[int, ...], scale: float) -> np.ndarray:
        out = rng.standard_normal(shape, dtype=np.float32)
        out *= scale
        return out

    s = 1.0 / np.sqrt(d)
    w = {"fc.weight": normal((d, 2 * d), s), "fc.bias": normal((d,), 0.01)}
    p = "layers.0."
    for name in ("q", "k", "v", "o"):
        w[p + f"self_attn.{name}_proj.weight"] = normal((d, d), s)
    w[p + "mlp.gate_proj.weight"] = normal((inter, d), s)
    w[p + "mlp.up_proj.weight"] = normal((inter, d), s)
    w[p + "mlp.down_proj.weight"] = normal((d, inter), 1.0 / np.sqrt(inter))
    w[p + "post_attention_layernorm.weight"] = np.ones(d, np.float32)
    w["embed_tokens.weight"] = normal((vocab, d), 1.0)
    config = {"hidden_size": d, "intermediate_size": inter, "num_attention_heads": heads,
              "num_key_value_heads": heads, "num_hidden_layers": 1, "vocab_size": vocab,
              "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "hidden_act": "silu", "bias": True}
    return w, config, normal((vocab, d), s)


def fill_prefix(drafter: EagleDrafter, prefix: int, rng: np.random.Generator) -> np.ndarray:
    """A ``prefix``-position KV cache without running the prefill (the step
    cost does not depend on the cached values): random keys/values."""
    cache = drafter._cache
    cache.ensure(prefix + 1 + TOP_K * DEPTH)
    for store in (cache.k, cache.v):
        for array in store:
            array[:prefix] = rng.standard_normal(array[:prefix].shape).astype(array.dtype)
    ids = rng.integers(0, drafter.config.vocab_size, prefix + 2)
    cache.length = prefix
    drafter._seen = ids[1:prefix + 1].copy()
    return ids


def drafter_step(drafter: EagleDrafter, rng: np.random.Generator, threads: int
                 ) -> Callable[[], Any]:
    d = drafter.hidden_size
    stable = drafter.prefix_length
    hidden = rng.standard_normal((TOP_K, d)).astype(drafter.dtype)
    tokens = rng.integers(0, drafter.config.vocab_size, TOP_K)
    positions = np.full(TOP_K, stable + 2, dtype=np.int64)
    mask = np.concatenate([np.repeat(np.eye(TOP_K, dtype=bool), 2, axis=1),
                           np.eye(TOP_K, dtype=bool)], axis=1)   # depth-3 tree rows

    def run() -> Any:
        out = drafter._forward(hidden, tokens, positions, mask, threads)
        return drafter._logprobs(out, threads)
    return run


def drafter_tree(drafter: EagleDrafter, ids: np.ndarray, rng: np.random.Generator,
                 threads: int) -> Callable[[], Any]:
    prefix = drafter.prefix_length
    feature = rng.standard_normal((1, drafter.input_size)).astype(drafter.dtype)

    def run() -> Any:
        tree = drafter.draft_tree(feature, ids, top_k=TOP_K, depth=DEPTH, total_tokens=TOTAL,
                                  num_threads=threads)
        drafter.truncate(prefix)
        return tree
    return run


def torch_layer(w: dict, lm: np.ndarray, size: dict, dtype: Any, threads: int,
                rng: np.random.Generator) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """The same layer and LM head in PyTorch (written here, eager ops)."""
    import torch

    torch.set_num_threads(threads)
    d, heads, prefix = size["d"], size["heads"], size["prefix"]
    hd = d // heads
    t = {k: torch.from_numpy(v).to(dtype) for k, v in w.items()}
    qkv = torch.cat([t["layers.0.self_attn.q_proj.weight"], t["layers.0.self_attn.k_proj.weight"],
                     t["layers.0.self_attn.v_proj.weight"]])
    gate_up = torch.cat([t["layers.0.mlp.gate_proj.weight"], t["layers.0.mlp.up_proj.weight"]])
    head = torch.from_numpy(lm).to(dtype)
    cache_k = torch.randn(prefix + TOP_K * (DEPTH + 1), heads, hd).to(dtype)
    cache_v = torch.randn_like(cache_k)
    inv = 1.0 / (10000.0 ** (torch.arange(0, hd, 2).float() / hd))

    def forward(n: int, extra: int) -> Any:
        with torch.no_grad():
            ids = torch.randint(0, size["vocab"], (n,))
            h = torch.randn(n, d).to(dtype)
            x = torch.nn.functional.linear(torch.cat([t["embed_tokens.weight"][ids], h], -1),
                                           t["fc.weight"], t["fc.bias"])
            q, k, v = torch.nn.functional.linear(x, qkv).split(d, -1)
            ang = (prefix + torch.arange(n).float())[:, None] * inv[None]
            cos = torch.cat([ang.cos(), ang.cos()], -1).to(dtype)[:, None]
            sin = torch.cat([ang.sin(), ang.sin()], -1).to(dtype)[:, None]

            def rot(z: Any) -> Any:
                z = z.view(n, heads, hd)
                return z * cos + torch.cat([-z[..., hd // 2:], z[..., :hd // 2]], -1) * sin
            q, k = rot(q), rot(k)
            cache_k[prefix + extra - n:prefix + extra] = k
            cache_v[prefix + extra - n:prefix + extra] = v.view(n, heads, hd)
            keys = cache_k[:prefix + extra].transpose(0, 1)
            vals = cache_v[:prefix + extra].transpose(0, 1)
            scores = torch.matmul(q.transpose(0, 1), keys.transpose(1, 2)) / hd ** 0.5
            mask = torch.zeros(n, prefix + extra, dtype=scores.dtype)
            mask[:, prefix:] = float("-inf")
            mask[:, prefix + extra - n:].fill_diagonal_(0)
            attn = torch.softmax(scores + mask, -1, dtype=torch.float32).to(dtype)
            a = torch.matmul(attn, vals).transpose(0, 1).reshape(n, d)
            x = x + torch.nn.functional.linear(a, t["layers.0.self_attn.o_proj.weight"])
            r = x.float()
            r = (r * torch.rsqrt(r.pow(2).mean(-1, keepdim=True) + 1e-6)).to(dtype)
            m = t["layers.0.post_attention_layernorm.weight"] * r
            g, u = torch.nn.functional.linear(m, gate_up).chunk(2, -1)
            x = x + torch.nn.functional.linear(torch.nn.functional.silu(g) * u,
                                               t["layers.0.mlp.down_proj.weight"])
            lp = torch.log_softmax(torch.nn.functional.linear(x, head).float(), -1)
            return torch.topk(lp, TOP_K, -1)

    def step() -> Any:
        return forward(TOP_K, 3 * TOP_K)

    def tree() -> Any:
        forward(1, 1)
        for i in range(DEPTH):
            forward(TOP_K, TOP_K * (i + 1))
    return step, tree


def bandwidth(buffer: np.ndarray, threads: int, repeats: int) -> float:
    probe = _backend.load("compiled").draft.read_probe
    flat = buffer.reshape(-1).view(np.float32)
    probe(flat, threads)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        probe(flat, threads)
        times.append(time.perf_counter() - start)
    return flat.nbytes / statistics.median(times)


def measure(contenders: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    for run in contenders.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            contenders[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--small", action="store_true", help="a small model (smoke test)")
    parser.add_argument("--no-torch", action="store_true")
    args = parser.parse_args()
    size = SIZES["small" if args.small else "7b"]
    threads = args.threads or eagle_fast.build_info()["max_threads"]
    info = eagle_fast.build_info()
    print(f"eagle_fast {info['backend']} ({info['simd_level']}), threads={threads}; size {size}")
    rng = np.random.default_rng(0)
    w, config, lm = make_state_dict(size, rng)

    step_runs: dict[str, Callable[[], Any]] = {}
    tree_runs: dict[str, Callable[[], Any]] = {}
    stored: dict[str, int] = {}
    drafters = {}
    kv_bytes = 0
    for weight_dtype in ("float32", "bfloat16", "int8"):
        drafter = EagleDrafter.from_state_dict(w, config, lm_head=lm, weight_dtype=weight_dtype)
        ids = fill_prefix(drafter, size["prefix"], rng)
        name = f"eagle_fast {weight_dtype}"
        drafters[name] = drafter
        step_runs[name] = drafter_step(drafter, rng, threads)
        tree_runs[name] = drafter_tree(drafter, ids, rng, threads)
        embed = drafter._embed.nbytes
        stored[weight_dtype] = drafter.nbytes - embed
        kv_bytes = 2 * size["prefix"] * size["d"] * 4
    torch_names = []
    if not args.no_torch:
        try:
            import torch
            for label, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
                step, tree = torch_layer(w, lm, size, dtype, threads, rng)
                step_runs[f"PyTorch {label}"] = step
                tree_runs[f"PyTorch {label}"] = tree
                torch_names.append(f"PyTorch {label}")
        except ImportError:
            print("(torch not installed: no PyTorch rows)")
    bw = bandwidth(lm, threads, 5)
    print(f"read probe: {bw / 1e9:.1f} GB/s ({threads} threads)")
    steps = measure(step_runs, args.repeats)
    trees = measure(tree_runs, max(3, args.repeats // 2))
    torch_f32_step = steps.get("PyTorch float32")
    torch_f32_tree = trees.get("PyTorch float32")
    print()
    print("| contender | weights | step (8 nodes) | tree (depth 5) | step / limit | "
          "vs PyTorch f32 (step, tree) |")
    print("|---|---|---|---|---|---|")
    for name in step_runs:
        wd = name.split()[-1]
        weight_bytes = stored.get(wd, stored["float32"] if wd == "float32" else
                                  stored["bfloat16"])
        limit = (weight_bytes + kv_bytes) / bw
        ratio = f"{steps[name] / limit:.2f}x" if name.startswith("eagle_fast") else ""
        vs = ""
        if torch_f32_step and torch_f32_tree:
            vs = f"{torch_f32_step / steps[name]:.2f}x, {torch_f32_tree / trees[name]:.2f}x"
        print(f"| {name} | {weight_bytes / 1e9:.2f} GB | {steps[name] * 1e3:.1f} ms | "
              f"{trees[name] * 1e3:.1f} ms | {ratio} | {vs} |")
    for wd in ("float32", "bfloat16", "int8"):
        limit = (stored[wd] + kv_bytes) / bw
        print(f"| limit {wd} (bytes / read bandwidth) | {stored[wd] / 1e9:.2f} GB | "
              f"{limit * 1e3:.1f} ms | {limit * (DEPTH + 1) * 1e3:.1f} ms | 1.00x | |")


if __name__ == "__main__":
    main()
