"""The session log bucket: write-once for the retention period, private, TLS-only, access-logged."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aws_cdk.assertions import Match

from gatehouse import names

if TYPE_CHECKING:
    from tests.infra.conftest import Synthesized


def _session_log_bucket(synthesized: Synthesized) -> tuple[str, dict]:
    buckets = synthesized.resources_of_type("AWS::S3::Bucket")
    [(key, bucket)] = [
        (key, bucket) for key, bucket in buckets.items() if bucket["Properties"].get("ObjectLockEnabled")
    ]
    return key, bucket


def test_session_log_is_locked_in_compliance_mode_for_the_default_retention(synthesized: Synthesized):
    _, bucket = _session_log_bucket(synthesized)
    props = bucket["Properties"]

    assert props["ObjectLockEnabled"] is True
    assert props["ObjectLockConfiguration"] == {
        "ObjectLockEnabled": "Enabled",
        "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": names.DEFAULT_LOG_RETENTION_DAYS}},
    }
    assert props["VersioningConfiguration"] == {"Status": "Enabled"}


def test_session_log_is_named_per_account_and_region_and_outlives_the_stack(synthesized: Synthesized):
    _, bucket = _session_log_bucket(synthesized)

    assert bucket["Properties"]["BucketName"] == {
        "Fn::Join": ["", ["gatehouse-session-log-", {"Ref": "AWS::AccountId"}, "-", {"Ref": "AWS::Region"}]]
    }
    assert bucket["DeletionPolicy"] == "Retain"
    assert bucket["UpdateReplacePolicy"] == "Retain"


def test_session_log_is_encrypted_private_and_access_logged(synthesized: Synthesized):
    _, bucket = _session_log_bucket(synthesized)
    props = bucket["Properties"]

    assert props["BucketEncryption"] == {
        "ServerSideEncryptionConfiguration": [{"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
    }
    assert props["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    destination = props["LoggingConfiguration"]["DestinationBucketName"]["Ref"]
    assert synthesized.resources[destination]["Type"] == "AWS::S3::Bucket"
    assert destination != _session_log_bucket(synthesized)[0]


def test_every_bucket_refuses_requests_without_tls(synthesized: Synthesized):
    buckets = synthesized.resources_of_type("AWS::S3::Bucket")
    policies = synthesized.resources_of_type("AWS::S3::BucketPolicy")

    secured = {
        policy["Properties"]["Bucket"]["Ref"]
        for policy in policies.values()
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
        if statement["Effect"] == "Deny"
        and statement["Action"] == "s3:*"
        and statement["Principal"] == {"AWS": "*"}
        and statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    }
    assert secured == set(buckets)


def test_session_log_bucket_name_is_an_output(synthesized: Synthesized):
    key, _ = _session_log_bucket(synthesized)

    synthesized.template.has_output("SessionLogBucketName", {"Value": {"Ref": key}})
    synthesized.template.has_output("ApiUrl", {"Value": Match.any_value()})
