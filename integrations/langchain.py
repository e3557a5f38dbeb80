"""LangChain adapter (langchain-core 1.x): a chat-model wrapper that carries out all five actions, and callback
handlers that block and cut streams.

    from trajsafe_sdk.integrations.langchain import GuardedChatModel, TrajSafeCallbackHandler

    chain = prompt | GuardedChatModel(llm) | StrOutputParser()        # allow / probe / steer / refuse / terminate
    chain.invoke(inputs, config={"configurable": {"thread_id": "t1"}})

    chain = prompt | llm | StrOutputParser()                          # callbacks cannot rewrite inputs: they block
    chain.invoke(inputs, config={"callbacks": [TrajSafeCallbackHandler()]})   # GuardBlocked on refuse/terminate

Both are thin layers over `trajsafe_sdk.guard.Guard`; share one guard (or monitor/policy) across components by
passing it in. A conversation is identified by the first of `conversation_keys` found in the run's `metadata` or
`configurable` (e.g. `thread_id`, `session_id`), else by its messages (the guard matches the cached prefix).
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from langchain_core.callbacks import (
    AsyncCallbackHandler,
    AsyncCallbackManagerForLLMRun,
    BaseCallbackHandler,
    CallbackManager,
    CallbackManagerForLLMRun,
)
from langchain_core.callbacks import manager as _lc_manager
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult, LLMResult
from langchain_core.runnables import Runnable, RunnableConfig, ensure_config
from langchain_core.runnables.config import var_child_runnable_config
from pydantic import ConfigDict, Field

from trajsafe_sdk.errors import GuardBlocked
from trajsafe_sdk.guard import Guard, StreamChecker, Verdict, make_guard

__all__ = [
    "CONVERSATION_KEYS",
    "AsyncTrajSafeCallbackHandler",
    "GuardedChatModel",
    "TrajSafeCallbackHandler",
    "guard_chat_model",
    "to_openai_messages",
]

CONVERSATION_KEYS: tuple[str, ...] = ("trajsafe_conversation_id", "conversation_id", "thread_id", "session_id")
"""Where a conversation id is looked up, in order, in a run's `metadata` then `configurable`."""

_ROLES = {"system": "system", "developer": "system", "human": "user", "user": "user", "ai": "assistant",
          "assistant": "assistant", "tool": "tool", "function": "tool"}


# -- shared helpers ------------------------------------------------------------------------------------------------
def _message_text(message: BaseMessage) -> str:
    text = message.text if isinstance(message.text, str) else str(message.text)
    calls = getattr(message, "tool_calls", None) or []
    if calls:  # an agent's tool arguments are part of what the assistant does
        rendered = [f"[tool call {c.get('name')}: {json.dumps(c.get('args'), default=str)}]" for c in calls]
        text = "\n".join([text, *rendered]) if text else "\n".join(rendered)
    return text


def to_openai_messages(messages: Iterable[BaseMessage]) -> list[dict[str, str]]:
    """LangChain messages -> OpenAI-style dicts (`ChatMessage` roles the guard does not know read as `user`)."""
    out = []
    for message in messages:
        kind = message.role if isinstance(message, ChatMessage) else message.type
        out.append({"role": _ROLES.get(str(kind).lower(), "user"), "content": _message_text(message)})
    return out


def _from_openai(message: Mapping[str, Any]) -> BaseMessage:
    role, content = message["role"], message["content"]
    if role == "system":
        return SystemMessage(content=content)
    if role == "assistant":
        return AIMessage(content=content)
    if role == "tool":
        return ToolMessage(content=content, tool_call_id="trajsafe")
    return HumanMessage(content=content)


def _model_messages(original: Sequence[BaseMessage], convo: list[dict[str, str]],
                    guarded: Sequence[Mapping[str, Any]]) -> list[BaseMessage]:
    """The messages to send: the guard's (e.g. with a steering system message), keeping the original LangChain
    message objects (tool calls, images, ids) wherever the guard left a message unchanged."""
    out: list[BaseMessage] = []
    j = 0
    for message in guarded:
        if j < len(convo) and dict(message) == convo[j]:
            out.append(original[j])
            j += 1
        else:
            out.append(_from_openai(message))
    return out


def _assessable(convo: Sequence[Mapping[str, Any]]) -> bool:
    """Whether the monitor has something to assess: a user or assistant message."""
    return any(m["role"] in ("user", "assistant") for m in convo)


def _conversation_id(metadata: Mapping[str, Any] | None, keys: Sequence[str]) -> str | None:
    sources: list[Mapping[str, Any]] = [metadata or {}]
    config = var_child_runnable_config.get()  # set while a chain runs: carries `configurable`
    if config:
        sources += [config.get("metadata") or {}, config.get("configurable") or {}]
    for source in sources:
        for key in keys:
            value = source.get(key)
            if value is not None and value != "":
                return str(value)
    return None


def _decision_metadata(*verdicts: Verdict | None) -> dict[str, Any]:
    """`{"trajsafe": {stage: decision + conversation_id}}`: one key per stage, so streamed chunks merge cleanly."""
    return {"trajsafe": {v.stage: {**v.decision.to_dict(), "conversation_id": v.conversation_id}
                         for v in verdicts if v is not None}}


# -- the wrapper: all five actions ---------------------------------------------------------------------------------
class GuardedChatModel(BaseChatModel):
    """A chat model that asks the guard before every reply and carries out its action.

    `allow` calls the wrapped model unchanged; `steer` calls it with the guard's steering system message; `probe`,
    `refuse` and `terminate` answer without calling it; replies are read into the trajectory and a reply (or the
    rest of a stream) that makes the conversation harmful is replaced. The decision is in the answer's
    `response_metadata["trajsafe"]`. Works in any chain, with `invoke`, `ainvoke`, `stream`, `astream`, `batch`.
    """

    model: Runnable[Any, Any]
    """The wrapped chat model (or a model with tools bound)."""
    guard: Any = Field(default=None, exclude=True)
    conversation_id: str | None = None
    """A fixed conversation id; else looked up under `conversation_keys`, else matched by the messages."""
    conversation_keys: tuple[str, ...] = CONVERSATION_KEYS
    cache: Any = Field(default=False, exclude=True)  # never serve a cached reply past the guard

    model_config = ConfigDict(arbitrary_types_allowed=True)

    def __init__(self, model: Runnable[Any, Any] | None = None, *, guard: Guard | None = None, monitor: Any = None,
                 policy: Any = None, **kwargs: Any) -> None:
        if model is None:
            model = kwargs.pop("model", None)
        if model is None:
            raise ValueError("GuardedChatModel needs the chat model to wrap: GuardedChatModel(llm)")
        super().__init__(model=model, guard=make_guard(guard, monitor, policy), **kwargs)

    @property
    def _llm_type(self) -> str:
        return "trajsafe-guarded"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        inner = getattr(self.model, "_identifying_params", None)
        return {"guarded": inner if isinstance(inner, Mapping) else repr(self.model)}

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> GuardedChatModel:  # type: ignore[override]
        """Bind tools on the wrapped model; the result stays guarded."""
        bind = getattr(self.model, "bind_tools", None)
        if bind is None:
            raise NotImplementedError(f"{type(self.model).__name__} does not support bind_tools")
        return self.model_copy(update={"model": bind(tools, **kwargs)})

    # -- plumbing -------------------------------------------------------------------------------------------------
    def _cid(self, run_manager: CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun | None) -> str | None:
        if self.conversation_id is not None:
            return self.conversation_id
        return _conversation_id(run_manager.metadata if run_manager else None, self.conversation_keys)

    def _with_ids(self, config: RunnableConfig | None) -> RunnableConfig:
        """Copy a conversation id from `configurable` into `metadata`, where the model's run can see it."""
        config = ensure_config(config)
        configurable = config.get("configurable") or {}
        metadata = dict(config.get("metadata") or {})
        for key in self.conversation_keys:
            if key in configurable and key not in metadata:
                metadata[key] = configurable[key]
        config["metadata"] = metadata
        return config

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> AIMessage:
        return super().invoke(input, self._with_ids(config), **kwargs)

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> AIMessage:
        return await super().ainvoke(input, self._with_ids(config), **kwargs)

    def stream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Iterator[AIMessageChunk]:
        return super().stream(input, self._with_ids(config), **kwargs)

    def astream(self, input: Any, config: RunnableConfig | None = None,
                **kwargs: Any) -> AsyncIterator[AIMessageChunk]:
        return super().astream(input, self._with_ids(config), **kwargs)

    @staticmethod
    def _child(run_manager: CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun | None) -> RunnableConfig:
        """Config of the wrapped model's run: a child of the guarded run, without stream taps (`astream_events`
        would show chunks the guard then cuts: it shows the guarded run's instead) nor TrajSafe handlers."""
        if run_manager is None:
            return {"callbacks": []}
        keep = [h for h in run_manager.inheritable_handlers if not hasattr(h, "tap_output_iter")
                and not isinstance(h, TrajSafeCallbackHandler | AsyncTrajSafeCallbackHandler)]
        manager = CallbackManager(handlers=[], parent_run_id=run_manager.run_id)
        manager.set_handlers(keep)
        manager.add_tags(run_manager.inheritable_tags)
        manager.add_metadata(run_manager.inheritable_metadata)
        return {"callbacks": manager}

    @staticmethod
    def _kwargs(stop: list[str] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        return {**kwargs, "stop": stop} if stop is not None else kwargs

    @staticmethod
    def _answer(text: str, *verdicts: Verdict) -> ChatResult:
        message = AIMessage(content=text, response_metadata=_decision_metadata(*verdicts))
        return ChatResult(generations=[ChatGeneration(message=message)])

    @staticmethod
    def _answer_chunk(text: str, verdict: Verdict) -> ChatGenerationChunk:
        return ChatGenerationChunk(message=AIMessageChunk(content=text, response_metadata=_decision_metadata(verdict)))

    @property
    def _reads(self) -> bool:
        """Whether replies are read and checked (the guard's `check_output` option)."""
        return bool(getattr(self.guard, "output_checks", True))

    def _finish_reply(self, reply: Any, verdict: Verdict | None, out: Verdict | None) -> ChatResult:
        if out is not None and out.response is not None:
            return self._answer(out.response, *[v for v in (verdict, out) if v is not None])
        message = reply if isinstance(reply, BaseMessage) else AIMessage(content=str(reply))
        message.response_metadata = {**(message.response_metadata or {}), **_decision_metadata(verdict, out)}
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _send(self, messages: list[BaseMessage], convo: list[dict[str, str]],
              verdict: Verdict | None) -> list[BaseMessage]:
        return _model_messages(messages, convo, verdict.messages) if verdict is not None else messages

    # -- BaseChatModel hooks --------------------------------------------------------------------------------------
    # A call without any user or assistant message (nothing the monitor assesses) passes through unchecked.
    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        cid, convo = self._cid(run_manager), to_openai_messages(messages)
        verdict = self.guard.check_input(convo, conversation_id=cid) if _assessable(convo) else None
        if verdict is not None and not verdict.call_model:
            return self._answer(verdict.response or "", verdict)
        reply = self.model.invoke(self._send(messages, convo, verdict), self._child(run_manager),
                                  **self._kwargs(stop, kwargs))
        reads = self._reads and verdict is not None
        out = self.guard.check_output(convo, _reply_text(reply), conversation_id=cid) if reads else None
        return self._finish_reply(reply, verdict, out)

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        cid, convo = self._cid(run_manager), to_openai_messages(messages)
        verdict = await self.guard.acheck_input(convo, conversation_id=cid) if _assessable(convo) else None
        if verdict is not None and not verdict.call_model:
            return self._answer(verdict.response or "", verdict)
        reply = await self.model.ainvoke(self._send(messages, convo, verdict), self._child(run_manager),
                                         **self._kwargs(stop, kwargs))
        reads = self._reads and verdict is not None
        out = await self.guard.acheck_output(convo, _reply_text(reply), conversation_id=cid) if reads else None
        return self._finish_reply(reply, verdict, out)

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        cid, convo = self._cid(run_manager), to_openai_messages(messages)
        verdict = self.guard.check_input(convo, conversation_id=cid) if _assessable(convo) else None
        if verdict is not None and not verdict.call_model:
            yield self._answer_chunk(verdict.response or "", verdict)
            return
        reads = self._reads and verdict is not None
        checker = self.guard.stream_checker(convo, conversation_id=cid) if reads else None
        stream = self.model.stream(self._send(messages, convo, verdict), self._child(run_manager),
                                   **self._kwargs(stop, kwargs))
        first = True
        try:
            for chunk in stream:
                text = _reply_text(chunk)
                cut = checker.feed(text) if checker is not None and text else None
                if cut is not None:  # not delivered: the replacement goes out instead, and the stream ends
                    yield self._answer_chunk(cut, checker.finish())  # type: ignore[union-attr]
                    return
                yield self._chunk(chunk, verdict, first)
                first = False
        finally:
            getattr(stream, "close", lambda: None)()
        final = checker.finish() if checker is not None else None
        if final is not None and final.response is not None:  # the end of the reply crossed the line
            yield self._answer_chunk(final.response, final)

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        cid, convo = self._cid(run_manager), to_openai_messages(messages)
        verdict = await self.guard.acheck_input(convo, conversation_id=cid) if _assessable(convo) else None
        if verdict is not None and not verdict.call_model:
            yield self._answer_chunk(verdict.response or "", verdict)
            return
        reads = self._reads and verdict is not None
        checker = self.guard.stream_checker(convo, conversation_id=cid) if reads else None
        stream = self.model.astream(self._send(messages, convo, verdict), self._child(run_manager),
                                    **self._kwargs(stop, kwargs))
        first = True
        try:
            async for chunk in stream:
                text = _reply_text(chunk)
                cut = await checker.afeed(text) if checker is not None and text else None
                if cut is not None:
                    yield self._answer_chunk(cut, await checker.afinish())  # type: ignore[union-attr]
                    return
                yield self._chunk(chunk, verdict, first)
                first = False
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
        final = await checker.afinish() if checker is not None else None
        if final is not None and final.response is not None:
            yield self._answer_chunk(final.response, final)

    @staticmethod
    def _chunk(chunk: Any, verdict: Verdict | None, first: bool) -> ChatGenerationChunk:
        if not isinstance(chunk, AIMessageChunk):
            chunk = AIMessageChunk(content=_reply_text(chunk))
        if first and verdict is not None:
            chunk = chunk.model_copy(update={"response_metadata": {**(chunk.response_metadata or {}),
                                                                   **_decision_metadata(verdict)}})
        return ChatGenerationChunk(message=chunk)


def guard_chat_model(model: Runnable[Any, Any], *, guard: Guard | None = None, monitor: Any = None,
                     policy: Any = None, **kwargs: Any) -> GuardedChatModel:
    """`GuardedChatModel(model, ...)`: the guarded drop-in replacement for a chat model in a chain."""
    return GuardedChatModel(model, guard=guard, monitor=monitor, policy=policy, **kwargs)


def _reply_text(reply: Any) -> str:
    if isinstance(reply, BaseMessage):
        return _message_text(reply)
    return reply if isinstance(reply, str) else str(reply)


# -- callback handlers: block and cut streams ---------------------------------------------------------------------
@dataclass
class _Run:
    convo: list[dict[str, str]]
    conversation_id: str | None
    checker: StreamChecker | None = None


class _Tracker:
    """What both callback handlers do, per LangChain run id (sync and async variants share this state)."""

    def __init__(self, guard: Guard, block_on: Iterable[str], conversation_keys: Sequence[str],
                 conversation_id: str | None) -> None:
        self.guard = guard
        self.block_on = frozenset(block_on)
        self.conversation_keys = tuple(conversation_keys)
        self.conversation_id = conversation_id
        self.runs: dict[UUID, _Run] = {}
        self.lock = threading.Lock()

    @property
    def reads(self) -> bool:
        return bool(getattr(self.guard, "output_checks", True))

    def new_run(self, convo: list[dict[str, str]], metadata: Mapping[str, Any] | None) -> _Run:
        return _Run(convo, self.conversation_id or _conversation_id(metadata, self.conversation_keys))

    def admit(self, run_id: UUID, run: _Run, verdict: Verdict | None) -> None:
        """Raise for a blocked action, else remember the run for its tokens and its end."""
        if verdict is None:  # nothing to assess (no user or assistant message): not followed
            return
        if verdict.action in self.block_on:
            raise GuardBlocked(verdict.response or f"blocked by the guard ({verdict.action})", verdict.decision)
        with self.lock:
            self.runs[run_id] = run

    def streaming(self, run_id: UUID, text: str) -> StreamChecker | None:
        """The run's stream checker when `text` must be checked (created on the first token)."""
        with self.lock:
            run = self.runs.get(run_id)
        if run is None or not text or not self.reads:
            return None
        if run.checker is None:
            run.checker = self.guard.stream_checker(run.convo, conversation_id=run.conversation_id)
        return None if run.checker.cut else run.checker

    def pop(self, run_id: UUID) -> _Run | None:
        with self.lock:
            return self.runs.pop(run_id, None)

    @staticmethod
    def raise_replaced(verdict: Verdict) -> None:
        if verdict.response is not None:  # a callback cannot replace the reply: it stops it
            raise GuardBlocked(verdict.response, verdict.decision)

    # sync
    def start(self, run_id: UUID, convo: list[dict[str, str]], metadata: Mapping[str, Any] | None) -> None:
        run = self.new_run(convo, metadata)
        verdict = self.guard.check_input(convo, conversation_id=run.conversation_id) if _assessable(convo) else None
        self.admit(run_id, run, verdict)

    def token(self, run_id: UUID, text: str) -> None:
        checker = self.streaming(run_id, text)
        if checker is not None and checker.feed(text) is not None:
            self.raise_replaced(checker.finish())

    def end(self, run_id: UUID, response: LLMResult) -> None:
        run = self.pop(run_id)
        if run is None or not self.reads:
            return
        if run.checker is not None:
            if not run.checker.cut:
                self.raise_replaced(run.checker.finish())
            return
        reply = _result_text(response)
        self.raise_replaced(self.guard.check_output(run.convo, reply, conversation_id=run.conversation_id))

    # async
    async def astart(self, run_id: UUID, convo: list[dict[str, str]], metadata: Mapping[str, Any] | None) -> None:
        run = self.new_run(convo, metadata)
        verdict = await self.guard.acheck_input(convo, conversation_id=run.conversation_id) \
            if _assessable(convo) else None
        self.admit(run_id, run, verdict)

    async def atoken(self, run_id: UUID, text: str) -> None:
        checker = self.streaming(run_id, text)
        if checker is not None and await checker.afeed(text) is not None:
            self.raise_replaced(await checker.afinish())

    async def aend(self, run_id: UUID, response: LLMResult) -> None:
        run = self.pop(run_id)
        if run is None or not self.reads:
            return
        if run.checker is not None:
            if not run.checker.cut:
                self.raise_replaced(await run.checker.afinish())
            return
        reply = _result_text(response)
        self.raise_replaced(await self.guard.acheck_output(run.convo, reply, conversation_id=run.conversation_id))


def _result_text(response: LLMResult) -> str:
    generations = response.generations[0] if response.generations else []
    if not generations:
        return ""
    generation = generations[0]
    message = getattr(generation, "message", None)
    return _message_text(message) if isinstance(message, BaseMessage) else generation.text


def _token_text(token: Any, chunk: Any) -> str:
    if isinstance(token, str):
        return token
    message = getattr(chunk, "message", None)
    return _message_text(message) if isinstance(message, BaseMessage) else str(getattr(chunk, "text", "") or "")


def _prompt_convo(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


class TrajSafeCallbackHandler(BaseCallbackHandler):
    """Blocks a model call the guard refuses or terminates (raises `GuardBlocked`), cuts a stream before a harmful
    chunk is delivered, and reads each reply into the trajectory.

    Callbacks cannot rewrite the model's input, so `probe` and `steer` are only recorded here (add them to
    `block_on` to raise on them too); use `GuardedChatModel` to carry them out. Works with `invoke`, `ainvoke`,
    `stream`, `astream` and `batch`.
    """

    raise_error: bool = True

    def __init__(self, guard: Guard | None = None, *, monitor: Any = None, policy: Any = None,
                 block_on: Iterable[str] = ("refuse", "terminate"), conversation_id: str | None = None,
                 conversation_keys: Sequence[str] = CONVERSATION_KEYS) -> None:
        self._tracker = _Tracker(make_guard(guard, monitor, policy), block_on, conversation_keys, conversation_id)

    @property
    def guard(self) -> Guard:
        return self._tracker.guard

    def on_chat_model_start(self, serialized: dict[str, Any], messages: list[list[BaseMessage]], *, run_id: UUID,
                            parent_run_id: UUID | None = None, tags: list[str] | None = None,
                            metadata: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self._tracker.start(run_id, to_openai_messages(messages[0]), metadata)

    def on_llm_start(self, serialized: dict[str, Any], prompts: list[str], *, run_id: UUID,
                     parent_run_id: UUID | None = None, tags: list[str] | None = None,
                     metadata: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self._tracker.start(run_id, _prompt_convo(prompts[0]), metadata)

    def on_llm_new_token(self, token: Any, *, chunk: Any = None, run_id: UUID, **kwargs: Any) -> None:
        self._tracker.token(run_id, _token_text(token, chunk))

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        self._tracker.end(run_id, response)

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._tracker.pop(run_id)


_EVENTS = ("on_chat_model_start", "on_llm_start", "on_llm_new_token", "on_llm_end", "on_llm_error")


def _called_by_sync_manager() -> bool:
    """Is LangChain's sync `handle_event` looking up this handler's method?

    It would collect our coroutine and run it later in a fresh event loop, logging and swallowing its exception,
    so the model would be called anyway: the handler answers that lookup with its blocking method instead.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return True  # the async manager only runs inside an event loop
    frame = sys._getframe(2)  # _called_by_sync_manager <- _SyncOrAsync.__get__ <- the code doing the lookup
    return frame.f_code is _lc_manager.handle_event.__code__


class _SyncOrAsync:
    """An event method that is a coroutine function for LangChain's async manager and a blocking function for its
    sync manager, so the handler's exception propagates either way."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        if _called_by_sync_manager():
            return getattr(obj._sync, self.name)
        return getattr(obj, "_async_" + self.name)


class AsyncTrajSafeCallbackHandler(AsyncCallbackHandler):
    """The async twin of `TrajSafeCallbackHandler` (awaits the guard's async checks).

    LangChain swallows the exceptions of async handlers driven by a sync `invoke`/`stream`; this handler notices
    that case and runs its checks synchronously there, so it blocks under both sync and async calls.
    """

    raise_error: bool = True

    def __init__(self, guard: Guard | None = None, *, monitor: Any = None, policy: Any = None,
                 block_on: Iterable[str] = ("refuse", "terminate"), conversation_id: str | None = None,
                 conversation_keys: Sequence[str] = CONVERSATION_KEYS) -> None:
        self._sync = TrajSafeCallbackHandler(guard, monitor=monitor, policy=policy, block_on=block_on,
                                             conversation_id=conversation_id, conversation_keys=conversation_keys)
        self._tracker = self._sync._tracker  # one state for both paths

    @property
    def guard(self) -> Guard:
        return self._tracker.guard

    on_chat_model_start = _SyncOrAsync("on_chat_model_start")  # type: ignore[assignment]
    on_llm_start = _SyncOrAsync("on_llm_start")  # type: ignore[assignment]
    on_llm_new_token = _SyncOrAsync("on_llm_new_token")  # type: ignore[assignment]
    on_llm_end = _SyncOrAsync("on_llm_end")  # type: ignore[assignment]
    on_llm_error = _SyncOrAsync("on_llm_error")  # type: ignore[assignment]

    async def _async_on_chat_model_start(self, serialized: dict[str, Any], messages: list[list[BaseMessage]], *,
                                         run_id: UUID, metadata: dict[str, Any] | None = None,
                                         **kwargs: Any) -> None:
        await self._tracker.astart(run_id, to_openai_messages(messages[0]), metadata)

    async def _async_on_llm_start(self, serialized: dict[str, Any], prompts: list[str], *, run_id: UUID,
                                  metadata: dict[str, Any] | None = None, **kwargs: Any) -> None:
        await self._tracker.astart(run_id, _prompt_convo(prompts[0]), metadata)

    async def _async_on_llm_new_token(self, token: Any, *, chunk: Any = None, run_id: UUID, **kwargs: Any) -> None:
        await self._tracker.atoken(run_id, _token_text(token, chunk))

    async def _async_on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        await self._tracker.aend(run_id, response)

    async def _async_on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._tracker.pop(run_id)
