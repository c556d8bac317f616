"""Spend: what a tenant or wallet may pay, and what it has paid.

- ``rules``: a policy document as frozen values, and what a policy judges
  (``Charge``, ``Scope``). ``parse`` reads and writes the document (and the
  stored documents a Sign acts on, each parsed once). ``decision`` and
  ``evaluate`` judge one charge against the rules. Pure.
- ``windows``: where a calendar or rolling budget window starts and ends. Pure.
- ``ledger``: the per-minute spend buckets: ``bucket_delta``, the one rule for
  how a payment moves them (reserved, settled, released), and the SQL text that
  sums a window from them. Pure.
- ``store``: the ledger through a SQLAlchemy session: window sums, bucket
  moves after a lifecycle change, the spend report.

This module imports nothing, so importing a pure one loads no database code.
"""
