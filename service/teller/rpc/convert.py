"""Protobuf <-> domain conversion, only at the gRPC edge."""

from __future__ import annotations

import json

from teller.channels.reads import ChannelDetail
from teller.channels.store import ChannelView
from teller.db.models import ApiToken, AuditEvent, Payment, Tenant, Wallet
from teller.pay import PayHead
from teller.sign.call import SignResult, sign_input
from teller.signing import SignInput
from teller.spend.store import WindowReport
from teller_client._proto.teller.v1 import admin_pb2, common_pb2, payment_pb2


def sign_input_from_proto(req: payment_pb2.SignRequest) -> SignInput:
    c = req.challenge
    return sign_input(
        status=c.status,
        headers=tuple((h.name, h.value) for h in c.headers),
        body=c.body,
        url=c.url,
        method=c.method or "GET",
        wallet_id=req.wallet_id,
        max_amount=req.max_amount,
        idempotency_key=req.idempotency_key,
    )


def sign_result_to_proto(r: SignResult) -> payment_pb2.SignResponse:
    return payment_pb2.SignResponse(
        header_name=r.header_name,
        header_value=r.header_value,
        payment_id=r.payment_id,
        headers=[common_pb2.Header(name=k, value=v) for k, v in r.headers],
        requirement=common_pb2.Requirement(
            protocol=r.protocol, version=r.version, scheme=r.scheme, network=r.network,
            asset=r.asset, amount=str(r.amount), pay_to=r.pay_to,
        ),
    )


def tenant_to_proto(t: Tenant) -> admin_pb2.Tenant:
    return admin_pb2.Tenant(id=t.id, name=t.name, state=t.state, created_at_ms=t.created_ms,
                            frozen=bool(t.frozen), frozen_reason=t.frozen_reason or "")


def token_to_proto(t: ApiToken) -> admin_pb2.TokenInfo:
    # Only the id and metadata: the secret's hash never leaves the database.
    return admin_pb2.TokenInfo(id=t.id, tenant_id=t.tenant_id, description=t.description,
                               created_at_ms=t.created_ms, revoked_at_ms=t.revoked_ms or 0)


def wallet_to_proto(w: Wallet) -> common_pb2.Wallet:
    # Only public fields: the sealed key columns never cross this edge.
    return common_pb2.Wallet(id=w.id, tenant_id=w.tenant_id, label=w.label, address=w.address,
                             state=w.state, created_at_ms=w.created_ms, frozen=bool(w.frozen),
                             frozen_reason=w.frozen_reason or "")


def policy_to_proto(tenant_id: str, wallet_id: str, document: str, updated_ms: int) -> admin_pb2.SpendPolicy:
    return admin_pb2.SpendPolicy(tenant_id=tenant_id, wallet_id=wallet_id, document_json=document,
                                 updated_at_ms=updated_ms)


def spend_to_proto(tenant_id: str, windows: list[WindowReport]) -> common_pb2.SpendStatus:
    return common_pb2.SpendStatus(
        tenant_id=tenant_id,
        windows=[
            common_pb2.WindowSpend(
                window=w.name, scope=w.scope, kind=w.kind, limit=str(w.limit), spent=str(w.spent),
                reserved=str(w.reserved), remaining=str(w.remaining),
                window_start_ms=w.start_ms, window_end_ms=w.end_ms,
            )
            for w in windows
        ],
    )


def audit_to_proto(e: AuditEvent) -> common_pb2.AuditEvent:
    return common_pb2.AuditEvent(
        id=e.id, tenant_id=e.tenant_id or "", at_ms=e.at_ms, actor=e.actor, action=e.action,
        outcome=e.outcome, reason=e.reason, wallet_id=e.wallet_id, payment_id=e.payment_id,
        amount=e.amount, asset=e.asset, network=e.network, payee=e.payee,
        resource_url=e.resource_url, details_json=e.details,
    )


def payment_to_proto(p: Payment) -> common_pb2.PaymentRecord:
    # header_value (the signed proof) stays inside Teller: it is handed out once, by Sign.
    return common_pb2.PaymentRecord(
        id=p.id, tenant_id=p.tenant_id, wallet_id=p.wallet_id, protocol=p.protocol, version=p.version,
        scheme=p.scheme, network=p.network, asset=p.asset, pay_to=p.pay_to, amount=str(p.amount),
        state=p.state, state_reason=p.state_reason, tx_hash=p.tx_hash, released=p.released_ms is not None,
        valid_before=p.valid_before, created_at_ms=p.created_ms, updated_at_ms=p.updated_ms,
        resource_url=p.resource_url, nonce=p.nonce,
    )


def pay_head_to_proto(head: PayHead) -> payment_pb2.PayResponse:
    return payment_pb2.PayResponse(head=payment_pb2.PayHead(
        status=head.status, headers=[common_pb2.Header(name=k, value=v) for k, v in head.headers],
        payment=payment_to_proto(head.payment) if head.payment is not None else None,
        receipt_json=json.dumps(head.receipt, sort_keys=True) if head.receipt is not None else "",
        payment_header=head.payment_header, already_paid=head.already_paid,
    ))


def channel_to_proto(c: ChannelView) -> common_pb2.Channel:
    # spent: the highest voucher's total, all the payee can take whether or not it has settled yet.
    return common_pb2.Channel(
        id=c.id, tenant_id=c.tenant_id, wallet_id=c.wallet_id, network=c.network, escrow=c.escrow,
        channel_id=c.channel_id, token=c.token, payee=c.payee, deposit=str(c.deposit), spent=str(c.cumulative),
        remaining=str(c.remaining), state=c.state, created_at_ms=c.created_ms, updated_at_ms=c.updated_ms,
    )


def channels_to_proto(rows: list[ChannelView], next_page_token: str) -> common_pb2.ListChannelsResponse:
    return common_pb2.ListChannelsResponse(channels=[channel_to_proto(c) for c in rows],
                                           next_page_token=next_page_token)


def channel_detail_to_proto(d: ChannelDetail) -> common_pb2.GetChannelVouchersResponse:
    return common_pb2.GetChannelVouchersResponse(
        channel=channel_to_proto(d.channel),
        vouchers=[common_pb2.Voucher(cumulative=str(v.cumulative), signature=v.signature, created_at_ms=v.created_ms)
                  for v in d.vouchers],
        next_page_token=d.next_page_token,
    )
