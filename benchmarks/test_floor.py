"""The machine's fp32 matrix-multiply rate at the model's GEMM shapes (the denominator of the floor)."""

from __future__ import annotations

import pytest

pytest.importorskip("onnx")


@pytest.mark.parametrize("tokens", [16, 64, 256])
def test_gemm_rate(benchmark, models, tokens: int) -> None:
    from trajsafe_sdk.bench import _ort_matmul_chain

    sess, feeds, flops = _ort_matmul_chain(tokens, models.threads)
    benchmark.group = "floor: fp32 GEMM chain (MLAS)"
    benchmark.pedantic(sess.run, args=(None, feeds), rounds=50, iterations=1, warmup_rounds=3)
    benchmark.extra_info.update({"tokens": tokens, "gflop": flops / 1e9})
    if benchmark.stats:  # None under --benchmark-disable
        benchmark.extra_info["gflops_per_s"] = flops / benchmark.stats.stats.median / 1e9
