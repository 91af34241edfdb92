"""The light lane's check (gatehouse.api_core.sql_submission) against the model it stands in for.

Whatever the check accepts, SubmitRequest accepts with the same values, so an answer never depends
on the lane a body took; and every SQL body the model accepts, the check accepts too, so those
bodies all take the light lane (and hash alike for idempotency).
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from gatehouse.api import SubmitRequest
from gatehouse.api_core import (
    CONNECTION_NAME_MAX,
    MAX_REASON_CHARS,
    MAX_SQL_CHARS,
    SqlSubmission,
    request_digest,
    sql_submission,
)


def around(bound: int) -> st.SearchStrategy[str]:
    """Strings just under, at and over a length bound, and short ones, some with a NUL."""
    at_bound = st.sampled_from([0, 1, bound - 1, bound, bound + 1]).map(lambda n: "s" * n)
    short = st.text(alphabet=st.sampled_from("ab \n\t\x00é😀"), max_size=6)
    return st.one_of(at_bound, short)


def values(bound: int) -> st.SearchStrategy[Any]:
    return st.one_of(
        around(bound),
        st.none(),
        st.booleans(),
        st.integers(-2, 2),
        st.floats(allow_nan=False, allow_infinity=False),
        st.lists(st.text(max_size=2), max_size=2),
        st.dictionaries(st.text(max_size=2), st.text(max_size=2), max_size=1),
    )


# Mostly bodies of the usual shape with strings around each bound (where the two could disagree),
# and some with other fields and other kinds of value.
usual = st.fixed_dictionaries(
    {"connection": around(CONNECTION_NAME_MAX), "sql": around(MAX_SQL_CHARS)},
    optional={"reason": around(MAX_REASON_CHARS)},
)
odd = st.fixed_dictionaries(
    {},
    optional={
        "connection": values(CONNECTION_NAME_MAX),
        "sql": values(MAX_SQL_CHARS),
        "reason": values(MAX_REASON_CHARS),
        "http": st.one_of(st.none(), st.just({"method": "GET", "path": "/"})),
        "kubernetes": st.none(),
        "ssh": st.none(),
        "extra": st.text(max_size=2),
    },
)
bodies = st.one_of(usual, odd)


def by_the_model(body: dict[str, Any]) -> SubmitRequest | None:
    try:
        return SubmitRequest.model_validate(body)
    except ValidationError:
        return None


@settings(max_examples=600, deadline=None)
@given(bodies)
def test_the_check_takes_exactly_the_sql_bodies_the_model_takes_with_the_same_values(body):
    light = sql_submission(body)
    model = by_the_model(body)
    if light is not None:
        assert model is not None, f"the check took a body the model refuses: {body!r}"
        assert light.fields() == model.fields()
        assert request_digest(light.fields()) == request_digest(model.fields())
    if model is not None and body.keys() <= {"connection", "sql", "reason"}:
        assert light is not None, f"an SQL body the model takes went to the validating app: {body!r}"


def test_the_usual_body_is_taken_as_written():
    body = {"connection": "demo-prod", "sql": "SELECT 1", "reason": "weekly report"}
    assert sql_submission(body) == SqlSubmission("demo-prod", "SELECT 1", "weekly report")
    assert sql_submission({"connection": "demo-prod", "sql": "SELECT 1"}) == SqlSubmission(
        "demo-prod", "SELECT 1"
    )


def test_a_null_command_beside_the_sql_goes_to_the_model():
    # The model takes it (a null command is no command); the check leaves it to the model.
    body = {"connection": "demo-prod", "sql": "SELECT 1", "http": None}
    assert sql_submission(body) is None
    assert by_the_model(body) is not None
