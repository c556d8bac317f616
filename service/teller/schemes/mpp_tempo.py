"""MPP ``tempo`` method, ``charge`` intent: a Tempo transaction (type 0x76, an
expiring nonce, fees paid in the charged token) of TIP-20 transfers to the
recipient and its splits. In pull mode the credential carries the signed
transaction and the server broadcasts it; in push mode Teller broadcasts it
once the reservation committed and the credential carries its hash. The
protocol code is ``teller.mpp`` (``charge``, ``tempo_tx``, ``gas``)."""

from __future__ import annotations

import functools
from datetime import datetime
from typing import TYPE_CHECKING, Any

from teller.errors import FailedPrecondition, InvalidArgument, TellerError
from teller.keccak import keccak256
from teller.mpp import charge as mpp_charge
from teller.mpp import gas as tempo_gas
from teller.mpp import receipt as mpp_receipt
from teller.mpp.challenge import MppChallenge
from teller.mpp.charge import ChargeTerms
from teller.mpp.tempo_tx import TempoTransaction
from teller.schemes import mpp_common
from teller.schemes.base import Follow, Offer, SchemeId, new_payment
from teller.schemes.mpp_proof import TEMPO_PROOF, refuse_fee_payer
from teller.signing import Presigned

if TYPE_CHECKING:
    from teller.chain import ChainReader
    from teller.clock import Clock
    from teller.signing import Context, NewPayment, Prepared
    from teller.vault.signer import WalletSigner


def signed_transaction(tx: TempoTransaction, signer: WalletSigner) -> bytes:
    """``tx`` signed by the wallet: the signer signs only its signing hash.
    v = 27 + yParity: nodes re-encode 0/1 and the hash would then differ from keccak(raw)."""
    return tx.signed(signer.unsafe_sign_hash(tx.signing_hash()))


def tx_hash(raw: bytes) -> str:
    """A signed Tempo transaction's hash: its nonce (expiring nonces are replay-protected by it)."""
    return "0x" + keccak256(raw).hex()


def gas_limit(prepared: Prepared, offer: Offer[Any]) -> int:
    """The estimated gas limit of the Tempo transaction that pays ``offer`` (a
    charge, or a session's open); raises the chain's refusal."""
    found = prepared.gas_limits.get(id(offer))
    if isinstance(found, TellerError):
        raise found
    if found is None:
        raise FailedPrecondition(f"no gas estimate for this Tempo payment on {offer.network} (set rpc_urls)",
                                 reason="gas_estimate_failed")
    return found


def read_gas_price(network: str, prepared: Prepared, chain: ChainReader, cached_only: bool) -> None:
    """Add ``network``'s gas price to ``prepared`` once per call; without an RPC
    for it, nothing (the offer is refused if it is the one chosen)."""
    if network not in prepared.gas_price:
        try:
            prepared.gas_price[network] = chain.gas_price(network, cached_only)
        except FailedPrecondition:
            pass


def max_fee(offer: Offer[Any], prepared: Prepared) -> int:
    """The most the Tempo transaction paying ``offer`` can cost its wallet in fees
    (fee-token base units, the charged token): its estimated gas limit x the max
    fee per gas Teller signs. 0 when the estimate failed (signing then fails with
    the chain's reason)."""
    limit = prepared.gas_limits.get(id(offer))
    price = prepared.gas_price.get(offer.network)
    if not isinstance(limit, int) or price is None:
        return 0
    return tempo_gas.max_fee(limit, price)


class TempoCharge:
    id = SchemeId.TEMPO_CHARGE
    protocol = "mpp"
    method = "tempo"
    intent = "charge"
    follow = Follow.TRANSACTION
    moves_amount = True
    deterministic = True  # a transaction signed twice within one second is the same bit for bit
    decode_receipt = staticmethod(mpp_receipt.decode)
    purchase_terms = staticmethod(mpp_common.purchase_terms)

    def offer(self, ch: MppChallenge, now: datetime) -> Offer[ChargeTerms] | str:
        req = mpp_charge.parse_request(ch)  # malformed: INVALID_ARGUMENT naming the field
        skipped = mpp_common.expired(ch, now)
        if skipped is not None:
            return skipped
        # Nothing moves for an amount of zero: a proof, not a transaction.
        return mpp_common.charge_offer(TEMPO_PROOF if req.amount == 0 else self, ch, req)

    def chain_facts(self, offer: Offer[ChargeTerms], prepared: Prepared, chain: ChainReader, *, payer: str | None,
                    clock: Clock, cached_only: bool) -> None:
        network, gas = offer.network, prepared.gas_price
        read_gas_price(network, prepared, chain, cached_only)
        req = offer.terms.request
        if payer is not None and network in gas and not req.fee_payer:
            # Built only when the limit is not cached: the estimate's transaction.
            build = functools.partial(mpp_charge.tempo_transaction, req, offer.terms.challenge, now_s=int(clock()),
                                      gas_limit=1, gas_price=gas[network])
            try:
                prepared.gas_limits[id(offer)] = chain.tempo_gas_limit(
                    network, payer, tempo_gas.shape_key(req, payer), build, cached_only)
            except (FailedPrecondition, InvalidArgument) as exc:
                prepared.gas_limits[id(offer)] = exc  # reported if this offer is the one chosen

    def max_fee(self, offer: Offer[ChargeTerms], prepared: Prepared) -> int:
        return max_fee(offer, prepared)

    def presign(self, offer: Offer[ChargeTerms], signer: WalletSigner, prepared: Prepared, *, wallet_id: str, now_s: int,
                max_valid_for_s: int) -> Presigned | None:
        ch, req = offer.terms.challenge, offer.terms.request
        price = prepared.gas_price.get(offer.network)
        if req.fee_payer or price is None:
            return None
        try:
            tx = mpp_charge.tempo_transaction(req, ch, now_s=now_s, gas_limit=gas_limit(prepared, offer),
                                              gas_price=price, max_valid_for_s=max_valid_for_s)
        except TellerError:
            return None
        raw = signed_transaction(tx, signer)
        return Presigned(offer, wallet_id, signer.address, (tx, raw), tx_hash(raw))

    def sign(self, offer: Offer[ChargeTerms], signer: WalletSigner, ctx: Context, prepared: Prepared, *,
             max_valid_for_s: int) -> tuple[NewPayment, dict[str, Any], bytes | None]:
        ch, req = offer.terms.challenge, offer.terms.request
        refuse_fee_payer(ch, req)
        price = prepared.gas_price.get(offer.network)
        if price is None:
            raise FailedPrecondition(f"no RPC endpoint configured for {offer.network}: Tempo payments need the "
                                     "chain's gas price (set rpc_urls)")
        mode = ctx.mpp_mode if ctx.mpp_mode in req.modes else req.modes[0]
        pre = ctx.presigned
        if pre is not None and pre.nonce is not None:
            (tx, raw), nonce = pre.proof, pre.nonce
        else:
            tx = mpp_charge.tempo_transaction(req, ch, now_s=ctx.now_ms // 1000,
                                              gas_limit=gas_limit(prepared, offer), gas_price=price,
                                              max_valid_for_s=max_valid_for_s)
            raw = signed_transaction(tx, signer)
            nonce = tx_hash(raw)
        fee_max = tempo_gas.max_fee(tx.gas_limit, tx.gas_price)
        details: dict[str, Any] = {"method": ch.method, "intent": ch.intent, "mode": mode, "challenge_id": ch.id,
                                   "realm": ch.realm, "tx_hash": nonce, "gas_limit": tx.gas_limit,
                                   "max_fee_per_gas": tx.gas_price, "fee_max": fee_max}
        if mode == "pull":
            value = mpp_charge.credential(ch, {"type": "transaction", "signature": "0x" + raw.hex()},
                                          mpp_charge.did_pkh(req.chain_id, signer.address))
            row = new_payment(offer, ctx, version=1, nonce=nonce, valid_before=int(tx.valid_before or 0),
                              header_name=ch.header, header_value=value)
            row.fee_max, row.fee_common = fee_max, ctx.decision.fee_common
            return row, details, None
        # Push: the reservation commits first; the credential exists once the chain has the transfer.
        row = new_payment(offer, ctx, version=1, nonce=nonce, valid_before=int(tx.valid_before or 0),
                          header_name=ch.header, header_value="")
        row.fee_max, row.fee_common = fee_max, ctx.decision.fee_common
        return row, details, raw

    def pushed(self, offer: Offer[ChargeTerms], tx_hash: str, payer: str) -> str:
        ch, req = offer.terms.challenge, offer.terms.request
        return mpp_charge.credential(ch, {"type": "hash", "hash": tx_hash}, mpp_charge.did_pkh(req.chain_id, payer))


TEMPO_CHARGE = TempoCharge()

__all__ = ["TEMPO_CHARGE", "TempoCharge", "gas_limit", "max_fee", "read_gas_price", "signed_transaction", "tx_hash"]
