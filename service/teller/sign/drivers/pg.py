"""The Sign batch driver for PostgreSQL: async psycopg on the server's event
loop, with its statements prepared on each connection (and prepared anew every
few seconds, so their plans follow the tables' sizes) except the lookups of
``payments`` by key, which are planned where they run: BEGIN, the lock, the
reads and the window query travel as one query string, the writes and COMMIT as
another, so a batch costs two round trips whatever its size, and no thread.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, TypeVar

import psycopg
from psycopg.rows import namedtuple_row

from teller.db.engine import PG_OPTIONS
from teller.db.models import AuditEvent, Payment
from teller.errors import Unavailable
from teller.jsontext import compact
from teller.sign.batch_io import (
    ChannelRow,
    Contended,
    FindNonce,
    LockChannel,
    Measure,
    PaymentRow,
    Plan,
    RaiseDeposit,
    Read,
    ReleaseKey,
    Snapshot,
    TenantRow,
    TokenRow,
    TopUpChannel,
    WalletRow,
    Windows,
    Write,
    drive_async,
)
from teller.spend.ledger import (
    BUCKET_UPSERT,
    WINDOW_FIELDS,
    WINDOWS_PG_SQL,
    window_rows,
    windows_from,
)

T = TypeVar("T")

_CONTENDED = (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)


_PG_LOCK = ("SELECT t.id, t.state, t.frozen, h.seq, h.hash FROM tenants t JOIN audit_heads h ON h.chain = t.id "
            "WHERE t.id = ANY(%s::text[]) ORDER BY t.id FOR UPDATE OF t, h")
_PG_WALLETS = (
    "SELECT w.id, w.tenant_id, w.address, w.state, w.frozen, w.kek_version, w.wrapped_data_key, w.key_ciphertext, "
    "(SELECT document FROM spend_policies WHERE tenant_id = w.tenant_id AND wallet_id = '') AS tenant_doc, "
    "(SELECT document FROM spend_policies WHERE tenant_id = w.tenant_id AND wallet_id = w.id) AS wallet_doc "
    "FROM wallets w WHERE w.id = ANY(%s::text[])")
_PG_TOKENS = "SELECT id, tenant_id, secret_hash, revoked_ms FROM api_tokens WHERE id = ANY(%s::text[])"
_PAYMENT_COLUMNS = tuple(c.key for c in Payment.__table__.columns)
_PAYMENT_SELECT = ", ".join(f"p.{c}" for c in PaymentRow._fields)
#: The lookups of ``payments`` by key, planned each time they run (not prepared):
#: a generic plan made while the table was empty read all of it on every batch
#: as it grew (21 ms a lookup at 50,000 rows; a new deployment reaches that in
#: half a minute of MPP load); planned with their arguments, they use the
#: table's unique indexes as soon as it has grown, ANALYZE or not.
_PG_CLAIMS = (f"SELECT {_PAYMENT_SELECT} FROM payments p "  # noqa: S608 - the model's columns
              "WHERE p.tenant_id = ANY(%s::text[]) AND p.idempotency_key = ANY(%s::text[])")
_PG_NONCES = (f"SELECT {_PAYMENT_SELECT} FROM unnest(%s::text[], %s::text[]) AS k(wallet_id, nonce) "  # noqa: S608
              "JOIN payments p ON p.wallet_id = k.wallet_id AND p.nonce = k.nonce")

#: A tenant's channels that are not closed (rare: batches with a session challenge).
_PG_CHANNELS = (f"SELECT {', '.join(ChannelRow._fields)} FROM channels "  # noqa: S608 - the model's columns
                "WHERE tenant_id = ANY(%s::text[]) AND state <> 'closed'")


def _json_insert(table: str, columns: Sequence[str]) -> str:
    """INSERT of many rows in one statement from one JSON array of objects (the
    table's own row type converts each field; one string to encode, no arrays)."""
    names = ", ".join(columns)
    return (f"INSERT INTO {table} ({names}) SELECT {names} "  # noqa: S608 - the models' columns
            f"FROM json_populate_recordset(NULL::{table}, %s::json)")


#: The tables a payment may bring rows of (``Write.rows``): their names and columns
#: go into SQL text, so only the schemes' own (a session's channel and voucher).
_ROW_TABLES = frozenset({"channels", "vouchers", "channel_top_ups"})
# A top-up's channel (rare: planned where they run).
_PG_LOCK_CHANNEL = ("SELECT id, wallet_id, state, deposit, cumulative FROM channels "
                    "WHERE id = %s AND tenant_id = %s FOR UPDATE")
_PG_RAISE_DEPOSIT = ("UPDATE channels SET deposit = %s::bigint, updated_ms = %s::bigint "
                     "WHERE id = %s AND deposit = %s::bigint AND state = 'open'")
_EVENT_COLUMNS = tuple(c.key for c in AuditEvent.__table__.columns if c.key != "id")
_BUCKET_COLUMNS = ("scope", "scope_id", "minute", "reserved", "spent")
#: Every write of a batch in one statement (data-modifying CTEs): payments,
#: their minute buckets (tenants before wallets, the lock order everywhere),
#: audit events and the chain heads they move.
_PG_WRITE = (
    f"WITH p AS ({_json_insert('payments', _PAYMENT_COLUMNS)}), "  # noqa: S608 - the models' columns
    f"b AS ({_json_insert('spend_buckets', _BUCKET_COLUMNS)} {BUCKET_UPSERT}), "
    f"e AS ({_json_insert('audit_events', _EVENT_COLUMNS)}) "
    "UPDATE audit_heads h SET seq = v.seq, hash = v.hash "
    "FROM json_populate_recordset(NULL::audit_heads, %s::json) AS v WHERE h.chain = v.chain"
)


def _text_array(values: Sequence[str]) -> str:
    """A PostgreSQL text[] literal: one string for the driver to send (its list
    adapter inspects every element in Python, which a batch pays per statement)."""
    quoted = ('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values)
    return "{" + ",".join(quoted) + "}"


# Rare (an expired idempotency key; a Tempo payment signed in the batch itself): planned where they run too.
_PG_RELEASE = "UPDATE payments SET idempotency_key = NULL WHERE id = %s"
_PG_NONCE = (f"SELECT {', '.join(PaymentRow._fields)} FROM payments "  # noqa: S608 - the model's columns
             "WHERE wallet_id = %s AND nonce = %s")


def _numbered(sql: str) -> str:
    """``%s`` placeholders as ``$1, $2, ...`` (for PREPARE)."""
    parts = sql.split("%s")
    assert "%" not in "".join(parts), "only %s placeholders"
    return parts[0] + "".join(f"${i}{part}" for i, part in enumerate(parts[1:], start=1))


#: The batch statements, prepared on each connection when it opens: name ->
#: (parameter types, statement).
_PREPARED = {
    "teller_lock": ("text[]", _PG_LOCK),
    "teller_wallets": ("text[]", _PG_WALLETS),
    "teller_tokens": ("text[]", _PG_TOKENS),
    "teller_windows": ("json", WINDOWS_PG_SQL),
    "teller_write": ("json, json, json, json", _PG_WRITE),
}
_PREPARE_ALL = ";".join(f"PREPARE {name} ({types}) AS {_numbered(sql)}"
                        for name, (types, sql) in _PREPARED.items()).encode()


class _Statements:
    """One round trip's statements, as one query string: ``EXECUTE`` of the
    prepared statements with their arguments as literals (escaped by libpq).

    Sent with the simple query protocol, a round trip is one send and one wait
    however many statements it holds, and the server still runs plans it has
    prepared. (psycopg's pipeline sent the same statements as separate protocol
    messages with a wait on the event loop for each step: about 20 per batch,
    the largest part of a batch's cost in the worker.) Each statement still sees
    its own snapshot (READ COMMITTED), so the reads after the lock see every
    transaction that committed before it was granted."""

    __slots__ = ("_conn", "_escape", "_parts")

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._conn = conn
        self._escape = psycopg.pq.Escaping(conn.pgconn).escape_literal
        self._parts: list[bytes] = []

    def __bool__(self) -> bool:
        return bool(self._parts)

    def add(self, name: str, *args: str) -> None:
        escape = self._escape
        self._parts.append(b"EXECUTE " + name.encode() + b"(" + b",".join(escape(a.encode()) for a in args) + b")"
                           if args else name.encode())

    def add_planned(self, sql: str, *args: str) -> None:
        """A statement that is planned where it runs: its ``%s`` become literals."""
        pieces = sql.encode().split(b"%s")
        assert len(pieces) == len(args) + 1, "one argument per %s"
        escaped = [self._escape(a.encode()) for a in args]
        self._parts.append(pieces[0] + b"".join(e + piece for e, piece in zip(escaped, pieces[1:], strict=True)))

    def begin(self) -> None:
        """Open the transaction first."""
        self._parts.insert(0, b"BEGIN")

    async def send(self) -> psycopg.AsyncCursor[Any]:
        """Run them; the cursor stands on the first statement's result."""
        cur = self._conn.cursor(row_factory=namedtuple_row)
        await cur.execute(b";".join(self._parts), prepare=False)
        return cur


class AsyncPgBatchIO:
    """Sign batches on PostgreSQL from the event loop: a few async psycopg
    connections (one per batch in flight), each batch one transaction in two
    round trips (``_Statements``). A connection that fails is dropped; the next
    batch opens another."""

    def __init__(self, conninfo: str, connect_timeout_s: float = 5.0, lock_timeout_ms: int = 5000,
                 replan_after_s: float = 15.0) -> None:
        self._conninfo = conninfo
        self._timeout = connect_timeout_s
        # A batch waits this long for a tenant another transaction holds; then its
        # calls are retried one by one, so one busy tenant does not stall the others.
        self._lock_timeout_ms = lock_timeout_ms
        # A connection's generic plans are made on the tables as they were then. One
        # made while a table was empty (a new deployment) reads all of it, and keeps
        # doing so as it grows until the next ANALYZE of it (a minute or more at
        # thousands of payments a second); prepared anew, a plan sees the tables'
        # current sizes and uses their indexes. One round trip per connection this often.
        self._replan_after_s = replan_after_s
        self._idle: list[tuple[psycopg.AsyncConnection[Any], float]] = []  # (connection, when prepared)

    async def _connect(self) -> tuple[psycopg.AsyncConnection[Any], float]:
        conn = await psycopg.AsyncConnection.connect(
            self._conninfo, autocommit=True, connect_timeout=max(1, int(self._timeout)),
            # Generic plans for the prepared batch statements: their arguments are
            # id arrays and JSON documents the planner cannot see into, so a plan
            # made for each execution costs planning time (~20% of PostgreSQL's CPU
            # per call at one caller) and chooses no better. JIT off (see PG_OPTIONS).
            options=f"-c lock_timeout={self._lock_timeout_ms} -c plan_cache_mode=force_generic_plan {PG_OPTIONS}")
        try:
            await conn.execute(_PREPARE_ALL, prepare=False)
        except BaseException:
            await conn.close()
            raise
        return conn, time.monotonic()

    async def _take(self) -> tuple[psycopg.AsyncConnection[Any], float]:
        """An idle connection (its statements prepared anew if their plans are old), or a new one."""
        if not self._idle:
            return await self._connect()
        conn, prepared = self._idle.pop()
        if time.monotonic() - prepared < self._replan_after_s:
            return conn, prepared
        try:
            await conn.execute(b"DEALLOCATE ALL;" + _PREPARE_ALL, prepare=False)
        except BaseException:
            await conn.close()
            raise
        return conn, time.monotonic()

    async def run(self, plan: Plan[T]) -> T:
        try:
            conn, prepared = await self._take()
        except psycopg.OperationalError as exc:
            raise Unavailable("database unavailable") from exc
        batch = _PgBatch(conn)
        try:
            result = await drive_async(plan, batch)
            if batch.begun and not batch.committed:
                await conn.execute(b"COMMIT", prepare=False)
        except _CONTENDED as exc:
            await self._abandon(conn)
            raise Contended("the tenant is busy with another operation; retry") from exc
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            await conn.close()
            raise Unavailable("database unavailable") from exc
        except BaseException:
            await self._abandon(conn)
            raise
        finally:
            # Reused only outside any transaction: one left open (a cancelled
            # batch, a failed ROLLBACK) would swallow the next batch's BEGIN.
            if not conn.closed and not conn.broken:
                if conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
                    self._idle.append((conn, prepared))
                else:
                    await conn.close()
        return result

    @staticmethod
    async def _abandon(conn: psycopg.AsyncConnection[Any]) -> None:
        """Roll back whatever the failed batch left open (or drop the connection)."""
        if conn.closed or conn.broken:
            return
        try:
            await conn.execute(b"ROLLBACK", prepare=False)
        except BaseException:
            await conn.close()
            raise

    async def close(self) -> None:
        while self._idle:
            await self._idle.pop()[0].close()


class _PgBatch:
    """One batch's transaction on one connection (a ``batch_io.AsyncDriver``):
    BEGIN travels with the reads, COMMIT with the write."""

    __slots__ = ("begun", "committed", "conn")

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.conn = conn
        self.begun = False  # BEGIN was sent
        self.committed = False

    def _statements(self) -> _Statements:
        assert not self.committed, "a request after the batch's write"
        return _Statements(self.conn)

    async def _run(self, st: _Statements) -> psycopg.AsyncCursor[Any]:
        """Send ``st`` (after BEGIN, the first time); the cursor stands on its first result."""
        begin = not self.begun
        if begin:
            st.begin()
            self.begun = True
        cur = await st.send()
        if begin:
            cur.nextset()
        return cur

    async def measure(self, request: Measure) -> Windows:
        st = self._statements()
        names = _add_windows(st, request)
        rows = await (await self._run(st)).fetchall() if st else ()
        return windows_from(names, request.scopes, rows)

    async def write(self, request: Write) -> None:
        st = self._statements()
        heads = [{"chain": c, "seq": seq, "hash": h} for c, (seq, h) in request.heads.items()]
        for table, row in request.rows:  # rare (a channel opened): planned where it runs
            if table not in _ROW_TABLES:
                raise ValueError(f"a batch writes no rows of {table!r}")
            st.add_planned(_json_insert(table, tuple(row)), compact([row]).decode())
        st.add("teller_write", *(compact(rows).decode() for rows in (
            request.payments, request.buckets, request.events, heads)))
        st.add("COMMIT")
        await self._run(st)
        self.committed = True

    async def release_key(self, request: ReleaseKey) -> None:
        st = self._statements()
        st.add_planned(_PG_RELEASE, request.payment_id)
        await self._run(st)

    async def find_nonce(self, request: FindNonce) -> PaymentRow | None:
        st = self._statements()
        st.add_planned(_PG_NONCE, request.wallet_id, request.nonce)
        row = await (await self._run(st)).fetchone()
        return PaymentRow(*row) if row is not None else None

    async def lock_channel(self, request: LockChannel) -> TopUpChannel | None:
        st = self._statements()
        st.add_planned(_PG_LOCK_CHANNEL, request.channel, request.tenant_id)
        row = await (await self._run(st)).fetchone()
        return TopUpChannel(*row) if row is not None else None

    async def raise_deposit(self, request: RaiseDeposit) -> bool:
        st = self._statements()
        st.add_planned(_PG_RAISE_DEPOSIT, str(request.after), str(request.now_ms), request.channel,
                       str(request.before))
        return (await self._run(st)).rowcount == 1

    async def read(self, request: Read) -> Snapshot:
        st = self._statements()
        tenant_ids = _text_array(request.tenant_ids)
        st.add("teller_lock", tenant_ids)
        st.add("teller_wallets", _text_array(request.wallet_ids))
        if request.token_ids:
            st.add("teller_tokens", _text_array(request.token_ids))
        if request.keys:
            st.add_planned(_PG_CLAIMS, tenant_ids, _text_array(request.keys))
        if request.nonces:
            st.add_planned(_PG_NONCES, _text_array([w for w, _ in request.nonces]),
                   _text_array([n for _, n in request.nonces]))
        if request.channel_tenants:
            st.add_planned(_PG_CHANNELS, _text_array(request.channel_tenants))
        # After the lock: the windows are measured once the locks are granted, in the same round trip.
        names = _add_windows(st, request.measure) if request.measure is not None else None
        cur = await self._run(st)
        tenants: dict[str, TenantRow] = {}
        heads: dict[str, tuple[int, str]] = {}
        for r in await cur.fetchall():
            tenants[r.id] = TenantRow(r.id, r.state, r.frozen)
            heads[r.id] = (int(r.seq), str(r.hash))
        cur.nextset()
        wallets = {r[0]: WalletRow(*r) for r in await cur.fetchall()}
        tokens: dict[str, TokenRow] = {}
        if request.token_ids:
            cur.nextset()
            tokens = {r.id: TokenRow(*r) for r in await cur.fetchall()}
        claims: dict[tuple[str, str], PaymentRow] = {}
        if request.keys:
            cur.nextset()
            claims = {(p.tenant_id, p.idempotency_key): PaymentRow(*p) for p in await cur.fetchall()}
        nonces: dict[tuple[str, str], PaymentRow] = {}
        if request.nonces:
            cur.nextset()
            nonces = {(p.wallet_id, p.nonce): PaymentRow(*p) for p in await cur.fetchall()}
        channels: dict[str, list[ChannelRow]] = {t: [] for t in request.channel_tenants}
        if request.channel_tenants:
            cur.nextset()
            for r in await cur.fetchall():
                channels[r.tenant_id].append(ChannelRow(*r))
        windows = None
        if request.measure is not None and names is not None:
            rows: list[Any] = []
            if names:  # its statement was sent
                cur.nextset()
                rows = await cur.fetchall()
            windows = windows_from(names, request.measure.scopes, rows)
        return Snapshot(tenants, heads, wallets, tokens, claims, windows, nonces, channels)


def _add_windows(st: _Statements, request: Measure) -> list[tuple[tuple[str, str], str]]:
    names, rows = window_rows(request.scopes, request.now_ms)
    if rows:
        st.add("teller_windows", compact([dict(zip(WINDOW_FIELDS, row, strict=True)) for row in rows]).decode())
    return names


def conninfo(url: str) -> str:
    """A psycopg connection string from a SQLAlchemy PostgreSQL URL."""
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


__all__ = ["AsyncPgBatchIO", "conninfo"]
