"""One-file backups of a console: the database, the audit archives and the settings.

A backup is an uncompressed tar (its big members are compressed already):

    manifest.json          format, time, Hangar version, database vendor, applied
                           migrations, and the size and SHA-256 of every other member
    database.dump          `pg_dump -Fc` (PostgreSQL), or
    database.sqlite3       a consistent copy made with SQLite's backup API
    settings.json          the non-secret settings in effect (a record, never applied)
    audit-archive/*.gz     the audit archive files (apps/audit/archive.py)

Secrets are left out on purpose (docs/backup.md): the secret key, passwords in
URLs and the environment file. The dump itself still holds password hashes and
engine secrets, so the file is written 0600.

pg_dump and pg_restore get the connection through PG* variables, never a
command line built from text: nothing here runs a shell.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from urllib.parse import urlparse, urlunparse

from django.apps import apps as django_apps
from django.conf import settings
from django.db import connection
from django.db.migrations.loader import MigrationLoader

FORMAT = 1
MANIFEST = "manifest.json"
ARCHIVE_FOLDER = "audit-archive"
# HANGAR_SECRET_KEY, HANGAR_EMAIL_PASSWORD, HANGAR_LDAP_BIND_PASSWORD, ..._API_KEY;
# not HANGAR_API_TOKEN_MAX_DAYS, a number.
SECRET_WORDS = ("SECRET", "PASSWORD")
SECRET_ENDINGS = ("_KEY", "_TOKEN")


class BackupError(Exception):
    """A backup or restore that cannot go on; str() is one line for the command."""


@dataclass(frozen=True)
class Restored:
    vendor: str
    archives: int
    hangar_version: str
    created_at: str


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _vendor() -> str:
    if connection.vendor not in ("postgresql", "sqlite"):
        raise BackupError(f"backups support PostgreSQL and SQLite, not {connection.vendor}")
    return connection.vendor


def _pg_environment() -> dict:
    """The PG* variables libpq reads: the same database Django uses."""
    db = connection.settings_dict
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    values = {
        "PGDATABASE": db["NAME"],
        "PGUSER": db.get("USER"),
        "PGPASSWORD": db.get("PASSWORD"),
        "PGHOST": db.get("HOST"),
        "PGPORT": str(db.get("PORT") or ""),
        "PGSSLMODE": (db.get("OPTIONS") or {}).get("sslmode"),
    }
    env.update({k: str(v) for k, v in values.items() if v})
    return env


def _run(argv: list[str]) -> None:
    tool = argv[0]
    if shutil.which(tool) is None:
        raise BackupError(f"{tool} is not installed (Debian package postgresql-client)")
    result = subprocess.run(argv, env=_pg_environment(), capture_output=True, text=True)
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        raise BackupError(f"{tool} failed: {lines[-1] if lines else f'exit {result.returncode}'}")


def _dump_database(folder: Path) -> Path:
    if _vendor() == "postgresql":
        target = folder / "database.dump"
        _run(["pg_dump", "--format=custom", "--no-owner", "--no-privileges", "-f", str(target)])
        return target
    target = folder / "database.sqlite3"
    connection.ensure_connection()
    copy = sqlite3.connect(target)
    try:
        # The backup API copies a consistent snapshot even while others write.
        connection.connection.backup(copy)
    finally:
        copy.close()
    return target


def _without_password(url: str) -> str:
    parsed = urlparse(url)
    if parsed.password is None:
        return url
    netloc = f"{parsed.username or ''}:***@{parsed.hostname}"
    if parsed.port:
        netloc += f":{parsed.port}"
    return urlunparse(parsed._replace(netloc=netloc))


def settings_record() -> dict:
    """The HANGAR_* variables in effect, secrets left out, and what they came to."""
    variables = {}
    for name, value in sorted(os.environ.items()):
        if not name.startswith("HANGAR_"):
            continue
        if name.endswith("_URL"):
            variables[name] = _without_password(value)
        elif any(word in name for word in SECRET_WORDS) or name.endswith(SECRET_ENDINGS):
            variables[name] = "(not kept: a secret)"
        else:
            variables[name] = value
    return {
        "environment": variables,
        "effective": {
            "DATA_DIR": str(settings.DATA_DIR),
            "ALLOWED_HOSTS": settings.ALLOWED_HOSTS,
            "HTTPS": settings.HTTPS,
            "TRUSTED_PROXIES": [str(n) for n in settings.TRUSTED_PROXIES],
            "TIME_ZONE": settings.TIME_ZONE,
            "MODEL_ROOTS": settings.MODEL_ROOTS,
            "AUDIT_HOT_DAYS": settings.AUDIT_HOT_DAYS,
            "TELEMETRY_DAYS": settings.TELEMETRY_DAYS,
            "PUBLIC_URL": settings.HANGAR_PUBLIC_URL,
        },
    }


def applied_migrations() -> dict[str, list[str]]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT app, name FROM django_migrations ORDER BY app, name")
        rows = cursor.fetchall()
    applied: dict[str, list[str]] = {}
    for app, name in rows:
        applied.setdefault(app, []).append(name)
    return applied


def hangar_version() -> str:
    try:
        return metadata.version("hangar")
    except metadata.PackageNotFoundError:
        return "unknown"


def create_backup(directory: Path, now: datetime | None = None) -> tuple[Path, dict]:
    """Write one backup file into `directory`; returns its path and manifest."""
    now = now or datetime.now(UTC)
    directory.mkdir(parents=True, exist_ok=True)
    name = f"hangar-backup-{now:%Y%m%dT%H%M%SZ}.tar"
    final = directory / name
    if final.exists():
        raise BackupError(f"{final} already exists")
    archives = sorted(Path(settings.AUDIT_ARCHIVE_DIR).glob("*.jsonl.gz"))
    with tempfile.TemporaryDirectory(dir=directory, prefix=".backup-") as staging:
        staging_path = Path(staging)
        database = _dump_database(staging_path)
        (staging_path / "settings.json").write_text(json.dumps(settings_record(), indent=2))
        members = [(database.name, database), ("settings.json", staging_path / "settings.json")]
        members += [(f"{ARCHIVE_FOLDER}/{path.name}", path) for path in archives]
        manifest = {
            "format": FORMAT,
            "created_at": now.isoformat(),
            "hangar_version": hangar_version(),
            "database": {"vendor": _vendor(), "member": database.name},
            "migrations": applied_migrations(),
            "secrets": "not included (docs/backup.md)",
            "files": [
                {"name": arcname, "size": path.stat().st_size, "sha256": _sha256(path)}
                for arcname, path in members
            ],
        }
        (staging_path / MANIFEST).write_text(json.dumps(manifest, indent=2))
        partial = staging_path / f"{name}.partial"
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as raw, tarfile.open(fileobj=raw, mode="w") as tar:
            tar.add(staging_path / MANIFEST, arcname=MANIFEST)
            for arcname, path in members:
                tar.add(path, arcname=arcname)
        os.replace(partial, final)
    return final, manifest


def _read_manifest(tar: tarfile.TarFile, source: Path) -> dict:
    try:
        handle = tar.extractfile(MANIFEST)
        manifest = json.loads(handle.read()) if handle else None
    except (KeyError, json.JSONDecodeError):
        manifest = None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list):
        raise BackupError(f"{source} has no readable {MANIFEST}: not a Hangar backup")
    if manifest.get("format") != FORMAT:
        raise BackupError(f"{source} is backup format {manifest.get('format')}, not {FORMAT}")
    return manifest


def _safe_name(name: str) -> bool:
    parts = Path(name).parts
    return bool(parts) and not Path(name).is_absolute() and ".." not in parts


def unpack_verified(source: Path, folder: Path) -> dict:
    """Extract the backup into `folder`, checking every member against the manifest."""
    try:
        tar = tarfile.open(source, mode="r:")  # noqa: SIM115 (closed by the with below)
    except (OSError, tarfile.TarError) as exc:
        raise BackupError(f"{source} cannot be read as a backup: {exc}") from None
    with tar:
        manifest = _read_manifest(tar, source)
        expected = {entry["name"]: entry for entry in manifest["files"]}
        present = {member.name: member for member in tar.getmembers() if member.name != MANIFEST}
        for name, member in present.items():
            if name not in expected:
                raise BackupError(f"{source} holds {name!r}, which its manifest doesn't list")
            if not member.isfile() or not _safe_name(name):
                raise BackupError(f"{source}: {name!r} is not a plain file inside the backup")
        for name, entry in expected.items():
            if name not in present:
                raise BackupError(f"{source} is missing {name} (listed in its manifest)")
            target = folder / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(present[name]) as handle, target.open("wb") as out:
                shutil.copyfileobj(handle, out)
            if target.stat().st_size != entry["size"] or _sha256(target) != entry["sha256"]:
                raise BackupError(f"{source} is damaged: {name} does not match its checksum")
    return manifest


def _unknown_migrations(manifest: dict) -> list[str]:
    known = set(MigrationLoader(None, ignore_no_migrations=True).disk_migrations)
    return [
        f"{app}.{name}"
        for app, names in manifest.get("migrations", {}).items()
        for name in names
        if (app, name) not in known
    ]


def existing_data() -> str | None:
    """What the database already holds that a restore would destroy, or None.

    A fresh `migrate` fills some tables itself (content types, permissions, the
    default alert rules), so "empty" means: no user and no audit event. Whatever
    a person or an agent did through Hangar left an audit event. The models are
    found by label in the app registry: core imports no app (docs/architecture.md).
    """
    found = []
    with connection.cursor() as cursor:
        tables = set(connection.introspection.table_names(cursor))
        for label, noun in (("auth.User", "users"), ("audit.AuditEvent", "audit events")):
            table = django_apps.get_model(label)._meta.db_table
            if table not in tables:
                continue
            cursor.execute(f"SELECT COUNT(*) FROM {connection.ops.quote_name(table)}")  # noqa: S608
            count = cursor.fetchone()[0]
            if count:
                found.append(f"{count} {noun}")
    return ", ".join(found) or None


def _drop_tables() -> None:
    """Empty the schema first: tables a newer `migrate` made would clash with the
    backup's own migration history (and --force means replace everything)."""
    with connection.cursor() as cursor:
        tables = connection.introspection.table_names(cursor)
        if tables:
            names = ", ".join(connection.ops.quote_name(table) for table in tables)
            cursor.execute(f"DROP TABLE IF EXISTS {names} CASCADE")


def _restore_database(vendor: str, folder: Path, member: str) -> None:
    if vendor == "postgresql":
        _drop_tables()
        connection.close()
        _run(
            [
                *("pg_restore", "--no-owner", "--no-privileges"),
                *("--single-transaction", "--exit-on-error"),
                *("-d", connection.settings_dict["NAME"], str(folder / member)),
            ]
        )
        return
    connection.close()
    source = sqlite3.connect(folder / member)
    target = sqlite3.connect(connection.settings_dict["NAME"])
    try:
        source.backup(target)
    finally:
        source.close()
        target.close()


def restore_backup(source: Path, force: bool = False) -> Restored:
    """Put a backup's database and audit archives in place of this console's.

    Refuses a database that already holds data unless `force`. Every checksum is
    verified before anything is changed."""
    if not source.is_file():
        raise BackupError(f"{source} is not a file")
    vendor = _vendor()
    with tempfile.TemporaryDirectory(prefix="hangar-restore-") as staging:
        folder = Path(staging)
        manifest = unpack_verified(source, folder)
        database = manifest.get("database") or {}
        if database.get("vendor") != vendor:
            raise BackupError(
                f"{source} holds a {database.get('vendor')} database and this console uses "
                f"{vendor}; restore it into the same kind of database"
            )
        unknown = _unknown_migrations(manifest)
        if unknown:
            raise BackupError(
                f"{source} is from a newer Hangar ({manifest.get('hangar_version')}, "
                f"migration {unknown[0]}); restore it with that version"
            )
        holding = existing_data()
        if holding and not force:
            raise BackupError(
                f"the database {connection.settings_dict['NAME']} is not empty ({holding}); "
                "restore into an empty database, or pass --force to replace it"
            )
        _restore_database(vendor, folder, database["member"])
        archive_dir = Path(settings.AUDIT_ARCHIVE_DIR)
        archive_dir.mkdir(parents=True, exist_ok=True)
        archives = [e["name"] for e in manifest["files"] if e["name"].startswith(ARCHIVE_FOLDER)]
        for name in archives:
            shutil.copy2(folder / name, archive_dir / Path(name).name)
    return Restored(
        vendor=vendor,
        archives=len(archives),
        hangar_version=str(manifest.get("hangar_version")),
        created_at=str(manifest.get("created_at")),
    )
