"""A real x402 resource server on loopback: the official SDK's FastAPI
middleware with the official x402Facilitator and its web3 signer on anvil."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import httpx
from fastapi import FastAPI
from x402 import x402Facilitator, x402ResourceServer
from x402.http.middleware.fastapi import payment_middleware
from x402.http.types import PaymentOption, RouteConfig
from x402.mechanisms.evm import FacilitatorWeb3Signer
from x402.mechanisms.evm.exact import register_exact_evm_facilitator, register_exact_evm_server
from x402.schemas import AssetAmount

from testbed.chain import FACILITATOR_KEY, TOKEN_NAME, TOKEN_VERSION, Chain
from testbed.loopback import serve


@contextlib.contextmanager
def resource_server(chain: Chain, pay_to: str, amount: int, timeout_s: int = 120,
                    asset: str | None = None) -> Iterator[str]:
    facilitator = x402Facilitator()
    signer = FacilitatorWeb3Signer(private_key=FACILITATOR_KEY, rpc_url=chain.rpc_url)
    register_exact_evm_facilitator(facilitator, signer, networks=chain.network)
    server = x402ResourceServer(facilitator)
    register_exact_evm_server(server)
    option = PaymentOption(
        scheme="exact", pay_to=pay_to, network=chain.network, max_timeout_seconds=timeout_s,
        price=AssetAmount(amount=str(amount), asset=asset or chain.token.address,
                          extra={"name": TOKEN_NAME, "version": TOKEN_VERSION}),
    )
    app = FastAPI()
    app.middleware("http")(payment_middleware({"GET /weather": RouteConfig(accepts=option, description="weather")},
                                              server))

    @app.get("/weather")
    def weather() -> dict[str, str]:
        return {"weather": "sunny"}

    with serve(app) as base:
        yield base


__all__ = ["httpx", "resource_server"]
