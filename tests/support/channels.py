"""What the channel tests share besides ``testbed.channels``: a worker process
that signs vouchers until the deposit runs out."""

from __future__ import annotations

from testbed.channels import CHAIN_ID, ESCROW, NETWORK, TOKEN, OpenChannel, open_channel


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


__all__ = ["CHAIN_ID", "ESCROW", "NETWORK", "TOKEN", "OpenChannel", "open_channel", "sign_until_refused"]
