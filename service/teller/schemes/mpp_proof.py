"""MPP ``tempo`` charges of an amount of zero: nothing moves, so the credential
is an EIP-712 proof that the paying wallet answers this challenge (MPP proof
v3). Not a scheme id of its own: its payments are recorded as ``tempo/charge``
(the audit event says ``"mode": "proof"``), settled as they are signed, and so
never followed on chain. ``teller.schemes.mpp_tempo`` reads the offers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from eth_utils import keccak

from teller.errors import FailedPrecondition
from teller.mpp import charge as mpp_charge
from teller.mpp import receipt as mpp_receipt
from teller.mpp.challenge import MppChallenge
from teller.mpp.charge import ChargeRequest, ChargeTerms
from teller.schemes import mpp_common
from teller.schemes.base import Follow, Offer, SchemeId, new_payment

if TYPE_CHECKING:
    from teller.chain import ChainReader
    from teller.clock import Clock
    from teller.signing import Context, NewPayment, Prepared, Presigned
    from teller.vault.signer import WalletSigner


def refuse_fee_payer(ch: MppChallenge, req: ChargeRequest) -> None:
    if req.fee_payer:
        raise FailedPrecondition(f"Payment challenge {ch.id[:40]!r}: sponsored fees (feePayer) are not "
                                 "supported; Teller wallets pay their own fees")


class TempoProof:
    id = SchemeId.TEMPO_CHARGE
    protocol = "mpp"
    follow = Follow.NONE
    moves_amount = False
    deterministic = True
    decode_receipt = staticmethod(mpp_receipt.decode)
    purchase_terms = staticmethod(mpp_common.purchase_terms)
    pushed = staticmethod(mpp_common.not_pushed)

    def chain_facts(self, offer: Offer[ChargeTerms], prepared: Prepared, chain: ChainReader, *, payer: str | None,
                    clock: Clock, cached_only: bool) -> None:
        return None

    def max_fee(self, offer: Offer[ChargeTerms], prepared: Prepared) -> int:
        return 0

    def presign(self, offer: Offer[ChargeTerms], signer: WalletSigner, prepared: Prepared, *, wallet_id: str, now_s: int,
                max_valid_for_s: int) -> Presigned | None:
        return None

    def sign(self, offer: Offer[ChargeTerms], signer: WalletSigner, ctx: Context, prepared: Prepared, *,
             max_valid_for_s: int) -> tuple[NewPayment, dict[str, Any], bytes | None]:
        ch, req = offer.terms.challenge, offer.terms.request
        refuse_fee_payer(ch, req)
        signature = signer.sign_typed_data(mpp_charge.proof_typed_data(ch, req, signer.address))
        value = mpp_charge.credential(ch, {"type": "proof", "signature": "0x" + signature.hex()},
                                      mpp_charge.did_pkh(req.chain_id, signer.address))
        row = new_payment(offer, ctx, version=1, nonce="0x" + keccak(text=f"proof:{ch.id}").hex(),
                          valid_before=int(ch.expires_at.timestamp()) if ch.expires_at else ctx.now_ms // 1000,
                          header_name=ch.header, header_value=value)
        row.state = "settled"  # nothing moves: an amount of zero, spent at once
        return row, {"method": ch.method, "intent": ch.intent, "mode": "proof", "challenge_id": ch.id,
                     "realm": ch.realm}, None


TEMPO_PROOF = TempoProof()

__all__ = ["TEMPO_PROOF", "TempoProof", "refuse_fee_payer"]
