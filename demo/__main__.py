"""``python -m demo`` (``./run demo``): Teller doing its job, start to finish, on loopback."""

from __future__ import annotations

import signal
import sys
from typing import NoReturn

from demo.tour import run


def _stop(signum: int, frame: object) -> NoReturn:
    # SIGTERM unwinds like Ctrl-C, so every context manager stops what it started.
    raise KeyboardInterrupt


def main() -> int:
    signal.signal(signal.SIGTERM, _stop)
    try:
        return run(lambda line: print(line, flush=True))
    except KeyboardInterrupt:
        print("\ninterrupted: stopped the chains, the paid API and Teller", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
