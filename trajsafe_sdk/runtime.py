"""ONNX Runtime provider choice and session creation (CPU, or CUDA when it really works)."""

from __future__ import annotations

import base64
import logging
import os
import re
import sys
import tempfile
from pathlib import Path

import onnxruntime as ort

from .errors import ProviderError
from .package import VARIANT_FLOAT_DTYPES, MonitorPackage

log = logging.getLogger("trajsafe_sdk")

PROVIDER_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
PROVIDER_CHOICES = ("auto", "cpu", "cuda")


def available_providers() -> list[str]:
    """Execution providers this onnxruntime build lists (listed does not mean usable)."""
    return list(ort.get_available_providers())


ONNXRUNTIME_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu")  # both provide the `onnxruntime` module


def onnxruntime_distributions() -> dict[str, str]:
    """The installed distributions that provide the `onnxruntime` module, name -> version (two is a broken
    environment: one overwrites the other's files)."""
    from importlib import metadata

    found = {}
    for name in ONNXRUNTIME_DISTRIBUTIONS:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def session_options(threads: int | None = None) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    threads = threads or int(os.environ.get("TRAJSAFE_THREADS", "0"))
    if threads:
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    # A trained monitor's peaked attention underflows exp() into denormals, which x86 handles ~100x slower: flushing
    # them to zero took 20% off a turn after a 2k-token prefix (values below 1e-38 change no score).
    opts.add_session_config_entry("session.set_denormal_as_zero", "1")
    return opts


def create_session(onnx_path: Path | str | bytes, provider: str, threads: int | None = None) -> ort.InferenceSession:
    """Create an inference session on exactly `provider` ('cpu' or 'cuda'); raise ProviderError if it cannot run.

    This does not touch onnxruntime's native log: `open_session` and `cuda_usable` keep it off the terminal."""
    if provider not in PROVIDER_NAMES:
        raise ProviderError(f"unknown provider {provider!r}; expected one of {', '.join(PROVIDER_CHOICES)}")
    name = PROVIDER_NAMES[provider]
    if name not in available_providers():
        raise ProviderError(f"{name} is not in this onnxruntime build ({ort.__version__}, providers: "
                            f"{available_providers()}); install onnxruntime-gpu on a CUDA machine")
    providers = [name] if provider == "cpu" else [name, "CPUExecutionProvider"]
    source = onnx_path if isinstance(onnx_path, bytes) else str(onnx_path)
    session = ort.InferenceSession(source, sess_options=session_options(threads), providers=providers)
    if session.get_providers()[0] != name:
        # onnxruntime falls back to CPU silently when the CUDA libraries or the device are missing
        raise ProviderError(f"onnxruntime could not initialise {name} (no CUDA device, or CUDA/cuDNN libraries "
                            "missing)")
    return session


# A one-node ONNX model (Identity, float[1]) used to probe whether the CUDA provider really initialises.
_PROBE_MODEL = base64.b64decode(
    "CAg6OwoQCgF4EgF5IghJZGVudGl0eRIFcHJvYmVaDwoBeBIKCggIARIECgIIAWIPCgF5EgoKCAgBEgQKAggBQgQKABAR"
)

_ORT_SEVERITY = 2  # onnxruntime's default-logger severity outside CUDA attempts (`set_ort_log_severity`)


def set_ort_log_severity(level: int) -> None:
    """Set onnxruntime's native (default-logger) severity, 0 verbose .. 4 fatal; kept across CUDA attempts."""
    global _ORT_SEVERITY
    _ORT_SEVERITY = level
    ort.set_default_logger_severity(level)


def _native_causes(log_text: str) -> list[str]:
    """The causes onnxruntime's native log gives for a CUDA failure (a missing library, the CUDA/cuDNN needed)."""
    found = re.findall(r"with error: ([^\n\x1b]+)", log_text) + re.findall(r"(Require [^.]*\.\*[^.]*\.\*)", log_text)
    return list(dict.fromkeys(c.strip() for c in found))


def open_cuda_session(onnx_path: Path | str | bytes, threads: int | None = None) -> ort.InferenceSession:
    """`create_session(onnx_path, "cuda")` with onnxruntime's native log kept off the terminal (its red error lines
    about missing CUDA libraries); a ProviderError then names the causes that log gave. `$TRAJSAFE_ORT_LOG` set:
    the native log is left alone."""
    if os.environ.get("TRAJSAFE_ORT_LOG"):
        return create_session(onnx_path, "cuda", threads)
    failure: ProviderError | None = None
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        try:
            ort.set_default_logger_severity(2)  # warnings carry the "Require cuDNN 9.* and CUDA 13.*" hint
            os.dup2(capture.fileno(), 2)  # the native logger writes to fd 2 directly
            try:
                return create_session(onnx_path, "cuda", threads)
            except ProviderError as exc:
                failure = exc
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            ort.set_default_logger_severity(_ORT_SEVERITY)
            capture.seek(0)
            causes = _native_causes(capture.read().decode("utf-8", "replace"))
    detail = f" [onnxruntime: {'; '.join(causes)}]" if causes else ""
    raise ProviderError(f"{failure}{detail}") from None


def cuda_usable(onnx_path: Path | str | bytes = _PROBE_MODEL) -> tuple[bool, str]:
    """Whether the CUDA provider really runs here (opening `onnx_path` on it; default: a one-node model), and why
    not."""
    if PROVIDER_NAMES["cuda"] not in available_providers():
        return False, "CUDAExecutionProvider is not in this onnxruntime build"
    try:
        open_cuda_session(onnx_path)
    except ProviderError as exc:
        return False, str(exc)
    except Exception as exc:  # driver errors surface as generic onnxruntime exceptions
        return False, f"CUDA session failed: {exc}"
    return True, "ok"


def resolve_provider(requested: str = "auto") -> str:
    """'auto' -> 'cuda' if it really works, else 'cpu'; 'cuda' where it cannot run is an error."""
    if requested not in PROVIDER_CHOICES:
        raise ProviderError(f"unknown provider {requested!r}; expected one of {', '.join(PROVIDER_CHOICES)}")
    if requested == "cpu":
        return "cpu"
    ok, why = cuda_usable()
    if requested == "cuda" and not ok:
        raise ProviderError(f"provider 'cuda' was requested but cannot run here: {why}")
    if requested == "auto" and not ok:
        log.debug("provider auto tried CUDA, using CPU: %s", why)
    return "cuda" if ok else "cpu"


def runtime_graph(package: MonitorPackage, variant: str, provider: str) -> tuple[Path | bytes, str]:
    """What `provider` runs for a package variant, and its activation dtype: the ONNX file itself, except a q4
    (float32-activation) variant on CUDA, which runs as the same 4-bit model with float16 activations and KV derived
    in memory (`kernels.variants.q4_with_fp16_activations`): ONNX Runtime's CUDA GroupQueryAttention has no float32
    kernel, so the file as it is would run every attention layer on the CPU. Without the `onnx` package, or for a q4
    graph of another form, the file runs as it is, with a warning."""
    path = package.onnx_path(variant)
    entry = package.variant_file(variant)
    activations = VARIANT_FLOAT_DTYPES.get(entry.get("dtype", "float32"), "float32")
    if provider != "cuda" or entry.get("dtype") != "q4" or "cuda" in entry.get("providers", ["cpu"]):
        return path, activations
    try:
        import onnx

        from .kernels.variants import q4_with_fp16_activations
    except ImportError as exc:
        log.warning("the q4 monitor runs its attention on the CPU under CUDA: deriving its float16 form needs the "
                    "onnx package (%s); pip install onnx", exc)
        return path, activations
    try:
        return q4_with_fp16_activations(onnx.load(str(path))).SerializeToString(), "float16"
    except (ValueError, KeyError) as exc:  # a q4 graph of another form: it still runs, attention on the CPU
        log.warning("%s: no float16 form for CUDA (%s); running the file as it is", path, exc)
        return path, activations


def open_session(onnx_path: Path | str | bytes, provider: str, threads: int | None = None) -> ort.InferenceSession:
    """Open the model on exactly `provider` ('cpu' or 'cuda'; resolve 'auto' first with `resolve_provider`)."""
    if provider == "cpu":
        return create_session(onnx_path, "cpu", threads)
    if provider != "cuda":
        raise ProviderError(f"unknown provider {provider!r}; expected cpu or cuda (resolve auto first)")
    try:
        return open_cuda_session(onnx_path, threads)
    except ProviderError as exc:
        raise ProviderError(f"provider 'cuda' was requested but cannot run here: {exc}; use provider 'cpu' "
                            "or 'auto'") from None
