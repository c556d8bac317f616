"""Real counterparts on loopback, for the tests and the benchmark alike: a
throwaway PostgreSQL (``pg``), `teller serve` worker processes (``procs``),
local chains (``chain``: anvil with Teller's EIP-3009 token; ``tempo``: anvil in
Tempo mode), a loopback HTTP server for ASGI apps (``loopback``) and 402
challenges made by the official x402 SDK (``x402_server``).

Nothing here is shipped: it is for machines that run tests or benchmarks.
"""
