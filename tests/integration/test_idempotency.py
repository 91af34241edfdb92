"""Idempotent retries through the signed local API: an Idempotency-Key runs a command once.

The stack here has a second, test-only agent (`auditor-bot`), so that two principals can use the
same key without meeting.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from requests_aws4auth import AWS4Auth

from gatehouse.local.stack import DEMO_CONFIG_PATH, LocalStack
from tests.integration.conftest import RunningStack

SECOND_AGENT = "auditor-bot"


@pytest.fixture(scope="module")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    config = json.loads(DEMO_CONFIG_PATH.read_text())
    config["agents"][SECOND_AGENT] = {"team": "data", "clearance": "standard"}
    config_path = Path(tmp_path_factory.mktemp("idempotency-config")) / "demo.json"
    config_path.write_text(json.dumps(config))
    stack = LocalStack(state_dir=tmp_path_factory.mktemp("gatehouse-state"), demo_config_path=config_path)
    state = stack.up()
    try:
        yield RunningStack(stack, state)
    finally:
        stack.down()


def submit(stack: RunningStack, body: dict, key: str | None, agent: str = "analyst") -> requests.Response:
    keys = stack.state["agents"][agent]
    auth = AWS4Auth(keys["access_key_id"], keys["secret_access_key"], stack.state["region"], "execute-api")
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Idempotency-Key"] = key
    return requests.post(
        stack.state["api"] + "/v1/requests", data=json.dumps(body), auth=auth, headers=headers, timeout=30
    )


def orders_with_status(stack: RunningStack, status: str) -> int:
    db = stack.db("demo-dev")
    try:
        return int(db.run("SELECT count(*) FROM orders WHERE status = :s", s=status)[0][0])
    finally:
        db.close()


def insert(status: str) -> dict:
    sql = (
        "INSERT INTO orders (customer_id, amount, created_at, status) "
        f"VALUES (1, 9.99, '2025-01-01', '{status}')"
    )
    return {"connection": "demo-dev", "sql": sql, "reason": "retry test"}


def test_a_write_sent_twice_with_one_key_runs_once_and_answers_the_same(local_stack):
    key, marker = str(uuid.uuid4()), f"idem-{uuid.uuid4().hex[:8]}"

    first = submit(local_stack, insert(marker), key)
    second = submit(local_stack, insert(marker), key)

    assert first.status_code == 200, first.text
    assert second.status_code == 200, second.text
    assert second.json() == first.json()  # the same request_id, the same row_count
    assert second.headers.get("Idempotent-Replayed") == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert orders_with_status(local_stack, marker) == 1


def test_the_same_key_with_a_different_body_is_refused_and_runs_nothing(local_stack):
    key, marker, other = str(uuid.uuid4()), f"idem-{uuid.uuid4().hex[:8]}", f"idem-{uuid.uuid4().hex[:8]}"
    assert submit(local_stack, insert(marker), key).status_code == 200

    reused = submit(local_stack, insert(other), key)

    assert reused.status_code == 422
    assert reused.json()["error"] == "idempotency_key_reused"
    assert orders_with_status(local_stack, other) == 0


def test_the_same_body_respaced_is_the_same_request(local_stack):
    key, marker = str(uuid.uuid4()), f"idem-{uuid.uuid4().hex[:8]}"
    body = insert(marker)
    first = submit(local_stack, body, key)
    keys = local_stack.state["agents"]["analyst"]
    auth = AWS4Auth(
        keys["access_key_id"], keys["secret_access_key"], local_stack.state["region"], "execute-api"
    )
    respaced = json.dumps(dict(reversed(list(body.items()))), indent=2)
    second = requests.post(
        local_stack.state["api"] + "/v1/requests",
        data=respaced,
        auth=auth,
        headers={"Content-Type": "application/json", "Idempotency-Key": key},
        timeout=30,
    )
    assert second.status_code == 200 and second.json()["request_id"] == first.json()["request_id"]
    assert orders_with_status(local_stack, marker) == 1


def test_another_principal_with_the_same_key_is_a_different_request(local_stack):
    key = str(uuid.uuid4())
    mine, theirs = f"idem-{uuid.uuid4().hex[:8]}", f"idem-{uuid.uuid4().hex[:8]}"

    first = submit(local_stack, insert(mine), key)
    other = submit(local_stack, insert(theirs), key, agent=SECOND_AGENT)

    assert first.status_code == 200 and other.status_code == 200, other.text
    assert other.json()["request_id"] != first.json()["request_id"]
    assert orders_with_status(local_stack, mine) == 1 and orders_with_status(local_stack, theirs) == 1


def test_a_request_still_running_under_the_key_gets_a_409(local_stack):
    key, marker = str(uuid.uuid4()), f"idem-{uuid.uuid4().hex[:8]}"
    body = {"connection": "demo-dev", "sql": f"UPDATE orders SET status = '{marker}' WHERE id = 2"}
    # Given a superuser holding a lock the agent's UPDATE must wait for
    blocker = local_stack.db("demo-dev")
    blocker.run("START TRANSACTION")
    blocker.run("LOCK TABLE orders IN EXCLUSIVE MODE")
    # pg_stat_activity is a snapshot inside a transaction: watch from another session.
    watcher = local_stack.db("demo-dev")
    answers: list[requests.Response] = []
    running = threading.Thread(target=lambda: answers.append(submit(local_stack, body, key)))
    try:
        running.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            waiting = watcher.run(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
            )[0][0]
            if waiting:
                break
            time.sleep(0.05)
        assert waiting, f"the agent's UPDATE never waited for the lock: {answers and answers[0].text}"

        # When the same request is retried while the first one runs
        concurrent = submit(local_stack, body, key)

        # Then it is refused as in progress, and the first one finishes alone
        assert concurrent.status_code == 409
        assert concurrent.json()["error"] == "idempotency_in_progress"
    finally:
        blocker.run("ROLLBACK")
        blocker.close()
        watcher.close()
        running.join(30)
    assert answers and answers[0].status_code == 200, answers and answers[0].text
    replay = submit(local_stack, body, key)
    assert replay.status_code == 200 and replay.json()["request_id"] == answers[0].json()["request_id"]


def test_a_pending_approval_is_replayed_so_approvers_see_one_request(local_stack):
    key = str(uuid.uuid4())
    body = {"connection": "demo-prod", "sql": "UPDATE orders SET status = 'x' WHERE id = 4"}

    first = submit(local_stack, body, key)
    again = submit(local_stack, body, key)

    assert first.status_code == 202 and again.status_code == 202
    assert again.json()["request_id"] == first.json()["request_id"]


def test_a_refusal_before_anything_ran_is_not_stored_so_a_retry_is_evaluated_afresh(local_stack):
    key = str(uuid.uuid4())
    body = {"connection": "no-such-connection", "sql": "SELECT 1"}

    first = submit(local_stack, body, key)
    retry = submit(local_stack, body, key)

    assert first.status_code == 404 and retry.status_code == 404
    assert "Idempotent-Replayed" not in retry.headers  # evaluated again, not replayed, not "in progress"
    # The key is free again: it may now carry the corrected request.
    fixed = submit(local_stack, {"connection": "demo-dev", "sql": "SELECT 1 AS one"}, key)
    assert fixed.status_code == 200, fixed.text


def test_requests_without_a_key_are_not_deduplicated(local_stack):
    marker = f"idem-{uuid.uuid4().hex[:8]}"
    assert submit(local_stack, insert(marker), None).status_code == 200
    assert submit(local_stack, insert(marker), None).status_code == 200
    assert orders_with_status(local_stack, marker) == 2


def test_a_result_too_large_to_keep_is_replayed_without_its_rows(local_stack):
    key = str(uuid.uuid4())
    body = {
        "connection": "demo-dev",
        "sql": "SELECT repeat('x', 1000) AS filler FROM generate_series(1, 400)",
    }

    first = submit(local_stack, body, key)
    again = submit(local_stack, body, key)

    assert first.status_code == 200, first.text
    assert len(first.content) > 300_000 and len(first.json()["rows"]) == 400  # the first answer is whole
    assert again.status_code == 200 and again.json()["request_id"] == first.json()["request_id"]
    assert again.json()["rows"] is None and again.json()["rows_not_kept"] is True
    assert again.json()["row_count"] == 400
