"""The tamper-evident session log: events, the S3 writer, verify, query, replay.

Light at import (the CDK app imports `gatehouse.audit.named_queries`): the writer, verifier and
query backends load on first use.
"""

from __future__ import annotations

from typing import Any

from gatehouse.audit.events import EVENT_KINDS, GENESIS_HASH, SCHEMA_VERSION, EventKind

__all__ = [
    "EVENT_KINDS",
    "GENESIS_HASH",
    "SCHEMA_VERSION",
    "ChainConflictError",
    "EventKind",
    "RetryPolicy",
    "SessionClosedError",
    "SessionLog",
    "VerifyReport",
    "replay",
    "verify_log",
]

_LAZY = {
    "ChainConflictError": "gatehouse.audit.log",
    "RetryPolicy": "gatehouse.audit.log",
    "SessionClosedError": "gatehouse.audit.log",
    "SessionLog": "gatehouse.audit.log",
    "VerifyReport": "gatehouse.audit.verify",
    "verify_log": "gatehouse.audit.verify",
    "replay": "gatehouse.audit.replay",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
