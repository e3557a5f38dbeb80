"""The action-dispatch API: one decorator that carries out allow / probe / steer / refuse / terminate around a chat
callable (docs/contracts.md §1).

Usage::

    from trajsafe_sdk import guard

    @guard                                   # the embedded default monitor, default policy and wording
    def chat(messages: list[dict]) -> str:
        return my_llm(messages)

    @guard(conversation_id=lambda messages, user: user.session_id, fail_mode="open")
    async def achat(messages, user): ...

What happens on each call
-------------------------
1. The conversation is taken from the wrapped callable's arguments: the parameter named by `messages_param`, else the
   first of `messages`, `conversation`, `history`, `chat_history`, `prompt`, `message`, `query`, `input`, `text`,
   `question` that the callable has, else its first positional parameter (`self`/`cls` skipped). It may be an
   OpenAI-style list of `{"role", "content"}` messages (or objects with `role`/`content`), or a single string (one user
   message). A malformed conversation raises `MessageError` (a `ValueError`) before any state is touched; a call that
   does not match the signature raises the usual `TypeError`.
2. The monitor reads the conversation (only what it has not read before: see "Conversation identity") and the
   `Policy` turns the scores after the last user message into a `Decision`:
   - `allow`: the callable is called with its arguments unchanged;
   - `steer`: it is called with a steering system message (`Handlers.steer_instruction`) inserted after the leading
     system messages (for a string conversation, the instruction is put before the text);
   - `probe` / `refuse` / `terminate`: it is *not* called; the guard answers with `Handlers.probe` / `refuse` /
     `terminate` text instead: returned as a `str` (or `response_factory(text, verdict)` if given); a (async)
     generator yields it as one chunk. A terminated conversation is answered with `terminate` on every later call
     until `Guard.reset(conversation_id)`.
   How a probe's answer flows back: the application stores the probe text as the assistant message, the user
   answers, and the next call's history contains both; the policy lowers the action when the answer lowers the risk
   (a credible purpose) and never probes twice in a row.
3. Output (`check_output=True`): a returned `str` (or a dict/object with OpenAI-like `choices[0].message.content`,
   or a `content` string, best effort) is read into the trajectory as the assistant reply. When the decision after it
   is in `replace_on` (default `refuse`, `terminate`), the reply is replaced by `Handlers.replace_output` text (in a
   copy of the same shape where possible). Other return values pass through unread.
4. Streaming (generator and async-generator callables, or callables returning an iterator): the growing reply is
   checked every `stream_check_every` characters and at sentence ends, on a private copy of the conversation's cache
   that takes only the reply's new tokens at each check; a chunk whose check calls for replacement is not delivered:
   the stream is cut and the replacement text is delivered instead. Text between checks is delivered unchecked
   (`stream_check_every=0` checks every chunk). At the end the whole reply is read into the trajectory; if that final
   reading calls for replacement, the replacement is yielded as a last chunk. Chunks may be strings, OpenAI-like
   chunks (`choices[0].delta.content`) or objects with a `content` string; other chunks pass through unchecked.

Conversation identity
---------------------
`conversation_id` may be a string, a callable receiving the wrapped callable's arguments, or None; when None and the
callable has a `conversation_id` parameter, its value is used. With an id, the conversation's session is kept under
that id and an edited history is rewound to the common prefix. Without one, the pool finds the session holding the
longest prefix of the messages (a stateless caller re-sending the history pays only for the new messages; a
regenerated branch is forked, and state such as termination is copied to the fork). Turns of one conversation are
expected one at a time; different conversations may run concurrently from threads and asyncio tasks.

Failures and observability
--------------------------
A monitor failure (ONNX Runtime error, provider lost) follows `fail_mode`: "closed" (default) refuses (or replaces /
cuts the output), "open" allows; both are logged at ERROR with the exception. A terminated conversation stays
terminated in both modes. Every decision is logged on the `trajsafe_sdk.guard` logger (DEBUG for allow, INFO for
interventions) with `extra={"trajsafe": DecisionEvent.to_dict()}` (JSON-able), and passed to `on_decision` if given.
Events carry the Decision and the conversation id (an anonymous conversation is named by its pool key, "anon:N"),
never the text unless `log_content=True`.

The lower-level API used by the framework adapters: `check_input`, `check_output`, `stream_checker` (and `acheck_*`
coroutines that run the CPU work in a worker thread), `reset`.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import functools
import inspect
import logging
import re
import threading
import time
import types
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .decision import Decision
from .errors import MessageError
from .handlers import Handlers
from .labels import ACTIONS, CATEGORIES
from .messages import Message, normalize_messages, prefix_key

if TYPE_CHECKING:  # the runtime (numpy, onnxruntime) loads on first use, not on import
    from .core import Assessment, Monitor, TrajectorySession
    from .policy import Policy
    from .pool import SessionPool

log = logging.getLogger("trajsafe_sdk.guard")

STAGES = ("input", "output", "stream")
CALL_MODEL_ACTIONS = ("allow", "steer")
ASSESSED_ROLES = ("user", "assistant")
CONVERSATION_PARAMS = ("messages", "conversation", "history", "chat_history", "prompt", "message", "query", "input",
                       "text", "question")
_CONFIG_ATTRS = ("_res", "handlers", "conversation_id", "messages_param", "fail_mode", "output_checks",
                 "stream_check_every", "on_decision", "log_content", "replace_on", "response_factory")
_DECISIONS_KEY = "guard_decisions"  # in TrajectorySession.state: prefix digest -> Decision (copy-on-write)
_DECISIONS_KEPT = 64
_SENTENCE_END = re.compile(r"[.!?\u2026\u3002\uff01\uff1f](?:\s|$)|\n")


# -- records -------------------------------------------------------------------------------------------------------
@dataclass
class Verdict:
    """What to do for one call: the Decision, and what to send to the model or answer instead."""

    decision: Decision
    action: str
    messages: list[dict[str, str]]  # what to send to the model: unchanged (allow) or with a steering system message
    response: str | None = None  # text to answer with instead of the model (probe/refuse/terminate; replaced output)
    conversation_id: str | None = None
    stage: str = "input"

    @property
    def call_model(self) -> bool:
        """True for allow and steer: call the model (with `messages`)."""
        return self.action in CALL_MODEL_ACTIONS

    @property
    def replaced(self) -> bool:
        """True when an output (or stream) was replaced by `response`."""
        return self.stage != "input" and self.response is not None


@dataclass(frozen=True)
class DecisionEvent:
    """One decision, as emitted to the log and to `on_decision`."""

    conversation_id: str | None
    stage: str  # "input" | "output" | "stream"
    decision: Decision
    content: str | None = None  # the text read, only with log_content=True

    def to_dict(self) -> dict[str, Any]:
        data = {"conversation_id": self.conversation_id, "stage": self.stage, "decision": self.decision.to_dict(),
                "content": self.content}
        if self.decision.extra.get("monitor_error"):
            data["monitor_error"] = self.decision.extra["monitor_error"]
        return data


# -- the default monitor ---------------------------------------------------------------------------------------------
_DEFAULT_MONITORS: dict[str, Monitor] = {}
_DEFAULT_LOCK = threading.Lock()


def default_monitor() -> Monitor:
    """The embedded default monitor (`$TRAJSAFE_MODEL` if set), loaded once per package path."""
    from .core import Monitor
    from .package import default_package_path

    path = str(Path(default_package_path(check=True)).resolve())
    with _DEFAULT_LOCK:
        monitor = _DEFAULT_MONITORS.get(path)
        if monitor is None:
            monitor = _DEFAULT_MONITORS[path] = Monitor.load(path)
        return monitor


class _Resources:
    """Monitor, pool and policy of a guard, resolved on first use (shared by the callables one Guard wraps)."""

    def __init__(self, monitor: Any, pool: Any, policy: Any) -> None:
        self.monitor_spec, self._pool, self._policy = monitor, pool, policy
        self._monitor: Monitor | None = pool.monitor if pool is not None else (
            monitor if monitor is not None and not isinstance(monitor, str | Path) else None)
        self.lock = threading.Lock()

    @property
    def monitor(self) -> Monitor:
        if self._monitor is None:
            with self.lock:
                if self._monitor is None:
                    if self.monitor_spec is None:
                        self._monitor = default_monitor()
                    else:
                        from .core import Monitor

                        self._monitor = Monitor.load(self.monitor_spec)
        return self._monitor

    @property
    def pool(self) -> SessionPool:
        if self._pool is None:
            monitor = self.monitor
            with self.lock:
                if self._pool is None:
                    from .pool import SessionPool

                    self._pool = SessionPool(monitor)
        return self._pool

    @property
    def policy(self) -> Policy:
        if self._policy is None:
            monitor = self.monitor
            with self.lock:
                if self._policy is None:
                    from .policy import Policy

                    self._policy = Policy.from_package(monitor.package.policy_defaults)
        return self._policy

    @policy.setter
    def policy(self, value: Policy) -> None:
        _check_policy(value)
        self._policy = value


# -- the guard -------------------------------------------------------------------------------------------------------
class Guard:
    """Wraps a chat callable (sync, async, generator or async generator) and dispatches the five actions around it.

    `Guard(fn, **options)` is the wrapped callable (same signature and metadata); `Guard(**options)` without `fn` is
    a decorator sharing its monitor, pool and policy among the callables it wraps, and the lower-level API
    (`check_input`, `check_output`, `stream_checker`) for adapters. See the module docstring for the behaviour.
    """

    def __init__(self, fn: Callable[..., Any] | None = None, *, monitor: Monitor | str | Path | None = None,
                 policy: Policy | None = None, pool: SessionPool | None = None,
                 conversation_id: str | Callable[..., str | None] | None = None, messages_param: str | None = None,
                 handlers: Handlers | None = None, fail_mode: Literal["closed", "open"] = "closed",
                 check_output: bool = True, stream_check_every: int = 48,
                 on_decision: Callable[[DecisionEvent], None] | None = None, log_content: bool = False,
                 replace_on: Iterable[str] = ("refuse", "terminate"),
                 response_factory: Callable[[str, Verdict], Any] | None = None) -> None:
        if monitor is not None and not isinstance(monitor, str | Path) and not hasattr(monitor, "new_session"):
            raise TypeError(f"monitor must be a Monitor, a package path or None, got {type(monitor).__name__}")
        if pool is not None:
            if not all(hasattr(pool, a) for a in ("assess", "get", "match", "monitor")):
                raise TypeError(f"pool must be a SessionPool, got {type(pool).__name__}")
            if monitor is not None and pool.monitor is not monitor:
                raise ValueError("pool= and monitor= disagree: the pool runs another monitor; pass only one")
        if policy is not None:
            _check_policy(policy)
        if handlers is not None and not isinstance(handlers, Handlers):
            raise TypeError(f"handlers must be a trajsafe_sdk.Handlers, got {type(handlers).__name__}")
        if fail_mode not in ("closed", "open"):
            raise ValueError(f"fail_mode must be 'closed' or 'open', got {fail_mode!r}")
        if conversation_id is not None and not isinstance(conversation_id, str) and not callable(conversation_id):
            raise TypeError("conversation_id must be a string, a callable (call arguments) -> str | None, or None")
        if isinstance(stream_check_every, bool) or not isinstance(stream_check_every, int) or stream_check_every < 0:
            raise ValueError(f"stream_check_every must be an int >= 0 (characters), got {stream_check_every!r}")
        if on_decision is not None and not callable(on_decision):
            raise TypeError("on_decision must be callable (DecisionEvent) -> None")
        if response_factory is not None and not callable(response_factory):
            raise TypeError("response_factory must be callable (text, Verdict) -> response")
        if messages_param is not None and not isinstance(messages_param, str):
            raise TypeError("messages_param must be the name of a parameter")
        replace_on = tuple(replace_on)
        if not set(replace_on) <= set(ACTIONS):
            raise ValueError(f"replace_on must be actions among {ACTIONS}, got {list(replace_on)}")
        self._res = _Resources(monitor, pool, policy)
        self.handlers = handlers or Handlers()
        self.conversation_id = conversation_id
        self.messages_param = messages_param
        self.fail_mode = fail_mode
        self.output_checks = bool(check_output)
        self.stream_check_every = stream_check_every
        self.on_decision = on_decision
        self.log_content = bool(log_content)
        self.replace_on = replace_on
        self.response_factory = response_factory
        self._fn: Callable[..., Any] | None = None
        if fn is not None:
            self._bind(fn)

    # -- resources -------------------------------------------------------------------------------------------------
    @property
    def monitor(self) -> Monitor:
        return self._res.monitor

    @property
    def pool(self) -> SessionPool:
        return self._res.pool

    @property
    def policy(self) -> Policy:
        return self._res.policy

    @policy.setter
    def policy(self, value: Policy) -> None:
        self._res.policy = value

    def wrap(self, fn: Callable[..., Any]) -> Guard:
        """A guard around `fn` with this guard's options, sharing its monitor, pool and policy."""
        other = object.__new__(type(self))
        other.__dict__.update({k: self.__dict__[k] for k in _CONFIG_ATTRS})
        other._fn = None
        other._bind(fn)
        return other

    def __repr__(self) -> str:
        target = getattr(self._fn, "__qualname__", repr(self._fn)) if self._fn is not None else "no callable"
        return f"<Guard {target} fail_mode={self.fail_mode!r}>"

    # -- wrapping --------------------------------------------------------------------------------------------------
    def _bind(self, fn: Callable[..., Any]) -> None:
        if not callable(fn):
            raise TypeError(f"guard() wraps a callable, got {type(fn).__name__}")
        self._fn = fn
        functools.update_wrapper(self, fn, updated=())
        try:
            self._sig: inspect.Signature | None = inspect.signature(fn)
        except (TypeError, ValueError):
            self._sig = None
        call = getattr(fn, "__call__", None)  # noqa: B004 (callable objects with async __call__)
        if inspect.isasyncgenfunction(fn) or inspect.isasyncgenfunction(call):
            self._kind = "asyncgen"
        elif inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(call):
            self._kind = "async"
            if hasattr(inspect, "markcoroutinefunction"):  # py3.12+
                inspect.markcoroutinefunction(self)
            self._is_coroutine = getattr(asyncio.coroutines, "_is_coroutine", None)  # asyncio.iscoroutinefunction
        elif inspect.isgeneratorfunction(fn) or inspect.isgeneratorfunction(call):
            self._kind = "gen"
        else:
            self._kind = "sync"
        self._where = self._locate_conversation()
        params = self._sig.parameters if self._sig is not None else {}
        self._cid_param = "conversation_id" if "conversation_id" in params else None

    def _locate_conversation(self) -> tuple[str, Any]:
        """Where the conversation is in a call: ("param", name) | ("varkw", key) | ("varpos", 0) | ("any", key)."""
        name = self.messages_param
        if self._sig is None:
            return ("any", name or "messages")
        params = self._sig.parameters
        named = {n: p for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
        has_varkw = any(p.kind is p.VAR_KEYWORD for p in params.values())
        has_varpos = any(p.kind is p.VAR_POSITIONAL for p in params.values())
        if name is not None:
            if name in named:
                return ("param", name)
            if has_varkw:
                return ("varkw", name)
            raise ValueError(f"messages_param={name!r} is not a parameter of {getattr(self._fn, '__qualname__', '?')}"
                             f"{self._sig}")
        for candidate in CONVERSATION_PARAMS:
            if candidate in named:
                return ("param", candidate)
        for n, p in named.items():
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and n not in ("self", "cls"):
                return ("param", n)
        if has_varpos:
            return ("varpos", 0)
        if has_varkw:
            return ("varkw", "messages")
        raise ValueError(f"cannot tell which parameter of {getattr(self._fn, '__qualname__', '?')}{self._sig} "
                         "carries the conversation; pass messages_param='...'")

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        """Methods: `@guard` on a method binds like a function."""
        return self if obj is None else types.MethodType(self, obj)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._fn is None:
            if len(args) == 1 and not kwargs and callable(args[0]):
                return self.wrap(args[0])
            raise TypeError("this Guard wraps no callable: use Guard(fn) or guard(fn), or check_input/check_output")
        call = self._prepare(args, kwargs)
        if self._kind == "async":
            return self._run_async(call)
        if self._kind == "gen":
            return self._run_gen(call)
        if self._kind == "asyncgen":
            return self._run_agen(call)
        return self._run_sync(call)

    def _prepare(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> _Call:
        """Bind the call, find and validate the conversation and its id (before any state is touched)."""
        kind, key = self._where
        bound = self._sig.bind(*args, **kwargs) if self._sig is not None else None
        if kind == "param":
            assert bound is not None and self._sig is not None
            value = bound.arguments.get(key, self._sig.parameters[key].default)
        elif kind == "varkw":
            assert bound is not None and self._sig is not None
            varkw = next(n for n, p in self._sig.parameters.items() if p.kind is p.VAR_KEYWORD)
            value = bound.arguments.get(varkw, {}).get(key, inspect.Parameter.empty)
        elif kind == "varpos":
            assert bound is not None and self._sig is not None
            varpos = next(n for n, p in self._sig.parameters.items() if p.kind is p.VAR_POSITIONAL)
            rest = bound.arguments.get(varpos, ())
            value = rest[0] if rest else inspect.Parameter.empty
        else:
            value = args[0] if args else kwargs.get(key, inspect.Parameter.empty)
        if value is inspect.Parameter.empty or value is None:
            raise MessageError(f"no conversation in this call: the argument {key!r} carries it "
                               "(a list of messages or a string); name another one with messages_param=")
        value, msgs = _read_conversation(value)
        cid = self._call_conversation_id(args, kwargs, bound)
        return _Call(args, kwargs, bound, (kind, key), value, msgs, cid)

    def _call_conversation_id(self, args: tuple[Any, ...], kwargs: dict[str, Any],
                              bound: inspect.BoundArguments | None) -> str | None:
        spec = self.conversation_id
        if isinstance(spec, str):
            cid = spec
        elif spec is not None:
            cid = spec(*args, **kwargs)
        elif self._cid_param is not None and bound is not None:
            cid = bound.arguments.get(self._cid_param)
        else:
            cid = None
        return _check_cid(cid)

    # -- the four call shapes ----------------------------------------------------------------------------------------
    def _respond(self, verdict: Verdict) -> Any:
        assert verdict.response is not None
        if self.response_factory is not None:
            return self.response_factory(verdict.response, verdict)
        return verdict.response

    def _run_sync(self, call: _Call) -> Any:
        verdict = self._input(call.msgs, call.cid, call.value)
        if not verdict.call_model:
            return self._respond(verdict)
        args, kwargs = call.arguments(verdict)
        assert self._fn is not None
        result = self._fn(*args, **kwargs)
        if inspect.isawaitable(result):
            return self._finish_awaitable(call, result)
        if isinstance(result, AsyncIterator):
            return self._checked_aiter(call, result)
        if isinstance(result, Iterator):
            return self._checked_iter(call, result)
        return self._read_result(call, result)

    async def _finish_awaitable(self, call: _Call, awaitable: Any) -> Any:
        result = await awaitable
        if isinstance(result, AsyncIterator):
            return self._checked_aiter(call, result)
        return await asyncio.to_thread(self._read_result, call, result)

    async def _run_async(self, call: _Call) -> Any:
        verdict = await asyncio.to_thread(self._input, call.msgs, call.cid, call.value)
        if not verdict.call_model:
            return self._respond(verdict)
        args, kwargs = call.arguments(verdict)
        assert self._fn is not None
        return await self._finish_awaitable(call, self._fn(*args, **kwargs))

    def _run_gen(self, call: _Call) -> Iterator[Any]:
        verdict = self._input(call.msgs, call.cid, call.value)
        if not verdict.call_model:
            yield self._respond(verdict)
            return
        args, kwargs = call.arguments(verdict)
        assert self._fn is not None
        yield from self._checked_iter(call, self._fn(*args, **kwargs))

    async def _run_agen(self, call: _Call) -> AsyncIterator[Any]:
        verdict = await asyncio.to_thread(self._input, call.msgs, call.cid, call.value)
        if not verdict.call_model:
            yield self._respond(verdict)
            return
        args, kwargs = call.arguments(verdict)
        assert self._fn is not None
        async for chunk in self._checked_aiter(call, self._fn(*args, **kwargs)):
            yield chunk

    def _checked_iter(self, call: _Call, chunks: Iterator[Any]) -> Iterator[Any]:
        if not self.output_checks:
            yield from chunks
            return
        checker = self.stream_checker(call.msgs, call.cid)
        template: Any = None
        try:
            for chunk in chunks:
                text = _chunk_text(chunk)
                if not text:
                    yield chunk
                    continue
                template = chunk
                cut = checker.feed(text)
                if cut is not None:
                    yield _with_text(chunk, cut)
                    break
                yield chunk
            final = checker.finish()
            if final.response is not None and not checker.cut:
                yield _with_text(template, final.response)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()

    async def _checked_aiter(self, call: _Call, chunks: AsyncIterator[Any]) -> AsyncIterator[Any]:
        if not self.output_checks:
            async for chunk in chunks:
                yield chunk
            return
        checker = self.stream_checker(call.msgs, call.cid)
        template: Any = None
        try:
            async for chunk in chunks:
                text = _chunk_text(chunk)
                if not text:
                    yield chunk
                    continue
                template = chunk
                cut = await checker.afeed(text)
                if cut is not None:
                    yield _with_text(chunk, cut)
                    break
                yield chunk
            final = await checker.afinish()
            if final.response is not None and not checker.cut:
                yield _with_text(template, final.response)
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()

    def _read_result(self, call: _Call, result: Any) -> Any:
        """Read a returned reply into the trajectory; replace it when the decision calls for it."""
        if not self.output_checks:
            return result
        text = _reply_text(result)
        if text is None:
            log.debug("trajsafe: return value of type %s not read as a reply", type(result).__name__)
            return result
        verdict = self._output(call.msgs, text, call.cid)
        if verdict.response is None:
            return result
        if self.response_factory is not None:
            return self.response_factory(verdict.response, verdict)
        return _with_text(result, verdict.response)

    # -- lower-level API ---------------------------------------------------------------------------------------------
    def check_input(self, messages: Any, conversation_id: str | None = None) -> Verdict:
        """Decide before a reply: read `messages` (a history ending with the user's turn, or a string)."""
        _, msgs = _read_conversation(messages)
        return self._input(msgs, _check_cid(conversation_id), messages)

    def check_output(self, messages: Any, reply: str, conversation_id: str | None = None) -> Verdict:
        """Read the model's `reply` to `messages` into the trajectory; `response` is set when it must be replaced."""
        _, msgs = _read_conversation(messages)
        if not isinstance(reply, str):
            raise MessageError(f"reply must be a string, got {type(reply).__name__}")
        return self._output(msgs, reply, _check_cid(conversation_id))

    def stream_checker(self, messages: Any, conversation_id: str | None = None) -> StreamChecker:
        """A checker for a reply to `messages` that arrives in chunks (see `StreamChecker`)."""
        _, msgs = _read_conversation(messages)
        return StreamChecker(self, msgs, _check_cid(conversation_id))

    async def acheck_input(self, messages: Any, conversation_id: str | None = None) -> Verdict:
        return await asyncio.to_thread(self.check_input, messages, conversation_id)

    async def acheck_output(self, messages: Any, reply: str, conversation_id: str | None = None) -> Verdict:
        return await asyncio.to_thread(self.check_output, messages, reply, conversation_id)

    def reset(self, conversation_id: str | None = None, *, messages: Any = None) -> None:
        """Clear a conversation's guard state (termination, probe history): by id, or by its `messages` for a
        conversation without an id. What was read stays cached: the conversation goes on from there."""
        if conversation_id is not None:
            session = self.pool.get(_check_cid(conversation_id))  # type: ignore[arg-type]
        elif messages is not None:
            session = self.pool.match(_read_conversation(messages)[1])
        else:
            raise TypeError("reset() needs a conversation_id, or messages= for a conversation without an id")
        with session.lock:
            session.state.clear()

    def forget(self, conversation_id: str) -> None:
        """Drop a conversation (its cache and state) from the pool, e.g. when the application closes it."""
        self.pool.reset(_check_cid(conversation_id))  # type: ignore[arg-type]

    # -- deciding ----------------------------------------------------------------------------------------------------
    def _input(self, msgs: list[Message], cid: str | None, original: Any = None) -> Verdict:
        pool, _ = self.pool, self.policy  # a missing or corrupt package raises here, whatever the fail mode
        try:
            session, assessments = pool.assess(msgs, conversation_id=cid)
            with session.lock:
                decision = self._decide_input(session, msgs, assessments)
            name = _name(self.pool, session, cid)
        except MessageError:
            raise
        except Exception as exc:  # noqa: BLE001 (the monitor failed: the fail mode decides)
            decision, name = self._failure(exc, msgs, cid, "input")
        verdict = self._input_verdict(decision, msgs, name)
        self._emit(name, "input", decision, msgs[-1].content)
        return verdict

    def _decide_input(self, session: TrajectorySession, msgs: list[Message],
                      assessments: list[Assessment]) -> Decision:
        policy, state = self.policy, session.state
        if not assessments:  # nothing new (a regenerated reply): the same decision as before
            return self._recall(session, msgs, "input")
        decision, read = None, 0
        for assessment in assessments:  # a decision after each user message, and after the last message read
            read += assessment.tokens  # a decision's tokens: those read since the previous decision
            if assessment.role == "user" or assessment is assessments[-1]:
                decision = policy.decide(dataclasses.replace(assessment, tokens=read), state, stage="input")
                read = 0
        assert decision is not None
        _remember(state, msgs, decision)
        return decision

    def _recall(self, session: TrajectorySession, msgs: list[Message], stage: str) -> Decision:
        """The decision stored for the last assessed message, or a fresh one from re-reading that message."""
        index = max(i for i, m in enumerate(msgs) if m.role in ASSESSED_ROLES)
        stored = session.state.get(_DECISIONS_KEY, {}).get(prefix_key(msgs[: index + 1]))
        if stored is None:
            session.truncate(index)
            got = [a for a in session.extend(msgs[index:]) if a.message_index == index]
            decision = self.policy.decide(got[0], session.state, stage=stage)
            _remember(session.state, msgs, decision)
            return decision
        decision = dataclasses.replace(stored, tokens=0, latency_ms=0.0, extra={**stored.extra, "cached": True})
        if getattr(self.policy, "sticky_terminate", True) and session.state.get("terminated") \
                and decision.action != "terminate":
            decision = dataclasses.replace(decision, action="terminate",
                                           reason="conversation was terminated earlier; reset it to continue")
        return decision

    def _input_verdict(self, decision: Decision, msgs: list[Message], name: str | None) -> Verdict:
        dicts = [m.to_dict() for m in msgs]
        action = decision.action
        if action == "allow":
            return Verdict(decision, action, dicts, None, name, "input")
        if action == "steer":
            instruction = _text("steer_instruction", self.handlers.steer_instruction(decision))
            at = _leading_system(msgs)
            return Verdict(decision, action, [*dicts[:at], {"role": "system", "content": instruction}, *dicts[at:]],
                           None, name, "input")
        response = _text(action, self.handlers.for_action(action)(decision))
        return Verdict(decision, action, dicts, response, name, "input")

    def _output(self, msgs: list[Message], reply: str, cid: str | None) -> Verdict:
        pool, _ = self.pool, self.policy
        full = [*msgs, Message("assistant", reply)]
        try:
            session, assessments = pool.assess(full, conversation_id=cid)
            with session.lock:
                got = [a for a in assessments if a.message_index == len(msgs)]
                if got:
                    decision = self.policy.decide(got[-1], session.state, stage="output")
                    _remember(session.state, full, decision)
                else:
                    decision = self._recall(session, full, "output")
            name = _name(self.pool, session, cid)
        except MessageError:
            raise
        except Exception as exc:  # noqa: BLE001
            decision, name = self._failure(exc, full, cid, "output")
        response = None
        if decision.action in self.replace_on:
            response = _text("replace_output", self.handlers.replace_output(decision))
        self._emit(name, "output", decision, reply)
        return Verdict(decision, decision.action, [m.to_dict() for m in full], response, name, "output")

    def _failure(self, exc: BaseException, msgs: list[Message], cid: str | None,
                 stage: str) -> tuple[Decision, str | None]:
        """The decision when the monitor failed: the fail mode's, or terminate for a terminated conversation."""
        terminated, name = False, cid
        try:
            session = self.pool.get(cid) if cid is not None else self.pool.match(msgs[:-1] or msgs)
            terminated, name = bool(session.state.get("terminated")), _name(self.pool, session, cid)
        except Exception:  # noqa: BLE001 (best effort)
            pass
        closed = self.fail_mode == "closed"
        action = "terminate" if terminated else ("refuse" if closed else "allow")
        error = f"{type(exc).__name__}: {exc}"
        log.error("trajsafe monitor failure at %s (conversation %s); failing %s: %s", stage, name,
                  self.fail_mode, error, exc_info=exc, extra={"trajsafe": {"conversation_id": name, "stage": stage,
                                                                             "monitor_error": error}})
        decision = Decision(
            action=action, category="benign", risk=1.0 if closed else 0.0,
            action_scores={a: float(a == action) for a in ACTIONS},
            category_scores={c: float(c == "benign") for c in CATEGORIES},
            message_index=len(msgs) - 1 if stage == "input" else len(msgs), tokens=0, latency_ms=0.0,
            reason=f"monitor failure ({error}); failing {self.fail_mode}", extra={"monitor_error": error})
        return decision, name

    def _emit(self, name: str | None, stage: str, decision: Decision, content: str | None) -> None:
        event = DecisionEvent(name, stage, decision, content if self.log_content else None)
        level = logging.DEBUG if decision.action == "allow" else logging.INFO
        if decision.extra.get("monitor_error"):
            level = logging.WARNING
        if log.isEnabledFor(level):
            log.log(level, "trajsafe %s decision: %s (%s, risk %.2f) conversation=%s", stage, decision.action,
                    decision.category, decision.risk, name, extra={"trajsafe": event.to_dict()})
        if self.on_decision is not None:
            try:
                self.on_decision(event)
            except Exception:  # noqa: BLE001 (an observer must not break the chat)
                log.exception("trajsafe: the on_decision callback raised")


def make_guard(guard: Guard | None = None, monitor: Any = None, policy: Any = None) -> Guard:
    """The guard an adapter uses: the one given (to share it), else a new one (default monitor and policy when None)."""
    if guard is not None:
        if monitor is not None or policy is not None:
            raise ValueError("pass either guard=... or monitor=/policy=..., not both (the guard has its own)")
        return guard
    return Guard(monitor=monitor, policy=policy)


def guard(fn: Callable[..., Any] | None = None, **options: Any) -> Any:
    """`@guard` or `@guard(monitor=..., policy=..., conversation_id=..., ...)`: see `Guard` for the options."""
    if fn is None:
        return Guard(None, **options)
    if not callable(fn):
        raise TypeError(f"guard() wraps a callable; pass options as keywords (got {type(fn).__name__})")
    return Guard(fn, **options)


# -- streaming -------------------------------------------------------------------------------------------------------
class StreamChecker:
    """Checks a reply that arrives in chunks; one per reply, used by one consumer.

    `feed(chunk)` returns None (deliver the chunk) or the replacement text (cut the stream: deliver that instead and
    stop). Checks run every `stream_check_every` characters and at sentence ends, on a private copy of the
    conversation's cache: each check feeds only the reply's new tokens. `finish()` reads the delivered reply into
    the trajectory and returns its Verdict (the cut's Verdict when the stream was cut).
    """

    def __init__(self, guard: Guard, messages: list[Message], conversation_id: str | None) -> None:
        self.guard, self.messages, self.conversation_id = guard, messages, conversation_id
        self._delivered: list[str] = []
        self._unchecked = 0
        self._cut: str | None = None
        self._cut_decision: Decision | None = None
        self._verdict: Verdict | None = None
        self._session: TrajectorySession | None = None
        self._fork: TrajectorySession | None = None
        self._base = 0
        self._fed: list[int] = []
        self._lock = threading.Lock()
        self.checks = 0
        self.tokens = 0  # tokens run for the checks (the reply's new tokens plus one marker per check)
        self.decisions: list[Decision] = []

    @property
    def text(self) -> str:
        """What was delivered so far (plus the replacement after a cut)."""
        return "".join(self._delivered) + (self._cut or "")

    @property
    def cut(self) -> bool:
        return self._cut is not None

    def due(self, chunk: str) -> bool:
        """Whether `feed(chunk)` would run a check."""
        every = self.guard.stream_check_every
        return every <= 1 or self._unchecked + len(chunk) >= every or bool(_SENTENCE_END.search(chunk))

    def feed(self, chunk: str) -> str | None:
        if not isinstance(chunk, str):
            raise MessageError(f"stream chunks must be strings, got {type(chunk).__name__}")
        with self._lock:
            if self._verdict is not None:
                raise RuntimeError("this StreamChecker is finished")
            if self._cut is not None:
                return ""  # already cut: deliver nothing more
            if not self.due(chunk):
                self._unchecked += len(chunk)
                self._delivered.append(chunk)
                return None
            decision = self._check("".join(self._delivered) + chunk)
            self._unchecked = 0
            if decision.action in self.guard.replace_on:
                self._cut_decision = decision
                self._cut = _text("replace_output", self.guard.handlers.replace_output(decision))
                return self._cut
            self._delivered.append(chunk)
            return None

    async def afeed(self, chunk: str) -> str | None:
        """`feed` that runs a due check in a worker thread."""
        if isinstance(chunk, str) and not self.due(chunk):
            return self.feed(chunk)
        return await asyncio.to_thread(self.feed, chunk)

    def finish(self) -> Verdict:
        """End of stream: read the reply into the trajectory (once) and return the final Verdict."""
        with self._lock:
            if self._verdict is None:
                verdict = self.guard._output(self.messages, self.text, self.conversation_id)
                if self._cut_decision is not None:
                    verdict = Verdict(self._cut_decision, self._cut_decision.action, verdict.messages, self._cut,
                                      verdict.conversation_id, "stream")
                self._verdict = verdict
                self._fork = None  # release the private cache
            return self._verdict

    async def afinish(self) -> Verdict:
        return await asyncio.to_thread(self.finish)

    # -- internals ---------------------------------------------------------------------------------------------------
    def _check(self, text: str) -> Decision:
        g = self.guard
        try:
            if self._session is None:
                self._start()
            assert self._session is not None
            assessment = self._assess(text)
            with self._session.lock:
                decision = g.policy.decide(assessment, self._session.state, stage="stream")
            name = _name(g.pool, self._session, self.conversation_id)
        except MessageError:
            raise
        except Exception as exc:  # noqa: BLE001
            decision, name = g._failure(exc, self.messages, self.conversation_id, "stream")
        self.checks += 1
        self.decisions.append(decision)
        g._emit(name, "stream", decision, text)
        return decision

    def _start(self) -> None:
        session, _ = self.guard.pool.assess(self.messages, conversation_id=self.conversation_id)  # no-op if read
        self._fork = session.fork()  # a private copy of the cache: the stream never touches the session's
        self._base = self._fork.num_tokens
        self._session = session

    def _assess(self, text: str) -> Assessment:
        import numpy as np

        from .core import Assessment, split_label_logits

        fork = self._fork
        assert fork is not None
        monitor = fork.monitor
        enc = monitor.encoder
        if fork.cache is None:  # the session was evicted: the core rebuilds the copy (re-reads it once)
            got = fork.assess_partial("assistant", text)
            self._base, self._fed = fork.num_tokens, []
            self.tokens += got.tokens
            return got
        ids = [*enc.role_ids["assistant"], *enc.content_ids(text)]
        if self._base + len(ids) + 1 > monitor.context_limit:  # no room: the core's (windowed) partial reading
            fork.cache.truncate(self._base)
            self._fed = []
            got = fork.assess_partial("assistant", text)
            self.tokens += got.tokens
            return got
        common = 0
        for a, b in zip(self._fed, ids, strict=False):
            if a != b:
                break
            common += 1
        fork.cache.truncate(self._base + common)  # tokens whose text changed (a word split across chunks)
        self._fed = ids[:common]
        new = np.asarray([*ids[common:], *enc.assess_ids], dtype=np.int64)
        started = time.perf_counter()
        logits = monitor.run([fork.cache], [new], [[len(new) - 1]])[0]
        elapsed = (time.perf_counter() - started) * 1000
        fork.cache.truncate(self._base + len(ids))  # keep the reply's tokens, drop the <|assess|> marker
        self._fed = ids
        self.tokens += len(new)
        act, cat, risk = split_label_logits(logits[0])
        return Assessment(len(fork.messages), "assistant", act, cat, float(risk), len(new), elapsed, partial=True)


# -- helpers ---------------------------------------------------------------------------------------------------------
@dataclass
class _Call:
    """One call of the wrapped callable, bound, with its conversation read."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    bound: inspect.BoundArguments | None
    where: tuple[str, Any]
    value: Any  # the conversation as the callable will receive it (a list when an iterable was passed)
    msgs: list[Message]
    cid: str | None

    def arguments(self, verdict: Verdict) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The arguments to call the model with: unchanged, or with the steered conversation."""
        value = self.value
        if verdict.action == "steer":
            at = _leading_system(self.msgs)
            instruction = verdict.messages[at]["content"]  # inserted there by Guard._input_verdict
            if isinstance(value, str):
                value = f"{instruction}\n\n{value}"
            else:
                value = [*value[:at], {"role": "system", "content": instruction}, *value[at:]]
        kind, key = self.where
        if self.bound is None:
            if self.args:
                return (value, *self.args[1:]), dict(self.kwargs)
            return self.args, {**self.kwargs, key: value}
        bound = copy.copy(self.bound)
        bound.arguments = dict(bound.arguments)
        if kind == "param":
            bound.arguments[key] = value
        elif kind == "varkw":
            name = next(n for n, p in bound.signature.parameters.items() if p.kind is p.VAR_KEYWORD)
            bound.arguments[name] = {**bound.arguments[name], key: value}
        else:
            name = next(n for n, p in bound.signature.parameters.items() if p.kind is p.VAR_POSITIONAL)
            bound.arguments[name] = (value, *bound.arguments[name][1:])
        return bound.args, bound.kwargs


def _read_conversation(value: Any) -> tuple[Any, list[Message]]:
    """(the value to pass on, normalised messages); raises MessageError on anything malformed."""
    if isinstance(value, bytes | bytearray):
        raise MessageError("the conversation must be text or a list of messages, got bytes")
    if not isinstance(value, str) and isinstance(value, Iterable) and not isinstance(value, Mapping):
        value = value if isinstance(value, list | tuple) else list(value)
    msgs = normalize_messages(value)
    if not any(m.role in ASSESSED_ROLES for m in msgs):
        raise MessageError("the conversation has no user or assistant message to assess")
    return value, msgs


def _check_cid(cid: Any) -> str | None:
    if cid is None or isinstance(cid, str):
        return cid
    raise TypeError(f"conversation_id must be a string or None, got {type(cid).__name__}")


def _check_policy(policy: Any) -> None:
    if not callable(getattr(policy, "decide", None)):
        raise TypeError(f"policy must be a trajsafe_sdk.Policy, got {type(policy).__name__}")
    validate = getattr(policy, "validate", None)
    if callable(validate):
        validate()


def _name(pool: SessionPool, session: TrajectorySession, cid: str | None) -> str | None:
    """The conversation's name in events and logs: its id, else the pool's key for the anonymous session."""
    return cid if cid is not None else pool.key_of(session)


def _text(handler: str, value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"the {handler} handler must return a string, got {type(value).__name__}")
    return value


def _leading_system(msgs: Sequence[Message]) -> int:
    n = 0
    while n < len(msgs) and msgs[n].role == "system":
        n += 1
    return n


def _remember(state: dict[str, Any], msgs: Sequence[Message], decision: Decision) -> None:
    """Keep the decision for its conversation prefix (a new dict each time: forked sessions share none)."""
    table = dict(state.get(_DECISIONS_KEY, {}))
    table[prefix_key(msgs[: decision.message_index + 1])] = decision
    while len(table) > _DECISIONS_KEPT:
        table.pop(next(iter(table)))
    state[_DECISIONS_KEY] = table


def _get(obj: Any, key: str) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(key)
    return getattr(obj, key, None)


def _choice(obj: Any) -> Any:
    choices = _get(obj, "choices")
    if isinstance(choices, Sequence) and not isinstance(choices, str) and choices:
        return choices[0]
    return None


def _reply_text(result: Any) -> str | None:
    """The assistant text of a returned value: str, OpenAI-like choices[0].message.content, or `content`."""
    if isinstance(result, str):
        return result
    choice = _choice(result)
    if choice is not None:
        content = _get(_get(choice, "message"), "content")
        return content if isinstance(content, str) else None
    content = _get(result, "content") if result is not None else None
    return content if isinstance(content, str) else None


def _chunk_text(chunk: Any) -> str | None:
    """The new text of a streamed chunk: str, OpenAI-like choices[0].delta.content, or `content`."""
    if isinstance(chunk, str):
        return chunk
    choice = _choice(chunk)
    if choice is not None:
        delta = _get(choice, "delta")
        content = _get(delta, "content") if delta is not None else _get(_get(choice, "message"), "content")
        return content if isinstance(content, str) else None
    content = _get(chunk, "content") if chunk is not None else None
    return content if isinstance(content, str) else None


def _with_text(template: Any, text: str) -> Any:
    """A copy of `template` (a reply or chunk) carrying `text`, or `text` itself when the shape is unknown."""
    if template is None or isinstance(template, str):
        return text
    try:
        out = copy.deepcopy(template)
        choice = _choice(out)
        target = out
        if choice is not None:
            target = _get(choice, "delta") if _get(choice, "delta") is not None else _get(choice, "message")
        if target is None:
            return text
        if isinstance(target, dict):
            if "content" not in target and target is out:
                return text
            target["content"] = text
        elif hasattr(target, "content"):
            target.content = text
        else:
            return text
        return out
    except Exception:  # noqa: BLE001 (immutable or uncopyable objects)
        return text
