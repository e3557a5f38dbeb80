"""Frozen-trunk features: the monitor graph itself (4-bit pretrained trunk, as shipped) reads each conversation once
and returns, at every assessment point, the normalised outputs of every trunk layer at that token, then the mean of
the normalised outputs of the pool layers over all tokens up to it (what the trajectory pool averages). The head is
trained on these, so training sees exactly what the runtime computes. Features are cached on disk by token ids."""

from __future__ import annotations

import hashlib
import pickle
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..kernels.graph import build_monitor_graph
from ..layout import MessageEncoder
from ..messages import Message
from .export import encode_for_reading, first_read_batches, make_session


def extraction_graph(weights: dict[str, Any], arch: dict[str, Any], path: Path) -> Path:
    """The trunk (and pool slot) with placeholder head and pool weights over every layer, and the `features` and
    `pooled_inputs` outputs."""
    layers = list(range(int(arch["num_layers"]) - 1))
    hidden, width = int(arch["hidden_size"]), int(arch["num_kv_heads"]) * int(arch["head_dim"])
    dim = hidden * len(layers) + width
    head = {"head.0.weight": np.zeros((20, dim), np.float32), "head.0.bias": np.zeros(20, np.float32),
            "pool.weight": np.zeros((width, hidden * len(arch["pool_layers"])), np.float32)}
    model = build_monitor_graph({**weights, **head}, {**arch, "feature_layers": layers}, feature_output=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def conversation_key(ids: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(ids, np.int64).tobytes(), digest_size=16).hexdigest()


def single_user_messages(convs: Sequence[list[Message]]) -> tuple[list[list[Message]], list[int]]:
    """Every user message as a conversation of its own, and the conversation each came from."""
    out, owner = [], []
    for k, msgs in enumerate(convs):
        for m in msgs:
            if m.role == "user":
                out.append([m])
                owner.append(k)
    return out, owner


class FeatureStore:
    """Features [n_assessments, trunk layers * hidden + pool layers * hidden] (float16) per conversation, keyed by
    its token ids: each trunk layer's normalised output at the assessment token, then the causal means."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.table: dict[str, np.ndarray] = {}
        if path is not None and path.is_file():
            with open(path, "rb") as f:
                self.table = pickle.load(f)

    def save(self) -> None:
        if self.path is not None:
            tmp = self.path.with_suffix(".tmp")
            with open(tmp, "wb") as f:
                pickle.dump(self.table, f, protocol=pickle.HIGHEST_PROTOCOL)
            tmp.replace(self.path)

    def extract(self, graph: Path | None, encoder: MessageEncoder, arch: dict[str, Any], convs: Sequence[list[Message]],
                max_len: int = 2048, tokens_per_batch: int = 8192, threads: int = 2,
                log: Callable[[str], None] = print) -> list[np.ndarray]:
        """Features of each conversation (only those not cached are computed)."""
        encoded = encode_for_reading(encoder, convs, max_len)
        keys = [conversation_key(ids) for ids, _ in encoded]
        todo = sorted({k: i for i, k in enumerate(keys) if k not in self.table}.values(),
                      key=lambda i: len(encoded[i][0]))
        if todo and graph is None:
            raise ValueError(f"{len(todo)} conversations are not in the feature cache {self.path} and no graph "
                             "was given to compute them")
        session = make_session(graph, threads=threads) if todo else None
        token_dims = int(arch["hidden_size"]) * (int(arch["num_layers"]) - 1)
        started, done, last_log = time.time(), 0, time.time()
        for n, (chunk, feeds) in enumerate(first_read_batches(encoded, todo, arch, tokens_per_batch)):
            feats, pooled = session.run(["features", "pooled_inputs"], feeds)
            both = np.concatenate([feats[..., :token_dims], pooled], axis=-1)
            for b, k in enumerate(chunk):
                self.table[keys[k]] = both[b, :len(encoded[k][1])].astype(np.float16)
            done += sum(len(encoded[k][0]) for k in chunk)
            if time.time() - last_log > 60:
                last_log = time.time()
                log(f"  features: batch {n + 1}, {done / (time.time() - started):.0f} tokens/s of {len(todo)} "
                    "conversations")
        return [self.table[k] for k in keys]

    def extract_corpus(self, graph: Path | None, encoder: MessageEncoder, arch: dict[str, Any],
                       convs: Sequence[list[Message]], log: Callable[[str], None] = print
                       ) -> tuple[list[np.ndarray], list[list[np.ndarray]]]:
        """Features of each conversation, and of each of its user messages read alone (what the head and the
        monotone floor are trained and evaluated on). `graph` None: everything must be cached already."""
        feats = self.extract(graph, encoder, arch, convs, log=log)
        singles, owner = single_user_messages(convs)
        per_conversation: list[list[np.ndarray]] = [[] for _ in convs]
        for k, f in zip(owner, self.extract(graph, encoder, arch, singles, log=log), strict=True):
            per_conversation[k].append(f)
        return feats, per_conversation
