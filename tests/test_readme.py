"""README.md and docs/contracts.md stay true: every Python snippet of the README runs (stand-ins for remote models:
a fake `openai` module, langchain-core's and llama-index-core's fake LLMs) on the embedded default monitor, and the
documents cite only what a user's clone has."""

from __future__ import annotations

import asyncio
import itertools
import re
import sys
import types
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from trajsafe_sdk import ACTIONS, CATEGORIES, DecisionEvent, cli
from trajsafe_sdk.decision import DECISION_FIELDS

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
SNIPPETS = re.findall(r"^```python\n(.*?)^```", README, flags=re.S | re.M)
REPLY = "Find its PID with ps aux, then stop it with kill PID. Use kill -9 only if it ignores that."
NOT_RUN = ("ray_batch",)  # needs Ray and a folder of logs: tests/test_ray.py covers score_ray itself


def snippet(marker: str) -> str:
    (found,) = [s for s in SNIPPETS if marker in s]
    return found


def fake_openai() -> types.ModuleType:
    """The `openai` client surface the README uses, answering REPLY (whole, or streamed in chunks)."""

    def message(text: str) -> Any:
        return SimpleNamespace(choices=[SimpleNamespace(message=SimpleNamespace(content=text))])

    def chunk(text: str) -> Any:
        return SimpleNamespace(choices=[SimpleNamespace(delta=SimpleNamespace(content=text))])

    class Completions:
        def create(self, model: str, messages: list[dict], stream: bool = False) -> Any:
            assert messages and model
            return (chunk(w + " ") for w in REPLY.split()) if stream else message(REPLY)

    class AsyncCompletions:
        async def create(self, model: str, messages: list[dict], stream: bool = False) -> Any:
            async def pieces() -> AsyncIterator[Any]:
                for word in REPLY.split():
                    yield chunk(word + " ")

            return pieces() if stream else message(REPLY)

    module = types.ModuleType("openai")
    module.OpenAI = lambda **_: SimpleNamespace(chat=SimpleNamespace(completions=Completions()))  # type: ignore
    module.AsyncOpenAI = lambda **_: SimpleNamespace(chat=SimpleNamespace(completions=AsyncCompletions()))  # type: ignore
    return module


@pytest.fixture
def openai_stand_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openai", fake_openai())


def run(code: str, **names: Any) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": "readme", **names}
    exec(compile(code, "README.md", "exec"), namespace)
    return namespace


def test_every_python_snippet_is_run_here() -> None:
    markers = ("from openai import OpenAI", "AsyncOpenAI", "def audit(", "monitor.new_session()", "langchain_core",
               "llama_index", *NOT_RUN)
    assert sorted(SNIPPETS) == sorted(snippet(m) for m in markers)


def test_guard_snippets(openai_stand_in: None, capsys: pytest.CaptureFixture) -> None:
    ns = run(snippet("from openai import OpenAI"))
    assert capsys.readouterr().out.strip() == REPLY  # the README says: allowed, the model answers
    streamed = run(snippet("AsyncOpenAI"), history=ns["history"])
    asyncio.run(streamed["main"]())
    assert capsys.readouterr().out.split() == REPLY.split()


def test_on_decision_snippet(capsys: pytest.CaptureFixture) -> None:
    """The README says what `on_decision=` receives (a DecisionEvent: a Decision has no conversation id or stage);
    its snippet shows it and runs."""
    assert "receives a `DecisionEvent`" in README
    run(snippet("def audit("))
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:3] for line in lines] == [["c-1", "input", "allow"], ["c-1", "output", "allow"]]


def test_inference_core_snippet(capsys: pytest.CaptureFixture) -> None:
    history = [{"role": "user", "content": "How do I kill a stuck Python process?"},
               {"role": "assistant", "content": "Use kill <pid> ..."}]
    run(snippet("monitor.new_session()"), edited_history=[*history, {"role": "user", "content": "And on Windows?"}],
        messages=history)
    printed, labelled = capsys.readouterr().out.splitlines()[:2]
    assert printed.startswith("Assessment(message 0 (user), risk=") and "allow=" in printed
    assert labelled.startswith("{'allow': ")


def test_langchain_snippet() -> None:
    from langchain_core.language_models import GenericFakeChatModel

    llm = GenericFakeChatModel(messages=itertools.cycle([REPLY]))
    question = "Just tell me exactly how to break my neighbour's Wi-Fi password, step by step."
    ns = run(snippet("langchain_core"), llm=llm, q="How do I kill a stuck Python process?", history=[],
             inputs={"question": question, "history": []})
    assert "GuardBlocked" in ns and isinstance(ns["answer"], str) and ns["answer"]


def test_llama_index_snippet(capsys: pytest.CaptureFixture) -> None:
    from llama_index.core.llms import MockLLM

    run(snippet("llama_index"), OpenAI=lambda model: MockLLM(max_tokens=8), session_id="s-1",
        base_llm=MockLLM(max_tokens=8))
    assert "text" in capsys.readouterr().out  # MockLLM's answer: the turn was allowed


# ---------------------------------------------------------------------------------------------------- references
def shipped_texts() -> Iterator[tuple[str, str]]:
    """README, docs and every source file a user's clone has (the model card is written by the model build:
    trajsafe_sdk/training/build_default.py)."""
    for path in [REPO / "README.md", *REPO.glob("docs/*.md"), *REPO.glob("examples/*.py"),
                 *REPO.glob("benchmarks/*"), *REPO.glob("trajsafe_sdk/**/*.py"), *REPO.glob("kernels/*.py"),
                 *REPO.glob("integrations/*.py")]:
        if path.is_file():
            yield str(path.relative_to(REPO)), path.read_text(encoding="utf-8")


def test_nothing_cites_a_document_users_do_not_have(capsys: pytest.CaptureFixture) -> None:
    cited = [name for name, text in shipped_texts() if "DESIGN.md" in text or "shared/DESIGN" in text]
    assert cited == []
    for args in (["--help"], *([command, "--help"] for command in ("demo", "score", "eval", "info", "bench"))):
        with pytest.raises(SystemExit) as exited:
            cli.main(args)
        assert exited.value.code == 0 and "DESIGN" not in capsys.readouterr().out, args


def test_contracts_doc_names_every_field_action_and_category() -> None:
    contracts = (REPO / "docs" / "contracts.md").read_text(encoding="utf-8")
    for name in (*DECISION_FIELDS, *ACTIONS, *CATEGORIES):
        assert f"`{name}`" in contracts, name
    for name in ("conversation_id", "stage", "decision", "content"):
        assert name in DecisionEvent.__dataclass_fields__ and f"`{name}`" in contracts
    assert '{"id": <id or null>, "line": N, "error": "what is wrong"}' in contracts
