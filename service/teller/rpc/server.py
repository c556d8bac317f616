"""Building and running the grpc.aio server: services, health, reflection."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from teller import db_gauges
from teller.app import App
from teller.config import Settings
from teller.errors import ConfigError
from teller.observe import Tracing
from teller.rpc.interceptors import Guard, GuardedServer, in_flight
from teller.rpc.ports import PortClaim
from teller.rpc.services import AdminServicer, PaymentServicer
from teller_client._proto.teller.v1 import admin_pb2, admin_pb2_grpc, payment_pb2, payment_pb2_grpc

log = logging.getLogger("teller.server")

SERVICE_NAMES = (
    payment_pb2.DESCRIPTOR.services_by_name["PaymentService"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
)


def credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS (and mTLS when a client CA is configured) for the gRPC ports, or None for plaintext."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    pair = [(settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes())]
    if settings.tls_client_ca_file is None:
        return grpc.ssl_server_credentials(pair)
    return grpc.ssl_server_credentials(pair, root_certificates=settings.tls_client_ca_file.read_bytes(),
                                       require_client_auth=True)


# SO_REUSEPORT (gRPC's default on Linux, asked for here in so many words): the
# acceptors of one worker share its address. Only they may: ``PortClaim``
# keeps every other process off it.
SERVER_OPTIONS = [("grpc.max_receive_message_length", 4 * 1024 * 1024), ("grpc.so_reuseport", 1)]


def with_port(address: str, port: int) -> str:
    """``address`` (host:port, [v6]:port) with its port replaced."""
    host, sep, _ = address.rpartition(":")
    if not sep:
        raise ValueError(f"listen address {address!r} has no port")
    return f"{host}:{port}"


class Server:
    """A running Teller gRPC server bound to ``port`` (and ``admin_port`` when
    AdminService has its own address)."""

    def __init__(self, app: App, listen: str) -> None:
        self.app = app
        settings = app.settings
        self._claims = [PortClaim(listen)]
        try:
            if settings.admin_listen:
                self._claims.append(PortClaim(settings.admin_listen))
            self._build(app, listen)
        except BaseException:
            self._release()
            raise

    def _release(self) -> None:
        for claim in self._claims:
            claim.release()

    def _build(self, app: App, listen: str) -> None:
        settings = app.settings
        self.pool = ThreadPoolExecutor(max_workers=max(4, settings.db_pool_size), thread_name_prefix="teller-db")
        # Every service is registered through the guard (request ids, metrics,
        # spans, error mapping), wrapped once rather than intercepted per call.
        self.tracing = Tracing(settings.tracing)
        guard = Guard(self.tracing)
        self.payments = PaymentServicer(app, self.pool)
        admin = AdminServicer(app, self.pool)
        self.health = health.aio.HealthServicer()
        creds = credentials(settings)
        shared = not settings.admin_listen
        names = (*(SERVICE_NAMES if shared else SERVICE_NAMES[:1]), health.SERVICE_NAME, reflection.SERVICE_NAME)
        reflector = reflection.aio.ReflectionServicer(names)

        def new_server(*, payments: bool, with_admin: bool) -> grpc.aio.Server:
            server = grpc.aio.server(options=SERVER_OPTIONS)
            guarded = GuardedServer(server, guard)
            if payments:
                payment_pb2_grpc.add_PaymentServiceServicer_to_server(self.payments, guarded)
                reflection_pb2_grpc.add_ServerReflectionServicer_to_server(reflector, guarded)
            if with_admin:
                admin_pb2_grpc.add_AdminServiceServicer_to_server(admin, guarded)
            health_pb2_grpc.add_HealthServicer_to_server(self.health, guarded)
            return server

        # The acceptors: identical servers on one address, sharing the servicers
        # (and so one Sign batcher). The first binds (a port 0 becomes a real
        # one); the others join it on that port.
        self.grpc = new_server(payments=True, with_admin=shared)
        self.port = self._bind(self.grpc, listen, creds)
        self._servers = [self.grpc]
        for _ in range(settings.grpc_acceptors - 1):
            server = new_server(payments=True, with_admin=shared)
            self._bind(server, with_port(listen, self.port), creds)
            self._servers.append(server)
        self.admin_grpc = self.grpc
        self.admin_port = self.port
        if not shared:
            self.admin_grpc = new_server(payments=False, with_admin=True)
            self.admin_port = self._bind(self.admin_grpc, settings.admin_listen, creds)
            self._servers.append(self.admin_grpc)
        self._reconciling: asyncio.Task[None] | None = None
        self._gauges: asyncio.Task[None] | None = None

    @staticmethod
    def _bind(server: grpc.aio.Server, address: str, creds: grpc.ServerCredentials | None) -> int:
        try:
            port = server.add_secure_port(address, creds) if creds is not None else server.add_insecure_port(address)
        except RuntimeError:
            port = 0  # newer grpcio raises where older ones returned 0
        if port == 0:
            raise ConfigError(f"listen {address}: cannot bind (port in use, or not an address of this host)")
        return port

    async def start(self) -> None:
        for server in self._servers:
            await server.start()
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("teller listening on port %d", self.port)
        self._gauges = asyncio.create_task(
            db_gauges.refresh_forever(self.app.db, self.app.vault.kek.current_version, self.pool))
        if self.app.chain.networks and self.app.settings.reconcile_interval_seconds > 0:
            self._reconciling = asyncio.create_task(self._reconcile_forever())

    async def _reconcile_forever(self) -> None:
        interval = self.app.settings.reconcile_interval_seconds
        delay = interval
        loop = asyncio.get_running_loop()
        while True:
            try:
                result = await loop.run_in_executor(self.pool, self.app.reconciler.run_once)
                failed = bool(result.errors)
                if result.transitions:
                    log.info("reconciler: %s", dict(result.transitions))
            except Exception:
                log.exception("reconciler pass failed")
                failed = True
            # A failing chain or database gets exponentially fewer calls, up to 10x the interval.
            delay = min(delay * 2, interval * 10) if failed else interval
            await asyncio.sleep(delay)

    async def stop(self, grace: float = 5.0) -> None:
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        for task in (self._reconciling, self._gauges):
            if task is not None:
                task.cancel()
        await asyncio.gather(*(server.stop(grace) for server in self._servers))
        await self.payments.close()
        self.pool.shutdown(wait=True)
        # Spans still queued for export leave before the process does.
        await asyncio.get_running_loop().run_in_executor(None, self.tracing.flush)
        self._release()

    async def wait(self) -> None:
        await self.grpc.wait_for_termination()


def new_event_loop(kind: str) -> asyncio.AbstractEventLoop:
    """A new event loop of the configured kind (``Settings.event_loop``)."""
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def run(app: App, listen: str) -> None:
    """Serve until SIGTERM/SIGINT, on the configured event loop."""
    with asyncio.Runner(loop_factory=lambda: new_event_loop(app.settings.event_loop)) as runner:
        runner.run(serve(app, listen))


async def serve(app: App, listen: str) -> None:
    if app.settings.metrics_listen:
        import prometheus_client

        host, _, port = app.settings.metrics_listen.rpartition(":")
        prometheus_client.start_http_server(int(port), addr=host or "0.0.0.0")  # noqa: S104 - operator's choice
    server = Server(app, listen)
    await server.start()
    # Everything loaded so far (modules, ABIs, statements) lives as long as the
    # process: keep it out of the collector's scans, and let the young generation
    # grow before collecting, so calls do not pay for sweeping the interpreter.
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    import signal

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    grace = app.settings.shutdown_grace_seconds
    log.info("shutting down: no new calls; up to %.0fs for %d call(s) in flight", grace, len(in_flight()))
    started = time.monotonic()
    # What is still running when the grace runs out is named (it is then cancelled):
    # a call that holds up a rollout should be findable from the log.
    watchdog = asyncio.get_running_loop().call_later(
        max(grace - 0.5, 0), lambda: log.warning("shutdown grace nearly over; still in handlers: %s",
                                                 in_flight() or "none (waiting inside gRPC)"))
    await server.stop(grace)
    watchdog.cancel()
    log.info("stopped after %.1fs", time.monotonic() - started)


class BackgroundServer:
    """A Server on its own event-loop thread, for the demo and for tests."""

    def __init__(self, app: App, listen: str) -> None:
        import threading

        self.loop = new_event_loop(app.settings.event_loop)
        self._thread = threading.Thread(target=self.loop.run_forever, name="teller-grpc", daemon=True)
        self._thread.start()

        async def start() -> Server:
            # grpc.aio servers bind to the loop they are created on.
            server = Server(app, listen)
            await server.start()
            return server

        self.server = asyncio.run_coroutine_threadsafe(start(), self.loop).result(30)
        self.port = self.server.port
        self.admin_port = self.server.admin_port

    def stop(self, grace: float = 1.0) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(grace), self.loop).result(30 + grace)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
