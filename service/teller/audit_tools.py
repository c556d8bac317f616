"""Operator jobs on the audit log, run against the database like ``teller
migrate``: verify the hash chains, and export a tenant's log as JSON Lines
that the tenant can verify offline (``teller audit verify --file``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import IO, Any

from sqlalchemy import select

from teller.audit_chain import Problem, verify
from teller.db import Database
from teller.db.models import AuditEvent, AuditHead

BATCH = 1000


def _as_dict(e: AuditEvent) -> dict[str, Any]:
    return {c.key: getattr(e, c.key) for c in AuditEvent.__table__.columns}


def events(db: Database, tenant_id: str | None = None) -> Iterator[dict[str, Any]]:
    """Every event in write order, read in batches (constant memory)."""
    after = 0
    while True:
        with db.transaction() as s:
            q = select(AuditEvent).where(AuditEvent.id > after).order_by(AuditEvent.id).limit(BATCH)
            if tenant_id is not None:
                q = q.where(AuditEvent.tenant_id == tenant_id)
            rows = [_as_dict(e) for e in s.scalars(q)]
        if not rows:
            return
        yield from rows
        after = rows[-1]["id"]


def verify_database(db: Database, tenant_id: str | None = None) -> list[Problem]:
    with db.transaction() as s:
        q = select(AuditHead)
        if tenant_id is not None:
            q = q.where(AuditHead.chain == tenant_id)
        heads = {h.chain: (h.seq, h.hash) for h in s.scalars(q)}
    return verify(events(db, tenant_id), heads)


def export(db: Database, tenant_id: str, out: IO[str]) -> int:
    n = 0
    for event in events(db, tenant_id):
        out.write(json.dumps(event, sort_keys=True, separators=(",", ":")) + "\n")
        n += 1
    return n


def verify_file(lines: IO[str]) -> list[Problem]:
    def parsed() -> Iterator[dict[str, Any]]:
        for number, line in enumerate(lines, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except ValueError:
                    yield {"id": None, "seq": None, "tenant_id": f"(line {number} is not JSON)"}
    return verify(parsed())


__all__ = ["events", "export", "verify_database", "verify_file"]
