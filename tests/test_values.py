"""teller.values: one canonical form per network, address, amount and host."""

from __future__ import annotations

import ipaddress
import socket

import pytest
from eth_utils import to_checksum_address
from hypothesis import given, settings
from hypothesis import strategies as st

from teller import values
from teller.errors import InvalidArgument
from teller.spend.evaluate import evaluate_scope
from teller.spend.parse import parse
from teller.spend.rules import Charge
from tests.support import spellings

USDC = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"


@pytest.mark.parametrize(("text", "canonical"), [
    ("eip155:8453", "eip155:8453"), ("base", "eip155:8453"), ("solana:5eykt4UsFv8P8NJdTREpY1vzqKqZKvdp",
                                                              "solana:5eykt4UsFv8P8NJdTREpY1vzqKqZKvdp"),
    (f"eip155:{values.MAX_CHAIN_ID}", f"eip155:{values.MAX_CHAIN_ID}"),
])
def test_networks_have_one_form(text, canonical):
    assert values.network(text, "n", {"base": 8453}) == canonical


@given(spellings.networks(8453))
def test_no_other_spelling_of_a_chain_is_accepted(text):
    with pytest.raises(values.NotCanonical) as info:
        values.network(text, "accepts[0].network")
    assert str(info.value).startswith("accepts[0].network ")


def test_chain_ids_are_bounded_before_any_conversion():
    for bad in ("eip155:0", f"eip155:{2**64}", f"eip155:{2**256}", "eip155:" + "9" * 5000):
        with pytest.raises(values.NotCanonical):
            values.network(bad, "n")
    assert values.chain_id("1", "c") == values.chain_id(1, "c") == 1
    for value in (0, -1, 2**64, 10**5000, True, 1.0, "01", "+1"):
        with pytest.raises(values.NotCanonical):
            values.chain_id(value, "c")


@given(st.binary(min_size=20, max_size=20))
def test_addresses_canonicalize_to_the_checksum(raw):
    lower = "0x" + raw.hex()
    checksummed = to_checksum_address(lower)
    assert values.address(lower, "a") == checksummed
    assert values.address("0x" + lower[2:].upper(), "a") == checksummed
    assert values.address(checksummed, "a") == checksummed


@settings(max_examples=300)
@given(spellings.addresses(USDC))
def test_other_address_spellings_are_refused_or_are_the_same_address(text):
    try:
        canonical = values.address(text, "payTo")
    except values.NotCanonical as exc:
        assert exc.field == "payTo"
        return
    assert canonical == USDC and text.lower() == USDC.lower()


def test_a_wrong_checksum_is_refused():
    wrong = "0x036CbD53842c5426634e7929541eC2318f3dCF7E"
    with pytest.raises(values.NotCanonical, match="EIP-55"):
        values.address(wrong, "asset")


@given(spellings.numbers(1000))
def test_amounts_have_one_spelling(text):
    try:
        value = values.amount(text, "amount")
    except values.NotCanonical:
        return
    assert text == str(value) and value != 1000  # only a different number in canonical form gets through


def test_amount_bounds():
    assert values.amount(str(values.UINT256_MAX), "a") == values.UINT256_MAX
    for bad in (str(2**256), "9" * 5000, "-1", "+1", "01", "1_000", " 1", "\uff11", ""):
        with pytest.raises(values.NotCanonical):
            values.amount(bad, "a")


@pytest.mark.parametrize("spelling", spellings.IPV4_LOOPBACK)
def test_loopback_spellings_are_127_0_0_1(spelling):
    assert values.host(spelling, "h") == "127.0.0.1"


@pytest.mark.parametrize("spelling", [s for s in spellings.IPV4_LOOPBACK if s.isascii() and "[" not in s])
def test_ipv4_spellings_match_the_system_resolver(spelling):
    # The fetcher's resolver (getaddrinfo, inet_aton's rules) reaches the same address.
    infos = socket.getaddrinfo(spelling.rstrip("."), 80, socket.AF_INET, socket.SOCK_STREAM)
    assert {info[4][0] for info in infos} == {values.host(spelling, "h")}


@given(spellings.hosts("evil.example"))
def test_host_name_spellings_are_one_name(spelling):
    assert values.host(spelling, "h") == "evil.example"


@pytest.mark.parametrize(("text", "canonical"), [
    ("B\u00fccher.DE.", "xn--bcher-kva.de"), ("[0:0:0:0:0:0:0:1]", "::1"), ("::1", "::1"),
    ("[2001:DB8::0:1]", "2001:db8::1"), ("xn--bcher-kva.de", "xn--bcher-kva.de"),
])
def test_hosts(text, canonical):
    assert values.host(text, "h") == canonical


@pytest.mark.parametrize("bad", ["a..b", "ex ample.com", "256.0.0.1", "1.2.3.4.5", "127.0.0.09", "[::1%eth0]",
                                 "a" * 64 + ".com", "-a.com", "%31.0.0.1", ""])
def test_bad_hosts_are_refused(bad):
    with pytest.raises(values.NotCanonical):
        values.host(bad, "h")


def test_ipv4_parse_agrees_with_ipaddress_on_dotted_quads():
    for n in (0, 1, 2130706433, 2**32 - 1, 3232235777):
        assert values.host(str(ipaddress.IPv4Address(n)), "h") == str(ipaddress.IPv4Address(n))
        assert values.host(str(n), "h") == str(ipaddress.IPv4Address(n))


def test_policy_documents_are_canonicalized_when_set():
    p = parse({"networks": {"deny": ["eip155:8453"]}, "hosts": {"deny": ["127.1", "*.\uff25\uff58\uff41\uff4d\uff50\uff4c\uff45.com."]},
                      "payees": {"deny": [USDC.upper().replace("0X", "0x")]}})
    assert p.hosts.deny == {"127.0.0.1", "*.example.com"}
    assert p.payees.deny == {USDC.lower()}
    for doc, field in (({"networks": {"deny": ["eip155:08453"]}}, "policy.networks.deny[0]"),
                       ({"payees": {"deny": [USDC[2:]]}}, "policy.payees.deny[0]"),
                       ({"deny_assets": [{"network": "eip155:1", "address": "0x" + USDC[2:].swapcase()}]},
                        "policy.deny_assets[0].address"),
                       ({"hosts": {"allow": ["*.127.0.0.1"]}}, "policy.hosts.allow[0]")):
        with pytest.raises(InvalidArgument) as info:
            parse(doc)
        assert info.value.message.startswith(field)


@given(host=st.sampled_from(spellings.IPV4_LOOPBACK))
def test_policy_compares_url_hosts_canonically(host):
    p = parse({"allow_unknown_assets": True, "hosts": {"deny": ["127.0.0.1"]}})
    payment = Charge("eip155:1", USDC, 1, USDC, f"https://{host}/x")
    assert evaluate_scope(p, "tenant", payment, {}, False).reason == "host_not_allowed"


@settings(max_examples=200)
@given(currency=spellings.addresses(USDC), recipient=spellings.addresses(USDC),
       chain=st.one_of(st.just(4217), st.sampled_from([4217.0, "4217", 4217 + 2**64, 0, -1, True, None])))
def test_mpp_tempo_requests_read_only_canonical_values(currency, recipient, chain):
    import base64
    import json

    from teller.errors import TellerError
    from teller.mpp import challenge as mpp_challenge
    from teller.mpp.charge import parse_request

    details = {} if chain is None else {"chainId": chain}
    request = {"amount": "1000", "currency": currency, "recipient": recipient, "methodDetails": details}
    encoded = base64.urlsafe_b64encode(json.dumps(request).encode()).decode().rstrip("=")
    (ch,) = mpp_challenge.parse([("WWW-Authenticate", f'Payment id="x", realm="r", method="tempo", intent="charge", '
                                                      f'request="{encoded}"')], 65536)
    try:
        req = parse_request(ch)
    except TellerError as exc:
        assert exc.code.name == "INVALID_ARGUMENT" and "request." in exc.message
        return
    # Accepted only when every field was already one spelling of the canonical value.
    assert (req.currency, req.recipient, req.chain_id) == (USDC, USDC, 4217)
    assert currency.lower() == recipient.lower() == USDC.lower() and currency.startswith("0x")
