"""Leaving a relayed retrieve to the reverse proxy in front: nginx's X-Accel-Redirect.

A retrieve streamed through from a DICOMweb upstream costs pacsfhir about 0.5 s of CPU a
gigabyte (``bench.gateway``): on a machine whose cores the upstream and the clients
share, the relay's Python is what holds the transfer back. With ``relay_offload=x-accel``
pacsfhir still decides everything (the token, the scope, which upstream holds the study)
and then answers with ``X-Accel-Redirect: {relay_offload_prefix}{upstream}{path}``: the
proxy (nginx) replaces that answer with the upstream's own, fetched by an ``internal``
location of its configuration (docs/deploy.md), in C, with the client's Accept.

Only a request that carries ``X-Pacsfhir-Offload: {relay_offload_key}``, a secret the
proxy sets on every request it forwards (overwriting whatever the client sent), is
answered so; any other gets the bytes from pacsfhir itself, so a client reaching
pacsfhir directly never receives an empty answer. (A secret rather than the proxy's
address: behind forwarding headers the address pacsfhir sees may be the client's.)"""

from __future__ import annotations

import hmac
import re
from urllib.parse import quote

from fastapi import Request, Response

from pacsfhir.errors import ConfigurationError
from pacsfhir.settings import Settings
from pacsfhir.store.base import Relay
from pacsfhir.upstream.config import DicomwebUpstream

OFFLOAD_HEADER = "x-pacsfhir-offload"
X_ACCEL = "x-accel"


def offloads(request: Request, settings: Settings) -> bool:
    """Whether the proxy this request came through takes the relay over."""
    if settings.relay_offload != X_ACCEL or not settings.relay_offload_key:
        return False
    sent = request.headers.get(OFFLOAD_HEADER, "")
    return hmac.compare_digest(sent.encode(), settings.relay_offload_key.encode())


def offloaded(relay: Relay, settings: Settings) -> Response:
    """The answer the proxy replaces with the upstream's (an empty body of its own)."""
    target = settings.relay_offload_prefix + quote(relay.upstream, safe="") + relay.path
    return Response(status_code=200, headers={"X-Accel-Redirect": target})


# -- the proxy's side: nginx's configuration --------------------------------------------

# what nginx would read as the end of a value, a variable or an escape
_UNSAFE_QUOTED = re.compile(r'["\\$\x00-\x1f\x7f]')  # in "...", spaces are fine
_UNSAFE_BARE = re.compile(r'["\\$;{}\x00-\x20\x7f]')


# Answers read in large pieces and held in memory only, never spooled to disk: a slow
# client slows the sender down. (Unbuffered, nginx reads at most proxy_buffer_size, 4 KiB
# by default, at a time: measured at a third of the throughput in bench.gateway.)
_BUFFERS = (
    "        proxy_buffering on;",
    "        proxy_buffer_size 64k;",
    "        proxy_buffers 8 256k;",
    "        proxy_busy_buffers_size 512k;",
    "        proxy_max_temp_file_size 0;",
)


def nginx_config(settings: Settings, listen: str = "80") -> str:
    """An nginx ``server`` block that forwards everything to pacsfhir and takes over the
    retrieves pacsfhir hands it: one ``internal`` location per DICOMweb upstream, which
    sends the upstream's own credentials (never the client's token) and checks an https
    upstream's certificate. ConfigurationError when the settings cannot be written into
    nginx's syntax safely."""
    if settings.relay_offload != X_ACCEL:
        raise ConfigurationError("relay_offload is not x-accel: nothing to offload")
    key = _nginx_string(settings.relay_offload_key, "relay_offload_key", quoted=True)
    pacsfhir = f"http://{_http_host(settings.host)}:{settings.port}"
    lines = [
        "# pacsfhir behind nginx, retrieves from its DICOMweb upstreams streamed by nginx",
        "# (X-Accel-Redirect). Written by `pacsfhir nginx-config`; add TLS to `listen`.",
        "server {",
        f"    listen {listen};",
        "    client_max_body_size 0;  # STOW-RS: pacsfhir applies its own limits",
        "",
        "    location / {",
        f"        proxy_pass {pacsfhir};",
        "        proxy_http_version 1.1;",
        "        proxy_set_header Host $http_host;",
        f'        proxy_set_header X-Pacsfhir-Offload "{key}";  # overwrites a client\'s',
        *_BUFFERS,
        "        proxy_request_buffering off;  # pacsfhir reads uploads as they come",
        "        proxy_read_timeout 300s;",
        "    }",
    ]
    for upstream in settings.upstreams:
        if isinstance(upstream, DicomwebUpstream):
            lines += ["", *_internal_location(settings.relay_offload_prefix, upstream)]
    lines += ["}", ""]
    return "\n".join(lines)


def _internal_location(prefix: str, upstream: DicomwebUpstream) -> list[str]:
    location = prefix + quote(upstream.name, safe="") + "/"
    authorization = _nginx_string(
        upstream.credentials.authorization, "upstream credentials", quoted=True
    )
    lines = [
        f"    location {location} {{",
        "        internal;  # reached only through pacsfhir's X-Accel-Redirect",
        f"        proxy_pass {_nginx_string(upstream.base_url, 'upstream url')}/;",
        "        proxy_http_version 1.1;",
        "        # the upstream's credentials, never the client's token",
        f'        proxy_set_header Authorization "{authorization}";',
        '        proxy_set_header X-Pacsfhir-Offload "";',
        '        proxy_set_header Cookie "";',
        '        proxy_set_header Accept-Encoding "";  # the bytes as stored',
        *_BUFFERS,
        f"        proxy_read_timeout {max(1, round(upstream.timeout))}s;",
        f"        proxy_connect_timeout {max(1, min(75, round(upstream.timeout)))}s;",
    ]
    if upstream.base_url.startswith("https:"):
        lines += [
            "        proxy_ssl_server_name on;",
            "        proxy_ssl_verify on;",
            "        proxy_ssl_trusted_certificate /etc/ssl/certs/ca-certificates.crt;",
        ]
    return [*lines, "    }"]


def _nginx_string(value: str, what: str, quoted: bool = False) -> str:
    if (_UNSAFE_QUOTED if quoted else _UNSAFE_BARE).search(value):
        raise ConfigurationError(
            f"{what} holds a character nginx's configuration would misread "
            "(a quote, backslash, $, control character, or outside quotes ; braces or space)"
        )
    return value


def _http_host(host: str) -> str:
    if host in ("", "0.0.0.0"):  # noqa: S104 (pacsfhir listening everywhere: ask loopback)
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host
