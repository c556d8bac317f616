"""`teller demo`: an installed Teller's self-check, offline, on the embedded default.

Starts a dev-mode worker on a local SQLite file, creates a tenant, an API
token and a wallet through the admin API, builds a real x402 v2 challenge
with the official x402 SDK's resource-server code, asks Teller to sign it
over gRPC, and checks the proof the way a server would.

It needs nothing beyond Teller's own dependencies: no chain, no paid API, no
network, so it runs from a wheel or the container image. The whole job (local
chains, a paid API answering x402 and MPP, `Pay` settling on chain, a budget
refusing a call) is `./run demo` in a checkout: that one needs the official
server SDKs and anvil, which are dev dependencies and stay out of this package.
"""

from __future__ import annotations

import secrets
import tempfile
from pathlib import Path

from eth_account import Account
from eth_account.messages import encode_typed_data

from teller.app import build
from teller.config import Settings, finalize_for_serving
from teller.rpc.server import BackgroundServer
from teller_client import AdminClient, Asset, Policy, TellerClient

# A Base Sepolia USDC requirement, as a real x402 server would publish it.
USDC = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
PAYEE = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"


def sdk_challenge() -> tuple[list[tuple[str, str]], bytes]:
    """A 402 built by the x402 SDK's own x402ResourceServer (in-process facilitator)."""
    from x402 import x402FacilitatorSync, x402ResourceServerSync
    from x402.http.utils import encode_payment_required_header
    from x402.mechanisms.evm import FacilitatorWeb3Signer
    from x402.mechanisms.evm.exact import register_exact_evm_facilitator, register_exact_evm_server
    from x402.schemas import AssetAmount, ResourceInfo
    from x402.schemas.config import ResourceConfig

    facilitator = x402FacilitatorSync()
    # The facilitator only advertises what it supports here; this throwaway
    # key never signs and the RPC URL is never contacted.
    throwaway = "0x" + secrets.token_hex(32)
    register_exact_evm_facilitator(
        facilitator, FacilitatorWeb3Signer(private_key=throwaway, rpc_url="http://127.0.0.1:9"), networks="eip155:84532"
    )
    server = x402ResourceServerSync(facilitator)
    register_exact_evm_server(server)
    server.initialize()
    requirements = server.build_payment_requirements(ResourceConfig(
        scheme="exact", pay_to=PAYEE, network="eip155:84532", max_timeout_seconds=120,
        price=AssetAmount(amount="10000", asset=USDC, extra={"name": "USDC", "version": "2"}),
    ))
    required = server.create_payment_required_response(
        requirements, ResourceInfo(url="https://api.example.com/weather", description="weather"),
        error="Payment required",
    )
    return [("PAYMENT-REQUIRED", encode_payment_required_header(required))], b"{}"


def recovered_signer(header_value: str) -> str:
    from x402.http.utils import decode_payment_signature_header

    payload = decode_payment_signature_header(header_value)
    auth = payload.payload["authorization"]
    accepted = payload.accepted  # type: ignore[union-attr]
    full = {
        "types": {
            "EIP712Domain": [{"name": "name", "type": "string"}, {"name": "version", "type": "string"},
                             {"name": "chainId", "type": "uint256"}, {"name": "verifyingContract", "type": "address"}],
            "TransferWithAuthorization": [
                {"name": "from", "type": "address"}, {"name": "to", "type": "address"},
                {"name": "value", "type": "uint256"}, {"name": "validAfter", "type": "uint256"},
                {"name": "validBefore", "type": "uint256"}, {"name": "nonce", "type": "bytes32"}],
        },
        "primaryType": "TransferWithAuthorization",
        "domain": {"name": accepted.extra["name"], "version": accepted.extra["version"],
                   "chainId": int(accepted.network.split(":")[1]), "verifyingContract": accepted.asset},
        "message": {**auth, "value": int(auth["value"]), "validAfter": int(auth["validAfter"]),
                    "validBefore": int(auth["validBefore"]), "nonce": bytes.fromhex(auth["nonce"][2:])},
    }
    return str(Account.recover_message(encode_typed_data(full_message=full), signature=payload.payload["signature"]))


def run(data_dir: Path | None = None) -> int:
    tmp = None
    if data_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="teller-demo-")
        data_dir = Path(tmp.name)
    settings = finalize_for_serving(Settings(listen="127.0.0.1:0", data_dir=data_dir, dev_mode=True))
    app = build(settings)
    server = BackgroundServer(app, settings.listen)
    target = f"127.0.0.1:{server.port}"
    try:
        print(f"Teller (dev mode) on {target}, database {settings.resolved_database_url()}")
        with AdminClient(target, settings.admin_token) as admin:
            tenant = admin.create_tenant(f"demo-{secrets.token_hex(3)}")
            _, token = admin.issue_token(tenant.id, "demo")
            wallet = admin.create_wallet(tenant.id, "demo wallet")
            admin.set_policy(tenant.id, Policy(per_payment_max=1_000_000, daily_budget=5_000_000,
                                              assets=(Asset("eip155:84532", USDC, 6),)))
            print(f"tenant {tenant.name}  wallet {wallet.address} (key generated and sealed inside Teller)")
            headers, body = sdk_challenge()
            print("402 challenge built by the x402 SDK: 0.01 USDC on eip155:84532")
            with TellerClient(target, token) as client:
                signed = client.sign(status=402, headers=headers, body=body, wallet_id=wallet.id,
                                     url="https://api.example.com/weather")
                spend = client.spend()
            print(f"\n{signed.header_name}: {signed.header_value}\n")
            signer = recovered_signer(signed.header_value)
            ok = signer == wallet.address
            print(f"recovered signer: {signer}  {'== wallet address: OK' if ok else '!= wallet address: FAILED'}")
            for w in spend:
                print(f"budget {w.window}: {w.reserved} reserved, {w.spent} settled, {w.remaining} of {w.limit} left"
                      " (micro-USD)")
            events, _ = admin.audit_events(tenant_id=tenant.id, page_size=10)
            print("audit log (newest first):")
            for e in events:
                print(f"  #{e.id} {e.action:<14} {e.outcome:<6} {e.actor:<24} {e.amount}")
            print("\nThat was one signature, offline. `./run demo` in a checkout shows the whole job: local chains,"
                  " a paid API (x402 and MPP), payments settling on chain, a budget refusing a call.")
        return 0 if ok else 1
    finally:
        server.stop()
        app.close()
        if tmp is not None:
            tmp.cleanup()
