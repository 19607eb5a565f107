"""One typed Settings object: command-line flag > env PACSFHIR_* > config file > default.

Every setting is declared once in ``SETTINGS`` with its type, default and a line of
documentation; ``docs/settings.md`` and the CLI help are checked against this table.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pacsfhir.errors import ConfigurationError
from pacsfhir.upstream.config import (
    DimseUpstream,
    Upstream,
    parse_upstream,
    parse_upstream_tables,
)
from pacsfhir.vocabulary.ae import ae_title_problem

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Setting:
    name: str
    kind: type
    default: Any
    help: str

    @property
    def env(self) -> str:
        return "PACSFHIR_" + self.name.upper()


SETTINGS: tuple[Setting, ...] = (
    Setting("config", str, "", "TOML config file; its keys are these names in lower case"),
    Setting("data", str, "pacsfhir-data", "Data folder: stored DICOM blobs and the SQLite index"),
    Setting(
        "database_url",
        str,
        "",
        "Index database URL; default sqlite:///<data>/index.db, or postgresql://...",
    ),
    Setting(
        "base_url",
        str,
        "",
        "Public base URL used in every absolute link; default http://<host>:<port>",
    ),
    Setting("host", str, "127.0.0.1", "Address the HTTP server binds to"),
    Setting("port", int, 8080, "Port the HTTP server listens on"),
    Setting(
        "auth",
        str,
        "none",
        "Token checking: none (development, loopback only), introspection or jwt",
    ),
    Setting(
        "introspection_url", str, "", "RFC 7662 token introspection endpoint (auth=introspection)"
    ),
    Setting("introspection_client_id", str, "", "Our client id at the introspection endpoint"),
    Setting(
        "introspection_client_secret",
        str,
        "",
        "Our client secret at the introspection endpoint (HTTP Basic); keep it in the env",
    ),
    Setting(
        "token_cache_seconds",
        int,
        300,
        "Longest an active token's check is reused (never past its exp); inactive: 10 s",
    ),
    Setting(
        "jwt_issuer",
        str,
        "",
        "Issuer (iss) of JWT access tokens; keys found via its OpenID discovery document",
    ),
    Setting("jwks_url", str, "", "JWKS URL of the token issuer (default: from its discovery)"),
    Setting(
        "jwt_audience",
        str,
        "",
        "Accepted aud values, comma-separated; the FHIR base URL is always accepted",
    ),
    Setting("smart_authorize_url", str, "", "Authorization endpoint advertised to SMART apps"),
    Setting("smart_token_url", str, "", "Token endpoint advertised to SMART apps"),
    Setting(
        "dicom_timezone",
        str,
        "",
        "UTC offset (+HHMM) assumed for DICOM times without Timezone Offset From UTC; "
        "empty: such times are reported with date precision only",
    ),
    Setting("ingest_workers", int, 0, "Processes that parse DICOM during ingest; 0 = one per core"),
    Setting(
        "ingest_batch", int, 256, "Instances written per durable batch (one fsync, one commit)"
    ),
    Setting("default_count", int, 50, "Search page size when _count is not given"),
    Setting("max_count", int, 1000, "Largest _count honoured"),
    Setting(
        "max_upload_mb",
        int,
        16384,
        "Largest STOW-RS request body in MiB (413 beyond); takes a 2 GB study with room",
    ),
    Setting(
        "max_part_mb",
        int,
        4096,
        "Largest single part (one instance) of a STOW-RS body in MiB (413 beyond)",
    ),
    Setting(
        "max_render_pixels",
        int,
        40_000_000,
        "Largest frame or viewport rendered (rows x columns x samples per pixel), "
        "shared by renders running at once; 413 beyond",
    ),
    Setting(
        "audit_retention_days",
        int,
        2190,
        "Days AuditEvents are kept (then removed); 0 keeps them forever",
    ),
    Setting(
        "cors_origins",
        str,
        "",
        "Comma-separated origins allowed to call the API from a browser (e.g. a viewer)",
    ),
    Setting(
        "ehr_fhir_url",
        str,
        "",
        "The EHR's FHIR base, read for Patient/{id} (SMART Backend Services); empty: no look-up",
    ),
    Setting("ehr_client_id", str, "", "Our client id at the EHR's authorization server"),
    Setting(
        "ehr_private_key",
        str,
        "",
        "PEM private key file signing our client assertions: RSA (RS384) or EC P-384 (ES384)",
    ),
    Setting(
        "ehr_key_id",
        str,
        "",
        "kid of the client assertions; default the RFC 7638 thumbprint of the public key",
    ),
    Setting(
        "ehr_token_url",
        str,
        "",
        "The EHR's token endpoint; default from {ehr_fhir_url}/.well-known/smart-configuration",
    ),
    Setting("ehr_scope", str, "system/Patient.rs", "Scope asked of the EHR's token endpoint"),
    Setting(
        "ehr_refresh_seconds",
        int,
        3600,
        "How long a patient read at the EHR (its identifiers, so its links) is trusted",
    ),
    Setting(
        "upstream",
        str,
        "",
        "Upstream PACS: a DICOMweb base URL or dimse://CALLED_AE@host:port?retrieve=c-get; "
        "several: [[upstream]] tables in the config file (or a JSON array of them)",
    ),
    Setting("upstream_auth", str, "", "Upstream DICOMweb auth: none, basic or bearer"),
    Setting("upstream_username", str, "", "Upstream DICOMweb user (auth basic)"),
    Setting("upstream_password", str, "", "Upstream DICOMweb password (auth basic)"),
    Setting("upstream_token", str, "", "Upstream DICOMweb bearer token (auth bearer)"),
    Setting("upstream_timeout", float, 30.0, "Seconds an upstream call may take"),
    Setting(
        "upstream_cache_seconds",
        int,
        300,
        "How long what an upstream answered is served from the index before asking again",
    ),
    Setting(
        "upstream_wait_seconds",
        float,
        2.0,
        "How long a request waits for upstream work before 503 + Retry-After",
    ),
    Setting(
        "upstream_open_searches",
        str,
        "refuse",
        "A search naming no patient or study, with an upstream: refuse (400) or local",
    ),
    Setting(
        "dimse_port",
        int,
        0,
        "Port of the DICOM C-STORE listener (no authentication: trusted networks only); 0 = off",
    ),
    Setting("ae_title", str, "PACSFHIR", "Our DICOM AE title (1-16 characters)"),
    Setting(
        "dimse_host", str, "", "Address the C-STORE listener binds to; empty: the same as host"
    ),
    Setting(
        "dimse_max_associations",
        int,
        16,
        "Associations the C-STORE listener serves at once; more are rejected (transient)",
    ),
    Setting(
        "relay_offload",
        str,
        "",
        "x-accel: a reverse proxy (nginx) streams retrieves from a DICOMweb upstream itself",
    ),
    Setting(
        "relay_offload_prefix",
        str,
        "/_pacsfhir_upstream/",
        "The proxy's internal location per upstream: {prefix}{upstream name}/studies/...",
    ),
    Setting(
        "relay_offload_key",
        str,
        "",
        "Secret the proxy sends as X-Pacsfhir-Offload to take a transfer over (16+ chars)",
    ),
    Setting(
        "workers",
        int,
        1,
        "HTTP worker processes of pacsfhir serve, sharing the index; 0 = one per core",
    ),
    Setting(
        "trusted_proxies",
        str,
        "",
        "Reverse proxies (comma-separated IP addresses or CIDR networks) whose Forwarded or "
        "X-Forwarded-Host/-Proto/-Prefix headers make the public URLs, unless base_url is set",
    ),
)

_BY_NAME = {s.name: s for s in SETTINGS}


@dataclass(frozen=True)
class Settings:
    config: str = ""
    data: str = "pacsfhir-data"
    database_url: str = ""
    base_url: str = ""
    host: str = "127.0.0.1"
    port: int = 8080
    auth: str = "none"
    introspection_url: str = ""
    introspection_client_id: str = ""
    introspection_client_secret: str = ""
    token_cache_seconds: int = 300
    jwt_issuer: str = ""
    jwks_url: str = ""
    jwt_audience: str = ""
    smart_authorize_url: str = ""
    smart_token_url: str = ""
    dicom_timezone: str = ""
    ingest_workers: int = 0
    ingest_batch: int = 256
    default_count: int = 50
    max_count: int = 1000
    max_upload_mb: int = 16384
    max_part_mb: int = 4096
    max_render_pixels: int = 40_000_000
    audit_retention_days: int = 2190
    cors_origins: str = ""
    ehr_fhir_url: str = ""
    ehr_client_id: str = ""
    ehr_private_key: str = ""
    ehr_key_id: str = ""
    ehr_token_url: str = ""
    ehr_scope: str = "system/Patient.rs"
    ehr_refresh_seconds: int = 3600
    upstream: str = ""
    upstream_auth: str = ""
    upstream_username: str = ""
    upstream_password: str = ""
    upstream_token: str = ""
    upstream_timeout: float = 30.0
    upstream_cache_seconds: int = 300
    upstream_wait_seconds: float = 2.0
    upstream_open_searches: str = "refuse"
    dimse_port: int = 0
    ae_title: str = "PACSFHIR"
    dimse_host: str = ""
    dimse_max_associations: int = 16
    relay_offload: str = ""
    relay_offload_prefix: str = "/_pacsfhir_upstream/"
    relay_offload_key: str = ""
    workers: int = 1
    trusted_proxies: str = ""

    @property
    def data_dir(self) -> Path:
        return Path(self.data)

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def index_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'index.db').resolve()}"

    @property
    def public_base_url(self) -> str:
        if self.base_url:
            return self.base_url.rstrip("/")
        return f"http://{self.host}:{self.port}"

    @property
    def fhir_base_url(self) -> str:
        return self.public_base_url + "/fhir"

    @property
    def dicomweb_base_url(self) -> str:
        return self.public_base_url + "/dicom-web"

    @property
    def upstreams(self) -> tuple[Upstream, ...]:
        """The upstream PACS (``upstream.config``): none, the one ``upstream`` URL with
        the ``upstream_*`` options, or the tables ``upstream`` holds as a JSON array."""
        text = self.upstream.strip()
        if not text:
            return ()
        if text.startswith("["):
            try:
                tables = json.loads(text)
            except ValueError as exc:
                raise ConfigurationError(f"upstream: not a JSON array of tables: {exc}") from exc
            if not isinstance(tables, list):
                raise ConfigurationError("upstream: not a JSON array of tables")
            return parse_upstream_tables(tables, self.ae_title)
        return (
            parse_upstream(
                text,
                our_ae_title=self.ae_title,
                auth=self.upstream_auth,
                username=self.upstream_username,
                password=self.upstream_password,
                token=self.upstream_token,
                timeout=self.upstream_timeout,
                cache_seconds=self.upstream_cache_seconds,
            ),
        )

    @property
    def trusted_proxy_networks(self) -> tuple[Network, ...]:
        """``trusted_proxies`` parsed; ConfigurationError for what is not an address or
        a CIDR network."""
        networks = []
        for item in (part.strip() for part in self.trusted_proxies.split(",")):
            if not item:
                continue
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError as exc:
                raise ConfigurationError(
                    f"trusted_proxies: {item!r} is not an IP address or CIDR network"
                ) from exc
        return tuple(networks)

    @property
    def dimse_bind_host(self) -> str:
        return self.dimse_host or self.host

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def settings_environment(settings: Settings) -> dict[str, str]:
    """Every setting as the PACSFHIR_* environment variable that gives it its value, so
    that a process started with them resolves the same settings."""
    return {s.env: str(getattr(settings, s.name)) for s in SETTINGS if s.name != "config"}


def _coerce(setting: Setting, raw: Any, source: str) -> Any:
    if isinstance(raw, setting.kind):
        return raw
    try:
        return setting.kind(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(
            f"{setting.name} from {source}: {raw!r} is not a valid {setting.kind.__name__}"
        ) from exc


def _read_config_file(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except OSError as exc:
        raise ConfigurationError(f"cannot read config file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"config file {path} is not valid TOML: {exc}") from exc
    unknown = sorted(set(raw) - set(_BY_NAME))
    if unknown:
        raise ConfigurationError(f"config file {path}: unknown settings {', '.join(unknown)}")
    if isinstance(raw.get("upstream"), list):  # [[upstream]] tables: kept as a JSON array
        raw["upstream"] = json.dumps(raw["upstream"])
    return raw


def load_settings(
    flags: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Resolve every setting: flag > environment > config file > default."""
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    environ = os.environ if environ is None else environ
    config_path = flags.get("config") or environ.get("PACSFHIR_CONFIG", "")
    from_file = _read_config_file(config_path) if config_path else {}
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        if setting.name in flags:
            values[setting.name] = _coerce(setting, flags[setting.name], "flag")
        elif setting.env in environ:
            values[setting.name] = _coerce(setting, environ[setting.env], setting.env)
        elif setting.name in from_file:
            values[setting.name] = _coerce(setting, from_file[setting.name], config_path)
        else:
            values[setting.name] = setting.default
    if values["auth"] not in ("none", "introspection", "jwt"):
        raise ConfigurationError(f"auth must be none, introspection or jwt, not {values['auth']!r}")
    if values["upstream_open_searches"] not in ("refuse", "local"):
        raise ConfigurationError("upstream_open_searches must be refuse or local")
    problem = ae_title_problem(values["ae_title"])
    if problem:
        raise ConfigurationError(f"ae_title {values['ae_title']!r}: {problem}")
    if not 0 <= values["dimse_port"] <= 65535:
        raise ConfigurationError(f"dimse_port must be 0 (off) to 65535, not {values['dimse_port']}")
    if values["relay_offload"] not in ("", "x-accel"):
        raise ConfigurationError(
            f"relay_offload must be empty (off) or x-accel, not {values['relay_offload']!r}"
        )
    prefix = values["relay_offload_prefix"]
    if not (prefix.startswith("/") and prefix.endswith("/")) or "?" in prefix or "#" in prefix:
        raise ConfigurationError(
            f"relay_offload_prefix must be a path beginning and ending with /, not {prefix!r}"
        )
    if values["relay_offload"] and len(values["relay_offload_key"]) < 16:
        raise ConfigurationError(
            "relay_offload is set: set relay_offload_key (PACSFHIR_RELAY_OFFLOAD_KEY) to a "
            "secret of 16 characters or more, which the proxy sends as X-Pacsfhir-Offload"
        )
    if not 0 <= values["workers"] <= 64:
        raise ConfigurationError(f"workers must be 0 (one per core) to 64, not {values['workers']}")
    if not 1 <= values["dimse_max_associations"] <= 1000:
        raise ConfigurationError(
            f"dimse_max_associations must be 1 to 1000, not {values['dimse_max_associations']}"
        )
    settings = Settings(**values)
    settings.trusted_proxy_networks  # noqa: B018 (raises ConfigurationError when malformed)
    moving = [
        u.name
        for u in settings.upstreams
        if isinstance(u, DimseUpstream) and u.retrieve == "c-move"
    ]
    if moving and not settings.dimse_port:
        raise ConfigurationError(
            f"upstream {moving[0]!r} retrieves by C-MOVE, whose destination is pacsfhir's "
            "C-STORE listener: set dimse_port (PACSFHIR_DIMSE_PORT)"
        )
    return settings
