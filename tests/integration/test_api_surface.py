"""The API as shipped: generated code current, every RPC handled, health and reflection served."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from teller.rpc.services import AdminServicer, PaymentServicer
from teller_client._proto.teller.v1 import admin_pb2, admin_pb2_grpc, payment_pb2, payment_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_current():
    result = subprocess.run([sys.executable, "scripts/gen_proto.py", "--check"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_stale_generated_code_is_detected(tmp_path):
    # The check really compares: a copy of the tree with one proto edited fails it.
    import shutil

    shutil.copytree(ROOT / "proto", tmp_path / "proto")
    shutil.copytree(ROOT / "clients" / "python" / "teller_client" / "_proto",
                    tmp_path / "clients" / "python" / "teller_client" / "_proto")
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "gen_proto.py", tmp_path / "scripts")
    with (tmp_path / "proto" / "teller" / "v1" / "common.proto").open("a") as fh:
        fh.write("\nmessage Added { string x = 1; }\n")
    result = subprocess.run([sys.executable, "scripts/gen_proto.py", "--check"], cwd=tmp_path,
                            capture_output=True, text=True)
    assert result.returncode == 1 and "stale" in result.stderr


@pytest.mark.parametrize(
    ("descriptor", "servicer", "base"),
    [
        (payment_pb2.DESCRIPTOR.services_by_name["PaymentService"], PaymentServicer,
         payment_pb2_grpc.PaymentServiceServicer),
        (admin_pb2.DESCRIPTOR.services_by_name["AdminService"], AdminServicer, admin_pb2_grpc.AdminServiceServicer),
    ],
)
def test_every_rpc_has_a_handler(descriptor, servicer, base):
    for method in descriptor.methods:
        impl = getattr(servicer, method.name)
        assert impl is not getattr(base, method.name), f"{descriptor.name}.{method.name} is not implemented"


def test_health_and_reflection(teller):
    with grpc.insecure_channel(teller.target) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for service in ("", "teller.v1.PaymentService", "teller.v1.AdminService"):
            resp = health.Check(health_pb2.HealthCheckRequest(service=service))
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"teller.v1.PaymentService", "teller.v1.AdminService", "grpc.health.v1.Health"} <= names
