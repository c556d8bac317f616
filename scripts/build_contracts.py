"""Compile contracts/*.sol with the npm `solc` package (tools/chain) into build/contracts/<Name>.json.

    python scripts/build_contracts.py

Needs `npm install --prefix tools/chain` first (./run test does it). Output holds
the ABI and creation bytecode; it is rebuilt when a source is newer.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ROOT / "contracts"
OUT = ROOT / "build" / "contracts"
SOLC = ROOT / "tools" / "chain" / "node_modules" / "solc"

_COMPILE = """
const solc = require(process.argv[1]);
let input = '';
process.stdin.on('data', d => input += d);
process.stdin.on('end', () => process.stdout.write(solc.compile(input)));
"""


def build() -> dict[str, Path]:
    if not SOLC.exists():
        raise SystemExit(f"solc is not installed: run `npm install --prefix {SOLC.parent.parent}`")
    sources = {p.name: {"content": p.read_text()} for p in sorted(SOURCES.glob("*.sol"))}
    standard = {
        "language": "Solidity",
        "sources": sources,
        "settings": {"optimizer": {"enabled": True, "runs": 200},
                     "outputSelection": {"*": {"*": ["abi", "evm.bytecode.object"]}}},
    }
    result = subprocess.run(["node", "-e", _COMPILE, str(SOLC)], input=json.dumps(standard),
                            capture_output=True, text=True, check=True)
    output = json.loads(result.stdout)
    errors = [e for e in output.get("errors", []) if e["severity"] == "error"]
    if errors:
        raise SystemExit("\n".join(e["formattedMessage"] for e in errors))
    OUT.mkdir(parents=True, exist_ok=True)
    written = {}
    for contracts in output["contracts"].values():
        for name, art in contracts.items():
            path = OUT / f"{name}.json"
            path.write_text(json.dumps({"abi": art["abi"], "bytecode": "0x" + art["evm"]["bytecode"]["object"]}))
            written[name] = path
    return written


def artifact(name: str) -> dict[str, object]:
    """The compiled contract, building it when missing or older than its sources."""
    path = OUT / f"{name}.json"
    newest = max(p.stat().st_mtime for p in SOURCES.glob("*.sol"))
    if not path.exists() or path.stat().st_mtime < newest:
        build()
    return dict(json.loads(path.read_text()))


if __name__ == "__main__":
    for name, path in build().items():
        print(f"{name}: {path.relative_to(ROOT)}")
    sys.exit(0)
