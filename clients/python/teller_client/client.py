"""Sync and asyncio clients for Teller's PaymentService and AdminService."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import grpc

from teller_client import _codec
from teller_client._codec import HeadersLike
from teller_client._proto.teller.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    payment_pb2,
    payment_pb2_grpc,
)
from teller_client.errors import from_rpc_error
from teller_client.types import (
    AuditEvent,
    OperatorIdentity,
    PaidResponse,
    PaymentRecord,
    Policy,
    SignedPayment,
    Tenant,
    Wallet,
    WindowSpend,
)

T = TypeVar("T")


@dataclass(frozen=True)
class PaidStream:
    """``pay_stream``'s result: the response head (``body`` empty) and the body's chunks."""

    response: PaidResponse
    chunks: Iterator[bytes]


class _Sync:
    def __init__(self, target: str, token: str, *, credentials: grpc.ChannelCredentials | None = None,
                 timeout: float = 30.0, channel: grpc.Channel | None = None) -> None:
        self._channel = channel or (
            grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target)
        )
        self._metadata = (("authorization", f"Bearer {token}"),)
        self._timeout = timeout

    def _call(self, method: Callable[..., Any], request: Any) -> Any:
        try:
            return method(request, metadata=self._metadata, timeout=self._timeout)
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None

    def close(self) -> None:
        self._channel.close()

    def __enter__(self: T) -> T:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Async:
    def __init__(self, target: str, token: str, *, credentials: grpc.ChannelCredentials | None = None,
                 timeout: float = 30.0, channel: grpc.aio.Channel | None = None) -> None:
        self._channel = channel or (
            grpc.aio.secure_channel(target, credentials) if credentials else grpc.aio.insecure_channel(target)
        )
        self._metadata = (("authorization", f"Bearer {token}"),)
        self._timeout = timeout

    async def _call(self, method: Callable[..., Awaitable[Any]], request: Any) -> Any:
        try:
            return await method(request, metadata=self._metadata, timeout=self._timeout)
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self: T) -> T:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class TellerClient(_Sync):
    """For backend services, authenticated with a tenant API token."""

    def __init__(self, target: str, token: str, **kw: Any) -> None:
        super().__init__(target, token, **kw)
        self._stub = payment_pb2_grpc.PaymentServiceStub(self._channel)

    def sign(self, *, status: int, headers: HeadersLike, body: bytes, url: str, wallet_id: str,
             method: str = "GET", max_amount: int | None = None, idempotency_key: str | None = None) -> SignedPayment:
        """Hand Teller the 402 you received; get back the header to retry with."""
        req = _codec.sign_request(status=status, headers=headers, body=body, url=url, method=method,
                                  wallet_id=wallet_id, max_amount=max_amount, idempotency_key=idempotency_key)
        return _codec.signed(self._call(self._stub.Sign, req))

    def pay(self, url: str, *, wallet_id: str, method: str = "GET", headers: HeadersLike = (), body: bytes = b"",
            max_amount: int | None = None, idempotency_key: str | None = None,
            protocols: Sequence[str] = ()) -> PaidResponse:
        """Teller makes the request, pays a 402 within policy, retries once and
        returns the final response (body held in memory; see ``pay_stream``)."""
        with self.pay_stream(url, wallet_id=wallet_id, method=method, headers=headers, body=body,
                             max_amount=max_amount, idempotency_key=idempotency_key, protocols=protocols) as r:
            return replace(r.response, body=b"".join(r.chunks))

    @contextlib.contextmanager
    def pay_stream(self, url: str, *, wallet_id: str, method: str = "GET", headers: HeadersLike = (),
                   body: bytes = b"", max_amount: int | None = None, idempotency_key: str | None = None,
                   protocols: Sequence[str] = ()) -> Iterator[PaidStream]:
        """Like ``pay``, but ``.chunks`` iterates the body as it arrives."""
        req = _codec.pay_request(url=url, method=method, headers=headers, body=body, wallet_id=wallet_id,
                                 max_amount=max_amount, idempotency_key=idempotency_key, protocols=protocols)
        call = self._stub.Pay(req, metadata=self._metadata, timeout=self._timeout)
        try:
            first = next(call)
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None
        status, hdrs, record, receipt, header_name = _codec.pay_head(first.head)

        def chunks() -> Iterator[bytes]:
            try:
                for part in call:
                    yield part.body_chunk
            except grpc.RpcError as err:
                raise from_rpc_error(err) from None

        try:
            yield PaidStream(PaidResponse(status, hdrs, b"", record, receipt, header_name), chunks())
        finally:
            call.cancel()

    def record_outcome(self, payment_id: str, *, status: int, headers: HeadersLike, body: bytes = b"") -> PaymentRecord:
        """Tell Teller what the server answered to the paid retry (its receipt or refusal)."""
        req = _codec.outcome_request(payment_id, status, headers, body)
        return _codec.payment(self._call(self._stub.RecordOutcome, req))

    def get_payment(self, payment_id: str) -> PaymentRecord:
        return _codec.payment(self._call(self._stub.GetPayment, common_pb2.GetPaymentRequest(payment_id=payment_id)))

    def list_wallets(self) -> list[Wallet]:
        return _codec.wallets(self._call(self._stub.ListWallets, payment_pb2.ListWalletsRequest()))

    def spend(self, wallet_id: str = "") -> list[WindowSpend]:
        return _codec.spend(self._call(self._stub.GetSpend, payment_pb2.GetSpendRequest(wallet_id=wallet_id)))

    def audit_events(self, **filters: Any) -> tuple[list[AuditEvent], str]:
        return _codec.audit_page(self._call(self._stub.ListAuditEvents, _codec.audit_request(**filters)))


class AsyncTellerClient(_Async):
    """asyncio twin of TellerClient."""

    def __init__(self, target: str, token: str, **kw: Any) -> None:
        super().__init__(target, token, **kw)
        self._stub = payment_pb2_grpc.PaymentServiceStub(self._channel)

    async def sign(self, *, status: int, headers: HeadersLike, body: bytes, url: str, wallet_id: str,
                   method: str = "GET", max_amount: int | None = None,
                   idempotency_key: str | None = None) -> SignedPayment:
        req = _codec.sign_request(status=status, headers=headers, body=body, url=url, method=method,
                                  wallet_id=wallet_id, max_amount=max_amount, idempotency_key=idempotency_key)
        return _codec.signed(await self._call(self._stub.Sign, req))

    async def record_outcome(self, payment_id: str, *, status: int, headers: HeadersLike,
                             body: bytes = b"") -> PaymentRecord:
        req = _codec.outcome_request(payment_id, status, headers, body)
        return _codec.payment(await self._call(self._stub.RecordOutcome, req))

    async def get_payment(self, payment_id: str) -> PaymentRecord:
        req = common_pb2.GetPaymentRequest(payment_id=payment_id)
        return _codec.payment(await self._call(self._stub.GetPayment, req))

    async def list_wallets(self) -> list[Wallet]:
        return _codec.wallets(await self._call(self._stub.ListWallets, payment_pb2.ListWalletsRequest()))

    async def spend(self, wallet_id: str = "") -> list[WindowSpend]:
        return _codec.spend(await self._call(self._stub.GetSpend, payment_pb2.GetSpendRequest(wallet_id=wallet_id)))

    async def audit_events(self, **filters: Any) -> tuple[list[AuditEvent], str]:
        return _codec.audit_page(await self._call(self._stub.ListAuditEvents, _codec.audit_request(**filters)))


class AdminClient(_Sync):
    """For operators, authenticated with the operator credential."""

    def __init__(self, target: str, token: str, **kw: Any) -> None:
        super().__init__(target, token, **kw)
        self._stub = admin_pb2_grpc.AdminServiceStub(self._channel)

    def create_tenant(self, name: str) -> Tenant:
        return _codec.tenant(self._call(self._stub.CreateTenant, admin_pb2.CreateTenantRequest(name=name)))

    def disable_tenant(self, tenant_id: str) -> Tenant:
        return _codec.tenant(self._call(self._stub.DisableTenant, admin_pb2.DisableTenantRequest(tenant_id=tenant_id)))

    def list_tenants(self) -> list[Tenant]:
        r = self._call(self._stub.ListTenants, admin_pb2.ListTenantsRequest())
        return [_codec.tenant(t) for t in r.tenants]

    def issue_token(self, tenant_id: str, description: str = "") -> tuple[str, str]:
        """Returns (token id, bearer token). The token is shown only once."""
        r = self._call(self._stub.IssueToken, admin_pb2.IssueTokenRequest(tenant_id=tenant_id, description=description))
        return r.token_id, r.token

    def revoke_token(self, token_id: str) -> None:
        self._call(self._stub.RevokeToken, admin_pb2.RevokeTokenRequest(token_id=token_id))

    def create_operator(self, name: str) -> tuple[OperatorIdentity, str]:
        """A named operator credential: (the operator, its credential, shown only once)."""
        r = self._call(self._stub.CreateOperator, admin_pb2.CreateOperatorRequest(name=name))
        return _operator(r.operator), r.token

    def list_operators(self) -> list[OperatorIdentity]:
        r = self._call(self._stub.ListOperators, admin_pb2.ListOperatorsRequest())
        return [_operator(o) for o in r.operators]

    def revoke_operator(self, name: str) -> OperatorIdentity:
        return _operator(self._call(self._stub.RevokeOperator, admin_pb2.RevokeOperatorRequest(name=name)))

    def create_wallet(self, tenant_id: str, label: str = "") -> Wallet:
        return _codec.wallet(self._call(self._stub.CreateWallet,
                                        admin_pb2.CreateWalletRequest(tenant_id=tenant_id, label=label)))

    def import_wallet(self, tenant_id: str, private_key: str, label: str = "") -> Wallet:
        req = admin_pb2.ImportWalletRequest(tenant_id=tenant_id, label=label, private_key=private_key)
        return _codec.wallet(self._call(self._stub.ImportWallet, req))

    def list_wallets(self, tenant_id: str) -> list[Wallet]:
        return _codec.wallets(self._call(self._stub.ListWallets, admin_pb2.AdminListWalletsRequest(tenant_id=tenant_id)))

    def set_policy(self, tenant_id: str, policy: Policy | Mapping[str, Any] | str,
                   wallet_id: str = "") -> dict[str, Any]:
        """Set the tenant's (or one wallet's) policy; returns the stored canonical document."""
        return _codec.policy_document(self._call(self._stub.SetPolicy,
                                                 _codec.policy_request(tenant_id, policy, wallet_id)))

    def get_policy(self, tenant_id: str, wallet_id: str = "") -> dict[str, Any]:
        req = admin_pb2.GetPolicyRequest(tenant_id=tenant_id, wallet_id=wallet_id)
        return _codec.policy_document(self._call(self._stub.GetPolicy, req))

    def set_frozen(self, tenant_id: str, frozen: bool, *, wallet_id: str = "", reason: str = "") -> None:
        """Freeze (or unfreeze) a tenant or one of its wallets on every replica."""
        req = admin_pb2.SetFrozenRequest(tenant_id=tenant_id, wallet_id=wallet_id, frozen=frozen, reason=reason)
        self._call(self._stub.SetFrozen, req)

    def spend(self, tenant_id: str, wallet_id: str = "") -> list[WindowSpend]:
        req = admin_pb2.AdminGetSpendRequest(tenant_id=tenant_id, wallet_id=wallet_id)
        return _codec.spend(self._call(self._stub.GetSpend, req))

    def audit_events(self, **filters: Any) -> tuple[list[AuditEvent], str]:
        return _codec.audit_page(self._call(self._stub.ListAuditEvents, _codec.audit_request(**filters)))

    def get_payment(self, payment_id: str) -> PaymentRecord:
        return _codec.payment(self._call(self._stub.GetPayment, common_pb2.GetPaymentRequest(payment_id=payment_id)))

    def list_payments(self, tenant_id: str, *, state: str = "", page_size: int = 100,
                      page_token: str = "") -> tuple[list[PaymentRecord], str]:
        r = self._call(self._stub.ListPayments, admin_pb2.ListPaymentsRequest(
            tenant_id=tenant_id, state=state, page_size=page_size, page_token=page_token))
        return [_codec.payment(p) for p in r.payments], r.next_page_token

    def void_payment(self, payment_id: str, reason: str = "") -> PaymentRecord:
        """Cancel an unused authorization on chain and release its budget."""
        req = admin_pb2.VoidPaymentRequest(payment_id=payment_id, reason=reason)
        return _codec.payment(self._call(self._stub.VoidPayment, req))

    def reconcile(self) -> tuple[dict[str, int], list[str]]:
        """Run one reconciler pass now; returns transitions by state and errors."""
        r = self._call(self._stub.Reconcile, admin_pb2.ReconcileRequest())
        return dict(r.transitions), list(r.errors)


def _operator(o: Any) -> OperatorIdentity:
    return OperatorIdentity(id=o.id, name=o.name, created_at_ms=o.created_at_ms, created_by=o.created_by,
                            revoked_at_ms=o.revoked_at_ms)
