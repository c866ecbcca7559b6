"""The one exception type of the protocol: it becomes an `error` reply, never a traceback."""

from __future__ import annotations


class ProtocolError(Exception):
    """A request that cannot be served; `code` is one of the schema's error codes.

    Raised anywhere below a handler and turned into an `error` message by the session, so the
    panel always gets an answer and the kernel never sees an exception from a bad request.
    """

    def __init__(
        self, code: str, message: str, request_id: str | None = None, request_kind: str | None = None
    ):
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id
        self.request_kind = request_kind
