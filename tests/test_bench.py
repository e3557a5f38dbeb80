"""`trajsafe bench` (trajsafe_sdk.bench): a tiny end-to-end run, the FLOP count, the report and the entry point."""

from __future__ import annotations

import json

import pytest

from trajsafe_sdk import bench


def test_turn_flops_counts_new_tokens_and_attention_over_the_prefix() -> None:
    arch = bench.DEFAULT_ARCH
    one = bench.turn_flops(arch, past=1, new=64)
    later = bench.turn_flops(arch, past=1985, new=64)
    assert 0.2e9 < one < 0.5e9  # ~2.4M weights used per token x 64 tokens x 2, plus a little attention
    assert later > one  # attention over the prefix
    assert bench.turn_flops(arch, past=0, new=2049) > 20 * later  # re-encoding the same conversation


def test_tiny_run_reports_every_section() -> None:
    pytest.importorskip("onnx")
    plan = bench.Plan(turns=(1, 2), lengths=(16,), length_turn=2, concurrency=(1, 2), max_batch=2, budget_s=0.001,
                      min_reps=2, max_reps=2, throughput_rounds=1, pool_conversations=4, pool_budget_bytes=2**20,
                      rebuild_samples=1)
    result = bench.run(provider="cpu", threads=1, peers=False, quiet=True, plan=plan)
    methods = {r["method"] for r in result["latency"]}
    assert {"ours:fp32", "ours:int8", "reencode:fp32", "reencode:int8"} <= methods
    assert {(r["turn"], r["new_tokens"]) for r in result["latency"]} == {(1, 64), (2, 64), (2, 16)}
    assert all(r["median_ms"] > 0 and r["floor_ms"] > 0 for r in result["latency"])
    assert "torch" in result["skipped"] and "optimum" in result["skipped"]
    assert {r["conversations"] for r in result["throughput"]} == {1, 2}
    from trajsafe_sdk.package import MonitorPackage

    kv = MonitorPackage.load().manifest["kv"]
    per_token = 2 * kv["num_layers"] * kv["num_kv_heads"] * kv["head_dim"] * 4
    assert result["memory"]["kv"]["kv_bytes_per_token"] == per_token
    assert result["memory"]["pool"]["conversations"] == 4
    assert result["targets"] and all(t["met"] in (True, False, None) for t in result["targets"])
    json.dumps(result)
    text = bench.render(result)
    assert "Per-turn latency" in text and "Targets" in text
    assert bench.render(result, markdown=True).count("|---|") >= 4


def test_main_rejects_bad_arguments(tmp_path, capsys) -> None:
    assert bench.main(["--threads", "0"]) == 2
    assert bench.main(["--model", str(tmp_path / "missing"), "--no-peers", "--quiet"]) == 2
    assert "error" in capsys.readouterr().err
