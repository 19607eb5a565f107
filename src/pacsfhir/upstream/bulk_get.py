"""One HTTP GET whose body is read off the socket in large pieces: the WADO-RS relay.

A retrieve streamed through the gateway is hundreds of megabytes. Read with httpx, every
64 KiB costs a pass through httpcore and h11 and three copies of the bytes (the read,
h11's buffer, the event); measured at 420 MB a retrieve in front of Orthanc, that read
took 0.2-0.3 s of CPU, the socket reads alone 0.05 s, and on a two-core machine shared
with the upstream and the client that was half the throughput lost.

Here h11 writes the request and parses the answer's head and framing, as httpx would;
what follows the head of a body delimited by Content-Length or by the connection's end
is then read straight off the socket into fresh 1 MiB buffers, handed on without a
copy. A chunked body goes through h11 all the way (it must be unframed). One connection
per retrieve (a retrieve is long; a handshake is nothing beside it), TLS when the URL
is https, the timeout per socket operation as httpx applies it.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import h11

READ_BYTES = 1 << 20


class BulkGetError(Exception):
    """The connection failed, timed out (``timed_out``) or broke the protocol."""

    def __init__(self, message: str, timed_out: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.timed_out = timed_out


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names; a repeated header keeps its last value
    body: Iterator[bytes | memoryview]


@contextmanager
def bulk_get(
    url: str,
    headers: list[tuple[str, str]],
    timeout: float,
    ssl_context: ssl.SSLContext | None = None,
) -> Iterator[Answer]:
    """``GET url`` with ``headers``: the answer once its head has arrived, its body
    read as the caller iterates (BulkGetError from the iterator when the connection
    fails; a body shorter than its Content-Length is such a failure). The connection is
    closed on leaving."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BulkGetError(f"not an http(s) URL: {url}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    sock = _connect(parts.hostname, port, parts.scheme == "https", timeout, ssl_context)
    try:
        connection = h11.Connection(h11.CLIENT)
        host = parts.netloc.rsplit("@", 1)[-1]
        request = h11.Request(
            method="GET", target=target, headers=[("Host", host), *headers, ("Connection", "close")]
        )
        try:
            sock.sendall(connection.send(request) + connection.send(h11.EndOfMessage()))
        except OSError as exc:
            raise _failure("sending the request", exc) from exc
        response = _read_head(sock, connection)
        answer_headers = {
            name.decode("latin-1"): value.decode("latin-1") for name, value in response.headers
        }
        yield Answer(response.status_code, answer_headers, _body(sock, connection, answer_headers))
    finally:
        sock.close()


def _connect(
    host: str, port: int, tls: bool, timeout: float, ssl_context: ssl.SSLContext | None
) -> socket.socket:
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise _failure(f"connecting to {host}:{port}", exc) from exc
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if not tls:
        return sock
    try:
        context = ssl_context or ssl.create_default_context()
        return context.wrap_socket(sock, server_hostname=host)
    except OSError as exc:  # ssl.SSLError included
        sock.close()
        raise _failure(f"TLS with {host}:{port}", exc) from exc


def _read_head(sock: socket.socket, connection: h11.Connection) -> h11.Response:
    """The answer's head (informational answers skipped); h11 refuses one that grows
    past its limit (16 KiB incomplete) as a protocol error."""
    while True:
        event = _next(connection)
        if event is h11.NEED_DATA:
            connection.receive_data(_recv(sock, 64 << 10, "reading the answer's head"))
        elif isinstance(event, h11.InformationalResponse):
            continue
        elif isinstance(event, h11.Response):
            return event
        else:
            raise BulkGetError(f"unexpected {type(event).__name__} before the answer")


def _body(
    sock: socket.socket, connection: h11.Connection, headers: dict[str, str]
) -> Iterator[bytes | memoryview]:
    """The body as h11 frames it (it has checked the head's framing headers): a chunked
    one through h11; otherwise what h11 holds already, then the socket read directly
    up to the Content-Length, or to the end of the connection when there is none."""
    if "transfer-encoding" in headers:  # h11 accepts only chunked
        yield from _chunked_body(sock, connection)
        return
    remaining = int(headers["content-length"]) if "content-length" in headers else None
    while True:  # what came with the head
        event = _next(connection)
        if isinstance(event, h11.EndOfMessage):
            return  # the whole body had come (or there is none: 204, 304)
        if not isinstance(event, h11.Data):
            break  # NEED_DATA: the rest is on the socket
        yield bytes(event.data)
        if remaining is not None:
            remaining -= len(event.data)
    while remaining is None or remaining > 0:
        want = READ_BYTES if remaining is None else min(READ_BYTES, remaining)
        view = memoryview(bytearray(want))  # fresh: the last one is still being sent
        filled = 0
        while filled < want:
            got = _recv_into(sock, view[filled:])
            if not got:
                break
            filled += got
        if filled:
            yield view[:filled]
            if remaining is not None:
                remaining -= filled
        if filled < want:  # the connection ended
            if remaining:
                raise BulkGetError(f"the answer ended {remaining} bytes short of its length")
            return


def _chunked_body(sock: socket.socket, connection: h11.Connection) -> Iterator[bytes]:
    while True:
        event = _next(connection)
        if event is h11.NEED_DATA:
            connection.receive_data(_recv(sock, READ_BYTES, "reading the answer"))
        elif isinstance(event, h11.Data):
            yield bytes(event.data)
        elif isinstance(event, h11.EndOfMessage):
            return
        else:
            raise BulkGetError(f"unexpected {type(event).__name__} in the answer's body")


def _next(connection: h11.Connection) -> object:
    try:
        return connection.next_event()
    except h11.RemoteProtocolError as exc:
        raise BulkGetError(f"the answer breaks HTTP/1.1: {exc}") from exc


def _recv(sock: socket.socket, size: int, doing: str) -> bytes:
    try:
        return sock.recv(size)
    except OSError as exc:
        raise _failure(doing, exc) from exc


def _recv_into(sock: socket.socket, view: memoryview) -> int:
    try:
        return sock.recv_into(view)
    except OSError as exc:
        raise _failure("reading the answer", exc) from exc


def _failure(doing: str, exc: OSError) -> BulkGetError:
    if isinstance(exc, TimeoutError):
        return BulkGetError(f"{doing}: timed out", timed_out=True)
    return BulkGetError(f"{doing}: {type(exc).__name__}: {exc.strerror or exc}")
