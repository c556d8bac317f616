"""Teller client: ask Teller to sign HTTP 402 payments without holding keys.

Needs only grpcio and protobuf; it never imports the Teller server.
"""

from teller_client.client import AdminClient, AsyncTellerClient, TellerClient
from teller_client.errors import (
    AlreadyExists,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    LimitExceeded,
    NotFound,
    PermissionDenied,
    TellerError,
    Unauthenticated,
    Unavailable,
)
from teller_client.integrations import decode_receipt, payment_info
from teller_client.types import (
    Asset,
    AuditEvent,
    Budget,
    OperatorIdentity,
    PaidResponse,
    PaymentInfo,
    PaymentRecord,
    Policy,
    Requirement,
    SignedPayment,
    Tenant,
    Wallet,
    WindowSpend,
)

__all__ = [
    "AdminClient",
    "AlreadyExists",
    "Asset",
    "AsyncTellerClient",
    "AuditEvent",
    "Budget",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "LimitExceeded",
    "NotFound",
    "OperatorIdentity",
    "PaidResponse",
    "PaymentInfo",
    "PaymentRecord",
    "PermissionDenied",
    "Policy",
    "Requirement",
    "SignedPayment",
    "TellerClient",
    "TellerError",
    "Tenant",
    "Unauthenticated",
    "Unavailable",
    "Wallet",
    "WindowSpend",
    "decode_receipt",
    "payment_info",
]
