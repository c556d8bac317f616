"""x402 ``exact`` on EVM: an EIP-3009 ``TransferWithAuthorization`` of the
requirement's amount to its ``payTo``, sent in ``X-PAYMENT`` (v1) or
``PAYMENT-SIGNATURE`` (v2). The protocol code is ``teller.x402``; this module
binds it to the Sign path. Each proof has a fresh random nonce, so it can be
signed before the tenant lock and is never the same twice."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from teller import idempotency
from teller.schemes.base import Follow, Offer, SchemeId, new_payment
from teller.signing import Presigned
from teller.x402 import eip3009
from teller.x402 import proof as x402_proof
from teller.x402 import receipt as x402_receipt
from teller.x402.challenge import Requirement, X402Challenge

if TYPE_CHECKING:
    from teller.chain import ChainReader
    from teller.clock import Clock
    from teller.signing import Context, NewPayment, Prepared
    from teller.vault.signer import WalletSigner


class Exact:
    id = SchemeId.EXACT
    protocol = "x402"
    follow = Follow.AUTHORIZATION
    moves_amount = True
    deterministic = False
    decode_receipt = staticmethod(x402_receipt.decode)

    def offer(self, requirement: Requirement, challenge: X402Challenge,
              networks: Mapping[str, int] | None) -> Offer[x402_proof.Payable]:
        p = x402_proof.payable(requirement, challenge, networks)
        return Offer(self, p.network, p.token.address, p.amount, p.pay_to, p)

    def purchase_terms(self, offer: Offer[x402_proof.Payable]) -> object:
        # x402 requirements carry no per-challenge id: the server's own words.
        return dict(offer.terms.requirement.raw)

    def chain_facts(self, offer: Offer[x402_proof.Payable], prepared: Prepared, chain: ChainReader, *,
                    payer: str | None, clock: Clock, cached_only: bool) -> None:
        return None  # the requirement names everything the authorization signs

    def max_fee(self, offer: Offer[x402_proof.Payable], prepared: Prepared) -> int:
        return 0  # the facilitator sends the transaction and pays its gas

    @staticmethod
    def _authorize(chosen: x402_proof.Payable, signer: WalletSigner, now_s: int,
                   max_valid_for_s: int) -> tuple[eip3009.Authorization, bytes]:
        auth = eip3009.authorize(signer.address, chosen.pay_to, chosen.amount, now_s,
                                 min(chosen.timeout_s, max_valid_for_s), os.urandom(32))
        return auth, signer.sign_typed_data(eip3009.typed_data(chosen.token, auth))

    def presign(self, offer: Offer[x402_proof.Payable], signer: WalletSigner, prepared: Prepared, *,
                wallet_id: str, now_s: int, max_valid_for_s: int) -> Presigned | None:
        return Presigned(offer, wallet_id, signer.address, self._authorize(offer.terms, signer, now_s, max_valid_for_s))

    def sign(self, offer: Offer[x402_proof.Payable], signer: WalletSigner, ctx: Context, prepared: Prepared, *,
             max_valid_for_s: int) -> tuple[NewPayment, dict[str, Any], bytes | None]:
        chosen = offer.terms
        pre = ctx.presigned
        auth, signature = (pre.proof if pre is not None
                           else self._authorize(chosen, signer, ctx.now_ms // 1000, max_valid_for_s))
        key = ctx.req.idempotency_key
        name, value = x402_proof.payment_header(
            chosen, auth, signature, payment_id=idempotency.server_id(ctx.caller.tenant_id, key) if key else None)
        version = chosen.challenge.version
        row = new_payment(offer, ctx, version=version, nonce="0x" + auth.nonce.hex(), valid_before=auth.valid_before,
                          header_name=name, header_value=value, token_domain=(chosen.token.name, chosen.token.version))
        return row, {"version": version}, None

    def pushed(self, offer: Offer[x402_proof.Payable], tx_hash: str, payer: str) -> str:
        raise NotImplementedError("an x402 exact payment is never pushed: the server settles it")


EXACT = Exact()

__all__ = ["EXACT", "Exact"]
