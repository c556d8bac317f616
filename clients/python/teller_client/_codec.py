"""Request building and response parsing shared by the sync and async clients."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from teller_client._proto.teller.v1 import admin_pb2, common_pb2, payment_pb2
from teller_client.types import (
    AuditEvent,
    Channel,
    ChannelVouchers,
    PaymentRecord,
    Policy,
    Requirement,
    SignedPayment,
    Tenant,
    TokenInfo,
    Voucher,
    Wallet,
    WindowSpend,
)

HeadersLike = Mapping[str, str] | Iterable[tuple[str, str]]


def _headers(headers: HeadersLike) -> list[common_pb2.Header]:
    items = headers.items() if isinstance(headers, Mapping) else headers
    return [common_pb2.Header(name=k, value=v) for k, v in items]


def sign_request(
    *, status: int, headers: HeadersLike, body: bytes, url: str, method: str, wallet_id: str,
    max_amount: int | None, idempotency_key: str | None,
) -> payment_pb2.SignRequest:
    return payment_pb2.SignRequest(
        challenge=payment_pb2.Challenge(status=status, headers=_headers(headers), body=body, url=url, method=method),
        wallet_id=wallet_id,
        max_amount="" if max_amount is None else str(max_amount),
        idempotency_key=idempotency_key or "",
    )


def signed(r: payment_pb2.SignResponse) -> SignedPayment:
    q = r.requirement
    return SignedPayment(
        header_name=r.header_name, header_value=r.header_value, payment_id=r.payment_id,
        requirement=Requirement(q.protocol, q.version, q.scheme, q.network, q.asset, int(q.amount or 0), q.pay_to),
        headers=tuple((h.name, h.value) for h in r.headers),
    )


def wallet(w: common_pb2.Wallet) -> Wallet:
    return Wallet(w.id, w.tenant_id, w.label, w.address, w.state, w.created_at_ms, w.frozen, w.frozen_reason)


def wallets(r: common_pb2.ListWalletsResponse) -> list[Wallet]:
    return [wallet(w) for w in r.wallets]


def tenant(t: admin_pb2.Tenant) -> Tenant:
    return Tenant(t.id, t.name, t.state, t.created_at_ms, t.frozen, t.frozen_reason)


def token_info(t: admin_pb2.TokenInfo) -> TokenInfo:
    return TokenInfo(t.id, t.tenant_id, t.description, t.created_at_ms, t.revoked_at_ms)


def spend(r: common_pb2.SpendStatus) -> list[WindowSpend]:
    return [
        WindowSpend(w.scope, w.window, w.kind, int(w.limit or 0), int(w.spent or 0), int(w.reserved or 0),
                    int(w.remaining or 0), w.window_start_ms, w.window_end_ms)
        for w in r.windows
    ]


def policy_request(tenant_id: str, policy: Policy | Mapping[str, Any] | str, wallet_id: str) -> admin_pb2.SetPolicyRequest:
    if isinstance(policy, Policy):
        document = json.dumps(policy.to_document(wallet=bool(wallet_id)))
    elif isinstance(policy, str):
        document = policy
    else:
        document = json.dumps(dict(policy))
    return admin_pb2.SetPolicyRequest(
        policy=admin_pb2.SpendPolicy(tenant_id=tenant_id, wallet_id=wallet_id, document_json=document)
    )


def policy_document(p: admin_pb2.SpendPolicy) -> dict[str, Any]:
    return dict(json.loads(p.document_json))


def audit_request(
    *, tenant_id: str = "", action: str = "", wallet_id: str = "", outcome: str = "",
    since_ms: int = 0, until_ms: int = 0, page_size: int = 100, page_token: str = "",
) -> common_pb2.ListAuditEventsRequest:
    return common_pb2.ListAuditEventsRequest(
        filter=common_pb2.AuditFilter(tenant_id=tenant_id, action=action, wallet_id=wallet_id, outcome=outcome,
                                      since_ms=since_ms, until_ms=until_ms),
        page_size=page_size, page_token=page_token,
    )


def audit_page(r: common_pb2.ListAuditEventsResponse) -> tuple[list[AuditEvent], str]:
    return [
        AuditEvent(e.id, e.tenant_id, e.at_ms, e.actor, e.action, e.outcome, e.reason, e.wallet_id,
                   e.payment_id, e.amount, e.asset, e.network, e.payee, e.resource_url, e.details_json)
        for e in r.events
    ], r.next_page_token


def payment(p: common_pb2.PaymentRecord) -> PaymentRecord:
    return PaymentRecord(
        id=p.id, tenant_id=p.tenant_id, wallet_id=p.wallet_id, protocol=p.protocol, network=p.network,
        asset=p.asset, pay_to=p.pay_to, amount=int(p.amount or 0), state=p.state, state_reason=p.state_reason,
        tx_hash=p.tx_hash, released=p.released, valid_before=p.valid_before, created_at_ms=p.created_at_ms,
        updated_at_ms=p.updated_at_ms, resource_url=p.resource_url, nonce=p.nonce,
    )


def outcome_request(payment_id: str, status: int, headers: HeadersLike, body: bytes) -> payment_pb2.RecordOutcomeRequest:
    return payment_pb2.RecordOutcomeRequest(payment_id=payment_id, status=status, headers=_headers(headers), body=body)


def pay_request(*, url: str, method: str, headers: HeadersLike, body: bytes, wallet_id: str, max_amount: int | None,
                idempotency_key: str | None, protocols: Iterable[str],
                max_stream_amount: int | None = None) -> payment_pb2.PayRequest:
    return payment_pb2.PayRequest(
        url=url, method=method, headers=_headers(headers), body=body, wallet_id=wallet_id,
        max_amount="" if max_amount is None else str(max_amount), idempotency_key=idempotency_key or "",
        protocols=list(protocols),
        max_stream_amount="" if max_stream_amount is None else str(max_stream_amount),
    )


def pay_head(h: payment_pb2.PayHead) -> tuple[int, list[tuple[str, str]], PaymentRecord | None, dict[str, Any] | None,
                                              str]:
    return (h.status, [(x.name, x.value) for x in h.headers], payment(h.payment) if h.HasField("payment") else None,
            json.loads(h.receipt_json) if h.receipt_json else None, h.payment_header)


def channel(c: common_pb2.Channel) -> Channel:
    return Channel(
        id=c.id, tenant_id=c.tenant_id, wallet_id=c.wallet_id, network=c.network, escrow=c.escrow,
        channel_id=c.channel_id, token=c.token, payee=c.payee, deposit=int(c.deposit or 0), spent=int(c.spent or 0),
        remaining=int(c.remaining or 0), state=c.state, created_at_ms=c.created_at_ms, updated_at_ms=c.updated_at_ms,
    )


def channel_page(r: common_pb2.ListChannelsResponse) -> tuple[list[Channel], str]:
    return [channel(c) for c in r.channels], r.next_page_token


def channel_vouchers(r: common_pb2.GetChannelVouchersResponse) -> ChannelVouchers:
    return ChannelVouchers(
        channel=channel(r.channel),
        vouchers=tuple(Voucher(int(v.cumulative or 0), v.signature, v.created_at_ms) for v in r.vouchers),
        next_page_token=r.next_page_token,
    )
