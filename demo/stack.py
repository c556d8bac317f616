"""The processes the demo runs, each a context manager that stops what it started:
two local chains, and Teller itself as a real ``teller serve --dev`` process on
the embedded default (SQLite in a throwaway data directory)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from eth_account import Account

from testbed.chain import Chain, anvil, deploy_token
from testbed.procs import free_port, stop, wait_healthy
from testbed.tempo import TempoChain, tempo_chain

#: Both anvils default to chain id 31337; the EVM one gets its own so each
#: CAIP-2 network names one chain (Teller's rpc_urls map one URL per network).
EVM_CHAIN_ID = "31338"


@dataclass(frozen=True, slots=True)
class Chains:
    evm: Chain  # x402: anvil with the EIP-3009 test token the tests deploy
    tempo: TempoChain  # MPP: anvil --network tempo, pathUSD


@contextlib.contextmanager
def chains() -> Iterator[Chains]:
    with anvil("--chain-id", EVM_CHAIN_ID) as evm_url, \
            tempo_chain("--block-time", "1") as tempo:  # a Tempo-like chain mines on its own clock
        yield Chains(deploy_token(evm_url), tempo)


@dataclass(frozen=True, slots=True)
class TellerProcess:
    target: str
    admin_token: str
    data_dir: Path
    log: Path


@contextlib.contextmanager
def teller(data_dir: Path, rpc_urls: dict[str, str]) -> Iterator[TellerProcess]:
    """``teller serve --dev``: it makes its KEK and operator token under the data
    directory and migrates the embedded SQLite. Chain RPCs let it check receipts
    and reconcile; loopback is allowed for ``Pay`` because the paid API is local
    (Teller refuses private addresses otherwise)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELLER_")}
    env.update({
        "TELLER_RPC_URLS": ",".join(f"{network}={url}" for network, url in rpc_urls.items()),
        "TELLER_OUTBOUND_ALLOW": "127.0.0.1",
        "TELLER_LOG_LEVEL": "WARNING",
    })
    log = data_dir / "teller.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "teller.cli", "serve", "--dev", "--data-dir", str(data_dir),
             "--listen", f"127.0.0.1:{port}"], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        target = f"127.0.0.1:{port}"
        wait_healthy(target, proc, log)
        yield TellerProcess(target, (data_dir / "admin-token").read_text().strip(), data_dir, log)
    finally:
        stop(proc, 15)


def fresh_address() -> str:
    """A payee made up for this run: it only receives, so its key is thrown away."""
    return str(Account.create().address)
