"""A cold API function: in Lambda its init pauses the cyclic garbage collector and then freezes what
it built (functions/api/handler.py says why); whatever happens in the cold start, the warm function
collects garbage again, and outside Lambda (the local stack) nothing is frozen."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

from gatehouse import names
from gatehouse.config import ConfigError
from gatehouse.local.apigw import LambdaContext
from gatehouse.local.stack import API_HANDLER_PATH, REPO_ROOT, LambdaFunction
from tests.integration.test_handler_events import EVENTS, body_of, load, signed_in


def context() -> LambdaContext:
    return LambdaContext(
        function_name=names.API_FUNCTION,
        invoked_function_arn=f"arn:aws:lambda:eu-west-1:123456789012:function:{names.API_FUNCTION}",
        aws_request_id=str(uuid.uuid4()),
    )


@pytest.fixture
def in_lambda(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # What the Lambda runtime sets; no X-Ray daemon here, so no tracing.
    monkeypatch.setenv("LAMBDA_TASK_ROOT", str(API_HANDLER_PATH.parent))
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")
    try:
        yield
    finally:
        # This test process outlives the environment it loaded: let its objects be collected.
        gc.unfreeze()


@pytest.fixture
def cold_function() -> Iterator[LambdaFunction]:
    function = LambdaFunction(API_HANDLER_PATH, max_environments=1)
    try:
        yield function
    finally:
        function.close()


def test_in_lambda_the_first_request_is_answered_and_collection_resumes(
    local_stack, in_lambda, cold_function
):
    # Given a cold API function in a Lambda execution environment
    frozen_before = gc.get_freeze_count()

    # When the agent's first request arrives
    answer = cold_function(signed_in(load("api_post_request_read.json"), local_stack), context())

    # Then it is answered as usual, what the cold start built is frozen, and the process collects
    # garbage again
    assert answer["statusCode"] == 200, answer
    assert body_of(answer)["row_count"] == 3
    assert gc.get_freeze_count() > frozen_before
    assert gc.isenabled()


def test_in_lambda_a_cold_start_that_fails_still_resumes_collection(monkeypatch, in_lambda, cold_function):
    # Given an API function whose settings are broken (no session log bucket)
    monkeypatch.delenv(names.ENV_LOG_BUCKET, raising=False)
    event = json.loads((EVENTS / "api_get_connections.json").read_text())

    # When its first invocation fails to build the service
    with pytest.raises(ConfigError):
        cold_function(event, context())

    # Then the environment, which Lambda keeps for the next invocation, collects garbage
    assert gc.isenabled()


def test_outside_lambda_an_environment_freezes_nothing(local_stack, monkeypatch, cold_function):
    # Given the local stack's kind of process, which loads and drops environments by the dozen
    monkeypatch.delenv("LAMBDA_TASK_ROOT", raising=False)
    frozen_before = gc.get_freeze_count()

    # When an environment answers its first request
    answer = cold_function(signed_in(load("api_post_request_read.json"), local_stack), context())

    # Then nothing of it is frozen (it can be collected once dropped), and collection is on
    assert answer["statusCode"] == 200, answer
    assert gc.get_freeze_count() == frozen_before
    assert gc.isenabled()


# A fresh interpreter, as a cold Lambda environment: the handler serves the events on stdin, one
# per line, and says after each which of the heavier libraries it had imported by then.
_SERVE_FRESH = """
import importlib.util, json, sys, uuid
from gatehouse.local.apigw import LambdaContext
ARN = "arn:aws:lambda:eu-west-1:123456789012:function:gatehouse-api"
spec = importlib.util.spec_from_file_location("api_handler", sys.argv[1])
handler = importlib.util.module_from_spec(spec)
spec.loader.exec_module(handler)
for line in sys.stdin:
    context = LambdaContext("gatehouse-api", ARN, str(uuid.uuid4()))
    answer = handler.lambda_handler(json.loads(line), context)
    print(json.dumps({"status": answer["statusCode"], "pydantic": "pydantic" in sys.modules}))
"""


def test_a_cold_start_that_runs_sql_never_loads_the_validating_app(local_stack):
    # Given a fresh API environment and, in turn, a read, a malformed read and a listing
    read = signed_in(load("api_post_request_read.json"), local_stack)
    malformed = {**read, "body": json.dumps({"connection": "demo-dev", "sql": ""})}
    listing = signed_in(load("api_get_connections.json"), local_stack)
    stdin = "\n".join(json.dumps(e) for e in (read, read, malformed, listing)) + "\n"

    # When it serves them
    done = subprocess.run(
        [sys.executable, "-c", _SERVE_FRESH, str(API_HANDLER_PATH)],
        input=stdin,
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "PYTHONPATH": str(REPO_ROOT / "layers" / "core" / "python"),
            "POWERTOOLS_TRACE_DISABLED": "true",
        },
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    answers = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]

    # Then the reads are answered without pydantic (~60 ms of a cold start); the first body the
    # light check is not sure of, and the first other route, are answered by the validating app
    assert answers == [
        {"status": 200, "pydantic": False},
        {"status": 200, "pydantic": False},
        {"status": 400, "pydantic": True},
        {"status": 200, "pydantic": True},
    ]
