"""Gatehouse's own exceptions. Adapters wrap boto3 and driver errors in these (`raise ... from`).

Each carries a stable `code` that users and tests rely on, and the HTTP status one place
(`gatehouse.api`) maps it to. The message is safe to show an agent: never a credential, never
a stack trace.
"""

from __future__ import annotations


class GatehouseError(Exception):
    """Base class: a failure with a stable error code and an HTTP status."""

    code = "internal_error"
    status = 500
    # Set once the request has an id, so the agent can look its failed request up.
    request_id: str | None = None
    # True when the command (or part of it) had already been sent to the target when this was
    # raised: the outcome is then uncertain, and nobody may say "nothing was run".
    command_sent: bool = False

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status


class BadRequestError(GatehouseError):
    """The request is malformed: bad JSON, missing or wrongly typed fields."""

    code = "bad_request"
    status = 400


class PayloadTooLargeError(GatehouseError):
    """The request body is over the size limit."""

    code = "payload_too_large"
    status = 413


class UnknownConnectionError(GatehouseError):
    """No connection of that name is registered (or the caller may not see it)."""

    code = "unknown_connection"
    status = 404


class UnknownPrincipalError(GatehouseError):
    """The caller's identity maps to no registered agent."""

    code = "unknown_principal"
    status = 403


class NotFoundError(GatehouseError):
    """The requested resource does not exist."""

    code = "not_found"
    status = 404


class ClassificationError(GatehouseError):
    """The command could not be classified (for SQL: it does not parse)."""

    code = "unparseable_command"
    status = 400


class PolicyError(GatehouseError):
    """The policy set is invalid or could not be evaluated: fail closed."""

    code = "policy_error"
    status = 500


class AuditWriteError(GatehouseError):
    """An audit event could not be stored after retries: the command must not run."""

    code = "audit_unavailable"
    status = 503


class SecretUnavailableError(GatehouseError):
    """The credential for a target could not be read."""

    code = "secret_unavailable"
    status = 503


class TargetUnavailableError(GatehouseError):
    """The target (database, service) could not be reached."""

    code = "target_unavailable"
    status = 503


class StatementTimeoutError(GatehouseError):
    """The command ran over its statement timeout and was cancelled."""

    code = "statement_timeout"
    status = 408


class ResultTooLargeError(GatehouseError):
    """The target's answer is over the byte budget where it cannot be cut (a write, an error text)."""

    code = "result_too_large"
    status = 422


class TargetError(GatehouseError):
    """The target refused or failed the command (e.g. a SQL error); carries its SQLSTATE."""

    code = "target_error"
    status = 422

    def __init__(self, message: str, *, sqlstate: str | None = None, detail: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        # The server's DETAIL line: it can quote row values, so it is redacted like the message.
        self.detail = detail
