"""Tracing that really leaves the worker: a `teller serve` process with
TELLER_TRACING on exports its spans over OTLP/gRPC to a collector listening on
loopback in this test, and its log lines carry the same trace ids.

(Before, tracing on meant spans from the OpenTelemetry API alone, with no SDK
and no exporter in the image: nothing was recorded anywhere.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from concurrent import futures

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from teller_client._proto.teller.v1 import payment_pb2, payment_pb2_grpc
from testbed.procs import free_port, seat_tenant, start_cluster
from testbed.x402_server import sdk_v2_challenge

SIGN = "/teller.v1.PaymentService/Sign"


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP trace receiver: what an OpenTelemetry Collector's otlp receiver accepts."""

    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.lock = threading.Lock()

    def Export(self, request, context):
        with self.lock:
            self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self) -> list[tuple[dict[str, str], object]]:
        """(resource attributes, span) for every span received."""
        out = []
        with self.lock:
            for request in self.requests:
                for rs in request.resource_spans:
                    resource = {a.key: a.value.string_value for a in rs.resource.attributes}
                    out.extend((resource, span) for ss in rs.scope_spans for span in ss.spans)
        return out


@pytest.fixture
def collector():
    servicer = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, port
    server.stop(0)


def test_a_worker_exports_its_spans_over_otlp_and_logs_their_trace_ids(tmp_path, collector):
    received, port = collector
    cluster = start_cluster(
        f"sqlite:///{tmp_path / 'teller.db'}", 1, tmp_path, TELLER_TRACING="true", TELLER_LOG_FORMAT="json",
        TELLER_LOG_LEVEL="INFO", OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
        OTEL_BSP_SCHEDULE_DELAY="100")
    worker = cluster.workers[0]
    try:
        seat = seat_tenant(cluster, "traced")
        c = sdk_v2_challenge()
        request = payment_pb2.SignRequest(
            challenge=payment_pb2.Challenge(status=402, body=c.body, url=c.url,
                                            headers=[{"name": k, "value": v} for k, v in c.headers]),
            wallet_id=seat.wallet_id)
        with grpc.insecure_channel(worker.target) as channel:
            # No policy yet: denied, and the denial is logged inside the call's span.
            with pytest.raises(grpc.RpcError) as info:
                payment_pb2_grpc.PaymentServiceStub(channel).Sign(
                    request, metadata=(("authorization", f"Bearer {seat.token}"), ("x-request-id", "trace-me")))
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        deadline = time.monotonic() + 20
        while not [s for _, s in received.spans() if s.name == SIGN] and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        cluster.stop()
    spans = received.spans()
    signs = [(resource, s) for resource, s in spans if s.name == SIGN]
    assert len(signs) == 1, [s.name for _, s in spans]
    resource, span = signs[0]
    assert resource["service.name"] == "teller"
    attributes = {a.key: a.value.string_value for a in span.attributes}
    assert attributes["teller.request_id"] == "trace-me" and attributes["rpc.method"] == SIGN
    assert span.kind == span.SPAN_KIND_SERVER
    # A denial is the server doing its job: its code is on the span, not an error status.
    codes = {a.key: a.value.int_value for a in span.attributes if a.key == "rpc.grpc.status_code"}
    assert codes == {"rpc.grpc.status_code": grpc.StatusCode.PERMISSION_DENIED.value[0]}
    assert span.status.code == span.status.STATUS_CODE_UNSET
    assert span.end_time_unix_nano > span.start_time_unix_nano
    # The operator's calls were traced too; the kubelet-style health checks were not.
    names = {s.name for _, s in spans}
    assert "/teller.v1.AdminService/CreateTenant" in names
    assert not [n for n in names if n.startswith("/grpc.health")]
    records = [json.loads(line) for line in worker.log.read_text().splitlines() if line.strip()]
    (denial,) = [r for r in records if r.get("request_id") == "trace-me"]
    assert denial["trace_id"] == span.trace_id.hex() and denial["span_id"] == span.span_id.hex()


def test_an_exporter_protocol_the_image_lacks_is_refused_at_start(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TELLER_", "OTEL_"))}
    env.update(TELLER_TRACING="true", OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf")
    done = subprocess.run([sys.executable, "-m", "teller.cli", "serve", "--dev", "--data-dir", str(tmp_path),
                           "--listen", f"127.0.0.1:{free_port()}"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "OTEL_EXPORTER_OTLP_PROTOCOL='http/protobuf'" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(("code", "error"), [("OK", False), ("PERMISSION_DENIED", False),
                                              ("RESOURCE_EXHAUSTED", False), ("INVALID_ARGUMENT", False),
                                              ("INTERNAL", True), ("UNAVAILABLE", True)])
def test_a_calls_span_is_an_error_only_for_server_errors(monkeypatch, code, error):
    """OpenTelemetry's gRPC conventions for server spans: INTERNAL, UNAVAILABLE,
    ... are errors; a denial or a bad argument is an answer."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import StatusCode

    from teller import observe

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(observe, "_tracing_on", True)
    with provider.get_tracer("test").start_as_current_span("call", set_status_on_exception=False):
        observe.record_call("/test.Service/Method", code, 0.001)
    (span,) = exporter.get_finished_spans()
    assert span.attributes["rpc.grpc.status_code"] == getattr(grpc.StatusCode, code).value[0]
    assert span.status.status_code == (StatusCode.ERROR if error else StatusCode.UNSET)
