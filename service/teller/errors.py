"""The one exception root of Teller's domain.

Every error a caller can see is a ``TellerError`` carrying a neutral
``ErrorCode``; ``teller.rpc.interceptors`` is the only place that maps it to a
gRPC status, so the modules that raise these import no transport.
Messages name what is wrong and never contain key material.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping


class ErrorCode(enum.Enum):
    """What kind of failure an error is, named as the canonical status codes
    (google.rpc.Code) that callers see, without their transport."""

    INVALID_ARGUMENT = enum.auto()
    FAILED_PRECONDITION = enum.auto()
    NOT_FOUND = enum.auto()
    ALREADY_EXISTS = enum.auto()
    UNAUTHENTICATED = enum.auto()
    PERMISSION_DENIED = enum.auto()
    RESOURCE_EXHAUSTED = enum.auto()
    UNAVAILABLE = enum.auto()
    INTERNAL = enum.auto()


class TellerError(Exception):
    """Root of every error Teller reports to a caller."""

    code: ErrorCode = ErrorCode.INTERNAL
    #: Stable machine-readable reason (google.rpc.ErrorInfo.reason).
    reason: str = "internal"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        self.metadata: dict[str, str] = dict(metadata or {})


class InvalidArgument(TellerError):
    """The request or the challenge inside it is malformed; the message names the field."""

    code = ErrorCode.INVALID_ARGUMENT
    reason = "invalid_argument"


class FailedPrecondition(TellerError):
    """Well-formed, but Teller cannot act on it (e.g. no payable requirement)."""

    code = ErrorCode.FAILED_PRECONDITION
    reason = "failed_precondition"


class NotFound(TellerError):
    code = ErrorCode.NOT_FOUND
    reason = "not_found"


class AlreadyExists(TellerError):
    code = ErrorCode.ALREADY_EXISTS
    reason = "already_exists"


class Unauthenticated(TellerError):
    code = ErrorCode.UNAUTHENTICATED
    reason = "unauthenticated"


class PermissionDenied(TellerError):
    """The caller may not do this, or the policy's allowlists refuse it."""

    code = ErrorCode.PERMISSION_DENIED
    reason = "permission_denied"


class LimitExceeded(TellerError):
    """A spend limit refuses the payment; metadata says which limit and what is left."""

    code = ErrorCode.RESOURCE_EXHAUSTED
    reason = "limit_exceeded"


class Unavailable(TellerError):
    """A dependency (the database) is down; the call may be retried."""

    code = ErrorCode.UNAVAILABLE
    reason = "unavailable"


class ConfigError(Exception):
    """Teller cannot start with this configuration. Not a caller-facing error."""
