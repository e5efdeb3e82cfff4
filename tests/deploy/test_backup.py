"""`manage.py backup` and `manage.py restore`, round trips through real databases."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from tests.support import processes

ROOT = processes.ROOT


@pytest.fixture
def populated(new_database, console_at, tmp_path):
    """A console on PostgreSQL with a bit of everything, its counts and one backup."""
    console = console_at(ROOT, new_database("source"), tmp_path / "source-data")
    console.manage("migrate", "--noinput")
    counts = console.populate()
    output = console.manage("backup", "--output", str(tmp_path / "backups")).stdout
    [backup] = (tmp_path / "backups").glob("hangar-backup-*.tar")
    assert str(backup) in output
    return console, counts, backup


def test_a_backup_restores_into_an_empty_database_with_the_chain_and_counts_intact(
    populated, new_database, console_at, tmp_path
):
    _source, counts, backup = populated
    assert counts["audit.ArchiveSegment"] >= 2  # the round trip carries archive files
    target = console_at(ROOT, new_database("restored"), tmp_path / "restored-data")
    target.manage("restore", str(backup))
    verified = target.manage("audit", "verify", "--archives")
    assert "chain intact" in verified.stdout
    # Everything came back; the one extra event is the restore's own record.
    expected = {**counts, "audit.AuditEvent": counts["audit.AuditEvent"] + 1}
    assert target.counts() == expected
    archives = sorted(p.name for p in (target.data_dir / "audit-archive").iterdir())
    assert len(archives) == counts["audit.ArchiveSegment"]


def test_a_backup_holds_a_manifest_with_checksums_and_no_secrets(populated):
    source, _counts, backup = populated
    with tarfile.open(backup) as tar:
        names = tar.getnames()
        manifest = json.loads(tar.extractfile("manifest.json").read())
        recorded = json.loads(tar.extractfile("settings.json").read())
    assert names[0] == "manifest.json"
    assert sorted(names[1:]) == sorted(entry["name"] for entry in manifest["files"])
    assert manifest["database"] == {"vendor": "postgresql", "member": "database.dump"}
    assert all(len(entry["sha256"]) == 64 for entry in manifest["files"])
    assert "audit" in manifest["migrations"]
    assert oct(backup.stat().st_mode & 0o777) == "0o600"
    secret_key = (source.data_dir / "secret_key").read_text().strip()
    assert secret_key not in json.dumps(recorded)
    assert "secret_key" not in " ".join(names)


def test_restore_refuses_a_database_that_holds_data_unless_forced(populated):
    source, counts, backup = populated
    refused = source.manage("restore", str(backup), check=False)
    assert refused.returncode == 1
    [line] = refused.stderr.strip().splitlines()
    assert "is not empty" in line and "--force" in line
    source.manage("restore", str(backup), "--force")
    assert "chain intact" in source.manage("audit", "verify", "--archives").stdout
    # The database is the backup's again: the backup's own event (written after
    # the dump) is gone, and the restore's is new.
    assert source.counts()["audit.AuditEvent"] == counts["audit.AuditEvent"] + 1


def _tampered(backup: Path, member: str, tmp_path: Path) -> Path:
    damaged = tmp_path / "damaged.tar"
    with tarfile.open(backup) as original, tarfile.open(damaged, "w") as copy:
        for info in original.getmembers():
            data = original.extractfile(info).read()
            if info.name == member:
                data = data[:-1] + bytes([data[-1] ^ 0xFF])
            copy.addfile(info, io.BytesIO(data))
    return damaged


def test_restore_refuses_a_damaged_backup_before_touching_the_database(
    populated, new_database, console_at, tmp_path
):
    _source, _counts, backup = populated
    target = console_at(ROOT, new_database("damaged"), tmp_path / "damaged-data")
    refused = target.manage("restore", str(_tampered(backup, "database.dump", tmp_path)),
                            check=False)  # fmt: skip
    assert refused.returncode == 1
    [line] = refused.stderr.strip().splitlines()
    assert line.endswith("is damaged: database.dump does not match its checksum")
    # Nothing was restored: the database has no tables at all.
    assert target.tables() == []


def test_restore_of_something_else_is_a_one_line_error(console_at, new_database, tmp_path):
    target = console_at(ROOT, new_database("other"), tmp_path / "other-data")
    (tmp_path / "notes.tar").write_bytes(b"not a tar file at all" * 100)
    refused = target.manage("restore", str(tmp_path / "notes.tar"), check=False)
    assert refused.returncode == 1
    [line] = refused.stderr.strip().splitlines()
    assert "cannot be read as a backup" in line


def test_a_sqlite_console_backs_up_and_restores_through_the_backup_api(console_at, tmp_path):
    source = console_at(ROOT, f"sqlite:///{tmp_path}/source.sqlite3", tmp_path / "source-data")
    source.manage("migrate", "--noinput")
    counts = source.populate()
    source.manage("backup", "--output", str(tmp_path / "backups"))
    [backup] = (tmp_path / "backups").glob("*.tar")
    with tarfile.open(backup) as tar:
        assert "database.sqlite3" in tar.getnames()
    target = console_at(ROOT, f"sqlite:///{tmp_path}/restored.sqlite3", tmp_path / "restored")
    target.manage("restore", str(backup))
    assert "chain intact" in target.manage("audit", "verify", "--archives").stdout
    assert target.counts() == {**counts, "audit.AuditEvent": counts["audit.AuditEvent"] + 1}


def test_a_database_that_was_only_migrated_counts_as_empty(
    populated, new_database, console_at, tmp_path
):
    _source, counts, backup = populated
    target = console_at(ROOT, new_database("migrated"), tmp_path / "migrated-data")
    target.manage("migrate", "--noinput")  # seeds default alert rules, but no user
    target.manage("restore", str(backup))
    assert target.counts()["auth.User"] == counts["auth.User"]
    assert "chain intact" in target.manage("audit", "verify", "--archives").stdout
