"""The security-critical properties of the whole synthesized stack, in one place.

Each test quantifies over the template (every role, route, table, function), so a resource added
later is held to the same rule without a test of its own. IAM is read the way IAM reads it: the
template's ARNs are rendered for one account and region, and an Allow statement grants an action
on a resource when its action and resource patterns (`*`, `?`) match them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

from aws_cdk import App, Stack
from aws_cdk.assertions import Template

from gatehouse import names
from infra import cdk_json_context
from infra.audit_log import AccessLogsBucket, SessionLogBucket

if TYPE_CHECKING:
    from tests.infra.conftest import Synthesized

PARTITION, REGION, ACCOUNT = "aws", "eu-west-1", "123456789012"
PSEUDO = {
    "AWS::Partition": PARTITION,
    "AWS::Region": REGION,
    "AWS::AccountId": ACCOUNT,
    "AWS::URLSuffix": "amazonaws.com",
}
# Secrets Manager appends a hyphen and six random characters to a secret's name in its ARN.
SECRET_SUFFIX = "-AbCdEf"
# Only this AWS-managed policy may be attached, and it grants CloudWatch Logs writes only.
LAMBDA_BASIC_EXECUTION = "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"

# What would erase the session log, or let someone else erase it: deleting objects or versions,
# bypassing or removing the lock, expiring objects by lifecycle, rewriting the bucket's policy.
ERASING_ACTIONS = (
    "s3:DeleteObject",
    "s3:DeleteObjectVersion",
    "s3:DeleteObjectTagging",
    "s3:DeleteObjectVersionTagging",
    "s3:DeleteBucket",
    "s3:DeleteBucketPolicy",
    "s3:BypassGovernanceRetention",
    "s3:PutObjectLockConfiguration",
    "s3:PutBucketObjectLockConfiguration",
    "s3:PutBucketPolicy",
    "s3:PutBucketVersioning",
    "s3:PutBucketAcl",
    "s3:PutBucketOwnershipControls",
    "s3:PutLifecycleConfiguration",
    "s3:PutReplicationConfiguration",
)


@dataclass(frozen=True)
class Grant:
    """One Allow statement of a role, its patterns rendered to text."""

    role: str
    actions: tuple[str, ...]
    resources: tuple[str, ...]

    def allows(self, action: str, resource: str) -> bool:
        return any(_matches(p, action, ignore_case=True) for p in self.actions) and any(
            _matches(p, resource) for p in self.resources
        )

    def reaches(self, service: str, resource: str) -> bool:
        """Some action of `service` ("s3") on `resource`."""
        return any(
            p == "*" or _matches(p.partition(":")[0], service, ignore_case=True) for p in self.actions
        ) and any(_matches(p, resource) for p in self.resources)


@cache
def _pattern(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(regex, re.IGNORECASE if ignore_case else 0)


def _matches(pattern: str, value: str, *, ignore_case: bool = False) -> bool:
    return _pattern(pattern, ignore_case).fullmatch(value) is not None


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


class Rendered:
    """The template's intrinsic functions, evaluated for one account and region."""

    def __init__(self, synthesized: Synthesized) -> None:
        self.resources = synthesized.resources

    def __call__(self, value: Any) -> str:
        if isinstance(value, str):
            return value
        if "Ref" in value:
            return self._ref(value["Ref"])
        if "Fn::GetAtt" in value:
            key, attribute = value["Fn::GetAtt"]
            return self._arn(key) if attribute == "Arn" else f"<{key}.{attribute}>"
        if "Fn::Join" in value:
            separator, parts = value["Fn::Join"]
            return separator.join(self(part) for part in parts)
        if "Fn::Sub" in value and isinstance(value["Fn::Sub"], str):
            return re.sub(r"\$\{([^}]+)\}", lambda m: self._ref(m.group(1)), value["Fn::Sub"])
        return f"<{value}>"

    def _ref(self, key: str) -> str:
        if key in PSEUDO:
            return PSEUDO[key]
        resource = self.resources.get(key, {})
        props = resource.get("Properties", {})
        match resource.get("Type"):
            case "AWS::SecretsManager::Secret":
                return secret_arn(self(props["Name"]))
            case "AWS::S3::Bucket":
                return self(props["BucketName"]) if "BucketName" in props else f"bucket-{key.lower()}"
            case "AWS::StepFunctions::StateMachine":
                name = self(props["StateMachineName"])
                return f"arn:{PARTITION}:states:{REGION}:{ACCOUNT}:stateMachine:{name}"
        return f"<{key}>"

    def _arn(self, key: str) -> str:
        resource = self.resources.get(key, {})
        props = resource.get("Properties", {})
        match resource.get("Type"):
            case "AWS::S3::Bucket":
                return f"arn:{PARTITION}:s3:::{self._ref(key)}"
            case "AWS::DynamoDB::Table":
                return f"arn:{PARTITION}:dynamodb:{REGION}:{ACCOUNT}:table/{self(props['TableName'])}"
            case "AWS::Lambda::Function":
                name = self(props["FunctionName"]) if "FunctionName" in props else key
                return f"arn:{PARTITION}:lambda:{REGION}:{ACCOUNT}:function:{name}"
        return f"<{key}.Arn>"


def secret_arn(name: str) -> str:
    return f"arn:{PARTITION}:secretsmanager:{REGION}:{ACCOUNT}:secret:{name}{SECRET_SUFFIX}"


def bucket_arns(bucket_arn: str) -> list[str]:
    """The bucket and objects under each of its prefixes: what a grant could reach."""
    return [
        bucket_arn,
        f"{bucket_arn}/{names.EVENTS_PREFIX}dt=2026-12-01/session=s/00000000.json",
        f"{bucket_arn}/{names.MANIFESTS_PREFIX}s.json",
    ]


def _grants(synthesized: Synthesized) -> list[Grant]:
    render = Rendered(synthesized)
    documents: list[tuple[str, dict[str, Any]]] = []
    for policy in synthesized.resources_of_type("AWS::IAM::Policy").values():
        for role in policy["Properties"].get("Roles", []):
            documents.append((role["Ref"], policy["Properties"]["PolicyDocument"]))
    for key, role in synthesized.resources_of_type("AWS::IAM::Role").items():
        for inline in role["Properties"].get("Policies", []):
            documents.append((key, inline["PolicyDocument"]))
    grants = []
    for role, document in documents:
        for statement in document["Statement"]:
            if statement["Effect"] != "Allow":
                continue
            # NotAction / NotResource in an Allow grant everything else: never in this stack.
            assert "NotAction" not in statement and "NotResource" not in statement, (role, statement)
            grants.append(
                Grant(
                    role=role,
                    actions=tuple(_as_list(statement["Action"])),
                    resources=tuple(render(r) for r in _as_list(statement["Resource"])),
                )
            )
    return grants


def _roles(synthesized: Synthesized) -> set[str]:
    return set(synthesized.resources_of_type("AWS::IAM::Role"))


def _may(grants: list[Grant], role: str, action: str, resource: str) -> bool:
    return any(g.role == role and g.allows(action, resource) for g in grants)


def _function_role(synthesized: Synthesized, function_name: str) -> str:
    [role] = [
        f["Properties"]["Role"]["Fn::GetAtt"][0]
        for f in synthesized.resources_of_type("AWS::Lambda::Function").values()
        if f["Properties"].get("FunctionName") == function_name
    ]
    return str(role)


def _session_log_bucket(synthesized: Synthesized) -> tuple[str, dict[str, Any]]:
    [(key, bucket)] = [
        (key, bucket)
        for key, bucket in synthesized.resources_of_type("AWS::S3::Bucket").items()
        if bucket["Properties"].get("ObjectLockEnabled")
    ]
    return key, bucket


def _task_role(synthesized: Synthesized) -> str:
    [definition] = synthesized.resources_of_type("AWS::ECS::TaskDefinition").values()
    return str(definition["Properties"]["TaskRoleArn"]["Fn::GetAtt"][0])


# -- the session log ---------------------------------------------------------------------------


def test_the_session_log_is_locked_in_compliance_mode_for_the_configured_retention(synthesized: Synthesized):
    _, bucket = _session_log_bucket(synthesized)
    assert bucket["Properties"]["ObjectLockConfiguration"] == {
        "ObjectLockEnabled": "Enabled",
        "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": names.DEFAULT_LOG_RETENTION_DAYS}},
    }
    assert bucket["DeletionPolicy"] == "Retain"

    # and another retention is the one the bucket locks for, in the same mode
    probe = Stack(App(context=cdk_json_context()), "Probe")  # cdk.json's feature flags
    logs = AccessLogsBucket(probe, "AccessLogs", retention_days=30)
    SessionLogBucket(probe, "SessionLog", retention_days=30, access_logs=logs.bucket)
    [locked] = [
        b
        for b in Template.from_stack(probe).find_resources("AWS::S3::Bucket").values()
        if b["Properties"].get("ObjectLockEnabled")
    ]
    assert locked["Properties"]["ObjectLockConfiguration"]["Rule"] == {
        "DefaultRetention": {"Mode": "COMPLIANCE", "Days": 30}
    }


def test_the_session_log_refuses_every_request_that_is_not_over_tls(synthesized: Synthesized):
    render = Rendered(synthesized)
    key, _ = _session_log_bucket(synthesized)
    [policy] = [
        p["Properties"]["PolicyDocument"]
        for p in synthesized.resources_of_type("AWS::S3::BucketPolicy").values()
        if p["Properties"]["Bucket"] == {"Ref": key}
    ]
    bucket_arn = render({"Fn::GetAtt": [key, "Arn"]})

    denies = [
        s
        for s in policy["Statement"]
        if s["Effect"] == "Deny"
        and s.get("Principal") in ({"AWS": "*"}, "*")
        and s.get("Condition") == {"Bool": {"aws:SecureTransport": "false"}}
    ]
    assert denies, policy
    for action in ("s3:GetObject", "s3:PutObject", "s3:ListBucket", "s3:DeleteObjectVersion"):
        for resource in bucket_arns(bucket_arn):
            assert any(
                Grant(
                    "*", tuple(_as_list(s["Action"])), tuple(render(r) for r in _as_list(s["Resource"]))
                ).allows(action, resource)
                for s in denies
            ), (action, resource)


def test_no_role_may_delete_unlock_or_reconfigure_the_session_log(synthesized: Synthesized):
    grants = _grants(synthesized)
    key, _ = _session_log_bucket(synthesized)
    bucket_arn = Rendered(synthesized)({"Fn::GetAtt": [key, "Arn"]})

    found = [
        (grant.role, action, resource)
        for grant in grants
        for action in ERASING_ACTIONS
        for resource in bucket_arns(bucket_arn)
        if grant.allows(action, resource)
    ]
    assert found == []
    # Managed policies are not in the template: only the one that writes CloudWatch Logs is allowed.
    render = Rendered(synthesized)
    managed = {
        render(arn)
        for role in synthesized.resources_of_type("AWS::IAM::Role").values()
        for arn in role["Properties"].get("ManagedPolicyArns", [])
    }
    assert managed <= {LAMBDA_BASIC_EXECUTION}
    # and the bucket's own policy allows nobody anything (its one statement is the TLS deny)
    [policy] = [
        p["Properties"]["PolicyDocument"]
        for p in synthesized.resources_of_type("AWS::S3::BucketPolicy").values()
        if p["Properties"]["Bucket"] == {"Ref": key}
    ]
    assert [s for s in policy["Statement"] if s["Effect"] == "Allow"] == []


def test_writers_of_the_session_log_cannot_lock_their_objects_in_a_weaker_mode(synthesized: Synthesized):
    grants = _grants(synthesized)
    key, _ = _session_log_bucket(synthesized)
    bucket_arn = Rendered(synthesized)({"Fn::GetAtt": [key, "Arn"]})
    writers = {g.role for g in grants if g.allows("s3:PutObject", bucket_arns(bucket_arn)[1])}

    assert writers  # the API, the approvals steps, Slack and the proxy record sessions
    for role in writers:
        for policy in synthesized.resources_of_type("AWS::IAM::Policy").values():
            if {"Ref": role} not in policy["Properties"]["Roles"]:
                continue
            for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
                if {"s3:PutObject", "s3:PutObjectRetention"} & set(_as_list(statement["Action"])):
                    assert statement["Condition"] == {
                        "StringEqualsIfExists": {"s3:object-lock-mode": "COMPLIANCE"}
                    }, (role, statement)


# -- the API -----------------------------------------------------------------------------------


def test_every_route_but_slack_interactions_requires_iam_authorization(synthesized: Synthesized):
    routes = {
        r["Properties"]["RouteKey"]: r["Properties"]
        for r in synthesized.resources_of_type("AWS::ApiGatewayV2::Route").values()
    }

    open_routes = {key for key, props in routes.items() if props.get("AuthorizationType") != "AWS_IAM"}
    # Slack cannot sign with SigV4: that route verifies Slack's own signature (gatehouse.slack).
    assert open_routes == {"POST /slack/interactions"}
    assert "$default" not in routes  # no catch-all route for a request no route names


# -- secrets -----------------------------------------------------------------------------------


def test_only_the_slack_function_may_read_the_slack_signing_secret(synthesized: Synthesized):
    grants = _grants(synthesized)
    signing = secret_arn(names.SLACK_SIGNING_SECRET)

    readers = {
        role for role in _roles(synthesized) if _may(grants, role, "secretsmanager:GetSecretValue", signing)
    }

    assert readers == {_function_role(synthesized, names.SLACK_FUNCTION)}


def test_the_proxy_task_role_reaches_its_secrets_and_the_session_log_only(synthesized: Synthesized):
    grants = _grants(synthesized)
    role = _task_role(synthesized)
    render = Rendered(synthesized)
    secrets = {
        render(s["Properties"]["Name"])
        for s in synthesized.resources_of_type("AWS::SecretsManager::Secret").values()
    } | {
        names.SLACK_SECRET,
        names.SLACK_SIGNING_SECRET,
        names.connection_secret_name("demo-prod"),
    }

    readable = {
        name for name in secrets if _may(grants, role, "secretsmanager:GetSecretValue", secret_arn(name))
    }

    assert readable == {
        names.MASKING_KEY_SECRET,
        names.PROXY_TOKEN_KEY_SECRET,
        names.PROXY_TLS_SECRET,
        names.connection_secret_name("demo-prod"),
    }
    reached = {
        key
        for key in synthesized.resources_of_type("AWS::S3::Bucket")
        for resource in bucket_arns(render({"Fn::GetAtt": [key, "Arn"]}))
        if any(g.role == role and g.reaches("s3", resource) for g in grants)
    }
    assert reached == {_session_log_bucket(synthesized)[0]}
    # Secrets and the bucket are named, never "*" (a secret added to the account later is not read).
    for grant in grants:
        if grant.role == role and any(a.split(":")[0] in {"s3", "secretsmanager"} for a in grant.actions):
            assert "*" not in grant.resources, grant


# -- tables and functions ----------------------------------------------------------------------


def test_every_table_has_point_in_time_recovery(synthesized: Synthesized):
    tables = synthesized.resources_of_type("AWS::DynamoDB::Table")

    assert len(tables) >= 5
    for key, table in tables.items():
        assert table["Properties"].get("PointInTimeRecoverySpecification") == {
            "PointInTimeRecoveryEnabled": True
        }, key


def test_every_function_and_layer_runs_on_arm64(synthesized: Synthesized):
    functions = synthesized.resources_of_type("AWS::Lambda::Function")
    layers = synthesized.resources_of_type("AWS::Lambda::LayerVersion")

    assert functions and layers
    # CDK's own custom-resource handlers included: the template names no other architecture.
    assert {key: f["Properties"].get("Architectures") for key, f in functions.items()} == {
        key: ["arm64"] for key in functions
    }
    for key, layer in layers.items():
        assert layer["Properties"]["CompatibleArchitectures"] == ["arm64"], key
