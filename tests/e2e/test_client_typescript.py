"""The TypeScript client (clients/typescript), tested with Node's test runner
against a real Teller and the counterparties the rest of the suite uses: the
x402 SDK's middleware and facilitator on anvil, pympp's Tempo server on a Tempo
anvil. This test starts them and runs ``node --test`` on the compiled tests
(clients/typescript/test/live.test.ts), which make their own assertions."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from teller_client import Policy
from testbed.chain import anvil, deploy_token
from testbed.tempo import tempo_chain
from tests.support.channel_rows import add_channel, set_state
from tests.support.channels import open_channel
from tests.support.harness import RunningTeller, make_settings
from tests.support.mpp_live import PATH_USD, tempo_server
from tests.support.x402_live import resource_server

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "clients" / "typescript"
PAYEE = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"
RECIPIENT = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
PRICE = 7_000

pytestmark = pytest.mark.slow


def build() -> None:
    """npm ci (when node_modules is missing), generate from proto/, compile with
    tsc (which type-checks). ``./run test`` does this before pytest; here it runs
    again only when a source is newer than the build."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        raise RuntimeError("Node.js and npm are needed for the TypeScript client: ./run test installs them")
    if not (PACKAGE / "node_modules" / ".bin" / "tsc").exists():
        subprocess.run(["npm", "ci", "--silent", "--no-audit", "--no-fund"], cwd=PACKAGE, check=True)
    built = PACKAGE / "dist" / "test" / "live.test.js"
    sources = [*(ROOT / "proto").rglob("*.proto"), *(PACKAGE / "test").rglob("*.ts"), PACKAGE / "package.json",
               *(p for p in (PACKAGE / "src").rglob("*.ts") if "gen" not in p.relative_to(PACKAGE / "src").parts)]
    if built.exists() and all(p.stat().st_mtime <= built.stat().st_mtime for p in sources):
        return
    env = {**os.environ, "PYTHON": str(Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv")) / "bin" / "python")}
    if not Path(env["PYTHON"]).exists():
        import sys

        env["PYTHON"] = sys.executable
    subprocess.run(["npm", "run", "--silent", "gen"], cwd=PACKAGE, check=True, env=env)
    subprocess.run(["npm", "run", "--silent", "build"], cwd=PACKAGE, check=True)


def test_typescript_client_against_a_real_teller(tmp_path):
    build()
    with anvil("--chain-id", "31338") as url, tempo_chain() as tempo:
        evm = deploy_token(url)
        running = RunningTeller(make_settings(
            f"sqlite:///{tmp_path / 't.db'}", tmp_path, reconcile_interval_seconds=0,
            outbound_allow=("127.0.0.1", "localhost"),
            rpc_urls={evm.network: evm.rpc_url, tempo.network: tempo.rpc_url}))
        try:
            t = running.setup_tenant(policy=Policy(allow_unknown_assets=True))
            evm.mint(t.address, 1_000_000)
            tempo.fund(t.address, 5_000_000)
            with resource_server(evm, PAYEE, PRICE) as x402_url, \
                    tempo_server(tempo, RECIPIENT, {"/weather": {"amount": "0.007"}}) as mpp_url:
                env = {
                    **os.environ,
                    "TELLER_TARGET": running.target, "TELLER_TOKEN": t.token, "TELLER_WALLET_ID": t.wallet_id,
                    "PRICE": str(PRICE),
                    "X402_URL": x402_url, "EVM_RPC": evm.rpc_url, "EVM_TOKEN": evm.token.address,
                    "X402_PAYEE": PAYEE,
                    "MPP_URL": mpp_url, "TEMPO_RPC": tempo.rpc_url, "TEMPO_TOKEN": PATH_USD,
                    "MPP_RECIPIENT": RECIPIENT,
                }
                out = subprocess.run(["node", "--test", "--test-reporter=spec", "dist/test/live.test.js"],
                                     cwd=PACKAGE, env=env,
                                     capture_output=True, text=True, timeout=300)
            print(out.stdout[-20000:])
            assert out.returncode == 0, out.stdout[-20000:] + out.stderr[-5000:]
            # The Node tests paid: four logical purchases per protocol (fetch: the key and the
            # request object; axios: the key; and the one whose outcome report failed).
            payments, _ = running.admin().list_payments(t.tenant_id)
            assert sorted(p.protocol for p in payments) == ["mpp"] * 4 + ["x402"] * 4
        finally:
            running.stop()


def test_typescript_client_reads_channels(tmp_path):
    """listChannels and getChannel against a real Teller holding channels and vouchers (no chain needed)."""
    build()
    running = RunningTeller(make_settings(f"sqlite:///{tmp_path / 't.db'}", tmp_path))
    try:
        app = running.app
        ch = open_channel(app, deposit=100)
        for step in (10, 25, 40):
            app.channels.sign_voucher(ch.tenant_id, ch.handle, step)
        newer = add_channel(app, ch, 50, at_ms=2)
        set_state(app, newer, "closed")
        theirs = open_channel(app, deposit=100)
        _, token = running.admin().issue_token(ch.tenant_id, "ts")
        env = {**os.environ, "TELLER_TARGET": running.target, "TELLER_TOKEN": token, "CHANNEL_ID": ch.handle,
               "NEWER_CHANNEL_ID": newer, "OTHER_TENANT_CHANNEL_ID": theirs.handle}
        out = subprocess.run(["node", "--test", "--test-reporter=spec", "dist/test/channels.test.js"], cwd=PACKAGE,
                             env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stdout[-20000:] + out.stderr[-5000:]
        assert "pass 3" in out.stdout, out.stdout  # the spec reporter's summary: all three ran
    finally:
        running.stop()


def test_typescript_client_streams_a_metered_session(tmp_path):
    """payStream through Pay against mppx's metered SSE route (vouchers paid in-band,
    maxStreamAmount), then closeChannel, from Node (clients/typescript/test/sessions.test.ts)."""
    import secrets

    from eth_utils import to_checksum_address

    from teller_client import Asset
    from testbed.chain import FACILITATOR_KEY
    from testbed.escrow_proxy import escrow_proxy
    from testbed.tempo import TEMPO_CHAIN_ID
    from tests.support.mpp_live import MPPX_CHAIN_ARGS
    from tests.support.mppx_session import mppx_session_server

    build()
    payee = to_checksum_address("0x" + secrets.token_hex(20))
    with tempo_chain(*MPPX_CHAIN_ARGS) as chain, escrow_proxy(chain.rpc_url) as (proxy_url, proxy):
        running = RunningTeller(make_settings(
            f"sqlite:///{tmp_path / 't.db'}", tmp_path, rpc_urls={chain.network: proxy_url},
            reconcile_interval_seconds=0, session_escrows={chain.network: proxy.escrow},
            outbound_allow=("127.0.0.1",)))
        try:
            t = running.setup_tenant(policy=Policy(assets=(Asset(chain.network, PATH_USD, 6),)))
            chain.fund(t.address, 1_000_000)
            with mppx_session_server(proxy_url, TEMPO_CHAIN_ID, proxy.escrow, PATH_USD, FACILITATOR_KEY, payee,
                                     "0.0001", suggested_deposit="0.2") as server:
                env = {**os.environ, "TELLER_TARGET": running.target, "TELLER_TOKEN": t.token,
                       "TELLER_WALLET_ID": t.wallet_id, "SESSION_URL": server.url, "PRICE": "100"}
                out = subprocess.run(["node", "--test", "--test-reporter=spec", "--test-concurrency=1",
                                      "dist/test/sessions.test.js"], cwd=PACKAGE, env=env,
                                     capture_output=True, text=True, timeout=300)
                log = server.log()
            assert out.returncode == 0, out.stdout[-20000:] + out.stderr[-5000:] + log[-3000:]
            assert "pass 3" in out.stdout, out.stdout
        finally:
            running.stop()
