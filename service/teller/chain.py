"""Talking to EVM chains through per-network RPC endpoints (web3).

Used to see what happened to an authorization after it left Teller (balances,
``authorizationState``, the ``AuthorizationUsed`` / ``AuthorizationCanceled``
events) and to a payment channel (the escrow's events, decoded by
``teller.mpp.channel_events``), and to broadcast a wallet's
``cancelAuthorization``. Every web3 or transport failure becomes
``Unavailable`` here, and nowhere else.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from eth_utils import keccak, to_checksum_address
from web3 import Web3
from web3.exceptions import ContractLogicError, TimeExhausted, Web3Exception

from teller.clock import Clock
from teller.errors import FailedPrecondition, Unavailable
from teller.mpp import channel_events
from teller.mpp import gas as tempo_gas
from teller.mpp.channel_events import ChannelEvent, MalformedEvent
from teller.mpp.tempo_tx import TempoTransaction

T = TypeVar("T")
log = logging.getLogger("teller.chain")

_ERC20_EIP3009_ABI = [
    {"type": "function", "name": "balanceOf", "stateMutability": "view",
     "inputs": [{"name": "account", "type": "address"}], "outputs": [{"name": "", "type": "uint256"}]},
    {"type": "function", "name": "authorizationState", "stateMutability": "view",
     "inputs": [{"name": "authorizer", "type": "address"}, {"name": "nonce", "type": "bytes32"}],
     "outputs": [{"name": "", "type": "bool"}]},
    {"type": "function", "name": "cancelAuthorization", "stateMutability": "nonpayable",
     "inputs": [{"name": "authorizer", "type": "address"}, {"name": "nonce", "type": "bytes32"},
                {"name": "v", "type": "uint8"}, {"name": "r", "type": "bytes32"}, {"name": "s", "type": "bytes32"}],
     "outputs": []},
]

USED_TOPIC = "0x" + keccak(text="AuthorizationUsed(address,bytes32)").hex()
CANCELED_TOPIC = "0x" + keccak(text="AuthorizationCanceled(address,bytes32)").hex()
_KINDS: dict[str, Literal["used", "canceled"]] = {USED_TOPIC: "used", CANCELED_TOPIC: "canceled"}


@dataclass(frozen=True, slots=True)
class Block:
    """A network's latest block, as far as Teller reads it: its number and time."""

    number: int
    timestamp: int


@dataclass(frozen=True, slots=True)
class AuthorizationEvent:
    kind: Literal["used", "canceled"]
    asset: str
    authorizer: str
    nonce: str  # 0x-prefixed, lower-case hex
    tx_hash: str
    block: int


@dataclass(frozen=True, slots=True)
class Sent:
    tx_hash: str
    succeeded: bool
    fee_wei: int


@dataclass(frozen=True, slots=True)
class Mined:
    tx_hash: str
    succeeded: bool
    block: int
    gas_used: int
    gas_price: int


def _hex(value: Any) -> str:
    raw = value.hex() if isinstance(value, (bytes, bytearray)) else str(value)
    return (raw if raw.startswith("0x") else "0x" + raw).lower()


def _mined(receipt: Mapping[str, Any]) -> Mined:
    return Mined(_hex(receipt["transactionHash"]), int(receipt["status"]) == 1, int(receipt["blockNumber"]),
                 int(receipt["gasUsed"]), int(receipt.get("effectiveGasPrice", 0)))


def _event(log: Mapping[str, Any]) -> AuthorizationEvent | None:
    topics = [_hex(t) for t in log.get("topics", ())]
    if len(topics) != 3 or topics[0] not in _KINDS:
        return None
    return AuthorizationEvent(
        kind=_KINDS[topics[0]], asset=to_checksum_address(log["address"]),
        authorizer=to_checksum_address("0x" + topics[1][-40:]), nonce=topics[2],
        tx_hash=_hex(log["transactionHash"]), block=int(log["blockNumber"]),
    )


def _raw(value: Any) -> Any:
    """A log field as bytes when it is hex text (raw JSON-RPC); as given otherwise (web3's HexBytes)."""
    if isinstance(value, str) and value.startswith("0x"):
        try:
            return bytes.fromhex(value[2:])
        except ValueError:
            return value
    return value


def _channel_event(entry: Mapping[str, Any]) -> ChannelEvent | None:
    try:
        return channel_events.decode(
            address=entry.get("address"),  # type: ignore[arg-type]
            topics=[_raw(t) for t in entry.get("topics") or ()], data=_raw(entry.get("data")),
            tx_hash=_raw(entry.get("transactionHash")), block=entry.get("blockNumber"),  # type: ignore[arg-type]
            log_index=entry.get("logIndex"))  # type: ignore[arg-type]
    except MalformedEvent as exc:
        # Skipped, not guessed at: a close never seen keeps its whole deposit counted
        # (Teller counts more than was spent, never less).
        log.warning("malformed escrow event in transaction %s, block %s: %s",
                    str(entry.get("transactionHash"))[:80], str(entry.get("blockNumber"))[:20], exc)
        return None


#: Channel ids per ``eth_getLogs`` of ``channel_events`` (nodes bound a filter's size).
CHANNEL_IDS_PER_QUERY = 200


class NotCached(Exception):
    """Asked with ``cached_only``: the answer needs I/O (the caller retries where it may block)."""


class ChainReader:
    def __init__(self, rpc_urls: Mapping[str, str], timeout_s: float = 10.0, clock: Clock = time.monotonic) -> None:
        self._urls = dict(rpc_urls)
        self._timeout = timeout_s
        #: Measures the gas price's lifetime (monotonic; tests move it instead of sleeping).
        self._clock = clock
        self._clients: dict[str, Web3] = {}
        self._gas: dict[str, tuple[int, float]] = {}
        # One gas price read at a time (there are few networks; a read takes milliseconds).
        self._gas_lock = threading.Lock()
        self._domains: dict[tuple[str, str], tuple[str, str]] = {}
        self.gas_price_ttl_s = 5.0
        #: Tempo gas limits per (network, shape_key): see ``tempo_gas_limit``.
        self._gas_limits: dict[tuple[str, Any], int] = {}
        self.gas_limit_cache_size = 10_000

    @property
    def networks(self) -> tuple[str, ...]:
        return tuple(self._urls)

    def _w3(self, network: str) -> Web3:
        url = self._urls.get(network)
        if url is None:
            raise FailedPrecondition(f"no RPC endpoint configured for network {network!r} (set rpc_urls)")
        if network not in self._clients:
            # No retries inside web3: the reconciler backs off on its own schedule.
            self._clients[network] = Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": self._timeout},
                                                            exception_retry_configuration=None))
        return self._clients[network]

    def _token(self, network: str, asset: str):  # type: ignore[no-untyped-def]
        return self._w3(network).eth.contract(address=Web3.to_checksum_address(asset), abi=_ERC20_EIP3009_ABI)

    def _call(self, network: str, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except FailedPrecondition:
            raise
        except (Web3Exception, OSError, ValueError) as exc:
            raise Unavailable(f"{what} on {network} failed: {type(exc).__name__}: {str(exc)[:200]}") from exc

    def gas_price(self, network: str, cached_only: bool = False) -> int:
        """The network's gas price, cached for a few seconds: every Tempo payment needs it.

        Under load the cached price never lapses: in the last fifth of its life
        the first call to see it starts one refresh in the background and goes
        on with it. (When it lapsed, every Tempo call then in flight went to a
        thread for its own RPC, stalling the worker for up to ~100 ms every few
        seconds.) Once it has lapsed, one caller reads it and the others wait
        for that answer."""
        hit = self._gas.get(network)
        if hit is not None:
            left = hit[1] - self._clock()
            if left > 0:
                if left < self.gas_price_ttl_s / 5:
                    self._refresh_in_background(network)
                return hit[0]
        if cached_only:
            raise NotCached(f"gas price of {network}")
        with self._gas_lock:
            hit = self._gas.get(network)
            if hit is not None and hit[1] > self._clock():
                return hit[0]  # read by the caller this one waited for
            return self._read_gas_price(network)

    def _read_gas_price(self, network: str) -> int:
        """Under ``_gas_lock``."""
        price = self._call(network, "gas price read", lambda: int(self._w3(network).eth.gas_price))
        self._gas[network] = (price, self._clock() + self.gas_price_ttl_s)
        return price

    def _refresh_in_background(self, network: str) -> None:
        if not self._gas_lock.acquire(blocking=False):
            return  # a read is under way

        def refresh() -> None:
            try:
                self._read_gas_price(network)
            except Unavailable:
                pass  # the cached price lapses, and the next call reads it itself (and reports the failure)
            finally:
                self._gas_lock.release()

        try:
            threading.Thread(target=refresh, name="teller-gas-price", daemon=True).start()
        except BaseException:
            self._gas_lock.release()
            raise

    def tempo_gas_limit(self, network: str, sender: str, key: Any, build: Callable[[], TempoTransaction],
                        cached_only: bool = False, fresh: bool = True) -> int:
        """The gas limit for the transaction ``build()`` makes, sent by ``sender``,
        from the chain's estimates (``teller.mpp.gas``), remembered per ``key``
        (``teller.mpp.gas.shape_key``: sender, token, call shape, recipients): the
        limit covers each recipient as if it held nothing, so it stays enough when
        a balance has dropped to zero since.

        A refusal is ``FailedPrecondition`` naming the node's reason, with reason
        ``insufficient_balance`` when the wallet cannot cover amount + fee.
        ``fresh=False``: calls that pay no recipient (``teller.mpp.gas.requests``)."""
        cached = key is not None  # None: estimated each time, never remembered
        key = (network, key)
        hit = self._gas_limits.get(key) if cached else None
        if hit is not None:
            return hit
        if cached_only:
            raise NotCached(f"gas limit on {network}")
        reqs = tempo_gas.requests(build(), sender, fresh=fresh)
        whole = self._estimate(network, reqs.whole)
        singles = [(self._estimate(network, actual), self._estimate(network, fresh)) for actual, fresh in reqs.singles]
        limit = tempo_gas.limit(whole, singles)
        if not cached:
            return limit
        if len(self._gas_limits) >= self.gas_limit_cache_size:
            self._gas_limits.pop(next(iter(self._gas_limits)))  # the oldest entry
        self._gas_limits[key] = limit
        return limit

    def _estimate(self, network: str, request: dict[str, Any]) -> int:
        def ask() -> Any:
            return self._w3(network).provider.make_request("eth_estimateGas", [request, "latest"])  # type: ignore[arg-type]
        answer = self._call(network, "gas estimate", ask)
        error = answer.get("error") if isinstance(answer, Mapping) else None
        if isinstance(error, Mapping):
            reason = str(error.get("message", ""))[:200] or "no reason given"
            if tempo_gas.is_insufficient_balance(error):
                raise FailedPrecondition(f"wallet {request.get('from')} cannot cover the payment and its fee on "
                                         f"{network}: the chain says: {reason}", reason="insufficient_balance")
            raise FailedPrecondition(f"the chain refuses to estimate this Tempo payment on {network}: {reason}",
                                     reason="gas_estimate_failed")
        try:
            return int(str(answer["result"]), 16)
        except (KeyError, TypeError, ValueError):
            raise Unavailable(f"gas estimate on {network}: unexpected answer {str(answer)[:200]}") from None

    def chain_id(self, network: str) -> int:
        return self._call(network, "chain id read", lambda: int(self._w3(network).eth.chain_id))

    def token_domain(self, network: str, asset: str, cached_only: bool = False) -> tuple[str, str]:
        """An EIP-3009 token's EIP-712 (name, version), read from the token once."""
        key = (network, asset.lower())
        if key not in self._domains:
            if cached_only:
                raise NotCached(f"token domain of {asset} on {network}")
            self._domains[key] = self._read_token_domain(network, asset)
        return self._domains[key]

    def _read_token_domain(self, network: str, asset: str) -> tuple[str, str]:
        abi = [{"type": "function", "name": n, "stateMutability": "view", "inputs": [],
                "outputs": [{"name": "", "type": "string"}]} for n in ("name", "version")]

        def read() -> tuple[str, str]:
            token = self._w3(network).eth.contract(address=Web3.to_checksum_address(asset), abi=abi)
            return str(token.functions.name().call()), str(token.functions.version().call())
        return self._call(network, "token domain read", read)

    def broadcast(self, network: str, raw: bytes, wait_s: float = 30.0) -> Mined:
        """Send a signed transaction and wait for it to be mined."""
        def send() -> Mined:
            w3 = self._w3(network)
            tx_hash = w3.eth.send_raw_transaction(raw)
            try:
                receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=wait_s, poll_latency=0.1)
            except TimeExhausted as exc:
                raise Unavailable(f"transaction {_hex(tx_hash)} not mined within {wait_s:.0f}s") from exc
            return _mined(receipt)
        return self._call(network, "broadcast", send)

    def _receipt(self, network: str, tx_hash: str) -> Any:
        """A transaction's receipt, or None while it is not mined."""
        def read() -> Any:
            try:
                return self._w3(network).eth.get_transaction_receipt(tx_hash)  # type: ignore[arg-type]
            except Web3Exception as exc:
                if "not found" in str(exc).lower():
                    return None
                raise
        return self._call(network, "receipt read", read)

    def mined(self, network: str, tx_hash: str) -> Mined | None:
        """The outcome of a transaction, or None while it is not mined."""
        receipt = self._receipt(network, tx_hash)
        return _mined(receipt) if receipt is not None else None

    def token_balance(self, network: str, asset: str, owner: str) -> int:
        return self._call(network, "balance read", lambda: int(
            self._token(network, asset).functions.balanceOf(Web3.to_checksum_address(owner)).call()))

    def native_balance(self, network: str, owner: str) -> int:
        return self._call(network, "balance read", lambda: int(
            self._w3(network).eth.get_balance(Web3.to_checksum_address(owner))))

    def head(self, network: str) -> Block:
        def read() -> Block:
            block = self._w3(network).eth.get_block("latest")
            return Block(int(block["number"]), int(block["timestamp"]))
        return self._call(network, "block read", read)

    def authorization_used(self, network: str, asset: str, authorizer: str, nonce: str,
                           block: int | None = None) -> bool:
        """True when the EIP-3009 nonce was used (settled) or canceled on chain."""
        def read() -> bool:
            fn = self._token(network, asset).functions.authorizationState(
                Web3.to_checksum_address(authorizer), bytes.fromhex(nonce.removeprefix("0x")))
            return bool(fn.call(block_identifier=block if block is not None else "latest"))
        return self._call(network, "authorizationState read", read)

    def authorization_events(self, network: str, assets: Iterable[str], from_block: int, to_block: int,
                             authorizer: str | None = None, nonce: str | None = None) -> list[AuthorizationEvent]:
        """``AuthorizationUsed`` and ``AuthorizationCanceled`` logs of the given tokens."""
        addresses = sorted({Web3.to_checksum_address(a) for a in assets})
        if not addresses or from_block > to_block:
            return []
        topics: list[Any] = [[USED_TOPIC, CANCELED_TOPIC]]
        if authorizer is not None:
            topics.append("0x" + "0" * 24 + authorizer.lower().removeprefix("0x"))
            if nonce is not None:
                topics.append(nonce.lower())

        def read() -> list[AuthorizationEvent]:
            logs = self._w3(network).eth.get_logs({"address": addresses, "fromBlock": from_block,
                                                   "toBlock": to_block, "topics": topics})
            return [e for e in map(_event, logs) if e is not None]
        return self._call(network, "event read", read)

    def channel_events(self, network: str, escrows: Iterable[str], channel_ids: Iterable[str], from_block: int,
                       to_block: int) -> list[ChannelEvent]:
        """The escrows' ``Settled``, ``CloseRequested``, ``CloseRequestCancelled``
        and ``ChannelClosed`` logs of the given channels (0x-hex ids), in chain
        order. The channel ids go in the filter (``topics[1]``, indexed), a few
        hundred per ``eth_getLogs``: an escrow is shared by every payer on the
        chain, and only these channels are Teller's. A log that does not fit its
        event's ABI is skipped with a warning."""
        addresses = sorted({Web3.to_checksum_address(a) for a in escrows})
        ids = sorted({i.lower() for i in channel_ids})
        if not addresses or not ids or from_block > to_block:
            return []
        kinds = ["0x" + t.hex() for t in channel_events.TOPICS]

        def read() -> list[ChannelEvent]:
            found: list[ChannelEvent] = []
            for start in range(0, len(ids), CHANNEL_IDS_PER_QUERY):
                logs = self._w3(network).eth.get_logs({
                    "address": addresses, "fromBlock": from_block, "toBlock": to_block,
                    "topics": [kinds, ids[start:start + CHANNEL_IDS_PER_QUERY]]})  # type: ignore[typeddict-item]
                found.extend(e for e in map(_channel_event, logs) if e is not None)
            # Only the asked-for channels and escrows, whatever the node sent back.
            id_set, address_set = set(ids), set(addresses)
            wanted = [e for e in found if e.log.channel_id in id_set and e.log.escrow in address_set]
            return sorted(wanted, key=lambda e: e.log.position)
        return self._call(network, "channel event read", read)

    def events_in_transaction(self, network: str, tx_hash: str) -> list[AuthorizationEvent]:
        """The authorization events a mined transaction emitted ([] if not mined or reverted)."""
        receipt = self._receipt(network, tx_hash)
        if receipt is None or int(receipt["status"]) != 1:
            return []
        return [e for e in map(_event, receipt["logs"]) if e is not None]

    def send_cancel_authorization(self, network: str, asset: str, nonce: str, signature: bytes,
                                  sign_transaction: Callable[[dict[str, Any]], bytes], sender: str,
                                  wait_s: float = 60.0, max_fee_wei: int | None = None) -> Sent:
        """Broadcast ``cancelAuthorization`` from ``sender`` (the authorizer, who pays
        the gas), refused when it could cost more than ``max_fee_wei``."""
        def send() -> Sent:
            w3 = self._w3(network)
            sender_cs = Web3.to_checksum_address(sender)
            fn = self._token(network, asset).functions.cancelAuthorization(
                Web3.to_checksum_address(sender), bytes.fromhex(nonce.removeprefix("0x")),
                signature[64], signature[:32], signature[32:64])
            try:
                tx = fn.build_transaction({"from": sender_cs,
                                           "nonce": w3.eth.get_transaction_count(sender_cs, "pending"),
                                           "chainId": w3.eth.chain_id})
            except ContractLogicError as exc:
                raise FailedPrecondition(f"cancelAuthorization would revert: {exc}") from None
            most = int(tx["gas"]) * int(tx.get("maxFeePerGas", tx.get("gasPrice", 0)))
            if max_fee_wei is not None and most > max_fee_wei:
                raise FailedPrecondition(
                    f"cancelAuthorization could cost {most} wei of gas on {network}, above max_void_fee_wei "
                    f"{max_fee_wei}", reason="max_void_fee")
            try:
                tx_hash = w3.eth.send_raw_transaction(sign_transaction(dict(tx)))
            except Web3Exception as exc:
                if "insufficient funds" in str(exc).lower():
                    raise FailedPrecondition(f"wallet {sender_cs} cannot pay the gas for cancelAuthorization on "
                                             f"{network}: fund it with the native token") from None
                raise
            try:
                receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=wait_s)
            except TimeExhausted as exc:
                raise Unavailable(f"cancelAuthorization {_hex(tx_hash)} not mined within {wait_s:.0f}s") from exc
            fee = int(receipt["gasUsed"]) * int(receipt.get("effectiveGasPrice", 0))
            return Sent(_hex(tx_hash), int(receipt["status"]) == 1, fee)
        return self._call(network, "cancelAuthorization", send)
