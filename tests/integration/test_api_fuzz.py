"""Fuzz the agent API from its own OpenAPI document (schemathesis), signed, on the local stack.

Every generated request, valid or not, must get an answer the document declares (status, media
type, body schema) and never a 5xx. Bounded so it runs in `make test`: a fixed number of
examples per operation, derandomized so CI sees the same cases every run.
"""

from __future__ import annotations

import time

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from requests_aws4auth import AWS4Auth
from schemathesis import GenerationMode

from tests.integration.conftest import RunningStack

MAX_EXAMPLES = 25  # per operation and mode; the whole fuzz run stays under BUDGET_S
BUDGET_S = 60.0


@pytest.fixture(scope="module")
def signed_session(local_stack: RunningStack) -> requests.Session:
    keys = local_stack.state["agents"]["analyst"]
    session = requests.Session()
    session.auth = AWS4Auth(
        keys["access_key_id"], keys["secret_access_key"], local_stack.state["region"], "execute-api"
    )
    return session


@pytest.fixture(scope="module")
def fuzz_clock() -> dict[str, float]:
    return {"started": time.monotonic()}


@pytest.fixture(scope="module")
def api_schema(local_stack: RunningStack, signed_session: requests.Session):
    base = local_stack.state["api"]
    # The document is served behind SigV4 like every route: fetch it signed, then load it.
    document = signed_session.get(base + "/v1/openapi.json", timeout=30)
    document.raise_for_status()
    loaded = schemathesis.openapi.from_dict(document.json())
    loaded.config.update(base_url=base)
    # A body over the 256 KiB limit (an over-long `sql`) is refused with the 413 the document
    # declares, before it is parsed: a rejection like any other.
    rejection = loaded.config.checks.negative_data_rejection
    rejection.expected_statuses = [*rejection.expected_statuses, "413"]
    return loaded


# Every operation the document declares, fuzzed with valid and with invalid inputs. The list is
# checked against the document, so a new route cannot go unfuzzed.
OPERATIONS = (
    ("POST", "/v1/requests"),
    ("GET", "/v1/requests"),
    ("GET", "/v1/requests/{request_id}"),
    ("GET", "/v1/connections"),
    ("POST", "/v1/proxy-tokens"),
    ("GET", "/v1/openapi.json"),
)
# Operations without inputs have nothing to make invalid: they are fuzzed with valid data only.
CASES = [
    (method, path, mode)
    for method, path in OPERATIONS
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE
    or path in ("/v1/requests", "/v1/requests/{request_id}", "/v1/proxy-tokens")
]


def test_the_fuzzed_operations_are_all_the_document_declares(api_schema):
    declared = {
        (method.upper(), path)
        for path, item in api_schema.raw_schema["paths"].items()
        for method in item
        if method in ("get", "post", "put", "patch", "delete")
    }
    assert declared == set(OPERATIONS)


# (schemathesis.pytest.from_fixture would do this, but it sets a node attribute pytest 9 removed.)
@pytest.mark.parametrize(("method", "path", "mode"), CASES, ids=[f"{m} {p} {g.value}" for m, p, g in CASES])
def test_every_answer_is_declared_and_none_is_a_5xx(
    api_schema, signed_session, fuzz_clock, method, path, mode
):
    operation = api_schema[path][method]

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case):
        response = case.call_and_validate(session=signed_session, timeout=30)
        assert response.status_code < 500, response.text

    fuzz()
    assert time.monotonic() - fuzz_clock["started"] < BUDGET_S, "the fuzz run is over its time budget"
