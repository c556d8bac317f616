"""The `teller` command: serve, migrate, demo, and admin calls for operators.

``parser`` declares the commands, ``commands`` runs those on this host,
``admin`` the operator calls against a worker, ``output`` prints results;
here is the entry point and its one-line failures."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

from teller import config
from teller.cli.parser import build_parser
from teller.errors import ConfigError, InvalidArgument


def _json_errors(ns: argparse.Namespace) -> bool:
    """Whether this run logs JSON (so its last word must be JSON too), read as
    leniently as possible: the configuration may be what failed."""
    try:
        return config.load(getattr(ns, "config", None)).log_format == "json"
    except ConfigError:
        return os.environ.get("TELLER_LOG_FORMAT", "").strip() == "json"


def _fail(ns: argparse.Namespace, message: str) -> None:
    """A failure that stops the command: one line on stderr, JSON when JSON logs are on."""
    from teller.observe import redact

    message = redact(" ".join(message.split()))
    if _json_errors(ns):
        import time

        print(json.dumps({"ts": round(time.time(), 3), "level": "ERROR", "logger": "teller", "msg": message},
                         separators=(",", ":")), file=sys.stderr)
    else:
        print(f"teller: {message}", file=sys.stderr)


#: Commands whose failures are start-up failures: one line, never a traceback.
_ONE_LINE = {"serve", "migrate", "config", "keys"}


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    from teller.errors import TellerError as DomainError

    try:
        return int(ns.fn(ns))
    except ConfigError as exc:
        _fail(ns, str(exc))
        return 2
    except InvalidArgument as exc:
        _fail(ns, exc.message)
        return 2
    except DomainError as exc:
        _fail(ns, exc.message)
        return 1
    except OSError as exc:
        _fail(ns, str(exc))
        return 1
    except Exception as exc:
        from teller_client import TellerError as ClientError

        if isinstance(exc, ClientError):
            print(f"teller: {exc}", file=sys.stderr)
            return 1
        if ns.command not in _ONE_LINE:
            raise
        # Not foreseen: still one line (the traceback only at DEBUG), and a failure exit.
        logging.getLogger("teller").debug("start-up failed", exc_info=exc)
        _fail(ns, f"{ns.command} failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        return 1


