"""Chain access: per-network RPC endpoints from configuration, balance and authorization-state reads."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from teller import config
from teller.chain import ChainReader, NotCached
from teller.errors import FailedPrecondition, Unavailable
from testbed.chain import anvil, deploy_token


def test_rpc_urls_come_from_the_environment():
    s = config.load(env={"TELLER_RPC_URLS": "eip155:8453=https://a.example/rpc, eip155:1=http://b:8545"})
    assert s.rpc_urls == {"eip155:8453": "https://a.example/rpc", "eip155:1": "http://b:8545"}


def test_balance_and_authorization_state_on_anvil():
    from eth_account import Account
    from eth_account.messages import encode_typed_data

    with anvil() as url:
        chain = deploy_token(url)
        reader = ChainReader({chain.network: url})
        payer = Account.create()
        chain.mint(payer.address, 5000)
        assert reader.token_balance(chain.network, chain.token.address, payer.address) == 5000
        nonce = "0x" + "ab" * 32
        assert reader.authorization_used(chain.network, chain.token.address, payer.address, nonce) is False
        # Cancel the nonce on chain with the payer's EIP-712 signature; the reader sees it used.
        typed = {
            "types": {"EIP712Domain": [{"name": "name", "type": "string"}, {"name": "version", "type": "string"},
                                       {"name": "chainId", "type": "uint256"},
                                       {"name": "verifyingContract", "type": "address"}],
                      "CancelAuthorization": [{"name": "authorizer", "type": "address"},
                                              {"name": "nonce", "type": "bytes32"}]},
            "primaryType": "CancelAuthorization",
            "domain": {"name": chain.token.functions.name().call(), "version": chain.token.functions.version().call(),
                       "chainId": chain.chain_id, "verifyingContract": chain.token.address},
            "message": {"authorizer": payer.address, "nonce": bytes.fromhex(nonce[2:])},
        }
        sig = payer.sign_message(encode_typed_data(full_message=typed))
        chain._transact(chain.token.functions.cancelAuthorization(payer.address, bytes.fromhex(nonce[2:]),
                                                                  sig.v, sig.r.to_bytes(32, "big"),
                                                                  sig.s.to_bytes(32, "big")))
        assert reader.authorization_used(chain.network, chain.token.address, payer.address, nonce) is True
    with pytest.raises(Unavailable):
        reader.token_balance(chain.network, chain.token.address, payer.address)  # anvil is gone
    with pytest.raises(FailedPrecondition, match="no RPC endpoint configured"):
        reader.token_balance("eip155:999", chain.token.address, payer.address)


def test_gas_price_is_read_once_however_many_ask_and_renewed_before_it_lapses():
    """Every Tempo payment needs the gas price. Once lapsed, one caller reads it
    and the others wait for that answer; under load it is renewed in the
    background before it lapses, so calls answered from memory never stop."""
    with anvil() as url:
        network = "eip155:31337"
        now = [1000.0]  # the reader's clock: moved by hand, so the test never waits for the price to age
        reader = ChainReader({network: url}, clock=lambda: now[0])
        reader.gas_price_ttl_s = ttl = 2.0
        reads: list[float] = []
        real_call = reader._call

        def counting(net, what, fn):  # type: ignore[no-untyped-def]
            if what == "gas price read":
                reads.append(now[0])
                time.sleep(0.05)  # a slow RPC: the other callers arrive while it runs
            return real_call(net, what, fn)

        reader._call = counting  # type: ignore[method-assign]
        with pytest.raises(NotCached):
            reader.gas_price(network, cached_only=True)
        with ThreadPoolExecutor(16) as pool:
            prices = set(pool.map(lambda _: reader.gas_price(network), range(16)))
        assert len(prices) == 1 and len(reads) == 1
        (price,) = prices
        assert price > 0 and reader.gas_price(network, cached_only=True) == price and len(reads) == 1

        # In the last fifth of its life: still answered from memory, and renewed once, in the background.
        now[0] = reads[0] + ttl - 0.3
        for _ in range(50):
            assert reader.gas_price(network, cached_only=True) == price
        deadline = time.monotonic() + 5  # the renewal's thread, on real time, holds the lock until it has stored
        while (len(reads) < 2 or reader._gas_lock.locked()) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(reads) == 2
        # Past the first read's lifetime it is still in memory: the renewal took.
        now[0] = reads[0] + ttl + 0.2
        assert reader.gas_price(network, cached_only=True) == price
        assert len(reads) == 2
