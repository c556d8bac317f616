"""Envelope encryption: keys sealed per wallet, bound to wallet and tenant, KEK versioned."""

from __future__ import annotations

import base64
import os
import pickle

import pytest
from eth_account import Account

from teller.eip712 import TypedData
from teller.errors import ConfigError, InvalidArgument
from teller.vault import KeyUnwrapError, LocalKekProvider, SealedKey, Vault
from teller.vault.envelope import associated_data, open_sealed


def kek(version: str = "v1") -> tuple[str, bytes]:
    return version, os.urandom(32)


def test_generated_key_round_trips_and_signs():
    vault = Vault(LocalKekProvider([kek()]), key_cache_seconds=0)
    new = vault.generate("t1", "w1")
    signer = vault.signer("t1", "w1", new.address, new.sealed)
    typed = TypedData({"name": "T", "version": "1", "chainId": 1}, {"M": [{"name": "x", "type": "uint256"}]}, "M", {"x": 5})
    sig = signer.sign_typed_data(typed)
    from eth_account.messages import encode_typed_data

    msg = encode_typed_data(full_message={
        "types": {"EIP712Domain": [{"name": "name", "type": "string"}, {"name": "version", "type": "string"},
                                   {"name": "chainId", "type": "uint256"}], "M": [{"name": "x", "type": "uint256"}]},
        "primaryType": "M", "domain": typed.domain, "message": {"x": 5}})
    assert Account.recover_message(msg, signature=sig) == new.address


def test_signature_matches_eth_account_exactly():
    acct = Account.create()
    vault = Vault(LocalKekProvider([kek()]))
    new = vault.import_key("t", "w", acct.key.hex())
    assert new.address == acct.address
    typed = TypedData({"name": "T", "version": "1", "chainId": 8453}, {"M": [{"name": "x", "type": "uint256"}]}, "M", {"x": 7})
    ours = vault.signer("t", "w", new.address, new.sealed).sign_typed_data(typed)
    theirs = acct.sign_typed_data(typed.domain, typed.types, typed.message).signature
    assert ours == bytes(theirs)


def test_sealed_row_copied_to_another_wallet_does_not_decrypt():
    provider = LocalKekProvider([kek()])
    vault = Vault(provider, key_cache_seconds=0)
    new = vault.generate("tenant-a", "wallet-a")
    with pytest.raises(KeyUnwrapError):
        vault.signer("tenant-a", "wallet-b", new.address, new.sealed)
    with pytest.raises(KeyUnwrapError):
        vault.signer("tenant-b", "wallet-a", new.address, new.sealed)


def test_tampered_ciphertext_fails_authentication():
    provider = LocalKekProvider([kek()])
    new = Vault(provider).generate("t", "w")
    flipped = bytearray(new.sealed.ciphertext)
    flipped[-1] ^= 1
    bad = SealedKey(new.sealed.kek_version, new.sealed.wrapped_data_key, bytes(flipped))
    with pytest.raises(KeyUnwrapError):
        open_sealed(bad, associated_data("t", "w", new.address), provider)


def test_wrong_or_missing_kek_version():
    new = Vault(LocalKekProvider([kek("v1")])).generate("t", "w")
    with pytest.raises(KeyUnwrapError, match="failed authentication"):
        Vault(LocalKekProvider([kek("v1")])).signer("t", "w", new.address, new.sealed)
    with pytest.raises(KeyUnwrapError, match="'v1' is not configured"):
        Vault(LocalKekProvider([kek("v2")])).signer("t", "w", new.address, new.sealed)


def test_old_kek_version_still_unwraps_after_a_new_one_is_added():
    v1 = kek("v1")
    new = Vault(LocalKekProvider([v1])).generate("t", "w")
    rotated = LocalKekProvider([kek("v2"), v1])
    assert rotated.current_version == "v2"
    assert Vault(rotated).signer("t", "w", new.address, new.sealed).address == new.address
    assert Vault(rotated).generate("t", "w2").sealed.kek_version == "v2"


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("nocolon", "must look like 'version:base64key'"),
        ("v1:!!!", "not valid base64"),
        (f"v1:{base64.b64encode(b'short').decode()}", "must be 32 bytes"),
        (f"v1:{base64.b64encode(bytes(32)).decode()},v1:{base64.b64encode(bytes(32)).decode()}", "given twice"),
    ],
)
def test_kek_config_errors(spec, needle):
    with pytest.raises(ConfigError, match=needle):
        LocalKekProvider.parse(spec)


@pytest.mark.parametrize("bad", ["0x1234", "zz" * 32, "00" * 32, "ff" * 32])
def test_import_rejects_bad_keys_without_echoing_them(bad):
    with pytest.raises(InvalidArgument) as info:
        Vault(LocalKekProvider([kek()])).import_key("t", "w", bad)
    assert bad not in info.value.message


def test_signer_never_exposes_its_key():
    acct = Account.create()
    vault = Vault(LocalKekProvider([kek()]))
    new = vault.import_key("t", "w", acct.key.hex())
    signer = vault.signer("t", "w", new.address, new.sealed)
    assert acct.key.hex().removeprefix("0x") not in repr(signer)
    assert not any(n for n in dir(signer) if "key" in n.lower() and not n.startswith("_"))
    with pytest.raises(TypeError):
        pickle.dumps(signer)
    assert "ciphertext" not in repr(new.sealed)


def test_decrypted_keys_are_cached_only_as_configured():
    provider = LocalKekProvider([kek()])
    new = Vault(provider).generate("t", "w")
    cached = Vault(provider, key_cache_seconds=60)
    assert cached.signer("t", "w", new.address, new.sealed) is cached.signer("t", "w", new.address, new.sealed)
    uncached = Vault(provider, key_cache_seconds=0)
    assert uncached.signer("t", "w", new.address, new.sealed) is not uncached.signer("t", "w", new.address, new.sealed)
