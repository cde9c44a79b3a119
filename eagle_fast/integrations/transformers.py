"""A Hugging Face ``transformers`` causal LM as a speculative-decoding target.

:class:`TransformersTarget` wraps a Llama-family model (Llama, Qwen2/Qwen3,
Mistral: decoder-only, rotary positions, ``DynamicCache``) in the
:class:`eagle_fast.speculative.Target` protocol, on the CPU:

* a real KV cache (``transformers.DynamicCache``) holding the prompt and the
  committed tokens;
* one forward per draft tree: the tree's nodes go in as one sequence with a
  4-D attention mask ``[all-ones over the cached prefix | tree.attention_mask]``
  and ``position_ids = cached_length + tree.position_ids``;
* cache compaction on :meth:`~TransformersTarget.commit`: every layer's keys
  and values keep the prefix and the accepted path's entries, in path order
  (a crop when the path is the first nodes, an ``index_select`` otherwise).

The model must use ``attn_implementation="sdpa"`` (the default on CPU; exact
in float64) or ``"eager"`` (whose softmax runs in float32 even for float64
models, so a tree forward and a step-by-step forward then agree only to
~1e-7).  ``pip install "eagle-fast[transformers]"`` installs torch and
transformers; ``import eagle_fast`` never imports them.

:func:`drafter_features` computes the same hidden states from one plain forward
over a whole sequence (to fit or test drafters), :func:`drafter_weights` the
target matrices an EAGLE-1/2 drafter borrows (embedding, LM head).
"""

from __future__ import annotations

import inspect
from typing import Any, Optional, Sequence, Union

import numpy as np

from ..speculative.target import (TargetOutput, check_accepted_path, check_token_ids,
                                  eagle3_layer_indices)

try:
    import torch
except ImportError as exc:  # pragma: no cover - exercised only without torch
    raise ImportError(
        "eagle_fast.integrations.transformers needs torch and transformers: "
        'pip install "eagle-fast[transformers]"') from exc

__all__ = ["TransformersTarget", "drafter_features", "drafter_weights", "resolve_hidden_layers"]

HiddenLayers = Union[None, str, Sequence[int]]

_SUPPORTED_ATTENTION = ("sdpa", "eager")


def _text_config(model: Any) -> Any:
    config = model.config
    get_text_config = getattr(config, "get_text_config", None)
    return get_text_config() if callable(get_text_config) else config


def _num_layers(model: Any) -> int:
    return int(_text_config(model).num_hidden_layers)


def resolve_hidden_layers(model: Any, hidden_layers: HiddenLayers) -> Optional[tuple[int, ...]]:
    """``hidden_layers`` as :attr:`Target.hidden_layers`: None (or ``"last"``)
    = the final norm's output; ``"eagle3"`` = :func:`eagle3_layer_indices`;
    a sequence of ints = the inputs of those decoder layers (0 = the
    embeddings, ``num_hidden_layers`` = the final norm's output:
    ``output_hidden_states`` indexing), concatenated in the given order."""
    num_layers = _num_layers(model)
    if hidden_layers is None:
        return None
    if isinstance(hidden_layers, str):
        if hidden_layers == "last":
            return None
        if hidden_layers == "eagle3":
            return eagle3_layer_indices(num_layers)
        raise ValueError(f'hidden_layers must be None, "last", "eagle3" or a sequence of layer '
                         f'indices, got {hidden_layers!r}')
    try:
        layers = tuple(hidden_layers)
    except TypeError:
        raise TypeError(f"hidden_layers must be None, a string or a sequence of ints, "
                        f"got {type(hidden_layers).__name__}") from None
    if not layers:
        raise ValueError("hidden_layers is empty")
    out = []
    for value in layers:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"hidden_layers must hold ints, got {value!r}")
        if not 0 <= int(value) <= num_layers:
            raise ValueError(f"hidden layer index {int(value)} is outside [0, {num_layers}] "
                             f"for a model of {num_layers} decoder layers")
        out.append(int(value))
    return tuple(out)


def _numpy_dtype(model: Any) -> np.dtype:
    return np.dtype(np.float64) if model.dtype == torch.float64 else np.dtype(np.float32)


def _to_numpy(tensor: Any, dtype: np.dtype) -> np.ndarray:
    torch_dtype = torch.float64 if dtype == np.float64 else torch.float32
    return np.ascontiguousarray(tensor.detach().to("cpu", torch_dtype).numpy())


def _features(outputs: Any, layers: Optional[tuple[int, ...]]) -> Any:
    """(positions, width) torch tensor of the drafter's features."""
    states = outputs.hidden_states
    if layers is None:
        return states[-1][0]
    return torch.cat([states[i][0] for i in layers], dim=-1)


class TransformersTarget:
    """A ``transformers`` causal LM (Llama family) as a :class:`~eagle_fast.speculative.Target`.

    Parameters
    ----------
    model : ``transformers.PreTrainedModel``
        A decoder-only causal LM (``LlamaForCausalLM``, ``Qwen2ForCausalLM``,
        ``Qwen3ForCausalLM``, ``MistralForCausalLM``, ...) loaded with
        ``attn_implementation="sdpa"`` or ``"eager"``.  It is put in eval mode.
        Batch size 1.
    hidden_layers : None, ``"last"``, ``"eagle3"`` or a sequence of ints
        Which hidden states :meth:`prefill` and :meth:`forward_tree` return
        (:func:`resolve_hidden_layers`): None for Medusa / EAGLE-1/2 drafters
        (after the final norm), ``"eagle3"`` for EAGLE-3 drafters (the inputs
        of decoder layers 2, L // 2 and L - 3, concatenated, before any norm).

    Outputs are float64 NumPy arrays for float64 models, float32 otherwise.
    The protocol's conventions (who runs the root, what commit keeps) are in
    :mod:`eagle_fast.speculative.target`.
    """

    def __init__(self, model: Any, *, hidden_layers: HiddenLayers = None) -> None:
        if not callable(getattr(model, "get_output_embeddings", None)) or not hasattr(
                model, "config"):
            raise TypeError(f"model must be a transformers causal LM, got {type(model).__name__}")
        lm_head = model.get_output_embeddings()
        if lm_head is None:
            raise TypeError(f"{type(model).__name__} has no LM head (use a *ForCausalLM model)")
        config = _text_config(model)
        attention = getattr(model.config, "_attn_implementation", None)
        if attention not in _SUPPORTED_ATTENTION:
            raise ValueError(
                f"TransformersTarget needs attn_implementation 'sdpa' or 'eager' (custom 4-D "
                f"tree masks), got {attention!r}; load the model with "
                f"attn_implementation='sdpa'")
        self.model = model.eval()
        self.hidden_layers: Optional[tuple[int, ...]] = resolve_hidden_layers(
            model, hidden_layers)
        self.vocab_size: int = int(lm_head.weight.shape[0])
        width = int(config.hidden_size)
        self.hidden_size: int = width * (1 if self.hidden_layers is None
                                         else len(self.hidden_layers))
        self.num_layers: int = int(config.num_hidden_layers)
        self.dtype: np.dtype = _numpy_dtype(model)
        self._attention = attention
        self._device = lm_head.weight.device
        self._sliding_window = self._active_sliding_window(config)
        parameters = inspect.signature(model.forward).parameters
        self._cache_keyword = "cache" if "cache" in parameters else "past_key_values"
        self._logits_keyword = ("logits_to_keep" if "logits_to_keep" in parameters
                                else "num_logits_to_keep" if "num_logits_to_keep" in parameters
                                else None)
        self._cache: Any = None
        self._length = 0
        self._pending: Optional[np.ndarray] = None  # parents of the last tree, until commit

    # -- protocol -----------------------------------------------------------
    @property
    def cached_length(self) -> int:
        """Positions in the KV cache (prompt + committed tokens)."""
        return self._length

    def reset(self) -> None:
        """Drop the cached sequence."""
        self._cache = None
        self._length = 0
        self._pending = None

    def prefill(self, input_ids: Any) -> TargetOutput:
        """Run the prompt ((P,) or (1, P) token ids) into a fresh cache; return the
        last position's logits (1, V) and every position's hidden states."""
        ids = check_token_ids("input_ids", input_ids, self.vocab_size)
        self._check_window(ids.shape[0])
        from transformers import DynamicCache

        self.reset()
        cache = DynamicCache()
        kwargs: dict[str, Any] = {self._cache_keyword: cache}
        if self._logits_keyword is not None:
            kwargs[self._logits_keyword] = 1
        with torch.inference_mode():
            outputs = self.model(
                input_ids=torch.from_numpy(ids)[None].to(self._device),
                use_cache=True, output_hidden_states=True, return_dict=True, **kwargs)
        self._cache = cache
        self._length = int(ids.shape[0])
        return TargetOutput(logits=_to_numpy(outputs.logits[0, -1:], self.dtype),
                            hidden_states=_to_numpy(_features(outputs, self.hidden_layers),
                                                    self.dtype))

    def forward_tree(self, tree: Any) -> TargetOutput:
        """Run every node of ``tree`` (root included) on the cached prefix, with
        its tree mask and position ids; logits (n, V) and hidden states (n, width).
        The nodes' keys/values are pending until :meth:`commit`."""
        from ..speculative.tree import DraftTree

        if not isinstance(tree, DraftTree):
            raise TypeError(f"tree must be a DraftTree, got {type(tree).__name__}")
        if self._cache is None:
            raise RuntimeError("forward_tree() before prefill(): no sequence is cached")
        if self._pending is not None:
            raise RuntimeError("the previous tree is not committed: call commit() first "
                               "(commit([0]) keeps only its root)")
        tokens = check_token_ids("tree.tokens", tree.tokens, self.vocab_size)
        n = tokens.shape[0]
        prefix = self._length
        self._check_window(prefix + tree.max_depth + 1)
        tree_mask = torch.from_numpy(np.array(tree.attention_mask))
        allowed = torch.cat([torch.ones((n, prefix), dtype=torch.bool), tree_mask], dim=1)
        if self._attention == "sdpa":
            mask = allowed
        else:  # eager adds the mask to the attention scores
            dtype = self.model.dtype
            mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(
                ~allowed, torch.finfo(dtype).min)
        positions = torch.from_numpy(tree.position_ids + prefix)
        with torch.inference_mode():
            outputs = self.model(
                input_ids=torch.from_numpy(tokens)[None].to(self._device),
                attention_mask=mask[None, None].to(self._device),
                position_ids=positions[None].to(self._device),
                use_cache=True, output_hidden_states=True, return_dict=True,
                **{self._cache_keyword: self._cache})
        self._pending = np.array(tree.parents)
        return TargetOutput(logits=_to_numpy(outputs.logits[0], self.dtype),
                            hidden_states=_to_numpy(_features(outputs, self.hidden_layers),
                                                    self.dtype))

    def commit(self, accepted_nodes: Any) -> None:
        """Keep the accepted path's keys/values after the prefix (in path order),
        drop the other nodes of the last tree."""
        if self._pending is None:
            raise RuntimeError("commit() without a pending tree: call forward_tree() first")
        nodes = check_accepted_path(accepted_nodes, self._pending)
        prefix, n = self._length, self._pending.shape[0]
        k = nodes.shape[0]
        if np.array_equal(nodes, np.arange(k)):
            if k < n:
                _keep_positions(self._cache, prefix + k, None)
        else:
            index = torch.cat([torch.arange(prefix), torch.from_numpy(nodes + prefix)])
            _keep_positions(self._cache, prefix + k, index.to(self._device))
        self._length = prefix + k
        self._pending = None

    # -- helpers -----------------------------------------------------------
    @staticmethod
    def _active_sliding_window(config: Any) -> Optional[int]:
        window = getattr(config, "sliding_window", None)
        if window is None or getattr(config, "use_sliding_window", True) is False:
            return None
        layer_types = getattr(config, "layer_types", None)
        if layer_types is not None and "sliding_attention" not in layer_types:
            return None
        return int(window)

    def _check_window(self, length: int) -> None:
        if self._sliding_window is not None and length > self._sliding_window:
            raise NotImplementedError(
                f"the sequence ({length} positions) exceeds the model's sliding window "
                f"({self._sliding_window}); TransformersTarget's tree masks do not implement "
                f"sliding-window attention")

    def __repr__(self) -> str:
        return (f"TransformersTarget({type(self.model).__name__}, vocab_size={self.vocab_size}, "
                f"hidden_size={self.hidden_size}, hidden_layers={self.hidden_layers}, "
                f"cached_length={self._length})")


def _keep_positions(cache: Any, length: int, index: Any) -> None:
    """Every layer's keys/values: keep ``index`` along the sequence axis (or the
    first ``length`` positions when ``index`` is None)."""
    def select(tensor: Any) -> Any:
        if tensor is None or tensor.numel() == 0:
            return tensor
        if index is None:
            return tensor[..., :length, :]  # a view: the next update copies anyway
        return tensor.index_select(-2, index)

    layers = getattr(cache, "layers", None)
    if layers is not None:  # transformers >= 4.56: CacheLayer objects
        for layer in layers:
            if getattr(layer, "keys", None) is None:
                continue
            layer.keys = select(layer.keys)
            layer.values = select(layer.values)
    else:  # older DynamicCache: parallel lists
        cache.key_cache = [select(k) for k in cache.key_cache]
        cache.value_cache = [select(v) for v in cache.value_cache]
    if hasattr(cache, "_seen_tokens"):
        cache._seen_tokens = length


def drafter_features(model: Any, input_ids: Any, *, hidden_layers: HiddenLayers = None
                     ) -> TargetOutput:
    """One plain forward (no cache) over ``input_ids`` ((P,) or (1, P)): logits
    (P, V) for every position and the drafter features (P, width) that a
    :class:`TransformersTarget` with the same ``hidden_layers`` returns -- to fit
    drafters on a model's hidden states, or as a reference."""
    layers = resolve_hidden_layers(model, hidden_layers)
    lm_head = model.get_output_embeddings()
    ids = check_token_ids("input_ids", input_ids, int(lm_head.weight.shape[0]))
    dtype = _numpy_dtype(model)
    with torch.inference_mode():
        outputs = model(input_ids=torch.from_numpy(ids)[None].to(lm_head.weight.device),
                        use_cache=False, output_hidden_states=True, return_dict=True)
    return TargetOutput(logits=_to_numpy(outputs.logits[0], dtype),
                        hidden_states=_to_numpy(_features(outputs, layers), dtype))


def drafter_weights(model: Any, *, dtype: Any = np.float32) -> dict[str, np.ndarray]:
    """The target matrices an EAGLE-1/2 drafter borrows, as NumPy arrays:
    ``embed_tokens`` (V, d) and ``lm_head`` (V, d) (e.g. for
    ``EagleDrafter.load(path, embed_tokens=..., lm_head=...)``)."""
    dtype = np.dtype(dtype)
    embed = model.get_input_embeddings()
    lm_head = model.get_output_embeddings()
    if embed is None or lm_head is None:
        raise TypeError(f"{type(model).__name__} lacks an input embedding or an LM head")
    return {"embed_tokens": _to_numpy(embed.weight, dtype),
            "lm_head": _to_numpy(lm_head.weight, dtype)}
