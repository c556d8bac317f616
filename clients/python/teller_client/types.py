"""Plain result types returned by the clients (no protobuf in callers' code)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Requirement:
    protocol: str
    version: int
    scheme: str
    network: str
    asset: str
    amount: int
    pay_to: str


@dataclass(frozen=True, slots=True)
class SignedPayment:
    """What to attach on the retry: ``headers={header_name: header_value}``."""

    header_name: str
    header_value: str
    payment_id: str
    requirement: Requirement
    #: Other headers to set on the retry (MPP's ``Idempotency-Key``).
    headers: tuple[tuple[str, str], ...] = ()

    def retry_headers(self) -> dict[str, str]:
        """Every header to set on the paid retry."""
        return {**dict(self.headers), self.header_name: self.header_value}


@dataclass(frozen=True, slots=True)
class PaymentRecord:
    """A signed payment and what became of it.

    ``state``: ``signed`` (reserved), ``settled`` (spent, ``tx_hash``), ``failed``
    (the server refused it; reserved until the chain shows it unusable, then
    ``released``), ``expired`` or ``voided`` (released).
    """

    id: str
    tenant_id: str
    wallet_id: str
    protocol: str
    network: str
    asset: str
    pay_to: str
    amount: int
    state: str
    state_reason: str
    tx_hash: str
    released: bool
    valid_before: int
    created_at_ms: int
    updated_at_ms: int
    resource_url: str
    nonce: str


@dataclass(frozen=True, slots=True)
class PaidResponse:
    """What ``Pay`` returns: the server's final answer and, when a 402 was paid,
    the payment and the server's decoded receipt."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    payment: PaymentRecord | None
    receipt: dict[str, Any] | None
    payment_header: str = ""

    def header(self, name: str) -> str | None:
        lname = name.lower()
        return next((v for k, v in self.headers if k.lower() == lname), None)


@dataclass(frozen=True, slots=True)
class PaymentInfo:
    """Attached to responses by the httpx transport and the requests adapter
    (``teller_client.payment_info(response)``) when they paid a 402."""

    payment_id: str
    header_name: str
    requirement: Requirement
    record: PaymentRecord | None  # as Teller recorded it after the retry (None if reporting failed)
    receipt: dict[str, Any] | None  # the server's decoded receipt, if it sent one
    #: Why reporting the outcome to Teller failed, if it did. The paid response is
    #: returned anyway; Teller's reconciler settles the payment from the chain.
    outcome_error: Exception | None = None
    idempotency_key: str = ""


@dataclass(frozen=True, slots=True)
class Wallet:
    id: str
    tenant_id: str
    label: str
    address: str
    state: str
    created_at_ms: int
    frozen: bool = False
    frozen_reason: str = ""


@dataclass(frozen=True, slots=True)
class Tenant:
    id: str
    name: str
    state: str
    created_at_ms: int
    frozen: bool = False
    frozen_reason: str = ""


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """An API token as operators see it: never its secret."""

    id: str
    tenant_id: str
    description: str
    created_at_ms: int
    revoked_at_ms: int  # 0: still valid


@dataclass(frozen=True, slots=True)
class OperatorIdentity:
    """A named operator credential (its secret is shown only when created)."""

    id: str
    name: str
    created_at_ms: int
    created_by: str
    revoked_at_ms: int  # 0 while valid


@dataclass(frozen=True, slots=True)
class WindowSpend:
    """One budget window, in the policy's common unit."""

    scope: str  # "tenant" or "wallet:<id>"
    window: str  # the budget's name
    kind: str  # "calendar" or "rolling"
    limit: int
    spent: int  # settled on chain
    reserved: int  # signed, not yet settled
    remaining: int
    window_start_ms: int
    window_end_ms: int


@dataclass(frozen=True, slots=True)
class Channel:
    """An MPP session payment channel a wallet opened, and how much of its
    deposit the vouchers Teller signed have promised (amounts in atomic units).

    ``state``: ``open`` (Teller signs vouchers on it), ``closing`` (a close was
    asked for; no more vouchers), ``closed`` (settled and refunded on chain).
    """

    id: str  # Teller's id for the channel: what get_channel takes
    tenant_id: str
    wallet_id: str
    network: str  # CAIP-2
    escrow: str
    channel_id: str  # the escrow's id for the channel, 0x + 64 hex
    token: str
    payee: str
    deposit: int
    spent: int  # the highest voucher's total: all the payee can take
    remaining: int  # deposit - spent
    state: str
    created_at_ms: int
    updated_at_ms: int


@dataclass(frozen=True, slots=True)
class Voucher:
    """A voucher Teller signed: the payee may take ``cumulative`` in total."""

    cumulative: int
    signature: str  # 0x + r, s, v
    created_at_ms: int


@dataclass(frozen=True, slots=True)
class ChannelVouchers:
    """``get_channel``'s result: the channel and a page of its vouchers, highest
    total first; ``next_page_token`` continues the vouchers ("" when there are no more)."""

    channel: Channel
    vouchers: tuple[Voucher, ...]
    next_page_token: str


@dataclass(frozen=True, slots=True)
class ClosedChannel:
    """``close_channel``'s result: the final voucher's total (what the payee is
    paid; the rest of the deposit is refunded), the server's HTTP status and its
    session receipt (``txHash``: the close transaction), when it sent one. A
    forced close has no server: status 0, no receipt."""

    id: str
    cumulative: int
    status: int
    receipt: dict[str, Any] | None
    #: A forced close (``force=True``): the requestClose transaction, the payment
    #: holding its fee, and the chain time from which the wallet may withdraw.
    tx_hash: str = ""
    payment_id: str = ""
    grace_end: int | None = None


@dataclass(frozen=True, slots=True)
class Budget:
    limit: int
    window: str = "day"  # calendar: hour|day|week|month; rolling: "90s", "15m", "1h", "30d"
    kind: str = "calendar"  # or "rolling"
    name: str = ""


@dataclass(frozen=True, slots=True)
class Asset:
    network: str  # CAIP-2, e.g. "eip155:8453"
    address: str
    decimals: int


@dataclass(frozen=True, slots=True)
class Policy:
    """A typed way to write a policy document; ``to_document()`` gives the JSON form.

    Amounts are integers in the common unit (``unit_decimals``, 6 by default:
    1_000_000 = one dollar of a 6-decimal stablecoin).
    """

    per_payment_max: int | None = None
    #: The most one payment may cost in fees (Tempo: gas limit x max fee per gas), common unit.
    max_fee: int | None = None
    #: The largest deposit an MPP session channel may hold, common unit (the budgets hold it while it is out).
    max_channel_deposit: int | None = None
    #: The most MPP session channels the tenant holds that are not closed (tenant policy only).
    max_open_channels: int | None = None
    daily_budget: int | None = None  # shorthand for Budget(limit, "day")
    budgets: tuple[Budget, ...] = ()
    assets: tuple[Asset, ...] = ()
    allow_unknown_assets: bool = False
    unit_decimals: int | None = None
    networks_allow: tuple[str, ...] = ()
    networks_deny: tuple[str, ...] = ()
    payees_allow: tuple[str, ...] = ()
    payees_deny: tuple[str, ...] = ()
    hosts_allow: tuple[str, ...] = ()
    hosts_deny: tuple[str, ...] = ()
    #: Protocols to pay, most preferred first, when a 402 offers several ("x402", "mpp").
    protocols: tuple[str, ...] = ()
    #: MPP Tempo charges: "pull" (the server broadcasts) or "push" (Teller broadcasts).
    mpp_mode: str = ""

    def to_document(self, *, wallet: bool = False) -> dict[str, object]:
        budgets = [Budget(self.daily_budget, "day", name="day")] if self.daily_budget is not None else []
        budgets += list(self.budgets)
        doc: dict[str, object] = {
            "budgets": [{"limit": str(b.limit), "window": b.window, "kind": b.kind, **({"name": b.name} if b.name else {})}
                        for b in budgets],
            "networks": {"allow": list(self.networks_allow), "deny": list(self.networks_deny)},
            "payees": {"allow": list(self.payees_allow), "deny": list(self.payees_deny)},
            "hosts": {"allow": list(self.hosts_allow), "deny": list(self.hosts_deny)},
        }
        if self.per_payment_max is not None:
            doc["per_payment_max"] = str(self.per_payment_max)
        if self.max_fee is not None:
            doc["max_fee"] = str(self.max_fee)
        if self.max_channel_deposit is not None:
            doc["max_channel_deposit"] = str(self.max_channel_deposit)
        if not wallet:
            doc["assets"] = [{"network": a.network, "address": a.address, "decimals": a.decimals} for a in self.assets]
            doc["allow_unknown_assets"] = self.allow_unknown_assets
            if self.protocols:
                doc["protocols"] = list(self.protocols)
            if self.mpp_mode:
                doc["mpp_mode"] = self.mpp_mode
            if self.unit_decimals is not None:
                doc["unit_decimals"] = self.unit_decimals
            if self.max_open_channels is not None:
                doc["max_open_channels"] = self.max_open_channels
        return doc


@dataclass(frozen=True, slots=True)
class AuditEvent:
    id: int
    tenant_id: str
    at_ms: int
    actor: str
    action: str
    outcome: str
    reason: str
    wallet_id: str
    payment_id: str
    amount: str
    asset: str
    network: str
    payee: str
    resource_url: str
    details_json: str
