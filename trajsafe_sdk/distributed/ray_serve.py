"""The monitor as a Ray Serve application: ``{"conversation_id", "messages"}`` in, Decisions out.

Run it with::

    serve run trajsafe_sdk.distributed.ray_serve:app_builder model=/path/to/package replicas=2

and POST ``{"conversation_id": "c1", "messages": [{"role": "user", "content": "..."}]}`` (the whole history, as
a stateless client sends it) to ``http://127.0.0.1:8000/``. The answer is the line `trajsafe score` writes for that
conversation (``id``, ``decisions`` — one per user message —, ``tokens``, ``latency_ms``) plus
``conversation_id``, ``decision`` (the latest user message's, or null) and ``replica``.

Two deployments: `TrajSafeIngress` (HTTP, parses and validates) forwards each request through a
`DeploymentHandle` with ``session_id=conversation_id`` to `TrajSafeMonitor`, whose replicas are chosen by Ray
Serve's consistent-hash request router: the same conversation reaches the same replica, where its KV cache waits in
a `SessionPool`, so a new turn costs only its new tokens. When that replica is busy or gone, another one answers
correctly: it rebuilds the session from the messages (one full read). Inside a replica, ``@serve.batch`` gathers
concurrent requests and scores them in one call (batched ONNX runs on CUDA; back-to-back single runs on CPU, where
the local scorer measured them cheaper than padded batches).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import JSONResponse

from ..core import Assessment, Monitor
from ..errors import MessageError, TrajSafeError
from ..evaluation import Conversation, Scored, Scorer
from ..messages import Message, normalize_messages, prefix_keys
from ..pool import SessionPool

CONSISTENT_HASH_ROUTER = "ray.serve.experimental.consistent_hash_router.ConsistentHashRouter"


class RequestError(ValueError):
    """A request body that cannot be scored (HTTP 400)."""


def parse_request(body: Any) -> tuple[str | None, list[Message]]:
    """Validate ``{"conversation_id": str|int|null, "messages": [...]}`` into (id, messages)."""
    if not isinstance(body, dict):
        raise RequestError("expected a JSON object with 'conversation_id' and 'messages'")
    cid = body.get("conversation_id", body.get("id"))
    if isinstance(cid, bool) or (cid is not None and not isinstance(cid, str | int)):
        raise RequestError("'conversation_id' must be a string, a number or null")
    if not isinstance(body.get("messages"), list):
        raise RequestError("'messages' must be a list of {'role', 'content'} objects")
    try:
        messages = normalize_messages(body["messages"])
    except MessageError as exc:
        raise RequestError(str(exc)) from exc
    return (None if cid is None else str(cid)), messages


class MonitorReplica:
    """One replica: a monitor loaded once, a `SessionPool` of KV caches, the assessments already read."""

    def __init__(self, model: str | None = None, provider: str = "cpu", variant: str | None = None,
                 threads: int | None = None, memory_budget_mb: float = 512, max_assessments: int = 200_000,
                 name: str = "local", batch_size: int | None = None) -> None:
        monitor = Monitor.load(model, provider=provider, variant=variant, threads=threads)
        self.monitor = monitor
        self.scorer = Scorer(monitor, batch_size=batch_size, workers=1)  # the local command's policy, decisions
        self.pool = SessionPool(monitor, memory_budget_bytes=int(memory_budget_mb * 2**20))
        self.max_assessments = max_assessments
        self.assessed: OrderedDict[str, Assessment] = OrderedDict()  # prefix digest -> assessment (user msgs)
        self.name = name
        self.largest_batch = 0

    def score_many(self, requests: list[tuple[str | None, list[Message]]]) -> list[dict[str, Any]]:
        """Score several requests together (one batched run for their new messages)."""
        started = time.perf_counter()
        self.largest_batch = max(self.largest_batch, len(requests))
        try:  # in runs of the local scorer's batch size (on CPU, single runs beat padded batches)
            fresh: list[list[Assessment]] = []  # a repeated history has nothing new to read: []
            size = self.scorer.batch_size
            for start in range(0, len(requests), size):
                fresh += self.pool.assess_many([(msgs, cid) for cid, msgs in requests[start : start + size]])
        except (TrajSafeError, ValueError) as exc:
            if len(requests) > 1:
                return [r for req in requests for r in self.score_many([req])]  # isolate the failing request(s)
            return [self._by_turns(*requests[0], error=exc)]
        elapsed = (time.perf_counter() - started) * 1000
        tokens = [sum(a.tokens for a in new) for new in fresh]
        total = sum(tokens) or 1
        out = []
        for (cid, msgs), new, n in zip(requests, fresh, tokens, strict=True):
            try:
                out.append(self._answer(cid, msgs, new, n, elapsed * n / total))
            except (TrajSafeError, ValueError) as exc:
                out.append(self._error(cid, exc))
        return out

    def _error(self, cid: str | None, exc: Exception) -> dict[str, Any]:
        return {"id": cid, "conversation_id": cid, "error": f"cannot score: {exc}", "replica": self.name}

    def _by_turns(self, cid: str | None, msgs: list[Message], error: Exception) -> dict[str, Any]:
        """Read a conversation turn by turn (longer than the context: the session re-windows as it would live)."""
        started = time.perf_counter()
        new: list[Assessment] = []
        tokens = 0
        try:
            for end in [i + 1 for i, m in enumerate(msgs) if m.role == "user"] + [len(msgs)]:
                _, got = self.pool.assess(msgs[:end], conversation_id=cid)  # a repeat or rewind reads nothing
                new += got
                tokens += sum(a.tokens for a in got)
            return self._answer(cid, msgs, new, tokens, (time.perf_counter() - started) * 1000)
        except (TrajSafeError, ValueError) as exc:
            return self._error(cid, exc or error)

    def _answer(self, cid: str | None, msgs: list[Message], new: list[Assessment], tokens: int,
                latency_ms: float) -> dict[str, Any]:
        keys = prefix_keys(msgs)
        for a in new:
            if a.role == "user":
                self._remember(keys[a.message_index], a)
        users = [i for i, m in enumerate(msgs) if m.role == "user"]
        assessments = [self.assessed.get(keys[i]) for i in users]
        if any(a is None for a in assessments):  # forgotten meanwhile: read the conversation again
            session = self.monitor.new_session()
            assessments = []
            for end in [i + 1 for i, m in enumerate(msgs) if m.role == "user"]:
                assessments += [a for a in session.extend(msgs[len(session.messages):end]) if a.role == "user"]
            tokens += session.tokens_processed
            for a in assessments:
                self._remember(keys[a.message_index], a)
        for key in (keys[i] for i in users):
            self.assessed.move_to_end(key)
        decisions = self.scorer._decide(assessments)  # type: ignore[arg-type]
        record = Scored(Conversation(0, cid, msgs), decisions, tokens, latency_ms).to_dict()
        record.update(conversation_id=cid, decision=record["decisions"][-1] if decisions else None,
                      replica=self.name)
        return record

    def _remember(self, key: str, assessment: Assessment) -> None:
        self.assessed[key] = assessment
        self.assessed.move_to_end(key)
        while len(self.assessed) > self.max_assessments:
            self.assessed.popitem(last=False)


@serve.deployment(name="TrajSafeMonitor", max_ongoing_requests=64)
class TrajSafeMonitor:
    """Serve deployment around `MonitorReplica`; requests are batched by ``@serve.batch``."""

    def __init__(self, model: str | None = None, provider: str = "cpu", variant: str | None = None,
                 threads: int | None = None, memory_budget_mb: float = 512, max_batch_size: int = 16,
                 batch_wait_timeout_s: float = 0.005) -> None:
        name = "local"
        with contextlib.suppress(Exception):
            name = serve.get_replica_context().replica_id.unique_id
        self.replica = MonitorReplica(model, provider, variant, threads, memory_budget_mb, name=name)
        self._score_batch.set_max_batch_size(max_batch_size)
        self._score_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)

    async def score(self, conversation_id: str | None, messages: list[Any]) -> dict[str, Any]:
        """Decisions for one conversation (its whole history)."""
        try:
            msgs = normalize_messages(messages)
        except MessageError as exc:
            return {"id": conversation_id, "conversation_id": conversation_id, "error": str(exc)}
        return await self._score_batch((conversation_id, msgs))

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _score_batch(self, requests: list[tuple[str | None, list[Message]]]) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.replica.score_many, requests)

    def stats(self) -> dict[str, Any]:
        """Sessions and memory of this replica's pool."""
        pool = self.replica.pool
        return {"replica": self.replica.name, "sessions": len(pool), "kv_bytes": pool.nbytes,
                "evictions": pool.evictions, "assessments": len(self.replica.assessed),
                "largest_batch": self.replica.largest_batch}


@serve.deployment(name="TrajSafeIngress", max_ongoing_requests=256, ray_actor_options={"num_cpus": 0})
class TrajSafeIngress:
    """HTTP ingress: POST a conversation, get its decisions; GET answers a health check."""

    def __init__(self, monitor: DeploymentHandle) -> None:
        self.monitor = monitor

    async def __call__(self, request: Request) -> JSONResponse:
        if request.method == "GET":
            return JSONResponse({"status": "ok"})
        try:
            body = await request.json()
        except ValueError as exc:
            return JSONResponse({"error": f"invalid JSON: {exc}"}, status_code=400)
        try:
            cid, messages = parse_request(body)
        except RequestError as exc:
            return JSONResponse({"conversation_id": body.get("conversation_id") if isinstance(body, dict) else None,
                                 "error": str(exc)}, status_code=400)
        handle = self.monitor.options(session_id=cid) if cid is not None else self.monitor
        result = await handle.score.remote(cid, messages)
        return JSONResponse(result, status_code=422 if "error" in result else 200)


def build_app(model: str | None = None, *, provider: str = "cpu", variant: str | None = None,
              threads: int | None = 1, replicas: int = 1, num_cpus: float = 1.0, memory_budget_mb: float = 512,
              max_batch_size: int = 16, batch_wait_timeout_s: float = 0.005, sticky: bool = True) -> Any:
    """The Serve application (ingress + monitor replicas); `sticky` routes by conversation id."""
    if model is not None and Path(model).is_dir():
        model = str(Path(model).resolve())  # replicas do not run in this directory
    options: dict[str, Any] = {"num_replicas": replicas, "ray_actor_options": {"num_cpus": num_cpus}}
    if sticky:
        options["request_router_config"] = {"request_router_class": CONSISTENT_HASH_ROUTER,
                                            "request_router_kwargs": {"num_fallback_replicas": 2}}
    monitor = TrajSafeMonitor.options(**options).bind(model, provider, variant, threads, memory_budget_mb,
                                                      max_batch_size, batch_wait_timeout_s)
    return TrajSafeIngress.bind(monitor)


def app_builder(args: dict[str, str]) -> Any:
    """`serve run trajsafe_sdk.distributed.ray_serve:app_builder [model=DIR] [replicas=N] [num_cpus=X] ...`."""
    known = {"model", "provider", "variant", "threads", "replicas", "num_cpus", "memory_budget_mb",
             "max_batch_size", "batch_wait_timeout_s", "sticky"}
    unknown = set(args) - known
    if unknown:
        raise ValueError(f"unknown argument(s) {sorted(unknown)}; expected some of {sorted(known)}")
    return build_app(
        args.get("model"), provider=args.get("provider", "cpu"), variant=args.get("variant"),
        threads=int(args.get("threads", 1)), replicas=int(args.get("replicas", 1)),
        num_cpus=float(args.get("num_cpus", 1)), memory_budget_mb=float(args.get("memory_budget_mb", 512)),
        max_batch_size=int(args.get("max_batch_size", 16)),
        batch_wait_timeout_s=float(args.get("batch_wait_timeout_s", 0.005)),
        sticky=str(args.get("sticky", "true")).lower() not in ("0", "false", "no"))
