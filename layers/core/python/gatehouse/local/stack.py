"""The whole local stack in one process: Postgres, moto, provisioning, the API stand-in.

    stack = LocalStack()
    state = stack.up()      # writes .gatehouse/local.json
    ...
    stack.down()            # stops everything, removes local.json

One stack per state directory: the process holding it keeps an exclusive lock on
`.gatehouse/local.lock` for its lifetime, so a second `up` fails at once and `down` never
signals a process that merely reused a stale pid.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import fcntl
import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import FrameType, ModuleType
from typing import IO, Any

from gatehouse import names
from gatehouse.local.apigw import ApiGateway, Handler, IamCredential
from gatehouse.local.approve import INTERACTIONS_PATH, local_slack_secret
from gatehouse.local.console import ApprovalsConsole
from gatehouse.local.demo_targets import DemoTargets
from gatehouse.local.moto_server import LambdaDispatcher, MotoServer
from gatehouse.local.postgres import PostgresInfo, ThrowawayPostgres
from gatehouse.local.provision import (
    DEFAULT_REGION,
    LOCAL_AWS_KEY,
    AwsClients,
    DemoConfig,
    ProvisionResult,
    default_asl_cache_dir,
    provision,
)
from gatehouse.local.proxy import LocalProxy, store_tls_secret
from gatehouse.local.seed import seed
from gatehouse.local.slack_api import SlackApiStandIn, create_slack_secret

log = logging.getLogger(__name__)

# This file is layers/core/python/gatehouse/local/stack.py: the repository is five levels up.
REPO_ROOT = Path(__file__).resolve().parents[5]
API_HANDLER_PATH = REPO_ROOT / "functions" / "api" / "handler.py"
DEMO_CONFIG_PATH = REPO_ROOT / "config" / "demo.json"
# The functions moto's Lambda API runs in-process (the state machine's tasks, Slack's async work).
# The notify function is the approvals code under its own name, as deployed (infra/approvals.py).
WORKFLOW_HANDLER_PATHS = {
    names.APPROVALS_FUNCTION: REPO_ROOT / "functions" / "approvals" / "handler.py",
    names.APPROVALS_NOTIFY_FUNCTION: REPO_ROOT / "functions" / "approvals" / "handler.py",
    names.SLACK_FUNCTION: REPO_ROOT / "functions" / "slack" / "handler.py",
}

STATE_DIR = Path(".gatehouse")
STATE_FILE = "local.json"
LOCK_FILE = "local.lock"
LOG_FILE = "local.log"
TARGET_KINDS = ("http", "kubernetes", "ssh")
STATE_KEYS = (
    "api",
    "aws",
    "pg_proxy",
    "pg_proxy_pid",
    "console",
    "slack_api",
    "region",
    "agents",
    "bucket",
    "pid",
)

DETACH_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0
MAX_ENVIRONMENTS = 8  # concurrent invocations of one function, each in its own environment


class LocalStackError(RuntimeError):
    """The local stack could not be started or stopped."""


class StackAlreadyRunningError(LocalStackError):
    """Another process holds the local stack of this state directory."""


class LambdaFunction:
    """Invoke a handler file as Lambda does: one event at a time per execution environment.

    An environment is the handler module loaded afresh from its file (its globals are its
    warm state, as in a Lambda container). Concurrent invocations get separate environments,
    up to `max_environments`, so a long poll does not hold up other requests and module-level
    state (powertools' resolver keeps the current event on itself) is never shared between two
    events in flight.
    """

    def __init__(
        self, path: Path, handler_name: str = "lambda_handler", *, max_environments: int = MAX_ENVIRONMENTS
    ) -> None:
        self.path = Path(path)
        self._handler_name = handler_name
        self._max = max_environments
        self._idle: list[Handler] = []
        self._modules: list[str] = []
        self._count = 0
        self._cond = threading.Condition()

    def warm(self) -> None:
        """Load one environment now, so a handler that cannot even import fails `up`."""
        with self._environment():
            pass

    def __call__(self, event: dict[str, Any], context: Any) -> Any:
        with self._environment() as handler:
            return handler(event, context)

    def close(self) -> None:
        with self._cond:
            self._idle.clear()
            for name in self._modules:
                sys.modules.pop(name, None)
            self._modules.clear()
            self._count = 0

    @contextlib.contextmanager
    def _environment(self) -> Iterator[Handler]:
        with self._cond:
            while not self._idle and self._count >= self._max:
                self._cond.wait()
            if self._idle:
                handler: Handler | None = self._idle.pop()
            else:
                handler = None
                self._count += 1
        if handler is None:
            try:
                handler = self._load()
            except BaseException:
                with self._cond:
                    self._count -= 1
                    self._cond.notify()
                raise
        try:
            yield handler
        finally:
            with self._cond:
                self._idle.append(handler)
                self._cond.notify()

    def _load(self) -> Handler:
        if not self.path.is_file():
            raise LocalStackError(f"no function handler at {self.path}")
        name = f"_gatehouse_fn_{self.path.parent.name}_{len(self._modules)}_{id(self):x}"
        spec = importlib.util.spec_from_file_location(name, self.path)
        if spec is None or spec.loader is None:
            raise LocalStackError(f"cannot load {self.path}")
        module: ModuleType = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        with self._cond:
            self._modules.append(name)
        handler = getattr(module, self._handler_name, None)
        if not callable(handler):
            raise LocalStackError(f"{self.path} has no function {self._handler_name}")
        return handler


class WorkflowFunctions:
    """The approvals, notify and Slack functions behind moto's Lambda API, run in this process.

    Step Functions tasks and the Slack function's own asynchronous invocations reach them by
    function name through the LambdaDispatcher, with the environment the API handler has.
    A handler file that does not exist yet is left to moto (which answers a canned string).
    """

    def __init__(self, paths: dict[str, Path] | None = None) -> None:
        self._paths = dict(WORKFLOW_HANDLER_PATHS if paths is None else paths)
        self._functions: dict[str, LambdaFunction] = {}
        self._dispatcher: LambdaDispatcher | None = None

    def start(self) -> None:
        for name, path in self._paths.items():
            if not path.is_file():
                log.warning("function %s: no handler at %s, moto answers for it", name, path)
                continue
            function = LambdaFunction(path)
            self._functions[name] = function
            function.warm()
        self._dispatcher = LambdaDispatcher(self._functions)
        self._dispatcher.install()

    def stop(self) -> None:
        if self._dispatcher is not None:
            self._dispatcher.uninstall()
            self._dispatcher = None
        for function in self._functions.values():
            function.close()
        self._functions.clear()


class LocalStack:
    """Start and stop the embedded stack; `up()` returns what it writes to local.json."""

    def __init__(
        self,
        *,
        state_dir: Path = STATE_DIR,
        region: str = DEFAULT_REGION,
        handler: Handler | None = None,
        handler_path: Path = API_HANDLER_PATH,
        demo_config_path: Path = DEMO_CONFIG_PATH,
        api_port: int = 0,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.region = region
        self._handler = handler
        self._handler_path = handler_path
        self._demo_config_path = demo_config_path
        self._api_port = api_port
        self._postgres: ThrowawayPostgres | None = None
        self._moto: MotoServer | None = None
        self._api: ApiGateway | None = None
        self._function: LambdaFunction | None = None
        self._workflow_functions: WorkflowFunctions | None = None
        self._console: ApprovalsConsole | None = None
        self._slack: SlackApiStandIn | None = None
        self._slack_function: LambdaFunction | None = None
        self._proxy: LocalProxy | None = None
        self._targets: DemoTargets | None = None
        self._lock: IO[str] | None = None
        self._saved_env: dict[str, str | None] = {}
        self.provisioned: ProvisionResult | None = None
        self.state: dict[str, Any] | None = None
        self.timings: dict[str, float] = {}

    @property
    def postgres(self) -> PostgresInfo | None:
        """The throwaway cluster's address and superuser (never written to local.json)."""
        return self._postgres.info if self._postgres is not None else None

    @property
    def state_path(self) -> Path:
        return self.state_dir / STATE_FILE

    def up(self) -> dict[str, Any]:
        if self.state is not None:
            return self.state
        started = time.perf_counter()
        self._lock = acquire_lock(self.state_dir)
        # Postgres runs in processes of its own: never leave it behind when the interpreter exits.
        atexit.register(self.down)
        try:
            self._start()
        except BaseException:
            self.down()
            raise
        self.timings["total"] = time.perf_counter() - started
        log.info(
            "local stack up in %.2f s (%s)",
            self.timings["total"],
            ", ".join(f"{k} {v:.2f} s" for k, v in self.timings.items() if k != "total"),
        )
        assert self.state is not None
        return self.state

    def _start(self) -> None:
        config = DemoConfig.load(self._demo_config_path)
        # A stale local.json (its holder died without cleaning up) would mislead clients.
        self.state_path.unlink(missing_ok=True)

        with self._timed("postgres"):
            self._postgres = ThrowawayPostgres()
            pg = self._postgres.start()
        with self._timed("seed"):
            seed(pg, _postgres_databases(config))
        with self._timed("moto"):
            self._moto = MotoServer()
            endpoint = self._moto.start()
        with self._timed("provision"):
            self.provisioned = provision(
                AwsClients.for_endpoint(endpoint, self.region),
                postgres=pg,
                demo_config_path=self._demo_config_path,
                region=self.region,
                asl_cache_dir=default_asl_cache_dir(),
            )
        with self._timed("targets"):
            # demo-http, demo-k8s, demo-ssh: real servers on loopback, registered like any connection.
            specs = {n: s for n, s in config.connections.items() if s.get("kind") in TARGET_KINDS}
            if specs:
                self._targets = DemoTargets()
                self._targets.start(specs)
                clients = AwsClients.for_endpoint(endpoint, self.region)
                self._targets.register(
                    clients.secretsmanager,
                    clients.dynamodb,
                    self.provisioned.settings.connections_table,
                    specs,
                )
        with self._timed("slack"):
            # The Slack Web API stand-in, and the Slack app's two secrets as a deployed stack holds them.
            secret = create_slack_secret(AwsClients.for_endpoint(endpoint, self.region).secretsmanager)
            self._slack = SlackApiStandIn(secret["bot_token"])
            self._slack.start()
        # The proxy's address is known before the functions start: POST /v1/proxy-tokens names it.
        self._proxy = LocalProxy(self.state_dir / "proxy.log")
        self.provisioned = dataclasses.replace(
            self.provisioned,
            settings=dataclasses.replace(self.provisioned.settings, proxy_endpoint=self._proxy.endpoint),
        )
        env = handler_environment(endpoint, self.region, self.provisioned)
        env[names.ENV_SLACK_API_URL] = self._slack.api_url
        self._set_env(env)
        with self._timed("proxy"):
            store_tls_secret(AwsClients.for_endpoint(endpoint, self.region).secretsmanager)
            self._proxy.start(os.environ)
        with self._timed("functions"):
            self._workflow_functions = WorkflowFunctions()
            self._workflow_functions.start()
        with self._timed("handler"):
            handler = self._handler
            if handler is None:
                self._function = LambdaFunction(self._handler_path)
                self._function.warm()
                handler = self._function
            # POST /slack/interactions goes to the Slack function, as in the deployed stack.
            self._slack_function = LambdaFunction(WORKFLOW_HANDLER_PATHS[names.SLACK_FUNCTION])
        with self._timed("api"):
            self._api = ApiGateway(
                handler,
                signing_credentials(self.provisioned),
                region=self.region,
                account_id=self.provisioned.account_id,
                port=self._api_port,
                route_handlers={"POST /slack/interactions": self._slack_function},
            )
            api_url = self._api.start()
        with self._timed("console"):
            slack_api = self._slack.url
            self._console = start_console(slack_api, api_url, endpoint, self.region, config.approvers)
        self.state = {
            "api": api_url,
            "aws": endpoint,
            "pg_proxy": self._proxy.endpoint,
            "pg_proxy_pid": self._proxy.pid,
            "console": self._console.url if self._console is not None else None,
            # The stand-in's root URL (its read API is /_standin/...), not the WebClient base URL.
            "slack_api": self._console.standin.base_url if self._console is not None else None,
            "region": self.region,
            "agents": {
                name: {"access_key_id": a.access_key_id, "secret_access_key": a.secret_access_key}
                for name, a in self.provisioned.agents.items()
            },
            "bucket": self.provisioned.bucket,
            "pid": os.getpid(),
        }
        write_state(self.state_path, self.state)

    def down(self) -> None:
        """Stop everything that was started, in reverse order; safe to call more than once."""
        steps: list[tuple[str, Callable[[], None]]] = []
        if self._console is not None:
            steps.append(("console", self._console.stop))
        if self._api is not None:
            steps.append(("api", self._api.stop))
        if self._function is not None:
            steps.append(("handler", self._function.close))
        if self._slack_function is not None:
            steps.append(("slack function", self._slack_function.close))
        if self._workflow_functions is not None:
            steps.append(("functions", self._workflow_functions.stop))
        if self._slack is not None:
            steps.append(("slack", self._slack.stop))
        if self._proxy is not None:
            steps.append(("proxy", self._proxy.stop))
        if self._targets is not None:
            steps.append(("targets", self._targets.stop))
        if self._moto is not None:
            steps.append(("moto", self._moto.stop))
        if self._postgres is not None:
            steps.append(("postgres", self._postgres.stop))
        for name, stop in steps:
            try:
                stop()
            except Exception:  # one failed stop must not leave the others running
                log.exception("stopping %s failed", name)
        self._api = self._function = self._moto = self._postgres = None
        self._workflow_functions = None
        self._console = None
        self._slack = None
        self._slack_function = None
        self._proxy = None
        self._targets = None
        self._restore_env()
        if self.state is not None and _read_pid(self.state_path) == os.getpid():
            self.state_path.unlink(missing_ok=True)
        self.state = None
        if self._lock is not None:
            release_lock(self._lock)
            self._lock = None
        atexit.unregister(self.down)

    def __enter__(self) -> dict[str, Any]:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()

    @contextlib.contextmanager
    def _timed(self, step: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[step] = time.perf_counter() - t0
            log.debug("%s took %.2f s", step, self.timings[step])

    def _set_env(self, env: dict[str, str | None]) -> None:
        for key, value in env.items():
            self._saved_env.setdefault(key, os.environ.get(key))
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    def _restore_env(self) -> None:
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_env.clear()


def start_console(
    slack_api_url: str | None,
    api_url: str,
    aws_endpoint: str,
    region: str,
    approvers: Mapping[str, Mapping[str, Any]],
) -> ApprovalsConsole | None:
    """The approvals console over the Slack stand-in, signing with the stack's Slack signing secret.

    None when the stack runs no Slack stand-in: there is nothing to show or click then.
    """
    if not slack_api_url:
        log.warning("no Slack stand-in (%s unset): no approvals console", names.ENV_SLACK_API_URL)
        return None
    secret = local_slack_secret({"aws": aws_endpoint, "region": region})
    console = ApprovalsConsole(
        slack_api_url,
        api_url.rstrip("/") + INTERACTIONS_PATH,
        str(secret["signing_secret"]),
        approvers={user_id: str(a.get("name") or user_id) for user_id, a in approvers.items()},
    )
    console.start()
    return console


def _postgres_databases(config: DemoConfig) -> list[str]:
    return [
        str(spec.get("database") or name)
        for name, spec in config.connections.items()
        if spec.get("kind") == "postgres"
    ]


def handler_environment(endpoint: str, region: str, result: ProvisionResult) -> dict[str, str | None]:
    """What a Lambda function of this stack sees in its environment (None: unset it)."""
    env: dict[str, str | None] = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": LOCAL_AWS_KEY,
        "AWS_SECRET_ACCESS_KEY": LOCAL_AWS_KEY,
        "AWS_SESSION_TOKEN": None,
        "AWS_PROFILE": None,
        "AWS_DEFAULT_REGION": region,
        "AWS_REGION": region,
        "POWERTOOLS_TRACE_DISABLED": "true",
    }
    env.update(result.settings.as_env())
    return env


def signing_credentials(result: ProvisionResult) -> dict[str, IamCredential]:
    return {
        a.access_key_id: IamCredential(a.secret_access_key, a.user_arn, a.user_id)
        for a in result.agents.values()
    }


def write_state(path: Path, state: dict[str, Any]) -> None:
    """Atomically, readable by the owner only (it holds the local agents' keys)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(state, fh, indent=2)
        fh.write("\n")
    os.replace(tmp, path)


def read_state(state_dir: Path = STATE_DIR) -> dict[str, Any] | None:
    try:
        return dict(json.loads((state_dir / STATE_FILE).read_text()))
    except (FileNotFoundError, ValueError):
        return None


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text()
        pid = json.loads(text).get("pid") if path.suffix == ".json" else int(text.strip())
        return int(pid) if pid else None
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def acquire_lock(state_dir: Path) -> IO[str]:
    """Hold `.gatehouse/local.lock` (with our pid in it) or fail: one stack per directory."""
    state_dir.mkdir(parents=True, exist_ok=True)
    fh = open(state_dir / LOCK_FILE, "a+")  # held open for the stack's lifetime
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise StackAlreadyRunningError(_already_running_message(state_dir)) from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"{os.getpid()}\n")
    fh.flush()
    return fh


def release_lock(fh: IO[str]) -> None:
    with contextlib.suppress(OSError):
        fh.seek(0)
        fh.truncate()
    fcntl.flock(fh, fcntl.LOCK_UN)
    fh.close()


def running_pid(state_dir: Path = STATE_DIR) -> int | None:
    """The pid holding the stack of `state_dir`, or None when nobody holds it."""
    lock_path = state_dir / LOCK_FILE
    if not lock_path.exists():
        return None
    with open(lock_path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_pid(state_dir / STATE_FILE) or _read_pid(lock_path) or -1
        fcntl.flock(fh, fcntl.LOCK_UN)
    return None


def _already_running_message(state_dir: Path) -> str:
    state = read_state(state_dir) or {}
    pid = _read_pid(state_dir / STATE_FILE) or _read_pid(state_dir / LOCK_FILE)
    where = f", API at {state['api']}" if state.get("api") else ""
    return (
        f"a local stack is already running here (pid {pid or 'unknown'}{where}); "
        "stop it with `gatehouse local down`"
    )


def run_until_signalled(stack: LocalStack, announce: Callable[[str], None] = print) -> None:
    """`gatehouse local up`: start, announce, wait for Ctrl-C or SIGTERM, tear down."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    watched = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, on_signal) for sig in watched}
    try:
        state = stack.up()
        announce(describe_state(state, stack.timings, stack.state_path))
        while not stop.wait(0.5):
            pass
        announce("stopping the local stack...")
    finally:
        stack.down()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    announce("local stack stopped")


def describe_state(state: dict[str, Any], timings: dict[str, float], state_path: Path) -> str:
    steps = ", ".join(f"{k} {v:.1f}s" for k, v in timings.items() if k != "total")
    agents = ", ".join(sorted(state.get("agents") or {})) or "none"
    return "\n".join(
        [
            f"local stack up in {timings.get('total', 0.0):.1f}s ({steps})",
            f"  api:    {state['api']}",
            f"  aws:    {state['aws']}",
            f"  bucket: {state['bucket']}",
            f"  approvals console: {state.get('console') or 'not running (no Slack stand-in)'}",
            f"  agents: {agents} (keys in {state_path})",
            "Ctrl-C to stop.",
        ]
    )


def start_detached(
    state_dir: Path = STATE_DIR, *, timeout_s: float = DETACH_TIMEOUT_S, extra_args: tuple[str, ...] = ()
) -> dict[str, Any]:
    """`gatehouse local up --detach`: the same stack in a background process; wait until it serves."""
    pid = running_pid(state_dir)
    if pid is not None:
        raise StackAlreadyRunningError(_already_running_message(state_dir))
    state_dir.mkdir(parents=True, exist_ok=True)
    log_path = state_dir / LOG_FILE
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gatehouse.local.cli", "up", "--state-dir", str(state_dir), *extra_args],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # no SIGINT from this terminal, no SIGHUP when it closes
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LocalStackError(
                f"the local stack exited during startup (status {proc.returncode}):\n{_tail(log_path)}"
            )
        state = read_state(state_dir)
        if state and state.get("pid") == proc.pid and _answers(str(state.get("api"))):
            return state
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(STOP_TIMEOUT_S)
    raise LocalStackError(f"the local stack did not start within {timeout_s:.0f} s:\n{_tail(log_path)}")


def stop_running(state_dir: Path = STATE_DIR, *, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
    """`gatehouse local down`: SIGTERM the holder, wait, SIGKILL if it must. Returns its pid."""
    pid = running_pid(state_dir)
    if pid is None:
        # Nobody holds the lock: whatever local.json says is stale.
        (state_dir / STATE_FILE).unlink(missing_ok=True)
        return None
    if pid <= 0:
        raise LocalStackError("a local stack holds the lock but its pid is unknown")
    _signal(pid, signal.SIGTERM)
    if not _wait_exit(pid, timeout_s):
        log.warning("pid %d did not stop within %.0f s: killing it", pid, timeout_s)
        _signal(pid, signal.SIGKILL)
        _wait_exit(pid, 5.0)
    (state_dir / STATE_FILE).unlink(missing_ok=True)
    return pid


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _alive(pid: int) -> bool:
    # Reap it if it is our own child (a zombie still answers kill(0)).
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    """A process that exited but was not reaped yet (Linux /proc; elsewhere assume not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state letter follows the command name, which is in parentheses and may hold spaces.
    return stat.rsplit(")", 1)[-1].split()[:1] == ["Z"]


def _wait_exit(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return not _alive(pid)


def _answers(url: str) -> bool:
    """Any HTTP answer (an unsigned request gets 403 or 404) means the API is serving."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url.rstrip("/") + "/", timeout=2):
            return True
    except urllib.error.HTTPError as exc:
        exc.close()
        return True
    except (OSError, ValueError):
        return False


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
