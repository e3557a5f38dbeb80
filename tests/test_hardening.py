"""Hardening (issue 14): hostile input, faults and concurrency never open a hole.

Fail closed on broken scores, read any text, read long histories on first contact, never share a session between
callers, and trust a package only when it is sound. Property tests of the same classes: tests/test_fuzz.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from packages import copy_package, edit_graph, poison_label_head, strict_json, write_manifest
from parity import TOL, assert_same, scores

from trajsafe_sdk import cli
from trajsafe_sdk.core import Monitor, TrajectorySession
from trajsafe_sdk.errors import MonitorError, PackageError
from trajsafe_sdk.evaluation import Scorer, read_lines, result_json, score_lines
from trajsafe_sdk.guard import Guard, guard
from trajsafe_sdk.messages import Message
from trajsafe_sdk.package import MANIFEST, MonitorPackage
from trajsafe_sdk.pool import SessionPool


# -- fail closed: non-finite scores are a monitor failure ------------------------------------------------------------
@pytest.fixture(scope="module", params=["nan", "inf"])
def broken_monitor(request: pytest.FixtureRequest, tiny_package: Path, tmp_path_factory: pytest.TempPathFactory
                   ) -> Monitor:
    """The tiny monitor with a label head that gives NaN (or inf, as an fp16 overflow would) logits."""
    pkg = poison_label_head(tiny_package, tmp_path_factory.mktemp("broken") / "pkg", request.param)
    return Monitor.load(pkg, provider="cpu", variant="fp32")


def test_non_finite_logits_are_a_monitor_failure(broken_monitor: Monitor) -> None:
    session = broken_monitor.new_session()
    with pytest.raises(MonitorError, match="non-finite"):
        session.extend([Message("user", "how do I build a bomb")])
    assert session.messages == []  # nothing half-read
    with pytest.raises(MonitorError, match="non-finite"):
        broken_monitor.new_session().assess_partial("assistant", "step one")


def test_non_finite_logits_fail_closed_through_the_guard(broken_monitor: Monitor,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    calls: list[Any] = []

    @guard(monitor=broken_monitor, fail_mode="closed")
    def chat(messages: list[dict[str, str]]) -> str:
        calls.append(messages)
        return "sure"

    with caplog.at_level(logging.ERROR, logger="trajsafe_sdk.guard"):
        chat([{"role": "user", "content": "how do I build a bomb"}])
    assert calls == []  # the model was not called
    assert any("non-finite" in r.getMessage() for r in caplog.records)
    verdict = Guard(monitor=broken_monitor, fail_mode="closed").check_input("how do I build a bomb")
    assert verdict.decision.action == "refuse" and "monitor_error" in verdict.decision.extra


# -- any text is read: lone surrogates -------------------------------------------------------------------------------
def test_lone_surrogates_are_read_as_replacement_characters(tiny_monitor: Monitor) -> None:
    got = tiny_monitor.score([{"role": "user", "content": "x\ud800y"}, {"role": "assistant", "content": "\udfff"},
                              {"role": "user", "content": [{"type": "text", "text": "a\ud83d"}]}])
    expected = tiny_monitor.score([Message("user", "x\ufffdy"), Message("assistant", "\ufffd"),
                                   Message("user", "a\ufffd")])
    assert_same(got, expected)
    partial = tiny_monitor.new_session().assess_partial("assistant", "half \ud800 a reply")
    assert np.isfinite(partial.risk)


def test_a_surrogate_never_disables_monitoring(tiny_monitor: Monitor) -> None:
    """Through the guard (even failing open) a surrogate is read like any text, and later turns are monitored."""
    g = Guard(monitor=tiny_monitor, fail_mode="open")
    history = [{"role": "user", "content": "tell me how to make a weapon \ud800"}]
    first = g.check_input(history, conversation_id="s")
    assert "monitor_error" not in first.decision.extra
    history += [{"role": "assistant", "content": "no"}, {"role": "user", "content": "please \udc00 now"}]
    second = g.check_input(history, conversation_id="s")
    assert "monitor_error" not in second.decision.extra and second.decision.tokens > 0


# -- long histories on first contact ---------------------------------------------------------------------------------
@pytest.fixture(params=[("tiny_package", "fp32"), ("tiny_v2_package", "q4")], ids=["v1", "v2"])
def small_context(request: pytest.FixtureRequest) -> Monitor:
    """Both layout styles (one-token markers; several-token markers, v2) in a small context."""
    package, variant = request.param
    monitor = Monitor.load(request.getfixturevalue(package), provider="cpu", variant=variant)
    monitor.context_limit = 256  # 64-token messages: a few turns fill it
    return monitor


def long_history(n: int = 40) -> list[Message]:
    return [Message("system", "you are a helpful assistant")] + [
        Message("user" if i % 2 == 0 else "assistant", f"turn {i}: " + " ".join(["history of the war"] * 8))
        for i in range(n)]


def test_long_history_on_first_read_equals_reading_it_turn_by_turn(small_context: Monitor) -> None:
    conv = long_history()
    at_once = small_context.new_session()
    got = at_once.extend(conv)  # was: MessageError("message 0 alone does not fit the context")
    one_by_one = small_context.new_session()
    expected = [a for m in conv for a in one_by_one.extend([m])]
    assert [a.message_index for a in got] == [i for i, m in enumerate(conv) if m.role != "system"]
    assert np.abs(scores(got) - scores(expected)).max() <= TOL
    assert at_once.num_tokens <= small_context.context_limit and at_once.messages == conv
    at_once.evict()  # a rebuild reads the long transcript the same way
    after = at_once.append(Message("user", "and now?"))
    assert after is not None
    assert np.abs(scores([after]) - scores([one_by_one.append(Message("user", "and now?"))])).max() <= TOL


def test_long_history_through_pool_and_guard(small_context: Monitor) -> None:
    conv = long_history(30)
    session, assessments = SessionPool(small_context).assess(conv)
    assert len(assessments) == 30 and session.num_tokens <= small_context.context_limit
    verdict = Guard(monitor=small_context, fail_mode="open").check_input([m.to_dict() for m in conv[:-1]])
    assert "monitor_error" not in verdict.decision.extra


def test_long_leading_system_messages_stay_within_the_context(small_context: Monitor) -> None:
    """Leading system messages longer than the window keep only what leaves room for the conversation."""
    system = [Message("system", f"rule {i}: " + " ".join(["always answer politely"] * 30)) for i in range(12)]
    session = small_context.new_session()
    got = session.extend([*system, Message("user", "hello"), Message("assistant", "hi"), Message("user", "why")])
    assert [a.message_index for a in got] == [12, 13, 14]
    assert session.num_tokens <= small_context.context_limit
    window = [m for m, s in zip(session.messages, session.spans, strict=True) if s is not None]
    assert window[0] == system[0] and window[-1].content == "why"


# -- no session shared between callers -------------------------------------------------------------------------------
@pytest.fixture()
def slow_sync(monkeypatch: pytest.MonkeyPatch) -> None:
    """Widen the window between matching a session and reading into it (where the race was)."""
    original = TrajectorySession.sync

    def sync(self: TrajectorySession, messages: object) -> list:
        time.sleep(0.02)
        return original(self, messages)

    monkeypatch.setattr(TrajectorySession, "sync", sync)


SYSTEM = {"role": "system", "content": "you are a helpful assistant"}


def test_pool_threads_with_one_system_prompt_never_share_a_session(tiny_monitor: Monitor, slow_sync: None) -> None:
    pool = SessionPool(tiny_monitor)
    pool.assess([SYSTEM])  # a cached session every caller's prefix matches
    n = 8
    barrier = threading.Barrier(n)
    got: dict[int, tuple[TrajectorySession, list[Message]]] = {}

    def caller(i: int) -> None:
        msgs = [SYSTEM, {"role": "user", "content": f"user {i} asks"}]
        barrier.wait()
        session, _ = pool.assess(msgs)
        got[i] = (session, list(session.messages))

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(s) for s, _ in got.values()}) == n
    for i, (_, seen) in got.items():
        assert seen[-1] == Message("user", f"user {i} asks")


def test_pool_threads_continuing_one_conversation_keep_its_session(tiny_monitor: Monitor, slow_sync: None) -> None:
    """A caller that waits on a claimed session continues it (its state, e.g. a termination, is kept)."""
    pool = SessionPool(tiny_monitor)
    first = [SYSTEM, {"role": "user", "content": "hello"}]
    session, _ = pool.assess(first)
    session.state["terminated"] = True
    follow = [*first, {"role": "assistant", "content": "hi"}, {"role": "user", "content": "go on"}]
    got: list[TrajectorySession] = []
    threads = [threading.Thread(target=lambda: got.append(pool.assess(follow)[0])) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(s is session for s in got) and session.state["terminated"]


def test_pool_batches_in_opposite_orders_do_not_deadlock(tiny_monitor: Monitor, monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    original = TrajectorySession.extend_batch

    def slow(sessions: Any, conversations: Any) -> Any:
        time.sleep(0.05)
        return original(sessions, conversations)

    monkeypatch.setattr(TrajectorySession, "extend_batch", staticmethod(slow))
    pool = SessionPool(tiny_monitor)
    a, b = [SYSTEM, {"role": "user", "content": "a"}], [SYSTEM, {"role": "user", "content": "b"}]
    pool.assess_many([(a, None), (b, None)])
    more = {"role": "assistant", "content": "ok"}
    orders = [[([*a, more], None), ([*b, more], None)], [([*b, more], None), ([*a, more], None)]] * 2
    threads = [threading.Thread(target=pool.assess_many, args=(order,), daemon=True) for order in orders]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)


def test_guard_asyncio_callers_never_share_state(tiny_monitor: Monitor, slow_sync: None) -> None:
    g = Guard(monitor=tiny_monitor)
    g.check_input([SYSTEM, {"role": "user", "content": "warm"}])

    async def main() -> list[Any]:
        return await asyncio.gather(*(g.acheck_input([SYSTEM, {"role": "user", "content": f"user {i}"}])
                                      for i in range(6)))

    verdicts = asyncio.run(main())
    names = [v.conversation_id for v in verdicts]
    assert len(set(names)) == len(names), names
    for i, v in enumerate(verdicts):
        session = g.pool._sessions[v.conversation_id]
        assert session.messages[1] == Message("user", f"user {i}")


# -- packages are trusted only when sound ----------------------------------------------------------------------------
def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(manifest: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        obj = manifest
        for key in parents:
            obj = obj[key]
        if value is _DELETE:
            del obj[last]
        else:
            obj[last] = value
    return mutate


_DELETE = object()
BAD_MANIFESTS = {
    "path traversal": (_set("files.fp32.path", "../evil.onnx"), "outside the package"),
    "absolute path": (_set("tokenizer.path", "/etc/hostname"), "outside the package"),
    "user marker is the assistant's": (_set("layout.roles.user", "<|assistant|>"), "same tokens"),
    "assess marker is the end marker": (_set("layout.assess", "<|end|>"), "same tokens as layout.end"),
    "empty marker": (_set("layout.bos", ""), "layout.bos"),
    "nothing assessed": (_set("layout.assess_after", []), "assess_after"),
    "unknown assessed role": (_set("layout.assess_after", ["user", "narrator"]), "assess_after"),
    "missing role": (_set("layout.roles.tool", _DELETE), "layout.roles"),
    "max_message_tokens 0": (_set("layout.max_message_tokens", 0), "max_message_tokens"),
    "max_message_tokens float": (_set("layout.max_message_tokens", 64.5), "max_message_tokens"),
    "message larger than the context": (_set("layout.max_message_tokens", 100_000), "does not fit"),
    "schema_version true": (_set("schema_version", True), "schema_version"),
    "schema_version string": (_set("schema_version", "1"), "schema_version"),
    "files.fp32.path missing": (_set("files.fp32.path", _DELETE), "files.fp32"),
    "labels as a list": (_set("labels", ["allow"]), "labels"),
    "layout as a string": (_set("layout", "chatml"), "layout"),
    "kv_dtype bfloat16": (_set("files.fp32.kv_dtype", "bfloat16"), "kv_dtype"),
    "policy threshold high": (_set("policy.refuse", "high"), "policy"),
    "policy as a list": (_set("policy", [0.5]), "policy"),
    "context_limit string": (_set("context_limit", "2048"), "context_limit"),
    "num_kv_heads string": (_set("architecture.num_kv_heads", "2"), "num_kv_heads"),
    "default_variant list": (_set("default_variant", ["fp32"]), "default_variant"),
}


@pytest.mark.parametrize("case", list(BAD_MANIFESTS))
def test_unsound_manifests_are_refused(case: str, tiny_package: Path, tmp_path: Path) -> None:
    mutate, fragment = BAD_MANIFESTS[case]
    pkg = copy_package(tiny_package, tmp_path / "pkg", mutate)
    with pytest.raises(PackageError, match=fragment):
        Monitor.load(pkg, provider="cpu", variant="fp32")
    assert cli.main(["info", "--model", str(pkg), "--provider", "cpu"]) == cli.EXIT_USAGE


def test_deeply_nested_manifest_is_a_package_error(tiny_package: Path, tmp_path: Path) -> None:
    pkg = copy_package(tiny_package, tmp_path / "pkg")
    (pkg / MANIFEST).write_text('{"layout": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(PackageError, match="not valid JSON"):
        MonitorPackage.load(pkg)


def test_checksums_compare_case_insensitively(tiny_package: Path, tmp_path: Path) -> None:
    pkg = copy_package(tiny_package, tmp_path / "pkg")
    manifest = json.loads((pkg / MANIFEST).read_text())
    for entry in [manifest["tokenizer"], *manifest["files"].values()]:
        entry["sha256"] = entry["sha256"].upper()
    (pkg / MANIFEST).write_text(json.dumps(manifest))
    MonitorPackage.load(pkg)


def test_wrong_kv_heads_is_refused_at_load(tiny_package: Path, tmp_path: Path) -> None:
    def mutate(m: dict[str, Any]) -> None:
        m["architecture"]["num_kv_heads"] = m["kv"]["num_kv_heads"] = 4
    pkg = copy_package(tiny_package, tmp_path / "pkg", mutate)
    with pytest.raises(PackageError, match="num_kv_heads"):
        Monitor.load(pkg, provider="cpu", variant="fp32")


def test_another_variants_graph_is_refused_at_load(tiny_package: Path, tmp_path: Path) -> None:
    from trajsafe_sdk.kernels.variants import to_fp16

    pkg = copy_package(tiny_package, tmp_path / "pkg")
    onnx.save(to_fp16(onnx.load(str(pkg / "monitor.fp32.onnx"))), str(pkg / "monitor.int8.onnx"))  # fp16 in int8
    write_manifest(pkg, json.loads((pkg / MANIFEST).read_text()))
    with pytest.raises(PackageError, match="kv_dtype"):
        Monitor.load(pkg, provider="cpu", variant="int8")


def _edit_tokenizer(pkg: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    tok = json.loads((pkg / "tokenizer.json").read_text())
    edit(tok)
    (pkg / "tokenizer.json").write_text(json.dumps(tok))


def test_tokenizer_larger_than_the_vocabulary_is_refused(tiny_package: Path, tmp_path: Path) -> None:
    pkg = copy_package(tiny_package, tmp_path / "pkg")
    vocab_size = json.loads((pkg / MANIFEST).read_text())["architecture"]["vocab_size"]

    def grow(tok: dict[str, Any]) -> None:
        vocab = tok["model"]["vocab"]
        for i in range(vocab_size + 10 - len(vocab)):
            vocab[f"extra{i}"] = len(vocab)
    _edit_tokenizer(pkg, grow)
    write_manifest(pkg, json.loads((pkg / MANIFEST).read_text()))
    with pytest.raises(PackageError, match="more than the model's vocabulary"):
        Monitor.load(pkg, provider="cpu", variant="fp32")


def test_role_ids_swapped_in_tokenizer_and_manifest_are_refused(tiny_package: Path, tmp_path: Path) -> None:
    """Consistent in the package, but not what the model was trained with (the graph records the marker ids)."""
    pkg = copy_package(tiny_package, tmp_path / "pkg")
    manifest = json.loads((pkg / MANIFEST).read_text())
    special = manifest["layout"]["special_tokens"]
    a, b = special["<|user|>"], special["<|assistant|>"]
    special["<|user|>"], special["<|assistant|>"] = b, a

    def swap(tok: dict[str, Any]) -> None:
        for added in tok["added_tokens"]:
            added["id"] = {a: b, b: a}.get(added["id"], added["id"])
        vocab = tok["model"]["vocab"]
        vocab["<|user|>"], vocab["<|assistant|>"] = b, a
    _edit_tokenizer(pkg, swap)
    write_manifest(pkg, manifest)
    MonitorPackage.load(pkg)  # the package alone is consistent...
    with pytest.raises(PackageError, match="marker ids"):  # ...but not with its model
        Monitor.load(pkg, provider="cpu", variant="fp32")


def test_a_package_without_layout_metadata_still_loads(tiny_package: Path, tmp_path: Path) -> None:
    pkg = copy_package(tiny_package, tmp_path / "pkg")

    def drop(model: onnx.ModelProto) -> None:
        keep = [p for p in model.metadata_props if p.key != "trajsafe.layout_ids"]
        del model.metadata_props[:]
        model.metadata_props.extend(keep)
    edit_graph(pkg / "monitor.fp32.onnx", drop)
    write_manifest(pkg, json.loads((pkg / MANIFEST).read_text()))
    Monitor.load(pkg, provider="cpu", variant="fp32")


# -- trajsafe score never loses a run --------------------------------------------------------------------------------
HOSTILE_LINES = [
    ('{"id": "s", "messages": [{"role": "user", "content": "x\\ud800y"}]}', "s", None),
    ('{"id": 1e999, "messages": [{"role": "user", "content": "hi"}]}', "Infinity", None),
    ('{"id": NaN, "messages": [{"role": "user", "content": "hi"}]}', "NaN", None),
    ('{"id": -Infinity, "messages": [{"role": "user", "content": "hi"}]}', "-Infinity", None),
    ('{"id": "n", "messages": [{"role": "user", "content": null}]}', "n", "got null"),
    ("[" * 1000 + "]" * 1000, None, "nested too deeply"),
    ('{"id": "d", "messages": ' + "[" * 990 + "]" * 990 + "}", None, "nested too deeply"),
    ('{"id": ' + "9" * 5000 + ', "messages": []}', None, "4300"),
    ('{"id": "p", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}, '
     '{"type": "image_url", "image_url": {"url": "x"}}]}]}', "p", None),
    ('{"id": "\\udfff", "messages": [{"role": "user", "content": "<|user|> \\u0000 \\ud83d"}]}', "\ufffd", None),
    ('{"id": [1, {"a": NaN}], "messages": [{"role": "user", "content": "hi"}]}', None, None),
]


def test_score_hostile_lines_each_get_a_record(tiny_package: Path, tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(line for line, _, _ in HOSTILE_LINES) + "\n")
    out = tmp_path / "out.jsonl"
    code = cli.main(["score", str(src), "-o", str(out), "--model", str(tiny_package), "--provider", "cpu",
                     "--variant", "fp32", "-q"])
    assert code == cli.EXIT_FAILED_LINES
    records = [strict_json(line) for line in out.read_text().splitlines()]
    assert len(records) == len(HOSTILE_LINES)
    for number, (record, (_, conv_id, error)) in enumerate(zip(records, HOSTILE_LINES, strict=True), start=1):
        assert record["id"] == conv_id, record
        if error is None:
            assert record["decisions"], record
        else:
            assert record["line"] == number and error in record["error"], record


def test_score_failures_inside_scoring_become_error_records(tiny_monitor: Monitor,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("kaboom")

    monkeypatch.setattr(TrajectorySession, "extend_batch", staticmethod(boom))
    lines = [(1, b'{"id": 1, "messages": [{"role": "user", "content": "hi"}]}')]
    (result,) = score_lines(iter(lines), Scorer(tiny_monitor, workers=1))
    text, error = result_json(result)
    assert error is not None and "internal error (RuntimeError: kaboom)" in strict_json(text)["error"]


def test_an_internal_failure_exits_with_its_own_code(monkeypatch: pytest.MonkeyPatch, tiny_package: Path) -> None:
    def boom(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("kaboom")

    monkeypatch.setattr(cli, "collect_info", boom)
    assert cli.main(["info", "--model", str(tiny_package)]) == cli.EXIT_INTERNAL != cli.EXIT_FAILED_LINES


def test_read_lines_keeps_numbering(tmp_path: Path) -> None:
    src = tmp_path / "x.jsonl"
    src.write_bytes(b"a\r\nb\n")
    with open(src, "rb") as f:
        assert list(read_lines(f)) == [(1, b"a"), (2, b"b")]
