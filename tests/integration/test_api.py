"""The agent API through the front door: signed requests, the real handler, moto and Postgres."""

from __future__ import annotations

import hashlib
import json
import threading
import time

import requests
from requests_aws4auth import AWS4Auth

from gatehouse.audit.events import parse_events

PROD_READ = "SELECT id, name, email, phone, card_number, ssn, notes FROM customers ORDER BY id LIMIT 5"


def raw_post(local_stack, body: bytes, agent: str = "analyst"):
    keys = local_stack.state["agents"][agent]
    auth = AWS4Auth(
        keys["access_key_id"], keys["secret_access_key"], local_stack.state["region"], "execute-api"
    )
    return requests.post(
        local_stack.state["api"] + "/v1/requests",
        data=body,
        auth=auth,
        headers={"Content-Type": "application/json"},
        timeout=30,
    )


def test_a_prod_read_comes_back_masked(local_stack):
    answer = local_stack.client().submit("demo-prod", PROD_READ, reason="churn analysis")
    assert answer.status_code == 200, answer.body
    body = answer.body
    assert body["status"] == "executed" and body["decision"]["policy_ids"] == ["prod-read"]
    assert body["columns"] == ["id", "name", "email", "phone", "card_number", "ssn", "notes"]
    assert body["row_count"] == 5
    # Compare with what is really in the database: no sensitive value leaves unmasked.
    db = local_stack.db("demo-prod")
    real = db.run("SELECT email, card_number, ssn FROM customers ORDER BY id LIMIT 5")
    db.close()
    returned = json.dumps(body["rows"])
    for email, card, ssn in real:
        assert email not in returned and card not in returned and ssn not in returned
    ids = [row[0] for row in body["rows"]]
    assert ids == [1, 2, 3, 4, 5]  # non-sensitive values come back unchanged
    card_col = body["columns"].index("card_number")
    assert all(row[card_col][-4:] == real[i][1][-4:] for i, row in enumerate(body["rows"]))
    rules = {(m["column"], m["rule"]) for m in body["masked"]}
    assert ("ssn", "lineage") in rules and ("card_number", "lineage") in rules


def test_masked_emails_are_stable_tokens_that_can_be_joined(local_stack):
    client = local_stack.client()
    first = client.submit("demo-prod", "SELECT email FROM customers WHERE id = 3").body["rows"]
    second = client.submit("demo-prod", "SELECT email FROM customers WHERE id IN (3)").body["rows"]
    assert first == second and first[0][0].startswith("hash:")


def test_a_prod_write_waits_for_approval_with_the_exact_sql_on_record(local_stack):
    sql = "UPDATE customers SET notes = 'x' WHERE id = 1"
    answer = local_stack.client().submit("demo-prod", sql, reason="fix a note")
    assert answer.status_code == 202 and answer.body["status"] == "pending_approval"
    approval = answer.body["decision"]["approval"]
    assert (approval["groups"], approval["quorum"], approval["preview"]) == (["dba"], 1, "dry_run")
    item = local_stack.aws("dynamodb").get_item(
        TableName="gatehouse-requests", Key={"request_id": {"S": answer.body["request_id"]}}
    )["Item"]
    assert item["command"]["S"] == sql
    assert item["command_sha256"]["S"] == hashlib.sha256(sql.encode()).hexdigest()
    assert item["status"]["S"] == "pending_approval"
    db = local_stack.db("demo-prod")
    assert db.run("SELECT notes FROM customers WHERE id = 1")[0][0] != "x"
    db.close()


def test_prod_ddl_is_denied_naming_the_policy(local_stack):
    answer = local_stack.client().submit("demo-prod", "DROP TABLE customers")
    assert answer.status_code == 403
    assert answer.body["status"] == "denied"
    assert answer.body["decision"]["policy_ids"] == ["prod-no-ddl-or-privilege"]


def test_dev_writes_run(local_stack):
    answer = local_stack.client().submit("demo-dev", "UPDATE orders SET status = status WHERE id <= 3")
    assert answer.status_code == 200, answer.body
    assert answer.body["row_count"] == 3


def test_the_agent_reads_back_its_request_and_nobody_elses(local_stack):
    client = local_stack.client()
    made = client.submit("demo-dev", "SELECT 1 AS one").body
    got = client.get_request(made["request_id"])
    assert got.status_code == 200
    assert got.body["status"] == "executed" and got.body["sql"] == "SELECT 1 AS one"
    assert "principal_arn" not in got.body
    missing = client.get_request("00000000-0000-0000-0000-000000000000")
    assert missing.status_code == 404 and missing.body["error"] == "not_found"


def test_connections_show_what_the_agent_may_do_and_no_secrets(local_stack):
    answer = local_stack.client().list_connections()
    assert answer.status_code == 200
    by_name = {c["name"]: c for c in answer.body["connections"]}
    assert by_name["demo-prod"]["kind"] == "postgres"
    assert by_name["demo-prod"]["actions"] == {"read": "allow", "write": "approval", "ddl": "deny"}
    # What a connection is, never where it is or how Gatehouse logs in (the action names of a
    # Kubernetes connection include "secrets": look at the connections' own fields).
    text = json.dumps([{k: v for k, v in c.items() if k != "actions"} for c in answer.body["connections"]])
    assert "secret" not in text and "password" not in text and "host" not in text
    for kind_specific in ("base_url", "api_server", "ca_pem", "username", "BEGIN CERTIFICATE", "127.0.0.1"):
        assert kind_specific not in text
    assert by_name["demo-k8s"]["actions"] == {
        "read": "allow",
        "write": "approval",
        "exec": "approval",
        "secrets": "approval",
    }


def test_openapi_is_generated_from_the_models(local_stack):
    answer = local_stack.client()._call("GET", "/v1/openapi.json")
    assert answer.status_code == 200
    assert "/v1/requests" in answer.body["paths"]
    assert "SubmitRequest" in json.dumps(answer.body["components"])


def test_malformed_json_is_a_400(local_stack):
    resp = raw_post(local_stack, b'{"connection": "demo-dev", "sql": ')
    assert resp.status_code == 400 and resp.json()["error"] == "malformed_json"


def test_missing_and_wrongly_typed_fields_are_400s(local_stack):
    missing = raw_post(local_stack, json.dumps({"connection": "demo-dev"}).encode())
    assert missing.status_code == 400 and missing.json()["error"] == "bad_request"
    assert "sql" in missing.json()["message"]
    wrong = raw_post(local_stack, json.dumps({"connection": "demo-dev", "sql": 42}).encode())
    assert wrong.status_code == 400 and wrong.json()["error"] == "bad_request"
    extra = raw_post(
        local_stack, json.dumps({"connection": "demo-dev", "sql": "SELECT 1", "as": "x"}).encode()
    )
    assert extra.status_code == 400


def test_an_unknown_connection_is_a_404(local_stack):
    answer = local_stack.client().submit("nope", "SELECT 1")
    assert answer.status_code == 404 and answer.body["error"] == "unknown_connection"


def test_sql_that_does_not_parse_is_a_400(local_stack):
    answer = local_stack.client().submit("demo-dev", "SELEC * FROM customers")
    assert answer.status_code == 400 and answer.body["error"] == "sql_parse_error"


def test_a_body_over_256_kib_is_refused(local_stack):
    body = json.dumps({"connection": "demo-dev", "sql": "SELECT '" + "a" * 270_000 + "'"}).encode()
    resp = raw_post(local_stack, body)
    assert resp.status_code == 413 and resp.json()["error"] == "payload_too_large"


def test_a_statement_over_the_timeout_is_a_clear_error(local_stack):
    # pg_sleep is not on the read allowlist; a slow read is a cross join that runs too long.
    sql = "SELECT count(*) FROM generate_series(1, 100000000) a"
    answer = local_stack.client().submit("demo-dev", sql)
    assert answer.status_code == 408 and answer.body["error"] == "statement_timeout"


def test_sql_errors_are_422_with_their_sqlstate(local_stack):
    answer = local_stack.client().submit("demo-dev", "SELECT * FROM no_such_table")
    assert answer.status_code == 422
    assert answer.body["error"] == "target_error" and answer.body["sqlstate"] == "42P01"
    # The agent can look its failed request up.
    again = local_stack.client().get_request(answer.body["request_id"])
    assert again.body["status"] == "failed" and again.body["error"].startswith("target_error")


def test_every_step_is_in_the_session_log_under_object_lock(local_stack):
    answer = local_stack.client().submit("demo-prod", "SELECT count(*) FROM customers")
    request_id = answer.body["request_id"]
    s3 = local_stack.aws("s3")
    bucket = local_stack.state["bucket"]
    keys = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="events/")
        for o in page.get("Contents", [])
        if f"session={request_id}/" in o["Key"]
    ]
    kinds = [
        e["kind"]
        for k in sorted(keys)
        for e in parse_events(s3.get_object(Bucket=bucket, Key=k)["Body"].read())
    ]
    assert kinds == ["received", "decision", "executed", "session_closed"]
    # Two objects: the decision before the read ran, the outcome and the close before it ended.
    assert len(keys) == 2
    head = s3.head_object(Bucket=bucket, Key=sorted(keys)[1])
    assert head["ObjectLockMode"] == "COMPLIANCE"


def test_wait_long_polls_an_undecided_request_and_returns_at_the_deadline(local_stack):
    import time

    client = local_stack.client()
    pending = client.submit("demo-prod", "UPDATE orders SET status = 'x' WHERE id = 9").body
    started = time.monotonic()
    polled = client.get_request(pending["request_id"], wait=2)
    assert polled.body["status"] == "pending_approval"
    assert time.monotonic() - started >= 1.9
    done = client.submit("demo-dev", "SELECT 1 AS one").body
    started = time.monotonic()
    assert client.get_request(done["request_id"], wait=5).body["status"] == "executed"
    assert time.monotonic() - started < 2  # a decided request answers at once


# -- malformed bodies: a 400 (or 415) before any work, never a 500 --------------------------------


def post(local_stack, body: bytes, content_type: str | None = "application/json", **headers: str):
    keys = local_stack.state["agents"]["analyst"]
    auth = AWS4Auth(
        keys["access_key_id"], keys["secret_access_key"], local_stack.state["region"], "execute-api"
    )
    if content_type is not None:
        headers["Content-Type"] = content_type
    return requests.post(
        local_stack.state["api"] + "/v1/requests", data=body, auth=auth, headers=headers, timeout=30
    )


def test_a_body_nested_5000_deep_is_a_400_not_a_recursion_error(local_stack):
    resp = post(local_stack, b"[" * 5000 + b"]" * 5000)
    assert resp.status_code == 400 and resp.json()["error"] == "json_too_deep"
    inside = b'{"connection": "demo-dev", "sql": "SELECT 1", "reason": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    resp = post(local_stack, inside)
    assert resp.status_code == 400 and resp.json()["error"] == "json_too_deep"


def test_brackets_inside_strings_do_not_count_as_nesting(local_stack):
    sql = "SELECT '" + "[{" * 3000 + "' AS brackets"
    resp = post(local_stack, json.dumps({"connection": "demo-dev", "sql": sql}).encode())
    assert resp.status_code == 200, resp.text
    assert resp.json()["rows"] == [["[{" * 3000]]


def test_a_body_that_is_not_utf8_is_a_400(local_stack):
    resp = post(local_stack, b'{"connection": "demo-dev", "sql": "SELECT \xff\xfe"}')
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_utf8"


def test_a_body_that_is_not_json_media_is_a_415(local_stack):
    body = json.dumps({"connection": "demo-dev", "sql": "SELECT 1"}).encode()
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
        resp = post(local_stack, body, content_type)
        assert resp.status_code == 415, (content_type, resp.text)
        assert resp.json()["error"] == "unsupported_media_type"
    latin1 = post(local_stack, body, "application/json; charset=iso-8859-1")
    assert latin1.status_code == 415
    utf8 = post(local_stack, body, "application/json; charset=UTF-8")
    assert utf8.status_code == 200, utf8.text


def test_an_empty_body_is_a_400(local_stack):
    resp = post(local_stack, b"")
    assert resp.status_code == 400 and resp.json()["error"] == "empty_body"


def test_a_json_value_that_is_not_an_object_is_a_400(local_stack):
    for body in (b"[]", b'"SELECT 1"', b"42", b"null", b"true"):
        resp = post(local_stack, body)
        assert resp.status_code == 400, (body, resp.text)
        assert resp.json()["error"] == "bad_request"


def test_duplicate_keys_are_refused_rather_than_one_silently_winning(local_stack):
    body = b'{"connection": "demo-dev", "sql": "SELECT 1", "connection": "demo-prod"}'
    resp = post(local_stack, body)
    assert resp.status_code == 400 and resp.json()["error"] == "duplicate_key"
    assert "connection" in resp.json()["message"]


def test_huge_numbers_and_non_json_constants_are_400s(local_stack):
    huge = b'{"connection": "demo-dev", "sql": "SELECT 1", "reason": ' + b"9" * 5000 + b"}"
    assert post(local_stack, huge).json()["error"] == "number_too_large"
    overflow = b'{"connection": "demo-dev", "sql": "SELECT 1", "reason": 1e999}'
    assert post(local_stack, overflow).json()["error"] == "number_too_large"
    nan = b'{"connection": "demo-dev", "sql": "SELECT 1", "reason": NaN}'
    resp = post(local_stack, nan)
    assert resp.status_code == 400 and resp.json()["error"] == "malformed_json"


def test_text_the_database_cannot_take_is_a_400(local_stack):
    surrogate = b'{"connection": "demo-dev", "sql": "SELECT \'\\ud800\'"}'
    resp = post(local_stack, surrogate)
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_text", resp.text
    nul_in_reason = b'{"connection": "demo-dev", "sql": "SELECT 1", "reason": "a\\u0000b"}'
    resp = post(local_stack, nul_in_reason)
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_text", resp.text
    # A NUL in the SQL would hide what follows it from the parser: refused by the classifier,
    # with a request id, so the attempt is in the session log.
    resp = post(local_stack, b'{"connection": "demo-dev", "sql": "SELECT 1 -- \\u0000; DROP TABLE orders"}')
    assert resp.status_code == 400 and resp.json()["error"] == "sql_parse_error", resp.text
    assert resp.json()["request_id"]


def test_a_malformed_idempotency_key_is_a_400(local_stack):
    body = json.dumps({"connection": "demo-dev", "sql": "SELECT 1"}).encode()
    for key in ("k" * 129, "clé", "a\x7fb"):
        resp = post(local_stack, body, **{"Idempotency-Key": key})
        assert resp.status_code == 400, (key, resp.text)
        assert resp.json()["error"] in ("bad_idempotency_key", "bad_request")


# -- strict JSON out ----------------------------------------------------------------------------


def _strict(text: str):
    def refuse(name: str):
        raise AssertionError(f"bare {name} in the answer: not JSON")

    return json.loads(text, parse_constant=refuse)


def test_non_finite_numbers_come_back_as_strings_in_strict_json(local_stack):
    sql = (
        "SELECT 'NaN'::float8 AS nan, 'Infinity'::float8 AS inf, '-Infinity'::float8 AS ninf, "
        "'NaN'::numeric AS dec_nan, ARRAY['NaN'::float8, 'Infinity'::float8, 1.5] AS arr, "
        "'-Infinity'::float4 AS f4, 'Infinity'::numeric AS dec_inf"
    )
    resp = post(local_stack, json.dumps({"connection": "demo-dev", "sql": sql}).encode())
    assert resp.status_code == 200, resp.text
    body = _strict(resp.text)
    assert body["rows"] == [
        ["NaN", "Infinity", "-Infinity", "NaN", ["NaN", "Infinity", 1.5], "-Infinity", "Infinity"]
    ]


def test_every_answer_is_strict_json(local_stack):
    client = local_stack.client()
    made = post(
        local_stack, json.dumps({"connection": "demo-dev", "sql": "SELECT 1.5::float8 AS x"}).encode()
    )
    _strict(made.text)
    _strict(client._http.get(local_stack.state["api"] + "/v1/connections", auth=client._auth).text)


# -- "nothing was run" only when that is certain ---------------------------------------------------


def test_a_connection_lost_mid_command_says_the_outcome_is_uncertain(local_stack):
    # Given the agent's UPDATE waiting on a lock a superuser holds
    blocker, watcher = local_stack.db("demo-dev"), local_stack.db("demo-dev")
    blocker.run("START TRANSACTION")
    blocker.run("LOCK TABLE orders IN EXCLUSIVE MODE")
    answers: list = []
    sql = "UPDATE orders SET status = status WHERE id = 5"
    running = threading.Thread(target=lambda: answers.append(local_stack.client().submit("demo-dev", sql)))
    try:
        running.start()
        pid = None
        deadline = time.monotonic() + 20
        while pid is None and time.monotonic() < deadline:
            rows = watcher.run(
                "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
            )
            pid = rows[0][0] if rows else None
            time.sleep(0.05)
        assert pid is not None, f"the UPDATE never waited: {answers}"
        # When its connection dies after the command was sent
        watcher.run("SELECT pg_terminate_backend(:pid)", pid=pid)
        running.join(30)
    finally:
        blocker.run("ROLLBACK")
        blocker.close()
        watcher.close()

    # Then the agent is told it may have run, with the id to look it up, and never "nothing was run"
    [answer] = answers
    assert answer.status_code >= 500, answer.body
    assert answer.body["outcome"] == "uncertain"
    assert answer.body["request_id"]
    assert "nothing was run" not in answer.body["message"]
    assert local_stack.client().get_request(answer.body["request_id"]).body["status"] == "failed"


def test_a_refusal_before_the_command_could_be_sent_carries_no_doubt(local_stack):
    # An unknown connection is refused before anything is sent: nothing about the outcome is uncertain.
    answer = local_stack.client().submit("no-such-connection", "UPDATE orders SET status = 'x'")
    assert answer.status_code == 404 and "outcome" not in answer.body
