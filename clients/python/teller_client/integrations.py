"""One-line 402 handling for a service's own HTTP client.

``httpx``: ``httpx.Client(transport=TellerTransport(teller, wallet_id))`` (and
``AsyncTellerTransport`` for ``httpx.AsyncClient``); ``requests``:
``session.mount("https://", TellerAdapter(teller, wallet_id))``. On a 402 they
ask Teller's ``Sign`` for the proof, retry once with it, tell Teller what the
server answered, and attach a ``PaymentInfo`` to the response
(``payment_info(response)``). A policy denial raises the typed
``teller_client`` error (``LimitExceeded``, ``PermissionDenied``, ...).

Exactly once. Each payment is made under an idempotency key that names one
logical request: the request's own ``Idempotency-Key`` header when the caller
set one, else a key made for the request object (an httpx ``Request``, a
requests ``PreparedRequest``) and kept on it. Sending the same request object
again, or a new one with the same ``Idempotency-Key``, is a retry and pays at
most once (Teller returns the payment already made, even for a fresh
challenge); two separate requests are two payments.

Reporting the outcome is best-effort: if ``RecordOutcome`` fails, the paid
response is returned anyway (``PaymentInfo.outcome_error`` says why) and
Teller's reconciler settles the payment from the chain.

httpx and requests are optional extras: ``pip install "teller-client[httpx]"``
or ``"teller-client[requests]"``; using a class without its extra raises an
ImportError that names it.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import uuid
from typing import TYPE_CHECKING, Any

from teller_client.errors import TellerError
from teller_client.types import PaymentInfo, SignedPayment

if TYPE_CHECKING:
    from teller_client.client import AsyncTellerClient, TellerClient

log = logging.getLogger("teller_client")

RECEIPT_HEADERS = ("payment-response", "x-payment-response", "payment-receipt")
MAX_CHALLENGE_BYTES = 256 * 1024
IDEMPOTENCY_HEADER = "Idempotency-Key"
#: Where a key made for a request object is kept (httpx extensions / an attribute on requests' PreparedRequest).
KEY_ATTRIBUTE = "teller_idempotency_key"


def decode_receipt(headers: Any) -> dict[str, Any] | None:
    """The server's settlement receipt (x402 ``PAYMENT-RESPONSE`` / ``X-PAYMENT-RESPONSE``
    or MPP ``Payment-Receipt``), decoded; None when there is none."""
    for name in RECEIPT_HEADERS:
        value = headers.get(name)
        if not value:
            continue
        text = value.strip()
        try:
            raw = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_" if ("-" in text or "_" in text)
                                   else None)
            doc = json.loads(raw)
        except (binascii.Error, ValueError):
            continue
        if isinstance(doc, dict):
            return doc
    return None


def payment_info(response: Any) -> PaymentInfo | None:
    """The payment a transport or adapter made for this response, if any."""
    extensions = getattr(response, "extensions", None)
    if isinstance(extensions, dict) and isinstance(extensions.get("teller"), PaymentInfo):
        return extensions["teller"]
    found = getattr(response, "teller", None)
    return found if isinstance(found, PaymentInfo) else None


def _info(signed: SignedPayment, record: Any, headers: Any, error: Exception | None, key: str) -> PaymentInfo:
    return PaymentInfo(signed.payment_id, signed.header_name, signed.requirement, record, decode_receipt(headers),
                       error, key)


def _bound(teller: Any, *timeouts: Any) -> float | None:
    """The deadline of the Sign and RecordOutcome calls a request makes: the
    caller's HTTP timeout (the longest of the connect/read timeouts it set)
    when it is shorter than the Teller client's own; None: the client's."""
    values = [float(t) for t in timeouts if isinstance(t, int | float) and not isinstance(t, bool) and t > 0]
    return min(max(values), teller.timeout) if values else None


def _new_key() -> str:
    return "req_" + uuid.uuid4().hex


def _outcome_failed(signed: SignedPayment, exc: Exception) -> None:
    log.warning("payment %s: reporting the outcome to Teller failed (%s); the paid response is returned and "
                "Teller's reconciler will settle the payment", signed.payment_id, exc)


def _report(teller: TellerClient, signed: SignedPayment, status: int,
            headers: list[tuple[str, str]], timeout: float | None = None) -> tuple[Any, Exception | None]:
    if not signed.payment_id:
        return None, None  # an MPP session voucher: no payment of its own (its channel's open is one)
    try:
        return teller.record_outcome(signed.payment_id, status=status, headers=headers, timeout=timeout), None
    except (TellerError, OSError) as exc:
        _outcome_failed(signed, exc)
        return None, exc


async def _report_async(teller: AsyncTellerClient, signed: SignedPayment, status: int,
                        headers: list[tuple[str, str]], timeout: float | None = None) -> tuple[Any, Exception | None]:
    if not signed.payment_id:
        return None, None  # an MPP session voucher: no payment of its own (its channel's open is one)
    try:
        return await teller.record_outcome(signed.payment_id, status=status, headers=headers, timeout=timeout), None
    except (TellerError, OSError) as exc:
        _outcome_failed(signed, exc)
        return None, exc


try:
    import httpx as _httpx_mod
except ImportError:  # pragma: no cover - httpx is optional
    _httpx_mod = None  # type: ignore[assignment]

if _httpx_mod is not None:

    def _httpx_key(request: _httpx_mod.Request) -> str:
        """The request's idempotency key: the caller's header, else one kept on the request object."""
        given = request.headers.get(IDEMPOTENCY_HEADER)
        if given:
            return str(given)
        key = request.extensions.get(KEY_ATTRIBUTE)
        if not isinstance(key, str):
            key = _new_key()
            request.extensions[KEY_ATTRIBUTE] = key
        return key

    def _httpx_bound(teller: Any, request: _httpx_mod.Request) -> float | None:
        t = request.extensions.get("timeout")
        return _bound(teller, t.get("connect"), t.get("read")) if isinstance(t, dict) else None

    def _httpx_retry(request: _httpx_mod.Request, body: bytes, signed: SignedPayment) -> _httpx_mod.Request:
        retry = _httpx_mod.Request(request.method, request.url, headers=request.headers, content=body,
                                   extensions=request.extensions)
        retry.headers.update(signed.retry_headers())
        return retry

    class TellerTransport(_httpx_mod.BaseTransport):  # type: ignore[no-redef]
        """An httpx transport that pays 402s through Teller's ``Sign``."""

        def __init__(self, teller: TellerClient, wallet_id: str, *, inner: _httpx_mod.BaseTransport | None = None,
                     max_amount: int | None = None) -> None:
            self.teller = teller
            self.wallet_id = wallet_id
            self.inner = inner or _httpx_mod.HTTPTransport()
            self.max_amount = max_amount

        def handle_request(self, request: _httpx_mod.Request) -> _httpx_mod.Response:
            body = request.read()  # kept for the one retry
            response = self.inner.handle_request(request)
            if response.status_code != 402:
                return response
            try:
                challenge = response.read()[:MAX_CHALLENGE_BYTES]
            finally:
                response.close()
            key, bound = _httpx_key(request), _httpx_bound(self.teller, request)
            signed = self.teller.sign(status=402, headers=list(response.headers.multi_items()), body=challenge,
                                      url=str(request.url), method=request.method, wallet_id=self.wallet_id,
                                      max_amount=self.max_amount, idempotency_key=key, timeout=bound)
            final = self.inner.handle_request(_httpx_retry(request, body, signed))
            record, error = _report(self.teller, signed, final.status_code, list(final.headers.multi_items()),
                                    bound)
            final.extensions = {**final.extensions, "teller": _info(signed, record, final.headers, error, key)}
            return final

        def close(self) -> None:
            self.inner.close()

    class AsyncTellerTransport(_httpx_mod.AsyncBaseTransport):
        """The asyncio twin, over ``AsyncTellerClient``."""

        def __init__(self, teller: AsyncTellerClient, wallet_id: str, *,
                     inner: _httpx_mod.AsyncBaseTransport | None = None, max_amount: int | None = None) -> None:
            self.teller = teller
            self.wallet_id = wallet_id
            self.inner = inner or _httpx_mod.AsyncHTTPTransport()
            self.max_amount = max_amount

        async def handle_async_request(self, request: _httpx_mod.Request) -> _httpx_mod.Response:
            body = await request.aread()
            response = await self.inner.handle_async_request(request)
            if response.status_code != 402:
                return response
            try:
                challenge = (await response.aread())[:MAX_CHALLENGE_BYTES]
            finally:
                await response.aclose()
            key, bound = _httpx_key(request), _httpx_bound(self.teller, request)
            signed = await self.teller.sign(status=402, headers=list(response.headers.multi_items()),
                                            body=challenge, url=str(request.url), method=request.method,
                                            wallet_id=self.wallet_id, max_amount=self.max_amount,
                                            idempotency_key=key, timeout=bound)
            final = await self.inner.handle_async_request(_httpx_retry(request, body, signed))
            record, error = await _report_async(self.teller, signed, final.status_code,
                                                list(final.headers.multi_items()), bound)
            final.extensions = {**final.extensions, "teller": _info(signed, record, final.headers, error, key)}
            return final

        async def aclose(self) -> None:
            await self.inner.aclose()


    def _pay_headers(request: _httpx_mod.Request) -> list[tuple[str, str]]:
        # httpx's own framing headers are Teller's to set for its connection (Pay refuses them).
        framing = {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "te", "trailer",
                   "upgrade", "proxy-connection", "accept-encoding"}
        return [(k, v) for k, v in request.headers.multi_items() if k.lower() not in framing]

    class _PayStream(_httpx_mod.SyncByteStream):
        def __init__(self, chunks: Any, done: contextlib.ExitStack) -> None:
            self.chunks, self.done = chunks, done

        def __iter__(self) -> Any:
            yield from self.chunks

        def close(self) -> None:
            self.done.close()

    class _AsyncPayStream(_httpx_mod.AsyncByteStream):
        def __init__(self, chunks: Any, done: contextlib.AsyncExitStack) -> None:
            self.chunks, self.done = chunks, done

        async def __aiter__(self) -> Any:
            async for chunk in self.chunks:
                yield chunk

        async def aclose(self) -> None:
            await self.done.aclose()

    class TellerPayTransport(_httpx_mod.BaseTransport):
        """An httpx transport that sends each request through Teller's ``Pay``
        (Teller makes the call, pays a 402, and pays a metered MPP session stream's
        vouchers as it runs). The body streams to the caller as it arrives
        (``client.stream(...)``, ``iter_bytes``); ``max_stream_amount`` caps what a
        metered stream's vouchers add per request (past it the body ends with
        ``LimitExceeded`` ``stream_cap``). The Pay head (payment, receipt) is in
        ``response.extensions["teller_pay"]``."""

        def __init__(self, teller: TellerClient, wallet_id: str, *, max_amount: int | None = None,
                     max_stream_amount: int | None = None) -> None:
            self.teller = teller
            self.wallet_id = wallet_id
            self.max_amount = max_amount
            self.max_stream_amount = max_stream_amount

        def handle_request(self, request: _httpx_mod.Request) -> _httpx_mod.Response:
            done = contextlib.ExitStack()
            paid = done.enter_context(self.teller.pay_stream(
                str(request.url), wallet_id=self.wallet_id, method=request.method, headers=_pay_headers(request),
                body=request.read(), max_amount=self.max_amount, idempotency_key=_httpx_key(request),
                max_stream_amount=self.max_stream_amount))
            head = paid.response
            return _httpx_mod.Response(head.status, headers=head.headers, stream=_PayStream(paid.chunks, done),
                                       extensions={"teller_pay": head}, request=request)

    class AsyncTellerPayTransport(_httpx_mod.AsyncBaseTransport):
        """The asyncio twin of ``TellerPayTransport``, over ``AsyncTellerClient``."""

        def __init__(self, teller: AsyncTellerClient, wallet_id: str, *, max_amount: int | None = None,
                     max_stream_amount: int | None = None) -> None:
            self.teller = teller
            self.wallet_id = wallet_id
            self.max_amount = max_amount
            self.max_stream_amount = max_stream_amount

        async def handle_async_request(self, request: _httpx_mod.Request) -> _httpx_mod.Response:
            done = contextlib.AsyncExitStack()
            paid = await done.enter_async_context(self.teller.pay_stream(
                str(request.url), wallet_id=self.wallet_id, method=request.method, headers=_pay_headers(request),
                body=await request.aread(), max_amount=self.max_amount, idempotency_key=_httpx_key(request),
                max_stream_amount=self.max_stream_amount))
            head = paid.response
            return _httpx_mod.Response(head.status, headers=head.headers, stream=_AsyncPayStream(paid.chunks, done),
                                       extensions={"teller_pay": head}, request=request)


try:
    from requests.adapters import HTTPAdapter as _HTTPAdapter
except ImportError:  # pragma: no cover - requests is optional
    _HTTPAdapter = None  # type: ignore[assignment,misc]

if _HTTPAdapter is not None:

    class TellerAdapter(_HTTPAdapter):
        """A requests adapter that pays 402s through Teller's ``Sign``:
        ``session.mount("https://", TellerAdapter(teller, wallet_id))``."""

        def __init__(self, teller: TellerClient, wallet_id: str, *, max_amount: int | None = None,
                     **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.teller = teller
            self.wallet_id = wallet_id
            self.max_amount = max_amount

        def send(self, request: Any, **kwargs: Any) -> Any:  # type: ignore[override]
            response = super().send(request, **kwargs)
            if response.status_code != 402:
                return response
            key = request.headers.get(IDEMPOTENCY_HEADER) or getattr(request, KEY_ATTRIBUTE, None)
            if not key:
                key = _new_key()
                setattr(request, KEY_ATTRIBUTE, key)
            # requests joins repeated headers with ", ": Teller reads every challenge in the joined value.
            timeout = kwargs.get("timeout")
            bound = _bound(self.teller, *timeout) if isinstance(timeout, tuple) else _bound(self.teller, timeout)
            signed = self.teller.sign(status=402, headers=list(response.headers.items()),
                                      body=response.content[:MAX_CHALLENGE_BYTES], url=request.url,
                                      method=request.method, wallet_id=self.wallet_id, max_amount=self.max_amount,
                                      idempotency_key=key, timeout=bound)
            retry = request.copy()
            retry.headers.update(signed.retry_headers())
            final = super().send(retry, **kwargs)
            record, error = _report(self.teller, signed, final.status_code, list(final.headers.items()), bound)
            final.teller = _info(signed, record, final.headers, error, key)  # type: ignore[attr-defined]
            return final


_EXTRAS = {"TellerTransport": "httpx", "AsyncTellerTransport": "httpx", "TellerPayTransport": "httpx",
           "AsyncTellerPayTransport": "httpx", "TellerAdapter": "requests"}


def __getattr__(name: str) -> Any:
    # Reached only when the class was not defined above: its optional extra is missing.
    extra = _EXTRAS.get(name)
    if extra is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    raise ImportError(f"teller_client.integrations.{name} needs {extra}: pip install \"teller-client[{extra}]\"",
                      name=extra)


__all__ = ["AsyncTellerPayTransport", "AsyncTellerTransport", "TellerAdapter", "TellerPayTransport", "TellerTransport",
           "decode_receipt", "payment_info"]
