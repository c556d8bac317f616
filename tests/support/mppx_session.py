"""mppx's session server and its reference session client (node scripts next to this
module), wired to the escrow proxy (``testbed.escrow_proxy``) on a local Tempo chain.

Keys here are anvil's public development keys: test use only.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from typing import Any

from testbed.chain import ROOT
from tests.support.mpp_live import MPPX_SECRET, REALM, MppxServer, node_binary, node_server

SERVER_SCRIPT = ROOT / "tests" / "support" / "mppx_session_server.mjs"
CLIENT_SCRIPT = ROOT / "tests" / "support" / "mppx_session_client.mjs"


@contextlib.contextmanager
def mppx_session_server(rpc_url: str, chain_id: int, escrow: str, currency: str, server_key: str,
                        recipient: str, amount: str, suggested_deposit: str | None = None) -> Iterator[MppxServer]:
    """mppx's ``tempo.session`` behind node:http (see ``mppx_session_server.mjs``); every
    path costs ``amount`` raw units. Its stderr is collected for the test to read."""
    config = {"rpcUrl": rpc_url, "chainId": chain_id, "realm": REALM, "secretKey": MPPX_SECRET,
              "currency": currency, "escrowContract": escrow, "serverKey": server_key,
              "recipient": recipient, "amount": amount, "suggestedDeposit": suggested_deposit}
    with node_server(SERVER_SCRIPT, config, "mppx session server") as server:
        yield server


def run_mppx_session_client(config: dict[str, Any], timeout: float = 120) -> dict[str, Any]:
    """Runs mppx's session client once (see ``mppx_session_client.mjs``); its JSON result."""
    done = subprocess.run([node_binary(), str(CLIENT_SCRIPT), json.dumps(config)], capture_output=True,
                          text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"mppx session client failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


__all__ = ["mppx_session_server", "run_mppx_session_client"]
