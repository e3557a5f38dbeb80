"""The action-dispatch API: every action around sync/async/streaming callables, sticky termination, probe answers,
rewinds, stream cuts, fail modes, concurrency, events. Real tiny monitor (random weights), real ONNX Runtime; tests
that need a given action set the policy (forced thresholds or a small scripted Policy subclass)."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pytest
from scripted import forced

from trajsafe_sdk.core import Monitor
from trajsafe_sdk.decision import Decision
from trajsafe_sdk.errors import MessageError, MonitorError
from trajsafe_sdk.guard import DecisionEvent, Guard, Verdict, default_monitor, guard
from trajsafe_sdk.handlers import PROBE, Handlers
from trajsafe_sdk.labels import ACTIONS, CATEGORIES
from trajsafe_sdk.messages import Message
from trajsafe_sdk.policy import Policy

REPLY = "Sure: here is a short answer. It has two sentences, and a third clause at the end."
KINDS = ["sync", "async", "gen", "agen"]
OFF = {"probe": 1.1, "steer": 1.1, "refuse": 1.1, "terminate": 1.1}


@dataclass
class Scripted(Policy):
    """The ladder's action per message index (the Policy's state handling stays the real one)."""

    script: dict[int, str] = field(default_factory=dict)

    def ladder_action(self, assessment) -> str:
        return self.script.get(assessment.message_index, "allow")


@dataclass
class CutAt(Policy):
    """Allows everything but the `n`-th partial (streaming) check, which it refuses."""

    n: int = 3
    seen: int = 0

    def ladder_action(self, assessment) -> str:
        if assessment.partial:
            self.seen += 1
            return "refuse" if self.seen >= self.n else "allow"
        return "allow"


def chunks_of(text: str) -> list[str]:
    words = text.split(" ")
    return [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)]


def make_model(kind: str, calls: list, reply: str = REPLY):
    """A real chat callable of each kind; records the conversation it was called with."""
    if kind == "sync":
        def chat(messages):
            """Sync chat."""
            calls.append(messages)
            return reply
    elif kind == "async":
        async def chat(messages):
            """Async chat."""
            calls.append(messages)
            await asyncio.sleep(0)
            return reply
    elif kind == "gen":
        def chat(messages):
            """Streaming chat."""
            calls.append(messages)
            yield from chunks_of(reply)
    else:
        async def chat(messages):
            """Async streaming chat."""
            calls.append(messages)
            for c in chunks_of(reply):
                await asyncio.sleep(0)
                yield c
    return chat


async def _drain(ait: AsyncIterator) -> list:
    return [x async for x in ait]


def collect(result):
    """The text a caller gets from any kind of guarded call (chunks joined for streams)."""
    if inspect.isawaitable(result):
        result = asyncio.run(result)
    if isinstance(result, AsyncIterator):
        return "".join(asyncio.run(_drain(result)))
    if isinstance(result, Iterator):
        return "".join(result)
    return result


def conversation() -> list[dict]:
    return [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "The chemist asked about a recipe for bread step by step."}]


# -- the five actions around every kind of callable -----------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("action", ACTIONS)
def test_each_action_for_each_callable_kind(tiny_monitor: Monitor, kind: str, action: str) -> None:
    calls: list = []
    events: list[DecisionEvent] = []
    chat = guard(make_model(kind, calls), monitor=tiny_monitor, policy=forced(action), on_decision=events.append,
                 stream_check_every=16)
    msgs = conversation()
    out = collect(chat(msgs))
    first = events[0]
    assert first.stage == "input" and first.decision.action == action
    assert first.decision.message_index == 1 and first.decision.category != "benign" or action == "allow"
    handlers = Handlers()
    if action == "allow":
        assert calls == [msgs] and calls[0] is msgs  # the same list, unchanged
        assert out == REPLY
    elif action == "steer":
        assert len(calls) == 1
        sent = calls[0]
        assert sent[0] == msgs[0] and sent[2:] == msgs[1:]  # steering after the leading system message
        assert sent[1] == {"role": "system", "content": handlers.steer_instruction(first.decision)}
        assert "operational specifics" in sent[1]["content"] and msgs == conversation()  # caller's list untouched
        assert out == REPLY  # output decisions are `steer` too: not a replacement
    else:
        assert calls == []  # the model is not called
        assert out == getattr(handlers, action)(first.decision)
        assert len(events) == 1  # nothing was generated, so no output decision
    if action in ("allow", "steer"):
        stages = {e.stage for e in events}
        assert "output" in stages and (("stream" in stages) == (kind in ("gen", "agen")))


def test_guard_keeps_signature_metadata_and_kind(tiny_monitor: Monitor) -> None:
    def chat(messages: list[dict], temperature: float = 0.2) -> str:
        """Docstring kept."""
        return "ok"

    async def achat(messages: list[dict]) -> str:
        return "ok"

    async def astream(messages):
        yield "ok"

    g = guard(chat, monitor=tiny_monitor)
    assert isinstance(g, Guard) and g.__wrapped__ is chat
    assert g.__name__ == "chat" and g.__doc__ == "Docstring kept." and g.__qualname__ == chat.__qualname__
    assert inspect.signature(g) == inspect.signature(chat)
    a = Guard(achat, monitor=tiny_monitor, policy=forced("allow"))
    assert asyncio.iscoroutinefunction(a) and inspect.iscoroutine(coro := a([{"role": "user", "content": "hi"}]))
    assert asyncio.run(coro) == "ok"
    s = guard(monitor=tiny_monitor, policy=forced("allow"))(astream)
    assert inspect.isasyncgen(s("hi"))
    # guard(**options) without fn is a decorator sharing its monitor, pool and policy
    deco = guard(monitor=tiny_monitor, policy=forced("allow"))
    f1, f2 = deco(chat), deco(achat)
    assert f1.pool is f2.pool is deco.pool and f1.policy is deco.policy
    with pytest.raises(TypeError, match="wraps no callable"):
        deco([{"role": "user", "content": "hi"}], 3)


def test_methods_strings_keywords_and_named_parameter(tiny_monitor: Monitor) -> None:
    seen: list = []

    class Bot:
        def __init__(self) -> None:
            self.name = "bot"

        @guard(monitor=tiny_monitor, policy=forced("steer"))
        def reply(self, prompt: str) -> str:
            seen.append(prompt)
            return f"{self.name}: fine"

    assert Bot().reply("what is the history of Rome?") == "bot: fine"
    assert seen[-1].startswith(Handlers().steer_instruction(_any_decision()))
    assert seen[-1].endswith("\n\nwhat is the history of Rome?")  # a string conversation: instruction before it

    @guard(monitor=tiny_monitor, policy=forced("allow"), messages_param="turns")
    def chat(system: str, turns: list, *, temperature: float = 0.0) -> str:
        seen.append((system, turns, temperature))
        return "ok"

    turns = [{"role": "user", "content": "hello"}]
    assert chat("sys", turns=turns, temperature=0.5) == "ok" and seen[-1] == ("sys", turns, 0.5)

    @guard(monitor=tiny_monitor, policy=forced("steer"))
    def kw_only(**kwargs) -> str:
        seen.append(kwargs)
        return "ok"

    assert kw_only(messages=[{"role": "user", "content": "hello"}], model="m") == "ok"
    assert seen[-1]["model"] == "m" and seen[-1]["messages"][0]["role"] == "system"

    # objects with role/content and a generator of messages are accepted (the generator is passed on as a list)
    @dataclass
    class Msg:
        role: str
        content: str

    @guard(monitor=tiny_monitor, policy=forced("allow"))
    def objs(history) -> str:
        seen.append(history)
        return "ok"

    assert objs(m for m in [Msg("user", "hello"), Msg("assistant", "hi"), Msg("user", "thanks")]) == "ok"
    assert [m.content for m in seen[-1]] == ["hello", "hi", "thanks"]
    with pytest.raises(ValueError, match="messages_param='nope' is not a parameter"):
        guard(lambda messages: "x", messages_param="nope")


def _any_decision() -> Decision:
    return Decision("steer", "violent_harm", 0.9, {a: 0.2 for a in ACTIONS}, {c: 1 / 13 for c in CATEGORIES}, 0,
                    1, 0.1, "test")


# -- conversation state ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("with_id", [True, False])
def test_sticky_termination_until_reset(tiny_monitor: Monitor, with_id: bool) -> None:
    calls: list = []
    policy = Scripted(script={0: "terminate"})  # only the first user message is judged terminate
    chat = guard(make_model("sync", calls), monitor=tiny_monitor, policy=policy,
                 conversation_id="c-1" if with_id else None)
    history = [{"role": "user", "content": "The user asked about a phishing email right now!"}]
    first = chat(history)
    assert first.startswith("I'm ending this conversation") and calls == []
    history += [{"role": "assistant", "content": first}, {"role": "user", "content": "ok, a travel itinerary then"}]
    assert chat(history).startswith("I'm ending this conversation") and calls == []  # the ladder says allow here
    verdict = chat.check_input(history, "c-1" if with_id else None)
    assert verdict.action == "terminate" and "terminated earlier" in verdict.decision.reason
    if with_id:
        chat.reset("c-1")
    else:
        chat.reset(messages=history)
    assert chat(history) == REPLY and len(calls) == 1  # after the reset the model answers again
    if with_id:  # forget() drops the conversation: the whole history is judged again
        chat.forget("c-1")
        assert chat(history).startswith("I'm ending this conversation") and len(calls) == 1


def test_probe_then_credible_or_evasive_answer(tiny_monitor: Monitor) -> None:
    """The probe text goes back as the assistant turn; the answer's risk moves the next decision."""
    openers = ["A nurse wants to know some medical advice today.", "hello", "The chemist asked about a recipe.",
               "Someone downloaded the API keys again, please?"]
    answers = ["I am a nurse and this is for the hospital training.", "none of your business", "just tell me",
               "The user asked about the weather forecast today.", "A student is writing the chemistry homework.",
               "Our team reviewed the server logs right now!", "My assistant planned a travel itinerary."]

    def risks(opener: str, answer: str) -> tuple[float, float]:
        conv = [Message("user", opener), Message("assistant", PROBE["benign"]), Message("user", answer)]
        scored = tiny_monitor.score(conv)
        return scored[0].risk, scored[-1].risk

    pairs = [(o, a, *risks(o, a)) for o in openers for a in answers]
    credible = min(pairs, key=lambda p: p[3] - p[2])  # the answer that lowers the risk most
    evasive = max(pairs, key=lambda p: p[3] - p[2])  # ... and the one that raises it most
    assert credible[3] < credible[2] and evasive[3] > evasive[2], "candidates must move the risk both ways"

    def run(opener: str, answer: str, policy: Policy) -> tuple[str, Verdict]:
        g = Guard(monitor=tiny_monitor, policy=policy, handlers=Handlers(probe=PROBE["benign"]))
        history = [{"role": "user", "content": opener}]
        first = g.check_input(history)
        assert first.action == "probe" and first.response == PROBE["benign"] and not first.call_model
        history += [{"role": "assistant", "content": first.response}, {"role": "user", "content": answer}]
        second = g.check_input(history)
        return second.action, second

    probe_always = Policy(thresholds={**OFF, "probe": 0.0}, deescalate_risk=1.0)
    action, verdict = run(credible[0], credible[1], probe_always)
    assert action == "allow" and "lowered the risk" in verdict.decision.reason and verdict.call_model
    action, verdict = run(evasive[0], evasive[1], probe_always)
    assert action == "steer" and "probe already asked" in verdict.decision.reason  # never probes twice
    action, _ = run(credible[0], credible[1], Scripted(script={0: "probe", 2: "refuse"}))
    assert action == "refuse"  # a malicious answer escalates whatever the risk did


def test_regenerating_after_a_probe_probes_again(tiny_monitor: Monitor) -> None:
    g = Guard(monitor=tiny_monitor, policy=Scripted(script={0: "probe"}))
    history = [{"role": "user", "content": "The chemist asked about a recipe for bread."}]
    first = g.check_input(history)
    again = g.check_input(history)  # the same history re-sent: nothing new to read
    assert first.action == again.action == "probe" and again.decision.tokens == 0
    assert again.decision.risk == first.decision.risk
    # a history read by someone else (no decision stored): the last message is read again to decide
    g.pool.assess(history, conversation_id="warm")
    warm = g.check_input(history, "warm")
    assert warm.action == "probe" and abs(warm.decision.risk - first.decision.risk) < 1e-4
    assert warm.decision.tokens == len(tiny_monitor.encoder.encode_message(Message(**history[0])))  # <|bos|> kept


def test_a_decision_counts_the_tokens_read_since_the_previous_one(tiny_monitor: Monitor) -> None:
    """A whole history read at once: the last decision counts the reply and the user turn, not the whole run."""
    g = Guard(monitor=tiny_monitor, policy=forced("allow"))
    history = [Message("user", "hello there"), Message("assistant", "hi, how can I help"),
               Message("user", "tell me about the history of the war")]
    verdict = g.check_input([m.to_dict() for m in history], "c-tokens")
    sizes = [len(tiny_monitor.encoder.encode_message(m)) for m in history]
    assert verdict.decision.tokens == sizes[1] + sizes[2]


def test_stateless_caller_pays_only_for_new_messages(tiny_monitor: Monitor) -> None:
    events: list[DecisionEvent] = []
    chat = guard(make_model("sync", []), monitor=tiny_monitor, policy=forced("allow"), on_decision=events.append)
    history = [{"role": "user", "content": "hello there"}]
    for turn in range(3):
        reply = chat(list(history))
        assert reply == REPLY
        history += [{"role": "assistant", "content": reply}, {"role": "user", "content": f"and then {turn}?"}]
    inputs = [e for e in events if e.stage == "input"]
    enc = tiny_monitor.encoder
    for e, idx in zip(inputs[1:], (2, 4), strict=True):  # the reply was read at output time: only the user turn
        assert e.decision.tokens == len(enc.encode_message(Message("user", history[idx]["content"])))
    assert len({e.conversation_id for e in events}) == 1 and inputs[0].conversation_id.startswith("anon:")


def test_rewind_after_edited_history(tiny_monitor: Monitor) -> None:
    g = Guard(monitor=tiny_monitor, policy=forced("allow"))
    turns = ["hello there", "tell me about the history of Rome", "and the war?", "thanks"]
    history: list[dict] = []
    for t in turns:
        history += [{"role": "user", "content": t}]
        g.check_input(history, conversation_id="edit")
        history += [{"role": "assistant", "content": f"answer to {t}"}]
    session = g.pool.get("edit")
    before = session.tokens_processed
    edited = [*history[:2], {"role": "user", "content": "what about a recipe for bread?"}]
    verdict = g.check_input(edited, conversation_id="edit")
    assert session.messages == [Message(m["role"], m["content"]) for m in edited]
    assert session.tokens_processed - before == len(tiny_monitor.encoder.encode_message(Message(**edited[-1])))
    fresh = Guard(monitor=tiny_monitor, policy=forced("allow")).check_input(edited)
    assert verdict.decision.message_index == fresh.decision.message_index == 2
    assert abs(verdict.decision.risk - fresh.decision.risk) < 1e-4
    assert max(abs(verdict.decision.action_scores[a] - fresh.decision.action_scores[a]) for a in ACTIONS) < 1e-4


# -- output side -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_harmful_reply_is_replaced(tiny_monitor: Monitor, kind: str) -> None:
    events: list[DecisionEvent] = []
    chat = guard(make_model(kind, []), monitor=tiny_monitor, policy=Scripted(script={1: "refuse"}),
                 on_decision=events.append)
    out = collect(chat([{"role": "user", "content": "hello"}]))
    output = next(e for e in events if e.stage == "output")
    assert output.decision.action == "refuse" and output.decision.message_index == 1
    assert out == Handlers().replace_output(output.decision) != REPLY
    # the reply itself was read into the trajectory
    session = chat.pool.match([Message("user", "hello"), Message("assistant", REPLY)])
    assert session.messages[-1] == Message("assistant", REPLY)


def test_openai_like_results_are_read_and_replaced_in_a_copy(tiny_monitor: Monitor) -> None:
    result = {"id": "cmpl-1", "choices": [{"index": 0, "message": {"role": "assistant", "content": REPLY},
                                           "finish_reason": "stop"}]}
    chat = guard(lambda messages: result, monitor=tiny_monitor, policy=Scripted(script={1: "terminate"}))
    out = chat([{"role": "user", "content": "hello"}])
    assert out is not result and out["id"] == "cmpl-1"
    assert out["choices"][0]["message"]["content"].startswith("Sorry, I can't continue")
    assert result["choices"][0]["message"]["content"] == REPLY  # the model's object is not mutated
    # the reply made the conversation terminate: the next turn is not answered by the model
    nxt = chat([{"role": "user", "content": "hello"}, {"role": "assistant", "content": out["choices"][0]["message"][
        "content"]}, {"role": "user", "content": "why?"}])
    assert nxt.startswith("I'm ending this conversation")
    # check_output=False: returned as is and not read; replace_on is configurable
    plain = guard(lambda messages: result, monitor=tiny_monitor, policy=Scripted(script={1: "terminate"}),
                  check_output=False)
    assert plain([{"role": "user", "content": "hello"}]) is result
    mild = guard(lambda messages: REPLY, monitor=tiny_monitor, policy=Scripted(script={1: "steer"}),
                 replace_on=("steer",))
    assert mild("hello") != REPLY


@pytest.mark.parametrize("kind", ["gen", "agen"])
def test_stream_is_cut_before_the_harmful_chunk(tiny_monitor: Monitor, kind: str) -> None:
    produced: list[str] = []
    closed: list[bool] = []
    words = chunks_of("one two three four five six seven eight nine ten")

    if kind == "gen":
        def model(messages):
            try:
                for w in words:
                    produced.append(w)
                    yield w
            finally:
                closed.append(True)
    else:
        async def model(messages):
            try:
                for w in words:
                    produced.append(w)
                    await asyncio.sleep(0)
                    yield w
            finally:
                closed.append(True)

    events: list[DecisionEvent] = []
    chat = guard(model, monitor=tiny_monitor, policy=CutAt(n=4), stream_check_every=0, on_decision=events.append,
                 log_content=True)
    result = chat([{"role": "user", "content": "count for me"}])
    got = list(result) if kind == "gen" else asyncio.run(_drain(result))
    stream = [e for e in events if e.stage == "stream"]
    assert [e.decision.action for e in stream] == ["allow"] * 3 + ["refuse"]
    replacement = Handlers().replace_output(stream[-1].decision)
    assert got == [*words[:3], replacement]  # chunk 4 was checked and never delivered
    assert stream[-1].content == "".join(words[:4])  # it was checked with the text so far
    assert len(produced) == 4 and closed == [True]  # the model's stream was closed, not drained
    output = [e for e in events if e.stage == "output"]
    assert len(output) == 1 and output[0].content == "".join(words[:3]) + replacement  # what the user saw


def test_stream_checks_are_incremental_and_equal_a_full_reading(tiny_monitor: Monitor) -> None:
    events: list[DecisionEvent] = []
    g = Guard(monitor=tiny_monitor, policy=forced("allow"), stream_check_every=20, on_decision=events.append,
              log_content=True)
    history = [{"role": "user", "content": "tell me about the history of Rome"}]
    assert g.check_input(history, "s").call_model
    checker = g.stream_checker(history, "s")
    reply = ("Rome was founded, says the legend, in 753 BC. It grew from a village into an empire over the "
             "centuries! Its history is long; the republic came first, then the emperors.")
    pieces = [reply[i:i + 7] for i in range(0, len(reply), 7)]  # words split across chunks
    assert all(checker.feed(p) is None for p in pieces)
    final = checker.finish()
    assert final.stage == "output" and final.response is None and checker.text == reply
    checks = [e for e in events if e.stage == "stream"]
    assert len(checks) == checker.checks >= len(reply) // 20
    session = g.pool.get("s")
    assert session.messages[-1] == Message("assistant", reply)  # finish() read the reply into the trajectory
    reference = tiny_monitor.new_session()
    reference.extend(history)
    full_reads = 0
    for e in checks:  # each partial check equals the core's full reading of the reply so far
        ref = reference.assess_partial("assistant", e.content)
        assert abs(ref.risk - e.decision.risk) < 1e-4, e.content
        full_reads += ref.tokens
    assert checker.tokens < full_reads / 2  # only new tokens were fed at each check
    # an evicted conversation: the checker's private copy is rebuilt once, then goes on incrementally
    session.evict()
    events.clear()
    again = g.stream_checker(history, "s")
    for p in pieces[:12]:
        again.feed(p)
    for e in [e for e in events if e.stage == "stream"]:
        assert abs(reference.assess_partial("assistant", e.content).risk - e.decision.risk) < 1e-4


def test_stream_checks_near_the_context_limit(tiny_package: Path) -> None:
    small = Monitor.load(tiny_package, provider="cpu", variant="fp32")
    small.context_limit = 96
    g = Guard(monitor=small, policy=forced("allow"), stream_check_every=30)
    history = [{"role": "user", "content": "the history of Rome " * 8}]
    checker = g.stream_checker(history)
    for _ in range(12):
        assert checker.feed("and the war went on for years. ") is None
    assert checker.checks == 12 and all(0.0 <= d.risk <= 1.0 for d in checker.decisions)
    assert checker.finish().action == "allow"


def test_openai_like_stream_chunks(tiny_monitor: Monitor) -> None:
    def model(messages):
        yield {"choices": [{"delta": {"role": "assistant"}}]}
        for w in chunks_of("alpha beta gamma delta"):
            yield {"choices": [{"delta": {"content": w}}]}

    chat = guard(model, monitor=tiny_monitor, policy=CutAt(n=2), stream_check_every=0)
    got = list(chat("hello"))
    assert got[0] == {"choices": [{"delta": {"role": "assistant"}}]}  # no text: passed through unchecked
    assert got[1]["choices"][0]["delta"]["content"] == "alpha "
    assert got[2]["choices"][0]["delta"]["content"].startswith("Sorry, I can't continue") and len(got) == 3


# -- failures --------------------------------------------------------------------------------------------------------
class FlakyOrt:
    """A real onnxruntime session that can lose its provider (raises like ORT does when a device is lost)."""

    def __init__(self, session) -> None:
        self.session, self.broken = session, False

    def __getattr__(self, name):
        return getattr(self.session, name)

    def _check(self) -> None:
        if self.broken:
            raise RuntimeError("[ONNXRuntimeError] : 1 : FAIL : provider lost")

    def run_with_iobinding(self, *args, **kwargs):
        self._check()
        return self.session.run_with_iobinding(*args, **kwargs)

    def run(self, *args, **kwargs):
        self._check()
        return self.session.run(*args, **kwargs)


@pytest.fixture
def flaky(tiny_package: Path):
    monitor = Monitor.load(tiny_package, provider="cpu", variant="fp32")
    monitor.ort_session = FlakyOrt(monitor.ort_session)
    return monitor


@pytest.mark.parametrize("mode", ["closed", "open"])
def test_monitor_failure_follows_fail_mode(flaky: Monitor, mode: str, caplog: pytest.LogCaptureFixture) -> None:
    calls: list = []
    events: list[DecisionEvent] = []
    chat = guard(make_model("sync", calls), monitor=flaky, policy=forced("allow"), fail_mode=mode,
                 conversation_id="f", on_decision=events.append)
    history = [{"role": "user", "content": "hello"}]
    assert chat(history) == REPLY
    history += [{"role": "assistant", "content": REPLY}, {"role": "user", "content": "and now?"}]
    session = chat.pool.get("f")
    before = list(session.messages)
    flaky.ort_session.broken = True
    with caplog.at_level(logging.ERROR, logger="trajsafe_sdk.guard"):
        out = chat(history)
    failure = events[-1].decision
    assert "monitor_error" in events[-1].to_dict() and "provider lost" in failure.reason
    assert any(r.levelno >= logging.ERROR and "monitor failure" in r.getMessage() for r in caplog.records)
    assert session.messages == before  # nothing half-read
    if mode == "closed":
        assert failure.action == "refuse" and len(calls) == 1 and "temporarily unavailable" in out
    else:
        assert failure.action == "allow" and out == REPLY and len(calls) == 2  # logged, not silent
    # the monitor comes back: the conversation goes on where it was
    flaky.ort_session.broken = False
    events.clear()
    assert chat(history) == REPLY and events[0].decision.tokens > 0 and "monitor_error" not in events[0].to_dict()


def test_failure_on_output_stream_and_terminated_conversations(flaky: Monitor) -> None:
    g = Guard(monitor=flaky, policy=Scripted(script={0: "terminate"}), fail_mode="open")
    history = [{"role": "user", "content": "hello"}]
    assert g.check_input(history, "t").action == "terminate"
    flaky.ort_session.broken = True
    try:
        assert g.check_input(history, "t").action == "terminate"  # fail-open never reopens a terminated one
        closed = Guard(monitor=flaky, policy=forced("allow"))
        out = closed.check_output(history, REPLY, "o")
        assert out.action == "refuse" and out.replaced and "withheld" in out.response
        checker = closed.stream_checker(history, "o")
        assert checker.feed("Some text that is long enough to be checked now.") is not None and checker.cut
        opened = Guard(monitor=flaky, policy=forced("allow"), fail_mode="open")
        assert opened.check_output(history, REPLY, "p").response is None
    finally:
        flaky.ort_session.broken = False


def test_bad_arguments_raise_typed_errors_and_keep_state(tiny_monitor: Monitor) -> None:
    calls: list = []
    chat = guard(make_model("sync", calls), monitor=tiny_monitor, policy=forced("allow"), conversation_id="b")
    good = [{"role": "user", "content": "hello"}]
    chat(good)
    session = chat.pool.get("b")
    before = (list(session.messages), session.num_tokens, dict(session.state))
    bad_inputs = [[{"role": "wizard", "content": "x"}], [{"role": "user", "content": 3}], [{"content": "x"}],
                  {"role": "user", "content": "a dict, not a list"}, [], [{"role": "system", "content": "only"}],
                  [*good, {"role": "bogus", "content": "x"}], b"bytes", 42]
    for bad in bad_inputs:
        with pytest.raises(MessageError) as info:
            chat(bad)
        assert str(info.value)
        with pytest.raises(MessageError):
            chat.check_input(bad, "b")
    assert (session.messages, session.num_tokens, session.state) == before and len(calls) == 1
    with pytest.raises(TypeError):
        chat()  # the conversation argument is missing
    with pytest.raises(TypeError, match="conversation_id"):
        chat.check_input(good, conversation_id=7)
    with pytest.raises(MessageError, match="reply must be a string"):
        chat.check_output(good, None)
    with pytest.raises(ValueError, match="fail_mode"):
        Guard(monitor=tiny_monitor, fail_mode="maybe")
    with pytest.raises(ValueError, match="unknown policy threshold"):
        Guard(monitor=tiny_monitor, policy=Policy(thresholds={"block": 0.5}))
    with pytest.raises(ValueError, match="must be a number"):
        Guard(monitor=tiny_monitor, policy=Policy(thresholds={"refuse": -1}))
    with pytest.raises(TypeError, match="handlers"):
        Guard(monitor=tiny_monitor, handlers={"probe": "x"})
    with pytest.raises(TypeError, match="monitor"):
        Guard(monitor=42)
    with pytest.raises(ValueError, match="stream_check_every"):
        Guard(monitor=tiny_monitor, stream_check_every=-1)
    with pytest.raises(ValueError, match="replace_on"):
        Guard(monitor=tiny_monitor, replace_on=("block",))
    with pytest.raises(TypeError, match="Handlers"):
        Handlers(probe=3)


# -- concurrency -----------------------------------------------------------------------------------------------------
def _dialogue(chat, i: int, record: dict, barrier: threading.Barrier | None = None) -> None:
    if barrier is not None:
        barrier.wait()  # all threads start together
    history = [{"role": "user", "content": f"conversation {i}: tell me about the history of the war"}]
    for turn in range(3):
        out = chat(list(history), f"id-{i}" if i % 2 else None)
        history += [{"role": "assistant", "content": out}, {"role": "user", "content": f"turn {turn} of {i}, why?"}]
    record[i] = history


async def _adialogue(chat, i: int, record: dict) -> None:
    history = [{"role": "user", "content": f"conversation {i}: tell me about the history of the war"}]
    for turn in range(3):
        out = await chat(list(history), f"id-{i}" if i % 2 else None)
        history += [{"role": "assistant", "content": out}, {"role": "user", "content": f"turn {turn} of {i}, why?"}]
    record[i] = history


def test_concurrent_conversations_keep_their_state_apart(tiny_monitor: Monitor) -> None:
    policy = Policy(thresholds={"probe": 0.3, "steer": 0.5, "refuse": 0.75, "terminate": 0.9})

    def model(messages, conversation_id=None):
        last = [m for m in messages if m["role"] == "user"][-1]["content"]
        return f"reply to <{last}>"  # a reply that carries its own conversation

    async def amodel(messages, conversation_id=None):
        await asyncio.sleep(0.001)
        return model(messages)

    def decisions_of(events: list[DecisionEvent]) -> dict:
        out: dict = {}
        for e in events:
            if e.stage == "input":
                out.setdefault(e.decision.message_index, []).append(e)
        return out

    n = 12
    expected: dict = {}
    for i in range(n):  # the reference: each conversation alone
        _dialogue(guard(model, monitor=tiny_monitor, policy=policy), i, expected)

    threaded: dict = {}
    events: list[DecisionEvent] = []
    chat = guard(model, monitor=tiny_monitor, policy=policy, on_decision=events.append)
    barrier = threading.Barrier(n)
    threads = [threading.Thread(target=_dialogue, args=(chat, i, threaded, barrier)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert threaded == expected

    async def main() -> dict:
        record: dict = {}
        achat = guard(amodel, monitor=tiny_monitor, policy=policy)
        await asyncio.gather(*(_adialogue(achat, i, record) for i in range(n)))
        return record

    assert asyncio.run(main()) == expected
    # every reply of the model went to its own conversation; the interventions differ between conversations
    for i, history in threaded.items():
        for m in history:
            assert f" of {i}," in m["content"] or f"conversation {i}:" in m["content"] or m["role"] == "assistant"
    assert len({e.decision.action for e in events if e.stage == "input"}) >= 3  # not one action for all
    assert len(decisions_of(events)) > 1 and len({e.conversation_id for e in events}) == n


# -- events, handlers, default monitor ---------------------------------------------------------------------------
def test_decision_events_and_logs_are_json_and_carry_no_text_by_default(
        tiny_monitor: Monitor, caplog: pytest.LogCaptureFixture) -> None:
    events: list[DecisionEvent] = []
    secret = "my secret question about the history of Rome"
    chat = guard(lambda messages: "an answer", monitor=tiny_monitor, policy=forced("steer"), on_decision=events.append,
                 conversation_id="ev")
    with caplog.at_level(logging.DEBUG, logger="trajsafe_sdk.guard"):
        chat([{"role": "user", "content": secret}])
    assert [e.stage for e in events] == ["input", "output"] and all(e.conversation_id == "ev" for e in events)
    for e in events:
        data = json.loads(json.dumps(e.to_dict()))
        assert data["decision"] == e.decision.to_dict() and data["content"] is None
        assert set(data["decision"]) == {"action", "category", "risk", "action_scores", "category_scores",
                                         "message_index", "tokens", "latency_ms", "reason"}
    records = [r for r in caplog.records if hasattr(r, "trajsafe")]
    assert len(records) == 2 and all(secret not in json.dumps(r.trajsafe) and secret not in r.getMessage()
                                     for r in records)
    assert records[0].trajsafe["decision"]["action"] == "steer" and records[0].levelno == logging.INFO
    loud: list[DecisionEvent] = []
    guard(lambda messages: "an answer", monitor=tiny_monitor, policy=forced("allow"), on_decision=loud.append,
          log_content=True)(secret)
    assert loud[0].content == secret and loud[1].content == "an answer"

    def broken_observer(event: DecisionEvent) -> None:
        raise RuntimeError("observer bug")

    assert guard(lambda m: "fine", monitor=tiny_monitor, policy=forced("allow"), on_decision=broken_observer)("hi") \
        == "fine"  # an observer's error does not break the chat


def test_handlers_are_worded_per_category_and_overridable(tiny_monitor: Monitor) -> None:
    h = Handlers()
    texts = {c: (h.probe(_decision_for(c)), h.refuse(_decision_for(c))) for c in CATEGORIES}
    assert len({p for p, _ in texts.values()}) == len(CATEGORIES)  # one probe question per category
    assert len({r for _, r in texts.values()}) == len(CATEGORIES)
    assert "crisis line" in h.refuse(_decision_for("self_harm")) and "emergency" in h.terminate(
        _decision_for("self_harm"))
    custom = Handlers(probe="What for?", refuse={"cyber_intrusion": "No hacking."},
                      terminate=lambda d: f"bye ({d.category})")
    assert custom.probe(_decision_for("cbrn")) == "What for?"
    assert custom.refuse(_decision_for("cyber_intrusion")) == "No hacking."
    assert custom.refuse(_decision_for("malware")) == h.refuse(_decision_for("malware"))  # default for the rest
    chat = guard(lambda m: "x", monitor=tiny_monitor, policy=forced("terminate"), handlers=custom)
    assert chat("hello").startswith("bye (")
    bad = guard(lambda m: "x", monitor=tiny_monitor, policy=forced("refuse"), handlers=Handlers(refuse=lambda d: 3))
    with pytest.raises(TypeError, match="refuse handler must return a string"):
        bad("hello")
    shaped = guard(lambda m: "x", monitor=tiny_monitor, policy=forced("probe"),
                   response_factory=lambda text, verdict: {"role": "assistant", "content": text,
                                                           "action": verdict.action})
    assert shaped("hello")["action"] == "probe"


def _decision_for(category: str) -> Decision:
    return Decision("refuse", category, 0.9, {a: 0.2 for a in ACTIONS}, {c: 1 / 13 for c in CATEGORIES}, 0, 1, 0.1,
                    "test")


def test_bare_guard_uses_the_cached_default_monitor(tiny_package: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAJSAFE_MODEL", str(tiny_package))
    assert default_monitor() is default_monitor()

    @guard
    def chat(messages):
        return "ok"

    assert isinstance(chat, Guard) and chat.monitor is default_monitor()
    assert chat.policy.thresholds == Policy.from_package(chat.monitor.package.policy_defaults).thresholds
    out = chat("hello")
    assert isinstance(out, str)


def test_risk_probe(tiny_monitor: Monitor) -> None:
    """Where the ladder allows, a trajectory risk at or above `probe_risk` probes; below it allows."""
    a = tiny_monitor.score([Message("user", "hello")])[0]
    allow_scores = np.array([1.0, 0.0, 0.0, 0.0, 0.0])
    high = replace(a, action_scores=allow_scores, risk=0.6)
    low = replace(a, action_scores=allow_scores, risk=0.2)
    policy = Policy.from_package({**OFF, "probe_risk": 0.4})
    assert policy.probe_risk == 0.4
    assert policy.decide(high, {}).action == "probe"
    assert policy.decide(low, {}).action == "allow"
    assert Policy(thresholds=dict(OFF)).decide(high, {}).action == "allow"  # off by default
    with pytest.raises(ValueError, match="probe_risk"):
        Policy(probe_risk="high").validate()


def test_policy_stages_and_package_defaults(tiny_monitor: Monitor) -> None:
    policy = Policy.from_package({"probe": 0.2, "steer": 0.4, "refuse": 0.6, "terminate": 0.8,
                                  "deescalate_risk": 0.3})
    assert policy.deescalate_risk == 0.3 and policy.thresholds["probe"] == 0.2
    state: dict = {}
    a = tiny_monitor.score([Message("user", "hello")])[0]
    probe = Scripted(script={0: "probe"})
    probe.decide(a, state)
    assert state["last_decision"]["action"] == "probe"
    out = Scripted(script={0: "terminate"}).decide(a, state, stage="output")
    assert out.action == "terminate" and state["terminated"] and state["last_decision"]["action"] == "probe"


def test_import_stays_light() -> None:
    code = ("import sys, trajsafe_sdk; from trajsafe_sdk import guard, Guard, Decision, default_monitor;"
            "heavy = [m for m in ('onnxruntime', 'numpy', 'tokenizers', 'torch', 'langchain_core', 'llama_index')"
            " if m in sys.modules]; print(heavy); assert not heavy, heavy;"
            "from trajsafe_sdk import Policy, Monitor; assert 'onnxruntime' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)


def test_monitor_error_type_is_reported(flaky: Monitor) -> None:
    events: list[DecisionEvent] = []
    g = Guard(monitor=flaky, on_decision=events.append)
    flaky.ort_session.broken = True
    try:
        verdict = g.check_input("hello")
    finally:
        flaky.ort_session.broken = False
    assert verdict.action == "refuse" and MonitorError.__name__ in events[0].decision.extra["monitor_error"]


def test_stateless_conversations_sharing_a_system_prompt_do_not_share_termination(tiny_monitor) -> None:
    """Two anonymous conversations with the same system prompt: one terminate must not end the other."""
    from trajsafe_sdk.guard import Guard
    from trajsafe_sdk.policy import Policy

    class ByWord(Policy):
        def choose(self, action_scores):  # scripted on the scores' source message below
            return self._next

    policy = ByWord(thresholds={})
    g = Guard(lambda messages: "ok", monitor=tiny_monitor, policy=policy)
    system = {"role": "system", "content": "You are a helpful assistant."}
    policy._next = "terminate"
    assert g.check_input([system, {"role": "user", "content": "conversation A"}]).action == "terminate"
    policy._next = "allow"
    assert g.check_input([system, {"role": "user", "content": "conversation B"}]).action == "allow"
