"""Why a registration was refused, each with its stable code (the CLI maps them to exit codes)."""

from __future__ import annotations

from gatehouse.exceptions import BadRequestError, GatehouseError, NotFoundError
from gatehouse.targets.postgres_privileges import PrivilegeReport


class RegistrationError(BadRequestError):
    """The registration is refused as asked (bad name, option or attribute): nothing was written."""

    code = "registration_invalid"


class AlreadyRegisteredError(RegistrationError):
    """A connection, secret or principal of that name exists and `--replace` was not given."""

    code = "already_registered"


class NotRegisteredError(NotFoundError):
    """Nothing of that name is registered (remove, or a lookup by name)."""

    code = "not_registered"


class RegistryWriteError(GatehouseError):
    """DynamoDB, Secrets Manager or Lambda refused a call; what was already written is undone."""

    code = "registry_write_failed"
    status = 503


class LeastPrivilegeError(GatehouseError):
    """The connection's role can do more than an agent's role should: the registration is refused."""

    code = "least_privilege_refused"
    status = 422

    def __init__(self, message: str, report: PrivilegeReport) -> None:
        super().__init__(message)
        self.report = report
