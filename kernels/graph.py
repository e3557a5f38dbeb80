"""The monitor's ONNX graph: a Llama decoder reading and updating a KV cache in place, label-only head.

The graph is built directly with `onnx.helper` (default domain opset 17 plus two `com.microsoft` ops,
GroupQueryAttention and RotaryEmbedding) from Hugging Face `LlamaForCausalLM` state-dict names. The contract is in
docs/architecture.md ("ONNX graph contract"). Design choices:

- the KV cache is one preallocated buffer per layer and kind, `[B, Hkv, capacity, D]` (BNSH), fed whole as
  `past_key.{i}` and returned as `present_key.{i}`; a caller that binds `present_*` to the memory of `past_*` (IO
  binding) has the new keys/values written in place: no per-turn copy of the cached prefix;
- layers 0..L-2 use GroupQueryAttention (CPU and CUDA kernels) on that shared buffer, fed the fused q/k/v projection
  as one packed tensor and applying RoPE itself (`do_rotary=1`, tables `rope_cos`/`rope_sin` of `max_positions`
  rows): it writes the new K/V after the prefix and attends over `seqlens_k + 1` keys per row, causally, with no
  Concat of past and new K/V, no K Transpose and no additive mask over all scores (what the earlier plain-op graph
  spent most of a long turn on); RoPE positions are the cache positions `P .. P+T-1`;
- the last layer needs queries only at `score_positions`, which GroupQueryAttention cannot do (its query and key
  lengths must match), so it applies RoPE with `RotaryEmbedding`, writes its new K/V with `ScatterElements` (in place
  when the output is bound to the input: ORT skips the copy when both are the same memory) and attends the few
  scored queries over the whole buffer with a mask (keys after a query's own position, including the unused
  capacity, get zero weight; the buffer must hold finite values, so callers allocate it zeroed);
- GroupQueryAttention limits batching: several rows with new tokens after a non-empty past are rejected by ORT
  (`batch_size must be 1 when sequence_length > 1 and past context is given`); batches of first reads (no past)
  work, and the runtime runs rows with a past one by one;
- the attention scale `1/sqrt(head_dim)` is folded into the q weights (RoPE is linear, so this is exact;
  GroupQueryAttention gets `scale=1`), gate/up are fused into one MatMul;
- RMSNorm is written as `Pow -> ReduceMean -> Add -> Sqrt -> Div -> Mul`, which ORT fuses into
  `SimplifiedLayerNormalization`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
NUM_LABELS = 20
ARCH_KEYS = ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
             "intermediate_size", "rope_theta", "rms_norm_eps", "label_token_ids")
_DTYPES = {"float32": (np.float32, TensorProto.FLOAT), "float16": (np.float16, TensorProto.FLOAT16)}
# Additive mask value: finite so a fully masked row gives a uniform softmax instead of NaN.
_MASK_VALUE = {"float32": -1e9, "float16": -1e4}
KV_LAYOUT = "BNSH"  # cache buffers [batch, kv heads, capacity, head_dim]
ROPE_POSITIONS = 4096  # default rows of the RoPE tables (the shipped context limit is 2048)


def rope_inv_freq(head_dim: int, theta: float) -> np.ndarray:
    """Llama's default RoPE inverse frequencies (float32, correctly rounded)."""
    exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float64) / head_dim
    return (1.0 / (float(theta) ** exponents)).astype(np.float32)


def rope_tables(head_dim: int, theta: float, positions: int) -> tuple[np.ndarray, np.ndarray]:
    """RoPE cos/sin caches [positions, head_dim/2] (float32): angle = float32(position) * inv_freq in float32, like
    transformers, then cos/sin correctly rounded."""
    angles = np.arange(positions, dtype=np.float32)[:, None] * rope_inv_freq(head_dim, theta)[None, :]
    return np.cos(angles.astype(np.float64)).astype(np.float32), np.sin(angles.astype(np.float64)).astype(np.float32)


class _Builder:
    """Collects nodes and initializers with unique names."""

    def __init__(self, float_dtype: str) -> None:
        self.np_dtype, self.onnx_dtype = _DTYPES[float_dtype]
        self.float_dtype = float_dtype
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0
        self._consts: dict[tuple, str] = {}
        self.value_info: list[onnx.ValueInfoProto] = []

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def init(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def const(self, value: Any, dtype: Any = np.int64) -> str:
        """A small constant initializer (deduplicated)."""
        array = np.asarray(value, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._consts:
            self._consts[key] = self.init(self._name("const"), array)
        return self._consts[key]

    def fconst(self, value: Any) -> str:
        """A constant in the graph's float dtype."""
        return self.const(value, self.np_dtype)

    def contrib(self, op_type: str, inputs: Sequence[str], outputs: Sequence[str], shapes: Sequence[Sequence[Any]],
                **attrs: Any) -> Any:
        """A `com.microsoft` op; its outputs' types and shapes are declared (ONNX shape inference, which the int8
        quantizer relies on, does not know contrib ops)."""
        for name, shape in zip(outputs, shapes, strict=False):
            self.value_info.append(helper.make_tensor_value_info(name, self.onnx_dtype, list(shape)))
        return self.op(op_type, inputs, op_type.lower(), outputs=outputs, domain="com.microsoft", **attrs)

    def op(self, op_type: str, inputs: Sequence[str], hint: str | None = None, outputs: int | Sequence[str] = 1,
           **attrs: Any) -> Any:
        """Add a node; returns its output name (or a list of names for several outputs)."""
        hint = hint or op_type.lower()
        names = [self._name(hint) for _ in range(outputs)] if isinstance(outputs, int) else list(outputs)
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=self._name(f"n_{hint}"), **attrs))
        return names[0] if len(names) == 1 else names


def _rms_norm(b: _Builder, x: str, weight: np.ndarray, eps: float, name: str) -> str:
    """RMSNorm in the pattern ORT fuses to SimplifiedLayerNormalization (statistics in float32)."""
    xf = b.op("Cast", [x], "norm_cast", to=TensorProto.FLOAT) if b.float_dtype != "float32" else x
    sq = b.op("Pow", [xf, b.const(2.0, np.float32)], "norm_pow")
    mean = b.op("ReduceMean", [sq], "norm_mean", axes=[-1], keepdims=1)
    std = b.op("Sqrt", [b.op("Add", [mean, b.const(eps, np.float32)], "norm_add")], "norm_sqrt")
    normed = b.op("Div", [xf, std], "norm_div")
    if b.float_dtype != "float32":
        normed = b.op("Cast", [normed], "norm_cast_back", to=b.onnx_dtype)
    return b.op("Mul", [normed, b.init(name, weight.astype(b.np_dtype))], "norm_mul")


def _causal_bias(b: _Builder, query_index: str, key_range: str, groups: int) -> str:
    """Additive bias [B, 1, groups*Tq, S]: 0 where key index <= query index ([B, Tq], absolute), else very negative."""
    allowed = b.op("LessOrEqual", [key_range, b.op("Unsqueeze", [query_index, b.const([-1])])], "causal")
    allowed = b.op("Unsqueeze", [allowed, b.const([1])])
    bias = b.op("Where", [allowed, b.fconst(0.0), b.fconst(_MASK_VALUE[b.float_dtype])], "bias")
    return b.op("Tile", [bias, b.const([1, 1, groups, 1])], "bias_tiled") if groups > 1 else bias


def _gqa_layer_attention(b: _Builder, qkv: str, layer: int, arch: Mapping[str, Any]) -> str:
    """GroupQueryAttention over the layer's cache buffer, RoPE included: packed qkv [B, T, (H + 2 Hkv) * D] in,
    [B, T, H*D] out."""
    attn = b._name("attn")
    b.contrib("GroupQueryAttention", [qkv, "", "", f"past_key.{layer}", f"past_value.{layer}", "seqlens_k",
                                      "total_sequence_length", "rope_cos", "rope_sin"],
              [attn, f"present_key.{layer}", f"present_value.{layer}"],
              [["batch", "new_tokens", int(arch["num_heads"]) * int(arch["head_dim"])]],
              num_heads=int(arch["num_heads"]), kv_num_heads=int(arch["num_kv_heads"]), scale=1.0, do_rotary=1,
              rotary_interleaved=0)
    return attn


def _last_layer_attention(b: _Builder, q: str, k: str, v: str, layer: int, arch: Mapping[str, Any],
                          cache_pos: str, query_abs: str) -> str:
    """Write k/v [B, T, Hkv*D] into the cache buffer at positions `cache_pos` [B, T], then attend the scored queries
    q [B, K, H*D] (positions `query_abs` [B, K]) over the whole buffer; returns [B, K, H*D]. RoPE is applied here.

    Query heads are grouped per kv head ([B, Hkv, G*K, D]) so K/V are never repeated.
    """
    heads, kv_heads, head_dim = int(arch["num_heads"]), int(arch["num_kv_heads"]), int(arch["head_dim"])
    groups = heads // kv_heads
    q = b.contrib("RotaryEmbedding", [q, query_abs, "rope_cos", "rope_sin"], [b._name("q_rope")],
                  [["batch", "num_scores", heads * head_dim]], interleaved=0, num_heads=heads)
    k = b.contrib("RotaryEmbedding", [k, cache_pos, "rope_cos", "rope_sin"], [b._name("k_rope")],
                  [["batch", "new_tokens", kv_heads * head_dim]], interleaved=0, num_heads=kv_heads)
    k = b.op("Reshape", [k, b.const([0, 0, kv_heads, head_dim])], "k4")
    v = b.op("Reshape", [v, b.const([0, 0, kv_heads, head_dim])], "v4")
    cache_index = b.op("Unsqueeze", [cache_pos, b.const([1, 3])], "cache_index")  # [B, 1, T, 1]
    qg = b.op("Reshape", [q, b.const([0, 0, kv_heads, groups, head_dim])], "q_groups")
    qg = b.op("Transpose", [qg], "q_t", perm=[0, 2, 3, 1, 4])
    qg = b.op("Reshape", [qg, b.const([0, kv_heads, -1, head_dim])], "q_flat")  # [B, Hkv, G*K, D]
    k = b.op("Transpose", [k], "k_bnsh", perm=[0, 2, 1, 3])  # [B, Hkv, T, D]
    v = b.op("Transpose", [v], "v_bnsh", perm=[0, 2, 1, 3])
    index = b.op("Expand", [cache_index, b.op("Shape", [k], "shape_k")], "cache_index_full")  # [B, Hkv, T, D]
    keys = b.op("ScatterElements", [f"past_key.{layer}", index, k], outputs=[f"present_key.{layer}"], axis=2)
    values = b.op("ScatterElements", [f"past_value.{layer}", index, v], outputs=[f"present_value.{layer}"], axis=2)
    capacity = b.op("Squeeze", [b.op("Shape", [keys], "shape_c", start=2, end=3), b.const([0])], "capacity")
    key_range = b.op("Range", [b.const(0), capacity, b.const(1)], "key_range")
    bias = _causal_bias(b, query_abs, key_range, groups)
    scores = b.op("MatMul", [qg, b.op("Transpose", [keys], "k_t", perm=[0, 1, 3, 2])], "scores")  # -> FusedMatMul
    probs = b.op("Softmax", [b.op("Add", [scores, bias], "scores_masked")], "probs", axis=-1)
    out = b.op("MatMul", [probs, values], "attn")
    out = b.op("Reshape", [out, b.const([0, kv_heads, groups, -1, head_dim])], "attn_groups")
    out = b.op("Transpose", [out], "attn_t", perm=[0, 3, 1, 2, 4])  # [B, K, Hkv, G, D]
    return b.op("Reshape", [out, b.const([0, 0, heads * head_dim])], "attn_flat")


def build_monitor_graph(weights: Mapping[str, np.ndarray], arch: Mapping[str, Any], *,
                        float_dtype: str = "float32", max_positions: int = ROPE_POSITIONS,
                        layout_ids: Mapping[str, Any] | None = None) -> onnx.ModelProto:
    """Build the monitor graph (inputs/outputs per docs/architecture.md, "ONNX graph contract").

    `weights` are float arrays with HF names; `arch` has `ARCH_KEYS`. `float_dtype="float16"` gives the fp16
    variant (fp16 weights, activations, KV and RoPE tables; norm statistics in float32; float32 logits).
    `max_positions` sizes the RoPE tables (positions, i.e. cache indices, must stay below it; recorded as
    `trajsafe.max_positions`, which the runtime checks against the package's context limit). `layout_ids`, the
    marker ids the model was trained with (`trajsafe_sdk.package.marker_ids`), are recorded as
    `trajsafe.layout_ids`; loading then refuses a package whose tokenizer and layout resolve to other ids.
    """
    missing = [k for k in ARCH_KEYS if k not in arch]
    if missing:
        raise ValueError(f"architecture is missing {missing}")
    b = _Builder(float_dtype)
    fdt = b.np_dtype
    n_layers, heads, kv_heads = int(arch["num_layers"]), int(arch["num_heads"]), int(arch["num_kv_heads"])
    head_dim, hidden, eps = int(arch["head_dim"]), int(arch["hidden_size"]), float(arch["rms_norm_eps"])
    label_ids = [int(i) for i in arch["label_token_ids"]]
    if len(label_ids) != NUM_LABELS:
        raise ValueError(f"label_token_ids must list {NUM_LABELS} ids, got {len(label_ids)}")
    if heads % kv_heads:
        raise ValueError("num_heads must be a multiple of num_kv_heads")
    if n_layers < 1:
        raise ValueError("num_layers must be at least 1")
    scale = 1.0 / np.sqrt(head_dim)
    embed = np.asarray(weights["model.embed_tokens.weight"], dtype=np.float32)
    if hidden != embed.shape[1]:
        raise ValueError(f"hidden_size {hidden} does not match the embedding width {embed.shape[1]}")

    def w(name: str) -> np.ndarray:
        return np.asarray(weights[name], dtype=np.float32)

    cache_dims = ["batch", kv_heads, "capacity", head_dim]
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "new_tokens"]),
        helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, ["batch"]),
        helper.make_tensor_value_info("total_sequence_length", TensorProto.INT32, []),
        helper.make_tensor_value_info("score_positions", TensorProto.INT64, ["batch", "num_scores"]),
    ]
    outputs = [helper.make_tensor_value_info("label_logits", TensorProto.FLOAT, ["batch", "num_scores", NUM_LABELS])]
    for i in range(n_layers):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_{kind}.{i}", b.onnx_dtype, cache_dims))
            outputs.append(helper.make_tensor_value_info(f"present_{kind}.{i}", b.onnx_dtype, cache_dims))

    # Cache positions of the new tokens (also their RoPE positions): P = seqlens_k + 1 - T, then P .. P+T-1.
    zero_d = b.const([0])
    new = b.op("Squeeze", [b.op("Shape", ["input_ids"], "shape_t", start=1, end=2), zero_d], "new")
    past = b.op("Sub", [b.op("Add", [b.op("Cast", ["seqlens_k"], "seqlens64", to=TensorProto.INT64), b.const(1)]),
                        new], "past")
    cache_pos = b.op("Add", [b.op("Unsqueeze", [past, b.const([-1])]),
                             b.op("Range", [b.const(0), new, b.const(1)], "new_range")], "cache_pos")  # [B, T]
    query_abs = b.op("GatherElements", [cache_pos, "score_positions"], "score_abs", axis=1)  # [B, K]
    cos_cache, sin_cache = rope_tables(head_dim, arch["rope_theta"], max_positions)
    b.init("rope_cos", cos_cache.astype(fdt))
    b.init("rope_sin", sin_cache.astype(fdt))

    x = b.op("Gather", [b.init("embed_tokens", embed.astype(fdt)), "input_ids"], "embed", axis=0)
    score_idx = b.op("Unsqueeze", ["score_positions", b.const([-1])], "score_idx")  # [B, K, 1]
    kv_size = kv_heads * head_dim

    for i in range(n_layers):
        p = f"model.layers.{i}."
        h = _rms_norm(b, x, w(p + "input_layernorm.weight"), eps, f"layers.{i}.input_norm")
        wq = w(p + "self_attn.q_proj.weight") * np.float32(scale)
        wk, wv = w(p + "self_attn.k_proj.weight"), w(p + "self_attn.v_proj.weight")
        if i == n_layers - 1:  # keys/values for every token, queries (and all that follows) only at score positions
            kv = b.op("MatMul", [h, b.init(f"layers.{i}.kv_proj", np.concatenate([wk, wv]).T.astype(fdt))], "kv")
            k, v = b.op("Split", [kv, b.const([kv_size, kv_size])], "kv_split", outputs=2, axis=-1)
            h_q = b.op("GatherND", [h, score_idx], "h_scores", batch_dims=1)
            q = b.op("MatMul", [h_q, b.init(f"layers.{i}.q_proj", wq.T.astype(fdt))], "q")
            x = b.op("GatherND", [x, score_idx], "x_scores", batch_dims=1)
            attn = _last_layer_attention(b, q, k, v, i, arch, cache_pos, query_abs)
        else:
            qkv = b.op("MatMul", [h, b.init(f"layers.{i}.qkv_proj", np.concatenate([wq, wk, wv]).T.astype(fdt))],
                       "qkv")
            attn = _gqa_layer_attention(b, qkv, i, arch)
        x = b.op("Add", [x, b.op("MatMul", [attn, b.init(f"layers.{i}.o_proj", w(p + "self_attn.o_proj.weight").T
                                                          .astype(fdt))], "o_proj")], "resid_attn")
        h = _rms_norm(b, x, w(p + "post_attention_layernorm.weight"), eps, f"layers.{i}.post_norm")
        gate_up = np.concatenate([w(p + "mlp.gate_proj.weight"), w(p + "mlp.up_proj.weight")]).T.astype(fdt)
        gu = b.op("MatMul", [h, b.init(f"layers.{i}.gate_up_proj", gate_up)], "gate_up")
        gate, up = b.op("Split", [gu, b.const([int(arch["intermediate_size"])] * 2)], "gate_up_split", outputs=2,
                        axis=-1)
        act = b.op("Mul", [b.op("Mul", [gate, b.op("Sigmoid", [gate], "sigmoid")], "silu"), up], "gated")
        down = b.op("MatMul", [act, b.init(f"layers.{i}.down_proj", w(p + "mlp.down_proj.weight").T.astype(fdt))],
                    "down_proj")
        x = b.op("Add", [x, down], "resid_mlp")

    h = _rms_norm(b, x, w("model.norm.weight"), eps, "final_norm")
    head = embed[label_ids].T.astype(fdt)  # tied embeddings, label rows only: [hidden, 20]
    logits = b.op("MatMul", [h, b.init("label_head", head)], "label_head")
    b.op("Cast", [logits], outputs=["label_logits"], to=TensorProto.FLOAT)

    graph = helper.make_graph(b.nodes, "trajsafe_monitor", inputs, outputs, initializer=b.initializers,
                              value_info=b.value_info)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                    helper.make_opsetid("com.microsoft", 1)],
                              producer_name="trajsafe_sdk")
    model.ir_version = 8
    arch_json = {k: arch[k] for k in ARCH_KEYS}
    arch_json["label_token_ids"] = label_ids
    props = {"trajsafe.architecture": json.dumps(arch_json), "trajsafe.float_dtype": float_dtype,
             "trajsafe.kv_layout": KV_LAYOUT, "trajsafe.max_positions": str(max_positions)}
    if layout_ids is not None:
        props["trajsafe.layout_ids"] = json.dumps(layout_ids, sort_keys=True)
    helper.set_model_props(model, props)
    return model


def empty_past(arch: Mapping[str, Any], batch: int, capacity: int, float_dtype: str = "float32"
               ) -> dict[str, np.ndarray]:
    """Zeroed cache buffers `past_key.{i}` / `past_value.{i}` [batch, Hkv, capacity, D] holding no tokens yet.

    `capacity` must be at least the total length of the run (past + new tokens).
    """
    shape = (batch, int(arch["num_kv_heads"]), capacity, int(arch["head_dim"]))
    dtype = _DTYPES[float_dtype][0]
    return {f"past_{kind}.{i}": np.zeros(shape, dtype) for i in range(int(arch["num_layers"]))
            for kind in ("key", "value")}
