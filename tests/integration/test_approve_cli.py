"""`gatehouse approve` and `gatehouse requests list` against the whole local stack.

`approve` sends the signed Slack interaction a click would send, through the API's
`/slack/interactions`, and prints the ephemeral reply the approver would see in Slack.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from gatehouse.cli import main

EXIT_OK, EXIT_ERROR, EXIT_REFUSED = 0, 1, 2


@pytest.fixture
def in_stack_dir(local_stack: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # The commands read .gatehouse/local.json from the working directory, as a user's shell would.
    (tmp_path / ".gatehouse").symlink_to(local_stack.stack.state_dir.resolve(), target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def submit_write(local_stack: Any, customer_id: int, note: str) -> str:
    answer = local_stack.client("analyst").submit(
        "demo-prod", f"UPDATE customers SET notes = '{note}' WHERE id = {customer_id}", reason="cli test"
    )
    assert answer.status_code == 202, answer.body
    return str(answer.body["request_id"])


def status_of(local_stack: Any, request_id: str, until: str | None = None, timeout_s: float = 30) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        status = str(local_stack.client("analyst").get_request(request_id).body.get("status"))
        if until is None or status == until or time.monotonic() >= deadline:
            return status
        time.sleep(0.2)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_approve_from_the_shell_refuses_the_owner_then_runs_the_command_for_alice(
    local_stack: Any, in_stack_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    request_id = submit_write(local_stack, 4, "approved from the shell")

    # When the agent's owner tries to approve, the reply says no and the exit status is not 0
    code, out, _ = run(capsys, "approve", request_id, "--as", "U_BOB")
    assert code == EXIT_REFUSED, out
    assert "may not approve" in out
    assert status_of(local_stack, request_id) == "pending_approval"

    # When U_ALICE approves, she is told so, and the command runs
    code, out, _ = run(capsys, "approve", request_id, "--as", "U_ALICE")
    assert code == EXIT_OK, out
    assert "Gatehouse replied (only U_ALICE sees this)" in out
    assert status_of(local_stack, request_id, until="executed") == "executed"

    # And a second vote on a decided request is refused
    code, out, _ = run(capsys, "approve", request_id, "--as", "U_ALICE")
    assert code == EXIT_REFUSED, out


def test_deny_from_the_shell_carries_the_reason_to_the_agent(
    local_stack: Any, in_stack_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    request_id = submit_write(local_stack, 5, "denied from the shell")

    code, out, _ = run(capsys, "approve", request_id, "--as", "U_ALICE", "--deny", "--reason", "wrong table")
    assert code == EXIT_OK, out
    assert status_of(local_stack, request_id, until="denied") == "denied"
    body = local_stack.client("analyst").get_request(request_id).body
    assert body["decided_reason"] == "wrong table"


def test_deny_without_a_reason_is_refused_before_anything_is_sent(
    local_stack: Any, in_stack_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    request_id = submit_write(local_stack, 6, "no reason given")
    code, _, err = run(capsys, "approve", request_id, "--as", "U_ALICE", "--deny")
    assert code == EXIT_ERROR
    assert "--reason" in err
    assert status_of(local_stack, request_id) == "pending_approval"


def test_approving_an_unknown_request_says_so(
    local_stack: Any, in_stack_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "approve", "req-does-not-exist", "--as", "U_ALICE", "--json")
    assert code != EXIT_OK
    shown = json.loads(out)
    assert "req-does-not-exist" in (shown["reply"] or shown["error"] or "")


def test_requests_list_shows_the_callers_pending_requests(
    local_stack: Any, in_stack_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    waiting = submit_write(local_stack, 7, "listed while pending")

    code, out, _ = run(capsys, "requests", "list", "--pending", "--json", "--as", "analyst")
    assert code == EXIT_OK, out
    listed = {r["request_id"]: r for r in json.loads(out)["requests"]}
    assert listed[waiting]["status"] == "pending_approval"
    assert all(r["status"] == "pending_approval" for r in listed.values())

    code, out, _ = run(capsys, "requests", "list", "--as", "analyst")
    assert code == EXIT_OK
    assert waiting in out and "pending_approval" in out
