"""Seeing a session while it runs and after: scores, conversations, provenance, costs and health.

Everything here reads the session's own files (and the proxy's ledger), so the same views work
from `mva watch` in another terminal, from the Dagster UI and from a finished session on disk.
"""
