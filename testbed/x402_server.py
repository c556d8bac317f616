"""402 responses produced by the official x402 SDK's own server code.

A FastAPI app protected by the SDK's ``payment_middleware`` with an
in-process ``x402Facilitator``; requesting the route unpaid yields the 402
exactly as a real x402 v2 server sends it. (The SDK has no v1 server; v1
challenges are built with its ``PaymentRequiredV1`` model.)
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import FastAPI
from fastapi.testclient import TestClient
from x402 import x402Facilitator, x402ResourceServer
from x402.http.middleware.fastapi import payment_middleware
from x402.http.types import PaymentOption, RouteConfig
from x402.mechanisms.evm import FacilitatorWeb3Signer
from x402.mechanisms.evm.exact import register_exact_evm_facilitator, register_exact_evm_server
from x402.schemas import AssetAmount
from x402.schemas.v1 import PaymentRequiredV1, PaymentRequirementsV1

# Facilitator key for building challenges only: it never signs anything here.
_FACILITATOR_TEST_KEY = "0x" + "5a" * 32
USDC_BASE_SEPOLIA = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
PAYEE = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"


@dataclass(frozen=True)
class Challenge402:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    url: str
    method: str = "GET"


def sdk_v2_challenge(
    *, amount: str = "1000", network: str = "eip155:84532", asset: str = USDC_BASE_SEPOLIA,
    pay_to: str = PAYEE, extra: dict | None = None, timeout: int = 60, options: list[PaymentOption] | None = None,
) -> Challenge402:
    facilitator = x402Facilitator()
    signer = FacilitatorWeb3Signer(private_key=_FACILITATOR_TEST_KEY, rpc_url="http://127.0.0.1:9")
    networks = sorted({network, *(o.network for o in options or [])})
    register_exact_evm_facilitator(facilitator, signer, networks=networks)
    server = x402ResourceServer(facilitator)
    register_exact_evm_server(server)
    accepts = options or [PaymentOption(
        scheme="exact", pay_to=pay_to, network=network, max_timeout_seconds=timeout,
        price=AssetAmount(amount=amount, asset=asset, extra=extra if extra is not None else {"name": "USDC", "version": "2"}),
    )]
    app = FastAPI()
    app.middleware("http")(payment_middleware({"GET /paid": RouteConfig(accepts=accepts, description="weather")}, server))

    @app.get("/paid")
    def paid() -> dict[str, str]:
        return {"weather": "sunny"}

    response = TestClient(app).get("/paid")
    return Challenge402(response.status_code, list(response.headers.items()), response.content,
                        "http://testserver/paid")


def sdk_v1_challenge(
    *, amount: str = "1000", network: str = "base-sepolia", asset: str = USDC_BASE_SEPOLIA,
    pay_to: str = PAYEE, extra: dict | None = None, timeout: int = 60,
) -> Challenge402:
    body = PaymentRequiredV1(
        error="X-PAYMENT header is required",
        accepts=[PaymentRequirementsV1(
            scheme="exact", network=network, max_amount_required=amount, resource="http://testserver/v1",
            description="weather", mime_type="application/json", pay_to=pay_to, max_timeout_seconds=timeout,
            asset=asset, extra=extra if extra is not None else {"name": "USDC", "version": "2"},
        )],
    ).model_dump_json(by_alias=True, exclude_none=True).encode()
    return Challenge402(402, [("content-type", "application/json")], body, "http://testserver/v1")
