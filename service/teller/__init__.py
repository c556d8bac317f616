"""Teller: a gRPC worker that holds server-wallet keys and signs HTTP 402 payment proofs."""

__version__ = "0.1.0"
