"""The `trajsafe` command line and the evaluation harness behind it (docs/contracts.md §5-6).

The installed console script runs in subprocesses on good and bad input (exact output shapes, exit codes); the
finer behaviour (turn-by-turn equivalence, sticky terminate, re-windowing, workers, streaming) is checked in process.
Real tiny monitor package (random weights), real ONNX Runtime.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import data_dir
from hypothesis import given, settings
from hypothesis import strategies as st

from trajsafe_sdk import cli
from trajsafe_sdk.core import Monitor
from trajsafe_sdk.decision import DECISION_FIELDS
from trajsafe_sdk.evaluation import (
    Conversation,
    LineError,
    Progress,
    Scored,
    Scorer,
    parse_line,
    read_lines,
    score_lines,
)
from trajsafe_sdk.labels import ACTIONS, CATEGORIES, EXPECTATIONS
from trajsafe_sdk.messages import Message
from trajsafe_sdk.policy import Policy, parse_settings
from trajsafe_sdk.pool import SessionPool
from trajsafe_sdk.runtime import cuda_usable
from trajsafe_sdk.training.metrics import conversation_metrics

SCRIPT = Path(sys.executable).with_name("trajsafe")
DEMO = Path(__file__).resolve().parents[1] / "trajsafe_sdk" / "examples" / "demo.jsonl"
OFF = {"probe": 1.1, "steer": 1.1, "refuse": 1.1, "terminate": 1.1}


def run(*args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the installed console script."""
    assert SCRIPT.is_file(), f"console script missing: {SCRIPT} (pip install -e .)"
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([str(SCRIPT), *args], input=stdin, capture_output=True, text=True, timeout=120,
                          env=full_env)


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


GOOD = [
    {"id": "a", "messages": [{"role": "system", "content": "be helpful"}, user("hi"), assistant("hello"),
                             user("how do I kill a python process?")]},
    {"id": 7, "messages": [{"role": "developer", "content": "x"}, {"role": "tool", "content": "tool output"},
                           user("ok"), assistant("fine")]},
    {"messages": [user("no id here")]},
    {"id": "no-user", "messages": [{"role": "system", "content": "only a system prompt"}]},
]
# (raw line, expected id, expected error fragment)
BAD = [
    ("not json", None, "invalid JSON"),
    ('{"id": "b"}', "b", "missing 'messages'"),
    ('{"id": "c", "messages": [{"role": "robot", "content": "x"}]}', "c", "unknown role 'robot'"),
    ('{"id": "d", "messages": [{"role": "user", "content": 5}]}', "d", "content must be a string"),
    ('{"id": "e", "messages": []}', "e", "conversation is empty"),
    ('{"id": "f", "messages": "hello"}', "f", "'messages' must be a list"),
    ("[1, 2]", None, "expected a JSON object"),
    ("", None, "empty line"),
]


def mixed_input() -> tuple[str, list[tuple[str, object]]]:
    """Good and bad lines interleaved; returns the text and, per line, ("ok", record) or ("error", BAD entry)."""
    lines, expected = [], []
    for i in range(max(len(GOOD), len(BAD))):
        if i < len(GOOD):
            lines.append(json.dumps(GOOD[i]))
            expected.append(("ok", GOOD[i]))
        if i < len(BAD):
            lines.append(BAD[i][0])
            expected.append(("error", BAD[i]))
    return "\n".join(lines) + "\n", expected


def check_decision(d: dict, message_index: int) -> None:
    assert tuple(d) == DECISION_FIELDS
    assert d["action"] in ACTIONS and d["category"] in CATEGORIES
    assert 0.0 <= d["risk"] <= 1.0 and d["message_index"] == message_index
    assert list(d["action_scores"]) == ACTIONS and list(d["category_scores"]) == CATEGORIES
    assert abs(sum(d["action_scores"].values()) - 1) < 1e-3 and abs(sum(d["category_scores"].values()) - 1) < 1e-3
    assert isinstance(d["tokens"], int) and d["tokens"] > 0 and d["latency_ms"] >= 0
    assert isinstance(d["reason"], str) and d["reason"]


# ---------------------------------------------------------------------------------------------------- console script
def test_help_lists_every_command() -> None:
    proc = run("--help")
    assert proc.returncode == 0
    for command in ("demo", "score", "eval", "bench", "info", "--model", "--provider"):
        assert command in proc.stdout
    parser = cli.build_parser()
    for command in ("demo", "score", "eval", "info"):
        text = parser._subparsers._group_actions[0].choices[command].format_help()  # type: ignore[union-attr]
        assert "--model DIR" in text and "--provider {auto,cpu,cuda}" in text, command


def test_score_good_and_bad_lines(tiny_package: Path, tmp_path: Path) -> None:
    text, expected = mixed_input()
    path = tmp_path / "in.jsonl"
    path.write_text(text)
    proc = run("score", str(path), "--model", str(tiny_package), "--provider", "cpu")
    assert proc.returncode == 1, proc.stderr
    out = proc.stdout.splitlines()
    assert len(out) == len(expected)
    for number, (line, (kind, spec)) in enumerate(zip(out, expected, strict=True), start=1):
        record = json.loads(line)
        if kind == "error":
            raw, conv_id, fragment = spec  # type: ignore[misc]
            assert list(record) == ["id", "line", "error"]
            assert record["id"] == conv_id and record["line"] == number and fragment in record["error"], record
            assert f"line {number}: " in proc.stderr
            continue
        assert list(record) == ["id", "decisions", "tokens", "latency_ms"]
        assert record["id"] == spec.get("id")  # type: ignore[union-attr]
        user_indices = [i for i, m in enumerate(spec["messages"]) if m["role"] == "user"]  # type: ignore[index]
        assert [d["message_index"] for d in record["decisions"]] == user_indices
        for d, index in zip(record["decisions"], user_indices, strict=True):
            check_decision(d, index)
        assert record["tokens"] >= sum(d["tokens"] for d in record["decisions"]) and record["tokens"] > 0
        assert record["latency_ms"] >= 0
    assert "conversations/s" in proc.stderr and "Traceback" not in proc.stderr


def test_score_stdin_stdout_quiet(tiny_package: Path) -> None:
    text = "".join(json.dumps(g) + "\n" for g in GOOD * 3)
    proc = run("score", "-", "-o", "-", "--quiet", "--model", str(tiny_package), "--provider", "cpu", stdin=text)
    assert proc.returncode == 0 and proc.stderr == ""
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["id"] for r in records] == [g.get("id") for g in GOOD * 3]
    first, again = records[0], records[len(GOOD)]
    assert first["tokens"] == again["tokens"]
    assert [d["action"] for d in first["decisions"]] == [d["action"] for d in again["decisions"]]


def test_score_output_file_and_missing_input(tiny_package: Path, tmp_path: Path) -> None:
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text(json.dumps(GOOD[0]) + "\n")
    assert cli.main(["score", str(src), "-o", str(dst), "-q", "--model", str(tiny_package)]) == 0
    assert len(dst.read_text().splitlines()) == 1
    assert cli.main(["score", str(tmp_path / "nope.jsonl"), "--model", str(tiny_package)]) == 2


def test_eval_console_script(tiny_package: Path) -> None:
    proc = run("eval", str(DEMO), "--json", "--baseline", "last-message", "--model", str(tiny_package),
               "--provider", "cpu")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["conversations"] == 9 and report["errors"] == 0
    overall = report["monitor"]["overall"]
    assert set(overall) >= {"catch_rate", "block_rate", "over_refusal", "friction", "earliness_median", "counts"}
    assert overall["counts"]["harmful"] == 4 and overall["counts"]["benign"] == 5
    assert set(report["monitor"]["by_category"]) == {"benign", "cyber_intrusion", "fraud_scams",
                                                     "privacy_surveillance", "violent_harm"}
    assert report["baseline"]["name"] == "last-message" and report["baseline"]["overall"]["counts"] == {
        **report["baseline"]["overall"]["counts"], "harmful": 4, "benign": 5}
    assert "by_source" not in report["monitor"]  # no `source` field in the demo file
    policy = json.loads((tiny_package / "monitor.json").read_text())["policy"]
    assert report["policy"]["probe_risk"] == policy.get("probe_risk", 1.1)
    assert {k: report["policy"][k] for k in ("probe", "steer", "refuse", "terminate")} == {
        k: policy[k] for k in ("probe", "steer", "refuse", "terminate")}
    text = run("eval", str(DEMO), "--model", str(tiny_package), "--provider", "cpu", "--quiet")
    assert text.returncode == 0 and text.stderr == ""
    assert "| overall" in text.stdout and "| catch | block | over-refusal | friction | earliness |" in text.stdout
    assert "by category" in text.stdout


def test_policy_settings_are_laid_over_the_package_in_score_and_eval(tiny_package: Path, tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(g) + "\n" for g in GOOD))
    def actions(*settings: str) -> list[str]:
        dst = tmp_path / "out.jsonl"
        args = [a for s in settings for a in ("--policy", s)]
        assert cli.main(["score", str(src), "-o", str(dst), "-q", "--model", str(tiny_package), *args]) == 0
        return [d["action"] for line in dst.read_text().splitlines() for d in json.loads(line)["decisions"]]
    assert set(actions("refuse=0", "terminate=1.1")) == {"refuse"}  # every turn leans at least to refuse
    assert set(actions(*(f"{k}=1.1" for k in ("probe", "steer", "refuse", "terminate", "probe_risk")))) == {"allow"}
    report = run("eval", str(DEMO), "--json", "--model", str(tiny_package), "--provider", "cpu",
                 "--policy", "ceiling_risk=0.9", "--policy", "sticky_terminate=false", "--policy", " steer = 0.7 ")
    assert report.returncode == 0, report.stderr
    policy = json.loads(report.stdout)["policy"]
    assert (policy["ceiling_risk"], policy["sticky_terminate"], policy["steer"]) == (0.9, False, 0.7)
    package = json.loads((tiny_package / "monitor.json").read_text())["policy"]
    assert policy["refuse"] == package["refuse"]  # the rest stays the package's


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=30) | st.sampled_from(["steer=0.5", "ceiling_risk=0.9", "sticky_terminate=TRUE"]),
                max_size=4))
def test_policy_settings_parse_or_name_the_bad_pair(pairs: list[str]) -> None:
    try:
        parsed = parse_settings(pairs)
    except ValueError as exc:
        assert "policy setting" in str(exc)
        return
    for key, value in parsed.items():
        assert key in Policy().to_dict()
        assert isinstance(value, bool) if key == "sticky_terminate" else np.isfinite(value)


@pytest.mark.parametrize("setting", ["foo=1", "steer", "steer=abc", "steer=-1", "steer=nan", "floor_risk=inf",
                                     "sticky_terminate=maybe", "=0.5", "deescalate_risk=2"])
def test_a_bad_policy_setting_is_a_usage_error_before_any_scoring(setting: str, tiny_package: Path) -> None:
    for command in ("score", "eval"):
        proc = run(command, str(DEMO), "--model", str(tiny_package), "--provider", "cpu", "--policy", setting)
        assert proc.returncode == 2 and proc.stdout == "", (command, setting, proc.stdout[:200])
        assert "--policy" in proc.stderr and "Traceback" not in proc.stderr


def test_demo_console_script(tiny_package: Path) -> None:
    proc = run("demo", "--model", str(tiny_package), "--provider", "cpu")
    assert proc.returncode == 0, proc.stderr
    conversations = [json.loads(line) for line in DEMO.read_text().splitlines()]
    turns = sum(m["role"] == "user" for c in conversations for m in c["messages"])
    rows = [line.removesuffix("  (missed)").split() for line in proc.stdout.splitlines() if line[:6].strip().isdigit()]
    assert len(rows) == turns
    shoulds = [("-" if e == "any" else e) for c in conversations for e in c["expect"]]
    assert [row[-1] for row in rows] == shoulds
    for row in rows:
        assert row[-2] == "ms" and float(row[-3]) >= 0 and 0 <= float(row[-4]) <= 1
        assert row[-5] in CATEGORIES and row[-6] in ACTIONS
    assert sum(line.startswith("[") for line in proc.stdout.splitlines()) == len(conversations)
    summary = proc.stdout.strip().splitlines()[-1]
    assert summary.startswith(f"summary: {len(conversations)} conversations, {turns} user turns (")
    assert "turns as they should be " in summary and "median latency" in summary


def test_missing_default_monitor_is_a_clear_error(tmp_path: Path) -> None:
    proc = run("demo", env={"TRAJSAFE_MODEL": str(tmp_path / "no-such-package")})
    assert proc.returncode == 2
    assert "cannot load the monitor package: $TRAJSAFE_MODEL is set to " in proc.stderr
    assert "embedded default monitor is missing" not in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_package_errors_name_their_cause(tiny_package: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["demo", "--model", str(tiny_package), "--variant", "fp16"]) == 2
    err = capsys.readouterr().err
    assert "no ONNX variant 'fp16'; the package has ['fp32', 'int8']" in err and "embedded" not in err
    from trajsafe_sdk import package

    monkeypatch.delenv("TRAJSAFE_MODEL", raising=False)
    monkeypatch.setattr(package, "__file__", str(tmp_path / "site-packages" / "trajsafe_sdk" / "package.py"))
    assert cli.main(["info"]) == 2
    assert "the embedded default monitor is missing from this installation" in capsys.readouterr().out


def test_info_console_script(tiny_package: Path) -> None:
    proc = run("info", "--json", "--model", str(tiny_package), "--provider", "cpu")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["sdk"]["name"] == "trajsafe-sdk" and info["model"]["name"] == "trajsafe-tiny"
    assert set(info["model"]["variants"]) == {"fp32", "int8"}
    rt = info["onnxruntime"]
    assert "CPUExecutionProvider" in rt["providers_available"] and rt["provider_chosen"] == "cpu"
    assert rt["cuda"]["reason"] and set(info["versions"]) >= {"python", "onnxruntime", "tokenizers", "numpy"}


@pytest.mark.skipif(cuda_usable()[0], reason="CUDA runs here: nothing to fall back from")
def test_info_says_auto_tried_cuda(tiny_package: Path) -> None:
    proc = run("info", "--json", "--model", str(tiny_package))
    assert proc.returncode == 0, proc.stderr
    reason = json.loads(proc.stdout)["onnxruntime"]["cuda"]["reason"]
    assert "was requested" not in reason
    assert reason.startswith("--provider auto tried CUDA, then chose CPU: ")


@pytest.mark.skipif(cuda_usable()[0], reason="CUDA runs here")
def test_cuda_failure_is_one_clean_error(tiny_package: Path) -> None:
    """Monitor.load(provider="cuda") where CUDA cannot run: the ProviderError only, no native onnxruntime lines."""
    code = ("from trajsafe_sdk import Monitor, ProviderError\n"
            f"try:\n    Monitor.load({str(tiny_package)!r}, provider='cuda')\n"
            "except ProviderError as exc:\n    print(exc)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if k != "TRAJSAFE_ORT_LOG"})
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout.startswith("provider 'cuda' was requested but cannot run here: ")


# ---------------------------------------------------------------------------------------------------- in process
def test_info_text_and_bad_package(tiny_package: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["info", "--model", str(tiny_package), "--provider", "cpu"]) == 0
    out = capsys.readouterr().out
    for key in ("sdk", "model", "variants", "onnxruntime", "providers", "chosen", "cuda", "tokenizers", "numpy",
                "python"):
        assert any(line.startswith(key + " ") for line in out.splitlines()), key
    assert cli.main(["info", "--model", str(tmp_path)]) == 2
    assert "NOT LOADED" in capsys.readouterr().out


def test_bench_without_module(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "trajsafe_sdk.bench", None)
    assert cli.main(["bench", "--quick"]) == 2
    assert "benchmark module" in capsys.readouterr().err


def test_usage_errors(tiny_package: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["score"])
    assert exc.value.code == 2
    assert cli.main(["score", str(DEMO), "--batch-size", "0", "--model", str(tiny_package)]) == 2
    assert "--batch-size must be at least 1" in capsys.readouterr().err


def monitor_fp32(tiny_package: Path) -> Monitor:
    return Monitor.load(tiny_package, provider="cpu", variant="fp32")


def test_score_equals_turn_by_turn_guard_reading(tiny_package: Path) -> None:
    """A conversation read in one run gives the decisions of a live guard reading it turn by turn."""
    monitor = monitor_fp32(tiny_package)
    conversations = [json.loads(line) for line in DEMO.read_text().splitlines()]
    scored = Scorer(monitor, workers=1).score([Conversation(i + 1, c["id"], [Message(**m) for m in c["messages"]])
                                               for i, c in enumerate(conversations)])
    pool, policy = SessionPool(monitor), Policy.from_package(monitor.package.policy_defaults)
    for conv, result in zip(conversations, scored, strict=True):
        assert isinstance(result, Scored)
        live, live_tokens = [], []
        for i, m in enumerate(conv["messages"]):
            if m["role"] == "user":
                session, assessments = pool.assess(conv["messages"][: i + 1], conversation_id=conv["id"])
                live.append(policy.decide(assessments[-1], session.state))
                live_tokens.append(sum(a.tokens for a in assessments))
        assert [d.action for d in result.decisions] == [d.action for d in live]
        assert [d.message_index for d in result.decisions] == [d.message_index for d in live]
        np.testing.assert_allclose([d.risk for d in result.decisions], [d.risk for d in live], atol=1e-4)
        enc = monitor.encoder
        n_tokens = len(enc.bos_ids) + sum(len(enc.encode_message(Message(**m))) for m in conv["messages"])
        assert result.tokens == n_tokens
        # each decision's tokens are what a live guard reads for it: the messages since the previous decision
        assert [d.tokens for d in result.decisions] == live_tokens


def test_sticky_terminate_per_conversation(tiny_monitor: Monitor) -> None:
    policy = Policy(thresholds={**OFF, "terminate": 0.0})
    convs = [Conversation(1, "x", [Message("user", "a"), Message("assistant", "b"), Message("user", "c")]),
             Conversation(2, "y", [Message("user", "d")])]
    results = Scorer(tiny_monitor, policy=policy, workers=1).score(convs)
    assert [d.action for d in results[0].decisions] == ["terminate", "terminate"]  # type: ignore[union-attr]
    assert "terminated earlier" in results[0].decisions[1].reason  # type: ignore[union-attr]
    assert "terminated earlier" not in results[1].decisions[0].reason  # type: ignore[union-attr]  # fresh state


def test_batches_and_workers_agree(tiny_package: Path) -> None:
    monitor = monitor_fp32(tiny_package)
    convs = [Conversation(i, i, [Message("user", "hello " * (1 + i % 7)), Message("assistant", "sure"),
                                 Message("user", f"question number {i} " * (1 + i % 3))]) for i in range(24)]
    reference = Scorer(monitor, batch_size=1, workers=1).score(convs)
    for batch_size, workers in ((8, 1), (1, 3), (4, 2)):
        got = Scorer(monitor, batch_size=batch_size, workers=workers).score(convs)
        for a, b in zip(reference, got, strict=True):
            assert isinstance(a, Scored) and isinstance(b, Scored) and a.conversation is b.conversation
            assert a.tokens == b.tokens and [d.action for d in a.decisions] == [d.action for d in b.decisions]
            np.testing.assert_allclose([d.risk for d in a.decisions], [d.risk for d in b.decisions], atol=1e-4)


def test_conversation_longer_than_the_context(tiny_package: Path, tmp_path: Path) -> None:
    """Over the context limit, the conversation is read turn by turn (re-windowed) and still fully decided."""
    from trajsafe_sdk.kernels.tiny import build_tiny_package

    small = Monitor.load(build_tiny_package(tmp_path / "small", context_limit=256), provider="cpu")
    words = "the user asked about a recipe for bread today and then about the weather forecast " * 3
    messages = [Message("user" if i % 2 == 0 else "assistant", f"{i} {words}") for i in range(30)]
    (result,) = Scorer(small, workers=1).score([Conversation(1, "long", messages)])
    assert isinstance(result, Scored)
    assert [d.message_index for d in result.decisions] == list(range(0, 30, 2))
    assert result.tokens > small.context_limit


def test_parse_line_labelled() -> None:
    ok = parse_line(b'{"id": 1, "label": "harmful", "category": "malware", "source": "s", '
                    b'"messages": [{"role": "user", "content": "x"}]}', 3, labelled=True)
    assert isinstance(ok, Conversation) and (ok.label, ok.category, ok.source) == ("harmful", "malware", "s")
    benign = parse_line('{"label": "benign", "messages": [{"role": "user", "content": "x"}]}', 1, labelled=True)
    assert isinstance(benign, Conversation) and benign.category == "benign"
    bad = parse_line('{"id": 2, "label": "maybe", "messages": [{"role": "user", "content": "x"}]}', 4, labelled=True)
    assert isinstance(bad, LineError) and bad.to_dict() == {"id": 2, "line": 4, "error": bad.error}
    assert "'label'" in bad.error
    assert isinstance(parse_line(b"\xff\xfe", 1), LineError)
    typo = parse_line('{"id": 5, "label": "harmful", "category": "malwar", "messages": [{"role": "user", '
                      '"content": "x"}]}', 7, labelled=True)
    assert isinstance(typo, LineError) and typo.to_dict() == {"id": 5, "line": 7, "error": typo.error}
    assert "unknown 'category' 'malwar'" in typo.error and "malware" in typo.error


def test_eval_metrics_match_score_output(tiny_package: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    """`eval` is the §6 metrics of the actions `score` prints; a bad label is a failed line, the rest still counts."""
    src = tmp_path / "labelled.jsonl"
    lines = DEMO.read_text().splitlines()
    bad = json.loads(lines[0]) | {"label": "unsure"}
    src.write_text("\n".join([*lines, json.dumps(bad)]) + "\n")
    assert cli.main(["score", str(src), "-q", "--model", str(tiny_package), "--variant", "fp32"]) == 0  # no labels
    scored = [json.loads(line) for line in capsys.readouterr().out.splitlines()][:-1]
    items = [{"label": json.loads(line)["label"], "actions": [d["action"] for d in r["decisions"]]}
             for line, r in zip(lines, scored, strict=True)]
    assert cli.main(["eval", str(src), "--json", "--model", str(tiny_package), "--variant", "fp32"]) == 1
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["errors"] == 1 and report["error_lines"][0]["line"] == len(lines) + 1
    assert "line 10: 'label' must be" in captured.err
    expected = conversation_metrics(items)
    for key in ("catch_rate", "block_rate", "over_refusal", "friction", "earliness_median", "counts"):
        assert report["monitor"]["overall"][key] == expected[key], key


def test_eval_breakdowns_by_source_and_pattern(tiny_package: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    src = tmp_path / "s.jsonl"
    rows = [{"id": i, "label": "harmful" if i % 2 else "benign", "source": f"src{i % 3}", "pattern": "p",
             "category": "malware" if i % 2 else None, "messages": [user(f"message {i}")]} for i in range(6)]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "m.json"
    assert cli.main(["eval", str(src), "-q", "--by", "pattern", "-o", str(out), "--model", str(tiny_package)]) == 0
    report = json.loads(out.read_text())
    assert set(report["monitor"]["by_source"]) == {"src0", "src1", "src2"}
    assert set(report["monitor"]["by_pattern"]) == {"p"}
    assert set(report["monitor"]["by_category"]) == {"benign", "malware"}
    text = capsys.readouterr().out
    assert "by source" in text and "by pattern" in text


def test_score_lines_streams_chunk_by_chunk(tiny_monitor: Monitor) -> None:
    consumed = 0

    def lines():
        nonlocal consumed
        for i in range(1, 10_000):
            consumed = i
            yield i, json.dumps({"id": i, "messages": [user("hi")]}).encode()

    stream = score_lines(lines(), Scorer(tiny_monitor, workers=1), chunk_lines=8)
    first = next(stream)
    assert isinstance(first, Scored) and first.conversation.id == 1 and consumed <= 9


def test_read_lines_numbers_and_strips() -> None:
    got = list(read_lines(io.BytesIO(b'{"a": 1}\r\n\n{"b": 2}')))
    assert got == [(1, b'{"a": 1}'), (2, b""), (3, b'{"b": 2}')]


def test_progress_only_on_a_tty() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    quiet = io.StringIO()
    Progress(100, stream=quiet).update(10, 50)
    assert quiet.getvalue() == ""
    tty = Tty()
    progress = Progress(100, stream=tty)
    progress.started -= 1.0  # as if it had been running for a second
    progress.update(10, 50, errors=1)
    progress.close()
    assert "50%" in tty.getvalue() and "10 conversations" in tty.getvalue() and "1 failed" in tty.getvalue()
    assert tty.getvalue().endswith("\r\033[K")
    disabled = Tty()
    Progress(100, enabled=False, stream=disabled).update(10, 50)
    assert disabled.getvalue() == ""


def test_demo_conversations_are_valid_eval_input() -> None:
    conversations = cli.demo_conversations()
    assert 8 <= len(conversations) <= 10
    for number, line in enumerate(DEMO.read_text().splitlines(), start=1):
        assert isinstance(parse_line(line, number, labelled=True), Conversation)
    kinds = {c["kind"] for c in conversations}
    assert kinds == {"benign", "scary-but-benign", "escalation", "probe"}
    escalations = {c["category"] for c in conversations if c["kind"] == "escalation"}
    assert len(escalations) >= 3 and escalations <= set(CATEGORIES[1:])
    assert sum(c["kind"] == "scary-but-benign" for c in conversations) >= 3
    assert all(len([m for m in c["messages"] if m["role"] == "user"]) >= 3
               for c in conversations if c["kind"] == "escalation")
    for c in conversations:  # what a correct guard does on each user turn (checked on the shipped monitor elsewhere)
        assert len(c["expect"]) == sum(m["role"] == "user" for m in c["messages"]) and set(c["expect"]) <= set(
            EXPECTATIONS)
        if c["label"] == "benign":
            assert "block" not in c["expect"] and c["expect"][-1] == "allow"
        else:
            assert c["expect"][0] == "allow" and c["expect"][-1] == "block"
        if c["kind"] in ("benign", "scary-but-benign"):
            assert set(c["expect"]) == {"allow"}


@pytest.mark.skipif(data_dir() is None, reason="the shared datasets are not here")
def test_converter_writes_labelled_dev_split(tmp_path: Path) -> None:
    from trajsafe_sdk.converters import EVAL_FIELDS, main

    assert main([str(data_dir()), str(tmp_path), "--smoke"]) == 0
    dev = (tmp_path / "dev.jsonl").read_text().splitlines()
    assert dev
    for number, line in enumerate(dev, start=1):
        record = json.loads(line)
        assert tuple(record) == EVAL_FIELDS
        assert isinstance(parse_line(line, number, labelled=True), Conversation)
    per_source = sorted((tmp_path / "dev_by_source").glob("*.jsonl"))
    assert sum(len(p.read_text().splitlines()) for p in per_source) == len(dev)
    assert {json.loads(line)["label"] for line in dev} == {"harmful", "benign"}


def test_the_package_leave_source_out_figures_are_quoted(tiny_package: Path) -> None:
    """`trajsafe info` / `eval` quote the package's own leave-source-out figures, never as their own result."""
    from trajsafe_sdk.cli import package_evaluation
    from trajsafe_sdk.package import MonitorPackage

    quoted = package_evaluation(MonitorPackage.load())  # the shipped monitor records them
    assert quoted is not None and quoted["protocol"].startswith("leave-source-out")
    assert "catch" in quoted["text"] and "friction" in quoted["text"]
    assert package_evaluation(MonitorPackage.load(tiny_package)) is None


def test_the_seed_spread_is_quoted_with_the_figures() -> None:
    """A package that records its leave-source-out figures under several seeds gets their min-max quoted too."""
    from types import SimpleNamespace

    pytest.importorskip("onnx", reason="the training extra builds the spread")
    from trajsafe_sdk.cli import package_evaluation
    from trajsafe_sdk.training.build_default import seed_spread

    def pooled(catch: float) -> dict:
        rates = {"catch_rate": catch, "over_refusal": 0.1, "friction": 0.2}
        return {"harmful_multi_turn": rates, "harmful_single_turn": rates, "benign": rates,
                "benign_multi_turn": rates}

    spread = seed_spread({2: pooled(0.8), 0: pooled(0.9), 1: pooled(0.85)})
    assert spread["seeds"] == [0, 1, 2] and spread["multi-turn catch"] == [0.9, 0.85, 0.8]
    manifest = {"evaluation": {"protocol": "leave-source-out", "monitor": {"pooled": pooled(0.9)},
                               "seed_spread": spread}}
    quoted = package_evaluation(SimpleNamespace(manifest=manifest))
    assert quoted is not None and "seeds 0, 1, 2: multi-turn catch 0.800-0.900" in quoted["text"]
    one_seed = {"evaluation": {**manifest["evaluation"], "seed_spread": seed_spread({0: pooled(0.9)})}}
    assert "seeds" not in package_evaluation(SimpleNamespace(manifest=one_seed))["text"]
