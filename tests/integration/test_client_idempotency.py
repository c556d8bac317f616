"""What an idempotency key names: one purchase, whatever challenge a retry
meets. A retry that receives a fresh challenge for the same purchase gets the
payment already made; a different purchase under the key is refused; a key
whose payment can no longer be used says so. Plus the pure rules of
``teller.idempotency``."""

from __future__ import annotations

import base64
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from teller import idempotency
from teller_client import AlreadyExists, FailedPrecondition, Policy
from testbed.x402_server import sdk_v2_challenge
from tests.support.harness import RunningTeller, make_settings

TOKEN = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
RECIPIENT = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"


def _b64url(doc: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(doc).encode()).decode().rstrip("=")


def mpp_evm_challenge(challenge_id: str, amount: str = "1000", expires: str = "2099-01-01T00:00:00Z"):
    """An MPP evm/charge 402 as a server mints it per request: a new id (and expiry) each time."""
    request = _b64url({"amount": amount, "currency": TOKEN, "recipient": RECIPIENT,
                       "methodDetails": {"chainId": 84532, "credentialTypes": ["authorization"]},
                       "extra": {"name": "USDC", "version": "2"}})
    return [("WWW-Authenticate", f'Payment id="{challenge_id}", realm="api.test", method="evm", intent="charge", '
                                 f'request="{request}", expires="{expires}"')]


def _sign_mpp(client, t, headers, key):
    return client.sign(status=402, headers=headers, body=b"", url="https://api.test/item", wallet_id=t.wallet_id,
                       idempotency_key=key)


def test_a_retry_meeting_a_fresh_mpp_challenge_gets_the_payment_already_made(teller):
    t = teller.setup_tenant(policy=Policy(daily_budget=100_000, allow_unknown_assets=True))
    client = teller.client(t.token)
    first = _sign_mpp(client, t, mpp_evm_challenge("c-1"), "order-1")
    # The server answered the retry with a new challenge (new id, new expiry): same purchase.
    again = _sign_mpp(client, t, mpp_evm_challenge("c-2", expires="2099-01-01T00:05:00Z"), "order-1")
    assert again.payment_id == first.payment_id and again.header_value == first.header_value
    assert client.spend()[0].reserved == 1000
    # MPP: the Idempotency-Key header to send, derived from tenant and key, on every answer.
    assert dict(first.headers) == dict(again.headers) == {
        "Idempotency-Key": idempotency.server_id(t.tenant_id, "order-1")}
    # Several concurrent retries, each with its own fresh challenge: still one payment.
    with ThreadPoolExecutor(8) as pool:
        ids = set(pool.map(lambda i: _sign_mpp(client, t, mpp_evm_challenge(f"c-x{i}"), "order-1").payment_id,
                           range(8)))
    assert ids == {first.payment_id}
    assert client.spend()[0].reserved == 1000
    # A different purchase under the key (another amount) is refused by name.
    with pytest.raises(AlreadyExists, match="already used for a different request"):
        _sign_mpp(client, t, mpp_evm_challenge("c-3", amount="2000"), "order-1")
    # Without a key, each Sign is a purchase of its own: the client makes a key per
    # call, so the server is told a different Idempotency-Key each time.
    others = [client.sign(status=402, headers=mpp_evm_challenge(f"c-{n}"), body=b"", url="https://api.test/item",
                          wallet_id=t.wallet_id) for n in (4, 5)]
    assert len({first.payment_id, *(o.payment_id for o in others)}) == 3
    sent = {dict(o.headers)["Idempotency-Key"] for o in others}
    assert len(sent) == 2 and dict(first.headers)["Idempotency-Key"] not in sent


def test_a_key_whose_payment_expired_unused_is_refused_by_name(tmp_path: Path):
    now = [1_800_000_000.0]
    running = RunningTeller(make_settings(f"sqlite:///{tmp_path / 'i.db'}", tmp_path), clock=lambda: now[0])
    try:
        t = running.setup_tenant(policy=Policy(allow_unknown_assets=True))
        client = running.client(t.token)
        chall = sdk_v2_challenge(amount="1000", timeout=60)
        first = client.sign(status=402, headers=chall.headers, body=chall.body, url=chall.url, wallet_id=t.wallet_id,
                            idempotency_key="k")
        now[0] += 30
        assert client.sign(status=402, headers=chall.headers, body=chall.body, url=chall.url,
                           wallet_id=t.wallet_id, idempotency_key="k") == first
        now[0] += 40  # past the authorization's validBefore, within the key's lifetime
        with pytest.raises(FailedPrecondition) as info:
            client.sign(status=402, headers=chall.headers, body=chall.body, url=chall.url, wallet_id=t.wallet_id,
                        idempotency_key="k")
        assert info.value.reason == "idempotency_key_spent"
        assert info.value.metadata == {"payment_id": first.payment_id, "state": "signed"}
        assert "new key" in info.value.message
    finally:
        running.stop()


# -- the pure rules ------------------------------------------------------------


@given(st.text(min_size=1, max_size=200), st.text(min_size=1, max_size=40))
def test_the_server_id_fits_x402_and_never_reveals_the_key(key, tenant):
    sid = idempotency.server_id(tenant, key)
    assert 16 <= len(sid) <= 128 and all(c.isalnum() or c in "-_" for c in sid)
    assert sid == idempotency.server_id(tenant, key)
    assert sid != idempotency.server_id(tenant + "x", key)


def test_payment_identifier_rules():
    declared = {"payment-identifier": {"info": {"required": False}, "schema": {}}, "other": {"x": 1}}
    added = idempotency.with_payment_identifier(declared, "teller_abcdefabcdefabcdef")
    assert added is not None
    assert added["payment-identifier"]["info"] == {"required": False, "id": "teller_abcdefabcdefabcdef"}
    assert added["other"] == {"x": 1} and "id" not in declared["payment-identifier"]["info"]  # not mutated
    assert idempotency.with_payment_identifier({"other": {}}, "teller_abcdefabcdefabcdef") == {"other": {}}
    assert idempotency.with_payment_identifier(None, "teller_abcdefabcdefabcdef") is None
    assert idempotency.with_payment_identifier(declared, None) == declared  # optional and no key: nothing
    required = {"payment-identifier": {"info": {"required": True}}}
    fresh = idempotency.with_payment_identifier(required, None)
    assert fresh is not None and 16 <= len(fresh["payment-identifier"]["info"]["id"]) <= 128
    # A malformed declaration is echoed as it is.
    odd = {"payment-identifier": "yes"}
    assert idempotency.with_payment_identifier(odd, "teller_abcdefabcdefabcdef") == odd
    assert idempotency.retry_headers("x402", "t", "k") == ()
    assert idempotency.retry_headers("mpp", "t", None) == ()
