"""Teller's own TIP-20 call and Tempo transaction encoders (pure): pytempo's
bytes for any fields (the payments on a Tempo chain: tests/e2e/test_mpp_tempo.py)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.mpp_live import PATH_USD


@settings(max_examples=300, deadline=None)
@given(to=st.binary(min_size=20, max_size=20), amount=st.integers(min_value=0, max_value=2**256 - 1),
       memo=st.none() | st.binary(min_size=0, max_size=32), checksummed=st.booleans())
def test_tip20_calls_are_the_bytes_pytempos_encoder_makes(to, amount, memo, checksummed):
    """Teller encodes TIP-20 transfer calls itself (web3's encoder was a third of
    an MPP Sign's CPU): the same bytes as pytempo's TIP20 helper, for any
    recipient, amount and memo."""
    from eth_utils import to_checksum_address
    from pytempo.contracts import TIP20

    from teller.mpp.charge import Transfer, tip20_transfer

    recipient = to_checksum_address(to) if checksummed else "0x" + to.hex()
    ours = tip20_transfer(PATH_USD, Transfer(recipient, amount, memo))
    theirs = (TIP20(PATH_USD).transfer_with_memo(to=recipient, amount=amount, memo=memo) if memo is not None
              else TIP20(PATH_USD).transfer(to=recipient, amount=amount))
    assert ours.data == bytes(theirs.data) and ours.to == bytes(theirs.to)


_SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141  # low-s signatures only
_calls = st.lists(st.tuples(st.binary(min_size=20, max_size=20), st.binary(max_size=120)), min_size=1, max_size=11)


@settings(max_examples=300, deadline=None)
@given(chain_id=st.integers(1, 2**64), gas_limit=st.integers(1, 2**64), gas_price=st.integers(0, 2**128),
       valid_before=st.integers(1, 2**64), fee_token=st.binary(min_size=20, max_size=20), calls=_calls,
       r=st.integers(1, _SECP256K1_N - 1), s=st.integers(1, _SECP256K1_N // 2), v=st.sampled_from([27, 28]))
def test_tempo_transactions_are_the_bytes_pytempo_makes(chain_id, gas_limit, gas_price, valid_before, fee_token,
                                                        calls, r, s, v):
    """Teller encodes its Tempo transactions itself (pytempo's general model and
    pyrlp's type inference were a tenth of an MPP Sign): the signing hash and
    the signed transaction are pytempo's bytes, for any fields and calls in
    the shape Teller signs (expiring nonce, fees in a token, no fee payer)."""
    import attrs
    from pytempo import Call, Signature
    from pytempo import TempoTransaction as Theirs

    from teller.mpp.tempo_tx import EXPIRING_NONCE_KEY, TempoCall, TempoTransaction

    ours = TempoTransaction(chain_id=chain_id, gas_limit=gas_limit, gas_price=gas_price, valid_before=valid_before,
                            fee_token=fee_token, calls=tuple(TempoCall(to, data) for to, data in calls))
    theirs = Theirs.create(chain_id=chain_id, gas_limit=gas_limit, max_fee_per_gas=gas_price,
                           max_priority_fee_per_gas=gas_price, nonce_key=EXPIRING_NONCE_KEY, nonce=0,
                           valid_before=valid_before, fee_token=fee_token,
                           calls=tuple(Call.create(to=to, data=data) for to, data in calls))
    assert ours.signing_hash() == theirs.get_signing_hash()
    signature = Signature(r=r, s=s, v=v)
    assert ours.signed(signature.to_bytes()) == attrs.evolve(theirs, sender_signature=signature).encode()


def test_tempo_transactions_refuse_what_does_not_fit():
    from teller.mpp.tempo_tx import TempoCall, TempoTransaction, rlp

    call = TempoCall(b"\x11" * 20, b"")
    ok = {"chain_id": 1, "gas_limit": 1, "gas_price": 0, "valid_before": 1, "fee_token": b"\x22" * 20,
          "calls": (call,)}
    TempoTransaction(**ok)
    for change, needle in (({"calls": ()}, "at least one call"), ({"fee_token": b"\x22" * 19}, "20 bytes"),
                           ({"calls": (TempoCall(b"\x11" * 21, b""),)}, "20 bytes"),
                           ({"chain_id": 0}, "must be positive"), ({"gas_price": -1}, "not negative")):
        with pytest.raises(ValueError, match=needle):
            TempoTransaction(**{**ok, **change})
    with pytest.raises(ValueError, match="65 bytes"):
        TempoTransaction(**ok).signed(b"\x01" * 64)
    with pytest.raises(ValueError, match="negative"):
        rlp(-1)


def test_tip20_calls_refuse_what_does_not_fit():
    from teller.mpp.charge import Transfer, tip20_transfer

    ok = "0x" + "11" * 20
    with pytest.raises(ValueError, match="20 bytes"):
        tip20_transfer(PATH_USD, Transfer("0x" + "11" * 19, 1, None))
    with pytest.raises(ValueError, match="uint256"):
        tip20_transfer(PATH_USD, Transfer(ok, 2**256, None))
    with pytest.raises(ValueError, match="32 bytes"):
        tip20_transfer(PATH_USD, Transfer(ok, 1, b"\x01" * 33))
