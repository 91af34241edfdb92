"""The stop and context-manager half every loopback HTTP server of the local stack shares."""

from __future__ import annotations

import threading
from http.server import HTTPServer
from typing import Self


class ServedOnLoopback:
    """A server that `start()` runs on `self._thread`; `stop()` shuts it down and joins the thread.

    Subclasses set `_server` and `_thread` in `start()` (and start the thread there).
    """

    _server: HTTPServer | None
    _thread: threading.Thread | None

    def start(self) -> str:
        raise NotImplementedError

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        server.server_close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
