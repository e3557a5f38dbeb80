"""The inference core: a monitor on ONNX Runtime and KV-cached trajectory sessions.

A `TrajectorySession` keeps one conversation's key/value cache in preallocated buffers (layout BNSH, grown by
doubling, never concatenated per turn). Each new message costs only its own tokens: the graph takes the buffers
whole and writes the new tokens' keys/values in place after the cached prefix (`present_*` bound to `past_*`).

Context overflow policy: when the next message no longer fits `context_limit`, the session re-encodes once a window
made of the leading system message(s) plus the most recent messages that fit in `WINDOW_FRACTION` of the context
(3/4, leaving room for the next turns before the next re-encode); system messages take only what leaves room for the
newest message. Messages are read as if they came one by one: a long history given at once (a first read, a rebuild
after eviction) is read in as many runs as the windows need, and every message gets its Assessment. The full
transcript is kept.

Fail closed: label logits that are not finite (NaN, or inf from an fp16 overflow) are a `MonitorError`, never scores.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import onnxruntime as ort

from .errors import MessageError, MonitorError, PackageError, ProviderError
from .labels import ACTIONS, CATEGORIES
from .layout import MessageEncoder
from .messages import Message, normalize_messages
from .package import MonitorPackage, check_graph_metadata
from .runtime import open_session, resolve_provider, runtime_graph

N_ACT, N_CAT = len(ACTIONS), len(CATEGORIES)
log = logging.getLogger("trajsafe_sdk")
KV_DTYPES = {"float32": np.float32, "float16": np.float16}
CUDA_ROW_WORKERS = 8  # continuing turns of a batch run as concurrent single-row runs on CUDA (each is launch-bound)
WINDOW_FRACTION = 0.75  # share of the context a re-encoded window may fill


@dataclass(repr=False)
class Assessment:
    """The monitor's raw reading after one message (before the policy turns it into a Decision).

    `action_scores` / `category_scores` are probability arrays in `ACTIONS` / `CATEGORIES` order (`to_dict()` labels
    them). `tokens` counts the tokens read for this message: its own, plus any unassessed (system, tool) messages
    and `<|bos|>` read before it in the same run. `latency_ms` is the wall time of the run that read it.
    """

    message_index: int
    role: str
    action_scores: np.ndarray
    category_scores: np.ndarray
    risk: float
    tokens: int
    latency_ms: float
    partial: bool = False
    alone_action_scores: np.ndarray | None = None  # the same user message read alone (Monitor.alone_floor)
    alone_risk: float | None = None  # that reading's risk (None: not read, or not given)
    alone_reader: Callable[[], tuple[np.ndarray, float]] | None = field(default=None, compare=False)  # on demand

    def alone_scores(self) -> np.ndarray | None:
        """Action scores of this message read alone: as given, or read now (once) by `alone_reader`, which also
        sets `alone_risk`; None when there is nothing to read (not a user message after the first, or
        `Monitor(alone_floor=False)`)."""
        if self.alone_action_scores is None and self.alone_reader is not None:
            (self.alone_action_scores, self.alone_risk), self.alone_reader = self.alone_reader(), None
        if self.alone_action_scores is not None and not (
                np.isfinite(self.alone_action_scores).all() and np.isfinite(self.alone_risk or 0.0)):
            raise MonitorError("the message read alone has non-finite scores (NaN or inf); they cannot be used")
        return self.alone_action_scores

    @property
    def category(self) -> str:
        return CATEGORIES[int(np.argmax(self.category_scores))]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with the scores labelled: `{"action_scores": {"allow": 0.97, ...}, ...}`."""
        return {"message_index": self.message_index, "role": self.role, "category": self.category,
                "risk": round(float(self.risk), 6),
                "action_scores": {a: round(float(p), 6) for a, p in zip(ACTIONS, self.action_scores, strict=True)},
                "category_scores": {c: round(float(p), 6)
                                    for c, p in zip(CATEGORIES, self.category_scores, strict=True)},
                "tokens": self.tokens, "latency_ms": round(float(self.latency_ms), 3), "partial": self.partial}

    def __repr__(self) -> str:
        actions = ", ".join(f"{a}={float(p):.3f}" for a, p in zip(ACTIONS, self.action_scores, strict=True))
        top = float(np.max(self.category_scores))
        return (f"Assessment(message {self.message_index} ({self.role}), risk={self.risk:.3f}, "
                f"category={self.category} ({top:.3f}), actions: {actions}, tokens={self.tokens}, "
                f"latency_ms={self.latency_ms:.2f}{', partial' if self.partial else ''})")


def length_feeds(past_lengths: Sequence[int], new_tokens: int) -> dict[str, np.ndarray]:
    """`seqlens_k` (P + T - 1 per row) and `total_sequence_length` (max P + T) for rows with past lengths P."""
    past = np.asarray(past_lengths, np.int32).reshape(-1)
    return {"seqlens_k": (past + np.int32(new_tokens - 1)).astype(np.int32),
            "total_sequence_length": np.array(int(past.max(initial=0)) + new_tokens, np.int32)}


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def split_label_logits(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Label logits [..., 20] -> (action probs, category probs, risk = p(harm))."""
    logits = logits.astype(np.float64)
    actions = _softmax(logits[..., :N_ACT])
    cats = _softmax(logits[..., N_ACT:N_ACT + N_CAT])
    risk = _softmax(logits[..., N_ACT + N_CAT:])[..., 1]
    return actions, cats, risk


class KVCache:
    """Per-layer key and value buffers [1, Hkv, capacity, D] (BNSH) holding `length` valid positions.

    The graph takes each buffer whole and writes the new tokens' keys/values after the prefix in place (its
    `present_*` outputs are bound to the same memory), so a turn never copies the cached prefix. Buffers are zeroed
    when allocated: the graph's last layer reads the unused capacity under a zero-weight mask, which needs finite
    values. `read`/`write` exchange token-major arrays [n, Hkv, D].
    """

    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, dtype: type, capacity: int = 128,
                 max_capacity: int | None = None) -> None:
        self.num_kv_heads, self.head_dim = num_kv_heads, head_dim
        self.max_capacity = max_capacity  # growth stops at the context limit (a request past it is still honoured)
        self.num_layers = num_layers
        self.dtype = dtype
        self.length = 0
        self.keys: list[np.ndarray] = []
        self.values: list[np.ndarray] = []
        self._allocate(capacity)

    def _allocate(self, capacity: int) -> None:
        old_k, old_v, n = self.keys, self.values, self.length
        shape = (1, self.num_kv_heads, capacity, self.head_dim)
        self.keys = [np.zeros(shape, self.dtype) for _ in range(self.num_layers)]
        self.values = [np.zeros(shape, self.dtype) for _ in range(self.num_layers)]
        for new, old in zip(self.keys + self.values, old_k + old_v, strict=False):
            new[:, :, :n] = old[:, :, :n]

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2] if self.keys else 0

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.keys + self.values)

    def reserve(self, total: int) -> None:
        """Make room for `total` positions (geometric growth: amortised O(1) per token)."""
        if total > self.capacity:
            doubled = 2 * self.capacity
            if self.max_capacity is not None:
                doubled = min(doubled, self.max_capacity)
            self._allocate(max(total, doubled))

    def truncate(self, length: int) -> None:
        self.length = min(self.length, length)

    def release(self) -> None:
        """Free the buffers (the owner re-feeds its transcript before the next use)."""
        self.keys, self.values, self.length = [], [], 0

    def bind(self, binding: ort.IOBinding, layer: int) -> None:
        """Bind the whole buffers as `past_*` and as `present_*` (same memory: the graph updates them in place)."""
        for kind, buffers in (("key", self.keys), ("value", self.values)):
            buf = buffers[layer]
            binding.bind_cpu_input(f"past_{kind}.{layer}", buf)
            binding.bind_output(f"present_{kind}.{layer}", "cpu", 0, buf.dtype, list(buf.shape), buf.ctypes.data)

    def read(self, layer: int, kind: str) -> np.ndarray:
        """The valid prefix [length, Hkv, D] (a view; batched runs and forks copy it)."""
        return (self.keys if kind == "key" else self.values)[layer][0, :, : self.length].transpose(1, 0, 2)

    def write(self, layer: int, kind: str, start: int, values: np.ndarray) -> None:
        """Store `values` [n, Hkv, D] at positions start .. start+n-1."""
        buf = (self.keys if kind == "key" else self.values)[layer]
        buf[0, :, start : start + len(values)] = np.asarray(values).transpose(1, 0, 2)


class DeviceKVCache(KVCache):
    """A KV cache in ONNX Runtime-owned buffers on a device (CUDA), bound by pointer with IO binding: never copied
    to the host per turn.

    Capacity is fixed at allocation (the context limit), so no growth copy is ever needed on the device.
    `device="cpu"` runs the same code on host memory (tests of this path on machines without a GPU).
    """

    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, dtype: type, capacity: int,
                 device_id: int = 0, device: str = "cuda") -> None:
        self.device, self.device_id = device, device_id
        super().__init__(num_layers, num_kv_heads, head_dim, dtype, capacity)

    def _allocate(self, capacity: int) -> None:
        zeros = np.zeros((1, self.num_kv_heads, capacity, self.head_dim), self.dtype)  # finite (see KVCache)

        def buffer() -> ort.OrtValue:
            value = ort.OrtValue.ortvalue_from_shape_and_type(zeros.shape, self.dtype, self.device, self.device_id)
            value.update_inplace(zeros)
            return value

        self.keys = [buffer() for _ in range(self.num_layers)]
        self.values = [buffer() for _ in range(self.num_layers)]
        self._capacity = capacity

    @property
    def capacity(self) -> int:
        return self._capacity if self.keys else 0

    @property
    def nbytes(self) -> int:
        return 2 * self.num_layers * self.capacity * self.num_kv_heads * self.head_dim * np.dtype(self.dtype).itemsize

    def reserve(self, total: int) -> None:
        if total > self.capacity:
            raise MonitorError(f"device KV cache full ({self.capacity} positions); the session re-windows first")

    def bind(self, binding: ort.IOBinding, layer: int) -> None:
        shape = [1, self.num_kv_heads, self.capacity, self.head_dim]
        for kind, buffers in (("key", self.keys), ("value", self.values)):
            ptr = buffers[layer].data_ptr()
            binding.bind_input(f"past_{kind}.{layer}", self.device, self.device_id, self.dtype, shape, ptr)
            binding.bind_output(f"present_{kind}.{layer}", self.device, self.device_id, self.dtype, shape, ptr)

    def read(self, layer: int, kind: str) -> np.ndarray:
        return (self.keys if kind == "key" else self.values)[layer].numpy()[0, :, : self.length].transpose(1, 0, 2)

    def write(self, layer: int, kind: str, start: int, values: np.ndarray) -> None:
        buffers = self.keys if kind == "key" else self.values
        host = buffers[layer].numpy()
        host[0, :, start : start + len(values)] = np.asarray(values).transpose(1, 0, 2)
        buffers[layer].update_inplace(host)


BLOCK_FROM = ACTIONS.index("refuse")
ALONE_BATCH = 16  # user messages read alone per run (the monotone-escalation floor)


def floor_action_scores(context: np.ndarray, alone: np.ndarray) -> np.ndarray:
    """Action probabilities `[..., 5]` of a trajectory reading with P(>= refuse) and P(>= terminate) raised to at
    least those of the same message read alone (lower rungs keep the trajectory's own mass, raised only where the
    cumulative curve must stay monotone). Any threshold ladder over the result is at least as severe as on `alone`
    at refuse/terminate level, and as on `context` everywhere."""
    cum = np.cumsum(context[..., ::-1], axis=-1)[..., ::-1]
    cum_alone = np.cumsum(alone[..., ::-1], axis=-1)[..., ::-1]
    if np.all(cum_alone[..., BLOCK_FROM:] <= cum[..., BLOCK_FROM:]):
        return np.array(context, dtype=np.float64)  # nothing to raise: the trajectory reading as it is
    cum[..., BLOCK_FROM:] = np.maximum(cum[..., BLOCK_FROM:], cum_alone[..., BLOCK_FROM:])
    cum[..., :BLOCK_FROM] = np.maximum(cum[..., :BLOCK_FROM], cum[..., BLOCK_FROM:BLOCK_FROM + 1])
    nxt = np.concatenate([cum[..., 1:], np.zeros_like(cum[..., :1])], axis=-1)
    return np.clip(cum - nxt, 0.0, 1.0)


def ceiling_action_scores(context: np.ndarray, alone: np.ndarray) -> np.ndarray:
    """Action probabilities `[..., 5]` of the milder of two readings at every rung: P(>= a) is the lower of the
    trajectory's and the message read alone's, so any threshold ladder over the result is no more severe than on
    either reading."""
    cum = np.minimum(np.cumsum(context[..., ::-1], axis=-1)[..., ::-1], np.cumsum(alone[..., ::-1], axis=-1)[..., ::-1])
    nxt = np.concatenate([cum[..., 1:], np.zeros_like(cum[..., :1])], axis=-1)
    return np.clip(cum - nxt, 0.0, 1.0)


class Monitor:
    """A loaded monitor package on one ONNX Runtime session (thread-safe to share).

    `alone_floor` (default on): every user Assessment after a conversation's first message can read its message
    alone (`Assessment.alone_scores()`, one more cache-free run, done only when asked): the policy floors a
    conversation that already looks harmful with it (`Policy.decide`).
    """

    def __init__(self, package: MonitorPackage, provider: str = "auto", variant: str | None = None,
                 threads: int | None = None, alone_floor: bool = True) -> None:
        self.package = package
        self.alone_floor = alone_floor
        self.encoder: MessageEncoder = package.encoder()
        arch = package.architecture
        self.num_layers = int(arch["num_layers"])
        self.num_kv_heads = int(arch["num_kv_heads"])
        self.head_dim = int(arch["head_dim"])
        self.context_limit = package.context_limit
        self.requested_provider = provider
        target = resolve_provider(provider)  # 'auto' -> 'cuda' where CUDA really runs
        try:
            self._open(variant, target, threads)
        except (ProviderError, PackageError):
            if provider != "auto" or target != "cuda":
                raise
            log.info("provider auto: the model did not open on CUDA, using CPU", exc_info=True)
            self._open(variant, "cpu", threads)
        self._check_graph()  # the KV inputs match the manifest (or the derived graph): their dtype is the cache's
        past = next(i for i in self.ort_session.get_inputs() if i.name == "past_key.0")
        self.kv_dtype = KV_DTYPES["float16" if past.type == "tensor(float16)" else "float32"]
        # Rows that must run one at a time (GroupQueryAttention) run concurrently on CUDA, where one row's run is
        # bound by kernel launches, not by the GPU; on the CPU they would only compete for the same cores.
        self.row_workers = CUDA_ROW_WORKERS if self.provider == "cuda" else 1
        self._row_pool: ThreadPoolExecutor | None = None
        self._row_pool_lock = threading.Lock()

    def _open(self, variant: str | None, provider: str, threads: int | None) -> None:
        """Open the variant (default: the package's for `provider`) on exactly `provider`, as `runtime_graph`
        gives it."""
        chosen = variant or self.package.default_variant(provider)
        path = self.package.onnx_path(chosen)
        try:  # deriving the CUDA form reads the file too: a file neither can read is a PackageError
            source, self.activations = runtime_graph(self.package, chosen, provider)
            self.ort_session = open_session(source, provider, threads)
        except Exception as exc:
            if isinstance(exc, PackageError) or exc.__class__.__module__.startswith("trajsafe_sdk"):
                raise
            raise PackageError(f"{path}: cannot load this model ({exc})") from exc
        self.provider, self.variant = provider, chosen

    @classmethod
    def load(cls, path: str | Path | None = None, provider: str = "auto", variant: str | None = None,
             threads: int | None = None, alone_floor: bool = True) -> Monitor:
        """Load a package folder (default: the embedded monitor) on `provider` ('auto', 'cpu' or 'cuda')."""
        return cls(MonitorPackage.load(path), provider=provider, variant=variant, threads=threads,
                   alone_floor=alone_floor)

    def _check_graph(self) -> None:
        """The graph follows the contract and matches the package (checked at load, not on first use)."""
        inputs = {i.name for i in self.ort_session.get_inputs()}
        expected = {"input_ids", "seqlens_k", "total_sequence_length", "score_positions"}
        expected |= {f"past_{kind}.{i}" for i in range(self.num_layers) for kind in ("key", "value")}
        if inputs != expected:
            hint = " (a package exported before the in-place BNSH cache: re-export it)" \
                if "attention_mask" in inputs else ""
            raise PackageError(f"{self.package.path}: ONNX inputs {sorted(inputs)} do not match the graph contract "
                               f"(expected {sorted(expected)}) for {self.num_layers} layers{hint}")
        meta = self.ort_session.get_modelmeta().custom_metadata_map
        check_graph_metadata(self.package, self.variant,
                             {i.name: (list(i.shape), i.type) for i in self.ort_session.get_inputs()}, meta,
                             activations=self.activations)
        try:
            self.max_positions = int(meta.get("trajsafe.max_positions", 0)) or None
        except ValueError as exc:
            raise PackageError(f"{self.package.path}: unreadable trajsafe.max_positions in the graph ({exc})") from exc
        if self.max_positions and self.context_limit > self.max_positions:
            raise PackageError(f"{self.package.path}: context_limit {self.context_limit} exceeds the graph's RoPE "
                               f"tables ({self.max_positions} positions)")

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * np.dtype(self.kv_dtype).itemsize

    def new_session(self) -> TrajectorySession:
        return TrajectorySession(self)

    def new_cache(self, capacity: int = 128) -> KVCache:
        """An empty cache: host memory on CPU (grows by doubling), device memory on CUDA (context-sized)."""
        if self.provider == "cuda":
            return DeviceKVCache(self.num_layers, self.num_kv_heads, self.head_dim, self.kv_dtype, self.context_limit)
        return KVCache(self.num_layers, self.num_kv_heads, self.head_dim, self.kv_dtype, capacity,
                       max_capacity=self.context_limit)

    # -- running the graph -------------------------------------------------------------------------------------
    def run(self, caches: Sequence[KVCache], new_ids: Sequence[np.ndarray],
            score_positions: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """Feed `new_ids[b]` after `caches[b]` for a batch; write new keys/values into the caches.

        Returns, per row, the label logits [K_b, 20] at `score_positions[b]` (indices into the new tokens).
        Rows are run in one batch only when no cache holds a prefix yet (first reads): the graph's attention
        (GroupQueryAttention) takes a batch of several new tokens after a past only one row at a time, and a row
        run on its own updates its cache in place.
        """
        if len(caches) > 1 and not any(c.length for c in caches) \
                and not any(isinstance(c, DeviceKVCache) for c in caches):  # device caches stay on the device
            out = self._run_batch(caches, new_ids, score_positions)
        else:
            out = self._run_rows(caches, new_ids, score_positions)
        return self._finite(out)

    def _run_rows(self, caches: Sequence[KVCache], new_ids: Sequence[np.ndarray],
                  score_positions: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """One run per row, `row_workers` at a time (each row's cache is its own; a cache listed twice runs in
        order)."""
        rows = list(zip(caches, new_ids, score_positions, strict=True))
        if self.row_workers < 2 or len(rows) < 2 or len({id(c) for c in caches}) < len(caches):
            return [self._run_single(*row) for row in rows]
        with self._row_pool_lock:
            if self._row_pool is None:
                self._row_pool = ThreadPoolExecutor(self.row_workers, thread_name_prefix="trajsafe-rows")
        return list(self._row_pool.map(lambda row: self._run_single(*row), rows))

    def _finite(self, logits: list[np.ndarray]) -> list[np.ndarray]:
        """`logits` as they are; fail closed on any NaN or inf: a broken reading is never a low risk."""
        if not all(np.isfinite(lg).all() for lg in logits):
            raise MonitorError(f"the monitor returned non-finite label logits (NaN or inf) on {self.provider} "
                               f"({self.variant}); the scores cannot be used")
        return logits

    def _run_single(self, cache: KVCache, ids: np.ndarray, positions: Sequence[int]) -> np.ndarray:
        past, t = cache.length, len(ids)
        if self.max_positions and past + t > self.max_positions:
            raise MonitorError(f"{past + t} positions exceed the graph's RoPE tables ({self.max_positions})")
        cache.reserve(past + t)
        k = max(1, len(positions))
        feeds: dict[str, Any] = {
            "input_ids": ids.reshape(1, t),
            "score_positions": np.asarray(list(positions) or [t - 1], np.int64).reshape(1, k),
            **length_feeds([past], t),
        }
        binding = self.ort_session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        for i in range(self.num_layers):
            cache.bind(binding, i)
        binding.bind_output("label_logits", "cpu")
        try:
            self.ort_session.run_with_iobinding(binding)
        except Exception as exc:
            raise MonitorError(f"onnxruntime failed while scoring ({self.provider}): {exc}") from exc
        cache.length = past + t
        logits = binding.get_outputs()[-1].numpy()[0]  # bound last
        return logits[: len(positions)]

    def read_alone(self, messages: Sequence[Message]) -> list[np.ndarray]:
        """Label logits [20] of each message read as a conversation of its own (batched runs, no cache kept)."""
        bos = np.asarray(self.encoder.bos_ids, np.int64)
        return self.read_alone_ids([np.concatenate([bos, self.encoder.encode_message(m)]) for m in messages])

    def read_alone_ids(self, sequences: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Label logits [20] at the last token of each id sequence, read from scratch (batched, no cache kept)."""
        out: list[np.ndarray] = []
        for start in range(0, len(sequences), ALONE_BATCH):
            ids = list(sequences[start:start + ALONE_BATCH])
            out += [lg[0] for lg in self._finite(self._run_batch(None, ids, [[len(x) - 1] for x in ids]))]
        return out

    def _run_batch(self, caches: Sequence[KVCache] | None, new_ids: Sequence[np.ndarray],
                   score_positions: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """First reads of several empty caches in one run (new tokens right-padded; padding comes after each row's
        tokens, so causal attention never lets a real token see it). `caches=None`: nothing is kept."""
        b = len(new_ids)
        lens = [len(x) for x in new_ids]
        t_max = max(lens)
        k_max = max(1, max(len(p) for p in score_positions))
        ids = np.zeros((b, t_max), np.int64)
        spos = np.zeros((b, k_max), np.int64)
        for r, (x, sp) in enumerate(zip(new_ids, score_positions, strict=True)):
            ids[r, : len(x)] = x
            spos[r, : len(sp)] = sp
        feeds: dict[str, np.ndarray] = {"input_ids": ids, "score_positions": spos,
                                        **length_feeds([0] * b, t_max)}
        shape = (b, self.num_kv_heads, t_max, self.head_dim)
        for i in range(self.num_layers):
            for kind in ("key", "value"):
                feeds[f"past_{kind}.{i}"] = np.zeros(shape, self.kv_dtype)
        try:
            outputs = self.ort_session.run(None, feeds)
        except Exception as exc:
            raise MonitorError(f"onnxruntime failed while scoring a batch ({self.provider}): {exc}") from exc
        named = dict(zip([o.name for o in self.ort_session.get_outputs()], outputs, strict=True))
        for r, (c, t) in enumerate(zip(caches or [], lens, strict=False)):
            c.reserve(t)
            for i in range(self.num_layers):
                for kind in ("key", "value"):
                    c.write(i, kind, 0, named[f"present_{kind}.{i}"][r, :, :t].transpose(1, 0, 2))
            c.length = t
        return [named["label_logits"][r, : len(sp)] for r, sp in enumerate(score_positions)]

    # -- convenience ---------------------------------------------------------------------------------------------
    def score(self, messages: object) -> list[Assessment]:
        """Read a whole conversation from scratch; one Assessment per assessed (user/assistant) message."""
        session = self.new_session()
        return session.extend(messages)

    def score_many(self, conversations: Sequence[object], batch_size: int = 16) -> list[list[Assessment]]:
        """Score many conversations from scratch, in batched runs."""
        sessions = [self.new_session() for _ in conversations]
        results: list[list[Assessment]] = [[] for _ in conversations]
        order = sorted(range(len(conversations)), key=lambda i: len(str(conversations[i])))  # less padding
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch = TrajectorySession.extend_batch([sessions[i] for i in chunk], [conversations[i] for i in chunk])
            for i, assessments in zip(chunk, batch, strict=True):
                results[i] = assessments
        return results


class _Plan(NamedTuple):
    """One run of a session: token ids after the cache, the positions scored, where each message starts, and how
    many of the new messages it reads."""

    ids: np.ndarray
    score_positions: list[int]
    starts: list[int]
    count: int


@dataclass
class _Span:
    """Where a message sits in the cache (token offsets), if it is in the current window."""

    start: int
    end: int


@dataclass
class TrajectorySession:
    """One conversation read incrementally: messages in, Assessments out, KV cache kept across turns."""

    monitor: Monitor
    messages: list[Message] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)  # per-conversation state of the guard/policy

    def __post_init__(self) -> None:
        self.lock = threading.RLock()
        self.cache: KVCache | None = None
        self.spans: list[_Span | None] = []  # per message; None = outside the window
        self.tokens_processed = 0
        self.rebuilds = 0

    # -- introspection ------------------------------------------------------------------------------------------
    @property
    def num_tokens(self) -> int:
        return self.cache.length if self.cache else 0

    @property
    def nbytes(self) -> int:
        return self.cache.nbytes if self.cache else 0

    @property
    def is_resident(self) -> bool:
        return self.cache is not None

    # -- feeding ------------------------------------------------------------------------------------------------
    def append(self, message: object) -> Assessment | None:
        """Read one message; return its Assessment (None for system/tool messages)."""
        got = self.extend([message] if not isinstance(message, str) else [Message("user", message)])
        return got[0] if got else None

    def extend(self, messages: object) -> list[Assessment]:
        """Read several messages in one run; one Assessment per user/assistant message."""
        return TrajectorySession.extend_batch([self], [messages])[0]

    @staticmethod
    def extend_batch(sessions: Sequence[TrajectorySession], conversations: Sequence[object]) -> list[list[Assessment]]:
        """Extend several sessions in one batched run (the sessions must be distinct).

        On failure no session keeps any of the new messages (their caches are rebuilt on next use).
        """
        if not sessions:
            return []
        normalised = [_normalise(c) for c in conversations]  # validate all before touching any state
        for s in sessions:
            s.lock.acquire()
        try:
            before = [len(s.messages) for s in sessions]
            try:
                return TrajectorySession._read(sessions, normalised)
            except Exception:
                for s, n in zip(sessions, before, strict=True):  # keep the old transcripts; rebuilt on next use
                    s.evict()
                    s.truncate(n)
                raise
        finally:
            for s in sessions:
                s.lock.release()

    @staticmethod
    def _read(sessions: Sequence[TrajectorySession], conversations: Sequence[list[Message]],
              assess: bool = True) -> list[list[Assessment]]:
        """Read each session's new messages in as few batched runs as the context allows (the caller holds the
        locks). A run takes the messages that fit after the cache; a message that does not fit re-windows first."""
        monitor = sessions[0].monitor
        results: list[list[Assessment]] = [[] for _ in sessions]
        pending = [list(c) for c in conversations]
        todo = list(range(len(sessions)))  # every session once (an evicted one is rebuilt), then those with more
        while todo:
            plans = {i: sessions[i]._plan(pending[i]) for i in todo}
            started = time.perf_counter()
            active = [i for i in todo if len(plans[i].ids)]
            logits: dict[int, np.ndarray] = {}
            if active:
                out = monitor.run([sessions[i].cache for i in active], [plans[i].ids for i in active],
                                  [plans[i].score_positions for i in active])
                logits = dict(zip(active, out, strict=True))
            elapsed = (time.perf_counter() - started) * 1000
            for i in todo:
                plan = plans[i]
                read, pending[i] = pending[i][: plan.count], pending[i][plan.count :]
                results[i] += sessions[i]._commit(read, plan, logits.get(i) if assess else None, elapsed)
            todo = [i for i in todo if pending[i]]
        if assess and monitor.alone_floor:
            TrajectorySession._attach_alone_readers(sessions, results)
        return results

    @staticmethod
    def _attach_alone_readers(sessions: Sequence[TrajectorySession], results: list[list[Assessment]]) -> None:
        """Give each new user Assessment (but a conversation's very first message, already read alone) a reader of
        the same message alone; the policy calls it only where the monotone-escalation floor can bind."""
        monitor = sessions[0].monitor
        for i, got in enumerate(results):
            for j, a in enumerate(got):
                if a.role == "user" and not a.partial and a.message_index > 0:
                    message = sessions[i].messages[a.message_index]
                    got[j] = dataclasses.replace(a, alone_reader=AloneReader(monitor, message))

    def _ensure_resident(self) -> None:
        """Rebuild the cache from the transcript after an eviction (or create it)."""
        if self.cache is not None:
            return
        self.cache = self.monitor.new_cache()
        transcript, self.messages, self.spans = self.messages, [], []
        if transcript:
            self.rebuilds += 1
            try:
                TrajectorySession._read([self], [transcript], assess=False)
            except BaseException:  # a failed rebuild keeps the transcript (and stays evicted)
                self.cache, self.messages, self.spans = None, transcript, []
                raise

    def _plan(self, new: list[Message]) -> _Plan:
        """Token ids for the first messages of `new` that fit after the cached prefix (all of them, usually); when
        not even the first one fits, a re-windowed cache ending with it."""
        self._ensure_resident()
        assert self.cache is not None
        enc = self.monitor.encoder
        room = self.monitor.context_limit - self.cache.length - (0 if self.cache.length else len(enc.bos_ids))
        encoded: list[np.ndarray] = []
        for msg in new:
            ids = enc.encode_message(msg)
            if len(ids) > room:
                break
            encoded.append(ids)
            room -= len(ids)
        if new and not encoded:
            return self._plan_window(new[0], enc.encode_message(new[0]))
        chunks, offset = [], 0
        if self.cache.length == 0:
            chunks.append(np.asarray(enc.bos_ids, np.int64))
            offset = len(enc.bos_ids)
        score_positions, starts = [], []
        for msg, ids in zip(new, encoded, strict=False):
            starts.append(self.cache.length + offset)
            chunks.append(ids)
            offset += len(ids)
            if enc.assesses(msg):
                score_positions.append(offset - 1)
        ids = np.concatenate(chunks) if chunks else np.empty(0, np.int64)  # nothing new: an empty plan
        return _Plan(ids, score_positions, starts, len(encoded))

    def _plan_window(self, new: Message, new_ids: np.ndarray) -> _Plan:
        """Context overflow: restart the cache with the leading system messages and the most recent messages that
        fit the window budget, then `new`. System messages are kept (in order) only while they leave room for `new`,
        so the window always fits the context (and the RoPE tables), however long the system prompt."""
        enc, old = self.monitor.encoder, self.messages
        budget = int(self.monitor.context_limit * WINDOW_FRACTION) - len(enc.bos_ids)
        if len(enc.bos_ids) + len(new_ids) > self.monitor.context_limit:
            raise MessageError(f"message {len(old)} alone does not fit the context ({self.monitor.context_limit})")
        used, window = len(new_ids), {}
        n_system = _first_non_system(old)
        for i in range(n_system):  # the leading system messages first
            ids = enc.encode_message(old[i])
            if used + len(ids) > budget:
                break
            window[i] = ids
            used += len(ids)
        for i in range(len(old) - 1, n_system - 1, -1):  # then the most recent messages
            ids = enc.encode_message(old[i])
            if used + len(ids) > budget:
                break
            window[i] = ids
            used += len(ids)
        self.cache.truncate(0)  # type: ignore[union-attr]
        self.spans = [None] * len(old)
        chunks, offset = [np.asarray(enc.bos_ids, np.int64)], len(enc.bos_ids)
        for i in sorted(window):
            chunks.append(window[i])
            self.spans[i] = _Span(offset, offset + len(window[i]))
            offset += len(window[i])
        chunks.append(new_ids)
        score_positions = [offset + len(new_ids) - 1] if enc.assesses(new) else []
        return _Plan(np.concatenate(chunks), score_positions, [offset], 1)

    def _commit(self, new: list[Message], plan: _Plan, logits: np.ndarray | None,
                elapsed_ms: float) -> list[Assessment]:
        """Record the messages `plan` read and turn label logits into Assessments."""
        ids, _, starts, _ = plan
        first_index = len(self.messages)
        prefix_before = self.num_tokens - len(ids)
        self.tokens_processed += len(ids)
        assessments: list[Assessment] = []
        k = 0
        read_up_to = prefix_before  # each Assessment counts the tokens read since the previous one in this run
        for j, (msg, start) in enumerate(zip(new, starts, strict=True)):
            end = starts[j + 1] if j + 1 < len(starts) else prefix_before + len(ids)
            self.messages.append(msg)
            self.spans.append(_Span(start, end))
            if logits is not None and self.monitor.encoder.assesses(msg):
                act, cat, risk = split_label_logits(logits[k])
                k += 1
                assessments.append(Assessment(first_index + j, msg.role, act, cat, float(risk), end - read_up_to,
                                              elapsed_ms))
                read_up_to = end
        return assessments

    # -- editing history ----------------------------------------------------------------------------------------
    def common_prefix(self, messages: Sequence[Message]) -> int:
        n = 0
        for a, b in zip(self.messages, messages, strict=False):
            if a != b:
                break
            n += 1
        return n

    def truncate(self, n_messages: int) -> None:
        """Forget messages from index `n_messages` on; the cache keeps the prefix (no re-read)."""
        with self.lock:
            if n_messages >= len(self.messages):
                return
            if self.cache is not None:
                span = self.spans[n_messages]
                if span is None:  # cut inside the region dropped by re-windowing: rebuild from the transcript
                    self.cache = None
                else:
                    self.cache.truncate(span.start)
            del self.messages[n_messages:]
            del self.spans[n_messages:]

    def sync(self, messages: object) -> list[Assessment]:
        """Make the session hold exactly `messages` (a full history): rewind to the common prefix, read the rest."""
        msgs = _normalise(messages)
        with self.lock:
            n = self.common_prefix(msgs)
            self.truncate(n)
            return self.extend(msgs[n:]) if n < len(msgs) else []

    def assess_partial(self, role: str, text: str) -> Assessment:
        """Score an unfinished message (e.g. a streaming reply) without keeping it in the cache."""
        if role not in self.monitor.encoder.role_ids:
            raise MessageError(f"unknown role {role!r}")
        with self.lock:
            self._ensure_resident()
            assert self.cache is not None
            ids = self.monitor.encoder.encode_partial(role, text)
            if self.cache.length == 0:
                ids = np.concatenate([self.monitor.encoder.bos_ids, ids]).astype(np.int64)
            room = self.monitor.context_limit - self.cache.length
            if room < 1:
                raise MonitorError(f"no room left in the context ({self.monitor.context_limit}) for a partial reading")
            ids = ids[-room:]
            keep = self.cache.length
            started = time.perf_counter()
            try:
                logits = self.monitor.run([self.cache], [ids], [[len(ids) - 1]])[0]
            finally:
                self.cache.truncate(keep)
            elapsed = (time.perf_counter() - started) * 1000
            act, cat, risk = split_label_logits(logits[0])
            return Assessment(len(self.messages), role, act, cat, float(risk), len(ids), elapsed, partial=True)

    def fork(self, n_messages: int | None = None) -> TrajectorySession:
        """A copy holding the first `n_messages` (cache copied, not recomputed)."""
        with self.lock:
            n = len(self.messages) if n_messages is None else n_messages
            kept = self.messages[:n]
            other = TrajectorySession(self.monitor, list(kept), _state_before(self.state, kept))
            if self.cache is not None and all(s is not None for s in self.spans[:n]):
                length = self.spans[n].start if n < len(self.spans) else self.cache.length  # type: ignore[union-attr]
                other.cache = self.monitor.new_cache(max(length, 1))
                for i in range(self.monitor.num_layers):
                    for kind in ("key", "value"):
                        other.cache.write(i, kind, 0, self.cache.read(i, kind)[:length])
                other.cache.length = length
                other.spans = list(self.spans[:n])
            return other

    def evict(self) -> None:
        """Drop the KV cache; the transcript stays and is re-read on next use."""
        with self.lock:
            if self.cache is not None:
                self.cache.release()
                self.cache = None
                self.spans = []

    def reset(self) -> None:
        with self.lock:
            self.messages, self.spans, self.state = [], [], {}
            if self.cache is not None:
                self.cache.truncate(0)


@dataclass(frozen=True)
class AloneReader:
    """Reads one user message alone, on demand (`Assessment.alone_reader`)."""

    monitor: Monitor
    message: Message

    def __call__(self) -> tuple[np.ndarray, float]:
        """(action scores, risk) of the message read alone."""
        actions, _, risk = split_label_logits(self.monitor.read_alone([self.message])[0])
        return actions, float(risk)


def read_alone_together(assessments: Iterable[Assessment]) -> None:
    """Give every assessment with a pending `AloneReader` its alone scores now, in batched runs (about 1.5x cheaper
    per message than one run each): for a policy that floors every turn (`floor_risk` 0). On a failure the readers
    stay pending, so each assessment reads (and fails) on its own when the policy asks for it."""
    pending = [a for a in assessments if a.alone_action_scores is None and isinstance(a.alone_reader, AloneReader)]
    for monitor in {id(a.alone_reader.monitor): a.alone_reader.monitor for a in pending}.values():
        mine = [a for a in pending if a.alone_reader.monitor is monitor]
        try:
            logits = monitor.read_alone([a.alone_reader.message for a in mine])
        except Exception:  # noqa: BLE001 (each reads on its own later, and fails there alone)
            continue
        for a, lg in zip(mine, logits, strict=True):
            actions, _, risk = split_label_logits(lg)
            a.alone_action_scores, a.alone_risk, a.alone_reader = actions, float(risk), None


def _state_before(state: dict[str, Any], messages: Sequence[Message]) -> dict[str, Any]:
    """The policy state a fork holding `messages` inherits: none when they are only system messages.

    Conversations that merely share a system prompt are different conversations; a branch that shares user turns
    (an edit or a regenerated reply) is the same conversation and keeps its state (sticky termination included).
    """
    if not any(m.role in ("user", "assistant") for m in messages):
        return {}
    return dict(state)


def _first_non_system(messages: Sequence[Message]) -> int:
    for i, m in enumerate(messages):
        if m.role != "system":
            return i
    return len(messages)


def _normalise(messages: object) -> list[Message]:
    if isinstance(messages, Iterable) and not isinstance(messages, str | bytes) and not hasattr(messages, "keys"):
        messages = list(messages)
        if not messages:
            return []
    return normalize_messages(messages)
