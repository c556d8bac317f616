"""The states a payment row goes through (``payments.state``), as stored.

The transitions and their rules are ``teller.lifecycle``'s; this module only
names the values, so pure code (the spend ledger's arithmetic, proof building)
can use them without the database layer.
"""

from __future__ import annotations

from enum import StrEnum


class PaymentState(StrEnum):
    #: The proof left Teller; its amount is reserved.
    SIGNED = "signed"
    #: Used on chain: its amount is spent.
    SETTLED = "settled"
    #: The server refused it or a push broadcast failed; reserved until released.
    FAILED = "failed"
    #: ``validBefore`` passed unused: released.
    EXPIRED = "expired"
    #: Canceled on chain: released.
    VOIDED = "voided"


__all__ = ["PaymentState"]
