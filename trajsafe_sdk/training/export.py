"""Export of a trained monitor: ONNX variants via the kernels builder, parity against PyTorch, the package."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from ..core import length_feeds
from ..kernels.graph import build_monitor_graph, empty_past
from ..kernels.variants import quantize_int8
from ..layout import MessageEncoder
from ..messages import Message
from ..package import write_package
from . import model as M
from .train import predict_conversations


def state_dict_numpy(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().float().numpy() for k, v in model.state_dict().items()}


def build_variants(model: torch.nn.Module, arch: dict[str, Any], work: Path,
                   variants: tuple[str, ...] = ("fp32", "int8", "fp16"),
                   layout_ids: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Write `monitor.<variant>.onnx` files under `work`; returns write_package's `onnx_files` spec.

    `layout_ids` (`trajsafe_sdk.package.marker_ids(encoder)`) are recorded in each graph, so loading refuses a
    tokenizer or layout that resolves the markers to other ids than the model was trained with.
    """
    work.mkdir(parents=True, exist_ok=True)
    weights = state_dict_numpy(model)
    fp32 = build_monitor_graph(weights, arch, float_dtype="float32", layout_ids=layout_ids)
    fp32_path = work / "monitor.fp32.onnx"
    onnx.save(fp32, str(fp32_path))
    files: dict[str, dict[str, Any]] = {}
    if "fp32" in variants:
        files["fp32"] = {"source": fp32_path, "dtype": "float32", "kv_dtype": "float32", "providers": ["cpu"]}
    if "int8" in variants:
        int8_path = work / "monitor.int8.onnx"
        quantize_int8(str(fp32_path), str(int8_path))
        files["int8"] = {"source": int8_path, "dtype": "int8", "kv_dtype": "float32", "providers": ["cpu"]}
    if "fp16" in variants:
        fp16_path = work / "monitor.fp16.onnx"
        onnx.save(build_monitor_graph(weights, arch, float_dtype="float16", layout_ids=layout_ids), str(fp16_path))
        # fp16 is parity-checked on the CPU provider (no GPU here): record only what was checked
        files["fp16"] = {"source": fp16_path, "dtype": "float16", "kv_dtype": "float16", "providers": ["cpu"]}
    return files


def kv_dtype_of(session: Any) -> str:
    for inp in session.get_inputs():
        if inp.name.startswith("past_key"):
            return "float16" if "float16" in inp.type else "float32"
    return "float32"


def encode_for_reading(encoder: MessageEncoder, convs: Sequence[list[Message]], max_len: int = 2048
                       ) -> list[tuple[np.ndarray, list[int]]]:
    """(token ids, score positions) of each whole conversation, cut at `max_len`."""
    out = []
    for msgs in convs:
        ids, positions = encoder.encode_conversation(msgs)
        out.append((ids[:max_len], [p for p in positions if p < max_len]))
    return out


def first_read_batches(encoded: Sequence[tuple[np.ndarray, list[int]]], order: Sequence[int], arch: dict[str, Any],
                       tokens_per_batch: int, kv_dtype: str = "float32"
                       ) -> Iterator[tuple[list[int], dict[str, np.ndarray]]]:
    """Feeds reading whole conversations (no past), `order` cut into batches of about `tokens_per_batch` tokens:
    right padding, which causal attention keeps out of the real tokens. Yields (indices into `encoded`, feeds)."""
    i = 0
    while i < len(order):
        j = i + 1
        while j < len(order) and len(encoded[order[j]][0]) * (j - i + 1) <= tokens_per_batch:
            j += 1
        chunk = list(order[i:j])
        t = max(len(encoded[k][0]) for k in chunk)
        ids = np.zeros((len(chunk), t), np.int64)
        score = np.zeros((len(chunk), max(1, max(len(encoded[k][1]) for k in chunk))), np.int64)
        for b, k in enumerate(chunk):
            ids[b, :len(encoded[k][0])] = encoded[k][0]
            score[b, :len(encoded[k][1])] = encoded[k][1]
        yield chunk, {"input_ids": ids, "score_positions": score, **length_feeds([0] * len(chunk), t),
                      **empty_past(arch, len(chunk), t, kv_dtype)}
        i = j


def ort_predict(session: Any, encoder: MessageEncoder, arch: dict[str, Any], convs: list[list[Message]],
                max_len: int = 2048, tokens_per_batch: int = 16384) -> list[np.ndarray]:
    """Label logits `[n_assessed, 20]` per conversation from an ORT session, whole conversation in one feed."""
    enc = encode_for_reading(encoder, convs, max_len)
    order = sorted(range(len(convs)), key=lambda i: len(enc[i][0]))
    out: list[np.ndarray] = [np.zeros((0, 20), np.float32)] * len(convs)
    for chunk, feeds in first_read_batches(enc, order, arch, tokens_per_batch, kv_dtype_of(session)):
        logits = session.run(["label_logits"], feeds)[0]
        for b, k in enumerate(chunk):
            out[k] = logits[b, :len(enc[k][1])].astype(np.float32)
    return out


def ort_incremental(session: Any, encoder: MessageEncoder, arch: dict[str, Any], msgs: list[Message]) -> np.ndarray:
    """Label logits of one conversation fed message by message with the KV cache (the runtime's path)."""
    kv = kv_dtype_of(session)
    n_layers = int(arch["num_layers"])
    chunks = [np.asarray(encoder.bos_ids, np.int64)] + [encoder.encode_message(m) for m in msgs]
    assessed = [False] + [encoder.assesses(m) for m in msgs]
    past = empty_past(arch, 1, sum(len(c) for c in chunks), kv)  # capacity for the whole conversation
    rows = []
    p = 0
    names = ["label_logits"] + [f"present_{kv_}.{i}" for i in range(n_layers) for kv_ in ("key", "value")]
    for k, chunk in enumerate(chunks):
        t = len(chunk)
        score = np.asarray([t - 1] if assessed[k] else [], np.int64)
        feeds = {"input_ids": chunk[None],
                 "score_positions": (score if len(score) else np.zeros(1, np.int64))[None].astype(np.int64),
                 **length_feeds([p], t), **past}
        res = dict(zip(names, session.run(names, feeds), strict=True))
        if len(score) and k > 0:
            rows.append(res["label_logits"][0, :len(score)])
        past = {f"past_{kv_}.{i}": res[f"present_{kv_}.{i}"] for i in range(n_layers) for kv_ in ("key", "value")}
        p += t
    return np.concatenate(rows) if rows else np.zeros((0, 20), np.float32)


def make_session(path: Path | str, provider: str = "CPUExecutionProvider", threads: int = 2) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # shared cores: wait, don't spin
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=[provider])


def check_parity(model: torch.nn.Module, encoder: MessageEncoder, arch: dict[str, Any],
                 files: dict[str, dict[str, Any]], convs: list[list[Message]], n_incremental: int = 4
                 ) -> dict[str, dict[str, Any]]:
    """Max abs diff of label logits (ONNX vs PyTorch) per variant: whole-conversation and KV-incremental feeds."""
    ref = predict_conversations(model, encoder, convs)
    report: dict[str, dict[str, Any]] = {}
    for variant, spec in files.items():
        try:
            sess = make_session(spec["source"])
        except Exception as exc:  # e.g. fp16 ops without a CPU kernel
            report[variant] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            continue
        try:
            got = ort_predict(sess, encoder, arch, convs)
            full = max((float(np.abs(a - b).max()) for a, b in zip(ref, got, strict=True) if len(a)), default=0.0)
            inc = 0.0
            for msgs, r in list(zip(convs, ref, strict=True))[:n_incremental]:
                g = ort_incremental(sess, encoder, arch, msgs)
                n = min(len(g), len(r))
                if n:
                    inc = max(inc, float(np.abs(g[:n] - r[:n]).max()))
            agree = np.mean([np.array_equal(a[:, :5].argmax(-1), b[:, :5].argmax(-1))
                             for a, b in zip(ref, got, strict=True) if len(a)])
            report[variant] = {"max_abs_diff": full, "max_abs_diff_incremental": inc,
                               "argmax_action_agreement": float(agree), "conversations": len(convs)}
        except Exception as exc:
            report[variant] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    return report


def check_optimum_export(hf_dir: Path) -> str:
    """Check that optimum's `main_export` handles the saved HF checkpoint (a check only; its output is not shipped)."""
    try:
        from optimum.exporters.onnx import main_export

        with tempfile.TemporaryDirectory() as tmp:
            t = time.time()
            main_export(str(hf_dir), output=tmp, task="text-generation-with-past", device="cpu", no_post_process=True)
            names = sorted(p.name for p in Path(tmp).glob("*.onnx"))
            return f"ok ({', '.join(names)}, {time.time() - t:.0f}s)"
    except Exception as exc:
        return f"failed: {type(exc).__name__}: {exc}"[:300]


def write_monitor_package(out_dir: Path, *, tokenizer: Any, files: dict[str, dict[str, Any]], arch: dict[str, Any],
                          policy: dict[str, float], default_variant: dict[str, str], card: str,
                          version: str = "1.0.0", extra: dict[str, Any] | None = None) -> Path:
    """`trajsafe_sdk.package.write_package` with the monitor's fixed settings (context limit 2048)."""
    return write_package(out_dir, tokenizer=tokenizer, onnx_files=files, architecture=arch, name="trajsafe-monitor",
                         version=version, context_limit=2048, policy=policy, default_variant=default_variant,
                         max_message_tokens=512, card=card, extra=extra)


def package_predictor(path: Path, encoder: MessageEncoder, arch: dict[str, Any]
                      ) -> Callable[[list[list[Message]]], list[np.ndarray]]:
    sess = make_session(path)
    return lambda convs: ort_predict(sess, encoder, arch, convs)


def arch_from_model(model: torch.nn.Module) -> dict[str, Any]:
    return M.architecture(model.config)
