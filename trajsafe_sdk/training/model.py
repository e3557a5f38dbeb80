"""The monitor network: a small Llama whose label head reads the tied embedding rows of the 20 label tokens."""

from __future__ import annotations

from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from ..layout import ALL_SPECIAL_TOKENS, LABEL_TOKENS, SPECIAL_TOKENS

LABEL_TOKEN_IDS: list[int] = [ALL_SPECIAL_TOKENS.index(t) for t in LABEL_TOKENS]  # 8..27
LABEL_START, LABEL_END = LABEL_TOKEN_IDS[0], LABEL_TOKEN_IDS[-1] + 1

SIZES: dict[str, dict[str, Any]] = {
    "default": dict(vocab_size=8192, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                    num_key_value_heads=2, intermediate_size=768),
    "smoke": dict(vocab_size=1024, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=1, intermediate_size=128),
}


def make_config(size: str = "default", vocab_size: int | None = None) -> LlamaConfig:
    """Llama config of the monitor (`default`: 4 layers x 256, GQA 4/2, head_dim 64; `smoke`: tiny)."""
    spec = dict(SIZES[size])
    if vocab_size is not None:
        spec["vocab_size"] = vocab_size
    return LlamaConfig(
        **spec,
        head_dim=spec["hidden_size"] // spec["num_attention_heads"],
        hidden_act="silu",
        max_position_embeddings=4096,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        attention_bias=False,
        mlp_bias=False,
        attention_dropout=0.0,
        pad_token_id=SPECIAL_TOKENS.index("<pad>"),
        bos_token_id=SPECIAL_TOKENS.index("<|bos|>"),
        eos_token_id=SPECIAL_TOKENS.index("<|end|>"),
    )


def make_model(config: LlamaConfig, seed: int = 0) -> LlamaForCausalLM:
    """A freshly initialised monitor (deterministic for a seed)."""
    torch.manual_seed(seed)
    config._attn_implementation = "sdpa"
    return LlamaForCausalLM(config)


def architecture(config: LlamaConfig) -> dict[str, Any]:
    """The `architecture` section of `monitor.json`."""
    return {
        "type": "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "num_layers": config.num_hidden_layers,
        "num_heads": config.num_attention_heads,
        "num_kv_heads": config.num_key_value_heads,
        "head_dim": config.head_dim,
        "intermediate_size": config.intermediate_size,
        "rope_theta": float(config.rope_theta),
        "rms_norm_eps": float(config.rms_norm_eps),
        "label_token_ids": list(LABEL_TOKEN_IDS),
        "tie_word_embeddings": True,
    }


def hidden_states(model: LlamaForCausalLM, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Final (normed) hidden states `[B, T, H]` for right-padded batches; positions count from 0."""
    out = model.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return out.last_hidden_state


def label_head(model: LlamaForCausalLM, hidden: torch.Tensor) -> torch.Tensor:
    """`hidden [..., H] @ E[label ids].T` -> `[..., 20]` (what the ONNX label head computes)."""
    rows = model.model.embed_tokens.weight[LABEL_START:LABEL_END]
    return hidden @ rows.T


def label_logits(model: LlamaForCausalLM, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 positions: torch.Tensor) -> torch.Tensor:
    """Label logits `[N, 20]` at `positions` (`[N, 2]` rows of (batch index, token index) of `<|assess|>`)."""
    hidden = hidden_states(model, input_ids, attention_mask)
    return label_head(model, hidden[positions[:, 0], positions[:, 1]])


def lm_logits(model: LlamaForCausalLM, hidden: torch.Tensor) -> torch.Tensor:
    """Next-token logits over the vocabulary with the label tokens masked out (they never occur in text)."""
    logits = hidden @ model.model.embed_tokens.weight.T
    mask = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
    mask[LABEL_START:LABEL_END] = True
    return logits.masked_fill(mask, float("-inf"))
