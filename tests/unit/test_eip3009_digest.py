"""The fast TransferWithAuthorization digest equals eth-account's general EIP-712 encoder."""

from __future__ import annotations

from dataclasses import replace

from eth_account.messages import encode_typed_data
from eth_utils import keccak, to_checksum_address
from hypothesis import given, settings
from hypothesis import strategies as st

from teller.x402 import eip3009

addresses = st.binary(min_size=20, max_size=20).map(lambda b: to_checksum_address(b))
uint = st.integers(min_value=0, max_value=2**256 - 1)


@settings(max_examples=300, deadline=None)
@given(name=st.text(max_size=40), version=st.text(max_size=10), chain_id=st.integers(1, 2**64),
       contract=addresses, sender=addresses, to=addresses, value=uint, after=uint, before=uint,
       nonce=st.binary(min_size=32, max_size=32))
def test_fast_digest_matches_eth_account(name, version, chain_id, contract, sender, to, value, after, before, nonce):
    token = eip3009.Token(chain_id, contract, name, version)
    auth = eip3009.Authorization(sender, to, value, after, before, nonce)
    typed = eip3009.typed_data(token, auth)
    signable = encode_typed_data(domain_data=typed.domain, message_types=typed.types, message_data=typed.message)
    reference = keccak(b"\x19" + signable.version + signable.header + signable.body)
    assert typed.digest() == reference
    assert replace(typed, precomputed=None).digest() == reference
