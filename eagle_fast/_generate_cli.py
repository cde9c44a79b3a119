"""``eagle-fast generate``: speculative generation with a transformers model on disk.

The target is a ``transformers`` causal LM folder (``config.json``, the
weights, the tokenizer files) loaded with ``AutoTokenizer`` /
``AutoModelForCausalLM`` in float32 on the CPU; the drafter is a Medusa
checkpoint (``medusa_lm_head.safetensors`` or its folder) or an EAGLE-1/2/3
folder (``config.json`` + ``model.safetensors``), recognised from its files.
torch and transformers are imported only here (``pip install ".[transformers]"``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ._checkpoint import MEDUSA_FORMAT, CheckpointError, inspect_checkpoint
from ._storage import WEIGHT_DTYPES

KINDS = ("medusa", "eagle", "chain")
# Above this many new tokens a progress bar goes to stderr (when tqdm is installed).
PROGRESS_MIN_TOKENS = 64
MISSING = ('eagle-fast generate needs torch and transformers: pip install ".[transformers]" '
           'from a checkout (or pip install "eagle-fast[transformers]")')


class GenerateError(Exception):
    """A generation that cannot run (printed as an error, exit status 1)."""


def add_arguments(parser: argparse.ArgumentParser, positive_int: Any,
                  non_negative_float: Any, probability: Any) -> None:
    """The ``generate`` subcommand's options."""
    parser.add_argument("--target", metavar="DIR", required=True,
                        help="a transformers model folder (config.json, weights, tokenizer)")
    parser.add_argument("--drafter", metavar="PATH", default=None,
                        help="Medusa checkpoint (medusa_lm_head.safetensors or its folder) "
                             "or EAGLE-1/2/3 folder (config.json + model.safetensors); "
                             "without it: plain decoding")
    parser.add_argument("--prompt", metavar="TEXT", required=True, help="the prompt text")
    parser.add_argument("--max-new-tokens", type=positive_int, default=64, metavar="N",
                        help="new tokens at most (default 64)")
    parser.add_argument("--temperature", type=non_negative_float, default=0.0, metavar="T",
                        help="0 = greedy, exactly the target's own output (default 0); "
                             "above 0: lossless sampling")
    parser.add_argument("--top-p", type=probability, default=1.0, metavar="P",
                        help="nucleus sampling at T > 0 (default 1: off)")
    parser.add_argument("--kind", choices=KINDS, default=None,
                        help="medusa (static tree), eagle (EAGLE-2 dynamic tree) or chain "
                             "(the drafter's greedy chain); default: from the checkpoint")
    parser.add_argument("--top-k", type=positive_int, default=None, metavar="K",
                        help="EAGLE: children per expanded node (default 8); Medusa: "
                             "keep the tree's nodes of rank < K")
    parser.add_argument("--depth", type=positive_int, default=None, metavar="D",
                        help="EAGLE: draft rounds (default 5); Medusa: tree depth "
                             "(default: the heads'); chain: steps (default 5 / the heads)")
    parser.add_argument("--total-tokens", type=positive_int, default=None, metavar="N",
                        help="EAGLE: tree nodes with the root (default 60)")
    parser.add_argument("--weight-dtype", choices=[d for d in WEIGHT_DTYPES if d != "float64"],
                        default=None,
                        help="store the drafter's matrices so: bfloat16, float16, int8 or "
                             "the 4.5/8.5-bit groups q4/q8 (fewer bytes per draft step; "
                             "the output stays the target's, only tau moves); default: "
                             "as the checkpoint holds them")
    parser.add_argument("--seed", type=int, default=None,
                        help="random seed for T > 0 (default: fresh randomness)")
    parser.add_argument("--threads", type=positive_int, default=None, metavar="N",
                        help="torch threads (default: torch's)")
    parser.add_argument("--baseline", action="store_true",
                        help="also run plain decoding (one token per target forward) and "
                             "print the speed-up; at T = 0 check that the outputs agree")


def check_arguments(args: argparse.Namespace) -> Optional[str]:
    """A usage error message for options that do not fit together, or None."""
    if args.drafter is None:
        if (args.kind is not None or args.top_k or args.depth or args.total_tokens
                or getattr(args, "weight_dtype", None) is not None):
            return "--kind/--top-k/--depth/--total-tokens/--weight-dtype need --drafter"
    if args.kind == "chain" and (args.top_k is not None or args.total_tokens is not None):
        return "--kind chain takes --depth (its steps) only, not --top-k/--total-tokens"
    if args.kind == "medusa" and args.total_tokens is not None:
        return "--total-tokens is an EAGLE option (Medusa trees: --top-k and --depth)"
    if args.top_p < 1 and args.temperature == 0:
        return "--top-p needs --temperature > 0"
    if not args.prompt:
        return "--prompt is empty"
    return None


def _imports() -> tuple[Any, Any]:
    try:
        import torch
        import transformers
    except ImportError:
        raise GenerateError(MISSING) from None
    return torch, transformers


def detect_kind(path: Path) -> str:
    """``"medusa"`` or ``"eagle"`` from a checkpoint's files."""
    if path.is_dir():
        if (path / "medusa_lm_head.safetensors").is_file():
            return "medusa"
        if (path / "config.json").is_file():
            return "eagle"
        raise GenerateError(f"{path}: neither medusa_lm_head.safetensors nor config.json "
                            f"(an EAGLE folder) inside")
    if not path.is_file():
        raise GenerateError(f"{path}: no such file or folder")
    if path.suffix == ".safetensors":
        try:
            if inspect_checkpoint(path)["format"] == MEDUSA_FORMAT:
                return "medusa"
        except CheckpointError:
            pass
    return "eagle"


def _medusa_choices(num_heads: int, top_k: Optional[int], depth: Optional[int]) -> list:
    """Medusa's mc_sim_7b_63 cut to the heads (and to ``depth`` / ranks < ``top_k``)."""
    from .speculative.medusa_choices import MC_SIM_7B_63

    max_depth = num_heads if depth is None else min(depth, num_heads)
    return [c for c in MC_SIM_7B_63
            if len(c) <= max_depth and (top_k is None or max(c) < top_k)]


def load_drafter(path: Path, kind: Optional[str], model: Any, args: argparse.Namespace
                 ) -> tuple[Any, Any, str]:
    """(drafter, tree, description) for :func:`eagle_fast.speculative.generate`."""
    from . import load_medusa
    from .integrations.transformers import drafter_weights
    from .models import EagleDrafter

    found = detect_kind(path)
    chain = kind == "chain"
    weight_dtype = getattr(args, "weight_dtype", None)
    stored = "" if weight_dtype is None else f", {weight_dtype} weights"
    if kind in ("medusa", "eagle") and kind != found:
        raise GenerateError(f"{path} looks like a{'n' if found == 'eagle' else ''} {found} "
                            f"checkpoint, not {kind}")
    if found == "medusa":
        file = path / "medusa_lm_head.safetensors" if path.is_dir() else path
        heads = load_medusa(file, weight_dtype=weight_dtype)
        if chain:
            steps = heads.num_heads if args.depth is None else args.depth
            if steps > heads.num_heads:
                raise GenerateError(f"--depth {steps}: the checkpoint has {heads.num_heads} "
                                    f"Medusa heads")
            return heads, {"chain": steps}, (f"Medusa chain of {steps} ({heads.num_heads} "
                                             f"heads{stored})")
        choices = _medusa_choices(heads.num_heads, args.top_k, args.depth)
        if not choices:
            raise GenerateError("--top-k/--depth leave an empty Medusa tree")
        return heads, choices, (f"Medusa tree, {len(choices) + 1} nodes "
                                f"({heads.num_heads} heads{stored})")
    from .models.eagle import inspect_eagle

    info = inspect_eagle(path)
    if info is None:
        raise GenerateError(f"{path}: not a Medusa or EAGLE checkpoint")
    weights = drafter_weights(model)
    # EAGLE-1/2 borrow the target's LM head; EAGLE-3 has its own (draft vocabulary).
    # Both take the target's embedding when the checkpoint has none.
    drafter = EagleDrafter.load(
        path, embed_tokens=None if info["has_embed_tokens"] else weights["embed_tokens"],
        lm_head=weights["lm_head"] if info["kind"] == "eagle" else None,
        weight_dtype=weight_dtype)
    name = ("EAGLE-3" if drafter.kind == "eagle3" else "EAGLE") + (
        f" ({weight_dtype})" if weight_dtype else "")
    if chain:
        steps = 5 if args.depth is None else args.depth
        return drafter, {"chain": steps}, f"{name} chain of {steps}"
    tree = {"top_k": args.top_k or 8, "depth": args.depth or 5,
            "total_tokens": args.total_tokens or 60}
    return drafter, tree, (f"{name} dynamic tree (top_k {tree['top_k']}, depth "
                           f"{tree['depth']}, total_tokens {tree['total_tokens']})")


class _Progress:
    """A target wrapper that advances a progress bar by the tokens each commit
    keeps (the protocol is forwarded untouched)."""

    def __init__(self, target: Any, bar: Any) -> None:
        self._target, self._bar = target, bar

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)

    def prefill(self, input_ids: Any) -> Any:
        out = self._target.prefill(input_ids)
        self._bar.update(1)
        return out

    def forward_tree(self, tree: Any) -> Any:
        return self._target.forward_tree(tree)

    def commit(self, accepted_nodes: Any) -> None:
        self._target.commit(accepted_nodes)
        self._bar.update(min(len(accepted_nodes), self._bar.total - self._bar.n))

    def reset(self) -> None:
        self._target.reset()


def _progress_bar(total: int) -> Any:
    if total < PROGRESS_MIN_TOKENS:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="tok", file=sys.stderr, leave=False, desc="generate")


def _load_model(transformers: Any, torch: Any, folder: Path) -> Any:
    """AutoModelForCausalLM in float32 with sdpa attention (``dtype=`` is
    ``torch_dtype=`` before transformers 4.56)."""
    major, minor = (int(p) for p in transformers.__version__.split(".")[:2])
    keyword = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(folder), attn_implementation="sdpa", **{keyword: torch.float32})
    return model.float()


def run(args: argparse.Namespace) -> int:
    """Load, generate, print the text, tau and tokens/s."""
    torch, transformers = _imports()
    from .integrations.transformers import TransformersTarget
    from .speculative import generate

    target_dir = Path(args.target)
    if not (target_dir / "config.json").is_file():
        raise GenerateError(f"--target {target_dir}: not a transformers model folder "
                            f"(no config.json)")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    load_start = time.perf_counter()
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(target_dir))
        model = _load_model(transformers, torch, target_dir)
    except (OSError, ValueError) as exc:
        raise GenerateError(f"--target {target_dir}: {exc}") from None
    model.eval()
    drafter, tree, description = None, None, "plain decoding (no drafter)"
    hidden_layers: Any = None
    if args.drafter is not None:
        drafter, tree, description = load_drafter(Path(args.drafter), args.kind, model, args)
        if getattr(drafter, "kind", None) == "eagle3":
            hidden_layers = "eagle3"
    target = TransformersTarget(model, hidden_layers=hidden_layers)
    load_seconds = time.perf_counter() - load_start
    ids = np.asarray(tokenizer(args.prompt)["input_ids"], dtype=np.int64)
    if ids.size == 0:
        raise GenerateError("the prompt has no tokens")
    eos = tokenizer.eos_token_id
    rng = np.random.default_rng(args.seed)
    options = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                   top_p=args.top_p, eos_token_id=eos)
    bar = _progress_bar(args.max_new_tokens)
    try:
        result = generate(target if bar is None else _Progress(target, bar), drafter, ids,
                          rng=rng, tree=tree, **options)
    finally:
        if bar is not None:
            bar.close()
    text = tokenizer.decode(result.tokens.tolist(), skip_special_tokens=True)
    print(args.prompt + text)
    stats = result.stats
    tau = stats.mean_acceptance_length if stats.num_verifications else float("nan")
    print(f"\n[{description}; {result.tokens.shape[0]} tokens ({result.finish_reason}), "
          f"tau {tau:.2f}, {result.num_target_forwards} target forwards, "
          f"{result.tokens_per_second:.1f} tokens/s; loaded in {load_seconds:.1f} s]",
          file=sys.stderr)
    if args.baseline:
        plain = generate(target, None, ids, rng=np.random.default_rng(args.seed), **options)
        speedup = result.tokens_per_second / plain.tokens_per_second
        line = (f"[plain decoding: {plain.tokens.shape[0]} tokens, "
                f"{plain.tokens_per_second:.1f} tokens/s; speed-up {speedup:.2f}x")
        if args.temperature == 0:
            same = plain.tokens.tolist() == result.tokens.tolist()
            line += f"; same tokens: {'yes' if same else 'NO'}"
        print(line + "]", file=sys.stderr)
        if args.temperature == 0 and plain.tokens.tolist() != result.tokens.tolist():
            return 1
    return 0
