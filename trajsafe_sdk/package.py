"""Monitor packages (docs/contracts.md §4): loading with schema and checksum checks, and writing.

A package is trusted only when it is sound: every manifest field has the type and range it needs (a malformed one is
a `PackageError`, never another exception), files stay inside the package folder, checksums match, and the layout's
markers resolve to distinct token sequences. `Monitor` then checks the ONNX graph against the manifest and tokenizer
(`check_graph_metadata`) before the first use.
"""

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
from .messages import ROLES, Message

SCHEMA_VERSION = 2  # 2: layout markers are strings of one or more tokens (1: one special token each)
SUPPORTED_SCHEMAS = (1, 2)
MANIFEST = "monitor.json"
REQUIRED_KEYS = ("schema_version", "name", "version", "labels", "layout", "context_limit", "architecture", "kv",
                 "files", "tokenizer", "policy")
KV_DTYPE_NAMES = ("float32", "float16")
# the graph's `trajsafe.float_dtype` for the known variant dtypes (others are not checked)
VARIANT_FLOAT_DTYPES = {"float32": "float32", "int8": "float32", "q4": "float32", "float16": "float16"}


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
        return package_file(self.path, self.variant_file(variant)["path"], f"files.{variant}.path")

    def encoder(self) -> MessageEncoder:
        try:
            return MessageEncoder(self.tokenizer, self.manifest["layout"])
        except Exception as exc:  # tokenizers raises bare Exceptions on markers it cannot encode
            raise PackageError(f"{self.path / MANIFEST}: the layout cannot be read with this tokenizer "
                               f"({exc})") from exc

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
        except (OSError, ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError: ValueErrors
            raise PackageError(f"{manifest_path}: not valid JSON ({type(exc).__name__}: {exc})") from exc
        try:
            return cls._verified(folder, manifest, verify)
        except (KeyError, TypeError, AttributeError, ValueError, IndexError, RecursionError) as exc:
            # a safety net: _check_manifest checks every field read, so this means a check is missing
            raise PackageError(f"{manifest_path}: malformed manifest ({type(exc).__name__}: {exc})") from exc

    @classmethod
    def _verified(cls, folder: Path, manifest: Any, verify: bool) -> MonitorPackage:
        _check_manifest(manifest, folder)
        tok_entry = manifest["tokenizer"]
        tok_path = package_file(folder, tok_entry["path"], "tokenizer.path")
        _check_file(tok_path, tok_entry.get("sha256"), verify)
        for variant, entry in manifest["files"].items():
            _check_file(package_file(folder, entry["path"], f"files.{variant}.path"), entry.get("sha256"), verify)
        try:
            tokenizer = Tokenizer.from_file(str(tok_path))
        except Exception as exc:  # tokenizers raises a bare Exception
            raise PackageError(f"{tok_path}: cannot be read as a tokenizers JSON file ({exc})") from exc
        for token, token_id in manifest["layout"]["special_tokens"].items():
            if tokenizer.token_to_id(token) != token_id:
                raise PackageError(f"{tok_path}: special token {token!r} has id {tokenizer.token_to_id(token)}, "
                                   f"the manifest says {token_id}")
        package = cls(folder, manifest, tokenizer)
        check_layout(package.encoder(), manifest["context_limit"], folder / MANIFEST)
        return package


def _check_manifest(manifest: Any, folder: Path) -> None:
    """Every field the SDK reads has the type and range it needs (the layout's markers: `check_layout`)."""
    where = folder / MANIFEST
    if not isinstance(manifest, dict):
        raise PackageError(f"{where}: expected a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise PackageError(f"{where}: missing keys {missing}")
    version = manifest["schema_version"]
    if type(version) is not int or version not in SUPPORTED_SCHEMAS:  # bool is not a version
        raise PackageError(f"{where}: schema_version {version!r} is not supported by this SDK (supported: "
                           f"{SUPPORTED_SCHEMAS}); upgrade trajsafe-sdk or re-export it")
    labels = _field(manifest, "labels", dict, where)
    expected = {"actions": ACTIONS, "categories": CATEGORIES, "risk": RISK_LABELS}
    for key, value in expected.items():
        if labels.get(key) != value:
            raise PackageError(f"{where}: labels.{key} is {labels.get(key)!r}, expected {value!r}")
    layout = _field(manifest, "layout", dict, where)
    special = _field(layout, "special_tokens", dict, where, "layout.")
    if any(not isinstance(k, str) or type(v) is not int for k, v in special.items()):
        raise PackageError(f"{where}: layout.special_tokens must map token strings to integer ids")
    if layout.get("label_tokens") != LABEL_TOKENS or any(tok not in special for tok in LABEL_TOKENS):
        raise PackageError(f"{where}: layout.label_tokens do not match this SDK's label space")
    roles = _field(layout, "roles", dict, where, "layout.")
    if sorted(roles) != sorted(ROLES):
        raise PackageError(f"{where}: layout.roles must give a marker for each of {list(ROLES)}, got {sorted(roles)}")
    for key, marker in [("bos", layout.get("bos")), ("end", layout.get("end")), ("assess", layout.get("assess")),
                        *((f"roles.{r}", m) for r, m in roles.items())]:
        if not isinstance(marker, str) or not marker:
            raise PackageError(f"{where}: layout.{key} must be a non-empty marker string, got {marker!r}")
    after = layout.get("assess_after")
    if not isinstance(after, list) or not after or any(r not in ROLES for r in after):
        raise PackageError(f"{where}: layout.assess_after must be a non-empty list of roles from {list(ROLES)}, "
                           f"got {after!r}")
    _positive_int(layout.get("max_message_tokens"), "layout.max_message_tokens", where)
    _positive_int(manifest["context_limit"], "context_limit", where)
    arch = _field(manifest, "architecture", dict, where)
    for key in ("num_layers", "num_kv_heads", "head_dim"):
        _positive_int(arch.get(key), f"architecture.{key}", where)
    kv = _field(manifest, "kv", dict, where)
    for key in ("num_layers", "num_kv_heads", "head_dim"):
        if key in kv and kv[key] != arch[key]:
            raise PackageError(f"{where}: kv.{key} is {kv[key]!r} but architecture.{key} is {arch[key]!r}")
    files = _field(manifest, "files", dict, where)
    if not files:
        raise PackageError(f"{where}: lists no ONNX files")
    for variant, entry in files.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise PackageError(f"{where}: files.{variant} must be an object with a 'path' string")
        if not isinstance(entry.get("dtype", "float32"), str):
            raise PackageError(f"{where}: files.{variant}.dtype must be a string, got {entry.get('dtype')!r:.80}")
        if entry.get("kv_dtype", "float32") not in KV_DTYPE_NAMES:
            raise PackageError(f"{where}: files.{variant}.kv_dtype {entry.get('kv_dtype')!r} is not one of "
                               f"{list(KV_DTYPE_NAMES)}")
        if not isinstance(entry.get("sha256", ""), str):
            raise PackageError(f"{where}: files.{variant}.sha256 must be a hex string")
    defaults = manifest.get("default_variant", {})
    if not isinstance(defaults, dict) or any(not isinstance(v, str) for v in defaults.values()):
        raise PackageError(f"{where}: default_variant must map a provider to a variant name, got {defaults!r}")
    tok = _field(manifest, "tokenizer", dict, where)
    if not isinstance(tok.get("path"), str) or not isinstance(tok.get("sha256", ""), str):
        raise PackageError(f"{where}: tokenizer must be an object with 'path' and 'sha256' strings")
    _check_policy(_field(manifest, "policy", dict, where), where)


def _field(obj: dict[str, Any], key: str, kind: type, where: Path, prefix: str = "") -> Any:
    value = obj.get(key)
    if not isinstance(value, kind):
        names = {dict: "an object", list: "a list", str: "a string"}
        raise PackageError(f"{where}: {prefix}{key} must be {names.get(kind, kind.__name__)}, got {value!r:.80}")
    return value


def _positive_int(value: Any, name: str, where: Path) -> int:
    if type(value) is not int or value < 1:
        raise PackageError(f"{where}: {name} must be an integer >= 1, got {value!r:.80}")
    return value


def _check_policy(policy: dict[str, Any], where: Path) -> None:
    from .policy import Policy  # policy imports core, which imports this module

    try:
        Policy.from_package(policy)
    except (ValueError, TypeError) as exc:
        raise PackageError(f"{where}: policy: {exc}") from exc


def package_file(folder: Path, relative: str, name: str) -> Path:
    """`folder / relative`, refused when it leaves the package folder (`..`, or an absolute path elsewhere)."""
    root = os.path.normpath(os.path.abspath(folder))
    path = os.path.normpath(os.path.join(root, relative))
    if os.path.commonpath([root, path]) != root or path == root:
        raise PackageError(f"{folder / MANIFEST}: {name} {relative!r} points outside the package folder")
    return Path(path)


def spread_ranges(spread: dict[str, Any]) -> list[str]:
    """"FIGURE min-max" for each figure of a `monitor.json` `evaluation.seed_spread` (`{"seeds", FIGURE: [value per
    seed]}`), values that are not numbers skipped."""
    out = []
    for name, values in spread.items():
        if name == "seeds" or not isinstance(values, list):
            continue
        known = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        if known:
            out.append(f"{name} {min(known):.3f}-{max(known):.3f}")
    return out


def marker_ids(encoder: MessageEncoder) -> dict[str, Any]:
    """The layout's resolved marker id sequences, JSON-ready (`trajsafe.layout_ids` in the graph metadata)."""
    return {"bos": list(encoder.bos_ids), "end": list(encoder.end_ids), "assess": list(encoder.assess_ids),
            "roles": {role: list(ids) for role, ids in sorted(encoder.role_ids.items())}}


def check_layout(encoder: MessageEncoder, context_limit: int, where: Path) -> None:
    """The markers resolve to sequences that keep the layout unambiguous, and a longest message fits the context.

    bos, end, assess and every role marker are non-empty; the role markers differ from each other and from end;
    assess differs from end (it may equal the assistant role marker, as in chat templates).
    """
    ids = marker_ids(encoder)
    roles = ids["roles"]
    for name, seq in [("bos", ids["bos"]), ("end", ids["end"]), ("assess", ids["assess"]),
                      *((f"roles.{r}", s) for r, s in roles.items())]:
        if not seq:
            raise PackageError(f"{where}: layout.{name} encodes to no tokens")
    seen: dict[tuple[int, ...], str] = {tuple(ids["end"]): "end"}
    for role, seq in roles.items():
        other = seen.setdefault(tuple(seq), f"roles.{role}")
        if other != f"roles.{role}":
            raise PackageError(f"{where}: layout.roles.{role} encodes to the same tokens as layout.{other}")
    if ids["assess"] == ids["end"]:
        raise PackageError(f"{where}: layout.assess encodes to the same tokens as layout.end")
    longest = max(len(encoder.encode_message(Message(role, ""))) for role in roles) + encoder.max_message_tokens
    if len(ids["bos"]) + longest > context_limit:
        raise PackageError(f"{where}: a message of layout.max_message_tokens ({encoder.max_message_tokens}) does not "
                           f"fit context_limit {context_limit}")


def check_graph_metadata(package: MonitorPackage, variant: str, inputs: dict[str, tuple[list[Any], str]],
                         metadata: dict[str, str], activations: str | None = None) -> None:
    """The ONNX graph of `variant` matches the manifest and tokenizer: the KV inputs' heads, head dim and dtype, the
    float dtype, the vocabulary (no token id past the embedding), and the marker ids it was trained with
    (`trajsafe.layout_ids`, when the exporter recorded them). `inputs` maps input names to (shape, type).
    `activations` other than the variant's own: a graph derived from the file in that float dtype (KV included)."""
    where = package.onnx_path(variant)
    arch, entry = package.architecture, package.variant_file(variant)
    own = VARIANT_FLOAT_DTYPES.get(entry.get("dtype", "float32"))
    derived = activations is not None and activations != own
    kv_dtype = activations if derived else entry.get("kv_dtype", "float32")
    onnx_type = {"float32": "tensor(float)", "float16": "tensor(float16)"}[kv_dtype]
    for name, (shape, kind) in inputs.items():
        if not name.startswith("past_"):
            continue
        if kind != onnx_type:
            raise PackageError(f"{where}: {name} is {kind}, but files.{variant}.kv_dtype says {kv_dtype} (is this "
                               "the ONNX file of another variant?)")
        dims = (shape[1], shape[3]) if len(shape) == 4 else None
        if dims != (arch["num_kv_heads"], arch["head_dim"]):
            raise PackageError(f"{where}: {name} has shape {shape}, expected [batch, {arch['num_kv_heads']} "
                               f"(num_kv_heads), capacity, {arch['head_dim']} (head_dim)]")
    float_dtype = metadata.get("trajsafe.float_dtype")
    expected = activations if derived else own
    if float_dtype is not None and expected is not None and float_dtype != expected:
        raise PackageError(f"{where}: a {float_dtype} graph, but files.{variant}.dtype says {entry.get('dtype')}")
    try:
        graph_arch = json.loads(metadata.get("trajsafe.architecture", "{}"))
        recorded = json.loads(metadata["trajsafe.layout_ids"]) if "trajsafe.layout_ids" in metadata else None
    except ValueError as exc:
        raise PackageError(f"{where}: unreadable trajsafe metadata ({exc})") from exc
    vocab = graph_arch.get("vocab_size") if isinstance(graph_arch, dict) else None
    vocab = vocab if type(vocab) is int else arch.get("vocab_size")
    tokens = max(package.tokenizer.get_vocab(with_added_tokens=True).values(), default=-1) + 1
    if type(vocab) is int and tokens > vocab:
        raise PackageError(f"{where}: the tokenizer has token ids up to {tokens - 1}, more than the model's "
                           f"vocabulary ({vocab} ids): such a token would crash scoring")
    if recorded is not None and recorded != marker_ids(package.encoder()):
        raise PackageError(f"{where}: the layout's marker ids {marker_ids(package.encoder())} differ from those the "
                           f"model was exported with {recorded} (tokenizer.json or the layout was changed)")


def _check_file(path: Path, expected_sha: str | None, verify: bool) -> None:
    if not path.is_file():
        raise PackageError(f"package file missing: {path}")
    if verify:
        actual = sha256_file(path)
        if not isinstance(expected_sha, str) or expected_sha.lower() != actual:
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
    tokenizer.save(str(out / "tokenizer.json"), pretty=False)
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
