"""Hostile input against a real worker process: every dependency imported as in
production (one of them, py_ecc, raises the interpreter's recursion limit to
100,000 at import, so Python's own RecursionError never fires), and the worst
JSON a caller or a paid server can send through each entry point.

The worker must answer each call with a documented status (never INTERNAL,
never UNKNOWN), stay up, and its resident memory must grow by less than 64 MiB.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor

from teller_client._proto.teller.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    payment_pb2,
    payment_pb2_grpc,
)
from testbed.procs import Cluster, TenantSeat, seat_tenant, start_cluster
from testbed.x402_server import PAYEE, USDC_BASE_SEPOLIA

DEPTH = 100_000  # nested ~100,000 deep: under 256 KiB, and far past the C stack on recursion
MIB = 1024 * 1024

pytestmark = pytest.mark.slow


def deep(depth: int = DEPTH) -> str:
    return "[" * depth + "]" * depth


def b64(doc: str | bytes) -> str:
    return base64.b64encode(doc.encode() if isinstance(doc, str) else doc).decode()


def b64url(doc: str) -> str:
    return base64.urlsafe_b64encode(doc.encode()).decode().rstrip("=")


def v2_offer() -> dict:
    return {"scheme": "exact", "network": "eip155:84532", "amount": "1000", "asset": USDC_BASE_SEPOLIA,
            "payTo": PAYEE, "maxTimeoutSeconds": 60, "extra": {"name": "USDC", "version": "2"}}


def v2_challenge(**over: object) -> str:
    doc: dict = {"x402Version": 2, "resource": {"url": "http://127.0.0.1/paid"}, "accepts": [v2_offer()]}
    doc.update(over)
    return json.dumps(doc)


def mpp_request(**over: object) -> str:
    doc: dict = {"amount": "1000", "currency": "0x20c0000000000000000000000000000000000000",
                 "recipient": PAYEE, "methodDetails": {"chainId": 31337}}
    doc.update(over)
    return json.dumps(doc)


def mpp_header(request: str, **params: str) -> str:
    extra = "".join(f', {k}="{v}"' for k, v in params.items())
    return (f'Payment id="c1", realm="api.example", method="tempo", intent="charge", '
            f'request="{request}"{extra}')


def vmrss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


# -- a paid API that answers with hostile JSON -----------------------------------

class _Hostile(BaseHTTPRequestHandler):
    """Routes: /deep-402 (a 402 whose x402 body is nested 100,000 deep);
    /digits-402 (a 402 body with a 5,000-digit number); /surrogate-402 (a valid
    challenge whose resource holds a lone surrogate); /paid-* (a valid x402
    challenge; the paid retry gets a hostile answer)."""

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        path = self.path
        paid = self.headers.get("PAYMENT-SIGNATURE") is not None
        if path == "/deep-402":
            self._send(402, ('{"x402Version": 1, "accepts": ' + deep() + "}").encode())
        elif path == "/digits-402":
            self._send(402, ('{"x402Version": 1' + "1" * 5000 + ', "accepts": []}').encode())
        elif path == "/surrogate-402":
            doc = v2_challenge(resource={"url": "http://127.0.0.1/x", "description": "\\ud800"})
            self._send(402, b"{}", {"PAYMENT-REQUIRED": b64(doc.replace('"\\\\ud800"', '"\\ud800"'))})
        elif not paid:
            self._send(402, b"{}", {"PAYMENT-REQUIRED": b64(v2_challenge())})
        elif path == "/paid-deep-refusal":
            self._send(402, ('{"error": "no", "x402Version": 1, "accepts": ' + deep() + "}").encode())
        elif path == "/paid-ok":
            self._send(200, b"ok")
        elif path == "/paid-deep-receipt":
            # Header sizes are capped by the HTTP client (16 KiB), so this is as deep as a header gets.
            self._send(200, b"ok", {"PAYMENT-RESPONSE": b64("[" * 11_000)})
        else:
            self._send(404, b"")


@pytest.fixture(scope="module")
def hostile() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hostile)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@dataclass
class Worker:
    cluster: Cluster
    seat: TenantSeat
    channel: grpc.Channel

    @property
    def pid(self) -> int:
        return self.cluster.workers[0].proc.pid

    def alive(self) -> bool:
        return self.cluster.workers[0].proc.poll() is None

    def log(self) -> str:
        return self.cluster.workers[0].log.read_text()[-3000:]

    def payment(self) -> payment_pb2_grpc.PaymentServiceStub:
        return payment_pb2_grpc.PaymentServiceStub(self.channel)

    def admin(self) -> admin_pb2_grpc.AdminServiceStub:
        return admin_pb2_grpc.AdminServiceStub(self.channel)

    def tenant_md(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.seat.token}"),)

    def admin_md(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.cluster.admin_token}"),)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def worker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Worker]:
    db_url = (f"sqlite:///{tmp_path / 't.db'}" if request.param == "sqlite"
              else request.getfixturevalue("pg_url"))
    cluster = start_cluster(db_url, 1, tmp_path, TELLER_OUTBOUND_ALLOW="127.0.0.1")
    try:
        seat = seat_tenant(cluster, "hostile", {"allow_unknown_assets": True})
        with grpc.insecure_channel(cluster.workers[0].target,
                                   options=[("grpc.max_send_message_length", 8 * MIB)]) as channel:
            yield Worker(cluster, seat, channel)
    finally:
        cluster.stop()


def answer(w: Worker, call, request, metadata, *, stream: bool = False) -> grpc.StatusCode:
    """The status the worker answers ``request`` with (OK when it succeeds)."""
    try:
        result = call(request, metadata=metadata, timeout=60)
        if stream:
            list(result)
    except grpc.RpcError as err:
        code = err.code()
        assert w.alive(), f"worker died on this input:\n{w.log()}"
        assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), \
            f"{code.name}: {err.details()}\n{w.log()}"
        return code
    assert w.alive()
    return grpc.StatusCode.OK


def sign_request(w: Worker, headers: list[tuple[str, str]] = (), body: bytes = b"", **kw: str) -> payment_pb2.SignRequest:
    return payment_pb2.SignRequest(
        challenge=payment_pb2.Challenge(status=402, headers=[common_pb2.Header(name=k, value=v) for k, v in headers],
                                        body=body, url="http://127.0.0.1/paid", method="GET"),
        wallet_id=w.seat.wallet_id, **kw)


def hostile_sign_inputs(w: Worker) -> dict[str, payment_pb2.SignRequest]:
    digits = "1" * 5000
    surrogate = v2_challenge(resource={"url": "http://127.0.0.1/x", "description": "\\ud800"})
    surrogate = surrogate.replace('"\\\\ud800"', '"\\ud800"')  # json.dumps escaped the backslash: undo it
    many = v2_challenge(extensions={"bulk": [0] * 60_000})
    return {
        "x402 body nested 100,000 deep": sign_request(w, body=('{"x402Version": 1, "accepts": ' + deep() + "}").encode()),
        "PAYMENT-REQUIRED nested 100,000 deep": sign_request(w, [("PAYMENT-REQUIRED", b64("[" * DEPTH))]),
        "x402 body with a 5,000-digit number": sign_request(w, body=('{"x402Version": ' + digits + "}").encode()),
        "PAYMENT-REQUIRED with a 5,000-digit number": sign_request(
            w, [("PAYMENT-REQUIRED", b64('{"x402Version": 2, "accepts": [' + digits + "]}"))]),
        "PAYMENT-REQUIRED with a lone surrogate": sign_request(w, [("PAYMENT-REQUIRED", b64(surrogate))]),
        "PAYMENT-REQUIRED with 60,000 values": sign_request(w, [("PAYMENT-REQUIRED", b64(many))]),
        "MPP request nested 100,000 deep": sign_request(
            w, [("WWW-Authenticate", mpp_header(b64url("[" * DEPTH)))]),
        "MPP request with a 5,000-digit number": sign_request(
            w, [("WWW-Authenticate", mpp_header(b64url(mpp_request(amount=0).replace("0", digits, 1))))]),
        "MPP request with a lone surrogate": sign_request(
            w, [("WWW-Authenticate", mpp_header(b64url(mpp_request(description="\\ud800").replace(
                '"\\\\ud800"', '"\\ud800"'))))]),
        "MPP opaque nested 100,000 deep": sign_request(
            w, [("WWW-Authenticate", mpp_header(b64url(mpp_request()), opaque=b64url("{" * 1 + '"a":' + "[" * DEPTH)))]),
        "max_amount of 5,000 digits": sign_request(
            w, [("PAYMENT-REQUIRED", b64(v2_challenge()))], max_amount=digits),
        "max_amount of Unicode digits": sign_request(
            w, [("PAYMENT-REQUIRED", b64(v2_challenge()))], max_amount="\u0661\u0662"),
    }


def test_worker_survives_hostile_json_through_every_entry_point(worker: Worker, hostile: str) -> None:
    w = worker
    # Warm up: the first Sign loads code and fills caches that are not growth.
    assert answer(w, w.payment().Sign, sign_request(w, [("PAYMENT-REQUIRED", b64(v2_challenge()))]),
                  w.tenant_md()) == grpc.StatusCode.OK
    before = vmrss(w.pid)

    seen: dict[str, grpc.StatusCode] = {}
    for name, request in hostile_sign_inputs(w).items():
        seen[f"Sign: {name}"] = answer(w, w.payment().Sign, request, w.tenant_md())

    admin, md = w.admin(), w.admin_md()
    for name, doc in {
        "nested 100,000 deep": '{"budgets": ' + deep() + "}",
        "open 100,000 deep": "[" * DEPTH,
        "a 5,000-digit amount": '{"per_payment_max": ' + "9" * 5000 + "}",
        "a 5,000-digit rolling window": '{"budgets": [{"name": "b", "limit": "1", "kind": "rolling", '
                                        '"window": "' + "9" * 5000 + 'd"}]}',
        "a lone surrogate": '{"hosts": {"allow": ["\\ud800.example"]}}',
    }.items():
        policy = admin_pb2.SpendPolicy(tenant_id=w.seat.tenant_id, document_json=doc)
        seen[f"SetPolicy: {name}"] = answer(w, admin.SetPolicy, admin_pb2.SetPolicyRequest(policy=policy), md)

    for name, token in {"5,000 digits": "9" * 5000, "Unicode digits": "\u0661\u0662",
                        "past int64": "9" * 30}.items():
        seen[f"ListAuditEvents page_token {name}"] = answer(
            w, w.payment().ListAuditEvents, common_pb2.ListAuditEventsRequest(page_token=token), w.tenant_md())
        seen[f"ListPayments page_token {name}"] = answer(
            w, admin.ListPayments, admin_pb2.ListPaymentsRequest(tenant_id=w.seat.tenant_id,
                                                                 page_token=f"{token}:x"), md)

    for path in ("/deep-402", "/digits-402", "/surrogate-402", "/paid-deep-refusal", "/paid-deep-receipt"):
        request = payment_pb2.PayRequest(url=hostile + path, method="GET", wallet_id=w.seat.wallet_id)
        seen[f"Pay {path}"] = answer(w, w.payment().Pay, request, w.tenant_md(), stream=True)

    assert w.alive()
    grown = vmrss(w.pid) - before
    print(f"worker VmRSS {before / MIB:.1f} MiB before, grew by {grown / MIB:.1f} MiB over {len(seen)} hostile calls")
    assert grown < 64 * MIB, f"resident memory grew by {grown / MIB:.1f} MiB"

    # Hostile JSON from the caller is the caller's fault (INVALID_ARGUMENT); a
    # paid server's hostile refusal is FAILED_PRECONDITION (paid, refused again).
    # Its hostile receipt on a 200 is only unread: the caller paid, so it gets the
    # response (the reconciler follows the payment on chain).
    expected = {name: grpc.StatusCode.INVALID_ARGUMENT for name in seen}
    expected["Pay /paid-deep-refusal"] = grpc.StatusCode.FAILED_PRECONDITION
    expected["Pay /paid-deep-receipt"] = grpc.StatusCode.OK
    assert seen == expected


# -- every RPC, every field --------------------------------------------------------

HOSTILE_STRINGS = (
    "", " ", "9" * 5000, "\u0661\u0662", "-1", "9" * 30, "9" * 30 + ":x", "a" * 70_000,
    "\u202e\u00e9\U0001f600", "../../etc/passwd", "eip155:" + "9" * 100, "[" * 50_000, b64("[" * 50_000),
    "' OR 1=1 --", "%s%n{0}", "0x" + "f" * 64, "\\ud800",
)
HOSTILE_BYTES = (b"", b"\xff\xfe", ("[" * DEPTH).encode(), b'{"x402Version": ' + b"1" * 5000 + b"}",
                 b'{"x402Version": 2, "accepts": [{"amount": "\\ud800"}]}')
HOSTILE_INTS = {"int32": (-1, -(2**31), 2**31 - 1), "int64": (-1, -(2**63), 2**63 - 1)}
HOSTILE_AUTH = ("", "Bearer", "Bearer " + "9" * 5000, "Basic YTpi", "Bearer tlr_x.y", "Bearer tlr_" + "9" * 5000 + ".z",
                "bearer   ")
#: A caller's own Pay headers, beyond the generic sweep's one-field mutations. What
#: Teller cannot send as it is is the caller's mistake (INVALID_ARGUMENT), never
#: sent to be split in two or refused by the HTTP layer (an UNAVAILABLE that invites
#: a retry); what it can send, it sends.
_BAD, _SENT = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OK
HOSTILE_HEADERS: dict[str, tuple[list[tuple[str, str]], grpc.StatusCode]] = {
    "CRLF in a value": ([("X-Note", "a\r\nX-Injected: 1")], _BAD),
    "a bare CR in a value": ([("X-Note", "a\rb")], _BAD),
    "a bare LF in a value": ([("X-Note", "a\nb")], _BAD),
    "CRLF in a name": ([("X-Bad\r\nX-Injected", "1")], _BAD),
    "CRLF CRLF (a body) in a value": ([("X-Note", "a\r\n\r\nGET /admin HTTP/1.1")], _BAD),
    "NUL in a value": ([("X-Note", "a\x00b")], _BAD),
    "NUL in a name": ([("X-Nul\x00", "1")], _BAD),
    "non-ASCII value": ([("X-Note", "caf\u00e9")], _BAD),
    "non-ASCII name": ([("X-\u00fcber", "1")], _BAD),
    "RTL override and an emoji": ([("X-Note", "\u202e\U0001f600")], _BAD),
    "a full-width colon in a name": ([("X-Note\uff1a", "1")], _BAD),
    "DEL in a value": ([("X-Note", "a\x7fb")], _BAD),
    "a vertical tab in a value": ([("X-Note", "a\x0bb")], _BAD),
    "a leading space": ([("X-Note", " a")], _BAD),
    "a trailing tab": ([("X-Note", "a\t")], _BAD),
    "a value of spaces": ([("X-Note", "   ")], _BAD),
    "an empty name": ([("", "1")], _BAD),
    "a colon in a name": ([("X-Note:", "1")], _BAD),
    "a space in a name": ([("X Note", "1")], _BAD),
    "a 70,000-byte value": ([("X-Note", "v" * 70_000)], _BAD),
    "a 70,000-byte name": ([("X" * 70_000, "1")], _BAD),
    "101 headers": ([(f"X-H{i}", "1") for i in range(101)], _BAD),
    "10,000 headers": ([(f"X-H{i}", "1") for i in range(10_000)], _BAD),
    "Host": ([("Host", "evil.example")], _BAD),
    "Content-Length": ([("Content-Length", "0")], _BAD),
    "Transfer-Encoding": ([("Transfer-Encoding", "chunked")], _BAD),
    "a tab inside a value": ([("X-Note", "a\tb")], _SENT),
    "an empty value": ([("X-Note", "")], _SENT),
    "one name twice": ([("X-Note", "a"), ("x-note", "b")], _SENT),
    "a 30,000-byte value": ([("X-Note", "v" * 30_000)], _SENT),
    "60 headers": ([(f"X-H{i}", "1") for i in range(60)], _SENT),
}
NO_CHANNEL = "00000000-0000-0000-0000-000000000000"


def documented_statuses() -> dict[str, set[str]]:
    """RPC -> the statuses docs/errors.md says it answers bad input with
    (its own row plus the "every RPC" row)."""
    rows: dict[str, set[str]] = {}
    doc = (Path(__file__).resolve().parents[2] / "docs" / "errors.md").read_text()
    section = doc.split("## Statuses by RPC", 1)[1].split("\n## ", 1)[0]
    for line in section.splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and (cells[0] == "every RPC" or "Service." in cells[0]):
            rows[cells[0]] = set(re.findall(r"\b[A-Z][A-Z_]+[A-Z]\b", cells[1]))
    common = rows.pop("every RPC")
    return {rpc: codes | common for rpc, codes in rows.items()}


def _build(descriptor, fields: dict):
    """A request message of ``descriptor`` from plain values (nested messages as dicts)."""
    msg = message_factory.GetMessageClass(descriptor)()
    for name, value in fields.items():
        fd = descriptor.fields_by_name[name]
        if fd.type == FieldDescriptor.TYPE_MESSAGE:
            if fd.is_repeated:
                for item in value:
                    getattr(msg, name).add().CopyFrom(_build(fd.message_type, item))
            else:
                getattr(msg, name).CopyFrom(_build(fd.message_type, value))
        elif fd.is_repeated:
            getattr(msg, name).extend(value)
        else:
            setattr(msg, name, value)
    return msg


def _hostile_values(fd) -> tuple:
    t = fd.type
    if t == FieldDescriptor.TYPE_STRING:
        return HOSTILE_STRINGS
    if t == FieldDescriptor.TYPE_BYTES:
        return HOSTILE_BYTES
    if t in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_ENUM):
        return HOSTILE_INTS["int32"]
    if t in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64):
        return HOSTILE_INTS["int64"]
    if t == FieldDescriptor.TYPE_BOOL:
        return (True, False)
    raise AssertionError(f"no hostile values for field type {t} ({fd.full_name}): add some")


def _mutations(descriptor, baseline: dict):
    """(what, fields): the baseline with one field (at any depth) made hostile."""
    for fd in descriptor.fields:
        if fd.type == FieldDescriptor.TYPE_MESSAGE:
            base = baseline.get(fd.name)
            base_item = (base[0] if base else {}) if fd.is_repeated else (base or {})
            for what, item in _mutations(fd.message_type, base_item):
                yield f"{fd.name}.{what}", {**baseline, fd.name: [item] if fd.is_repeated else item}
            continue
        for v in _hostile_values(fd):
            yield f"{fd.name}={v!r:.40}", {**baseline, fd.name: [v] if fd.is_repeated else v}


def _baselines(w: Worker, hostile: str, victim: TenantSeat, payment_id: str, token_id: str) -> dict[str, dict]:
    """A valid request for each RPC; the destructive ones aim at the victim tenant."""
    t, wallet = w.seat.tenant_id, w.seat.wallet_id
    challenge = {"status": 402, "headers": [{"name": "PAYMENT-REQUIRED", "value": b64(v2_challenge())}],
                 "body": b"", "url": "http://127.0.0.1/paid", "method": "GET"}
    return {
        "PaymentService.Sign": {"challenge": challenge, "wallet_id": wallet, "max_amount": "5000",
                                "idempotency_key": ""},
        "PaymentService.Pay": {"url": hostile + "/paid-ok", "method": "GET", "wallet_id": wallet,
                               "max_amount": "5000", "body": b"", "headers": [{"name": "X-Request-Id", "value": "sweep"}],
                               "protocols": ["x402"]},
        "PaymentService.RecordOutcome": {"payment_id": payment_id, "status": 200,
                                         "headers": [{"name": "PAYMENT-RESPONSE", "value": b64("{}")}], "body": b""},
        "PaymentService.GetPayment": {"payment_id": payment_id},
        "PaymentService.ListWallets": {},
        "PaymentService.GetSpend": {"wallet_id": wallet},
        "PaymentService.ListAuditEvents": {"filter": {"tenant_id": t}, "page_size": 10, "page_token": ""},
        "PaymentService.ListChannels": {"state": "open", "page_size": 10, "page_token": ""},
        # No channel is open on this worker: the id is NOT_FOUND, and the paging fields are
        # checked before the lookup, so their hostile values still reach their parsers.
        "PaymentService.GetChannelVouchers": {"id": NO_CHANNEL, "page_size": 10, "page_token": ""},
        # The same: NOT_FOUND, after the url is checked.
        "PaymentService.CloseChannel": {"id": NO_CHANNEL, "url": hostile + "/paid-ok"},
        "AdminService.CreateTenant": {"name": "sweep"},
        "AdminService.DisableTenant": {"tenant_id": victim.tenant_id},
        "AdminService.ListTenants": {},
        "AdminService.IssueToken": {"tenant_id": t, "description": "sweep"},
        "AdminService.RevokeToken": {"token_id": token_id},
        "AdminService.CreateWallet": {"tenant_id": t, "label": "sweep"},
        "AdminService.ImportWallet": {"tenant_id": t, "label": "sweep", "private_key": "0x" + "11" * 32},
        "AdminService.ListWallets": {"tenant_id": t},
        "AdminService.SetPolicy": {"policy": {"tenant_id": victim.tenant_id, "wallet_id": "",
                                              "document_json": '{"allow_unknown_assets": true}'}},
        "AdminService.GetPolicy": {"tenant_id": t, "wallet_id": ""},
        "AdminService.SetFrozen": {"tenant_id": victim.tenant_id, "wallet_id": "", "frozen": True, "reason": "x"},
        "AdminService.GetSpend": {"tenant_id": t, "wallet_id": ""},
        "AdminService.ListAuditEvents": {"filter": {"tenant_id": t}, "page_size": 10, "page_token": ""},
        "AdminService.GetPayment": {"payment_id": payment_id},
        "AdminService.ListPayments": {"tenant_id": t, "state": "", "page_size": 10, "page_token": ""},
        "AdminService.VoidPayment": {"payment_id": payment_id, "reason": "sweep"},
        "AdminService.Reconcile": {},
        "AdminService.ListChannels": {"tenant_id": t, "state": "open", "page_size": 10, "page_token": ""},
        "AdminService.GetChannelVouchers": {"tenant_id": t, "id": NO_CHANNEL, "page_size": 10, "page_token": ""},
        "AdminService.CloseChannel": {"tenant_id": t, "id": NO_CHANNEL, "force": True},
        "AdminService.EnableTenant": {"tenant_id": victim.tenant_id},
        "AdminService.ListTokens": {"tenant_id": t},
        "AdminService.RotateToken": {"token_id": token_id},
        "AdminService.DisableWallet": {"tenant_id": victim.tenant_id, "wallet_id": victim.wallet_id},
        "AdminService.CreateOperator": {"name": "sweep"},
        "AdminService.ListOperators": {},
        "AdminService.RevokeOperator": {"name": "sweep-nobody"},
    }


def _serialize(message) -> bytes:
    return message.SerializeToString()


def test_every_rpc_answers_hostile_fields_with_a_documented_status(worker: Worker, hostile: str) -> None:
    w = worker
    documented = documented_statuses()
    victim = seat_tenant(w.cluster, "victim", {"allow_unknown_assets": True})
    signed = payment_pb2.SignResponse.FromString(w.channel.unary_unary(
        "/teller.v1.PaymentService/Sign", request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=lambda b: b)(sign_request(w, [("PAYMENT-REQUIRED", b64(v2_challenge()))]),
                                           metadata=w.tenant_md(), timeout=60))
    issued = w.admin().IssueToken(admin_pb2.IssueTokenRequest(tenant_id=victim.tenant_id), metadata=w.admin_md())
    baselines = _baselines(w, hostile, victim, signed.payment_id, issued.token_id)
    services = [payment_pb2.DESCRIPTOR.services_by_name["PaymentService"],
                admin_pb2.DESCRIPTOR.services_by_name["AdminService"]]
    every = {f"{s.name}.{m.name}" for s in services for m in s.methods}
    assert set(baselines) == every, "a new RPC needs a baseline here (and a row in docs/errors.md)"
    assert set(documented) == every, "docs/errors.md must list every RPC"

    unexpected: list[str] = []
    calls = 0
    for service in services:
        for method in service.methods:
            rpc = f"{service.name}.{method.name}"
            md = w.tenant_md() if service.name == "PaymentService" else w.admin_md()
            path = f"/{service.full_name}/{method.name}"
            ser = _serialize
            call = (w.channel.unary_stream(path, request_serializer=ser, response_deserializer=lambda b: b)
                    if method.server_streaming else
                    w.channel.unary_unary(path, request_serializer=ser, response_deserializer=lambda b: b))
            # (what, request fields, metadata, the one status it must get, when there is one)
            cases = [(f"authorization {a[:20]!r}", baselines[rpc], (("authorization", a),), None)
                     for a in HOSTILE_AUTH]
            cases += [(what, fields, md, None) for what, fields in _mutations(method.input_type, baselines[rpc])]
            if rpc == "PaymentService.Pay":
                cases += [(f"headers: {what}", {**baselines[rpc], "headers": [{"name": k, "value": v} for k, v in hs]},
                           md, status) for what, (hs, status) in HOSTILE_HEADERS.items()]
            for what, fields, metadata, must in cases:
                calls += 1
                try:
                    code = answer(w, call, _build(method.input_type, fields), metadata,
                                  stream=method.server_streaming)
                except AssertionError as exc:
                    assert w.alive(), str(exc)
                    unexpected.append(f"{rpc} {what}: {str(exc)[:300]}")
                    continue
                if code != grpc.StatusCode.OK and code.name not in documented[rpc]:
                    unexpected.append(f"{rpc} {what}: {code.name}")
                if must is not None and code != must:
                    unexpected.append(f"{rpc} {what}: {code.name}, not {must.name}")
    assert w.alive()
    assert calls > 500
    assert not unexpected, ("answers docs/errors.md does not list, or not the one a case must get:\n"
                            + "\n".join(unexpected))

    # An error quoting a huge input still reaches the caller as itself (its message
    # cut to fit the trailing metadata), not as gRPC's RESOURCE_EXHAUSTED.
    with pytest.raises(grpc.RpcError) as err:
        w.payment().GetPayment(common_pb2.GetPaymentRequest(payment_id="a" * 70_000), metadata=w.tenant_md())
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert 100 < len(err.value.details()) <= 1000 and err.value.details().endswith("...")
