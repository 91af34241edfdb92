"""The event schema: complete and stable columns, validated fields, a canonical hash."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone

import pytest

from gatehouse.audit import events
from gatehouse.models import StatementClass

SESSION = {
    "session_id": "s-1",
    "request_id": "r-1",
    "principal_arn": "arn:aws:iam::123456789012:user/analyst",
    "principal_name": "analyst",
    "connection": "demo-prod",
    "connection_env": None,
    "target_kind": "postgres",
}
MOMENT = datetime(2026, 11, 3, 9, 0, 0, 123456, tzinfo=UTC)


def build(kind: str = "received", seq: int = 0, prev: str = events.GENESIS_HASH, **fields):
    return events.build_event(
        kind=kind,
        seq=seq,
        prev_hash=prev,
        moment=MOMENT,
        session=SESSION,
        fields=events.clean_fields(fields),
    )


def test_every_event_has_every_column_in_schema_order_and_absent_values_are_null():
    event = build(statement="SELECT 1")

    assert list(event) == list(events.FIELD_NAMES)
    assert json.loads(events.serialize(event)) == event
    assert list(json.loads(events.serialize(event))) == list(events.FIELD_NAMES)
    assert event["schema_version"] == 1
    assert event["statement"] == "SELECT 1"
    for absent in ("decision", "policy_ids", "approvers", "relations", "row_count", "duration_ms", "error"):
        assert event[absent] is None


def test_schema_covers_the_documented_fields_with_glue_and_duckdb_types():
    required = {
        "schema_version", "event_id", "session_id", "request_id", "seq", "time", "principal_arn",
        "principal_name", "connection", "connection_env", "target_kind", "kind", "statement",
        "statement_class", "relations", "decision", "policy_ids", "approvers", "outcome", "row_count",
        "duration_ms", "error", "reason", "prev_hash", "hash",
    }  # fmt: skip
    assert set(events.FIELD_NAMES) == required
    assert len(events.FIELD_NAMES) == len(required)
    for column in events.COLUMNS:
        assert column.glue_type and column.duckdb_type
        assert f"`{column.name}`" in (events.__doc__ or ""), f"{column.name} missing from the schema table"


def test_event_kinds_are_an_explicit_closed_list():
    for kind in ("received", "decision", "executed", "failed", "refused", "approval_requested", "approved",
                 "denied_by_approver", "session_closed"):  # fmt: skip
        assert kind in events.EVENT_KINDS
    with pytest.raises(ValueError, match="unknown event kind"):
        build(kind="launched_missiles")


def test_session_constants_are_copied_and_request_id_can_be_overridden_per_event():
    event = build()
    assert event["principal_name"] == "analyst" and event["request_id"] == "r-1"
    assert build(request_id="r-2")["request_id"] == "r-2"
    assert build(request_id=None)["request_id"] == "r-1"


def test_time_is_rfc3339_utc_with_milliseconds():
    assert build()["time"] == "2026-11-03T09:00:00.123Z"
    paris = timezone(timedelta(hours=1))
    assert events.format_time(datetime(2026, 11, 3, 10, 0, tzinfo=paris)) == "2026-11-03T09:00:00.000Z"
    assert events.parse_time("2026-11-03T09:00:00.123Z") == datetime(2026, 11, 3, 9, 0, 0, 123000, tzinfo=UTC)
    with pytest.raises(ValueError, match="timezone"):
        events.format_time(datetime(2026, 11, 3))


def test_hash_is_sha256_of_the_canonical_form_without_hash():
    event = build(statement="SELECT 'é'", relations=["customers"])
    body = {k: v for k, v in event.items() if k != "hash"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    assert events.canonical_bytes(event) == canonical
    assert b" " not in canonical.replace(b"SELECT '", b"")
    assert "é".encode() in canonical  # UTF-8, not \u escapes
    assert event["hash"] == hashlib.sha256(canonical).hexdigest()
    assert events.event_hash(event) == event["hash"]


@pytest.mark.parametrize(
    "field,value",
    [("statement", "SELECT 2"), ("seq", 1), ("prev_hash", "1" * 64), ("time", "2026-11-03T09:00:00.124Z"),
     ("principal_name", "mallory"), ("row_count", 5)],
)  # fmt: skip
def test_changing_any_field_changes_the_hash(field, value):
    event = build(row_count=1)
    assert events.event_hash({**event, field: value}) != event["hash"]


def test_first_event_chains_from_the_genesis_hash_and_later_ones_from_their_predecessor():
    first = build()
    second = build(kind="decision", seq=1, prev=first["hash"], decision="allow")
    assert first["prev_hash"] == events.GENESIS_HASH == "0" * 64
    assert second["prev_hash"] == first["hash"]


@pytest.mark.parametrize(
    "fields,message",
    [
        ({"seq": 3}, "unknown or log-managed"),
        ({"hash": "x"}, "unknown or log-managed"),
        ({"principal_name": "mallory"}, "unknown or log-managed"),
        ({"colour": "blue"}, "unknown or log-managed"),
        ({"decision": "maybe"}, "decision must be one of"),
        ({"outcome": "great"}, "outcome must be one of"),
        ({"statement_class": "select"}, "statement_class must be one of"),
        ({"relations": "customers"}, "list of strings"),
        ({"policy_ids": [1]}, "list of strings"),
        ({"row_count": -1}, "non-negative"),
        ({"row_count": True}, "non-negative"),
        ({"duration_ms": float("nan")}, "finite"),
        ({"duration_ms": "3"}, "number"),
        ({"statement": 42}, "must be a string"),
    ],
)
def test_append_fields_are_validated(fields, message):
    with pytest.raises(ValueError, match=message):
        events.clean_fields(fields)


def test_statement_classes_follow_the_domain_model():
    assert set(events.STATEMENT_CLASSES) == {c.value for c in StatementClass}


def test_durations_are_rounded_and_whole_numbers_stored_as_integers():
    cleaned = events.clean_fields({"duration_ms": 12.0, "row_count": 3})
    assert cleaned["duration_ms"] == 12 and isinstance(cleaned["duration_ms"], int)
    assert events.clean_fields({"duration_ms": 1.23456})["duration_ms"] == 1.235
    assert events.clean_fields({"relations": ("a", "b")})["relations"] == ["a", "b"]


@pytest.mark.parametrize("bad", ["", "a/b", "dt=1", "has space", "-leading", "x" * 129, None])
def test_session_ids_must_be_safe_key_segments(bad):
    with pytest.raises(ValueError):
        events.check_session_id(bad)


def test_parse_event_refuses_objects_that_are_not_complete_events():
    event = build()
    assert events.parse_event(events.serialize(event)) == event
    for body in (b"not json", b"[1]", json.dumps({"seq": 0}).encode(), b"\xff"):
        with pytest.raises(ValueError):
            events.parse_event(body)


def test_schema_and_named_queries_import_nothing_heavy():
    code = (
        "import sys, gatehouse.audit.named_queries, gatehouse.audit.events;"
        "heavy = [m for m in ('botocore', 'boto3', 'duckdb') if m in sys.modules];"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_athena_table_parameters_project_dt_over_the_event_layout():
    params = events.athena_table_parameters("my-log-bucket")
    assert params["projection.enabled"] == "true" and params["projection.dt.type"] == "date"
    assert params["projection.dt.format"] == "yyyy-MM-dd"
    assert params["storage.location.template"] == "s3://my-log-bucket/events/dt=${dt}/"
    assert events.PARTITION_COLUMN.name == "dt" and events.PARTITION_COLUMN.name not in events.FIELD_NAMES


def test_parse_event_refuses_nan_and_wrongly_typed_keys():
    event = build()
    text = events.serialize(event).decode()
    with pytest.raises(ValueError):
        events.parse_event(text.replace('"row_count":null', '"row_count":NaN').encode())
    with pytest.raises(ValueError, match="time"):
        events.parse_event(events.serialize({**event, "time": 5}))


def test_several_events_are_one_json_line_each_and_parse_back_in_order():
    first = build()
    second = build("decision", seq=1, prev=first["hash"])
    body = events.serialize_many([first, second])
    assert body.count(b"\n") == 2 and body.endswith(b"\n")
    assert events.parse_events(body) == [first, second]
    assert events.parse_events(events.serialize(first)) == [first]


@pytest.mark.parametrize(
    "body",
    [b"", b"\n", b"{}", b"\n\n"],
)
def test_parse_events_refuses_what_the_log_never_writes(body):
    with pytest.raises(ValueError):
        events.parse_events(body)


def test_parse_events_refuses_a_cut_off_or_padded_object():
    body = events.serialize_many([build(), build()])
    for bad in (body[:-1], body + b"\n", body.replace(b"\n", b"\n\n", 1), body + b"garbage\n"):
        with pytest.raises(ValueError):
            events.parse_events(bad)
