"""A worker's gRPC acceptors (several servers on one address) and its event loop."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
import uvloop
from grpc_health.v1 import health_pb2, health_pb2_grpc

from teller import config
from teller.errors import ConfigError
from teller_client import AdminClient, TellerClient
from testbed.x402_server import sdk_v2_challenge
from tests.support.harness import RunningTeller, make_settings


def listeners(port: int) -> int:
    """Listening TCP sockets on ``port`` (any address), from the kernel's own
    tables: gRPC binds 127.0.0.1 as a v4-mapped IPv6 socket where it can."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":  # 0A: LISTEN
                count += 1
    return count


def own_connection(target: str) -> grpc.Channel:
    # A local subchannel pool: a new TCP connection, not one shared by every
    # channel of this process to the same target.
    return grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])


def test_every_acceptor_listens_on_the_one_port_and_serves_everything(tmp_path):
    teller = RunningTeller(make_settings("", tmp_path, grpc_acceptors=4))
    try:
        port = teller.server.port
        assert listeners(port) == 4
        t = teller.setup_tenant()
        chall = sdk_v2_challenge(amount="1000")
        # The kernel spreads connections over the acceptors (SO_REUSEPORT); with 16
        # of them, each acceptor gets some (all on one: p = 4 * 4**-16). Any that
        # lacked a service would answer UNIMPLEMENTED here.
        for _ in range(16):
            with own_connection(teller.target) as channel:
                signed = TellerClient(teller.target, t.token, channel=channel).sign(
                    status=chall.status, headers=chall.headers, body=chall.body, url=chall.url,
                    wallet_id=t.wallet_id)
                assert signed.header_name == "PAYMENT-SIGNATURE"
                admin = AdminClient(teller.target, teller.settings.admin_token, channel=channel)
                assert t.tenant_id in {tenant.id for tenant in admin.list_tenants()}
                health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
                assert health.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        teller.stop()
    assert listeners(port) == 0


def test_a_separate_admin_address_has_one_listener_and_payments_none_of_admin(tmp_path):
    teller = RunningTeller(make_settings("", tmp_path, grpc_acceptors=3, admin_listen="127.0.0.1:0"))
    try:
        assert listeners(teller.server.port) == 3
        assert listeners(teller.server.admin_port) == 1
        for _ in range(8):
            with own_connection(teller.target) as channel:
                admin = AdminClient(teller.target, teller.settings.admin_token, channel=channel)
                with pytest.raises(Exception, match="UNIMPLEMENTED"):
                    admin.list_tenants()
    finally:
        teller.stop()


@pytest.mark.parametrize(("kind", "loop_type"), [("uvloop", uvloop.Loop), ("asyncio", asyncio.SelectorEventLoop)])
def test_the_configured_event_loop_runs_the_server(tmp_path, kind, loop_type):
    teller = RunningTeller(make_settings("", tmp_path, event_loop=kind))
    try:
        assert type(teller.server.loop) is loop_type
        t = teller.setup_tenant()
        chall = sdk_v2_challenge(amount="1000")
        signed = teller.client(t.token).sign(status=chall.status, headers=chall.headers, body=chall.body,
                                             url=chall.url, wallet_id=t.wallet_id)
        assert signed.requirement.amount == 1000
    finally:
        teller.stop()


@pytest.mark.parametrize(("overrides", "needle"), [
    ({"grpc_acceptors": 0}, "grpc_acceptors must be at least 1, got 0"),
    ({"grpc_acceptors": 65}, "grpc_acceptors must be at most 64, got 65"),
    ({"event_loop": "tokio"}, "event_loop must be one of uvloop, asyncio, got 'tokio'"),
])
def test_bad_server_settings_are_refused_by_name(tmp_path, overrides, needle):
    settings = replace(make_settings("", tmp_path), **overrides)
    with pytest.raises(ConfigError, match=needle):
        config.finalize_for_serving(settings)


def test_settings_come_from_the_environment(tmp_path):
    settings = config.load(env={"TELLER_GRPC_ACCEPTORS": "3", "TELLER_EVENT_LOOP": "asyncio"})
    assert (settings.grpc_acceptors, settings.event_loop) == (3, "asyncio")


def test_a_port_is_claimed_by_one_process_only():
    import socket

    from teller.rpc.ports import PortClaim
    from testbed.procs import free_port

    address = f"127.0.0.1:{free_port()}"
    first = PortClaim(address)
    with pytest.raises(ConfigError, match="port in use: another Teller worker"):
        PortClaim(address)
    first.release()
    PortClaim(address).release()
    # A listener that allows sharing (SO_REUSEPORT, as gRPC's are) and holds no
    # claim, e.g. an older Teller: refused all the same.
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", int(address.rsplit(":", 1)[1])))
        other.listen()
        with pytest.raises(ConfigError, match="port in use: another process"):
            PortClaim(address)
        with pytest.raises(ConfigError, match="port in use"):
            PortClaim(f"0.0.0.0:{address.rsplit(':', 1)[1]}")
