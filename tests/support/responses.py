"""Reading responses of Django's test client, streamed ones included."""

from __future__ import annotations

from asgiref.sync import async_to_sync


def body_of(response) -> bytes:
    """The whole body. An async stream (the audit export) is read the way Daphne reads
    it, chunk by chunk in an event loop; iterating it synchronously would gather it."""
    if not response.streaming:
        return response.content
    if not response.is_async:
        return b"".join(response.streaming_content)

    async def read() -> bytes:
        return b"".join([part async for part in response.streaming_content])

    return async_to_sync(read)()
