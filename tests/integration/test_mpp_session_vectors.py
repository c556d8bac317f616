"""Teller's MPP session pieces (``teller.mpp.channel``, ``teller.mpp.session``)
against mppx 0.11 and viem, byte for byte, for random inputs: the channel id,
the voucher's EIP-712 digest and signature, the escrow calldata, the open
transaction's signing payload and expiring nonce hash, the wire request mppx's
server puts in a challenge, and Teller's four credentials read back by mppx's
own parser, payload schema and voucher check (``tests/support/session_vectors.mjs``).
Runs node, hence an integration test; no chain, no database."""

from __future__ import annotations

import base64
import json
import random
import subprocess
from datetime import UTC, datetime

import pytest

from teller.mpp import channel as ch
from teller.mpp import session
from teller.mpp.challenge import MppChallenge
from teller.vault.signer import WalletSigner, address_of
from tests.support.mpp_live import ROOT, node_binary

SCRIPT = ROOT / "tests" / "support" / "session_vectors.mjs"
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def _address(rng: random.Random) -> str:
    return address_of(rng.randbytes(32)) if rng.random() < 0.5 else "0x" + rng.randbytes(20).hex()


def _case(rng: random.Random) -> dict[str, object]:
    key = rng.randrange(1, SECP256K1_N).to_bytes(32, "big")
    payer = address_of(key)
    unit = rng.randrange(1, 10**6)
    return {
        "key": "0x" + key.hex(), "payee": _address(rng),
        "operator": rng.choice([ch.ZERO_ADDRESS, _address(rng)]),
        "token": rng.choice(["0x20c0000000000000000000000000000000000000", _address(rng)]),
        "salt": "0x" + rng.randbytes(32).hex(),
        "authorizedSigner": rng.choice([payer, ch.ZERO_ADDRESS]),
        "escrow": rng.choice([ch.ESCROW_PRECOMPILE, _address(rng)]),
        "chainId": rng.choice([4217, 42431, 31337, rng.randrange(1, 2**32)]),
        "deposit": str(rng.choice([unit, rng.randrange(unit, 2**63), ch.MAX_UINT96 // 2**33])),
        "cumulativeAmount": str(rng.randrange(0, 2**63)),
        "additionalDeposit": str(rng.randrange(1, 2**63)),
        "gas": rng.randrange(21_000, 3_000_000), "gasPrice": rng.randrange(0, 10**12),
        "validBefore": rng.randrange(1_700_000_000, 2_000_000_000),
        "validAfter": rng.randrange(1, 1_700_000_000),
        "unit": unit,
        "receipt": {"challengeId": f"ch-{rng.randrange(10**6)}", "spent": str(rng.randrange(0, 2**63)),
                    "required": str(rng.randrange(0, 2**63)),
                    **({"units": rng.randrange(0, 10**6)} if rng.random() < 0.5 else {}),
                    **({"txHash": "0x" + rng.randbytes(32).hex()} if rng.random() < 0.5 else {})},
    }


def _challenge(req: dict[str, object]) -> MppChallenge:
    b64 = base64.urlsafe_b64encode(json.dumps(req).encode()).decode().rstrip("=")
    return MppChallenge(index=0, id="ch-1", realm="api.test", method="tempo", intent="session", request_b64=b64,
                        request=req, expires="2099-01-01T00:00:00Z",
                        expires_at=datetime(2099, 1, 1, tzinfo=UTC), digest=None, opaque=None, description=None,
                        header="Authorization")


def _teller(c: dict[str, object]) -> dict[str, object]:
    """What Teller computes for case ``c``: the values compared, and its four credentials."""
    key = bytes.fromhex(str(c["key"])[2:])
    signer = WalletSigner(key, address_of(key))
    auth = str(c["authorizedSigner"])
    opened = ch.open_channel(
        payer=signer.address, payee=str(c["payee"]), token=str(c["token"]), deposit=int(str(c["deposit"])),
        salt=bytes.fromhex(str(c["salt"])[2:]), escrow=str(c["escrow"]), chain_id=int(str(c["chainId"])),
        gas_limit=int(str(c["gas"])), gas_price=int(str(c["gasPrice"])), valid_before=int(str(c["validBefore"])),
        operator=str(c["operator"]), authorized_signer=auth)
    escrow, chain_id = str(c["escrow"]), int(str(c["chainId"]))
    cumulative = int(str(c["cumulativeAmount"]))
    typed = ch.voucher_typed_data(opened.channel_id, cumulative, escrow=escrow, chain_id=chain_id)
    signature = signer.sign_typed_data(typed)
    d = opened.descriptor
    top_up_tx = ch.channel_transaction(ch.top_up_call(escrow, d, int(str(c["additionalDeposit"]))),
                                       chain_id=chain_id, fee_token=d.token, gas_limit=int(str(c["gas"])),
                                       gas_price=int(str(c["gasPrice"])), valid_before=int(str(c["validBefore"])),
                                       valid_after=int(str(c["validAfter"])))
    req_doc = {"amount": str(c["unit"]), "currency": d.token, "recipient": d.payee, "unitType": "token",
               "methodDetails": {"escrowContract": escrow, "chainId": chain_id, "sessionProtocol": "v2"}}
    challenge = _challenge(req_doc)
    req = session.parse_request(challenge)
    open_raw = opened.tx.signed(signer.unsafe_sign_hash(opened.tx.signing_hash()))
    top_up_raw = top_up_tx.signed(signer.unsafe_sign_hash(top_up_tx.signing_hash()))
    payloads = [
        session.open_payload(opened, open_raw, cumulative, signature),
        session.voucher_payload(d, opened.channel_id, cumulative, signature),
        session.top_up_payload(d, opened.channel_id, top_up_raw, int(str(c["additionalDeposit"]))),
        session.close_payload(d, opened.channel_id, cumulative, signature),
    ]
    return {
        "opened": opened, "top_up_tx": top_up_tx, "digest": typed.digest(), "signature": signature, "typed": typed,
        "credentials": [session.credential(challenge, req, p, signer.address) for p in payloads],
    }


def _node(cases: list[dict[str, object]]) -> list[dict[str, object]]:
    proc = subprocess.run([node_binary(), str(SCRIPT)], input=json.dumps(cases), capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out: list[dict[str, object]] = json.loads(proc.stdout)
    return out


def _hex(raw: bytes) -> str:
    return "0x" + raw.hex()


@pytest.fixture(scope="module")
def vectors() -> list[tuple[dict[str, object], dict[str, object], dict[str, object]]]:
    rng = random.Random(0x1034)
    cases = [_case(rng) for _ in range(12)]
    ours = [_teller(c) for c in cases]
    for c, t in zip(cases, ours, strict=True):
        c["teller"] = {"voucherSignature": _hex(t["signature"]),  # type: ignore[arg-type]
                       "credentials": t["credentials"]}
        c["request"] = {"amount": _units(int(str(c["unit"]))),
                        "currency": c["token"], "recipient": c["payee"], "unitType": "token",
                        "escrowContract": c["escrow"], "chainId": c["chainId"], "sessionProtocol": "v2",
                        "suggestedDeposit": _units(int(str(c["deposit"]))), "minVoucherDelta": _units(1),
                        "operator": c["operator"] if int(str(c["operator"]), 16) else None}
        if c["request"]["operator"] is None:  # type: ignore[index]
            del c["request"]["operator"]  # type: ignore[attr-defined]
    theirs = _node(cases)
    return list(zip(cases, ours, theirs, strict=True))


def _units(base: int) -> str:
    """``base`` base units as the decimal string mppx's server takes (6 decimals)."""
    whole, frac = divmod(base, 10**6)
    return f"{whole}.{frac:06d}".rstrip("0").rstrip(".")


def test_channel_id_nonce_hash_and_calldata_match_mppx(vectors):
    for c, ours, theirs in vectors:
        opened: ch.OpenedChannel = ours["opened"]
        assert opened.descriptor.payer == theirs["payer"]
        assert _hex(opened.tx.signing_payload()) == theirs["signingPayload"]
        assert _hex(opened.descriptor.expiring_nonce_hash) == theirs["expiringNonceHash"]
        assert _hex(opened.channel_id) == theirs["channelId"]
        assert _hex(opened.tx.calls[0].data) == theirs["openData"]
        d, escrow = opened.descriptor, str(c["escrow"])
        assert _hex(ch.top_up_call(escrow, d, int(str(c["additionalDeposit"]))).data) == theirs["topUpData"]
        assert _hex(ours["top_up_tx"].signing_payload()) == theirs["topUpSigningPayload"]
        assert _hex(ch.request_close_call(escrow, d).data) == theirs["requestCloseData"]
        assert _hex(ch.withdraw_call(escrow, d).data) == theirs["withdrawData"]


def test_voucher_digest_and_signature_match_viem(vectors):
    for _c, ours, theirs in vectors:
        assert _hex(ours["digest"]) == theirs["voucherDigest"]
        # The precomputed digest is the one eth-account's general encoder gives.
        typed = ours["typed"]
        general = type(typed)(typed.domain, typed.types, typed.primary_type, typed.message)
        assert general.digest() == ours["digest"]
        # RFC 6979 on both sides: the same signature, in the canonical form mppx requires.
        assert _hex(ours["signature"]) == theirs["voucherSignature"]
        assert theirs["tellerVoucherVerifies"] is True


def test_mppx_reads_tellers_credentials(vectors):
    for c, ours, theirs in vectors:
        opened: ch.OpenedChannel = ours["opened"]
        creds = theirs["credentials"]
        assert [x.get("action") for x in creds] == ["open", "voucher", "topUp", "close"], creds
        for cred in creds:
            assert cred["ok"], cred
            assert cred["channelId"] == _hex(opened.channel_id)
            assert cred["descriptorId"] == _hex(opened.channel_id)
            assert cred["source"] == f"did:pkh:eip155:{c['chainId']}:{opened.descriptor.payer}"
            if cred["action"] != "topUp":
                assert cred["voucherValid"] is True
        # The open transaction carried in the credential hashes to the descriptor's nonce hash,
        # and mppx's server-side transaction checks pass, with the payer recovered from it.
        assert creds[0]["txExpiringNonceHash"] == _hex(opened.descriptor.expiring_nonce_hash)
        accepted = creds[0]["txAccepted"]
        assert accepted["payer"].lower() == opened.descriptor.payer.lower()  # viem recovers it lower-case
        assert accepted["deposit"] == str(c["deposit"])
        assert creds[2]["txAccepted"]["payer"].lower() == opened.descriptor.payer.lower()


def test_teller_parses_mppx_wire_requests(vectors):
    for c, _ours, theirs in vectors:
        wire = theirs["request"]
        req = session.parse_request(_challenge(wire))
        assert req.amount == int(str(c["unit"]))
        assert req.suggested_deposit == int(str(c["deposit"]))
        assert req.min_voucher_delta == 1
        assert req.currency.lower() == str(c["token"]).lower()
        assert req.recipient.lower() == str(c["payee"]).lower()
        assert req.escrow.lower() == str(c["escrow"]).lower()
        assert req.operator.lower() == str(c["operator"]).lower()
        assert req.chain_id == c["chainId"]
        assert req.custom_escrow == (str(c["escrow"]).lower() != ch.ESCROW_PRECOMPILE)


def _sse_data(event: str) -> str:
    """The data of one SSE event (one ``data:`` line: mppx writes its JSON on one line)."""
    (line,) = [x for x in event.split("\n") if x.startswith("data: ")]
    return line[6:]


def test_teller_reads_mppx_receipts_and_voucher_requests(vectors):
    for c, ours, theirs in vectors:
        cid = ours["opened"].channel_id
        r = c["receipt"]
        for receipt in (session.parse_receipt(theirs["receiptHeader"], 65536),
                        session.receipt_from_json(json.loads(_sse_data(theirs["receiptEvent"])), "event")):
            assert receipt.challenge_id == r["challengeId"] and receipt.channel_id == cid
            assert receipt.accepted_cumulative == int(str(c["cumulativeAmount"]))
            assert receipt.spent == int(r["spent"]) and receipt.units == r.get("units")
            assert receipt.tx_hash == (bytes.fromhex(r["txHash"][2:]) if "txHash" in r else None)
        frame = json.loads(theirs["needVoucherFrame"])
        assert frame["mpp"] == "payment-need-voucher"
        for need in (session.parse_need_voucher(_sse_data(theirs["needVoucherEvent"]), 65536),
                     session.parse_need_voucher(json.dumps(frame["data"]), 65536)):
            assert need == session.NeedVoucher(cid, int(r["required"]), int(str(c["cumulativeAmount"])),
                                               int(str(c["deposit"])))
