"""Operations at the same moment: real PostgreSQL, one connection per thread.

Each race is made reliable by holding one thread right after the query the race
is about (a database execute wrapper, no code of ours replaced) until the other
has done its part. Where the fix makes the other thread wait for a lock
instead, the hold gives up after a few seconds and the threads finish in turn.
"""

from __future__ import annotations

import contextlib
import threading

import pytest
from django.db import connection, connections

from apps.deployments import services
from apps.deployments.models import Deployment, DesiredState, Worker, WorkerState
from apps.deployments.placement import PlacementError
from tests.deployments.conftest import make_node, ready_version

pytestmark = pytest.mark.django_db(transaction=True)
HOLD_SECONDS = 5  # how long a held thread waits for the other before going on
GPUS_IN_USE = 'SELECT "deployments_worker"."node_id", "deployments_worker"."gpus"'
LIVE_WORKERS = 'SELECT "deployments_worker"."id"'


class HoldAfter:
    """An execute wrapper: after the first query starting with `sql`, wait at `gate`."""

    def __init__(self, sql: str, gate):
        self.sql, self.gate, self.held = sql, gate, False

    def __call__(self, execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        if not self.held and sql.startswith(self.sql):
            self.held = True
            self.gate()
        return result


def in_threads(*jobs):
    """Run each job in its own thread (and connection); returns results or exceptions."""
    results: list = [None] * len(jobs)

    def run(index, job):
        try:
            results[index] = job()
        except Exception as exc:  # the caller asserts on it
            results[index] = exc
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(i, job)) for i, job in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def barrier_gate(barrier: threading.Barrier):
    def gate():
        # Broken when the other thread waits for our lock: go on and release it.
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait(timeout=HOLD_SECONDS)

    return gate


def test_two_creates_at_once_never_get_the_same_gpu(cluster):
    make_node(cluster, "gpu-a", gpus=1)
    version = ready_version()
    both_read = threading.Barrier(2)

    def create(name, port):
        def job():
            with connection.execute_wrapper(HoldAfter(GPUS_IN_USE, barrier_gate(both_read))):
                return services.create_deployment(
                    None,
                    name=name,
                    cluster=cluster,
                    model_version=version,
                    engine="reference",
                    replicas=1,
                    port=port,
                    placement={"mode": "auto", "gpus_per_replica": 1},
                )

        return job

    results = in_threads(create("one", 9000), create("two", 9100))

    running = Worker.objects.filter(desired_state=DesiredState.RUNNING)
    assert [(w.node.hostname, w.gpus) for w in running] == [("gpu-a", [0])]
    assert sorted(type(r).__name__ for r in results) == ["Deployment", "PlacementError"]
    refusal = next(r for r in results if isinstance(r, PlacementError))
    assert "No online node in campus-a has 1 free GPU(s)" in str(refusal)


def test_two_rollout_steps_at_once_start_one_replacement_per_slot(cluster):
    node = make_node(cluster, "gpu-a", gpus=2)
    v1, v2 = ready_version(label="v1"), ready_version(label="v2")
    deployment = Deployment.objects.create(
        name="chat",
        cluster=cluster,
        model_version=v1,
        engine="reference",
        replicas=2,
        port=9000,
        placement={"mode": "auto", "gpus_per_replica": 1},
    )
    for slot in (0, 1):
        Worker.objects.create(
            deployment=deployment,
            node=node,
            model_version=v1,
            slot=slot,
            gpus=[slot],
            port=9000 + slot,
            state=WorkerState.READY,
        )
    services.roll_out(deployment, v2)  # replaces slot 0 first
    Worker.objects.filter(model_version=v2, slot=0).update(state=WorkerState.READY)
    both_read = threading.Barrier(2)

    def step():
        with connection.execute_wrapper(HoldAfter(LIVE_WORKERS, barrier_gate(both_read))):
            return services.advance_rollout(Deployment.objects.get(pk=deployment.pk))

    in_threads(step, step)

    slot_1 = Worker.objects.filter(slot=1, desired_state=DesiredState.RUNNING)
    assert [w.model_version_id for w in slot_1] == [v2.pk]


def test_a_stop_made_while_a_worker_report_is_applied_stands(cluster):
    node = make_node(cluster, "gpu-a", gpus=1)
    version = ready_version()
    deployment = services.create_deployment(
        None,
        name="chat",
        cluster=cluster,
        model_version=version,
        engine="reference",
        replicas=1,
        port=9000,
        placement={"mode": "pinned", "targets": [{"node": node.pk, "gpus": [0]}]},
    )
    worker = deployment.workers.get()
    report_read, stopped = threading.Event(), threading.Event()

    def report():
        def gate():
            report_read.set()
            stopped.wait(timeout=HOLD_SECONDS)  # the stop waits for our row lock instead

        read_worker = 'SELECT "deployments_worker"."id"'
        with connection.execute_wrapper(HoldAfter(read_worker, gate)):
            return services.apply_worker_status(
                node, {"worker_id": worker.pk, "state": WorkerState.READY, "pid": 4321}
            )

    def stop():
        report_read.wait()
        operations = services.stop_deployment(Deployment.objects.get(pk=deployment.pk))
        stopped.set()
        return operations

    results = in_threads(report, stop)

    assert not any(isinstance(r, Exception) for r in results), results
    worker.refresh_from_db()
    assert worker.desired_state == DesiredState.STOPPED
    assert (worker.pid, worker.first_ready_at is not None) == (4321, True)
