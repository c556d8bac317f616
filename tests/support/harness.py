"""Teller's real gRPC server, in-process on a free port, for tests."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, replace

import grpc

from teller.app import App, build
from teller.clock import Clock, system_clock
from teller.config import Settings
from teller.rpc.server import BackgroundServer
from teller_client import AdminClient, Policy, TellerClient
from testbed.settings import make_settings


@dataclass
class TenantSetup:
    tenant_id: str
    token: str
    token_id: str
    wallet_id: str
    address: str


class RunningTeller:
    def __init__(self, settings: Settings, clock: Clock = system_clock, *,
                 admin_credentials: grpc.ChannelCredentials | None = None) -> None:
        self.settings = settings
        self.app: App = build(settings, clock, migrate=True)
        self.server = BackgroundServer(self.app, settings.listen)
        self.target = f"127.0.0.1:{self.server.port}"
        self.admin_target = f"127.0.0.1:{self.server.admin_port}"
        self.admin_credentials = admin_credentials
        self._clients: list[AdminClient | TellerClient] = []

    def admin(self) -> AdminClient:
        client = AdminClient(self.admin_target, self.settings.admin_token, credentials=self.admin_credentials)
        self._clients.append(client)
        return client

    def client(self, token: str, credentials: grpc.ChannelCredentials | None = None) -> TellerClient:
        client = TellerClient(self.target, token, credentials=credentials)
        self._clients.append(client)
        return client

    def setup_tenant(self, name: str | None = None, policy: Policy | None = None,
                     private_key: str | None = None) -> TenantSetup:
        admin = self.admin()
        tenant = admin.create_tenant(name or f"tenant-{secrets.token_hex(4)}")
        token_id, token = admin.issue_token(tenant.id, "test")
        wallet = (admin.import_wallet(tenant.id, private_key, "main") if private_key
                  else admin.create_wallet(tenant.id, "main"))
        # Tests that do not care about asset lists get a policy admitting any
        # asset (a tenant without one may pay nothing: unknown assets are denied).
        policy = policy or Policy()
        if not policy.assets:
            policy = replace(policy, allow_unknown_assets=True)
        admin.set_policy(tenant.id, policy)
        return TenantSetup(tenant.id, token, token_id, wallet.id, wallet.address)

    def stop(self) -> None:
        for c in self._clients:
            c.close()
        self.server.stop()
        self.app.close()

__all__ = ["RunningTeller", "TenantSetup", "make_settings"]
