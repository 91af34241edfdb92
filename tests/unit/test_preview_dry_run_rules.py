"""Which commands a dry run may run: decided from the classified text alone, before any database.

(What the target's catalog adds, triggers and column defaults, is tested on a real server in
tests/integration/test_preview.py.)
"""

from __future__ import annotations

from typing import Any

import pytest

from gatehouse.classify import classify
from gatehouse.preview import dry_run_blocker, preview_statements


def blocker(sql: str) -> str | None:
    return dry_run_blocker(classify("postgres", sql).statements)


@pytest.mark.parametrize(
    "sql",
    [
        "update customers set name = lower(name), seen = now() where id = 1",
        "delete from customers where email like '%@example.org'",
        "insert into ledger (id, amount) select g, g * 2 from generate_series(1, 3) g",
        "merge into t using s on t.id = s.id when matched then update set a = s.a",
        "insert into ledger values (1, 2) on conflict (id) do update set amount = excluded.amount",
        "update a set x = 1; delete from b",
    ],
)
def test_plain_writes_calling_only_known_reads_may_be_dry_run(sql: str) -> None:
    assert blocker(sql) is None


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("update t set id = nextval('s')", "the statement calls nextval, which a rollback may not undo"),
        ("insert into t select setval('s', 1)", "the statement calls setval, which a rollback may not undo"),
        ("delete from t where dblink_exec('x') = 'ok'", "the statement calls dblink_exec"),
        ("update t set a = public.lower(a)", "the statement calls public.lower"),
        ("update t set a = audit_and_return(a)", "the statement calls audit_and_return"),
        ("update t set a = set_config('x.y', 'z', true)", "the statement calls set_config"),
        ("update t set a = 1 where pg_sleep(10) is null", "the statement calls pg_sleep"),
        ("select * from t", "the statement is SELECT: only INSERT, UPDATE, DELETE and MERGE are dry-run"),
        ("with d as (delete from t returning *) select * from d", "the statement is SELECT"),
        ("update t set a = 1; commit", "statement 2 is TRANSACTION"),
        ("begin; update t set a = 1", "statement 1 is TRANSACTION"),
        ("alter table t add column b int", "the statement is ALTERTABLE"),
        ("update t set a = 1 returning pg_terminate_backend(1)", "the statement calls pg_terminate_backend"),
    ],
)
def test_what_a_rollback_may_not_undo_rules_a_dry_run_out(sql: str, reason: str) -> None:
    found = blocker(sql)

    assert found is not None
    assert found.startswith(reason)


def no_masking(columns: Any, rows: Any) -> Any:
    return rows


@pytest.mark.parametrize(
    ("kw", "message"), [({"mode": "analyze"}, "preview mode"), ({"timeout_ms": 0}, "timeout")]
)
def test_a_bad_mode_or_timeout_is_a_programming_error_caught_before_any_database(
    kw: dict[str, Any], message: str
) -> None:
    arguments: dict[str, Any] = {"mode": "explain", "mask_rows": no_masking, **kw}

    with pytest.raises(ValueError, match=message):
        preview_statements(None, classify("postgres", "delete from t").statements, **arguments)  # type: ignore[arg-type]
