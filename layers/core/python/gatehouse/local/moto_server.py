"""moto in server mode on loopback: the AWS services of the local stack, over real HTTP.

Every boto3 client of the local stack (the API handler, the CLI, DuckDB for audit queries)
talks to this one endpoint, so what runs locally goes through the same wire protocol as in AWS.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from moto.awslambda_simple.models import LambdaSimpleBackend
from moto.server import ThreadedMotoServer

from gatehouse.local.apigw import LambdaContext

log = logging.getLogger(__name__)

# Step Functions runs state machines only when asked to (the engine moto ported from LocalStack);
# Lambda has no Docker engine here, so the docker-less backend is the only one that can start.
MOTO_CONFIG: dict[str, Any] = {
    "stepfunctions": {"execute_state_machine": True},
    "lambda": {"use_docker": False},
}
# moto's service integrations inside Step Functions call back to localhost:$MOTO_PORT.
MOTO_PORT_ENV = "MOTO_PORT"
DEFAULT_ACCOUNT_ID = "123456789012"  # moto's account for any credentials it does not know


class MotoServerError(RuntimeError):
    """The moto server could not be started or configured."""


class MotoServer:
    """A ThreadedMotoServer on 127.0.0.1 and a free port, configured for the local stack.

    moto keeps its state in process-wide backends: two servers in one process share it, and
    `start()` resets it so every stack starts empty.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, timeout_s: float = 10.0) -> None:
        self._host = host
        self._requested_port = port
        self._timeout_s = timeout_s
        self._server: ThreadedMotoServer | None = None
        self._saved_moto_port: str | None = None
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.port: int | None = None

    @property
    def endpoint_url(self) -> str:
        if self.port is None:
            raise MotoServerError("the moto server is not running")
        return f"http://{self._host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> str:
        """Start, reset and configure the server; return its endpoint URL."""
        if self._server is not None:
            return self.endpoint_url
        # Port 0 lets the kernel pick: no window between choosing a port and binding it.
        server = ThreadedMotoServer(ip_address=self._host, port=self._requested_port, verbose=False)
        server.start()
        self._server = server
        self._own_request_threads(server)
        self.port = int(server.get_host_and_port()[1])
        self._saved_moto_port = os.environ.get(MOTO_PORT_ENV)
        os.environ[MOTO_PORT_ENV] = str(self.port)
        try:
            self._post("/moto-api/reset", None)
            self._post("/moto-api/config", MOTO_CONFIG)
        except Exception:
            self.stop()
            raise
        return self.endpoint_url

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.stop()
        with self._lock:
            open_connections = list(self._connections)
        # Keep-alive connections (boto3 pools them) would hold their threads forever: end the
        # read side so each thread sees EOF and returns.
        for conn in open_connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RD)
        # ThreadedMotoServer.stop() ends serve_forever but leaves the listening socket open.
        wsgi = getattr(server, "_server", None)
        if wsgi is not None:
            wsgi.server_close()  # joins the request threads, now that they are not daemons
        if self._saved_moto_port is None:
            os.environ.pop(MOTO_PORT_ENV, None)
        else:
            os.environ[MOTO_PORT_ENV] = self._saved_moto_port
        self.port = None

    def _own_request_threads(self, server: ThreadedMotoServer) -> None:
        """Make werkzeug's request threads joinable and their connections closable on stop.

        ThreadedMotoServer runs werkzeug's threaded server with daemon request threads nobody
        joins. Nothing has connected yet (only we know the port), so switching the server to
        non-daemon threads and a connection-tracking handler class here applies to every request.
        The server object is a private attribute of moto 5.2.5 (pinned in pyproject.toml).
        """
        wsgi = getattr(server, "_server", None)
        if wsgi is None:
            return
        connections, lock = self._connections, self._lock
        base = wsgi.RequestHandlerClass

        class TrackedHandler(base):  # type: ignore[misc, valid-type]
            def setup(self) -> None:
                super().setup()
                with lock:
                    connections.add(self.connection)

            def finish(self) -> None:
                try:
                    super().finish()
                finally:
                    with lock:
                        connections.discard(self.connection)

            def log_request(self, code: Any = "-", size: Any = "-") -> None:
                # werkzeug prints every request to stderr; ours go to debug.
                log.debug("moto %s %s", self.requestline, code)

        wsgi.RequestHandlerClass = TrackedHandler
        wsgi.daemon_threads = False
        wsgi.block_on_close = True

    def _post(self, path: str, body: dict[str, Any] | None) -> None:
        data = json.dumps(body).encode() if body is not None else b""
        req = urllib.request.Request(  # noqa: S310 - a loopback URL we built ourselves
            self.endpoint_url + path,
            data=data,
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        # No proxy: the server is on loopback, whatever HTTP_PROXY says.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(req, timeout=self._timeout_s) as resp:
                resp.read()
        except OSError as exc:
            raise MotoServerError(f"moto refused {path}: {exc}") from exc

    def __enter__(self) -> MotoServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- Lambda: our handlers behind moto's docker-less backend ------------------------------------

LambdaHandler = Callable[[Any, Any], Any]


class LambdaDispatcher:
    """Make moto's docker-less Lambda backend run our handlers, looked up by function name.

    moto's Step Functions engine invokes a task's function through the Lambda API of this very
    server; the docker-less backend would answer with a canned string. `install()` replaces
    `LambdaSimpleBackend.invoke` (process-wide, as moto's backends are) with `invoke` below, so a
    state machine task, or anyone calling `lambda.invoke`, runs the real handler in-process with
    the stack's environment. Functions not in `handlers` keep moto's behaviour.
    """

    def __init__(self, handlers: Mapping[str, LambdaHandler], *, join_timeout_s: float = 10.0) -> None:
        self._handlers = dict(handlers)
        self._join_timeout_s = join_timeout_s
        self._original: Any = None
        self._async: set[threading.Thread] = set()
        self._lock = threading.Lock()

    def install(self) -> None:
        if self._original is not None:
            return
        current = LambdaSimpleBackend.invoke
        if getattr(current, "_gatehouse_dispatcher", None) is not None:
            raise MotoServerError("another Lambda dispatcher is installed in this process")
        dispatcher = self

        def invoke(
            backend: Any,
            function_name: str,
            qualifier: str | None,
            body: Any,
            headers: Any,
            response_headers: Any,
        ) -> str | bytes | None:
            return dispatcher.invoke(
                backend, current, function_name, qualifier, body, headers, response_headers
            )

        invoke._gatehouse_dispatcher = self  # type: ignore[attr-defined]
        self._original = current
        LambdaSimpleBackend.invoke = invoke  # type: ignore[method-assign, assignment]

    def uninstall(self) -> None:
        original, self._original = self._original, None
        if original is not None:
            LambdaSimpleBackend.invoke = original  # type: ignore[method-assign]
        with self._lock:
            pending = list(self._async)
        for thread in pending:
            thread.join(self._join_timeout_s)
            if thread.is_alive():
                log.warning("an asynchronous invocation (%s) is still running", thread.name)

    def invoke(
        self,
        backend: Any,
        original: Any,
        function_name: str,
        qualifier: str | None,
        body: Any,
        headers: Any,
        response_headers: dict[str, Any],
    ) -> str | bytes | None:
        # Raises moto's ResourceNotFound for an unknown function, as Lambda does; accepts an ARN.
        fn = backend.get_function(function_name, qualifier)
        handler = self._handlers.get(fn.function_name)
        if handler is None:
            return original(backend, function_name, qualifier, body, headers, response_headers)
        event = _event_from(body)
        context = _context_for(fn)
        if (headers.get("X-Amz-Invocation-Type") or "RequestResponse") == "Event":
            # Lambda queues the event and answers 202 at once (moto sets the status from the header).
            thread = threading.Thread(
                target=self._run_async,
                args=(handler, event, context),
                name=f"lambda-event-{fn.function_name}",
                daemon=True,
            )
            with self._lock:
                self._async.add(thread)
            thread.start()
            return b""
        try:
            result = handler(event, context)
        except Exception as exc:  # noqa: BLE001 - any handler error is the function's error, as in Lambda
            log.info("function %s failed: %s: %s", fn.function_name, type(exc).__name__, exc)
            response_headers["x-amz-function-error"] = "Unhandled"
            return json.dumps(
                {"errorType": type(exc).__name__, "errorMessage": str(exc), "stackTrace": []}
            ).encode()
        return json.dumps(result).encode()

    def _run_async(self, handler: LambdaHandler, event: Any, context: Any) -> None:
        try:
            handler(event, context)
        except Exception:  # Lambda would retry twice, then drop it; we log it
            log.exception("asynchronous invocation of %s failed", context.function_name)
        finally:
            with self._lock:
                self._async.discard(threading.current_thread())

    def __enter__(self) -> LambdaDispatcher:
        self.install()
        return self

    def __exit__(self, *exc: object) -> None:
        self.uninstall()


def _event_from(body: Any) -> Any:
    if isinstance(body, bytes):
        body = body.decode("utf-8")
    if not body:
        return {}
    return json.loads(body)


def _context_for(fn: Any) -> LambdaContext:
    return LambdaContext(
        function_name=fn.function_name,
        invoked_function_arn=fn.function_arn,
        aws_request_id=str(uuid.uuid4()),
        memory_limit_in_mb=int(getattr(fn, "memory_size", 128) or 128),
        timeout_s=float(getattr(fn, "timeout", 3) or 3),
    )
