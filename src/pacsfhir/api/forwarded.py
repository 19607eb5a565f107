"""Requests relayed by a reverse proxy: the public origin and the client they came from.

A request whose connection comes from an address in ``PACSFHIR_TRUSTED_PROXIES`` may say,
in ``Forwarded`` (RFC 7239) or in ``X-Forwarded-Host`` / ``-Proto`` / ``-Prefix`` (and
``X-Forwarded-For``), what the client asked for: ``resolve`` reads them into a
``Forwarding`` (the public origin every absolute URL starts with, and the client's
address). From any other address these headers are ignored. Values are checked, never
copied: a host must be a host name, an IP literal or ``[IPv6]``, with an optional port; a
scheme ``http`` or ``https``; a prefix plain path segments; anything else raises
``ForwardingError`` (400), so no header can put other characters into a URL.

With several proxies, the element the first trusted proxy wrote is used: from the right
(the peer's own), left past every element whose ``for`` is itself a trusted proxy, as
uvicorn does for ``X-Forwarded-For``; whatever a client wrote further left is ignored.
Single-valued ``X-Forwarded-*`` headers take their rightmost value (the peer's).

``ForwardedHeaders`` is the ASGI middleware doing this once per request: it keeps the
``Forwarding`` in the scope's state (``api.context`` builds the request's bases from it)
and puts the forwarded client's address in ``scope["client"]`` (the development fence
and the audit see the client, not the proxy).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from pacsfhir.settings import Network

STATE_KEY = "forwarding"
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')
_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,251}[A-Za-z0-9_])?")
_HOST_PORT = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[^:\[\]]+)(?::(?P<port>[0-9]{1,5}))?")
_SEGMENT = re.compile(r"[A-Za-z0-9._~-]{1,100}")
_HEADERS = ("forwarded", "x-forwarded-host", "x-forwarded-proto", "x-forwarded-prefix")


class ForwardingError(ValueError):
    """A trusted proxy's forwarding header that cannot be used as is."""


@dataclass(frozen=True)
class Forwarding:
    origin: str | None  # scheme://host[:port][/prefix], no trailing slash; None: not said
    client: str | None  # the client's IP address, when the proxy names one


def ip_of(node: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address of a ``for`` node or client address (``192.0.2.1``, ``192.0.2.1:80``,
    ``[2001:db8::1]:80``, ``::1``); None for ``unknown``, obfuscated names and junk."""
    if not node:
        return None
    node = node.strip()
    if node.startswith("["):
        node = node[1 : node.find("]")] if "]" in node else ""
    elif node.count(":") == 1:
        node = node.split(":")[0]
    try:
        address = ipaddress.ip_address(node)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_trusted(node: str | None, networks: Iterable[Network]) -> bool:
    address = ip_of(node)
    return address is not None and any(address in network for network in networks)


def forwarded_elements(value: str) -> list[dict[str, str]]:
    """RFC 7239 4: ``Forwarded`` as its elements (lower-case parameter names, values
    unquoted), left to right; raises ForwardingError when it does not parse."""
    elements: list[dict[str, str]] = []
    element: dict[str, str] = {}
    position, length = 0, len(value)
    while True:
        while position < length and value[position] in " \t":
            position += 1
        name = _TOKEN.match(value, position)
        if name is None or value[name.end() : name.end() + 1] != "=":
            raise ForwardingError(f"Forwarded is not name=value pairs: {value[:80]!a}")
        position = name.end() + 1
        token, quoted = _TOKEN.match(value, position), _QUOTED.match(value, position)
        if quoted is not None:
            text, position = re.sub(r"\\(.)", r"\1", quoted.group(1)), quoted.end()
        elif token is not None:
            text, position = token.group(), token.end()
        else:
            raise ForwardingError(f"Forwarded has a value that is not a token: {value[:80]!a}")
        key = name.group().lower()
        if key in element:
            raise ForwardingError(f"Forwarded repeats {key} in one element")
        element[key] = text
        while position < length and value[position] in " \t":
            position += 1
        if position == length:
            elements.append(element)
            return elements
        if value[position] == ",":
            elements.append(element)
            element = {}
        elif value[position] != ";":
            raise ForwardingError(f"Forwarded has {value[position]!a} between pairs")
        position += 1


def check_host(value: str) -> str:
    """A host[:port] fit for a URL, lower-cased; raises ForwardingError."""
    found = _HOST_PORT.fullmatch(value.strip())
    host = found.group("host") if found else ""
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            host = ""
    elif not _NAME.fullmatch(host):
        host = ""
    port = found.group("port") if found else None
    if not host or (port is not None and not 0 < int(port) <= 65535):
        raise ForwardingError(f"forwarded host is not host[:port]: {value[:80]!a}")
    return (f"{host}:{port}" if port else host).lower()


def check_proto(value: str) -> str:
    proto = value.strip().lower()
    if proto not in ("http", "https"):
        raise ForwardingError(f"forwarded proto must be http or https, not {value[:20]!a}")
    return proto


def check_prefix(value: str) -> str:
    """A path prefix of plain segments, with a leading slash and none trailing ('' for
    the root); raises ForwardingError."""
    segments = [s for s in value.strip().split("/") if s]
    if len(segments) > 20 or any(s in (".", "..") or not _SEGMENT.fullmatch(s) for s in segments):
        raise ForwardingError(f"X-Forwarded-Prefix is not a plain path: {value[:80]!a}")
    return "".join(f"/{s}" for s in segments)


def _last(value: str | None) -> str | None:
    if value is None:
        return None
    return value.split(",")[-1].strip()


def _first_untrusted(nodes: list[str | None], networks: tuple[Network, ...]) -> int:
    """The index, counting from the right, of the first node that is not a trusted proxy
    (the leftmost when all are)."""
    for index in range(len(nodes) - 1, -1, -1):
        if not is_trusted(nodes[index], networks):
            return index
    return 0


def resolve(
    headers: Mapping[str, str], peer: str | None, networks: tuple[Network, ...]
) -> Forwarding | None:
    """What a request's forwarding headers say, when its peer is a trusted proxy (None
    otherwise, or when they say nothing). ``headers``: lower-case names, repeated
    headers joined with commas."""
    if not networks or not is_trusted(peer, networks):
        return None
    forwarded = headers.get("forwarded")
    if forwarded is not None:
        elements = forwarded_elements(forwarded)
        chosen = elements[_first_untrusted([e.get("for") for e in elements], networks)]
        host, proto, client = chosen.get("host"), chosen.get("proto"), chosen.get("for")
    else:
        host = _last(headers.get("x-forwarded-host"))
        proto = _last(headers.get("x-forwarded-proto"))
        nodes: list[str | None] = [n.strip() for n in headers.get("x-forwarded-for", "").split(",")]
        client = nodes[_first_untrusted(nodes, networks)] if any(nodes) else None
    address = ip_of(client)
    client_ip = str(address) if address is not None else None
    if not any(name in headers for name in _HEADERS):
        return Forwarding(None, client_ip)
    host = host or headers.get("host")
    if not host:
        raise ForwardingError("the proxy names no host (Forwarded host=, X-Forwarded-Host, Host)")
    prefix = check_prefix(_last(headers.get("x-forwarded-prefix")) or "")
    origin = f"{check_proto(proto or 'http')}://{check_host(host)}{prefix}"
    return Forwarding(origin, client_ip)


def named_clients(headers: Mapping[str, str]) -> list[str | None]:
    """Every client address any forwarding header of a request names, whoever sent it
    (``Forwarded`` for=, ``X-Forwarded-For``, ``X-Real-IP``); None stands for a name
    that is not an IP address (``unknown``, obfuscated, unparsable)."""
    named: list[str | None] = []
    if "forwarded" in headers:
        try:
            named.extend(e["for"] for e in forwarded_elements(headers["forwarded"]) if "for" in e)
        except ForwardingError:
            named.append("unparsable")
    for name in ("x-forwarded-for", "x-real-ip"):
        if name in headers:
            named.extend(n.strip() for n in headers[name].split(","))
    return [str(address) if (address := ip_of(n)) is not None else None for n in named]


def header_map(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """ASGI headers as lower-case names to values, repeated headers joined with commas."""
    joined: dict[str, str] = {}
    for name, value in raw:
        key, text = name.decode("latin-1").lower(), value.decode("latin-1")
        joined[key] = f"{joined[key]}, {text}" if key in joined else text
    return joined


class ForwardedHeaders:
    """ASGI middleware: a trusted proxy's forwarding, resolved once per request into the
    scope's state; a malformed header is kept as its ``ForwardingError`` for the request
    context to answer 400 with (rendered as the route's surface renders errors)."""

    def __init__(self, app: ASGIApp, networks: tuple[Network, ...]) -> None:
        self.app = app
        self.networks = networks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and self.networks:
            peer = (scope.get("client") or (None,))[0]
            try:
                forwarding: Forwarding | ForwardingError | None = resolve(
                    header_map(scope.get("headers", [])), peer, self.networks
                )
            except ForwardingError as exc:
                forwarding = exc
            scope.setdefault("state", {})[STATE_KEY] = forwarding
            if isinstance(forwarding, Forwarding) and forwarding.client is not None:
                port = (scope.get("client") or (None, 0))[1]
                scope["client"] = (forwarding.client, port)
        await self.app(scope, receive, send)
