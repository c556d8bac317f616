"""A wallet with an open channel in a real Teller database, for the channel tests
and the voucher benchmark (a channel recorded as the open path records it; no
chain involved). Test use only."""

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
