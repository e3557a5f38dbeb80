"""ONNX Runtime provider choice and session creation (CPU, or CUDA when it really works)."""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import onnxruntime as ort

from .errors import ProviderError

log = logging.getLogger("trajsafe_sdk")

PROVIDER_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
PROVIDER_CHOICES = ("auto", "cpu", "cuda")


def available_providers() -> list[str]:
    """Execution providers this onnxruntime build lists (listed does not mean usable)."""
    return list(ort.get_available_providers())


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
    """Create an inference session on exactly `provider` ('cpu' or 'cuda'); raise ProviderError if it cannot run."""
    if provider not in PROVIDER_NAMES:
        raise ProviderError(f"unknown provider {provider!r}; expected one of {', '.join(PROVIDER_CHOICES)}")
    name = PROVIDER_NAMES[provider]
    if name not in available_providers():
        raise ProviderError(f"provider {provider!r} is not in this onnxruntime build ({ort.__version__}, "
                            f"providers: {available_providers()}); install onnxruntime-gpu on a CUDA machine")
    providers = [name] if provider == "cpu" else [name, "CPUExecutionProvider"]
    source = onnx_path if isinstance(onnx_path, bytes) else str(onnx_path)
    session = ort.InferenceSession(source, sess_options=session_options(threads), providers=providers)
    if session.get_providers()[0] != name:
        # onnxruntime falls back to CPU silently when the CUDA libraries or the device are missing
        raise ProviderError(f"provider {provider!r} was requested but onnxruntime could not initialise it "
                            "(no CUDA device, or CUDA/cuDNN libraries missing); use --provider cpu or auto")
    return session


# A one-node ONNX model (Identity, float[1]) used to probe whether the CUDA provider really initialises.
_PROBE_MODEL = base64.b64decode(
    "CAg6OwoQCgF4EgF5IghJZGVudGl0eRIFcHJvYmVaDwoBeBIKCggIARIECgIIAWIPCgF5EgoKCAgBEgQKAggBQgQKABAR"
)


@contextmanager
def _quiet_onnxruntime() -> Iterator[None]:
    """Keep onnxruntime's own CUDA-missing errors off stderr while probing (we report the reason ourselves)."""
    if os.environ.get("TRAJSAFE_ORT_LOG"):
        yield
        return
    ort.set_default_logger_severity(4)
    try:
        yield
    finally:
        ort.set_default_logger_severity(2)


def cuda_usable() -> tuple[bool, str]:
    """Whether the CUDA provider really runs here, and why not."""
    if PROVIDER_NAMES["cuda"] not in available_providers():
        return False, "CUDAExecutionProvider is not in this onnxruntime build"
    try:
        with _quiet_onnxruntime():
            create_session(_PROBE_MODEL, "cuda")
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
        raise ProviderError(f"provider 'cuda' cannot run here: {why}")
    if requested == "auto" and not ok:
        log.debug("provider auto -> cpu (%s)", why)
    return "cuda" if ok else "cpu"


def open_session(onnx_path: Path | str, requested: str = "auto",
                 threads: int | None = None) -> tuple[ort.InferenceSession, str]:
    """Open the model on the requested provider; 'auto' tries CUDA first and says why it fell back."""
    if requested not in PROVIDER_CHOICES:
        raise ProviderError(f"unknown provider {requested!r}; expected one of {', '.join(PROVIDER_CHOICES)}")
    if requested in ("cuda", "cpu"):
        return create_session(onnx_path, requested, threads), requested
    if PROVIDER_NAMES["cuda"] in available_providers():
        try:
            with _quiet_onnxruntime():
                return create_session(onnx_path, "cuda", threads), "cuda"
        except ProviderError as exc:
            log.info("provider auto -> cpu: %s", exc)
        except Exception as exc:  # driver/library errors surface as generic onnxruntime exceptions
            log.info("provider auto -> cpu: CUDA session failed: %s", exc)
    return create_session(onnx_path, "cpu", threads), "cpu"
