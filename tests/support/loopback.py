"""A WSGI app served on a free loopback port by werkzeug in a thread, which can be taken
down for real (listening stopped, open connections cut) and brought back on the same
port: the lifecycle the suite's stand-in peers share (the authorization server, the EHR's
FHIR side)."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import Any, Self

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server


class LoopbackServer:
    """Subclasses set ``self.app`` (a WSGI app) before the first request; ``port`` is
    known once constructed."""

    app: Any

    def __init__(self, port: int = 0) -> None:
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._bind(port)
        assert self._server is not None
        self.port: int = self._server.server_port

    def _bind(self, port: int) -> None:
        self._server = make_server(
            "127.0.0.1", port, self._wsgi, threaded=True, request_handler=_handler(self)
        )

    def _wsgi(self, environ: Any, start_response: Any) -> Any:
        return self.app(environ, start_response)

    def start(self) -> None:
        """Serve (again, on the same port after ``stop``)."""
        if self._thread is not None:
            return
        if self._server is None:
            self._bind(self.port)
        server = self._server
        assert server is not None
        self._thread = threading.Thread(
            target=lambda: server.serve_forever(poll_interval=0.05), daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop listening and cut open connections: the server is really down."""
        if self._server is None:
            return
        self._server.shutdown()
        for conn in list(self._connections):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    @contextlib.contextmanager
    def down(self) -> Iterator[None]:
        """``with server.down():`` the server is unreachable inside."""
        self.stop()
        try:
            yield
        finally:
            self.start()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def _handler(owner: LoopbackServer) -> type[WSGIRequestHandler]:
    """Quiet request logs; remember open connections so ``stop`` can cut them."""

    class Handler(WSGIRequestHandler):
        def setup(self) -> None:
            super().setup()
            owner._connections.add(self.connection)

        def finish(self) -> None:
            owner._connections.discard(self.connection)
            super().finish()

        def log_request(self, *args: Any) -> None:
            pass

    return Handler
