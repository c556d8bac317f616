"""The one exception root of Teller's domain.

Every error a caller can see is a ``TellerError`` carrying the gRPC status it
maps to; ``teller.rpc.interceptors`` is the only place that translates them.
Messages name what is wrong and never contain key material.
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc


class TellerError(Exception):
    """Root of every error Teller reports to a caller."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
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

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "invalid_argument"


class FailedPrecondition(TellerError):
    """Well-formed, but Teller cannot act on it (e.g. no payable requirement)."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "failed_precondition"


class NotFound(TellerError):
    code = grpc.StatusCode.NOT_FOUND
    reason = "not_found"


class AlreadyExists(TellerError):
    code = grpc.StatusCode.ALREADY_EXISTS
    reason = "already_exists"


class Unauthenticated(TellerError):
    code = grpc.StatusCode.UNAUTHENTICATED
    reason = "unauthenticated"


class PermissionDenied(TellerError):
    """The caller may not do this, or the policy's allowlists refuse it."""

    code = grpc.StatusCode.PERMISSION_DENIED
    reason = "permission_denied"


class LimitExceeded(TellerError):
    """A spend limit refuses the payment; metadata says which limit and what is left."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "limit_exceeded"


class Unavailable(TellerError):
    """A dependency (the database) is down; the call may be retried."""

    code = grpc.StatusCode.UNAVAILABLE
    reason = "unavailable"


class ConfigError(Exception):
    """Teller cannot start with this configuration. Not a caller-facing error."""
