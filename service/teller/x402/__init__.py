"""x402: parsing 402 challenges and building EIP-3009 payment proofs (pure, no I/O)."""
