"""No private key in clear in any log line, RPC answer, error or database column."""

from __future__ import annotations

import logging

import pytest
from eth_account import Account
from sqlalchemy import create_engine, inspect, text

from teller_client import InvalidArgument, LimitExceeded, NotFound, Policy
from testbed.x402_server import sdk_v1_challenge, sdk_v2_challenge


def _needles(key: bytes) -> list[bytes]:
    h = key.hex()
    return [key, h.encode(), h.upper().encode(), ("0x" + h).encode()]


def test_keys_never_leave_the_vault_in_clear(teller, db_url, caplog):
    caplog.set_level(logging.DEBUG)
    logging.getLogger("sqlalchemy.engine").setLevel(logging.INFO)  # log every SQL statement and its parameters
    try:
        imported = Account.create()
        t = teller.setup_tenant(private_key=imported.key.hex(), policy=Policy(per_payment_max=5000, daily_budget=6000))
        admin = teller.admin()
        generated = admin.create_wallet(t.tenant_id, "second")
        client = teller.client(t.token)
        for chall in (sdk_v2_challenge(amount="5000"), sdk_v1_challenge(amount="1000")):
            client.sign(status=402, headers=chall.headers, body=chall.body, url=chall.url, wallet_id=t.wallet_id)
        chall = sdk_v2_challenge(amount="1000")
        with pytest.raises(LimitExceeded):
            client.sign(status=402, headers=chall.headers, body=chall.body, url=chall.url, wallet_id=generated.id)
        with pytest.raises(NotFound):
            client.sign(status=402, headers=chall.headers, body=chall.body, url=chall.url, wallet_id="nope")
        with pytest.raises(InvalidArgument) as bad_import:
            admin.import_wallet(t.tenant_id, imported.key.hex()[:-2] + "zz")
        rpc_text = repr(admin.list_wallets(t.tenant_id)) + repr(client.list_wallets()) + bad_import.value.message
        rpc_text += repr(admin.audit_events(tenant_id=t.tenant_id, page_size=1000))
    finally:
        logging.getLogger("sqlalchemy.engine").setLevel(logging.WARNING)

    # Recover the generated wallet's key through the vault itself, to search for it too.
    from teller.vault import SealedKey

    with teller.app.db.engine.connect() as conn:
        row = conn.execute(text("SELECT kek_version, wrapped_data_key, key_ciphertext FROM wallets WHERE id = :i"),
                           {"i": generated.id}).one()
    from teller.vault.envelope import associated_data, open_sealed

    generated_key = open_sealed(SealedKey(row[0], bytes(row[1]), bytes(row[2])),
                                associated_data(t.tenant_id, generated.id, generated.address), teller.app.vault.kek)
    keys = [bytes(imported.key), generated_key]

    logs = "\n".join(r.getMessage() + repr(r.args) for r in caplog.records).encode()
    assert b"INSERT INTO wallets" in logs  # the SQL log really was captured
    db_dump = _dump_database(db_url)
    for key in keys:
        for needle in _needles(key):
            assert needle not in logs
            assert needle not in rpc_text.encode()
            assert needle not in db_dump


def _dump_database(url: str) -> bytes:
    engine = create_engine(url)
    out = []
    with engine.connect() as conn:
        for table in inspect(conn).get_table_names():
            for row in conn.execute(text(f'SELECT * FROM "{table}"')):
                for value in row:
                    out.append(bytes(value) if isinstance(value, (bytes, memoryview)) else str(value).encode())
    engine.dispose()
    assert out
    return b"\x00".join(out)
