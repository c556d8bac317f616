"""Load generator: N concurrent callers driving Sign over grpc.aio, in its own
process so it does not share an interpreter (or the GIL) with Teller.

Input (JSON on argv[1]): targets, callers, seconds, warmup, and a list of
jobs {token, wallet_id, headers, body, url}; callers take jobs round robin.
Output (JSON on stdout): calls, errors by code, throughput, latency percentiles.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import grpc

from teller_client._proto.teller.v1 import common_pb2, payment_pb2, payment_pb2_grpc


def sign_request(job: dict) -> payment_pb2.SignRequest:
    return payment_pb2.SignRequest(
        challenge=payment_pb2.Challenge(status=402, body=job["body"].encode("latin-1"), url=job["url"],
                                        headers=[common_pb2.Header(name=k, value=v) for k, v in job["headers"]]),
        wallet_id=job["wallet_id"])


async def main(spec: dict) -> dict:
    channels = [grpc.aio.insecure_channel(t) for t in spec["targets"]]
    stubs = [payment_pb2_grpc.PaymentServiceStub(c) for c in channels]
    jobs = [(sign_request(j), (("authorization", f"Bearer {j['token']}"),)) for j in spec["jobs"]]
    latencies: list[float] = []
    errors: dict[str, int] = {}
    measuring = False
    stop = False
    counter = 0

    async def caller(i: int) -> None:
        nonlocal counter
        stub = stubs[i % len(stubs)]
        while not stop:
            request, metadata = jobs[counter % len(jobs)]
            counter += 1
            started = time.perf_counter()
            try:
                await stub.Sign(request, metadata=metadata, timeout=30)
                ok = True
            except grpc.aio.AioRpcError as exc:
                ok = False
                if measuring:
                    errors[exc.code().name] = errors.get(exc.code().name, 0) + 1
            if measuring and ok:
                latencies.append(time.perf_counter() - started)

    tasks = [asyncio.create_task(caller(i)) for i in range(spec["callers"])]
    await asyncio.sleep(spec["warmup"])
    measuring = True
    t0 = time.perf_counter()
    await asyncio.sleep(spec["seconds"])
    measuring = False
    elapsed = time.perf_counter() - t0
    stop = True
    await asyncio.gather(*tasks)
    for c in channels:
        await c.close()
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000 if latencies else 0.0

    return {"calls": len(latencies), "errors": errors, "seconds": elapsed,
            "throughput": len(latencies) / elapsed, "p50_ms": pct(0.50), "p95_ms": pct(0.95), "p99_ms": pct(0.99)}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(json.loads(open(sys.argv[1]).read())))))
