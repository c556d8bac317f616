"""Chain access: per-network RPC endpoints from configuration, balance and authorization-state reads."""

from __future__ import annotations

import pytest

from teller import config
from teller.chain import ChainReader
from teller.errors import FailedPrecondition, Unavailable
from tests.support.chain import anvil, deploy_token


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
