"""Hangar node agent: reports GPU and host telemetry to the console.

Nothing in this package may import Django, `apps` or `console`: the agent runs on
GPU hosts that have none of them installed, and the console imports
`agents.protocol` (never the other way round).
"""

__version__ = "0.2.0"
