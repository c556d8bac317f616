"""Transport security: TLS on the gRPC port, mTLS mapping a client certificate
to a tenant, and AdminService on its own port."""

from __future__ import annotations

import grpc
import pytest

from teller_client import AdminClient, NotFound, PermissionDenied, TellerClient, TellerError
from testbed.x402_server import sdk_v2_challenge
from tests.support.certs import CA, write
from tests.support.harness import RunningTeller, make_settings


def _sign(client: TellerClient, wallet_id: str):
    c = sdk_v2_challenge()
    return client.sign(status=c.status, headers=c.headers, body=c.body, url=c.url, wallet_id=wallet_id)


@pytest.fixture
def pki(tmp_path):
    ca = CA()
    server = ca.issue("teller.local", server=True)
    return {
        "ca": ca,
        "ca_file": write(tmp_path, "ca.pem", ca.pem),
        "cert_file": write(tmp_path, "server.pem", server.cert_pem),
        "key_file": write(tmp_path, "server.key", server.key_pem),
    }


def _creds(ca: CA, cn: str | None = None, *, issuer: CA | None = None) -> grpc.ChannelCredentials:
    if cn is None:
        return grpc.ssl_channel_credentials(root_certificates=ca.pem)
    client = (issuer or ca).issue(cn)
    return grpc.ssl_channel_credentials(root_certificates=ca.pem, private_key=client.key_pem,
                                        certificate_chain=client.cert_pem)


def test_tls_port(tmp_path, pki):
    settings = make_settings(f"sqlite:///{tmp_path / 't.db'}", tmp_path, tls_cert_file=pki["cert_file"],
                             tls_key_file=pki["key_file"])
    running = RunningTeller(settings, admin_credentials=_creds(pki["ca"]))
    try:
        t = running.setup_tenant()
        assert _sign(running.client(t.token, _creds(pki["ca"])), t.wallet_id).header_value
        # Plaintext is not spoken on a TLS port, and a client that trusts another CA refuses the server.
        with TellerClient(running.target, t.token, timeout=5) as plain, pytest.raises(TellerError):
            plain.list_wallets()
        with TellerClient(running.target, t.token, credentials=_creds(CA("other")), timeout=5) as wrong, \
                pytest.raises(TellerError):
            wrong.list_wallets()
    finally:
        running.stop()


@pytest.fixture
def mtls(tmp_path, pki):
    settings = make_settings(f"sqlite:///{tmp_path / 't.db'}", tmp_path, tls_cert_file=pki["cert_file"],
                             tls_key_file=pki["key_file"], tls_client_ca_file=pki["ca_file"])
    running = RunningTeller(settings, admin_credentials=_creds(pki["ca"], "operator"))
    yield running, pki["ca"]
    running.stop()


def test_mtls_maps_a_certificate_to_its_tenant(mtls):
    running, ca = mtls
    a, b = running.setup_tenant(), running.setup_tenant()
    a_client = running.client(a.token, _creds(ca, f"tenant:{a.tenant_id}"))
    assert _sign(a_client, a.wallet_id).header_value
    # Tenant A's token against tenant B's wallet: indistinguishable from a missing wallet.
    with pytest.raises(NotFound):
        _sign(a_client, b.wallet_id)
    # Tenant B's token over tenant A's certificate: refused.
    with pytest.raises(PermissionDenied) as info:
        running.client(b.token, _creds(ca, f"tenant:{a.tenant_id}")).list_wallets()
    assert info.value.reason == "certificate_mismatch"
    # A tenant certificate cannot drive AdminService, even with the operator token.
    with AdminClient(running.admin_target, running.settings.admin_token,
                     credentials=_creds(ca, f"tenant:{a.tenant_id}")) as admin, pytest.raises(PermissionDenied):
        admin.list_tenants()


@pytest.mark.parametrize("how", ["no certificate", "certificate from another CA"])
def test_mtls_rejects_a_client_certificate(mtls, how):
    running, ca = mtls
    t = running.setup_tenant()
    creds = _creds(ca) if how == "no certificate" else _creds(ca, f"tenant:{t.tenant_id}", issuer=CA("rogue"))
    with TellerClient(running.target, t.token, credentials=creds, timeout=5) as client, \
            pytest.raises(TellerError) as info:
        client.list_wallets()
    assert info.value.code == grpc.StatusCode.UNAVAILABLE  # the TLS handshake fails


def test_admin_service_on_its_own_port(tmp_path):
    settings = make_settings(f"sqlite:///{tmp_path / 't.db'}", tmp_path, admin_listen="127.0.0.1:0")
    running = RunningTeller(settings)
    try:
        assert running.admin_target != running.target
        t = running.setup_tenant()  # through the admin port
        assert running.client(t.token).list_wallets()
        with AdminClient(running.target, settings.admin_token, timeout=5) as wrong_port, \
                pytest.raises(TellerError) as info:
            wrong_port.list_tenants()
        assert info.value.code == grpc.StatusCode.UNIMPLEMENTED
    finally:
        running.stop()
