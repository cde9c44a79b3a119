"""An independent float64 reference of EAGLE-1/2 and EAGLE-3 draft models
(SafeAILab/EAGLE cnets1.py / cnets.py semantics), written plainly: no cache,
every position recomputed from the whole sequence, loops over heads and
positions, RoPE from its definition.  Used by tests/test_eagle_drafter.py."""

from __future__ import annotations

import math

import numpy as np


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        ms = sum(float(v) * float(v) for v in x[i]) / x.shape[1]
        out[i] = w * (x[i] / math.sqrt(ms + eps))
    return out


def rope_frequency(i: int, hd: int, theta: float, llama3=None) -> float:
    """Angle per position of rotation pair i: theta ** (-2 i / hd), and with
    Llama 3.1's "llama3" scaling (factor, low_freq_factor, high_freq_factor,
    original_max_position_embeddings) written out band by band."""
    freq = theta ** (-2.0 * i / hd)
    if llama3 is None:
        return freq
    factor, low, high, original = llama3
    wavelength = 2 * math.pi / freq
    if wavelength < original / high:        # high-frequency band: unchanged
        return freq
    if wavelength > original / low:         # low-frequency band: interpolated
        return freq / factor
    weight = (original / wavelength - low) / (high - low)
    return (1 - weight) * freq / factor + weight * freq


def rope_rotate(vec: np.ndarray, position: int, theta: float, factor: float,
                llama3=None) -> np.ndarray:
    """One head vector (hd,) rotated for ``position``: pair (i, i + hd/2) turns
    by angle (position / factor) * rope_frequency(i)."""
    hd = vec.shape[0]
    half = hd // 2
    out = np.empty(hd)
    for i in range(half):
        angle = (position / factor) * rope_frequency(i, hd, theta, llama3)
        c, s = math.cos(angle), math.sin(angle)
        out[i] = vec[i] * c - vec[i + half] * s
        out[i + half] = vec[i + half] * c + vec[i] * s
    return out


def silu(v: np.ndarray) -> np.ndarray:
    return v / (1.0 + np.exp(-v))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    m = logits.max()
    return logits - m - math.log(np.exp(logits - m).sum())


class Reference:
    """``cfg``: dict with kind, d, heads, kv_heads, hd, inter, layers, eps,
    theta, factor; ``w``: float64 weights in the published key layout plus
    ``embed`` and (EAGLE-1/2) ``lm_head``."""

    def __init__(self, cfg: dict, w: dict) -> None:
        self.cfg = cfg
        self.w = {k: np.asarray(v, dtype=np.float64) if np.asarray(v).dtype.kind == "f"
                  else np.asarray(v) for k, v in w.items()}

    def _layer(self, prefix: str, index: int, x: np.ndarray, emb: np.ndarray,
               positions: list) -> np.ndarray:
        """One decoder layer over the whole sequence x (T, d), causal."""
        c, w = self.cfg, self.w
        eps = c["eps"]
        T = x.shape[0]
        if c["kind"] == "eagle3":
            a = np.concatenate([rms_norm(emb, w[prefix + "input_layernorm.weight"], eps),
                                rms_norm(x, w[prefix + "hidden_norm.weight"], eps)], axis=1)
        elif index == 0:
            a = x  # EAGLE-1/2: layer 0 has no input norm
        else:
            a = rms_norm(x, w[prefix + "input_layernorm.weight"], eps)
        att = prefix + "self_attn."
        q = a @ w[att + "q_proj.weight"].T
        k = a @ w[att + "k_proj.weight"].T
        v = a @ w[att + "v_proj.weight"].T
        if att + "q_proj.bias" in w:
            q = q + w[att + "q_proj.bias"]
            k = k + w[att + "k_proj.bias"]
            v = v + w[att + "v_proj.bias"]
        H, KV, hd = c["heads"], c["kv_heads"], c["hd"]
        out = np.zeros((T, H * hd))
        for h in range(H):
            g = h // (H // KV)  # grouped-query: query head h reads kv head g
            qs = [rope_rotate(q[t, h * hd:(h + 1) * hd], positions[t], c["theta"], c["factor"],
                                c.get("llama3"))
                  for t in range(T)]
            ks = [rope_rotate(k[t, g * hd:(g + 1) * hd], positions[t], c["theta"], c["factor"],
                                c.get("llama3"))
                  for t in range(T)]
            for t in range(T):
                scores = np.array([float(qs[t] @ ks[s]) / math.sqrt(hd) for s in range(t + 1)])
                p = np.exp(scores - scores.max())
                p /= p.sum()
                out[t, h * hd:(h + 1) * hd] = sum(p[s] * v[s, g * hd:(g + 1) * hd]
                                                  for s in range(t + 1))
        x = x + out @ w[att + "o_proj.weight"].T
        m = rms_norm(x, w[prefix + "post_attention_layernorm.weight"], eps)
        mlp = prefix + "mlp."
        gate = m @ w[mlp + "gate_proj.weight"].T
        up = m @ w[mlp + "up_proj.weight"].T
        return x + (silu(gate) * up) @ w[mlp + "down_proj.weight"].T

    def outputs(self, features: list, tokens: list) -> np.ndarray:
        """Outputs (T, d) for the sequence of (feature, token) pairs at
        positions 0..T-1; a feature may be d wide (fed back) or input wide."""
        c, w = self.cfg, self.w
        emb = np.stack([w["embed"][t] for t in tokens])
        rows = []
        for f, e in zip(features, emb):
            f = np.asarray(f, dtype=np.float64)
            if c["kind"] == "eagle":
                row = w["fc.weight"] @ np.concatenate([e, f])
                if "fc.bias" in w:
                    row = row + w["fc.bias"]
            elif f.shape[0] != c["d"]:
                row = w["fc.weight"] @ f
            else:
                row = f
            rows.append(row)
        x = np.stack(rows)
        positions = list(range(len(tokens)))
        if c["kind"] == "eagle3":
            return self._layer("midlayer.", 0, x, emb, positions)
        for i in range(c["layers"]):
            x = self._layer(f"layers.{i}.", i, x, emb, positions)
        return x

    def logprobs(self, out_row: np.ndarray) -> np.ndarray:
        c, w = self.cfg, self.w
        if c["kind"] == "eagle3":
            x = rms_norm(out_row[None, :], w["norm.weight"], c["eps"])[0]
            return log_softmax(w["lm_head.weight"] @ x)
        return log_softmax(w["lm_head"] @ out_row)

    def to_target(self, draft_id: int) -> int:
        if "d2t" in self.w:
            return int(draft_id + self.w["d2t"][draft_id])
        return int(draft_id)

    def tree(self, hidden: np.ndarray, input_ids: list, top_k: int, depth: int,
             total_tokens: int):
        """EAGLE-2's tree rebuilt exhaustively: every node's log-probs from a
        fresh recomputation of the prefix plus its path.  Returns (tokens,
        parents) with the root first, nodes in candidate order."""
        base_feats = list(hidden)
        base_tokens = list(input_ids[1:])
        out = self.outputs(base_feats, base_tokens)

        def node_eval(path_feats, path_tokens):
            o = self.outputs(base_feats + path_feats, base_tokens + path_tokens)
            return o[-1]

        last = out[-1]
        lp = self.logprobs(last)
        order = sorted(range(lp.size), key=lambda i: (-lp[i], i))[:top_k]
        # candidates: dict(score, token, parent candidate (-1 root), feats, tokens path)
        cands = []
        frontier = []
        for i in order:
            cands.append({"score": lp[i], "token": self.to_target(i), "parent": -1})
            frontier.append({"cand": len(cands) - 1, "score": lp[i], "feats": [last],
                             "tokens": [self.to_target(i)]})
        for _ in range(depth):
            children = []
            for node in frontier:
                h = node_eval(node["feats"], node["tokens"])
                lp = self.logprobs(h)
                best = sorted(range(lp.size), key=lambda i: (-lp[i], i))[:top_k]
                for i in best:
                    cands.append({"score": node["score"] + lp[i], "token": self.to_target(i),
                                  "parent": node["cand"]})
                    children.append({"cand": len(cands) - 1, "score": node["score"] + lp[i],
                                     "feats": node["feats"] + [h],
                                     "tokens": node["tokens"] + [self.to_target(i)]})
            children.sort(key=lambda ch: (-ch["score"], ch["cand"]))
            frontier = children[:top_k]
        chosen = sorted(sorted(range(len(cands)), key=lambda i: (-cands[i]["score"], i))
                        [:total_tokens - 1])
        node_of = {c: n + 1 for n, c in enumerate(chosen)}
        tokens = [int(input_ids[-1])] + [cands[c]["token"] for c in chosen]
        parents = [-1] + [0 if cands[c]["parent"] < 0 else node_of[cands[c]["parent"]]
                          for c in chosen]
        return tokens, parents
