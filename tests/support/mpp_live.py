"""Real MPP resource servers built with the official ``pympp`` server (and
mppx's), on loopback, against a local Tempo chain (``testbed.tempo``).

Keys here are anvil's public development keys: test use only.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from eth_utils import to_checksum_address
from pytempo.contracts import PATH_USD
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
from web3 import Web3

from testbed.chain import DEPLOYER_KEY, ROOT
from testbed.loopback import serve
from testbed.procs import stop
from testbed.tempo import TEMPO_CHAIN_ID, DropSyncTimeout, TempoChain

MPP_SECRET = "test-only-mpp-secret"


REALM = "teller-tests.local"


def tempo_server(chain: TempoChain, recipient: str, routes: dict[str, dict[str, Any]],
                 realm: str = REALM) -> contextlib.AbstractContextManager[str]:
    """A Starlette app whose routes are each protected by ``mpp.charge(**options)``."""
    from mpp.methods.tempo import server as tempo
    from mpp.server import Mpp, pay

    methods = tempo.charge(recipient=recipient, chain_id=TEMPO_CHAIN_ID, rpc_url=chain.rpc_url,
                           currencies=[PATH_USD], decimals=6,
                           http_client=httpx.AsyncClient(timeout=30, transport=DropSyncTimeout()),
                           confirmation_timeout=20)
    mpp = Mpp(methods=methods, realm=realm, secret_key=MPP_SECRET)
    return serve(Starlette(routes=[Route(path, _paid_endpoint(pay, mpp.charge(**opts)))
                                   for path, opts in routes.items()]))


def _paid_endpoint(pay: Callable[..., Any], handler: Any) -> Any:
    @pay(handler)
    async def endpoint(request: Any, credential: Any, receipt: Any) -> JSONResponse:
        return JSONResponse({"paid": True, "payer": receipt.payer, "reference": receipt.reference})
    return endpoint


def evm_server(rpc_url: str, token: Any, chain_id: int, recipient: str, amount: str,
               domain: tuple[str, str]) -> contextlib.AbstractContextManager[str]:
    """pympp's ``evm/charge`` (EIP-3009) on an EVM anvil with Teller's test token.
    It serves MPP and x402 clients from one endpoint; a settle hook submits the
    authorization as the server's relayer (anvil dev account 0)."""
    from mpp.methods.evm import server as evm
    from mpp.methods.evm.client import AuthorizationConfig
    from mpp.server import Mpp, pay

    w3 = Web3(Web3.HTTPProvider(rpc_url))

    def settle(auth: Any) -> str:
        p = auth.payload
        acct = w3.eth.account.from_key(DEPLOYER_KEY)
        fn = token.functions.transferWithAuthorization(
            to_checksum_address(p["from"]), to_checksum_address(p["to"]), int(p["value"]), int(p["validAfter"]),
            int(p["validBefore"]), bytes.fromhex(p["nonce"][2:]), bytes.fromhex(p["signature"][2:]))
        tx = fn.build_transaction({"from": acct.address, "nonce": w3.eth.get_transaction_count(acct.address)})
        tx_hash = w3.eth.send_raw_transaction(acct.sign_transaction(tx).raw_transaction)
        assert w3.eth.wait_for_transaction_receipt(tx_hash)["status"] == 1
        return "0x" + bytes(tx_hash).hex()

    method = evm.charge(currency=token.address, recipient=recipient, chain_id=chain_id, decimals=6,
                        authorization=AuthorizationConfig(name=domain[0], version=domain[1]), settle=settle, route_binding="resource")
    mpp = Mpp(methods=[method], realm=REALM, secret_key=MPP_SECRET)
    return serve(Starlette(routes=[Route("/evm", _paid_endpoint(pay, mpp.charge(amount=amount)))]))


#: mppx refuses a ``validBefore`` more than 30 s past the latest block, so its
#: chain mines every second rather than only on transactions.
MPPX_CHAIN_ARGS = ("--block-time", "1")
#: mppx wants a secret key of at least 32 bytes.
MPPX_SECRET = "test-only-mppx-secret-of-at-least-32-bytes"
MPPX_SCRIPT = ROOT / "tests" / "support" / "mppx_server.mjs"


@dataclass
class MppxServer:
    url: str
    proc: subprocess.Popen[str]
    _log: list[str]

    def log(self) -> str:
        """What the server wrote to stderr (mppx answers a failed verification with a bare 500)."""
        return "\n".join(self._log)


def node_binary() -> str:
    found = shutil.which("node")
    if found is None:
        raise RuntimeError("node is not installed: ./run test installs Node.js with npm")
    if not (ROOT / "tools" / "chain" / "node_modules" / "mppx" / "package.json").exists():
        raise RuntimeError("mppx is not installed: run `npm ci --prefix tools/chain` (./run test does)")
    return found


@contextlib.contextmanager
def node_server(script: Path, config: dict[str, Any], what: str) -> Iterator[MppxServer]:
    """A node script that prints ``listening <port>`` once it serves, run with its
    JSON config; its stderr is collected for the test to read (mppx's own answers
    are bare 500s). Stopped on exit."""
    proc = subprocess.Popen([node_binary(), str(script), json.dumps(config)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    lines: list[str] = []
    stderr = proc.stderr
    threading.Thread(target=lambda: lines.extend(line.rstrip() for line in stderr), daemon=True).start()
    first = proc.stdout.readline()
    if not first.startswith("listening "):
        proc.kill()
        proc.wait(5)
        raise RuntimeError(f"{what} did not start: {first!r} {' '.join(lines)[:2000]}")
    try:
        yield MppxServer(f"http://127.0.0.1:{int(first.split()[1])}", proc, lines)
    finally:
        stop(proc)


@contextlib.contextmanager
def mppx_server(chain: Any, routes: dict[str, dict[str, Any]], realm: str = REALM,
                currency: str = PATH_USD) -> Iterator[MppxServer]:
    """mppx's ``tempo.charge`` (or ``evm.charge``) behind node:http, one route per entry
    (see ``mppx_server.mjs``), on ``chain`` (anything with ``rpc_url`` and ``w3``).
    Its stderr is collected for the test to read."""
    config = {"rpcUrl": chain.rpc_url, "chainId": int(chain.w3.eth.chain_id), "realm": realm,
              "secretKey": MPPX_SECRET, "currency": currency, "routes": routes, "relayerKey": DEPLOYER_KEY}
    with node_server(MPPX_SCRIPT, config, "mppx server") as server:
        yield server

__all__ = ["MPPX_CHAIN_ARGS", "PATH_USD", "REALM", "MppxServer", "evm_server", "mppx_server", "node_server",
           "tempo_server"]
