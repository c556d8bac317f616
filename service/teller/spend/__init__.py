"""Spend: what a tenant or wallet may pay, and what it has paid.

- ``rules``: a policy document as frozen values, and what a policy judges
  (``Charge``, ``Scope``); ``parse`` reads and writes the document;
  ``decision`` and ``evaluate`` judge one charge against the rules. Pure.
- ``windows``: where a budget's window starts and ends. Pure.
- ``ledger``: the per-minute spend buckets and the window sums read from them,
  with the one rule for how a payment's state moves its buckets.
- ``stored``: the rules as the database holds them, parsed once; the spend report.

This module imports nothing, so the pure ones stay free of the database.
"""
