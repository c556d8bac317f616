"""A local anvil chain with Teller's EIP-3009 test token deployed, for tests.

Keys here are anvil's public development keys: test use only.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from web3 import Web3

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from build_contracts import artifact  # noqa: E402

# anvil's well-known dev accounts 0 and 1 (public test keys, never for real funds)
DEPLOYER_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
FACILITATOR_KEY = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"
TOKEN_NAME, TOKEN_VERSION = "Teller Test USD", "2"


def anvil_binary() -> str:
    local = ROOT / "tools" / "chain" / "node_modules" / ".bin" / "anvil"
    if local.exists():
        return str(local)
    found = shutil.which("anvil")
    if found:
        return found
    raise RuntimeError("anvil is not installed: run `npm install --prefix tools/chain` (./run test does)")


@dataclass
class Chain:
    rpc_url: str
    w3: Web3
    chain_id: int
    token: Any  # web3 contract

    @property
    def network(self) -> str:
        return f"eip155:{self.chain_id}"

    def balance(self, address: str) -> int:
        return int(self.token.functions.balanceOf(Web3.to_checksum_address(address)).call())

    def mint(self, to: str, amount: int) -> None:
        self._transact(self.token.functions.mint(Web3.to_checksum_address(to), amount))

    def fund(self, to: str, wei: int) -> None:
        """Native gas money from the deployer."""
        acct = self.w3.eth.account.from_key(DEPLOYER_KEY)
        tx = {"from": acct.address, "to": Web3.to_checksum_address(to), "value": wei, "gas": 21000,
              "maxFeePerGas": 10 * 10**9, "maxPriorityFeePerGas": 10**9, "chainId": self.chain_id,
              "nonce": self.w3.eth.get_transaction_count(acct.address)}
        receipt = self.w3.eth.wait_for_transaction_receipt(
            self.w3.eth.send_raw_transaction(acct.sign_transaction(tx).raw_transaction))
        assert receipt["status"] == 1

    def mine(self, at: int | None = None) -> None:
        """A new block stamped with the current time (anvil mines only on transactions),
        or with ``at``: the chain's clock moves there, and later blocks go on from it
        (a test waiting for an authorization to expire on chain moves the chain's clock
        instead of sleeping)."""
        self.w3.provider.make_request("evm_mine", [] if at is None else [at])  # type: ignore[arg-type]

    def authorization_used(self, authorizer: str, nonce: str) -> bool:
        return bool(self.token.functions.authorizationState(Web3.to_checksum_address(authorizer),
                                                             bytes.fromhex(nonce[2:])).call())

    def _transact(self, fn: Any) -> None:
        acct = self.w3.eth.account.from_key(DEPLOYER_KEY)
        tx = fn.build_transaction({"from": acct.address, "nonce": self.w3.eth.get_transaction_count(acct.address)})
        signed = acct.sign_transaction(tx)
        receipt = self.w3.eth.wait_for_transaction_receipt(self.w3.eth.send_raw_transaction(signed.raw_transaction))
        assert receipt["status"] == 1


@contextlib.contextmanager
def anvil(*extra: str) -> Iterator[str]:
    from testbed.procs import free_port, stop

    port = free_port()
    proc = subprocess.Popen([anvil_binary(), "--host", "127.0.0.1", "--port", str(port), "--silent", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    w3 = Web3(Web3.HTTPProvider(url))
    deadline = time.time() + 30
    # The wait is inside the try: an interrupt (Ctrl-C, the demo's SIGTERM) while
    # anvil starts must stop it too, not only a failed start.
    try:
        while True:
            try:
                w3.eth.chain_id  # noqa: B018
                break
            except Exception:
                if proc.poll() is not None or time.time() > deadline:
                    proc.kill()  # before reading its stderr to the end
                    raise RuntimeError(f"anvil did not start: {proc.stderr.read() if proc.stderr else ''}") from None
                time.sleep(0.1)
        yield url
    finally:
        stop(proc)


def deploy_token(url: str) -> Chain:
    w3 = Web3(Web3.HTTPProvider(url))
    art = artifact("TestUSDC")
    acct = w3.eth.account.from_key(DEPLOYER_KEY)
    factory = w3.eth.contract(abi=art["abi"], bytecode=art["bytecode"])
    tx = factory.constructor(TOKEN_NAME, TOKEN_VERSION).build_transaction(
        {"from": acct.address, "nonce": w3.eth.get_transaction_count(acct.address)})
    receipt = w3.eth.wait_for_transaction_receipt(
        w3.eth.send_raw_transaction(acct.sign_transaction(tx).raw_transaction))
    token = w3.eth.contract(address=receipt["contractAddress"], abi=art["abi"])
    return Chain(url, w3, w3.eth.chain_id, token)
