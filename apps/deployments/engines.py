"""Engine configuration checks, with the agent's own table (agents/workers/engines.py)."""

from __future__ import annotations

import re

from django.utils.translation import gettext as _

from agents.workers.engines import ENGINES, EngineArgsError, validate_engine_args

__all__ = ["ENGINES", "EngineArgsError", "validate_engine_config"]

_HEALTH_PATH = re.compile(r"^/[A-Za-z0-9._~/-]{0,199}$")


def validate_engine_config(engine: str, args: list, command, health_path: str):
    """Return (normalized engine_args, command) or raise EngineArgsError."""
    if not isinstance(args, list):
        raise EngineArgsError(_("engine_args is a list of strings, one flag or value each."))
    args = validate_engine_args(engine, args)
    if engine != "generic":
        if command:
            raise EngineArgsError(
                _("%(engine)s takes no command; only the generic engine does.") % {"engine": engine}
            )
        return args, None
    if (
        not isinstance(command, list)
        or not command
        or len(command) > 64
        or not all(isinstance(part, str) and part and "\x00" not in part for part in command)
    ):
        raise EngineArgsError(
            _(
                "The generic engine needs `command`: a list of strings "
                "(program and arguments), run without a shell."
            )
        )
    if not health_path or not _HEALTH_PATH.match(health_path):
        raise EngineArgsError(_("The generic engine needs a health_path such as /health."))
    return args, list(command)
