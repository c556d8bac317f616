"""The escrow proxy's reading of a signed 0x76 transaction (testbed/escrow_proxy.py),
checked against pytempo, an independent Tempo encoder: the expiring-nonce hash it primes
must be ``keccak256(encodeForSigning(tx) ++ sender)`` exactly as the payer computed it,
or mppx's server refuses the channel. Keys are anvil's public development keys."""

from __future__ import annotations

import pytest
from eth_abi import encode
from eth_account import Account
from eth_utils import keccak
from pytempo import TempoTransaction
from pytempo.contracts import PATH_USD
from pytempo.models import Call

from testbed.escrow_proxy import (
    OPEN_SELECTOR,
    TOPUP_SELECTOR,
    EscrowCall,
    decode_tempo_tx,
    escrow_call,
)

PAYER_KEY = "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6"
SPONSOR_KEY = "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a"
ESCROW = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
PAYEE = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"


def _open_data(deposit: int) -> bytes:
    return OPEN_SELECTOR + encode(["address", "address", "address", "uint96", "bytes32", "address"],
                                  [PAYEE, "0x" + "00" * 20, PATH_USD, deposit, b"\x07" * 32, PAYEE])


def _tx(**kw: object) -> TempoTransaction:
    return TempoTransaction.create(chain_id=31337, gas_limit=900_000, max_fee_per_gas=20, max_priority_fee_per_gas=1,
                                   nonce_key=2**256 - 1, nonce=0, valid_before=1_900_000_000, valid_after=123,
                                   calls=(Call.create(to=ESCROW, data=_open_data(30_000)),), **kw)  # type: ignore[arg-type]


def test_expiring_nonce_hash_and_sender_match_pytempo() -> None:
    tx = _tx(fee_token=PATH_USD)
    sender = Account.from_key(PAYER_KEY).address
    decoded = decode_tempo_tx(tx.sign(PAYER_KEY).encode())
    assert decoded.sender == sender
    assert decoded.expiring_nonce_hash == keccak(tx.encode_for_signing() + bytes.fromhex(sender[2:]))
    assert escrow_call(decoded.calls[-1][0], decoded.calls[-1][1], ESCROW) == EscrowCall("open", PATH_USD, 30_000, b"\x07" * 32)


def test_a_sponsored_open_hashes_what_the_sender_signed_not_the_fee_payer() -> None:
    tx = _tx(fee_token=PATH_USD, awaiting_fee_payer=True)
    sender = Account.from_key(PAYER_KEY).address
    signed = tx.sign(PAYER_KEY)
    sponsored = signed.sign(SPONSOR_KEY, for_fee_payer=True)
    decoded = decode_tempo_tx(sponsored.encode())
    assert decoded.sender == sender
    assert decoded.expiring_nonce_hash == keccak(tx.encode_for_signing() + bytes.fromhex(sender[2:]))


def test_top_up_is_read_and_other_calls_are_not_escrow_calls() -> None:
    descriptor = (PAYEE, PAYEE, "0x" + "00" * 20, PATH_USD, b"\x01" * 32, PAYEE, b"\x02" * 32)
    data = TOPUP_SELECTOR + encode(["(address,address,address,address,bytes32,address,bytes32)", "uint96"],
                                   [descriptor, 5])
    assert escrow_call(ESCROW, data, ESCROW) == EscrowCall("topUp", PATH_USD, 5)
    assert escrow_call(PAYEE, data, ESCROW) is None
    assert escrow_call(ESCROW, b"\xa9\x05\x9c\xbb" + bytes(64), ESCROW) is None


def test_not_a_tempo_transaction() -> None:
    with pytest.raises(ValueError, match="0x76"):
        decode_tempo_tx(b"\x02\xc0")
