"""What a resource server said about a payment, whatever the protocol."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

MAX_REASON = 200


@dataclass(frozen=True, slots=True)
class Outcome:
    """The server's word only: it names what to record, never what to release."""

    kind: Literal["settled", "refused", "unknown"]
    tx_hash: str = ""
    reason: str = ""
    payer: str = ""
    raw: Any = None  # the decoded receipt JSON, when there was one


def text(value: Any) -> str:
    return value[:MAX_REASON] if isinstance(value, str) else ""
