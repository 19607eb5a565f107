"""``upstream.bulk_get``, the WADO-RS relay's reader, against a loopback server that
writes exactly the bytes each case needs (a real socket peer: framing, early ends, stalls
and TLS are what is tested, so the server must be able to get them wrong on purpose).

The same reader is exercised against Orthanc in test_upstream_retrieve and through the
gateway in test_gateway_search; this file covers the framings Orthanc never uses
(Content-Length, chunked, body bytes arriving with the head) and the failures."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pacsfhir.upstream.bulk_get import READ_BYTES, BulkGetError, bulk_get

PAYLOAD = bytes(range(256)) * (3 * READ_BYTES // 256 + 1000)  # past three reads


def _serve_once(
    answer: Callable[[socket.socket, bytes], None], tls: ssl.SSLContext | None = None
) -> tuple[int, list[bytes]]:
    """A listener on a free loopback port whose first connection is handed to
    ``answer`` with the request's head; returns the port and the heads received."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    heads: list[bytes] = []

    def run() -> None:
        with listener:
            conn, _ = listener.accept()
            try:
                if tls is not None:
                    conn = tls.wrap_socket(conn, server_side=True)
                with conn:
                    head = b""
                    while b"\r\n\r\n" not in head:
                        got = conn.recv(4096)
                        if not got:
                            return
                        head += got
                    heads.append(head)
                    answer(conn, head)
            except OSError:  # the client refusing the handshake, or leaving early
                conn.close()

    threading.Thread(target=run, daemon=True).start()
    return listener.getsockname()[1], heads


def _read_all(
    url: str, timeout: float = 5.0, **kwargs: object
) -> tuple[int, dict[str, str], bytes]:
    with bulk_get(url, [("Accept", "*/*")], timeout, **kwargs) as answer:  # type: ignore[arg-type]
        return answer.status, answer.headers, b"".join(bytes(c) for c in answer.body)


def _sends(*pieces: bytes, close: bool = True) -> Callable[[socket.socket, bytes], None]:
    def answer(conn: socket.socket, _head: bytes) -> None:
        for piece in pieces:
            conn.sendall(piece)
        if close:
            conn.shutdown(socket.SHUT_WR)

    return answer


def _chunked(body: bytes, size: int) -> bytes:
    pieces = [
        b"%x\r\n%s\r\n" % (len(body[i : i + size]), body[i : i + size])
        for i in range(0, len(body), size)
    ]
    return b"".join(pieces) + b"0\r\n\r\n"


HEAD_CL = b"HTTP/1.1 200 OK\r\nContent-Type: application/x\r\nContent-Length: %d\r\n\r\n"


@pytest.mark.parametrize(
    ("name", "wire"),
    [
        ("content-length, body in its own writes", [HEAD_CL % len(PAYLOAD), PAYLOAD]),
        (
            "content-length, body begun with the head",
            [HEAD_CL % len(PAYLOAD) + PAYLOAD[:5000], PAYLOAD[5000:]],
        ),
        ("content-length, body whole with the head", [HEAD_CL % len(PAYLOAD) + PAYLOAD]),
        (
            "to the connection's end",
            [
                b"HTTP/1.1 200 OK\r\nContent-Type: application/x\r\n\r\n" + PAYLOAD[:10],
                PAYLOAD[10:],
            ],
        ),
        (
            "chunked",
            [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", _chunked(PAYLOAD, 70001)],
        ),
    ],
)
def test_every_framing_delivers_the_body_byte_for_byte(name: str, wire: list[bytes]) -> None:
    port, heads = _serve_once(_sends(*wire))
    status, _, body = _read_all(f"http://127.0.0.1:{port}/studies/1.2?x=1")
    assert status == 200
    assert body == PAYLOAD, name
    assert heads[0].startswith(b"GET /studies/1.2?x=1 HTTP/1.1\r\n")
    assert b"\r\naccept: */*\r\n" in heads[0].lower()
    assert b"\r\nhost: 127.0.0.1:%d\r\n" % port in heads[0].lower()


def test_a_content_length_body_does_not_read_past_its_end() -> None:
    """The server keeps the connection open after the body: the reader stops at the
    length rather than waiting for more (which would hang until the timeout)."""
    port, _ = _serve_once(_sends(HEAD_CL % len(PAYLOAD), PAYLOAD, close=False))
    status, _, body = _read_all(f"http://127.0.0.1:{port}/", timeout=30)
    assert (status, body) == (200, PAYLOAD)


@pytest.mark.parametrize("status", [204, 304])
def test_an_answer_without_a_body(status: int) -> None:
    port, _ = _serve_once(_sends(b"HTTP/1.1 %d X\r\n\r\n" % status, close=False))
    assert _read_all(f"http://127.0.0.1:{port}/")[::2] == (status, b"")


def test_an_error_answer_keeps_its_status_and_body() -> None:
    message = b'{"error": "no such study"}'
    head = b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    port, _ = _serve_once(_sends(head % len(message) + message))
    status, headers, body = _read_all(f"http://127.0.0.1:{port}/")
    assert (status, headers["content-type"], body) == (404, "application/json", message)


def test_informational_answers_are_skipped() -> None:
    port, _ = _serve_once(
        _sends(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", HEAD_CL % 2 + b"ok")
    )
    assert _read_all(f"http://127.0.0.1:{port}/")[::2] == (200, b"ok")


def test_a_body_cut_short_of_its_length_is_an_error() -> None:
    port, _ = _serve_once(_sends(HEAD_CL % len(PAYLOAD), PAYLOAD[: len(PAYLOAD) // 2]))
    with pytest.raises(BulkGetError, match="short of its length"):
        _read_all(f"http://127.0.0.1:{port}/")


def test_a_chunked_body_cut_short_is_an_error() -> None:
    wire = _chunked(PAYLOAD, 70001)
    port, _ = _serve_once(
        _sends(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", wire[:-100])
    )
    with pytest.raises(BulkGetError):
        _read_all(f"http://127.0.0.1:{port}/")


def test_a_stalled_body_times_out() -> None:
    stop = threading.Event()

    def stall(conn: socket.socket, _head: bytes) -> None:
        conn.sendall(HEAD_CL % len(PAYLOAD) + PAYLOAD[:1000])
        stop.wait(10)

    port, _ = _serve_once(stall)
    try:
        with pytest.raises(BulkGetError) as failure:
            _read_all(f"http://127.0.0.1:{port}/", timeout=0.5)
        assert failure.value.timed_out
    finally:
        stop.set()


def test_a_refused_connection_is_an_error_and_not_a_timeout() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, not listening: refused
        with pytest.raises(BulkGetError, match="connecting") as failure:
            _read_all(f"http://127.0.0.1:{port}/")
    assert not failure.value.timed_out


@pytest.mark.parametrize(
    "wire",
    [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxx",
        b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * (100 << 10) + b"\r\n\r\n",
    ],
    ids=["not-http", "two-lengths", "unknown-coding", "huge-head"],
)
def test_an_answer_that_breaks_http_is_an_error(wire: bytes) -> None:
    port, _ = _serve_once(_sends(wire))
    with pytest.raises(BulkGetError):
        _read_all(f"http://127.0.0.1:{port}/")


@contextmanager
def _tls_pair(tmp_path: Path) -> Iterator[tuple[ssl.SSLContext, ssl.SSLContext]]:
    """A server context with a fresh self-signed certificate for 127.0.0.1, and a client
    context that trusts it (and nothing else)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert_path, key_path)
    client = ssl.create_default_context(cafile=str(cert_path))
    yield server, client


def test_https_carries_the_body(tmp_path: Path) -> None:
    with _tls_pair(tmp_path) as (server, client):
        port, _ = _serve_once(_sends(HEAD_CL % len(PAYLOAD), PAYLOAD), tls=server)
        status, _, body = _read_all(f"https://127.0.0.1:{port}/", ssl_context=client)
    assert (status, body) == (200, PAYLOAD)


def test_https_to_an_untrusted_certificate_is_refused(tmp_path: Path) -> None:
    with _tls_pair(tmp_path) as (server, _client):
        port, _ = _serve_once(_sends(HEAD_CL % 2 + b"ok"), tls=server)
        with pytest.raises(BulkGetError, match="TLS"):
            _read_all(f"https://127.0.0.1:{port}/")  # the system's trust store only
