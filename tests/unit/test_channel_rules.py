"""What a voucher may be: strictly increasing, positive steps, within the caller's
cap and the deposit, only on an open channel; each refusal names why."""

from __future__ import annotations

import pytest

from teller.channels.rules import MAX_AMOUNT, ChannelState, check_amount, next_cumulative
from teller.errors import FailedPrecondition, InvalidArgument, LimitExceeded


def _next(current: int = 0, deposit: int = 100, increment: int = 10, *, state: str = ChannelState.OPEN,
          cap: int | None = None) -> int:
    return next_cumulative(state=state, current=current, deposit=deposit, increment=increment, max_increment=cap)


def test_the_total_rises_by_the_increment_up_to_the_deposit_exactly():
    assert _next(0, 100, 10) == 10
    assert _next(90, 100, 10) == 100
    with pytest.raises(LimitExceeded, match=r"would pass the channel's deposit of 100 \(10 left\)") as e:
        _next(90, 100, 11)
    assert e.value.reason == "channel_deposit_exhausted" and e.value.metadata["remaining"] == "10"


def test_a_step_of_zero_or_below_is_refused_so_totals_strictly_increase():
    with pytest.raises(InvalidArgument, match="must be positive"):
        _next(increment=0)
    with pytest.raises(InvalidArgument, match="between 0 and"):
        _next(increment=-1)


@pytest.mark.parametrize("bad", [True, 1.0, "5", None, MAX_AMOUNT + 1, 2**96])
def test_what_is_not_an_amount_is_named(bad):
    with pytest.raises(InvalidArgument, match="increment"):
        _next(increment=bad)
    with pytest.raises(InvalidArgument, match="deposit"):
        check_amount(bad, "deposit")


def test_the_per_voucher_cap_holds():
    assert _next(increment=5, cap=5) == 5
    with pytest.raises(LimitExceeded, match="above the cap of 5 per voucher") as e:
        _next(increment=6, cap=5)
    assert e.value.reason == "voucher_increment_cap"


@pytest.mark.parametrize("state", [ChannelState.CLOSING, ChannelState.CLOSED])
def test_a_channel_that_is_not_open_takes_no_voucher(state):
    with pytest.raises(FailedPrecondition, match=f"the channel is {state}") as e:
        _next(state=state)
    assert e.value.reason == "channel_not_open"
