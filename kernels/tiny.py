"""Tiny random monitor packages for tests (seconds to build, no training)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from trajsafe_sdk.layout import LABEL_TOKENS, SPECIAL_TOKENS, MessageEncoder, default_layout, train_tokenizer
from trajsafe_sdk.package import marker_ids, write_package

from .graph import build_monitor_graph
from .quant import Q4Linear, Q4Table

# Monitor v2's layout style (markers of several tokens, as in a chat template), on the tiny tokenizer.
V2_MARKERS: dict[str, Any] = {"bos": "<|bos|>", "end": "<|end|>\n", "assess": "<|assistant|>\n",
                              "roles": {"system": "<|system|>\n", "user": "<|user|>\n",
                                        "assistant": "<|assistant|>\n", "tool": "<|tool|>\n"}}

_SUBJECTS = ["The user", "My assistant", "A developer", "The tool", "Our team", "The system", "A student", "The agent",
             "Someone", "The manager", "A nurse", "The chemist", "My neighbour", "The bot", "An analyst"]
_VERBS = ["asked about", "wants to know", "is writing", "explained", "searched for", "refused to share",
          "summarised", "planned", "reviewed", "translated", "deleted", "downloaded", "reported", "tested"]
_OBJECTS = ["the weather forecast", "a recipe for bread", "the quarterly report", "a python script",
            "the password policy", "a travel itinerary", "network security basics", "the history of Rome",
            "a birthday message", "the database schema", "some medical advice", "a short poem", "the API keys",
            "a phishing email", "the chemistry homework", "a bank transfer", "the server logs", "a job application"]
_TAILS = ["today.", "for the meeting.", "again, please?", "without any delay.", "in plain English.", "right now!",
          "step by step.", "before Friday.", "with examples: 1, 2, 3.", "and then stopped.", "(see the notes)."]


def tiny_corpus(n: int = 400, seed: int = 0) -> list[str]:
    """A few hundred varied English sentences made in code."""
    rng = np.random.default_rng(seed)
    pick = lambda items: items[int(rng.integers(len(items)))]
    return [f"{pick(_SUBJECTS)} {pick(_VERBS)} {pick(_OBJECTS)} {pick(_TAILS)}" for _ in range(n)]


def tiny_arch(*, num_layers: int = 2, hidden_size: int = 64, num_heads: int = 4, num_kv_heads: int = 2,
              intermediate_size: int = 128, vocab_size: int = 512, rope_theta: float = 10000.0,
              rms_norm_eps: float = 1e-5) -> dict[str, Any]:
    """An architecture dict in the `monitor.json` format."""
    first_label = len(SPECIAL_TOKENS)
    return {"type": "llama", "vocab_size": vocab_size, "hidden_size": hidden_size, "num_layers": num_layers,
            "num_heads": num_heads, "num_kv_heads": num_kv_heads, "head_dim": hidden_size // num_heads,
            "intermediate_size": intermediate_size, "rope_theta": rope_theta, "rms_norm_eps": rms_norm_eps,
            "label_token_ids": list(range(first_label, first_label + len(LABEL_TOKENS)))}


def tiny_weights(arch: dict[str, Any], seed: int = 0) -> dict[str, np.ndarray]:
    """Random Llama weights (HF state-dict names, float32) whose label logits clearly differ."""
    rng = np.random.default_rng(seed)
    hidden, inter = int(arch["hidden_size"]), int(arch["intermediate_size"])
    q_size = int(arch["num_heads"]) * int(arch["head_dim"])
    kv_size = int(arch["num_kv_heads"]) * int(arch["head_dim"])

    def normal(*shape: int, std: float = 0.02) -> np.ndarray:
        return (rng.standard_normal(shape) * std).astype(np.float32)

    def norm_weight() -> np.ndarray:
        return (1.0 + rng.standard_normal(hidden) * 0.1).astype(np.float32)

    weights = {"model.embed_tokens.weight": normal(int(arch["vocab_size"]), hidden, std=0.3)}
    lin = 1.0 / np.sqrt(hidden)  # keeps activations O(1) so attention and label logits vary
    for i in range(int(arch["num_layers"])):
        p = f"model.layers.{i}."
        weights[p + "input_layernorm.weight"] = norm_weight()
        weights[p + "self_attn.q_proj.weight"] = normal(q_size, hidden, std=lin)
        weights[p + "self_attn.k_proj.weight"] = normal(kv_size, hidden, std=lin)
        weights[p + "self_attn.v_proj.weight"] = normal(kv_size, hidden, std=lin)
        weights[p + "self_attn.o_proj.weight"] = normal(hidden, q_size, std=lin / 2)
        weights[p + "post_attention_layernorm.weight"] = norm_weight()
        weights[p + "mlp.gate_proj.weight"] = normal(inter, hidden, std=lin)
        weights[p + "mlp.up_proj.weight"] = normal(inter, hidden, std=lin)
        weights[p + "mlp.down_proj.weight"] = normal(hidden, inter, std=1.0 / np.sqrt(inter) / 2)
    weights["model.norm.weight"] = norm_weight()
    return weights


def v2_weights(weights: dict[str, np.ndarray], arch: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    """Monitor v2's form of random weights: 4-bit projections and embedding, the trajectory pool's projection (when
    `arch["pool_layers"]`) and a feature head (MLP) over `arch["feature_layers"]` and the pool."""
    rng = np.random.default_rng(seed + 1)
    out: dict[str, Any] = {k: Q4Linear.quantize(v) if k.endswith("proj.weight") else v for k, v in weights.items()}
    out["model.embed_tokens.weight"] = Q4Table.quantize(weights["model.embed_tokens.weight"])
    dim = int(arch["hidden_size"]) * len(arch["feature_layers"])
    if arch.get("pool_layers"):
        width = int(arch["num_kv_heads"]) * int(arch["head_dim"])
        pool_in = int(arch["hidden_size"]) * len(arch["pool_layers"])
        out["pool.weight"] = (rng.standard_normal((width, pool_in)) / np.sqrt(pool_in) * 3).astype(np.float32)
        dim += width
    out["head.0.weight"] = (rng.standard_normal((32, dim)) / np.sqrt(dim)).astype(np.float32)
    out["head.0.bias"] = (rng.standard_normal(32) * 0.1).astype(np.float32)
    out["head.3.weight"] = (rng.standard_normal((20, 32)) / np.sqrt(32) * 3).astype(np.float32)
    out["head.3.bias"] = np.zeros(20, np.float32)
    return out


def build_tiny_package(
    out_dir: str | Path,
    *,
    seed: int = 0,
    num_layers: int = 2,
    hidden_size: int = 64,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    vocab_size: int = 512,
    context_limit: int = 256,
    variants: Sequence[str] = ("fp32", "int8"),
    max_message_tokens: int = 64,
    style: str = "v1",
) -> Path:
    """Write a complete monitor package with a tiny tokenizer and random weights; returns its folder.

    `style="v2"`: monitor v2's form (multi-token markers, 4-bit weights, feature head) with the variant `q4`.
    """
    from .variants import quantize_int8

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(tiny_corpus(seed=seed), vocab_size=vocab_size, min_frequency=2)
    if tokenizer.get_vocab_size() > vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.get_vocab_size()} ids, more than vocab_size={vocab_size}")
    arch = tiny_arch(num_layers=num_layers, hidden_size=hidden_size, num_heads=num_heads, num_kv_heads=num_kv_heads,
                     intermediate_size=intermediate_size, vocab_size=vocab_size)
    weights: dict[str, Any] = tiny_weights(arch, seed)
    layout = default_layout(max_message_tokens)
    if style == "v2":  # the trunk's layers, then the trajectory pool's cache slot
        arch.update(num_layers=num_layers + 1, feature_layers=[0, num_layers - 1], pool_layers=[0, num_layers - 1])
        weights = v2_weights(weights, arch, seed)
        layout.update(V2_MARKERS)
    layout_ids = marker_ids(MessageEncoder(tokenizer, layout))
    fp32_path = out / "monitor.fp32.onnx"
    onnx.save(build_monitor_graph(weights, arch, layout_ids=layout_ids), fp32_path)
    files: dict[str, dict[str, Any]] = {}
    for variant in variants:
        path = out / f"monitor.{variant}.onnx"
        if variant == "fp32":
            files[variant] = {"source": path, "dtype": "float32", "kv_dtype": "float32", "providers": ["cpu"]}
        elif variant == "int8":
            quantize_int8(fp32_path, path)
            files[variant] = {"source": path, "dtype": "int8", "kv_dtype": "float32", "providers": ["cpu"]}
        elif variant == "fp16":
            onnx.save(build_monitor_graph(weights, arch, float_dtype="float16", layout_ids=layout_ids), path)
            files[variant] = {"source": path, "dtype": "float16", "kv_dtype": "float16", "providers": ["cpu"]}
        elif variant == "q4" and style == "v2":
            fp32_path.replace(path)
            files[variant] = {"source": path, "dtype": "q4", "kv_dtype": "float32", "providers": ["cpu"]}
        else:
            raise ValueError(f"unknown variant {variant!r}; expected fp32, int8 or fp16 (v1), q4 (v2)")
    if "fp32" not in variants and fp32_path.exists():
        fp32_path.unlink()
    first = variants[0]
    default = {"cpu": "int8" if "int8" in variants else first, "cuda": "fp16" if "fp16" in variants else first}
    return write_package(out, tokenizer=tokenizer, onnx_files=files, architecture=arch, name="trajsafe-tiny",
                         version="0.0.0", context_limit=context_limit, default_variant=default,
                         max_message_tokens=max_message_tokens, card="Tiny random test monitor (not trained).\n",
                         layout=layout)
