"""Payment schemes: one module per way of paying a 402, behind one interface
(``teller.schemes.base.Scheme``), and the table that finds them.

An x402 requirement names its scheme (``exact``); an MPP challenge names its
method and intent (``tempo``/``charge``). A stored payment names its scheme id.
The table is built once, here; adding a scheme adds its module and a line below.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from teller.outcome import Outcome
from teller.schemes.base import Follow, MppScheme, Offer, Scheme, SchemeId, X402Scheme
from teller.schemes.mpp_evm import EVM_CHARGE
from teller.schemes.mpp_session import TEMPO_SESSION
from teller.schemes.mpp_tempo import TEMPO_CHARGE
from teller.schemes.x402_exact import EXACT

ReceiptDecoder = Callable[[int, Sequence[tuple[str, str]], bytes, int], Outcome]


class Registry:
    """The schemes Teller pays, in order of the protocols' own reading order."""

    def __init__(self, x402: Sequence[X402Scheme[Any]], mpp: Sequence[MppScheme[Any]]) -> None:
        #: By the ``scheme`` an x402 requirement names.
        self.x402: dict[str, X402Scheme[Any]] = {s.id: s for s in x402}
        #: By an MPP challenge's (method, intent).
        self.mpp: dict[tuple[str, str], MppScheme[Any]] = {(s.method, s.intent): s for s in mpp}
        self._by_id: dict[str, Scheme[Any]] = {s.id: s for s in (*x402, *mpp)}

    def __getitem__(self, scheme_id: str) -> Scheme[Any]:
        """The scheme of a stored payment (``payments.scheme``)."""
        return self._by_id[scheme_id]

    def following(self, follow: Follow) -> tuple[str, ...]:
        """The ids of the schemes whose payments the reconciler follows this way."""
        return tuple(s.id for s in self._by_id.values() if s.follow is follow)

    def moving_amount(self) -> frozenset[str]:
        """The ids of the schemes whose payments move their amount out of the wallet."""
        return frozenset(s.id for s in self._by_id.values() if s.moves_amount)

    def receipt_decoders(self) -> tuple[ReceiptDecoder, ...]:
        """Each protocol's receipt decoder once, x402 first."""
        return tuple(dict.fromkeys(s.decode_receipt for s in self._by_id.values()))


REGISTRY = Registry(x402=(EXACT,), mpp=(TEMPO_CHARGE, EVM_CHARGE, TEMPO_SESSION))

__all__ = ["REGISTRY", "Follow", "MppScheme", "Offer", "Registry", "Scheme", "SchemeId", "X402Scheme"]
