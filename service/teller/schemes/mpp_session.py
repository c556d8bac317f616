"""MPP ``tempo`` method, ``session`` intent: a TIP-1034 v2 payment channel.

Paying the first session challenge for a payee opens a channel: a Tempo
transaction (0x76) calling ``open`` on the escrow with the deposit, which the
server broadcasts, and the first voucher (one unit). That open is a payment
like any other to the Sign path: its deposit and the transaction's most
expensive fee are reserved against every budget window in the batch that
signs it, and the channel's row and first voucher are written in the same
transaction (``NewPayment.rows``). Later challenges for the same channel are
answered with vouchers, under the channel's lock (``teller.channels.store``),
outside the batch: they spend only what the deposit already reserved.

The protocol code is ``teller.mpp.session`` (the wire) and
``teller.mpp.channel`` (descriptor, id, voucher, escrow calls).
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from teller.channels.rules import ChannelState
from teller.errors import FailedPrecondition, InvalidArgument
from teller.mpp import charge as mpp_charge
from teller.mpp import gas as tempo_gas
from teller.mpp import receipt as mpp_receipt
from teller.mpp import session as mpp_session
from teller.mpp.challenge import MppChallenge
from teller.mpp.channel import (
    OpenedChannel,
    channel_transaction,
    open_channel,
    top_up_call,
    voucher_typed_data,
)
from teller.mpp.session import Session
from teller.schemes import mpp_common
from teller.schemes.base import Follow, Offer, SchemeId, new_payment
from teller.schemes.mpp_tempo import gas_limit, max_fee, read_gas_price, signed_transaction, tx_hash

if TYPE_CHECKING:
    from teller.chain import ChainReader
    from teller.clock import Clock
    from teller.mpp.tempo_tx import TempoTransaction
    from teller.signing import Context, NewPayment, Prepared, Presigned
    from teller.vault.signer import WalletSigner



def deposit(req: mpp_session.SessionRequest) -> int:
    """The deposit Teller opens a channel with: the server's suggestion, and
    never less than one unit. The caller's cap and the policy judge it as the
    payment's amount."""
    suggested = req.suggested_deposit if req.suggested_deposit is not None else req.amount
    return max(suggested, req.amount)


def _build_open(session: Session, payer: str, *, salt: bytes, gas_limit: int, gas_price: int, now_s: int,
                max_valid_for_s: int = mpp_charge.MAX_VALID_FOR_S) -> OpenedChannel:
    """The open transaction; like a charge's, its expiring nonce is valid for
    seconds (Tempo's bound), within the challenge's expiry: the server
    broadcasts it as soon as it has the credential."""
    req = session.request
    return open_channel(payer=payer, payee=req.recipient, token=req.currency, deposit=deposit(req), salt=salt,
                        escrow=req.escrow, chain_id=req.chain_id, gas_limit=gas_limit, gas_price=gas_price,
                        valid_before=mpp_charge.valid_before(session.challenge, now_s, max_valid_for_s),
                        operator=req.operator, fee_token=req.fee_token)


@dataclass(frozen=True, slots=True)
class TopUp:
    """A session challenge answered by topping up the wallet's open channel (none
    had the unit left): the terms of the top-up offer, in place of the open's.
    ``deposit`` and ``cumulative`` are the channel's as read, ``amount`` what the
    top-up adds; the Sign batch reads the channel again under its lock and fixes
    the amount (``at``) before it is signed."""

    session: Session
    channel: str  # Teller's handle
    channel_id: str
    descriptor: str  # as stored (JSON)
    escrow: str
    deposit: int
    cumulative: int
    amount: int
    #: What the voucher after it adds: the top-up must leave at least this much room.
    increment: int
    #: The total of the voucher it is for, when that is fixed (a metered stream asks for a
    #: total); None: the next unit on the channel's total as it stands when locked.
    total: int | None = None

    def lacks(self, deposit: int, cumulative: int) -> int:
        """What a channel with this deposit and total lacks for the voucher (0: it fits)."""
        return max((cumulative + self.increment if self.total is None else self.total) - deposit, 0)

    @property
    def shortfall(self) -> int:
        return self.lacks(self.deposit, self.cumulative)

    def at(self, deposit: int, cumulative: int, amount: int) -> TopUp:
        return dataclasses.replace(self, deposit=deposit, cumulative=cumulative, amount=amount)


def top_up_amount(req: mpp_session.SessionRequest, opened_with: int) -> int:
    """What a top-up adds, before the policy's cap bounds it: the server's
    suggested deposit, else what the channel was opened with (as mppx's client
    prefers the suggestion over the bare shortfall)."""
    return max(req.suggested_deposit if req.suggested_deposit is not None else opened_with, req.amount)


def top_up_offer(offer: Offer[Session], channel: str, channel_id: str, descriptor: str, escrow: str, deposit: int,
                 cumulative: int, opened_with: int, total: int | None = None) -> Offer[Any]:
    """The offer that tops up ``channel`` for ``offer``'s session: one unit's price
    as its amount (the policy judges it as it judges a voucher), what it adds as
    its deposit (the budgets hold it). With ``total`` it makes room for a voucher
    of that total (a metered stream's request), else for the next unit."""
    req = offer.terms.request
    increment = req.amount if total is None else total - cumulative
    top = TopUp(offer.terms, channel, channel_id, descriptor, escrow, deposit, cumulative, 0, increment, total)
    amount = max(top_up_amount(req, opened_with), top.shortfall)
    return dataclasses.replace(cast("Offer[Any]", offer), terms=top.at(deposit, cumulative, amount),
                               deposit=amount, channel_deposit=deposit + amount)


def _build_top_up(top: TopUp, *, gas_limit: int, gas_price: int, now_s: int, valid_after: int,
                  max_valid_for_s: int = mpp_charge.MAX_VALID_FOR_S) -> TempoTransaction:
    """The top-up transaction: exactly one ``topUp`` call (what mppx's server
    verifies), fees in the channel's token unless the server names another."""
    req = top.session.request
    descriptor = mpp_session.parse_descriptor(json.loads(top.descriptor), "stored channel")
    return channel_transaction(top_up_call(top.escrow, descriptor, top.amount), chain_id=req.chain_id,
                               fee_token=req.fee_token or descriptor.token, gas_limit=gas_limit, gas_price=gas_price,
                               valid_before=mpp_charge.valid_before(top.session.challenge, now_s, max_valid_for_s),
                               valid_after=valid_after)


def _valid_after(now_s: int) -> int:
    """A random second at least a minute past, as mppx's client picks: two top-ups
    of one amount signed in one second must still be two transactions."""
    return secrets.randbelow(now_s - 60) if now_s > 60 else 0


def voucher_credential(session: Session, descriptor_json: str, channel_id: str, cumulative: int,
                       signature: str, payer: str) -> str:
    """The ``Authorization: Payment`` value of a voucher on an open channel."""
    descriptor = mpp_session.parse_descriptor(json.loads(descriptor_json), "stored channel")
    payload = mpp_session.voucher_payload(descriptor, bytes.fromhex(channel_id[2:]), cumulative,
                                          bytes.fromhex(signature[2:]))
    return mpp_session.credential(session.challenge, session.request, payload, payer)


#: Which of a wallet's channels a session challenge pays on: (wallet, network,
#: escrow, payee, token, operator), addresses in lower case.
ChannelKey = tuple[str, str, str, str, str, str]


def channel_key(offer: Offer[Session], wallet_id: str) -> ChannelKey:
    """The key of the channel ``offer`` (a session challenge) is paid on."""
    req = offer.terms.request
    return (wallet_id, offer.network, req.escrow.lower(), req.recipient.lower(), req.currency.lower(),
            req.operator.lower())


def stored_channel_key(wallet_id: str, network: str, escrow: str, payee: str, token: str,
                       descriptor: str) -> ChannelKey:
    """The key of a channel as ``channels`` stores it (the operator is in its descriptor)."""
    return (wallet_id, network, escrow.lower(), payee.lower(), token.lower(),
            str(json.loads(descriptor)["operator"]).lower())


def _gas_price_to_sign(offer: Offer[Any], session: Session, prepared: Prepared, what: str, doing: str) -> int:
    """The gas price a channel transaction (open, top-up) the wallet pays for is
    signed with; a sponsored one is refused (Teller signs no fee-payer form)."""
    if session.request.fee_payer:
        raise FailedPrecondition(f"Payment challenge {session.challenge.id[:40]!r} asks for a sponsored (fee payer) "
                                 f"{what}, which Teller does not sign", reason="fee_payer_unsupported")
    price = prepared.gas_price.get(offer.network)
    if price is None:
        raise FailedPrecondition(f"no RPC endpoint configured for {offer.network}: {doing} needs the chain's gas "
                                 "price (set rpc_urls)")
    return price


class TempoSession:
    id = SchemeId.TEMPO_SESSION
    protocol = "mpp"
    method = "tempo"
    intent = "session"
    follow = Follow.TRANSACTION  # the open transaction (nonce = its hash)
    moves_amount = True  # the deposit leaves the wallet for the escrow
    deterministic = False  # each open draws a fresh salt
    decode_receipt = staticmethod(mpp_receipt.decode)

    def offer(self, ch: MppChallenge, now: datetime) -> Offer[Session] | str:
        req = mpp_session.parse_request(ch)  # malformed: INVALID_ARGUMENT naming the field
        skipped = mpp_common.expired(ch, now)
        if skipped is not None:
            return skipped
        # The policy and the caller's cap judge one unit's price, as they judge each
        # voucher; the budgets hold the deposit.
        return Offer(self, req.network, req.currency, req.amount, req.recipient, Session(ch, req),
                     deposit=deposit(req))

    def purchase_terms(self, offer: Offer[Session]) -> object:
        # The channel's terms, not what the server says of a channel it may already
        # hold (channelId, sessionSnapshot): a retry of an open that reached it
        # meets a challenge that names the channel, and is the same purchase.
        ch, req = offer.terms.challenge, offer.terms.request
        return {"method": ch.method, "intent": ch.intent, "realm": ch.realm, "amount": str(req.amount),
                "unit": req.unit_type, "currency": req.currency, "recipient": req.recipient,
                "chain": req.chain_id, "escrow": req.escrow, "operator": req.operator,
                "deposit": str(deposit(req))}

    def chain_facts(self, offer: Offer[Session], prepared: Prepared, chain: ChainReader, *, payer: str | None,
                    clock: Clock, cached_only: bool) -> None:
        read_gas_price(offer.network, prepared, chain, cached_only)
        # The open's gas is estimated only when no open channel answers with a
        # voucher (``open_facts``): most session challenges never need it.

    def open_facts(self, offer: Offer[Session], prepared: Prepared, chain: ChainReader, *, payer: str,
                   clock: Clock) -> None:
        """Add the open transaction's gas limit to ``prepared`` (read before the
        tenant lock, like every chain fact; a refusal is kept for ``sign``)."""
        network, gas = offer.network, prepared.gas_price
        req = offer.terms.request
        if network not in gas or req.fee_payer:
            return
        build = lambda: _build_open(offer.terms, payer, salt=os.urandom(32), gas_limit=1,  # noqa: E731
                                    gas_price=gas[network], now_s=int(clock())).tx
        try:
            # Not cached (key None): opens are rare, and an escrow that holds no
            # token yet costs more to pay into than one that does.
            prepared.gas_limits[id(offer)] = chain.tempo_gas_limit(network, payer, None, build)
        except (FailedPrecondition, InvalidArgument) as exc:
            prepared.gas_limits[id(offer)] = exc

    def top_up_facts(self, offer: Offer[Any], prepared: Prepared, chain: ChainReader, *, payer: str,
                     clock: Clock) -> None:
        """Add the top-up transaction's gas limit to ``prepared``, as ``open_facts``
        does the open's."""
        top: TopUp = offer.terms
        network, gas = offer.network, prepared.gas_price
        if network not in gas or top.session.request.fee_payer:
            return
        now_s = int(clock())
        build = lambda: _build_top_up(top, gas_limit=1, gas_price=gas[network], now_s=now_s,  # noqa: E731
                                      valid_after=_valid_after(now_s))
        try:
            prepared.gas_limits[id(offer)] = chain.tempo_gas_limit(network, payer, None, build, fresh=False)
        except (FailedPrecondition, InvalidArgument) as exc:
            prepared.gas_limits[id(offer)] = exc

    def max_fee(self, offer: Offer[Session], prepared: Prepared) -> int:
        return max_fee(offer, prepared)

    def presign(self, offer: Offer[Session], signer: WalletSigner, prepared: Prepared, *, wallet_id: str,
                now_s: int, max_valid_for_s: int) -> Presigned | None:
        return None  # opens are rare: signed under the lock

    def sign(self, offer: Offer[Session], signer: WalletSigner, ctx: Context, prepared: Prepared, *,
             max_valid_for_s: int) -> tuple[NewPayment, dict[str, Any], bytes | None]:
        if isinstance(offer.terms, TopUp):
            return self._sign_top_up(offer, signer, ctx, prepared, max_valid_for_s=max_valid_for_s)
        ch, req = offer.terms.challenge, offer.terms.request
        price = _gas_price_to_sign(offer, offer.terms, prepared, "channel open", "opening a channel")
        opened = _build_open(offer.terms, signer.address, salt=os.urandom(32),
                             gas_limit=gas_limit(prepared, offer), gas_price=price, now_s=ctx.now_ms // 1000,
                             max_valid_for_s=max_valid_for_s)
        raw = signed_transaction(opened.tx, signer)
        first = req.amount  # the open carries the first unit's voucher
        signature = signer.sign_typed_data(voucher_typed_data(opened.channel_id, first, escrow=req.escrow,
                                                              chain_id=req.chain_id))
        payload = mpp_session.open_payload(opened, raw, first, signature)
        value = mpp_session.credential(ch, req, payload, signer.address)
        nonce = tx_hash(raw)
        fee_max = tempo_gas.max_fee(opened.tx.gas_limit, opened.tx.gas_price)
        row = new_payment(offer, ctx, version=1, nonce=nonce, valid_before=int(opened.tx.valid_before or 0),
                          header_name=ch.header, header_value=value)
        # The payment is the deposit leaving the wallet (its budgets hold the deposit: amount_common).
        row.amount = opened.deposit
        row.fee_max, row.fee_common = fee_max, ctx.decision.fee_common
        channel_handle = str(uuid.uuid4())
        channel_hex = "0x" + opened.channel_id.hex()
        # The channel and its first voucher, written in the transaction that reserves the deposit.
        row.rows = (
            ("channels", {"id": channel_handle, "tenant_id": row.tenant_id, "wallet_id": row.wallet_id,
                          "network": offer.network, "escrow": req.escrow, "channel_id": channel_hex,
                          "token": req.currency, "payee": req.recipient,
                          "descriptor": json.dumps(opened.descriptor.to_json(), sort_keys=True),
                          "deposit": opened.deposit, "cumulative": first, "state": ChannelState.OPEN.value,
                          "open_payment_id": row.id, "created_ms": ctx.now_ms, "updated_ms": ctx.now_ms}),
            # Its key is the payment's: a retry of the open gets the open again (the payment's claim).
            ("vouchers", {"channel": channel_handle, "cumulative": first, "signature": "0x" + signature.hex(),
                          "tenant_id": row.tenant_id, "idempotency_key": None, "created_ms": ctx.now_ms}),
        )
        details: dict[str, Any] = {"method": ch.method, "intent": ch.intent, "challenge_id": ch.id,
                                   "realm": ch.realm, "tx_hash": nonce, "channel": channel_handle,
                                   "channel_id": channel_hex, "escrow": req.escrow, "deposit": opened.deposit,
                                   "first_voucher": first, "gas_limit": opened.tx.gas_limit,
                                   "max_fee_per_gas": opened.tx.gas_price, "fee_max": fee_max}
        return row, details, None

    def _sign_top_up(self, offer: Offer[Any], signer: WalletSigner, ctx: Context, prepared: Prepared, *,
                     max_valid_for_s: int) -> tuple[NewPayment, dict[str, Any], bytes | None]:
        """The top-up: its transaction and credential, and the payment that holds
        what it adds. The batch raises the channel's deposit in the transaction
        that reserves it (``raises``), and records the top-up (``channel_top_ups``):
        a top-up never mined lowers the deposit again."""
        top: TopUp = offer.terms
        ch, req = top.session.challenge, top.session.request
        price = _gas_price_to_sign(offer, top.session, prepared, "top-up", "topping up a channel")
        now_s = ctx.now_ms // 1000
        tx = _build_top_up(top, gas_limit=gas_limit(prepared, offer), gas_price=price, now_s=now_s,
                           valid_after=_valid_after(now_s), max_valid_for_s=max_valid_for_s)
        raw = signed_transaction(tx, signer)
        descriptor = mpp_session.parse_descriptor(json.loads(top.descriptor), "stored channel")
        payload = mpp_session.top_up_payload(descriptor, bytes.fromhex(top.channel_id[2:]), raw, top.amount)
        value = mpp_session.credential(ch, req, payload, signer.address)
        nonce = tx_hash(raw)
        fee_max = tempo_gas.max_fee(tx.gas_limit, tx.gas_price)
        row = new_payment(offer, ctx, version=1, nonce=nonce, valid_before=int(tx.valid_before or 0),
                          header_name=ch.header, header_value=value)
        row.amount = top.amount  # what leaves the wallet for the escrow (the budgets hold it)
        row.fee_max, row.fee_common = fee_max, ctx.decision.fee_common
        new_deposit = top.deposit + top.amount
        row.raises = (top.channel, top.deposit, new_deposit)
        row.rows = (("channel_top_ups", {"payment_id": row.id, "channel": top.channel, "added": top.amount,
                                         "deposit_before": top.deposit, "created_ms": ctx.now_ms}),)
        details: dict[str, Any] = {"method": ch.method, "intent": ch.intent, "challenge_id": ch.id,
                                   "realm": ch.realm, "tx_hash": nonce, "action": "topUp", "channel": top.channel,
                                   "channel_id": top.channel_id, "escrow": top.escrow, "added": top.amount,
                                   "deposit_before": top.deposit, "deposit": new_deposit,
                                   "gas_limit": tx.gas_limit, "max_fee_per_gas": tx.gas_price, "fee_max": fee_max}
        return row, details, None

    def pushed(self, offer: Offer[Session], tx_hash: str, payer: str) -> str:
        return mpp_common.not_pushed(offer, tx_hash, payer)


TEMPO_SESSION = TempoSession()

__all__ = ["TEMPO_SESSION", "ChannelKey", "TempoSession", "TopUp", "channel_key", "deposit", "stored_channel_key",
           "top_up_amount", "top_up_offer",
           "voucher_credential"]
