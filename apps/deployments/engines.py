"""Engine configuration checks, with the agent's own table (agents/workers/engines.py)."""

from __future__ import annotations

import re

from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, gettext_noop

from agents.workers.engines import ENGINES, EngineArgsError, validate_engine_args

__all__ = ["ENGINES", "EngineArgsError", "validate_engine_config"]

_HEALTH_PATH = re.compile(r"^/[A-Za-z0-9._~/-]{0,199}$")


# The agent's messages (agents/workers/engines.py has no translations): its
# English templates and refusal reasons, marked here for the catalogue.
AGENT_MESSAGES = {
    text: gettext_lazy(text)
    for text in (
        gettext_noop("unknown engine %(engine)s; expected one of %(engines)s"),
        gettext_noop("the generic engine takes no engine_args: put them in its command"),
        gettext_noop("engine argument %(arg)s is not a flag (flags start with -)"),
        gettext_noop("%(flag)s is not allowed for %(engine)s: %(reason)s"),
        gettext_noop("%(flag)s is not an allowed %(engine)s flag (allowed: %(allowed)s)"),
        gettext_noop("%(flag)s takes no value"),
        gettext_noop("%(flag)s needs a value"),
        gettext_noop("%(flag)s needs a string value, got %(type)s"),
        gettext_noop("%(flag)s needs a number, got %(value)s"),
        gettext_noop("%(flag)s = %(value)s is outside %(lo)s..%(hi)s"),
        gettext_noop("%(flag)s must be one of %(choices)s, got %(value)s"),
        gettext_noop(
            "%(flag)s = %(value)s is not allowed: use letters, digits and ._:@+,/=- "
            "(at most 200), starting with a letter or digit"
        ),
        gettext_noop("the agent sets it from the worker spec"),
        gettext_noop("it runs Python code shipped with the model; Hangar never allows it"),
        gettext_noop("it names a file on the node; put files in the model version instead"),
        gettext_noop("the agent passes each worker its own secret"),
    )
}


def _in_readers_language(exc: EngineArgsError) -> EngineArgsError:
    template = AGENT_MESSAGES.get(exc.template)
    if template is None:  # a message this table does not know yet: English
        return exc
    params = {name: str(AGENT_MESSAGES.get(v, v)) for name, v in exc.params.items()}
    return EngineArgsError(str(template) % params if params else str(template))


def validate_engine_config(engine: str, args: list, command, health_path: str):
    """Return (normalized engine_args, command) or raise EngineArgsError."""
    if not isinstance(args, list):
        raise EngineArgsError(_("engine_args is a list of strings, one flag or value each."))
    try:
        args = validate_engine_args(engine, args)
    except EngineArgsError as exc:
        raise _in_readers_language(exc) from None
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
