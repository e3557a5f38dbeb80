"""Scale-out on Ray: batch scoring on Ray Data equals local `trajsafe score`; the Serve app over HTTP reuses KV caches.

Starts one local Ray instance (2 CPUs) for the module and shuts it down at the end. Marked `ray` and `slow`.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray")

from trajsafe_sdk.cli import main as cli_main  # noqa: E402
from trajsafe_sdk.distributed import ray_batch  # noqa: E402

pytestmark = [pytest.mark.ray]

TOL = 1e-4
LATENCY = "latency_ms"

TURNS = ["How do I kill a python process that hangs?", "Tell me the history of Rome in three lines.",
         "Which network security basics should a small office know?", "Write a short poem for a birthday.",
         "Summarise the quarterly report for the meeting, step by step."]


def conversation(n: int) -> dict[str, Any]:
    messages: list[dict[str, str]] = []
    if n % 3 == 0:
        messages.append({"role": "system", "content": "You are a helpful assistant."})
    for t in range(1 + n % 4):
        messages.append({"role": "user", "content": f"{TURNS[(n + t) % len(TURNS)]} ({n}.{t})"})
        if t < n % 4:
            messages.append({"role": "assistant", "content": f"Here is an answer about {TURNS[(n * t) % 5][:20]}."})
    if n % 5 == 4:
        messages.append({"role": "tool", "content": "result: 42"})
    return {"id": f"conv-{n}", "messages": messages}


BAD_LINES = {
    3: b'{"id": "broken", "messages": [',  # invalid JSON
    7: json.dumps({"id": "bad-role", "messages": [{"role": "wizard", "content": "hi"}]}).encode(),
    12: b"",  # empty line
    15: b'{"id": 5, "msgs": []}',  # missing messages
    21: b'{"id": "latin1", "messages": [{"role": "user", "content": "caf\xe9"}]}',  # not UTF-8
}


@pytest.fixture(scope="module")
def ray_session():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    try:
        from ray import serve

        serve.shutdown()
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three input shards (23, 9 and 14 lines) with bad lines in the first."""
    folder = tmp_path_factory.mktemp("in")
    n = 0
    for s, count in enumerate((23, 9, 14)):
        lines = []
        for i in range(1, count + 1):
            if s == 0 and i in BAD_LINES:
                lines.append(BAD_LINES[i])
            else:
                lines.append(json.dumps(conversation(n)).encode())
                n += 1
        (folder / f"part-{s:03d}.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    (folder / "_ignored.txt").write_text("not an input")
    return folder


@pytest.fixture(scope="module")
def local(shards: Path, tiny_package: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The local `trajsafe score` of each shard: {name: (exit code, records)}."""
    folder = tmp_path_factory.mktemp("local")
    results = {}
    for path in sorted(shards.glob("*.jsonl")):
        out = folder / path.name
        code = cli_main(["score", str(path), "-o", str(out), "--model", str(tiny_package), "--provider", "cpu", "-q"])
        results[path.stem] = (code, [json.loads(line) for line in out.read_text().splitlines()])
    return results


def without_latency(record: dict[str, Any]) -> dict[str, Any]:
    """A score record without its latency fields (the record's and each decision's)."""
    out = {k: v for k, v in record.items() if k != LATENCY}
    if "decisions" in out:
        out["decisions"] = [{k: v for k, v in d.items() if k != LATENCY} for d in out["decisions"]]
    return out


def assert_same_record(got: dict[str, Any], want: dict[str, Any]) -> None:
    """Identical except latency: same runs on the same single-threaded ONNX Runtime, so the same numbers."""
    assert without_latency(got) == without_latency(want)


def test_batch_shards_match_local_score(ray_session, shards: Path, local, tiny_package: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "part-000.000000099.jsonl").write_text("stale shard of an earlier run\n")
    (out / "keep.txt").write_text("not ours")
    result = ray_batch.score_ray(str(shards), str(out), model=tiny_package, provider="cpu", workers=2,
                                 rows_per_block=4)
    assert (result.lines, result.errors, result.workers) == (46, 5, 2)
    assert (out / "keep.txt").exists()
    manifest = json.loads((out / ray_batch.MANIFEST).read_text())
    assert manifest["lines"] == 46 and manifest["errors"] == 5 and manifest["files"] == result.files
    assert sorted(str(p) for p in out.glob("*.jsonl")) == sorted(result.files)
    for source in sorted(shards.glob("*.jsonl")):
        code, expected = local[source.stem]
        assert code == (1 if source.name == "part-000.jsonl" else 0)
        parts = sorted(out.glob(f"{source.stem}.*.jsonl"))  # in line order (see the test below)
        got = [json.loads(line) for p in parts for line in p.read_text().splitlines()]
        assert len(got) == len(expected) == len(source.read_bytes().splitlines())
        for g, w in zip(got, expected, strict=True):
            assert_same_record(g, w)
    errors = [r for r in ray_batch.read_shards(str(out)) if "error" in r]
    assert [(e["line"], e["id"]) for e in errors] == [(3, None), (7, "bad-role"), (12, None), (15, 5), (21, None)]


def test_batch_lays_policy_settings_over_the_package(ray_session, shards: Path, tiny_package: Path,
                                                     tmp_path: Path) -> None:
    out = tmp_path / "all.jsonl"
    ray_batch.score_ray(str(shards), str(out), model=tiny_package, provider="cpu", workers=1,
                        policy={"refuse": 0.0, "terminate": 1.1})
    actions = {d["action"] for line in out.read_text().splitlines() for d in json.loads(line).get("decisions", [])}
    assert actions == {"refuse"}


def test_shards_are_runs_of_consecutive_lines_named_by_their_first_line(tmp_path: Path) -> None:
    import pyarrow as pa

    sink = ray_batch.ShardDatasink(str(tmp_path), ["a", "b"], ["a.jsonl", "b.jsonl"])
    sink.on_write_start()
    block = pa.table({"source": pa.array([1, 0, 0, 0, 1], pa.int32()), "line": pa.array([2, 1, 2, 4, 1], pa.int64()),
                      "out": ['"b2"', '"a1"', '"a2"', '"a4"', '"b1"'], "failed": [False, True, False, False, False]})
    later = pa.table({"source": pa.array([0], pa.int32()), "line": pa.array([3], pa.int64()), "out": ['"a3"'],
                      "failed": [False]})
    returns = [sink.write([block], None), sink.write([later], None)]  # two write tasks, out of order
    sink.on_write_complete(ray_batch.WriteResult(6, 0, returns))
    assert [Path(f).name for f in sink.result["files"]] == ["a.000000001.jsonl", "a.000000003.jsonl",
                                                            "a.000000004.jsonl", "b.000000001.jsonl"]
    assert ray_batch.read_shards(str(tmp_path)) == ["a1", "a2", "a3", "a4", "b1", "b2"]
    assert (sink.result["lines"], sink.result["errors"]) == (6, 1)


def test_single_file_output_and_cli_engine(ray_session, shards: Path, local, tiny_package: Path,
                                           tmp_path: Path) -> None:
    files = sorted(shards.glob("*.jsonl"))
    expected = [record for f in files for record in local[f.stem][1]]
    out = tmp_path / "all.jsonl"
    result = ray_batch.score_ray([str(f) for f in files], str(out), model=tiny_package, provider="cpu", workers=2,
                                 rows_per_block=3)
    assert result.lines == len(expected) and result.files == []
    got = [json.loads(line) for line in out.read_text().splitlines()]
    for g, w in zip(got, expected, strict=True):
        assert_same_record(g, w)
    # the command line: same output, exit code 1 because some lines failed
    cli_out = tmp_path / "cli.jsonl"
    code = cli_main(["score", str(files[0]), "-o", str(cli_out), "--engine", "ray", "--workers", "1",
                     "--model", str(tiny_package), "--provider", "cpu", "-q"])
    assert code == 1
    got = [json.loads(line) for line in cli_out.read_text().splitlines()]
    for g, w in zip(got, expected[:23], strict=True):
        assert_same_record(g, w)


def test_package_is_shipped_when_workers_cannot_see_it(ray_session, tiny_package: Path, tmp_path: Path) -> None:
    source = ray_batch.PackageSource.from_driver(tiny_package)
    source.path = str(tmp_path / "elsewhere")  # as on a node without the driver's folder
    folder = Path(source.local_path())
    assert folder != tiny_package
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in tiny_package.iterdir())


# ---------------------------------------------------------------------------------------------------- serve
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: Any, timeout: float = 60) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture(scope="module")
def serve_url(ray_session, tiny_package: Path):
    from ray import serve

    from trajsafe_sdk.distributed.ray_serve import build_app

    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    app = build_app(str(tiny_package), provider="cpu", variant="fp32", replicas=2, num_cpus=0.5, threads=1,
                    max_batch_size=8, batch_wait_timeout_s=0.05)
    serve.run(app, name="trajsafe", route_prefix="/trajsafe")
    yield f"http://127.0.0.1:{port}/trajsafe"
    serve.delete("trajsafe")


def test_serve_answers_and_reuses_the_cache(serve_url: str, tiny_model_scorer) -> None:
    history = conversation(7)["messages"]  # 4 user turns, 3 replies
    first_turn = history[:1]
    status, first = _post(serve_url, {"conversation_id": "c-1", "messages": first_turn})
    assert status == 200 and len(first["decisions"]) == 1 and first["decision"] == first["decisions"][-1]
    status, second = _post(serve_url, {"conversation_id": "c-1", "messages": history})
    assert status == 200 and second["replica"] == first["replica"]  # sticky: the same replica, its KV cache
    status, other = _post(serve_url, {"conversation_id": "c-other", "messages": history})
    assert status == 200
    assert second["tokens"] < other["tokens"]  # the repeat read only its new messages; a new id reads everything
    assert second["decisions"][0]["message_index"] == first["decisions"][0]["message_index"]
    status, rewound = _post(serve_url, {"conversation_id": "c-1", "messages": first_turn})  # e.g. a regenerate
    assert status == 200 and rewound["tokens"] == 0 and rewound["replica"] == first["replica"]
    assert [d["risk"] for d in rewound["decisions"]] == [d["risk"] for d in first["decisions"]]
    want = tiny_model_scorer(history)
    for got in (second, other):
        assert [d["action"] for d in got["decisions"]] == [d["action"] for d in want["decisions"]]
        for a, b in zip(got["decisions"], want["decisions"], strict=True):
            assert a["message_index"] == b["message_index"] and abs(a["risk"] - b["risk"]) <= TOL
            assert max(abs(a["action_scores"][k] - b["action_scores"][k]) for k in a["action_scores"]) <= TOL


def test_serve_is_sticky_batched_and_validates(serve_url: str) -> None:
    convs = [conversation(n) for n in range(12)]
    bodies = [{"conversation_id": c["id"], "messages": c["messages"]} for c in convs]
    with ThreadPoolExecutor(8) as pool:  # concurrent requests: batched inside the replicas
        first = list(pool.map(lambda b: _post(serve_url, b), bodies))
        again = list(pool.map(lambda b: _post(serve_url, b), bodies))
    assert all(status == 200 for status, _ in first + again)
    assert [r["replica"] for _, r in first] == [r["replica"] for _, r in again]
    assert all(r["tokens"] == 0 for _, r in again)  # nothing new to read: every session was cached
    assert [r["decisions"] for _, r in first] == [r["decisions"] for _, r in again]
    from ray import serve

    monitor = serve.get_deployment_handle("TrajSafeMonitor", app_name="trajsafe")
    stats = {}
    for _ in range(20):  # ask the replicas (requests without a session id land anywhere)
        got = monitor.stats.remote().result(timeout_s=30)
        stats[got["replica"]] = got
        if len(stats) == 2:
            break
    assert max(s["largest_batch"] for s in stats.values()) > 1  # concurrent requests were scored together
    status, body = _post(serve_url, {"conversation_id": "x", "messages": [{"role": "wizard", "content": "hi"}]})
    assert status == 400 and "unknown role" in body["error"]
    status, body = _post(serve_url, {"messages": "not a list"})
    assert status == 400
    status, body = _post(serve_url, {"messages": [{"role": "user", "content": "no id: prefix matching"}]})
    assert status == 200 and body["conversation_id"] is None and len(body["decisions"]) == 1
    with urllib.request.urlopen(serve_url, timeout=30) as resp:
        assert json.loads(resp.read()) == {"status": "ok"}


@pytest.fixture(scope="module")
def tiny_model_scorer(tiny_package: Path):
    """The local scorer (what `trajsafe score` runs) on the same package (fp32: int8's dynamic activation scales
    depend on which tokens share a run, so a cached turn-by-turn read equals a full read only to ~1e-3)."""
    from trajsafe_sdk.core import Monitor
    from trajsafe_sdk.evaluation import Scorer, parse_line

    scorer = Scorer(Monitor.load(tiny_package, provider="cpu", variant="fp32"))

    def score(messages: list[dict[str, str]]) -> dict[str, Any]:
        conv = parse_line(json.dumps({"id": "x", "messages": messages}), 1)
        return scorer.score([conv])[0].to_dict()

    return score


def test_replica_reads_a_conversation_longer_than_the_context(tiny_package: Path, tiny_model_scorer) -> None:
    """A cache miss on a long conversation is read turn by turn, like `trajsafe score` does; then cached."""
    from trajsafe_sdk.distributed.ray_serve import MonitorReplica, parse_request

    replica = MonitorReplica(str(tiny_package), variant="fp32", threads=1)
    history = []
    for t in range(45):
        history += [{"role": "user", "content": f"{TURNS[t % 5]} {TURNS[(t + 1) % 5]} ({t})"},
                    {"role": "assistant", "content": f"{TURNS[(t + 2) % 5]} {TURNS[(t + 3) % 5]}"}]
    want = tiny_model_scorer(history)
    assert want["tokens"] > replica.monitor.context_limit
    _, msgs = parse_request({"messages": history})
    got = replica.score_many([("long", msgs), ("short", msgs[:3])])[0]
    assert got["tokens"] == want["tokens"] and len(got["decisions"]) == 45
    assert [d["action"] for d in got["decisions"]] == [d["action"] for d in want["decisions"]]
    assert max(abs(a["risk"] - b["risk"]) for a, b in zip(got["decisions"], want["decisions"], strict=True)) <= TOL
    _, more = parse_request({"messages": [*history, {"role": "user", "content": "and then?"}]})
    nxt = replica.score_many([("long", more)])[0]
    assert 0 < nxt["tokens"] < 50 and len(nxt["decisions"]) == 46
