"""Named operator credentials: create, list, revoke, each audited by the name
of the operator who did it. Checking a presented credential is ``teller.auth``."""

from __future__ import annotations

import re

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from teller.audit import events as audit
from teller.auth import BOOTSTRAP, new_operator_token, operator_actor
from teller.clock import Clock, ms, system_clock
from teller.db import Database
from teller.db.models import Operator
from teller.errors import AlreadyExists, InvalidArgument, NotFound

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


def _name(name: str) -> str:
    if not _NAME.match(name):
        raise InvalidArgument("name must be 1-64 of A-Z a-z 0-9 . _ @ - (starting with a letter or digit), "
                              f"got {name[:70]!r}")
    if name.lower() == BOOTSTRAP:
        raise InvalidArgument(f"name {BOOTSTRAP!r} is reserved for the configured admin_token")
    return name


class Operators:
    def __init__(self, db: Database, clock: Clock = system_clock) -> None:
        self.db = db
        self.clock = clock

    def create(self, name: str) -> tuple[Operator, str]:
        """A new operator and its credential (returned once; only its hash is kept)."""
        name = _name(name)
        op_id, token, secret_hash = new_operator_token()
        actor = operator_actor()
        try:
            with self.db.transaction() as s:
                now = ms(self.clock)
                row = Operator(id=op_id, name=name, secret_hash=secret_hash, created_ms=now,
                               created_by=actor, revoked_ms=None)
                s.add(row)
                s.flush()
                audit.record(s, at_ms=now, actor=actor, action="operator.create",
                             details={"operator_id": op_id, "name": name})
                s.expunge(row)
        except IntegrityError:
            raise AlreadyExists(f"an operator named {name!r} exists already") from None
        return row, token

    def list(self) -> list[Operator]:
        with self.db.transaction() as s:
            rows = list(s.scalars(select(Operator).order_by(Operator.created_ms, Operator.name)))
            for r in rows:
                s.expunge(r)
        return rows

    def revoke(self, name: str) -> Operator:
        """Revoke by name; revoking a revoked one changes nothing."""
        with self.db.transaction() as s:
            row = s.scalars(select(Operator).where(Operator.name == name).with_for_update()).first()
            if row is None:
                raise NotFound(f"no operator named {name[:70]!r}")
            if row.revoked_ms is None:
                row.revoked_ms = now = ms(self.clock)
                audit.record(s, at_ms=now, actor=operator_actor(), action="operator.revoke",
                             details={"operator_id": row.id, "name": row.name})
            s.flush()
            s.expunge(row)
            return row


__all__ = ["Operators"]
