"""What deployments tell the apps above them, without importing them."""

from django.dispatch import Signal

# A worker that may be serving is about to be told to stop (after commit, before the
# stop is sent): sender=Worker, worker. The gateway stops routing to it at once; the
# stop itself reaches the agent HANGAR_WORKER_DRAIN_SECONDS later, so requests in
# flight finish.
worker_leaving = Signal()
# A worker's reported state changed (ready, unhealthy, stopped, ...): sender=Worker,
# worker. Sent from the one place reports are stored, not on every report: a report
# carrying only progress or log lines changes nothing the gateway routes by.
worker_state_changed = Signal()
