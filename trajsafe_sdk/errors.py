"""Typed errors: each says what was wrong and what is expected."""

from __future__ import annotations


class TrajSafeError(Exception):
    """Base class of every error raised by the SDK."""


class PackageError(TrajSafeError):
    """A monitor package is missing, corrupt, or does not match this SDK."""


class ProviderError(TrajSafeError):
    """The requested ONNX Runtime execution provider cannot run here."""


class MessageError(TrajSafeError, ValueError):
    """A conversation or message is malformed (bad role, non-string content, ...)."""


class MonitorError(TrajSafeError):
    """The monitor failed while scoring (ONNX Runtime error, provider lost, ...)."""


class ConversationTerminated(TrajSafeError):
    """The conversation was terminated by the guard; reset it to continue."""


class GuardBlocked(TrajSafeError):
    """The guard refused or terminated a request (raised by adapters that cannot answer in place)."""

    def __init__(self, message: str, decision: object | None = None) -> None:
        super().__init__(message)
        self.decision = decision
