"""MPP ``evm`` method, ``charge`` intent: an EIP-3009 authorization of the
request's amount to its recipient, its nonce bound to the challenge (so signing
one challenge twice gives one nonce), sent as an MPP credential. The token's
EIP-712 domain comes from the challenge or, when it names none, from the chain.
The protocol code is ``teller.mpp.charge`` and ``teller.x402.eip3009``."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from teller.errors import FailedPrecondition
from teller.mpp import charge as mpp_charge
from teller.mpp import receipt as mpp_receipt
from teller.mpp.challenge import MppChallenge
from teller.mpp.charge import ChargeTerms
from teller.schemes import mpp_common
from teller.schemes.base import Follow, Offer, SchemeId, new_payment
from teller.x402 import eip3009

if TYPE_CHECKING:
    from teller.chain import ChainReader
    from teller.clock import Clock
    from teller.signing import Context, NewPayment, Prepared, Presigned
    from teller.vault.signer import WalletSigner


class EvmCharge:
    id = SchemeId.EVM_CHARGE
    protocol = "mpp"
    method = "evm"
    intent = "charge"
    follow = Follow.AUTHORIZATION
    moves_amount = True
    deterministic = True
    decode_receipt = staticmethod(mpp_receipt.decode)
    purchase_terms = staticmethod(mpp_common.purchase_terms)
    pushed = staticmethod(mpp_common.not_pushed)

    def offer(self, ch: MppChallenge, now: datetime) -> Offer[ChargeTerms] | str:
        req = mpp_charge.parse_request(ch)  # malformed: INVALID_ARGUMENT naming the field
        skipped = mpp_common.expired(ch, now)
        if skipped is not None:
            return skipped
        if req.credential_types and "authorization" not in req.credential_types:
            return (f"Payment challenge {ch.id[:40]!r}: no credential type Teller can sign "
                    f"({', '.join(req.credential_types)})")
        return mpp_common.charge_offer(self, ch, req)

    def chain_facts(self, offer: Offer[ChargeTerms], prepared: Prepared, chain: ChainReader, *, payer: str | None,
                    clock: Clock, cached_only: bool) -> None:
        if offer.terms.request.domain is not None:
            return
        key = (offer.network, offer.asset)
        if key not in prepared.domains:
            try:
                prepared.domains[key] = chain.token_domain(offer.network, offer.asset, cached_only)
            except FailedPrecondition:
                pass  # no RPC for it: the offer is refused if it is the one chosen

    def max_fee(self, offer: Offer[ChargeTerms], prepared: Prepared) -> int:
        return 0  # the server sends the transaction and pays its gas

    def presign(self, offer: Offer[ChargeTerms], signer: WalletSigner, prepared: Prepared, *, wallet_id: str, now_s: int,
                max_valid_for_s: int) -> Presigned | None:
        return None  # cheap to sign under the lock, and its domain may be unknown until then

    def sign(self, offer: Offer[ChargeTerms], signer: WalletSigner, ctx: Context, prepared: Prepared, *,
             max_valid_for_s: int) -> tuple[NewPayment, dict[str, Any], bytes | None]:
        ch, req = offer.terms.challenge, offer.terms.request
        domain = req.domain or prepared.domains.get((offer.network, offer.asset))
        if domain is None:
            raise FailedPrecondition(f"{offer.asset} on {offer.network}: the challenge names no EIP-712 domain and "
                                     "no RPC endpoint is configured to read it (set rpc_urls)")
        token = eip3009.Token(req.chain_id, req.currency, *domain)
        auth = mpp_charge.evm_authorization(req, ch, signer.address, ctx.now_ms // 1000,
                                            max_valid_for_s=max_valid_for_s)
        signature = signer.sign_typed_data(eip3009.typed_data(token, auth))
        payload = {"type": "authorization", **auth.to_json(), "signature": "0x" + signature.hex()}
        value = mpp_charge.credential(ch, payload, mpp_charge.did_pkh(req.chain_id, signer.address))
        row = new_payment(offer, ctx, version=1, nonce="0x" + auth.nonce.hex(), valid_before=auth.valid_before,
                          header_name=ch.header, header_value=value, token_domain=domain)
        return row, {"method": ch.method, "intent": ch.intent, "challenge_id": ch.id, "realm": ch.realm}, None


EVM_CHARGE = EvmCharge()

__all__ = ["EVM_CHARGE", "EvmCharge"]
