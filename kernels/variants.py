"""Variants of the monitor graph: fp16, dynamic int8, ORT offline optimization, and parity checks."""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from .graph import ROPE_POSITIONS, build_monitor_graph

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

