"""Migration of legacy (Discernus) experiment folders into mva-dagster sessions: `mva migrate`."""

from mva_dagster.migrate.discernus import MigrationResult, migrate_legacy

__all__ = ["MigrationResult", "migrate_legacy"]
