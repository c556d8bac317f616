"""Channels and vouchers as the API lists them: a page at a time, newest first,
each page ending with the cursor of the next (as payments and audit events page).

The store (``teller.channels.store``) reads whole lists for the signing path;
these reads are for people and dashboards, whose lists only grow. Every read
names its tenant: another tenant's channel is indistinguishable from a missing
one (``NotFound``).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import and_, or_, select

from teller.audit.events import page_cursor
from teller.channels.rules import ChannelState
from teller.channels.store import ChannelView, view_of
from teller.db.engine import Database
from teller.db.models import Channel, Tenant, Voucher
from teller.errors import InvalidArgument, NotFound

DEFAULT_PAGE = 100
MAX_PAGE = 1000
STATES = tuple(s.value for s in ChannelState)


@dataclass(frozen=True, slots=True)
class VoucherView:
    """A voucher as callers and operators see it: the payee may take ``cumulative`` in total."""

    cumulative: int
    signature: str
    created_ms: int


@dataclass(frozen=True, slots=True)
class ChannelDetail:
    """One channel and a page of its vouchers, highest total first."""

    channel: ChannelView
    vouchers: list[VoucherView]
    next_page_token: str


def _size(page_size: int) -> int:
    if page_size < 0:
        raise InvalidArgument("page_size must not be negative")
    return min(page_size or DEFAULT_PAGE, MAX_PAGE)


def list_channels(db: Database, tenant_id: str, state: str = "", page_size: int = 0,
                  page_token: str = "") -> tuple[list[ChannelView], str]:
    """The tenant's channels, newest first, optionally only those in ``state``.
    An unknown tenant is ``NotFound``, so an operator's typo is not an empty list."""
    if not tenant_id:
        raise InvalidArgument("tenant_id is required")
    if state and state not in STATES:
        raise InvalidArgument(f"state must be one of {', '.join(STATES)}, got {state[:40]!r}")
    size = _size(page_size)
    q = select(Channel).where(Channel.tenant_id == tenant_id)
    if state:
        q = q.where(Channel.state == state)
    if page_token:
        created_text, _, handle = page_token.partition(":")
        if not handle:
            raise InvalidArgument("page_token is not a token this server issued")
        created = page_cursor(created_text, "page_token")
        q = q.where(or_(Channel.created_ms < created, and_(Channel.created_ms == created, Channel.id < handle)))
    with db.read() as s:
        if s.get(Tenant, tenant_id) is None:
            raise NotFound(f"tenant {tenant_id!r} not found")
        rows = [view_of(c) for c in s.scalars(q.order_by(Channel.created_ms.desc(), Channel.id.desc())
                                            .limit(size + 1))]
    more = len(rows) > size
    rows = rows[:size]
    return rows, (f"{rows[-1].created_ms}:{rows[-1].id}" if more and rows else "")


def channel_detail(db: Database, tenant_id: str, channel: str, page_size: int = 0,
                   page_token: str = "") -> ChannelDetail:
    """The tenant's ``channel`` and a page of its vouchers, highest total (the
    newest, and the only one the payee can settle) first."""
    if not tenant_id:
        raise InvalidArgument("tenant_id is required")
    if not channel:
        raise InvalidArgument("id is required: the channel's id, as ListChannels gives it")
    size = _size(page_size)
    below = page_cursor(page_token, "page_token") if page_token else None
    q = (select(Voucher.cumulative, Voucher.signature, Voucher.created_ms)
         .join(Channel, Channel.id == Voucher.channel)
         .where(Voucher.channel == channel, Channel.tenant_id == tenant_id))
    if below is not None:
        q = q.where(Voucher.cumulative < below)
    with db.read() as s:
        # Vouchers before the channel: totals only rise, so the channel read after
        # them never shows less spent than a voucher on the page promises.
        vouchers = [VoucherView(total, sig, at) for total, sig, at in
                    s.execute(q.order_by(Voucher.cumulative.desc()).limit(size + 1))]
        c = s.scalars(select(Channel).where(Channel.id == channel, Channel.tenant_id == tenant_id)).one_or_none()
        if c is None:
            raise NotFound(f"channel {channel!r} not found")
        view = view_of(c)
    more = len(vouchers) > size
    vouchers = vouchers[:size]
    return ChannelDetail(view, vouchers, str(vouchers[-1].cumulative) if more and vouchers else "")
