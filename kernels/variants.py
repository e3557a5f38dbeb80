"""Variants of the monitor graph: fp16, dynamic int8, ORT offline optimization, and parity checks."""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from .graph import ROPE_POSITIONS, build_monitor_graph
from .quant import Q4Linear, Q4Table, unpack_nibbles

# Ops that `quantize_int8` turns into int8 (the label head and the embedding Gather stay float32).
INT8_EXCLUDED = ("label_head",)


def _weights_from_model(model: onnx.ModelProto) -> tuple[dict[str, np.ndarray], dict]:
    """Recover HF-named float32 weights and the architecture from a graph built by `build_monitor_graph`."""
    arch = json.loads({p.key: p.value for p in model.metadata_props}["trajsafe.architecture"])
    t = {init.name: numpy_helper.to_array(init).astype(np.float32) for init in model.graph.initializer}
    heads, kv, d = arch["num_heads"], arch["num_kv_heads"], arch["head_dim"]
    scale = np.float32(1.0 / np.sqrt(d))
    embed = t["embed_tokens"]
    weights = {"model.embed_tokens.weight": embed, "model.norm.weight": t["final_norm"]}
    n = arch["num_layers"]
    for i in range(n):
        p, g = f"model.layers.{i}.", f"layers.{i}."
        if i == n - 1:
            wk, wv = np.split(t[g + "kv_proj"].T, 2)
            wq = t[g + "q_proj"].T
        else:
            wq, wk, wv = np.split(t[g + "qkv_proj"].T, [heads * d, heads * d + kv * d])
        gate, up = np.split(t[g + "gate_up_proj"].T, 2)
        weights.update({
            p + "input_layernorm.weight": t[g + "input_norm"],
            p + "post_attention_layernorm.weight": t[g + "post_norm"],
            p + "self_attn.q_proj.weight": wq / scale, p + "self_attn.k_proj.weight": wk,
            p + "self_attn.v_proj.weight": wv, p + "self_attn.o_proj.weight": t[g + "o_proj"].T,
            p + "mlp.gate_proj.weight": gate, p + "mlp.up_proj.weight": up,
            p + "mlp.down_proj.weight": t[g + "down_proj"].T,
        })
    return weights, arch


def to_fp16(model_fp32: onnx.ModelProto) -> onnx.ModelProto:
    """The fp16 variant (weights, activations, KV and RoPE tables in float16; norm statistics and `label_logits` in
    float32)."""
    weights, arch = _weights_from_model(model_fp32)
    props = {p.key: p.value for p in model_fp32.metadata_props}
    layout_ids = json.loads(props["trajsafe.layout_ids"]) if "trajsafe.layout_ids" in props else None
    return build_monitor_graph(weights, arch, float_dtype="float16",
                               max_positions=int(props.get("trajsafe.max_positions", ROPE_POSITIONS)),
                               layout_ids=layout_ids)


def _q4_linear(t: Mapping[str, np.ndarray], name: str) -> Q4Linear:
    """The `Q4Linear` that `_linear` wrote as `{name}.q4` / `.scales` (/ `.offset`, absent when all zero)."""
    packed = t[name + ".q4"]  # [N, K/32, 16]
    n, blocks = packed.shape[:2]
    offset = t[name + ".offset"].T if name + ".offset" in t else np.zeros((n, blocks), np.float32)
    return Q4Linear(unpack_nibbles(packed).reshape(n, -1), t[name + ".scales"].reshape(n, blocks).astype(np.float32),
                    np.ascontiguousarray(offset, np.float32))


def q4_weights_from_model(model: onnx.ModelProto) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    """HF-named weights (`Q4Linear` projections, a `Q4Table` embedding, float norms, pool and head), the
    architecture and the trajsafe metadata of a 4-bit graph built by `build_monitor_graph` with a feature head:
    what `build_monitor_graph` needs to build the same monitor again (in another float dtype)."""
    props = {p.key: p.value for p in model.metadata_props}
    arch = json.loads(props["trajsafe.architecture"])
    t = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    if "embed_tokens.q4" not in t or not any(k.startswith("head.") for k in t):
        raise ValueError("not a 4-bit feature-head monitor graph")
    heads, kv, d, n = int(arch["num_heads"]), int(arch["num_kv_heads"]), int(arch["head_dim"]), int(arch["num_layers"])
    inv_scale = float(np.sqrt(d))  # q rows were scaled by 1/sqrt(head_dim) in the graph
    weights: dict[str, Any] = {"model.embed_tokens.weight": Q4Table(
        t["embed_tokens.q4"], t["embed_tokens.scale"], t["embed_tokens.min"], t.get("embed_tokens.index"))}
    trunk = n - 1 if arch.get("pool_layers") else n
    for i in range(trunk):
        p, g = f"model.layers.{i}.", f"layers.{i}."
        if i == n - 1:
            kv_w, q_w = _q4_linear(t, g + "kv_proj"), _q4_linear(t, g + "q_proj")
            parts = {"q": q_w.rows(0, heads * d).scaled(inv_scale), "k": kv_w.rows(0, kv * d),
                     "v": kv_w.rows(kv * d, 2 * kv * d)}
        else:
            qkv = _q4_linear(t, g + "qkv_proj")
            parts = {"q": qkv.rows(0, heads * d).scaled(inv_scale), "k": qkv.rows(heads * d, (heads + kv) * d),
                     "v": qkv.rows((heads + kv) * d, (heads + 2 * kv) * d)}
        gate_up = _q4_linear(t, g + "gate_up_proj")
        inter = int(arch["intermediate_size"])
        weights.update({f"{p}self_attn.{k}_proj.weight": w for k, w in parts.items()})
        weights.update({
            p + "self_attn.o_proj.weight": _q4_linear(t, g + "o_proj"),
            p + "mlp.gate_proj.weight": gate_up.rows(0, inter),
            p + "mlp.up_proj.weight": gate_up.rows(inter, 2 * inter),
            p + "mlp.down_proj.weight": _q4_linear(t, g + "down_proj"),
            p + "input_layernorm.weight": t[g + "input_norm"].astype(np.float32),
            p + "post_attention_layernorm.weight": t[g + "post_norm"].astype(np.float32),
        })
    for name, value in t.items():
        if name.startswith("head.") or name == "pool.weight":  # stored transposed (x @ W^T)
            weights[name] = value.astype(np.float32).T if value.ndim == 2 else value.astype(np.float32)
    return weights, arch, props


def q4_with_fp16_activations(model_q4: onnx.ModelProto) -> onnx.ModelProto:
    """The same 4-bit monitor with float16 activations, KV and RoPE tables (norm statistics and `label_logits` in
    float32): the form in which CUDA runs a q4 package, since ONNX Runtime's CUDA GroupQueryAttention has no float32
    kernel (a float32 graph would run every attention layer on the CPU). The 4-bit codes are shared bit for bit."""
    weights, arch, props = q4_weights_from_model(model_q4)
    layout_ids = json.loads(props["trajsafe.layout_ids"]) if "trajsafe.layout_ids" in props else None
    return build_monitor_graph(weights, arch, float_dtype="float16",
                               max_positions=int(props.get("trajsafe.max_positions", ROPE_POSITIONS)),
                               layout_ids=layout_ids, accuracy_level=0)


class _DropPreprocessHint(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


def quantize_int8(src_path: str | Path, dst_path: str | Path, *, per_channel: bool = True) -> Path:
    """Dynamic int8 quantization of the projection MatMul weights (embedding Gather and label head stay float).

    Weights are int8 per output channel (more accurate than per-tensor on our models); activations are
    quantized per tensor at run time (`DynamicQuantizeMatMul` / `MatMulInteger`). Weight-only int8
    (`MatMulNBits`) was more accurate but 3-6x slower on CPU for this model size, so it is not used.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(src_path))
    exclude = [n.name for n in model.graph.node
               if n.op_type == "MatMul" and any(inp in INT8_EXCLUDED for inp in n.input)]
    root = logging.getLogger()
    hint = _DropPreprocessHint()
    root.addFilter(hint)  # the "consider pre-processing" hint targets CNNs; our graph needs none
    try:
        quantize_dynamic(str(src_path), str(dst_path), weight_type=QuantType.QInt8, per_channel=per_channel,
                         op_types_to_quantize=["MatMul"], nodes_to_exclude=exclude,
                         extra_options={"MatMulConstBOnly": True})
    finally:
        root.removeFilter(hint)
    quantized = onnx.load(str(dst_path))
    del quantized.metadata_props[:]
    props = {p.key: p.value for p in model.metadata_props}
    props["trajsafe.quantization"] = "dynamic-int8-per-channel" if per_channel else "dynamic-int8"
    onnx.helper.set_model_props(quantized, props)
    onnx.save(quantized, str(dst_path))
    return Path(dst_path)


def op_counts(model: onnx.ModelProto | str | Path) -> Counter:
    """How many nodes of each op type a model has."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    return Counter(n.op_type for n in model.graph.node)


def optimize(src_path: str | Path, dst_path: str | Path, provider: str = "cpu", *, level: str = "extended") -> Path:
    """ORT offline graph optimization for one provider (`cpu` or `cuda`); writes the optimized model.

    `extended` applies ORT's fusions (SimplifiedLayerNormalization, ...) that are valid for the provider;
    the result is only portable to that provider.
    """
    import onnxruntime as ort

    levels = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}
    opts = ort.SessionOptions()
    opts.graph_optimization_level = levels[level]
    opts.optimized_model_filepath = str(dst_path)
    providers = {"cpu": ["CPUExecutionProvider"],
                 "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}[provider]
    ort.InferenceSession(str(src_path), opts, providers=providers)
    src = onnx.load(str(src_path))
    optimized = onnx.load(str(dst_path))
    del optimized.metadata_props[:]
    props = {p.key: p.value for p in src.metadata_props}
    props["trajsafe.optimized_for"] = provider
    onnx.helper.set_model_props(optimized, props)
    onnx.save(optimized, str(dst_path))
    return Path(dst_path)


def _session(model: onnx.ModelProto | str | Path, providers: list[str] | None = None):
    import onnxruntime as ort

    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, providers=providers or ["CPUExecutionProvider"])


def _cast_feeds(session, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Cast float feeds to each input's dtype (fp16 past K/V for the fp16 variant)."""
    types = {i.name: i.type for i in session.get_inputs()}
    out = {}
    for name, value in feeds.items():
        value = np.asarray(value)
        if types.get(name) == "tensor(float16)":
            value = value.astype(np.float16)
        elif types.get(name) == "tensor(float)":
            value = value.astype(np.float32)
        out[name] = value
    return out


def check_parity(model_a: onnx.ModelProto | str | Path, model_b: onnx.ModelProto | str | Path,
                 feeds: Mapping[str, np.ndarray], providers: list[str] | None = None) -> float:
    """Max abs difference of `label_logits` between two models on the same feeds."""
    results = []
    for model in (model_a, model_b):
        sess = _session(model, providers)
        results.append(sess.run(["label_logits"], _cast_feeds(sess, feeds))[0])
    return float(np.max(np.abs(results[0].astype(np.float64) - results[1])))

