"""Building and running the grpc.aio server: services, health, reflection."""

from __future__ import annotations

import asyncio
import gc
import logging
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from teller.app import App
from teller.config import Settings
from teller.observe import Tracing
from teller.rpc.interceptors import Guard, GuardedServer
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


class Server:
    """A running Teller gRPC server bound to ``port`` (and ``admin_port`` when
    AdminService has its own address)."""

    def __init__(self, app: App, listen: str) -> None:
        self.app = app
        settings = app.settings
        self.pool = ThreadPoolExecutor(max_workers=max(4, settings.db_pool_size), thread_name_prefix="teller-db")
        options = [("grpc.max_receive_message_length", 4 * 1024 * 1024)]
        # Every service is registered through the guard (request ids, metrics,
        # spans, error mapping), wrapped once rather than intercepted per call.
        guard = Guard(Tracing(settings.tracing))
        self.grpc = grpc.aio.server(options=options)
        self.payments = PaymentServicer(app, self.pool)
        payment_pb2_grpc.add_PaymentServiceServicer_to_server(self.payments, GuardedServer(self.grpc, guard))
        self.admin_grpc = self.grpc
        if settings.admin_listen:
            self.admin_grpc = grpc.aio.server(options=options)
        admin_pb2_grpc.add_AdminServiceServicer_to_server(AdminServicer(app, self.pool),
                                                          GuardedServer(self.admin_grpc, guard))
        self.health = health.aio.HealthServicer()
        self._servers = [self.grpc] if self.admin_grpc is self.grpc else [self.grpc, self.admin_grpc]
        names = SERVICE_NAMES if self.admin_grpc is self.grpc else SERVICE_NAMES[:1]
        for server in self._servers:
            health_pb2_grpc.add_HealthServicer_to_server(self.health, GuardedServer(server, guard))
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            reflection.aio.ReflectionServicer((*names, health.SERVICE_NAME, reflection.SERVICE_NAME)),
            GuardedServer(self.grpc, guard))
        creds = credentials(settings)
        self.port = self._bind(self.grpc, listen, creds)
        self.admin_port = self.port if self.admin_grpc is self.grpc else self._bind(self.admin_grpc,
                                                                                    settings.admin_listen, creds)
        self._reconciling: asyncio.Task[None] | None = None

    @staticmethod
    def _bind(server: grpc.aio.Server, address: str, creds: grpc.ServerCredentials | None) -> int:
        port = server.add_secure_port(address, creds) if creds is not None else server.add_insecure_port(address)
        if port == 0:
            raise OSError(f"cannot bind {address}")
        return port

    async def start(self) -> None:
        for server in self._servers:
            await server.start()
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("teller listening on port %d", self.port)
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
        if self._reconciling is not None:
            self._reconciling.cancel()
        await asyncio.gather(*(server.stop(grace) for server in self._servers))
        await self.payments.close()
        self.pool.shutdown(wait=True)

    async def wait(self) -> None:
        await self.grpc.wait_for_termination()


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
    log.info("shutting down: no new calls; up to %.0fs for calls in flight", grace)
    await server.stop(grace)
    log.info("stopped")


class BackgroundServer:
    """A Server on its own event-loop thread, for the demo and for tests."""

    def __init__(self, app: App, listen: str) -> None:
        import threading

        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="teller-grpc", daemon=True)
        self._thread.start()

        async def start() -> Server:
            # grpc.aio servers bind to the loop they are created on.
            server = Server(app, listen)
            await server.start()
            return server

        self.server = asyncio.run_coroutine_threadsafe(start(), self._loop).result(30)
        self.port = self.server.port
        self.admin_port = self.server.admin_port

    def stop(self, grace: float = 1.0) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(grace), self._loop).result(30 + grace)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
