"""Messages people read, translated when they are read rather than when they are raised.

Serializers and views raise errors with `gettext` (the request's language is
active). Service exceptions are also caught by views that record the reason on
the audit event, which must stay English; so services raise a `lazy_message`:
it renders in whatever language is active when it is turned into text, and
`in_english` gives the English text for the audit record and stored errors.
"""

from __future__ import annotations

from django.utils import translation
from django.utils.functional import lazy


def _interpolate(message, params: dict) -> str:
    return str(message) % params if params else str(message)


_lazy_interpolate = lazy(_interpolate, str)


def lazy_message(message, **params):
    """`message` (marked with gettext_lazy) with `%(name)s` placeholders filled in,
    translated each time it is turned into text."""
    return _lazy_interpolate(message, params)


def in_english(value) -> str:
    """The English text of a message or of an exception raised with one."""
    with translation.override("en"):
        return str(value)
