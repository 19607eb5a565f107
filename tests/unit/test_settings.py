"""Every setting is typed, defaulted and documented; precedence is flag > env > file."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from pacsfhir.errors import ConfigurationError
from pacsfhir.settings import SETTINGS, Settings, load_settings

DOCS = Path(__file__).resolve().parents[2] / "docs" / "settings.md"


def test_every_setting_is_declared_once_and_matches_the_dataclass() -> None:
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    assert [s.name for s in SETTINGS] == list(fields)
    for setting in SETTINGS:
        assert fields[setting.name].default == setting.default
        assert setting.help


def test_every_setting_is_documented() -> None:
    text = DOCS.read_text()
    for setting in SETTINGS:
        assert f"`{setting.env}`" in text, setting.env


def test_precedence(tmp_path: Path) -> None:
    config = tmp_path / "pacsfhir.toml"
    config.write_text('port = 9000\nhost = "127.0.0.2"\ndata = "/from/file"\n')
    env = {"PACSFHIR_CONFIG": str(config), "PACSFHIR_PORT": "9001"}
    settings = load_settings({"data": "/from/flag"}, env)
    assert (settings.data, settings.port, settings.host) == ("/from/flag", 9001, "127.0.0.2")


def test_defaults_and_derived_urls() -> None:
    settings = load_settings({}, {})
    assert settings.port == 8080
    assert settings.index_url.startswith("sqlite:///")
    assert settings.index_url.endswith("index.db")
    assert settings.fhir_base_url == "http://127.0.0.1:8080/fhir"
    assert settings.replace(base_url="https://x.example/").dicomweb_base_url == (
        "https://x.example/dicom-web"
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PACSFHIR_PORT": "eighty"}, "port"),
        ({"PACSFHIR_AUTH": "maybe"}, "auth"),
        ({"PACSFHIR_CONFIG": "/nonexistent.toml"}, "cannot read"),
        ({"PACSFHIR_TRUSTED_PROXIES": "10.0.0.1, proxy.example"}, "trusted_proxies"),
        ({"PACSFHIR_TRUSTED_PROXIES": "10.0.0.0/33"}, "trusted_proxies"),
    ],
)
def test_bad_settings_are_clear_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        load_settings({}, env)


def test_trusted_proxies_are_addresses_and_networks() -> None:
    settings = load_settings({}, {"PACSFHIR_TRUSTED_PROXIES": " 10.1.2.3 ,192.168.0.0/16,::1,"})
    assert [str(n) for n in settings.trusted_proxy_networks] == [
        "10.1.2.3/32",
        "192.168.0.0/16",
        "::1/128",
    ]
    assert load_settings({}, {}).trusted_proxy_networks == ()


def test_unknown_config_keys_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("prot = 1\n")
    with pytest.raises(ConfigurationError, match="unknown settings prot"):
        load_settings({}, {"PACSFHIR_CONFIG": str(config)})
