"""MPP ``evm`` charge against mppx 0.11.0: the one known disagreement.

mppx 0.11.0 binds the EIP-3009 nonce of an evm charge as ``keccak(id + realm)``;
current mppx source and pympp 0.16 use ``keccak(JSON.stringify([id, realm]))``,
and so does Teller. Teller keeps the current form and never signs both (two
nonces for one challenge would be two reservations and two usable
authorizations). These tests pin down that mppx 0.11 refuses Teller's
credential for this reason alone: with the nonce swapped to mppx 0.11's form
(in-process, for the test only) the same flow is accepted and settles on chain.
"""

from __future__ import annotations

import httpx
import pytest
from eth_utils import keccak

from teller.mpp import charge as mpp_charge
from teller_client import Asset, Policy
from testbed.chain import TOKEN_NAME, TOKEN_VERSION, anvil, deploy_token
from tests.support.harness import RunningTeller, make_settings
from tests.support.mpp_live import mppx_server

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


def _route(chain) -> dict:
    return {"method": "evm", "amount": "0.03", "recipient": PAYEE, "currency": chain.token.address,
            "name": TOKEN_NAME, "version": TOKEN_VERSION}


def _pay(live, chain, server):
    t = live.setup_tenant(policy=Policy(assets=(Asset(chain.network, chain.token.address, 6),), protocols=("mpp",)))
    chain.mint(t.address, 1_000_000)
    url = f"{server.url}/evm"
    unpaid = httpx.get(url, timeout=30)
    assert unpaid.status_code == 402, unpaid.text
    signed = live.client(t.token).sign(status=402, headers=list(unpaid.headers.items()), body=unpaid.content,
                                       url=url, wallet_id=t.wallet_id)
    return httpx.get(url, headers={signed.header_name: signed.header_value}, timeout=60)


def test_mppx_0_11_refuses_tellers_evm_charge_for_its_nonce_form(live, chain):
    before = chain.balance(PAYEE)
    with mppx_server(chain, {"/evm": _route(chain)}) as server:
        refused = _pay(live, chain, server)
        log = server.log()
    assert refused.status_code == 402, refused.text
    assert "challenge hash mismatch" in refused.text + log
    assert chain.balance(PAYEE) == before


def test_with_mppx_0_11s_nonce_form_the_same_flow_settles(live, chain, monkeypatch):
    """A scratch run: only the nonce differs, and mppx then accepts and settles."""
    monkeypatch.setattr(mpp_charge, "evm_nonce", lambda ch: keccak(text=ch.id + ch.realm))
    before = chain.balance(PAYEE)
    with mppx_server(chain, {"/evm": _route(chain)}) as server:
        paid = _pay(live, chain, server)
        assert paid.status_code == 200, f"{paid.status_code} {paid.text[:300]}\n{server.log()}"
    assert chain.balance(PAYEE) == before + 30_000


def test_teller_signs_the_current_form_only():
    from datetime import UTC, datetime

    from teller.mpp.challenge import MppChallenge

    ch = MppChallenge(index=0, id="abc", realm="r.example", method="evm", intent="charge", request_b64="",
                      request={}, expires=None, expires_at=datetime(2099, 1, 1, tzinfo=UTC), digest=None, opaque=None,
                      description=None, header="Authorization")
    assert mpp_charge.evm_nonce(ch) == keccak(text='["abc","r.example"]')
    assert mpp_charge.evm_nonce(ch) != keccak(text="abcr.example")
