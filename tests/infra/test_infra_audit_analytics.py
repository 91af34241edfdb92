"""The auditor's side: Glue table over events/ with day partitions projected, Athena workgroup."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gatehouse import names
from gatehouse.audit import events
from gatehouse.audit.named_queries import NAMED_QUERIES

if TYPE_CHECKING:
    from tests.infra.conftest import Synthesized


def _bucket_key(synthesized: Synthesized) -> str:
    [key] = [
        key
        for key, bucket in synthesized.resources_of_type("AWS::S3::Bucket").items()
        if bucket["Properties"].get("ObjectLockEnabled")
    ]
    return key


def test_events_table_reads_json_under_events_with_day_partitions_projected(synthesized: Synthesized):
    table = synthesized.one("AWS::Glue::Table")["Properties"]
    table_input = table["TableInput"]
    params = table_input["Parameters"]
    bucket = {"Ref": _bucket_key(synthesized)}

    assert table["DatabaseName"] == names.GLUE_DATABASE
    assert table_input["Name"] == names.EVENTS_TABLE
    assert table_input["TableType"] == "EXTERNAL_TABLE"
    assert table_input["PartitionKeys"] == [{"Name": "dt", "Type": "string"}]
    assert table_input["StorageDescriptor"]["Location"] == {"Fn::Join": ["", ["s3://", bucket, "/events/"]]}
    assert table_input["StorageDescriptor"]["SerdeInfo"] == {
        "SerializationLibrary": "org.openx.data.jsonserde.JsonSerDe"
    }
    assert params["projection.enabled"] == "true"
    assert params["projection.dt.type"] == "date"
    assert params["projection.dt.format"] == "yyyy-MM-dd"
    assert params["projection.dt.range"].endswith(",NOW")
    assert params["storage.location.template"] == {"Fn::Join": ["", ["s3://", bucket, "/events/dt=${dt}/"]]}


# The event schema v1 as auditors rely on it (gatehouse.audit.events documents the same table).
EXPECTED_COLUMNS = {
    "schema_version": "int",
    "event_id": "string",
    "session_id": "string",
    "request_id": "string",
    "seq": "bigint",
    "time": "string",
    "principal_arn": "string",
    "principal_name": "string",
    "connection": "string",
    "connection_env": "string",
    "target_kind": "string",
    "kind": "string",
    "statement": "string",
    "statement_class": "string",
    "decision": "string",
    "policy_ids": "array<string>",
    "approvers": "array<string>",
    "relations": "array<string>",
    "outcome": "string",
    "row_count": "bigint",
    "duration_ms": "double",
    "error": "string",
    "reason": "string",
    "prev_hash": "string",
    "hash": "string",
}


def test_events_table_columns_follow_the_event_schema(synthesized: Synthesized):
    columns = synthesized.one("AWS::Glue::Table")["Properties"]["TableInput"]["StorageDescriptor"]["Columns"]

    assert {column["Name"]: column["Type"] for column in columns} == EXPECTED_COLUMNS
    # In the order of the keys of every stored event.
    assert [column["Name"] for column in columns] == list(events.FIELD_NAMES)


def test_workgroup_enforces_encrypted_results_in_their_own_bucket(synthesized: Synthesized):
    workgroup = synthesized.one("AWS::Athena::WorkGroup")["Properties"]
    config = workgroup["WorkGroupConfiguration"]
    results = config["ResultConfiguration"]
    [results_bucket] = [
        key
        for key, bucket in synthesized.resources_of_type("AWS::S3::Bucket").items()
        if "athena-results" in str(bucket["Properties"].get("BucketName"))
    ]

    assert workgroup["Name"] == names.ATHENA_WORKGROUP
    assert config["EnforceWorkGroupConfiguration"] is True
    assert results["EncryptionConfiguration"] == {"EncryptionOption": "SSE_S3"}
    assert results["OutputLocation"] == {"Fn::Join": ["", ["s3://", {"Ref": results_bucket}, "/results/"]]}
    assert results_bucket != _bucket_key(synthesized)
    bucket = synthesized.resources[results_bucket]["Properties"]
    assert bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"][0][
        "ServerSideEncryptionByDefault"
    ] == {"SSEAlgorithm": "AES256"}
    assert all(bucket["PublicAccessBlockConfiguration"].values())


def test_every_named_query_is_in_the_workgroup_and_database(synthesized: Synthesized):
    queries = synthesized.resources_of_type("AWS::Athena::NamedQuery")
    workgroup_key = next(iter(synthesized.resources_of_type("AWS::Athena::WorkGroup")))

    assert len(queries) == len(NAMED_QUERIES)
    assert sorted(q["Properties"]["Name"] for q in queries.values()) == sorted(q.name for q in NAMED_QUERIES)
    for query in queries.values():
        assert query["Properties"]["WorkGroup"] == names.ATHENA_WORKGROUP
        assert query["Properties"]["Database"] == names.GLUE_DATABASE
        assert workgroup_key in query["DependsOn"]


def test_named_queries_are_runnable_sql_with_their_example_values(synthesized: Synthesized):
    stored = {
        q["Properties"]["Name"]: q["Properties"]
        for q in synthesized.resources_of_type("AWS::Athena::NamedQuery").values()
    }

    for query in NAMED_QUERIES:
        props = stored[query.name]
        assert props["QueryString"] == query.example_sql()
        assert names.EVENTS_TABLE in props["QueryString"]
        assert props["Description"].startswith(query.description)
        assert len(props["Description"]) <= 1024
        for param in query.params:
            assert param.name in props["Description"]
