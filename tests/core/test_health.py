import json
import urllib.error
import urllib.request

import pytest

from tests.support import processes


def test_healthz_names_each_dependency_and_its_state(client, db):
    response = client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["checks"]["database"]["state"] == "up"
    assert body["checks"]["redis"]["state"] == "up"
    assert body["checks"]["celery"]["state"] in {"up", "none"}


@pytest.mark.django_db
def test_healthz_is_503_when_redis_is_down(client, settings):
    settings.REDIS_URL = f"redis://127.0.0.1:{processes.free_port()}/0"
    response = client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["redis"]["state"] == "down"
    assert body["checks"]["database"]["state"] == "up"


def test_healthz_is_503_from_a_real_daphne_whose_database_is_down(tmp_path, db):
    port = processes.free_port()
    dead_db = f"postgres://postgres@127.0.0.1:{processes.free_port()}/nothing"
    proc = processes.start(
        [
            str(processes.BIN / "daphne"),
            "-b",
            "127.0.0.1",
            "-p",
            str(port),
            "console.asgi:application",
        ],
        processes.console_env(HANGAR_DATABASE_URL=dead_db),
        tmp_path / "daphne.log",
    )
    try:

        def answered():
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=3)
            except urllib.error.HTTPError as exc:
                answered.body = json.loads(exc.read())
                return exc.code == 503
            return False

        processes.wait_for(answered, what="a 503 from /healthz", process=proc)
        assert answered.body["checks"]["database"]["state"] == "down"
        assert answered.body["checks"]["redis"]["state"] == "up"
    finally:
        processes.stop(proc)
