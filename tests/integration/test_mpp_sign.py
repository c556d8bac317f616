"""Sign on a pympp-made MPP challenge over gRPC: the requested header, and a
zero-amount proof (the parsing itself: tests/unit/test_mpp_challenge.py)."""

from __future__ import annotations

import pytest

from teller_client import FailedPrecondition, Policy
from tests.support.mpp_live import PATH_USD
from tests.unit.test_mpp_challenge import RECIPIENT, _b64, pympp_challenge_headers


def test_sign_honours_the_requested_header_and_signs_zero_amount_proofs(teller):
    from mpp import Credential

    t = teller.setup_tenant(policy=Policy(allow_unknown_assets=True))
    client = teller.client(t.token)
    headers = pympp_challenge_headers(requires_auth=True)
    assert any("Payment-Authorization" in v for k, v in headers if k.lower() == "www-authenticate")
    # No RPC is configured for the Tempo chain: a pull payment needs its gas price, and says so.
    with pytest.raises(FailedPrecondition, match="no RPC endpoint configured for eip155:31337"):
        client.sign(status=402, headers=headers, body=b"", url="https://api.test/item?id=1", wallet_id=t.wallet_id)

    zero = _b64({"amount": "0", "currency": PATH_USD, "recipient": RECIPIENT, "methodDetails": {"chainId": 31337}})
    proof = client.sign(status=402, headers=[("WWW-Authenticate", f'Payment id="z1", realm="api.test", '
                                              f'method="tempo", intent="charge", request="{zero}", '
                                              f'header="Payment-Authorization"')],
                        body=b"", url="https://api.test/free", wallet_id=t.wallet_id)
    assert proof.header_name == "Payment-Authorization"
    cred = Credential.from_authorization(proof.header_value)
    assert cred.payload["type"] == "proof" and cred.source == f"did:pkh:eip155:31337:{t.address}"
    assert cred.challenge.header == "Payment-Authorization"
    # Nothing moves, so nothing is reserved or spent.
    assert all(w.reserved == 0 and w.spent == 0 for w in client.spend())
