"""LlamaIndex adapter (llama-index-core 0.14.x): a guarded LLM that carries out all five actions, a callback
handler that blocks, and an instrumentation event handler that records decisions.

    from trajsafe_sdk.integrations.llama_index import GuardedLLM, TrajSafeCallbackHandler, TrajSafeEventHandler

    engine = SimpleChatEngine.from_defaults(llm=GuardedLLM(llm, conversation_id=session_id))  # all five actions
    llm.callback_manager = CallbackManager([TrajSafeCallbackHandler()])      # blocks: GuardBlocked on refuse/terminate
    get_dispatcher().add_event_handler(TrajSafeEventHandler())               # decisions as instrumentation events

All are thin layers over `trajsafe_sdk.guard.Guard`; share one guard (or monitor/policy) by passing it in. Without a
`conversation_id` a conversation is matched by its messages (the cached prefix): give one when the leading system
message changes between turns (e.g. `ContextChatEngine` puts the retrieved context there) so that the conversation
keeps its state (a termination) across turns.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from contextvars import ContextVar
from typing import Any, TypeVar

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
)
from llama_index.core.callbacks import CBEventType, EventPayload
from llama_index.core.callbacks.base_handler import BaseCallbackHandler
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.instrumentation.events.llm import (
    LLMChatEndEvent,
    LLMChatStartEvent,
    LLMCompletionEndEvent,
    LLMCompletionStartEvent,
)
from llama_index.core.llms.llm import LLM
from pydantic import Field, PrivateAttr

from trajsafe_sdk.errors import GuardBlocked
from trajsafe_sdk.guard import Guard, StreamChecker, Verdict, make_guard

__all__ = [
    "GuardedLLM",
    "TrajSafeCallbackHandler",
    "TrajSafeDecisionEvent",
    "TrajSafeEventHandler",
    "to_openai_messages",
]

dispatcher = get_dispatcher(__name__)

_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "chatbot": "assistant",
          "model": "assistant", "tool": "tool", "function": "tool"}

R = TypeVar("R", ChatResponse, CompletionResponse)


# -- shared helpers ------------------------------------------------------------------------------------------------
def to_openai_messages(messages: Iterable[ChatMessage]) -> list[dict[str, str]]:
    """LlamaIndex chat messages -> OpenAI-style dicts (the text blocks of each message)."""
    out = []
    for message in messages:
        role = getattr(message.role, "value", message.role)
        out.append({"role": _ROLES.get(str(role).lower(), "user"), "content": message.content or ""})
    return out


def _prompt_convo(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


def _assessable(convo: Sequence[dict[str, str]]) -> bool:
    """Whether the monitor has something to assess: a user or assistant message."""
    return any(m["role"] in ("user", "assistant") for m in convo)


def _reads(guard: Guard) -> bool:
    """Whether replies are read and checked (the guard's `check_output` option)."""
    return bool(getattr(guard, "output_checks", True))


class TrajSafeDecisionEvent(BaseEvent):
    """A guard decision, as a LlamaIndex instrumentation event (dispatched by this module's components)."""

    conversation_id: str | None = None
    stage: str = "input"  # "input" | "output" | "stream"
    action: str = "allow"
    category: str = "benign"
    risk: float = 0.0
    decision: dict[str, Any] = Field(default_factory=dict)  # the Decision's fields (docs/contracts.md §3)
    source: str = "llm"  # "llm" (GuardedLLM), "callback", "audit"

    @classmethod
    def class_name(cls) -> str:
        return "TrajSafeDecisionEvent"

    @classmethod
    def from_verdict(cls, verdict: Verdict, source: str) -> TrajSafeDecisionEvent:
        d = verdict.decision
        return cls(conversation_id=verdict.conversation_id, stage=verdict.stage, action=d.action,
                   category=d.category, risk=d.risk, decision=d.to_dict(), source=source)


def _emit(verdict: Verdict | None, source: str) -> None:
    if verdict is not None:
        dispatcher.event(TrajSafeDecisionEvent.from_verdict(verdict, source))


def _meta(*verdicts: Verdict | None) -> dict[str, Any]:
    return {"trajsafe": {v.stage: {**v.decision.to_dict(), "conversation_id": v.conversation_id}
                         for v in verdicts if v is not None}}


def _chat_answer(text: str, *verdicts: Verdict | None, delta: str | None = None) -> ChatResponse:
    return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text), delta=delta,
                        additional_kwargs=_meta(*verdicts))


def _completion_answer(text: str, *verdicts: Verdict | None, delta: str | None = None) -> CompletionResponse:
    return CompletionResponse(text=text, delta=delta, additional_kwargs=_meta(*verdicts))


def _delta(response: ChatResponse | CompletionResponse, so_far: str) -> str:
    if response.delta is not None:
        return response.delta
    full = response.message.content or "" if isinstance(response, ChatResponse) else response.text
    return full[len(so_far):] if full.startswith(so_far) else full


def _tag(response: R, *verdicts: Verdict | None) -> R:
    response.additional_kwargs = {**(response.additional_kwargs or {}), **_meta(*verdicts)}
    return response


# -- the guarded LLM: all five actions ----------------------------------------------------------------------------
class GuardedLLM(LLM):
    """An LLM that asks the guard before every reply and carries out its action.

    `allow` calls the wrapped LLM unchanged; `steer` calls it with the guard's steering system message (for
    `complete`, put before the prompt); `probe`, `refuse` and `terminate` answer without calling it; replies are
    read into the trajectory, and a reply (or the rest of a stream) that makes the conversation harmful is
    replaced. The decisions are in `additional_kwargs["trajsafe"]` of each response and are dispatched as
    `TrajSafeDecisionEvent`s. Reports itself as a chat model so engines pass it structured messages.
    """

    llm: LLM = Field(description="The wrapped LLM.")
    guard: Any = Field(default=None, exclude=True)
    conversation_id: str | None = Field(default=None, description="A fixed conversation id (else: by messages).")

    def __init__(self, llm: LLM | None = None, *, guard: Guard | None = None, monitor: Any = None,
                 policy: Any = None, **kwargs: Any) -> None:
        llm = llm if llm is not None else kwargs.pop("llm", None)
        if llm is None:
            raise ValueError("GuardedLLM needs the LLM to wrap: GuardedLLM(llm)")
        kwargs.setdefault("system_prompt", llm.system_prompt)
        kwargs.setdefault("callback_manager", llm.callback_manager)
        super().__init__(llm=llm, guard=make_guard(guard, monitor, policy), **kwargs)

    @classmethod
    def class_name(cls) -> str:
        return "TrajSafeGuardedLLM"

    @property
    def metadata(self) -> LLMMetadata:
        return self.llm.metadata.model_copy(update={"is_chat_model": True})

    # -- plumbing -------------------------------------------------------------------------------------------------
    def _cid(self, kwargs: dict[str, Any]) -> str | None:
        cid = kwargs.pop("trajsafe_conversation_id", None)
        return cid if cid is not None else self.conversation_id

    # A call without any user or assistant message (nothing the monitor assesses) passes through unchecked.
    def _check(self, convo: list[dict[str, str]], cid: str | None) -> Verdict | None:
        if not _assessable(convo):
            return None
        verdict = self.guard.check_input(convo, conversation_id=cid)
        _emit(verdict, "llm")
        return verdict

    async def _acheck(self, convo: list[dict[str, str]], cid: str | None) -> Verdict | None:
        if not _assessable(convo):
            return None
        verdict = await self.guard.acheck_input(convo, conversation_id=cid)
        _emit(verdict, "llm")
        return verdict

    def _read(self, convo: list[dict[str, str]], reply: str, cid: str | None) -> Verdict | None:
        if not _reads(self.guard) or not _assessable(convo):
            return None
        verdict = self.guard.check_output(convo, reply, conversation_id=cid)
        _emit(verdict, "llm")
        return verdict

    async def _aread(self, convo: list[dict[str, str]], reply: str, cid: str | None) -> Verdict | None:
        if not _reads(self.guard) or not _assessable(convo):
            return None
        verdict = await self.guard.acheck_output(convo, reply, conversation_id=cid)
        _emit(verdict, "llm")
        return verdict

    def _checker(self, convo: list[dict[str, str]], cid: str | None) -> StreamChecker | None:
        if not _reads(self.guard) or not _assessable(convo):
            return None
        return self.guard.stream_checker(convo, conversation_id=cid)

    def _messages(self, original: Sequence[ChatMessage], convo: list[dict[str, str]],
                  verdict: Verdict | None) -> list[ChatMessage]:
        """The guard's messages (e.g. with a steering system message), keeping the original objects elsewhere."""
        if verdict is None:
            return list(original)
        out, j = [], 0
        for message in verdict.messages:
            if j < len(convo) and message == convo[j]:
                out.append(original[j])
                j += 1
            else:
                role = self.llm.metadata.system_role if message["role"] == "system" else MessageRole(message["role"])
                out.append(ChatMessage(role=role, content=message["content"]))
        return out

    @staticmethod
    def _prompt(prompt: str, convo: list[dict[str, str]], verdict: Verdict | None) -> str:
        if verdict is None:
            return prompt
        extra = [m["content"] for m in verdict.messages if m not in convo]
        return "\n\n".join([*extra, prompt])

    # -- chat -----------------------------------------------------------------------------------------------------
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        cid, convo = self._cid(kwargs), to_openai_messages(messages)
        verdict = self._check(convo, cid)
        if verdict is not None and not verdict.call_model:
            return _chat_answer(verdict.response or "", verdict)
        response = self.llm.chat(self._messages(messages, convo, verdict), **kwargs)
        out = self._read(convo, response.message.content or "", cid)
        if out is not None and out.response is not None:
            return _chat_answer(out.response, verdict, out)
        return _tag(response, verdict, out)

    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        cid, convo = self._cid(kwargs), to_openai_messages(messages)
        verdict = await self._acheck(convo, cid)
        if verdict is not None and not verdict.call_model:
            return _chat_answer(verdict.response or "", verdict)
        response = await self.llm.achat(self._messages(messages, convo, verdict), **kwargs)
        out = await self._aread(convo, response.message.content or "", cid)
        if out is not None and out.response is not None:
            return _chat_answer(out.response, verdict, out)
        return _tag(response, verdict, out)

    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        cid, convo = self._cid(kwargs), to_openai_messages(messages)
        verdict = self._check(convo, cid)  # decided now, before the stream is consumed
        if verdict is not None and not verdict.call_model:
            return iter([_chat_answer(verdict.response or "", verdict, delta=verdict.response or "")])
        inner = self.llm.stream_chat(self._messages(messages, convo, verdict), **kwargs)
        return _guarded_stream(inner, self._checker(convo, cid), verdict, _chat_answer)

    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        cid, convo = self._cid(kwargs), to_openai_messages(messages)
        verdict = await self._acheck(convo, cid)
        if verdict is not None and not verdict.call_model:
            return _one(_chat_answer(verdict.response or "", verdict, delta=verdict.response or ""))
        inner = await self.llm.astream_chat(self._messages(messages, convo, verdict), **kwargs)
        return _aguarded_stream(inner, self._checker(convo, cid), verdict, _chat_answer)

    # -- completion -----------------------------------------------------------------------------------------------
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        cid, convo = self._cid(kwargs), _prompt_convo(prompt)
        verdict = self._check(convo, cid)
        if verdict is not None and not verdict.call_model:
            return _completion_answer(verdict.response or "", verdict)
        response = self.llm.complete(self._prompt(prompt, convo, verdict), formatted=formatted, **kwargs)
        out = self._read(convo, response.text, cid)
        if out is not None and out.response is not None:
            return _completion_answer(out.response, verdict, out)
        return _tag(response, verdict, out)

    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        cid, convo = self._cid(kwargs), _prompt_convo(prompt)
        verdict = await self._acheck(convo, cid)
        if verdict is not None and not verdict.call_model:
            return _completion_answer(verdict.response or "", verdict)
        response = await self.llm.acomplete(self._prompt(prompt, convo, verdict), formatted=formatted, **kwargs)
        out = await self._aread(convo, response.text, cid)
        if out is not None and out.response is not None:
            return _completion_answer(out.response, verdict, out)
        return _tag(response, verdict, out)

    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        cid, convo = self._cid(kwargs), _prompt_convo(prompt)
        verdict = self._check(convo, cid)
        if verdict is not None and not verdict.call_model:
            return iter([_completion_answer(verdict.response or "", verdict, delta=verdict.response or "")])
        inner = self.llm.stream_complete(self._prompt(prompt, convo, verdict), formatted=formatted, **kwargs)
        return _guarded_stream(inner, self._checker(convo, cid), verdict, _completion_answer)

    async def astream_complete(self, prompt: str, formatted: bool = False,
                               **kwargs: Any) -> CompletionResponseAsyncGen:
        cid, convo = self._cid(kwargs), _prompt_convo(prompt)
        verdict = await self._acheck(convo, cid)
        if verdict is not None and not verdict.call_model:
            return _one(_completion_answer(verdict.response or "", verdict, delta=verdict.response or ""))
        inner = await self.llm.astream_complete(self._prompt(prompt, convo, verdict), formatted=formatted, **kwargs)
        return _aguarded_stream(inner, self._checker(convo, cid), verdict, _completion_answer)


async def _one(response: R) -> AsyncIterator[R]:
    yield response


def _guarded_stream(inner: Iterator[R], checker: StreamChecker | None, verdict: Verdict | None,
                    answer: Callable[..., R]) -> Iterator[R]:
    """Deliver `inner` while the checker allows it; on a cut, deliver the replacement instead and stop."""
    text, first = "", True
    try:
        for response in inner:
            delta = _delta(response, text)
            cut = checker.feed(delta) if checker is not None and delta else None
            if cut is not None:
                final = checker.finish()  # type: ignore[union-attr]
                _emit(final, "llm")
                yield answer(text + cut, verdict, final, delta=cut)
                return
            text += delta
            yield _tag(response, verdict) if first else response
            first = False
    finally:
        getattr(inner, "close", lambda: None)()
    if checker is not None:
        final = checker.finish()
        _emit(final, "llm")
        if final.response is not None:  # the end of the reply crossed the line: append the replacement
            yield answer(text + final.response, verdict, final, delta=final.response)


async def _aguarded_stream(inner: AsyncIterator[R], checker: StreamChecker | None, verdict: Verdict | None,
                           answer: Callable[..., R]) -> AsyncIterator[R]:
    text, first = "", True
    try:
        async for response in inner:
            delta = _delta(response, text)
            cut = await checker.afeed(delta) if checker is not None and delta else None
            if cut is not None:
                final = await checker.afinish()  # type: ignore[union-attr]
                _emit(final, "llm")
                yield answer(text + cut, verdict, final, delta=cut)
                return
            text += delta
            yield _tag(response, verdict) if first else response
            first = False
    finally:
        aclose = getattr(inner, "aclose", None)
        if aclose is not None:
            await aclose()
    if checker is not None:
        final = await checker.afinish()
        _emit(final, "llm")
        if final.response is not None:
            yield answer(text + final.response, verdict, final, delta=final.response)


# -- callback handler: block before CBEventType.LLM ---------------------------------------------------------------
_OPEN_LLM_EVENT: ContextVar[str | None] = ContextVar("trajsafe_open_llm_event", default=None)
_OPEN_AUDIT: ContextVar[tuple[str, str | None] | None] = ContextVar("trajsafe_open_audit", default=None)


def _payload_convo(payload: dict[str, Any]) -> list[dict[str, str]] | None:
    if payload.get(EventPayload.MESSAGES) is not None:
        return to_openai_messages(payload[EventPayload.MESSAGES])
    if isinstance(payload.get(EventPayload.PROMPT), str):
        return _prompt_convo(payload[EventPayload.PROMPT])
    return None


def _response_text(response: Any) -> str | None:
    if isinstance(response, ChatResponse):
        return response.message.content or ""
    if isinstance(response, CompletionResponse):
        return response.text
    return None


class TrajSafeCallbackHandler(BaseCallbackHandler):
    """Checks every LLM call on a `CallbackManager`: raises `GuardBlocked` before the call for the actions in
    `block_on` (refuse, terminate), and after a reply that must be replaced; reads replies into the trajectory.

    Callbacks cannot rewrite the call, so `probe` and `steer` are only recorded here (use `GuardedLLM` to carry
    them out, and to cut streams: a streamed reply is read when it ends). A chat call that an LLM implements
    through `complete` (e.g. `CustomLLM`) is checked once, as a chat.
    """

    def __init__(self, guard: Guard | None = None, *, monitor: Any = None, policy: Any = None,
                 block_on: Iterable[str] = ("refuse", "terminate"), conversation_id: str | None = None) -> None:
        super().__init__(event_starts_to_ignore=[], event_ends_to_ignore=[])
        self.guard = make_guard(guard, monitor, policy)
        self.block_on = frozenset(block_on)
        self.conversation_id = conversation_id
        self._open: dict[str, list[dict[str, str]]] = {}
        self._nested: set[str] = set()
        self._lock = threading.Lock()

    def on_event_start(self, event_type: CBEventType, payload: dict[str, Any] | None = None, event_id: str = "",
                       parent_id: str = "", **kwargs: Any) -> str:
        if event_type != CBEventType.LLM or not payload:
            return event_id
        convo = _payload_convo(payload)
        if convo is None or not _assessable(convo):
            return event_id
        with self._lock:
            if _OPEN_LLM_EVENT.get() in self._open:  # inside a call already checked (chat -> complete)
                self._nested.add(event_id)
                return event_id
        verdict = self.guard.check_input(convo, conversation_id=self.conversation_id)
        _emit(verdict, "callback")
        if verdict.action in self.block_on:
            raise GuardBlocked(verdict.response or f"blocked by the guard ({verdict.action})", verdict.decision)
        with self._lock:
            self._open[event_id] = convo
        _OPEN_LLM_EVENT.set(event_id)
        return event_id

    def on_event_end(self, event_type: CBEventType, payload: dict[str, Any] | None = None, event_id: str = "",
                     **kwargs: Any) -> None:
        if event_type != CBEventType.LLM:
            return
        with self._lock:
            if event_id in self._nested:
                self._nested.discard(event_id)
                return
            convo = self._open.pop(event_id, None)
        payload = payload or {}
        if convo is None or EventPayload.EXCEPTION in payload or not _reads(self.guard):
            return
        reply = _response_text(payload.get(EventPayload.RESPONSE, payload.get(EventPayload.COMPLETION)))
        if reply is None:
            return
        verdict = self.guard.check_output(convo, reply, conversation_id=self.conversation_id)
        _emit(verdict, "callback")
        if verdict.response is not None:  # a callback cannot replace the reply: it stops it
            raise GuardBlocked(verdict.response, verdict.decision)

    def start_trace(self, trace_id: str | None = None) -> None:
        return None

    def end_trace(self, trace_id: str | None = None, trace_map: dict[str, list[str]] | None = None) -> None:
        return None


# -- instrumentation: decisions as events -------------------------------------------------------------------------
class TrajSafeEventHandler(BaseEventHandler):
    """Records `TrajSafeDecisionEvent`s for LlamaIndex observability; attach it with
    `get_dispatcher().add_event_handler(handler)`.

    With `audit=True` it also scores every LLM call the dispatcher reports and dispatches its decisions (source
    "audit"). The dispatcher swallows handler exceptions, so this is for audit only: it cannot block a call (use
    `GuardedLLM` or `TrajSafeCallbackHandler` for that). `on_event` is called with each decision event.
    """

    events: list[TrajSafeDecisionEvent] = Field(default_factory=list)
    max_events: int = 10_000
    audit: bool = False
    conversation_id: str | None = None
    on_event: Callable[[TrajSafeDecisionEvent], Any] | None = Field(default=None, exclude=True)
    _guard: Guard | None = PrivateAttr(default=None)
    _open: dict[tuple[str, str | None], list[dict[str, str]]] = PrivateAttr(default_factory=dict)
    _lock: Any = PrivateAttr(default_factory=threading.Lock)

    def __init__(self, guard: Guard | None = None, *, monitor: Any = None, policy: Any = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if guard is not None or monitor is not None or policy is not None or self.audit:
            self._guard = make_guard(guard, monitor, policy)

    @classmethod
    def class_name(cls) -> str:
        return "TrajSafeEventHandler"

    @property
    def guard(self) -> Guard | None:
        return self._guard

    @property
    def decisions(self) -> list[dict[str, Any]]:
        """The recorded decisions (docs/contracts.md §3 fields), oldest first."""
        return [e.decision for e in self.events]

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        if isinstance(event, TrajSafeDecisionEvent):
            with self._lock:
                self.events.append(event)
                del self.events[: max(0, len(self.events) - self.max_events)]
            if self.on_event is not None:
                self.on_event(event)
            return
        if not self.audit or self._guard is None:
            return
        if isinstance(event, LLMChatStartEvent | LLMCompletionStartEvent):
            self._audit_start(event)
        elif isinstance(event, LLMChatEndEvent | LLMCompletionEndEvent):
            self._audit_end(event)

    def _audit_start(self, event: LLMChatStartEvent | LLMCompletionStartEvent) -> None:
        assert self._guard is not None
        key = (type(event).__name__.replace("Start", ""), event.span_id)
        with self._lock:
            if _OPEN_AUDIT.get() in self._open:  # inside an audited call (chat -> complete): audited once
                return
        convo = (to_openai_messages(event.messages) if isinstance(event, LLMChatStartEvent)
                 else _prompt_convo(event.prompt))
        if not _assessable(convo):
            return
        _emit(self._guard.check_input(convo, conversation_id=self.conversation_id), "audit")
        with self._lock:
            self._open[key] = convo
        _OPEN_AUDIT.set(key)

    def _audit_end(self, event: LLMChatEndEvent | LLMCompletionEndEvent) -> None:
        assert self._guard is not None
        with self._lock:
            convo = self._open.pop((type(event).__name__.replace("End", ""), event.span_id), None)
        reply = _response_text(event.response)
        if convo is None or reply is None or not _reads(self._guard):
            return
        _emit(self._guard.check_output(convo, reply, conversation_id=self.conversation_id), "audit")
