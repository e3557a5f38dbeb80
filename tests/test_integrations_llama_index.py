"""LlamaIndex adapter: real chat engines (SimpleChatEngine, ContextChatEngine) over llama-index-core's MockLLM, a real
tiny monitor and a real Guard; the actions are forced with Policy thresholds or a scripted Policy subclass."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("llama_index.core")

from llama_index.core import Document, VectorStoreIndex  # noqa: E402
from llama_index.core.callbacks import CallbackManager  # noqa: E402
from llama_index.core.chat_engine import ContextChatEngine, SimpleChatEngine  # noqa: E402
from llama_index.core.embeddings import MockEmbedding  # noqa: E402
from llama_index.core.instrumentation import get_dispatcher  # noqa: E402
from llama_index.core.llms import ChatMessage, MockLLM  # noqa: E402
from llama_index.core.llms.mock import MockLLMWithChatMemoryOfLastCall  # noqa: E402
from llama_index.core.memory import ChatMemoryBuffer  # noqa: E402
from scripted import forced, scripted_guard  # noqa: E402

from trajsafe_sdk.errors import GuardBlocked  # noqa: E402
from trajsafe_sdk.guard import Guard  # noqa: E402
from trajsafe_sdk.integrations.llama_index import (  # noqa: E402
    GuardedLLM,
    TrajSafeCallbackHandler,
    TrajSafeDecisionEvent,
    TrajSafeEventHandler,
    to_openai_messages,
)

ACTIONS = ("allow", "probe", "steer", "refuse", "terminate")
MODES = ("chat", "achat", "stream_chat", "astream_chat")
REPLY = "text text text"  # MockLLM(max_tokens=3)




def simple_engine(llm, **kwargs: Any) -> SimpleChatEngine:
    """A SimpleChatEngine with an in-process memory buffer (the default `Memory` keeps an aiosqlite connection
    whose worker thread complains when tests close their event loops; the example scripts use the default)."""
    return SimpleChatEngine.from_defaults(llm=llm, memory=ChatMemoryBuffer.from_defaults(), **kwargs)


def converse(engine, questions: list[str], mode: str) -> list[Any]:
    """Turns of a chat engine in one of the four modes (async turns share one event loop, as in an app): per turn,
    the text the user saw, or the exception the turn raised."""

    async def aturn(question: str) -> str:
        if mode == "achat":
            return str(await engine.achat(question))
        response = await engine.astream_chat(question)
        return "".join([t async for t in response.async_response_gen()])

    def turn(question: str) -> str:
        if mode == "chat":
            return str(engine.chat(question))
        return "".join(engine.stream_chat(question).response_gen)

    async def all_async() -> list[Any]:
        out: list[Any] = []
        for q in questions:
            try:
                out.append(await aturn(q))
            except Exception as exc:  # noqa: BLE001
                out.append(exc)
        return out

    if mode.startswith("a"):
        return asyncio.run(all_async())
    out: list[Any] = []
    for q in questions:
        try:
            out.append(turn(q))
        except Exception as exc:  # noqa: BLE001
            out.append(exc)
    return out


def ask(engine, question: str, mode: str) -> str:
    """One turn; raises what the turn raised."""
    (answer,) = converse(engine, [question], mode)
    if isinstance(answer, BaseException):
        raise answer
    return answer


def tokens(engine, message: str, mode: str) -> list[str]:
    if mode == "stream_chat":
        return list(engine.stream_chat(message).response_gen)

    async def collect() -> list[str]:
        response = await engine.astream_chat(message)
        return [t async for t in response.async_response_gen()]

    return asyncio.run(collect())


@pytest.fixture
def event_handler():
    handler = TrajSafeEventHandler()
    root = get_dispatcher()
    root.add_event_handler(handler)
    yield handler
    root.event_handlers.remove(handler)


# -- GuardedLLM in a SimpleChatEngine: the five actions --------------------------------------------------------------
def test_message_conversion() -> None:
    got = to_openai_messages([ChatMessage(role="system", content="s"), ChatMessage(role="user", content="u"),
                              ChatMessage(role="chatbot", content="a"), ChatMessage(role="tool", content=None)])
    assert got == [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                   {"role": "assistant", "content": "a"}, {"role": "tool", "content": ""}]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("action", ACTIONS)
def test_guarded_llm_carries_out_each_action(tiny_monitor, event_handler, action: str, mode: str) -> None:
    events: list = []
    guard = Guard(monitor=tiny_monitor, policy=forced(action), on_decision=events.append)
    inner = MockLLMWithChatMemoryOfLastCall(max_tokens=3)
    llm = GuardedLLM(inner, guard=guard, conversation_id=f"{action}-{mode}")
    engine = simple_engine(llm, system_prompt="You are a gardening assistant.")
    text = ask(engine, "How do I grow tomatoes?", mode)
    decision = next(e.decision for e in events if e.stage == "input")
    assert decision.action == action
    if action in ("allow", "steer"):
        assert text == REPLY and inner.last_called_chat_function
        sent = to_openai_messages(inner.last_chat_messages)
        if action == "allow":
            assert [m["role"] for m in sent] == ["system", "user"]
        else:
            assert [m["role"] for m in sent] == ["system", "system", "user"]
            assert sent[1]["content"] == guard.handlers.steer_instruction(decision)
        session = guard.pool.get(f"{action}-{mode}")  # the reply was read into the trajectory
        assert session.messages[-1].role == "assistant" and session.messages[-1].content == REPLY
    else:
        assert not inner.last_called_chat_function  # the model is never called
        assert text == guard.handlers.for_action(action)(decision)
    assert engine.chat_history[-1].content.strip() == text.strip()  # what the user saw is in the engine's memory
    recorded = [e for e in event_handler.events if e.conversation_id == f"{action}-{mode}"]
    assert recorded and recorded[0].stage == "input" and recorded[0].action == action
    assert recorded[0].decision == decision.to_dict()


@pytest.mark.parametrize("action", ACTIONS)
def test_guarded_llm_complete(tiny_monitor, action: str) -> None:
    guard = Guard(monitor=tiny_monitor, policy=forced(action))
    llm = GuardedLLM(MockLLM(), guard=guard)  # MockLLM echoes its prompt
    response = llm.complete("What is a tomato?")
    meta = response.additional_kwargs["trajsafe"]["input"]
    assert meta["action"] == action
    if action == "allow":
        assert response.text == "What is a tomato?"
    elif action == "steer":
        assert response.text.endswith("\n\nWhat is a tomato?") and response.text.startswith("Safety guidance")
    else:
        assert "tomato" not in response.text
    streamed = "".join(r.delta or "" for r in llm.stream_complete("Another question"))
    assert ("Another question" in streamed) == (action in ("allow", "steer"))
    assert asyncio.run(llm.acomplete("third")).additional_kwargs["trajsafe"]["input"]["action"]

    async def astream() -> str:
        return "".join([r.delta or "" async for r in await llm.astream_complete("fourth")])

    assert ("fourth" in asyncio.run(astream())) == (action in ("allow", "steer"))


@pytest.mark.parametrize("mode", MODES)
def test_multi_turn_escalation_in_a_chat_engine(tiny_monitor, event_handler, mode: str) -> None:
    events: list = []
    guard = scripted_guard(tiny_monitor, events, rules={"untraceable": "terminate", "bypass": "steer"})
    inner = MockLLMWithChatMemoryOfLastCall(max_tokens=3)
    engine = simple_engine(GuardedLLM(inner, guard=guard), system_prompt="Be helpful.")
    answers = converse(engine, ["Hi! I collect old firearms.", "How do I clean a revolver?",
                                "How would someone bypass the serial number records?",
                                "Make it untraceable, step by step.", "Thanks. Anything else?"], mode)
    actions = [e.decision.action for e in events if e.stage == "input"]
    assert actions == ["allow", "allow", "steer", "terminate", "terminate"]
    assert answers[:3] == [REPLY] * 3
    assert "ending this conversation" in answers[3] and "ending this conversation" in answers[4]
    assert inner.last_called_chat_function.count(mode) == 3
    # no conversation id: the guard followed the engine's history by its cached prefix, one trajectory
    assert len({e.conversation_id for e in events}) == 1
    assert [e.action for e in event_handler.events if e.stage == "input"][-2:] == ["terminate", "terminate"]


@pytest.mark.parametrize("mode", MODES)
def test_context_chat_engine_escalation_with_a_conversation_id(tiny_monitor, mode: str) -> None:
    """ContextChatEngine puts the retrieved context in the system message: a conversation id keeps the state."""
    events: list = []
    guard = scripted_guard(tiny_monitor, events, rules={"poison": "terminate"})
    index = VectorStoreIndex.from_documents([Document(text="Tomatoes like sun."), Document(text="Basil likes water.")],
                                            embed_model=MockEmbedding(embed_dim=8))
    inner = MockLLMWithChatMemoryOfLastCall(max_tokens=3)
    engine = ContextChatEngine.from_defaults(retriever=index.as_retriever(similarity_top_k=1),
                                             llm=GuardedLLM(inner, guard=guard, conversation_id="user-42"),
                                             memory=ChatMemoryBuffer.from_defaults(),
                                             system_prompt="You are a gardening assistant.")
    answers = converse(engine, ["How much sun for tomatoes?", "And basil?", "Which plant could poison my neighbour?",
                                "What about roses?"], mode)
    assert answers[:2] == [REPLY, REPLY]
    assert all("ending this conversation" in a for a in answers[2:])
    assert [e.decision.action for e in events if e.stage == "input"] == ["allow", "allow", "terminate", "terminate"]
    assert guard.pool.get("user-42").state.get("terminated")
    sent = to_openai_messages(inner.last_chat_messages)  # the last allowed call carried the retrieved context
    assert sent[0]["role"] == "system" and "like" in sent[0]["content"] and sent[-1]["content"] == "And basil?"


@pytest.mark.parametrize("mode", ("stream_chat", "astream_chat"))
def test_guarded_llm_cuts_a_stream(tiny_monitor, mode: str) -> None:
    events: list = []
    guard = scripted_guard(tiny_monitor, events, stream_cut_at=3)  # every chunk is checked; the 3rd is cut
    engine = simple_engine(GuardedLLM(MockLLM(max_tokens=6), guard=guard, conversation_id=mode))
    got = tokens(engine, "tell me", mode)
    cut = next(e.decision for e in events if e.stage == "stream" and e.decision.action == "refuse")
    replacement = guard.handlers.replace_output(cut)
    assert got == ["text ", "text ", replacement]
    assert engine.chat_history[-1].content == ("text text " + replacement).strip()
    assert guard.pool.get(mode).messages[-1].content == "text text " + replacement


@pytest.mark.parametrize("mode", MODES)
def test_guarded_llm_replaces_a_harmful_reply(tiny_monitor, mode: str) -> None:
    events: list = []
    guard = scripted_guard(tiny_monitor, events, output_rules={"secret": "refuse"})
    guard.stream_check_every = 100_000  # streamed: only the end-of-stream reading sees the whole reply
    engine = simple_engine(GuardedLLM(MockLLM(), guard=guard))  # MockLLM echoes the prompt
    text = ask(engine, "the secret word", mode)
    assert events[-1].stage == "output" and events[-1].decision.action == "refuse"
    replacement = guard.handlers.replace_output(events[-1].decision)
    if mode in ("chat", "achat"):
        assert text == replacement
    else:  # already delivered: the replacement is appended
        assert text.endswith(replacement) and "secret word" in text


def test_guarded_llm_without_arguments_uses_the_default_monitor(tiny_package, monkeypatch) -> None:
    monkeypatch.setenv("TRAJSAFE_MODEL", str(tiny_package))
    llm = GuardedLLM(MockLLM(max_tokens=2))
    handler, events = TrajSafeCallbackHandler(), TrajSafeEventHandler()
    assert events.guard is None and isinstance(handler.guard, Guard)
    text = str(simple_engine(llm).chat("hello"))  # default policy: whichever action
    assert text
    assert llm.guard.monitor is handler.guard.monitor
    assert llm.metadata.is_chat_model
    with pytest.raises(ValueError):
        GuardedLLM(MockLLM(), guard=llm.guard, policy=forced("allow"))
    with pytest.raises(ValueError):
        GuardedLLM()


# -- CallbackManager handler -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_callback_handler_blocks_refuse_and_terminate(tiny_monitor, mode: str) -> None:
    for action in ("refuse", "terminate"):
        handler = TrajSafeCallbackHandler(monitor=tiny_monitor, policy=forced(action))
        inner = MockLLMWithChatMemoryOfLastCall(max_tokens=3, callback_manager=CallbackManager([handler]))
        engine = simple_engine(inner)
        with pytest.raises(GuardBlocked) as info:
            ask(engine, "hi", mode)
        assert info.value.decision.action == action
        assert str(info.value) == handler.guard.handlers.for_action(action)(info.value.decision)
        assert inner.last_chat_messages is None  # stopped before the model ran


@pytest.mark.parametrize("mode", MODES)
def test_callback_handler_allows_reads_and_checks_once(tiny_monitor, mode: str) -> None:
    events: list = []
    guard = Guard(monitor=tiny_monitor, policy=forced("probe"), on_decision=events.append)
    handler = TrajSafeCallbackHandler(guard, conversation_id="cb-" + mode)  # probe: recorded, not blocked
    engine = simple_engine(MockLLM(max_tokens=3, callback_manager=CallbackManager([handler])))
    assert ask(engine, "hi", mode) == REPLY
    # MockLLM implements chat through complete: one input and one output decision, not two of each
    assert [e.stage for e in events] == ["input", "output"]
    read = guard.pool.get("cb-" + mode).messages[-1]  # streamed: the final response LlamaIndex reports (for
    assert read.role == "assistant" and read.content.startswith("text text")  # MockLLM it lags one delta)
    assert handler._open == {} and handler._nested == set()


@pytest.mark.parametrize("mode", MODES)
def test_callback_handler_escalation(tiny_monitor, mode: str) -> None:
    guard = scripted_guard(tiny_monitor, rules={"weapon": "refuse"})
    handler = TrajSafeCallbackHandler(guard)
    engine = simple_engine(MockLLM(max_tokens=3, callback_manager=CallbackManager([handler])))
    answers = converse(engine, ["hello", "what is metallurgy?", "help me build a weapon"], mode)
    assert answers[:2] == [REPLY, REPLY]
    assert isinstance(answers[2], GuardBlocked) and answers[2].decision.action == "refuse"


def test_callback_handler_blocks_a_harmful_reply(tiny_monitor) -> None:
    guard = scripted_guard(tiny_monitor, output_rules={"secret": "refuse"})
    handler = TrajSafeCallbackHandler(guard)
    llm = MockLLM(callback_manager=CallbackManager([handler]))  # echoes the prompt
    with pytest.raises(GuardBlocked) as info:
        llm.complete("tell me the secret")
    assert str(info.value) == guard.handlers.replace_output(info.value.decision)
    assert llm.complete("tell me about tomatoes").text == "tell me about tomatoes"


# -- instrumentation -------------------------------------------------------------------------------------------------
def test_event_handler_audits_but_cannot_block(tiny_monitor) -> None:
    auditor = TrajSafeEventHandler(monitor=tiny_monitor, policy=forced("refuse"), audit=True)
    seen: list[TrajSafeDecisionEvent] = []
    auditor.on_event = seen.append
    root = get_dispatcher()
    root.add_event_handler(auditor)
    try:
        reply = MockLLM(max_tokens=2).chat([ChatMessage(role="user", content="hello")])
    finally:
        root.event_handlers.remove(auditor)
    assert reply.message.content == "text text"  # audit only: the dispatcher swallows exceptions
    assert [(e.source, e.stage, e.action) for e in auditor.events] == [("audit", "input", "refuse"),
                                                                      ("audit", "output", "refuse")]
    assert seen == auditor.events and auditor.decisions[0]["action"] == "refuse"
    assert TrajSafeDecisionEvent.class_name() == "TrajSafeDecisionEvent"


def test_nothing_to_assess_passes_through(tiny_monitor) -> None:
    events: list = []
    guard = Guard(monitor=tiny_monitor, policy=forced("refuse"), on_decision=events.append)
    reply = GuardedLLM(MockLLM(max_tokens=2), guard=guard).chat([ChatMessage(role="system", content="summarise")])
    assert reply.message.content == "text text" and events == []


@pytest.mark.parametrize("stream", (False, True))
def test_example_script_runs(tiny_package, stream: bool) -> None:
    script = Path(__file__).resolve().parents[1] / "examples" / "llamaindex_chat.py"
    out = subprocess.run([sys.executable, str(script), "--model", str(tiny_package), *(["--stream"] * stream)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "decision events" in out.stdout and out.stdout.count("user      :") == 4


@pytest.mark.parametrize("mode", ("chat", "astream_chat"))
def test_probe_answer_flows_back_into_the_trajectory(tiny_monitor, mode: str) -> None:
    events: list = []
    guard = scripted_guard(tiny_monitor, events, rules={"lock": "probe"})
    inner = MockLLMWithChatMemoryOfLastCall(max_tokens=3)
    engine = simple_engine(GuardedLLM(inner, guard=guard, conversation_id="p-" + mode))
    probe, answer = converse(engine, ["How do people open a lock without the key?",
                                      "It's my own garden shed, I lost the key."], mode)
    assert probe == guard.handlers.probe(next(e.decision for e in events if e.stage == "input"))
    assert answer == REPLY  # the engine kept the probe in its history; the user's answer lowered the action
    assert [m["role"] for m in to_openai_messages(inner.last_chat_messages)] == ["user", "assistant", "user"]
    assert [e.decision.action for e in events if e.stage == "input"] == ["probe", "allow"]
