"""Upstream PACS configuration (pure): the ``upstream`` setting read into checked records.

One upstream is a URL (``PACSFHIR_UPSTREAM``, or ``upstream = "..."`` in the config
file), with the ``upstream_*`` settings for its credentials, timeout and cache TTL:

- ``http(s)://host[:port]/path`` (a DICOMweb base, ``.../dicom-web``): QIDO-RS, WADO-RS;
- ``dimse://CALLED_AE@host:port?calling=AE&retrieve=c-get`` (or ``c-move``): C-FIND and
  C-GET or C-MOVE (``calling`` defaults to our ``ae_title``).

Several are an ``[[upstream]]`` array of tables in the TOML config file, each with
``name``, ``url`` and optionally ``auth`` (``none``, ``basic``, ``bearer``),
``username``, ``password``, ``token``, ``timeout`` (seconds) and ``cache_seconds``.
Anything wrong is a ``ConfigurationError`` naming the upstream and the field, at start.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

from pacsfhir.errors import ConfigurationError
from pacsfhir.vocabulary.ae import ae_title_problem

DEFAULT_TIMEOUT_SECONDS = 30.0
DEFAULT_CACHE_SECONDS = 300
AUTH_KINDS = ("none", "basic", "bearer")
RETRIEVE_METHODS = ("c-get", "c-move")
TABLE_KEYS = frozenset(
    {"name", "url", "auth", "username", "password", "token", "timeout", "cache_seconds"}
)


def check_ae_title(title: str, what: str) -> str:
    """``title`` stripped (leading and trailing spaces are not significant), or
    ConfigurationError (``vocabulary.ae``)."""
    problem = ae_title_problem(title)
    if problem:
        raise ConfigurationError(f"{what}: {title!r} is not an AE title ({problem})")
    return title.strip()


@dataclass(frozen=True)
class Credentials:
    kind: Literal["none", "basic", "bearer"] = "none"
    username: str = ""
    password: str = ""
    token: str = ""

    def __repr__(self) -> str:  # never a secret in a log or a traceback
        return f"Credentials({self.kind})"

    @property
    def authorization(self) -> str:
        """The Authorization header value that presents them ("" for none): HTTP basic
        as RFC 7617 writes it (UTF-8), or a bearer token."""
        if self.kind == "basic":
            pair = f"{self.username}:{self.password}".encode()
            return "Basic " + base64.b64encode(pair).decode("ascii")
        if self.kind == "bearer":
            return f"Bearer {self.token}"
        return ""


@dataclass(frozen=True)
class DicomwebUpstream:
    name: str
    base_url: str  # no trailing slash
    credentials: Credentials
    timeout: float
    cache_seconds: int


@dataclass(frozen=True)
class DimseUpstream:
    name: str
    called_ae: str
    host: str
    port: int
    calling_ae: str
    retrieve: Literal["c-get", "c-move"]
    timeout: float
    cache_seconds: int


Upstream = DicomwebUpstream | DimseUpstream


def parse_upstream(
    url: str,
    *,
    name: str = "upstream",
    our_ae_title: str = "PACSFHIR",
    auth: str = "",
    username: str = "",
    password: str = "",
    token: str = "",
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    cache_seconds: int = DEFAULT_CACHE_SECONDS,
) -> Upstream:
    """One upstream from its URL and options (see the module)."""
    where = f"upstream {name!r}"
    if not isinstance(url, str) or not url.strip():
        raise ConfigurationError(f"{where}: url is missing")
    if not (isinstance(timeout, int | float) and 0 < timeout <= 3600):
        raise ConfigurationError(f"{where}: timeout must be 0 < seconds <= 3600, not {timeout!r}")
    if not (isinstance(cache_seconds, int) and cache_seconds >= 0):
        raise ConfigurationError(f"{where}: cache_seconds must be an integer >= 0")
    parts = urlsplit(url.strip())
    if parts.scheme in ("http", "https"):
        return DicomwebUpstream(
            name,
            _dicomweb_base(parts, where),
            _credentials(where, auth, username, password, token),
            float(timeout),
            cache_seconds,
        )
    if parts.scheme == "dimse":
        if auth not in ("", "none") or username or password or token:
            raise ConfigurationError(f"{where}: DIMSE has no credentials (auth, username...)")
        return _dimse(parts, where, name, our_ae_title, float(timeout), cache_seconds)
    raise ConfigurationError(
        f"{where}: {url!r} is neither a DICOMweb base (http:// or https://) nor "
        "dimse://CALLED_AE@host:port"
    )


def _dicomweb_base(parts: Any, where: str) -> str:
    if not parts.hostname:
        raise ConfigurationError(f"{where}: the URL names no host")
    if parts.username or parts.password:
        raise ConfigurationError(
            f"{where}: put credentials in username/password (or token), not in the URL"
        )
    if parts.query or parts.fragment:
        raise ConfigurationError(f"{where}: a DICOMweb base has no query or fragment")
    try:
        parts.port  # noqa: B018 (validates it)
    except ValueError:
        raise ConfigurationError(f"{where}: the URL's port is not a number") from None
    return f"{parts.scheme}://{parts.netloc}{parts.path}".rstrip("/")


def _credentials(where: str, auth: str, username: str, password: str, token: str) -> Credentials:
    kind = auth or ("bearer" if token else "basic" if username else "none")
    if kind not in AUTH_KINDS:
        raise ConfigurationError(f"{where}: auth must be one of {', '.join(AUTH_KINDS)}")
    if kind == "basic" and not (username and password):
        raise ConfigurationError(f"{where}: auth basic needs username and password")
    if kind == "bearer" and not token:
        raise ConfigurationError(f"{where}: auth bearer needs token")
    if kind == "none" and (username or password or token):
        raise ConfigurationError(f"{where}: credentials given with auth none")
    return Credentials(kind, username, password, token)  # type: ignore[arg-type]


def _dimse(
    parts: Any, where: str, name: str, our_ae_title: str, timeout: float, cache_seconds: int
) -> DimseUpstream:
    if not parts.username:
        raise ConfigurationError(f"{where}: dimse://CALLED_AE@host:port needs the called AE")
    called = check_ae_title(unquote(parts.username), f"{where} called AE")
    if parts.password is not None:
        raise ConfigurationError(f"{where}: dimse:// URLs take no password")
    if not parts.hostname:
        raise ConfigurationError(f"{where}: the URL names no host")
    try:
        port = parts.port
    except ValueError:
        port = None
    if not port:
        raise ConfigurationError(f"{where}: dimse:// URLs need a port (1-65535)")
    if parts.path not in ("", "/") or parts.fragment:
        raise ConfigurationError(f"{where}: dimse:// URLs have no path or fragment")
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(options) - {"calling", "retrieve"})
    if unknown:
        raise ConfigurationError(f"{where}: unknown option(s) {', '.join(unknown)}")
    calling = check_ae_title(options.get("calling", our_ae_title), f"{where} calling AE")
    retrieve = options.get("retrieve", "c-get").lower()
    if retrieve not in RETRIEVE_METHODS:
        raise ConfigurationError(f"{where}: retrieve must be c-get or c-move")
    return DimseUpstream(
        name,
        called,
        parts.hostname,
        port,
        calling,
        retrieve,
        timeout,
        cache_seconds,
    )


def parse_upstream_tables(
    tables: Sequence[Mapping[str, Any]], our_ae_title: str
) -> tuple[Upstream, ...]:
    """The ``[[upstream]]`` tables of a config file; names must be unique."""
    found: list[Upstream] = []
    for number, table in enumerate(tables, start=1):
        if not isinstance(table, Mapping):
            raise ConfigurationError(f"[[upstream]] number {number} is not a table")
        unknown = sorted(set(table) - TABLE_KEYS)
        name = str(table.get("name") or f"upstream-{number}")
        if unknown:
            raise ConfigurationError(f"upstream {name!r}: unknown key(s) {', '.join(unknown)}")
        options = {k: v for k, v in table.items() if k not in ("name", "url")}
        for key in ("auth", "username", "password", "token"):
            if key in options and not isinstance(options[key], str):
                raise ConfigurationError(f"upstream {name!r}: {key} must be a string")
        found.append(
            parse_upstream(table.get("url", ""), name=name, our_ae_title=our_ae_title, **options)
        )
    names = [u.name for u in found]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ConfigurationError(f"upstream names must be unique: {', '.join(duplicated)}")
    return tuple(found)
