"""Sync and asyncio clients for Teller's PaymentService and AdminService."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
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
from teller_client.errors import DeadlineExceeded, Internal, TellerError, from_rpc_error
from teller_client.types import (
    AuditEvent,
    Channel,
    ChannelVouchers,
    ClosedChannel,
    OperatorIdentity,
    PaidResponse,
    PaymentRecord,
    Policy,
    SignedPayment,
    Tenant,
    TokenInfo,
    Wallet,
    WindowSpend,
)

T = TypeVar("T")

#: Calls that are safe to repeat: reads, RecordOutcome (the state changes it makes
#: are guarded and happen once), and Sign, which always carries an idempotency key
#: (the caller's, or one made per call: a repeat returns the payment already
#: made). Pay is never repeated by the client: it would fetch the URL again.
IDEMPOTENT = frozenset({"GetPayment", "ListWallets", "GetSpend", "ListAuditEvents", "RecordOutcome",
                        "ListTenants", "GetPolicy", "ListPayments", "ListChannels", "GetChannelVouchers"})

# Reconnect promptly to a Teller that restarts; a call never waits for a
# connection beyond its own deadline (wait_for_ready is False).
_CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 5000),
    ("grpc.keepalive_time_ms", 30000),
    ("grpc.keepalive_timeout_ms", 10000),
)


@dataclass(frozen=True)
class RetryPolicy:
    """How idempotent calls (``IDEMPOTENT``, and ``sign``) are repeated when
    Teller is unreachable or stopped before answering. Retries stay inside the
    call's deadline: the deadline bounds the whole call, retries included."""

    #: Attempts in all, the first included (1 turns retries off).
    max_attempts: int = 4
    #: Pause before the first retry, in seconds; doubled each time up to ``max_backoff``.
    initial_backoff: float = 0.1
    max_backoff: float = 2.0
    #: Status codes worth another attempt: the call did not reach a Teller that could
    #: answer (UNAVAILABLE), or the worker stopped while holding it (CANCELLED: a
    #: gRPC server that shuts down cancels the calls it has received but not yet
    #: handed to a handler, grpc/grpc#41785; the client never cancels a unary call
    #: itself, so a CANCELLED always comes from the other side).
    retry_on: frozenset[grpc.StatusCode] = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})

    def backoffs(self) -> Iterator[float]:
        pause = self.initial_backoff
        for _ in range(self.max_attempts - 1):
            yield pause
            pause = min(pause * 2, self.max_backoff)


NO_RETRY = RetryPolicy(max_attempts=1)


@dataclass(frozen=True)
class PaidStream:
    """``pay_stream``'s result: the response head (``body`` empty) and the body's chunks."""

    response: PaidResponse
    chunks: Iterator[bytes]


@dataclass(frozen=True)
class AsyncPaidStream:
    """The asyncio ``pay_stream``'s result: the head and an async iterator of chunks."""

    response: PaidResponse
    chunks: AsyncIterator[bytes]


def call_key(idempotency_key: str | None) -> str:
    """The key a ``sign`` call is sent with: the caller's, or a new one for this
    call alone, reused by the client's own retries of it. So a retried call never
    pays twice, while two calls are two payments."""
    return idempotency_key or "call_" + secrets.token_hex(16)


def _deadline_error(what: str, timeout: float) -> DeadlineExceeded:
    return DeadlineExceeded(f"{what}: no answer from Teller within {timeout:g} s")


class _Base:
    def __init__(self, target: str, token: str, *, timeout: float, pay_timeout: float, retry: RetryPolicy) -> None:
        if timeout <= 0 or pay_timeout <= 0:
            raise ValueError("timeout and pay_timeout must be positive (seconds)")
        self._target = target
        self._metadata = (("authorization", f"Bearer {token}"),)
        self._timeout = timeout
        self._pay_timeout = pay_timeout
        self._retry = retry

    @property
    def timeout(self) -> float:
        """The default deadline of a call, in seconds."""
        return self._timeout

    def _plan(self, name: str, timeout: float | None, idempotent: bool | None) -> tuple[float, float, Iterator[float]]:
        budget = self._timeout if timeout is None else timeout
        if budget <= 0:
            raise ValueError("timeout must be positive (seconds)")
        retryable = name in IDEMPOTENT if idempotent is None else idempotent
        backoffs = self._retry.backoffs() if retryable else iter(())
        return budget, time.monotonic() + budget, backoffs

    def _pause_or_raise(self, error: TellerError, deadline: float, backoffs: Iterator[float]) -> float:
        """How long to wait before trying ``error``'s call again; raises ``error``
        when the call may not be retried, or no retry fits before ``deadline``.
        One rule for the sync and the async client."""
        pause = next(backoffs, None) if error.code in self._retry.retry_on else None
        if pause is None or time.monotonic() + pause >= deadline:
            raise error
        return pause


class _Sync(_Base):
    def __init__(self, target: str, token: str, *, credentials: grpc.ChannelCredentials | None = None,
                 timeout: float = 10.0, pay_timeout: float = 120.0, retry: RetryPolicy = RetryPolicy(),
                 channel: grpc.Channel | None = None) -> None:
        super().__init__(target, token, timeout=timeout, pay_timeout=pay_timeout, retry=retry)
        self._channel = channel or (
            grpc.secure_channel(target, credentials, options=_CHANNEL_OPTIONS) if credentials
            else grpc.insecure_channel(target, options=_CHANNEL_OPTIONS)
        )

    _stub: Any

    def _call(self, name: str, request: Any, *, timeout: float | None = None,
              idempotent: bool | None = None) -> Any:
        method = getattr(self._stub, name)
        budget, deadline, backoffs = self._plan(name, timeout, idempotent)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _deadline_error(name, budget)
            try:
                return method(request, metadata=self._metadata, timeout=remaining, wait_for_ready=False)
            except grpc.RpcError as err:
                pause = self._pause_or_raise(from_rpc_error(err), deadline, backoffs)
            time.sleep(pause)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self: T) -> T:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Async(_Base):
    def __init__(self, target: str, token: str, *, credentials: grpc.ChannelCredentials | None = None,
                 timeout: float = 10.0, pay_timeout: float = 120.0, retry: RetryPolicy = RetryPolicy(),
                 channel: grpc.aio.Channel | None = None) -> None:
        super().__init__(target, token, timeout=timeout, pay_timeout=pay_timeout, retry=retry)
        self._channel = channel or (
            grpc.aio.secure_channel(target, credentials, options=_CHANNEL_OPTIONS) if credentials
            else grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS)
        )

    _stub: Any

    async def _call(self, name: str, request: Any, *, timeout: float | None = None,
                    idempotent: bool | None = None) -> Any:
        method = getattr(self._stub, name)
        budget, deadline, backoffs = self._plan(name, timeout, idempotent)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _deadline_error(name, budget)
            try:
                return await method(request, metadata=self._metadata, timeout=remaining, wait_for_ready=False)
            except grpc.RpcError as err:
                pause = self._pause_or_raise(from_rpc_error(err), deadline, backoffs)
            await asyncio.sleep(pause)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self: T) -> T:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class TellerClient(_Sync):
    """For backend services, authenticated with a tenant API token.

    ``timeout`` (seconds) is every call's default deadline, retries included;
    each method takes ``timeout=`` to override it. ``pay_timeout`` bounds how
    long ``pay``/``pay_stream`` wait for the response head (Teller fetches the
    URL, pays and retries meanwhile); the body is read without a deadline
    unless ``stream_timeout`` is given. ``retry`` applies to idempotent calls
    only (see ``IDEMPOTENT``)."""

    def __init__(self, target: str, token: str, **kw: Any) -> None:
        super().__init__(target, token, **kw)
        self._stub = payment_pb2_grpc.PaymentServiceStub(self._channel)

    def sign(self, *, status: int, headers: HeadersLike, body: bytes, url: str, wallet_id: str,
             method: str = "GET", max_amount: int | None = None, idempotency_key: str | None = None,
             timeout: float | None = None) -> SignedPayment:
        """Hand Teller the 402 you received; get back the headers to retry with
        (``signed.retry_headers()``). The call is retried when Teller is
        unreachable or stops before answering, under ``idempotency_key`` (or a
        key made for this call, see ``call_key``): a repeat for the same purchase
        returns the same payment."""
        req = _codec.sign_request(status=status, headers=headers, body=body, url=url, method=method,
                                  wallet_id=wallet_id, max_amount=max_amount,
                                  idempotency_key=call_key(idempotency_key))
        return _codec.signed(self._call("Sign", req, timeout=timeout, idempotent=True))

    def pay(self, url: str, *, wallet_id: str, method: str = "GET", headers: HeadersLike = (), body: bytes = b"",
            max_amount: int | None = None, idempotency_key: str | None = None,
            protocols: Sequence[str] = (), timeout: float | None = None,
            stream_timeout: float | None = None, max_stream_amount: int | None = None) -> PaidResponse:
        """Teller makes the request, pays a 402 within policy, retries once and
        returns the final response (body held in memory; see ``pay_stream``)."""
        with self.pay_stream(url, wallet_id=wallet_id, method=method, headers=headers, body=body,
                             max_amount=max_amount, idempotency_key=idempotency_key, protocols=protocols,
                             timeout=timeout, stream_timeout=stream_timeout,
                             max_stream_amount=max_stream_amount) as r:
            return replace(r.response, body=b"".join(r.chunks))

    @contextlib.contextmanager
    def pay_stream(self, url: str, *, wallet_id: str, method: str = "GET", headers: HeadersLike = (),
                   body: bytes = b"", max_amount: int | None = None, idempotency_key: str | None = None,
                   protocols: Sequence[str] = (), timeout: float | None = None,
                   stream_timeout: float | None = None,
                   max_stream_amount: int | None = None) -> Iterator[PaidStream]:
        """Like ``pay``, but ``.chunks`` iterates the body as it arrives.
        ``timeout`` bounds the wait for the head (default ``pay_timeout``),
        ``stream_timeout`` the whole call (default: none). ``max_stream_amount``
        caps what the vouchers of a metered MPP session stream add in this call:
        past it the stream ends with ``LimitExceeded`` (reason ``stream_cap``),
        after every chunk paid for so far."""
        req = _codec.pay_request(url=url, method=method, headers=headers, body=body, wallet_id=wallet_id,
                                 max_amount=max_amount, idempotency_key=idempotency_key, protocols=protocols,
                                 max_stream_amount=max_stream_amount)
        head_timeout = self._pay_timeout if timeout is None else timeout
        call = self._stub.Pay(req, metadata=self._metadata, timeout=stream_timeout, wait_for_ready=False)
        # A stream's deadline covers its whole body; the head has its own, enforced here.
        timer = threading.Timer(head_timeout, call.cancel)
        timer.daemon = True
        timer.start()
        try:
            first = next(call)
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.CANCELLED and not timer.is_alive():
                raise _deadline_error("Pay", head_timeout) from None
            raise from_rpc_error(err) from None
        finally:
            timer.cancel()
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

    def record_outcome(self, payment_id: str, *, status: int, headers: HeadersLike, body: bytes = b"",
                       timeout: float | None = None) -> PaymentRecord:
        """Tell Teller what the server answered to the paid retry (its receipt or refusal)."""
        req = _codec.outcome_request(payment_id, status, headers, body)
        return _codec.payment(self._call("RecordOutcome", req, timeout=timeout))

    def get_payment(self, payment_id: str, *, timeout: float | None = None) -> PaymentRecord:
        req = common_pb2.GetPaymentRequest(payment_id=payment_id)
        return _codec.payment(self._call("GetPayment", req, timeout=timeout))

    def list_wallets(self, *, timeout: float | None = None) -> list[Wallet]:
        """The tenant's wallets: their ``id`` is the ``wallet_id`` every payment names."""
        return _codec.wallets(self._call("ListWallets", payment_pb2.ListWalletsRequest(), timeout=timeout))

    def spend(self, wallet_id: str = "", *, timeout: float | None = None) -> list[WindowSpend]:
        req = payment_pb2.GetSpendRequest(wallet_id=wallet_id)
        return _codec.spend(self._call("GetSpend", req, timeout=timeout))

    def audit_events(self, *, timeout: float | None = None, **filters: Any) -> tuple[list[AuditEvent], str]:
        return _codec.audit_page(self._call("ListAuditEvents", _codec.audit_request(**filters),
                                            timeout=timeout))

    def list_channels(self, *, state: str = "", page_size: int = 100, page_token: str = "",
                      timeout: float | None = None) -> tuple[list[Channel], str]:
        """The tenant's MPP session channels, newest first (``state``: open,
        closing or closed), and the token of the next page ("" at the end)."""
        req = payment_pb2.ListChannelsRequest(state=state, page_size=page_size, page_token=page_token)
        return _codec.channel_page(self._call("ListChannels", req, timeout=timeout))

    def get_channel(self, channel: str, *, page_size: int = 100, page_token: str = "",
                    timeout: float | None = None) -> ChannelVouchers:
        """One of the tenant's channels (``channel`` is its ``Channel.id``) and a
        page of its vouchers, highest total first."""
        req = payment_pb2.GetChannelVouchersRequest(id=channel, page_size=page_size, page_token=page_token)
        return _codec.channel_vouchers(self._call("GetChannelVouchers", req, timeout=timeout))

    def close_channel(self, channel: str, url: str = "", *, force: bool = False,
                      timeout: float | None = None) -> ClosedChannel:
        """Close a session channel cooperatively at ``url`` (the session's URL):
        Teller sends the server the final voucher; the refund of the rest of the
        deposit is released from the budget once the chain shows it. Waits up to
        ``pay_timeout`` by default (the server closes on chain before answering).

        ``force=True`` closes without the server (``url`` is not needed): the
        wallet sends the escrow's ``requestClose`` (its fee reserved like a
        payment's), and after ``grace_end`` the reconciler sends ``withdraw``."""
        req = payment_pb2.CloseChannelRequest(id=channel, url=url, force=force)
        r = self._call("CloseChannel", req, timeout=self._pay_timeout if timeout is None else timeout)
        return ClosedChannel(r.id, int(r.cumulative), r.status, json.loads(r.receipt_json) if r.receipt_json else None,
                             r.tx_hash, r.payment_id, r.grace_end or None)


class AsyncTellerClient(_Async):
    """asyncio twin of TellerClient (same deadlines, retries and errors)."""

    def __init__(self, target: str, token: str, **kw: Any) -> None:
        super().__init__(target, token, **kw)
        self._stub = payment_pb2_grpc.PaymentServiceStub(self._channel)

    async def sign(self, *, status: int, headers: HeadersLike, body: bytes, url: str, wallet_id: str,
                   method: str = "GET", max_amount: int | None = None,
                   idempotency_key: str | None = None, timeout: float | None = None) -> SignedPayment:
        req = _codec.sign_request(status=status, headers=headers, body=body, url=url, method=method,
                                  wallet_id=wallet_id, max_amount=max_amount,
                                  idempotency_key=call_key(idempotency_key))
        return _codec.signed(await self._call("Sign", req, timeout=timeout, idempotent=True))

    async def pay(self, url: str, *, wallet_id: str, method: str = "GET", headers: HeadersLike = (),
                  body: bytes = b"", max_amount: int | None = None, idempotency_key: str | None = None,
                  protocols: Sequence[str] = (), timeout: float | None = None,
                  stream_timeout: float | None = None, max_stream_amount: int | None = None) -> PaidResponse:
        """See ``TellerClient.pay``."""
        async with self.pay_stream(url, wallet_id=wallet_id, method=method, headers=headers, body=body,
                                   max_amount=max_amount, idempotency_key=idempotency_key, protocols=protocols,
                                   timeout=timeout, stream_timeout=stream_timeout,
                             max_stream_amount=max_stream_amount) as r:
            return replace(r.response, body=b"".join([c async for c in r.chunks]))

    @contextlib.asynccontextmanager
    async def pay_stream(self, url: str, *, wallet_id: str, method: str = "GET", headers: HeadersLike = (),
                         body: bytes = b"", max_amount: int | None = None, idempotency_key: str | None = None,
                         protocols: Sequence[str] = (), timeout: float | None = None,
                         stream_timeout: float | None = None,
                         max_stream_amount: int | None = None) -> AsyncIterator[AsyncPaidStream]:
        """See ``TellerClient.pay_stream``; ``.chunks`` is an async iterator."""
        req = _codec.pay_request(url=url, method=method, headers=headers, body=body, wallet_id=wallet_id,
                                 max_amount=max_amount, idempotency_key=idempotency_key, protocols=protocols,
                                 max_stream_amount=max_stream_amount)
        head_timeout = self._pay_timeout if timeout is None else timeout
        call = self._stub.Pay(req, metadata=self._metadata, timeout=stream_timeout, wait_for_ready=False)
        try:
            try:
                first = await asyncio.wait_for(call.read(), head_timeout)
            except asyncio.TimeoutError:  # noqa: UP041 - the builtin only from Python 3.11
                raise _deadline_error("Pay", head_timeout) from None
            except grpc.RpcError as err:
                raise from_rpc_error(err) from None
            if first is grpc.aio.EOF:
                raise Internal("Pay ended without a response head")
            status, hdrs, record, receipt, header_name = _codec.pay_head(first.head)

            async def chunks() -> AsyncIterator[bytes]:
                try:
                    while (part := await call.read()) is not grpc.aio.EOF:
                        yield part.body_chunk
                except grpc.RpcError as err:
                    raise from_rpc_error(err) from None

            yield AsyncPaidStream(PaidResponse(status, hdrs, b"", record, receipt, header_name), chunks())
        finally:
            call.cancel()

    async def record_outcome(self, payment_id: str, *, status: int, headers: HeadersLike,
                             body: bytes = b"", timeout: float | None = None) -> PaymentRecord:
        req = _codec.outcome_request(payment_id, status, headers, body)
        return _codec.payment(await self._call("RecordOutcome", req, timeout=timeout))

    async def get_payment(self, payment_id: str, *, timeout: float | None = None) -> PaymentRecord:
        req = common_pb2.GetPaymentRequest(payment_id=payment_id)
        return _codec.payment(await self._call("GetPayment", req, timeout=timeout))

    async def list_wallets(self, *, timeout: float | None = None) -> list[Wallet]:
        return _codec.wallets(await self._call("ListWallets", payment_pb2.ListWalletsRequest(),
                                               timeout=timeout))

    async def spend(self, wallet_id: str = "", *, timeout: float | None = None) -> list[WindowSpend]:
        req = payment_pb2.GetSpendRequest(wallet_id=wallet_id)
        return _codec.spend(await self._call("GetSpend", req, timeout=timeout))

    async def audit_events(self, *, timeout: float | None = None, **filters: Any) -> tuple[list[AuditEvent], str]:
        return _codec.audit_page(await self._call("ListAuditEvents", _codec.audit_request(**filters),
                                                  timeout=timeout))

    async def list_channels(self, *, state: str = "", page_size: int = 100, page_token: str = "",
                            timeout: float | None = None) -> tuple[list[Channel], str]:
        """See ``TellerClient.list_channels``."""
        req = payment_pb2.ListChannelsRequest(state=state, page_size=page_size, page_token=page_token)
        return _codec.channel_page(await self._call("ListChannels", req, timeout=timeout))

    async def get_channel(self, channel: str, *, page_size: int = 100, page_token: str = "",
                          timeout: float | None = None) -> ChannelVouchers:
        """See ``TellerClient.get_channel``."""
        req = payment_pb2.GetChannelVouchersRequest(id=channel, page_size=page_size, page_token=page_token)
        return _codec.channel_vouchers(await self._call("GetChannelVouchers", req, timeout=timeout))


class AdminClient(_Sync):
    """For operators, authenticated with the operator credential."""

    def __init__(self, target: str, token: str, **kw: Any) -> None:
        super().__init__(target, token, **kw)
        self._stub = admin_pb2_grpc.AdminServiceStub(self._channel)

    def create_tenant(self, name: str) -> Tenant:
        return _codec.tenant(self._call("CreateTenant", admin_pb2.CreateTenantRequest(name=name)))

    def disable_tenant(self, tenant_id: str) -> Tenant:
        return _codec.tenant(self._call("DisableTenant", admin_pb2.DisableTenantRequest(tenant_id=tenant_id)))

    def enable_tenant(self, tenant_id: str) -> Tenant:
        return _codec.tenant(self._call("EnableTenant", admin_pb2.EnableTenantRequest(tenant_id=tenant_id)))

    def list_tenants(self) -> list[Tenant]:
        r = self._call("ListTenants", admin_pb2.ListTenantsRequest())
        return [_codec.tenant(t) for t in r.tenants]

    def issue_token(self, tenant_id: str, description: str = "") -> tuple[str, str]:
        """Returns (token id, bearer token). The token is shown only once."""
        r = self._call("IssueToken", admin_pb2.IssueTokenRequest(tenant_id=tenant_id, description=description))
        return r.token_id, r.token

    def revoke_token(self, token_id: str) -> None:
        self._call("RevokeToken", admin_pb2.RevokeTokenRequest(token_id=token_id))

    def list_tokens(self, tenant_id: str) -> list[TokenInfo]:
        r = self._call("ListTokens", admin_pb2.ListTokensRequest(tenant_id=tenant_id))
        return [_codec.token_info(t) for t in r.tokens]

    def rotate_token(self, token_id: str) -> tuple[str, str]:
        """Revoke a token and issue its replacement (same tenant and description)
        at once; returns (new token id, bearer token), shown only once."""
        r = self._call("RotateToken", admin_pb2.RotateTokenRequest(token_id=token_id))
        return r.token_id, r.token

    def create_operator(self, name: str) -> tuple[OperatorIdentity, str]:
        """A named operator credential: (the operator, its credential, shown only once)."""
        r = self._call("CreateOperator", admin_pb2.CreateOperatorRequest(name=name))
        return _operator(r.operator), r.token

    def list_operators(self) -> list[OperatorIdentity]:
        r = self._call("ListOperators", admin_pb2.ListOperatorsRequest())
        return [_operator(o) for o in r.operators]

    def revoke_operator(self, name: str) -> OperatorIdentity:
        return _operator(self._call("RevokeOperator", admin_pb2.RevokeOperatorRequest(name=name)))

    def create_wallet(self, tenant_id: str, label: str = "") -> Wallet:
        return _codec.wallet(self._call("CreateWallet",
                                        admin_pb2.CreateWalletRequest(tenant_id=tenant_id, label=label)))

    def import_wallet(self, tenant_id: str, private_key: str, label: str = "") -> Wallet:
        req = admin_pb2.ImportWalletRequest(tenant_id=tenant_id, label=label, private_key=private_key)
        return _codec.wallet(self._call("ImportWallet", req))

    def list_wallets(self, tenant_id: str) -> list[Wallet]:
        return _codec.wallets(self._call("ListWallets", admin_pb2.AdminListWalletsRequest(tenant_id=tenant_id)))

    def disable_wallet(self, tenant_id: str, wallet_id: str) -> Wallet:
        req = admin_pb2.DisableWalletRequest(tenant_id=tenant_id, wallet_id=wallet_id)
        return _codec.wallet(self._call("DisableWallet", req))

    def set_policy(self, tenant_id: str, policy: Policy | Mapping[str, Any] | str,
                   wallet_id: str = "") -> dict[str, Any]:
        """Set the tenant's (or one wallet's) policy; returns the stored canonical document."""
        return _codec.policy_document(self._call("SetPolicy",
                                                 _codec.policy_request(tenant_id, policy, wallet_id)))

    def get_policy(self, tenant_id: str, wallet_id: str = "") -> dict[str, Any]:
        req = admin_pb2.GetPolicyRequest(tenant_id=tenant_id, wallet_id=wallet_id)
        return _codec.policy_document(self._call("GetPolicy", req))

    def set_frozen(self, tenant_id: str, frozen: bool, *, wallet_id: str = "", reason: str = "") -> None:
        """Freeze (or unfreeze) a tenant or one of its wallets on every replica."""
        req = admin_pb2.SetFrozenRequest(tenant_id=tenant_id, wallet_id=wallet_id, frozen=frozen, reason=reason)
        self._call("SetFrozen", req)

    def spend(self, tenant_id: str, wallet_id: str = "") -> list[WindowSpend]:
        req = admin_pb2.AdminGetSpendRequest(tenant_id=tenant_id, wallet_id=wallet_id)
        return _codec.spend(self._call("GetSpend", req))

    def audit_events(self, **filters: Any) -> tuple[list[AuditEvent], str]:
        return _codec.audit_page(self._call("ListAuditEvents", _codec.audit_request(**filters)))

    def get_payment(self, payment_id: str) -> PaymentRecord:
        return _codec.payment(self._call("GetPayment", common_pb2.GetPaymentRequest(payment_id=payment_id)))

    def list_payments(self, tenant_id: str, *, state: str = "", page_size: int = 100,
                      page_token: str = "") -> tuple[list[PaymentRecord], str]:
        r = self._call("ListPayments", admin_pb2.ListPaymentsRequest(
            tenant_id=tenant_id, state=state, page_size=page_size, page_token=page_token))
        return [_codec.payment(p) for p in r.payments], r.next_page_token

    def void_payment(self, payment_id: str, reason: str = "") -> PaymentRecord:
        """Cancel an unused authorization on chain and release its budget."""
        req = admin_pb2.VoidPaymentRequest(payment_id=payment_id, reason=reason)
        return _codec.payment(self._call("VoidPayment", req))

    def list_channels(self, tenant_id: str, *, state: str = "", page_size: int = 100,
                      page_token: str = "") -> tuple[list[Channel], str]:
        """A tenant's MPP session channels, newest first, and the next page's token."""
        r = self._call("ListChannels", admin_pb2.AdminListChannelsRequest(
            tenant_id=tenant_id, state=state, page_size=page_size, page_token=page_token))
        return _codec.channel_page(r)

    def get_channel(self, tenant_id: str, channel: str, *, page_size: int = 100,
                    page_token: str = "") -> ChannelVouchers:
        """One of a tenant's channels and a page of its vouchers, highest total first."""
        r = self._call("GetChannelVouchers", admin_pb2.AdminGetChannelVouchersRequest(
            tenant_id=tenant_id, id=channel, page_size=page_size, page_token=page_token))
        return _codec.channel_vouchers(r)

    def close_channel(self, tenant_id: str, channel: str, *, force: bool = True,
                      timeout: float | None = None) -> ClosedChannel:
        """Close one of a tenant's channels by force (operators close no other way):
        the wallet sends ``requestClose``; the reconciler withdraws after ``grace_end``."""
        r = self._call("CloseChannel", admin_pb2.AdminCloseChannelRequest(tenant_id=tenant_id, id=channel,
                                                                          force=force), timeout=timeout)
        return ClosedChannel(r.id, int(r.cumulative), 0, None, r.tx_hash, r.payment_id, r.grace_end or None)

    def reconcile(self) -> tuple[dict[str, int], list[str]]:
        """Run one reconciler pass now; returns transitions by state and errors."""
        r = self._call("Reconcile", admin_pb2.ReconcileRequest())
        return dict(r.transitions), list(r.errors)


def _operator(o: Any) -> OperatorIdentity:
    return OperatorIdentity(id=o.id, name=o.name, created_at_ms=o.created_at_ms, created_by=o.created_by,
                            revoked_at_ms=o.revoked_at_ms)
