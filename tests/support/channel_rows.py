"""More channels for a tenant that already has one (``tests.support.channels.open_channel``
makes a tenant per channel), opened at a given time and moved to any state, for
the tests of listing and paging. Recorded as the open path records them; no chain."""

from __future__ import annotations

import os

from eth_account import Account
from sqlalchemy import update

from teller.app import App
from teller.db.models import Channel
from teller.mpp.channel import ChannelDescriptor, channel_id
from tests.support.channels import CHAIN_ID, ESCROW, NETWORK, TOKEN, OpenChannel


def add_channel(app: App, owner: OpenChannel, deposit: int, *, at_ms: int) -> str:
    """Another channel of ``owner``'s wallet, opened at ``at_ms``; returns its id."""
    descriptor = ChannelDescriptor(payer=owner.address, payee=Account.create().address, operator="0x" + "00" * 20,
                                   token=TOKEN, salt=os.urandom(32), authorized_signer=owner.address,
                                   expiring_nonce_hash=os.urandom(32))
    with app.db.transaction() as s:
        return app.channels.record_open(s, tenant_id=owner.tenant_id, wallet_id=owner.wallet_id, network=NETWORK,
                                        escrow=ESCROW, channel_id=channel_id(descriptor, ESCROW, CHAIN_ID),
                                        descriptor=descriptor, deposit=deposit, now_ms=at_ms)


def set_state(app: App, handle: str, state: str) -> None:
    """Move a channel to ``state`` as closing it will (closing is not built yet)."""
    with app.db.transaction() as s:
        s.execute(update(Channel).where(Channel.id == handle).values(state=state))
