"""What a wallet can still commit, so Sign refuses up front a payment that can
only fail for want of funds (and holds no budget for it).

    available = balance on chain - reserved by the wallet's live payments
                                 - signed by this worker since those were read

The balance (``balanceOf`` of the offer's token) and the reserved sum (every
unreleased, unsettled payment of the wallet in that token, from the database:
all workers' payments) are read together and kept for ``ttl_s`` seconds (the
setting ``balance_check_seconds``; 0 turns the pre-check off), refreshed in the background in the last fifth of that life, so a
Sign costs no round trip. Staleness bound: a figure is at most ``ttl_s`` old.
Within it, this worker's own signatures are counted as they happen; another
worker's signatures are seen at the next refresh, so two workers signing for
one wallet in the same few seconds may together overcommit it by what they
signed in that interval (the chain then refuses the late proof; the reconciler
releases its budget).

Deliberately conservative: a payment settled on chain but not yet recorded as
settled counts twice (in the lower balance and as reserved) until its outcome
or the reconciler records it. Tempo fees (paid in the fee token) are not
counted. Offers on networks without an RPC endpoint are not checked.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import func, select

from teller.chain import ChainReader, NotCached
from teller.db import Database
from teller.db.models import Payment
from teller.errors import FailedPrecondition, Unavailable
from teller.schemes import REGISTRY
from teller.spend.decision import DenialReason
from teller.states import PaymentState

#: Schemes whose payment moves ``amount`` of the offer's token from the wallet.
CHECKED_SCHEMES = REGISTRY.moving_amount()
_LIVE_UNSETTLED = (PaymentState.SIGNED.value, PaymentState.FAILED.value)


@dataclass(slots=True)
class _Figure:
    balance: int
    reserved: int  # in the database when the balance was read
    since: int  # signed by this worker after that read
    expires: float


class Balances:
    def __init__(self, chain: ChainReader, db: Database, ttl_s: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.chain = chain
        self.db = db
        self.ttl_s = ttl_s
        self._clock = clock
        self._figures: dict[tuple[str, str, str], _Figure] = {}
        self._lock = threading.Lock()
        self._refreshing: set[tuple[str, str, str]] = set()

    def checks(self, network: str, scheme: str, amount: int) -> bool:
        """Whether a payment is checked: the pre-check is on (``ttl_s`` > 0) and the
        chain can tell (an RPC endpoint for the network, a scheme that moves ``amount``)."""
        return (self.ttl_s > 0 and amount > 0 and scheme in CHECKED_SCHEMES
                and network in self.chain.networks)

    def shortfall(self, *, wallet_id: str, address: str, network: str, asset: str, amount: int,
                  cached_only: bool = False) -> FailedPrecondition | None:
        """The refusal for a payment of ``amount`` the wallet cannot cover, or None.
        A chain that cannot be read now is no reason to refuse: the server decides."""
        key = (wallet_id, network, asset.lower())
        with self._lock:
            fig = self._figures.get(key)
        now = self._clock()
        if fig is None or fig.expires <= now:
            if cached_only:
                raise NotCached(f"balance of {address} in {asset} on {network}")
            try:
                fig = self._read(key, address)
            except Unavailable:
                return None
        elif fig.expires - now < self.ttl_s / 5:
            self._refresh_in_background(key, address)
        available = fig.balance - fig.reserved - fig.since
        if amount <= available:
            return None
        return FailedPrecondition(
            f"wallet {address} cannot cover this payment: it holds {fig.balance} of {asset} on {network}, "
            f"{fig.reserved + fig.since} of it reserved by payments not yet settled, and the payment is {amount}",
            reason=DenialReason.INSUFFICIENT_BALANCE,
            metadata={"balance": str(fig.balance), "reserved": str(fig.reserved + fig.since),
                      "amount": str(amount), "asset": asset, "network": network})

    def signed(self, wallet_id: str, network: str, asset: str, amount: int) -> None:
        """This worker reserved ``amount`` for the wallet: count it until the next read."""
        with self._lock:
            fig = self._figures.get((wallet_id, network, asset.lower()))
            if fig is not None:
                fig.since += amount

    def _read(self, key: tuple[str, str, str], address: str) -> _Figure:
        wallet_id, network, asset = key
        started = self._clock()
        with self._lock:
            old = self._figures.get(key)
            counted = old.since if old is not None else 0
        balance = self.chain.token_balance(network, asset, address)
        with self.db.read() as s:
            reserved = s.execute(
                select(func.coalesce(func.sum(Payment.amount), 0)).where(
                    Payment.wallet_id == wallet_id, Payment.network == network,
                    func.lower(Payment.asset) == asset, Payment.released_ms.is_(None),
                    Payment.state.in_(_LIVE_UNSETTLED))).scalar_one()
        with self._lock:
            # What this worker signed while the read ran may be missing from it: keep counting that.
            old = self._figures.get(key)
            fig = _Figure(balance, int(reserved), (old.since - counted) if old is not None else 0,
                          started + self.ttl_s)
            self._figures[key] = fig
        return fig

    def _refresh_in_background(self, key: tuple[str, str, str], address: str) -> None:
        with self._lock:
            if key in self._refreshing:
                return
            self._refreshing.add(key)

        def refresh() -> None:
            try:
                self._read(key, address)
            except Unavailable:
                pass  # the figure lapses; the next call reads it itself
            finally:
                with self._lock:
                    self._refreshing.discard(key)

        threading.Thread(target=refresh, name="teller-balance", daemon=True).start()


__all__ = ["CHECKED_SCHEMES", "Balances"]
