"""Benchmark: speculative generation end to end on a small trained Llama target.

Usage::

    python bench/bench_generate.py [--quick] [--cache DIR] [--prompts N]
        [--new-tokens N] [--repeats N] [--weight-dtypes LIST] [--no-7b-drafter]
        [--json PATH] [--plot PATH]

1. ``bench/train_models.py`` trains (once; cached) a small Llama target on the
   standard library's sources, Medusa heads and an EAGLE-1 drafter on its
   hidden states (``--quick``: its quick preset).
2. On held-out prompts (``heldout_prompts``: windows of held-out files), each
   method generates a fixed number of new tokens (EOS disabled), greedy and at
   T = 1, timed side by side in one run (round-robin over the methods,
   ``--repeats`` passes; per prompt the median, summed over the prompts):

   * ``plain``: the same ``TransformersTarget`` run one token per forward
     (``generate(target, None, ...)``) -- the reference of the speed-ups;
   * ``model.generate``: transformers' own decoding loop (greedy, or
     ``do_sample=True, top_k=0``);
   * ``Medusa chain`` / ``Medusa tree`` (mc_sim_7b_63 cut to the heads);
   * ``EAGLE chain`` (5 greedy steps) / ``EAGLE-2 tree`` (top_k 8, depth 5,
     60 tokens), once per drafter storage format of ``--weight-dtypes``
     (default float32, bfloat16, int8, q8, q4): the same trained EAGLE-1
     drafter loaded with ``EagleDrafter.load(..., weight_dtype=...)``, every
     matrix it holds (its copy of the target's LM head too) stored so.

   It reports tau (mean acceptance length), tokens/s and the speed-ups, and a
   table per format (the figure a user picks a drafter format by); greedy
   runs check that every method's tokens equal plain greedy decoding's and
   ``model.generate``'s (the script fails if not): quantizing the drafter
   moves tau, never the output.
3. A projection for a 7B-class target (Llama-2-7B: fp16/bf16 weights,
   ~13.5 GB read per forward), memory-bound: ``t_target = 13.5 GB / read
   bandwidth`` (bench_predict.py's compiled read probe over a 1 GiB buffer,
   larger than the caches), a tree forward costing one forward;
   ``t_draft`` of the drafter at the EAGLE-LLaMA2-7B size (d 4096, one decoder
   layer, V 32000, bfloat16): the EAGLE tree and chain *measured* with
   random weights (``--no-7b-drafter`` or ``--quick``: estimated from its bytes
   over the bandwidth, one read per draft step), Medusa's 4 heads of
   Medusa-vicuna-7B estimated from their bytes; ``t_verify`` measured on
   (64, 32000) logits.  ``projected speed-up = tau * t_target / (t_target +
   t_draft + t_verify)``, with the tau measured here -- a small model's tau,
   not a 7B model's.

The table goes to stdout, every number to ``--json`` (default
``bench/results/bench_generate.json``) and, with matplotlib, a bar chart to
``--plot`` (``bench/results/bench_generate.png``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import train_models  # noqa: E402

import eagle_fast  # noqa: E402
from eagle_fast import EagleDrafter, _backend, load_medusa  # noqa: E402
from eagle_fast.speculative import (MC_SIM_7B_63, TreeTemplate, generate,  # noqa: E402
                                    verify_greedy, verify_sampling)

RESULTS_DIR = BENCH / "results"
TARGET_7B_BYTES = 13.5e9  # Llama-2-7B in fp16/bf16: the weights read per forward
EAGLE_TREE = {"top_k": 8, "depth": 5, "total_tokens": 60}
EAGLE_CHAIN = 5
VOCAB_7B, D_7B, MEDUSA_HEADS_7B = 32000, 4096, 4
# Drafter storage formats compared (bytes per weight, scales included).
WEIGHT_DTYPES = ("float32", "bfloat16", "int8", "q8", "q4")
BYTES_PER_WEIGHT = {"float32": 4.0, "bfloat16": 2.0, "float16": 2.0, "int8": 1.0,
                    "q8": 34 / 32, "q4": 18 / 32}
EAGLE_METHODS = ("EAGLE chain", "EAGLE-2 tree")
PRESET_RUN = {  # prompts, prompt tokens, new tokens, repeats
    "full": (8, 96, 64, 3),
    "quick": (3, 48, 32, 2),
}


# -- the methods ----------------------------------------------------------------------


def medusa_choices(num_heads: int) -> list[tuple[int, ...]]:
    """Medusa's mc_sim_7b_63 tree without the nodes deeper than the heads."""
    return [c for c in MC_SIM_7B_63 if len(c) <= num_heads]


def method_name(base: str, weight_dtype: str) -> str:
    """``"EAGLE chain [q8]"``: an EAGLE method with its drafter's format."""
    return f"{base} [{weight_dtype}]"


def make_methods(target: Any, model: Any, medusa: Any, eagles: dict[str, Any], eos: int
                 ) -> dict[str, Callable[[np.ndarray, int, float, int], Any]]:
    """name -> run(prompt, new_tokens, temperature, seed) -> (tokens, stats or None);
    ``eagles``: the EAGLE drafter per storage format."""
    import torch

    def spec(drafter: Any, tree: Any) -> Callable[..., Any]:
        def run(prompt: np.ndarray, n: int, temperature: float, seed: int) -> Any:
            result = generate(target, drafter, prompt, max_new_tokens=n,
                              temperature=temperature, rng=seed, tree=tree)
            return result.tokens, result
        return run

    def hf(prompt: np.ndarray, n: int, temperature: float, seed: int) -> Any:
        ids = torch.from_numpy(prompt)[None]
        torch.manual_seed(seed)
        options: dict[str, Any] = (dict(do_sample=False) if temperature == 0 else
                                   dict(do_sample=True, temperature=temperature, top_k=0,
                                        top_p=1.0))
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                                 min_new_tokens=0, pad_token_id=eos, **options)
        return out[0, ids.shape[1]:].numpy().astype(np.int64), None

    methods = {
        "plain (TransformersTarget)": spec(None, None),
        "model.generate": hf,
        "Medusa chain": spec(medusa, "chain"),
        "Medusa tree": spec(medusa, medusa_choices(medusa.num_heads)),
    }
    for weight_dtype, eagle in eagles.items():
        methods[method_name("EAGLE chain", weight_dtype)] = spec(eagle, {"chain": EAGLE_CHAIN})
        methods[method_name("EAGLE-2 tree", weight_dtype)] = spec(eagle, dict(EAGLE_TREE))
    return methods


# -- the 7B projection ---------------------------------------------------------------


def read_bandwidth(threads: int, repeats: int = 5) -> float:
    """Bytes/s of the compiled read probe over a 1 GiB buffer."""
    probe = _backend.load("compiled").draft.read_probe
    buffer = np.ones(1 << 28, dtype=np.float32)
    probe(buffer, threads)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        probe(buffer, threads)
        times.append(time.perf_counter() - start)
    return buffer.nbytes / statistics.median(times)


def eagle_7b_bytes(weight_bytes: float = 2) -> int:
    """Bytes an EAGLE-LLaMA2-7B draft step reads: fc (4096 x 8192), one
    decoder layer (q/k/v/o 4096^2, gate/up/down 4096 x 11008) and the
    target's LM head (32000 x 4096), ``weight_bytes`` per weight (bfloat16: 2)."""
    d, inter = D_7B, 11008
    return int(weight_bytes * (2 * d * d + 4 * d * d + 3 * d * inter + VOCAB_7B * d))


def medusa_7b_bytes(weight_bytes: int = 2) -> int:
    """Medusa-vicuna-7B's 4 heads: W (4096^2) and an LM head (32000 x 4096) each."""
    return weight_bytes * MEDUSA_HEADS_7B * (D_7B * D_7B + VOCAB_7B * D_7B)


def measure_eagle_7b(threads: int, repeats: int) -> dict[str, float]:
    """Median seconds of one EAGLE-2 tree and one 5-step chain of a random
    EAGLE-LLaMA2-7B-sized drafter in bfloat16 (bench_drafter's weights, a
    512-token draft KV cache)."""
    import bench_drafter

    rng = np.random.default_rng(0)
    w, config, lm = bench_drafter.make_state_dict(bench_drafter.SIZES["7b"], rng)
    drafter = EagleDrafter.from_state_dict(w, config, lm_head=lm, weight_dtype="bfloat16")
    del w, lm
    ids = bench_drafter.fill_prefix(drafter, bench_drafter.SIZES["7b"]["prefix"], rng)
    prefix = drafter.prefix_length
    feature = rng.standard_normal((1, drafter.input_size)).astype(drafter.dtype)

    def tree() -> None:
        drafter.draft_tree(feature, ids, num_threads=threads, **EAGLE_TREE)
        drafter.truncate(prefix)

    def chain() -> None:
        drafter.draft_chain(feature, ids, EAGLE_CHAIN)
        drafter.truncate(prefix)

    return median_seconds({"tree": tree, "chain": chain}, repeats)


def median_seconds(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median wall time of each run over ``repeats`` calls, after one warm-up call."""
    out = {}
    for name, run in runs.items():
        run()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        out[name] = statistics.median(times)
    return out


def measure_verify_7b(repeats: int = 7) -> dict[str, float]:
    """Median seconds of verify_greedy / verify_sampling (T = 1) over the
    64-node mc_sim_7b_63 tree with random (64, 32000) float32 logits."""
    rng = np.random.default_rng(0)
    template = TreeTemplate.from_medusa_choices(MC_SIM_7B_63)
    table = rng.integers(0, VOCAB_7B, (template.max_depth, 10))
    tree = template.build(1, table)
    logits = rng.standard_normal((tree.num_nodes, VOCAB_7B)).astype(np.float32)
    sampler = np.random.default_rng(1)
    runs = {"greedy": lambda: verify_greedy(tree, logits),
            "sampling": lambda: verify_sampling(tree, logits, temperature=1.0, rng=sampler)}
    return median_seconds(runs, repeats)


# -- main ----------------------------------------------------------------------------


def _progress(total: int) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="run", file=sys.stderr, desc="bench_generate")


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import transformers

    preset = "quick" if args.quick else "full"
    n_prompts, prompt_len, new_tokens, repeats = PRESET_RUN[preset]
    n_prompts = args.prompts or n_prompts
    new_tokens = args.new_tokens or new_tokens
    repeats = args.repeats or repeats
    wall_start = time.perf_counter()
    artifacts = train_models.prepare(preset, args.cache, threads=args.threads)
    train_seconds = time.perf_counter() - wall_start
    threads = args.threads or train_models.default_threads()
    torch.set_num_threads(threads)

    major, minor = (int(p) for p in transformers.__version__.split(".")[:2])
    keyword = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(artifacts.target_dir), attn_implementation="sdpa",
        **{keyword: torch.float32}).float().eval()
    eos = artifacts.eos_token_id
    # A fixed number of new tokens: no EOS stop anywhere.
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = eos
    from eagle_fast.integrations.transformers import TransformersTarget, drafter_weights

    target = TransformersTarget(model)
    medusa = load_medusa(artifacts.medusa_path)
    lm_head = drafter_weights(model)["lm_head"]
    eagles = {wd: EagleDrafter.load(artifacts.eagle_dir, lm_head=lm_head, weight_dtype=wd)
              for wd in args.weight_dtypes}
    eagle_bytes = {wd: eagle.nbytes for wd, eagle in eagles.items()}
    context = int(artifacts.manifest["config"]["target"]["context"])
    prompt_len = min(prompt_len, context - new_tokens)
    prompts = train_models.heldout_prompts(artifacts, n_prompts, prompt_len)
    methods = make_methods(target, model, medusa, eagles, eos)
    names = list(methods)
    temperatures = (0.0, 1.0)

    # warm-up (first calls allocate)
    for name in names:
        methods[name](prompts[0], 4, 0.0, 0)
    times: dict[tuple[float, str], list[list[float]]] = {
        (t, n): [[] for _ in prompts] for t in temperatures for n in names}
    tokens: dict[tuple[float, str], list[Any]] = {
        (t, n): [None] * len(prompts) for t in temperatures for n in names}
    stats: dict[tuple[float, str], Any] = {}
    splits: dict[tuple[float, str], dict[str, float]] = {}
    bar = _progress(repeats * len(prompts) * len(names) * len(temperatures))
    for rep in range(repeats):
        for p, prompt in enumerate(prompts):
            for t in temperatures:
                order = names[(rep + p) % len(names):] + names[:(rep + p) % len(names)]
                for name in order:
                    seed = 1000 * rep + p
                    start = time.perf_counter()
                    out, result = methods[name](prompt, new_tokens, t, seed)
                    elapsed = time.perf_counter() - start
                    assert out.shape[0] == new_tokens, (name, out.shape)
                    times[(t, name)][p].append(elapsed)
                    if rep == 0:
                        tokens[(t, name)][p] = out
                    if result is not None and (t > 0 or rep == 0):
                        key = (t, name)
                        stats[key] = (result.stats if key not in stats
                                      else stats[key].merge(result.stats))
                        split = splits.setdefault(key, {})
                        for k, v in result.timings.as_dict().items():
                            split[k] = split.get(k, 0.0) + v
                        split["rounds"] = split.get("rounds", 0) + result.stats.num_verifications
                    if bar is not None:
                        bar.update(1)
    if bar is not None:
        bar.close()

    # greedy: every method's tokens equal plain decoding's and model.generate's
    mismatches = []
    for name in names:
        for p in range(len(prompts)):
            for ref in ("plain (TransformersTarget)", "model.generate"):
                if not np.array_equal(tokens[(0.0, name)][p], tokens[(0.0, ref)][p]):
                    mismatches.append((name, ref, p))

    # 7B projection
    bw = read_bandwidth(eagle_fast.build_info()["max_threads"])
    t_target = TARGET_7B_BYTES / bw
    verify = measure_verify_7b()
    draft_7b: dict[str, dict[str, Any]] = {}
    eagle_step = eagle_7b_bytes() / bw
    estimated = {"tree": eagle_step * (EAGLE_TREE["depth"] + 1),
                 "chain": eagle_step * (EAGLE_CHAIN + 1)}
    measured = None
    if not (args.quick or args.no_7b_drafter):
        measured = measure_eagle_7b(eagle_fast.build_info()["max_threads"], 3)
    for kind in ("tree", "chain"):
        base = "EAGLE-2 tree" if kind == "tree" else "EAGLE chain"
        for wd in args.weight_dtypes:
            # bfloat16 is measured (full preset); the other formats scale by their bytes.
            ratio = BYTES_PER_WEIGHT[wd] / 2
            if measured is not None and wd == "bfloat16":
                draft_7b[method_name(base, wd)] = {
                    "seconds": measured[kind], "how": "measured",
                    "estimated_seconds": estimated[kind]}
            else:
                draft_7b[method_name(base, wd)] = {"seconds": estimated[kind] * ratio,
                                                   "how": "estimated from bytes"}
    medusa_t = medusa_7b_bytes() / bw
    for name in ("Medusa chain", "Medusa tree"):
        draft_7b[name] = {"seconds": medusa_t, "how": "estimated from bytes"}

    rows = []
    for t in temperatures:
        totals = {n: sum(statistics.median(ts) for ts in times[(t, n)]) for n in names}
        for name in names:
            total_tokens = new_tokens * len(prompts)
            s = stats.get((t, name))
            tau = s.mean_acceptance_length if s is not None and s.num_verifications else None
            if name == "model.generate":
                tau = 1.0
            base, _, fmt = name.partition(" [")
            row: dict[str, Any] = {
                "temperature": t, "method": name, "tau": tau,
                "drafter_weight_dtype": fmt.rstrip("]") or None,
                "tokens_per_second": total_tokens / totals[name],
                "seconds": totals[name],
                "speedup_vs_plain": totals["plain (TransformersTarget)"] / totals[name],
                "speedup_vs_model_generate": totals["model.generate"] / totals[name],
            }
            if t == 0:
                row["greedy_equal"] = not any(m[0] == name for m in mismatches)
            split = splits.get((t, name))
            if split is not None and split["rounds"]:
                row["draft_ms_per_round"] = 1e3 * split["drafting"] / split["rounds"]
                row["target_ms_per_round"] = 1e3 * split["target_forward"] / split["rounds"]
            if name in draft_7b and tau is not None:
                t_draft = draft_7b[name]["seconds"]
                t_ver = verify["greedy" if t == 0 else "sampling"]
                row["projected_7b_speedup"] = tau * t_target / (t_target + t_draft + t_ver)
                row["projected_7b_draft_seconds"] = t_draft
                row["projected_7b_draft_how"] = draft_7b[name]["how"]
            rows.append(row)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "preset": preset, "prompts": len(prompts), "prompt_tokens": prompt_len,
        "new_tokens": new_tokens, "repeats": repeats, "torch_threads": threads,
        "train_or_cache_seconds": round(train_seconds, 1),
        "wall_seconds": round(time.perf_counter() - wall_start, 1),
        "load_average": load, "cpus": os.cpu_count(),
        "build_info": eagle_fast.build_info(),
        "manifest": {k: artifacts.manifest[k] for k in ("target", "medusa", "eagle")},
        "greedy_mismatches": [list(m) for m in mismatches],
        "weight_dtypes": list(args.weight_dtypes), "eagle_nbytes": eagle_bytes,
        "formats": format_table(rows, args.weight_dtypes, eagle_bytes),
        "projection": {"target_bytes": TARGET_7B_BYTES, "read_bandwidth_bytes_per_s": bw,
                       "t_target": t_target, "t_verify": verify, "draft": draft_7b,
                       "eagle_7b_bytes": eagle_7b_bytes(), "medusa_7b_bytes": medusa_7b_bytes()},
        "rows": rows,
    }


def format_table(rows: list[dict[str, Any]], weight_dtypes: list[str],
                 nbytes: dict[str, int]) -> list[dict[str, Any]]:
    """One row per (temperature, drafter format): the EAGLE chain's and tree's
    tau, tokens/s and speed-up over plain decoding side by side, with the
    plain baseline's tokens/s."""
    by = {(r["temperature"], r["method"]): r for r in rows}
    out = []
    for t in sorted({r["temperature"] for r in rows}):
        plain = by[(t, "plain (TransformersTarget)")]
        for wd in weight_dtypes:
            entry: dict[str, Any] = {"temperature": t, "weight_dtype": wd,
                                     "drafter_bytes": nbytes[wd],
                                     "plain_tokens_per_second": plain["tokens_per_second"]}
            for base, key in (("EAGLE chain", "chain"), ("EAGLE-2 tree", "tree")):
                r = by[(t, method_name(base, wd))]
                entry[f"{key}_tau"] = r["tau"]
                entry[f"{key}_tokens_per_second"] = r["tokens_per_second"]
                entry[f"{key}_speedup_vs_plain"] = r["speedup_vs_plain"]
                entry[f"{key}_greedy_equal"] = r.get("greedy_equal")
            out.append(entry)
    return out


def _fmt(value: Optional[float], spec: str, suffix: str = "") -> str:
    return "" if value is None else f"{value:{spec}}{suffix}"


def print_report(report: dict[str, Any]) -> None:
    m = report["manifest"]
    print(f"\ntarget: {m['target']['parameters']:,} parameters, held-out top-1 "
          f"{m['target']['heldout_top1']}; Medusa {m['medusa']['num_heads']} heads; "
          f"EAGLE {m['eagle']['parameters']:,} parameters.  {report['prompts']} held-out "
          f"prompts of {report['prompt_tokens']} tokens, {report['new_tokens']} new tokens "
          f"each, median of {report['repeats']}; torch threads {report['torch_threads']}, "
          f"load average {report['load_average'] and round(report['load_average'][0], 1)} "
          f"on {report['cpus']} CPUs")
    print("\n| T | method | τ | tokens/s | vs plain | vs model.generate | greedy = plain | "
          "draft ms / round | projected 7B speed-up |")
    print("|---|---|---:|---:|---:|---:|---|---:|---:|")
    for r in report["rows"]:
        eq = "" if "greedy_equal" not in r else ("yes" if r["greedy_equal"] else "NO")
        print(f"| {r['temperature']:g} | {r['method']} | {_fmt(r['tau'], '.2f')} | "
              f"{r['tokens_per_second']:.1f} | {r['speedup_vs_plain']:.2f}× | "
              f"{r['speedup_vs_model_generate']:.2f}× | {eq} | "
              f"{_fmt(r.get('draft_ms_per_round'), '.2f')} | "
              f"{_fmt(r.get('projected_7b_speedup'), '.2f', '×')} |")
    print("\nEAGLE drafter per storage format (the same trained drafter; tau and tokens/s "
          "side by side in this run):")
    print("\n| T | drafter | bytes | chain τ | chain tok/s | chain vs plain | tree τ | "
          "tree tok/s | tree vs plain | plain tok/s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for f in report["formats"]:
        print(f"| {f['temperature']:g} | {f['weight_dtype']} | {f['drafter_bytes'] / 1e6:.2f} MB "
              f"| {_fmt(f['chain_tau'], '.2f')} | {f['chain_tokens_per_second']:.1f} | "
              f"{f['chain_speedup_vs_plain']:.2f}× | {_fmt(f['tree_tau'], '.2f')} | "
              f"{f['tree_tokens_per_second']:.1f} | {f['tree_speedup_vs_plain']:.2f}× | "
              f"{f['plain_tokens_per_second']:.1f} |")
    p = report["projection"]
    print(f"\n7B projection: read bandwidth {p['read_bandwidth_bytes_per_s'] / 1e9:.1f} GB/s, "
          f"t_target = 13.5 GB / bandwidth = {p['t_target'] * 1e3:.0f} ms (a tree forward "
          f"taken as one forward); t_verify {p['t_verify']['greedy'] * 1e3:.2f} ms greedy, "
          f"{p['t_verify']['sampling'] * 1e3:.2f} ms sampling (64 x 32000 logits)")
    for name, d in p["draft"].items():
        extra = (f" (bytes estimate {d['estimated_seconds'] * 1e3:.0f} ms)"
                 if "estimated_seconds" in d else "")
        print(f"  t_draft {name}: {d['seconds'] * 1e3:.0f} ms, {d['how']}{extra}")
    print(f"  EAGLE-LLaMA2-7B draft step reads {p['eagle_7b_bytes'] / 1e9:.2f} GB (bfloat16); "
          f"Medusa-7B's 4 heads {p['medusa_7b_bytes'] / 1e9:.2f} GB; the τ are this small "
          f"target's")
    if report["greedy_mismatches"]:
        print(f"\nGREEDY MISMATCHES (method, reference, prompt): {report['greedy_mismatches']}")
    else:
        print("\ngreedy: every method's tokens equal plain greedy decoding's and "
              "model.generate's on every prompt")
    print(f"wall time {report['wall_seconds']} s (training / cache "
          f"{report['train_or_cache_seconds']} s)")


def plot(report: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = [r for r in report["rows"] if r["method"] not in ("plain (TransformersTarget)",)]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, t in zip(axes, (0.0, 1.0)):
        sel = [r for r in rows if r["temperature"] == t]
        x = np.arange(len(sel))
        ax.bar(x - 0.2, [r["speedup_vs_plain"] for r in sel], 0.4, label="measured (small target)")
        ax.bar(x + 0.2, [r.get("projected_7b_speedup", 0) for r in sel], 0.4,
               label="projected (7B target)")
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_xticks(x)
        ax.set_xticklabels([r["method"] for r in sel], rotation=25, ha="right")
        ax.set_title(f"T = {t:g}")
    axes[0].set_ylabel("speed-up vs plain decoding")
    axes[0].legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _weight_dtypes(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in BYTES_PER_WEIGHT]
    if not names or bad or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(
            f"expected distinct names from {', '.join(BYTES_PER_WEIGHT)}, got {text!r}")
    return names


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="train_models' quick preset, fewer prompts (under 3 minutes)")
    parser.add_argument("--cache", default=None, help="train_models' cache root")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: train_models' choice)")
    parser.add_argument("--prompts", type=int, default=None)
    parser.add_argument("--new-tokens", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--weight-dtypes", type=_weight_dtypes, default=list(WEIGHT_DTYPES),
                        metavar="LIST",
                        help="EAGLE drafter storage formats, comma-separated (default "
                             f"{','.join(WEIGHT_DTYPES)})")
    parser.add_argument("--no-7b-drafter", action="store_true",
                        help="estimate the 7B EAGLE drafter's time from its bytes "
                             "instead of building one (2 GB of random weights)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--plot", type=Path, default=None)
    args = parser.parse_args(argv)
    for name in ("threads", "prompts", "new_tokens", "repeats"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    suffix = "_quick" if args.quick else ""
    json_path = args.json or RESULTS_DIR / f"bench_generate{suffix}.json"
    plot_path = args.plot or RESULTS_DIR / f"bench_generate{suffix}.png"
    report = run_bench(args)
    print_report(report)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"results written to {json_path}")
    if plot(report, plot_path):
        print(f"plot written to {plot_path}")
    else:
        print("(matplotlib is not installed: no plot)")
    return 1 if report["greedy_mismatches"] else 0


if __name__ == "__main__":
    sys.exit(main())
