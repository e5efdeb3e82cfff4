import base64
import json
import socket
import urllib.error
import urllib.request

import pytest
import redis

from apps.core import health
from apps.core.redis_target import RedisTarget
from tests.support import processes


def test_healthz_tells_anonymous_callers_only_each_dependencys_state(client, db):
    response = client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["checks"] == {
        "database": {"state": "up"},
        "redis": {"state": "up"},
        "celery": {"state": body["checks"]["celery"]["state"]},
        "outbox": {"state": "ok"},
    }
    assert body["checks"]["celery"]["state"] in {"up", "none"}


def test_healthz_gives_logged_in_users_each_checks_details(client, admin_user):
    client.force_login(admin_user)
    response = client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["checks"]["database"]["state"] == "up"
    assert body["checks"]["redis"]["state"] == "up"
    assert body["checks"]["celery"]["state"] in {"up", "none"}
    assert body["checks"]["database"]["vendor"] == "postgresql"
    assert isinstance(body["checks"]["celery"]["workers"], list)


def test_healthz_names_celery_workers_and_their_hosts_to_logged_in_users_only(
    client, admin_user, console_worker
):
    hostname = socket.gethostname()
    anonymous = client.get("/healthz")
    assert anonymous.json()["checks"]["celery"] == {"state": "up"}
    assert hostname not in anonymous.content.decode()

    client.force_login(admin_user)
    workers = client.get("/healthz").json()["checks"]["celery"]["workers"]
    assert any(
        name.startswith("console-test-") and name.endswith(f"@{hostname}") for name in workers
    )


def celery_pings(listener) -> int:
    """Broadcast pings seen on this console's pidbox channel since the last call."""
    count = 0
    while (message := listener.get_message(timeout=1)) is not None:
        if message["type"] != "message":
            continue
        body = json.loads(base64.b64decode(json.loads(message["data"])["body"]))
        count += body.get("method") == "ping"
    return count


def test_the_celery_ping_is_not_repeated_within_the_cache_window(client, db, settings, monkeypatch):
    monkeypatch.setattr(health, "CELERY_CHECK_SECONDS", 600)  # no expiry between the calls
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    listener = broker.pubsub()
    listener.subscribe(f"/{broker.connection_pool.connection_kwargs['db']}.celery.pidbox")
    celery_pings(listener)  # the subscription's confirmation

    states = [client.get("/healthz").json()["checks"]["celery"]["state"] for _ in range(3)]

    assert celery_pings(listener) == 1
    assert len(set(states)) == 1
    listener.close()


@pytest.mark.django_db
def test_healthz_is_503_when_redis_is_down(client, settings):
    settings.REDIS = RedisTarget(f"redis://127.0.0.1:{processes.free_port()}/0")
    response = client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["redis"] == {"state": "down"}
    assert body["checks"]["database"] == {"state": "up"}


def test_healthz_shows_the_error_text_to_logged_in_users(client, settings, admin_user):
    client.force_login(admin_user)
    port = processes.free_port()
    settings.REDIS = RedisTarget(f"redis://127.0.0.1:{port}/0")
    body = client.get("/healthz").json()
    assert body["checks"]["redis"]["state"] == "down"
    assert str(port) in body["checks"]["redis"]["error"]


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
        # To an anonymous caller: the state, not the error naming the database's host.
        assert answered.body["checks"]["database"] == {"state": "down"}
        assert answered.body["checks"]["redis"] == {"state": "up"}
    finally:
        processes.stop(proc)
