"""Handing a channel's top-up to the server, before the voucher that needs it.

A top-up is management, not a purchase: mppx's server answers a ``topUp``
credential with 204 and its receipt once it has broadcast the transaction and
read the raised deposit back from the chain, and never serves the resource
for it. So, as mppx's client does, Teller POSTs the top-up credential to the
session's URL itself, then answers the caller's challenge with the next
voucher, which the raised deposit now covers.

If the server does not take it, the top-up's reservation stays held until
its transaction can no longer be mined; then the reconciler releases it and
lowers the channel's deposit again (``Channels.top_up_failed``).
"""

from __future__ import annotations

from teller import refusal
from teller.errors import FailedPrecondition
from teller.fetch import Fetcher


async def deliver(fetcher: Fetcher, url: str, header_name: str, header_value: str, max_bytes: int) -> None:
    """POST the top-up credential to ``url``; a refusal names the server's reason."""
    async with fetcher.open("POST", url, [(header_name, header_value)], b"") as answer:
        body = await answer.read(max_bytes)
        if 200 <= answer.status < 300:
            return
        why = refusal.reason(list(answer.headers), body) or f"HTTP {answer.status}"
    raise FailedPrecondition(f"the server did not take the channel's top-up: {why}", reason="top_up_refused",
                             metadata={"server_reason": why[:200]})


__all__ = ["deliver"]
