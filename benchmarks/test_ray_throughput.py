"""Ray batch throughput (conversations/s) for 1 vs 2 scoring actors on this machine.

    python benchmarks/test_ray_throughput.py [--model DIR] [--conversations N]
    pytest benchmarks/test_ray_throughput.py -s        # not collected by the default test run (testpaths = tests)

Without --model it uses the embedded default monitor when present, else a random-weight package with the default
monitor's architecture (4 layers, hidden 256, GQA 4/2 heads): the speed is the same, the decisions are noise.
Each actor gets one ONNX Runtime thread, so N actors use N cores.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")


def bench_package(workdir: Path) -> Path:
    """The default monitor if it is installed, else a random one of the same size."""
    from trajsafe_sdk.package import default_package_path

    default = default_package_path()
    if (default / "monitor.json").is_file():
        return default
    from trajsafe_sdk.kernels.tiny import build_tiny_package

    return build_tiny_package(workdir / "default-arch", num_layers=4, hidden_size=256, num_heads=4, num_kv_heads=2,
                              intermediate_size=768, vocab_size=8192, context_limit=2048, max_message_tokens=512,
                              variants=("fp32", "int8"))


def run(model: str | None, conversations: int, workers: list[int], repeats: int) -> dict:
    from trajsafe_sdk.distributed.ray_batch import benchmark

    workdir = Path(tempfile.mkdtemp(prefix="trajsafe-ray-bench-"))
    package = Path(model) if model else bench_package(workdir)
    if not ray.is_initialized():
        ray.init(num_cpus=max(workers), include_dashboard=False, log_to_driver=False)
    rows = benchmark(package, conversations=conversations, worker_counts=workers, workdir=str(workdir),
                     repeats=repeats)
    base = rows[0]["conversations_per_s"]
    for row in rows:
        row["speedup"] = round(row["conversations_per_s"] / base, 2)
    return {"package": str(package), "machine": f"{platform.processor() or platform.machine()}, "
            f"{ray.cluster_resources().get('CPU', 0):.0f} Ray CPUs", "rows": rows}


def test_ray_throughput_1_vs_2_workers() -> None:
    report = run(None, conversations=600, workers=[1, 2], repeats=1)
    print(json.dumps(report, indent=2))
    assert all(r["conversations"] == 600 for r in report["rows"])
    ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None)
    p.add_argument("--conversations", type=int, default=2000)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    report = run(args.model, args.conversations, args.workers, args.repeats)
    print(json.dumps(report, indent=2))
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
