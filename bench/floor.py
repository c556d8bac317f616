"""The gRPC floor: what one worker's gRPC machinery alone costs per Sign call.

    python bench/floor.py PORT [ACCEPTORS]

Serves ``PaymentService/Sign`` the way a Teller worker does (grpc.aio on
uvloop, ``ACCEPTORS`` servers sharing the port, Teller's server options) but
answers every call with one fixed ``SignResponse`` the size of a real x402
answer: no token check, no parsing, no signature, no database. The benchmark
drives it with the same load as Teller; the gap between the two is Teller's
own work. Prints ``ready`` once listening; stops on SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import grpc

from teller.rpc.server import SERVER_OPTIONS, new_event_loop
from teller_client._proto.teller.v1 import common_pb2, payment_pb2, payment_pb2_grpc

#: As large as a real x402 answer: a ~1.4 KB PAYMENT-SIGNATURE header and its requirement.
ANSWER = payment_pb2.SignResponse(
    header_name="PAYMENT-SIGNATURE", header_value="e" * 1400, payment_id="0" * 36,
    requirement=common_pb2.Requirement(protocol="x402", version=2, scheme="exact", network="eip155:84532",
                                       asset="0x" + "0" * 40, amount="1000", pay_to="0x" + "0" * 40))


class FixedAnswer(payment_pb2_grpc.PaymentServiceServicer):
    async def Sign(self, request: payment_pb2.SignRequest,
                   context: grpc.aio.ServicerContext) -> payment_pb2.SignResponse:
        return ANSWER


async def serve(port: int, acceptors: int) -> None:
    servers = []
    servicer = FixedAnswer()
    for _ in range(acceptors):
        server = grpc.aio.server(options=SERVER_OPTIONS)
        payment_pb2_grpc.add_PaymentServiceServicer_to_server(servicer, server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        servers.append(server)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await asyncio.gather(*(s.stop(None) for s in servers))


def main() -> int:
    port = int(sys.argv[1])
    acceptors = int(sys.argv[2]) if len(sys.argv) > 2 else 32
    with asyncio.Runner(loop_factory=lambda: new_event_loop("uvloop")) as runner:
        runner.run(serve(port, acceptors))
    return 0


if __name__ == "__main__":
    sys.exit(main())
