"""Cedar policies: the demo contract, approvals, multi-statement texts, and refusing bad policy sets."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gatehouse.classify import classify
from gatehouse.exceptions import PolicyError
from gatehouse.models import (
    ApprovalRequirement,
    Classification,
    Connection,
    Effect,
    Principal,
    Statement,
    StatementClass,
)
from gatehouse.policy import PolicyEngine, default_schema_path

ALLOW, APPROVAL, DENY = Effect.ALLOW, Effect.APPROVAL, Effect.DENY
MONDAY_NOON = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)

ANALYST = Principal(name="analyst", kind="agent", attributes={"team": "data", "clearance": "standard"})


def connection(name: str, **attributes: str) -> Connection:
    return Connection(
        name=name,
        kind="postgres",
        host="127.0.0.1",
        port=5432,
        database=name,
        secret_id=f"gatehouse/connections/{name}",
        attributes=attributes,
    )


DEV = connection("demo-dev", env="dev", data_classification="internal")
PROD = connection("demo-prod", env="prod", data_classification="pii")


def of_class(cls: StatementClass, text: str = "") -> Classification:
    return Classification(kind="postgres", statements=(Statement(text=text, cls=cls, reason=f"a {cls}"),))


@pytest.fixture(scope="module")
def engine() -> PolicyEngine:
    return PolicyEngine.default()


def write_policies(folder: Path, **files: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / f"{name}.cedar").write_text(text, encoding="utf-8")
    return folder


# -- the demo contract -----------------------------------------------------------------------------

DEMO_CONTRACT = [
    # class, dev effect, dev policy ids, prod effect, prod policy ids
    ("read", ALLOW, ("dev-read-write",), ALLOW, ("prod-read",)),
    ("write", ALLOW, ("dev-read-write",), APPROVAL, ("prod-write-needs-dba",)),
    ("ddl", APPROVAL, ("dev-ddl-needs-dba",), DENY, ("prod-no-ddl-or-privilege",)),
    ("privilege", DENY, (), DENY, ("prod-no-ddl-or-privilege",)),
    ("session", ALLOW, ("dev-session-settings",), DENY, ()),
    ("transaction", ALLOW, ("transaction-control",), ALLOW, ("transaction-control",)),
    ("admin", DENY, (), DENY, ()),
    ("unknown", DENY, (), DENY, ()),
]


@pytest.mark.parametrize(("cls", "dev_effect", "dev_ids", "prod_effect", "prod_ids"), DEMO_CONTRACT)
def test_demo_policies_decide_each_class_as_the_contract_says(
    engine: PolicyEngine,
    cls: str,
    dev_effect: Effect,
    dev_ids: tuple[str, ...],
    prod_effect: Effect,
    prod_ids: tuple[str, ...],
) -> None:
    classification = of_class(StatementClass(cls))

    on_dev = engine.authorize(ANALYST, DEV, classification, now=MONDAY_NOON)
    on_prod = engine.authorize(ANALYST, PROD, classification, now=MONDAY_NOON)

    assert (on_dev.effect, on_dev.policy_ids) == (dev_effect, dev_ids)
    assert (on_prod.effect, on_prod.policy_ids) == (prod_effect, prod_ids)


def test_a_write_on_prod_waits_for_one_dba_with_a_dry_run_preview(engine: PolicyEngine) -> None:
    decision = engine.authorize(ANALYST, PROD, classify("postgres", "update customers set name = 'x'"))

    assert decision.effect is APPROVAL
    assert decision.approval == ApprovalRequirement(
        group="dba", quorum=1, groups=("dba",), expires_s=1800, preview="dry_run"
    )
    assert decision.as_dict()["approval"] == {
        "group": "dba",
        "quorum": 1,
        "groups": ["dba"],
        "expires_s": 1800,
        "preview": "dry_run",
    }


def test_ddl_on_dev_waits_for_a_dba_briefly_so_the_demo_can_show_an_expiry(engine: PolicyEngine) -> None:
    decision = engine.authorize(ANALYST, DEV, classify("postgres", "create table t (id int)"))

    assert decision.approval == ApprovalRequirement(group="dba", expires_s=15, preview="explain")


def test_ddl_on_prod_is_forbidden_naming_the_forbid(engine: PolicyEngine) -> None:
    decision = engine.authorize(ANALYST, PROD, classify("postgres", "DROP TABLE customers"))

    assert decision.effect is DENY
    assert decision.policy_ids == ("prod-no-ddl-or-privilege",)
    assert decision.reasons == (
        "sql:ddl on demo-prod is forbidden by prod-no-ddl-or-privilege (DROP TABLE changes the schema)",
    )


def test_a_deny_without_any_permit_names_no_policy_and_says_so(engine: PolicyEngine) -> None:
    decision = engine.authorize(ANALYST, PROD, classify("postgres", "vacuum customers"))

    assert decision.effect is DENY
    assert decision.policy_ids == ()
    assert decision.reasons[0].startswith("no policy permits sql:admin on demo-prod")


def test_a_hidden_write_is_decided_as_a_write(engine: PolicyEngine) -> None:
    sql = "with d as (delete from customers returning *) select * from d"

    decision = engine.authorize(ANALYST, PROD, classify("postgres", sql))

    assert decision.effect is APPROVAL
    assert "data-modifying CTE" in decision.reasons[0]


def test_unparseable_sql_is_denied(engine: PolicyEngine) -> None:
    decision = engine.authorize(ANALYST, DEV, classify("postgres", "selec 1"))

    assert decision.effect is DENY
    assert "sql:unknown" in decision.reasons[0]


def test_a_connection_of_another_env_or_without_attributes_gets_nothing_but_transactions(
    engine: PolicyEngine,
) -> None:
    bare = connection("scratch")
    staging = connection("staging-db", env="staging")

    for target in (bare, staging):
        assert engine.authorize(ANALYST, target, of_class(StatementClass.READ)).effect is DENY
        assert engine.authorize(ANALYST, target, of_class(StatementClass.TRANSACTION)).effect is ALLOW


def test_a_principal_without_attributes_is_decided_not_an_error(engine: PolicyEngine) -> None:
    nobody = Principal(name="new-agent", kind="agent")

    assert engine.authorize(nobody, DEV, of_class(StatementClass.READ)).effect is ALLOW


def test_a_text_with_no_statement_is_denied(engine: PolicyEngine) -> None:
    empty = Classification(kind="postgres", statements=())

    assert engine.authorize(ANALYST, DEV, empty).effect is DENY


# -- multi-statement texts -------------------------------------------------------------------------


def test_the_strictest_statement_decides_a_multi_statement_text(engine: PolicyEngine) -> None:
    sql = "select * from customers; update customers set name = 'x'; drop table orders"

    on_dev = engine.authorize(ANALYST, DEV, classify("postgres", sql))
    on_prod = engine.authorize(ANALYST, PROD, classify("postgres", sql))

    assert on_dev.effect is APPROVAL
    assert on_dev.policy_ids == ("dev-ddl-needs-dba",)
    assert on_dev.reasons[0].startswith("statement 3 of 3 (drop table orders): sql:ddl on demo-dev")
    assert on_prod.effect is DENY
    assert on_prod.policy_ids == ("prod-no-ddl-or-privilege",)


def test_a_single_denied_statement_denies_the_whole_text(engine: PolicyEngine) -> None:
    decision = engine.authorize(ANALYST, DEV, classify("postgres", "select 1; select 2; grant all on t to x"))

    assert decision.effect is DENY
    assert decision.reasons == (
        "statement 3 of 3 (grant all on t to x): no policy permits sql:privilege on demo-dev "
        "(GRANT changes privileges)",
    )


def test_an_all_allowed_text_names_every_deciding_policy_once(engine: PolicyEngine) -> None:
    decision = engine.authorize(ANALYST, DEV, classify("postgres", "begin; select 1; delete from t; commit"))

    assert decision.effect is ALLOW
    assert decision.policy_ids == ("transaction-control", "dev-read-write")
    assert len(decision.reasons) == 4


# -- approvals -------------------------------------------------------------------------------------

SCHEMA = default_schema_path()


def test_approval_annotation_with_quorum(tmp_path: Path) -> None:
    folder = write_policies(
        tmp_path / "p",
        main="""
        @id("two-security-officers")
        @approval("security")
        @quorum("2")
        permit (principal, action == Gatehouse::Action::"sql:write", resource);
        """,
    )

    engine = PolicyEngine.from_dir(folder, SCHEMA)
    decision = engine.authorize(ANALYST, PROD, of_class(StatementClass.WRITE))

    assert decision.effect is APPROVAL
    assert decision.approval == ApprovalRequirement(group="security", quorum=2)
    assert decision.policy_ids == ("two-security-officers",)


def test_approval_wins_over_a_plain_permit_and_the_largest_quorum_wins(tmp_path: Path) -> None:
    folder = write_policies(
        tmp_path / "p",
        a="""
        @id("writes-ok")
        permit (principal, action == Gatehouse::Action::"sql:write", resource);
        @id("one-dba")
        @approval("dba")
        permit (principal, action == Gatehouse::Action::"sql:write", resource);
        """,
        b="""
        @id("three-owners")
        @approval("owners")
        @quorum("3")
        permit (principal, action == Gatehouse::Action::"sql:write", resource)
        when { resource.data_classification == "pii" };
        """,
    )
    engine = PolicyEngine.from_dir(folder, SCHEMA)

    on_pii = engine.authorize(ANALYST, PROD, of_class(StatementClass.WRITE))
    on_internal = engine.authorize(ANALYST, DEV, of_class(StatementClass.WRITE))

    # Both approval permits must be satisfied: the groups of each, the largest quorum.
    assert on_pii.effect is APPROVAL
    assert on_pii.approval == ApprovalRequirement(group="dba", quorum=3, groups=("dba", "owners"))
    assert on_pii.policy_ids == ("one-dba", "three-owners")
    assert on_pii.reasons == (
        "sql:write on demo-prod needs approval by 3 of dba and 3 of owners per one-dba, three-owners "
        "(a write)",
    )
    assert on_internal.approval == ApprovalRequirement(group="dba", quorum=1)


def test_a_forbid_beats_an_approval_permit(tmp_path: Path) -> None:
    folder = write_policies(
        tmp_path / "p",
        main="""
        @id("dba-may-write") @approval("dba")
        permit (principal, action == Gatehouse::Action::"sql:write", resource);
        @id("no-writes-at-night")
        forbid (principal, action == Gatehouse::Action::"sql:write", resource)
        when { context.hour_utc < 6 };
        """,
    )
    engine = PolicyEngine.from_dir(folder, SCHEMA)
    night = datetime(2026, 11, 2, 3, 0, tzinfo=UTC)

    assert engine.authorize(ANALYST, PROD, of_class(StatementClass.WRITE), now=night).effect is DENY
    assert engine.authorize(ANALYST, PROD, of_class(StatementClass.WRITE), now=MONDAY_NOON).effect is APPROVAL


# -- the context and entities policies can use -----------------------------------------------------


def test_policies_see_relations_team_groups_weekday_and_reason(tmp_path: Path) -> None:
    folder = write_policies(
        tmp_path / "p",
        main="""
        @id("data-team-reads")
        permit (principal, action == Gatehouse::Action::"sql:read", resource)
        when { principal.team == "data" && context.weekday != "Sunday" };
        @id("no-salaries")
        forbid (principal, action, resource)
        when { context.relations.contains("hr.salaries") && !principal.groups.contains("hr") };
        @id("reason-required-for-writes")
        permit (principal, action == Gatehouse::Action::"sql:write", resource)
        when { context.reason != "" && context.statement_count == 1 };
        """,
    )
    engine = PolicyEngine.from_dir(folder, SCHEMA)
    hr = Principal(name="hr-bot", kind="agent", attributes={"team": "data"}, groups=("hr",))
    sunday = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)

    def decide(who: Principal, sql: str, **kw: Any) -> Effect:
        return engine.authorize(who, PROD, classify("postgres", sql), **kw).effect

    assert decide(ANALYST, "select * from customers", now=MONDAY_NOON) is ALLOW
    assert decide(ANALYST, "select * from customers", now=sunday) is DENY
    assert decide(ANALYST, "select * from hr.salaries", now=MONDAY_NOON) is DENY
    assert decide(hr, "select * from hr.salaries", now=MONDAY_NOON) is ALLOW
    assert decide(ANALYST, "delete from t", now=MONDAY_NOON) is DENY
    assert decide(ANALYST, "delete from t", reason="ticket 42", now=MONDAY_NOON) is ALLOW
    assert decide(ANALYST, "delete from t; delete from u", reason="ticket 42", now=MONDAY_NOON) is DENY


def test_a_naive_now_is_taken_as_utc(tmp_path: Path) -> None:
    folder = write_policies(
        tmp_path / "p",
        main="""
        @id("office-hours")
        permit (principal, action, resource) when { context.hour_utc >= 9 && context.hour_utc < 17 };
        """,
    )
    engine = PolicyEngine.from_dir(folder, SCHEMA)

    assert (
        engine.authorize(ANALYST, DEV, of_class(StatementClass.READ), now=datetime(2026, 1, 5, 10)).effect
        is ALLOW
    )
    assert (
        engine.authorize(ANALYST, DEV, of_class(StatementClass.READ), now=datetime(2026, 1, 5, 20)).effect
        is DENY
    )


# -- fail closed at evaluation ---------------------------------------------------------------------


def test_an_evaluation_error_raises_instead_of_skipping_the_policy(tmp_path: Path) -> None:
    # Cedar skips a policy whose evaluation errors: a forbid that overflows would let the permit
    # through. The engine must refuse instead.
    folder = write_policies(
        tmp_path / "p",
        main="""
        @id("allow-all")
        permit (principal, action, resource);
        @id("overflowing-forbid")
        forbid (principal, action, resource)
        when { context.statement_count * 9223372036854775807 > 0 };
        """,
    )
    engine = PolicyEngine.from_dir(folder, SCHEMA)

    with pytest.raises(PolicyError) as caught:
        engine.authorize(ANALYST, DEV, classify("postgres", "select 1; select 2"))

    assert "overflowing-forbid" in caught.value.message


# -- refusing bad policy sets at load --------------------------------------------------------------


def load_error(folder: Path, schema: Path = SCHEMA) -> str:
    with pytest.raises(PolicyError) as caught:
        PolicyEngine.from_dir(folder, schema)
    return caught.value.message


def test_a_syntax_error_names_the_file(tmp_path: Path) -> None:
    folder = write_policies(
        tmp_path / "p",
        good='@id("ok") permit (principal, action, resource);',
        broken='@id("bad") permit (principal, action, resource) when { 1 + };',
    )

    message = load_error(folder)

    assert "broken.cedar does not parse" in message


def test_an_unknown_attribute_names_the_file_the_policy_and_the_attribute(tmp_path: Path) -> None:
    folder = write_policies(
        tmp_path / "p",
        prod="""
        @id("fine") permit (principal, action == Gatehouse::Action::"sql:read", resource);
        @id("typo-in-env")
        permit (principal, action == Gatehouse::Action::"sql:read", resource)
        when { resource.environment == "prod" };
        """,
    )

    message = load_error(folder)

    assert "prod.cedar: policy typo-in-env" in message
    assert "environment" in message


def test_an_unknown_action_is_refused(tmp_path: Path) -> None:
    folder = write_policies(
        tmp_path / "p",
        main='@id("x") permit (principal, action == Gatehouse::Action::"sql:select", resource);',
    )

    assert "main.cedar: policy x" in load_error(folder)


def test_a_policy_without_id_is_refused(tmp_path: Path) -> None:
    folder = write_policies(
        tmp_path / "p",
        main="""
        @id("first") permit (principal, action == Gatehouse::Action::"sql:read", resource);
        forbid (principal, action == Gatehouse::Action::"sql:admin", resource);
        """,
    )

    message = load_error(folder)

    assert "main.cedar: policy #2 (forbid) has no @id" in message


def test_a_duplicate_id_is_refused(tmp_path: Path) -> None:
    folder = write_policies(
        tmp_path / "p",
        a='@id("same") permit (principal, action == Gatehouse::Action::"sql:read", resource);',
        b='@id("same") permit (principal, action == Gatehouse::Action::"sql:write", resource);',
    )

    assert "policy same is also defined in a.cedar" in load_error(folder)


@pytest.mark.parametrize(
    ("annotations", "effect", "expected"),
    [
        ('@approval("dba") @quorum("0")', "permit", "@quorum must be a positive whole number"),
        ('@approval("dba") @quorum("two")', "permit", "@quorum must be a positive whole number"),
        ('@quorum("2")', "permit", "@quorum without @approval"),
        ('@approval("dba")', "forbid", "@approval only makes sense on a permit"),
        ('@approval("")', "permit", "@approval needs a group"),
        ('@approval("dba,,security")', "permit", "empty or malformed group name ''"),
        ('@approval("dba, on call")', "permit", "malformed group name 'on call'"),
        ('@expires("15m")', "permit", "@expires without @approval"),
        ('@preview("dry_run")', "permit", "@preview without @approval"),
        ('@approval("dba") @expires("9s")', "permit", "@expires('9s') is outside 10s..168h"),
        ('@approval("dba") @expires("169h")', "permit", "outside 10s..168h"),
        ('@approval("dba") @expires("15")', "permit", "@expires must be a whole number of s, m or h"),
        ('@approval("dba") @expires("2d")', "permit", "@expires must be a whole number of s, m or h"),
        ('@approval("dba") @expires("-5m")', "permit", "@expires must be a whole number of s, m or h"),
        ('@approval("dba") @preview("analyze")', "permit", '@preview must be "explain" or "dry_run"'),
    ],
)
def test_bad_approval_annotations_are_refused(
    tmp_path: Path, annotations: str, effect: str, expected: str
) -> None:
    folder = write_policies(
        tmp_path / "p",
        main=f'@id("p1") {annotations} {effect} (principal, action, resource);',
    )

    message = load_error(folder)

    assert "main.cedar: policy p1" in message
    assert expected in message


def test_an_invalid_schema_is_refused(tmp_path: Path) -> None:
    folder = write_policies(tmp_path / "p", main='@id("x") permit (principal, action, resource);')
    schema = tmp_path / "broken.cedarschema"
    schema.write_text("namespace Gatehouse { entity Agent = { name: Strin }; }", encoding="utf-8")

    message = load_error(folder, schema)

    assert "schema broken.cedarschema is invalid" in message


def test_a_schema_that_lacks_an_action_the_engine_sends_is_refused_at_load(tmp_path: Path) -> None:
    folder = write_policies(
        tmp_path / "p",
        main='@id("x") permit (principal, action == Gatehouse::Action::"sql:read", resource);',
    )
    text = SCHEMA.read_text(encoding="utf-8").replace('"sql:unknown"', '"sql:other"')
    schema = tmp_path / "narrow.cedarschema"
    schema.write_text(text, encoding="utf-8")

    message = load_error(folder, schema)

    assert "sql:unknown" in message


def test_an_empty_or_missing_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()

    assert "no policy files" in load_error(tmp_path / "empty")
    assert "does not exist" in load_error(tmp_path / "missing")


def test_the_packaged_policies_all_carry_ids_and_load(engine: PolicyEngine) -> None:
    ids = [p.policy_id for p in engine.policies]

    assert len(ids) == len(set(ids)) >= 7
    assert {p.source for p in engine.policies} == {
        "approvals.cedar",
        "common.cedar",
        "dev.cedar",
        "prod.cedar",
        "targets.cedar",
    }


# -- approval annotations: groups, expiry, preview -------------------------------------------------

WRITE_ACTION = 'Gatehouse::Action::"sql:write"'


@pytest.mark.parametrize(
    ("annotations", "expected"),
    [
        ('@approval("dba")', ApprovalRequirement(group="dba")),
        (
            '@approval("dba, security") @quorum("2")',
            ApprovalRequirement(group="dba", quorum=2, groups=("dba", "security")),
        ),
        ('@approval("dba,dba")', ApprovalRequirement(group="dba", groups=("dba",))),
        ('@approval("dba") @expires("10s")', ApprovalRequirement(group="dba", expires_s=10)),
        ('@approval("dba") @expires("15m")', ApprovalRequirement(group="dba", expires_s=900)),
        ('@approval("dba") @expires("168h")', ApprovalRequirement(group="dba", expires_s=7 * 24 * 3600)),
        ('@approval("dba") @preview("dry_run")', ApprovalRequirement(group="dba", preview="dry_run")),
        ('@approval("dba") @preview("explain")', ApprovalRequirement(group="dba", preview="explain")),
    ],
)
def test_approval_annotations_are_read_into_the_requirement(
    tmp_path: Path, annotations: str, expected: ApprovalRequirement
) -> None:
    folder = write_policies(
        tmp_path / "p",
        main=f'@id("w") {annotations}\npermit (principal, action == {WRITE_ACTION}, resource);',
    )

    decision = PolicyEngine.from_dir(folder, SCHEMA).authorize(ANALYST, PROD, of_class(StatementClass.WRITE))

    assert decision.approval == expected


def test_the_strictest_combination_of_matching_approval_policies_applies(tmp_path: Path) -> None:
    folder = write_policies(
        tmp_path / "p",
        main="""
        @id("dba-quick-look") @approval("dba") @expires("5m")
        permit (principal, action == Gatehouse::Action::"sql:write", resource);
        @id("security-sees-a-dry-run")
        @approval("security,dba") @quorum("2") @preview("dry_run") @expires("2h")
        permit (principal, action == Gatehouse::Action::"sql:write", resource)
        when { context.relations.contains("payroll") };
        """,
    )
    engine = PolicyEngine.from_dir(folder, SCHEMA)

    payroll = engine.authorize(ANALYST, PROD, classify("postgres", "delete from payroll"))
    other = engine.authorize(ANALYST, PROD, classify("postgres", "delete from orders"))

    assert payroll.approval == ApprovalRequirement(
        group="dba", quorum=2, groups=("dba", "security"), expires_s=300, preview="dry_run"
    )
    assert other.approval == ApprovalRequirement(group="dba", expires_s=300)


def test_a_multi_statement_text_needs_what_each_waiting_statement_needs(tmp_path: Path) -> None:
    folder = write_policies(
        tmp_path / "p",
        main="""
        @id("writes") @approval("dba") @expires("1h")
        permit (principal, action == Gatehouse::Action::"sql:write", resource);
        @id("ddl") @approval("architects") @preview("dry_run")
        permit (principal, action == Gatehouse::Action::"sql:ddl", resource);
        """,
    )
    engine = PolicyEngine.from_dir(folder, SCHEMA)

    decision = engine.authorize(ANALYST, DEV, classify("postgres", "delete from t; create table u (i int)"))

    assert decision.policy_ids == ("writes", "ddl")
    assert decision.approval == ApprovalRequirement(
        group="dba", groups=("dba", "architects"), expires_s=1800, preview="dry_run"
    )


def test_a_bad_annotation_names_the_file_and_the_policy_among_others(tmp_path: Path) -> None:
    folder = write_policies(
        tmp_path / "p",
        good='@id("ok") @approval("dba") @expires("1h") permit (principal, action, resource);',
        ops='@id("fine") permit (principal, action, resource);\n'
        '@id("too-long") @approval("dba") @expires("30d") permit (principal, action, resource);',
    )

    message = load_error(folder)

    assert "ops.cedar: policy too-long: @expires must be a whole number of s, m or h" in message
    assert "good.cedar" not in message


# -- who may approve (action "approve") ------------------------------------------------------------

ALICE = Principal(name="U_ALICE", kind="approver", groups=("dba",))
CAROL = Principal(name="U_CAROL", kind="approver", groups=("security",))


def test_the_demo_lets_dbas_approve_on_every_connection_and_nobody_else(engine: PolicyEngine) -> None:
    for target in (DEV, PROD, connection("scratch")):
        allowed = engine.may_approve(ALICE, target, statement_class="write", requester="analyst")
        refused = engine.may_approve(CAROL, target, statement_class="write", requester="analyst")

        assert (allowed.effect, allowed.policy_ids) == (ALLOW, ("dba-approves",))
        assert allowed.reasons == (f"U_ALICE may approve on {target.name} per dba-approves",)
        assert (refused.effect, refused.policy_ids) == (DENY, ())
        assert refused.reasons == (f"no policy lets U_CAROL approve on {target.name}",)


def test_approve_policies_see_the_waiting_request_and_who_asked(tmp_path: Path) -> None:
    folder = write_policies(
        tmp_path / "p",
        main="""
        @id("security-approves-payroll")
        permit (principal, action == Gatehouse::Action::"approve", resource)
        when { principal.groups.contains("security") && context.relations.contains("payroll") };
        @id("no-ddl-approvals-on-prod")
        forbid (principal, action == Gatehouse::Action::"approve", resource)
        when { resource.env == "prod" && context.statement_class == "ddl" };
        @id("not-for-yourself")
        forbid (principal, action == Gatehouse::Action::"approve", resource)
        when { principal.name == context.requester };
        """,
    )
    engine = PolicyEngine.from_dir(folder, SCHEMA)
    payroll = classify("postgres", "update payroll set amount = 0")
    orders = classify("postgres", "update orders set amount = 0")
    ddl = classify("postgres", "alter table payroll add column x int")

    def effect(
        who: Principal, waiting: Classification, requester: str = "analyst"
    ) -> tuple[Effect, tuple[str, ...]]:
        decision = engine.may_approve(who, PROD, requester=requester, classification=waiting)
        return decision.effect, decision.policy_ids

    assert effect(CAROL, payroll) == (ALLOW, ("security-approves-payroll",))
    assert effect(CAROL, orders) == (DENY, ())
    assert effect(CAROL, ddl) == (DENY, ("no-ddl-approvals-on-prod",))
    assert effect(CAROL, payroll, requester="U_CAROL") == (DENY, ("not-for-yourself",))


def test_a_permit_that_itself_waits_for_approval_does_not_let_anyone_approve(tmp_path: Path) -> None:
    folder = write_policies(
        tmp_path / "p",
        main='@id("everything-needs-a-dba") @approval("dba") permit (principal, action, resource);',
    )
    engine = PolicyEngine.from_dir(folder, SCHEMA)

    decision = engine.may_approve(ALICE, PROD)

    assert decision.effect is DENY
    assert decision.reasons == (
        "U_ALICE may not approve on demo-prod: everything-needs-a-dba only permits after approval",
    )


def test_an_approve_evaluation_error_raises_instead_of_approving(tmp_path: Path) -> None:
    folder = write_policies(
        tmp_path / "p",
        main="""
        @id("dbas") permit (principal, action == Gatehouse::Action::"approve", resource);
        @id("overflowing-forbid")
        forbid (principal, action == Gatehouse::Action::"approve", resource)
        when { context.statement_count * 9223372036854775807 > 0 };
        """,
    )
    engine = PolicyEngine.from_dir(folder, SCHEMA)

    with pytest.raises(PolicyError) as caught:
        engine.may_approve(ALICE, PROD, classification=classify("postgres", "delete from a; delete from b"))

    assert "overflowing-forbid" in caught.value.message


def test_a_schema_without_the_approve_action_is_refused_at_load(tmp_path: Path) -> None:
    folder = write_policies(
        tmp_path / "p",
        main='@id("x") permit (principal, action == Gatehouse::Action::"sql:read", resource);',
    )
    text = SCHEMA.read_text(encoding="utf-8").replace('action "approve"', 'action "approve-later"')
    schema = tmp_path / "narrow.cedarschema"
    schema.write_text(text, encoding="utf-8")

    message = load_error(folder, schema)

    assert "the schema does not fit approve requests" in message


# -- other target kinds: one action per kind and class ------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "cls", "effect", "group"),
    [
        ("http", StatementClass.READ, ALLOW, None),
        ("http", StatementClass.WRITE, APPROVAL, "dba"),
        ("http", StatementClass.UNKNOWN, DENY, None),
        ("kubernetes", StatementClass.READ, ALLOW, None),
        ("kubernetes", StatementClass.WRITE, APPROVAL, "dba"),
        ("kubernetes", StatementClass.EXEC, APPROVAL, "dba"),
        ("kubernetes", StatementClass.SECRETS, APPROVAL, "dba"),
        ("kubernetes", StatementClass.UNKNOWN, DENY, None),
        ("ssh", StatementClass.READ, ALLOW, None),
        ("ssh", StatementClass.WRITE, APPROVAL, "dba"),
        ("ssh", StatementClass.UNKNOWN, DENY, None),
        # a class outside the kind's own set is its kind's unknown: denied
        ("http", StatementClass.DDL, DENY, None),
        ("ssh", StatementClass.SECRETS, DENY, None),
    ],
)
def test_each_target_kind_has_its_own_actions(
    engine: PolicyEngine, kind: str, cls: StatementClass, effect: Effect, group: str | None
) -> None:
    target = Connection(name=f"demo-{kind}", kind=kind, host="h", port=1, database="", secret_id="s",
                        attributes={"env": "prod"})  # fmt: skip
    agent = Principal(arn="arn:aws:iam::1:user/a", name="analyst", kind="agent", attributes={"team": "data"})
    decision = engine.authorize(agent, target, Classification(kind=kind, statements=(Statement("x", cls),)))
    assert decision.effect is effect
    if group is not None:
        assert decision.approval is not None and decision.approval.group == group


def test_a_sql_class_never_reaches_another_kinds_permit(engine: PolicyEngine) -> None:
    from gatehouse.models import action_name

    assert action_name("postgres", StatementClass.READ) == "sql:read"
    assert action_name("kubernetes", StatementClass.SECRETS) == "k8s:secrets"
    assert action_name("http", StatementClass.ADMIN) == "http:unknown"
    assert action_name("nonsense", StatementClass.READ) == "sql:unknown"
