"""Reading an exported monitor graph with ONNX Runtime: whole-conversation and KV-incremental feeds, sessions."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..core import length_feeds
from ..kernels.graph import empty_past
from ..layout import MessageEncoder
from ..messages import Message


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
