"""The gRPC servicers. They authenticate, convert, and hand blocking database
work to a thread pool; the domain logic lives in teller.sign / teller.admin."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import grpc

from teller import auth
from teller.app import App
from teller.audit import events as audit_log
from teller.callers import Caller
from teller.chain import NotCached
from teller.channels import reads as channel_reads
from teller.channels import top_up
from teller.channels.close import Closer
from teller.channels.forced import ForcedClose
from teller.channels.store import Wanted
from teller.db.models import Operator
from teller.errors import InvalidArgument, PermissionDenied, TellerError
from teller.pay import Payer, PayHead, pay_input
from teller.rpc import convert
from teller.rpc.batcher import ChannelBatchers, SignBatcher
from teller.sign.call import Call, PushPending, Revisit, SignResult, Verdict
from teller.sign.drivers.pg import AsyncPgBatchIO, conninfo
from teller.sign.service import OPENING_PAUSE_S, TOP_UP_ROUNDS, channel_opening
from teller.signing import SignInput
from teller_client._proto.teller.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    payment_pb2,
    payment_pb2_grpc,
)

T = TypeVar("T")


class _Base:
    def __init__(self, app: App, pool: ThreadPoolExecutor) -> None:
        self.app = app
        self.pool = pool

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        # Carry the call's context (request id) into the worker thread, for its log lines.
        ctx = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(self.pool, ctx.run, fn, *args)


def _list_audit(app: App, tenant_id: str | None, req: common_pb2.ListAuditEventsRequest) -> common_pb2.ListAuditEventsResponse:
    f = req.filter
    with app.db.transaction() as s:
        rows, token = audit_log.list_events(
            s, tenant_id=tenant_id, action=f.action, wallet_id=f.wallet_id, outcome=f.outcome,
            since_ms=f.since_ms, until_ms=f.until_ms, page_size=req.page_size, page_token=req.page_token,
        )
        return common_pb2.ListAuditEventsResponse(
            events=[convert.audit_to_proto(e) for e in rows], next_page_token=token
        )


class PaymentServicer(_Base, payment_pb2_grpc.PaymentServiceServicer):
    def __init__(self, app: App, pool: ThreadPoolExecutor) -> None:
        super().__init__(app, pool)
        self._token_tenants: dict[str, str] = {}
        # PostgreSQL: Sign batches run on the event loop through async psycopg.
        self.aio = (AsyncPgBatchIO(conninfo(app.db.engine.url.render_as_string(hide_password=False)))
                    if app.db.is_postgres else None)
        self.batcher = SignBatcher(self._commit, max_batch=app.settings.sign_batch_max,
                                   in_flight=app.settings.sign_batches_in_flight)
        # MPP session vouchers: one batch at a time per channel (and actor: one audit event each).
        self.vouchers: ChannelBatchers[SignResult | TellerError | None] = ChannelBatchers(
            self._vouchers, max_batch=app.settings.sign_batch_max)

    async def _vouchers(self, calls: Sequence[Call]) -> list[SignResult | TellerError | None]:
        return await self.run(self.app.payments.vouchers, calls)

    async def _commit(self, calls: Sequence[Call]) -> list[Verdict]:
        return await self.app.payments.commit_async(calls, self.aio, self._in_thread)

    async def _in_thread(self, fn: Callable[[Sequence[Call]], list[Verdict]], calls: Sequence[Call]) -> list[Verdict]:
        return await self.run(fn, calls)

    async def close(self) -> None:
        if self.aio is not None:
            await self.aio.close()

    async def _caller(self, context: grpc.aio.ServicerContext) -> Caller:
        token = auth.bearer(context.invocation_metadata())

        def lookup() -> Caller:
            with self.app.db.read() as s:
                return auth.authenticate_tenant(s, token)

        caller = await self.run(lookup)
        if self.app.settings.tls_client_ca_file is not None:
            auth.check_certificate(context.auth_context(), f"tenant:{caller.tenant_id}")
        return caller

    async def Sign(self, request: payment_pb2.SignRequest, context: grpc.aio.ServicerContext) -> payment_pb2.SignResponse:
        token = auth.bearer(context.invocation_metadata())
        token_id, secret = auth.parse_token(token)
        tenant_id = self._token_tenants.get(token_id)
        if tenant_id is None:
            caller = await self._caller(context)
            self._token_tenants[token_id] = caller.tenant_id  # a token never changes tenant
        else:
            # The token itself is verified inside Sign's locking statement.
            caller = Caller(tenant_id, token_id)
            if self.app.settings.tls_client_ca_file is not None:
                auth.check_certificate(context.auth_context(), f"tenant:{caller.tenant_id}")
        return convert.sign_result_to_proto(await self._sign(caller, convert.sign_input_from_proto(request), secret))

    async def _sign(self, caller: Caller, sign_in: SignInput, secret: str | None = None) -> SignResult:
        """Sign and Pay alike: prepare, wait for the call's batch, finish."""
        payments = self.app.payments
        try:
            # On the event loop when everything it needs is in memory (no thread hop) ...
            call = payments.prepare(caller, sign_in, secret, cached_only=True)
        except NotCached:
            # ... else on a thread, where it may read the database or a chain.
            call = await self.run(payments.prepare, caller, sign_in, secret)
        channel = payments.voucher_channel(call)
        if channel is not None:
            for _ in range(TOP_UP_ROUNDS):
                # An MPP session on a channel the wallet has open: a voucher, under the channel's lock,
                # in one transaction with the other vouchers asked of that channel meanwhile.
                voucher = await self._voucher(channel, call)
                if voucher is not None:
                    return voucher
                if call.top_up is None:
                    await self.run(payments.open_facts, call)  # none open: the batch opens one
                    break
                # The channel has no room: topped up, the next voucher (the caller's answer) fits.
                await self._top_up(call)
            else:
                raise payments.top_up_gave_out(call)
        verdict = await self.batcher.submit(call)
        if channel is not None and channel_opening(verdict):
            # Another call opened this payee's channel a moment ago: a voucher on it, not a second deposit.
            await asyncio.sleep(OPENING_PAUSE_S)
            voucher = await self._voucher(channel, call)
            if voucher is not None:
                return voucher
        if isinstance(verdict, PushPending):
            return await self.run(payments.finish, verdict)  # broadcasts: blocking
        return payments.finish(verdict)

    async def _voucher(self, channel: Wanted, call: Call) -> SignResult | None:
        """The next voucher on ``channel`` for ``call`` (None: open or top up first), in
        one transaction with the others asked of it meanwhile; one that needs the
        deposit of a top-up still on its way to the server waits for it (polling,
        bounded: then ``top_up_in_flight``)."""
        async def ask() -> SignResult | None:
            voucher = await self.vouchers.submit((channel, call.caller.actor), call)
            if isinstance(voucher, BaseException):
                raise voucher
            return voucher

        async def in_flight(payment_id: str) -> bool:
            return await self.run(self.app.payments.top_up_in_flight, payment_id)

        async def own(payment_id: str) -> bool:
            # A retry of the call whose top-up did not reach the server: hand it over again.
            credential = await self.run(self.app.channels.own_top_up, call.caller.tenant_id, payment_id,
                                        call.req.idempotency_key, call.request_hash)
            if credential is None:
                return False
            await self.app.fetcher.check(call.req.url)
            await top_up.deliver(self.app.fetcher, call.req.url, *credential, self.app.settings.max_challenge_bytes)
            await self.run(self.app.channels.top_up_delivered, payment_id)
            return True

        return await top_up.waiting(ask, in_flight, self.app.payments.top_up_wait_s, own)

    async def _top_up(self, call: Call) -> None:
        """Top up the channel ``call.top_up`` names (a Sign call's, or a metered
        stream's in Pay): the Sign batch decides the top-up on the channel under its
        lock (once however many callers ask: the others find the room made, Revisit),
        signs and reserves it; then the server takes it, and the caller asks for its
        voucher again. Nothing is reserved for a top-up Teller may not deliver
        (outbound_allow is asked first)."""
        payments = self.app.payments
        await self.run(payments.open_facts, call)
        await self.app.fetcher.check(call.req.url)
        try:
            topped = payments.finish(await self.batcher.submit(call))
        except Revisit:
            return
        finally:
            call.top_up = None
        await top_up.deliver(self.app.fetcher, call.req.url, topped.header_name, topped.header_value,
                             self.app.settings.max_challenge_bytes)
        # Taken: vouchers may use its deposit (callers waiting for it, on any worker, go on).
        await self.run(self.app.channels.top_up_delivered, topped.payment_id)

    async def Pay(self, request: payment_pb2.PayRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[payment_pb2.PayResponse]:
        caller = await self._caller(context)
        req = pay_input(url=request.url, method=request.method, headers=[(h.name, h.value) for h in request.headers],
                        body=request.body, wallet_id=request.wallet_id, max_amount=request.max_amount,
                        idempotency_key=request.idempotency_key, protocols=list(request.protocols),
                        max_stream_amount=request.max_stream_amount)
        settings = self.app.settings
        payer = Payer(self._sign, self.app.lifecycle, self.app.fetcher, self.run, settings.max_challenge_bytes,
                      deadline_s=settings.pay_deadline_seconds, keep_bytes=settings.keep_paid_response_bytes,
                      vouchers=self.app.payments, top_up=self._top_up)
        async for part in payer.pay(caller, req):
            if isinstance(part, PayHead):
                yield convert.pay_head_to_proto(part)
            else:
                yield payment_pb2.PayResponse(body_chunk=part)

    async def RecordOutcome(self, request: payment_pb2.RecordOutcomeRequest, context: grpc.aio.ServicerContext) -> common_pb2.PaymentRecord:
        caller = await self._caller(context)
        if not request.payment_id:
            raise InvalidArgument("payment_id is required")
        payment = await self.run(self.app.lifecycle.record_outcome, request.payment_id, caller.tenant_id,
                                 request.status, tuple((h.name, h.value) for h in request.headers), request.body,
                                 caller.actor, self.app.settings.max_challenge_bytes)
        return convert.payment_to_proto(payment)

    async def GetPayment(self, request: common_pb2.GetPaymentRequest, context: grpc.aio.ServicerContext) -> common_pb2.PaymentRecord:
        caller = await self._caller(context)
        payment = await self.run(self.app.lifecycle.get, request.payment_id, caller.tenant_id)
        return convert.payment_to_proto(payment)

    async def ListWallets(self, request: payment_pb2.ListWalletsRequest, context: grpc.aio.ServicerContext) -> common_pb2.ListWalletsResponse:
        caller = await self._caller(context)
        wallets = await self.run(self.app.admin.list_wallets, caller.tenant_id)
        return common_pb2.ListWalletsResponse(wallets=[convert.wallet_to_proto(w) for w in wallets])

    async def GetSpend(self, request: payment_pb2.GetSpendRequest, context: grpc.aio.ServicerContext) -> common_pb2.SpendStatus:
        caller = await self._caller(context)
        windows = await self.run(self.app.admin.spend, caller.tenant_id, request.wallet_id)
        return convert.spend_to_proto(caller.tenant_id, windows)

    async def ListAuditEvents(self, request: common_pb2.ListAuditEventsRequest, context: grpc.aio.ServicerContext) -> common_pb2.ListAuditEventsResponse:
        caller = await self._caller(context)
        if request.filter.tenant_id and request.filter.tenant_id != caller.tenant_id:
            raise PermissionDenied("filter.tenant_id must be empty or your own tenant")
        return await self.run(_list_audit, self.app, caller.tenant_id, request)

    async def ListChannels(self, request: payment_pb2.ListChannelsRequest, context: grpc.aio.ServicerContext) -> common_pb2.ListChannelsResponse:
        caller = await self._caller(context)
        rows, token = await self.run(channel_reads.list_channels, self.app.db, caller.tenant_id, request.state,
                                     request.page_size, request.page_token)
        return convert.channels_to_proto(rows, token)

    async def GetChannelVouchers(self, request: payment_pb2.GetChannelVouchersRequest, context: grpc.aio.ServicerContext) -> common_pb2.GetChannelVouchersResponse:
        caller = await self._caller(context)
        detail = await self.run(channel_reads.channel_detail, self.app.db, caller.tenant_id, request.id,
                                request.page_size, request.page_token)
        return convert.channel_detail_to_proto(detail)

    async def CloseChannel(self, request: payment_pb2.CloseChannelRequest, context: grpc.aio.ServicerContext) -> payment_pb2.CloseChannelResponse:
        caller = await self._caller(context)
        if not request.id:
            raise InvalidArgument("id is required: the channel to close (Channel.id)")
        if request.force:
            forced = ForcedClose(self.app.db, self.app.vault, self.app.chain, self.app.payments.clock)
            got = await self.run(functools.partial(forced.request, caller.tenant_id, request.id, actor=caller.actor))
            channel = await self.run(self.app.channels.get, caller.tenant_id, got.channel)
            return payment_pb2.CloseChannelResponse(id=got.channel, cumulative=str(channel.cumulative),
                                                    tx_hash=got.tx_hash, payment_id=got.payment_id,
                                                    grace_end=got.grace_end or 0)
        url = request.url
        if not url or len(url) > 8192 or not url.isascii() or not url.isprintable():
            raise InvalidArgument("url is required: the session's URL, printable ASCII of at most 8192 characters")
        closer = Closer(self.app.channels, self.app.fetcher, self.run,
                        max_challenge_bytes=self.app.settings.max_challenge_bytes, clock=self.app.payments.clock)
        closed = await closer.close(caller, request.id, url)
        return payment_pb2.CloseChannelResponse(
            id=closed.channel, cumulative=str(closed.cumulative), status=closed.status,
            receipt_json=json.dumps(closed.receipt, sort_keys=True) if closed.receipt is not None else "")


class AdminServicer(_Base, admin_pb2_grpc.AdminServiceServicer):
    async def _operator(self, context: grpc.aio.ServicerContext) -> None:
        presented = auth.bearer(context.invocation_metadata())
        configured = self.app.settings.admin_token
        # The bootstrap credential needs no database; a named one is looked up on
        # every call, so a revocation holds on every replica at once.
        name = (auth.BOOTSTRAP if auth.is_bootstrap(presented, configured)
                else await self.run(auth.authenticate_operator, self.app.db, presented, configured))
        if self.app.settings.tls_client_ca_file is not None:
            auth.check_certificate(context.auth_context(), "operator")
        auth.OPERATOR_NAME.set(name)

    async def CreateTenant(self, request: admin_pb2.CreateTenantRequest, context: grpc.aio.ServicerContext) -> admin_pb2.Tenant:
        await self._operator(context)
        return convert.tenant_to_proto(await self.run(self.app.admin.create_tenant, request.name))

    async def DisableTenant(self, request: admin_pb2.DisableTenantRequest, context: grpc.aio.ServicerContext) -> admin_pb2.Tenant:
        await self._operator(context)
        return convert.tenant_to_proto(await self.run(self.app.admin.disable_tenant, request.tenant_id))

    async def ListTenants(self, request: admin_pb2.ListTenantsRequest, context: grpc.aio.ServicerContext) -> admin_pb2.ListTenantsResponse:
        await self._operator(context)
        tenants = await self.run(self.app.admin.list_tenants)
        return admin_pb2.ListTenantsResponse(tenants=[convert.tenant_to_proto(t) for t in tenants])

    async def EnableTenant(self, request: admin_pb2.EnableTenantRequest, context: grpc.aio.ServicerContext) -> admin_pb2.Tenant:
        await self._operator(context)
        return convert.tenant_to_proto(await self.run(self.app.admin.enable_tenant, request.tenant_id))

    async def ListTokens(self, request: admin_pb2.ListTokensRequest, context: grpc.aio.ServicerContext) -> admin_pb2.ListTokensResponse:
        await self._operator(context)
        tokens = await self.run(self.app.admin.list_tokens, request.tenant_id)
        return admin_pb2.ListTokensResponse(tokens=[convert.token_to_proto(t) for t in tokens])

    async def RotateToken(self, request: admin_pb2.RotateTokenRequest, context: grpc.aio.ServicerContext) -> admin_pb2.IssueTokenResponse:
        await self._operator(context)
        token_id, token = await self.run(self.app.admin.rotate_token, request.token_id)
        return admin_pb2.IssueTokenResponse(token_id=token_id, token=token)

    async def DisableWallet(self, request: admin_pb2.DisableWalletRequest, context: grpc.aio.ServicerContext) -> common_pb2.Wallet:
        await self._operator(context)
        return convert.wallet_to_proto(await self.run(self.app.admin.disable_wallet, request.tenant_id,
                                                      request.wallet_id))

    async def IssueToken(self, request: admin_pb2.IssueTokenRequest, context: grpc.aio.ServicerContext) -> admin_pb2.IssueTokenResponse:
        await self._operator(context)
        token_id, token = await self.run(self.app.admin.issue_token, request.tenant_id, request.description)
        return admin_pb2.IssueTokenResponse(token_id=token_id, token=token)

    async def RevokeToken(self, request: admin_pb2.RevokeTokenRequest, context: grpc.aio.ServicerContext) -> admin_pb2.RevokeTokenResponse:
        await self._operator(context)
        await self.run(self.app.admin.revoke_token, request.token_id)
        return admin_pb2.RevokeTokenResponse()

    async def CreateWallet(self, request: admin_pb2.CreateWalletRequest, context: grpc.aio.ServicerContext) -> common_pb2.Wallet:
        await self._operator(context)
        return convert.wallet_to_proto(await self.run(self.app.admin.create_wallet, request.tenant_id, request.label))

    async def ImportWallet(self, request: admin_pb2.ImportWalletRequest, context: grpc.aio.ServicerContext) -> common_pb2.Wallet:
        await self._operator(context)
        wallet = await self.run(self.app.admin.create_wallet, request.tenant_id, request.label, request.private_key)
        return convert.wallet_to_proto(wallet)

    async def ListWallets(self, request: admin_pb2.AdminListWalletsRequest, context: grpc.aio.ServicerContext) -> common_pb2.ListWalletsResponse:
        await self._operator(context)
        wallets = await self.run(self.app.admin.list_wallets, request.tenant_id)
        return common_pb2.ListWalletsResponse(wallets=[convert.wallet_to_proto(w) for w in wallets])

    async def SetPolicy(self, request: admin_pb2.SetPolicyRequest, context: grpc.aio.ServicerContext) -> admin_pb2.SpendPolicy:
        await self._operator(context)
        p = request.policy
        document, updated = await self.run(self.app.admin.set_policy, p.tenant_id, p.document_json, p.wallet_id)
        return convert.policy_to_proto(p.tenant_id, p.wallet_id, document, updated)

    async def GetPolicy(self, request: admin_pb2.GetPolicyRequest, context: grpc.aio.ServicerContext) -> admin_pb2.SpendPolicy:
        await self._operator(context)
        document, updated = await self.run(self.app.admin.get_policy, request.tenant_id, request.wallet_id)
        return convert.policy_to_proto(request.tenant_id, request.wallet_id, document, updated)

    async def SetFrozen(self, request: admin_pb2.SetFrozenRequest, context: grpc.aio.ServicerContext) -> admin_pb2.SetFrozenResponse:
        await self._operator(context)
        await self.run(self.app.admin.set_frozen, request.tenant_id, request.frozen, request.wallet_id, request.reason)
        return admin_pb2.SetFrozenResponse()

    async def GetSpend(self, request: admin_pb2.AdminGetSpendRequest, context: grpc.aio.ServicerContext) -> common_pb2.SpendStatus:
        await self._operator(context)
        windows = await self.run(self.app.admin.spend, request.tenant_id, request.wallet_id)
        return convert.spend_to_proto(request.tenant_id, windows)

    async def ListAuditEvents(self, request: common_pb2.ListAuditEventsRequest, context: grpc.aio.ServicerContext) -> common_pb2.ListAuditEventsResponse:
        await self._operator(context)
        return await self.run(_list_audit, self.app, request.filter.tenant_id or None, request)

    async def GetPayment(self, request: common_pb2.GetPaymentRequest, context: grpc.aio.ServicerContext) -> common_pb2.PaymentRecord:
        await self._operator(context)
        return convert.payment_to_proto(await self.run(self.app.lifecycle.get, request.payment_id, None))

    async def ListPayments(self, request: admin_pb2.ListPaymentsRequest, context: grpc.aio.ServicerContext) -> admin_pb2.ListPaymentsResponse:
        await self._operator(context)
        rows, token = await self.run(self.app.lifecycle.list, request.tenant_id, request.state, request.page_size,
                                     request.page_token)
        return admin_pb2.ListPaymentsResponse(payments=[convert.payment_to_proto(p) for p in rows],
                                              next_page_token=token)

    async def VoidPayment(self, request: admin_pb2.VoidPaymentRequest, context: grpc.aio.ServicerContext) -> common_pb2.PaymentRecord:
        await self._operator(context)
        payment = await self.run(self.app.lifecycle.void, request.payment_id, auth.operator_actor(),
                                 request.reason)
        return convert.payment_to_proto(payment)

    async def Reconcile(self, request: admin_pb2.ReconcileRequest, context: grpc.aio.ServicerContext) -> admin_pb2.ReconcileResponse:
        await self._operator(context)
        result = await self.run(self.app.reconciler.run_once)
        return admin_pb2.ReconcileResponse(transitions=dict(result.transitions), errors=result.errors)

    async def ListChannels(self, request: admin_pb2.AdminListChannelsRequest, context: grpc.aio.ServicerContext) -> common_pb2.ListChannelsResponse:
        await self._operator(context)
        rows, token = await self.run(channel_reads.list_channels, self.app.db, request.tenant_id, request.state,
                                     request.page_size, request.page_token)
        return convert.channels_to_proto(rows, token)

    async def GetChannelVouchers(self, request: admin_pb2.AdminGetChannelVouchersRequest, context: grpc.aio.ServicerContext) -> common_pb2.GetChannelVouchersResponse:
        await self._operator(context)
        detail = await self.run(channel_reads.channel_detail, self.app.db, request.tenant_id, request.id,
                                request.page_size, request.page_token)
        return convert.channel_detail_to_proto(detail)

    async def CloseChannel(self, request: admin_pb2.AdminCloseChannelRequest, context: grpc.aio.ServicerContext) -> admin_pb2.AdminCloseChannelResponse:
        await self._operator(context)
        if not request.tenant_id or not request.id:
            raise InvalidArgument("tenant_id and id are required: the channel to close and its tenant")
        if not request.force:
            raise InvalidArgument("force must be set: operators close channels by force only (a cooperative "
                                  "close is the tenant's PaymentService.CloseChannel, with the session's URL)")
        forced = ForcedClose(self.app.db, self.app.vault, self.app.chain, self.app.payments.clock)
        got = await self.run(functools.partial(forced.request, request.tenant_id, request.id,
                                               actor=auth.operator_actor()))
        channel = await self.run(self.app.channels.get, request.tenant_id, got.channel)
        return admin_pb2.AdminCloseChannelResponse(id=got.channel, cumulative=str(channel.cumulative),
                                                   tx_hash=got.tx_hash, payment_id=got.payment_id,
                                                   grace_end=got.grace_end or 0)

    async def CreateOperator(self, request: admin_pb2.CreateOperatorRequest, context: grpc.aio.ServicerContext) -> admin_pb2.CreateOperatorResponse:
        await self._operator(context)
        row, token = await self.run(self.app.operators.create, request.name)
        return admin_pb2.CreateOperatorResponse(operator=_operator_to_proto(row), token=token)

    async def ListOperators(self, request: admin_pb2.ListOperatorsRequest, context: grpc.aio.ServicerContext) -> admin_pb2.ListOperatorsResponse:
        await self._operator(context)
        rows = await self.run(self.app.operators.list)
        return admin_pb2.ListOperatorsResponse(operators=[_operator_to_proto(r) for r in rows])

    async def RevokeOperator(self, request: admin_pb2.RevokeOperatorRequest, context: grpc.aio.ServicerContext) -> admin_pb2.OperatorIdentity:
        await self._operator(context)
        return _operator_to_proto(await self.run(self.app.operators.revoke, request.name))


def _operator_to_proto(row: Operator) -> admin_pb2.OperatorIdentity:
    return admin_pb2.OperatorIdentity(id=row.id, name=row.name, created_at_ms=row.created_ms,
                                      created_by=row.created_by, revoked_at_ms=row.revoked_ms or 0)


__all__ = ["AdminServicer", "PaymentServicer"]
