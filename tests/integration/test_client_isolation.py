"""A backend caller installs and uses the client without web3, SQLAlchemy or cryptography."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

FORBIDDEN = ("web3", "sqlalchemy", "cryptography", "eth_account", "coincurve", "teller", "x402", "alembic")

SCRIPT = """
import sys
FORBIDDEN = {forbidden!r}

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in FORBIDDEN:
            raise ImportError("client must not import " + name)
        return None

sys.meta_path.insert(0, Block())
sys.path.insert(0, {client_path!r})
from teller_client import TellerClient
with TellerClient({target!r}, {token!r}) as client:
    wallets = client.list_wallets()
print(wallets[0].address)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in FORBIDDEN)
assert not loaded, loaded
"""


def test_client_package_declares_no_server_dependencies():
    meta = tomllib.loads((ROOT / "clients" / "python" / "pyproject.toml").read_text())
    deps = " ".join(meta["project"]["dependencies"]).lower()
    for name in ("web3", "sqlalchemy", "cryptography", "eth-account", "coincurve", "x402"):
        assert name not in deps


def test_client_works_with_server_libraries_blocked(teller):
    t = teller.setup_tenant()
    code = SCRIPT.format(forbidden=FORBIDDEN, client_path=str(ROOT / "clients" / "python"),
                         target=teller.target, token=t.token)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == t.address
