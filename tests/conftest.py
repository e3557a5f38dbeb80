"""Shared fixtures: a tiny random-weight monitor package (real ONNX graph, real tokenizer)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def data_dir() -> Path | None:
    """The shared public datasets, if present (never in a user's clone)."""
    path = Path(os.environ.get("TRAJSAFE_DATA_DIR", REPO.parent / "shared" / "data"))
    return path if path.is_dir() else None


@pytest.fixture(scope="session")
def tiny_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from trajsafe_sdk.kernels.tiny import build_tiny_package

    return build_tiny_package(tmp_path_factory.mktemp("pkg") / "tiny", context_limit=2048)


@pytest.fixture(scope="session")
def tiny_monitor(tiny_package: Path):
    from trajsafe_sdk.core import Monitor

    return Monitor.load(tiny_package, provider="cpu", variant="fp32")


@pytest.fixture(scope="session")
def tiny_v2_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Monitor v2's form: multi-token markers, 4-bit weights, feature head (variant q4)."""
    from trajsafe_sdk.kernels.tiny import build_tiny_package

    return build_tiny_package(tmp_path_factory.mktemp("pkg") / "tiny_v2", context_limit=2048, style="v2",
                              variants=("q4",))


@pytest.fixture(scope="session")
def tiny_v2_monitor(tiny_v2_package: Path):
    from trajsafe_sdk.core import Monitor

    return Monitor.load(tiny_v2_package, provider="cpu")
