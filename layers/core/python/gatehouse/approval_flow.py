"""Just-in-time approval: the steps the state machine runs and the votes approvers cast.

`Gatehouse.submit` stores a `pending_approval` record with its preview and starts one state
machine execution per request (named after the request id). From there:

- `record_preview` and `notify` (state machine tasks) put the preview on record and ask the
  approvers in Slack; `notify` keeps the task token with the request (a Slack button holds only
  the request id: a token is longer than a button value may be);
- `vote` (the Slack interaction) checks who votes (a registered approver, Cedar's `approve`, a
  member of a required group, not the agent's owner, once), records the vote with a conditional
  write, and on a denial or once the quorum is reached hands the decision to the state machine;
- `execute_approved` decides again with the policies in force now, checks the stored SHA-256 and
  the expiry, claims the request once (a second delivery finds it claimed), runs exactly the
  stored command, and rolls it back as `drifted` when a dry-run preview counted other rows;
- `finish_denied` and `expire` close the story.

Every step is an event in the request's own session of the log (resumed: same chain, next seq),
so `gatehouse audit replay ID` tells the whole story.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gatehouse.approvals import RequestRecord, TransitionError, sql_sha256
from gatehouse.audit.log import SessionClosedError, SessionLog
from gatehouse.exceptions import GatehouseError, NotFoundError, UnknownPrincipalError
from gatehouse.lineage import Flow, merge
from gatehouse.masking.plan import plan_columns
from gatehouse.models import Decision, Effect, QueryResult
from gatehouse.values import result_view
from gatehouse.workflow import ApprovalClosedError

if TYPE_CHECKING:
    from gatehouse.service import Gatehouse

log = logging.getLogger(__name__)

# A result kept in the request record for the agent's long-poll: DynamoDB items hold 400 KB.
MAX_STORED_RESULT_BYTES = 300_000
PREVIEW_TIMEOUT_MS = 2_000


class DriftError(GatehouseError):
    """The approved command would change other rows than its dry run showed: rolled back."""

    code = "drifted"
    status = 409


@dataclass(frozen=True)
class VoteResult:
    ok: bool  # the vote counted
    status: str  # the request's status after the vote
    message: str  # what the approver is told (an ephemeral Slack reply, the console)


def quorum_reached(votes: Sequence[Mapping[str, Any]], groups: Sequence[str], quorum: int) -> bool:
    """`quorum` distinct approvers for every group, each approver counting for one group only.

    With several groups one person in both may not satisfy both: the approvals are matched to
    the groups (a bipartite matching, tiny here: a few approvers, a few group slots).
    """
    approvers = [(v["user"], set(v.get("groups") or ())) for v in votes if v.get("vote") == "approve"]
    slots = [g for g in groups for _ in range(max(1, quorum))]
    owner_of: dict[int, int] = {}  # slot -> approver index

    def assign(a: int, seen: set[int]) -> bool:
        for s, group in enumerate(slots):
            if group in approvers[a][1] and s not in seen:
                seen.add(s)
                if s not in owner_of or assign(owner_of[s], seen):
                    owner_of[s] = a
                    return True
        return False

    for a in range(len(approvers)):
        assign(a, set())
    return len(owner_of) == len(slots)


def still_allowed(decision: Decision, record: RequestRecord) -> bool:
    """Whether an approved command may still run: allowed outright now, or still needing approval
    and the votes it has meet what the policies in force now ask."""
    if decision.effect is Effect.ALLOW:
        return True
    return (
        decision.effect is Effect.APPROVAL
        and decision.approval is not None
        and quorum_reached(
            record.votes or (),
            decision.approval.groups or (decision.approval.group,),
            decision.approval.quorum,
        )
    )


class ApprovalFlow:
    """The approval flow's steps. Built by `Gatehouse`, whose clients and decision path it uses."""

    def __init__(self, service: Gatehouse) -> None:
        self._g = service

    # -- state machine tasks -----------------------------------------------------------------

    def record_preview(self, request_id: str) -> dict[str, Any]:
        record = self._g._requests.get(request_id)
        preview = record.preview or {}
        rows = [s.get("affected_rows", s.get("estimated_rows")) for s in preview.get("statements") or ()]
        counted = [r for r in rows if isinstance(r, int)]
        session = self._resume(request_id)
        session.append(
            "preview",
            outcome="pending",
            row_count=sum(counted) if counted else None,
            reason=f"{preview.get('mode', 'explain')} preview"
            + (f" ({preview['fallback']})" if preview.get("fallback") else ""),
        )
        return {"request_id": request_id, "status": record.status}

    def notify(self, request_id: str, task_token: str) -> dict[str, Any]:
        record = self._g._requests.get(request_id)
        if record.status in _DECIDED_BY_VOTE:
            return self._deliver_early(record, task_token)
        if record.status != "pending_approval":
            return {"request_id": request_id, "status": record.status}
        # The token first: an approver may click before the message's timestamp is stored.
        try:
            self._g._requests.set_notified(request_id, task_token=task_token, channel=None, ts=None)
        except TransitionError:
            # A vote decided between the read and this write, and found no token to answer:
            # the decision is delivered here. (The write is conditional on a pending record, and
            # so is the vote's: one of the two sees the other.)
            return self._deliver_early(self._g._requests.get(request_id), task_token)
        record.task_token = task_token
        channel, ts = self._g._notifier().post(self._view(record))
        # Unconditional: a vote may have decided while the message was posted; Announce needs it.
        self._g._requests.set_message(request_id, channel=channel, ts=ts)
        groups = ", ".join(record.approval_groups or [record.approval_group or ""])
        self._resume(request_id).append(
            "notified",
            outcome="pending",
            reason=f"asked {groups} in Slack (quorum {record.approval_quorum or 1} each)",
        )
        return {"request_id": request_id, "status": "pending_approval"}

    def finish_denied(self, request_id: str) -> dict[str, Any]:
        record = self._g._requests.get(request_id)
        self._close_story(record)
        return {"request_id": request_id, "status": record.status}

    def expire(self, request_id: str) -> dict[str, Any]:
        try:
            self._g._requests.transition(request_id, expect=("pending_approval",), status="expired")
        except TransitionError:
            record = self._g._requests.get(request_id)
            if record.status == "approved" and record.origin != "proxy":
                # Approved, yet the workflow waited until the expiry: the approval never reached it,
                # and nothing else will run the command.
                self._stranded(
                    request_id, "the approval never reached the workflow before the request expired"
                )
                return {"request_id": request_id, "status": "failed"}
            return {"request_id": request_id, "status": record.status}
        session = self._resume(request_id)
        session.stage(
            "approval_expired", outcome="expired", reason="nobody decided before the request expired"
        )
        session.close()
        return {"request_id": request_id, "status": "expired"}

    def fail_approval(self, request_id: str) -> dict[str, Any]:
        """A step failed for good: the request is failed, never left pending."""
        why = "the approval flow failed (a step kept failing); ask again"
        try:
            self._g._requests.transition(
                request_id, expect=("pending_approval", "approved", "executing"), status="failed", error=why
            )
        except TransitionError:
            return {"request_id": request_id, "status": self._g._requests.get(request_id).status}
        try:
            session = self._resume(request_id)
            session.stage("failed", outcome="error", error=f"approval_failed: {why}")
            session.close()
        except GatehouseError as exc:
            log.error("could not record the failure of %s (%s)", request_id, exc.code)
        return {"request_id": request_id, "status": "failed"}

    def execute_approved(self, request_id: str) -> dict[str, Any]:
        current = self._g._requests.get(request_id)
        if current.origin == "proxy":
            # The proxy runs it, once, when the agent sends the same statement again: the agent's
            # own transaction, on its own connection. The approval is on record already.
            return {"request_id": request_id, "status": current.status, "runs_on": "proxy"}
        try:
            # Claimed once: a second delivery of the approval finds the request executing already.
            self._g._requests.transition(request_id, expect=("approved",), status="executing")
        except TransitionError:
            record = self._g._requests.get(request_id)
            return {"request_id": request_id, "status": record.status}
        record = self._g._requests.get(request_id)
        session = self._resume(request_id)
        try:
            status = self._run_approved(record, session)
        except GatehouseError as exc:
            status = self._after_failure(request_id, record, exc)
        return {"request_id": request_id, "status": status}

    def _after_failure(self, request_id: str, record: RequestRecord, exc: GatehouseError) -> str:
        """The answer of a run that raised: the final status it had stored, else failed.

        A refusal, a drift or a late approval is stored before its closing events are written; when
        that write fails, what is stored stands (nothing ran) and is the answer, never `failed`.
        """
        try:
            stored = self._g._requests.get(request_id).status
        except GatehouseError:
            stored = "executing"  # unknown: finish it as failed, best effort
        if stored != "executing":
            # The code only: a target's message may quote the data.
            log.error("request %s: %s after it was %s", request_id, exc.code, stored)
            return stored
        self._g._finish(record, status="failed", error=f"{exc.code}: {exc.message}")
        return "failed"

    def announce_outcome(self, request_id: str) -> dict[str, Any]:
        """Show the request's outcome in its Slack message (the last step of every ending).

        Run by the notify function, outside the VPC: the steps that decide the outcome run beside
        the targets and cannot reach Slack. A request still undecided shows nothing new.
        """
        record = self._g._requests.get(request_id)
        if record.status not in _UNDECIDED:
            self._update_message(record, _outcome_line(record))
        return {"request_id": request_id, "status": record.status}

    # -- votes -------------------------------------------------------------------------------

    def vote(self, slack_user: str, request_id: str, approve: bool, reason: str = "") -> VoteResult:
        try:
            record = self._g._requests.get(request_id)
        except NotFoundError:
            return VoteResult(False, "unknown", f"There is no request {request_id}.")
        refusal, approver_name, groups = self._vote_refusal(slack_user, record)
        if refusal is not None:
            self._resume_quietly(request_id, "vote_refused", approvers=[slack_user], reason=refusal)
            return VoteResult(False, record.status, refusal)
        vote = {
            "user": slack_user,
            "name": approver_name,
            "groups": groups,
            "vote": "approve" if approve else "deny",
        }
        if reason:
            vote["reason"] = reason[:500]
        try:
            updated = self._g._requests.add_vote(request_id, vote)
        except TransitionError:
            current = self._g._requests.get(request_id)
            why = (
                "You have already voted on this request."
                if slack_user in (current.voters or ())
                else f"This request is {current.status.replace('_', ' ')}: votes no longer count."
            )
            self._resume_quietly(request_id, "vote_refused", approvers=[slack_user], reason=why)
            return VoteResult(False, current.status, why)
        session = self._resume(request_id)
        if not approve:
            self._g._requests.transition(
                request_id,
                expect=("pending_approval",),
                status="denied",
                decided_by=approver_name,
                decided_reason=reason or None,
            )
            session.append(
                "denied_by_approver", outcome="denied", approvers=[slack_user], reason=reason or None
            )
            try:
                self._deliver(request_id, updated, "denied")
            except GatehouseError as exc:
                # Denied is final on the record: nothing will run. The execution ends at its expiry.
                log.warning("request %s: the workflow was not told of the denial (%s)", request_id, exc.code)
            return VoteResult(
                True, "denied", f"Denied{': ' + reason if reason else ''}. The command will not run."
            )
        session.stage("approval_vote", outcome="pending", approvers=[slack_user], reason=reason or None)
        groups_needed = updated.approval_groups or [updated.approval_group or ""]
        quorum = int(updated.approval_quorum or 1)
        if not quorum_reached(updated.votes or (), groups_needed, quorum):
            session.flush()
            have = sum(1 for v in updated.votes or () if v.get("vote") == "approve")
            need = quorum * len(groups_needed)
            return VoteResult(True, "pending_approval", f"Vote recorded ({have} of {need} approvals).")
        try:
            self._g._requests.transition(
                request_id, expect=("pending_approval",), status="approved", decided_by=approver_name
            )
        except TransitionError:
            session.flush()
            return VoteResult(True, self._g._requests.get(request_id).status, "Vote recorded.")
        approvers = [v["user"] for v in updated.votes or () if v.get("vote") == "approve"]
        session.stage("approved", outcome="approved", approvers=approvers)
        session.flush()
        try:
            self._deliver(request_id, updated, "approved")
        except ApprovalClosedError:
            # The execution no longer waits: the Notify step delivered this decision already, or
            # the request expired, and Expire fails an approval that never reached it.
            log.info("request %s: the workflow had the decision already", request_id)
        except GatehouseError as exc:
            if updated.origin != "proxy":
                why = f"Gatehouse could not hand it to the approval workflow ({exc.code})"
                return self._stranded(request_id, why)
            # A proxy statement runs when the agent sends it again, whatever the workflow does.
            log.warning("request %s: the workflow was not told of the approval (%s)", request_id, exc.code)
        if updated.origin == "proxy":
            return VoteResult(
                True,
                "approved",
                "Approved: it runs once, exactly as shown, when the agent sends it again through the proxy.",
            )
        return VoteResult(True, "approved", "Approved: the command runs now, exactly as shown.")

    def _stranded(self, request_id: str, why: str) -> VoteResult:
        """An approval on record that nothing will carry out: the request fails, and says so."""
        error = f"approved, but {why}: nothing was run; ask again"
        try:
            self._g._requests.transition(request_id, expect=("approved",), status="failed", error=error)
        except TransitionError:
            current = self._g._requests.get(request_id)
            return VoteResult(True, current.status, "Vote recorded.")
        log.error("request %s: %s", request_id, error)
        try:
            session = self._resume(request_id)
            session.stage("failed", outcome="error", error=f"approval_stranded: {why}")
            session.close()
        except GatehouseError as exc:
            log.error("could not record the failure of %s (%s)", request_id, exc.code)
        return VoteResult(
            False,
            "failed",
            f"Your approval was recorded, but {why}: the command will not run. "
            "Ask the agent to submit it again.",
        )

    def _vote_refusal(self, slack_user: str, record: RequestRecord) -> tuple[str | None, str, list[str]]:
        try:
            approver = self._g._registry.principal(f"slack:{slack_user}")
        except UnknownPrincipalError:
            return "You are not a registered Gatehouse approver.", slack_user, []
        if approver.kind != "approver":
            return "You are not a registered Gatehouse approver.", slack_user, []
        groups = sorted(str(g) for g in approver.groups)
        if record.status != "pending_approval":
            return (
                f"This request is {record.status.replace('_', ' ')}: votes no longer count.",
                approver.name,
                groups,
            )
        if record.approval_expires_at and self._g._clock() > record.approval_expires_at:
            return "This request has expired.", approver.name, groups
        if record.owner and record.owner == slack_user:
            return (
                f"You own the agent {record.principal_name}: you may not approve its requests.",
                approver.name,
                groups,
            )
        needed = record.approval_groups or [record.approval_group or ""]
        if not set(needed) & set(groups):
            return f"This request needs a member of {', '.join(needed)}.", approver.name, groups
        connection = self._g._registry.get_connection(record.connection)
        verdict = self._g._policy.may_approve(
            approver, connection, statement_class=record.statement_class, requester=record.principal_name
        )
        if verdict.effect is not Effect.ALLOW:
            return f"No policy lets you approve on {record.connection}.", approver.name, groups
        return None, approver.name, groups

    # -- helpers ------------------------------------------------------------------------------

    def _run_approved(self, record: RequestRecord, session: SessionLog) -> str:
        request_id = record.request_id
        if sql_sha256(record.command) != record.command_sha256:
            raise GatehouseError("the stored command does not match its SHA-256", code="command_tampered")
        if record.kind not in (None, "postgres"):
            if record.approval_expires_at and self._g._clock() > record.approval_expires_at:
                self._g._finish(record, status="expired", error="approved after the request expired")
                session.stage("approval_expired", outcome="expired", reason="approved too late")
                session.close()
                return "expired"
            return self._g._targets.run_approved(record, session)
        if record.approval_expires_at and self._g._clock() > record.approval_expires_at:
            self._g._finish(record, status="expired", error="approved after the request expired")
            session.stage("approval_expired", outcome="expired", reason="approved too late")
            session.close()
            return "expired"
        principal = self._g._registry.principal(f"iam:{record.principal_arn}")
        connection = self._g._registry.get_connection(record.connection)
        masker = self._g._masker(connection)
        described: dict[str, Any] = {
            "statement": masker.mask_text(record.command),
            "connection_env": connection.attributes.get("env"),
        }
        _classification, traced, decision = self._g._decide(
            principal, connection, record.command, record.reason, masker, described
        )
        if not still_allowed(decision, record):
            return self.policy_changed(record, session, decision, described)
        expected = _dry_run_count(record.preview)

        def check(raw: QueryResult) -> None:
            if expected is not None and raw.row_count != expected:
                raise DriftError(
                    f"the command would change {raw.row_count} rows; its dry run showed {expected}"
                )

        try:
            result = self._g._execute(session, connection, traced, masker, described, check=check)
        except DriftError as exc:
            self._g._finish(record, status="drifted", error=f"drifted: {exc.message}")
            if not session.closed:
                session.stage("drifted", outcome="drifted", error=exc.message, **described)
                session.close()
            return "drifted"
        stored = result_view(result)
        if len(repr(stored)) > MAX_STORED_RESULT_BYTES:
            stored = {**stored, "rows": [], "rows_not_kept": True}
        self._g._finish(
            record,
            status="executed",
            row_count=result.row_count,
            duration_ms=result.duration_ms,
            result=stored,
        )
        log.info("request %s executed after approval", request_id)
        return "executed"

    def policy_changed(
        self, record: RequestRecord, session: SessionLog, decision: Decision, described: dict[str, Any]
    ) -> str:
        """A policy change since the request: what is in force now decides, and it refused."""
        why = "; ".join(decision.reasons) or "the policies in force now do not allow it"
        self._g._finish(record, status="denied", error=f"policy_changed: {why}")
        session.stage(
            "refused",
            outcome="denied",
            decision=decision.effect.value,
            policy_ids=list(decision.policy_ids),
            error=f"policy_changed: {why}",
            **described,
        )
        session.close()
        return "denied"

    def preview(self, connection: Any, traced: Any, masker: Any, mode: str) -> dict[str, Any]:
        """What the write would do, computed before anyone is asked. Never raises."""
        from gatehouse.preview import assigned_columns, preview_statements  # only approvals pay
        from gatehouse.targets.postgres import connect

        catalog = traced.catalog
        relations = [catalog.resolve(*_split(r)) for r in traced.classification.relations] if catalog else []
        known = [r for r in relations if r is not None]

        # A sample row holds the values after the write: a column the statement assigns may now
        # hold anything it read (`SET notes = reverse(ssn)`), so it is masked as made from all
        # of that; a column it leaves alone holds its own value.
        assigned = assigned_columns(traced.classification.statements)
        read = frozenset().union(*(lineage.referenced for lineage in traced.lineage))

        def mask_rows(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[Any]:
            flows = []
            for c in columns:
                own = (
                    merge([Flow(frozenset({f"{r.qualified}.{c}"})) for r in known if c in r.columns])
                    if any(c in r.columns for r in known)
                    else Flow(opaque="a sample column Gatehouse could not trace")
                )
                if assigned is None or c in assigned:
                    own = merge([own, Flow(read)], computed=True, how="the write")
                flows.append(own)
            return masker.mask_rows(columns, list(rows), plan_columns(masker.profile, columns, flows)).rows

        try:
            con = connect(connection, self._g._secrets, timeout_s=PREVIEW_TIMEOUT_MS / 1000 + 5)
        except GatehouseError as exc:
            return {"mode": mode, "statements": [], "error": f"{exc.code}: {exc.message}"}
        try:
            return preview_statements(
                con,
                traced.classification.statements,
                mode=mode,
                mask_rows=mask_rows,
                timeout_ms=PREVIEW_TIMEOUT_MS,
                mask_text=masker.mask_text,
            )
        except Exception as exc:
            log.exception("preview failed")
            return {"mode": mode, "statements": [], "error": f"preview failed ({type(exc).__name__})"}
        finally:
            try:
                con.close()
            except Exception:  # noqa: BLE001, S110 - closing a broken connection
                pass

    def _resume(self, request_id: str) -> SessionLog:
        return SessionLog.resume(
            self._g._s3,
            self._g._settings.log_bucket,
            session_id=request_id,
            retention_days=self._g._settings.log_retention_days,
        )

    def _resume_quietly(self, request_id: str, kind: str, **fields: Any) -> None:
        """Record a refused vote in the request's session; once that session is closed (decided,
        expired), in a short session of its own that names the request, so no refusal goes
        unrecorded. A log that cannot be written is logged here: the vote did not count anyway."""
        try:
            self._resume(request_id).append(kind, **fields)
            return
        except SessionClosedError:
            pass
        except GatehouseError as exc:
            log.error("vote refusal on %s not recorded (%s)", request_id, exc.code)
            return
        try:
            record = self._g._requests.get(request_id)
            session = SessionLog.start(
                self._g._s3,
                self._g._settings.log_bucket,
                session_id=str(uuid.uuid4()),
                request_id=request_id,
                principal_arn="",
                principal_name=",".join(fields.get("approvers") or ()) or "approver",
                connection=record.connection,
                target_kind="postgres",
                retention_days=self._g._settings.log_retention_days,
            )
            session.stage(kind, **fields)
            session.close()
        except GatehouseError as exc:
            log.error("vote refusal on %s not recorded (%s)", request_id, exc.code)

    def _deliver(self, request_id: str, voted: RequestRecord, decision: str) -> None:
        """Answer the execution's task token with a vote's decision.

        No token yet: the Notify step had not stored it when the vote decided, and its write, which
        is conditional on a pending record, then fails and delivers the decision itself.
        """
        token = voted.task_token or self._g._requests.get(request_id).task_token
        if not token:
            log.info("request %s: decided before its notification; Notify delivers it", request_id)
            return
        self._g._workflow().resume(token, decision)

    def _deliver_early(self, record: RequestRecord, task_token: str) -> dict[str, Any]:
        """Notify found the request decided by votes cast before its token existed: answer now."""
        if record.status in _DECIDED_BY_VOTE:
            decision = "approved" if record.status == "approved" else "denied"
            try:
                self._g._workflow().resume(task_token, decision)
            except ApprovalClosedError:
                log.info("request %s: the workflow had the decision already", record.request_id)
        return {"request_id": record.request_id, "status": record.status}

    def _close_story(self, record: RequestRecord) -> None:
        try:
            session = self._resume(record.request_id)
            session.close()
        except GatehouseError as exc:
            log.info("session %s already closed (%s)", record.request_id, exc.code)

    def _update_message(self, record: RequestRecord, outcome: str) -> None:
        if not record.slack_channel or not record.slack_ts:
            return
        try:
            self._g._notifier().update(record.slack_channel, record.slack_ts, self._view(record, outcome))
        except GatehouseError as exc:
            log.error("could not update the Slack message of %s (%s)", record.request_id, exc.code)

    def _view(self, record: RequestRecord, outcome: str = "") -> Any:
        from gatehouse.slack.views import ApprovalView

        connection = self._g._registry.get_connection(record.connection)
        masker = self._g._masker(connection)
        return ApprovalView(
            request_id=record.request_id,
            agent=record.principal_name,
            owner=record.owner,
            connection=record.connection,
            env=_text(connection.attributes.get("env")),
            statement=masker.mask_text(record.command),
            statement_class=record.statement_class,
            relations=tuple(record.relations or ()),
            preview=record.preview or {},
            reason=masker.mask_text(record.reason),
            policy_ids=tuple(record.policy_ids),
            groups=tuple(record.approval_groups or [record.approval_group or ""]),
            quorum=int(record.approval_quorum or 1),
            expires_at=int(record.approval_expires_at or 0),
            status=record.status,
            votes=tuple(
                (v.get("name", v["user"]), v.get("vote", ""), v.get("reason", "")) for v in record.votes or ()
            ),
            outcome=outcome,
        )


def _dry_run_count(preview: Mapping[str, Any] | None) -> int | None:
    """The last statement's dry-run row count, when the preview was a dry run."""
    if not preview or preview.get("mode") != "dry_run" or preview.get("fallback"):
        return None
    statements = preview.get("statements") or ()
    if not statements:
        return None
    count = statements[-1].get("affected_rows")
    return count if isinstance(count, int) else None


# What a vote decides: a request in one of these when Notify runs was decided before its token.
_DECIDED_BY_VOTE = frozenset({"approved", "denied"})
# Statuses with no outcome to show yet.
_UNDECIDED = frozenset({"pending_approval", "approved", "executing"})


def _outcome_line(record: RequestRecord) -> str:
    if record.status == "expired":
        return "expired: nobody decided in time"
    if record.status == "executed":
        return f"executed: {record.row_count} rows"
    if record.status == "denied":
        who = f" by {record.decided_by}" if record.decided_by else ""
        why = f": {record.decided_reason}" if record.decided_reason else ""
        return f"denied{who}{why}" if who or why else f"denied ({record.error or 'policy'})"
    if record.status == "drifted":
        return f"drifted: {record.error or 'the data changed under the approval'}; rolled back"
    return record.status.replace("_", " ") + (f": {record.error}" if record.error else "")


def _split(relation: str) -> tuple[str, str | None]:
    parts = relation.split(".")
    return (parts[-1], parts[-2] if len(parts) > 1 else None)


def _text(value: Any) -> str | None:
    return None if value is None else str(value)
