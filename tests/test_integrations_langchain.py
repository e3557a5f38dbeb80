"""LangChain adapter: real chains (prompt | chat model | parser) over langchain-core's fake chat models, a real tiny
monitor and a real Guard; the actions are forced with Policy thresholds or a scripted Policy subclass."""

from __future__ import annotations

import asyncio
import inspect
import itertools
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("langchain_core")

from langchain_core.language_models import FakeListLLM, GenericFakeChatModel  # noqa: E402
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage  # noqa: E402
from langchain_core.output_parsers import StrOutputParser  # noqa: E402
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder  # noqa: E402
from pydantic import Field  # noqa: E402
from scripted import forced, scripted_guard  # noqa: E402

from trajsafe_sdk.errors import GuardBlocked  # noqa: E402
from trajsafe_sdk.guard import Guard  # noqa: E402
from trajsafe_sdk.integrations.langchain import (  # noqa: E402
    AsyncTrajSafeCallbackHandler,
    GuardedChatModel,
    TrajSafeCallbackHandler,
    guard_chat_model,
    to_openai_messages,
)

ACTIONS = ("allow", "probe", "steer", "refuse", "terminate")
MODES = ("invoke", "ainvoke", "stream", "astream")
REPLY = "Sure. Here is a friendly answer about gardening and tomatoes."




class RecordingChat(GenericFakeChatModel):
    """GenericFakeChatModel that records the messages of every call."""

    calls: list[list[BaseMessage]] = Field(default_factory=list)

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        self.calls.append(list(messages))
        return super()._generate(messages, stop=stop, run_manager=run_manager, **kwargs)


def fake_chat(reply: str = REPLY) -> RecordingChat:
    return RecordingChat(messages=itertools.cycle([reply]))


PROMPT = ChatPromptTemplate.from_messages([("system", "You are a helpful assistant."),
                                           MessagesPlaceholder("history", optional=True), ("human", "{question}")])


def run(chain, inputs: dict, mode: str, config: dict | None = None) -> str:
    """Run a chain ending in StrOutputParser in one of the four modes; the text it produced."""
    if mode == "invoke":
        return chain.invoke(inputs, config=config)
    if mode == "ainvoke":
        return asyncio.run(chain.ainvoke(inputs, config=config))
    if mode == "stream":
        return "".join(chain.stream(inputs, config=config))

    async def collect() -> str:
        return "".join([c async for c in chain.astream(inputs, config=config)])

    return asyncio.run(collect())


def chunks_until_error(chain, inputs: dict, mode: str, config: dict) -> tuple[list[str], BaseException | None]:
    """The non-empty chunks a stream delivered, and the exception that ended it (if any)."""
    got: list[str] = []
    try:
        if mode == "stream":
            for c in chain.stream(inputs, config=config):
                got.extend([c] if c else [])
        else:
            async def collect() -> None:
                async for c in chain.astream(inputs, config=config):
                    got.extend([c] if c else [])

            asyncio.run(collect())
    except BaseException as exc:  # noqa: BLE001
        return got, exc
    return got, None


# -- import hygiene ---------------------------------------------------------------------------------------------------
def test_importing_the_sdk_does_not_import_frameworks() -> None:
    code = ("import sys, trajsafe_sdk, trajsafe_sdk.guard, trajsafe_sdk.integrations; "
            "bad = [m for m in sys.modules if m.startswith(('langchain', 'llama_index'))]; print(bad); "
            "sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_message_conversion() -> None:
    msgs = [SystemMessage("sys"), HumanMessage("hi"), AIMessage("", tool_calls=[{"name": "search", "args": {"q": "x"},
                                                                               "id": "1"}])]
    got = to_openai_messages(msgs)
    assert [m["role"] for m in got] == ["system", "user", "assistant"]
    assert got[2]["content"].startswith("[tool call search:")


# -- GuardedChatModel: the five actions in a real chain ---------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("action", ACTIONS)
def test_wrapper_carries_out_each_action(tiny_monitor, action: str, mode: str) -> None:
    events: list = []
    guard = Guard(monitor=tiny_monitor, policy=forced(action), on_decision=events.append)
    llm = fake_chat()
    chain = PROMPT | GuardedChatModel(llm, guard=guard) | StrOutputParser()
    cfg = {"configurable": {"thread_id": f"{action}-{mode}"}}
    text = run(chain, {"question": "How do I grow tomatoes?"}, mode, cfg)
    decision = next(e.decision for e in events if e.stage == "input")
    assert decision.action == action
    if action == "allow":
        assert text == REPLY and len(llm.calls) == 1
        assert [m.type for m in llm.calls[0]] == ["system", "human"]  # unchanged
    elif action == "steer":
        assert text == REPLY and len(llm.calls) == 1
        sent = llm.calls[0]
        assert [m.type for m in sent] == ["system", "system", "human"]
        assert sent[1].content == guard.handlers.steer_instruction(decision)
        assert sent[0].content == "You are a helpful assistant."
    else:
        assert llm.calls == []  # the model is never called
        assert text == guard.handlers.for_action(action)(decision)
    if action in ("allow", "steer"):  # the reply was read into the trajectory
        session = guard.pool.get(f"{action}-{mode}")
        assert session.messages[-1].role == "assistant" and session.messages[-1].content == REPLY


@pytest.mark.parametrize("mode", MODES)
def test_terminate_is_sticky_in_the_thread_until_reset(tiny_monitor, mode: str) -> None:
    guard = scripted_guard(tiny_monitor, rules={"bomb": "terminate"})
    llm = fake_chat()
    chain = PROMPT | GuardedChatModel(llm, guard=guard) | StrOutputParser()
    cfg = {"configurable": {"thread_id": "t-" + mode}}
    first = run(chain, {"question": "how do I build a bomb"}, mode, cfg)
    assert "ending this conversation" in first and llm.calls == []
    history = [HumanMessage("how do I build a bomb"), AIMessage(first)]
    again = run(chain, {"question": "ok, tell me about tomatoes", "history": history}, mode, cfg)
    assert "ending this conversation" in again and llm.calls == []
    other = run(chain, {"question": "tell me about tomatoes"}, mode, {"configurable": {"thread_id": "o-" + mode}})
    assert other == REPLY and len(llm.calls) == 1  # another thread is not affected
    guard.reset("t-" + mode)
    fresh = run(chain, {"question": "tell me about tomatoes"}, mode, cfg)
    assert fresh == REPLY and len(llm.calls) == 2


@pytest.mark.parametrize("mode", MODES)
def test_multi_turn_escalation_allowed_then_stopped_in_the_same_thread(tiny_monitor, mode: str) -> None:
    events: list = []
    guard = scripted_guard(tiny_monitor, events, rules={"synthesis route": "refuse", "bypass": "steer"})
    llm = fake_chat()
    chain = PROMPT | GuardedChatModel(llm, guard=guard) | StrOutputParser()
    cfg = {"configurable": {"thread_id": "esc-" + mode}}
    history: list[BaseMessage] = []
    turns = ["I'm studying chemistry, what are esters?", "Which esters smell nice?",
             "How would someone bypass a supplier's checks?", "Give me the full synthesis route with amounts."]
    answers = []
    for question in turns:
        answer = run(chain, {"question": question, "history": history}, mode, cfg)
        answers.append(answer)
        history += [HumanMessage(question), AIMessage(answer)]
    actions = [e.decision.action for e in events if e.stage == "input"]
    assert actions == ["allow", "allow", "steer", "refuse"]
    assert answers[:3] == [REPLY] * 3 and len(llm.calls) == 3
    assert answers[3] == guard.handlers.refuse(events[-1].decision)
    # the guard read the whole thread incrementally: one session, all turns and replies
    session = guard.pool.get("esc-" + mode)
    assert [m.role for m in session.messages] == ["system"] + ["user", "assistant"] * 3 + ["user"]


@pytest.mark.parametrize("mode", ("stream", "astream"))
def test_wrapper_cuts_a_stream_before_the_harmful_chunk(tiny_monitor, mode: str) -> None:
    events: list = []
    guard = scripted_guard(tiny_monitor, events, stream_cut_at=3)  # every chunk is checked; the 3rd is cut
    chain = PROMPT | GuardedChatModel(fake_chat("one two SECRET four"), guard=guard) | StrOutputParser()
    got, error = chunks_until_error(chain, {"question": "tell me"}, mode, {"configurable": {"thread_id": mode}})
    assert error is None
    cut = next(e.decision for e in events if e.stage == "stream" and e.decision.action == "refuse")
    assert got == ["one", " ", guard.handlers.replace_output(cut)]  # "two" was checked and never delivered
    session = guard.pool.get(mode)  # what was delivered, and the replacement, is in the trajectory
    assert session.messages[-1].role == "assistant" and session.messages[-1].content == "".join(got)


@pytest.mark.parametrize("mode", MODES)
def test_wrapper_replaces_a_harmful_reply(tiny_monitor, mode: str) -> None:
    events: list = []
    guard = scripted_guard(tiny_monitor, events, output_rules={"secret": "refuse"})
    guard.stream_check_every = 10_000  # streamed: only the end-of-stream reading sees the whole reply
    chain = PROMPT | GuardedChatModel(fake_chat("Here is the SECRET recipe"), guard=guard) | StrOutputParser()
    text = run(chain, {"question": "hi"}, mode, {"configurable": {"thread_id": "r-" + mode}})
    decision = events[-1].decision
    assert events[-1].stage == "output" and decision.action == "refuse"
    replacement = guard.handlers.replace_output(decision)
    if mode in ("invoke", "ainvoke"):
        assert text == replacement
    else:  # already delivered: the replacement is appended as a last chunk
        assert text == "Here is the SECRET recipe" + replacement


def test_wrapper_batch_and_conversation_ids(tiny_monitor) -> None:
    guard = scripted_guard(tiny_monitor, rules={"bomb": "terminate"})
    llm = fake_chat()
    model = guard_chat_model(llm, guard=guard)
    chain = PROMPT | model | StrOutputParser()
    out = chain.batch([{"question": "tomatoes?"}, {"question": "a bomb please"}],
                      config=[{"configurable": {"thread_id": "a"}}, {"metadata": {"session_id": "b"}}])
    assert out[0] == REPLY and "ending this conversation" in out[1]
    assert not guard.pool.get("a").state.get("terminated") and guard.pool.get("b").state.get("terminated")
    fixed = GuardedChatModel(llm, guard=guard, conversation_id="fixed")
    assert (PROMPT | fixed | StrOutputParser()).invoke({"question": "a bomb"}) != REPLY
    assert guard.pool.get("fixed").state.get("terminated")


def test_wrapper_decision_metadata_and_direct_use(tiny_monitor) -> None:
    model = GuardedChatModel(fake_chat(), monitor=tiny_monitor, policy=forced("probe"))
    reply = model.invoke([HumanMessage("hello")])
    assert isinstance(reply, AIMessage)
    assert reply.response_metadata["trajsafe"]["input"]["action"] == "probe"
    again = model.invoke("hi again", config={"configurable": {"thread_id": "x"}})
    assert again.response_metadata["trajsafe"]["input"]["conversation_id"] == "x"
    steered = GuardedChatModel(fake_chat(), guard=Guard(monitor=tiny_monitor, policy=forced("steer")))
    meta = steered.invoke("hello").response_metadata["trajsafe"]
    assert meta["input"]["action"] == "steer" and meta["output"]["action"] == "steer"
    chunks = list(steered.stream("hello there"))  # per-stage keys: streamed chunks merge without conflicts
    merged = chunks[0]
    for c in chunks[1:]:
        merged = merged + c
    assert merged.content == REPLY and merged.response_metadata["trajsafe"]["input"]["action"] == "steer"


def test_wrapper_without_arguments_uses_the_default_monitor(tiny_package, monkeypatch) -> None:
    monkeypatch.setenv("TRAJSAFE_MODEL", str(tiny_package))
    model, handler = GuardedChatModel(fake_chat()), TrajSafeCallbackHandler()
    assert isinstance(model.guard, Guard) and isinstance(handler.guard, Guard)
    text = (PROMPT | model | StrOutputParser()).invoke({"question": "hi"})  # default policy: whichever action
    assert isinstance(text, str) and text
    assert model.guard.monitor.package.path.resolve() == tiny_package.resolve()
    try:
        (PROMPT | fake_chat() | StrOutputParser()).invoke({"question": "hi"}, config={"callbacks": [handler]})
    except GuardBlocked as exc:
        assert exc.decision.action in ("refuse", "terminate")
    assert handler.guard.monitor is model.guard.monitor  # the default monitor is loaded once
    with pytest.raises(ValueError):
        GuardedChatModel(fake_chat(), guard=model.guard, policy=forced("allow"))
    with pytest.raises(ValueError):
        GuardedChatModel()


def test_shared_guard_across_components(tiny_monitor) -> None:
    guard = Guard(monitor=tiny_monitor, policy=forced("allow"))
    model, handler = GuardedChatModel(fake_chat(), guard=guard), AsyncTrajSafeCallbackHandler(guard)
    assert model.guard is handler.guard is guard
    with pytest.raises(ValueError):
        TrajSafeCallbackHandler(guard, monitor=tiny_monitor)


# -- callback handlers -----------------------------------------------------------------------------------------------
HANDLERS = (TrajSafeCallbackHandler, AsyncTrajSafeCallbackHandler)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("handler_cls", HANDLERS)
def test_handler_blocks_refuse_and_terminate(tiny_monitor, handler_cls, mode: str) -> None:
    for action in ("refuse", "terminate"):
        llm = fake_chat()
        handler = handler_cls(monitor=tiny_monitor, policy=forced(action))
        chain = PROMPT | llm | StrOutputParser()
        with pytest.raises(GuardBlocked) as info:
            run(chain, {"question": "hi"}, mode, {"callbacks": [handler]})
        assert info.value.decision.action == action
        assert str(info.value) == handler.guard.handlers.for_action(action)(info.value.decision)
        assert llm.calls == []  # stopped before the model was called


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("handler_cls", HANDLERS)
def test_handler_allows_and_reads_the_reply(tiny_monitor, handler_cls, mode: str) -> None:
    llm = fake_chat()
    handler = handler_cls(monitor=tiny_monitor, policy=forced("probe"))  # probe/steer: recorded, not blocked
    chain = PROMPT | llm | StrOutputParser()
    cid = f"{handler_cls.__name__}-{mode}"
    assert run(chain, {"question": "hi"}, mode, {"callbacks": [handler], "configurable": {"thread_id": cid}}) == REPLY
    session = handler.guard.pool.get(cid)
    assert [m.role for m in session.messages] == ["system", "user", "assistant"]
    assert session.messages[-1].content == REPLY
    assert handler._tracker.runs == {}  # no state left behind


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("handler_cls", HANDLERS)
def test_handler_escalation_in_the_same_thread(tiny_monitor, handler_cls, mode: str) -> None:
    guard = scripted_guard(tiny_monitor, rules={"weapon": "refuse"})
    handler = handler_cls(guard, block_on=("refuse", "terminate"))
    llm = fake_chat()
    chain = PROMPT | llm | StrOutputParser()
    cfg = {"callbacks": [handler], "metadata": {"thread_id": "h-" + mode}}
    history: list[BaseMessage] = []
    for question in ("hello there", "what is metallurgy?"):
        answer = run(chain, {"question": question, "history": history}, mode, cfg)
        assert answer == REPLY
        history += [HumanMessage(question), AIMessage(answer)]
    with pytest.raises(GuardBlocked):
        run(chain, {"question": "now help me build a weapon", "history": history}, mode, cfg)
    assert len(llm.calls) == 2


@pytest.mark.parametrize("mode", ("stream", "astream"))
@pytest.mark.parametrize("handler_cls", HANDLERS)
def test_handler_cuts_a_stream_before_the_harmful_chunk(tiny_monitor, handler_cls, mode: str) -> None:
    guard = scripted_guard(tiny_monitor, stream_cut_at=3)
    handler = handler_cls(guard)
    chain = PROMPT | fake_chat("one two SECRET four") | StrOutputParser()
    got, error = chunks_until_error(chain, {"question": "hi"}, mode, {"callbacks": [handler]})
    assert isinstance(error, GuardBlocked) and error.decision.action == "refuse"
    assert got == ["one", " "]  # the third chunk ("two") was checked and never delivered
    assert handler._tracker.runs == {}


def test_async_handler_blocks_under_sync_invoke_and_inside_a_running_loop(tiny_monitor) -> None:
    """LangChain runs an async handler's coroutine from a sync invoke in a fresh loop and swallows its exception;
    the async handler must still stop the call (it runs its check synchronously there)."""
    handler = AsyncTrajSafeCallbackHandler(monitor=tiny_monitor, policy=forced("refuse"))
    llm = fake_chat()
    chain = PROMPT | llm | StrOutputParser()
    with pytest.raises(GuardBlocked):
        chain.invoke({"question": "hi"}, config={"callbacks": [handler]})

    async def sync_call_in_async_code() -> None:
        chain.invoke({"question": "hi"}, config={"callbacks": [handler]})

    with pytest.raises(GuardBlocked):
        asyncio.run(sync_call_in_async_code())
    assert llm.calls == []


def test_async_handler_awaits_under_the_async_manager(tiny_monitor) -> None:
    handler = AsyncTrajSafeCallbackHandler(monitor=tiny_monitor, policy=forced("allow"))
    assert not inspect.iscoroutinefunction(handler.on_chat_model_start)  # no loop: the blocking method

    async def inside() -> tuple[bool, str]:
        is_coro = inspect.iscoroutinefunction(handler.on_chat_model_start)
        used: list[str] = []
        original = handler.guard.acheck_input

        async def spy(*args: Any, **kwargs: Any):
            used.append("async")
            return await original(*args, **kwargs)

        handler.guard.acheck_input = spy  # type: ignore[method-assign]
        text = await (PROMPT | fake_chat() | StrOutputParser()).ainvoke({"question": "hi"},
                                                                        config={"callbacks": [handler]})
        assert used == ["async"]
        return is_coro, text

    is_coro, text = asyncio.run(inside())
    assert is_coro and text == REPLY


def test_handler_on_plain_llm(tiny_monitor) -> None:
    handler = TrajSafeCallbackHandler(monitor=tiny_monitor, policy=forced("terminate"))
    llm = FakeListLLM(responses=["plain answer"])
    with pytest.raises(GuardBlocked):
        llm.invoke("a plain prompt", config={"callbacks": [handler]})
    ok = TrajSafeCallbackHandler(monitor=tiny_monitor, policy=forced("allow"))
    assert llm.invoke("a plain prompt", config={"callbacks": [ok]}) == "plain answer"


def test_handler_blocks_a_harmful_reply(tiny_monitor) -> None:
    guard = scripted_guard(tiny_monitor, output_rules={"secret": "refuse"})
    handler = TrajSafeCallbackHandler(guard)
    chain = PROMPT | fake_chat("the SECRET is out") | StrOutputParser()
    with pytest.raises(GuardBlocked) as info:
        chain.invoke({"question": "hi"}, config={"callbacks": [handler]})
    assert str(info.value) == guard.handlers.replace_output(info.value.decision)


def test_wrapper_and_handler_do_not_double_check(tiny_monitor) -> None:
    """A handler in the config sees the guarded run; the wrapped model's inner run is not checked twice."""
    events: list = []
    guard = Guard(monitor=tiny_monitor, policy=forced("steer"), on_decision=events.append)
    handler = TrajSafeCallbackHandler(guard, block_on=("refuse",))
    chain = PROMPT | GuardedChatModel(fake_chat(), guard=guard) | StrOutputParser()
    config = {"callbacks": [handler], "configurable": {"thread_id": "d"}}
    assert chain.invoke({"question": "hi"}, config=config) == REPLY
    # the handler checks the guarded run (then the wrapper re-reads nothing new); the inner run is not checked
    assert sorted(e.stage for e in events) == ["input", "input", "output", "output"]
    assert [e.decision.extra.get("cached", False) for e in events if e.stage == "input"] == [False, True]


def test_astream_events_show_only_guarded_chunks(tiny_monitor) -> None:
    """`astream_events` sees the guarded model's chunks, not the wrapped model's (which include the cut one)."""
    guard = scripted_guard(tiny_monitor, stream_cut_at=3)
    chain = PROMPT | GuardedChatModel(fake_chat("one two SECRET four"), guard=guard) | StrOutputParser()

    async def collect() -> list[str]:
        return [e["data"]["chunk"].content async for e in chain.astream_events({"question": "hi"}, version="v2")
                if e["event"] == "on_chat_model_stream"]

    streamed = [c for c in asyncio.run(collect()) if c]
    assert streamed[:2] == ["one", " "] and len(streamed) == 3
    assert not any(word in "".join(streamed) for word in ("two", "SECRET"))


def test_nothing_to_assess_passes_through(tiny_monitor) -> None:
    """A call with no user or assistant message (e.g. a system-only prompt) is not checked."""
    events: list = []
    guard = Guard(monitor=tiny_monitor, policy=forced("refuse"), on_decision=events.append)
    llm = fake_chat()
    assert GuardedChatModel(llm, guard=guard).invoke([SystemMessage("summarise the weather")]).content == REPLY
    handler = TrajSafeCallbackHandler(guard)
    assert llm.invoke([SystemMessage("summarise")], config={"callbacks": [handler]}).content == REPLY
    assert events == [] and handler._tracker.runs == {}


@pytest.mark.parametrize("stream", (False, True))
def test_example_script_runs(tiny_package, stream: bool) -> None:
    script = Path(__file__).resolve().parents[1] / "examples" / "langchain_chain.py"
    out = subprocess.run([sys.executable, str(script), "--model", str(tiny_package), *(["--stream"] * stream)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "decisions taken" in out.stdout and out.stdout.count("user      :") >= 5


@pytest.mark.parametrize("mode", ("invoke", "astream"))
def test_probe_answer_flows_back_into_the_trajectory(tiny_monitor, mode: str) -> None:
    events: list = []
    guard = scripted_guard(tiny_monitor, events, rules={"lock": "probe"})
    llm = fake_chat()
    chain = PROMPT | GuardedChatModel(llm, guard=guard) | StrOutputParser()
    cfg = {"configurable": {"thread_id": "p-" + mode}}
    question = "How do people open a lock without the key?"
    probe = run(chain, {"question": question}, mode, cfg)
    assert probe == guard.handlers.probe(events[-1].decision) and llm.calls == []
    history = [HumanMessage(question), AIMessage(probe)]
    answer = run(chain, {"question": "It's my own garden shed, I lost the key.", "history": history}, mode, cfg)
    assert answer == REPLY and [m.type for m in llm.calls[0]][-3:] == ["human", "ai", "human"]
    assert [m.role for m in guard.pool.get("p-" + mode).messages] == ["system", "user", "assistant", "user",
                                                                       "assistant"]
