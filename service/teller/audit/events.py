"""The append-only audit log. Rows are written inside the caller's transaction,
so an event exists exactly when the action it records was committed."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.orm import Session

from teller.audit.chain import GENESIS, event
from teller.db.models import AuditEvent, AuditHead


def record(session: Session, *, tenant_id: str | None = None, **fields: Any) -> tuple[int, str]:
    """Append one event (the fields of ``event``) to its tenant's chain, locking
    the chain head until the transaction ends; returns the new chain head."""
    row = event(tenant_id=tenant_id, head=locked_head(session, tenant_id or ""), **fields)
    write(session, [row], {tenant_id or "": (row["seq"], row["hash"])})
    return row["seq"], row["hash"]


def write(session: Session, rows: Sequence[dict[str, Any]], heads: dict[str, tuple[int, str]]) -> None:
    """Insert events built by ``event`` and move their chains' heads (which the
    caller holds locked) to the given (seq, hash)."""
    if rows:
        session.connection().execute(insert(AuditEvent), list(rows))
    if heads:
        session.connection().execute(_ADVANCE_HEAD, [{"c": c, "seq": seq, "hash": h} for c, (seq, h) in heads.items()])


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
        query = query.where(AuditEvent.id < page_cursor(page_token, "page_token"))
    rows = list(session.scalars(query.order_by(AuditEvent.id.desc()).limit(size + 1)))
    more = len(rows) > size
    rows = rows[:size]
    return rows, (str(rows[-1].id) if more and rows else "")


#: Row ids and timestamps in page tokens are SQL BIGINTs.
_BIGINT = re.compile(r"[0-9]{1,19}")


def page_cursor(text: str, field: str) -> int:
    """A BIGINT cursor out of a page token: ASCII digits only (``str.isdigit``
    admits other scripts' digits, which ``int`` may refuse), and at most what a
    BIGINT column holds (SQLite refuses larger integers outright)."""
    from teller.errors import InvalidArgument

    if not _BIGINT.fullmatch(text) or int(text) >= 2**63:
        raise InvalidArgument(f"{field} is not a token this server issued")
    return int(text)
