"""What the Tempo gas estimate costs a Sign: ``Proofs.chain_facts`` (the chain
facts ``prepare`` reads before presigning) for one MPP Tempo challenge, without
an estimate (the build before issue 18), with the estimate's limit cached (every
Sign after the first for a sender, token and recipient set), and on a miss (the
eth_estimateGas round trips to the node). In-process, against
``anvil --network tempo --hardfork t4``; no worker, no database.

    .venv/bin/python bench/gas_estimate.py
"""

from __future__ import annotations

import base64
import json
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eth_account import Account

from teller import offers as offers_mod
from teller.chain import ChainReader
from teller.schemes.proofs import Proofs
from testbed.tempo import PATH_USD, tempo_chain

RECIPIENT = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"


def _us(samples: list[float]) -> str:
    ordered = sorted(samples)
    return f"median {statistics.median(ordered) * 1e6:8.1f} us, p90 {ordered[int(len(ordered) * 0.9)] * 1e6:8.1f} us"


def main() -> None:
    with tempo_chain() as chain:
        payer = Account.create()
        chain.fund(payer.address, 5_000_000)
        reader = ChainReader({chain.network: chain.rpc_url})
        doc = {"amount": "250000", "currency": PATH_USD, "recipient": RECIPIENT, "methodDetails": {"chainId": 31337}}
        request = base64.urlsafe_b64encode(json.dumps(doc).encode()).decode().rstrip("=")
        expires = datetime.fromtimestamp(time.time() + 600, UTC).isoformat().replace("+00:00", "Z")
        header = (f'Payment id="bench", realm="bench.example", method="tempo", intent="charge", '
                  f'request="{request}", expires="{expires}"')
        offers = offers_mod.collect((("WWW-Authenticate", header),), b"", networks={}, max_bytes=1 << 20,
                                    now=datetime.now(UTC)).offers
        proofs = Proofs(None, reader, time.time, 0)  # type: ignore[arg-type]  # no signing here
        proofs.chain_facts(offers)  # the gas price, cached as in a running worker
        runs: dict[str, list[float]] = {"without estimate": [], "estimate, cache hit": [], "estimate, cache miss": []}
        for _ in range(30):
            reader._gas_limits.clear()
            started = time.perf_counter()
            facts = proofs.chain_facts(offers, payer=payer.address)
            runs["estimate, cache miss"].append(time.perf_counter() - started)
        for _ in range(5000):
            started = time.perf_counter()
            proofs.chain_facts(offers)
            runs["without estimate"].append(time.perf_counter() - started)
            started = time.perf_counter()
            proofs.chain_facts(offers, payer=payer.address)
            runs["estimate, cache hit"].append(time.perf_counter() - started)
        print(f"gas limit: {next(iter(facts.gas_limits.values()))}")
        for name, samples in runs.items():
            print(f"chain_facts, {name:22s} {_us(samples)}  ({len(samples)} runs)")


if __name__ == "__main__":
    main()
