"""Consoles of their own for the backup and upgrade tests: fresh PostgreSQL databases
(named hangar_wtedge_* after the test database's prefix) and manage.py in a subprocess."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from pathlib import Path

import psycopg
import pytest
from django.conf import settings

from tests.support import processes

POPULATE = Path(__file__).with_name("populate.py")


def _server_url() -> str:
    """The PostgreSQL server of HANGAR_DATABASE_URL (the tests' own), without a database."""
    url = os.environ.get("HANGAR_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/hangar")
    if not url.startswith("postgres"):
        pytest.fail("the backup and upgrade tests need HANGAR_DATABASE_URL on PostgreSQL")
    return url.rsplit("/", 1)[0]


def _admin():
    return psycopg.connect(f"{_server_url()}/postgres", autocommit=True)


@pytest.fixture
def new_database():
    """new_database(label) -> the URL of an empty PostgreSQL database, dropped afterwards."""
    base = os.environ.get("HANGAR_DATABASE_URL", "hangar").rsplit("/", 1)[-1]
    made = []

    def make(label: str) -> str:
        name = f"{base}_{label}_{secrets.token_hex(3)}"
        with _admin() as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        made.append(name)
        return f"{_server_url()}/{name}"

    yield make
    with _admin() as admin:
        for name in made:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Console:
    """manage.py and scripts of one Hangar tree against one database and data dir."""

    def __init__(self, tree: Path, database_url: str, data_dir: Path):
        self.tree, self.data_dir, self.database_url = tree, data_dir, database_url
        data_dir.mkdir(parents=True, exist_ok=True)
        self.env = {
            **os.environ,
            "HANGAR_DATABASE_URL": database_url,
            "HANGAR_DATA_DIR": str(data_dir),
            "HANGAR_REDIS_URL": settings.REDIS_URL,
            "PYTHONPATH": str(tree),
            "PATH": f"{processes.BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        self.env.pop("DJANGO_SETTINGS_MODULE", None)

    def run(self, *argv: str, check: bool = True, timeout: float = 300):
        result = subprocess.run(
            [str(processes.BIN / "python"), *argv],
            cwd=self.tree, env=self.env, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        if check and result.returncode != 0:
            raise AssertionError(f"{argv} exited {result.returncode}:\n{result.stderr[-3000:]}")
        return result

    def manage(self, *argv: str, check: bool = True):
        return self.run("manage.py", *argv, check=check)

    def populate(self) -> dict[str, int]:
        return json.loads(self.run(str(POPULATE)).stdout.strip().splitlines()[-1])

    def tables(self) -> list[str]:
        with psycopg.connect(self.database_url) as db:
            rows = db.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            return sorted(row[0] for row in rows)

    def counts(self) -> dict[str, int]:
        result = self.run(str(POPULATE), "--counts-only")
        return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture
def console_at():
    return Console
