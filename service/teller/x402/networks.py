"""Network names to EVM chain ids."""

from __future__ import annotations

from collections.abc import Mapping

from x402.mechanisms.evm.v1.constants import V1_NETWORK_CHAIN_IDS

from teller.errors import FailedPrecondition


def chain_id(network: str, extra: Mapping[str, int] | None = None) -> int:
    """Chain id for a CAIP-2 ``eip155:<id>`` network or a known x402 v1 network name."""
    if network.startswith("eip155:"):
        ref = network[len("eip155:") :]
        if ref.isdigit() and 0 < int(ref) < 2**64:
            return int(ref)
        raise FailedPrecondition(f"unknown network {network!r}: eip155 reference must be a chain id")
    if extra and network in extra:
        return extra[network]
    if network in V1_NETWORK_CHAIN_IDS:
        return V1_NETWORK_CHAIN_IDS[network]
    if ":" in network:
        raise FailedPrecondition(f"unsupported network {network!r}: only eip155 (EVM) networks are supported")
    raise FailedPrecondition(f"unknown network {network!r}")


def caip2(network: str, extra: Mapping[str, int] | None = None) -> str:
    return network if network.startswith("eip155:") else f"eip155:{chain_id(network, extra)}"
