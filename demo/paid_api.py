"""The paid API the demo's backend calls: one app on loopback whose routes answer
402 the way real servers do, built with the official counterparties.

- ``GET /weather`` and ``GET /report``: x402 v2 ``exact`` through the x402 SDK's
  FastAPI ``payment_middleware``; its in-process ``x402Facilitator`` verifies the
  proof and settles it on the EVM chain with anvil's dev account 1.
- ``GET /forecast``: MPP ``tempo``/``charge`` through pympp's server; it
  broadcasts the Tempo transaction Teller signed (pull mode).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import FastAPI
from mpp.methods.tempo import server as tempo
from mpp.server import Mpp, pay
from mpp.store import MemoryStore
from starlette.responses import JSONResponse
from x402 import x402Facilitator, x402ResourceServer
from x402.http.middleware.fastapi import payment_middleware
from x402.http.types import PaymentOption, RouteConfig
from x402.mechanisms.evm import FacilitatorWeb3Signer
from x402.mechanisms.evm.exact import register_exact_evm_facilitator, register_exact_evm_server
from x402.schemas import AssetAmount

# The test support's pieces, until they move into a shared package.
from tests.support.chain import FACILITATOR_KEY, TOKEN_NAME, TOKEN_VERSION, Chain
from tests.support.mpp_live import PATH_USD, TEMPO_CHAIN_ID, TempoChain, _DropSyncTimeout, serve


@dataclass(frozen=True, slots=True)
class Prices:
    """What each route costs, in base units of 6-decimal tokens."""

    weather: int
    forecast: int
    report: int


@dataclass(frozen=True, slots=True)
class PaidApi:
    base: str
    x402_payee: str
    mpp_recipient: str


@contextlib.contextmanager
def paid_api(evm: Chain, tempo_chain: TempoChain, prices: Prices, x402_payee: str, mpp_recipient: str,
             secret: str) -> Iterator[PaidApi]:
    app = FastAPI()
    app.middleware("http")(payment_middleware(_x402_routes(evm, prices, x402_payee), _x402_server(evm)))

    @app.get("/weather")
    def weather() -> dict[str, str]:
        return {"weather": "sunny", "paid_with": "x402"}

    @app.get("/report")
    def report() -> dict[str, str]:
        return {"report": "a long one"}

    methods = tempo.charge(recipient=mpp_recipient, chain_id=TEMPO_CHAIN_ID, rpc_url=tempo_chain.rpc_url,
                           currencies=[PATH_USD], decimals=6,
                           http_client=httpx.AsyncClient(timeout=30, transport=_DropSyncTimeout()),
                           confirmation_timeout=20,
                           store=MemoryStore())  # one process for one run: its replay store can be too
    mpp = Mpp(methods=methods, realm="teller-demo.local", secret_key=secret)

    @pay(mpp.charge(amount=_decimal(prices.forecast)))
    async def forecast(request: Any, credential: Any, receipt: Any) -> JSONResponse:
        return JSONResponse({"forecast": "rain tomorrow", "paid_with": "mpp", "reference": receipt.reference})

    app.router.add_route("/forecast", forecast, methods=["GET"])
    with serve(app) as base:
        yield PaidApi(base, x402_payee, mpp_recipient)


def _x402_server(evm: Chain) -> x402ResourceServer:
    facilitator = x402Facilitator()
    signer = FacilitatorWeb3Signer(private_key=FACILITATOR_KEY, rpc_url=evm.rpc_url)
    register_exact_evm_facilitator(facilitator, signer, networks=evm.network)
    server = x402ResourceServer(facilitator)
    register_exact_evm_server(server)
    return server


def _x402_routes(evm: Chain, prices: Prices, pay_to: str) -> dict[str, RouteConfig]:
    def option(amount: int) -> PaymentOption:
        return PaymentOption(scheme="exact", pay_to=pay_to, network=evm.network, max_timeout_seconds=120,
                             price=AssetAmount(amount=str(amount), asset=evm.token.address,
                                               extra={"name": TOKEN_NAME, "version": TOKEN_VERSION}))

    return {"GET /weather": RouteConfig(accepts=option(prices.weather), description="today's weather"),
            "GET /report": RouteConfig(accepts=option(prices.report), description="the full report")}


def _decimal(base_units: int) -> str:
    """pympp takes amounts in whole tokens ("0.02")."""
    return f"{base_units / 10**6:.6f}".rstrip("0").rstrip(".")
