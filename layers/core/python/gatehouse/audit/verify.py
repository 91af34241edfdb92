"""Recompute every session's hash chain and manifest and say what does not hold.

An object holds one or more events, one JSON line each; its key names the seq of its first line,
so line N of object `<k>.json` is, by position, seq k + N - 1. Every check is made per position.

What each problem kind means (one `Problem` per session, seq and kind):

- `missing`: a gap in seq (a missing object or a removed line); a key a manifest lists is absent;
  fewer events than it counts.
- `altered`: an event's content does not match its hash; an event was replaced by one with a valid
  hash that its successor does not chain to; a manifest's first/last hash, or its own, differs.
- `reordered`: intact events in the wrong place: a line holds another seq than its position (lines
  swapped, or a line removed before it), sits under the wrong date, or chains from a different
  predecessor.
- `extra`: an event after `session_closed`, a second event claiming a seq (an inserted line, an
  overlapping object), an event of another session, an object outside the key layout, an event a
  manifest does not list.
- `missing_manifest`: a manifest (sessions written before the closing object carried it) was deleted.
- `rewritten`: a key has more than one version or a delete marker (Object Lock keeps the
  original version: look there). Deleting the closing object in the original bucket is caught
  here.
- `unreadable`: an object that is not newline-terminated JSON lines, or a line that is not a JSON
  event with every column.

The write-ahead log (`wal/`, `gatehouse.audit.wal`: the proxy's group commit) holds copies of
events that were durable before their sessions' own objects were written. Every copy must be in
its session's log, identical: a different event at its seq is `altered`; a copy whose session
lacks its seq is `missing` once the copy is older than a grace period (a live writer copies within
seconds; `gatehouse audit recover` writes what a writer that died left behind). A write-ahead
object that is unreadable, rewritten or deleted is reported like an event object.

The `session_closed` event is the session's manifest: it is the last line of the object `close`
writes, its seq + 1 counts the events, and its `prev_hash` commits to all of them, so a gap, an
insertion or a rewrite before it is caught. An open session (no `session_closed`) is fine as long
as its chain holds; a truncated tail of an open session, or of a copy from which the closing
object was deleted, is detectable only by version listings in the original bucket.

The chain is plain SHA-256, not a keyed MAC: someone who can rewrite every object of a copy can
forge a consistent copy. The defence is the original bucket, where
COMPLIANCE Object Lock keeps every version for the whole retention; verify the original.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Any

from botocore.exceptions import ClientError

from gatehouse import names
from gatehouse.audit import events
from gatehouse.audit.log import EventKey, list_partitions, manifest_key, parse_event_key
from gatehouse.audit.wal import DEFAULT_GRACE_S, WAL_PREFIX, parse_wal_key
from gatehouse.terminal import safe_text

_MANIFEST_FIELDS = (
    "session_id",
    "event_count",
    "first_seq",
    "last_seq",
    "first_hash",
    "last_hash",
    "keys",
    "hash",
)


class ProblemKind(StrEnum):
    MISSING = "missing"
    ALTERED = "altered"
    REORDERED = "reordered"
    EXTRA = "extra"
    MISSING_MANIFEST = "missing_manifest"
    REWRITTEN = "rewritten"
    UNREADABLE = "unreadable"


@dataclass(frozen=True)
class Problem:
    session_id: str | None
    seq: int | None
    kind: ProblemKind
    detail: str


@dataclass(frozen=True)
class SessionSummary:
    session_id: str
    events: int
    closed: bool
    has_manifest: bool
    first_time: str | None
    last_time: str | None
    ok: bool


@dataclass
class VerifyReport:
    sessions: list[SessionSummary] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def problems_for(self, session_id: str) -> list[Problem]:
        return [p for p in self.problems if p.session_id == session_id]

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "sessions": [asdict(s) for s in self.sessions],
            "problems": [{**asdict(p), "kind": p.kind.value} for p in self.problems],
        }

    def format(self) -> str:
        closed = sum(1 for s in self.sessions if s.closed)
        lines = [
            f"{len(self.sessions)} session(s) ({closed} closed, {len(self.sessions) - closed} open), "
            f"{sum(s.events for s in self.sessions)} event(s): "
            + ("chain and manifests intact" if self.ok else f"{len(self.problems)} problem(s)")
        ]
        for p in self.problems:
            where = f"{p.session_id or '-'}" + (f" #{p.seq}" if p.seq is not None else "")
            # Details quote stored values (a planted event's session id, time, event id): one line each.
            lines.append(safe_text(f"  {p.kind.value:<16} {where}: {p.detail}"))
        return "\n".join(lines)


# -- loading -----------------------------------------------------------------------------------


@dataclass
class KeyState:
    current: bool = False  # the key has a current (non-deleted) version
    versions: int = 0
    delete_markers: int = 0
    modified: datetime | None = None  # when the current version was written


@dataclass
class StoredLine:
    seq: int  # by position: the key's seq plus the line's index
    event: dict[str, Any] | None = None
    error: str | None = None  # why it is not an event


@dataclass
class StoredObject:
    key: EventKey
    state: KeyState
    lines: list[StoredLine] = field(default_factory=list)
    error: str | None = None  # why the object as a whole is not JSON lines

    @property
    def events(self) -> list[dict[str, Any]]:
        """The readable events of a current object, in line order."""
        return [line.event for line in self.lines if line.event is not None]


def parse_object(key: EventKey, state: KeyState, body: bytes) -> StoredObject:
    """Each line of an object on its own, so one bad line does not hide the others."""
    stored = StoredObject(key, state)
    if not body:
        stored.error = "the object is empty"
        return stored
    lines = body.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    else:
        stored.error = "the last line is not newline-terminated (cut off or edited)"
    for offset, line in enumerate(lines):
        entry = StoredLine(key.seq + offset)
        if not line.strip():
            entry.error = "an empty line"
        else:
            try:
                entry.event = events.parse_event(line)
            except ValueError as exc:
                entry.error = str(exc)
        stored.lines.append(entry)
    return stored


@dataclass
class StoredManifest:
    state: KeyState
    manifest: dict[str, Any] | None = None
    error: str | None = None


@dataclass(frozen=True)
class AheadCopy:
    """One event as a write-ahead object holds it."""

    key: str
    modified: datetime | None
    event: dict[str, Any]


@dataclass
class SessionObjects:
    session_id: str
    objects: list[StoredObject] = field(default_factory=list)  # current objects, and deleted keys
    manifest: StoredManifest | None = None
    ahead: list[AheadCopy] = field(default_factory=list)  # write-ahead copies of its events


def _scan(s3_client: Any, bucket: str, prefix: str) -> dict[str, KeyState]:
    """Each key under `prefix` with its version counts (current objects only, if versions are hidden)."""
    states: dict[str, KeyState] = defaultdict(KeyState)
    try:
        for page in s3_client.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
            for version in page.get("Versions", []):
                state = states[version["Key"]]
                state.versions += 1
                if version.get("IsLatest"):
                    state.current = True
                    state.modified = version.get("LastModified")
            for marker in page.get("DeleteMarkers", []):
                states[marker["Key"]].delete_markers += 1
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in {"AccessDenied", "NotImplemented"}:
            raise
        # Without s3:ListBucketVersions: current objects only, no rewrite detection.
        states.clear()
        for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                states[obj["Key"]] = KeyState(current=True, versions=1, modified=obj.get("LastModified"))
    return dict(states)


def _partitions(s3_client: Any, bucket: str) -> list[str]:
    """Every `events/dt=.../` prefix, including days whose objects are all hidden by delete markers."""
    prefixes: set[str] = set()
    try:
        for page in s3_client.get_paginator("list_object_versions").paginate(
            Bucket=bucket, Prefix=names.EVENTS_PREFIX, Delimiter="/"
        ):
            prefixes.update(p["Prefix"] for p in page.get("CommonPrefixes", []))
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in {"AccessDenied", "NotImplemented"}:
            raise
        prefixes.update(list_partitions(s3_client, bucket))
    return sorted(prefixes)


def load_objects(
    s3_client: Any, bucket: str, session_id: str | None = None, *, max_workers: int = 8
) -> tuple[dict[str, SessionObjects], list[Problem]]:
    """Read the log (or one session of it): events by session, manifests, stray objects."""
    if session_id is None:
        event_states = _scan(s3_client, bucket, names.EVENTS_PREFIX)
        manifest_states = _scan(s3_client, bucket, names.MANIFESTS_PREFIX)
    else:
        events.check_session_id(session_id)
        event_states = {}
        for partition in _partitions(s3_client, bucket):
            event_states.update(_scan(s3_client, bucket, f"{partition}session={session_id}/"))
        mkey = manifest_key(session_id)
        manifest_states = {k: v for k, v in _scan(s3_client, bucket, mkey).items() if k == mkey}

    sessions: dict[str, SessionObjects] = {}
    strays: list[Problem] = []

    def session(sid: str) -> SessionObjects:
        return sessions.setdefault(sid, SessionObjects(sid))

    for key, state in sorted(event_states.items()):
        parsed = parse_event_key(key)
        if parsed is None:
            strays.append(Problem(None, None, ProblemKind.EXTRA, f"{key} is outside the key layout"))
            continue
        session(parsed.session_id).objects.append(StoredObject(parsed, state))
    for key, state in sorted(manifest_states.items()):
        sid = key[len(names.MANIFESTS_PREFIX) :].removesuffix(".json")
        if not key.endswith(".json") or "/" in sid:
            strays.append(Problem(None, None, ProblemKind.EXTRA, f"{key} is outside the key layout"))
            continue
        session(sid).manifest = StoredManifest(state)
    if session_id is not None:
        session(session_id)

    def fetch(key: str) -> bytes:
        return bytes(s3_client.get_object(Bucket=bucket, Key=key)["Body"].read())

    ahead_states = _ahead_states(s3_client, bucket, sessions if session_id is not None else None)
    jobs: list[tuple[str, StoredObject | StoredManifest]] = []
    for objs in sessions.values():
        jobs.extend((o.key.key, o) for o in objs.objects if o.state.current)
        if objs.manifest is not None and objs.manifest.state.current:
            jobs.append((manifest_key(objs.session_id), objs.manifest))
    ahead_keys = [key for key, state in sorted(ahead_states.items()) if state.current]
    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        bodies = list(pool.map(fetch, [key for key, _ in jobs]))
        ahead_bodies = list(pool.map(fetch, ahead_keys))
    strays.extend(
        _ahead_copies(ahead_states, dict(zip(ahead_keys, ahead_bodies, strict=True)), sessions, session_id)
    )
    for (_, target), body in zip(jobs, bodies, strict=True):
        if isinstance(target, StoredObject):
            parsed_object = parse_object(target.key, target.state, body)
            target.lines, target.error = parsed_object.lines, parsed_object.error
        else:
            try:
                target.manifest = _parse_manifest(body)
            except ValueError as exc:
                target.error = str(exc)
    return sessions, strays


def _ahead_states(
    s3_client: Any, bucket: str, sessions: dict[str, SessionObjects] | None
) -> dict[str, KeyState]:
    """The write-ahead keys to read: all, or (one session) those of the days its objects span."""
    if sessions is None:
        return _scan(s3_client, bucket, WAL_PREFIX)
    days = {o.key.dt for objs in sessions.values() for o in objs.objects}
    if not days:
        return _scan(s3_client, bucket, WAL_PREFIX)
    states: dict[str, KeyState] = {}
    # A copy is written a moment after its event is built: around midnight, the next day's key.
    for day in sorted(days | {(date.fromisoformat(d) + timedelta(days=1)).isoformat() for d in days}):
        states.update(_scan(s3_client, bucket, f"{WAL_PREFIX}dt={day}/"))
    return states


def _ahead_copies(
    states: dict[str, KeyState],
    bodies: dict[str, bytes],
    sessions: dict[str, SessionObjects],
    session_id: str | None,
) -> list[Problem]:
    """File each write-ahead copy under its session; the problems of the objects themselves."""
    problems: list[Problem] = []
    for key, state in sorted(states.items()):
        if parse_wal_key(key) is None:
            problems.append(Problem(None, None, ProblemKind.EXTRA, f"{key} is outside the key layout"))
            continue
        if state.delete_markers:
            problems.append(
                Problem(None, None, ProblemKind.REWRITTEN, f"{key} was deleted: a delete marker hides it")
            )
        if state.versions > 1:
            problems.append(
                Problem(None, None, ProblemKind.REWRITTEN, f"{key} has {state.versions} versions")
            )
        body = bodies.get(key)
        if body is None:
            continue
        try:
            copies = events.parse_events(body)
        except ValueError as exc:
            problems.append(Problem(None, None, ProblemKind.UNREADABLE, f"{key}: {exc}"))
            continue
        for copy in copies:
            sid = str(copy["session_id"])
            if session_id is not None and sid != session_id:
                continue
            if events.event_hash(copy) != copy["hash"]:
                problems.append(
                    Problem(
                        sid,
                        copy["seq"],
                        ProblemKind.ALTERED,
                        f"its write-ahead copy in {key} does not match its hash",
                    )
                )
                continue
            sessions.setdefault(sid, SessionObjects(sid)).ahead.append(AheadCopy(key, state.modified, copy))
    return problems


def _parse_manifest(body: bytes) -> dict[str, Any]:
    try:
        manifest = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"manifest is not JSON: {exc}") from exc
    if not isinstance(manifest, dict):
        raise ValueError("manifest is not a JSON object")
    missing = [k for k in _MANIFEST_FIELDS if k not in manifest]
    if missing:
        raise ValueError(f"manifest lacks {', '.join(missing)}")
    if not isinstance(manifest["keys"], list) or not isinstance(manifest["event_count"], int):
        raise ValueError("manifest keys or event_count have the wrong type")
    return manifest


# -- checking ----------------------------------------------------------------------------------


class _Findings:
    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self.items: dict[tuple[int | None, ProblemKind], Problem] = {}

    def add(self, seq: int | None, kind: ProblemKind, detail: str) -> None:
        self.items.setdefault((seq, kind), Problem(self.session_id, seq, kind, detail))

    def has(self, kind: ProblemKind) -> bool:
        return any(k == kind for _, k in self.items)

    def sorted(self) -> list[Problem]:
        return sorted(self.items.values(), key=lambda p: (-1 if p.seq is None else p.seq, p.kind.value))


def check_session(
    objs: SessionObjects, *, ahead_cutoff: datetime | None = None
) -> tuple[SessionSummary, list[Problem]]:
    """The chain and manifest checks for one session (pure: no S3).

    A write-ahead copy written after `ahead_cutoff` may still be on its way into the session's log:
    its absence there is not a problem (None: every absence is).
    """
    sid = objs.session_id
    found = _Findings(sid)
    candidates: dict[int, list[dict[str, Any]]] = defaultdict(list)
    present_seqs: set[int] = set()  # seqs with a current object, readable or not

    for stored in objs.objects:
        key = stored.key.key
        if stored.state.delete_markers:
            found.add(
                stored.key.seq,
                ProblemKind.REWRITTEN,
                f"{key} was deleted: a delete marker hides {stored.state.versions} locked version(s)",
            )
        if stored.state.versions > 1:
            found.add(stored.key.seq, ProblemKind.REWRITTEN, f"{key} has {stored.state.versions} versions")
        if not stored.state.current:
            continue
        if stored.error is not None or not stored.lines:
            present_seqs.add(stored.key.seq)
            found.add(stored.key.seq, ProblemKind.UNREADABLE, f"{key}: {stored.error}")
        for number, line in enumerate(stored.lines, start=1):
            seq = line.seq
            where = key if len(stored.lines) == 1 else f"line {number} of {key}"
            present_seqs.add(seq)
            if line.event is None:
                found.add(seq, ProblemKind.UNREADABLE, f"{where}: {line.error}")
                continue
            event = line.event
            if event["session_id"] != sid:
                found.add(seq, ProblemKind.EXTRA, f"{where} holds an event of session {event['session_id']}")
                continue
            if events.event_hash(event) != event["hash"]:
                found.add(seq, ProblemKind.ALTERED, "its content does not match its hash")
            if event["seq"] != seq:
                found.add(
                    seq,
                    ProblemKind.REORDERED,
                    f"{where} is seq {seq} by position but holds seq {event['seq']}",
                )
            if str(event.get("time") or "")[:10] != stored.key.dt:
                found.add(
                    seq,
                    ProblemKind.REORDERED,
                    f"stored under dt={stored.key.dt} but its time is {event['time']}",
                )
            candidates[seq].append(event)

    chain = _pick_chain(candidates, found)
    hashes = {event["hash"]: seq for seq, event in chain.items()}
    closed_at = min(
        (s for s, e in chain.items() if e["kind"] == events.EventKind.SESSION_CLOSED), default=None
    )

    manifest = objs.manifest.manifest if objs.manifest is not None else None
    if objs.manifest is not None:
        _check_manifest_object(objs.manifest, sid, found)

    # Links.
    for seq in sorted(chain):
        event = chain[seq]
        if seq == 0:
            expected = events.GENESIS_HASH
        elif seq - 1 in chain:
            expected = chain[seq - 1]["hash"]
        else:
            continue
        if event["prev_hash"] == expected:
            continue
        source = hashes.get(event["prev_hash"])
        if source is not None and source != seq - 1:
            found.add(seq, ProblemKind.REORDERED, f"chains from seq {source}, not seq {seq - 1}")
        elif event["prev_hash"] == events.GENESIS_HASH:
            found.add(seq, ProblemKind.REORDERED, "claims to start the chain but is not seq 0")
        elif seq == 0:
            found.add(0, ProblemKind.ALTERED, "does not start from the genesis hash")
        else:
            found.add(
                seq - 1,
                ProblemKind.ALTERED,
                f"replaced: seq {seq} chains from {event['prev_hash'][:12]}, "
                f"but seq {seq - 1} hashes to {expected[:12]}",
            )

    # Gaps, and events after the end.
    last_expected = max(present_seqs, default=-1)
    if closed_at is None and manifest is not None and isinstance(manifest.get("last_seq"), int):
        last_expected = max(last_expected, manifest["last_seq"])  # a truncated tail
    if closed_at is not None:
        last_expected = closed_at
        for seq in sorted(present_seqs):
            if seq > closed_at:
                found.add(seq, ProblemKind.EXTRA, f"recorded after session_closed (seq {closed_at})")
    for seq in range(last_expected + 1):
        if seq not in present_seqs:
            found.add(seq, ProblemKind.MISSING, f"no event with seq {seq}")

    if manifest is not None:
        _check_manifest_contents(manifest, objs, chain, present_seqs, found)
    _check_ahead(objs, chain, present_seqs, ahead_cutoff, found)
    if not objs.objects and objs.manifest is None and not objs.ahead:
        found.add(None, ProblemKind.MISSING, "no events and no manifest for this session")

    times = sorted(str(e["time"]) for e in chain.values() if e.get("time"))
    problems = found.sorted()
    summary = SessionSummary(
        session_id=sid,
        events=len(present_seqs),
        closed=closed_at is not None or objs.manifest is not None,
        # The closing event is the manifest; older sessions have a separate one.
        has_manifest=closed_at is not None or (objs.manifest is not None and objs.manifest.state.current),
        first_time=times[0] if times else None,
        last_time=times[-1] if times else None,
        ok=not problems,
    )
    return summary, problems


def _pick_chain(candidates: dict[int, list[dict[str, Any]]], found: _Findings) -> dict[int, dict[str, Any]]:
    """One event per seq; a second event claiming a seq (a fork) is extra."""
    chain: dict[int, dict[str, Any]] = {}
    for seq in sorted(candidates):
        options = candidates[seq]
        if len(options) > 1:
            expected = events.GENESIS_HASH if seq == 0 else chain.get(seq - 1, {}).get("hash")
            options = sorted(options, key=lambda e: (e["prev_hash"] != expected, e["time"]))
            for other in options[1:]:
                found.add(seq, ProblemKind.EXTRA, f"a second event ({other['event_id']}) claims seq {seq}")
        chain[seq] = options[0]
    return chain


def _check_ahead(
    objs: SessionObjects,
    chain: dict[int, dict[str, Any]],
    present_seqs: set[int],
    cutoff: datetime | None,
    found: _Findings,
) -> None:
    """Every write-ahead copy must be in the session's log, identical (see the module doc)."""
    for copy in objs.ahead:
        seq = copy.event["seq"]
        stored = chain.get(seq)
        if stored is not None:
            if stored["hash"] != copy.event["hash"]:
                found.add(seq, ProblemKind.ALTERED, f"differs from its write-ahead copy in {copy.key}")
            continue
        if seq in present_seqs:
            continue  # unreadable there: reported already
        if cutoff is None or copy.modified is None or copy.modified <= cutoff:
            found.add(
                seq,
                ProblemKind.MISSING,
                f"in the write-ahead log ({copy.key}) but not in the session's log "
                "(`gatehouse audit recover` writes it)",
            )


def _check_manifest_object(stored: StoredManifest, sid: str, found: _Findings) -> None:
    if stored.state.versions > 1 or stored.state.delete_markers:
        found.add(
            None,
            ProblemKind.REWRITTEN,
            f"the manifest has {stored.state.versions} version(s) and {stored.state.delete_markers} "
            "delete marker(s)",
        )
    if not stored.state.current:
        found.add(None, ProblemKind.MISSING_MANIFEST, "the manifest was deleted")
    elif stored.manifest is None:
        found.add(None, ProblemKind.UNREADABLE, f"manifest: {stored.error}")
    elif events.event_hash(stored.manifest) != stored.manifest["hash"]:
        found.add(None, ProblemKind.ALTERED, "the manifest's content does not match its hash")
    elif stored.manifest["session_id"] != sid:
        found.add(None, ProblemKind.ALTERED, f"the manifest names session {stored.manifest['session_id']}")


def _check_manifest_contents(
    manifest: dict[str, Any],
    objs: SessionObjects,
    chain: dict[int, dict[str, Any]],
    present_seqs: set[int],
    found: _Findings,
) -> None:
    """A separate manifest (sessions written before the closing object carried it)."""
    current = {o.key.key: o for o in objs.objects if o.state.current}
    listed = {str(k) for k in manifest["keys"]}
    for key in sorted(listed - set(current)):
        parsed = parse_event_key(key)
        seq = parsed.seq if parsed is not None else None
        found.add(seq, ProblemKind.MISSING, f"{key} is listed in the manifest but absent")
    for key in sorted(set(current) - listed):
        found.add(current[key].key.seq, ProblemKind.EXTRA, f"{key} is not listed in the manifest")
    count = len(present_seqs)
    if count < manifest["event_count"] and not found.has(ProblemKind.MISSING):
        found.add(
            None, ProblemKind.MISSING, f"the manifest counts {manifest['event_count']} events, found {count}"
        )
    if count > manifest["event_count"] and not found.has(ProblemKind.EXTRA):
        found.add(
            None, ProblemKind.EXTRA, f"the manifest counts {manifest['event_count']} events, found {count}"
        )
    first = chain.get(0)
    if first is not None and first["hash"] != manifest["first_hash"]:
        found.add(0, ProblemKind.ALTERED, "does not match the manifest's first hash")
    last_seq = manifest.get("last_seq")
    last = chain.get(last_seq) if isinstance(last_seq, int) else None
    if last is not None and last["hash"] != manifest["last_hash"]:
        found.add(last_seq, ProblemKind.ALTERED, "does not match the manifest's last hash")


# -- entry point -------------------------------------------------------------------------------


def verify_objects(
    sessions: Iterable[SessionObjects],
    strays: Iterable[Problem] = (),
    *,
    ahead_cutoff: datetime | None = None,
) -> VerifyReport:
    report = VerifyReport(problems=list(strays))
    for objs in sorted(sessions, key=lambda o: o.session_id):
        summary, problems = check_session(objs, ahead_cutoff=ahead_cutoff)
        report.sessions.append(summary)
        report.problems.extend(problems)
    return report


def verify_log(
    s3_client: Any,
    bucket: str,
    session_id: str | None = None,
    *,
    ahead_grace_s: float = DEFAULT_GRACE_S,
    now: datetime | None = None,
) -> VerifyReport:
    """Verify every session in the bucket, or one. Reads current objects and version listings.

    `ahead_grace_s`: how long a write-ahead copy may wait to reach its session's log before its
    absence there is `missing` (0: at once).
    """
    sessions, strays = load_objects(s3_client, bucket, session_id)
    cutoff = (now or datetime.now(UTC)) - timedelta(seconds=ahead_grace_s)
    return verify_objects(sessions.values(), strays, ahead_cutoff=cutoff)
