"""The Slack function: what its role may do, on the synthesized template."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from gatehouse import names
from tests.infra.test_infra_approvals import _actions, _statements_of

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
