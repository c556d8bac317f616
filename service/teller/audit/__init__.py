"""The audit log: ``events`` writes and reads events in the caller's
transaction, ``chain`` hashes and checks the per-tenant chain, ``export`` signs
and verifies exports, ``keys`` holds the audit signing key, ``tools`` the
operator jobs (verify, export).

Empty on purpose: ``chain`` and ``export`` are pure (a tenant checks an export
with them alone), so importing the package must not pull in the database."""
