"""The auditor's side: a Glue table over the session log's events, and an Athena workgroup with the
named queries auditors start from (the same SQL runs locally on DuckDB, see gatehouse.audit)."""

from __future__ import annotations

import re

from aws_cdk import Aws, Duration, RemovalPolicy
from aws_cdk import aws_athena as athena
from aws_cdk import aws_glue as glue
from aws_cdk import aws_s3 as s3
from constructs import Construct
from gatehouse import names
from gatehouse.audit.named_queries import NAMED_QUERIES

# The columns of one session-log event (gatehouse.audit.events), in schema order.
EVENT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("schema_version", "int"),
    ("event_id", "string"),
    ("session_id", "string"),
    ("request_id", "string"),
    ("seq", "bigint"),
    ("time", "string"),
    ("principal_arn", "string"),
    ("principal_name", "string"),
    ("connection", "string"),
    ("connection_env", "string"),
    ("target_kind", "string"),
    ("kind", "string"),
    ("statement", "string"),
    ("statement_class", "string"),
    ("decision", "string"),
    ("policy_ids", "array<string>"),
    ("approvers", "array<string>"),
    ("relations", "array<string>"),
    ("outcome", "string"),
    ("row_count", "bigint"),
    ("duration_ms", "double"),
    ("error", "string"),
    ("reason", "string"),
    ("prev_hash", "string"),
    ("hash", "string"),
)

PARTITION_KEY = "dt"
# Partition projection computes the day partitions from this range instead of a crawler or
# MSCK REPAIR: a new day is queryable the moment its first event lands. NOW is evaluated in UTC,
# like the dt= of the keys.
PROJECTION_RANGE = "2025-01-01,NOW"

JSON_SERDE = "org.openx.data.jsonserde.JsonSerDe"

# Query results are copies of audit data: kept long enough to download, then gone.
RESULTS_EXPIRATION = Duration.days(30)


class AuditAnalytics(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        log_bucket: s3.IBucket,
        access_logs: s3.IBucket,
    ) -> None:
        super().__init__(scope, construct_id)
        self.database = glue.CfnDatabase(
            self,
            "Database",
            catalog_id=Aws.ACCOUNT_ID,
            database_input=glue.CfnDatabase.DatabaseInputProperty(
                name=names.GLUE_DATABASE,
                description="Gatehouse session log (events written by gatehouse.audit).",
            ),
        )
        events_location = f"s3://{log_bucket.bucket_name}/{names.EVENTS_PREFIX}"
        self.events_table = glue.CfnTable(
            self,
            "EventsTable",
            catalog_id=Aws.ACCOUNT_ID,
            database_name=names.GLUE_DATABASE,
            table_input=glue.CfnTable.TableInputProperty(
                name=names.EVENTS_TABLE,
                description="One row per session-log event (events/dt=YYYY-MM-DD/session=<id>/<seq>.json).",
                table_type="EXTERNAL_TABLE",
                parameters={
                    "EXTERNAL": "TRUE",
                    "classification": "json",
                    "projection.enabled": "true",
                    f"projection.{PARTITION_KEY}.type": "date",
                    f"projection.{PARTITION_KEY}.format": "yyyy-MM-dd",
                    f"projection.{PARTITION_KEY}.range": PROJECTION_RANGE,
                    f"projection.{PARTITION_KEY}.interval": "1",
                    f"projection.{PARTITION_KEY}.interval.unit": "DAYS",
                    # The session=<id>/ level sits below the projected partition: Athena reads
                    # every object under this location, subfolders included.
                    "storage.location.template": f"{events_location}{PARTITION_KEY}=${{{PARTITION_KEY}}}/",
                },
                partition_keys=[glue.CfnTable.ColumnProperty(name=PARTITION_KEY, type="string")],
                storage_descriptor=glue.CfnTable.StorageDescriptorProperty(
                    location=events_location,
                    input_format="org.apache.hadoop.mapred.TextInputFormat",
                    output_format="org.apache.hadoop.hive.ql.io.HiveIgnoreKeyTextOutputFormat",
                    serde_info=glue.CfnTable.SerdeInfoProperty(serialization_library=JSON_SERDE),
                    columns=[
                        glue.CfnTable.ColumnProperty(name=name, type=type_) for name, type_ in EVENT_COLUMNS
                    ],
                ),
            ),
        )
        self.events_table.add_resource_dependency(self.database)

        self.results_bucket = s3.Bucket(
            self,
            "ResultsBucket",
            bucket_name=names.athena_results_bucket(Aws.ACCOUNT_ID, Aws.REGION),
            encryption=s3.BucketEncryption.S3_MANAGED,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            enforce_ssl=True,
            server_access_logs_bucket=access_logs,
            server_access_logs_prefix="athena-results/",
            lifecycle_rules=[s3.LifecycleRule(expiration=RESULTS_EXPIRATION)],
            removal_policy=RemovalPolicy.RETAIN,
        )
        self.workgroup = athena.CfnWorkGroup(
            self,
            "WorkGroup",
            name=names.ATHENA_WORKGROUP,
            description="Gatehouse auditors: queries over the session log.",
            state="ENABLED",
            work_group_configuration=athena.CfnWorkGroup.WorkGroupConfigurationProperty(
                # Clients cannot send results elsewhere or unencrypted.
                enforce_work_group_configuration=True,
                publish_cloud_watch_metrics_enabled=True,
                engine_version=athena.CfnWorkGroup.EngineVersionProperty(
                    selected_engine_version="Athena engine version 3"
                ),
                result_configuration=athena.CfnWorkGroup.ResultConfigurationProperty(
                    output_location=f"s3://{self.results_bucket.bucket_name}/results/",
                    expected_bucket_owner=Aws.ACCOUNT_ID,
                    encryption_configuration=athena.CfnWorkGroup.EncryptionConfigurationProperty(
                        encryption_option="SSE_S3"
                    ),
                ),
            ),
        )
        self.named_queries: list[athena.CfnNamedQuery] = []
        for query in NAMED_QUERIES:
            named = athena.CfnNamedQuery(
                self,
                # Named after the query, so reordering NAMED_QUERIES replaces nothing.
                "Query" + re.sub(r"[^A-Za-z0-9]", "", query.name.title()),
                name=query.name,
                description=query.description,
                query_string=query.sql,
                database=names.GLUE_DATABASE,
                work_group=names.ATHENA_WORKGROUP,
            )
            # Both are referenced by name, not by Ref: make CloudFormation create them first.
            named.add_resource_dependency(self.workgroup)
            named.add_resource_dependency(self.database)
            self.named_queries.append(named)
