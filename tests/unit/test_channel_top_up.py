"""What a top-up adds (pure): the server's suggestion, else the opening deposit,
never less than what the next unit lacks; and the room ``max_channel_deposit``
leaves a channel, in the token's units, which the policy then allows exactly."""

from __future__ import annotations

import base64
import json

from hypothesis import given
from hypothesis import strategies as st

from teller.mpp import challenge as mc
from teller.mpp import session
from teller.schemes.base import Offer
from teller.schemes.mpp_session import TEMPO_SESSION, top_up_offer
from teller.spend.evaluate import channel_room, evaluate_scope
from teller.spend.rules import Asset, Charge, Policy

NETWORK = "eip155:4217"
TOKEN = "0x20c0000000000000000000000000000000000000"


def _charge(decimals: int, deposit: int, whole: int) -> tuple[Policy, Charge]:
    return (Policy(unit_decimals=6, assets=(Asset(NETWORK, TOKEN, decimals),)),
            Charge(NETWORK, TOKEN, 1, "0x" + "ab" * 20, "https://api.test/x", 0, deposit, channel_deposit=whole))


def test_no_cap_leaves_unbounded_room():
    policy, charge = _charge(6, 10, 20)
    assert channel_room(policy, charge, 10) is None


@given(decimals=st.integers(0, 18), cap=st.integers(0, 10**6), deposit=st.integers(0, 10**12))
def test_the_room_is_the_most_the_cap_allows_once_converted(decimals, cap, deposit):
    policy, _ = _charge(decimals, 1, 1)
    policy = Policy(unit_decimals=6, max_channel_deposit=cap, assets=policy.assets)

    def allowed(added: int) -> bool:
        charge = Charge(NETWORK, TOKEN, 1, "0x" + "ab" * 20, "https://api.test/x", 0, max(added, 1),
                        channel_deposit=deposit + added)
        return evaluate_scope(policy, "tenant", charge, {}, False).allowed

    room = channel_room(policy, Charge(NETWORK, TOKEN, 1, "0x" + "ab" * 20, "u", 0, 1, channel_deposit=deposit), deposit)
    assert room is not None and room >= 0
    if room > 0:
        assert allowed(room)
    assert not allowed(room + 1)


def test_a_top_up_prefers_the_suggestion_and_covers_the_shortfall():
    def offer(suggested: str | None) -> Offer:
        doc = {"amount": "25", "currency": "0x20C0000000000000000000000000000000000000",
               "recipient": "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC", "unitType": "token",
               "methodDetails": {"chainId": 31337, "sessionProtocol": "v2"}}
        if suggested is not None:
            doc["suggestedDeposit"] = suggested
        b64 = base64.urlsafe_b64encode(json.dumps(doc).encode()).decode().rstrip("=")
        (ch,) = mc.parse([("WWW-Authenticate", f'Payment id="s1", realm="r", method="tempo", intent="session", '
                                               f'request="{b64}"')], 65536)
        req = session.parse_request(ch)
        return Offer(TEMPO_SESSION, req.network, req.currency, req.amount, req.recipient,
                     session.Session(ch, req))

    def added(suggested: str | None, deposit: int, cumulative: int, opened_with: int) -> int:
        top = top_up_offer(offer(suggested), "h", "0x" + "11" * 32, "{}", "0x" + "22" * 20, deposit, cumulative,
                           opened_with)
        assert top.channel_deposit == deposit + top.terms.amount == deposit + top.deposit
        return top.terms.amount

    assert added("1000", 500, 490, 500) == 1000  # the server's suggestion
    assert added(None, 500, 490, 500) == 500  # else what the channel opened with
    assert added("10", 500, 500, 500) == 25  # never less than the next unit lacks
