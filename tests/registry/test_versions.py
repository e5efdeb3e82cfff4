"""Model versions: allowed roots, checksums, immutability, retirement."""

import hashlib
import os
import subprocess

import pytest

from apps.deployments.models import Deployment, DesiredState
from apps.registry.models import Model, ModelVersion, VersionState
from apps.registry.paths import PathRefused, check_model_path
from apps.registry.services import hash_version
from tests.support import processes


@pytest.fixture
def model_root(tmp_path, settings):
    root = tmp_path / "models"
    (root / "minilm" / "v1").mkdir(parents=True)
    (root / "minilm" / "v1" / "model.safetensors").write_bytes(os.urandom(3 * 1024 * 1024 + 7))
    (root / "minilm" / "v1" / "config.json").write_text('{"dim": 384}')
    settings.MODEL_ROOTS = [str(root)]
    return root


@pytest.fixture
def model(db):
    return Model.objects.create(name="all-MiniLM-L6-v2", family="MiniLM", task="embedding")


def test_registering_a_version_checksums_every_file_like_sha256sum(admin_api, model, model_root):
    response = admin_api.post(
        "/api/v1/model-versions/",
        {
            "model": model.pk,
            "label": "v1",
            "path": str(model_root / "minilm" / "v1"),
            "format": "safetensors",
        },
        format="json",
    )
    assert response.status_code == 201, response.json()
    assert response.json()["state"] == "draft"
    version = hash_version(response.json()["id"])
    assert version.state == VersionState.READY
    expected = {}
    for line in subprocess.run(
        ["sha256sum", "config.json", "model.safetensors"],
        cwd=model_root / "minilm" / "v1",
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines():
        digest, name = line.split()
        expected[name] = digest
    assert {f["path"]: f["sha256"] for f in version.files} == expected
    assert version.size_bytes == 3 * 1024 * 1024 + 7 + len('{"dim": 384}')
    assert version.progress["done_bytes"] == version.size_bytes


@pytest.mark.parametrize(
    "make_path, message",
    [
        (lambda root, tmp: "/etc", "outside the allowed model roots"),
        (lambda root, tmp: str(root / "minilm" / ".." / ".." / "escape"), "'..'"),
        (lambda root, tmp: "relative/path", "not absolute"),
        (lambda root, tmp: str(root / "missing"), "not a directory"),
    ],
)
def test_paths_outside_the_roots_are_refused_with_a_reason(
    admin_api, model, model_root, tmp_path, make_path, message
):
    response = admin_api.post(
        "/api/v1/model-versions/",
        {
            "model": model.pk,
            "label": "bad",
            "path": make_path(model_root, tmp_path),
            "format": "gguf",
        },
        format="json",
    )
    assert response.status_code == 400
    assert message in response.json()["fields"]["path"][0]
    assert ModelVersion.objects.count() == 0


def test_a_symlink_leaving_the_root_is_refused_not_followed(model_root, tmp_path, db):
    outside = tmp_path / "secret"
    outside.mkdir()
    (model_root / "sneaky").symlink_to(outside)
    with pytest.raises(PathRefused, match="symbolic link"):
        check_model_path(str(model_root / "sneaky"))
    (model_root / "minilm" / "v1" / "leak").symlink_to(outside / "x")
    version = ModelVersion.objects.create(
        model=Model.objects.create(name="m"),
        label="v",
        path=str(model_root / "minilm" / "v1"),
        format="other",
    )
    with pytest.raises(PathRefused):
        hash_version(version.pk)
    version.refresh_from_db()
    assert version.state == VersionState.DRAFT and "symbolic link" in version.error


def test_a_ready_version_is_immutable_and_has_no_update_endpoint(admin_api, model, model_root):
    version = ModelVersion.objects.create(
        model=model, label="v1", format="safetensors", path=str(model_root / "minilm" / "v1")
    )
    hash_version(version.pk)
    version = ModelVersion.objects.get(pk=version.pk)
    version.files = [{"path": "model.safetensors", "sha256": "0" * 64, "size": 1}]
    with pytest.raises(ValueError, match="immutable"):
        version.save()
    assert (
        admin_api.patch(
            f"/api/v1/model-versions/{version.pk}/", {"label": "x"}, format="json"
        ).status_code
        == 405
    )
    assert admin_api.delete(f"/api/v1/model-versions/{version.pk}/").status_code == 400


def test_model_managers_register_and_viewers_cannot(client_for, make_user, model, model_root):
    body = {
        "model": model.pk,
        "label": "v9",
        "path": str(model_root / "minilm" / "v1"),
        "format": "safetensors",
    }
    assert (
        client_for(make_user("vic", "viewer"))
        .post("/api/v1/model-versions/", body, format="json")
        .status_code
        == 403
    )
    assert (
        client_for(make_user("mia", "model-manager"))
        .post("/api/v1/model-versions/", body, format="json")
        .status_code
        == 201
    )


def test_sha256_of_a_large_file_matches_hashlib(tmp_path):
    from apps.registry.services import sha256_file

    path = tmp_path / "blob"
    data = os.urandom(9 * 1024 * 1024 + 3)
    path.write_bytes(data)
    seen = []
    assert sha256_file(path, seen.append) == hashlib.sha256(data).hexdigest()
    assert sum(seen) == len(data)


def test_a_version_a_stopped_deployment_uses_cannot_be_retired_until_it_moves_on(
    admin_api, model, cluster
):
    """Stopped is not gone: starting the deployment again would run the version."""
    v1, v2 = (
        ModelVersion.objects.create(
            model=model, label=label, format="safetensors", path=f"/m/{label}", state="ready"
        )
        for label in ("v1", "v2")
    )
    deployment = Deployment.objects.create(
        name="embed",
        cluster=cluster,
        model_version=v1,
        engine="vllm",
        port=8000,
        desired_state=DesiredState.STOPPED,
    )

    refused = admin_api.post(f"/api/v1/model-versions/{v1.pk}/retire/")

    assert refused.status_code == 400
    assert "embed" in refused.json()["detail"]
    assert ModelVersion.objects.get(pk=v1.pk).state == VersionState.READY
    deployment.model_version = v2
    deployment.save(update_fields=["model_version"])
    assert admin_api.post(f"/api/v1/model-versions/{v1.pk}/retire/").status_code == 200
    assert ModelVersion.objects.get(pk=v1.pk).state == VersionState.RETIRED


@pytest.fixture
def roots_for_workers(model_root, monkeypatch):
    """The console worker (a process of its own) sees the same model root."""
    monkeypatch.setenv("HANGAR_MODEL_ROOTS", str(model_root))
    return model_root


def test_a_checksum_no_worker_holds_is_queued_again_and_a_held_one_is_not(
    roots_for_workers, model, console_worker
):
    """A worker killed mid-checksum leaves its task unacknowledged for kombu's hour;
    its lease runs out, and beat's resume queues the draft to a live worker."""
    from datetime import timedelta

    from django.conf import settings
    from django.utils import timezone

    from apps.registry import services

    version = ModelVersion.objects.create(
        model=model, label="v1", format="safetensors", path=str(roots_for_workers / "minilm" / "v1")
    )
    ModelVersion.objects.filter(pk=version.pk).update(
        created_at=timezone.now() - timedelta(minutes=5)
    )
    client = settings.REDIS.client()
    lease_key = services.checksum_key(version.pk)
    # The killed worker's lease, still running out: nobody else may take the draft.
    client.set(lease_key, "killed-worker", ex=2)
    assert services.resume_checksums() == []
    assert services.hash_version(version.pk).state == VersionState.DRAFT  # a copy: no-op
    assert ModelVersion.objects.get(pk=version.pk).progress == {}

    processes.wait_for(lambda: not client.exists(lease_key), what="the lease running out")
    assert services.resume_checksums() == [version.pk]
    assert services.resume_checksums() == []  # queued once, not every beat
    processes.wait_for(
        lambda: ModelVersion.objects.get(pk=version.pk).state == VersionState.READY,
        what="the live worker's checksum",
    )
    assert not client.exists(lease_key)  # released by the worker that finished
    ready = ModelVersion.objects.get(pk=version.pk)
    assert {f["path"] for f in ready.files} == {"config.json", "model.safetensors"}
    assert services.resume_checksums() == []


def test_a_draft_that_failed_with_an_error_is_not_queued_again(model, model_root):
    from datetime import timedelta

    from django.utils import timezone

    from apps.registry import services

    version = ModelVersion.objects.create(
        model=model, label="v1", format="other", path="/not/under/a/root"
    )
    with pytest.raises(PathRefused):
        hash_version(version.pk)
    ModelVersion.objects.filter(pk=version.pk).update(
        created_at=timezone.now() - timedelta(minutes=5)
    )
    assert services.resume_checksums() == []


def test_a_file_that_cannot_be_read_mid_checksum_is_an_error_not_a_retry(
    model, model_root, monkeypatch
):
    """resume_checksums would queue a draft without an error again every 5 minutes.
    A read error (a failing disk) cannot be made here as root: it is injected."""
    from datetime import timedelta

    from django.utils import timezone

    from apps.registry import services

    def failing_disk(path, progress):
        raise OSError(5, "Input/output error", str(path))

    monkeypatch.setattr(services, "sha256_file", failing_disk)
    path = model_root / "minilm" / "v1"
    version = ModelVersion.objects.create(model=model, label="v1", format="other", path=str(path))
    with pytest.raises(OSError):
        hash_version(version.pk)
    version.refresh_from_db()
    assert version.state == VersionState.DRAFT and "Input/output error" in version.error
    ModelVersion.objects.filter(pk=version.pk).update(
        created_at=timezone.now() - timedelta(minutes=5)
    )
    assert services.resume_checksums() == []
