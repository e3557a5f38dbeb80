"""The monitor's ONNX graph: a Llama decoder with KV in/out and a label-only head (docs/architecture.md).

The graph is built directly with `onnx.helper` (default-domain ops, opset 17) from Hugging Face
`LlamaForCausalLM` state-dict names. Design choices:

- q/k/v and gate/up projections are fused into one MatMul each (then split);
- the attention scale `1/sqrt(head_dim)` is folded into the q weights (RoPE is linear, so this is exact);
- GQA without repeating K/V: query heads are grouped per kv head, so each kv head does one larger MatMul;
- the last layer computes queries, o_proj, MLP and the final norm only at `score_positions`
  (its keys/values are still produced for every new token);
- RMSNorm is written as `Pow -> ReduceMean -> Add -> Sqrt -> Div -> Mul`, which ORT fuses into
  `SimplifiedLayerNormalization`;
- K/V are concatenated (past + new) before attention: on CPU (4 layers, hidden 256, 64 new tokens, 2048 past,
  2 threads) this measured 5.35 ms against 5.68 ms for scoring past and new keys separately
  (`split_attention=True`).
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


def rope_inv_freq(head_dim: int, theta: float) -> np.ndarray:
    """Llama's default RoPE inverse frequencies (float32, correctly rounded)."""
    exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float64) / head_dim
    return (1.0 / (float(theta) ** exponents)).astype(np.float32)


class _Builder:
    """Collects nodes and initializers with unique names."""

    def __init__(self, float_dtype: str) -> None:
        self.np_dtype, self.onnx_dtype = _DTYPES[float_dtype]
        self.float_dtype = float_dtype
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0
        self._consts: dict[tuple, str] = {}

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


def _rope(b: _Builder, x: str, cos: str, sin_signed: str, half: int, head_dim: int, out: str | None = None) -> str:
    """x*cos + rotate_half(x)*sin with rotate_half(x) = [-x2, x1]; `sin_signed` = [-sin, sin]."""
    axes = b.const([3])
    x1 = b.op("Slice", [x, b.const([0]), b.const([half]), axes], "rope_x1")
    x2 = b.op("Slice", [x, b.const([half]), b.const([head_dim]), axes], "rope_x2")
    swapped = b.op("Concat", [x2, x1], "rope_swap", axis=-1)
    terms = [b.op("Mul", [x, cos], "rope_cos"), b.op("Mul", [swapped, sin_signed], "rope_sin")]
    return b.op("Add", terms, "rope", outputs=[out] if out else 1)


def _attention_bias(b: _Builder, query_index: str, key_range: str, key_mask: str, groups: int) -> str:
    """Additive bias [B, 1, groups*Tq, S]: 0 where a query may attend a key, a large negative value elsewhere.

    `query_index` holds absolute query indices ([Tq] or [B, Tq]), `key_range` is arange(S), `key_mask`
    the bool attention mask [B, 1, S].
    """
    causal = b.op("LessOrEqual", [key_range, b.op("Unsqueeze", [query_index, b.const([-1])])], "causal")
    allowed = b.op("And", [causal, key_mask], "allowed")  # [B, Tq, S]
    allowed = b.op("Unsqueeze", [allowed, b.const([1])])
    bias = b.op("Where", [allowed, b.fconst(0.0), b.fconst(_MASK_VALUE[b.float_dtype])], "bias")
    return b.op("Tile", [bias, b.const([1, 1, groups, 1])], "bias_tiled") if groups > 1 else bias


def _attention(b: _Builder, q: str, past_k: str, past_v: str, k: str, v: str, bias: str, arch: Mapping[str, Any],
               split_sizes: str | None) -> str:
    """GQA attention for queries q [B, Tq, H, D] over past + new keys (BSNH); returns [B, Tq, H*D].

    Query heads are grouped per kv head ([B, Hkv, G*Tq, D]) so K/V are never repeated. With `split_sizes`
    ([P, T]) the past and new keys are scored separately and only the score rows are concatenated;
    otherwise K/V are concatenated first.
    """
    heads, kv_heads, head_dim = arch["num_heads"], arch["num_kv_heads"], arch["head_dim"]
    groups = heads // kv_heads
    qg = b.op("Reshape", [q, b.const([0, 0, kv_heads, groups, head_dim])], "q_groups")
    qg = b.op("Transpose", [qg], "q_t", perm=[0, 2, 3, 1, 4])
    qg = b.op("Reshape", [qg, b.const([0, kv_heads, -1, head_dim])], "q_flat")  # [B, Hkv, G*Tq, D]
    if split_sizes is None:
        keys = b.op("Concat", [past_k, k], "k_all", axis=1)
        values = b.op("Concat", [past_v, v], "v_all", axis=1)
        k_t = b.op("Transpose", [keys], "k_t", perm=[0, 2, 3, 1])  # [B, Hkv, D, S]
        v_t = b.op("Transpose", [values], "v_t", perm=[0, 2, 1, 3])  # [B, Hkv, S, D]
        scores = b.op("MatMul", [qg, k_t], "scores")
        probs = b.op("Softmax", [b.op("Add", [scores, bias], "scores_masked")], "probs", axis=-1)
        out = b.op("MatMul", [probs, v_t], "attn")
    else:
        kp_t = b.op("Transpose", [past_k], "kp_t", perm=[0, 2, 3, 1])
        kn_t = b.op("Transpose", [k], "kn_t", perm=[0, 2, 3, 1])
        vp_t = b.op("Transpose", [past_v], "vp_t", perm=[0, 2, 1, 3])
        vn_t = b.op("Transpose", [v], "vn_t", perm=[0, 2, 1, 3])
        scores = b.op("Concat", [b.op("MatMul", [qg, kp_t], "scores_past"), b.op("MatMul", [qg, kn_t], "scores_new")],
                      "scores", axis=-1)
        probs = b.op("Softmax", [b.op("Add", [scores, bias], "scores_masked")], "probs", axis=-1)
        probs_p, probs_n = b.op("Split", [probs, split_sizes], "probs_split", outputs=2, axis=-1)
        out = b.op("Add", [b.op("MatMul", [probs_p, vp_t], "attn_past"), b.op("MatMul", [probs_n, vn_t], "attn_new")],
                   "attn")
    out = b.op("Reshape", [out, b.const([0, kv_heads, groups, -1, head_dim])], "attn_groups")
    out = b.op("Transpose", [out], "attn_t", perm=[0, 3, 1, 2, 4])  # [B, Tq, Hkv, G, D]
    return b.op("Reshape", [out, b.const([0, 0, heads * head_dim])], "attn_flat")


def build_monitor_graph(weights: Mapping[str, np.ndarray], arch: Mapping[str, Any], *,
                        float_dtype: str = "float32", split_attention: bool = False) -> onnx.ModelProto:
    """Build the monitor graph (inputs/outputs per docs/architecture.md, "ONNX graph contract").

    `weights` are float arrays with HF names; `arch` has `ARCH_KEYS`. `float_dtype="float16"` gives the fp16
    variant (fp16 weights, activations and KV; norm statistics and RoPE tables in float32; float32 logits).
    `split_attention` scores past and new keys separately instead of concatenating K/V (slower on CPU in
    our measurements, kept for comparison).
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
    groups, half = heads // kv_heads, head_dim // 2
    scale = 1.0 / np.sqrt(head_dim)

    def w(name: str) -> np.ndarray:
        return np.asarray(weights[name], dtype=np.float32)

    kv_dims = ["batch", "past_tokens", kv_heads, head_dim]
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "new_tokens"]),
        helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "new_tokens"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total_tokens"]),
        helper.make_tensor_value_info("score_positions", TensorProto.INT64, ["batch", "num_scores"]),
    ]
    for i in range(n_layers):
        inputs.append(helper.make_tensor_value_info(f"past_key.{i}", b.onnx_dtype, kv_dims))
        inputs.append(helper.make_tensor_value_info(f"past_value.{i}", b.onnx_dtype, kv_dims))
    new_dims = ["batch", "new_tokens", kv_heads, head_dim]
    outputs = [helper.make_tensor_value_info("label_logits", TensorProto.FLOAT, ["batch", "num_scores", NUM_LABELS])]
    for i in range(n_layers):
        outputs.append(helper.make_tensor_value_info(f"new_key.{i}", b.onnx_dtype, new_dims))
        outputs.append(helper.make_tensor_value_info(f"new_value.{i}", b.onnx_dtype, new_dims))

    # Shapes: T new tokens, S = P + T keys.
    zero_d = b.const([0])
    total = b.op("Squeeze", [b.op("Shape", ["attention_mask"], "shape_s", start=1, end=2), zero_d], "total")
    new = b.op("Squeeze", [b.op("Shape", ["input_ids"], "shape_t", start=1, end=2), zero_d], "new")
    past = b.op("Sub", [total, new], "past")
    one, zero = b.const(1), b.const(0)
    key_range = b.op("Range", [zero, total, one], "key_range")  # [S]
    key_mask = b.op("Unsqueeze", [b.op("Cast", ["attention_mask"], "mask_bool", to=TensorProto.BOOL), b.const([1])])
    split_sizes = None
    if split_attention:
        split_sizes = b.op("Concat", [b.op("Unsqueeze", [past, zero_d]), b.op("Unsqueeze", [new, zero_d])],
                           "split_sizes", axis=0)
    bias = _attention_bias(b, b.op("Range", [past, total, one], "query_range"), key_range, key_mask, groups)

    # RoPE tables [B, T, 1, D] (computed in float32, like transformers).
    pos = b.op("Unsqueeze", [b.op("Cast", ["position_ids"], "pos_f", to=TensorProto.FLOAT), b.const([-1])])
    freqs = b.op("Mul", [pos, b.const(rope_inv_freq(head_dim, arch["rope_theta"]), np.float32)], "freqs")
    cos = b.op("Cos", [b.op("Concat", [freqs, freqs], "emb", axis=-1)], "cos")
    sin = b.op("Sin", [freqs], "sin")
    sin_signed = b.op("Concat", [b.op("Neg", [sin], "neg_sin"), sin], "sin_signed", axis=-1)
    if float_dtype != "float32":
        cos = b.op("Cast", [cos], "cos_cast", to=b.onnx_dtype)
        sin_signed = b.op("Cast", [sin_signed], "sin_cast", to=b.onnx_dtype)
    cos = b.op("Unsqueeze", [cos, b.const([2])], "cos4")
    sin_signed = b.op("Unsqueeze", [sin_signed, b.const([2])], "sin4")

    embed = w("model.embed_tokens.weight")
    x = b.op("Gather", [b.init("embed_tokens", embed.astype(fdt)), "input_ids"], "embed", axis=0)
    score_idx = b.op("Unsqueeze", ["score_positions", b.const([-1])], "score_idx")  # [B, K, 1]

    for i in range(n_layers):
        p = f"model.layers.{i}."
        last = i == n_layers - 1
        h = _rms_norm(b, x, w(p + "input_layernorm.weight"), eps, f"layers.{i}.input_norm")
        wq = w(p + "self_attn.q_proj.weight") * np.float32(scale)
        wk, wv = w(p + "self_attn.k_proj.weight"), w(p + "self_attn.v_proj.weight")
        kv_size = kv_heads * head_dim
        if last:  # keys/values for every token, queries only at score positions
            kv = b.op("MatMul", [h, b.init(f"layers.{i}.kv_proj", np.concatenate([wk, wv]).T.astype(fdt))], "kv")
            k, v = b.op("Split", [kv, b.const([kv_size, kv_size])], "kv_split", outputs=2, axis=-1)
            h_q = b.op("GatherND", [h, score_idx], "h_scores", batch_dims=1)
            q = b.op("MatMul", [h_q, b.init(f"layers.{i}.q_proj", wq.T.astype(fdt))], "q")
            q_cos = b.op("GatherND", [cos, score_idx], "cos_scores", batch_dims=1)
            q_sin = b.op("GatherND", [sin_signed, score_idx], "sin_scores", batch_dims=1)
            x = b.op("GatherND", [x, score_idx], "x_scores", batch_dims=1)
            q_bias = _attention_bias(b, b.op("Add", ["score_positions", past], "score_abs"), key_range, key_mask,
                                     groups)
        else:
            qkv = b.op("MatMul", [h, b.init(f"layers.{i}.qkv_proj", np.concatenate([wq, wk, wv]).T.astype(fdt))],
                       "qkv")
            q, k, v = b.op("Split", [qkv, b.const([heads * head_dim, kv_size, kv_size])], "qkv_split", outputs=3,
                           axis=-1)
            q_cos, q_sin, q_bias = cos, sin_signed, bias
        q = b.op("Reshape", [q, b.const([0, 0, heads, head_dim])], "q4")
        q = _rope(b, q, q_cos, q_sin, half, head_dim)
        k = b.op("Reshape", [k, b.const([0, 0, kv_heads, head_dim])], "k4")
        k = _rope(b, k, cos, sin_signed, half, head_dim, out=f"new_key.{i}")
        v = b.op("Reshape", [v, b.const([0, 0, kv_heads, head_dim])], outputs=[f"new_value.{i}"])
        attn = _attention(b, q, f"past_key.{i}", f"past_value.{i}", k, v, q_bias, arch, split_sizes)
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

    if n_layers == 0:
        x = b.op("GatherND", [x, score_idx], "x_scores", batch_dims=1)
    h = _rms_norm(b, x, w("model.norm.weight"), eps, "final_norm")
    head = embed[label_ids].T.astype(fdt)  # tied embeddings, label rows only: [hidden, 20]
    logits = b.op("MatMul", [h, b.init("label_head", head)], "label_head")
    b.op("Cast", [logits], outputs=["label_logits"], to=TensorProto.FLOAT)

    graph = helper.make_graph(b.nodes, "trajsafe_monitor", inputs, outputs, initializer=b.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="trajsafe_sdk")
    model.ir_version = 8
    arch_json = {k: arch[k] for k in ARCH_KEYS}
    arch_json["label_token_ids"] = label_ids
    helper.set_model_props(model, {"trajsafe.architecture": json.dumps(arch_json), "trajsafe.float_dtype": float_dtype,
                                   "trajsafe.kv_layout": "BSNH"})
    if hidden != embed.shape[1]:
        raise ValueError(f"hidden_size {hidden} does not match the embedding width {embed.shape[1]}")
    return model


def empty_past(arch: Mapping[str, Any], batch: int, float_dtype: str = "float32") -> dict[str, np.ndarray]:
    """Zero-length `past_key.{i}` / `past_value.{i}` feeds (P = 0) for an architecture dict."""
    shape = (batch, 0, int(arch["num_kv_heads"]), int(arch["head_dim"]))
    dtype = _DTYPES[float_dtype][0]
    feeds = {}
    for i in range(int(arch["num_layers"])):
        feeds[f"past_key.{i}"] = np.zeros(shape, dtype)
        feeds[f"past_value.{i}"] = np.zeros(shape, dtype)
    return feeds
