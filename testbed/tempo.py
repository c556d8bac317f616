"""A local Tempo chain: ``anvil --network tempo``, funded from anvil's public dev
account in pathUSD.

Keys here are anvil's public development keys: test use only.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
from eth_utils import to_checksum_address
from pytempo import TempoTransaction
from pytempo.contracts import PATH_USD, TIP20
from web3 import Web3

from testbed.chain import DEPLOYER_KEY, anvil

TEMPO_CHAIN_ID = 31337
# Expiring nonces (what concurrent payments from one wallet rely on) need hardfork T1 or later.
TEMPO_ARGS = ("--network", "tempo", "--hardfork", "t4")
_BALANCE_ABI = [{"type": "function", "name": "balanceOf", "stateMutability": "view",
                 "inputs": [{"name": "a", "type": "address"}], "outputs": [{"name": "", "type": "uint256"}]}]


@dataclass
class TempoChain:
    rpc_url: str
    w3: Web3

    @property
    def network(self) -> str:
        return f"eip155:{TEMPO_CHAIN_ID}"

    def balance(self, address: str, token: str = PATH_USD) -> int:
        contract = self.w3.eth.contract(address=to_checksum_address(token), abi=_BALANCE_ABI)
        return int(contract.functions.balanceOf(to_checksum_address(address)).call())

    def fund(self, to: str, amount: int, token: str = PATH_USD) -> None:
        """pathUSD from anvil's dev account 0, in a Tempo transaction signed with its public test key."""
        gas_price = int(self.w3.eth.gas_price)
        tx = TempoTransaction.create(
            chain_id=TEMPO_CHAIN_ID, gas_limit=300_000, max_fee_per_gas=gas_price,
            max_priority_fee_per_gas=gas_price, nonce_key=2**256 - 1, nonce=0,
            valid_before=int(time.time()) + 20, fee_token=token,
            calls=(TIP20(token).transfer(to=to_checksum_address(to), amount=amount),),
        )
        raw = tx.sign(DEPLOYER_KEY).encode()
        receipt = self.w3.eth.wait_for_transaction_receipt(self.w3.eth.send_raw_transaction(raw), timeout=30)
        assert receipt["status"] == 1


@contextlib.contextmanager
def tempo_chain(*extra: str) -> Iterator[TempoChain]:
    with anvil(*TEMPO_ARGS, *extra) as url:
        yield TempoChain(url, Web3(Web3.HTTPProvider(url)))


class DropSyncTimeout(httpx.AsyncBaseTransport):
    """pympp 0.16 sends ``eth_sendRawTransactionSync`` with a timeout parameter
    that anvil 1.7.1 rejects; the same call without it works. Test-only shim."""

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content or b"null")
        if isinstance(body, dict) and body.get("method") == "eth_sendRawTransactionSync" and len(body["params"]) > 1:
            body["params"] = body["params"][:1]
            headers = [(k, v) for k, v in request.headers.items() if k.lower() != "content-length"]
            request = httpx.Request("POST", request.url, headers=headers, content=json.dumps(body).encode())
        return await self._inner.handle_async_request(request)


__all__ = ["PATH_USD", "TEMPO_ARGS", "TEMPO_CHAIN_ID", "DropSyncTimeout", "TempoChain", "tempo_chain"]
