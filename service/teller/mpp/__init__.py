"""The Machine Payments Protocol (MPP): challenges, Tempo and evm charge credentials."""
