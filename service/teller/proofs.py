"""One payment's proof, apart from the database: the chain facts an offer needs,
the offer the tenant most likely pays signed before the lock, and the chosen
offer signed (x402, MPP evm charge, MPP Tempo charge) as the row Sign records.
Keys stay behind the vault's narrow signer."""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from eth_utils import keccak

from teller import eip3009, idempotency
from teller import offers as offers_mod
from teller.auth import Caller
from teller.chain import ChainReader
from teller.clock import Clock
from teller.errors import FailedPrecondition, InvalidArgument, TellerError
from teller.keccak import keccak256
from teller.mpp import charge as mpp_charge
from teller.mpp import gas as tempo_gas
from teller.mpp.tempo_tx import TempoTransaction
from teller.sign.batch_io import WalletRow
from teller.spend.decision import Decision
from teller.spend.rules import PROTOCOLS
from teller.vault import SealedKey, Vault
from teller.vault.signer import WalletSigner
from teller.x402 import proof as x402_proof

if TYPE_CHECKING:
    from teller.sign.call import SignInput


@dataclass(frozen=True, slots=True)
class Prepared:
    """Chain facts an offer needs before it can be signed, read before the
    tenant lock is taken so no RPC runs while other calls wait on it."""

    gas_price: dict[str, int]
    domains: dict[tuple[str, str], tuple[str, str]]
    #: Per Tempo offer (by identity: the call's own offers), its gas limit from
    #: the chain's estimate, or why the chain refused to estimate it.
    gas_limits: dict[int, int | TellerError] = field(default_factory=dict)

    def gas_limit(self, offer: offers_mod.Offer) -> int:
        """The offer's estimated gas limit; raises the chain's refusal."""
        found = self.gas_limits.get(id(offer))
        if isinstance(found, TellerError):
            raise found
        if found is None:
            raise FailedPrecondition(f"no gas estimate for this Tempo payment on {offer.network} (set rpc_urls)",
                                     reason="gas_estimate_failed")
        return found


@dataclass(frozen=True, slots=True)
class Presigned:
    """A proof signed before the lock for the offer the tenant most likely pays."""

    offer: offers_mod.Offer
    wallet_id: str
    address: str
    auth: eip3009.Authorization | None = None
    signature: bytes | None = None
    tx: TempoTransaction | None = None
    raw: bytes | None = None
    #: A Tempo payment's nonce (its transaction hash): the batch looks it up with its reads.
    nonce: str | None = None

    def fits(self, offer: offers_mod.Offer, wallet: WalletRow) -> bool:
        return offer is self.offer and wallet.id == self.wallet_id and wallet.address == self.address


@dataclass(frozen=True, slots=True)
class Context:
    """What the locked part decided for one call: who pays, from which wallet,
    how much (in the policy's terms), and when (the batch's time)."""

    caller: Caller
    req: SignInput
    wallet: WalletRow
    decision: Decision
    now_ms: int
    request_hash: str
    mpp_mode: str
    presigned: Presigned | None = None


class NewPayment(SimpleNamespace):
    """A payment row a batch is about to insert: the payments table's columns as
    plain attributes (an ORM instance costs several times more to build)."""


class Proofs:
    def __init__(self, vault: Vault, chain: ChainReader, clock: Clock, idempotency_ttl_ms: int,
                 max_authorization_s: int = 3600) -> None:
        self.vault = vault
        self.chain = chain
        self.clock = clock
        self.idempotency_ttl_ms = idempotency_ttl_ms
        #: No proof stays usable longer (Settings.max_authorization_seconds).
        self.max_authorization_s = max_authorization_s

    def chain_facts(self, candidates: Sequence[offers_mod.Offer], cached_only: bool = False,
                    payer: str | None = None) -> Prepared:
        """Chain facts the offers need (gas price, token domain, and for each Tempo
        offer the gas limit the chain estimates for ``payer``'s transaction), from
        the chain reader's caches; with ``cached_only``, ``NotCached`` instead of
        an RPC. They are read before anything is signed or reserved."""
        gas: dict[str, int] = {}
        domains: dict[tuple[str, str], tuple[str, str]] = {}
        limits: dict[int, int | TellerError] = {}
        for o in candidates:
            if o.scheme == "tempo/charge" and o.network not in gas:
                try:
                    gas[o.network] = self.chain.gas_price(o.network, cached_only)
                except FailedPrecondition:
                    pass  # no RPC for it: the offer is refused below if it is the one chosen
            if (o.scheme == "tempo/charge" and payer is not None and o.network in gas and o.mpp is not None
                    and o.charge is not None and o.charge.amount > 0 and not o.charge.fee_payer):
                # Built only when the limit is not cached: the estimate's transaction.
                build = functools.partial(mpp_charge.tempo_transaction, o.charge, o.mpp, now_s=int(self.clock()),
                                          gas_limit=1, gas_price=gas[o.network])
                try:
                    limits[id(o)] = self.chain.tempo_gas_limit(o.network, payer, tempo_gas.shape_key(o.charge, payer),
                                                               build, cached_only)
                except (FailedPrecondition, InvalidArgument) as exc:
                    limits[id(o)] = exc  # reported if this offer is the one chosen
            if o.scheme == "evm/charge" and o.charge is not None and o.charge.domain is None:
                key = (o.network, o.asset)
                if key not in domains:
                    try:
                        domains[key] = self.chain.token_domain(o.network, o.asset, cached_only)
                    except FailedPrecondition:
                        pass
        return Prepared(gas, domains, limits)

    def presign(self, tenant_id: str, req: SignInput, collected: offers_mod.Collected, prepared: Prepared,
                address: str, sealed: SealedKey) -> Presigned | None:
        """The offer the tenant most likely pays, signed before the lock; the locked
        part uses it if the decision and the wallet match, else signs anew."""
        candidates = offers_mod.by_preference(collected.offers, req.protocols or PROTOCOLS)
        if not candidates:
            return None
        offer = candidates[0]
        try:
            signer = self.vault.signer(tenant_id, req.wallet_id, address, sealed)
        except TellerError:
            return None  # the locked path reports it
        now_s = int(self.clock())
        if offer.x402 is not None:
            chosen = offer.x402
            auth = eip3009.authorize(signer.address, chosen.pay_to, chosen.amount, now_s,
                                     min(chosen.timeout_s, self.max_authorization_s), os.urandom(32))
            return Presigned(offer, req.wallet_id, address, auth=auth,
                              signature=signer.sign_typed_data(eip3009.typed_data(chosen.token, auth)))
        req_charge, gas_price = offer.charge, prepared.gas_price.get(offer.network)
        if (offer.scheme == "tempo/charge" and offer.mpp is not None and req_charge is not None
                and req_charge.amount > 0 and not req_charge.fee_payer and gas_price is not None):
            try:
                tx = mpp_charge.tempo_transaction(req_charge, offer.mpp, now_s=now_s,
                                                  gas_limit=prepared.gas_limit(offer), gas_price=gas_price,
                                                  max_valid_for_s=self.max_authorization_s)
            except TellerError:
                return None
            raw = signer.sign_tempo_transaction(tx)
            return Presigned(offer, req.wallet_id, address, tx=tx, raw=raw, nonce=_tx_hash(raw))
        return None

    @staticmethod
    def max_fee(offer: offers_mod.Offer, prepared: Prepared) -> int:
        """The most ``offer``'s transaction can cost its wallet in fees (fee-token
        base units, the charged token): its estimated gas limit x the max fee per
        gas Teller signs. 0 when Teller signs no transaction for it, or when the
        estimate failed (signing it then fails with the chain's reason)."""
        limit = prepared.gas_limits.get(id(offer))
        price = prepared.gas_price.get(offer.network)
        if not isinstance(limit, int) or price is None:
            return 0
        return tempo_gas.max_fee(limit, price)

    def signer(self, tenant_id: str, wallet: WalletRow) -> WalletSigner:
        return self.vault.signer(tenant_id, wallet.id, wallet.address,
                                 SealedKey(wallet.kek_version, wallet.wrapped_data_key, wallet.key_ciphertext))

    def sign(self, offer: offers_mod.Offer, ctx: Context,
             prepared: Prepared) -> tuple[NewPayment, dict[str, Any], bytes | None]:
        """The chosen offer signed: its row, what its audit event adds, and for a
        push payment the transaction still to broadcast."""
        signer = self.signer(ctx.caller.tenant_id, ctx.wallet)
        if offer.x402 is not None:
            return (*self._x402(signer, offer, ctx), None)
        if offer.scheme == "evm/charge":
            return (*self._evm_charge(signer, offer, ctx, prepared), None)
        return self._tempo_charge(signer, offer, ctx, prepared)

    def row(self, offer: offers_mod.Offer, ctx: Context, *, version: int, nonce: str, valid_before: int,
             header_name: str, header_value: str, token_domain: tuple[str, str] = ("", "")) -> NewPayment:
        req = ctx.req
        return NewPayment(
            id=str(uuid.uuid4()), tenant_id=ctx.caller.tenant_id, wallet_id=ctx.wallet.id, protocol=offer.protocol,
            version=version, scheme=offer.scheme, network=offer.network, asset=offer.asset,
            asset_name=token_domain[0], asset_version=token_domain[1], pay_to=offer.pay_to, amount=offer.amount,
            amount_common=ctx.decision.amount_common, fee_max=0, fee_common=0, fee_paid=None, resource_url=req.url,
            nonce=nonce, valid_before=valid_before,
            state="signed", state_reason="", tx_hash="", released_ms=None, header_name=header_name,
            header_value=header_value,
            idempotency_key=req.idempotency_key,
            idempotency_expires_ms=(ctx.now_ms + self.idempotency_ttl_ms) if req.idempotency_key else None,
            request_hash=ctx.request_hash, created_ms=ctx.now_ms, updated_ms=ctx.now_ms,
        )

    def _x402(self, signer: WalletSigner, offer: offers_mod.Offer, ctx: Context) -> tuple[NewPayment, dict[str, Any]]:
        chosen, chall = offer.x402, offer.x402_challenge
        assert chosen is not None and chall is not None
        pre = ctx.presigned
        if pre is not None and pre.auth is not None and pre.signature is not None:
            auth, signature = pre.auth, pre.signature
        else:
            auth = eip3009.authorize(signer.address, chosen.pay_to, chosen.amount, ctx.now_ms // 1000,
                                     min(chosen.timeout_s, self.max_authorization_s), os.urandom(32))
            signature = signer.sign_typed_data(eip3009.typed_data(chosen.token, auth))
        key = ctx.req.idempotency_key
        name, value = x402_proof.payment_header(
            chall, chosen, auth, signature,
            payment_id=idempotency.server_id(ctx.caller.tenant_id, key) if key else None)
        row = self.row(offer, ctx, version=chall.version, nonce="0x" + auth.nonce.hex(),
                        valid_before=auth.valid_before, header_name=name, header_value=value,
                        token_domain=(chosen.token.name, chosen.token.version))
        return row, {"version": chall.version}

    def _evm_charge(self, signer: WalletSigner, offer: offers_mod.Offer, ctx: Context,
                    prepared: Prepared) -> tuple[NewPayment, dict[str, Any]]:
        ch, req = offer.mpp, offer.charge
        assert ch is not None and req is not None
        domain = req.domain or prepared.domains.get((offer.network, offer.asset))
        if domain is None:
            raise FailedPrecondition(f"{offer.asset} on {offer.network}: the challenge names no EIP-712 domain and "
                                     "no RPC endpoint is configured to read it (set rpc_urls)")
        token = eip3009.Token(req.chain_id, req.currency, *domain)
        auth = mpp_charge.evm_authorization(req, ch, signer.address, ctx.now_ms // 1000,
                                            max_valid_for_s=self.max_authorization_s)
        signature = signer.sign_typed_data(eip3009.typed_data(token, auth))
        payload = {"type": "authorization", **auth.to_json(), "signature": "0x" + signature.hex()}
        value = mpp_charge.credential(ch, payload, mpp_charge.did_pkh(req.chain_id, signer.address))
        row = self.row(offer, ctx, version=1, nonce="0x" + auth.nonce.hex(), valid_before=auth.valid_before,
                        header_name=ch.header, header_value=value, token_domain=domain)
        return row, {"method": ch.method, "intent": ch.intent, "challenge_id": ch.id, "realm": ch.realm}

    def _tempo_charge(self, signer: WalletSigner, offer: offers_mod.Offer, ctx: Context,
                      prepared: Prepared) -> tuple[NewPayment, dict[str, Any], bytes | None]:
        ch, req = offer.mpp, offer.charge
        assert ch is not None and req is not None
        if req.fee_payer:
            raise FailedPrecondition(f"Payment challenge {ch.id[:40]!r}: sponsored fees (feePayer) are not "
                                     "supported; Teller wallets pay their own fees")
        source = mpp_charge.did_pkh(req.chain_id, signer.address)
        if req.amount == 0:
            # Nothing moves: an EIP-712 proof that this wallet answers this challenge.
            signature = signer.sign_typed_data(mpp_charge.proof_typed_data(ch, req, signer.address))
            value = mpp_charge.credential(ch, {"type": "proof", "signature": "0x" + signature.hex()}, source)
            row = self.row(offer, ctx, version=1, nonce="0x" + keccak(text=f"proof:{ch.id}").hex(),
                            valid_before=int(ch.expires_at.timestamp()) if ch.expires_at else ctx.now_ms // 1000,
                            header_name=ch.header, header_value=value)
            row.state = "settled"  # nothing moves: an amount of zero, spent at once
            return row, {"method": ch.method, "intent": ch.intent, "mode": "proof", "challenge_id": ch.id,
                         "realm": ch.realm}, None
        gas_price = prepared.gas_price.get(offer.network)
        if gas_price is None:
            raise FailedPrecondition(f"no RPC endpoint configured for {offer.network}: Tempo payments need the "
                                     "chain's gas price (set rpc_urls)")
        mode = ctx.mpp_mode if ctx.mpp_mode in req.modes else req.modes[0]
        pre = ctx.presigned
        if pre is not None and pre.tx is not None and pre.raw is not None and pre.nonce is not None:
            tx, raw, tx_hash = pre.tx, pre.raw, pre.nonce
        else:
            tx = mpp_charge.tempo_transaction(req, ch, now_s=ctx.now_ms // 1000,
                                              gas_limit=prepared.gas_limit(offer), gas_price=gas_price,
                                              max_valid_for_s=self.max_authorization_s)
            raw = signer.sign_tempo_transaction(tx)
            tx_hash = _tx_hash(raw)
        fee_max = tempo_gas.max_fee(tx.gas_limit, tx.gas_price)
        details: dict[str, Any] = {"method": ch.method, "intent": ch.intent, "mode": mode, "challenge_id": ch.id,
                                   "realm": ch.realm, "tx_hash": tx_hash, "gas_limit": tx.gas_limit,
                                   "max_fee_per_gas": tx.gas_price, "fee_max": fee_max}
        if mode == "pull":
            value = mpp_charge.credential(ch, {"type": "transaction", "signature": "0x" + raw.hex()}, source)
            row = self.row(offer, ctx, version=1, nonce=tx_hash, valid_before=int(tx.valid_before or 0),
                            header_name=ch.header, header_value=value)
            row.fee_max, row.fee_common = fee_max, ctx.decision.fee_common
            return row, details, None
        # Push: the reservation commits first; the credential exists once the chain has the transfer.
        row = self.row(offer, ctx, version=1, nonce=tx_hash, valid_before=int(tx.valid_before or 0),
                        header_name=ch.header, header_value="")
        row.fee_max, row.fee_common = fee_max, ctx.decision.fee_common
        return row, details, raw


def _tx_hash(raw: bytes) -> str:
    """A signed Tempo transaction's hash: its nonce (expiring nonces are replay-protected by it)."""
    return "0x" + keccak256(raw).hex()


__all__ = ["Context", "NewPayment", "Prepared", "Presigned", "Proofs"]
