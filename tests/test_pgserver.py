"""The PostgreSQL test server is real, isolated and password-protected."""

from __future__ import annotations

import psycopg
import pytest

from tests.pgserver import PgServer


def test_fresh_database_accepts_the_generated_password(pg_server: PgServer, pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT current_database()").fetchone() is not None
        conn.execute("CREATE TABLE t (x int)")  # a database of our own: nothing in it yet


def test_wrong_password_is_refused(pg_server: PgServer) -> None:
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(pg_server.dsn(password="not-the-password"), connect_timeout=5)
