"""CUDA provider: device-resident caches, the fp16 variant, and the shipped package on a GPU (marker `gpu`).

Skipped where CUDA cannot run (CI; machines without a GPU or without onnxruntime-gpu). On a GPU machine,
`benchmarks/gpu_check.sh` runs this file and the CUDA benchmark in one go. The device cache's code itself also runs
without a GPU, on the CPU device, in tests/test_core.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from parity import assert_same, embedded_monitor_running

from trajsafe_sdk.cli import demo_conversations
from trajsafe_sdk.core import DeviceKVCache, Monitor, TrajectorySession
from trajsafe_sdk.messages import Message
from trajsafe_sdk.policy import Policy
from trajsafe_sdk.runtime import cuda_usable, runtime_graph, session_options

CUDA_OK, CUDA_WHY = cuda_usable()
if not CUDA_OK and os.environ.get("TRAJSAFE_REQUIRE_CUDA") == "1":  # a GPU check must not pass by skipping
    raise RuntimeError(f"TRAJSAFE_REQUIRE_CUDA=1 but CUDA cannot run here: {CUDA_WHY}")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not CUDA_OK, reason=f"CUDA cannot run here: {CUDA_WHY}")]

FP16_TOL = 2e-2  # probabilities: fp16 activations and KV against an fp32 reference
SAME_VARIANT_TOL = 5e-3  # probabilities: the fp16 graph on CUDA against the same graph on the CPU provider
CONVERSATION = [Message("system", "you are a helpful assistant"), Message("user", "how do I kill a python process"),
                Message("assistant", "use kill with the process id"), Message("user", "and the history of the war?")]


@pytest.fixture(scope="module")
def fp16_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from trajsafe_sdk.kernels.tiny import build_tiny_package

    return build_tiny_package(tmp_path_factory.mktemp("gpu") / "tiny", variants=("fp32", "fp16"), context_limit=512)


@pytest.fixture(scope="module")
def cuda_monitor(fp16_package: Path) -> Monitor:
    return Monitor.load(fp16_package, provider="cuda")


@pytest.fixture(scope="module")
def cpu_reference(fp16_package: Path) -> Monitor:
    return Monitor.load(fp16_package, provider="cpu", variant="fp32")


def test_cuda_is_chosen_and_the_cache_lives_on_the_device(fp16_package: Path, cuda_monitor: Monitor) -> None:
    assert (cuda_monitor.provider, cuda_monitor.variant) == ("cuda", "fp16")
    auto = Monitor.load(fp16_package, provider="auto")
    assert (auto.provider, auto.variant) == ("cuda", "fp16")
    session = cuda_monitor.new_session()
    session.extend(CONVERSATION)
    assert isinstance(session.cache, DeviceKVCache) and session.cache.device == "cuda"
    assert all(buf.device_name().lower() == "cuda" for buf in session.cache.keys + session.cache.values)
    assert session.cache.capacity == cuda_monitor.context_limit


def test_fp16_on_cuda_matches_fp32_on_cpu(cuda_monitor: Monitor, cpu_reference: Monitor) -> None:
    """Incremental turns, a rewind, a fork, a partial read, an eviction and a batch, against full recomputes."""
    session = cuda_monitor.new_session()
    got = [a for m in CONVERSATION if (a := session.append(m)) is not None]
    assert_same(got, cpu_reference.score(CONVERSATION), FP16_TOL)
    edited = [*CONVERSATION[:2], Message("assistant", "I cannot help with that"), Message("user", "why not?")]
    assert_same(session.sync(edited), cpu_reference.score(edited)[-2:], FP16_TOL)
    more = [*edited, Message("user", "thanks anyway")]
    expected = cpu_reference.score(more)[-1:]
    assert_same([session.fork().append(more[-1])], expected, FP16_TOL)
    n = session.num_tokens
    session.assess_partial("assistant", "You are welcome")
    assert session.num_tokens == n
    session.evict()
    assert_same([session.append(more[-1])], expected, FP16_TOL)
    convs = [CONVERSATION, [Message("user", "hello")], edited]
    batch = TrajectorySession.extend_batch([cuda_monitor.new_session() for _ in convs], convs)
    for got_b, conv in zip(batch, convs, strict=True):
        assert_same(got_b, cpu_reference.score(conv), FP16_TOL)


def test_continuing_rows_run_concurrently_on_cuda(cuda_monitor: Monitor, cpu_reference: Monitor) -> None:
    """Continuing turns of conversations with different prefixes, run as concurrent single-row runs
    (`row_workers`, 8 on CUDA), each against its own full recompute on the CPU."""
    assert cuda_monitor.row_workers > 1
    prefixes = [CONVERSATION[: 1 + i % len(CONVERSATION)] for i in range(12)]
    sessions = []
    for prefix in prefixes:
        session = cuda_monitor.new_session()
        session.extend(prefix)
        sessions.append(session)
    turns = [[Message("user", f"and what about case {i}?")] for i in range(len(prefixes))]
    for prefix, turn, got in zip(prefixes, turns, TrajectorySession.extend_batch(sessions, turns), strict=True):
        assert_same(got, cpu_reference.score(prefix + turn)[-1:], FP16_TOL)


def test_long_conversation_rewindows_on_the_device(cuda_monitor: Monitor) -> None:
    session = cuda_monitor.new_session()
    text = " ".join(["history of the war and networks"] * 12)
    for i in range(40):
        assert np.isfinite(session.append(Message("user", f"{text} {i}")).risk)
        assert session.num_tokens <= cuda_monitor.context_limit


COMPUTE_OPS = {"GroupQueryAttention", "RotaryEmbedding", "ScatterElements", "MatMul", "FusedMatMul", "MatMulNBits",
               "Softmax", "SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization", "Gather", "Mul", "Add"}


def placed_ops(monitor: Monitor, source: Path | bytes, tmp_path: Path) -> set[tuple[str, str]]:
    """(op type, provider) of every node that ran while `monitor` read CONVERSATION with the graph `source`,
    from ONNX Runtime's profile."""
    opts = session_options()
    opts.enable_profiling = True
    opts.profile_file_prefix = str(tmp_path / "profile")
    source = source if isinstance(source, bytes) else str(source)
    profiled = ort.InferenceSession(source, opts, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    monitor.ort_session, original = profiled, monitor.ort_session
    try:
        monitor.new_session().extend(CONVERSATION)
    finally:
        monitor.ort_session = original
    events = json.loads(Path(profiled.end_profiling()).read_text())
    return {(e["args"]["op_name"], e["args"].get("provider")) for e in events
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")}


def assert_compute_on_cuda(placed: set[tuple[str, str]]) -> None:
    on_cpu = {op for op, provider in placed if provider == "CPUExecutionProvider"}
    assert not on_cpu & COMPUTE_OPS, f"compute nodes on the CPU provider: {sorted(on_cpu & COMPUTE_OPS)}"
    assert ("GroupQueryAttention", "CUDAExecutionProvider") in placed


def test_the_graph_runs_on_cuda(tmp_path: Path, cuda_monitor: Monitor) -> None:
    """Every compute node of the fp16 graph is placed on the CUDA provider (no silent CPU fallback)."""
    assert_compute_on_cuda(placed_ops(cuda_monitor, cuda_monitor.package.onnx_path("fp16"), tmp_path))


@pytest.fixture(scope="module")
def shipped_on_cuda() -> Monitor:
    return Monitor.load(provider="cuda")


def test_shipped_q4_package_runs_on_cuda_with_float16_activations(tmp_path: Path, shipped_on_cuda: Monitor) -> None:
    """The embedded q4 monitor on CUDA: float16 activations and KV derived at load, every compute node on CUDA
    (the q4 file as it is would run its attention on the CPU: CUDA GroupQueryAttention has no float32 kernel)."""
    gpu = shipped_on_cuda
    assert (gpu.provider, gpu.variant, gpu.activations, gpu.kv_dtype) == ("cuda", "q4", "float16", np.float16)
    derived, _ = runtime_graph(gpu.package, gpu.variant, "cuda")
    assert_compute_on_cuda(placed_ops(gpu, derived, tmp_path))


def test_shipped_package_on_cuda_agrees_with_cpu(shipped_on_cuda: Monitor) -> None:
    """On the demo: CUDA against the same derived graph on the CPU provider (scores), and against the shipped CPU
    graph (decisions; its int8-quantised activations move scores by up to ~0.08, see test_monitor_v2)."""
    gpu = shipped_on_cuda
    derived, _ = runtime_graph(gpu.package, gpu.variant, "cuda")
    same_graph = embedded_monitor_running(derived, np.float16)
    shipped_cpu = Monitor.load(provider="cpu")
    policy = Policy.from_package(gpu.package.policy_defaults)
    for conv in demo_conversations():
        messages = conv["messages"]
        on_gpu = gpu.score(messages)
        assert_same(on_gpu, same_graph.score(messages), FP16_TOL)
        state_gpu: dict = {}
        state_cpu: dict = {}
        for a, b in zip(on_gpu, shipped_cpu.score(messages), strict=True):
            assert policy.decide(a, state_gpu).action == policy.decide(b, state_cpu).action
