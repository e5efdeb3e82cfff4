"""An upgrade: a database the previous release made and filled, migrated by this code.

The previous release is commit PREVIOUS_RELEASE (main before issue 14, the last
state before v0.2.0); its tree is taken from git with `git archive`, run with
this venv, and writes the rows with its own code (populate.py).
"""

from __future__ import annotations

import io
import subprocess
import tarfile

import pytest

from tests.support import processes

# Move this forward at each release: the release before the one being built.
PREVIOUS_RELEASE = "5741de3"


@pytest.fixture
def previous_release(tmp_path):
    tree = tmp_path / f"hangar-{PREVIOUS_RELEASE}"
    try:
        archive = subprocess.run(
            ["git", "-C", str(processes.ROOT), "archive", "--format=tar", PREVIOUS_RELEASE],
            check=True, capture_output=True,
        ).stdout  # fmt: skip
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"git has no {PREVIOUS_RELEASE} (a shallow clone?): {exc.stderr.decode()}")
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(tree, filter="data")
    return tree


def test_a_database_of_the_previous_release_migrates_with_data_and_chain_intact(
    previous_release, new_database, console_at, tmp_path
):
    url, data = new_database("upgrade"), tmp_path / "data"
    old = console_at(previous_release, url, data)
    where = old.run("-c", "import apps, console; print(apps.__file__, console.__file__)")
    assert where.stdout.count(str(previous_release)) == 2, where.stdout  # the old code ran
    old.manage("migrate", "--noinput")
    before = old.populate()
    assert before["audit.ArchiveSegment"] >= 2

    new = console_at(processes.ROOT, url, data)
    new.manage("migrate", "--noinput")
    assert new.manage("migrate", "--check", check=False).returncode == 0
    after = new.counts()
    # Django adds permissions and content types for the models a release brings;
    # every other table keeps exactly the rows it had.
    grown = {"auth.Permission", "contenttypes.ContentType"}
    assert {label: after.get(label) for label in before if label not in grown} == {
        label: n for label, n in before.items() if label not in grown
    }
    assert all(after[label] >= before[label] for label in grown & before.keys())
    verified = new.manage("audit", "verify", "--archives")
    assert "chain intact" in verified.stdout
    # The new code reads the old rows through its own models.
    shown = new.manage(
        "shell",
        "-c",
        "from apps.gateway.models import Route; r = Route.objects.get(name='chat');"
        "print(r.targets.get().deployment.name, r.targets.get().deployment.cluster.name)",
    )
    assert shown.stdout.strip().splitlines()[-1].split() == ["qwen-chat", "campus-a"]
