"""cdk-nag (AwsSolutions) and cfn-lint over the synthesized stack."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from aws_cdk import Validations
from cdk_nag import AwsSolutionsChecks

import infra.nag
from infra import create_app

if TYPE_CHECKING:
    from tests.infra.conftest import Synthesized

# CDK adds DependsOn on the role next to the GetAtt that already implies it; harmless.
ACCEPTED_CFN_LINT_WARNINGS = {"W3005"}


class _RecordingValidations:
    """Stands in for aws_cdk.Validations: records acknowledgments instead of applying them."""

    recorded: list[tuple[str, str, str]] = []

    def __init__(self, construct: Any) -> None:
        self._path = construct.node.path

    @classmethod
    def of(cls, construct: Any) -> _RecordingValidations:
        return cls(construct)

    def acknowledge(self, *rules: Any) -> None:
        self.recorded.extend((self._path, rule.id, rule.reason) for rule in rules)


@pytest.fixture(scope="session")
def unacknowledged(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Any], list[tuple[str, str, str]]]:
    """cdk-nag's findings on the same app built with no acknowledgment, and the acknowledgments."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(infra.nag, "Validations", _RecordingValidations)
        patch.setattr(_RecordingValidations, "recorded", [])
        app = create_app(context={"bundleDeps": "false"}, outdir=str(tmp_path_factory.mktemp("bare")))
        recorded = list(_RecordingValidations.recorded)
    report = AwsSolutionsChecks().validate_scope(app)
    return list(report.violations), recorded


def test_cdk_nag_finds_nothing_unacknowledged(synthesized: Synthesized):
    report = AwsSolutionsChecks(verbose=True).validate_scope(synthesized.app)

    assert [(v.rule_name, v.severity, v.description) for v in report.violations] == []
    assert report.success


def test_every_acknowledgment_has_a_reason_and_a_finding(unacknowledged):
    findings, acknowledgments = unacknowledged

    assert acknowledgments, "expected acknowledgments (X-Ray's Resource::* at least)"
    for path, rule_id, reason in acknowledgments:
        assert len(reason) >= 40, f"{rule_id} on {path}: write down why"
        covered = [
            finding
            for finding in findings
            if finding.rule_name == rule_id
            and any(
                resource.construct_path == path or resource.construct_path.startswith(path + "/")
                for resource in finding.violating_resources
            )
        ]
        assert covered, f"{rule_id} on {path} acknowledges nothing: remove it"


def test_every_finding_is_acknowledged_where_it_occurs(unacknowledged):
    findings, acknowledgments = unacknowledged

    for finding in findings:
        for resource in finding.violating_resources:
            assert any(
                rule_id == finding.rule_name
                and (resource.construct_path == path or resource.construct_path.startswith(path + "/"))
                for path, rule_id, _ in acknowledgments
            ), f"{finding.rule_name} on {resource.construct_path}"


def test_acknowledgments_reach_the_cloud_assembly_metadata(synthesized: Synthesized):
    key = Validations.ACKNOWLEDGED_RULES_METADATA_KEY
    recorded = [
        entry.data
        for construct in synthesized.app.node.find_all()
        for entry in construct.node.metadata
        if entry.type == key
    ]

    assert recorded
    assert all(reason.strip() for data in recorded for reason in data.values())


def test_cfn_lint_finds_no_errors(synthesized: Synthesized):
    cfn_lint = Path(sys.executable).with_name("cfn-lint")
    result = subprocess.run(
        [str(cfn_lint), "--format", "json", "--", str(synthesized.template_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    matches = json.loads(result.stdout or "[]")

    problems = [
        (m["Level"], m["Rule"]["Id"], m["Message"])
        for m in matches
        if m["Level"] != "Informational" and m["Rule"]["Id"] not in ACCEPTED_CFN_LINT_WARNINGS
    ]
    assert problems == [], result.stderr
