"""The Postgres wire-protocol proxy. So far: its pure codec (`codec`, `messages`)."""

from __future__ import annotations

from gatehouse.proxy.postgres.codec import BackendParser, FrontendParser, rewrite_data_row
from gatehouse.proxy.postgres.exceptions import ProtocolError
from gatehouse.proxy.postgres.messages import (
    DataRow,
    ErrorResponse,
    Message,
    encode_data_row,
    encode_messages,
)

__all__ = [
    "BackendParser",
    "DataRow",
    "ErrorResponse",
    "FrontendParser",
    "Message",
    "ProtocolError",
    "encode_data_row",
    "encode_messages",
    "rewrite_data_row",
]
