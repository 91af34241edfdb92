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
from typing import Any

from moto.server import ThreadedMotoServer

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
