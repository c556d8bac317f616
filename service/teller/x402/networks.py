"""Network names to EVM chain ids."""

from __future__ import annotations

from collections.abc import Mapping

from x402.mechanisms.evm.v1.constants import V1_NETWORK_CHAIN_IDS

from teller import values
from teller.errors import FailedPrecondition, InvalidArgument


def caip2(network: str, extra: Mapping[str, int] | None = None, field: str = "network") -> str:
    """The canonical ``eip155:<id>`` for a CAIP-2 network or a known x402 v1
    network name (the operator's ``networks`` first). A non-canonical spelling
    (``eip155:08453``) is refused by name: the policy compares networks as
    strings, so it must see the one spelling the signature's chain id has."""
    names = {**V1_NETWORK_CHAIN_IDS, **(extra or {})}
    if ":" not in network and network not in names:
        raise FailedPrecondition(f"unknown network {network[:80]!r}")
    try:
        canonical = values.network(network, field, names)
    except values.NotCanonical as exc:
        raise InvalidArgument(str(exc)) from None
    if values.eip155_chain(canonical) is None:
        raise FailedPrecondition(f"unsupported network {network[:80]!r}: only eip155 (EVM) networks are supported")
    return canonical


def chain_id(network: str, extra: Mapping[str, int] | None = None, field: str = "network") -> int:
    """Chain id for a CAIP-2 ``eip155:<id>`` network or a known x402 v1 network name."""
    cid = values.eip155_chain(caip2(network, extra, field))
    assert cid is not None
    return cid
