"""Wiring: one object holding the configured database, vault and services."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from teller.admin import Admin
from teller.chain import ChainReader
from teller.channels.forced import ForcedClose
from teller.channels.store import Channels
from teller.clock import Clock, system_clock
from teller.config import Settings
from teller.db import Database, make_engine
from teller.db.migrate import check_servable
from teller.db.migrate import migrate as run_migrations
from teller.errors import ConfigError
from teller.fetch import Fetcher
from teller.lifecycle import Lifecycle
from teller.operators import Operators
from teller.reconciler import Reconciler
from teller.sign.service import Payments
from teller.vault import LocalKekProvider, Vault

log = logging.getLogger("teller.app")


@dataclass
class App:
    settings: Settings
    db: Database
    vault: Vault
    admin: Admin
    payments: Payments
    chain: ChainReader
    lifecycle: Lifecycle
    reconciler: Reconciler
    fetcher: Fetcher
    operators: Operators
    channels: Channels

    def close(self) -> None:
        self.vault.forget()
        self.db.engine.dispose()


def kek_provider(settings: Settings) -> LocalKekProvider:
    if settings.kek_file is not None:
        return LocalKekProvider.from_file(settings.kek_file)
    if settings.kek:
        return LocalKekProvider.parse(settings.kek)
    raise ConfigError("no KEK configured")


def build(settings: Settings, clock: Clock = system_clock, *, migrate: bool | None = None) -> App:
    """Build the app. Migrations run only when asked (dev mode asks by default)."""
    url = settings.resolved_database_url()
    if migrate if migrate is not None else settings.dev_mode:
        run_migrations(url)
    db = Database(make_engine(url, settings.db_pool_size))
    try:
        found = check_servable(db.engine)
    except ConfigError:
        db.engine.dispose()
        raise
    if found.kind != "current":
        log.warning("%s", found.explain())
    vault = Vault(kek_provider(settings), settings.key_cache_seconds)
    chain = ChainReader(settings.rpc_urls)
    channels = Channels(db, vault, clock)
    return App(
        settings=settings,
        db=db,
        vault=vault,
        admin=Admin(db, vault, clock),
        payments=Payments(
            db, vault, networks=settings.networks, max_challenge_bytes=settings.max_challenge_bytes,
            idempotency_ttl_s=settings.idempotency_ttl_seconds, clock=clock, chain=chain,
            max_authorization_s=settings.max_authorization_seconds,
            balance_check_s=settings.balance_check_seconds, session_escrows=settings.session_escrows,
            channels=channels,
        ),
        chain=chain,
        lifecycle=Lifecycle(db, chain, vault, clock, max_void_fee_wei=settings.max_void_fee_wei),
        reconciler=Reconciler(db, chain, clock, lookback_blocks=settings.reconcile_lookback_blocks,
                              forced=ForcedClose(db, vault, chain, clock)),
        fetcher=Fetcher(allow=settings.outbound_allow, connect_timeout_s=settings.outbound_connect_timeout_seconds,
                        read_timeout_s=settings.outbound_read_timeout_seconds,
                        max_response_bytes=settings.max_response_bytes, max_redirects=settings.max_redirects),
        operators=Operators(db, clock),
        channels=channels,
    )
