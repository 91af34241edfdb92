"""Errors of the Postgres wire-protocol codec.

A `ProtocolError` carries the SQLSTATE the proxy answers the client with, so a malformed or
oversized message becomes a Postgres ErrorResponse rather than a dropped socket or a stack trace.
"""

from __future__ import annotations

from gatehouse.exceptions import GatehouseError

# SQLSTATEs from PostgreSQL's errcodes.txt (Appendix A of its manual).
PROTOCOL_VIOLATION = "08P01"
PROGRAM_LIMIT_EXCEEDED = "54000"
CHARACTER_NOT_IN_REPERTOIRE = "22021"
FEATURE_NOT_SUPPORTED = "0A000"


class ProtocolError(GatehouseError):
    """Bytes on the wire do not form a valid protocol v3 message (or one over the size limit)."""

    code = "protocol_error"
    status = 400

    def __init__(self, message: str, *, sqlstate: str = PROTOCOL_VIOLATION) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
