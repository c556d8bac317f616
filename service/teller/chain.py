"""Reading chain state through per-network RPC endpoints (web3).

Used to see what happened to an authorization after it left Teller: the
wallet's token balance and whether an EIP-3009 nonce is used on chain.
"""

from __future__ import annotations

from collections.abc import Mapping

from web3 import Web3
from web3.exceptions import Web3Exception

from teller.errors import FailedPrecondition, Unavailable

_ERC20_EIP3009_ABI = [
    {"type": "function", "name": "balanceOf", "stateMutability": "view",
     "inputs": [{"name": "account", "type": "address"}], "outputs": [{"name": "", "type": "uint256"}]},
    {"type": "function", "name": "authorizationState", "stateMutability": "view",
     "inputs": [{"name": "authorizer", "type": "address"}, {"name": "nonce", "type": "bytes32"}],
     "outputs": [{"name": "", "type": "bool"}]},
]


class ChainReader:
    def __init__(self, rpc_urls: Mapping[str, str], timeout_s: float = 10.0) -> None:
        self._urls = dict(rpc_urls)
        self._timeout = timeout_s
        self._clients: dict[str, Web3] = {}

    def _w3(self, network: str) -> Web3:
        url = self._urls.get(network)
        if url is None:
            raise FailedPrecondition(f"no RPC endpoint configured for network {network!r} (set rpc_urls)")
        if network not in self._clients:
            self._clients[network] = Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": self._timeout}))
        return self._clients[network]

    def _token(self, network: str, asset: str):  # type: ignore[no-untyped-def]
        return self._w3(network).eth.contract(address=Web3.to_checksum_address(asset), abi=_ERC20_EIP3009_ABI)

    def token_balance(self, network: str, asset: str, owner: str) -> int:
        try:
            return int(self._token(network, asset).functions.balanceOf(Web3.to_checksum_address(owner)).call())
        except (Web3Exception, OSError, ValueError) as exc:
            raise Unavailable(f"balance read on {network} failed: {type(exc).__name__}") from exc

    def authorization_used(self, network: str, asset: str, authorizer: str, nonce: str) -> bool:
        """True when the EIP-3009 nonce was used (settled) or canceled on chain."""
        try:
            fn = self._token(network, asset).functions.authorizationState(
                Web3.to_checksum_address(authorizer), bytes.fromhex(nonce.removeprefix("0x")))
            return bool(fn.call())
        except (Web3Exception, OSError, ValueError) as exc:
            raise Unavailable(f"authorizationState read on {network} failed: {type(exc).__name__}") from exc
