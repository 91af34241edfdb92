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
from gatehouse.audit import events
from gatehouse.audit.named_queries import NAMED_QUERIES, NamedQuery

# The first day Athena projects partitions from (the range ends at NOW, in UTC like `dt`).
FIRST_DAY = "2025-01-01"

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
        # Columns, SerDe and projection come from the event schema itself, so the table and the
        # writer cannot drift. The session=<id>/ level sits below the projected `dt` partition:
        # Athena reads every object under a partition's location, subfolders included.
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
                    **events.athena_table_parameters(log_bucket.bucket_name, first_day=FIRST_DAY),
                },
                partition_keys=[
                    glue.CfnTable.ColumnProperty(
                        name=events.PARTITION_COLUMN.name, type=events.PARTITION_COLUMN.glue_type
                    )
                ],
                storage_descriptor=glue.CfnTable.StorageDescriptorProperty(
                    location=events_location,
                    input_format=events.INPUT_FORMAT,
                    output_format=events.OUTPUT_FORMAT,
                    serde_info=glue.CfnTable.SerdeInfoProperty(serialization_library=events.JSON_SERDE),
                    columns=[
                        glue.CfnTable.ColumnProperty(name=column.name, type=column.glue_type)
                        for column in events.COLUMNS
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
                description=named_query_description(query),
                # Athena stores plain SQL: the parameters hold their example values, for the
                # auditor to edit before running (`gatehouse audit query` renders them instead).
                query_string=query.example_sql(),
                database=names.GLUE_DATABASE,
                work_group=names.ATHENA_WORKGROUP,
            )
            # Both are referenced by name, not by Ref: make CloudFormation create them first.
            named.add_resource_dependency(self.workgroup)
            named.add_resource_dependency(self.database)
            self.named_queries.append(named)


# AWS::Athena::NamedQuery Description is at most 1024 characters.
_DESCRIPTION_LIMIT = 1024


def named_query_description(query: NamedQuery) -> str:
    """The query's description and, when it has parameters, which example values to replace."""
    text = query.description
    if query.params:
        values = "; ".join(f"{p.name}: {p.description}, e.g. {p.example or p.default}" for p in query.params)
        text = f"{text} Example values to edit: {values}."
    if len(text) > _DESCRIPTION_LIMIT:
        text = text[: _DESCRIPTION_LIMIT - 3] + "..."
    return text
