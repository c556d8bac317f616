"""The one place domain errors become gRPC statuses.

Each ``TellerError`` becomes its status code with a google.rpc.Status whose
details carry an ``ErrorInfo`` (reason, domain, metadata such as the limit
and what is left). Anything else is logged and answered as INTERNAL without
its text, so no exception message can leak data to a caller.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from teller.errors import TellerError

log = logging.getLogger("teller.rpc")
DOMAIN = "teller.v1"


def to_status(err: TellerError) -> grpc.Status:
    info = error_details_pb2.ErrorInfo(reason=err.reason, domain=DOMAIN, metadata=err.metadata)
    detail = any_pb2.Any()
    detail.Pack(info)
    return rpc_status.to_status(status_pb2.Status(code=err.code.value[0], message=err.message, details=[detail]))


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary
        method = handler_call_details.method

        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await inner(request, context)
            except TellerError as err:
                log.info("rpc %s -> %s %s", method, err.code.name, err.reason)
                await context.abort_with_status(to_status(err))
            except grpc.aio.AbortError:
                raise
            except Exception:
                log.exception("rpc %s failed", method)
                await context.abort(grpc.StatusCode.INTERNAL, "internal error")

        return grpc.unary_unary_rpc_method_handler(
            guarded,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
