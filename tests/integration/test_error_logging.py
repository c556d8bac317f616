"""How loud each failure is in the log: a caller's mistake INFO, a dependency
down WARNING, Teller's own INTERNAL failure ERROR (with its traceback)."""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest

from teller.errors import InvalidArgument, TellerError, Unavailable
from teller.rpc.interceptors import Guard, GuardedServer


def _serve_once(exc: Exception) -> grpc.StatusCode:
    async def main() -> grpc.StatusCode:
        async def fail(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            raise exc

        server = grpc.aio.server()
        handler = grpc.method_handlers_generic_handler(
            "test.Fails", {"Call": grpc.unary_unary_rpc_method_handler(fail, request_deserializer=bytes,
                                                                       response_serializer=bytes)})
        GuardedServer(server, Guard()).add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                call = channel.unary_unary("/test.Fails/Call", request_serializer=bytes, response_deserializer=bytes)
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await call(b"x")
                return info.value.code()
        finally:
            await server.stop(None)

    return asyncio.run(main())


@pytest.mark.parametrize(("exc", "code", "level"), [
    (TellerError("the vault answered nonsense"), grpc.StatusCode.INTERNAL, logging.ERROR),
    (RuntimeError("a bug"), grpc.StatusCode.INTERNAL, logging.ERROR),
    (Unavailable("database unavailable"), grpc.StatusCode.UNAVAILABLE, logging.WARNING),
    (InvalidArgument("challenge.body is not JSON"), grpc.StatusCode.INVALID_ARGUMENT, logging.INFO),
])
def test_failures_are_logged_at_their_weight(caplog, exc, code, level):
    caplog.set_level(logging.DEBUG, logger="teller.rpc")
    assert _serve_once(exc) == code
    (record,) = [r for r in caplog.records if r.name == "teller.rpc"]
    assert record.levelno == level, (record.levelname, record.getMessage())
    assert "/test.Fails/Call" in record.getMessage()
    assert (record.exc_info is not None) == (level == logging.ERROR)
