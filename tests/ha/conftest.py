"""The gateway's and the telemetry tests' fixtures, and the LAN of namespaces, for the HA cases."""

import pytest

from tests.gateway.conftest import (  # noqa: F401 (fixtures)
    consumer_key,
    engines,
    model_dir,
    serving,
    start_gateway,
)
from tests.ha.netns import Lan


@pytest.fixture
def lan(tmp_path):
    """A bridge and the namespaces made on it; all removed after the test, passed or not."""
    made = Lan(tmp_path)
    try:
        yield made
    finally:
        made.close()
