"""Monitor packages (docs/contracts.md §4): loading with schema and checksum checks, and writing."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from .errors import PackageError
from .labels import ACTIONS, CATEGORIES, RISK_LABELS
from .layout import LABEL_TOKENS, MessageEncoder

SCHEMA_VERSION = 2  # 2: layout markers are strings of one or more tokens (1: one special token each)
SUPPORTED_SCHEMAS = (1, 2)
MANIFEST = "monitor.json"
REQUIRED_KEYS = ("schema_version", "name", "version", "labels", "layout", "context_limit", "architecture", "kv",
                 "files", "tokenizer", "policy")


def default_package_path(check: bool = False) -> Path:
    """The default monitor: `$TRAJSAFE_MODEL` if set, else the one shipped in the wheel (`models/default`).

    With `check`, a PackageError names the cause when there is no package there: `$TRAJSAFE_MODEL` pointing at
    the wrong place, or an installation without the embedded monitor."""
    if os.environ.get("TRAJSAFE_MODEL"):
        path = Path(os.environ["TRAJSAFE_MODEL"])
        if check and not (path / MANIFEST).is_file():
            raise PackageError(f"$TRAJSAFE_MODEL is set to {path}, which is not a monitor package folder (no "
                               f"{MANIFEST} there); point it at a package folder, or unset it to use the embedded "
                               "default monitor")
        return path
    here = Path(__file__).resolve().parent
    installed = here / "_default_model"
    if (installed / MANIFEST).is_file():
        return installed
    path = here.parent / "models" / "default"  # a source checkout or an editable install
    if check and not (path / MANIFEST).is_file():
        raise PackageError(f"the embedded default monitor is missing from this installation (no {MANIFEST} in "
                           f"{installed} or {path}); reinstall trajsafe-sdk, or pass a monitor package folder "
                           "(--model DIR on the command line) or set $TRAJSAFE_MODEL")
    return path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class MonitorPackage:
    """A verified monitor package folder."""

    path: Path
    manifest: dict[str, Any]
    tokenizer: Tokenizer

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def architecture(self) -> dict[str, Any]:
        return self.manifest["architecture"]

    @property
    def context_limit(self) -> int:
        return int(self.manifest["context_limit"])

    @property
    def policy_defaults(self) -> dict[str, Any]:
        return dict(self.manifest["policy"])

    def variants(self) -> list[str]:
        return list(self.manifest["files"])

    def variant_file(self, variant: str) -> dict[str, Any]:
        files = self.manifest["files"]
        if variant not in files:
            raise PackageError(f"{self.path}: no ONNX variant {variant!r}; the package has {sorted(files)}")
        return files[variant]

    def default_variant(self, provider: str) -> str:
        chosen = self.manifest.get("default_variant", {}).get(provider)
        if chosen in self.manifest["files"]:
            return chosen
        return "fp32" if "fp32" in self.manifest["files"] else next(iter(self.manifest["files"]))

    def onnx_path(self, variant: str) -> Path:
        return self.path / self.variant_file(variant)["path"]

    def encoder(self) -> MessageEncoder:
        return MessageEncoder(self.tokenizer, self.manifest["layout"])

    @classmethod
    def load(cls, path: str | Path | None = None, verify: bool = True) -> MonitorPackage:
        """Load and verify a package folder (default: the embedded monitor)."""
        folder = Path(path) if path is not None else default_package_path(check=True)
        manifest_path = folder / MANIFEST
        if not folder.is_dir():
            raise PackageError(f"monitor package not found: {folder} is not a folder (expected one with {MANIFEST})")
        if not manifest_path.is_file():
            raise PackageError(f"{folder}: missing {MANIFEST}; is this a TrajSafe monitor package?")
        try:
            manifest = json.loads(manifest_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise PackageError(f"{manifest_path}: not valid JSON ({exc})") from exc
        _check_manifest(manifest, folder)
        tok_entry = manifest["tokenizer"]
        tok_path = folder / tok_entry["path"]
        _check_file(tok_path, tok_entry.get("sha256"), verify)
        for entry in manifest["files"].values():
            _check_file(folder / entry["path"], entry.get("sha256"), verify)
        try:
            tokenizer = Tokenizer.from_file(str(tok_path))
        except Exception as exc:  # tokenizers raises a bare Exception
            raise PackageError(f"{tok_path}: cannot be read as a tokenizers JSON file ({exc})") from exc
        for token, token_id in manifest["layout"]["special_tokens"].items():
            if tokenizer.token_to_id(token) != token_id:
                raise PackageError(f"{tok_path}: special token {token!r} has id {tokenizer.token_to_id(token)}, "
                                   f"the manifest says {token_id}")
        return cls(folder, manifest, tokenizer)


def _check_manifest(manifest: Any, folder: Path) -> None:
    if not isinstance(manifest, dict):
        raise PackageError(f"{folder / MANIFEST}: expected a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise PackageError(f"{folder / MANIFEST}: missing keys {missing}")
    if manifest["schema_version"] not in SUPPORTED_SCHEMAS:
        raise PackageError(f"{folder / MANIFEST}: schema_version {manifest['schema_version']!r} is not supported "
                           f"by this SDK (supported: {SUPPORTED_SCHEMAS}); upgrade trajsafe-sdk or re-export it")
    labels = manifest["labels"]
    expected = {"actions": ACTIONS, "categories": CATEGORIES, "risk": RISK_LABELS}
    for key, value in expected.items():
        if labels.get(key) != value:
            raise PackageError(f"{folder / MANIFEST}: labels.{key} is {labels.get(key)!r}, expected {value!r}")
    layout = manifest["layout"]
    special = layout.get("special_tokens", {})
    if layout.get("label_tokens") != LABEL_TOKENS or any(tok not in special for tok in LABEL_TOKENS):
        raise PackageError(f"{folder / MANIFEST}: layout.label_tokens do not match this SDK's label space")
    if not manifest["files"]:
        raise PackageError(f"{folder / MANIFEST}: lists no ONNX files")


def _check_file(path: Path, expected_sha: str | None, verify: bool) -> None:
    if not path.is_file():
        raise PackageError(f"package file missing: {path}")
    if verify:
        actual = sha256_file(path)
        if expected_sha != actual:
            raise PackageError(f"checksum mismatch for {path}: expected sha256 {expected_sha}, got {actual} "
                               "(the file is corrupt or was changed after export)")


def write_package(
    out_dir: str | Path,
    *,
    tokenizer: Tokenizer,
    onnx_files: dict[str, dict[str, Any]],
    architecture: dict[str, Any],
    name: str = "trajsafe-monitor",
    version: str = "0.0.0",
    context_limit: int = 2048,
    policy: dict[str, Any] | None = None,
    default_variant: dict[str, str] | None = None,
    max_message_tokens: int = 512,
    card: str | None = None,
    extra: dict[str, Any] | None = None,
    layout: dict[str, Any] | None = None,
) -> Path:
    """Write a package folder.

    `onnx_files` maps a variant name to `{"source": Path, "dtype": str, "kv_dtype": str, "providers": [...]}`;
    each source ONNX file is copied to `monitor.<variant>.onnx` and its checksum recorded.
    """
    from .layout import default_layout
    from .policy import DEFAULT_THRESHOLDS

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out / "tokenizer.json"))
    files = {}
    for variant, spec in onnx_files.items():
        target = out / f"monitor.{variant}.onnx"
        if Path(spec["source"]).resolve() != target.resolve():
            shutil.copyfile(spec["source"], target)
        files[variant] = {"path": target.name, "sha256": sha256_file(target), "dtype": spec["dtype"],
                          "kv_dtype": spec.get("kv_dtype", spec["dtype"]), "providers": list(spec.get("providers", []))}
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "name": name,
        "version": version,
        "labels": {"actions": ACTIONS, "categories": CATEGORIES, "risk": RISK_LABELS},
        "layout": layout or default_layout(max_message_tokens),
        "context_limit": context_limit,
        "architecture": architecture,
        "kv": {"layout": "BNSH", "num_layers": architecture["num_layers"],
               "num_kv_heads": architecture["num_kv_heads"], "head_dim": architecture["head_dim"]},
        "files": files,
        "default_variant": default_variant or {},
        "tokenizer": {"path": "tokenizer.json", "sha256": sha256_file(out / "tokenizer.json")},
        "policy": policy or dict(DEFAULT_THRESHOLDS),
        **(extra or {}),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    if card is not None:
        (out / "CARD.md").write_text(card)
    return out
