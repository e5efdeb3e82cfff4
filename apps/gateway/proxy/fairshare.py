"""Fair share: when a deployment is full, requests wait here and go in weighted fair order.

A deployment is full when this process has `ceiling * ready workers / gateway
processes` requests in flight to it. Further requests wait in a bounded queue
instead of piling onto the engine. When a slot frees, the next request is taken
from the project that has been served the fewest tokens for its weight, and
within that project from the key served the fewest: weighted fair queuing on
tokens, with each project's count decaying (half-life `HALF_LIFE_S`) so the
order follows recent use, not all-time use.

A request is charged its estimate when it is let through and corrected to what
it really used when it ends, so a project whose long requests are running is
not picked again at once. A project that starts waiting after an idle spell
starts from the least-served waiting project's count rather than from zero: it
can't bank credit while idle and then shut everyone out (start-time fair
queuing). The order is per gateway process; with several processes each holds
its part of the ceiling and orders its own queue (docs/limits.md).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from dataclasses import dataclass, field

HALF_LIFE_S = 60.0
_DECAY = math.log(2) / HALF_LIFE_S


class QueueFull(Exception):
    pass


class QueueTimeout(Exception):
    pass


class _Decaying:
    """A count that halves every HALF_LIFE_S seconds."""

    __slots__ = ("at", "value")

    def __init__(self) -> None:
        self.value, self.at = 0.0, time.monotonic()

    def read(self, now: float) -> float:
        if now > self.at:
            self.value *= math.exp(-_DECAY * (now - self.at))
            self.at = now
        return self.value

    def add(self, amount: float, now: float) -> None:
        self.value = max(0.0, self.read(now) + amount)


@dataclass
class _Waiter:
    future: asyncio.Future
    project: str
    key: int
    weight: int
    estimate: int
    since: float


@dataclass
class _Lane:
    """One project's waiters, by key."""

    weight: int = 100
    served: _Decaying = field(default_factory=_Decaying)
    keys: dict[int, deque] = field(default_factory=dict)
    key_served: dict[int, _Decaying] = field(default_factory=dict)
    waiting: int = 0


class Deployment:
    """The in-flight count and the queue of one deployment in this process."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.waiting = 0
        self.lanes: dict[str, _Lane] = {}

    def _lane(self, project: str, weight: int) -> _Lane:
        lane = self.lanes.get(project)
        if lane is None:
            lane = self.lanes[project] = _Lane(weight=weight)
        lane.weight = weight
        return lane

    def charge(self, project: str, key: int, weight: int, tokens: float) -> None:
        now = time.monotonic()
        lane = self._lane(project, weight)
        lane.served.add(tokens / max(weight, 1), now)
        lane.key_served.setdefault(key, _Decaying()).add(tokens, now)

    def enqueue(self, waiter: _Waiter) -> None:
        now = time.monotonic()
        lane = self._lane(waiter.project, waiter.weight)
        if lane.waiting == 0:
            busy = [
                other.served.read(now)
                for name, other in self.lanes.items()
                if other.waiting and name != waiter.project
            ]
            if busy and lane.served.read(now) < min(busy):
                lane.served.value = min(busy)
        lane.keys.setdefault(waiter.key, deque()).append(waiter)
        lane.waiting += 1
        self.waiting += 1

    def remove(self, waiter: _Waiter) -> None:
        lane = self.lanes.get(waiter.project)
        queue = lane.keys.get(waiter.key) if lane else None
        if queue is not None and waiter in queue:
            queue.remove(waiter)
            lane.waiting -= 1
            self.waiting -= 1

    def next_waiter(self) -> _Waiter | None:
        """The waiting request of the least-served project, its least-served key."""
        now = time.monotonic()
        best_lane, best_score = None, None
        for lane in self.lanes.values():
            if lane.waiting:
                score = lane.served.read(now)
                if best_score is None or score < best_score:
                    best_lane, best_score = lane, score
        if best_lane is None:
            return None
        best_key, best_served = None, None
        for key, queue in best_lane.keys.items():
            if queue:
                served = best_lane.key_served.setdefault(key, _Decaying()).read(now)
                if best_served is None or served < best_served:
                    best_key, best_served = key, served
        waiter = best_lane.keys[best_key].popleft()
        best_lane.waiting -= 1
        self.waiting -= 1
        return waiter


class FairShare:
    """Every deployment's queue in this process."""

    def __init__(self, ceiling: int, max_waiting: int, timeout_s: float) -> None:
        self.ceiling = ceiling  # requests in flight per ready worker, all processes together
        self.max_waiting = max_waiting
        self.timeout_s = timeout_s
        self.processes = 1  # gateway processes sharing the workers (from Redis)
        self.deployments: dict[str, Deployment] = {}

    def capacity(self, workers: int) -> int:
        return max(1, (self.ceiling * max(workers, 1)) // max(self.processes, 1))

    def waiting(self, deployment: str) -> int:
        state = self.deployments.get(deployment)
        return state.waiting if state else 0

    async def acquire(
        self, deployment: str, workers: int, project: str, key: int, weight: int, estimate: int
    ) -> float:
        """Wait for a slot; returns seconds waited. QueueFull or QueueTimeout otherwise."""
        state = self.deployments.get(deployment)
        if state is None:
            state = self.deployments[deployment] = Deployment()
        if state.in_flight < self.capacity(workers) and state.waiting == 0:
            state.in_flight += 1
            state.charge(project, key, weight, estimate)
            return 0.0
        if state.waiting >= self.max_waiting:
            raise QueueFull
        started = time.monotonic()
        waiter = _Waiter(
            asyncio.get_running_loop().create_future(), project, key, weight, estimate, started
        )
        state.enqueue(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter.future), self.timeout_s)
        except TimeoutError:
            if waiter.future.done():  # let through just as the wait ended: take the slot
                return time.monotonic() - started
            state.remove(waiter)
            waiter.future.cancel()
            raise QueueTimeout from None
        except asyncio.CancelledError:
            # The client left while waiting; a slot handed over meanwhile goes on.
            if waiter.future.done() and not waiter.future.cancelled():
                self.release(deployment, workers, project, key, weight, estimate, estimate)
            else:
                state.remove(waiter)
                waiter.future.cancel()
            raise
        return time.monotonic() - started

    def release(
        self, deployment: str, workers: int, project: str, key: int, weight: int,
        estimate: int, used: int,
    ) -> None:  # fmt: skip
        """A request ended: correct its charge, free its slot, let the next through."""
        state = self.deployments[deployment]
        state.in_flight -= 1
        if used != estimate:
            state.charge(project, key, weight, used - estimate)
        while state.in_flight < self.capacity(workers):
            waiter = state.next_waiter()
            if waiter is None:
                break
            if waiter.future.done():
                continue
            state.in_flight += 1
            state.charge(waiter.project, waiter.key, waiter.weight, waiter.estimate)
            waiter.future.set_result(None)
