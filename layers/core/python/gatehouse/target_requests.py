"""Commands for HTTP services, Kubernetes clusters and SSH hosts, through the one decision path.

The steps and promises are the API's for SQL (gatehouse.service): the decision is in the session
log before anything is sent, the request record exists before the command runs and holds its
outcome after, a refusal is recorded, an approval goes through the same flow. What differs per
kind is only what `gatehouse.targets.<kind>` provides: the command's model, its classifier and its
executor (which masks what it returns). This module is the dispatch between them.
"""

from __future__ import annotations

import importlib
import json
import logging
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from gatehouse.approvals import RequestRecord
from gatehouse.audit.log import SessionLog
from gatehouse.exceptions import BadRequestError, GatehouseError
from gatehouse.models import (
    Classification,
    Connection,
    Effect,
    Principal,
    Statement,
    StatementClass,
)
from gatehouse.targets.kinds import KindResult

if TYPE_CHECKING:
    from gatehouse.service import Gatehouse, Outcome

log = logging.getLogger(__name__)

# kind -> (module, the request body's field, the command model's class name)
KINDS: dict[str, tuple[str, str, str]] = {
    "http": ("gatehouse.targets.http", "http", "HttpCommand"),
    "kubernetes": ("gatehouse.targets.kubernetes", "kubernetes", "KubernetesCommand"),
    "ssh": ("gatehouse.targets.ssh", "ssh", "SshCommand"),
}
FIELD_KIND = {field: kind for kind, (_module, field, _model) in KINDS.items()}


class KindMismatchError(BadRequestError):
    code = "kind_mismatch"


@dataclass(frozen=True)
class TargetCommand:
    """One validated command of a kind, and its canonical text (what is stored and approved)."""

    kind: str
    model: BaseModel

    @property
    def text(self) -> str:
        # Sorted keys, no whitespace: the same command always has the same text and SHA-256.
        body = self.model.model_dump(mode="json", exclude_none=True)
        return json.dumps({self.kind: body}, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def kind_module(kind: str) -> ModuleType:
    return importlib.import_module(KINDS[kind][0])


def command_model(kind: str) -> type[BaseModel]:
    module_name, _field, model = KINDS[kind]
    found: type[BaseModel] = getattr(importlib.import_module(module_name), model)
    return found


def parse_command(kind: str, body: Any) -> TargetCommand:
    try:
        return TargetCommand(kind, command_model(kind).model_validate(body))
    except ValidationError as exc:
        first = exc.errors()[0] if exc.errors() else {"msg": "invalid", "loc": ()}
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise BadRequestError(
            f"invalid {kind} command{' at ' + where if where else ''}: {first.get('msg')}",
            code="invalid_command",
        ) from exc


def parse_stored(text: str) -> TargetCommand:
    """A command back from its canonical text (an approved request's record)."""
    value = json.loads(text)
    if not isinstance(value, dict) or len(value) != 1:
        raise GatehouseError("the stored command is not a target command", code="command_tampered")
    ((kind, body),) = value.items()
    if kind not in KINDS:
        raise GatehouseError(f"the stored command has an unknown kind {kind!r}", code="command_tampered")
    return parse_command(kind, body)


class TargetRequests:
    """The decision path for non-SQL kinds; built by `Gatehouse`, whose clients and helpers it uses."""

    def __init__(self, service: Gatehouse) -> None:
        self._g = service

    def classify(self, command: TargetCommand, connection: Connection) -> Classification:
        """The kind's classifier, as one Statement; anything it cannot place is unknown."""
        found = kind_module(command.kind).classify(command.model, connection)
        try:
            cls = StatementClass(found.cls)
        except ValueError:
            cls = StatementClass.UNKNOWN
        statement = Statement(text=found.text, cls=cls, reason=found.reason, command=command.kind)
        return Classification(kind=command.kind, statements=(statement,))

    def submit(
        self, request_id: str, principal: Principal, connection_name: str, command: TargetCommand, reason: str
    ) -> Outcome:
        from gatehouse.service import Outcome, Traced, _env

        g = self._g
        session = SessionLog.start(
            g._s3,
            g._settings.log_bucket,
            session_id=request_id,
            request_id=request_id,
            principal_arn=principal.arn,
            principal_name=principal.name,
            connection=connection_name,
            target_kind=command.kind,
            retention_days=g._settings.log_retention_days,
        )
        try:
            connection = g._registry.get_connection(connection_name)
            if connection.kind != command.kind:
                expected = KINDS[connection.kind][1] if connection.kind in KINDS else "sql"
                raise KindMismatchError(
                    f"connection {connection_name!r} is of kind {connection.kind!r}: "
                    f"send {expected!r}, not {command.kind!r}"
                )
            masker = g._masker(connection)
        except GatehouseError as exc:
            g._refuse(session, exc, statement=None, reason=reason)
            raise
        text = command.text
        masked_reason = masker.mask_text(reason) if reason else None
        described: dict[str, Any] = {"connection_env": _env(connection)}
        try:
            # The log holds the classifier's text (a Secret's values already redacted by the
            # Kubernetes classifier), through the detectors; the record keeps the exact command.
            classification = self.classify(command, connection)
            described["statement"] = masker.mask_text(log_text(command, classification.statements[0].text))
            described["statement_class"] = classification.cls.value
        except GatehouseError as exc:
            described["statement"] = masker.mask_text(_unclassified_text(command))
            session.stage("received", reason=masked_reason, **described)
            g._refuse(session, exc, reason=masked_reason, **described)
            raise
        session.stage("received", reason=masked_reason, **described)
        try:
            decision = g._policy.authorize(principal, connection, classification, reason=reason)
        except GatehouseError as exc:
            g._refuse(session, exc, reason=masked_reason, **described)
            raise
        session.stage(
            "decision", decision=decision.effect.value, policy_ids=list(decision.policy_ids), **described
        )
        record = g._new_record(
            request_id, principal, connection, text, classification, decision, reason, kind=command.kind
        )
        if decision.effect is Effect.DENY:
            return g._deny(session, record, classification, decision, described)
        if decision.effect is Effect.APPROVAL:
            return g._request_approval(
                session, record, principal, connection, Traced(classification), masker, decision, described
            )
        record.status = "executing"
        g._durable_before_run(session, record, connection)
        result = self._run(session, record, command, connection, masker, described)
        g._finish(record, status="executed", row_count=result.row_count, duration_ms=result.duration_ms)
        return Outcome(request_id, "executed", classification, decision, record, target_result=result)

    def run_approved(self, record: RequestRecord, session: SessionLog) -> str:
        """The approval flow's step for a command of another kind: re-decide, then run it once."""
        from gatehouse.approval_flow import still_allowed
        from gatehouse.service import _env

        g = self._g
        command = parse_stored(record.command)
        principal = g._registry.principal(f"iam:{record.principal_arn}")
        connection = g._registry.get_connection(record.connection)
        masker = g._masker(connection)
        classification = self.classify(command, connection)
        described: dict[str, Any] = {
            "statement": masker.mask_text(log_text(command, classification.statements[0].text)),
            "statement_class": classification.cls.value,
            "connection_env": _env(connection),
        }
        decision = g._policy.authorize(principal, connection, classification, reason=record.reason)
        if not still_allowed(decision, record):
            return g._approvals.policy_changed(record, session, decision, described)
        result = self._run(session, record, command, connection, masker, described)
        g._finish(
            record,
            status="executed",
            row_count=result.row_count,
            duration_ms=result.duration_ms,
            result={"status": result.status, **result.body, "truncated": result.truncated},
        )
        return "executed"

    def _run(
        self,
        session: SessionLog,
        record: RequestRecord,
        command: TargetCommand,
        connection: Connection,
        masker: Any,
        described: dict[str, Any],
    ) -> KindResult:
        g = self._g
        try:
            credential = g._secrets.json_secret(connection.secret_id)
            result: KindResult = kind_module(command.kind).execute(
                command.model,
                connection,
                credential,
                timeout_s=g._settings.statement_timeout_ms / 1000,
                max_bytes=g._settings.max_bytes,
                masker=masker,
            )
        except GatehouseError as exc:
            exc.message = masker.mask_text(exc.message)
            exc.args = (exc.message,)
            g._finish(record, status="failed", error=f"{exc.code}: {exc.message}")
            g._record_failure(session, exc, described)
            raise
        except Exception as exc:
            raise g._outcome_unknown(session, record, described, exc) from exc
        session.stage(
            "executed",
            outcome="ok" if result.status == "ok" else "error",
            row_count=result.row_count,
            duration_ms=result.duration_ms,
            **described,
        )
        g._close(session)
        return result


def _unclassified_text(command: TargetCommand) -> str:
    """What the log keeps of a command its classifier refused: a Kubernetes body (which may hold a
    Secret's values) is left out, HTTP header values (an agent's cookie or token) are redacted,
    anything else is kept and goes through the detectors."""
    fields = command.model.model_dump(mode="json", exclude_none=True)
    if command.kind == "kubernetes":
        fields.pop("body", None)
    if command.kind == "http":
        fields["headers"] = {name: "[REDACTED]" for name in fields.get("headers") or {}}
    return json.dumps({command.kind: fields}, sort_keys=True, separators=(",", ":"))


def log_text(command: TargetCommand, classified: str) -> str:
    """What the log keeps of a classified command: the classifier's one line, except that HTTP
    header values never reach the log (a custom header can carry a token)."""
    if command.kind == "http" and getattr(command.model, "headers", None):
        return _unclassified_text(command)
    return classified


def target_result_view(result: KindResult) -> dict[str, Any]:
    """What the agent gets back for a command of another kind (already masked by the executor)."""
    return {
        "result": {"status": result.status, **result.body},
        "truncated": result.truncated,
        "row_count": result.row_count,
        "duration_ms": result.duration_ms,
    }
