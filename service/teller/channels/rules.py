"""What a voucher may be: pure rules, applied under the channel's lock.

A voucher is the payer's signed promise that the payee may take
``cumulative`` from the channel's deposit in total. Each new voucher raises
the total by an increment, so the payee holds one strictly increasing
sequence, and the last voucher is all it can ever settle. Teller signs a
voucher only when its increment is positive, within the caller's cap and the
policy's, and the new total stays within the deposit: a voucher above the
deposit would be refused by the escrow but still be a promise Teller cannot
keep.
"""

from __future__ import annotations

from enum import StrEnum

from teller.errors import FailedPrecondition, InvalidArgument, LimitExceeded

#: Amounts are stored as signed 64-bit integers (``BigInteger``); TIP-1034's
#: uint96 goes further, but no deposit Teller reserves does.
MAX_AMOUNT = 2**63 - 1


class ChannelState(StrEnum):
    """A channel as ``channels.state`` spells it."""

    #: Deposited; Teller signs vouchers on it.
    OPEN = "open"
    #: A close was asked for (cooperative: the final voucher sent; forced: requestClose
    #: sent); no more vouchers.
    CLOSING = "closing"
    #: Settled and the rest of the deposit refunded, as the chain shows.
    CLOSED = "closed"


def check_amount(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{name} must be an integer of base units")
    if value < 0 or value > MAX_AMOUNT:
        raise InvalidArgument(f"{name} must be between 0 and {MAX_AMOUNT} base units, not {value}")
    return value


def next_cumulative(*, state: str, current: int, deposit: int, increment: int, max_increment: int | None) -> int:
    """The total of the next voucher: ``current`` raised by ``increment``, or
    the error that names why it may not be signed."""
    check_amount(increment, "increment")
    if state != ChannelState.OPEN:
        raise FailedPrecondition(f"the channel is {state}: it takes no more vouchers", reason="channel_not_open")
    if increment == 0:
        raise InvalidArgument("a voucher's increment must be positive: the total must strictly increase")
    if max_increment is not None and increment > max_increment:
        raise LimitExceeded(f"voucher increment {increment} is above the cap of {max_increment} per voucher",
                            reason="voucher_increment_cap", metadata={"limit": str(max_increment)})
    total = current + increment
    if total > deposit:
        raise LimitExceeded(f"a voucher for {total} would pass the channel's deposit of {deposit} "
                            f"({deposit - current} left): top it up or open another channel",
                            reason="channel_deposit_exhausted",
                            metadata={"limit": str(deposit), "remaining": str(deposit - current)})
    return total


def counted_after_close(*, amount_common: int, fee_common: int, deposit: int, refunded: int) -> int:
    """What a channel's open payment counts against budgets once the chain shows
    ``refunded`` of its ``deposit`` back in the wallet: the fee, and the share of
    the deposit in the common unit (``amount_common - fee_common``) that was not
    refunded. The refunded share is rounded down, so the kept share is rounded up:
    Teller never counts less than the chain shows spent. A refund the chain
    reports above the deposit (a top-up Teller did not make) refunds the whole
    deposit and no more."""
    check_amount(deposit, "deposit")
    if deposit == 0:
        raise InvalidArgument("a channel's deposit must be positive")
    deposit_common = amount_common - fee_common
    if deposit_common < 0 or fee_common < 0:
        raise InvalidArgument(f"a payment counting {amount_common} cannot hold a fee of {fee_common}")
    refunded = min(max(refunded, 0), deposit)
    return amount_common - deposit_common * refunded // deposit
