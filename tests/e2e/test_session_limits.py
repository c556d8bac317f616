"""How many channels a tenant opens, with two workers on one PostgreSQL racing:
``max_open_channels`` lets exactly one open take the last slot, and concurrent
first challenges for one payee open one channel (one deposit reserved), the
others answered with vouchers on it that mppx's session server accepts once the
open has reached it. The chain is the local Tempo testbed (docs/sessions-testbed.md)."""

from __future__ import annotations

import base64
import dataclasses
import json
import secrets
import threading

import httpx
import pytest
from eth_utils import to_checksum_address
from sqlalchemy import select

from teller.db.models import AuditEvent, Channel
from teller_client import Asset, Budget, LimitExceeded, Policy
from testbed.chain import FACILITATOR_KEY
from testbed.escrow_proxy import escrow_proxy
from testbed.tempo import TEMPO_CHAIN_ID, tempo_chain
from tests.support.harness import RunningTeller, make_settings
from tests.support.mpp_live import MPPX_CHAIN_ARGS, PATH_USD
from tests.support.mppx_session import mppx_session_server

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

PRICE = 100
DEPOSIT = 200_000
HTTP = httpx.Client(timeout=60)


@pytest.fixture(scope="module")
def testbed():
    with tempo_chain(*MPPX_CHAIN_ARGS) as chain, escrow_proxy(chain.rpc_url) as (proxy_url, proxy):
        yield chain, proxy_url, proxy


@pytest.fixture
def workers(pg_url, tmp_path, testbed):
    """Two workers (each its own app, pools and async batch driver) on one database."""
    chain, proxy_url, proxy = testbed
    settings = make_settings(pg_url, tmp_path, rpc_urls={chain.network: proxy_url}, reconcile_interval_seconds=0,
                             session_escrows={chain.network: proxy.escrow})
    (tmp_path / "w2").mkdir()
    running = [RunningTeller(settings), RunningTeller(dataclasses.replace(settings, data_dir=tmp_path / "w2"))]
    yield running
    for r in running:
        r.stop()


def _decode(value: str) -> dict:
    encoded = value.split(" ", 1)[-1]
    return json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))


def _server(proxy_url, proxy):
    payee = to_checksum_address("0x" + secrets.token_hex(20))
    return mppx_session_server(proxy_url, TEMPO_CHAIN_ID, proxy.escrow, PATH_USD, FACILITATOR_KEY, payee,
                               "0.0001", suggested_deposit="0.2")


def _tenant(teller, chain, **policy):
    t = teller.setup_tenant(policy=Policy(assets=(Asset(chain.network, PATH_USD, 6),),
                                          budgets=(Budget(50_000_000, "day", name="day"),), **policy))
    chain.fund(t.address, 1_000_000)
    return t


def _race(jobs):
    """Run each job on its own thread from one barrier; their results or errors."""
    barrier = threading.Barrier(len(jobs))
    out: list[object] = [None] * len(jobs)

    def run(i, job):
        barrier.wait()
        try:
            out[i] = job()
        except Exception as exc:
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i, job)) for i, job in enumerate(jobs)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(240)
    return out


def _signer(client, t, url):
    unpaid = HTTP.get(url)
    assert unpaid.status_code == 402, unpaid.text
    return lambda: client.sign(status=402, headers=list(unpaid.headers.items()), body=unpaid.content, url=url,
                               wallet_id=t.wallet_id, timeout=180)


def test_two_workers_racing_for_the_last_open_slot_open_exactly_one_channel(workers, testbed):
    chain, proxy_url, proxy = testbed
    a, b = workers
    for _ in range(3):
        t = _tenant(a, chain, max_open_channels=2)
        clients = [a.client(t.token), b.client(t.token)]
        with _server(proxy_url, proxy) as s0, _server(proxy_url, proxy) as s1, _server(proxy_url, proxy) as s2:
            first = _signer(clients[0], t, s0.url + "/m")()  # one slot taken: one left
            assert _decode(first.header_value)["payload"]["action"] == "open"
            got = _race([_signer(clients[0], t, s1.url + "/m"), _signer(clients[1], t, s2.url + "/m")])
        opened = [g for g in got if not isinstance(g, Exception)]
        refused = [g for g in got if isinstance(g, Exception)]
        assert len(opened) == 1 and len(refused) == 1, got
        assert _decode(opened[0].header_value)["payload"]["action"] == "open"
        (no,) = refused
        assert isinstance(no, LimitExceeded) and no.reason == "max_open_channels", no
        assert "max_open_channels 2" in str(no)
        with a.app.db.read() as s:
            assert len(s.scalars(select(Channel).where(Channel.tenant_id == t.tenant_id)).all()) == 2
            denied = s.scalars(select(AuditEvent).where(AuditEvent.tenant_id == t.tenant_id,
                                                        AuditEvent.action == "payment.deny")).all()
        assert [d.reason for d in denied] == ["max_open_channels"]
        # Full: the next open is refused too.
        with _server(proxy_url, proxy) as s3, pytest.raises(LimitExceeded, match="max_open_channels"):
            _signer(clients[1], t, s3.url + "/m")()


def test_concurrent_first_challenges_open_one_channel_and_the_others_get_vouchers_on_it(workers, testbed):
    chain, proxy_url, proxy = testbed
    a, b = workers
    t = _tenant(a, chain)
    clients = [a.client(t.token), b.client(t.token)]
    n = 8
    presented: list[httpx.Response] = []

    def present_an_open(sign):
        # The caller that gets the open presents it at once, as a client does: an open is
        # valid for seconds (Tempo's expiring nonce), and the race may end later than that.
        def job():
            signed = sign()
            if _decode(signed.header_value)["payload"]["action"] == "open":
                presented.append(HTTP.get(url, headers=signed.retry_headers()))
            return signed
        return job

    with _server(proxy_url, proxy) as server:
        url = server.url + "/metered"
        got = _race([present_an_open(_signer(clients[i % 2], t, url)) for i in range(n)])
        assert not [g for g in got if isinstance(g, Exception)], got
        payloads = [_decode(g.header_value)["payload"] for g in got]
        opens = [p for p in payloads if p["action"] == "open"]
        vouchers = sorted((p for p in payloads if p["action"] == "voucher"), key=lambda p: int(p["cumulativeAmount"]))
        assert len(opens) == 1 and len(vouchers) == n - 1
        assert {p["channelId"] for p in payloads} == {opens[0]["channelId"]}
        totals = [int(p["cumulativeAmount"]) for p in vouchers]
        assert totals == [PRICE * i for i in range(2, n + 1)]  # after the open's first unit, one each
        # One deposit reserved (and the open's fee), not n.
        day = next(w for w in clients[0].spend() if w.scope == "tenant" and w.window == "day")
        assert DEPOSIT < day.reserved < 2 * DEPOSIT
        (channel,) = a.app.channels.of_tenant(t.tenant_id)
        assert channel.cumulative == PRICE * n
        # mppx takes the open, then every voucher in order.
        assert [r.status_code for r in presented] == [200], server.log()[-2000:]
        by_total = {int(_decode(g.header_value)["payload"]["cumulativeAmount"]): g for g in got}
        for total in totals:
            paid = HTTP.get(url, headers=by_total[total].retry_headers())
            assert paid.status_code == 200, f"{total}: {paid.text[:300]}\n{server.log()[-2000:]}"
