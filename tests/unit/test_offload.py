"""``api.offload``: which requests are handed to the proxy, and the nginx configuration
written for it (what it sends the upstream; what it refuses to write). nginx running it
is tests/integration/test_relay_offload.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from starlette.requests import Request

from pacsfhir.api.offload import nginx_config, offloads
from pacsfhir.errors import ConfigurationError
from pacsfhir.settings import Settings, load_settings

KEY = "k" * 20


def _settings(tmp_path: Path, **values: object) -> Settings:
    return Settings(data=str(tmp_path), **values)  # type: ignore[arg-type]


def _request(headers: dict[str, str]) -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    return Request({"type": "http", "headers": raw, "client": ("10.0.0.9", 5000)})


@pytest.mark.parametrize(
    ("mode", "key", "sent", "handed"),
    [
        ("x-accel", KEY, {"X-Pacsfhir-Offload": KEY}, True),
        ("x-accel", KEY, {}, False),
        ("x-accel", KEY, {"X-Pacsfhir-Offload": "x-accel"}, False),
        ("x-accel", KEY, {"X-Pacsfhir-Offload": KEY + "x"}, False),
        ("", KEY, {"X-Pacsfhir-Offload": KEY}, False),  # off
        ("x-accel", "", {"X-Pacsfhir-Offload": ""}, False),  # no key: never
        ("x-accel", KEY, {"X-Pacsfhir-Offload": "ключ" * 10}, False),
        ("x-accel", KEY, {"X-Pacsfhir-Offload": KEY + "\x00"}, False),
    ],
)
def test_offloads(tmp_path: Path, mode: str, key: str, sent: dict[str, str], handed: bool) -> None:
    settings = _settings(tmp_path, relay_offload=mode, relay_offload_key=key)
    assert offloads(_request(sent), settings) is handed


def _config(tmp_path: Path, upstreams: list[dict[str, object]]) -> str:
    settings = _settings(
        tmp_path,
        relay_offload="x-accel",
        relay_offload_key=KEY,
        upstream=json.dumps(upstreams),
        port=8181,
    )
    return nginx_config(settings, "8443")


def test_every_dicomweb_upstream_gets_an_internal_location(tmp_path: Path) -> None:
    text = _config(
        tmp_path,
        [
            {"name": "open", "url": "http://pacs-a:8042/dicom-web"},
            {
                "name": "basic",
                "url": "https://pacs-b/wado",
                "auth": "basic",
                "username": "u",
                "password": "p w",
            },
            {"name": "bearer", "url": "http://pacs-c/dw", "auth": "bearer", "token": "t0k.en"},
            {"name": "dimse", "url": "dimse://OLDPACS@10.1.2.3:104"},
        ],
    )
    assert "listen 8443;" in text
    assert "proxy_pass http://127.0.0.1:8181;" in text
    assert f'proxy_set_header X-Pacsfhir-Offload "{KEY}";' in text
    blocks = {b.split(" ", 1)[0]: b for b in text.split("location /_pacsfhir_upstream/")[1:]}
    assert set(blocks) == {"open/", "basic/", "bearer/"}  # no location for DIMSE
    assert 'proxy_set_header Authorization "";' in blocks["open/"]
    assert 'proxy_set_header Authorization "Basic dTpwIHc=";' in blocks["basic/"]
    assert 'proxy_set_header Authorization "Bearer t0k.en";' in blocks["bearer/"]
    for block in blocks.values():
        assert "internal;" in block
        assert 'proxy_set_header X-Pacsfhir-Offload "";' in block  # the key stays here
    assert "proxy_pass https://pacs-b/wado/;" in blocks["basic/"]
    assert "proxy_ssl_verify on;" in blocks["basic/"]
    assert "proxy_ssl_verify" not in blocks["open/"]
    assert text.count("{") == text.count("}")


@pytest.mark.parametrize(
    "upstream",
    [
        {"name": "x", "url": "http://pacs/dw", "auth": "bearer", "token": 'a"b'},
        {"name": "x", "url": "http://pacs/dw", "auth": "bearer", "token": "a$b"},
        {"name": "x", "url": "http://pacs/dw", "auth": "bearer", "token": "a\\b"},
    ],
)
def test_what_nginx_would_misread_is_refused(tmp_path: Path, upstream: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError, match="misread"):
        _config(tmp_path, [upstream])


def test_a_key_nginx_would_misread_is_refused(tmp_path: Path) -> None:
    settings = _settings(tmp_path, relay_offload="x-accel", relay_offload_key="k" * 16 + "$x")
    with pytest.raises(ConfigurationError, match="misread"):
        nginx_config(settings)


def test_without_offload_there_is_no_configuration(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="relay_offload"):
        nginx_config(_settings(tmp_path))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"relay_offload": "sendfile"}, "relay_offload must be"),
        ({"relay_offload": "x-accel"}, "relay_offload_key"),
        ({"relay_offload": "x-accel", "relay_offload_key": "short"}, "relay_offload_key"),
        ({"relay_offload_prefix": "internal"}, "relay_offload_prefix"),
        ({"relay_offload_prefix": "/a?b/"}, "relay_offload_prefix"),
    ],
)
def test_settings_refuse_an_offload_that_cannot_work(values: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        load_settings(values, environ={})
