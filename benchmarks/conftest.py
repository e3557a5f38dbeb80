"""Fixtures of the benchmark suite (`pytest benchmarks/ --benchmark-only`; not part of the default test run).

The models are those of `trajsafe bench`: the trained package if there is one (`TRAJSAFE_BENCH_MODEL` or the
embedded monitor), and a random-weight model of the same architecture as our ONNX graph (fp32, int8), optimum's
`ORTModelForCausalLM` export and PyTorch eager. Threads: `TRAJSAFE_THREADS` (default: all CPUs);
provider: `TRAJSAFE_BENCH_PROVIDER` (default auto).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from trajsafe_sdk.bench import Method, Models


@pytest.fixture(scope="session")
def models() -> Iterator[Models]:
    pytest.importorskip("onnx", reason="the bench model needs onnx (pip install 'trajsafe-sdk[bench]')")
    from trajsafe_sdk.bench import build_models, default_threads

    built = build_models(os.environ.get("TRAJSAFE_BENCH_MODEL"), os.environ.get("TRAJSAFE_BENCH_PROVIDER", "auto"),
                         default_threads(), peers=True, quiet=True)
    yield built
    built.close()


@pytest.fixture(scope="session")
def gemm_rates(models: Models) -> dict[str, Any]:
    """The machine's fp32 GEMM rate at the model's shapes (for the floor in `extra_info`)."""
    from trajsafe_sdk.bench import measure_gemm

    return measure_gemm([16, 64, 256], models.threads)


@pytest.fixture(scope="session")
def method_by_key(models: Models) -> Callable[[str], Method]:
    """A function: the timed method `key` (e.g. 'ours:int8', 'optimum'), or skip with the reason it is missing."""

    def get(key: str) -> Method:
        method = models.method(key)
        if method is None:
            reason = models.skipped.get(key) or models.skipped.get(key.split(":")[0]) or f"{key} is not available here"
            pytest.skip(reason)
        return method

    return get
