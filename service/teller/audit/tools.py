"""Operator jobs on the audit log, run against the database like ``teller
migrate``: verify the hash chains, and export a tenant's log as JSON Lines
signed with Teller's audit key, which the tenant can verify offline
(``teller audit verify-export``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import IO, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select

from teller.audit import export as audit_export
from teller.audit.chain import GENESIS, Problem, verify
from teller.db import Database
from teller.db.models import AuditEvent, AuditHead, Tenant
from teller.errors import FailedPrecondition, NotFound

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


def check_tenant(db: Database, tenant_id: str) -> None:
    """An unknown tenant is an error, not an empty (and so "valid") chain."""
    with db.transaction() as s:
        if s.get(Tenant, tenant_id) is None:
            raise NotFound(f"tenant {tenant_id!r} not found")


def verify_database(db: Database, tenant_id: str | None = None) -> list[Problem]:
    if tenant_id is not None:
        check_tenant(db, tenant_id)
    with db.transaction() as s:
        q = select(AuditHead)
        if tenant_id is not None:
            q = q.where(AuditHead.chain == tenant_id)
        heads = {h.chain: (h.seq, h.hash) for h in s.scalars(q)}
    return verify(events(db, tenant_id), heads)


def export(db: Database, tenant_id: str, out: IO[str], key: Ed25519PrivateKey, now_ms: int) -> int:
    """Write the tenant's chain up to its current head, then the signed trailer
    (``teller.audit.export``). Refuses to sign a chain that does not verify."""
    check_tenant(db, tenant_id)
    with db.transaction() as s:
        row = s.get(AuditHead, tenant_id)
        head = (int(row.seq), str(row.hash)) if row is not None else (0, GENESIS)
    # Events appended while this runs are past the head read above: left out.
    chain = [e for e in events(db, tenant_id) if int(e["seq"]) <= head[0]]
    problems = verify(chain, {tenant_id: head})
    if problems:
        raise FailedPrecondition(f"the audit chain of tenant {tenant_id!r} does not verify ({problems[0]}); "
                                 "run `teller audit verify` and investigate before exporting")
    for event in chain:
        out.write(json.dumps(event, sort_keys=True, separators=(",", ":")) + "\n")
    trailer = audit_export.trailer(key, tenant_id=tenant_id, head=head, events=len(chain), exported_at_ms=now_ms)
    out.write(json.dumps(trailer, sort_keys=True, separators=(",", ":")) + "\n")
    return len(chain)


def verify_file(lines: IO[str]) -> list[Problem]:
    def parsed() -> Iterator[dict[str, Any]]:
        for number, line in enumerate(lines, 1):
            if line.strip():
                try:
                    doc = json.loads(line)
                except ValueError:
                    yield {"id": None, "seq": None, "tenant_id": f"(line {number} is not JSON)"}
                    continue
                # The signature line: checking it needs the public key (verify-export).
                if not (isinstance(doc, dict) and doc.get("type") == audit_export.TRAILER_TYPE):
                    yield doc
    return verify(parsed())


__all__ = ["check_tenant", "events", "export", "verify_database", "verify_file"]
