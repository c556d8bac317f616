"""Driving Sign batches directly (no gRPC): a call prepared as the RPC path
prepares it, and a batch committed through a SQLAlchemy session or, on
PostgreSQL, through async psycopg on an event loop (what the server uses)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from teller import auth
from teller.callers import Caller
from teller.sign.call import Call, Verdict, sign_input


def prepare(teller: Any, t: Any, chall: Any, *, secret: str | None = "token", wallet_id: str | None = None,
            key: str = "") -> Call:
    """``chall`` (headers, body, url) prepared for tenant setup ``t``; ``secret``
    "token" is t's real token secret."""
    req = sign_input(status=402, headers=tuple(chall.headers), body=chall.body, url=chall.url, method="GET",
                     wallet_id=wallet_id or t.wallet_id, max_amount="", idempotency_key=key)
    token_id, real_secret = auth.parse_token(t.token)
    return teller.app.payments.prepare(Caller(t.tenant_id, token_id), req,
                                       real_secret if secret == "token" else secret)


def commit(teller: Any, calls: Sequence[Call], driver: str) -> list[Verdict]:
    """One batch of ``calls``: ``driver`` "session" (SQLAlchemy) or "async" (psycopg)."""
    payments = teller.app.payments
    if driver == "session":
        return payments.commit(calls)
    from teller.sign.drivers.pg import AsyncPgBatchIO, conninfo

    async def run() -> list[Verdict]:
        aio = AsyncPgBatchIO(conninfo(teller.app.db.engine.url.render_as_string(hide_password=False)))
        loop = asyncio.get_running_loop()
        try:
            return await payments.commit_async(calls, aio, lambda fn, c: loop.run_in_executor(None, fn, c))
        finally:
            await aio.close()

    return asyncio.run(run())
