"""The one decision path: classify -> lineage -> authorize -> (record) -> execute -> mask -> record.

The HTTP API calls it today; the Postgres proxy calls the same steps per statement. No protocol
gets its own copy of a rule.

Lineage runs between classification and policy: it resolves the statement against the target's
catalog, so it can (1) escalate a statement whose attribute-notation field (`t.f`, `(x).f`) is
really a function call, (2) tell Cedar which protected columns the statement reads and which it
only uses as an oracle, and (3) tell the masker, per output column, which protected sources the
value derives from. A catalog that cannot be read means the command does not run.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gatehouse import aws
from gatehouse.approval_flow import ApprovalFlow, VoteResult
from gatehouse.approvals import RECORD_TTL_S, RequestRecord, RequestStore, sql_sha256
from gatehouse.audit.log import SessionLog
from gatehouse.classify import classify
from gatehouse.classify.functions import classify_field_call
from gatehouse.config import Settings
from gatehouse.exceptions import (
    AuditWriteError,
    ClassificationError,
    GatehouseError,
    NotFoundError,
    TargetError,
)
from gatehouse.lineage import (
    Catalog,
    CatalogCache,
    Flow,
    LineageEngine,
    PostgresCatalogLoader,
    StatementLineage,
    merge,
)
from gatehouse.masking import Masker, load_profile
from gatehouse.masking.errors import redact_error_text
from gatehouse.masking.plan import UNDETERMINED, plan_columns, protected_names
from gatehouse.models import (
    CLASS_RISK,
    KIND_CLASSES,
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

if TYPE_CHECKING:
    from gatehouse.target_requests import TargetCommand, TargetRequests

log = logging.getLogger(__name__)

# Actions probed to tell an agent what it may do on each connection (GET /v1/connections).
PROBED_CLASSES = (StatementClass.READ, StatementClass.WRITE, StatementClass.DDL)
# Statuses a long-poll waits on; one DynamoDB read a second keeps it cheap.
UNDECIDED = frozenset({"pending_approval", "approved", "executing"})
POLL_INTERVAL_S = 1.0


@dataclass(frozen=True)
class Traced:
    """A classification after lineage, with what the masker needs once the result is back."""

    classification: Classification
    lineage: tuple[StatementLineage, ...] = ()
    catalog: Catalog | None = None
    references_protected: bool = False  # a protected column is read anywhere in the text

    @property
    def touches_protected(self) -> bool:
        return self.references_protected or any(
            s.protected_read or s.protected_filtered for s in self.classification.statements
        )


@dataclass(frozen=True)
class Decided:
    """A command decided but not run: what the Postgres proxy needs to forward, mask and record it."""

    connection: Connection
    classification: Classification
    traced: Traced
    decision: Decision
    masker: Masker


@dataclass(frozen=True)
class Outcome:
    request_id: str
    status: str  # executed | pending_approval | denied
    classification: Classification
    decision: Decision
    record: RequestRecord
    result: QueryResult | None = None
    target_result: Any = None  # a KindResult (gatehouse.targets.kinds) for HTTP, Kubernetes, SSH


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
        catalogs: CatalogCache | None = None,
        workflow: Any = None,
        notifier: Any = None,
        aws_session: Any = None,
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
        self._catalogs = catalogs or CatalogCache(PostgresCatalogLoader(secrets))
        self._lineage = LineageEngine()
        # The approval flow's clients, built on first use: most requests never need them.
        self._workflow_client = workflow
        self._notifier_client = notifier
        self._aws_session = aws_session
        self._approvals = ApprovalFlow(self)
        self._target_requests: TargetRequests | None = None
        self._clock = clock
        self._new_id = new_id
        self._sleep = sleep
        self._maskers: dict[str, Masker] = {}

    @property
    def policy(self) -> PolicyEngine:
        return self._policy

    @property
    def _targets(self) -> TargetRequests:
        # HTTP, Kubernetes and SSH commands: their models are pydantic's, which an SQL request
        # (and so most cold starts) never needs.
        if self._target_requests is None:
            from gatehouse.target_requests import TargetRequests

            self._target_requests = TargetRequests(self)
        return self._target_requests

    @property
    def registry(self) -> Registry:
        return self._registry

    @property
    def settings(self) -> Settings:
        return self._settings

    @property
    def secrets(self) -> SecretStore:
        return self._secrets

    # -- queries ---------------------------------------------------------------------------

    def connections_for(self, principal: Principal) -> list[dict[str, Any]]:
        """The connections this principal may use, with what each action would need."""
        out = []
        for conn in self._registry.list_connections():
            actions = {}
            probed = PROBED_CLASSES if conn.kind == "postgres" else KIND_CLASSES.get(conn.kind, ())
            for cls in probed:
                if cls is StatementClass.UNKNOWN:
                    continue
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

    # -- the approval flow (the state machine's tasks and the approvers' votes) --------------

    def record_preview(self, request_id: str) -> dict[str, Any]:
        return self._approvals.record_preview(request_id)

    def notify(self, request_id: str, task_token: str) -> dict[str, Any]:
        return self._approvals.notify(request_id, task_token)

    def vote(self, slack_user: str, request_id: str, approve: bool, reason: str = "") -> VoteResult:
        return self._approvals.vote(slack_user, request_id, approve, reason)

    def execute_approved(self, request_id: str) -> dict[str, Any]:
        return self._approvals.execute_approved(request_id)

    def finish_denied(self, request_id: str) -> dict[str, Any]:
        return self._approvals.finish_denied(request_id)

    def expire(self, request_id: str) -> dict[str, Any]:
        return self._approvals.expire(request_id)

    def fail_approval(self, request_id: str) -> dict[str, Any]:
        return self._approvals.fail_approval(request_id)

    def announce_outcome(self, request_id: str) -> dict[str, Any]:
        return self._approvals.announce_outcome(request_id)

    def list_requests(self, principal: Principal, *, pending_only: bool = False) -> list[RequestRecord]:
        return self._requests.list_for(principal.name, pending_only=pending_only)

    # -- the decision path, for a caller that runs the command itself (the Postgres proxy) ----

    def decide(self, principal: Principal, connection: Connection, sql: str, reason: str = "") -> Decided:
        """classify -> lineage -> authorize, exactly as for the API; nothing is run or recorded.

        Raises ClassificationError for text that does not parse, and any error of lineage (the
        catalog cannot be read) or policy: the caller refuses the command.
        """
        masker = self._masker(connection)
        classification, traced, decision = self._decide(principal, connection, sql, reason, masker, {})
        return Decided(connection, classification, traced, decision, masker)

    def column_plans(
        self,
        decided: Decided,
        columns: Sequence[str],
        origins: Sequence[tuple[int, int] | None],
        statement_index: int = -1,
    ) -> list[Any]:
        """The masking plan of a result the caller received itself (one entry per column)."""
        traced = decided.traced
        if not traced.lineage:
            return [None] * len(columns)
        return self._plan_for(traced, decided.masker, list(columns), list(origins), statement_index)

    def hold_for_approval(
        self, principal: Principal, decided: Decided, sql: str, *, origin: str, reason: str = ""
    ) -> RequestRecord:
        """Store a pending request for a command the caller will run itself once it is approved.

        The same flow as the API's (preview, Slack, the state machine), with its own request id
        and session log; `origin` ("proxy") tells the flow not to run it: the caller claims it with
        `claim_approved` when the same principal sends the same text on the same connection.
        """
        request_id = self._new_id()
        connection = decided.connection
        masker = decided.masker
        session = SessionLog.start(
            self._s3,
            self._settings.log_bucket,
            session_id=request_id,
            request_id=request_id,
            principal_arn=principal.arn,
            principal_name=principal.name,
            connection=connection.name,
            target_kind="postgres",
            retention_days=self._settings.log_retention_days,
        )
        described: dict[str, Any] = {
            "statement": masker.mask_text(sql),
            "connection_env": _env(connection),
            "statement_class": decided.classification.cls.value,
            "relations": list(decided.classification.relations),
        }
        session.stage("received", reason=masker.mask_text(reason) if reason else None, **described)
        session.stage(
            "decision",
            decision=decided.decision.effect.value,
            policy_ids=list(decided.decision.policy_ids),
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
            statement_class=decided.classification.cls.value,
            decision=decided.decision.effect.value,
            policy_ids=list(decided.decision.policy_ids),
            reason=reason,
            origin=origin,
        )
        try:
            self._request_approval(
                session, record, principal, connection, decided.traced, masker, decided.decision, described
            )
        except GatehouseError as exc:
            exc.request_id = request_id
            raise
        return record

    def claim_approved(self, principal: Principal, connection: Connection, sql: str) -> RequestRecord | None:
        """An approved request of `origin` proxy for exactly this text, claimed to run once (or None)."""
        digest = sql_sha256(sql)
        now = self._clock()
        for record in self._requests.list_for(principal.name):
            if (
                record.status != "approved"
                or record.origin != "proxy"
                or record.connection != connection.name
                or record.command_sha256 != digest
                or record.command != sql
                or (record.approval_expires_at and now > record.approval_expires_at)
            ):
                continue
            try:
                # Conditional: of two sessions sending it at once, one runs it.
                self._requests.transition(record.request_id, expect=("approved",), status="executing")
            except GatehouseError:
                continue
            record.status = "executing"
            return record
        return None

    def release_claimed(self, record: RequestRecord) -> bool:
        """Give back a claim whose statement never ran: the server skipped its Execute because an
        earlier message of the same batch failed (the protocol's rule). The request is approved
        again, to run once when the statement comes again. False if it was not executing any more."""
        try:
            self._requests.transition(record.request_id, expect=("executing",), status="approved")
        except GatehouseError as exc:
            log.error("request %s: its claim could not be given back (%s)", record.request_id, exc.code)
            return False
        record.status = "approved"
        return True

    def finish_claimed(
        self,
        record: RequestRecord,
        *,
        ok: bool,
        row_count: int | None = None,
        duration_ms: float | None = None,
        error: str | None = None,
    ) -> None:
        """Close the story of an approved request the proxy ran: its record and its session log."""
        self._finish(
            record,
            status="executed" if ok else "failed",
            row_count=row_count,
            duration_ms=duration_ms,
            error=error,
        )
        try:
            session = SessionLog.resume(
                self._s3,
                self._settings.log_bucket,
                session_id=record.request_id,
                retention_days=self._settings.log_retention_days,
            )
            connection = self._registry.get_connection(record.connection)
            described = {
                "statement": self._masker(connection).mask_text(record.command),
                "statement_class": record.statement_class,
                "relations": list(record.relations or ()),
                "connection_env": _env(connection),
            }
            if ok:
                session.stage(
                    "executed", outcome="ok", row_count=row_count, duration_ms=duration_ms, **described
                )
            else:
                session.stage("failed", outcome="error", error=error, duration_ms=duration_ms, **described)
            session.close()
        except GatehouseError as exc:
            log.error("request %s: could not record its outcome (%s)", record.request_id, exc.code)

    # -- the decision path -----------------------------------------------------------------

    def submit_command(
        self, principal: Principal, connection_name: str, command: TargetCommand, reason: str = ""
    ) -> Outcome:
        """An HTTP request, a Kubernetes API request or an SSH command (gatehouse.target_requests)."""
        request_id = self._new_id()
        try:
            return self._targets.submit(request_id, principal, connection_name, command, reason)
        except GatehouseError as exc:
            exc.request_id = request_id
            raise

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
            if connection.kind != "postgres":
                from gatehouse.target_requests import KINDS, KindMismatchError

                expected = KINDS[connection.kind][1] if connection.kind in KINDS else "?"
                raise KindMismatchError(
                    f"connection {connection_name!r} is of kind {connection.kind!r}: "
                    f"send {expected!r}, not 'sql'"
                )
            masker = self._masker(connection)
        except GatehouseError as exc:
            self._refuse(session, exc, statement=None, reason=reason)
            raise
        masked_sql = masker.mask_text(sql)
        masked_reason = masker.mask_text(reason) if reason else None
        # Staged, not yet written: `received` and `decision` go to S3 as one object before
        # anything runs (or with the refusal, as one object, when nothing will run).
        session.stage("received", statement=masked_sql, reason=masked_reason, connection_env=_env(connection))
        described: dict[str, Any] = {"statement": masked_sql, "connection_env": _env(connection)}
        try:
            classification, traced, decision = self._decide(
                principal, connection, sql, reason, masker, described
            )
        except GatehouseError as exc:
            self._refuse(session, exc, reason=masked_reason, **described)
            raise
        except Exception as exc:
            # A bug before anything ran: refuse on record, never lose the staged `received`.
            log.exception("request %s failed while being decided", request_id)
            failure = GatehouseError("Gatehouse failed while deciding; nothing was run")
            self._refuse(session, failure, reason=masked_reason, **described)
            raise failure from exc
        session.stage(
            "decision",
            decision=decision.effect.value,
            policy_ids=list(decision.policy_ids),
            **described,
        )
        record = self._new_record(request_id, principal, connection, sql, classification, decision, reason)
        if decision.effect is Effect.DENY:
            return self._deny(session, record, classification, decision, described)
        if decision.effect is Effect.APPROVAL:
            return self._request_approval(
                session, record, principal, connection, traced, masker, decision, described
            )

        # The record exists before the command runs, so GET /v1/requests/{id} never loses one;
        # it is written while the decision is flushed, and both must land before anything runs.
        record.status = "executing"
        self._durable_before_run(session, record, connection)
        try:
            result = self._execute(session, connection, traced, masker, described, record=record)
        except GatehouseError as exc:
            self._fail(record, f"{exc.code}: {exc.message}")
            raise
        except Exception as exc:
            raise self._outcome_unknown(session, record, described, exc) from exc
        if record.status != "executed":
            # Finished alongside the closing object unless that update failed: try once more.
            self._finish(
                record, status="executed", row_count=result.row_count, duration_ms=result.duration_ms
            )
        return Outcome(request_id, "executed", classification, decision, record, result)

    def _new_record(
        self,
        request_id: str,
        principal: Principal,
        connection: Connection,
        command: str,
        classification: Classification,
        decision: Decision,
        reason: str,
        **extra: Any,
    ) -> RequestRecord:
        """The request record of a decided command (its status is set by what happens next)."""
        return RequestRecord(
            request_id=request_id,
            status="",
            principal_arn=principal.arn,
            principal_name=principal.name,
            connection=connection.name,
            command=command,
            command_sha256=sql_sha256(command),
            statement_class=classification.cls.value,
            decision=decision.effect.value,
            policy_ids=list(decision.policy_ids),
            reason=reason,
            **extra,
        )

    def _deny(
        self,
        session: SessionLog,
        record: RequestRecord,
        classification: Classification,
        decision: Decision,
        described: dict[str, Any],
    ) -> Outcome:
        record.status = "denied"
        session.stage("refused", outcome="denied", error="; ".join(decision.reasons) or None, **described)
        session.close()  # one object: received, decision, refused, session_closed
        self._requests.put_new(record)
        return Outcome(record.request_id, "denied", classification, decision, record)

    def _outcome_unknown(
        self, session: SessionLog, record: RequestRecord, described: dict[str, Any], exc: BaseException
    ) -> GatehouseError:
        """A bug after the command may have been sent: say so, finish the record and the session
        honestly, and never claim that nothing ran."""
        log.exception("request %s failed while running", record.request_id)
        failure = GatehouseError(
            "Gatehouse failed while running the command; it may have run. "
            f"Look the request up by its id ({record.request_id}).",
            code="outcome_unknown",
        )
        failure.command_sent = True
        self._fail(record, f"{failure.code}: {type(exc).__name__}")
        self._record_failure(session, failure, described)
        return failure

    def _request_approval(
        self,
        session: SessionLog,
        record: RequestRecord,
        principal: Principal,
        connection: Connection,
        traced: Traced,
        masker: Masker,
        decision: Decision,
        described: dict[str, Any],
    ) -> Outcome:
        """Store the pending request with its preview, then start the state machine that holds it."""
        requirement = decision.approval
        assert requirement is not None
        now = int(self._clock())
        expires_s = requirement.expires_s
        record.status = "pending_approval"
        record.approval_group = requirement.group
        record.approval_quorum = requirement.quorum
        record.approval_groups = list(requirement.groups)
        record.approval_expires_at = now + expires_s
        record.expires_at = now + expires_s + RECORD_TTL_S
        record.relations = list(traced.classification.relations)
        owner = principal.attributes.get("owner")
        record.owner = str(owner) if owner else None
        mode = requirement.preview
        if connection.kind == "postgres":
            record.preview = self._approvals.preview(connection, traced, masker, mode)
        else:
            # No dry run of an HTTP call, a Kubernetes write or a shell command: the approver sees
            # the exact command and its class.
            record.preview = {
                "mode": "none",
                "statements": [
                    {"text": masker.mask_text(s.text), "class": s.cls.value, "reason": s.reason}
                    for s in traced.classification.statements
                ],
            }
        self._requests.put_new(record)
        session.stage("approval_requested", outcome="pending", **described)
        session.flush()
        try:
            self._workflow().start(record.request_id, expires_s)
        except GatehouseError as exc:
            # Never pending forever: a request nobody can approve is a failed request.
            try:
                self._requests.transition(
                    record.request_id,
                    expect=("pending_approval",),
                    status="failed",
                    error=f"{exc.code}: {exc.message}",
                )
            except GatehouseError:
                log.error("could not mark request %s failed", record.request_id)
            record.status = "failed"
            self._refuse(session, exc, **described)
            raise
        return Outcome(record.request_id, "pending_approval", traced.classification, decision, record)

    def _workflow(self) -> Any:
        if self._workflow_client is None:
            from gatehouse.workflow import Workflow, WorkflowUnavailableError

            if not self._settings.state_machine_arn:
                raise WorkflowUnavailableError("no approval workflow is configured: nothing can approve this")
            session = self._aws_session or aws.session()
            self._workflow_client = Workflow(
                session.client("stepfunctions"), self._settings.state_machine_arn
            )
        return self._workflow_client

    def _notifier(self) -> Any:
        if self._notifier_client is None:
            from gatehouse.slack.app import build_notifier, load_credentials

            self._notifier_client = build_notifier(
                load_credentials(self._secrets, self._settings), self._settings
            )
        return self._notifier_client

    def _decide(
        self,
        principal: Principal,
        connection: Connection,
        sql: str,
        reason: str,
        masker: Masker,
        described: dict[str, Any],
    ) -> tuple[Classification, Traced, Decision]:
        """classify -> lineage -> authorize; fills `described` for the log as it learns."""
        classification = classify(connection.kind, sql)
        described["statement_class"] = classification.cls.value
        described["relations"] = list(classification.relations)
        if classification.parse_error is not None:
            raise ClassificationError(
                f"the SQL does not parse: {masker.mask_text(classification.parse_error)}",
                code="sql_parse_error",
            )
        traced = self._trace(connection, classification, sql, masker)
        classification = traced.classification
        described["statement_class"] = classification.cls.value
        described["relations"] = list(classification.relations)
        decision = self._policy.authorize(principal, connection, classification, reason=reason)
        return classification, traced, decision

    def _durable_before_run(self, session: SessionLog, record: RequestRecord, connection: Connection) -> None:
        """Flush received+decision and put the request record, overlapped; both or nothing runs.

        The executor logs in to the target meanwhile (a warm session makes that a no-op): a login
        runs nothing, and the command itself waits for both writes.
        """

        def log_in() -> None:
            if connection.kind != "postgres":
                return  # other kinds log in when they run
            try:
                self._executor.warm(connection, self._settings.statement_timeout_ms)
            except Exception:  # noqa: BLE001 - not ours to report: `run` logs in again and says why
                log.info("request %s: the early login to %s failed", record.request_id, connection.name)

        pending = _Background(self._requests.put_new, record)
        login = _Background(log_in)
        try:
            session.flush()
        except GatehouseError as exc:
            if pending.wait() is None:
                self._finish(record, status="failed", error=f"{exc.code}: {exc.message}")
            login.wait()
            raise
        failure = pending.wait()
        login.wait()
        if failure is not None:
            # The decision is on record; the refusal closes the session (nothing ran).
            self._refuse(session, failure)
            raise failure

    def _finish(self, record: RequestRecord, **fields: Any) -> None:
        """Best effort: the command already ran and the session log holds its outcome."""
        try:
            self._requests.finish(record.request_id, **fields)
        except GatehouseError:
            log.error("could not update request record %s", record.request_id)
        for key, value in fields.items():
            setattr(record, key, value)

    def _fail(self, record: RequestRecord, error: str) -> None:
        """Finish the record as failed, correcting it if it was already finished as executed.

        A read's record is finished with its outcome while the closing object is written
        (`_execute`); when that object, or what follows it, fails after all, the record says so.
        """
        if record.status != "executed":
            self._finish(record, status="failed", error=error)
            return
        try:
            self._requests.transition(record.request_id, expect=("executed",), status="failed", error=error)
        except GatehouseError:
            log.error("could not mark request record %s failed", record.request_id)
        record.status, record.error = "failed", error

    def _finish_overlapped(self, record: RequestRecord, result: QueryResult) -> _Background:
        """Start finishing the record as executed, beside the session's closing write."""
        finish = functools.partial(
            self._requests.finish,
            record.request_id,
            status="executed",
            row_count=result.row_count,
            duration_ms=result.duration_ms,
        )
        return _Background(finish)

    @staticmethod
    def _joined(
        finishing: list[_Background], record: RequestRecord | None, result: QueryResult | None
    ) -> None:
        """Wait for an overlapped finish; on success the record in hand says executed."""
        if not finishing or record is None:
            return
        if finishing[0].wait() is not None:
            log.error("could not update request record %s", record.request_id)
            return  # still `executing` here: `_submit` tries once more
        record.status = "executed"
        if result is not None:
            record.row_count, record.duration_ms = result.row_count, result.duration_ms

    def _execute(
        self,
        session: SessionLog,
        connection: Connection,
        traced: Traced,
        masker: Masker,
        described: dict[str, Any],
        *,
        check: Callable[[QueryResult], None] | None = None,
        record: RequestRecord | None = None,
    ) -> QueryResult:
        """Run, mask, record. With `record`, it is finished as executed beside the closing write.

        Both the record's update and the closing object come after the command ran, so they are
        written side by side: for a read inside its transaction (there is nothing to commit that
        could fail), for a write after COMMIT. If the closing object fails, `_fail` corrects the
        record.
        """
        masked: list[QueryResult] = []
        finishing: list[_Background] = []
        classification = traced.classification
        read_only = all(st.cls is StatementClass.READ for st in classification.statements)

        def mask_and_record(raw: QueryResult) -> None:
            # Runs before COMMIT: if the outcome cannot be recorded, the transaction rolls back.
            if check is not None:
                check(raw)  # raising here rolls the command back (a drifted approval)
            plan = self._plan(traced, masker, raw) if traced.lineage else None
            out = masker.mask_rows(raw.columns, raw.rows, plan)
            masked.append(dataclasses.replace(raw, rows=tuple(out.rows), masked=out.masked))
            session.stage(
                "executed", outcome="ok", row_count=raw.row_count, duration_ms=raw.duration_ms, **described
            )
            if read_only:
                # Nothing to commit that could fail: the outcome, the close and the manifest
                # are one object, written before the (read-only) transaction ends.
                if record is not None:
                    finishing.append(self._finish_overlapped(record, raw))
                session.close()
            else:
                # A write's COMMIT can still fail (a deferred constraint): the session stays
                # open so that a failure after this point can still be recorded.
                session.flush()

        started = time.perf_counter()
        try:
            raw = self._executor.run(
                connection,
                classification.statements,
                timeout_ms=self._settings.statement_timeout_ms,
                max_rows=self._settings.max_rows,
                max_bytes=self._settings.max_bytes,
                before_commit=mask_and_record,
            )
        except AuditWriteError:
            self._joined(finishing, record, None)
            raise
        except GatehouseError as exc:
            self._joined(finishing, record, None)
            duration = round((time.perf_counter() - started) * 1000, 3)
            exc.message = self._safe_error(exc, traced, masker)
            exc.args = (exc.message,)
            self._record_failure(session, exc, described, duration_ms=duration)
            raise
        except BaseException:
            self._joined(finishing, record, None)
            raise
        # The command has committed and its `executed` event is stored: a failure to write the
        # closing event must not turn a command that ran into an error the agent would retry.
        if not session.closed:
            if record is not None:
                finishing.append(self._finish_overlapped(record, raw))
            self._close(session)
        self._joined(finishing, record, raw)
        return masked[0]

    def _record_failure(
        self, session: SessionLog, exc: GatehouseError, described: dict[str, Any], **fields: Any
    ) -> None:
        if session.closed:
            # A read's outcome and close were written before its transaction ended; what failed
            # after that cannot be added to a closed session. The service log keeps it.
            log.error("session %s closed before %s could be recorded", session.session_id, exc.code)
            return
        session.stage(
            "failed",
            outcome="error",
            # The schema's outcomes are fixed; whether the command may have run is in the text.
            error=f"{exc.code}: {exc.message}" + (" (sent to the target)" if exc.command_sent else ""),
            **fields,
            **described,
        )
        session.close()

    # -- lineage -----------------------------------------------------------------------------

    def _trace(
        self, connection: Connection, classification: Classification, sql: str, masker: Masker
    ) -> Traced:
        """Lineage for every statement; escalates hidden calls, fills the protected columns."""
        if connection.kind != "postgres":
            return Traced(classification)
        catalog = self._catalogs.get(connection)
        lineage = self._lineage.trace(sql, catalog)
        if any(s.missing for s in lineage):
            # A relation created since the snapshot: read the catalog again (rate-limited).
            fresher = self._catalogs.refresh_after_miss(connection, catalog)
            if fresher is not None:
                catalog = fresher
                lineage = self._lineage.trace(sql, catalog)
        statements = classification.statements
        if len(lineage) != len(statements):
            # Never expected (both read the same parse); fail closed rather than guess.
            lineage = [StatementLineage(opaque="lineage and classification disagree")] * len(statements)
        profile = masker.profile
        out = []
        for stmt, traced in zip(statements, lineage, strict=True):
            stmt = _escalate_field_calls(stmt, traced.field_calls)
            stmt = _escalate_hidden_code(stmt, traced)
            read = protected_names(profile, (o.flow for o in traced.outputs))
            if traced.opaque and traced.returns_rows:
                read = sorted({*read, UNDETERMINED})
            filtered = protected_names(profile, [Flow(traced.filtered)])
            if traced.filtered_opaque:
                filtered = sorted({*filtered, UNDETERMINED})
            out.append(
                dataclasses.replace(stmt, protected_read=tuple(read), protected_filtered=tuple(filtered))
            )
        referenced = any(protected_names(profile, [Flow(t.referenced)]) for t in lineage)
        return Traced(
            dataclasses.replace(classification, statements=tuple(out)), tuple(lineage), catalog, referenced
        )

    @classmethod
    def _plan(cls, traced: Traced, masker: Masker, raw: QueryResult) -> Sequence[Any]:
        """The masking plan for the result (the text's last statement produced it)."""
        return cls._plan_for(traced, masker, list(raw.columns), list(raw.column_origins or ()))

    @staticmethod
    def _plan_for(
        traced: Traced,
        masker: Masker,
        columns: list[str],
        origins: list[tuple[int, int] | None],
        statement_index: int = -1,
    ) -> list[Any]:
        flows = traced.lineage[statement_index].columns(len(columns))
        catalog = traced.catalog
        if catalog is not None and origins:
            # The server names the table and column of each plain column reference: whatever
            # lineage made of it, that source is in the value's flow too (defence in depth).
            for index, origin in enumerate(origins[: len(flows)]):
                source = catalog.origin(*origin) if origin else None
                if source is not None and source not in flows[index].sources:
                    flows[index] = merge([flows[index], Flow(frozenset({source}))])
        return plan_columns(masker.profile, columns, flows)

    @staticmethod
    def _safe_error(exc: GatehouseError, traced: Traced, masker: Masker) -> str:
        """The error text an agent and the log may see: row values out, detectors on."""
        message = exc.message
        detail = getattr(exc, "detail", None) if isinstance(exc, TargetError) else None
        risky = traced.touches_protected or any(s.opaque for s in traced.lineage)
        if risky and isinstance(exc, TargetError):
            identifiers = traced.catalog.identifiers if traced.catalog is not None else frozenset()
            message = redact_error_text(message, identifiers)
            # A DETAIL line can repeat the input itself (libxml quotes the offending line, a key
            # or a failing row): with protected data in play it is withheld whole.
            detail = "[REDACTED]" if detail else detail
        if detail:
            message = f"{message} (DETAIL: {detail})"
        return masker.mask_text(message)

    @staticmethod
    def _close(session: SessionLog) -> None:
        try:
            session.close()
        except AuditWriteError:
            log.error("session %s: could not write session_closed and its manifest", session.session_id)

    def _refuse(self, session: SessionLog, exc: GatehouseError, **fields: Any) -> None:
        """Record a refusal; the refusal stands even if the log is down (nothing runs)."""
        try:
            session.stage(
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


def _escalate_field_calls(stmt: Statement, calls: Sequence[str]) -> Statement:
    """Attribute notation calls a function: `(pid).pg_terminate_backend`, `c.row_to_json`.

    Lineage lists every field name that is not a column of what it qualifies; each counts as a
    call of that function, so the statement takes the strictest class among them.
    """
    cls, reason = stmt.cls, stmt.reason
    functions = dict.fromkeys(stmt.functions)
    for name in calls:
        found, why = classify_field_call(name)
        functions.setdefault(name, None)
        if CLASS_RISK[found] > CLASS_RISK[cls]:
            cls, reason = found, why
    if cls is stmt.cls and len(functions) == len(stmt.functions):
        return stmt
    return dataclasses.replace(stmt, cls=cls, reason=reason, functions=tuple(functions))


class _Background:
    """One call on a daemon thread, joined by its owner: overlaps two writes of one request."""

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self._error: GatehouseError | None = None
        self._crash: BaseException | None = None

        def run() -> None:
            try:
                fn(*args)
            except GatehouseError as exc:
                self._error = exc
            except BaseException as exc:  # noqa: BLE001 - handed to the owner, re-raised there
                self._crash = exc

        self._thread = threading.Thread(target=run, name="gatehouse-record", daemon=True)
        self._thread.start()

    def wait(self) -> GatehouseError | None:
        """Join; the call's GatehouseError (None when it succeeded); anything else re-raised."""
        self._thread.join()
        if self._crash is not None:
            raise self._crash
        return self._error


def _escalate_hidden_code(stmt: Statement, traced: StatementLineage) -> Statement:
    """Code a statement runs without naming it, or a statement lineage could not walk whole.

    A view that calls a function, a cast to a domain whose CHECK calls one, a user-defined
    operator: none is a FuncCall of the text, and READ ONLY does not stop what such code may do
    (signal sessions, take advisory locks). Like a call Gatehouse cannot see into, it is unknown.
    """
    why = traced.untraceable or (
        f"{traced.hidden_code[0]}: code Gatehouse cannot see runs" if traced.hidden_code else ""
    )
    if not why or CLASS_RISK[stmt.cls] >= CLASS_RISK[StatementClass.UNKNOWN]:
        return stmt
    return dataclasses.replace(stmt, cls=StatementClass.UNKNOWN, reason=why)
