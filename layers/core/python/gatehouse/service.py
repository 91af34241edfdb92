"""The one decision path: classify -> authorize -> (record) -> execute -> mask -> record.

The HTTP API calls it today; the Postgres proxy calls the same steps per statement. No protocol
gets its own copy of a rule.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gatehouse.approvals import RequestRecord, RequestStore, sql_sha256
from gatehouse.audit.log import SessionLog
from gatehouse.classify import classify
from gatehouse.config import Settings
from gatehouse.exceptions import (
    AuditWriteError,
    ClassificationError,
    GatehouseError,
    NotFoundError,
)
from gatehouse.masking import Masker, load_profile
from gatehouse.models import (
    Classification,
    Connection,
    Decision,
    Effect,
    Principal,
    QueryResult,
    Statement,
    StatementClass,
)
from gatehouse.policy import PolicyEngine
from gatehouse.registry import Registry
from gatehouse.secrets import SecretStore
from gatehouse.targets.postgres import PostgresExecutor

log = logging.getLogger(__name__)

# Actions probed to tell an agent what it may do on each connection (GET /v1/connections).
PROBED_CLASSES = (StatementClass.READ, StatementClass.WRITE, StatementClass.DDL)
# Statuses a long-poll waits on; one DynamoDB read a second keeps it cheap.
UNDECIDED = frozenset({"pending_approval", "executing"})
POLL_INTERVAL_S = 1.0


@dataclass(frozen=True)
class Outcome:
    request_id: str
    status: str  # executed | pending_approval | denied
    classification: Classification
    decision: Decision
    record: RequestRecord
    result: QueryResult | None = None


class Gatehouse:
    """The service object a handler builds once per process (clients injected)."""

    def __init__(
        self,
        settings: Settings,
        *,
        registry: Registry,
        policy: PolicyEngine,
        secrets: SecretStore,
        requests: RequestStore,
        s3_client: Any,
        executor: PostgresExecutor | None = None,
        clock: Callable[[], float] = time.time,
        new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._settings = settings
        self._registry = registry
        self._policy = policy
        self._secrets = secrets
        self._requests = requests
        self._s3 = s3_client
        self._executor = executor or PostgresExecutor(secrets)
        self._clock = clock
        self._new_id = new_id
        self._sleep = sleep
        self._maskers: dict[str, Masker] = {}

    # -- queries ---------------------------------------------------------------------------

    def connections_for(self, principal: Principal) -> list[dict[str, Any]]:
        """The connections this principal may use, with what each action would need."""
        out = []
        for conn in self._registry.list_connections():
            actions = {}
            for cls in PROBED_CLASSES:
                probe = Classification(kind=conn.kind, statements=(Statement(text="", cls=cls),))
                actions[cls.value] = self._policy.authorize(principal, conn, probe).effect.value
            if any(effect != Effect.DENY.value for effect in actions.values()):
                out.append({**conn.public_view(), "actions": actions})
        return out

    def get_request(self, principal: Principal, request_id: str, wait_s: float = 0) -> RequestRecord:
        """The caller's request; with `wait_s`, long-poll while it is still undecided."""
        deadline = time.monotonic() + wait_s
        while True:
            record = self._requests.get(request_id)
            # Another principal's request is indistinguishable from a missing one.
            if record.principal_name != principal.name:
                raise NotFoundError(f"no request {request_id}")
            if record.status not in UNDECIDED or time.monotonic() >= deadline:
                return record
            self._sleep(min(POLL_INTERVAL_S, max(0.0, deadline - time.monotonic())))

    # -- the decision path -----------------------------------------------------------------

    def submit(self, principal: Principal, connection_name: str, sql: str, reason: str = "") -> Outcome:
        request_id = self._new_id()
        try:
            return self._submit(request_id, principal, connection_name, sql, reason)
        except GatehouseError as exc:
            exc.request_id = request_id
            raise

    def _submit(
        self, request_id: str, principal: Principal, connection_name: str, sql: str, reason: str
    ) -> Outcome:
        session = SessionLog.start(
            self._s3,
            self._settings.log_bucket,
            session_id=request_id,
            request_id=request_id,
            principal_arn=principal.arn,
            principal_name=principal.name,
            connection=connection_name,
            target_kind="postgres",
            retention_days=self._settings.log_retention_days,
        )
        try:
            connection = self._registry.get_connection(connection_name)
            masker = self._masker(connection)
        except GatehouseError as exc:
            self._refuse(session, exc, statement=None, reason=reason)
            raise
        masked_sql = masker.mask_text(sql)
        masked_reason = masker.mask_text(reason) if reason else None
        session.append(
            "received", statement=masked_sql, reason=masked_reason, connection_env=_env(connection)
        )

        classification = classify(connection.kind, sql)
        described = {
            "statement": masked_sql,
            "statement_class": classification.cls.value,
            "relations": list(classification.relations),
            "connection_env": _env(connection),
        }
        if classification.parse_error is not None:
            unparseable = ClassificationError(
                f"the SQL does not parse: {masker.mask_text(classification.parse_error)}",
                code="sql_parse_error",
            )
            self._refuse(session, unparseable, reason=masked_reason, **described)
            raise unparseable

        decision = self._policy.authorize(principal, connection, classification, reason=reason)
        # The decision is on record before anything runs; if this append fails, nothing runs.
        session.append(
            "decision",
            decision=decision.effect.value,
            policy_ids=list(decision.policy_ids),
            **described,
        )
        record = RequestRecord(
            request_id=request_id,
            status="",
            principal_arn=principal.arn,
            principal_name=principal.name,
            connection=connection.name,
            command=sql,
            command_sha256=sql_sha256(sql),
            statement_class=classification.cls.value,
            decision=decision.effect.value,
            policy_ids=list(decision.policy_ids),
            reason=reason,
        )
        if decision.effect is Effect.DENY:
            record.status = "denied"
            session.append(
                "refused", outcome="denied", error="; ".join(decision.reasons) or None, **described
            )
            self._close(session)
            self._requests.put_new(record)
            return Outcome(request_id, "denied", classification, decision, record)
        if decision.effect is Effect.APPROVAL:
            assert decision.approval is not None
            record.status = "pending_approval"
            record.approval_group = decision.approval.group
            record.approval_quorum = decision.approval.quorum
            self._requests.put_new(record)
            session.append("approval_requested", outcome="pending", **described)
            return Outcome(request_id, "pending_approval", classification, decision, record)

        # The record exists before the command runs, so GET /v1/requests/{id} never loses one.
        record.status = "executing"
        self._requests.put_new(record)
        try:
            result = self._execute(session, connection, classification, masker, described)
        except GatehouseError as exc:
            self._finish(record, status="failed", error=f"{exc.code}: {exc.message}")
            raise
        self._finish(record, status="executed", row_count=result.row_count, duration_ms=result.duration_ms)
        return Outcome(request_id, "executed", classification, decision, record, result)

    def _finish(self, record: RequestRecord, **fields: Any) -> None:
        """Best effort: the command already ran and the session log holds its outcome."""
        try:
            self._requests.finish(record.request_id, **fields)
        except GatehouseError:
            log.error("could not update request record %s", record.request_id)
        for key, value in fields.items():
            setattr(record, key, value)

    def _execute(
        self,
        session: SessionLog,
        connection: Connection,
        classification: Classification,
        masker: Masker,
        described: dict[str, Any],
    ) -> QueryResult:
        masked: list[QueryResult] = []

        def mask_and_record(raw: QueryResult) -> None:
            # Runs before COMMIT: if the outcome cannot be recorded, the transaction rolls back.
            out = masker.mask_rows(raw.columns, raw.rows)
            masked.append(
                QueryResult(
                    columns=raw.columns,
                    rows=tuple(out.rows),
                    row_count=raw.row_count,
                    truncated=raw.truncated,
                    duration_ms=raw.duration_ms,
                    masked=out.masked,
                )
            )
            session.append(
                "executed", outcome="ok", row_count=raw.row_count, duration_ms=raw.duration_ms, **described
            )

        started = time.perf_counter()
        try:
            self._executor.run(
                connection,
                classification.statements,
                timeout_ms=self._settings.statement_timeout_ms,
                max_rows=self._settings.max_rows,
                before_commit=mask_and_record,
            )
        except AuditWriteError:
            raise
        except GatehouseError as exc:
            duration = round((time.perf_counter() - started) * 1000, 3)
            exc.message = masker.mask_text(exc.message)
            exc.args = (exc.message,)
            session.append(
                "failed",
                outcome="error",
                error=f"{exc.code}: {exc.message}",
                duration_ms=duration,
                **described,
            )
            session.close()
            raise
        # The command has committed and its `executed` event is stored: a failure to write the
        # closing event must not turn a command that ran into an error the agent would retry.
        self._close(session)
        return masked[0]

    @staticmethod
    def _close(session: SessionLog) -> None:
        try:
            session.close()
        except AuditWriteError:
            log.error("session %s: could not write session_closed and its manifest", session.session_id)

    def _refuse(self, session: SessionLog, exc: GatehouseError, **fields: Any) -> None:
        """Record a refusal; the refusal stands even if the log is down (nothing runs)."""
        try:
            session.append(
                "refused",
                outcome="refused",
                error=f"{exc.code}: {exc.message}",
                **{k: v for k, v in fields.items() if v is not None},
            )
            session.close()
        except AuditWriteError:
            log.error("could not record refusal of %s (%s)", session.session_id, exc.code)

    def _masker(self, connection: Connection) -> Masker:
        masker = self._maskers.get(connection.masking_profile)
        if masker is None:
            key = self._secrets.binary_key(self._settings.masking_key_secret)
            masker = Masker(load_profile(connection.masking_profile), key)
            self._maskers[connection.masking_profile] = masker
        return masker


def _env(connection: Connection) -> str | None:
    env = connection.attributes.get("env")
    return str(env) if env is not None else None
