"""``python -m demo`` (``./run demo``): Teller doing its job, start to finish, on loopback."""

from __future__ import annotations

import signal
import sys
from typing import NoReturn

from demo.tour import run

_stopping = False


def _stop(signum: int, frame: object) -> NoReturn:
    # SIGTERM unwinds like Ctrl-C, so every context manager stops what it started.
    global _stopping
    _stopping = True
    raise KeyboardInterrupt


def _say(line: str) -> None:
    # A signal that lands inside a blocking gRPC call can be swallowed there (the
    # call completes and the demo went on to exit 0); the next line printed honours it.
    if _stopping:
        raise KeyboardInterrupt
    print(line, flush=True)


def main() -> int:
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        return run(_say)
    except KeyboardInterrupt:
        print("\ninterrupted: stopped the chains, the paid API and Teller", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
