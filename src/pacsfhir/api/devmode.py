"""Which authorization modes the app may start in, and the loopback fence of development mode.

``PACSFHIR_AUTH=none`` checks no token, so it serves patient data to whoever reaches it.
It is allowed for development only, and fenced twice, wherever the app is built (``pacsfhir
serve`` or any ASGI server running ``create_app``):

- at start: ``check_auth_mode`` refuses a configured non-loopback ``host``, and refuses
  a mode it does not know rather than serving without checks;
- on every request: ``LoopbackOnly`` answers 403 to a connection whose client or local
  address is a non-loopback IP. An ASGI server started by hand (``uvicorn --factory ...
  --host 0.0.0.0``) does not tell the app the address it binds, so the fence is on the
  connection. Behind a reverse proxy on the same host, uvicorn's proxy headers (trusted
  from 127.0.0.1 by default) put the real client's address in the scope, so remote
  clients are refused there too. Scopes without an IP (a Unix socket, the in-process
  test client) are local by construction.
- and a request whose forwarding headers (``Forwarded`` for=, ``X-Forwarded-For``,
  ``X-Real-IP``) name any client that is not a loopback address gets 403 too, whoever
  sent them and whatever the ASGI server made of them: a proxy relaying a remote client
  is refused even when the server does not rewrite the client address (``pacsfhir
  serve`` leaves that to pacsfhir, ``api.forwarded``).
"""

from __future__ import annotations

import ipaddress
import logging

from starlette.types import ASGIApp, Receive, Scope, Send

from pacsfhir.api.forwarded import header_map, named_clients
from pacsfhir.api.responses import header_text, outcome_response
from pacsfhir.auth.policy import Surface, surface_of
from pacsfhir.errors import ConfigurationError
from pacsfhir.settings import Settings

IMPLEMENTED_AUTH_MODES = ("none", "introspection", "jwt")
log = logging.getLogger("pacsfhir")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an IP literal, IPv6 in brackets or not) is loopback."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def _is_remote_ip(host: str | None) -> bool:
    """True for an IP literal that is not loopback; names and None are not network peers."""
    if not host:
        return False
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return not is_loopback(host)


def check_auth_mode(settings: Settings) -> None:
    """Refuse to build an app that would serve without the protection its settings ask for."""
    if settings.auth not in IMPLEMENTED_AUTH_MODES:
        raise ConfigurationError(
            f"PACSFHIR_AUTH={settings.auth} is not a token check this server knows; refusing "
            "to start rather than serve without checks (introspection, jwt, or none on "
            "loopback for development)"
        )
    if settings.auth == "none" and not is_loopback(settings.host):
        raise ConfigurationError(
            f"refusing to serve patient data without authorization on {settings.host}: "
            "PACSFHIR_AUTH=none (development mode) binds to loopback only"
        )


def warn_development_mode() -> None:
    log.warning(
        "DEVELOPMENT MODE: PACSFHIR_AUTH=none, no token is checked; "
        "only loopback clients are served"
    )


class LoopbackOnly:
    """ASGI middleware of development mode: requests from or to a non-loopback address, or
    relayed for one, get 403 with an OperationOutcome saying why (and on DICOMweb routes
    the Warning header PS3.18 errors carry)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        client = (scope.get("client") or (None,))[0]
        server = (scope.get("server") or (None,))[0]
        named = named_clients(header_map(scope.get("headers", [])))
        relayed = any(n is None or not is_loopback(n) for n in named)
        if not (_is_remote_ip(client) or _is_remote_ip(server) or relayed):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        message = "development mode (PACSFHIR_AUTH=none) serves loopback clients only"
        headers = None
        if surface_of(scope.get("path", "")) is Surface.DICOMWEB:  # PS3.18: a Warning too
            headers = {"Warning": f'299 pacsfhir "{header_text(message)}"'}
        await outcome_response(403, "forbidden", message, headers)(scope, receive, send)
