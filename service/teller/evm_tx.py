"""EIP-1559 transactions from a Teller wallet (the ``cancelAuthorization`` a void
sends), signed through the vault's narrow signer: the transaction's signing hash
is computed here, the signer signs only that hash."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from eth_account.typed_transactions import TypedTransaction
from eth_utils import to_checksum_address


def signed(tx: dict[str, Any], sender: str, sign_hash: Callable[[bytes], bytes]) -> bytes:
    """``tx`` (web3's ``build_transaction`` dict) signed by ``sender`` and encoded for
    ``eth_sendRawTransaction``. Refuses a transaction from another address."""
    if to_checksum_address(tx.get("from", sender)) != sender:
        raise ValueError("transaction is not from this wallet")
    fields = {k: v for k, v in tx.items() if k != "from"}
    fields["type"] = 2
    sig = sign_hash(TypedTransaction.from_dict(fields).hash())
    # The signer's v is 27 + yParity; a typed transaction carries yParity itself.
    return TypedTransaction.from_dict({**fields, "v": sig[64] - 27, "r": int.from_bytes(sig[:32], "big"),
                                       "s": int.from_bytes(sig[32:64], "big")}).encode()


__all__ = ["signed"]
