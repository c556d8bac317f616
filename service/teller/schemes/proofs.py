"""Sign's proof step over the scheme interface, apart from the database: the
chain facts a call's offers need, the offer the tenant most likely pays signed
before the lock, and the chosen offer signed as the row Sign records. Each
step is the offer's own scheme's; keys stay behind the vault's narrow signer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from teller import offers
from teller.chain import ChainReader
from teller.clock import Clock
from teller.errors import TellerError
from teller.schemes.base import Offer
from teller.signing import Context, NewPayment, Prepared, Presigned, SignInput, WalletKey
from teller.spend.rules import PROTOCOLS
from teller.vault import SealedKey, Vault
from teller.vault.signer import WalletSigner


class Proofs:
    def __init__(self, vault: Vault, chain: ChainReader, clock: Clock, idempotency_ttl_ms: int,
                 max_authorization_s: int = 3600) -> None:
        self.vault = vault
        self.chain = chain
        self.clock = clock
        self.idempotency_ttl_ms = idempotency_ttl_ms
        #: No proof stays usable longer (Settings.max_authorization_seconds).
        self.max_authorization_s = max_authorization_s

    def chain_facts(self, candidates: Sequence[Offer[Any]], cached_only: bool = False,
                    payer: str | None = None) -> Prepared:
        """Chain facts the offers need (a Tempo offer's gas price and the gas limit
        the chain estimates for ``payer``'s transaction, an evm charge's token
        domain), from the chain reader's caches; with ``cached_only``,
        ``NotCached`` instead of an RPC. They are read before anything is signed
        or reserved."""
        prepared = Prepared({}, {})
        for o in candidates:
            o.scheme.chain_facts(o, prepared, self.chain, payer=payer, clock=self.clock, cached_only=cached_only)
        return prepared

    def presign(self, tenant_id: str, req: SignInput, collected: offers.Collected, prepared: Prepared,
                address: str, sealed: SealedKey) -> Presigned | None:
        """The offer the tenant most likely pays, signed before the lock; the locked
        part uses it if the decision and the wallet match, else signs anew."""
        candidates = offers.by_preference(collected.offers, req.protocols or PROTOCOLS)
        if not candidates:
            return None
        offer = candidates[0]
        try:
            signer = self.vault.signer(tenant_id, req.wallet_id, address, sealed)
        except TellerError:
            return None  # the locked path reports it
        return offer.scheme.presign(offer, signer, prepared, wallet_id=req.wallet_id, now_s=int(self.clock()),
                                    max_valid_for_s=self.max_authorization_s)

    def signer(self, tenant_id: str, wallet: WalletKey) -> WalletSigner:
        return self.vault.signer(tenant_id, wallet.id, wallet.address,
                                 SealedKey(wallet.kek_version, wallet.wrapped_data_key, wallet.key_ciphertext))

    def sign(self, offer: Offer[Any], ctx: Context,
             prepared: Prepared) -> tuple[NewPayment, dict[str, Any], bytes | None]:
        """The chosen offer signed: its row, what its audit event adds, and for a
        push payment the transaction still to broadcast."""
        row, details, raw = offer.scheme.sign(offer, self.signer(ctx.caller.tenant_id, ctx.wallet), ctx, prepared,
                                              max_valid_for_s=self.max_authorization_s)
        if ctx.req.idempotency_key:
            row.idempotency_expires_ms = ctx.now_ms + self.idempotency_ttl_ms
        return row, details, raw


__all__ = ["Proofs"]
