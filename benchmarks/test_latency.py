"""Per-turn latency at turns 1, 8, 32, 64 (64 new tokens) and for 16/256-token messages at turn 8.

Each benchmark is one method at one point; `benchmark.group` puts all methods of a point side by side.
"""

from __future__ import annotations

import pytest

from trajsafe_sdk.bench import TURN_TOKENS, turn_flops, turn_token_ids
from trajsafe_sdk.errors import MonitorError

METHODS = ["ours:fp32", "ours:int8", "ours:fp16", "reencode:fp32", "reencode:int8", "optimum", "torch",
           "package:int8", "package:fp32", "package:fp16"]


def _time_turn(benchmark, models, gemm_rates, method_by_key, key: str, turn: int, new_tokens: int) -> None:
    method = method_by_key(key)
    prefix, new = turn_token_ids(models.arch, turn, new_tokens)
    try:
        run, reset = method.prepare_checked(prefix, new)
    except MonitorError as exc:  # e.g. past the package's RoPE tables: skipped, as in `trajsafe bench`
        pytest.skip(f"{method.label} cannot score this point: {exc}")
    past = len(prefix)
    heavy = method.kind == "reencode" and past >= 1000 or method.kind == "peer" and past >= 2000
    benchmark.group = f"turn {turn:>2}, {new_tokens:>3} new tokens (past {past})"
    flops = turn_flops(models.arch, 0 if method.kind == "reencode" else past,
                       past + new_tokens if method.kind == "reencode" else new_tokens)
    rate = gemm_rates["gflops_by_tokens"].get(str(new_tokens))
    benchmark.extra_info.update({"turn": turn, "past_tokens": past, "new_tokens": new_tokens, "gflop": flops / 1e9,
                                 "floor_ms": flops / (rate * 1e9) * 1000 if rate else None,
                                 "gemm_source": gemm_rates["source"], "label": method.label})
    # `reset` before each round restores the cached prefix (truncation is free), so every round is turn `turn`.
    benchmark.pedantic(run, setup=reset, rounds=5 if heavy else 30, iterations=1, warmup_rounds=2)


@pytest.mark.parametrize("turn", [1, 8, 32, 64])
@pytest.mark.parametrize("key", METHODS)
def test_turn_latency(benchmark, models, gemm_rates, method_by_key, key: str, turn: int) -> None:
    _time_turn(benchmark, models, gemm_rates, method_by_key, key, turn, TURN_TOKENS)


@pytest.mark.parametrize("new_tokens", [16, 256])
@pytest.mark.parametrize("key", METHODS)
def test_message_length(benchmark, models, gemm_rates, method_by_key, key: str, new_tokens: int) -> None:
    _time_turn(benchmark, models, gemm_rates, method_by_key, key, 8, new_tokens)
