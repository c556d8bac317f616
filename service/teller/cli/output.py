"""How the `teller` command prints results: a table for people, JSON or CSV
for scripts (``--output``). Every command prints through here, so every
command supports every format."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

FORMATS = ("table", "json", "csv")


def format_of(ns: argparse.Namespace) -> str:
    """The format a command was asked for with ``--output`` (table by default)."""
    return getattr(ns, "output", None) or "table"


def when(ms: int | None) -> str:
    """Epoch milliseconds as UTC ISO 8601 for tables; "" for none."""
    if not ms:
        return ""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return "" if value is None else str(value)


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    widths = {c: max([len(c), *(len(_cell(r.get(c))) for r in rows)]) for c in columns}
    print("  ".join(c.upper().ljust(widths[c]) for c in columns).rstrip())
    for r in rows:
        print("  ".join(_cell(r.get(c)).ljust(widths[c]) for c in columns).rstrip())


def rows(fmt: str, items: Sequence[Mapping[str, Any]], columns: Sequence[str], *,
         key: str = "", next_page_token: str | None = None) -> None:
    """A list of records. Paged lists (``next_page_token`` not None) print as
    ``{key: [...], "next_page_token": ...}`` in JSON; in a table or CSV the token
    goes to stderr, so that stdout stays one table."""
    if fmt == "json":
        doc: Any = list(items) if next_page_token is None else {key: list(items), "next_page_token": next_page_token}
        print(json.dumps(doc, indent=2, sort_keys=True))
        return
    if fmt == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows({c: _cell(r.get(c)) for c in columns} for r in items)
    else:
        table(items, columns)
    if next_page_token:
        print(f"more: repeat with --page-token {next_page_token} (or --all)", file=sys.stderr)


def record(fmt: str, doc: Mapping[str, Any], text: str) -> None:
    """One result: ``text`` for people, the document for scripts."""
    if fmt == "json":
        print(json.dumps(doc, indent=2, sort_keys=True))
    elif fmt == "csv":
        rows(fmt, [doc], list(doc))
    else:
        print(text)


__all__ = ["FORMATS", "record", "rows", "table", "when"]
