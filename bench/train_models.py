"""Train, once and cached, the small models that ``bench_generate.py`` runs.

Usage::

    python bench/train_models.py [--quick] [--cache DIR] [--threads N] [--force] [--json]

What is trained (all on the CPU, with PyTorch and ``transformers``; each step
skipped when its outputs exist and its configuration hash matches):

1. **Corpus**: the running Python's standard library sources
   (``sysconfig.get_paths()["stdlib"]``, ``*.py``; without ``site-packages``,
   the test suites, ``encodings`` and ``pydoc_data``), read in the order of
   their relative paths; a file is held out when the SHA-256 of its relative
   path falls in the held-out percentage.  Each split is then taken in the
   order of those hashes up to its character budget.
2. **Tokenizer**: byte-level BPE trained with the ``tokenizers`` library,
   saved as a ``PreTrainedTokenizerFast`` (``tokenizer.json`` +
   ``tokenizer_config.json``; ``<|endoftext|>`` is the EOS and BOS token) that
   ``transformers.AutoTokenizer.from_pretrained`` loads offline.  Each file is
   its tokens followed by EOS; ``data/train.npy`` and ``data/heldout.npy`` hold
   the token streams (int32).
3. **Target**: a ``LlamaForCausalLM`` (untied embeddings, grouped-query
   attention) trained with AdamW on random windows of the training stream for
   a bounded wall time; ``target/`` is ``save_pretrained`` (safetensors) plus
   the tokenizer.
4. **Drafters** on the target's features -- the last hidden state after the
   final norm, ``output_hidden_states[-1]`` (checked at run time:
   ``lm_head(hidden_states[-1])`` must equal the logits) -- of random training
   windows:

   * **Medusa** heads (``medusa/medusa_lm_head.safetensors`` with Medusa's keys
     ``{i}.0.linear.weight``, ``{i}.0.linear.bias``, ``{i}.1.weight``, and
     Medusa's ``config.json``): head i is ``x = f + SiLU(W f + b)``, ``L x``,
     W zero-initialised and L copied from the target's LM head, as Medusa
     does.  Head i at position t guesses the token at t + i + 2; it is
     trained by cross-entropy against the target's own distribution for that
     token, ``softmax(lm_head(f_{t+i+1}))`` (self-distillation, as in
     Medusa-2; the soft labels of the data-free recipe), weighted 0.8^i
     (Medusa's decay).
   * **EAGLE-1** drafter (``eagle/config.json`` + ``eagle/model.safetensors``
     in SafeAILab/EAGLE's layout: ``fc.weight``, ``fc.bias``,
     ``layers.0.self_attn.{q,k,v,o}_proj.weight``,
     ``layers.0.mlp.{gate,up,down}_proj.weight``,
     ``layers.0.post_attention_layernorm.weight``, ``embed_tokens.weight``):
     position j reads ``fc(cat(embed(x_{j+1}), f_j))``, one Llama decoder
     layer without its input norm, no final norm, the target's frozen LM
     head and embedding.  The loss is EAGLE's (``eagle/train/main.py``):
     ``v_w * SmoothL1(pred_j, f_{j+1}) + p_w * CE(softmax(lm_head(f_{j+1})),
     lm_head(pred_j))`` with v_w = 1, p_w = 0.1, uniform noise on the input
     features of width ``0.2 * 512 / L`` (EAGLE's ``AddUniformNoise``, whose
     ``tensor.shape[1]`` is the sequence length L), AdamW betas (0.9, 0.95),
     gradients clipped by value at 0.5.

5. ``manifest.json``: sizes, steps, losses and held-out accuracies: the
   target's top-1 next-token accuracy; Medusa head i's top-1 agreement with
   the target's greedy token at t + i + 2 (and its accuracy on the text);
   the EAGLE drafter's first-step top-1 agreement with the target's greedy
   token (and its accuracy on the text).  Agreement with the target is what
   drafting at T = 0 needs, so these figures are the sanity check that the
   drafters learned something.

Presets: ``full`` -- a 2.4M-parameter target (width 192, 4 layers, 4 query /
2 key-value heads, vocabulary 2048, context 256) trained for 5 minutes,
4 Medusa heads (90 s), the EAGLE drafter (150 s); ``quick`` -- a 0.9M
target (width 128, 2 layers, context 128) in 40 s, 3 Medusa heads (15 s),
EAGLE (20 s).  The full target is this small because the budget is wall
time on 2 shared cores: a 5M-parameter target (width 256, vocabulary 4096)
saw only 180 steps in 5 minutes on a loaded machine and ended worse
(held-out top-1 0.13) than the quick one.

Each preset has its own folder under the cache root (``--cache``, else
``$EAGLE_FAST_BENCH_CACHE``, else ``~/.cache/eagle_fast/bench``):
``<root>/<preset>/{data,target,medusa,eagle}/`` and ``manifest.json``.
Training is bounded by wall time, so a retrained model differs from run to
run; the manifest records what was done.  A stage is rebuilt when its
configuration, or a stage it depends on, changed (each stage records a run
id that the stages after it include in their hash).

Threads: ``torch.set_num_threads(N)``; by default 2 (at most the CPU count),
but 1 when the machine is already loaded (1-minute load average at least the
CPU count): on a busy 2-core machine two PyTorch threads were measured 6x
slower than one, the OpenMP threads waiting for each other.

``bench_generate.py`` uses :func:`prepare` (returns an :class:`Artifacts`
with the paths and the manifest) and :func:`heldout_prompts`::

    art = prepare("quick")                       # or "full"; cached
    target = AutoModelForCausalLM.from_pretrained(art.target_dir)
    tokenizer = AutoTokenizer.from_pretrained(art.target_dir)
    medusa = eagle_fast.load_medusa(art.medusa_path)
    eagle = eagle_fast.EagleDrafter.load(art.eagle_dir, lm_head=art.target_dir)
    prompts = heldout_prompts(art, 8, 64)        # int64 token arrays, one file each

Positions: the target was trained on windows of ``art.config.target.context``
tokens; keep prompt + generated tokens within it.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import shutil
import sys
import sysconfig
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F

# Bump to invalidate every cached stage (a change in how things are trained).
FORMAT_VERSION = 1
EOS_TOKEN = "<|endoftext|>"
CACHE_ENV = "EAGLE_FAST_BENCH_CACHE"
EXCLUDED_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "encodings",
                 "pydoc_data", "__pycache__"}


# -- configuration -------------------------------------------------------------------


@dataclass(frozen=True)
class CorpusConfig:
    heldout_percent: int = 10
    max_train_chars: int = 6_000_000
    max_heldout_chars: int = 600_000
    max_file_bytes: int = 300_000
    max_files: Optional[int] = None  # per split; for tests
    tokenizer_chars: int = 3_000_000  # training text the BPE trainer sees
    vocab_size: int = 2048


@dataclass(frozen=True)
class TargetConfig:
    hidden_size: int = 192
    intermediate_size: int = 512
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    context: int = 256
    max_position_embeddings: int = 512
    batch_size: int = 4
    lr: float = 3e-3
    weight_decay: float = 0.1
    warmup_steps: int = 30
    seconds: float = 300.0
    max_steps: Optional[int] = None
    eval_sequences: int = 48
    seed: int = 0


@dataclass(frozen=True)
class FeatureConfig:
    train_sequences: int = 192  # training windows whose features the drafters learn from
    eval_sequences: int = 32  # held-out windows for the drafters' accuracies
    seed: int = 1


@dataclass(frozen=True)
class MedusaConfig:
    num_heads: int = 4
    batch_size: int = 2
    lr: float = 3e-3
    decay: float = 0.8
    warmup_steps: int = 20
    seconds: float = 90.0
    max_steps: Optional[int] = None
    seed: int = 2


@dataclass(frozen=True)
class EagleConfig:
    batch_size: int = 2
    lr: float = 2e-3
    v_w: float = 1.0
    p_w: float = 0.1
    noise_std: float = 0.2
    grad_clip_value: float = 0.5
    warmup_steps: int = 20
    seconds: float = 150.0
    max_steps: Optional[int] = None
    seed: int = 3


@dataclass(frozen=True)
class TrainConfig:
    name: str
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    target: TargetConfig = field(default_factory=TargetConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    medusa: MedusaConfig = field(default_factory=MedusaConfig)
    eagle: EagleConfig = field(default_factory=EagleConfig)


PRESETS: dict[str, TrainConfig] = {
    "full": TrainConfig("full"),
    "quick": TrainConfig(
        "quick",
        CorpusConfig(max_train_chars=1_500_000, max_heldout_chars=200_000,
                     tokenizer_chars=1_000_000, vocab_size=2048),
        TargetConfig(hidden_size=128, intermediate_size=352, num_layers=2, num_heads=4,
                     num_kv_heads=2, context=128, max_position_embeddings=256, batch_size=8,
                     lr=3e-3, warmup_steps=20, seconds=40.0, eval_sequences=32),
        FeatureConfig(train_sequences=128, eval_sequences=24),
        MedusaConfig(num_heads=3, batch_size=4, seconds=15.0, warmup_steps=10),
        EagleConfig(batch_size=4, seconds=20.0, warmup_steps=10),
    ),
}


def tiny_config(max_steps: int = 12) -> TrainConfig:
    """A config of a few seconds for tests: a handful of files, a 2-layer
    model of width 32, step-bounded training."""
    return TrainConfig(
        "tiny",
        CorpusConfig(max_train_chars=120_000, max_heldout_chars=30_000, max_files=6,
                     tokenizer_chars=120_000, vocab_size=320),
        TargetConfig(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                     num_kv_heads=2, context=32, max_position_embeddings=64, batch_size=4,
                     lr=3e-3, warmup_steps=2, seconds=30.0, max_steps=max_steps,
                     eval_sequences=4),
        FeatureConfig(train_sequences=8, eval_sequences=4),
        MedusaConfig(num_heads=2, batch_size=4, seconds=30.0, max_steps=max_steps,
                     warmup_steps=2),
        EagleConfig(batch_size=4, seconds=30.0, max_steps=max_steps, warmup_steps=2),
    )


def _hash(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def default_cache() -> Path:
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "eagle_fast" / "bench"


def default_threads() -> int:
    cpus = os.cpu_count() or 1
    try:
        loaded = os.getloadavg()[0] >= cpus
    except OSError:
        loaded = False
    return 1 if loaded else min(2, cpus)


# -- stages: cache bookkeeping ---------------------------------------------------------


class _Stage:
    """A cached step: a folder with ``stage.json`` (hash, run id, results)."""

    def __init__(self, folder: Path, key: str, outputs: tuple[str, ...]) -> None:
        self.folder, self.key, self.outputs = folder, key, outputs

    def cached(self) -> Optional[dict[str, Any]]:
        try:
            info = json.loads((self.folder / "stage.json").read_text())
        except (OSError, ValueError):
            return None
        if info.get("hash") != self.key:
            return None
        if not all((self.folder / name).exists() for name in self.outputs):
            return None
        return info

    def build(self, make: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
        """Run ``make(tmp_folder)`` -> results, then move the folder in place."""
        for stale in self.folder.parent.glob(f"{self.folder.name}.tmp-*"):
            if not _pid_alive(stale.name.rsplit("-", 1)[-1]):  # left by a killed run
                shutil.rmtree(stale, ignore_errors=True)
        tmp = self.folder.with_name(f"{self.folder.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            results = make(tmp)
            info = {"hash": self.key, "run_id": uuid.uuid4().hex[:12],
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **results}
            (tmp / "stage.json").write_text(json.dumps(info, indent=2) + "\n")
            shutil.rmtree(self.folder, ignore_errors=True)
            os.replace(tmp, self.folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return info


def _pid_alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except ValueError:
        return False
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _log(progress: bool, message: str) -> None:
    if progress:
        print(f"[train_models] {message}", file=sys.stderr, flush=True)


# -- 1. corpus -----------------------------------------------------------------------


@dataclass
class Corpus:
    train: list[str]
    heldout: list[str]
    train_files: list[str]
    heldout_files: list[str]
    fingerprint: str


def _path_hash(relpath: str) -> int:
    return int.from_bytes(hashlib.sha256(relpath.encode()).digest()[:8], "big")


def build_corpus(config: CorpusConfig, stdlib: Optional[Path] = None) -> Corpus:
    """The standard library's ``*.py`` files, split by the hash of their path."""
    root = Path(stdlib or sysconfig.get_paths()["stdlib"])
    candidates = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in EXCLUDED_DIRS]
        for name in files:
            if not name.endswith(".py") or name.startswith("_sysconfigdata"):
                continue
            path = Path(folder) / name
            try:
                if path.stat().st_size > config.max_file_bytes:
                    continue
            except OSError:
                continue
            candidates.append(path.relative_to(root).as_posix())
    candidates.sort()
    splits: dict[str, list[tuple[str, str]]] = {"train": [], "heldout": []}
    budgets = {"train": config.max_train_chars, "heldout": config.max_heldout_chars}
    used = {"train": 0, "heldout": 0}
    for rel in sorted(candidates, key=lambda r: (_path_hash(r), r)):
        split = "heldout" if _path_hash(rel) % 100 < config.heldout_percent else "train"
        if used[split] >= budgets[split]:
            continue
        if config.max_files is not None and len(splits[split]) >= config.max_files:
            continue
        try:
            text = (root / rel).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if not text.strip():
            continue
        splits[split].append((rel, text))
        used[split] += len(text)
    digest = hashlib.sha256(sys.version.encode())
    for split in ("train", "heldout"):
        for rel, text in splits[split]:
            digest.update(f"{split}\0{rel}\0".encode())
            digest.update(text.encode())
    return Corpus([t for _, t in splits["train"]], [t for _, t in splits["heldout"]],
                  [r for r, _ in splits["train"]], [r for r, _ in splits["heldout"]],
                  digest.hexdigest()[:16])


# -- 2. tokenizer and token streams --------------------------------------------------------


def train_tokenizer(texts: list[str], vocab_size: int, max_chars: int) -> Any:
    """A byte-level BPE ``tokenizers.Tokenizer`` trained on ``texts`` (up to
    ``max_chars`` characters of them)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2,
                                  special_tokens=[EOS_TOKEN], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())

    def sample() -> Iterator[str]:
        used = 0
        for text in texts:
            if used >= max_chars:
                return
            yield text
            used += len(text)

    tok.train_from_iterator(sample(), trainer)
    return tok


def save_hf_tokenizer(tok: Any, folder: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS_TOKEN,
                                   bos_token=EOS_TOKEN, pad_token=EOS_TOKEN,
                                   model_max_length=1 << 30)
    fast.save_pretrained(str(folder))


def encode_stream(tok: Any, texts: list[str]) -> np.ndarray:
    """All texts' token ids, each followed by EOS, as one int32 array."""
    eos = tok.token_to_id(EOS_TOKEN)
    pieces = []
    for encoding in tok.encode_batch(texts, add_special_tokens=False):
        pieces.append(np.asarray(encoding.ids, dtype=np.int32))
        pieces.append(np.array([eos], dtype=np.int32))
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int32)


# -- 3. target ---------------------------------------------------------------------------


def _lr_factor(step: int, warmup: int, fraction: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine from 1 to 0.1 over the
    elapsed fraction of the budget."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, fraction)))


class _Budget:
    """Wall-time and step bound of a training loop, with a tqdm bar."""

    def __init__(self, seconds: float, max_steps: Optional[int], label: str,
                 progress: bool) -> None:
        from tqdm import tqdm

        self.seconds, self.max_steps = seconds, max_steps
        self.start = time.perf_counter()
        self.step = 0
        total = max_steps if max_steps is not None else None
        self.bar = tqdm(total=total, desc=label, unit="step", disable=not progress,
                        file=sys.stderr, dynamic_ncols=True, leave=True)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    @property
    def fraction(self) -> float:
        by_time = self.elapsed / self.seconds
        if self.max_steps is not None:
            return max(by_time, self.step / self.max_steps)
        return by_time

    def done(self) -> bool:
        if self.max_steps is not None and self.step >= self.max_steps:
            return True
        return self.elapsed >= self.seconds

    def advance(self, **postfix: Any) -> None:
        self.step += 1
        self.bar.update(1)
        self.bar.set_postfix(postfix, refresh=False)

    def close(self) -> None:
        self.bar.close()


def _windows(stream: np.ndarray, length: int, count: int, rng: np.random.Generator) -> np.ndarray:
    starts = rng.integers(0, len(stream) - length, size=count)
    return np.stack([stream[s:s + length] for s in starts]).astype(np.int64)


def _eval_windows(stream: np.ndarray, length: int, count: int) -> np.ndarray:
    """Up to ``count`` consecutive non-overlapping windows from the start."""
    n = min(count, len(stream) // length)
    if n == 0:
        raise ValueError(f"held-out stream of {len(stream)} tokens is shorter than one "
                         f"window of {length}")
    return stream[:n * length].reshape(n, length).astype(np.int64)


def build_llama_config(cfg: TargetConfig, vocab_size: int, eos_id: int) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab_size, hidden_size=cfg.hidden_size,
                       intermediate_size=cfg.intermediate_size,
                       num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                       num_key_value_heads=cfg.num_kv_heads,
                       max_position_embeddings=cfg.max_position_embeddings,
                       tie_word_embeddings=False, bos_token_id=eos_id, eos_token_id=eos_id,
                       pad_token_id=eos_id)


def train_target(cfg: TargetConfig, train: np.ndarray, heldout: np.ndarray, vocab_size: int,
                 eos_id: int, progress: bool) -> tuple[Any, dict[str, Any]]:
    from transformers import LlamaForCausalLM

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = LlamaForCausalLM(build_llama_config(cfg, vocab_size, eos_id))
    model.train()
    params = sum(p.numel() for p in model.parameters())
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=cfg.lr, betas=(0.9, 0.95))
    budget = _Budget(cfg.seconds, cfg.max_steps, "target", progress)
    ema: Optional[float] = None
    tokens = 0
    while not budget.done():
        for group in opt.param_groups:
            group["lr"] = cfg.lr * _lr_factor(budget.step, cfg.warmup_steps, budget.fraction)
        batch = torch.from_numpy(_windows(train, cfg.context + 1, cfg.batch_size, rng))
        logits = model(input_ids=batch[:, :-1]).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        tokens += batch[:, :-1].numel()
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        budget.advance(loss=f"{ema:.3f}", tok_s=f"{tokens / budget.elapsed:.0f}")
    budget.close()
    model.eval()
    seconds = budget.elapsed
    evaluation = evaluate_target(model, _eval_windows(heldout, cfg.context, cfg.eval_sequences))
    return model, {"parameters": params, "steps": budget.step, "train_tokens": tokens,
                   "train_seconds": round(seconds, 1),
                   "tokens_per_second": round(tokens / max(seconds, 1e-9), 1),
                   "train_loss_ema": None if ema is None else round(ema, 4), **evaluation}


@torch.no_grad()
def evaluate_target(model: Any, windows: np.ndarray) -> dict[str, Any]:
    ids = torch.from_numpy(windows)
    logits = model(input_ids=ids).logits[:, :-1]
    labels = ids[:, 1:]
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
    acc = (logits.argmax(-1) == labels).float().mean()
    return {"heldout_loss": round(loss.item(), 4),
            "heldout_perplexity": round(math.exp(loss.item()), 2),
            "heldout_top1": round(acc.item(), 4), "heldout_tokens": int(labels.numel())}


# -- 4. features ----------------------------------------------------------------------------


@torch.no_grad()
def target_features(model: Any, windows: np.ndarray, batch_size: int = 8) -> torch.Tensor:
    """The last hidden state after the final norm, (n, L, d) float32.

    ``hidden_states[-1]`` of ``output_hidden_states`` is the state after the
    final norm in HF Llama; checked: the LM head applied to it gives the logits."""
    out = []
    for start in range(0, len(windows), batch_size):
        ids = torch.from_numpy(windows[start:start + batch_size])
        result = model(input_ids=ids, output_hidden_states=True)
        hidden = result.hidden_states[-1]
        if not torch.allclose(model.lm_head(hidden), result.logits, atol=1e-4, rtol=1e-4):
            raise RuntimeError("hidden_states[-1] is not the state the LM head reads "
                               "(not after the final norm?)")
        out.append(hidden.float())
    return torch.cat(out)


# -- 5a. Medusa --------------------------------------------------------------------------


class MedusaTorch(torch.nn.Module):
    """Medusa heads: ``x = f + SiLU(W_i f + b_i)``, ``logits = L_i x``."""

    def __init__(self, num_heads: int, lm_head: torch.Tensor) -> None:
        super().__init__()
        vocab, d = lm_head.shape
        self.linears = torch.nn.ModuleList(torch.nn.Linear(d, d) for _ in range(num_heads))
        self.heads = torch.nn.ModuleList(torch.nn.Linear(d, vocab, bias=False)
                                         for _ in range(num_heads))
        for linear, head in zip(self.linears, self.heads):
            torch.nn.init.zeros_(linear.weight)  # as Medusa's ResBlock: starts near identity
            head.weight.data.copy_(lm_head)

    def forward(self, features: torch.Tensor) -> list[torch.Tensor]:
        return [head(features + F.silu(linear(features)))
                for linear, head in zip(self.linears, self.heads)]

    def published_state_dict(self) -> dict[str, torch.Tensor]:
        tensors = {}
        for i, (linear, head) in enumerate(zip(self.linears, self.heads)):
            tensors[f"{i}.0.linear.weight"] = linear.weight.detach().contiguous()
            tensors[f"{i}.0.linear.bias"] = linear.bias.detach().contiguous()
            tensors[f"{i}.1.weight"] = head.weight.detach().contiguous()
        return tensors


def _soft_ce(logits: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
    """Mean over positions of -sum_v softmax(target) log_softmax(logits)."""
    p = torch.softmax(target_logits, dim=-1)
    return -(p * torch.log_softmax(logits, dim=-1)).sum(-1).mean()


def train_medusa(cfg: MedusaConfig, feats: torch.Tensor, lm_head: torch.Tensor,
                 progress: bool) -> tuple[MedusaTorch, dict[str, Any]]:
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    medusa = MedusaTorch(cfg.num_heads, lm_head)
    opt = torch.optim.AdamW(medusa.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)
    budget = _Budget(cfg.seconds, cfg.max_steps, "medusa", progress)
    length = feats.shape[1]
    ema: Optional[float] = None
    while not budget.done():
        for group in opt.param_groups:
            group["lr"] = cfg.lr * _lr_factor(budget.step, cfg.warmup_steps, budget.fraction)
        f = feats[torch.from_numpy(rng.integers(0, len(feats), size=cfg.batch_size))]
        with torch.no_grad():
            teacher = f @ lm_head.T  # the target's logits at every position
        outs = medusa(f)
        loss = torch.zeros(())
        for i, logits in enumerate(outs):
            # head i at position t: the token at t + i + 2, the target's distribution
            # for it being the logits at position t + i + 1
            n = length - i - 1
            loss = loss + cfg.decay ** i * _soft_ce(logits[:, :n], teacher[:, i + 1:i + 1 + n])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        budget.advance(loss=f"{ema:.3f}")
    budget.close()
    return medusa, {"steps": budget.step, "train_seconds": round(budget.elapsed, 1),
                    "train_loss_ema": None if ema is None else round(ema, 4)}


@torch.no_grad()
def evaluate_medusa(medusa: MedusaTorch, feats: torch.Tensor, ids: torch.Tensor,
                    lm_head: torch.Tensor) -> dict[str, Any]:
    greedy = (feats @ lm_head.T).argmax(-1)  # the target's token for position t + 1
    length = feats.shape[1]
    agree, text = [], []
    for i, logits in enumerate(medusa(feats)):
        n = length - i - 2
        guess = logits[:, :n].argmax(-1)
        agree.append(round((guess == greedy[:, i + 1:i + 1 + n]).float().mean().item(), 4))
        text.append(round((guess == ids[:, i + 2:i + 2 + n]).float().mean().item(), 4))
    return {"heldout_top1_vs_target": agree, "heldout_top1_vs_text": text}


# -- 5b. EAGLE-1 -------------------------------------------------------------------------


def rope_cos_sin(length: int, head_dim: int, theta: float,
                 dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """HF Llama's rotary tables for positions 0..length-1: (length, head_dim)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    freqs = torch.outer(torch.arange(length, dtype=torch.float64), inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


class EagleTorch(torch.nn.Module):
    """EAGLE-1's draft model (SafeAILab/EAGLE ``cnets1.Model``, one layer)."""

    def __init__(self, config: dict[str, Any], embed: torch.Tensor, lm_head: torch.Tensor) -> None:
        super().__init__()
        d = config["hidden_size"]
        self.heads = config["num_attention_heads"]
        self.kv_heads = config["num_key_value_heads"]
        self.head_dim = d // self.heads
        self.eps = config["rms_norm_eps"]
        self.theta = config["rope_theta"]
        inter = config["intermediate_size"]
        self.fc = torch.nn.Linear(2 * d, d, bias=True)
        self.q_proj = torch.nn.Linear(d, self.heads * self.head_dim, bias=False)
        self.k_proj = torch.nn.Linear(d, self.kv_heads * self.head_dim, bias=False)
        self.v_proj = torch.nn.Linear(d, self.kv_heads * self.head_dim, bias=False)
        self.o_proj = torch.nn.Linear(self.heads * self.head_dim, d, bias=False)
        self.post_attention_layernorm = torch.nn.Parameter(torch.ones(d))
        self.gate_proj = torch.nn.Linear(d, inter, bias=False)
        self.up_proj = torch.nn.Linear(d, inter, bias=False)
        self.down_proj = torch.nn.Linear(inter, d, bias=False)
        # The target's, frozen (buffers, not parameters).
        self.register_buffer("embed", embed.detach().clone(), persistent=False)
        self.register_buffer("lm_head", lm_head.detach().clone(), persistent=False)

    def forward(self, feats: torch.Tensor, next_ids: torch.Tensor) -> torch.Tensor:
        """Position j pairs ``next_ids[:, j]`` (token x_{j+1}) with ``feats[:, j]``
        (f_j); returns the predicted features (B, L, d) of positions j + 1."""
        b, length, _ = feats.shape
        h = self.fc(torch.cat([F.embedding(next_ids, self.embed), feats], dim=-1))
        q = self.q_proj(h).view(b, length, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(h).view(b, length, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(h).view(b, length, self.kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = rope_cos_sin(length, self.head_dim, self.theta, h.dtype)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        rep = self.heads // self.kv_heads
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        h = h + self.o_proj(attn.transpose(1, 2).reshape(b, length, self.heads * self.head_dim))
        x = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        x = x * self.post_attention_layernorm
        return h + self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))

    def published_state_dict(self) -> dict[str, torch.Tensor]:
        names = {"fc.weight": self.fc.weight, "fc.bias": self.fc.bias,
                 "layers.0.post_attention_layernorm.weight": self.post_attention_layernorm,
                 "embed_tokens.weight": self.embed}
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            names[f"layers.0.self_attn.{proj}.weight"] = getattr(self, proj).weight
        for proj in ("gate_proj", "up_proj", "down_proj"):
            names[f"layers.0.mlp.{proj}.weight"] = getattr(self, proj).weight
        return {k: v.detach().contiguous() for k, v in names.items()}


def eagle_config(target_config: Any) -> dict[str, Any]:
    """EAGLE-1's ``config.json`` for a drafter of this target: a one-layer Llama
    config with ``bias`` (the fc's), as in SafeAILab/EAGLE's checkpoints."""
    rope = getattr(target_config, "rope_parameters", None) or {}
    theta = float(rope.get("rope_theta", getattr(target_config, "rope_theta", 10000.0)))
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "bias": True,
        "hidden_act": "silu", "hidden_size": target_config.hidden_size,
        "intermediate_size": target_config.intermediate_size,
        "num_attention_heads": target_config.num_attention_heads,
        "num_key_value_heads": target_config.num_key_value_heads, "num_hidden_layers": 1,
        "max_position_embeddings": target_config.max_position_embeddings,
        "rms_norm_eps": float(target_config.rms_norm_eps), "rope_theta": theta,
        "rope_scaling": None, "vocab_size": target_config.vocab_size,
        "tie_word_embeddings": False, "initializer_range": 0.02, "pretraining_tp": 1,
        "bos_token_id": target_config.bos_token_id, "eos_token_id": target_config.eos_token_id,
        "pad_token_id": target_config.pad_token_id, "torch_dtype": "float32",
        "use_cache": True,
    }


def _eagle_batch(feats: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Inputs f_0..f_{L-2}, tokens x_1..x_{L-1}; targets f_1..f_{L-1}."""
    return feats[:, :-1], ids[:, 1:], feats[:, 1:]


def train_eagle(cfg: EagleConfig, config: dict[str, Any], feats: torch.Tensor,
                ids: torch.Tensor, embed: torch.Tensor, lm_head: torch.Tensor,
                progress: bool) -> tuple[EagleTorch, dict[str, Any]]:
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = EagleTorch(config, embed, lm_head)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95))
    budget = _Budget(cfg.seconds, cfg.max_steps, "eagle", progress)
    ema: dict[str, float] = {}
    while not budget.done():
        for group in opt.param_groups:
            group["lr"] = cfg.lr * _lr_factor(budget.step, cfg.warmup_steps, budget.fraction)
        pick = torch.from_numpy(rng.integers(0, len(feats), size=cfg.batch_size))
        f_in, next_ids, f_out = _eagle_batch(feats[pick], ids[pick])
        # EAGLE's AddUniformNoise: width std * 512 / L, L the sequence length
        width = cfg.noise_std * 512 / feats.shape[1]
        f_in = f_in + (torch.rand_like(f_in) - 0.5) * width
        pred = model(f_in, next_ids)
        vloss = F.smooth_l1_loss(pred, f_out)
        with torch.no_grad():
            teacher = f_out @ lm_head.T
        ploss = _soft_ce(pred @ lm_head.T, teacher)
        loss = cfg.v_w * vloss + cfg.p_w * ploss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_value_(model.parameters(), cfg.grad_clip_value)
        opt.step()
        for name, value in (("loss", loss), ("vloss", vloss), ("ploss", ploss)):
            ema[name] = value.item() if name not in ema else 0.95 * ema[name] + 0.05 * value.item()
        budget.advance(**{k: f"{v:.3f}" for k, v in ema.items()})
    budget.close()
    return model, {"steps": budget.step, "train_seconds": round(budget.elapsed, 1),
                   **{f"train_{k}_ema": round(v, 4) for k, v in ema.items()}}


@torch.no_grad()
def evaluate_eagle(model: EagleTorch, feats: torch.Tensor, ids: torch.Tensor,
                   lm_head: torch.Tensor) -> dict[str, Any]:
    f_in, next_ids, f_out = _eagle_batch(feats, ids)
    pred = model(f_in, next_ids)
    guess = (pred @ lm_head.T).argmax(-1)[:, :-1]  # the token at j + 2
    greedy = (f_out @ lm_head.T).argmax(-1)[:, :-1]
    text = ids[:, 2:]
    return {"heldout_top1_vs_target": round((guess == greedy).float().mean().item(), 4),
            "heldout_top1_vs_text": round((guess == text).float().mean().item(), 4),
            "heldout_smooth_l1": round(F.smooth_l1_loss(pred, f_out).item(), 4)}


# -- putting it together -------------------------------------------------------------------


@dataclass
class Artifacts:
    """Where :func:`prepare` left everything."""

    root: Path
    config: TrainConfig
    target_dir: Path  # transformers model + tokenizer
    medusa_dir: Path  # config.json + medusa_lm_head.safetensors
    eagle_dir: Path  # config.json + model.safetensors
    train_tokens: Path  # int32 .npy, files separated by EOS
    heldout_tokens: Path
    manifest: dict[str, Any]

    @property
    def medusa_path(self) -> Path:
        return self.medusa_dir / "medusa_lm_head.safetensors"

    @property
    def eos_token_id(self) -> int:
        return int(self.manifest["tokenizer"]["eos_token_id"])


def prepare(config: "TrainConfig | str" = "full", cache: Optional[os.PathLike[str] | str] = None,
            *, progress: bool = True, threads: Optional[int] = None, force: bool = False,
            stdlib: Optional[Path] = None) -> Artifacts:
    """Build (or find in the cache) everything: corpus, tokenizer, target,
    Medusa heads, EAGLE drafter; write and return the manifest."""
    from safetensors.torch import save_file

    cfg = PRESETS[config] if isinstance(config, str) else config
    root = Path(cache).expanduser() if cache is not None else default_cache()
    root = root / cfg.name
    root.mkdir(parents=True, exist_ok=True)
    threads = threads or default_threads()
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        t0 = time.perf_counter()
        corpus = build_corpus(cfg.corpus, stdlib)
        _log(progress, f"corpus: {len(corpus.train)} training files "
             f"({sum(map(len, corpus.train)):,} chars), {len(corpus.heldout)} held out "
             f"({sum(map(len, corpus.heldout)):,} chars) [{time.perf_counter() - t0:.1f} s]")
        if not corpus.train or not corpus.heldout:
            raise RuntimeError("the standard library gave no training or held-out files")

        data = _Stage(root / "data",
                      _hash(["data", FORMAT_VERSION, corpus.fingerprint,
                             dataclasses.asdict(cfg.corpus)]),
                      ("tokenizer/tokenizer.json", "train.npy", "heldout.npy"))
        if force:
            shutil.rmtree(data.folder, ignore_errors=True)
        data_info = data.cached()
        if data_info is None:
            def make_data(folder: Path) -> dict[str, Any]:
                start = time.perf_counter()
                tok = train_tokenizer(corpus.train, cfg.corpus.vocab_size,
                                      cfg.corpus.tokenizer_chars)
                save_hf_tokenizer(tok, folder / "tokenizer")
                train = encode_stream(tok, corpus.train)
                heldout = encode_stream(tok, corpus.heldout)
                np.save(folder / "train.npy", train)
                np.save(folder / "heldout.npy", heldout)
                return {"vocab_size": tok.get_vocab_size(),
                        "eos_token_id": tok.token_to_id(EOS_TOKEN),
                        "train_files": len(corpus.train), "heldout_files": len(corpus.heldout),
                        "train_chars": sum(map(len, corpus.train)),
                        "heldout_chars": sum(map(len, corpus.heldout)),
                        "train_tokens": int(train.size), "heldout_tokens": int(heldout.size),
                        "chars_per_token": round(sum(map(len, corpus.train)) / train.size, 3),
                        "corpus_fingerprint": corpus.fingerprint,
                        "heldout_file_names": corpus.heldout_files,
                        "seconds": round(time.perf_counter() - start, 1)}
            data_info = data.build(make_data)
            _log(progress, f"tokenizer: vocab {data_info['vocab_size']}, "
                 f"{data_info['train_tokens']:,} training tokens "
                 f"({data_info['chars_per_token']} chars/token) [{data_info['seconds']} s]")
        train = np.load(data.folder / "train.npy")
        heldout = np.load(data.folder / "heldout.npy")
        vocab, eos = int(data_info["vocab_size"]), int(data_info["eos_token_id"])

        target_stage = _Stage(root / "target",
                              _hash(["target", FORMAT_VERSION, data_info["run_id"],
                                     dataclasses.asdict(cfg.target)]),
                              ("config.json", "model.safetensors", "tokenizer.json"))
        if force:
            shutil.rmtree(target_stage.folder, ignore_errors=True)
        target_info = target_stage.cached()
        model = None
        if target_info is None:
            def make_target(folder: Path) -> dict[str, Any]:
                nonlocal model
                model, results = train_target(cfg.target, train, heldout, vocab, eos, progress)
                model.save_pretrained(str(folder))
                for item in (data.folder / "tokenizer").iterdir():
                    shutil.copy(item, folder / item.name)
                return results
            target_info = target_stage.build(make_target)
            _log(progress, f"target: {target_info['parameters']:,} parameters, "
                 f"{target_info['steps']} steps in {target_info['train_seconds']} s, "
                 f"held-out loss {target_info['heldout_loss']}, "
                 f"top-1 {target_info['heldout_top1']}")

        feature_key = [target_info["run_id"], dataclasses.asdict(cfg.features)]
        medusa_stage = _Stage(root / "medusa",
                              _hash(["medusa", FORMAT_VERSION, feature_key,
                                     dataclasses.asdict(cfg.medusa)]),
                              ("config.json", "medusa_lm_head.safetensors"))
        eagle_stage = _Stage(root / "eagle",
                             _hash(["eagle", FORMAT_VERSION, feature_key,
                                    dataclasses.asdict(cfg.eagle)]),
                             ("config.json", "model.safetensors"))
        if force:
            shutil.rmtree(medusa_stage.folder, ignore_errors=True)
            shutil.rmtree(eagle_stage.folder, ignore_errors=True)
        medusa_info, eagle_info = medusa_stage.cached(), eagle_stage.cached()
        if medusa_info is None or eagle_info is None:
            if model is None:
                from transformers import LlamaForCausalLM
                model = LlamaForCausalLM.from_pretrained(str(target_stage.folder),
                                                         dtype=torch.float32)
            model.eval()
            lm_head = model.lm_head.weight.detach().float().clone()
            embed = model.get_input_embeddings().weight.detach().float().clone()
            start = time.perf_counter()
            frng = np.random.default_rng(cfg.features.seed)
            train_ids = torch.from_numpy(_windows(train, cfg.target.context,
                                                  cfg.features.train_sequences, frng))
            train_feats = target_features(model, train_ids.numpy())
            eval_ids = torch.from_numpy(_eval_windows(heldout, cfg.target.context,
                                                      cfg.features.eval_sequences))
            eval_feats = target_features(model, eval_ids.numpy())
            feature_seconds = round(time.perf_counter() - start, 1)
            _log(progress, f"features: {train_feats.shape[0]} x {train_feats.shape[1]} "
                 f"training positions, {eval_feats.shape[0]} x {eval_feats.shape[1]} held out "
                 f"[{feature_seconds} s]")

            if medusa_info is None:
                def make_medusa(folder: Path) -> dict[str, Any]:
                    medusa, results = train_medusa(cfg.medusa, train_feats, lm_head, progress)
                    save_file(medusa.published_state_dict(),
                              str(folder / "medusa_lm_head.safetensors"),
                              metadata={"format": "pt"})
                    (folder / "config.json").write_text(json.dumps({
                        "medusa_num_heads": cfg.medusa.num_heads, "medusa_num_layers": 1,
                        "base_model_name_or_path": str(target_stage.folder),
                        "transformers_version": _version("transformers")}, indent=2) + "\n")
                    return {**results, "feature_seconds": feature_seconds,
                            "num_heads": cfg.medusa.num_heads,
                            **evaluate_medusa(medusa, eval_feats, eval_ids, lm_head)}
                medusa_info = medusa_stage.build(make_medusa)
                _log(progress, f"medusa: {medusa_info['steps']} steps in "
                     f"{medusa_info['train_seconds']} s, held-out top-1 vs target "
                     f"{medusa_info['heldout_top1_vs_target']}")

            if eagle_info is None:
                econfig = eagle_config(model.config)

                def make_eagle(folder: Path) -> dict[str, Any]:
                    eagle, results = train_eagle(cfg.eagle, econfig, train_feats, train_ids,
                                                 embed, lm_head, progress)
                    save_file(eagle.published_state_dict(), str(folder / "model.safetensors"),
                              metadata={"format": "pt"})
                    (folder / "config.json").write_text(json.dumps(econfig, indent=2) + "\n")
                    params = sum(p.numel() for p in eagle.parameters())
                    return {**results, "feature_seconds": feature_seconds, "parameters": params,
                            **evaluate_eagle(eagle, eval_feats, eval_ids, lm_head)}
                eagle_info = eagle_stage.build(make_eagle)
                _log(progress, f"eagle: {eagle_info['steps']} steps in "
                     f"{eagle_info['train_seconds']} s, held-out top-1 vs target "
                     f"{eagle_info['heldout_top1_vs_target']}")

        def public(info: dict[str, Any]) -> dict[str, Any]:
            return {k: v for k, v in info.items() if k != "heldout_file_names"}

        manifest = {
            "preset": cfg.name, "format_version": FORMAT_VERSION,
            "config": dataclasses.asdict(cfg),
            "environment": {"python": sys.version.split()[0], "torch": torch.__version__,
                            "transformers": _version("transformers"),
                            "tokenizers": _version("tokenizers"), "threads": threads,
                            "stdlib": str(stdlib or sysconfig.get_paths()["stdlib"])},
            "tokenizer": public(data_info), "target": target_info,
            "medusa": medusa_info, "eagle": eagle_info,
            "paths": {"target": "target", "medusa": "medusa/medusa_lm_head.safetensors",
                      "eagle": "eagle", "train_tokens": "data/train.npy",
                      "heldout_tokens": "data/heldout.npy"},
        }
        (root / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    finally:
        torch.set_num_threads(saved_threads)
    return Artifacts(root, cfg, target_stage.folder, medusa_stage.folder, eagle_stage.folder,
                     data.folder / "train.npy", data.folder / "heldout.npy", manifest)


def _version(module: str) -> str:
    try:
        return str(__import__(module).__version__)
    except (ImportError, AttributeError):
        return "unknown"


def heldout_prompts(artifacts: Artifacts, count: int, length: int,
                    seed: int = 0) -> list[np.ndarray]:
    """``count`` windows of ``length`` held-out tokens, each inside one file
    (no EOS), chosen at random (fixed seed) without overlap where possible."""
    stream = np.load(artifacts.heldout_tokens)
    eos_positions = np.flatnonzero(stream == artifacts.eos_token_id)
    # start s is valid when no EOS lies in [s, s + length)
    next_eos = np.searchsorted(eos_positions, np.arange(len(stream)))
    starts = np.arange(max(0, len(stream) - length + 1))
    bound = np.append(eos_positions, len(stream))[next_eos[starts]] if len(starts) else starts
    valid = starts[bound >= starts + length]
    if len(valid) == 0:
        raise ValueError(f"no held-out window of {length} tokens within one file")
    rng = np.random.default_rng(seed)
    picked: list[int] = []
    for s in rng.permutation(valid):
        if all(abs(int(s) - p) >= length for p in picked):
            picked.append(int(s))
        if len(picked) == count:
            break
    while len(picked) < count:  # not enough disjoint windows: allow overlaps
        picked.append(int(valid[rng.integers(len(valid))]))
    return [stream[s:s + length].astype(np.int64) for s in picked]


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the quick preset (about 1.5 min)")
    parser.add_argument("--cache", default=None,
                        help=f"cache root (default ${CACHE_ENV} or ~/.cache/eagle_fast/bench)")
    parser.add_argument("--threads", type=int, default=None,
                        help="PyTorch threads (default 2, or 1 on a loaded machine)")
    parser.add_argument("--force", action="store_true", help="retrain everything")
    parser.add_argument("--json", action="store_true", help="print the manifest as JSON")
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be >= 1")
    start = time.perf_counter()
    artifacts = prepare("quick" if args.quick else "full", args.cache, threads=args.threads,
                        force=args.force)
    m = artifacts.manifest
    if args.json:
        print(json.dumps(m, indent=2))
        return 0
    t, med, ea = m["target"], m["medusa"], m["eagle"]
    print(f"cache: {artifacts.root}  ({time.perf_counter() - start:.1f} s this run, "
          f"{m['environment']['threads']} threads)")
    print(f"target: {t['parameters']:,} params, {t['steps']} steps / {t['train_tokens']:,} "
          f"tokens in {t['train_seconds']} s; held-out loss {t['heldout_loss']} "
          f"(ppl {t['heldout_perplexity']}), top-1 {t['heldout_top1']}")
    print(f"medusa: {med['num_heads']} heads, {med['steps']} steps in {med['train_seconds']} s; "
          f"held-out top-1 vs target {med['heldout_top1_vs_target']}, "
          f"vs text {med['heldout_top1_vs_text']}")
    print(f"eagle: {ea['parameters']:,} params, {ea['steps']} steps in {ea['train_seconds']} s; "
          f"held-out top-1 vs target {ea['heldout_top1_vs_target']}, "
          f"vs text {ea['heldout_top1_vs_text']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
