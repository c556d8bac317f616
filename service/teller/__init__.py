"""Teller: a gRPC worker that holds server-wallet keys and signs HTTP 402 payment proofs."""

import importlib.util
import os

__version__ = "0.1.0"

# eth-hash takes pycryptodome's keccak when both backends are installed; pysha3's
# (a dependency) costs a sixth per hash. Chosen before anything hashes; an
# operator's own ETH_HASH_BACKEND wins.
if "ETH_HASH_BACKEND" not in os.environ and importlib.util.find_spec("sha3") is not None:
    os.environ["ETH_HASH_BACKEND"] = "pysha3"
