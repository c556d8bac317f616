"""Dry-run a spend policy against a saved 402 response: which offer Teller
would pay and why, or the reason it would refuse. Pure: the same offer parsing
and policy engine as Sign, with no database, no key and no signature.

A saved 402 is either the raw HTTP response (``HTTP/1.1 402 ...``, headers, a
blank line, the body), as ``curl -i`` prints it, or a JSON document
``{"status": 402, "headers": {...} | [[name, value], ...], "body": "...", "url": "..."}``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from teller import offers as offers_mod
from teller.errors import InvalidArgument
from teller.schemes import Offer
from teller.spend.decision import Decision
from teller.spend.evaluate import evaluate
from teller.spend.parse import parse
from teller.spend.rules import DEFAULT, Charge, Scope, inherit


@dataclass(frozen=True, slots=True)
class SavedChallenge:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    url: str = ""


def _raw_http(text: str) -> SavedChallenge:
    head, _, body = text.replace("\r\n", "\n").partition("\n\n")
    lines = head.split("\n")
    parts = lines[0].split()
    if len(parts) < 2 or not parts[1].isdigit():
        raise InvalidArgument(f"challenge: status line {lines[0][:80]!r} is not 'HTTP/<version> <status> ...'")
    headers = []
    for number, line in enumerate(lines[1:], 2):
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise InvalidArgument(f"challenge: line {number} {line[:80]!r} is not a 'Name: value' header")
        headers.append((name.strip(), value.strip()))
    return SavedChallenge(int(parts[1]), tuple(headers), body.encode())


def _json_doc(text: str) -> SavedChallenge:
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise InvalidArgument(f"challenge: neither a raw HTTP response nor JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument("challenge: the JSON document must be an object with status, headers, body")
    raw_headers = doc.get("headers", {})
    if isinstance(raw_headers, Mapping):
        items = list(raw_headers.items())
    elif isinstance(raw_headers, list) and all(isinstance(h, list) and len(h) == 2 for h in raw_headers):
        items = [(h[0], h[1]) for h in raw_headers]
    else:
        raise InvalidArgument("challenge.headers must be an object or a list of [name, value] pairs")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in items):
        raise InvalidArgument("challenge.headers: names and values must be strings")
    body = doc.get("body", "")
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
    if not isinstance(body, str):
        raise InvalidArgument("challenge.body must be a string or a JSON value")
    status = doc.get("status", 402)
    if not isinstance(status, int) or isinstance(status, bool):
        raise InvalidArgument("challenge.status must be an integer")
    url = doc.get("url", "")
    if not isinstance(url, str):
        raise InvalidArgument("challenge.url must be a string")
    return SavedChallenge(status, tuple(items), body.encode(), url)


def load_challenge(text: str, url: str = "") -> SavedChallenge:
    """Parse a saved 402 (raw HTTP or JSON); ``url`` overrides the saved one."""
    saved = _raw_http(text) if text.lstrip().startswith("HTTP/") else _json_doc(text)
    if saved.status != 402:
        raise InvalidArgument(f"challenge.status must be 402, got {saved.status}")
    return SavedChallenge(saved.status, saved.headers, saved.body, url or saved.url)


@dataclass(frozen=True, slots=True)
class Considered:
    offer: Offer[Any]
    decision: Decision


@dataclass(frozen=True, slots=True)
class DryRun:
    """What Sign would do: pay ``chosen`` (the first allowed offer in the tenant's
    protocol order), or refuse with the first offer's decision."""

    considered: tuple[Considered, ...]
    chosen: Considered | None
    reason: str  # "ok" or the stable reason code Sign would record
    message: str = ""
    skipped_protocols: tuple[str, ...] = field(default=())

    @property
    def allowed(self) -> bool:
        return self.chosen is not None

    def to_json(self) -> dict[str, Any]:
        def one(c: Considered) -> dict[str, Any]:
            d = c.decision
            return {"protocol": c.offer.scheme.protocol, "scheme": c.offer.scheme.id, "network": c.offer.network,
                    "asset": c.offer.asset, "amount": str(c.offer.amount), "pay_to": c.offer.pay_to,
                    "allowed": d.allowed, "reason": d.reason, "scope": d.scope,
                    "limit": None if d.limit is None else str(d.limit),
                    "remaining": None if d.remaining is None else str(d.remaining), "window": d.window}
        return {"allowed": self.allowed, "reason": self.reason, "message": self.message,
                "chosen": one(self.chosen) if self.chosen else None,
                "offers": [one(c) for c in self.considered],
                "skipped_protocols": list(self.skipped_protocols)}


def dry_run(
    saved: SavedChallenge,
    tenant_doc: Any,
    wallet_doc: Any = None,
    *,
    used: Mapping[str, Mapping[str, int]] | None = None,
    frozen: Mapping[str, bool] | None = None,
    max_amount: int | None = None,
    networks: Mapping[str, int] | None = None,
    max_bytes: int = 256 * 1024,
    now: datetime,
    open_channels: int | None = None,
) -> DryRun:
    """Evaluate ``saved`` as Sign would. ``used`` is what each scope's budgets
    already hold (``{"tenant": {"day": 1000}, "wallet": {...}}``, common units);
    ``frozen`` says which scopes are frozen; ``open_channels`` how many MPP
    session channels the tenant holds that are not closed (for a session's open:
    ``max_open_channels``; None: not judged)."""
    used = used or {}
    frozen = frozen or {}
    tenant = parse(tenant_doc) if tenant_doc is not None else DEFAULT
    scopes = [Scope("tenant", tenant, frozen.get("tenant", False), used.get("tenant", {}))]
    if wallet_doc is not None or frozen.get("wallet", False):
        wallet = inherit(parse(wallet_doc, wallet=True), tenant) if wallet_doc is not None else tenant
        scopes.append(Scope("wallet", wallet, frozen.get("wallet", False), used.get("wallet", {})))
    collected = offers_mod.collect(saved.headers, saved.body, networks=networks or {}, max_bytes=max_bytes, now=now)
    ordered = offers_mod.by_preference(collected.offers, tenant.protocols)
    skipped = tuple(sorted({o.scheme.protocol for o in collected.offers} - set(tenant.protocols)))
    considered = []
    for offer in ordered:
        decision = _evaluate(scopes, offer, saved.url, max_amount, open_channels)
        considered.append(Considered(offer, decision))
        if decision.allowed:
            return DryRun(tuple(considered), considered[-1], "ok", "", skipped)
    if not considered:
        return DryRun((), None, "protocol_not_allowed",
                      f"the server offers {', '.join(skipped)}; the policy pays only {', '.join(tenant.protocols)}",
                      skipped)
    first = considered[0]
    message = first.decision.error(_facts(first.offer, saved.url, open_channels=open_channels)).message
    return DryRun(tuple(considered), None, first.decision.reason, message, skipped)


def _facts(offer: Offer[Any], url: str, payee: str | None = None, open_channels: int | None = None) -> Charge:
    # A session's open carries its deposit (max_channel_deposit) and the channel count, as in Sign.
    return Charge(offer.network, offer.asset, offer.amount, payee or offer.pay_to, url, deposit=offer.deposit,
                  open_channels=open_channels if offer.deposit is not None else None)


def _evaluate(scopes: Sequence[Scope], offer: Offer[Any], url: str,
              max_amount: int | None, open_channels: int | None = None) -> Decision:
    # As Sign does: split recipients must pass the payee lists too.
    decision = evaluate(scopes, _facts(offer, url, open_channels=open_channels), max_amount)
    for payee in offer.other_payees if decision.allowed else ():
        split = evaluate(scopes, _facts(offer, url, payee, open_channels), max_amount)
        if not split.allowed:
            return split
    return decision


__all__ = ["DryRun", "SavedChallenge", "dry_run", "load_challenge"]
