"""MPP ``evm`` charge (EIP-3009 inside an MPP credential) against pympp's own
server on anvil, and the tenant's protocol preference when one 402 offers both
x402 and MPP."""

from __future__ import annotations

import pytest

from teller_client import Asset, PermissionDenied, Policy
from testbed.chain import TOKEN_NAME, TOKEN_VERSION, anvil, deploy_token
from tests.support.harness import RunningTeller, make_settings
from tests.support.mpp_live import evm_server

PAYEE = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"


@pytest.fixture(scope="module")
def chain():
    with anvil() as url:
        yield deploy_token(url)


@pytest.fixture
def live(tmp_path, chain):
    running = RunningTeller(make_settings(f"sqlite:///{tmp_path / 't.db'}", tmp_path,
                                          rpc_urls={chain.network: chain.rpc_url}, reconcile_interval_seconds=0))
    yield running
    running.stop()


def _tenant(live, chain, **kw):
    t = live.setup_tenant(policy=Policy(assets=(Asset(chain.network, chain.token.address, 6),), **kw))
    chain.mint(t.address, 1_000_000)
    return t


def _pay(live, t, base):
    import httpx

    unpaid = httpx.get(f"{base}/evm", timeout=30)
    assert unpaid.status_code == 402
    names = {k.lower() for k in unpaid.headers}
    assert {"payment-required", "www-authenticate"} <= names  # both protocols offered
    signed = live.client(t.token).sign(status=402, headers=list(unpaid.headers.items()), body=unpaid.content,
                                       url=f"{base}/evm", wallet_id=t.wallet_id)
    paid = httpx.get(f"{base}/evm", headers={signed.header_name: signed.header_value}, timeout=60)
    return signed, paid


@pytest.mark.parametrize("preference, header, protocol", [
    (("x402", "mpp"), "PAYMENT-SIGNATURE", "x402"),
    (("mpp", "x402"), "Authorization", "mpp"),
])
def test_the_tenants_preference_picks_the_protocol(live, chain, preference, header, protocol):
    t = _tenant(live, chain, protocols=preference)
    before = chain.balance(PAYEE)
    with evm_server(chain.rpc_url, chain.token, chain.chain_id, PAYEE, "0.02", (TOKEN_NAME, TOKEN_VERSION)) as base:
        signed, paid = _pay(live, t, base)
    assert signed.header_name == header and signed.requirement.protocol == protocol
    assert paid.status_code == 200, paid.text
    assert chain.balance(PAYEE) == before + 20_000
    if protocol == "mpp":
        assert signed.requirement.scheme == "evm/charge"
        record = live.client(t.token).record_outcome(signed.payment_id, status=200, headers=list(paid.headers.items()))
        assert record.state == "settled" and record.tx_hash


def test_mpp_only_tenant_refuses_an_x402_only_server(live, chain):
    from testbed.x402_server import sdk_v2_challenge

    t = _tenant(live, chain, protocols=("mpp",))
    c = sdk_v2_challenge()
    with pytest.raises(PermissionDenied, match="pays only mpp") as info:
        live.client(t.token).sign(status=c.status, headers=c.headers, body=c.body, url=c.url, wallet_id=t.wallet_id)
    assert info.value.reason == "protocol_not_allowed"


def test_evm_charge_reads_the_token_domain_from_the_chain_and_voids(live, chain):
    """pympp's evm challenge names no EIP-712 domain: Teller reads it from the
    token. An unused evm charge authorization can be voided like an x402 one."""
    import httpx

    t = _tenant(live, chain, protocols=("mpp",))
    chain.fund(t.address, 10**17)
    before = chain.balance(PAYEE)
    with evm_server(chain.rpc_url, chain.token, chain.chain_id, PAYEE, "0.03", (TOKEN_NAME, TOKEN_VERSION)) as base:
        unpaid = httpx.get(f"{base}/evm", timeout=30)
        signed = live.client(t.token).sign(status=402, headers=list(unpaid.headers.items()), body=unpaid.content,
                                           url=f"{base}/evm", wallet_id=t.wallet_id)
        again = live.client(t.token).sign(status=402, headers=list(unpaid.headers.items()), body=unpaid.content,
                                          url=f"{base}/evm", wallet_id=t.wallet_id)
        # One challenge, one nonce: the same payment, not a second reservation.
        assert again.payment_id == signed.payment_id
        voided = live.admin().void_payment(signed.payment_id)
        assert voided.state == "voided"
        refused = httpx.get(f"{base}/evm", headers={signed.header_name: signed.header_value}, timeout=60)
    # The canceled nonce cannot settle: the server's settlement reverts on chain.
    assert refused.status_code != 200
    assert chain.balance(PAYEE) == before
