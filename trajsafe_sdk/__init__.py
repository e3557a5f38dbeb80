"""TrajSafe SDK: a trajectory-aware guardrail for chat applications."""

from .errors import (
    ConversationTerminated,
    GuardBlocked,
    MessageError,
    MonitorError,
    PackageError,
    ProviderError,
    TrajSafeError,
)
from .labels import ACTIONS, CATEGORIES, Action, Category

__version__ = "0.1.0"

__all__ = [
    "ACTIONS",
    "CATEGORIES",
    "Action",
    "Category",
    "ConversationTerminated",
    "GuardBlocked",
    "MessageError",
    "MonitorError",
    "PackageError",
    "ProviderError",
    "TrajSafeError",
    "__version__",
]
