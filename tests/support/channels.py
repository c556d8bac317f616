"""A wallet with an open channel in a real Teller database, for the channel tests
(a channel recorded as the open path will record it; no chain involved)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from eth_account import Account

from teller.app import App
from teller.mpp.channel import ChannelDescriptor, channel_id

ESCROW = "0x4d50500000000000000000000000000000000000"
TOKEN = "0x20C0000000000000000000000000000000000000"
CHAIN_ID = 31337
NETWORK = f"eip155:{CHAIN_ID}"


@dataclass(frozen=True)
class OpenChannel:
    tenant_id: str
    wallet_id: str
    address: str
    handle: str
    channel_id: str


def open_channel(app: App, deposit: int, tenant_id: str | None = None) -> OpenChannel:
    """A channel of a new wallet, of a new tenant unless ``tenant_id`` names one."""
    if tenant_id is None:
        tenant_id = app.admin.create_tenant(f"ch-{os.urandom(3).hex()}").id
    wallet = app.admin.create_wallet(tenant_id, "main")
    payee = Account.create().address
    descriptor = ChannelDescriptor(payer=wallet.address, payee=payee, operator="0x" + "00" * 20, token=TOKEN,
                                   salt=os.urandom(32), authorized_signer=wallet.address,
                                   expiring_nonce_hash=os.urandom(32))
    cid = channel_id(descriptor, ESCROW, CHAIN_ID)
    with app.db.transaction() as s:
        handle = app.channels.record_open(s, tenant_id=tenant_id, wallet_id=wallet.id, network=NETWORK,
                                          escrow=ESCROW, channel_id=cid, descriptor=descriptor, deposit=deposit,
                                          now_ms=1)
    return OpenChannel(tenant_id, wallet.id, wallet.address, handle, "0x" + cid.hex())


def sign_until_refused(settings: object, tenant_id: str, handle: str, increments: list[int], out: str) -> None:
    """A worker process: one caller thread per increment, each signing vouchers of
    its increment on ``handle`` until the deposit refuses it. Each total granted
    is written to ``out`` as it is granted (the file survives a SIGKILL)."""
    import threading

    from teller.app import build
    from teller.errors import LimitExceeded

    app = build(settings, migrate=False)  # type: ignore[arg-type]
    lock = threading.Lock()
    with open(out, "a", buffering=1) as sink:
        def caller(step: int) -> None:
            while True:
                try:
                    v = app.channels.sign_voucher(tenant_id, handle, step, actor="drill")
                except LimitExceeded:
                    return
                with lock:
                    sink.write(f"{v.cumulative} {step}\n")

        threads = [threading.Thread(target=caller, args=(step,)) for step in increments]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    app.close()
