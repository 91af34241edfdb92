"""The audit CLI: choosing the target, parsing arguments (the commands run in tests/integration)."""

from __future__ import annotations

import argparse
import json

import pytest

from gatehouse import names
from gatehouse.audit import cli


def test_a_deployed_stack_is_chosen_when_the_log_bucket_is_set(tmp_path):
    env = {
        names.ENV_LOG_BUCKET: "gatehouse-session-log-1-eu-west-1",
        "AWS_REGION": "eu-west-1",
        cli.ENV_ATHENA_WORKGROUP: "wg",
    }

    target = cli.load_target(tmp_path, env)

    assert target == cli.AuditTarget(
        kind="aws",
        bucket="gatehouse-session-log-1-eu-west-1",
        region="eu-west-1",
        workgroup="wg",
        database=names.GLUE_DATABASE,
    )


def test_a_running_local_stack_wins_over_the_variable_it_sets_itself(tmp_path):
    # The local stack exports GATEHOUSE_LOG_BUCKET for the handler it hosts.
    (tmp_path / ".gatehouse").mkdir()
    (tmp_path / ".gatehouse" / "local.json").write_text('{"aws": "http://127.0.0.1:1", "bucket": "b"}')

    target = cli.load_target(tmp_path, {names.ENV_LOG_BUCKET: "b"})

    assert (target.kind, target.endpoint_url) == ("local", "http://127.0.0.1:1")


def test_the_local_stack_is_read_from_gatehouse_local_json(tmp_path):
    (tmp_path / ".gatehouse").mkdir()
    state = {"aws": "http://127.0.0.1:5123", "region": "us-east-1", "bucket": "log-bucket", "api": "x"}
    (tmp_path / ".gatehouse" / "local.json").write_text(json.dumps(state))

    target = cli.load_target(tmp_path, {})

    assert (target.kind, target.bucket, target.endpoint_url, target.region) == (
        "local",
        "log-bucket",
        "http://127.0.0.1:5123",
        "us-east-1",
    )


def test_without_a_bucket_key_the_local_bucket_follows_the_shared_name(tmp_path):
    (tmp_path / ".gatehouse").mkdir()
    (tmp_path / ".gatehouse" / "local.json").write_text(
        '{"aws": "http://127.0.0.1:5123", "region": "eu-west-1"}'
    )
    assert cli.load_target(tmp_path, {}).bucket == names.session_log_bucket("123456789012", "eu-west-1")


@pytest.mark.parametrize("content", [None, "not json", '{"api": "x"}'])
def test_no_usable_target_is_a_clear_error(tmp_path, content):
    if content is not None:
        (tmp_path / ".gatehouse").mkdir()
        (tmp_path / ".gatehouse" / "local.json").write_text(content)
    with pytest.raises(cli.AuditTargetError):
        cli.load_target(tmp_path, {})


def parser(loader=None):
    root = argparse.ArgumentParser(prog="gatehouse")
    sub = root.add_subparsers(dest="command", required=True)
    if loader is None:
        cli.register(sub)
    else:
        cli.register(sub, loader)
    return root


def test_register_adds_the_audit_commands():
    args = parser().parse_args(
        ["audit", "query", "--named", "denied_by_agent", "--param", "since=2026-11-01"]
    )
    assert (
        args.func is cli.cmd_query and args.named == "denied_by_agent" and args.param == ["since=2026-11-01"]
    )
    assert args.audit_target is cli.load_target
    args = parser().parse_args(["audit", "verify", "--session", "s-1", "--json"])
    assert args.func is cli.cmd_verify and args.session == "s-1" and args.json
    args = parser().parse_args(["audit", "replay", "s-1"])
    assert args.func is cli.cmd_replay and args.session_id == "s-1"


def test_bad_query_arguments_exit_2_before_touching_any_target(capsys):
    def no_target():
        raise AssertionError("the target must not be loaded")

    for argv in (
        ["audit", "query"],
        ["audit", "query", "SELECT 1", "--named", "denied_by_agent"],
        ["audit", "query", "--named", "nope"],
        ["audit", "query", "--named", "activity_on_connection"],
        ["audit", "query", "--named", "denied_by_agent", "--param", "since"],
        ["audit", "query", "SELECT 1", "--param", "a=b"],
    ):
        args = parser(no_target).parse_args(argv)
        assert args.func(args) == cli.EXIT_USAGE, argv
    assert "gatehouse audit:" in capsys.readouterr().err


def test_a_missing_target_exits_2(capsys):
    def missing():
        raise cli.AuditTargetError("no target")

    args = parser(missing).parse_args(["audit", "verify"])
    assert args.func(args) == cli.EXIT_USAGE
    assert "no target" in capsys.readouterr().err


def test_queries_lists_names_and_parameters(capsys):
    args = parser().parse_args(["audit", "queries"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "activity_on_connection  --param connection=... [--param since=...] [--param until=...]" in out
    args = parser().parse_args(["audit", "queries", "--json"])
    args.func(args)
    listing = json.loads(capsys.readouterr().out)
    assert {q["name"] for q in listing} >= {"denied_by_agent", "sessions_touching_relation"}
