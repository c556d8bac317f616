"""Reading channels through a real in-process Teller, on SQLite and PostgreSQL:
the tenant sees its own channels and no other's, filtered by state and paged
newest first; GetChannelVouchers pages the vouchers highest total first; operators
read any tenant's. Every call goes through the Python clients (sync, asyncio
and admin), so each field crosses the proto and back."""

from __future__ import annotations

import asyncio
from concurrent import futures

import grpc
import pytest

from teller_client import (
    AdminClient,
    AsyncTellerClient,
    Channel,
    InvalidArgument,
    NotFound,
    TellerClient,
    Voucher,
)
from teller_client._proto.teller.v1 import admin_pb2_grpc, common_pb2, payment_pb2_grpc
from tests.support.channel_rows import add_channel, set_state
from tests.support.channels import ESCROW, NETWORK, TOKEN, OpenChannel, open_channel


def _token(teller, ch: OpenChannel) -> str:
    return teller.admin().issue_token(ch.tenant_id, "channels")[1]


def test_a_channel_round_trips_with_its_vouchers(teller):
    ch = open_channel(teller.app, deposit=100)
    signed = [teller.app.channels.sign_voucher(ch.tenant_id, ch.handle, step) for step in (10, 25, 65)]
    client = teller.client(_token(teller, ch))

    channels, token = client.list_channels()
    assert token == ""
    [listed] = channels
    assert isinstance(listed, Channel)
    assert listed.id == ch.handle and listed.tenant_id == ch.tenant_id and listed.wallet_id == ch.wallet_id
    assert (listed.network, listed.escrow, listed.channel_id, listed.token) == (NETWORK, ESCROW, ch.channel_id, TOKEN)
    assert listed.payee.startswith("0x") and len(listed.payee) == 42
    assert (listed.deposit, listed.spent, listed.remaining, listed.state) == (100, 100, 0, "open")
    assert listed.created_at_ms == 1 and listed.updated_at_ms >= listed.created_at_ms

    got = client.get_channel(ch.handle)
    assert got.channel == listed
    # Highest total first: the newest voucher, the one the payee settles, leads.
    assert got.vouchers == tuple(Voucher(v.cumulative, v.signature, got.vouchers[i].created_at_ms)
                                 for i, v in enumerate(reversed(signed)))
    assert [v.cumulative for v in got.vouchers] == [100, 35, 10]
    assert all(v.created_at_ms > 0 for v in got.vouchers)
    assert {(v.cumulative, v.signature) for v in got.vouchers} == set(teller.app.channels.vouchers(ch.tenant_id,
                                                                                                   ch.handle))
    assert got.next_page_token == ""
    # Operators read the same channel, naming its tenant.
    admin = teller.admin()
    assert admin.list_channels(ch.tenant_id) == ([listed], "")
    assert admin.get_channel(ch.tenant_id, ch.handle) == got


def test_vouchers_page_highest_total_first(teller):
    ch = open_channel(teller.app, deposit=1_000)
    for step in (1, 2, 3, 4, 5):
        teller.app.channels.sign_voucher(ch.tenant_id, ch.handle, step)
    client = teller.client(_token(teller, ch))
    totals, token, pages = [], "", 0
    while True:
        page = client.get_channel(ch.handle, page_size=2, page_token=token)
        assert len(page.vouchers) <= 2 and page.channel.spent == 15
        totals += [v.cumulative for v in page.vouchers]
        token, pages = page.next_page_token, pages + 1
        if not token:
            break
    assert totals == [15, 10, 6, 3, 1] and pages == 3
    # A channel without vouchers has an empty page, and nothing spent.
    fresh = add_channel(teller.app, ch, 50, at_ms=2)
    empty = client.get_channel(fresh)
    assert (empty.vouchers, empty.next_page_token, empty.channel.spent, empty.channel.remaining) == ((), "", 0, 50)


def test_a_tenant_never_sees_another_tenants_channel(teller):
    mine = open_channel(teller.app, deposit=100)
    theirs = open_channel(teller.app, deposit=100)
    teller.app.channels.sign_voucher(theirs.tenant_id, theirs.handle, 7)
    client = teller.client(_token(teller, mine))
    assert [c.id for c in client.list_channels()[0]] == [mine.handle]
    with pytest.raises(NotFound, match="not found") as missing:
        client.get_channel(theirs.handle)
    # Indistinguishable from a channel that does not exist.
    with pytest.raises(NotFound) as absent:
        client.get_channel("00000000-0000-0000-0000-000000000000")
    assert str(missing.value).replace(theirs.handle, "X") == str(absent.value).replace(
        "00000000-0000-0000-0000-000000000000", "X")
    # An operator naming the wrong tenant finds nothing either.
    with pytest.raises(NotFound):
        teller.admin().get_channel(mine.tenant_id, theirs.handle)
    assert [c.id for c in teller.admin().list_channels(theirs.tenant_id)[0]] == [theirs.handle]


def test_state_filter_and_paging_newest_first(teller):
    first = open_channel(teller.app, deposit=10)  # opened at 1 ms
    handles = {at: add_channel(teller.app, first, 10 * at, at_ms=at) for at in (2, 3, 4, 5)}
    set_state(teller.app, handles[3], "closing")
    set_state(teller.app, handles[5], "closed")
    client = teller.client(_token(teller, first))
    newest_first = [handles[5], handles[4], handles[3], handles[2], first.handle]
    assert [c.id for c in client.list_channels()[0]] == newest_first
    assert [c.id for c in client.list_channels(state="open")[0]] == [handles[4], handles[2], first.handle]
    assert [(c.id, c.state) for c in client.list_channels(state="closing")[0]] == [(handles[3], "closing")]
    assert [c.id for c in client.list_channels(state="closed")[0]] == [handles[5]]
    seen, token = [], ""
    while True:
        page, token = client.list_channels(page_size=2, page_token=token)
        assert len(page) <= 2
        seen += [c.id for c in page]
        if not token:
            break
    assert seen == newest_first
    admin = teller.admin()
    page, token = admin.list_channels(first.tenant_id, state="open", page_size=2)
    assert [c.id for c in page] == [handles[4], handles[2]] and token
    assert [c.id for c in admin.list_channels(first.tenant_id, state="open", page_token=token)[0]] == [first.handle]


def test_bad_requests_name_the_field(teller):
    ch = open_channel(teller.app, deposit=10)
    client, admin = teller.client(_token(teller, ch)), teller.admin()
    for call, field in ((lambda: client.list_channels(state="settled"), "state must be one of open, closing, closed"),
                        (lambda: client.list_channels(page_size=-1), "page_size"),
                        (lambda: client.list_channels(page_token="12"), "page_token"),
                        (lambda: client.get_channel(ch.handle, page_token="x"), "page_token"),
                        (lambda: client.get_channel(""), "id is required"),
                        (lambda: admin.list_channels(""), "tenant_id is required"),
                        (lambda: admin.get_channel("", ch.handle), "tenant_id is required")):
        with pytest.raises(InvalidArgument, match=field):
            call()
    with pytest.raises(NotFound, match="tenant 'no-such-tenant' not found"):
        admin.list_channels("no-such-tenant")


def test_the_asyncio_client_reads_channels(teller):
    ch = open_channel(teller.app, deposit=100)
    teller.app.channels.sign_voucher(ch.tenant_id, ch.handle, 40)
    token = _token(teller, ch)

    async def read() -> tuple:
        async with AsyncTellerClient(teller.target, token) as client:
            return await client.list_channels(state="open"), await client.get_channel(ch.handle)

    (channels, next_token), got = asyncio.run(read())
    assert [(c.id, c.spent, c.remaining) for c in channels] == [(ch.handle, 40, 60)] and next_token == ""
    assert [v.cumulative for v in got.vouchers] == [40] and got.channel == channels[0]


class _Restarting:
    """Answers each channel read UNAVAILABLE the first time, as a worker being
    replaced would, then answers it; counts the attempts."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def _once(self, name: str, context: grpc.ServicerContext) -> None:
        self.calls.append(name)
        if self.calls.count(name) == 1:
            context.abort(grpc.StatusCode.UNAVAILABLE, "restarting")

    def ListChannels(self, request, context):
        self._once(type(request).__name__, context)
        return common_pb2.ListChannelsResponse(channels=[common_pb2.Channel(id="c1", deposit="5", spent="2",
                                                                            remaining="3", state="open")])

    def GetChannelVouchers(self, request, context):
        self._once(type(request).__name__, context)
        return common_pb2.GetChannelVouchersResponse(channel=common_pb2.Channel(id=request.id),
                                                     vouchers=[common_pb2.Voucher(cumulative="2", signature="0x01")])


class _RestartingPayments(_Restarting, payment_pb2_grpc.PaymentServiceServicer):
    pass


class _RestartingAdmin(_Restarting, admin_pb2_grpc.AdminServiceServicer):
    pass


def test_channel_reads_are_retried_as_idempotent():
    payments, admin = _RestartingPayments(), _RestartingAdmin()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    payment_pb2_grpc.add_PaymentServiceServicer_to_server(payments, server)
    admin_pb2_grpc.add_AdminServiceServicer_to_server(admin, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with TellerClient(f"127.0.0.1:{port}", "tok", timeout=5.0) as client:
            [listed], _ = client.list_channels()
            assert (listed.id, listed.deposit, listed.spent, listed.remaining) == ("c1", 5, 2, 3)
            got = client.get_channel("c1")
            assert got.channel.id == "c1" and got.vouchers == (Voucher(2, "0x01", 0),)
        with AdminClient(f"127.0.0.1:{port}", "tok", timeout=5.0) as operator:
            assert [c.id for c in operator.list_channels("t1")[0]] == ["c1"]
            assert operator.get_channel("t1", "c9").channel.id == "c9"
    finally:
        server.stop(0)
    assert payments.calls == ["ListChannelsRequest"] * 2 + ["GetChannelVouchersRequest"] * 2
    assert admin.calls == ["AdminListChannelsRequest"] * 2 + ["AdminGetChannelVouchersRequest"] * 2
