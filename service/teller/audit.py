"""The append-only audit log. Rows are written inside the caller's transaction,
so an event exists exactly when the action it records was committed."""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import TextClause, bindparam, insert, select, text, update
from sqlalchemy.orm import Session

from teller.audit_chain import GENESIS, event_hash
from teller.db.models import AuditEvent, AuditHead


def record(
    session: Session,
    *,
    at_ms: int,
    actor: str,
    action: str,
    outcome: str = "ok",
    tenant_id: str | None = None,
    reason: str = "",
    wallet_id: str = "",
    payment_id: str = "",
    amount: int | str = "",
    asset: str = "",
    network: str = "",
    payee: str = "",
    resource_url: str = "",
    details: dict[str, Any] | None = None,
    head: tuple[int, str] | None = None,
    also: Sequence[tuple[str, dict[str, Any]]] = (),
) -> tuple[int, str]:
    """Append one event to its tenant's chain; returns the new chain head.

    ``head`` is the chain head the caller already holds locked (Sign reads it
    with its tenant lock, in the same statement); otherwise it is locked here.
    ``also`` holds other writes the event records (SQL text with its own
    parameter names): on PostgreSQL they travel with the event in one statement.
    """
    event: dict[str, Any] = {
        "tenant_id": tenant_id, "at_ms": at_ms, "actor": actor, "action": action, "outcome": outcome,
        "reason": reason, "wallet_id": wallet_id, "payment_id": payment_id, "amount": str(amount), "asset": asset,
        "network": network, "payee": payee, "resource_url": resource_url[:2048],
        "details": json.dumps(details or {}, sort_keys=True, separators=(",", ":")),
    }
    chain = tenant_id or ""
    if head is None:
        head = locked_head(session, chain)
    event["seq"], event["prev_hash"] = head[0] + 1, head[1]
    event["hash"] = event_hash(event)
    if also and session.get_bind().dialect.name == "postgresql":
        params: dict[str, Any] = {f"e_{k}": v for k, v in event.items()}
        for _, fragment_params in also:
            params.update(fragment_params)
        session.execute(_combined(tuple(sql for sql, _ in also), tuple(event)), {**params, "h_chain": chain})
        return event["seq"], event["hash"]
    for sql, fragment_params in also:
        session.execute(text(sql), fragment_params)
    session.execute(insert(AuditEvent), [event])
    session.execute(_ADVANCE_HEAD, {"c": chain, "seq": event["seq"], "hash": event["hash"]})
    return event["seq"], event["hash"]


@functools.lru_cache(maxsize=64)
def _combined(fragments: tuple[str, ...], event_keys: tuple[str, ...]) -> TextClause:
    """Other writes, the event insert and the chain-head update as one PostgreSQL
    statement (data-modifying CTEs): one round trip, same transaction."""
    ctes = "".join(f"w{i} AS ({sql}), " for i, sql in enumerate(fragments))
    return text(
        f"WITH {ctes}e AS (INSERT INTO audit_events ({', '.join(event_keys)}) "  # noqa: S608 - our own SQL
        f"VALUES ({', '.join(':e_' + k for k in event_keys)})) "
        "UPDATE audit_heads SET seq = :e_seq, hash = :e_hash WHERE chain = :h_chain")


_ADVANCE_HEAD = (update(AuditHead).where(AuditHead.chain == bindparam("c"))
                 .values(seq=bindparam("seq"), hash=bindparam("hash")))


def locked_head(session: Session, chain: str) -> tuple[int, str]:
    """The chain head, locked until the transaction ends: writers of one
    tenant's log append one after another instead of forking it."""
    row = session.execute(select(AuditHead.seq, AuditHead.hash).where(AuditHead.chain == chain)
                          .with_for_update()).first()
    if row is None:
        session.execute(insert(AuditHead).values(chain=chain, seq=0, hash=GENESIS))
        return 0, GENESIS
    return int(row.seq), str(row.hash)


def list_events(
    session: Session,
    *,
    tenant_id: str | None,
    action: str = "",
    wallet_id: str = "",
    outcome: str = "",
    since_ms: int = 0,
    until_ms: int = 0,
    page_size: int = 100,
    page_token: str = "",
) -> tuple[list[AuditEvent], str]:
    """Newest first. ``page_token`` is the opaque cursor from the previous page."""
    from sqlalchemy import select

    from teller.errors import InvalidArgument

    if page_size < 0:
        raise InvalidArgument("page_size must not be negative")
    size = min(page_size or 100, 1000)
    query = select(AuditEvent)
    if tenant_id is not None:
        query = query.where(AuditEvent.tenant_id == tenant_id)
    if action:
        query = query.where(AuditEvent.action == action)
    if wallet_id:
        query = query.where(AuditEvent.wallet_id == wallet_id)
    if outcome:
        query = query.where(AuditEvent.outcome == outcome)
    if since_ms:
        query = query.where(AuditEvent.at_ms >= since_ms)
    if until_ms:
        query = query.where(AuditEvent.at_ms < until_ms)
    if page_token:
        if not page_token.isdigit():
            raise InvalidArgument("page_token is not a token this server issued")
        query = query.where(AuditEvent.id < int(page_token))
    rows = list(session.scalars(query.order_by(AuditEvent.id.desc()).limit(size + 1)))
    more = len(rows) > size
    rows = rows[:size]
    return rows, (str(rows[-1].id) if more and rows else "")
