"""Comparing Assessments in tests: scores of the same messages within a tolerance."""

from __future__ import annotations

import numpy as np

TOL = 1e-4  # fp32: incremental vs full recompute


def scores(assessments) -> np.ndarray:
    """Action, category and risk scores of each Assessment, one row per message."""
    return np.array([np.concatenate([a.action_scores, a.category_scores, [a.risk]]) for a in assessments])


def assert_same(a, b, tol: float = TOL) -> None:
    """Same assessed messages, and scores equal within `tol`."""
    assert [x.message_index for x in a] == [x.message_index for x in b]
    if a:
        assert np.abs(scores(a) - scores(b)).max() <= tol


def embedded_monitor_running(graph: bytes, kv_dtype: type):
    """The embedded monitor on the CPU provider with its session replaced by `graph` (e.g. the float16 form CUDA
    runs), to compare graphs on one machine."""
    import onnxruntime as ort

    from trajsafe_sdk.core import Monitor

    monitor = Monitor.load(provider="cpu")
    monitor.ort_session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
    monitor.kv_dtype = kv_dtype
    return monitor
