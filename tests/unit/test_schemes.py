"""The scheme table and the narrow signer's boundary. Scheme ids are the strings
stored in payments and audit rows; the table says how each is followed on chain
and read from a receipt; the vault signs only hashes and typed data, and what a
scheme assembles around such a signature is the bytes a reference makes."""

from __future__ import annotations

import os

import pytest
from eth_account import Account

from teller import evm_tx
from teller.mpp import receipt as mpp_receipt
from teller.mpp.tempo_tx import TempoCall, TempoTransaction
from teller.schemes import REGISTRY, Follow, SchemeId, mpp_tempo
from teller.vault import LocalKekProvider, Vault
from teller.x402 import receipt as x402_receipt


def _signer(acct):
    vault = Vault(LocalKekProvider([("v1", os.urandom(32))]), key_cache_seconds=0)
    new = vault.import_key("t", "w", acct.key.hex())
    return vault.signer("t", "w", new.address, new.sealed)


def test_scheme_ids_are_the_stored_strings_and_the_table_follows_each_its_way():
    assert [s.value for s in SchemeId] == ["exact", "tempo/charge", "evm/charge", "tempo/session"]
    assert list(REGISTRY.x402) == ["exact"]
    assert list(REGISTRY.mpp) == [("tempo", "charge"), ("evm", "charge"), ("tempo", "session")]
    for sid in SchemeId:
        # A stored payment's plain string finds its scheme.
        assert REGISTRY[sid.value].id == sid
    assert REGISTRY.following(Follow.AUTHORIZATION) == ("exact", "evm/charge")
    assert REGISTRY.following(Follow.TRANSACTION) == ("tempo/charge", "tempo/session")
    assert REGISTRY.moving_amount() == {"exact", "tempo/charge", "evm/charge", "tempo/session"}
    assert REGISTRY.receipt_decoders() == (x402_receipt.decode, mpp_receipt.decode)


def test_a_void_transaction_is_the_bytes_eth_account_signs():
    acct = Account.create()
    signer = _signer(acct)
    tx = {"from": acct.address, "to": "0x036CbD53842c5426634e7929541eC2318f3dCF7e", "value": 0,
          "data": "0x5a049a70" + "00" * 160, "gas": 61_234, "maxFeePerGas": 3_000_000_000,
          "maxPriorityFeePerGas": 1_000_000, "nonce": 7, "chainId": 84532}
    ours = evm_tx.signed(tx, signer.address, signer.unsafe_sign_hash)
    signed = acct.sign_transaction({**{k: v for k, v in tx.items() if k != "from"}, "type": 2})
    assert ours == bytes(getattr(signed, "raw_transaction", None) or signed.rawTransaction)
    with pytest.raises(ValueError, match="not from this wallet"):
        evm_tx.signed({**tx, "from": Account.create().address}, signer.address, signer.unsafe_sign_hash)


def test_a_tempo_transaction_is_signed_by_its_wallet_over_its_signing_hash():
    acct = Account.create()
    tx = TempoTransaction(chain_id=42431, gas_limit=800_000, gas_price=20_000_000_000, valid_before=1_900_000_000,
                          fee_token=bytes.fromhex("20c0" + "00" * 18),
                          calls=(TempoCall(bytes.fromhex("20c0" + "00" * 18), b"\xa9\x05\x9c\xbb" + bytes(64)),))
    raw = mpp_tempo.signed_transaction(tx, _signer(acct))
    signature = raw[-65:]
    assert raw == tx.signed(signature) and signature[64] in (27, 28)
    assert Account._recover_hash(tx.signing_hash(), signature=signature) == acct.address


def test_an_unknown_x402_scheme_is_refused_naming_the_paid_ones_as_text():
    # The message a caller reads is the one before the schemes moved behind the
    # registry: the paid scheme ids as quoted strings, not enum reprs.
    import json
    from datetime import UTC, datetime

    from teller import offers
    from teller.errors import FailedPrecondition

    req = {"scheme": "upto", "network": "base-sepolia", "maxAmountRequired": "100", "resource": "http://x/y",
           "payTo": "0x" + "11" * 20, "maxTimeoutSeconds": 60,
           "asset": "0x036CbD53842c5426634e7929541eC2318f3dCF7e", "extra": {"name": "USDC", "version": "2"}}
    body = json.dumps({"x402Version": 1, "error": "pay", "accepts": [req]}).encode()
    with pytest.raises(FailedPrecondition) as info:
        offers.collect([], body, networks={}, max_bytes=1 << 20, now=datetime.now(UTC))
    assert info.value.message.endswith("accepts[0]: unknown scheme 'upto' (Teller pays 'exact')")
