"""The cheapest relay this machine can run: a TCP proxy that copies bytes between two
sockets in plain threads (``recv_into`` a 1 MiB buffer, ``sendall``), no HTTP at all.

``bench.gateway`` puts it between the client and Orthanc beside pacsfhir, so that the
cost of relaying at all (a third process copying every byte in and out of the kernel,
on the same cores as the upstream and the client) is measured in the same run as
pacsfhir's relay, and the two can be told apart."""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType
from typing import Self


class TcpRelay:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port: int = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            upstream = socket.create_connection(self.upstream)
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(source, target), daemon=True).start()


def _pump(source: socket.socket, target: socket.socket) -> None:
    buffer = bytearray(1 << 20)
    view = memoryview(buffer)
    with contextlib.suppress(OSError):
        while got := source.recv_into(buffer):
            target.sendall(view[:got])
    with contextlib.suppress(OSError):
        target.shutdown(socket.SHUT_WR)
