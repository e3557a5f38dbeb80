"""TrajSafe SDK: a trajectory-aware guardrail for chat applications.

`import trajsafe_sdk` stays light: the runtime (numpy, onnxruntime, tokenizers) loads when a monitor is first used,
or when `Monitor`, `Policy` or `SessionPool` is first accessed.
"""

from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import _checkout
from .decision import Decision
from .errors import (
    ConversationTerminated,
    GuardBlocked,
    MessageError,
    MonitorError,
    PackageError,
    ProviderError,
    TrajSafeError,
)
from .guard import DecisionEvent, Guard, StreamChecker, Verdict, default_monitor, guard
from .handlers import Handlers
from .labels import ACTIONS, CATEGORIES, Action, Category

_checkout.install(Path(__file__).resolve().parent)  # run from a clone's root: kernels/, integrations/ (see there)

if TYPE_CHECKING:
    from .core import Monitor
    from .policy import Policy
    from .pool import SessionPool

_LAZY = {"Monitor": ".core", "Policy": ".policy", "SessionPool": ".pool"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__version__ = "0.1.0"

__all__ = [
    "ACTIONS",
    "CATEGORIES",
    "Action",
    "Category",
    "ConversationTerminated",
    "Decision",
    "DecisionEvent",
    "Guard",
    "GuardBlocked",
    "Handlers",
    "MessageError",
    "Monitor",
    "MonitorError",
    "PackageError",
    "Policy",
    "ProviderError",
    "SessionPool",
    "StreamChecker",
    "TrajSafeError",
    "Verdict",
    "__version__",
    "default_monitor",
    "guard",
]
