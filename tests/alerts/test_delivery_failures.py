"""Every failure of a send is a recorded, retried failure: a receiver that answers
something other than HTTP included (http.client raises neither URLError nor OSError)."""

import pytest

from apps.alerts import services
from apps.alerts.models import Delivery, Receiver
from apps.inventory.models import Node
from tests.alerts.conftest import make_rule
from tests.support.processes import wait_for

HOT = {"gpu.0.temperature": 95.0}


@pytest.fixture
def node(cluster):
    return Node.objects.create(cluster=cluster, hostname="gpu-a1", state="online")


@pytest.fixture
def garbled(garbage_webhook, db) -> Receiver:
    return Receiver.objects.create(name="garbled", kind="webhook", url=garbage_webhook.url)


@pytest.fixture
def eager_celery():
    from console.celery import app

    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = False


def test_a_receiver_answering_garbage_has_its_attempts_recorded_and_retried_by_the_worker(
    celery_worker, garbage_webhook, garbled, node
):
    make_rule(receivers=[garbled])

    services.evaluate_values(node, HOT)  # deliver.delay on commit, to the real worker

    wait_for(lambda: Delivery.objects.get().attempts >= 2, what="a second attempt")
    delivery = Delivery.objects.get()
    assert delivery.state == "retrying"
    assert delivery.last_error.startswith(f"{garbage_webhook.url} did not answer in HTTP: ")
    assert "BadStatusLine" in delivery.last_error
    assert garbage_webhook.requests >= 2


@pytest.mark.parametrize(
    ("garbage_webhook", "error"),
    [
        (b"garbage\r\n", "BadStatusLine"),
        (b"HTTP/1.1 200 " + b"O" * 70_000 + b"\r\n", "LineTooLong"),
        (b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 101 + b"\r\n", "HTTPException"),
    ],
    indirect=["garbage_webhook"],
)
def test_a_receiver_answering_garbage_ends_failed_after_the_last_attempt(
    garbage_webhook, error, garbled, node, eager_celery, django_capture_on_commit_callbacks,
    monkeypatch,
):  # fmt: skip
    from apps.alerts import tasks

    monkeypatch.setattr(tasks, "MAX_ATTEMPTS", 3)
    make_rule(receivers=[garbled])
    with django_capture_on_commit_callbacks(execute=True):
        services.evaluate_values(node, HOT)

    delivery = Delivery.objects.get()
    assert (delivery.state, delivery.attempts) == ("failed", 3)
    assert delivery.last_error.startswith(f"{garbage_webhook.url} did not answer in HTTP: ")
    assert error in delivery.last_error
    assert garbage_webhook.requests == 3
