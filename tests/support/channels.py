"""What the channel tests share besides ``testbed.channels``: a worker process
that signs vouchers until the deposit runs out."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass

from eth_account import Account
from sqlalchemy import text, update

from teller.app import App
from teller.db.models import Channel, Payment
from teller.spend.ledger import BUCKET_ROW_SQL, MINUTE_MS, bucket_delta
from testbed.channels import CHAIN_ID, ESCROW, NETWORK, TOKEN, OpenChannel, open_channel


@dataclass(frozen=True)
class OpenedWithPayment:
    channel: OpenChannel
    payment_id: str
    open_tx: str  # the open transaction's hash: the payment's nonce


def open_with_payment(app: App, deposit: int, *, fee_max: int, fee_common: int, created_ms: int,
                      tenant_id: str | None = None, payee: str | None = None) -> OpenedWithPayment:
    """A channel and the payment that opened it, as the Sign batch writes them: the
    deposit and the open's most expensive fee reserved (``amount_common``, here a
    common unit equal to the token's), in the buckets of ``created_ms``'s minute."""
    ch = open_channel(app, deposit, tenant_id)
    open_tx = "0x" + os.urandom(32).hex()
    p = Payment(id=str(uuid.uuid4()), tenant_id=ch.tenant_id, wallet_id=ch.wallet_id, protocol="mpp", version=1,
                scheme="tempo/session", network=NETWORK, asset=TOKEN, pay_to=payee or Account.create().address,
                amount=deposit, amount_common=deposit + fee_common, fee_max=fee_max, fee_common=fee_common,
                resource_url="http://payee.test/metered", nonce=open_tx, valid_before=2**40, state="signed",
                header_name="Authorization", header_value="Payment x", request_hash="0" * 64,
                created_ms=created_ms, updated_ms=created_ms)
    with app.db.transaction() as s:
        s.add(p)
        s.flush()
        s.execute(update(Channel).where(Channel.id == ch.handle).values(open_payment_id=p.id))
        reserved, spent = bucket_delta(None, 0, "signed", p.amount_common)
        s.execute(text(BUCKET_ROW_SQL), [{"scope": scope, "scope_id": scope_id, "minute": created_ms // MINUTE_MS,
                                          "reserved": reserved, "spent": spent}
                                         for scope, scope_id in (("tenant", ch.tenant_id), ("wallet", ch.wallet_id))])
    return OpenedWithPayment(ch, p.id, open_tx)


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
                except Exception as exc:  # the test reads it: a thread's error is otherwise lost
                    with lock:
                        sink.write(f"error {type(exc).__name__}: {str(exc)[:300]}\n")
                    return
                with lock:
                    sink.write(f"{v.cumulative} {step}\n")

        threads = [threading.Thread(target=caller, args=(step,)) for step in increments]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    app.close()


__all__ = ["CHAIN_ID", "ESCROW", "NETWORK", "TOKEN", "OpenChannel", "OpenedWithPayment", "open_channel",
           "open_with_payment", "sign_until_refused"]
