"""The app is synthesized once per test session: building and synthesizing it costs seconds."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# jsii prints an end-of-life banner for Node 20 when its kernel starts (at the first aws_cdk
# import, just below) unless told not to; the Makefile exports the same variable.
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")

from aws_cdk import App, Stack
from aws_cdk.assertions import Template

from gatehouse import names
from infra import create_app

# What Lambda needs to attach a function to the VPC: its own network interfaces, nothing else.
ENI_ACTIONS = {
    "ec2:CreateNetworkInterface",
    "ec2:DescribeNetworkInterfaces",
    "ec2:DescribeSubnets",
    "ec2:DeleteNetworkInterface",
    "ec2:AssignPrivateIpAddresses",
    "ec2:UnassignPrivateIpAddresses",
}


@dataclass(frozen=True)
class Synthesized:
    app: App
    stack: Stack
    template: Template
    template_path: Path

    @property
    def resources(self) -> dict[str, Any]:
        return self.template.to_json()["Resources"]

    def resources_of_type(self, type_: str) -> dict[str, dict[str, Any]]:
        return {key: value for key, value in self.resources.items() if value["Type"] == type_}

    def role_statements(self, function_name: str) -> list[dict[str, Any]]:
        """Every statement of every policy attached to the role of the function of that name."""
        [function] = [
            value
            for value in self.resources_of_type("AWS::Lambda::Function").values()
            if value["Properties"].get("FunctionName") == function_name
        ]
        role_key = function["Properties"]["Role"]["Fn::GetAtt"][0]
        statements: list[dict[str, Any]] = []
        for policy in self.resources_of_type("AWS::IAM::Policy").values():
            if {"Ref": role_key} in policy["Properties"]["Roles"]:
                statements.extend(policy["Properties"]["PolicyDocument"]["Statement"])
        return statements

    def one(self, type_: str) -> dict[str, Any]:
        found = self.resources_of_type(type_)
        assert len(found) == 1, f"expected one {type_}, found {sorted(found)}"
        return next(iter(found.values()))


def fake_deps_layer(root: Path) -> Path:
    """A stand-in for `make layer`'s output, so the tests see the two-layer shape without pip."""
    package = root / "python" / "fakedep"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    return root


@pytest.fixture(scope="session")
def synthesized(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Synthesized]:
    deps = fake_deps_layer(tmp_path_factory.mktemp("deps-layer"))
    outdir = tmp_path_factory.mktemp("cdk.out")
    app = create_app(context={"bundleDeps": "true", "depsLayerDir": str(deps)}, outdir=str(outdir))
    stack = app.node.find_child(names.STACK_NAME)
    assert isinstance(stack, Stack)
    # Synthesizes the whole app, cdk-nag included: an unacknowledged finding fails here.
    template = Template.from_stack(stack)
    yield Synthesized(
        app=app,
        stack=stack,
        template=template,
        template_path=outdir / f"{stack.artifact_id}.template.json",
    )


@pytest.fixture(scope="session")
def template_json(synthesized: Synthesized) -> dict[str, Any]:
    return json.loads(synthesized.template_path.read_text())


def statement_actions(statement: dict[str, Any]) -> list[str]:
    actions = statement["Action"]
    return [actions] if isinstance(actions, str) else list(actions)


def statement_resources(statement: dict[str, Any]) -> list[Any]:
    resources = statement["Resource"]
    return resources if isinstance(resources, list) else [resources]
