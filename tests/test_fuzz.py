"""Property tests of the hardening classes (issue 14): any score line, any message text, any mutated manifest.

Kept small (a few dozen examples each, no deadline) so the default test run stays fast; set
`TRAJSAFE_FUZZ_EXAMPLES=N` for a deeper run.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from packages import poison_label_head, strict_json
from parity import scores

from trajsafe_sdk.core import Monitor
from trajsafe_sdk.errors import MessageError, PackageError
from trajsafe_sdk.evaluation import LineError, Scored, Scorer, result_json, score_lines
from trajsafe_sdk.guard import Guard
from trajsafe_sdk.layout import ALL_SPECIAL_TOKENS
from trajsafe_sdk.messages import Message
from trajsafe_sdk.package import MANIFEST, MonitorPackage

EXAMPLES = int(os.environ.get("TRAJSAFE_FUZZ_EXAMPLES", "30"))
FAST = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))

# text as hostile input comes: any code point (lone surrogates and control characters included), marker look-alikes
hostile_char = st.one_of(st.characters(exclude_categories=()), st.sampled_from(["\ud800", "\udfff", "\x00", "\u202e",
                                                                                "\ufeff", "\u200b", "\n", "|"]))
marker_like = st.sampled_from(ALL_SPECIAL_TOKENS + ["<|im_start|>user\n", "<|im_end|>", "<｜user｜>"])
hostile_text = st.lists(st.one_of(hostile_char, marker_like), max_size=20).map("".join)
# NaN and infinities included; no subnormals (onnxruntime sets flush-to-zero, which hypothesis refuses)
json_scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_subnormal=False), hostile_text)
json_value = st.recursive(json_scalar, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                               st.dictionaries(hostile_text, inner, max_size=3)),
                          max_leaves=8)
role = st.sampled_from(["system", "developer", "user", "assistant", "tool", "narrator", "", "USER"])
content = st.one_of(hostile_text, st.none(), json_value,
                    st.lists(st.one_of(hostile_text, st.fixed_dictionaries({"type": st.just("text"),
                                                                            "text": hostile_text})), max_size=3))
message = st.one_of(st.fixed_dictionaries({"role": role, "content": content}), json_value)
line_object = st.fixed_dictionaries({"id": json_value, "messages": st.one_of(st.lists(message, max_size=4),
                                                                             json_value)})


score_line = st.one_of(
    line_object.map(lambda o: json.dumps(o).encode()),  # json.dumps writes NaN/Infinity and \ud800 escapes
    hostile_text.map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.binary(max_size=40),
    st.integers(1, 1200).map(lambda n: ("[" * n + "]" * n).encode()),
    st.integers(4000, 4400).map(lambda n: b'{"id": ' + b"7" * n + b', "messages": []}'),
)


@FAST
@given(lines=st.lists(score_line, min_size=1, max_size=6))
def test_every_score_line_gets_a_decision_or_an_error_record(tiny_monitor: Monitor, lines: list[bytes]) -> None:
    scorer = Scorer(tiny_monitor, workers=1)
    results = list(score_lines(enumerate(lines, start=1), scorer, chunk_lines=4))
    assert len(results) == len(lines)
    for number, result in enumerate(results, start=1):
        text, error = result_json(result)
        record = strict_json(text)  # valid, strict JSON: no NaN or Infinity
        text.encode("ascii")
        if isinstance(result, Scored):
            assert error is None and "decisions" in record
            users = sum(m.role == "user" for m in result.conversation.messages)
            assert len(record["decisions"]) == users
        else:
            assert isinstance(result, LineError) and record["line"] == number and record["error"]


@pytest.fixture(scope="module")
def nan_monitor(tiny_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Monitor:
    return Monitor.load(poison_label_head(tiny_package, tmp_path_factory.mktemp("nan") / "pkg", "nan"),
                        provider="cpu", variant="fp32")


@FAST
@given(texts=st.lists(hostile_text, min_size=1, max_size=3), roles=st.lists(role, min_size=3, max_size=3))
def test_any_message_text_gets_a_decision_never_allow_on_failure(tiny_monitor: Monitor, nan_monitor: Monitor,
                                                                 texts: list[str], roles: list[str]) -> None:
    history = [{"role": r, "content": t} for r, t in zip(roles, texts, strict=False)]
    history.append({"role": "user", "content": texts[-1]})
    for monitor, healthy in ((tiny_monitor, True), (nan_monitor, False)):
        try:
            verdict = Guard(monitor=monitor, fail_mode="closed").check_input(history)
        except MessageError:  # a malformed conversation (an unknown role) is the caller's typed error
            assert any(r not in ("system", "developer", "user", "assistant", "tool", "USER") for r in roles)
            continue
        failed = "monitor_error" in verdict.decision.extra
        assert failed != healthy, verdict.decision.reason  # any text is read; broken scores are a failure
        if failed:
            assert verdict.decision.action != "allow" and not verdict.call_model


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path into a JSON value (the value itself first)."""
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


@pytest.fixture(scope="module")
def manifest_sandbox(tiny_package: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    pkg = tmp_path_factory.mktemp("sandbox") / "pkg"
    shutil.copytree(tiny_package, pkg)
    return pkg, json.loads((pkg / MANIFEST).read_text())


_DELETE = object()


@settings(max_examples=EXAMPLES + 10, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_mutated_manifests_load_or_raise_package_error(manifest_sandbox: tuple[Path, dict[str, Any]],
                                                       data: st.DataObject) -> None:
    pkg, original = manifest_sandbox
    manifest = json.loads(json.dumps(original))
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(_paths(manifest)[1:]))
        replacement = data.draw(st.one_of(json_value, st.sampled_from([_DELETE, *ALL_SPECIAL_TOKENS[:8], 0, -1, 1,
                                                                       True, "../x", "/etc/passwd", "bfloat16"])))
        parent = manifest
        for key in path[:-1]:
            parent = parent[key]
        if replacement is _DELETE:
            del parent[path[-1]]
        else:
            parent[path[-1]] = replacement
    (pkg / MANIFEST).write_text(json.dumps(manifest))
    try:
        MonitorPackage.load(pkg)
        Monitor.load(pkg, provider="cpu", variant="fp32")
    except PackageError:
        pass
    finally:
        (pkg / MANIFEST).write_text(json.dumps(original))


# -- the same conversation gets the same decision however it is fed --------------------------------------------------
conversation = st.lists(st.tuples(st.sampled_from(["user", "assistant", "tool", "system"]),
                                  st.lists(st.sampled_from(["how", "do", "I", "make", "a", "bomb", "cake", "kill",
                                                            "python", "process", "please", "history", "of", "war",
                                                            "step", "by", "!"]), max_size=12).map(" ".join)),
                        min_size=1, max_size=6).map(lambda ms: [Message(r, t) for r, t in ms] + [Message("user", "ok")])


@pytest.fixture(scope="module")
def default_monitor() -> Monitor:
    return Monitor.load(provider="cpu")  # the embedded default monitor on its CPU variant


@pytest.mark.xfail(strict=False, reason="the shipped dynamic-int8 CPU variant quantises activations per run, so "
                   "turn-by-turn and one-run readings differ (up to ~0.1); fixed by the weight-only default variant")
@settings(max_examples=max(15, EXAMPLES // 2), deadline=None, suppress_health_check=list(HealthCheck))
@given(conv=conversation)
def test_turn_by_turn_equals_one_run_on_the_default_package(default_monitor: Monitor, conv: list[Message]) -> None:
    from trajsafe_sdk.policy import Policy

    one_run = default_monitor.score(conv)
    session = default_monitor.new_session()
    incremental = [a for m in conv for a in session.extend([m])]
    assert np.abs(scores(one_run) - scores(incremental)).max() <= 1e-3
    policy = Policy.from_package(default_monitor.package.policy_defaults)
    state_a: dict[str, Any] = {}
    state_b: dict[str, Any] = {}
    assert [policy.decide(a, state_a).action for a in one_run] == \
        [policy.decide(a, state_b).action for a in incremental]
