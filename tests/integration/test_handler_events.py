"""Each Lambda handler invoked with the events AWS really sends it (tests/events/*.json).

The fixtures are the payloads as API Gateway (HTTP API, payload format 2.0) and the approvals state
machine deliver them; the test fills in only what must be live: request ids, times, the caller the
IAM authorizer verified, the request id an event concerns, and Slack's signature. Each handler is
loaded from its file as Lambda loads it, against the local stack (moto, the Slack stand-in and a
real Postgres), and the tests check what a user would see: status codes, answers, records.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import io
import json
import time
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import pg8000.native
import pytest

from gatehouse import names
from gatehouse.exceptions import BadRequestError
from gatehouse.local.apigw import LambdaContext
from gatehouse.local.approve import local_slack_secret, local_voter
from gatehouse.local.stack import API_HANDLER_PATH, WORKFLOW_HANDLER_PATHS, LambdaFunction
from gatehouse.slack.interactions import signed_headers
from gatehouse.slack.views import ACTION_APPROVE
from tests.integration.test_rotation import ROTATION_HANDLER as ROTATION_HANDLER_PATH
from tests.integration.test_rotation import begin_rotation

EVENTS = Path(__file__).resolve().parents[1] / "events"
FILL = "filled-in-by-the-test"
UNDECIDED = {"pending_approval", "approved", "executing"}


def load(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / name).read_text())


def context(function_name: str) -> LambdaContext:
    return LambdaContext(
        function_name=function_name,
        invoked_function_arn=f"arn:aws:lambda:eu-west-1:123456789012:function:{function_name}",
        aws_request_id=str(uuid.uuid4()),
    )


def live(event: dict[str, Any]) -> dict[str, Any]:
    """What API Gateway sets per request: a fresh request id and the time it arrived."""
    event = copy.deepcopy(event)
    now = dt.datetime.now(dt.UTC)
    ctx = event["requestContext"]
    ctx["requestId"] = base64.b64encode(uuid.uuid4().bytes[:11]).decode()
    ctx["time"] = now.strftime("%d/%b/%Y:%H:%M:%S +0000")
    ctx["timeEpoch"] = int(now.timestamp() * 1000)
    return event


def signed_in(event: dict[str, Any], stack: Any, agent: str = "analyst") -> dict[str, Any]:
    """The event as the IAM authorizer passes it once `agent`'s SigV4 signature checked out."""
    event = live(event)
    caller = stack.stack.provisioned.agents[agent]
    account = caller.user_arn.split(":")[4]
    event["requestContext"]["accountId"] = account
    event["requestContext"]["authorizer"]["iam"].update(
        accessKey=caller.access_key_id,
        accountId=account,
        callerId=caller.user_id,
        userArn=caller.user_arn,
        userId=caller.user_id,
    )
    return event


def body_of(answer: dict[str, Any]) -> dict[str, Any]:
    raw = answer.get("body") or ""
    if answer.get("isBase64Encoded"):
        raw = base64.b64decode(raw).decode()
    return json.loads(raw)


@pytest.fixture(scope="module")
def functions(local_stack: Any) -> Iterator[dict[str, LambdaFunction]]:
    # Loaded after the stack set this process's environment, as a cold start would be.
    loaded = {
        names.API_FUNCTION: LambdaFunction(API_HANDLER_PATH),
        names.APPROVALS_FUNCTION: LambdaFunction(WORKFLOW_HANDLER_PATHS[names.APPROVALS_FUNCTION]),
        names.APPROVALS_NOTIFY_FUNCTION: LambdaFunction(
            WORKFLOW_HANDLER_PATHS[names.APPROVALS_NOTIFY_FUNCTION]
        ),
        names.SLACK_FUNCTION: LambdaFunction(WORKFLOW_HANDLER_PATHS[names.SLACK_FUNCTION]),
    }
    try:
        yield loaded
    finally:
        for function in loaded.values():
            function.close()


def invoke(functions: dict[str, LambdaFunction], name: str, event: dict[str, Any]) -> dict[str, Any]:
    return functions[name](event, context(name))


def api(functions: dict[str, LambdaFunction], event: dict[str, Any]) -> dict[str, Any]:
    return invoke(functions, names.API_FUNCTION, event)


def request_event(local_stack: Any, statement: str | None = None) -> dict[str, Any]:
    event = signed_in(load("api_post_request_write.json"), local_stack)
    if statement is not None:
        body = json.loads(event["body"])
        body["sql"] = statement
        event["body"] = json.dumps(body)
    return event


def get_request(functions: dict[str, LambdaFunction], local_stack: Any, request_id: str) -> dict[str, Any]:
    event = signed_in(load("api_get_request.json"), local_stack)
    event["rawPath"] = event["requestContext"]["http"]["path"] = f"/v1/requests/{request_id}"
    event["pathParameters"] = {"id": request_id}
    answer = api(functions, event)
    assert answer["statusCode"] == 200, answer
    return body_of(answer)


def wait_decided(functions: dict[str, LambdaFunction], local_stack: Any, request_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 45
    while True:
        record = get_request(functions, local_stack, request_id)
        if record["status"] not in UNDECIDED or time.monotonic() > deadline:
            return record
        time.sleep(0.2)


def wait_for_notification(local_stack: Any, request_id: str) -> None:
    """The execution's own Notify step posted the approval message (it runs in moto)."""
    standin = local_voter(local_stack.state).standin
    deadline = time.monotonic() + 20
    while standin.approval_message(request_id) is None:
        assert time.monotonic() < deadline, f"no approval message for {request_id}"
        time.sleep(0.2)


def order_amount(local_stack: Any, order_id: int) -> float:
    db = local_stack.db("demo-prod")
    try:
        return float(db.run("SELECT amount FROM orders WHERE id = :i", i=order_id)[0][0])
    finally:
        db.close()


def session_kinds(local_stack: Any, request_id: str) -> list[str]:
    s3 = local_stack.aws("s3")
    bucket = local_stack.state["bucket"]
    keys = sorted(
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=names.EVENTS_PREFIX)
        for o in page.get("Contents", [])
        if f"session={request_id}/" in o["Key"]
    )
    return [
        json.loads(line)["kind"]
        for key in keys
        for line in s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode().splitlines()
        if line.strip()
    ]


def slack_click(local_stack: Any, request_id: str, *, signing_secret: str | None = None) -> dict[str, Any]:
    """The Approve click as API Gateway delivers it: form-encoded, base64, signed by Slack now."""
    event = live(load("slack_interaction_approve.json"))
    form = base64.b64decode(event["body"]).decode()
    [payload_text] = parse_qs(form)["payload"]
    payload = json.loads(payload_text)
    [button] = payload["actions"]
    assert button["action_id"] == ACTION_APPROVE
    button["value"] = request_id
    # Slack issues a new trigger id per click; the replay guard remembers signatures.
    payload["trigger_id"] = f"13345224609.{time.monotonic_ns()}.8088930838d88f008e0"
    body = urlencode({"payload": json.dumps(payload, separators=(",", ":"))})
    secret = signing_secret or local_slack_secret(local_stack.state)["signing_secret"]
    signed = {k.lower(): v for k, v in signed_headers(body, secret, int(time.time())).items()}
    event["headers"].update(signed)
    event["headers"]["content-length"] = str(len(body))
    event["body"] = base64.b64encode(body.encode()).decode()
    return event


# -- the API function (HTTP API, payload format 2.0, IAM authorizer) -------------------------------


def test_get_connections_event_lists_what_the_agent_may_use(functions, local_stack) -> None:
    answer = api(functions, signed_in(load("api_get_connections.json"), local_stack))

    assert answer["statusCode"] == 200, answer
    assert "demo-prod" in {c["name"] for c in body_of(answer)["connections"]}


def test_post_request_event_for_a_read_answers_masked_rows_and_records_the_session(
    functions, local_stack
) -> None:
    answer = api(functions, signed_in(load("api_post_request_read.json"), local_stack))

    assert answer["statusCode"] == 200, answer
    body = body_of(answer)
    assert body["status"] == "executed" and body["row_count"] == 3
    db = local_stack.db("demo-prod")
    try:
        real = db.run("SELECT email, card_number FROM customers ORDER BY id LIMIT 3")
    finally:
        db.close()
    returned = json.dumps(body["rows"])
    assert not any(email in returned or card in returned for email, card in real)
    # The request's whole story is in the session log, closed.
    assert session_kinds(local_stack, body["request_id"]) == [
        "received",
        "decision",
        "executed",
        "session_closed",
    ]


def test_an_event_without_the_iam_authorizer_context_is_refused(functions, local_stack) -> None:
    # The route requires AWS_IAM; an event that reaches the function without a verified caller
    # (a misconfigured route) must not be served as anybody.
    event = live(load("api_get_connections.json"))
    del event["requestContext"]["authorizer"]

    answer = api(functions, event)

    assert answer["statusCode"] in (401, 403), answer
    assert "connections" not in body_of(answer)


# -- the Slack function (POST /slack/interactions, base64 form body) -------------------------------


def test_a_signed_approve_click_is_acknowledged_and_the_approved_write_runs(functions, local_stack) -> None:
    before = order_amount(local_stack, 4)
    created = api(functions, request_event(local_stack))
    assert created["statusCode"] == 202, created
    request_id = body_of(created)["request_id"]
    wait_for_notification(local_stack, request_id)

    answer = invoke(functions, names.SLACK_FUNCTION, slack_click(local_stack, request_id))

    # Slack gets its empty 200 at once; the vote runs in the function's own async invocation.
    assert answer["statusCode"] == 200 and answer["body"] == "", answer
    done = wait_decided(functions, local_stack, request_id)
    assert done["status"] == "executed", done
    assert order_amount(local_stack, 4) == before + 1


def test_a_click_signed_with_another_secret_is_refused_and_votes_nothing(functions, local_stack) -> None:
    created = api(functions, request_event(local_stack, "UPDATE orders SET amount = amount + 1 WHERE id = 5"))
    assert created["statusCode"] == 202, created
    request_id = body_of(created)["request_id"]
    wait_for_notification(local_stack, request_id)

    answer = invoke(
        functions, names.SLACK_FUNCTION, slack_click(local_stack, request_id, signing_secret="not-the-secret")
    )

    assert answer["statusCode"] == 401, answer
    time.sleep(1)
    assert get_request(functions, local_stack, request_id)["status"] == "pending_approval"


# -- the approvals function (the state machine's task input) ---------------------------------------


@pytest.fixture
def pending(functions, local_stack) -> str:
    """A write waiting for approval, its execution already parked at Notify."""
    created = api(functions, request_event(local_stack, "UPDATE orders SET amount = amount + 1 WHERE id = 6"))
    assert created["statusCode"] == 202, created
    request_id = body_of(created)["request_id"]
    wait_for_notification(local_stack, request_id)
    return request_id


def step(name: str, request_id: str) -> dict[str, Any]:
    event = load(f"sfn_{name}.json")
    assert event["request_id"] == FILL
    event["request_id"] = request_id
    return event


def test_the_preview_task_input_is_answered_with_its_step_and_request(functions, pending) -> None:
    answer = invoke(functions, names.APPROVALS_FUNCTION, step("preview", pending))

    assert answer == {"step": "preview", "request_id": pending}


def test_the_execute_task_input_for_an_unapproved_request_runs_nothing(
    functions, local_stack, pending
) -> None:
    before = order_amount(local_stack, 6)

    answer = invoke(functions, names.APPROVALS_FUNCTION, step("execute", pending))

    # Only an approved request is claimed for execution; this one is still waiting.
    assert answer == {"step": "execute", "request_id": pending, "status": "pending_approval"}
    assert order_amount(local_stack, 6) == before
    assert get_request(functions, local_stack, pending)["status"] == "pending_approval"


def test_the_expire_task_input_expires_the_request(functions, local_stack, pending) -> None:
    answer = invoke(functions, names.APPROVALS_FUNCTION, step("expire", pending))

    assert answer == {"step": "expire", "request_id": pending, "status": "expired"}
    assert get_request(functions, local_stack, pending)["status"] == "expired"
    assert "approval_expired" in session_kinds(local_stack, pending)


def test_the_announce_task_input_shows_the_outcome_in_the_slack_message(
    functions, local_stack, pending
) -> None:
    invoke(functions, names.APPROVALS_FUNCTION, step("expire", pending))

    # The notify function's step: the same handler, outside the VPC where Slack is.
    answer = invoke(functions, names.APPROVALS_NOTIFY_FUNCTION, step("announce", pending))

    assert answer == {"step": "announce", "request_id": pending}
    message = local_voter(local_stack.state).standin.approval_message(pending)
    assert message is not None and "expired: nobody decided in time" in str(message.blocks)


def test_the_fail_task_input_fails_the_request(functions, local_stack, pending) -> None:
    answer = invoke(functions, names.APPROVALS_FUNCTION, step("fail", pending))

    assert answer == {"step": "fail", "request_id": pending}
    assert get_request(functions, local_stack, pending)["status"] == "failed"


def test_a_notify_task_input_without_its_token_fails_the_task(functions, pending) -> None:
    event = step("notify", pending)
    del event["task_token"]

    with pytest.raises(BadRequestError):
        invoke(functions, names.APPROVALS_FUNCTION, event)


# -- the rotation function (Secrets Manager's four steps) -----------------------------------------


def proxy_select_one(local_stack: Any, connection: str) -> list[list[Any]]:
    """`SELECT 1` through the local Postgres proxy, logged in with a fresh proxy token."""
    token = local_stack.client().proxy_token(connection).body
    con = pg8000.native.Connection(
        token["username"],
        host=token["host"],
        port=int(token["port"]),
        database=token["database"],
        password=token["password"],
        timeout=10,
    )
    try:
        return con.run("SELECT 1")
    finally:
        con.close()


def dev_read(functions: dict[str, LambdaFunction], local_stack: Any) -> dict[str, Any]:
    event = signed_in(load("api_post_request_read.json"), local_stack)
    event["body"] = json.dumps({"connection": "demo-dev", "sql": "SELECT count(*) FROM customers"})
    event["headers"]["content-length"] = str(len(event["body"]))
    return api(functions, event)


def test_rotation_events_rotate_a_connection_password_and_gatehouse_keeps_working(
    functions, local_stack
) -> None:
    sm = local_stack.aws("secretsmanager")
    secret = sm.describe_secret(SecretId=names.connection_secret_name("demo-dev"))
    old = json.loads(sm.get_secret_value(SecretId=secret["ARN"])["SecretString"])
    role = local_stack.aws("iam").create_role(
        RoleName=f"rotation-{uuid.uuid4().hex[:8]}", AssumeRolePolicyDocument="{}"
    )
    function_arn = local_stack.aws("lambda").create_function(
        FunctionName=names.ROTATION_FUNCTION,
        Runtime="python3.12",
        Role=role["Role"]["Arn"],
        Handler="handler.lambda_handler",
        Code={"ZipFile": _zip("def lambda_handler(event, context):\n    pass\n")},
    )["FunctionArn"]
    token = begin_rotation(sm, secret["ARN"], function_arn)
    # Given the API function and the proxy, each with the old password in its 60-second cache.
    assert dev_read(functions, local_stack)["statusCode"] == 200
    assert proxy_select_one(local_stack, "demo-dev") == [[1]]
    rotation = LambdaFunction(ROTATION_HANDLER_PATH)
    event = load("secretsmanager_rotation.json")
    event.update(SecretId=secret["ARN"], ClientRequestToken=token)
    try:
        for rotation_step in ("createSecret", "setSecret", "testSecret", "finishSecret"):
            assert rotation({**event, "Step": rotation_step}, context(names.ROTATION_FUNCTION)) is None
            if rotation_step == "setSecret":
                # Between setSecret and finishSecret only the pending password logs in.
                assert proxy_select_one(local_stack, "demo-dev") == [[1]]
    finally:
        rotation.close()

    new = json.loads(sm.get_secret_value(SecretId=secret["ARN"], VersionStage="AWSCURRENT")["SecretString"])
    assert new["username"] == old["username"] and new["password"] != old["password"]
    answer = dev_read(functions, local_stack)
    assert answer["statusCode"] == 200, answer
    assert body_of(answer)["status"] == "executed"
    assert proxy_select_one(local_stack, "demo-dev") == [[1]]


def _zip(source: str) -> bytes:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("handler.py", source)
    return archive.getvalue()
