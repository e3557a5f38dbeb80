"""A plain numpy forward of the monitor model (full sequence, no cache), used to check the ONNX graph."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .graph import rope_inv_freq
from .quant import Q4Linear, Q4Table


def _rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def _rotate_half(x: np.ndarray) -> np.ndarray:
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def reference_forward(
    weights: Mapping[str, np.ndarray],
    arch: Mapping[str, Any],
    input_ids: np.ndarray,
    score_positions: np.ndarray,
    position_ids: np.ndarray | None = None,
    attention_mask: np.ndarray | None = None,
) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """Label logits [B, K, 20] at `score_positions` and per-layer keys (after RoPE) / values [B, T, Hkv, D].

    Computed in float64. `input_ids` is [B, T] (or [T]); causal attention restricted by `attention_mask` [B, T].
    """
    ids = np.atleast_2d(np.asarray(input_ids, dtype=np.int64))
    batch, length = ids.shape
    pos = np.broadcast_to(np.arange(length), ids.shape) if position_ids is None else np.atleast_2d(position_ids)
    mask = np.ones_like(ids) if attention_mask is None else np.atleast_2d(attention_mask)
    scores_at = np.atleast_2d(np.asarray(score_positions, dtype=np.int64))
    heads, kv_heads, head_dim = int(arch["num_heads"]), int(arch["num_kv_heads"]), int(arch["head_dim"])
    eps = float(arch["rms_norm_eps"])

    def w(name: str) -> np.ndarray:
        value = weights[name]
        return np.asarray(value.dequantize() if isinstance(value, Q4Linear | Q4Table) else value, dtype=np.float64)

    freqs = pos[..., None].astype(np.float32) * rope_inv_freq(head_dim, arch["rope_theta"])  # float32 like torch
    emb = np.concatenate([freqs, freqs], axis=-1).astype(np.float64)
    cos, sin = np.cos(emb)[:, :, None, :], np.sin(emb)[:, :, None, :]  # [B, T, 1, D]
    allowed = np.tril(np.ones((length, length), dtype=bool))[None] & (mask[:, None, :] == 1)  # [B, T, T]
    bias = np.where(allowed, 0.0, -1e9)[:, None]  # [B, 1, T, T]

    x = w("model.embed_tokens.weight")[ids]
    keys, values, layer_outputs = [], [], []
    for i in range(int(arch["num_layers"]) - (1 if arch.get("pool_layers") else 0)):
        p = f"model.layers.{i}."
        h = _rms_norm(x, w(p + "input_layernorm.weight"), eps)
        q = (h @ w(p + "self_attn.q_proj.weight").T).reshape(batch, length, heads, head_dim)
        k = (h @ w(p + "self_attn.k_proj.weight").T).reshape(batch, length, kv_heads, head_dim)
        v = (h @ w(p + "self_attn.v_proj.weight").T).reshape(batch, length, kv_heads, head_dim)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        keys.append(k)
        values.append(v)
        rep = heads // kv_heads
        kr = np.repeat(k, rep, axis=2).transpose(0, 2, 1, 3)  # [B, H, T, D]
        vr = np.repeat(v, rep, axis=2).transpose(0, 2, 1, 3)
        scores = q.transpose(0, 2, 1, 3) @ kr.transpose(0, 1, 3, 2) / np.sqrt(head_dim) + bias
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        probs = scores / scores.sum(-1, keepdims=True)
        attn = (probs @ vr).transpose(0, 2, 1, 3).reshape(batch, length, heads * head_dim)
        x = x + attn @ w(p + "self_attn.o_proj.weight").T
        h = _rms_norm(x, w(p + "post_attention_layernorm.weight"), eps)
        gate = h @ w(p + "mlp.gate_proj.weight").T
        act = gate / (1.0 + np.exp(-gate)) * (h @ w(p + "mlp.up_proj.weight").T)
        x = x + act @ w(p + "mlp.down_proj.weight").T
        layer_outputs.append(x)
    if any(k.startswith("head.") for k in weights):  # feature head: normalised layer outputs (+ pool) -> MLP
        feats = np.concatenate([_rms_norm(np.take_along_axis(layer_outputs[i], scores_at[:, :, None], axis=1), 1.0,
                                          eps) for i in arch["feature_layers"]], axis=-1)
        if arch.get("pool_layers"):  # mean over tokens 0..p (within the attention mask) of the projected inputs
            z = np.concatenate([_rms_norm(layer_outputs[i], 1.0, eps) for i in arch["pool_layers"]], axis=-1)
            v = (z @ w("pool.weight").T) * mask[..., None]
            means = np.cumsum(v, axis=1) / np.maximum(np.cumsum(mask, axis=1), 1)[..., None]
            feats = np.concatenate([feats, np.take_along_axis(means, scores_at[:, :, None], axis=1)], axis=-1)
        hidden = np.maximum(feats @ w("head.0.weight").T + w("head.0.bias"), 0.0)
        return hidden @ w("head.3.weight").T + w("head.3.bias"), keys, values
    h = _rms_norm(x, w("model.norm.weight"), eps)
    picked = np.take_along_axis(h, scores_at[:, :, None], axis=1)
    head = w("model.embed_tokens.weight")[np.asarray(arch["label_token_ids"])]
    return picked @ head.T, keys, values
