"""A scratch PostgreSQL database for benchmarks: the server the tests use, a database made for one run."""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterator
from contextlib import contextmanager

POSTGRES_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def postgres_base() -> str | None:
    """MCPZ_TEST_POSTGRES_URL, else the local server on 5432 if it listens, else None."""
    url = os.environ.get("MCPZ_TEST_POSTGRES_URL")
    if url:
        return url
    with socket.socket() as s:
        s.settimeout(0.5)
        if s.connect_ex(("127.0.0.1", 5432)) != 0:
            return None
    return POSTGRES_DEFAULT


@contextmanager
def scratch_database(base: str, tag: str) -> Iterator[str]:
    """A fresh database on `base`'s server, named for `tag`, dropped afterwards (its URL)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"mcpz_bench_{tag}_{secrets.token_hex(4)}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield make_url(base).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
