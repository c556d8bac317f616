"""Settings for a Teller in tests and benchmarks: a fresh KEK and admin token, the
given database, and anvil's chain name. Test use only."""

from __future__ import annotations

import base64
import os
import secrets
from dataclasses import replace
from pathlib import Path

from teller.config import Settings


def make_settings(database_url: str, data_dir: Path, **kw: object) -> Settings:
    kek = base64.b64encode(os.urandom(32)).decode()
    base = Settings(
        listen="127.0.0.1:0",
        database_url=database_url,
        data_dir=data_dir,
        kek=f"test1:{kek}",
        admin_token="op_" + secrets.token_urlsafe(16),
        networks={"anvil": 31337},
    )
    return replace(base, **kw)  # type: ignore[arg-type]
