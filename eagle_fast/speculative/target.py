"""The target protocol: what speculative generation needs from the model it speeds up.

Any engine (a ``transformers`` model, llama.cpp, an ONNX session, a test
double) can be wrapped in four methods and a few attributes; the generation
loop never reaches into the model beyond them.  Arrays in and out are NumPy
(float32 or float64); nothing here imports torch.

Who runs which token, named once here (EAGLE's convention):

* :meth:`Target.prefill` runs the whole prompt ``x_0 .. x_{P-1}`` and caches
  all ``P`` positions.  It returns the logits of the **last** position (from
  which the first new token is chosen) and the hidden states of **every**
  prompt position (what the drafter consumes).
* The token the target emits next -- chosen from those logits, or later a
  verification's ``next_token`` -- has **not** been run through the target
  yet.  It is the **root** (node 0) of the next :class:`DraftTree`, and
  :meth:`Target.forward_tree` runs it together with the candidate nodes: the
  cached prefix never contains the root.
* :meth:`Target.forward_tree` runs all ``n`` nodes of a tree in one forward on
  top of the cached prefix of length ``L`` (:attr:`Target.cached_length`):
  node i attends to the whole prefix and to the nodes of
  ``tree.attention_mask[i]`` (itself and its ancestors), at sequence position
  ``L + tree.position_ids[i]``.  Row i of the returned logits is the target's
  logits for the token *after* node i, so ``logits`` is exactly the
  ``target_logits`` that the verifiers (``verify_greedy`` ...) take.  The tree
  nodes' keys/values are held aside until :meth:`Target.commit`.
* :meth:`Target.commit` takes a verification's ``accepted_nodes`` (a path
  starting at the root 0) and keeps exactly those nodes' keys/values after
  the prefix, in path order; the other nodes are dropped.  The cached length
  becomes ``L + len(accepted_nodes)``.  The verification's ``next_token`` is
  the root of the next tree.  ``commit([0])`` is a plain one-token decoding
  step (tree = the root alone, or every candidate rejected).

Hidden states, per position, as drafters expect them (:attr:`Target.hidden_layers`):

* ``None``: the last decoder layer's output **after** the final norm -- the
  input of the target's LM head (Medusa heads, EAGLE-1/2), width
  ``hidden_size``;
* a tuple of layer indices (EAGLE-3): the concatenation, in that order, of the
  inputs of those decoder layers, **before** any norm (index 0 is the
  embedding output; index ``i`` the output of decoder layer ``i - 1``).  EAGLE-3
  uses ``(2, num_layers // 2, num_layers - 3)`` -- see
  :func:`eagle3_layer_indices` -- so the width is ``3 * hidden_size``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Protocol, runtime_checkable

import numpy as np

__all__ = ["Target", "TargetOutput", "eagle3_layer_indices", "check_accepted_path",
           "check_token_ids"]


@dataclass(frozen=True)
class TargetOutput:
    """What a target forward returns.

    Attributes
    ----------
    logits : (rows, V) float32 or float64
        :meth:`Target.forward_tree`: one row per tree node (row i = logits for
        the token after node i).  :meth:`Target.prefill`: one row, the last
        prompt position's.
    hidden_states : (positions, width) float32 or float64
        The drafter's features (see :attr:`Target.hidden_layers`): one row per
        tree node, or per prompt position after a prefill.
    """

    logits: np.ndarray
    hidden_states: np.ndarray


@runtime_checkable
class Target(Protocol):
    """A causal language model with a KV cache, seen by speculative generation.

    Attributes
    ----------
    vocab_size : int
        Width of the logits.
    hidden_size : int
        Width of the returned hidden states (``3 * d`` for EAGLE-3 layers).
    hidden_layers : tuple of int or None
        Which hidden states are returned (module docstring): None = the final
        norm's output; a tuple = those decoder layers' inputs, concatenated.
    cached_length : int
        Positions whose keys/values are cached (prompt + committed tokens;
        never the pending root).
    """

    vocab_size: int
    hidden_size: int
    hidden_layers: Optional[tuple[int, ...]]

    @property
    def cached_length(self) -> int: ...

    def prefill(self, input_ids: Any) -> TargetOutput:
        """Start a sequence: drop any cache, run the prompt ``input_ids``
        ((P,) integers, P >= 1), cache it, and return the last position's
        logits (1, V) and every position's hidden states (P, width)."""
        ...

    def forward_tree(self, tree: Any) -> TargetOutput:
        """Run every node of ``tree`` (a :class:`DraftTree`, root included) on
        top of the cached prefix with its tree attention mask and position ids;
        return logits (n, V) and hidden states (n, width), one row per node.
        The nodes' keys/values stay pending until :meth:`commit`."""
        ...

    def commit(self, accepted_nodes: Any) -> None:
        """Keep the pending keys/values of ``accepted_nodes`` (a root-to-node
        path of the last tree, starting with 0) after the prefix, drop the
        rest."""
        ...

    def reset(self) -> None:
        """Forget the cached sequence."""
        ...


def eagle3_layer_indices(num_layers: int) -> tuple[int, int, int]:
    """The decoder layers whose *inputs* EAGLE-3 concatenates (low, mid, high):
    ``(2, num_layers // 2, num_layers - 3)``, as SafeAILab/EAGLE's target
    models collect them (``idx == 2 or idx == L // 2 or idx == L - 3``, before
    the layer runs, so pre-norm).  Index i is also the position of that state in
    ``transformers``' ``output_hidden_states`` tuple.  Needs ``num_layers >= 7``
    for three distinct layers; smaller models must choose their own."""
    if isinstance(num_layers, bool) or not isinstance(num_layers, (int, np.integer)):
        raise TypeError(f"num_layers must be an int, got {type(num_layers).__name__}")
    num_layers = int(num_layers)
    layers = (2, num_layers // 2, num_layers - 3)
    if num_layers < 7:
        raise ValueError(
            f"EAGLE-3's layers (2, L // 2, L - 3) are not three distinct layers for "
            f"L = {num_layers} decoder layers (need L >= 7); pass hidden_layers=(i, j, k) "
            f"explicitly")
    return layers


def check_accepted_path(accepted_nodes: Any, parents: np.ndarray) -> np.ndarray:
    """Validate ``accepted_nodes`` against a tree's ``parents``: a non-empty
    integer path starting at the root 0, each node the child of the one before.
    Returns it as int64."""
    nodes = np.asarray(accepted_nodes)
    if nodes.size == 0:
        raise ValueError("accepted_nodes is empty: it must hold at least the root 0")
    if nodes.dtype == object or nodes.dtype.kind not in "iu":
        raise TypeError(f"accepted_nodes must be integers, got dtype {nodes.dtype}")
    if nodes.ndim != 1 or nodes.shape[0] == 0:
        raise ValueError(f"accepted_nodes must be a non-empty 1-D path, got shape {nodes.shape}")
    nodes = nodes.astype(np.int64)
    n = parents.shape[0]
    if nodes[0] != 0:
        raise ValueError(f"accepted_nodes must start at the root 0, got {nodes[0]}")
    if (nodes < 0).any() or (nodes >= n).any():
        raise ValueError(f"accepted_nodes {nodes.tolist()} out of range for a tree of {n} nodes")
    for a, b in zip(nodes[:-1], nodes[1:]):
        if parents[b] != a:
            raise ValueError(
                f"accepted_nodes {nodes.tolist()} is not a root-to-node path: "
                f"node {int(b)}'s parent is {int(parents[b])}, not {int(a)}")
    return nodes


def check_token_ids(name: str, values: Any, vocab_size: int) -> np.ndarray:
    """A (P,) or (1, P) integer array of ids in ``[0, vocab_size)``, as int64."""
    ids = np.asarray(values)
    if ids.size == 0:
        raise ValueError(f"{name} is empty")
    if ids.dtype == object or ids.dtype.kind not in "iu":
        raise TypeError(f"{name} must be integer token ids, got dtype {ids.dtype}")
    if ids.ndim == 2 and ids.shape[0] == 1:
        ids = ids[0]
    if ids.ndim != 1:
        raise ValueError(f"{name} must have shape (P,) or (1, P), got {np.shape(values)}")
    if ids.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    ids = ids.astype(np.int64)
    if int(ids.min()) < 0 or int(ids.max()) >= vocab_size:
        bad = int(np.flatnonzero((ids < 0) | (ids >= vocab_size))[0])
        raise ValueError(f"{name}[{bad}] = {ids[bad]} is outside the vocabulary "
                         f"[0, {vocab_size})")
    return ids

