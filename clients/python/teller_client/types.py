"""Plain result types returned by the clients (no protobuf in callers' code)."""

from __future__ import annotations

from dataclasses import dataclass


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


@dataclass(frozen=True, slots=True)
class Wallet:
    id: str
    tenant_id: str
    label: str
    address: str
    state: str
    created_at_ms: int


@dataclass(frozen=True, slots=True)
class Tenant:
    id: str
    name: str
    state: str
    created_at_ms: int


@dataclass(frozen=True, slots=True)
class WindowSpend:
    window: str
    limit: int | None
    spent: int
    remaining: int | None
    window_start_ms: int
    window_end_ms: int


@dataclass(frozen=True, slots=True)
class Policy:
    per_payment_max: int | None = None
    daily_budget: int | None = None


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
