"""pgbench and a 1M-row read: direct, through pgbouncer, and through the Gatehouse Postgres proxy.

One run, one Postgres (the local stack's throwaway cluster, started here in-process as
bench_api does, in a temporary state directory), the same clients for every path:

- `pgbench -i -s 10` on the database `bench`, directly as the cluster's superuser (never through a
  pooler or the proxy), so every path reads the same 1M `pgbench_accounts` rows.
- `pgbench -n -S -c 8 -j 2 -T $GATEHOUSE_BENCH_SECONDS -M simple` (default 15 s) three ways:
  `-S` the built-in select-only script (one `SELECT abalance FROM pgbench_accounts WHERE aid = :aid`
  per transaction), `-c 8` clients over `-j 2` threads (one per core), `-M simple` the simple query
  protocol (one Query message a statement, what psql and most drivers send by default), `-n` no
  VACUUM of the pgbench tables before the run (a write the proxy would rightly refuse on a read
  connection; skipped on every path alike). A 3 s direct run first warms the buffer cache.
    1. direct to Postgres: `pgbench_tps_direct`;
    2. through a real pgbouncer (the machine's binary, `scripts/ensure-pgbouncer.sh`) started here
       with a generated ini: loopback only, `pool_mode = transaction`, a pool of 8 server
       connections, SCRAM-SHA-256 from the client and to the server, run as the unprivileged
       `postgres` user when we are root (as the throwaway cluster is): `pgbench_tps_pgbouncer`,
       `pgbench_pgbouncer_over_direct`;
    3. through the Gatehouse proxy (`pg_proxy` in local.json) as the agent `analyst` with a
       short-lived password from `POST /v1/proxy-tokens`: connection `demo-bench` (async recording)
       gives `pgbench_tps_proxy`, `pgbench_proxy_over_direct`; `demo-bench-sync` (sync recording)
       gives `pgbench_tps_proxy_sync`, `pgbench_proxy_sync_over_direct`. Policy, lineage masking
       and the session log are whatever those connections configure: on, in the stack.
- A large result: `bench_people` (1M rows: `id`, `email` text that looks like an address and trips
  the email detector, `note` plain text) read whole with `psql -X -At -c 'SELECT id, email, note
  FROM bench_people' > /dev/null`, direct and through the proxy (`demo-bench`), interleaved,
  median of LARGE_RUNS each after one untimed run per path that counts the lines it receives
  (a path that returns fewer rows fails the bench rather than looking fast).
  `large_result_rows_per_s_direct`, `large_result_rows_per_s_proxy`, and
  `large_result_proxy_over_direct` (proxy rows/s over direct rows/s).
- `proxy_peak_rss_mb`: VmHWM of the proxy's process (`pg_proxy_pid` in local.json) from
  /proc/<pid>/status after the large-result runs. Its high-water mark is reset (`5` written to
  /proc/<pid>/clear_refs, Linux 4.0+) just before them, so the figure is the peak while streaming
  1M rows, not the peak of the process's whole life (when the reset is refused it is the latter,
  and the bench says so). `proxy_rss_before_large_result_mb` is VmRSS at that reset: the peak
  minus it is what streaming cost. When the proxy runs inside the stack's process, that process
  is this one (moto, the API stand-in and the bench too), and the figures include them.

libpq's SSL and GSS encryption negotiation is turned off on every path (`PGSSLMODE=disable`,
`PGGSSENCMODE=disable`): plaintext on loopback everywhere, so no path pays for a handshake the
others skip.

Figures that cannot be measured are absent, never estimated, and the reason is printed: no
pgbouncer binary; no proxy in the local stack (`pg_proxy` null) or no `demo-bench` connection;
no `demo-bench-sync`; no `pg_proxy_pid`.

Run alone: `.venv/bin/python bench/bench_proxy.py`.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYER = ROOT / "layers" / "core" / "python"
if str(LAYER) not in sys.path:
    sys.path.insert(0, str(LAYER))

import pg8000.native  # noqa: E402

from gatehouse.client import GatehouseClient  # noqa: E402
from gatehouse.local.postgres import PostgresInfo, _run_as_user, find_bindir, free_port  # noqa: E402
from gatehouse.local.stack import LocalStack  # noqa: E402

AGENT = "analyst"
# The demo registry plus `demo-bench` (async recording) and `demo-bench-sync` (sync recording).
BENCH_CONFIG = Path(__file__).with_name("stack-config.json")
ASYNC_CONNECTION = "demo-bench"
SYNC_CONNECTION = "demo-bench-sync"
DATABASE = "bench"
SCALE = 10
CLIENTS = 8
THREADS = 2
DEFAULT_SECONDS = 15
WARMUP_SECONDS = 3
LARGE_TABLE = "bench_people"
LARGE_ROWS = 1_000_000
LARGE_SQL = f"SELECT id, email, note FROM {LARGE_TABLE}"
LARGE_RUNS = 3
POOL_SIZE = 8
START_TIMEOUT_S = 10.0
PGBENCH_GRACE_S = 60.0
PSQL_TIMEOUT_S = 300.0
TPS_LINE = re.compile(r"^tps = ([0-9.]+) \(without initial connection time\)", re.MULTILINE)


class BenchError(RuntimeError):
    """A measurement could not be taken as described: the bench stops rather than report it."""


@dataclass(frozen=True)
class Endpoint:
    """Where a libpq client logs in, and as whom."""

    host: str
    port: int
    user: str
    password: str
    database: str

    def env(self) -> dict[str, str]:
        # Our own PG* settings only: a PGSERVICE or PGOPTIONS from the caller's shell would change
        # what is measured. The password goes in the environment, never on a command line.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(
            PGHOST=self.host,
            PGPORT=str(self.port),
            PGUSER=self.user,
            PGPASSWORD=self.password,
            PGDATABASE=self.database,
            PGSSLMODE="disable",
            PGGSSENCMODE="disable",
            PGAPPNAME="gatehouse-bench",
        )
        return env


def bench_seconds() -> int:
    raw = os.environ.get("GATEHOUSE_BENCH_SECONDS", "")
    if not raw:
        return DEFAULT_SECONDS
    try:
        seconds = int(raw)
    except ValueError:
        raise BenchError(f"GATEHOUSE_BENCH_SECONDS must be a whole number of seconds, not {raw!r}") from None
    if seconds < 1:
        raise BenchError("GATEHOUSE_BENCH_SECONDS must be at least 1")
    return seconds


def client_tool(name: str) -> str:
    """A PostgreSQL client program: beside the server binaries (Debian), else on PATH."""
    with contextlib.suppress(RuntimeError):
        candidate = find_bindir() / name
        if candidate.exists():
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise BenchError(f"{name} not found: install the PostgreSQL client programs")
    return found


def pgbouncer_binary() -> str | None:
    # Debian puts it in /usr/sbin, which is not on every user's PATH.
    found = shutil.which("pgbouncer")
    if found:
        return found
    return "/usr/sbin/pgbouncer" if os.access("/usr/sbin/pgbouncer", os.X_OK) else None


def pgbench_tps(target: Endpoint, seconds: int) -> float:
    """Select-only pgbench against `target`; the TPS figure without connection time."""
    args = [
        client_tool("pgbench"),
        "-n",
        "-S",
        "-c",
        str(CLIENTS),
        "-j",
        str(THREADS),
        "-T",
        str(seconds),
        "-M",
        "simple",
    ]
    proc = subprocess.run(
        args, env=target.env(), capture_output=True, text=True, timeout=seconds + PGBENCH_GRACE_S, check=False
    )
    match = TPS_LINE.search(proc.stdout)
    # pgbench exits 0 but reports failed transactions when some clients were refused mid-run.
    failed = re.search(r"number of failed transactions: ([1-9][0-9]*)", proc.stdout)
    if proc.returncode != 0 or match is None or failed:
        raise BenchError(
            f"pgbench against {target.host}:{target.port} failed ({proc.returncode}):\n"
            f"{proc.stdout[-1500:]}\n{proc.stderr[-1500:]}"
        )
    return float(match.group(1))


def prepare_database(pg: PostgresInfo, readers: list[str]) -> None:
    """`bench` with pgbench's tables (scale 10) and the 1M-row table, readable by `readers`."""
    admin = pg.connect()
    try:
        if not admin.run("SELECT 1 FROM pg_database WHERE datname = :name", name=DATABASE):
            admin.run(f"CREATE DATABASE {pg8000.native.identifier(DATABASE)}")
    finally:
        admin.close()
    superuser = Endpoint(pg.host, pg.port, pg.user, pg.password, DATABASE)
    proc = subprocess.run(
        [client_tool("pgbench"), "-i", "-s", str(SCALE), "-q"],
        env=superuser.env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        raise BenchError(f"pgbench -i failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    con = pg.connect(DATABASE)
    try:
        con.run(f"DROP TABLE IF EXISTS {LARGE_TABLE}")
        con.run(
            f"CREATE TABLE {LARGE_TABLE} AS SELECT g AS id, 'person' || g || '@example.com' AS email, "
            f"md5(g::text) AS note FROM generate_series(1, {LARGE_ROWS}) AS g"
        )
        con.run(f"ALTER TABLE {LARGE_TABLE} ADD PRIMARY KEY (id)")
        con.run(f"VACUUM ANALYZE {LARGE_TABLE}")
        # The stack granted its roles what existed when it provisioned; these tables came later.
        for role in readers:
            who = pg8000.native.identifier(role)
            con.run(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {who}")
    finally:
        con.close()


@contextlib.contextmanager
def pgbouncer(binary: str, upstream: PostgresInfo) -> Iterator[Endpoint]:
    """A real pgbouncer in front of `upstream`'s `bench`, on a free loopback port, until exit."""
    user = _run_as_user()  # pgbouncer refuses to run as root, as initdb does
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="gatehouse-pgbouncer-") as tmp:
        workdir = Path(tmp)
        userlist = workdir / "userlist.txt"
        # A plain-text password lets pgbouncer answer the client's SCRAM exchange and run its own
        # with the server; the file is readable by the pooler's user only.
        userlist.write_text(f'"{upstream.user}" "{upstream.password}"\n')
        ini = workdir / "pgbouncer.ini"
        ini.write_text(
            "\n".join(
                [
                    "[databases]",
                    f"{DATABASE} = host={upstream.host} port={upstream.port} dbname={DATABASE}",
                    "[pgbouncer]",
                    "listen_addr = 127.0.0.1",
                    f"listen_port = {port}",
                    "unix_socket_dir =",
                    "auth_type = scram-sha-256",
                    f"auth_file = {userlist}",
                    "pool_mode = transaction",
                    f"default_pool_size = {POOL_SIZE}",
                    "max_client_conn = 100",
                    f"logfile = {workdir / 'pgbouncer.log'}",
                    "log_connections = 0",
                    "log_disconnections = 0",
                    # libpq clients send it; pgbouncer would otherwise refuse the login.
                    "ignore_startup_parameters = extra_float_digits",
                    "",
                ]
            )
        )
        for path in (userlist, ini):
            path.chmod(0o600)
        if user:
            entry = pwd.getpwnam(user)
            for path in (workdir, userlist, ini):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        cmd = [binary, str(ini)]
        if user:
            cmd = ["runuser", "-u", user, "--", *cmd]
        # Its own process group: runuser forwards nothing reliably, so stop signals the group.
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            endpoint = Endpoint("127.0.0.1", port, upstream.user, upstream.password, DATABASE)
            _wait_for_login(endpoint, proc, workdir / "pgbouncer.log")
            yield endpoint
        finally:
            _stop_group(proc)


def _wait_for_login(target: Endpoint, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise BenchError(f"pgbouncer exited ({proc.returncode}): {stderr}\n{_tail(log_path)}")
        try:
            con = pg8000.native.Connection(
                target.user, host=target.host, port=target.port, password=target.password, database=DATABASE
            )
        except (OSError, pg8000.native.InterfaceError, pg8000.native.DatabaseError) as exc:
            last = exc
            time.sleep(0.05)
            continue
        con.run("SELECT 1")
        con.close()
        return
    raise BenchError(f"pgbouncer did not accept a login within {START_TIMEOUT_S:.0f} s: {last}")


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
    if proc.stderr:
        proc.stderr.close()


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def proxy_endpoint(client: GatehouseClient, connection: str) -> Endpoint:
    """Log-in details for the proxy from `POST /v1/proxy-tokens` (what `gatehouse proxy-token` prints)."""
    answer = client.proxy_token(connection)
    body = answer.body if isinstance(answer.body, Mapping) else {}
    if not answer.ok or body.get("host") is None:
        reason = body.get("message") or body.get("error") or f"HTTP {answer.status_code}"
        raise BenchError(f"no proxy token for {connection}: {reason}")
    return Endpoint(
        str(body["host"]),
        int(body["port"]),
        str(body["username"]),
        str(body["password"]),
        str(body["database"]),
    )


def psql_seconds(target: Endpoint) -> float:
    """Wall time of psql reading the whole large result to /dev/null."""
    started = time.perf_counter()
    proc = subprocess.run(
        [client_tool("psql"), "-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", LARGE_SQL],
        env=target.env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=PSQL_TIMEOUT_S,
        check=False,
    )
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise BenchError(f"psql against {target.host}:{target.port} failed: {proc.stderr.strip()[-1500:]}")
    return elapsed


def psql_row_count(target: Endpoint) -> int:
    """Lines psql prints for the large result (untimed): proof the path returns every row."""
    proc = subprocess.run(
        [client_tool("psql"), "-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", LARGE_SQL],
        env=target.env(),
        capture_output=True,
        timeout=PSQL_TIMEOUT_S,
        check=False,
    )
    if proc.returncode != 0:
        raise BenchError(f"psql against {target.host}:{target.port} failed: {proc.stderr.decode()[-1500:]}")
    return proc.stdout.count(b"\n")


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise BenchError(f"/proc/{pid}/status has no {field}")


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux 4.0+); False when we may not."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _ratio(a: float, b: float) -> float:
    return round(a / b, 3)


def _say(message: str) -> None:
    print(f"  bench_proxy: {message}", flush=True)


def _large_result(
    direct: Endpoint, proxy: Endpoint | None, proxy_pid: int | None, figures: dict[str, float]
) -> None:
    targets = {"direct": direct} | ({"proxy": proxy} if proxy is not None else {})
    for name, target in targets.items():
        rows = psql_row_count(target)
        if rows != LARGE_ROWS:
            raise BenchError(f"the large result {name} returned {rows} rows, not {LARGE_ROWS}")
    reset = False
    if proxy is not None and proxy_pid is not None:
        reset = reset_peak_rss(proxy_pid)
        if not reset:
            _say(f"cannot reset pid {proxy_pid}'s peak RSS: proxy_peak_rss_mb is its lifetime peak")
        figures["proxy_rss_before_large_result_mb"] = round(status_kib(proxy_pid, "VmRSS") / 1024, 1)
    times: dict[str, list[float]] = {name: [] for name in targets}
    for i in range(LARGE_RUNS):
        # Alternate which path goes first, so drift on a shared machine hits both alike.
        order = list(targets) if i % 2 == 0 else list(reversed(targets))
        for name in order:
            times[name].append(psql_seconds(targets[name]))
    direct_s = statistics.median(times["direct"])
    figures["large_result_rows_per_s_direct"] = round(LARGE_ROWS / direct_s)
    if proxy is not None:
        proxy_s = statistics.median(times["proxy"])
        figures["large_result_rows_per_s_proxy"] = round(LARGE_ROWS / proxy_s)
        figures["large_result_proxy_over_direct"] = _ratio(direct_s, proxy_s)
        if proxy_pid is not None:
            figures["proxy_peak_rss_mb"] = round(status_kib(proxy_pid, "VmHWM") / 1024, 1)


def _proxy_pid(state: Mapping[str, object]) -> int | None:
    raw = state.get("pg_proxy_pid")
    if raw is None:
        _say("local.json has no pg_proxy_pid: proxy_peak_rss_mb not measured")
        return None
    pid = int(str(raw))
    if not Path(f"/proc/{pid}/status").exists():
        _say(f"pg_proxy_pid {pid} has no /proc entry: proxy_peak_rss_mb not measured")
        return None
    return pid


def run() -> dict[str, float]:
    seconds = bench_seconds()
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="gatehouse-bench-proxy-") as tmp:
        stack = LocalStack(state_dir=Path(tmp) / ".gatehouse", demo_config_path=BENCH_CONFIG)
        state = stack.up()
        try:
            pg = stack.postgres
            assert pg is not None and stack.provisioned is not None
            roles = stack.provisioned.database_roles
            prepare_database(pg, [roles[c] for c in (ASYNC_CONNECTION, SYNC_CONNECTION) if c in roles])
            direct = Endpoint(pg.host, pg.port, pg.user, pg.password, DATABASE)

            proxies: dict[str, Endpoint] = {}
            if not state.get("pg_proxy"):
                _say("the local stack runs no Postgres proxy (pg_proxy is null): proxy figures not measured")
            else:
                client = GatehouseClient.from_local(AGENT, stack.state_path)
                for connection in (ASYNC_CONNECTION, SYNC_CONNECTION):
                    if connection not in roles:
                        _say(f"the local stack has no connection {connection}: its figures not measured")
                        continue
                    proxies[connection] = proxy_endpoint(client, connection)

            pgbench_tps(direct, WARMUP_SECONDS)
            figures["pgbench_tps_direct"] = tps_direct = round(pgbench_tps(direct, seconds), 1)
            binary = pgbouncer_binary()
            if binary is None:
                _say("no pgbouncer binary (bash scripts/ensure-pgbouncer.sh): pgbouncer figures not measured")
            else:
                with pgbouncer(binary, pg) as pooled:
                    tps = pgbench_tps(pooled, seconds)
                figures["pgbench_tps_pgbouncer"] = round(tps, 1)
                figures["pgbench_pgbouncer_over_direct"] = _ratio(tps, tps_direct)
            if ASYNC_CONNECTION in proxies:
                tps = pgbench_tps(proxies[ASYNC_CONNECTION], seconds)
                figures["pgbench_tps_proxy"] = round(tps, 1)
                figures["pgbench_proxy_over_direct"] = _ratio(tps, tps_direct)
            if SYNC_CONNECTION in proxies:
                tps = pgbench_tps(proxies[SYNC_CONNECTION], seconds)
                figures["pgbench_tps_proxy_sync"] = round(tps, 1)
                figures["pgbench_proxy_sync_over_direct"] = _ratio(tps, tps_direct)

            proxy = proxies.get(ASYNC_CONNECTION)
            _large_result(direct, proxy, _proxy_pid(state) if proxy is not None else None, figures)
        finally:
            stack.down()
    return figures


if __name__ == "__main__":
    started = time.perf_counter()
    for name, value in run().items():
        print(f"{name}: {value}")
    print(f"({time.perf_counter() - started:.1f} s)")
