"""MPP challenge parsing and credential building (pure), checked against
pympp's own challenges and cross-implementation vectors."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from teller.errors import InvalidArgument
from teller.mpp import challenge as mc
from teller.mpp import charge
from teller.vault.signer import WalletSigner, address_of
from tests.support.mpp_live import PATH_USD

RECIPIENT = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"


def _b64(doc: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(doc).encode()).decode().rstrip("=")


REQ = _b64({"amount": "1000", "currency": PATH_USD, "recipient": RECIPIENT, "methodDetails": {"chainId": 31337}})


def pympp_challenge_headers(*, requires_auth: bool = False, **route: object) -> list[tuple[str, str]]:
    """A 402 exactly as pympp's server builds it (no network needed to build one)."""
    from mpp.methods.tempo import server as tempo
    from mpp.server import Mpp, PaymentRequired, Request

    methods = tempo.charge(recipient=RECIPIENT, chain_id=31337, rpc_url="http://127.0.0.1:9", currencies=[PATH_USD])
    mpp = Mpp(methods=methods, realm="api.test", secret_key="test-secret", requires_auth=requires_auth)
    result = asyncio.run(mpp.charge(amount="0.01", **route)(Request("GET", "https://api.test/item?id=1", headers={})))
    assert isinstance(result, PaymentRequired)
    return list(result.challenge.headers.items())


def test_pympp_challenge_parses_and_echoes_exactly():
    from mpp import Challenge

    headers = pympp_challenge_headers(description='quote "this"', expires_in=None)
    (parsed,) = mc.parse(headers, 65536)
    theirs = Challenge.from_www_authenticate(dict(headers)["WWW-Authenticate"] if "WWW-Authenticate" in dict(headers)
                                             else dict(headers)["www-authenticate"])
    assert parsed.echo() == {k: v for k, v in vars_of(theirs.to_echo()).items() if v is not None}
    req = charge.parse_request(parsed)
    assert (req.amount, req.currency, req.recipient, req.chain_id) == (10_000, PATH_USD, RECIPIENT, 31337)


def vars_of(echo: object) -> dict[str, object]:
    return {k: getattr(echo, k) for k in echo.__slots__}  # type: ignore[attr-defined]


def test_several_headers_and_challenges_unknown_params_ignored():
    headers = [
        ("WWW-Authenticate", f'Basic realm="x", Payment id="a", realm="r", method="tempo", intent="charge", '
                             f'request="{REQ}", future_param="ignored", Bearer abc=='),
        ("Content-Type", "application/json"),
        ("www-authenticate", f'Payment id=b, realm=r, method=evm, intent=charge, request={REQ}, '
                             f'header="Payment-Authorization"'),
    ]
    a, b = mc.parse(headers, 65536)
    assert (a.id, a.method, a.header) == ("a", "tempo", "Authorization")
    assert (b.id, b.method, b.header) == ("b", "evm", "Payment-Authorization")
    assert "future_param" not in a.echo()


@pytest.mark.parametrize("value, needle", [
    ('Payment id="a", realm="r", method="tempo", intent="charge"', "'request' is missing"),
    (f'Payment realm="r", method="tempo", intent="charge", request="{REQ}"', "'id' is missing"),
    ('Payment id="a", realm="r", method="tempo", intent="charge", request="%%%"', "request is not base64url"),
    (f'Payment id="a", id="b", realm="r", method="tempo", intent="charge", request="{REQ}"', "'id' appears twice"),
    ('Payment id="a', "'id' has an unterminated quoted string"),
    (f'Payment id="a", realm="r", method="Tempo!", intent="charge", request="{REQ}"', "method"),
    (f'Payment id="a", realm="r", method="tempo", intent="charge", request="{REQ}", expires="tomorrow"',
     "expires 'tomorrow'"),
    (f'Payment id="a", realm="r", method="tempo", intent="charge", request="{_b64([1])}"', "JSON object"),
])
def test_malformed_challenges_name_the_parameter(value, needle):
    with pytest.raises(InvalidArgument, match=needle):
        mc.parse([("WWW-Authenticate", value)], 65536)


@pytest.mark.parametrize("request_doc, needle", [
    ({"amount": "1.5", "currency": PATH_USD, "recipient": RECIPIENT}, "request.amount"),
    ({"amount": "10", "currency": "0x12", "recipient": RECIPIENT}, "request.currency"),
    ({"amount": "10", "currency": PATH_USD, "recipient": RECIPIENT,
      "methodDetails": {"splits": [{"amount": "10", "recipient": RECIPIENT}]}}, "must add up to less than amount"),
    ({"amount": "10", "currency": PATH_USD, "recipient": RECIPIENT, "methodDetails": {"memo": "0xzz"}},
     "methodDetails.memo"),
    ({"amount": "10", "currency": PATH_USD, "recipient": RECIPIENT, "methodDetails": {"chainId": "1"}},
     "methodDetails.chainId"),
    ({"amount": "10", "currency": PATH_USD, "recipient": RECIPIENT, "methodDetails": {"supportedModes": ["fax"]}},
     "supportedModes"),
])
def test_malformed_charge_requests_name_the_field(request_doc, needle):
    (ch,) = mc.parse([("WWW-Authenticate", f'Payment id="a", realm="r", method="tempo", intent="charge", '
                                           f'request="{_b64(request_doc)}"')], 65536)
    with pytest.raises(InvalidArgument, match=needle):
        charge.parse_request(ch)


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=300))
def test_the_parser_never_fails_with_anything_but_invalid_argument(value):
    try:
        for ch in mc.parse([("WWW-Authenticate", value)], 65536):
            try:
                charge.parse_request(ch)
            except InvalidArgument:
                pass
    except InvalidArgument:
        pass


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# Anything but the control characters a quoted string refuses (tab is allowed).
_quotable = st.text(st.characters(blacklist_categories=("Cs",),
                                  blacklist_characters=[chr(c) for c in range(0x20) if c != 9]), max_size=120)


@settings(max_examples=400, deadline=None)
@given(id_=_quotable.filter(bool), realm=_quotable.filter(bool), description=_quotable, spaces=st.sampled_from(
    ["", " ", " \t"]))
def test_quoted_parameters_read_back_exactly(id_, realm, description, spaces):
    """Quoted strings are read as runs between escapes: whatever a server
    quotes (quotes, backslashes, tabs, any Unicode) comes back as it was."""
    value = (f"Payment{spaces} id={_quote(id_)},{spaces}realm{spaces}={spaces}{_quote(realm)}, method=tempo, "
             f'intent="charge", request={_quote(REQ)}, description={_quote(description)}')
    (ch,) = mc.parse([("WWW-Authenticate", value)], 65536)
    assert (ch.id, ch.realm, ch.description, ch.request_b64) == (id_, realm, description, REQ)


def test_a_bare_control_character_in_a_quoted_string_is_refused():
    with pytest.raises(InvalidArgument, match="'realm' contains a control character"):
        mc.parse([("WWW-Authenticate", 'Payment id="a", realm="r\x01"')], 65536)
    # Escaped, it is taken as it is (RFC 9110 quoted-pair).
    (ch,) = mc.parse([("WWW-Authenticate", f'Payment id="a", realm="r\\\x01", method="tempo", intent="charge", '
                                           f'request="{REQ}"')], 65536)
    assert ch.realm == "r\x01"
    with pytest.raises(InvalidArgument, match="'realm' has an unterminated quoted string"):
        mc.parse([("WWW-Authenticate", 'Payment id="a", realm="r\\')], 65536)


def test_oversized_header_is_refused():
    with pytest.raises(InvalidArgument, match="larger than"):
        mc.parse([("WWW-Authenticate", "Payment " + "a" * 70000)], 65536)


def test_attribution_memo_and_evm_nonce_match_pympp():
    from mpp.methods.evm._eip3009 import challenge_hash
    from mpp.methods.tempo import attribution

    (ch,) = mc.parse([("WWW-Authenticate", f'Payment id="kM9xPq", realm="api.example.com", method="tempo", '
                                           f'intent="charge", request="{REQ}"')], 65536)
    assert "0x" + charge.attribution_memo(ch.id, ch.realm).hex() == attribution.encode(challenge_id=ch.id,
                                                                                       server_id=ch.realm)
    assert "0x" + charge.evm_nonce(ch).hex() == challenge_hash(ch.id, ch.realm)


def test_zero_amount_proof_matches_the_mppx_v3_vector():
    # Conformance vector from wevm/mppx (Proof.conformance.test.ts), shared by mpp-rs.
    key = bytes([1]) * 32
    signer = WalletSigner(key, address_of(key))
    assert signer.address == "0x1a642f0E3c3aF545E7AcBD38b07251B3990914F1"
    request = _b64({"amount": "0", "currency": PATH_USD, "recipient": RECIPIENT, "methodDetails": {"chainId": 42431}})
    (ch,) = mc.parse([("WWW-Authenticate", f'Payment id="kM9xPqWvT2nJrHsY4aDfEb", realm="api.example.com", '
                                           f'method="tempo", intent="charge", request="{request}"')], 65536)
    typed = charge.proof_typed_data(ch, charge.parse_request(ch), signer.address)
    assert "0x" + typed.digest().hex() == "0x3860a700a55e02ad3c2dc047e92489feceecbdb0a801d948e1d9f0b61ea9bc3f"
    assert "0x" + signer.sign_typed_data(typed).hex() == (
        "0x53f5d64d9f995e841b4212639b2e17e508e96752e10316df3814a16443dcbdb6"
        "26c082190a4c3ecc3148101eb443d15bd83b579380b1be735a9c99f0df36c9fe1b")
