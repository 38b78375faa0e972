"""A throw-away Postgres database for the scale-out tests (skipped with the reason when absent)."""

from __future__ import annotations

import getpass
import os
import secrets
import socket
from collections.abc import Iterator

import pytest

PG_HOST = os.environ.get("MVA_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("MVA_TEST_PG_PORT", "5432"))


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """``postgresql+psycopg2://...`` of a fresh database ``mva_test_<random>``, dropped afterwards."""
    pytest.importorskip("dagster_postgres", reason="dagster-postgres is not installed: pip install -e '.[scale]'")
    psycopg2 = pytest.importorskip("psycopg2", reason="psycopg2 is not installed: pip install -e '.[scale]'")
    if not _port_open(PG_HOST, PG_PORT):
        pytest.skip(f"no Postgres on {PG_HOST}:{PG_PORT}; the Postgres-backed instance test needs one")
    users = [u for u in (os.environ.get("PGUSER"), "postgres", getpass.getuser()) if u]
    admin = None
    for user in users:
        try:
            admin = psycopg2.connect(host=PG_HOST, port=PG_PORT, dbname="postgres", user=user)
            break
        except psycopg2.OperationalError:
            continue
    if admin is None:
        pytest.skip(f"cannot connect to Postgres on {PG_HOST}:{PG_PORT} as any of {users} (trust auth expected)")
    admin.autocommit = True
    name = f"mva_test_{secrets.token_hex(4)}"
    user = admin.get_dsn_parameters()["user"]
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg2://{user}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
