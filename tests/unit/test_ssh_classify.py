"""The SSH classifier: a corpus of read-only lines, of every evasion the issue names, and of bad input.

A line is "read" only if every command in it is an allowlisted read-only program; each evasion
hides a write (or something the parser cannot follow) inside a line that starts like a read.
"""

from __future__ import annotations

import pydantic
import pytest

from gatehouse.models import Connection
from gatehouse.targets.kinds import Classified
from gatehouse.targets.ssh import SshCommand, SshRefusedError, classify
from gatehouse.targets.ssh_classify import MAX_COMMAND_CHARS, classify_command

SSH = Connection(
    name="demo-ssh",
    kind="ssh",
    host="127.0.0.1",
    port=22,
    database="",
    secret_id="gatehouse/demo-ssh",
    attributes={"username": "ops", "host_key": "ssh-ed25519 AAAA"},
)

READS = [
    "ls -la /var/log",
    "cat /etc/os-release",
    "head -n 20 /var/log/syslog",
    "tail -n 100 /var/log/nginx/error.log",
    "grep -i error /var/log/app.log",
    "wc -l /etc/passwd",
    "df -h /",
    "du -sh /var/lib",
    "uptime",
    "ps aux",
    "whoami",
    "id",
    "hostname",
    "hostname -f",
    "uname -a",
    "date",
    "date -u +%Y-%m-%dT%H:%M:%S",
    "free -m",
    "stat /etc/hosts",
    "pwd",
    "env",
    "echo hello",
    "systemctl status nginx --no-pager",
    "systemctl is-active nginx",
    "systemctl",
    "journalctl -u nginx -n 50 --no-pager",
    "journalctl --since=-1h -p err --no-pager",
    # lists and pipelines of reads
    "df -h; uptime",
    "uptime && free -m",
    "ls /nope || ls /tmp",
    "ps aux | grep nginx | wc -l",
    "ls |& grep x",
    "uname -a\nuptime",
    "! grep -q x /etc/hosts",
    # substitutions, subshells and nested shells that are reads themselves
    "echo $(hostname)",
    "echo `whoami`",
    "ls <(cat /etc/hosts)",
    "cat $(ls /etc/*.conf)",
    "(ls; df)",
    "{ ls; df; }",
    "if true; then ls; fi",
    "sh -c 'ls -l /tmp'",
    'bash -c "uptime; df -h"',
    "sh -c 'sh -c \"id\"'",
    # redirections that write nothing
    "ls 2>/dev/null",
    "ls /nope 2>&1 | head",
    "ls >&2",
    "cat < /etc/hostname",
    "cat <<EOF\nplain text\nEOF\n",
    "grep x <<< 'one two'",
    "echo $HOME ${USER} $1 $?",
    "ls ~/logs # a comment; rm -rf ~",
]

# (command, expected class): every evasion named in the issue, and more.
EVASIONS = [
    # ;  &&  ||  |  newlines  &
    ("ls; rm -rf /tmp/x", "write"),
    ("ls && rm -rf /tmp/x", "write"),
    ("ls /nope || rm -rf /tmp/x", "write"),
    ("cat /etc/passwd | sh", "write"),
    ("cat /etc/hosts | tee /etc/hosts.bak", "write"),
    ("ls\nrm -rf /tmp/x", "write"),
    ("uptime\n\nshutdown -h now", "write"),
    ("ls & rm -rf /tmp/x", "write"),
    ("sleep 1 &", "write"),
    # $() and backticks
    ("echo $(rm -rf /tmp/x)", "write"),
    ("echo `rm -rf /tmp/x`", "write"),
    ('ls "$(rm -rf /tmp/x)"', "write"),
    ("cat $(cat $(rm -rf /tmp/x))", "write"),
    ("X=$(rm -rf /tmp/x)", "write"),
    ("$(echo rm) -rf /tmp/x", "write"),
    ("`echo rm` -rf /tmp/x", "write"),
    ("ls <(rm -rf /tmp/x)", "write"),
    ("ls >(cat)", "write"),
    # redirections
    ("ls > /etc/motd", "write"),
    ("echo x >> ~/.bashrc", "write"),
    ("ls >| /tmp/out", "write"),
    ("ls &> /tmp/out", "write"),
    ("ls >& /tmp/out", "write"),
    ("ls 3> /tmp/out", "write"),
    ("cat < /etc/hosts > /tmp/copy", "write"),
    ("cat <> /tmp/file", "write"),
    ("{ ls; } > /tmp/out", "write"),
    ("(ls) >> /tmp/out", "write"),
    ("while true; do ls; done > /tmp/out", "write"),
    ("> /tmp/truncated", "write"),
    ("cat < <(rm -rf /tmp/x)", "write"),
    # here-documents and here-strings
    ("cat <<EOF\n$(rm -rf /tmp/x)\nEOF\n", "unknown"),
    ("cat <<EOF\n`rm -rf /tmp/x`\nEOF\n", "unknown"),
    ("cat <<'EOF'\n$(rm -rf /tmp/x)\nEOF\n", "unknown"),
    ("sh <<EOF\nrm -rf /tmp/x\nEOF\n", "write"),
    ('cat <<< "$(rm -rf /tmp/x)"', "write"),
    # sh -c / bash -c
    ("sh -c 'rm -rf /tmp/x'", "write"),
    ("bash -c 'ls; rm -rf /tmp/x'", "write"),
    ('sh -c "ls $(rm -rf /tmp/x)"', "write"),
    ('sh -c "$CMD"', "write"),
    ("sh -c '$0 -rf /tmp/x' rm", "write"),
    ("bash -lc 'ls'", "write"),
    ("bash script.sh", "write"),
    ("sh", "write"),
    ("dash -c 'sh -c \"rm -rf /tmp/x\"'", "write"),
    ('sh -c \'sh -c "sh -c \\"sh -c ls\\""\'', "unknown"),
    ("sh -c 'echo $((1+1))'", "unknown"),
    # environment and other command runners
    ("env X=1 rm -rf /tmp/x", "write"),
    ("env -i ls", "write"),
    ("LD_PRELOAD=/tmp/evil.so ls", "write"),
    ("PATH=/tmp ls", "write"),
    ("xargs rm < /tmp/list", "write"),
    ("ls | xargs rm", "write"),
    ("find / -name '*.log' -exec rm {} \\;", "write"),
    ("find /tmp -delete", "write"),
    ("awk 'BEGIN { system(\"rm -rf /tmp/x\") }'", "write"),
    ("sudo ls", "write"),
    ("nohup ls", "write"),
    ("exec rm -rf /tmp/x", "write"),
    ("eval 'rm -rf /tmp/x'", "write"),
    ("source /tmp/script", "write"),
    (". /tmp/script", "write"),
    ("command rm -rf /tmp/x", "write"),
    ("timeout 5 rm -rf /tmp/x", "write"),
    ("sort -o /etc/passwd /etc/passwd", "write"),
    ("less /etc/hosts", "write"),
    ("/bin/rm -rf /tmp/x", "write"),
    ("./ls", "write"),
    ("'rm' -rf /tmp/x", "write"),
    ('r"m" -rf /tmp/x', "write"),
    ("{rm,-rf,/tmp/x}", "write"),
    # shell features that change what a name means
    ("ls() { rm -rf /tmp/x; }; ls", "write"),
    ("for PATH in /tmp; do ls; done", "write"),
    # allowlisted names with state-changing arguments
    ("date -s '2020-01-01'", "write"),
    ("date 010100002020", "write"),
    ("hostname evil.example", "write"),
    ("hostname -F /tmp/name", "write"),
    ("hostname *", "write"),
    ("systemctl stop nginx", "write"),
    ("systemctl restart nginx", "write"),
    ("systemctl -H other-host status nginx", "write"),
    ("systemctl $ACTION nginx", "write"),
    ("journalctl --vacuum-size=1M", "write"),
    ("journalctl --rotate", "write"),
    ("journalctl --flush", "write"),
    # what the parser or the walk does not follow
    ("echo ${X:-$(rm -rf /tmp/x)}", "unknown"),
    ("echo ${X:=/tmp}", "unknown"),
    ("$'\\x72\\x6d' -rf /tmp/x", "unknown"),
    ("echo $((1 + 2))", "unknown"),
    ("[[ -f /etc/hosts ]] && ls", "unknown"),
    ("case x in x) rm -rf /tmp/x;; esac", "unknown"),
    ("time ls", "unknown"),
    ("coproc rm -rf /tmp/x", "unknown"),
    ("select x in a; do ls; done", "unknown"),
    ("ls )", "unknown"),
    ("ls ; ;", "unknown"),
    ("echo 'unterminated", "unknown"),
    ("echo $(", "unknown"),
    ("# only a comment", "unknown"),
    ("echo $()", "unknown"),
]

BAD_INPUTS = [
    ("", "ssh_empty_command"),
    ("   \n\t ", "ssh_empty_command"),
    ("x" * (MAX_COMMAND_CHARS + 1), "ssh_command_too_long"),
    ("ls\x00; rm -rf /tmp/x", "ssh_control_character"),
    ("ls\r\nrm -rf /tmp/x", "ssh_control_character"),
    ("ls \x1b[2K\x1b[1Grm -rf /tmp/x", "ssh_control_character"),
    ("ls \x7f", "ssh_control_character"),
    # a bidi override makes an approver read a different line than the shell runs
    ("ls # \u202e; x- mr", "ssh_control_character"),
    ("r\u200bm -rf /tmp/x", "ssh_control_character"),
    ("ls \x08\x08rm", "ssh_control_character"),
]


def ssh(command: str) -> Classified:
    return classify(SshCommand(command=command), SSH)


@pytest.mark.parametrize("command", READS)
def test_read_only_lines_are_reads(command: str) -> None:
    result = ssh(command)
    assert result.cls == "read", result.reason
    assert "read-only" in result.reason


@pytest.mark.parametrize(("command", "expected"), EVASIONS)
def test_every_evasion_is_caught(command: str, expected: str) -> None:
    result = ssh(command)
    assert result.cls == expected, f"{command!r}: {result.cls} ({result.reason})"


@pytest.mark.parametrize("read", ["ls", "cat /etc/hosts", "sh -c 'uptime'", "journalctl -n 5 --no-pager"])
@pytest.mark.parametrize("glue", ["; ", " && ", " || ", " | ", "\n", " & "])
@pytest.mark.parametrize("write", ["rm -rf /tmp/x", "sh -c 'rm -rf /tmp/x'", "ls > /tmp/x", "X=1 ls"])
def test_a_write_joined_to_a_read_is_never_a_read(read: str, glue: str, write: str) -> None:
    assert ssh(read + glue + write).cls == "write"
    assert ssh(write + glue + read).cls == "write"


@pytest.mark.parametrize(("command", "code"), BAD_INPUTS, ids=[f"bad{i}" for i in range(len(BAD_INPUTS))])
def test_bad_input_is_refused_before_anything_else(command: str, code: str) -> None:
    with pytest.raises(SshRefusedError) as refused:
        ssh(command)
    assert refused.value.code == code
    assert refused.value.status == 400


def test_the_reason_names_the_offending_program_and_the_text_is_one_line() -> None:
    result = ssh("uptime && shutdown -h now")
    assert result.reason == "`shutdown` is not on the read-only allowlist"
    assert result.text == "uptime && shutdown -h now"

    multi = ssh("uptime\nrm -rf /tmp/x")
    assert "\n" not in multi.text
    assert multi.text == '"uptime\\nrm -rf /tmp/x"'


def test_the_strictest_finding_wins_wherever_it_is() -> None:
    # A write first, then something the parser cannot follow: the line is "unknown", not "write".
    assert ssh("rm -rf /tmp/x; echo ${X:-$(id)}").cls == "unknown"
    assert classify_command("ls; echo ${X:-$(id)}").cls == "unknown"


def test_a_connection_of_another_kind_is_refused() -> None:
    postgres = Connection(name="demo-prod", kind="postgres", host="h", port=5432, database="d", secret_id="s")
    with pytest.raises(SshRefusedError) as refused:
        classify(SshCommand(command="ls"), postgres)
    assert refused.value.code == "wrong_connection_kind"


def test_the_request_model_is_strict_and_documented() -> None:
    with pytest.raises(pydantic.ValidationError):
        SshCommand.model_validate({"command": "ls", "shell": "/bin/sh"})
    with pytest.raises(pydantic.ValidationError):
        SshCommand.model_validate({"command": ["ls", "-l"]})
    with pytest.raises(pydantic.ValidationError):
        SshCommand.model_validate({})
    schema = SshCommand.model_json_schema()
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["command"]
    assert "ssh:read" in schema["properties"]["command"]["description"]
