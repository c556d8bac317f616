"""Prometheus metrics, structured JSON logs with request ids and no secrets,
and optional OpenTelemetry spans."""

from __future__ import annotations

import json
import urllib.request

import grpc
import pytest
from prometheus_client import REGISTRY

from teller_client import LimitExceeded, Policy
from teller_client._proto.teller.v1 import payment_pb2, payment_pb2_grpc
from testbed.procs import free_port, seat_tenant, start_cluster
from testbed.x402_server import sdk_v2_challenge
from tests.support.harness import RunningTeller, make_settings

SIGN = "/teller.v1.PaymentService/Sign"


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _sign(client, t, amount: str = "1000"):
    c = sdk_v2_challenge(amount=amount)
    return client.sign(status=c.status, headers=c.headers, body=c.body, url=c.url, wallet_id=t.wallet_id)


def test_metrics_count_calls_signatures_denials_and_budget_use(teller):
    t = teller.setup_tenant(policy=Policy(allow_unknown_assets=True, daily_budget=2500))
    client = teller.client(t.token)
    ok_before = _value("teller_rpc_calls_total", method=SIGN, code="OK")
    denied_before = _value("teller_rpc_calls_total", method=SIGN, code="RESOURCE_EXHAUSTED")
    sigs_before = _value("teller_signatures_total", protocol="x402", scheme="exact")
    budget_denials = _value("teller_denials_total", reason="budget_exhausted:day")
    _sign(client, t)
    _sign(client, t)
    with pytest.raises(LimitExceeded):
        _sign(client, t)
    assert _value("teller_rpc_calls_total", method=SIGN, code="OK") == ok_before + 2
    assert _value("teller_rpc_calls_total", method=SIGN, code="RESOURCE_EXHAUSTED") == denied_before + 1
    assert _value("teller_signatures_total", protocol="x402", scheme="exact") == sigs_before + 2
    assert _value("teller_denials_total", reason="budget_exhausted:day") == budget_denials + 1
    assert _value("teller_budget_utilisation_ratio", tenant=t.tenant_id, scope="tenant", window="day") == 0.8
    assert _value("teller_rpc_latency_seconds_count", method=SIGN) >= 3


@pytest.mark.postgres
def test_a_worker_serves_metrics_and_json_logs_with_request_ids_and_no_secrets(pg_url, tmp_path):
    metrics_port = free_port()
    cluster = start_cluster(pg_url, 1, tmp_path, TELLER_LOG_FORMAT="json", TELLER_LOG_LEVEL="INFO",
                            TELLER_METRICS_LISTEN=f"127.0.0.1:{metrics_port}")
    worker = cluster.workers[0]
    try:
        seat = seat_tenant(cluster, "observed")
        token = seat.token
        with grpc.insecure_channel(worker.target) as channel:
            stub = payment_pb2_grpc.PaymentServiceStub(channel)
            c = sdk_v2_challenge()
            request = payment_pb2.SignRequest(
                challenge=payment_pb2.Challenge(status=402, body=c.body, url=c.url,
                                                headers=[{"name": k, "value": v} for k, v in c.headers]),
                wallet_id=seat.wallet_id)
            # No policy yet: the tenant may pay nothing, so the call is denied and logged.
            with pytest.raises(grpc.RpcError) as info:
                stub.Sign(request, metadata=(("authorization", f"Bearer {token}"), ("x-request-id", "req-42")))
            assert dict(info.value.trailing_metadata())["x-request-id"] == "req-42"
            _, call = stub.ListWallets.with_call(payment_pb2.ListWalletsRequest(),
                                                 metadata=(("authorization", f"Bearer {token}"),))
            generated = dict(call.trailing_metadata())["x-request-id"]
            assert len(generated) == 32
        body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
        assert 'teller_rpc_calls_total{code="PERMISSION_DENIED",method="/teller.v1.PaymentService/Sign"} 1.0' in body
        assert "teller_rpc_latency_seconds_bucket" in body
    finally:
        cluster.stop()
    lines = [line for line in worker.log.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    tagged = [r for r in records if r.get("request_id") == "req-42"]
    assert tagged and tagged[0]["rpc_method"] == "/teller.v1.PaymentService/Sign"
    text = worker.log.read_text()
    assert token not in text and token.split(".")[1] not in text and cluster.admin_token not in text


def test_tracing_emits_a_span_per_call(tmp_path):
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    running = RunningTeller(make_settings(f"sqlite:///{tmp_path / 't.db'}", tmp_path, tracing=True))
    try:
        t = running.setup_tenant()
        _sign(running.client(t.token), t)
    finally:
        running.stop()
    spans = [s for s in exporter.get_finished_spans() if s.name == SIGN]
    assert len(spans) == 1
    assert spans[0].attributes["rpc.system"] == "grpc" and len(spans[0].attributes["teller.request_id"]) == 32


def test_redaction_of_secret_shaped_text():
    from teller.observe import redact

    assert redact("token tlr_abcd1234.s3cr3t-value and op_ABCDEFGHIJKLMNOP key " + "ab" * 32) == (
        "token [redacted] and [redacted] key [redacted]")
