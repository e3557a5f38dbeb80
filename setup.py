"""The runtime dependencies, chosen at install time (everything else is in pyproject.toml).

ONNX Runtime comes as two distributions that provide the same `onnxruntime` module and must never be installed
together: `onnxruntime-gpu` (CUDA and CPU providers) and `onnxruntime` (CPU only). `$TRAJSAFE_ONNXRUNTIME` picks one:

- `auto` (default): `onnxruntime-gpu` on Linux x86-64, where it has a CUDA build, `onnxruntime` elsewhere;
- `cpu`: `onnxruntime` everywhere (`TRAJSAFE_ONNXRUNTIME=cpu pip install .`: no 256 MB GPU download);
- `gpu`: `onnxruntime-gpu` everywhere.
"""

from __future__ import annotations

import os

from setuptools import setup

ONNXRUNTIME = {  # with the GPU build, onnx too: a q4 monitor's float16 form for CUDA is derived at load
    "auto": ["onnxruntime-gpu>=1.20; sys_platform == 'linux' and platform_machine == 'x86_64'",
             "onnx>=1.16; sys_platform == 'linux' and platform_machine == 'x86_64'",
             "onnxruntime>=1.20; sys_platform != 'linux' or platform_machine != 'x86_64'"],
    "cpu": ["onnxruntime>=1.20"],
    "gpu": ["onnxruntime-gpu>=1.20", "onnx>=1.16"],
}


def onnxruntime_requirement() -> list[str]:
    choice = os.environ.get("TRAJSAFE_ONNXRUNTIME", "auto").strip().lower() or "auto"
    if choice not in ONNXRUNTIME:
        raise SystemExit(f"TRAJSAFE_ONNXRUNTIME={choice!r}: expected one of {', '.join(ONNXRUNTIME)}")
    return ONNXRUNTIME[choice]


setup(install_requires=[*onnxruntime_requirement(), "tokenizers>=0.19", "numpy>=1.24"])
