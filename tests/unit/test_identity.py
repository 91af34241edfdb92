import pytest

from gatehouse.exceptions import UnknownPrincipalError
from gatehouse.identity import caller_from_event, canonical_arn


def test_assumed_role_sessions_map_to_their_role():
    arn = "arn:aws:sts::123456789012:assumed-role/agent-runner/session-42"
    assert canonical_arn(arn) == "arn:aws:iam::123456789012:role/agent-runner"


def test_user_arns_are_kept():
    arn = "arn:aws:iam::123456789012:user/gatehouse-agent-analyst"
    assert canonical_arn(arn) == arn


def test_caller_comes_from_the_iam_authorizer_context():
    event = {
        "requestContext": {
            "authorizer": {
                "iam": {
                    "userArn": "arn:aws:iam::123456789012:user/a",
                    "accountId": "123456789012",
                    "accessKey": "AKIAIOSFODNN7EXAMPLE",
                    "userId": "AIDA1",
                }
            }
        }
    }
    caller = caller_from_event(event)
    assert caller.principal_key == "iam:arn:aws:iam::123456789012:user/a"
    assert caller.account_id == "123456789012"


def test_an_event_without_iam_context_is_refused():
    with pytest.raises(UnknownPrincipalError):
        caller_from_event({"requestContext": {}})
