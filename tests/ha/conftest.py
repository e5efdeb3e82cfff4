"""The gateway's and the telemetry tests' fixtures, for the HA cases."""

from tests.gateway.conftest import (  # noqa: F401 (fixtures)
    consumer_key,
    engines,
    model_dir,
    serving,
    start_gateway,
)
