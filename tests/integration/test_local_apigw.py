"""The API Gateway stand-in: SigV4 as API Gateway checks it, and the payload 2.0 event it builds."""

from __future__ import annotations

import base64
import datetime as dt
import json
import threading
from collections.abc import Iterator

import pytest
import requests
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from requests_aws4auth import AWS4Auth

from gatehouse.local.apigw import ApiGateway, IamCredential
from tests.integration.local_fixtures import (
    ACCOUNT,
    AGENT_ARN,
    REGION,
    AgentKey,
    RecordingHandler,
    make_key,
    port_is_closed,
    running_gateway,
)


@pytest.fixture
def agent_key() -> AgentKey:
    return make_key()


@pytest.fixture
def recorder() -> RecordingHandler:
    return RecordingHandler()


@pytest.fixture
def gateway(recorder, agent_key) -> Iterator[ApiGateway]:
    with running_gateway(recorder, agent_key) as api:
        yield api


def auth_for(key, region=REGION, service="execute-api"):
    return AWS4Auth(key.access_key_id, key.secret_access_key, region, service)


def amz_date(delta: dt.timedelta) -> str:
    return (dt.datetime.now(dt.UTC) + delta).strftime("%Y%m%dT%H%M%SZ")


def send(prepared: requests.PreparedRequest) -> requests.Response:
    with requests.Session() as session:
        return session.send(prepared, timeout=10)


# --- signed requests reach the handler, with the event API Gateway would build ---------------


def test_a_signed_post_reaches_the_handler_as_a_v2_event(gateway, recorder, agent_key):
    body = {"connection": "demo-dev", "sql": "SELECT 1", "reason": "check"}

    resp = requests.post(gateway.url + "/v1/requests", json=body, auth=auth_for(agent_key), timeout=10)

    assert resp.status_code == 200
    assert resp.json() == {"ok": True, "route": "POST /v1/requests"}
    assert resp.headers["X-Handled"] == "yes"
    assert resp.headers["apigw-requestid"]
    [event] = recorder.events
    assert event["version"] == "2.0"
    assert event["routeKey"] == "POST /v1/requests"
    assert event["rawPath"] == "/v1/requests"
    assert event["rawQueryString"] == ""
    assert json.loads(event["body"]) == body and event["isBase64Encoded"] is False
    assert all(name == name.lower() for name in event["headers"])
    assert event["headers"]["content-type"] == "application/json"
    assert "pathParameters" not in event and "queryStringParameters" not in event
    ctx = event["requestContext"]
    assert ctx["accountId"] == ACCOUNT and ctx["stage"] == "$default"
    assert ctx["routeKey"] == "POST /v1/requests" and ctx["requestId"] == resp.headers["apigw-requestid"]
    assert ctx["http"]["method"] == "POST" and ctx["http"]["path"] == "/v1/requests"
    assert ctx["http"]["sourceIp"] == "127.0.0.1" and ctx["http"]["protocol"] == "HTTP/1.1"
    assert ctx["http"]["userAgent"].startswith("python-requests/")
    assert abs(ctx["timeEpoch"] / 1000 - dt.datetime.now(dt.UTC).timestamp()) < 60
    assert ctx["authorizer"]["iam"] == {
        "accessKey": agent_key.access_key_id,
        "accountId": ACCOUNT,
        "callerId": "AIDATESTER",
        "cognitoIdentity": None,
        "principalOrgId": None,
        "userArn": AGENT_ARN,
        "userId": "AIDATESTER",
    }


def test_the_handler_gets_a_lambda_context_powertools_can_read(gateway, recorder, agent_key):
    requests.get(gateway.url + "/v1/connections", auth=auth_for(agent_key), timeout=10)

    [context] = recorder.contexts
    assert context.function_name == "gatehouse-api"
    assert context.invoked_function_arn == f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:gatehouse-api"
    assert context.memory_limit_in_mb > 0 and context.aws_request_id
    assert 0 < context.get_remaining_time_in_millis() <= 29_000


def test_path_and_query_parameters_are_passed_decoded(gateway, recorder, agent_key):
    resp = requests.get(
        gateway.url + "/v1/requests/req-42",
        params={"wait": "5", "note": "a b"},
        auth=auth_for(agent_key),
        timeout=10,
    )

    assert resp.status_code == 200
    [event] = recorder.events
    assert event["routeKey"] == "GET /v1/requests/{id}"
    assert event["pathParameters"] == {"id": "req-42"}
    assert event["queryStringParameters"] == {"wait": "5", "note": "a b"}
    assert event["rawQueryString"] == "wait=5&note=a+b"
    assert "body" not in event


def test_cookies_leave_the_headers_for_their_own_list(gateway, recorder, agent_key):
    requests.get(
        gateway.url + "/v1/connections", headers={"Cookie": "a=1; b=2"}, auth=auth_for(agent_key), timeout=10
    )

    [event] = recorder.events
    assert event["cookies"] == ["a=1", "b=2"]
    assert "cookie" not in event["headers"]


def test_a_request_signed_by_botocore_without_a_body_hash_header_is_accepted(gateway, recorder, agent_key):
    prepared = botocore_signed(
        "POST", gateway.url + "/v1/proxy-tokens", b'{"connection":"demo-dev"}', agent_key
    )

    resp = send(prepared)

    assert resp.status_code == 200, resp.text
    assert recorder.events[0]["routeKey"] == "POST /v1/proxy-tokens"


# --- refusals: the handler never sees them ------------------------------------------------------


def test_an_unsigned_request_is_refused(gateway, recorder):
    resp = requests.post(gateway.url + "/v1/requests", json={"sql": "SELECT 1"}, timeout=10)

    assert resp.status_code == 403
    assert resp.json() == {"message": "Missing Authentication Token"}
    assert recorder.events == []


def test_a_wrong_secret_is_refused(gateway, recorder, agent_key):
    forged = AWS4Auth(agent_key.access_key_id, "not-the-secret", REGION, "execute-api")

    resp = requests.get(gateway.url + "/v1/connections", auth=forged, timeout=10)

    assert resp.status_code == 403
    assert resp.json()["message"].startswith("The request signature we calculated does not match")
    assert recorder.events == []


def test_an_unknown_access_key_is_refused(gateway, recorder):
    resp = requests.get(gateway.url + "/v1/connections", auth=auth_for(make_key()), timeout=10)

    assert resp.status_code == 403
    assert resp.json() == {"message": "The security token included in the request is invalid."}
    assert recorder.events == []


def test_a_body_changed_after_signing_is_refused(gateway, recorder, agent_key):
    # Given a request signed by requests-aws4auth (which sends x-amz-content-sha256)
    prepared = requests.Request(
        "POST",
        gateway.url + "/v1/requests",
        data=b'{"connection":"demo-dev","sql":"SELECT 1"}',
        headers={"Content-Type": "application/json"},
        auth=auth_for(agent_key),
    ).prepare()
    # When someone swaps the body, same length, same headers
    prepared.body = b'{"connection":"demo-dev","sql":"DROP t12"}'
    assert len(prepared.body) == int(prepared.headers["Content-Length"])

    resp = send(prepared)

    assert resp.status_code == 403
    assert "x-amz-content-sha256" in resp.json()["message"]
    assert recorder.events == []


def test_a_body_changed_after_signing_without_a_hash_header_is_refused(gateway, recorder, agent_key):
    prepared = botocore_signed("POST", gateway.url + "/v1/requests", b'{"sql":"SELECT 1"}', agent_key)
    prepared.body = b'{"sql":"DELETE 1"}'

    resp = send(prepared)

    assert resp.status_code == 403
    assert resp.json()["message"].startswith("The request signature we calculated does not match")
    assert recorder.events == []


def test_a_signature_six_minutes_old_is_refused(gateway, recorder, agent_key):
    resp = requests.get(
        gateway.url + "/v1/connections",
        headers={"X-Amz-Date": amz_date(-dt.timedelta(minutes=6))},
        auth=auth_for(agent_key),
        timeout=10,
    )

    assert resp.status_code == 403
    assert resp.json()["message"].startswith("Signature expired")
    assert recorder.events == []


def test_a_signature_from_the_future_is_refused(gateway, recorder, agent_key):
    resp = requests.get(
        gateway.url + "/v1/connections",
        headers={"X-Amz-Date": amz_date(dt.timedelta(minutes=6))},
        auth=auth_for(agent_key),
        timeout=10,
    )

    assert resp.status_code == 403
    assert resp.json()["message"].startswith("Signature not yet current")
    assert recorder.events == []


def test_a_signature_four_minutes_old_is_accepted(gateway, recorder, agent_key):
    resp = requests.get(
        gateway.url + "/v1/connections",
        headers={"X-Amz-Date": amz_date(-dt.timedelta(minutes=4))},
        auth=auth_for(agent_key),
        timeout=10,
    )

    assert resp.status_code == 200
    assert len(recorder.events) == 1


def test_a_signature_for_another_region_or_service_is_refused(gateway, recorder, agent_key):
    other_region = requests.get(
        gateway.url + "/v1/connections", auth=auth_for(agent_key, region="eu-west-1"), timeout=10
    )
    other_service = requests.get(
        gateway.url + "/v1/connections", auth=auth_for(agent_key, service="s3"), timeout=10
    )

    assert other_region.status_code == 403 and "region" in other_region.json()["message"]
    assert other_service.status_code == 403 and "service" in other_service.json()["message"]
    assert recorder.events == []


def test_a_signed_request_replayed_to_another_path_is_refused(gateway, recorder, agent_key):
    prepared = requests.Request("GET", gateway.url + "/v1/connections", auth=auth_for(agent_key)).prepare()
    prepared.url = gateway.url + "/v1/openapi.json"

    resp = send(prepared)

    assert resp.status_code == 403
    assert recorder.events == []


# --- routing -----------------------------------------------------------------------------------


def test_an_unknown_route_is_404_before_any_auth(gateway, recorder, agent_key):
    signed = requests.get(gateway.url + "/v1/nothing-here", auth=auth_for(agent_key), timeout=10)
    unsigned = requests.delete(gateway.url + "/v1/connections", timeout=10)

    assert signed.status_code == 404 and signed.json() == {"message": "Not Found"}
    assert unsigned.status_code == 404 and unsigned.json() == {"message": "Not Found"}
    assert recorder.events == []


def test_slack_interactions_pass_without_sigv4_and_arrive_base64_encoded(gateway, recorder):
    form = "payload=%7B%22type%22%3A%22block_actions%22%7D"

    resp = requests.post(
        gateway.url + "/slack/interactions",
        data=form,
        headers={"Content-Type": "application/x-www-form-urlencoded", "X-Slack-Signature": "v0=abc"},
        timeout=10,
    )

    assert resp.status_code == 200
    [event] = recorder.events
    assert "authorizer" not in event["requestContext"]
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]).decode() == form
    assert event["headers"]["x-slack-signature"] == "v0=abc"


def test_a_body_over_the_limit_is_refused_with_413(recorder, agent_key):
    api = ApiGateway(
        recorder,
        {agent_key.access_key_id: IamCredential(agent_key.secret_access_key, AGENT_ARN)},
        max_body_bytes=1024,
    )
    with api:
        resp = requests.post(api.url + "/v1/requests", data=b"x" * 2048, auth=auth_for(agent_key), timeout=10)

    assert resp.status_code == 413
    assert recorder.events == []


# --- the function's answers ---------------------------------------------------------------------


def test_a_failing_handler_is_api_gateways_500(agent_key):
    def broken(event, context):
        raise RuntimeError("boom")

    api = ApiGateway(broken, {agent_key.access_key_id: IamCredential(agent_key.secret_access_key, AGENT_ARN)})
    with api:
        resp = requests.get(api.url + "/v1/connections", auth=auth_for(agent_key), timeout=10)

    assert resp.status_code == 500
    assert resp.json() == {"message": "Internal Server Error"}


def test_a_response_without_status_code_is_the_json_body_of_a_200(agent_key):
    api = ApiGateway(
        lambda event, context: {"hello": "world"},
        {agent_key.access_key_id: IamCredential(agent_key.secret_access_key, AGENT_ARN)},
    )
    with api:
        resp = requests.get(api.url + "/v1/connections", auth=auth_for(agent_key), timeout=10)

    assert resp.status_code == 200
    assert resp.json() == {"hello": "world"}
    assert resp.headers["Content-Type"] == "application/json"


def test_a_base64_response_body_is_decoded_for_the_client(agent_key):
    api = ApiGateway(
        lambda event, context: {
            "statusCode": 201,
            "headers": {"Content-Type": "application/octet-stream"},
            "body": base64.b64encode(b"\x00\x01binary").decode(),
            "isBase64Encoded": True,
        },
        {agent_key.access_key_id: IamCredential(agent_key.secret_access_key, AGENT_ARN)},
    )
    with api:
        resp = requests.get(api.url + "/v1/openapi.json", auth=auth_for(agent_key), timeout=10)

    assert resp.status_code == 201 and resp.content == b"\x00\x01binary"


# --- lifecycle --------------------------------------------------------------------------------


def test_stop_closes_the_port_and_joins_every_thread(recorder, agent_key):
    api = ApiGateway(
        recorder, {agent_key.access_key_id: IamCredential(agent_key.secret_access_key, AGENT_ARN)}
    )
    api.start()
    port = api.port
    # An idle keep-alive connection must not keep a thread (or stop()) waiting.
    session = requests.Session()
    assert session.get(api.url + "/v1/connections", auth=auth_for(agent_key), timeout=10).status_code == 200

    api.stop()
    session.close()

    assert port_is_closed(port)
    assert not [t for t in threading.enumerate() if t.name == "gatehouse-apigw"]
    assert [t for t in threading.enumerate() if not t.daemon] == [threading.main_thread()]


def botocore_signed(method: str, url: str, body: bytes, key) -> requests.PreparedRequest:
    """Sign with botocore's own SigV4 (no x-amz-content-sha256 header, unlike requests-aws4auth)."""
    aws_request = AWSRequest(method=method, url=url, data=body, headers={"Content-Type": "application/json"})
    SigV4Auth(Credentials(key.access_key_id, key.secret_access_key), "execute-api", REGION).add_auth(
        aws_request
    )
    assert "X-Amz-Content-SHA256" not in aws_request.headers
    return requests.Request(method, url, data=body, headers=dict(aws_request.headers.items())).prepare()
