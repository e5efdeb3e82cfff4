from contextvars import ContextVar

request_id_var: ContextVar[str | None] = ContextVar("hangar_request_id", default=None)
