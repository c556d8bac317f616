"""Alembic, driven from Python so ``teller migrate`` needs no alembic.ini on disk;
and the rule for which schemas a worker serves on.

Expand/contract: a migration module that sets ``expand_only = True`` promises
that it only adds (tables, nullable or defaulted columns, indexes) and that the
release before it keeps working on the result. A worker serves on its own head
and on a database exactly one such step ahead of it, so a rolling upgrade can
migrate first and replace workers after, and a rollback needs no downgrade.
Every applied step is recorded in ``schema_revisions`` (revision, parent,
expand_only), because the older release does not have the newer step's module
to read the marker from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, inspect, pool, text
from sqlalchemy.exc import SQLAlchemyError

from teller.clock import ms, system_clock
from teller.errors import ConfigError

MIGRATIONS = Path(__file__).parent / "migrations"
#: The module attribute by which a migration declares itself expand-only.
EXPAND_MARKER = "expand_only"


def alembic_config(url: str, extra_locations: Sequence[Path] = ()) -> Config:
    """``extra_locations``: more version directories (a test's synthetic next release)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if extra_locations:
        cfg.set_main_option("version_locations",
                            " ".join(str(p) for p in (MIGRATIONS / "versions", *extra_locations)))
    return cfg


def upgrade(url: str, revision: str = "head", extra_locations: Sequence[Path] = ()) -> None:
    from teller.db.engine import private_sqlite_file

    private_sqlite_file(url)  # alembic's engine would create it with the umask's mode
    command.upgrade(alembic_config(url, extra_locations), revision)


def downgrade(url: str, revision: str, extra_locations: Sequence[Path] = ()) -> None:
    command.downgrade(alembic_config(url, extra_locations), revision)


def head(extra_locations: Sequence[Path] = ()) -> str:
    """This release's newest revision."""
    found = ScriptDirectory.from_config(alembic_config("sqlite://", extra_locations)).get_current_head()
    assert found is not None
    return found


def pending(engine: Engine) -> bool:
    """True when the database is not at the newest migration."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision() != head()


@dataclass(frozen=True, slots=True)
class Schema:
    """Where a database's schema stands against this release's migrations."""

    kind: str
    """``current`` (at this release's head), ``expand_ahead`` (one expand-only
    step past it: served), ``behind`` or ``empty`` (needs ``teller migrate``),
    ``newer`` (anything else this release does not know: refused)."""

    revision: str | None
    head: str

    @property
    def servable(self) -> bool:
        return self.kind in ("current", "expand_ahead")

    def explain(self) -> str:
        """One line for an operator."""
        if self.kind == "current":
            return f"database schema is at this release's revision {self.head}"
        if self.kind == "expand_ahead":
            return (f"database schema {self.revision} is one expand-only step ahead of this release "
                    f"({self.head}): this release serves on it, nothing to migrate")
        if self.kind in ("behind", "empty"):
            return (f"database schema is at {self.revision or 'no revision'}, this release needs {self.head}: "
                    "run `teller migrate`")
        return (f"database schema {self.revision} is newer than this release ({self.head}) and not one "
                f"expand-only step ahead of it: roll forward, or first run the newer release's "
                f"`teller migrate --to {self.head}` (docs/upgrades.md)")


def schema(engine: Engine, extra_locations: Sequence[Path] = ()) -> Schema:
    """Read the database's revision and judge it (raises SQLAlchemy errors on a
    database that cannot be reached)."""
    scripts = ScriptDirectory.from_config(alembic_config("sqlite://", extra_locations))
    own = scripts.get_current_head()
    assert own is not None
    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
        step = None
        if current is not None and current != own and inspect(conn).has_table("schema_revisions"):
            step = conn.execute(text("SELECT down_revision, expand_only FROM schema_revisions "
                                     "WHERE revision = :r"), {"r": current}).first()
    if current == own:
        return Schema("current", current, own)
    if current is None:
        return Schema("empty", None, own)
    known = {s.revision for s in scripts.walk_revisions()}
    if current in known:
        return Schema("behind", current, own)
    if step is not None and step[0] == own and bool(step[1]):
        return Schema("expand_ahead", current, own)
    return Schema("newer", current, own)


def check_servable(engine: Engine) -> Schema:
    """The schema a worker is about to serve on, or ConfigError (one line) when
    it must not: unreachable, not migrated, or too new."""
    try:
        found = schema(engine)
    except SQLAlchemyError as exc:
        raise ConfigError(f"database unreachable at {_safe(engine)}: {_first_line(exc)}") from None
    if not found.servable:
        raise ConfigError(f"{found.explain()} (database {_safe(engine)})")
    return found


def migrate(url: str, to: str | None = None, extra_locations: Sequence[Path] = ()) -> str:
    """``teller migrate``: bring the schema to this release's head (or to ``to``,
    up or down). Returns the line to print; raises ConfigError (one line) where
    it cannot, instead of an alembic traceback."""
    from teller.db.engine import private_sqlite_file

    private_sqlite_file(url)  # before the engine below creates it with the umask's mode
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        found = schema(engine, extra_locations)
    except SQLAlchemyError as exc:
        raise ConfigError(f"database unreachable at {_safe(engine)}: {_first_line(exc)}") from None
    finally:
        engine.dispose()
    scripts = ScriptDirectory.from_config(alembic_config(url, extra_locations))
    order = [s.revision for s in scripts.walk_revisions()]  # newest first
    if to is not None and to not in order:
        raise ConfigError(f"--to {to[:40]!r} is not a revision this release knows (it knows {', '.join(order)})")
    if found.kind in ("expand_ahead", "newer"):
        if to is None or found.kind == "newer":
            if found.kind == "newer":
                raise ConfigError(found.explain())
            return found.explain()
        raise ConfigError(f"database schema {found.revision} is newer than this release: only the release that "
                          f"has it can migrate it down to {to}")
    target = to or found.head
    try:
        if found.revision is not None and target in order and found.revision in order \
                and order.index(target) > order.index(found.revision):
            downgrade(url, target, extra_locations)
            return f"database schema migrated down to {target}"
        upgrade(url, target, extra_locations)
    except SQLAlchemyError as exc:
        raise ConfigError(f"migration to {target} failed: {_first_line(exc)}") from None
    if target == found.head:
        return f"database is at the newest schema ({target})"
    return f"database schema migrated to {target}"


def record_step(ctx: MigrationContext, step: Any, heads: Any, run_args: Any) -> None:
    """Alembic's ``on_version_apply`` hook (``migrations/env.py``): note each step
    in ``schema_revisions``, in the step's own transaction, once that table exists."""
    conn = ctx.connection
    if conn is None or step.is_stamp or not inspect(conn).has_table("schema_revisions"):
        return
    revision = step.up_revision_id
    conn.execute(text("DELETE FROM schema_revisions WHERE revision = :r"), {"r": revision})
    if step.is_upgrade:
        module = step.up_revision.module
        parents = step.up_revision.down_revision
        parent = parents if isinstance(parents, str) or parents is None else ",".join(parents)
        conn.execute(text("INSERT INTO schema_revisions (revision, down_revision, expand_only, applied_ms) "
                          "VALUES (:r, :p, :e, :t)"),
                     {"r": revision, "p": parent, "e": bool(getattr(module, EXPAND_MARKER, False)),
                      "t": ms(system_clock)})


def _safe(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


def _first_line(exc: BaseException) -> str:
    inner = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(inner).splitlines() if line.strip()]
    return f"{type(inner).__name__}: {lines[0] if lines else ''}"[:300]
