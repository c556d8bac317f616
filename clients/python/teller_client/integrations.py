"""One-line 402 handling for a service's own HTTP client.

``httpx``: ``httpx.Client(transport=TellerTransport(teller, wallet_id))`` (and
``AsyncTellerTransport`` for ``httpx.AsyncClient``); ``requests``:
``session.mount("https://", TellerAdapter(teller, wallet_id))``. On a 402 they
ask Teller's ``Sign`` for the proof, retry once with it, tell Teller what the
server answered, and attach a ``PaymentInfo`` to the response
(``payment_info(response)``). A policy denial raises the typed
``teller_client`` error (``LimitExceeded``, ``PermissionDenied``, ...).

httpx and requests are optional: each is imported only by the class that needs it.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import TYPE_CHECKING, Any

from teller_client.types import PaymentInfo, SignedPayment

if TYPE_CHECKING:
    from teller_client.client import AsyncTellerClient, TellerClient

RECEIPT_HEADERS = ("payment-response", "x-payment-response", "payment-receipt")
MAX_CHALLENGE_BYTES = 256 * 1024


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


def _info(signed: SignedPayment, record: Any, headers: Any) -> PaymentInfo:
    return PaymentInfo(signed.payment_id, signed.header_name, signed.requirement, record, decode_receipt(headers))


try:
    import httpx as _httpx_mod
except ImportError:  # pragma: no cover - httpx is optional
    _httpx_mod = None  # type: ignore[assignment]

if _httpx_mod is not None:

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
            signed = self.teller.sign(status=402, headers=list(response.headers.multi_items()), body=challenge,
                                      url=str(request.url), method=request.method, wallet_id=self.wallet_id,
                                      max_amount=self.max_amount)
            retry = _httpx_mod.Request(request.method, request.url, headers=request.headers, content=body,
                                       extensions=request.extensions)
            retry.headers[signed.header_name] = signed.header_value
            final = self.inner.handle_request(retry)
            record = self.teller.record_outcome(signed.payment_id, status=final.status_code,
                                                headers=list(final.headers.multi_items()))
            final.extensions = {**final.extensions, "teller": _info(signed, record, final.headers)}
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
            signed = await self.teller.sign(status=402, headers=list(response.headers.multi_items()),
                                            body=challenge, url=str(request.url), method=request.method,
                                            wallet_id=self.wallet_id, max_amount=self.max_amount)
            retry = _httpx_mod.Request(request.method, request.url, headers=request.headers, content=body,
                                       extensions=request.extensions)
            retry.headers[signed.header_name] = signed.header_value
            final = await self.inner.handle_async_request(retry)
            record = await self.teller.record_outcome(signed.payment_id, status=final.status_code,
                                                      headers=list(final.headers.multi_items()))
            final.extensions = {**final.extensions, "teller": _info(signed, record, final.headers)}
            return final

        async def aclose(self) -> None:
            await self.inner.aclose()


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
            # requests joins repeated headers with ", ": Teller reads every challenge in the joined value.
            signed = self.teller.sign(status=402, headers=list(response.headers.items()),
                                      body=response.content[:MAX_CHALLENGE_BYTES], url=request.url,
                                      method=request.method, wallet_id=self.wallet_id, max_amount=self.max_amount)
            retry = request.copy()
            retry.headers[signed.header_name] = signed.header_value
            final = super().send(retry, **kwargs)
            record = self.teller.record_outcome(signed.payment_id, status=final.status_code,
                                                headers=list(final.headers.items()))
            final.teller = _info(signed, record, final.headers)  # type: ignore[attr-defined]
            return final


__all__ = ["AsyncTellerTransport", "TellerAdapter", "TellerTransport", "decode_receipt", "payment_info"]
