"""The session log bucket: write-once (Object Lock, COMPLIANCE mode) and readable only over TLS.

Encryption is SSE-S3, on purpose. A customer-managed KMS key would add a second way to erase the
log: whoever may schedule the key's deletion can make every locked object unreadable, which is the
very thing COMPLIANCE mode exists to prevent (not even the root user can shorten it). SSE-S3 keeps
the objects readable for their whole retention and needs no key grants for the writer or the
auditors. Access stays controlled by IAM and this bucket's policy, and every request to the bucket
lands in the server access logs.
"""

from __future__ import annotations

from aws_cdk import Aws, Duration, RemovalPolicy
from aws_cdk import aws_s3 as s3
from constructs import Construct

from gatehouse import names


class AccessLogsBucket(Construct):
    """Server access logs of the session log and Athena results buckets.

    It logs nothing itself (that would log its own deliveries); cdk-nag recognises a bucket whose
    policy admits logging.s3.amazonaws.com as a log destination and does not ask for it."""

    def __init__(self, scope: Construct, construct_id: str, *, retention_days: int) -> None:
        super().__init__(scope, construct_id)
        self.bucket = s3.Bucket(
            self,
            "Bucket",
            # S3 server access logging delivers only to buckets encrypted with SSE-S3.
            encryption=s3.BucketEncryption.S3_MANAGED,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            enforce_ssl=True,
            # Kept as long as the session log they describe, then expired.
            lifecycle_rules=[s3.LifecycleRule(expiration=Duration.days(retention_days))],
            removal_policy=RemovalPolicy.RETAIN,
        )


class SessionLogBucket(Construct):
    """`events/` and `manifests/` of every session, locked for `retention_days` from each write."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        retention_days: int,
        access_logs: s3.IBucket,
    ) -> None:
        super().__init__(scope, construct_id)
        self.bucket = s3.Bucket(
            self,
            "Bucket",
            bucket_name=names.session_log_bucket(Aws.ACCOUNT_ID, Aws.REGION),
            object_lock_enabled=True,
            object_lock_default_retention=s3.ObjectLockRetention.compliance(Duration.days(retention_days)),
            versioned=True,
            encryption=s3.BucketEncryption.S3_MANAGED,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            enforce_ssl=True,
            server_access_logs_bucket=access_logs,
            server_access_logs_prefix="session-log/",
            removal_policy=RemovalPolicy.RETAIN,
        )
