"""The Slack function: what its role may do, on the synthesized template; and which functions may
read the Slack app's two secrets (the signing secret: the Slack function alone)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from gatehouse import names
from tests.infra.test_infra_approvals import _actions, _secret_statements, _statements_of

if TYPE_CHECKING:
    from tests.infra.conftest import Synthesized


def test_the_slack_function_answers_tokens_invokes_only_itself_and_deletes_nothing(synthesized: Synthesized):
    statements = _statements_of(synthesized, names.SLACK_FUNCTION)
    actions = _actions(statements)

    assert {"states:SendTaskSuccess", "lambda:InvokeFunction", "dynamodb:UpdateItem"} <= actions
    assert not {a for a in actions if "Delete" in a}
    assert "states:StartExecution" not in actions
    [invoke] = [s for s in statements if "lambda:InvokeFunction" in _actions([s])]
    assert f"function:{names.SLACK_FUNCTION}" in json.dumps(invoke["Resource"])
    # The replay table takes new signatures only; the request table is never written whole.
    replay = [s for s in statements if "SlackReplay" in json.dumps(s["Resource"])]
    assert replay and _actions(replay) == {"dynamodb:PutItem"}
    requests = [s for s in statements if "Requests" in json.dumps(s["Resource"])]
    assert "dynamodb:PutItem" not in _actions(requests)
    # Secrets: the Slack app's and the masking key, never a connection's credential.
    assert names.CONNECTION_SECRET_PREFIX not in json.dumps(statements)


def test_the_slack_function_reads_the_signing_secret_and_the_bot_token_by_name(synthesized: Synthesized):
    statements = _statements_of(synthesized, names.SLACK_FUNCTION)

    for secret_name in (names.SLACK_SIGNING_SECRET, names.SLACK_SECRET):
        [statement] = _secret_statements(statements, secret_name)
        assert _actions([statement]) == {"secretsmanager:GetSecretValue"}
        # The name and Secrets Manager's six-character suffix, nothing wider.
        assert f":secret:{secret_name}-??????" in json.dumps(statement["Resource"])


def test_only_the_slack_function_may_read_the_signing_secret(synthesized: Synthesized):
    # Every policy document of the stack: roles' policies and managed policies alike.
    readers = [
        key
        for key, resource in synthesized.resources.items()
        if resource["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy")
        and f":secret:{names.SLACK_SIGNING_SECRET}-" in json.dumps(resource["Properties"]["PolicyDocument"])
    ]
    [slack_role] = [
        f["Properties"]["Role"]["Fn::GetAtt"][0]
        for f in synthesized.resources_of_type("AWS::Lambda::Function").values()
        if f["Properties"].get("FunctionName") == names.SLACK_FUNCTION
    ]

    assert len(readers) == 1
    assert synthesized.resources[readers[0]]["Properties"]["Roles"] == [{"Ref": slack_role}]


def test_the_bot_token_is_read_by_the_functions_that_post_and_no_other(synthesized: Synthesized):
    readers = {
        name
        for name in (
            names.API_FUNCTION,
            names.APPROVALS_FUNCTION,
            names.APPROVALS_NOTIFY_FUNCTION,
            names.SLACK_FUNCTION,
        )
        if _secret_statements(_statements_of(synthesized, name), names.SLACK_SECRET)
    }

    assert readers == {names.APPROVALS_NOTIFY_FUNCTION, names.SLACK_FUNCTION}
