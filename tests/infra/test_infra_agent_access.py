"""The managed policy an operator attaches to each agent's role: the agent routes, nothing else."""

from __future__ import annotations

import json

from tests.infra.conftest import Synthesized


def test_the_agent_policy_invokes_exactly_the_agent_routes(synthesized: Synthesized):
    [policy] = synthesized.resources_of_type("AWS::IAM::ManagedPolicy").values()
    [statement] = policy["Properties"]["PolicyDocument"]["Statement"]
    assert (statement["Effect"], statement["Action"]) == ("Allow", "execute-api:Invoke")
    # Each resource is a Fn::Join whose last part is "/<stage>/<method>/<path>" of one route.
    tails = sorted(r["Fn::Join"][1][-1].lstrip("/") for r in statement["Resource"])
    assert tails == [
        "$default/GET/v1/connections",
        "$default/GET/v1/openapi.json",
        "$default/GET/v1/requests",
        "$default/GET/v1/requests/*",
        "$default/POST/v1/proxy-tokens",
        "$default/POST/v1/requests",
    ]
    assert not any("slack" in json.dumps(r) for r in statement["Resource"])
    outputs = synthesized.template.to_json()["Outputs"]
    [key] = [k for k in outputs if k == "AgentPolicyArn"]
    assert outputs[key]["Value"] == {
        "Ref": next(iter(synthesized.resources_of_type("AWS::IAM::ManagedPolicy")))
    }
