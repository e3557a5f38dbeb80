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

from .quant import BLOCK, Q4Linear, Q4Table

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


def _linear(b: _Builder, x: str, weight: np.ndarray | Q4Linear, name: str, accuracy_level: int = 4) -> str:
    """`x W^T` for W [N, K]: a float MatMul, or for a Q4Linear `MatMulNBits` (4-bit codes, default zero point 8)
    plus the per-block offset term (input sums per block times the offsets)."""
    if not isinstance(weight, Q4Linear):
        return b.op("MatMul", [x, b.init(name, np.asarray(weight, np.float32).T.astype(b.np_dtype))], name)
    n, k = weight.shape
    y = b.contrib("MatMulNBits", [x, b.init(name + ".q4", weight.packed()),
                                  b.init(name + ".scales", weight.scale.reshape(-1).astype(b.np_dtype))],
                  [b._name(name)], [["batch", b._name("tokens"), n]], K=k, N=n, bits=4, block_size=BLOCK,
                  accuracy_level=accuracy_level)
    if not np.any(weight.offset):
        return y
    blocks = b.op("Reshape", [x, b.const([0, 0, k // BLOCK, BLOCK])], name + "_blocks")
    sums = b.op("ReduceSum", [blocks, b.const([-1])], name + "_block_sums", keepdims=0)
    offset = b.op("MatMul", [sums, b.init(name + ".offset", weight.offset.T.astype(b.np_dtype))], name + "_offset")
    return b.op("Add", [y, offset], name + "_q4")


def _embedding(b: _Builder, table: np.ndarray | Q4Table, ids: str) -> str:
    """Rows of the embedding table for `ids` [B, T] -> [B, T, D] (a Q4Table is dequantised after the Gather)."""
    if not isinstance(table, Q4Table):
        return b.op("Gather", [b.init("embed_tokens", np.asarray(table, np.float32).astype(b.np_dtype)), ids],
                    "embed", axis=0)
    _, dim = table.shape
    if table.index is not None:  # a pruned vocabulary: token id -> stored row
        ids = b.op("Gather", [b.init("embed_tokens.index", table.index), ids], "embed_index", axis=0)
    packed = b.op("Gather", [b.init("embed_tokens.q4", table.packed), ids], "embed_packed", axis=0)
    packed = b.op("Cast", [packed], "embed_cast", to=b.onnx_dtype)  # [B, T, D/2]
    high = b.op("Floor", [b.op("Mul", [packed, b.fconst(1.0 / 16)], "embed_div")], "embed_high")
    low = b.op("Sub", [packed, b.op("Mul", [high, b.fconst(16.0)], "embed_high16")], "embed_low")
    pairs = b.op("Concat", [b.op("Unsqueeze", [low, b.const([-1])]), b.op("Unsqueeze", [high, b.const([-1])])],
                 "embed_pairs", axis=-1)
    codes = b.op("Reshape", [pairs, b.const([0, 0, dim // BLOCK, BLOCK])], "embed_codes")
    scale, minimum = (b.op("Unsqueeze", [b.op("Cast", [b.op("Gather", [b.init(f"embed_tokens.{kind}", arr), ids],
                                                                 axis=0)], to=b.onnx_dtype), b.const([-1])])
                      for kind, arr in (("scale", table.scale), ("min", table.minimum)))
    rows = b.op("Add", [b.op("Mul", [codes, scale], "embed_scaled"), minimum], "embed_rows")
    return b.op("Reshape", [rows, b.const([0, 0, dim])], "embed")


def _plain_norm(b: _Builder, x: str, eps: float) -> str:
    """RMS normalisation without a weight, statistics in float32 as in `_rms_norm`: the pretrained trunk's hidden
    states reach ~900 in a few dimensions, whose squares overflow float16 (max 65504)."""
    xf = b.op("Cast", [x], "feat_cast", to=TensorProto.FLOAT) if b.float_dtype != "float32" else x
    mean = b.op("ReduceMean", [b.op("Mul", [xf, xf], "feat_sq")], "feat_mean", axes=[-1], keepdims=1)
    normed = b.op("Div", [xf, b.op("Sqrt", [b.op("Add", [mean, b.const(eps, np.float32)])], "feat_std")],
                  "feat_norm")
    return b.op("Cast", [normed], "feat_cast_back", to=b.onnx_dtype) if b.float_dtype != "float32" else normed


def _feature_head(b: _Builder, features: list[str], weights: Mapping[str, Any], eps: float,
                  pooled: str | None = None) -> tuple[str, str]:
    """Label logits from layer outputs at the score positions: each RMS-normalised (no weight), concatenated with the
    pooled trajectory features (as they are), then the head's Linear layers (`head.{i}.weight` / `.bias`, ReLU
    between)."""
    normed = [_plain_norm(b, x, eps) for x in features] + ([pooled] if pooled else [])
    h = feats = normed[0] if len(normed) == 1 else b.op("Concat", normed, "features", axis=-1)
    layers = sorted({int(k.split(".")[1]) for k in weights if k.startswith("head.")})
    for j, i in enumerate(layers):
        h = b.op("MatMul", [h, b.init(f"head.{i}.weight", np.asarray(weights[f"head.{i}.weight"], np.float32).T
                                       .astype(b.np_dtype))], "head_mm")
        h = b.op("Add", [h, b.init(f"head.{i}.bias", np.asarray(weights[f"head.{i}.bias"], np.float32)
                                    .astype(b.np_dtype))], "head_bias")
        if j < len(layers) - 1:
            h = b.op("Relu", [h], "head_relu")
    return h, feats


def _pool_slot(b: _Builder, z: str, weights: Mapping[str, Any], slot: int, arch: Mapping[str, Any],
               cache_pos: str, query_abs: str) -> str:
    """The trajectory pool: `pool.weight` projects every token's features z [B, T, F] to the cache slot's width
    (Hkv * D), written as that slot's values (keys stay zero); each score position reads the mean of the values of
    the tokens up to it. A mean over the cache is rewound, forked and evicted like any other layer's cache.
    Returns [B, K, Hkv * D]."""
    kv_heads, head_dim = int(arch["num_kv_heads"]), int(arch["head_dim"])
    v = b.op("MatMul", [z, b.init("pool.weight", np.asarray(weights["pool.weight"], np.float32).T
                                  .astype(b.np_dtype))], "pool_proj")
    v = b.op("Transpose", [b.op("Reshape", [v, b.const([0, 0, kv_heads, head_dim])], "pool_v4")], "pool_bnsh",
             perm=[0, 2, 1, 3])  # [B, Hkv, T, D]
    index = b.op("Expand", [b.op("Unsqueeze", [cache_pos, b.const([1, 3])], "pool_index"),
                            b.op("Shape", [v], "pool_shape")], "pool_index_full")
    zeros = b.op("Mul", [v, b.fconst(0.0)], "pool_zero_keys")
    b.op("ScatterElements", [f"past_key.{slot}", index, zeros], outputs=[f"present_key.{slot}"], axis=2)
    values = b.op("ScatterElements", [f"past_value.{slot}", index, v], outputs=[f"present_value.{slot}"], axis=2)
    capacity = b.op("Squeeze", [b.op("Shape", [values], "pool_shape_c", start=2, end=3), b.const([0])], "pool_cap")
    key_range = b.op("Range", [b.const(0), capacity, b.const(1)], "pool_range")
    allowed = b.op("LessOrEqual", [key_range, b.op("Unsqueeze", [query_abs, b.const([-1])])], "pool_causal")
    weight = b.op("Cast", [b.op("Unsqueeze", [allowed, b.const([1])])], "pool_w", to=b.onnx_dtype)  # [B, 1, K, S]
    count = b.op("ReduceSum", [weight, b.const([-1])], "pool_count", keepdims=1)
    mean = b.op("Div", [b.op("MatMul", [weight, values], "pool_sum"), count], "pool_mean")  # [B, Hkv, K, D]
    mean = b.op("Transpose", [mean], "pool_t", perm=[0, 2, 1, 3])
    return b.op("Reshape", [mean, b.const([0, 0, kv_heads * head_dim])], "pooled")


def _causal_mean_at(b: _Builder, z: str, score_idx: str, query_abs: str) -> str:
    """Mean of z [B, T, F] over tokens 0..p at each score position p (a whole-conversation read, for training)."""
    total = b.op("GatherND", [b.op("CumSum", [z, b.const(1)], "cumsum"), score_idx], "cum_at", batch_dims=1)
    count = b.op("Cast", [b.op("Unsqueeze", [b.op("Add", [query_abs, b.const(1)]), b.const([-1])])], to=b.onnx_dtype)
    return b.op("Div", [total, count], "causal_mean")


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
              rotary_interleaved=0, local_window_size=int(arch.get("attention_window") or -1))
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


def build_monitor_graph(weights: Mapping[str, Any], arch: Mapping[str, Any], *,
                        float_dtype: str = "float32", max_positions: int = ROPE_POSITIONS,
                        feature_output: bool = False, layout_ids: Mapping[str, Any] | None = None,
                        accuracy_level: int = 4) -> onnx.ModelProto:
    """Build the monitor graph (inputs/outputs per docs/architecture.md, "ONNX graph contract").

    `weights` are float arrays with HF names; `arch` has `ARCH_KEYS`. `float_dtype="float16"` gives the fp16
    variant (fp16 weights, activations, KV and RoPE tables; norm statistics in float32; float32 logits).
    `max_positions` sizes the RoPE tables (positions, i.e. cache indices, must stay below it; recorded as
    `trajsafe.max_positions`, which the runtime checks against the package's context limit). `layout_ids`, the
    marker ids the model was trained with (`trajsafe_sdk.package.marker_ids`), are recorded as
    `trajsafe.layout_ids`; loading then refuses a package whose tokenizer and layout resolve to other ids.

    Projection weights may be `Q4Linear` and the embedding a `Q4Table` (weight-only 4-bit). With `head.{i}.*`
    weights, the labels come from a feature head over the outputs of `arch["feature_layers"]` at the score
    positions (a frozen pretrained trunk with a trained head); without, from the tied label-token rows after the
    final norm. `feature_output=True` adds the output `features` (the head's normalised input), for training.
    `accuracy_level` is `MatMulNBits`'s: 4 computes with int8 activations quantised per token and block (fast on
    CPU, and the same for a token however the conversation is batched or split), 0 in float.
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
    embed = weights["model.embed_tokens.weight"]
    if hidden != embed.shape[1]:
        raise ValueError(f"hidden_size {hidden} does not match the embedding width {embed.shape[1]}")
    feature_head = any(k.startswith("head.") for k in weights)
    feature_layers = [int(i) for i in arch.get("feature_layers", [n_layers - 1])]
    trunk = n_layers - 1 if arch.get("pool_layers") else n_layers
    if feature_head and (not feature_layers or not all(0 <= i < trunk for i in feature_layers)):
        raise ValueError(f"feature_layers {feature_layers} must name layers 0..{trunk - 1}")
    if not all(0 <= int(i) < trunk for i in arch.get("pool_layers", [])):
        raise ValueError(f"pool_layers {arch['pool_layers']} must name layers 0..{trunk - 1}")

    def w(name: str) -> np.ndarray:
        return np.asarray(weights[name], dtype=np.float32)

    def fused(*names: str, factor: float = 1.0) -> np.ndarray | Q4Linear:
        """The rows of several projections in one weight (q/k/v, gate/up), q scaled by `factor`."""
        parts = [weights[n] for n in names]
        if all(isinstance(p, Q4Linear) for p in parts):
            return Q4Linear.stack([p.scaled(factor) if j == 0 else p for j, p in enumerate(parts)])
        dense = [p.dequantize() if isinstance(p, Q4Linear) else np.asarray(p, np.float32) for p in parts]
        dense[0] = dense[0] * np.float32(factor)
        return np.concatenate(dense)

    cache_dims = ["batch", kv_heads, "capacity", head_dim]
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "new_tokens"]),
        helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, ["batch"]),
        helper.make_tensor_value_info("total_sequence_length", TensorProto.INT32, []),
        helper.make_tensor_value_info("score_positions", TensorProto.INT64, ["batch", "num_scores"]),
    ]
    outputs = [helper.make_tensor_value_info("label_logits", TensorProto.FLOAT, ["batch", "num_scores", NUM_LABELS])]
    if feature_output:
        outputs.append(helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", "num_scores", "dim"]))
        if arch.get("pool_layers"):
            outputs.append(helper.make_tensor_value_info("pooled_inputs", TensorProto.FLOAT,
                                                         ["batch", "num_scores", "pool_dim"]))
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

    x = _embedding(b, embed, "input_ids")
    score_idx = b.op("Unsqueeze", ["score_positions", b.const([-1])], "score_idx")  # [B, K, 1]
    kv_size = kv_heads * head_dim
    features: list[str] = []
    pool_layers = [int(i) for i in arch.get("pool_layers", [])]  # the last layer is then the trajectory pool
    n_trunk = n_layers - 1 if pool_layers else n_layers
    pool_inputs: list[str] = []

    for i in range(n_trunk):
        p = f"model.layers.{i}."
        h = _rms_norm(b, x, w(p + "input_layernorm.weight"), eps, f"layers.{i}.input_norm")
        q_name, k_name, v_name = (p + f"self_attn.{n}_proj.weight" for n in "qkv")
        if i == n_layers - 1:  # keys/values for every token, queries (and all that follows) only at score positions
            kv = _linear(b, h, fused(k_name, v_name), f"layers.{i}.kv_proj", accuracy_level)
            k, v = b.op("Split", [kv, b.const([kv_size, kv_size])], "kv_split", outputs=2, axis=-1)
            h_q = b.op("GatherND", [h, score_idx], "h_scores", batch_dims=1)
            q = _linear(b, h_q, fused(q_name, factor=scale), f"layers.{i}.q_proj", accuracy_level)
            x = b.op("GatherND", [x, score_idx], "x_scores", batch_dims=1)
            attn = _last_layer_attention(b, q, k, v, i, arch, cache_pos, query_abs)
        else:
            qkv = _linear(b, h, fused(q_name, k_name, v_name, factor=scale), f"layers.{i}.qkv_proj",
                          accuracy_level)
            attn = _gqa_layer_attention(b, qkv, i, arch)
        o_proj = _linear(b, attn, weights[p + "self_attn.o_proj.weight"], f"layers.{i}.o_proj", accuracy_level)
        x = b.op("Add", [x, o_proj],
                 "resid_attn")
        h = _rms_norm(b, x, w(p + "post_attention_layernorm.weight"), eps, f"layers.{i}.post_norm")
        gu = _linear(b, h, fused(p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"), f"layers.{i}.gate_up_proj",
                     accuracy_level)
        gate, up = b.op("Split", [gu, b.const([int(arch["intermediate_size"])] * 2)], "gate_up_split", outputs=2,
                        axis=-1)
        act = b.op("Mul", [b.op("Mul", [gate, b.op("Sigmoid", [gate], "sigmoid")], "silu"), up], "gated")
        down = _linear(b, act, weights[p + "mlp.down_proj.weight"], f"layers.{i}.down_proj", accuracy_level)
        x = b.op("Add", [x, down],
                 "resid_mlp")
        if feature_head and i in feature_layers:
            features.append(x if i == n_layers - 1 else b.op("GatherND", [x, score_idx], "feat_x", batch_dims=1))
        if i in pool_layers:
            pool_inputs.append(_plain_norm(b, x, eps))

    pooled = None
    if pool_layers:
        z = pool_inputs[0] if len(pool_inputs) == 1 else b.op("Concat", pool_inputs, "pool_in", axis=-1)
        pooled = _pool_slot(b, z, weights, n_layers - 1, arch, cache_pos, query_abs)
        if feature_output:
            b.op("Cast", [_causal_mean_at(b, z, score_idx, query_abs)], outputs=["pooled_inputs"], to=TensorProto.FLOAT)
    if feature_head:
        logits, feats = _feature_head(b, features, weights, eps, pooled)
        if feature_output:
            b.op("Cast", [feats], outputs=["features"], to=TensorProto.FLOAT)
    else:
        if isinstance(embed, Q4Table):
            raise ValueError("a tied label head needs a float embedding table")
        h = _rms_norm(b, x, w("model.norm.weight"), eps, "final_norm")
        head = w("model.embed_tokens.weight")[label_ids].T.astype(fdt)  # tied embeddings, label rows only
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
    if feature_head:
        arch_json["feature_layers"] = feature_layers
    if pool_layers:
        arch_json["pool_layers"] = pool_layers
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
