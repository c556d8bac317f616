"""Observability: Prometheus metrics, request ids and trace ids in structured
JSON logs, and OpenTelemetry spans exported over OTLP when tracing is on.
Nothing here sees a key, a token or a proof: log records pass through a
redacting filter as a last line of defence.
"""

from __future__ import annotations

import contextvars
import functools
import json
import logging
import os
import re
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from opentelemetry import trace
from prometheus_client import Counter, Gauge, Histogram

from teller.errors import ConfigError

CALLS = Counter("teller_rpc_calls_total", "gRPC calls by method and status code", ["method", "code"])
LATENCY = Histogram("teller_rpc_latency_seconds", "gRPC call latency", ["method"],
                    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
SIGNATURES = Counter("teller_signatures_total", "Payment proofs signed", ["protocol", "scheme"])
SIGN_BATCH = Histogram("teller_sign_batch_size", "Sign calls committed together in one transaction",
                       buckets=(1, 2, 4, 8, 16, 32, 64, 128))
DENIALS = Counter("teller_denials_total", "Payments denied by policy, by reason", ["reason"])
BUDGET = Gauge("teller_budget_utilisation_ratio", "Share of a budget window used (spent + reserved) / limit",
               ["tenant", "scope", "window"])
RECONCILER_LAG = Gauge("teller_reconciler_lag_blocks", "Blocks between the chain head and the reconciler's cursor",
                       ["network"])
RECONCILER_LAST = Gauge("teller_reconciler_last_success_timestamp_seconds",
                        "When the reconciler last finished a network without error", ["network"])

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("teller_request_id", default="")
METHOD: contextvars.ContextVar[str] = contextvars.ContextVar("teller_method", default="")

#: Shapes of secrets that must never reach a log line.
_SECRETS = re.compile(r"tl[ro]_[A-Za-z0-9]+\.[A-Za-z0-9_\-]+|op_[A-Za-z0-9_\-]{12,}|\b(?:0x)?[0-9a-fA-F]{64}\b")


def redact(text: str) -> str:
    return _SECRETS.sub("[redacted]", text)


class ContextFilter(logging.Filter):
    """Adds the call's request id and method; redacts secret-shaped strings."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        record.rpc_method = METHOD.get()
        # The span this line was written in, so a log line leads to its trace.
        context = trace.get_current_span().get_span_context()
        record.trace_id = format(context.trace_id, "032x") if context.is_valid else ""
        record.span_id = format(context.span_id, "016x") if context.is_valid else ""
        if record.args:
            record.msg = record.getMessage()
            record.args = None
        record.msg = redact(str(record.msg))
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": round(record.created, 3), "level": record.levelname, "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in ("request_id", "rpc_method", "trace_id", "span_id"):
            value = getattr(record, key, "")
            if value:
                doc[key] = value
        if record.exc_info:
            doc["error"] = redact(self.formatException(record.exc_info))
        return json.dumps(doc, separators=(",", ":"))


def configure_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler()
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


@functools.lru_cache(maxsize=8192)
def child(metric: Any, *labels: str) -> Any:
    """A metric's child for these label values, looked up once (``labels()``
    validates and locks on every call, and Sign updates several per call)."""
    return metric.labels(*labels)


def record_call(method: str, code: str, seconds: float) -> None:
    child(CALLS, method, code).inc()
    child(LATENCY, method).observe(seconds)
    if _tracing_on:
        _end_span(code)


_GRPC_CODES = {name: number for number, name in enumerate((
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
    "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED",
    "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"))}
#: The codes that make a server span an error (OpenTelemetry's gRPC conventions):
#: a denial or a bad argument is the server doing its job.
_SERVER_ERRORS = frozenset({"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"})
_tracing_on = False


def _end_span(code: str) -> None:
    span = trace.get_current_span()
    if not span.is_recording():
        return
    if code in _GRPC_CODES:
        span.set_attribute("rpc.grpc.status_code", _GRPC_CODES[code])
    if code in _SERVER_ERRORS:
        span.set_status(trace.StatusCode.ERROR, code)


#: Calls that get no span: the kubelet's probes would be most of a trace store.
_UNTRACED_PREFIX = "/grpc.health.v1.Health/"


class Tracing:
    """A span per call when tracing is on (``Settings.tracing``), exported over
    OTLP/gRPC by the OpenTelemetry SDK, configured by the standard ``OTEL_*``
    variables (``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_TRACES_SAMPLER``, ...)."""

    def __init__(self, enabled: bool) -> None:
        self._provider: Any = None
        self._tracer: Any = None
        if enabled:
            global _tracing_on
            self._provider = tracer_provider()
            self._tracer = self._provider.get_tracer("teller")
            _tracing_on = True

    def span(self, method: str, request_id: str) -> AbstractContextManager[Any]:
        if self._tracer is None or method.startswith(_UNTRACED_PREFIX):
            return _NO_SPAN
        span: AbstractContextManager[Any] = self._tracer.start_as_current_span(
            method, kind=trace.SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.method": method, "teller.request_id": request_id},
            # The status comes from the call's gRPC code (record_call), not from
            # the abort that carries a denial out of the handler.
            record_exception=False, set_status_on_exception=False)
        return span

    def flush(self, timeout_ms: int = 5000) -> None:
        """Export the spans still queued (on shutdown)."""
        if self._provider is not None:
            self._provider.force_flush(timeout_ms)


def _check_exporter_settings(env: dict[str, str]) -> None:
    exporter = env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower()
    if exporter != "otlp":
        raise ConfigError(f"OTEL_TRACES_EXPORTER={exporter!r}: Teller exports traces over OTLP only")
    for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        protocol = env.get(name, "").strip().lower()
        if protocol and protocol != "grpc":
            raise ConfigError(f"{name}={protocol!r}: Teller's image exports OTLP over gRPC only (use 'grpc')")
        if protocol:
            break


@functools.cache
def tracer_provider() -> Any:
    """The process's SDK tracer provider: one already installed (by a test, or
    `opentelemetry-instrument`), else a new one with a batching OTLP exporter,
    installed globally so library spans and log lines share its trace ids."""
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider

    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        return current
    env = dict(os.environ)
    _check_exporter_settings(env)
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    named = "OTEL_SERVICE_NAME" in env or "service.name=" in env.get("OTEL_RESOURCE_ATTRIBUTES", "")
    provider = TracerProvider(resource=Resource.create({} if named else {SERVICE_NAME: "teller"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return provider


_NO_SPAN = nullcontext()


__all__ = ["BUDGET", "CALLS", "DENIALS", "LATENCY", "RECONCILER_LAG", "RECONCILER_LAST", "REQUEST_ID",
           "SIGNATURES", "SIGN_BATCH", "Tracing", "child", "configure_logging", "record_call", "redact",
           "tracer_provider"]
