"""Tenants see and use only their own things; operators and tenants hold different credentials."""

from __future__ import annotations

import grpc
import pytest

from teller_client import (
    AdminClient,
    NotFound,
    PermissionDenied,
    TellerClient,
    Unauthenticated,
)
from testbed.x402_server import sdk_v2_challenge


def _sign(client, wallet_id):
    chall = sdk_v2_challenge()
    return client.sign(status=402, headers=chall.headers, body=chall.body, url=chall.url, wallet_id=wallet_id)


def test_tenant_cannot_use_another_tenants_wallet(teller):
    a, b = teller.setup_tenant(), teller.setup_tenant()
    with pytest.raises(NotFound):
        _sign(teller.client(b.token), a.wallet_id)
    # The refusal is audited neither as a signature nor against tenant A.
    events, _ = teller.admin().audit_events(tenant_id=a.tenant_id, action="payment.sign")
    assert events == []


def test_tenant_sees_only_its_own_wallets_spend_and_audit(teller):
    a, b = teller.setup_tenant(), teller.setup_tenant()
    _sign(teller.client(a.token), a.wallet_id)
    client_b = teller.client(b.token)
    assert [w.id for w in client_b.list_wallets()] == [b.wallet_id]
    assert client_b.spend() == []  # no budgets configured
    events, _ = client_b.audit_events(page_size=1000)
    assert events and {e.tenant_id for e in events} == {b.tenant_id}
    with pytest.raises(PermissionDenied):
        client_b.audit_events(tenant_id=a.tenant_id)
    mine, _ = teller.client(a.token).audit_events(action="payment.sign")
    assert len(mine) == 1 and mine[0].wallet_id == a.wallet_id


@pytest.mark.parametrize("token", ["", "garbage", "tlr_deadbeef.nope", "Bearer"])
def test_bad_tokens_are_unauthenticated(teller, token):
    t = teller.setup_tenant()
    with pytest.raises(Unauthenticated):
        _sign(TellerClient(teller.target, token), t.wallet_id)


def test_missing_authorization_metadata(teller):
    from teller_client._proto.teller.v1 import payment_pb2, payment_pb2_grpc

    with grpc.insecure_channel(teller.target) as ch:
        with pytest.raises(grpc.RpcError) as info:
            payment_pb2_grpc.PaymentServiceStub(ch).ListWallets(payment_pb2.ListWalletsRequest())
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "missing authorization" in info.value.details()


def test_revoked_token_stops_working(teller):
    t = teller.setup_tenant()
    client = teller.client(t.token)
    assert client.list_wallets()
    teller.admin().revoke_token(t.token_id)
    with pytest.raises(Unauthenticated) as info:
        client.list_wallets()
    assert "revoked" in info.value.message


def test_disabled_tenant_cannot_sign(teller):
    t = teller.setup_tenant()
    teller.admin().disable_tenant(t.tenant_id)
    with pytest.raises(PermissionDenied):
        _sign(teller.client(t.token), t.wallet_id)


def test_tenant_token_is_not_an_operator_credential(teller):
    t = teller.setup_tenant()
    with pytest.raises(Unauthenticated):
        AdminClient(teller.target, t.token).list_tenants()


def test_operator_credential_is_not_a_tenant_token(teller):
    with pytest.raises(Unauthenticated):
        TellerClient(teller.target, teller.settings.admin_token).list_wallets()


def test_admin_calls_on_unknown_tenant_are_not_found(teller):
    admin = teller.admin()
    with pytest.raises(NotFound):
        admin.create_wallet("no-such-tenant")
    with pytest.raises(NotFound):
        admin.issue_token("no-such-tenant")


def test_sign_checks_the_token_every_call(teller):
    """Sign verifies the token inside its locking statement: a revoked token or a
    wrong secret fails at once, even after earlier calls succeeded."""
    t = teller.setup_tenant()
    assert _sign(teller.client(t.token), t.wallet_id).header_value
    token_id, secret = t.token.split(".", 1)
    with pytest.raises(Unauthenticated, match="invalid token"):
        _sign(teller.client(f"{token_id}.{secret[:-2]}xx"), t.wallet_id)
    teller.admin().revoke_token(t.token_id)
    with pytest.raises(Unauthenticated, match="revoked"):
        _sign(teller.client(t.token), t.wallet_id)


@pytest.mark.parametrize("token", ["", "op_not-the-credential", "tlo_nosuch.secret"])
def test_every_admin_rpc_refuses_a_caller_without_an_operator_credential(teller, token):
    # Each AdminService method, called with an empty request: authentication must
    # come first, whatever the request holds (a handler that forgets to await its
    # check would answer, or fail on the empty request, instead).
    from google.protobuf.message_factory import GetMessageClass

    from teller_client._proto.teller.v1 import admin_pb2, admin_pb2_grpc

    service = admin_pb2.DESCRIPTOR.services_by_name["AdminService"]
    metadata = [("authorization", f"Bearer {token}")] if token else []
    with grpc.insecure_channel(teller.target) as ch:
        stub = admin_pb2_grpc.AdminServiceStub(ch)
        for method in service.methods:
            request_type = GetMessageClass(method.input_type)
            call = getattr(stub, method.name)
            with pytest.raises(grpc.RpcError) as err:
                result = call(request_type(), metadata=metadata, timeout=10)
                if method.server_streaming:
                    list(result)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, (method.name, err.value.code())
