"""Typed errors mirroring the server's gRPC status codes.

Every failed call raises a ``TellerError`` subclass chosen by status code, with
the server's stable ``reason`` and structured ``metadata`` (for a spend-limit
denial: ``limit``, ``remaining``, ``window``)::

    TellerError
    |-- InvalidArgument     a field of the request is malformed (the message names it)
    |-- FailedPrecondition  cannot be done in this state (reason: payment_refused,
    |                       idempotency_key_spent, insufficient_balance, ...)
    |-- NotFound            no such wallet / payment (another tenant's looks missing)
    |-- AlreadyExists       the idempotency key was used for a different purchase
    |-- Unauthenticated     bad or revoked token
    |-- PermissionDenied    not allowed: an allowlist, a disabled tenant, a frozen wallet
    |-- LimitExceeded       a spend limit (``limit``, ``remaining``)
    |-- Unavailable         Teller (or a chain it needs) cannot be reached now; retry later
    |-- DeadlineExceeded    the call's deadline passed first (Teller dead or slow)
    |-- Cancelled           the call was cancelled
    `-- Internal            a bug in Teller: report it

``Unavailable`` and ``DeadlineExceeded`` say nothing about whether a Sign or Pay
happened: repeat the call with the same idempotency key to learn (and never pay twice).
"""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


class TellerError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, *, code: grpc.StatusCode | None = None, reason: str = "",
                 metadata: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.reason = reason
        self.metadata = metadata or {}

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}" + (f" [{self.reason}]" if self.reason else "")


class InvalidArgument(TellerError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class FailedPrecondition(TellerError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class NotFound(TellerError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(TellerError):
    code = grpc.StatusCode.ALREADY_EXISTS


class Unauthenticated(TellerError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(TellerError):
    """The caller may not do this, or an allowlist refused the payment."""

    code = grpc.StatusCode.PERMISSION_DENIED


class LimitExceeded(TellerError):
    """A spend limit refused the payment (RESOURCE_EXHAUSTED)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    @property
    def limit(self) -> int | None:
        return int(self.metadata["limit"]) if "limit" in self.metadata else None

    @property
    def remaining(self) -> int | None:
        return int(self.metadata["remaining"]) if "remaining" in self.metadata else None


class Unavailable(TellerError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(TellerError):
    """The call's deadline passed before Teller answered."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(TellerError):
    code = grpc.StatusCode.CANCELLED


class Internal(TellerError):
    code = grpc.StatusCode.INTERNAL


_BY_CODE = {cls.code: cls for cls in (
    InvalidArgument, FailedPrecondition, NotFound, AlreadyExists, Unauthenticated,
    PermissionDenied, LimitExceeded, Unavailable, DeadlineExceeded, Cancelled, Internal,
)}


def from_rpc_error(err: grpc.RpcError) -> TellerError:
    """Translate a grpc error (sync or aio) into the matching TellerError."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    message = err.details() if hasattr(err, "details") else str(err)
    reason, metadata = "", {}
    try:
        status = rpc_status.from_call(err) if isinstance(err, grpc.Call) else None
    except ValueError:
        status = None
    if status is None and hasattr(err, "trailing_metadata"):
        status = _status_from_trailers(err.trailing_metadata())
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason, metadata = info.reason, dict(info.metadata)
    cls = _BY_CODE.get(code, TellerError)
    return cls(message or "", code=code, reason=reason, metadata=metadata)


def _status_from_trailers(trailers: object):  # type: ignore[no-untyped-def]
    from google.rpc import status_pb2

    for key, value in trailers or ():  # type: ignore[attr-defined]
        if key == "grpc-status-details-bin":
            status = status_pb2.Status()
            status.ParseFromString(value)
            return status
    return None
