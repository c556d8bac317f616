"""A test-only loopback JSON-RPC proxy in front of ``anvil --network tempo`` that lets
contracts/TestChannelEscrow.sol stand in for Tempo's TIP-1034 channel-escrow precompile.

anvil 1.7.1 has no escrow precompile. A contract can do everything the precompile does
except two things, which this proxy emulates before forwarding a transaction and nothing
else (every other request passes through untouched):

1. The precompile moves the payer's TIP-20 without an allowance. Before a 0x76
   transaction whose last call is ``open`` or ``topUp`` on the escrow is sent or
   estimated, the proxy has the payer approve the escrow for exactly that deposit,
   with anvil's account impersonation.
2. The precompile binds the channel to the open transaction's expiring-nonce hash,
   ``keccak256(encodeForSigning(tx) ++ sender)``, which no contract can compute. Before
   forwarding an open transaction the proxy computes it and primes the escrow with it
   (``primeOpen(payer, salt, hash)``, callable only by the registrar); ``open`` emits it
   in ``ChannelOpened``. Gas estimates of an open are primed with a placeholder, and
   run on the pending block with the grant in the pool, not waited for.

Every deviation from a real Tempo node is listed in testbed/README.md. Loopback only;
the keys are anvil's public development keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import rlp
from eth_abi import decode as abi_decode
from eth_keys import keys
from eth_utils import keccak, to_checksum_address
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from web3 import Web3

from testbed.chain import DEPLOYER_KEY, artifact
from testbed.loopback import serve

TEMPO_TX_TYPE = 0x76
_DESCRIPTOR = "(address,address,address,address,bytes32,address,bytes32)"
OPEN_SELECTOR = keccak(text="open(address,address,address,uint96,bytes32,address)")[:4]
TOPUP_SELECTOR = keccak(text=f"topUp({_DESCRIPTOR},uint96)")[:4]
# Gas estimates of an open run before the transaction is signed: any primed hash will do.
ESTIMATE_NONCE_HASH = b"\x11" * 32
_APPROVE = keccak(text="approve(address,uint256)")[:4]
_PRIME = keccak(text="primeOpen(address,bytes32,bytes32)")[:4]
_SEND_METHODS = {"eth_sendRawTransaction", "eth_sendRawTransactionSync"}


@dataclass(frozen=True)
class EscrowCall:
    """The escrow management call a transaction (or a gas estimate) ends with."""

    kind: str  # "open" | "topUp"
    token: str
    amount: int
    salt: bytes = b""  # open only


def escrow_call(to: bytes | str | None, data: bytes, escrow: str) -> EscrowCall | None:
    if not to or to_checksum_address(to) != escrow or len(data) < 4:
        return None
    if data[:4] == OPEN_SELECTOR:
        _payee, _operator, token, deposit, salt, _signer = abi_decode(
            ["address", "address", "address", "uint96", "bytes32", "address"], data[4:])
        return EscrowCall("open", to_checksum_address(token), int(deposit), bytes(salt))
    if data[:4] == TOPUP_SELECTOR:
        descriptor, additional = abi_decode([_DESCRIPTOR, "uint96"], data[4:])
        return EscrowCall("topUp", to_checksum_address(descriptor[3]), int(additional))
    return None


@dataclass(frozen=True)
class DecodedTempoTx:
    sender: str
    expiring_nonce_hash: bytes
    calls: list[tuple[bytes, bytes]]  # (to, input)


def decode_tempo_tx(raw: bytes) -> DecodedTempoTx:
    """Sender and expiring-nonce hash of a signed 0x76 transaction with a secp256k1 sender signature.

    The sender's signing preimage is ``0x76 || rlp(fields without the sender signature)``,
    where a sponsored transaction blanks its fee token and marks the fee-payer slot 0x00.
    """
    if not raw or raw[0] != TEMPO_TX_TYPE:
        raise ValueError("not a Tempo (0x76) transaction")
    fields = list(rlp.decode(raw[1:]))
    if len(fields) not in (14, 15):
        raise ValueError(f"a 0x76 transaction has 14 or 15 fields, got {len(fields)}")
    signature = fields[-1]
    unsigned = fields[:-1]
    if unsigned[11] != b"":  # fee payer present: the sender signed without its fee token
        unsigned[10] = b""
        unsigned[11] = b"\x00"
    preimage = bytes([TEMPO_TX_TYPE]) + rlp.encode(unsigned)
    if len(signature) != 65:
        raise ValueError("only secp256k1 sender signatures are emulated")
    v = signature[64]
    sig = keys.Signature(vrs=(v - 27 if v >= 27 else v, int.from_bytes(signature[:32], "big"),
                              int.from_bytes(signature[32:64], "big")))
    sender = sig.recover_public_key_from_msg_hash(keccak(preimage)).to_canonical_address()
    calls = [(bytes(c[0]), bytes(c[2])) for c in fields[4]]
    return DecodedTempoTx(to_checksum_address(sender), keccak(preimage + sender), calls)


class EscrowProxy:
    """The proxy's JSON-RPC handling; ``app`` is the ASGI app that serves it."""

    def __init__(self, upstream: str, escrow: str, registrar: str) -> None:
        self.upstream = upstream
        self.escrow = to_checksum_address(escrow)
        self.registrar = to_checksum_address(registrar)
        self._lock = asyncio.Lock()
        self.primed: list[tuple[str, str]] = []  # (payer, expiring-nonce hash), for tests
        self.app = Starlette(routes=[Route("/", self._handle, methods=["POST"])])

    async def _rpc(self, client: httpx.AsyncClient, method: str, params: list[Any]) -> Any:
        body = (await client.post(self.upstream, json={"jsonrpc": "2.0", "id": 1, "method": method,
                                                       "params": params})).json()
        if "error" in body:
            raise RuntimeError(f"{method}: {body['error']}")
        return body["result"]

    async def _as(self, client: httpx.AsyncClient, sender: str, to: str, data: bytes) -> str:
        """A transaction from ``sender`` through anvil's impersonation, sent to the
        pool (not waited for); its hash."""
        # anvil's impersonated send checks the sender's native balance, which a wallet
        # that only ever paid Tempo fees in a TIP-20 token does not have: give it some.
        if int(await self._rpc(client, "eth_getBalance", [sender, "latest"]), 16) == 0:
            await self._rpc(client, "anvil_setBalance", [sender, hex(10**18)])
        await self._rpc(client, "anvil_impersonateAccount", [sender])
        try:
            return str(await self._rpc(client, "eth_sendTransaction",
                                       [{"from": sender, "to": to, "data": "0x" + data.hex()}]))
        finally:
            await self._rpc(client, "anvil_stopImpersonatingAccount", [sender])

    async def _mined(self, client: httpx.AsyncClient, tx_hash: str) -> None:
        for _ in range(200):
            receipt = await self._rpc(client, "eth_getTransactionReceipt", [tx_hash])
            if receipt is not None:
                if int(receipt["status"], 16) != 1:
                    raise RuntimeError(f"emulated precompile step {tx_hash} reverted")
                return
            await asyncio.sleep(0.05)
        raise RuntimeError(f"emulated precompile step {tx_hash} was not mined")

    async def _grant(self, client: httpx.AsyncClient, payer: str, call: EscrowCall, nonce_hash: bytes, *,
                     wait: bool = True) -> None:
        """Approve (and, for an open, prime) from two senders at once; with ``wait``
        both are mined (in one block, mostly) before the transaction they serve is
        forwarded, else they are only pending."""
        approve = _APPROVE + self.escrow_word() + call.amount.to_bytes(32, "big")
        sent = [await self._as(client, payer, call.token, approve)]
        if call.kind == "open":
            prime = _PRIME + bytes(12) + bytes.fromhex(payer[2:]) + call.salt + nonce_hash
            sent.append(await self._as(client, self.registrar, self.escrow, prime))
        if wait:
            for tx_hash in sent:
                await self._mined(client, tx_hash)
            if call.kind == "open":
                self.primed.append((payer, "0x" + nonce_hash.hex()))

    def escrow_word(self) -> bytes:
        return bytes(12) + bytes.fromhex(self.escrow[2:])

    async def _before(self, client: httpx.AsyncClient, request: dict[str, Any]) -> None:
        method, params = request.get("method"), request.get("params") or []
        if method in _SEND_METHODS and params and isinstance(params[0], str) and params[0][:4] == "0x76":
            tx = decode_tempo_tx(bytes.fromhex(params[0][2:]))
            if tx.calls:
                call = escrow_call(tx.calls[-1][0], tx.calls[-1][1], self.escrow)
                if call is not None:
                    await self._grant(client, tx.sender, call, tx.expiring_nonce_hash)
        elif method == "eth_estimateGas" and params and isinstance(params[0], dict):
            req = params[0]
            calls = req.get("calls") or ([{"to": req.get("to"), "data": req.get("data") or req.get("input")}]
                                         if req.get("to") else [])
            if calls and req.get("from"):
                last = calls[-1]
                data = last.get("data") or last.get("input") or "0x"
                call = escrow_call(last.get("to"), bytes.fromhex(data[2:]), self.escrow)
                if call is not None:
                    # Not waited for: the estimate runs on the pending block, which anvil
                    # builds from the pool, where the grant is. Waiting for two blocks per
                    # estimate (an open takes three) made every open cost seconds. The
                    # payer's account nonce stays as mined: the pending approve from it
                    # would make it 1 and drop the new-account charge a node prices a
                    # wallet at nonce 0 with, which a server simulating the open at
                    # "latest" a moment later still applies.
                    payer = to_checksum_address(req["from"])
                    nonce = await self._rpc(client, "eth_getTransactionCount", [payer, "latest"])
                    await self._grant(client, payer, call, ESTIMATE_NONCE_HASH, wait=False)
                    overrides = dict(params[2]) if len(params) > 2 and isinstance(params[2], dict) else {}
                    overrides[payer] = {**overrides.get(payer, {}), "nonce": nonce}
                    request["params"] = [req, "pending", overrides, *params[3:]]

    async def _handle(self, request: Request) -> Response:
        payload = json.loads(await request.body())
        batch = payload if isinstance(payload, list) else [payload]
        async with httpx.AsyncClient(timeout=60) as client:
            async with self._lock:
                for item in batch:
                    if isinstance(item, dict):
                        await self._before(client, item)
            upstream = await client.post(self.upstream, json=payload)
        return Response(upstream.content, status_code=upstream.status_code, media_type="application/json")


def escrow_abi() -> list[dict[str, Any]]:
    """The test escrow's ABI (compiled from contracts/ when missing or stale)."""
    return list(artifact("TestChannelEscrow")["abi"])  # type: ignore[call-overload]


def deploy_escrow(rpc_url: str, registrar: str) -> str:
    """Deploys TestChannelEscrow from anvil's dev account 0; returns its address."""
    w3 = Web3(Web3.HTTPProvider(rpc_url))
    art = artifact("TestChannelEscrow")
    acct = w3.eth.account.from_key(DEPLOYER_KEY)
    factory = w3.eth.contract(abi=art["abi"], bytecode=art["bytecode"])
    tx = factory.constructor(to_checksum_address(registrar)).build_transaction(
        {"from": acct.address, "nonce": w3.eth.get_transaction_count(acct.address)})
    receipt = w3.eth.wait_for_transaction_receipt(
        w3.eth.send_raw_transaction(acct.sign_transaction(tx).raw_transaction), timeout=30)
    assert receipt["status"] == 1
    return to_checksum_address(receipt["contractAddress"])


@contextlib.contextmanager
def escrow_proxy(anvil_url: str) -> Iterator[tuple[str, EscrowProxy]]:
    """Deploys the test escrow on the anvil at ``anvil_url`` and serves the proxy in front
    of it; yields the proxy's URL and the proxy (``.escrow`` is the escrow's address)."""
    registrar = Web3().eth.account.from_key(DEPLOYER_KEY).address
    proxy = EscrowProxy(anvil_url, deploy_escrow(anvil_url, registrar), registrar)
    with serve(proxy.app) as url:
        yield url + "/", proxy


__all__ = ["EscrowProxy", "decode_tempo_tx", "deploy_escrow", "escrow_abi", "escrow_call", "escrow_proxy"]
