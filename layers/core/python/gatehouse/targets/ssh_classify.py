"""Classify one SSH command line by walking bashlex's parse tree of the whole line.

sshd hands the command to the user's login shell (`$SHELL -c COMMAND`), so the classifier has to
understand the line the way a shell does: lists (`;`, `&&`, `||`, newlines), pipelines,
redirections, here-documents, command and process substitutions, compound commands and nested
`sh -c '...'` strings. A line is "read" only when every command in it is on a small allowlist
of read-only programs (with their arguments checked where a program can also change things) and
nothing in it writes a file, assigns a variable or runs something the walk cannot see into.
Anything else is "write"; anything bashlex or this walk does not understand is "unknown", the
strictest class: a misunderstanding must never become a read.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import bashlex

from gatehouse.exceptions import GatehouseError
from gatehouse.targets.commands import MAX_SSH_COMMAND_CHARS
from gatehouse.targets.kinds import Classified

READ = "read"
WRITE = "write"
UNKNOWN = "unknown"
_RISK = {READ: 0, WRITE: 1, UNKNOWN: 2}

# Longer lines are not commands an agent types; the bound also keeps bashlex's recursive parser
# (and a reviewer reading an approval) out of trouble.
MAX_COMMAND_CHARS = MAX_SSH_COMMAND_CHARS  # the API model's own bound
# `sh -c 'sh -c "..."'` is parsed again at each level; beyond this the line is "unknown".
MAX_SHELL_DEPTH = 3

# Shells whose `-c STRING` is parsed again as a command line of its own.
_SHELLS = frozenset({"sh", "bash", "dash", "ash", "ksh", "mksh", "zsh"})

# Programs that only read, whatever their arguments: none of them has an option that writes a
# file, changes system state or runs another program (unlike sort -o, uniq OUT, tee, find -exec,
# awk system(), xargs, less with its shell escape).
_FREE_READERS = frozenset(
    {
        "cat", "head", "tail", "grep", "wc", "ls", "stat", "df", "du", "free", "uptime", "ps",
        "whoami", "id", "uname", "pwd", "echo", "true", "false",
    }
)  # fmt: skip

# A parameter expansion that only substitutes a value. `${x:-$(cmd)}` and `${x:=v}` are not:
# bashlex keeps their operand as opaque text, so they are "unknown".
_SIMPLE_PARAMETER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|[0-9]|[#?@*$!-]")
_GLOB_CHARS = frozenset("*?[{")
# Redirection targets that write nothing anyone can read back.
_DISCARD_TARGETS = frozenset({"/dev/null"})
_OUTPUT_REDIRECTS = frozenset({">", ">>", ">|", "&>", "&>>", "<>"})
_DUP_REDIRECTS = frozenset({">&", "<&"})
_HEREDOC_REDIRECTS = frozenset({"<<", "<<-"})
_LIST_OPERATORS = frozenset({";", "&&", "||", "\n"})
_GROUP_WORDS = frozenset({"(", ")", "{", "}"})
_CONTROL_WORDS = frozenset(
    {"if", "then", "elif", "else", "fi", "while", "until", "do", "done", ";", "\n", "!", "(", ")", "{", "}"}
)


class SshRefusedError(GatehouseError):
    """The SSH command is malformed (empty, oversized, control characters): it never runs."""

    code = "ssh_command_refused"
    status = 400


@dataclass(frozen=True)
class _Verdict:
    cls: str
    reason: str


def check_command(command: str) -> None:
    """Refuse a command no shell line should look like, before it is parsed, shown or run.

    Control characters other than tab and newline (CR, ESC, NUL, DEL...) and Unicode format
    characters (bidi overrides, zero-width spaces) are refused: they make the text an approver
    reads differ from the text the shell runs.
    """
    if not isinstance(command, str) or not command.strip():
        raise SshRefusedError("the SSH command is empty", code="ssh_empty_command")
    if len(command) > MAX_COMMAND_CHARS:
        raise SshRefusedError(
            f"the SSH command is {len(command)} characters long; the limit is {MAX_COMMAND_CHARS}",
            code="ssh_command_too_long",
        )
    for index, char in enumerate(command):
        if char in "\t\n":
            continue
        if unicodedata.category(char) in {"Cc", "Cf", "Cs", "Co", "Cn"}:
            raise SshRefusedError(
                f"the SSH command contains the control character U+{ord(char):04X} at offset {index}",
                code="ssh_control_character",
            )


def canonical_text(command: str) -> str:
    """The one-line form for logs and approvals: the command itself, or a JSON string if multi-line."""
    return command if "\n" not in command else json.dumps(command, ensure_ascii=False)


def classify_command(command: str) -> Classified:
    """Classify a whole command line as "read", "write" or "unknown" (see the module docstring)."""
    check_command(command)
    verdict = _classify_line(command, depth=0)
    return Classified(cls=verdict.cls, reason=verdict.reason, text=canonical_text(command))


def _classify_line(line: str, depth: int) -> _Verdict:
    if depth > MAX_SHELL_DEPTH:
        return _Verdict(UNKNOWN, f"shells nested more than {MAX_SHELL_DEPTH} deep are not analyzed")
    try:
        nodes = bashlex.parse(line)
    # bashlex raises its ParsingError, NotImplementedError (arithmetic, case, [[ ]], select...)
    # and, on odd input, whatever its internals trip on: every one of them means "not understood".
    except Exception as exc:  # noqa: BLE001
        return _Verdict(UNKNOWN, f"the shell parser does not understand the command ({type(exc).__name__})")
    walker = _Walker(line, depth)
    if not nodes:
        return _Verdict(UNKNOWN, "the command line contains no command")
    for node in nodes:
        walker.walk(node)
    return walker.result()


class _Walker:
    """Walks one parsed line; collects a verdict per finding, the strictest wins."""

    def __init__(self, source: str, depth: int) -> None:
        self._source = source
        self._depth = depth
        self._findings: list[_Verdict] = []
        self._readers: list[str] = []

    def result(self) -> _Verdict:
        worst = max(self._findings, key=lambda v: _RISK[v.cls], default=None)
        if worst is not None and worst.cls != READ:
            return worst
        if not self._readers:
            return _Verdict(UNKNOWN, "the command line runs no command the classifier recognizes")
        names = ", ".join(dict.fromkeys(self._readers))
        return _Verdict(READ, f"every command is a read-only allowlisted program ({names})")

    def _note(self, cls: str, reason: str) -> None:
        self._findings.append(_Verdict(cls, reason))

    def _absorb(self, verdict: _Verdict) -> None:
        if verdict.cls == READ:
            return
        self._findings.append(verdict)

    # --- structure ---------------------------------------------------------------------------

    def walk(self, node: Any) -> None:
        kind = getattr(node, "kind", None)
        handler: Callable[[Any], None] | None = getattr(self, f"_walk_{kind}", None) if kind else None
        if handler is None:
            self._note(UNKNOWN, f"the shell construct {kind or type(node).__name__!s} is not analyzed")
            return
        handler(node)

    def _walk_list(self, node: Any) -> None:
        for part in node.parts:
            if part.kind == "operator":
                if part.op == "&":
                    self._note(WRITE, "`&` starts a background job that outlives the command")
                elif part.op not in _LIST_OPERATORS:
                    self._note(UNKNOWN, f"the list operator {part.op!r} is not analyzed")
            else:
                self.walk(part)

    def _walk_pipeline(self, node: Any) -> None:
        for part in node.parts:
            if part.kind == "pipe" or (part.kind == "reservedword" and part.word == "!"):
                continue
            self.walk(part)

    def _walk_compound(self, node: Any) -> None:
        for part in node.list:
            if part.kind == "reservedword" and part.word in _GROUP_WORDS:
                continue
            self.walk(part)
        for redirect in getattr(node, "redirects", None) or ():
            self._redirect(redirect)

    def _walk_control(self, node: Any) -> None:
        for part in node.parts:
            if part.kind == "reservedword" and part.word in _CONTROL_WORDS:
                continue
            self.walk(part)

    _walk_if = _walk_while = _walk_until = _walk_control

    def _walk_for(self, node: Any) -> None:
        # The loop variable is assigned: `for PATH in /tmp; do ls; done` runs /tmp/ls.
        self._note(WRITE, "a for loop assigns a shell variable")
        for part in node.parts:
            if part.kind == "word":
                self._expansions(part)
            elif part.kind != "reservedword":
                self.walk(part)

    def _walk_function(self, node: Any) -> None:
        # A function can shadow an allowlisted name (`ls() { rm -rf ~; }; ls`).
        self._note(WRITE, "the command line defines a shell function")
        for part in node.parts:
            if part.kind not in {"word", "reservedword"}:
                self.walk(part)

    def _walk_command(self, node: Any) -> None:
        words: list[Any] = []
        for part in node.parts:
            if part.kind == "word":
                words.append(part)
                self._expansions(part)
            elif part.kind == "assignment":
                # `LD_PRELOAD=/tmp/x.so ls`, `PATH=/tmp ls`: an assignment changes what runs.
                self._note(WRITE, "the command line assigns a shell variable")
                self._expansions(part)
            elif part.kind == "redirect":
                self._redirect(part)
            else:
                self._note(UNKNOWN, f"the command part {part.kind} is not analyzed")
        if not words:
            return
        name = words[0]
        if getattr(name, "parts", None):
            self._note(WRITE, "the command name is computed by an expansion")
            return
        self._command(name.word, words[1:])

    # --- one simple command ------------------------------------------------------------------

    def _command(self, name: str, args: Sequence[Any]) -> None:
        argv = [w.word for w in args]
        if name in _FREE_READERS:
            self._readers.append(name)
            return
        if name in _SHELLS:
            self._shell(name, args)
            return
        check = _ARGUMENT_CHECKS.get(name)
        if check is None:
            if name == "env":
                if not args:
                    self._readers.append(name)  # prints the environment
                else:
                    self._note(WRITE, "`env` with arguments runs a command in a changed environment")
                return
            self._note(WRITE, f"`{_shown(name)}` is not on the read-only allowlist")
            return
        computed = [w.word for w in args if getattr(w, "parts", None) or _GLOB_CHARS & set(w.word)]
        if computed:
            # hostname/date/systemctl/journalctl change state with some arguments: an argument
            # the shell computes or expands (a glob can expand to `stop`) cannot be checked.
            self._note(WRITE, f"`{name}` has an argument the shell computes, which cannot be checked")
            return
        problem = check(argv)
        if problem:
            self._note(WRITE, f"`{name}` {problem}")
        else:
            self._readers.append(name)

    def _shell(self, name: str, args: Sequence[Any]) -> None:
        if len(args) < 2 or args[0].word != "-c" or getattr(args[0], "parts", None):
            self._note(WRITE, f"`{name}` runs a script the classifier cannot see (only `{name} -c '...'`)")
            return
        inner = args[1]
        if getattr(inner, "parts", None):
            self._note(WRITE, f"the `{name} -c` string is computed by an expansion")
            return
        verdict = _classify_line(inner.word, self._depth + 1)
        if verdict.cls == READ:
            self._readers.append(name)
        else:
            self._absorb(_Verdict(verdict.cls, f"inside `{name} -c`: {verdict.reason}"))

    # --- words, expansions, redirections -----------------------------------------------------

    def _expansions(self, node: Any) -> None:
        for part in getattr(node, "parts", None) or ():
            kind = part.kind
            if kind == "commandsubstitution":
                self._substitution(part.command, "a command substitution")
            elif kind == "processsubstitution":
                if self._source[part.pos[0] : part.pos[0] + 1] == ">":
                    self._note(WRITE, "an output process substitution `>(...)` feeds a command")
                self._substitution(part.command, "a process substitution")
            elif kind == "parameter":
                value = getattr(part, "value", None)
                if not isinstance(value, str) or not _SIMPLE_PARAMETER.fullmatch(value):
                    self._note(UNKNOWN, "a parameter expansion with operators is not analyzed")
            elif kind != "tilde":
                self._note(UNKNOWN, f"the expansion {kind} is not analyzed")

    def _substitution(self, command: Any, what: str) -> None:
        inner = _Walker(self._source, self._depth)
        inner.walk(command)
        verdict = inner.result()
        if verdict.cls == READ:
            self._readers.extend(inner._readers)
        else:
            self._absorb(_Verdict(verdict.cls, f"in {what}: {verdict.reason}"))

    def _redirect(self, node: Any) -> None:
        kind = node.type
        target = node.output
        if kind in _HEREDOC_REDIRECTS:
            body = getattr(node.heredoc, "value", "") if node.heredoc is not None else ""
            if "$" in body or "`" in body:
                # An unquoted here-document expands `$(...)` and backticks in its body, which
                # bashlex keeps as plain text.
                self._note(UNKNOWN, "a here-document body with expansions is not analyzed")
            return
        if kind == "<<<" or kind == "<":
            self._expansions(target)
            return
        if kind in _DUP_REDIRECTS:
            if isinstance(target, int) or getattr(target, "word", None) == "-":
                return  # duplicating or closing a descriptor (`2>&1`) writes no file
            if kind == ">&":
                self._output_to(target)
                return
            self._note(UNKNOWN, f"the redirection {kind} is not analyzed")
            return
        if kind in _OUTPUT_REDIRECTS:
            self._output_to(target)
            return
        self._note(UNKNOWN, f"the redirection {kind} is not analyzed")

    def _output_to(self, target: Any) -> None:
        self._expansions(target)
        word = getattr(target, "word", None)
        if word in _DISCARD_TARGETS and not getattr(target, "parts", None):
            return
        self._note(WRITE, "the command line redirects output to a file")


def _shown(name: str) -> str:
    return name if len(name) <= 40 else name[:40] + "..."


# --- programs that read with some arguments and change state with others -----------------------


def _options(
    argv: Iterable[str], *, flags: frozenset[str], valued: frozenset[str]
) -> tuple[str | None, list[str]]:
    """Split argv into positionals; return the first option not allowed (or None) and them."""
    positionals: list[str] = []
    items = iter(argv)
    for arg in items:
        if arg == "--":
            positionals.extend(items)
            break
        if not arg.startswith("-") or arg == "-":
            positionals.append(arg)
        elif arg in flags:
            continue
        elif arg in valued:
            if next(items, None) is None:
                return arg, positionals
        elif arg.startswith("--") and "=" in arg and arg.split("=", 1)[0] in valued:
            continue
        elif not arg.startswith("--") and arg[:2] in valued:
            continue  # `-n20`
        else:
            return arg, positionals
    return None, positionals


_HOSTNAME_FLAGS = frozenset(
    {"-s", "--short", "-f", "--fqdn", "--long", "-d", "--domain", "-i", "--ip-address", "-I",
     "--all-ip-addresses", "-A", "--all-fqdns", "-a", "--alias"}
)  # fmt: skip
_DATE_FLAGS = frozenset({"-u", "--utc", "--universal", "-R", "--rfc-email", "-I", "--iso-8601"})
_DATE_ISO_FLAG = re.compile(r"-I(date|hours|minutes|seconds|ns)")
_DATE_VALUED = frozenset({"--iso-8601", "--rfc-3339"})
_SYSTEMCTL_READS = frozenset(
    {"status", "show", "cat", "is-active", "is-enabled", "is-failed", "list-units", "list-timers"}
)
_SYSTEMCTL_FLAGS = frozenset(
    {"--no-pager", "--full", "-l", "--all", "-a", "--plain", "--no-legend", "-q", "--quiet"}
)
_SYSTEMCTL_VALUED = frozenset({"-n", "--lines", "-t", "--type", "--state", "-p", "--property"})
_JOURNALCTL_FLAGS = frozenset(
    {"--no-pager", "-k", "--dmesg", "-r", "--reverse", "-q", "--quiet", "--utc", "-x", "--catalog",
     "-a", "--all", "--no-hostname", "-m", "--merge", "-b", "--boot"}
)  # fmt: skip
_JOURNALCTL_VALUED = frozenset(
    {"-u", "--unit", "-n", "--lines", "-S", "--since", "-U", "--until", "-p", "--priority", "-o",
     "--output", "-t", "--identifier", "--boot"}
)  # fmt: skip


def _check_hostname(argv: Sequence[str]) -> str | None:
    bad = next((a for a in argv if a not in _HOSTNAME_FLAGS), None)
    return None if bad is None else f"with the argument {_shown(bad)!r} can set the host name"


def _check_date(argv: Sequence[str]) -> str | None:
    for arg in argv:
        if (
            arg.startswith("+")
            or arg in _DATE_FLAGS
            or re.fullmatch(r"-I(date|hours|minutes|seconds|ns)", arg)
        ):
            continue
        if arg.startswith("--") and arg.split("=", 1)[0] in _DATE_VALUED and "=" in arg:
            continue
        return f"with the argument {_shown(arg)!r} can set the clock"
    return None


def _check_systemctl(argv: Sequence[str]) -> str | None:
    bad, positionals = _options(argv, flags=_SYSTEMCTL_FLAGS, valued=_SYSTEMCTL_VALUED)
    if bad is not None:
        return f"with the option {_shown(bad)!r} is not a known read"
    if positionals and positionals[0] not in _SYSTEMCTL_READS:
        return f"{_shown(positionals[0])} changes the system (reads: {', '.join(sorted(_SYSTEMCTL_READS))})"
    return None


def _check_journalctl(argv: Sequence[str]) -> str | None:
    # --rotate, --vacuum-*, --flush, --sync, --setup-keys, --relinquish-var write: not listed.
    bad, _ = _options(argv, flags=_JOURNALCTL_FLAGS, valued=_JOURNALCTL_VALUED)
    return None if bad is None else f"with the option {_shown(bad)!r} is not a known read"


_ARGUMENT_CHECKS: dict[str, Callable[[Sequence[str]], str | None]] = {
    "hostname": _check_hostname,
    "date": _check_date,
    "systemctl": _check_systemctl,
    "journalctl": _check_journalctl,
}

READ_ONLY_PROGRAMS: frozenset[str] = _FREE_READERS | frozenset(_ARGUMENT_CHECKS) | {"env"}
