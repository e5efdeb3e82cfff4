"""Enrollment with the real `hangar-agent enroll` against a real Daphne."""

import json
import os
import stat
import subprocess
from datetime import timedelta

from django.utils import timezone

from apps.audit.models import AuditEvent
from apps.inventory.models import EnrollmentToken, Node
from apps.inventory.services import sha256
from tests.support import processes


def agent_enroll(url: str, token: str, state_dir) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            str(processes.BIN / "hangar-agent"),
            "enroll",
            "--console",
            url,
            "--token",
            token,
            "--state-dir",
            str(state_dir),
            "--simulate",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_an_admin_token_enrolls_a_host_once(daphne, admin_api, cluster, tmp_path):
    response = admin_api.post(
        "/api/v1/enrollment-tokens/", {"cluster": cluster.pk, "hours": 2}, format="json"
    )
    assert response.status_code == 201
    body = response.json()
    secret = body["secret"]
    assert body["command"].endswith(f"--token {secret}")
    stored = EnrollmentToken.objects.get(pk=body["id"])
    assert stored.token_hash == sha256(secret) and secret not in json.dumps(
        admin_api.get(f"/api/v1/enrollment-tokens/{body['id']}/").json()
    )

    done = agent_enroll(daphne.url, secret, tmp_path / "agent")
    assert done.returncode == 0, done.stderr
    credential_file = tmp_path / "agent" / "credential.json"
    assert stat.S_IMODE(os.stat(credential_file).st_mode) == 0o600
    credential = json.loads(credential_file.read_text())
    node = Node.objects.get(pk=credential["node_id"])
    assert node.cluster == cluster and node.simulated
    assert node.credential_hash == sha256(credential["credential"])
    assert credential["queue"] == f"node.{node.pk}"
    assert [g.index for g in node.gpus.order_by("index")] == [0, 1]
    assert (
        AuditEvent.objects.filter(
            action="inventory.enroll", outcome="allowed", target_id=str(node.pk)
        ).count()
        == 1
    )

    again = agent_enroll(daphne.url, secret, tmp_path / "second")
    assert again.returncode != 0
    assert len(again.stderr.strip().splitlines()) == 1
    assert "used" in again.stderr
    assert not (tmp_path / "second" / "credential.json").exists()
    assert Node.objects.count() == 1
    assert AuditEvent.objects.filter(action="inventory.enroll", outcome="denied").count() == 1


def test_an_expired_token_is_refused(daphne, admin_api, cluster, tmp_path):
    secret = admin_api.post(
        "/api/v1/enrollment-tokens/", {"cluster": cluster.pk}, format="json"
    ).json()["secret"]
    EnrollmentToken.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    done = agent_enroll(daphne.url, secret, tmp_path / "agent")
    assert done.returncode != 0 and "expired" in done.stderr
    assert Node.objects.count() == 0


def test_enroll_endpoint_rejects_bad_input_with_a_message(client, db):
    response = client.post(
        "/api/v1/agent/enroll/",
        {"token": "x", "hostname": "bad host;rm"},
        content_type="application/json",
    )
    assert response.status_code == 400
    assert "hostname" in response.json()["fields"]
    response = client.post("/api/v1/agent/enroll/", "{broken", content_type="application/json")
    assert response.status_code == 400 and "JSON" in response.json()["detail"]


def test_a_cluster_operator_cannot_create_enrollment_tokens(client_for, make_user, cluster):
    operator = make_user("opal", ("operator", cluster))
    response = client_for(operator).post(
        "/api/v1/enrollment-tokens/", {"cluster": cluster.pk}, format="json"
    )
    assert response.status_code == 403
    assert EnrollmentToken.objects.count() == 0


def test_a_cluster_admin_enrolls_only_into_their_cluster(
    client_for, make_user, cluster, other_cluster
):
    local_admin = make_user("ada", ("admin", cluster))
    api = client_for(local_admin)
    assert (
        api.post("/api/v1/enrollment-tokens/", {"cluster": cluster.pk}, format="json").status_code
        == 201
    )
    assert (
        api.post(
            "/api/v1/enrollment-tokens/", {"cluster": other_cluster.pk}, format="json"
        ).status_code
        == 403
    )
    assert list(EnrollmentToken.objects.values_list("cluster", flat=True)) == [cluster.pk]
