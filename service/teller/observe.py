"""Observability: Prometheus metrics, request ids in structured JSON logs, and
optional OpenTelemetry spans. Nothing here sees a key, a token or a proof:
log records pass through a redacting filter as a last line of defence.
"""

from __future__ import annotations

import contextvars
import functools
import json
import logging
import re
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

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
        for key in ("request_id", "rpc_method"):
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


class Tracing:
    """OpenTelemetry spans per call when enabled and the API is installed;
    exporters come from the OpenTelemetry SDK's own configuration."""

    def __init__(self, enabled: bool) -> None:
        self._tracer: Any = None
        if enabled:
            try:
                from opentelemetry import trace
            except ImportError:  # pragma: no cover - optional dependency
                logging.getLogger("teller.observe").warning("tracing is on but opentelemetry is not installed")
            else:
                self._tracer = trace.get_tracer("teller")

    def span(self, method: str, request_id: str) -> AbstractContextManager[Any]:
        if self._tracer is None:
            return _NO_SPAN
        span: AbstractContextManager[Any] = self._tracer.start_as_current_span(
            method, attributes={"rpc.system": "grpc", "rpc.method": method, "teller.request_id": request_id})
        return span


_NO_SPAN = nullcontext()


__all__ = ["BUDGET", "CALLS", "DENIALS", "LATENCY", "RECONCILER_LAG", "RECONCILER_LAST", "REQUEST_ID",
           "SIGNATURES", "SIGN_BATCH", "Tracing", "child", "configure_logging", "record_call", "redact"]
