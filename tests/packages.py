"""Editing monitor packages in tests: copies with a changed manifest, tokenizer or graph, checksums kept valid."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from trajsafe_sdk.package import MANIFEST, sha256_file


def copy_package(src: Path, dst: Path, mutate: Callable[[dict[str, Any]], Any] | None = None) -> Path:
    """A copy of a package, its manifest changed by `mutate` and every checksum recomputed."""
    shutil.copytree(src, dst)
    manifest = json.loads((dst / MANIFEST).read_text())
    if mutate is not None:
        mutate(manifest)
    write_manifest(dst, manifest)
    return dst


def write_manifest(pkg: Path, manifest: dict[str, Any]) -> None:
    """Write `manifest` with the checksums of the files it names (where they are plain files of the package)."""
    for entry in [manifest.get("tokenizer"), *(manifest.get("files") or {}).values()]:
        if isinstance(entry, dict) and isinstance(entry.get("path"), str) and (pkg / entry["path"]).is_file():
            entry["sha256"] = sha256_file(pkg / entry["path"])
    (pkg / MANIFEST).write_text(json.dumps(manifest))


def edit_graph(path: Path, edit: Callable[[onnx.ModelProto], None]) -> None:
    model = onnx.load(str(path))
    edit(model)
    onnx.save(model, str(path))


def poison_label_head(src: Path, dst: Path, value: str) -> Path:
    """A copy whose fp32 label head gives a non-finite `allow` logit ("nan", or "inf" as an fp16 overflow would)."""
    pkg = copy_package(src, dst)

    def poison(model: onnx.ModelProto) -> None:
        for init in model.graph.initializer:
            if init.name == "label_head":
                head = numpy_helper.to_array(init).copy()
                head[:, 0] = np.float32(value)
                init.CopyFrom(numpy_helper.from_array(head, init.name))

    edit_graph(pkg / "monitor.fp32.onnx", poison)
    write_manifest(pkg, json.loads((pkg / MANIFEST).read_text()))
    return pkg


def strict_json(line: str) -> Any:
    """json.loads that refuses NaN and Infinity (as strict JSON readers do)."""
    def refuse(name: str) -> None:
        raise ValueError(f"not strict JSON: {name}")
    return json.loads(line, parse_constant=refuse)
