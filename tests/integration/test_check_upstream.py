"""``pacsfhir check-upstream`` against real peers: Orthanc (its DICOMweb with HTTP basic
authentication, and its DICOM port) and dcmtk's ``dcmqrscp``, each started by a fixture
on free loopback ports; and upstreams that are down or refuse us."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pacsfhir.cli import app
from pacsfhir.upstream.check import check_upstream
from pacsfhir.upstream.config import parse_upstream
from tests.conftest import free_port, sample_paths, skip_or_fail
from tests.support.dcmqrscp import Dcmqrscp, dcmtk_problem
from tests.support.orthanc import Orthanc, orthanc_problem

USER, PASSWORD = "gateway", "s3cret-pw"


@pytest.fixture(scope="module")
def guarded_orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    problem = orthanc_problem()
    if problem:
        skip_or_fail(problem)
    workdir = tmp_path_factory.mktemp("orthanc-auth")
    known = {"PACSFHIR": ("127.0.0.1", free_port())}  # Orthanc answers known AEs only
    with Orthanc(
        workdir, free_port(), free_port(), users={USER: PASSWORD}, modalities=known
    ) as server:
        yield server


@pytest.fixture(scope="module")
def qrscp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dcmqrscp]:
    problem = dcmtk_problem()
    if problem:
        skip_or_fail(problem)
    with Dcmqrscp(tmp_path_factory.mktemp("dcmqrscp"), free_port()) as server:
        ct = [p for p in sample_paths() if Path(p).name == "CT_small.dcm"]
        server.store(ct)
        yield server


def outcome(url: str, **options: object) -> dict[str, tuple[bool, str]]:
    steps = check_upstream(parse_upstream(url, name="pacs", **options))  # type: ignore[arg-type]
    return {step.what: (step.ok, step.detail) for step in steps}


def test_orthanc_dicomweb_with_basic_auth(guarded_orthanc: Orthanc) -> None:
    url = guarded_orthanc.dicomweb_url
    assert outcome(url, username=USER, password=PASSWORD)["QIDO-RS"][0] is True
    refused = outcome(url, username=USER, password="wrong")["QIDO-RS"]
    assert refused[0] is False
    assert "401" in refused[1]


def test_orthanc_dimse(guarded_orthanc: Orthanc) -> None:
    url = f"dimse://ORTHANCTEST@127.0.0.1:{guarded_orthanc.dicom_port}?calling=PACSFHIR"
    found = outcome(url)
    assert {what: ok for what, (ok, _) in found.items()} == {
        "C-ECHO": True,
        "C-FIND": True,
        "C-GET": True,
    }


def test_an_unknown_calling_ae_is_named(guarded_orthanc: Orthanc) -> None:
    url = f"dimse://ORTHANCTEST@127.0.0.1:{guarded_orthanc.dicom_port}?calling=STRANGER"
    ok, detail = outcome(url)["C-FIND"]
    assert ok is False
    assert "'STRANGER'" in detail


def test_dcmqrscp_find_get_and_move(qrscp: Dcmqrscp) -> None:
    for retrieve in ("c-get", "c-move"):
        url = f"dimse://{qrscp.ae_title}@127.0.0.1:{qrscp.port}?retrieve={retrieve}"
        found = outcome(url)
        assert all(ok for ok, _ in found.values()), found
        assert retrieve.upper() in found


def test_a_wrong_called_ae_is_reported(qrscp: Dcmqrscp) -> None:
    found = outcome(f"dimse://NOT_QRSCP@127.0.0.1:{qrscp.port}")
    assert list(found) == ["C-ECHO"]  # nothing else is tried
    ok, detail = found["C-ECHO"]
    assert ok is False
    # dcmqrscp rejects it (a forked child answers; under load the peer may abort instead)
    assert "rejected" in detail or "aborted" in detail, detail


def test_nobody_listening_is_reported_quickly() -> None:
    port = free_port()
    dimse = outcome(f"dimse://PACS@127.0.0.1:{port}", timeout=3)
    assert dimse["C-ECHO"][0] is False
    web = outcome(f"http://127.0.0.1:{port}/dicom-web", timeout=3)["QIDO-RS"]
    assert web[0] is False
    assert "ConnectError" in web[1]


def test_the_command_exit_codes(qrscp: Dcmqrscp, tmp_path: Path) -> None:
    runner = CliRunner()
    good = f"dimse://{qrscp.ae_title}@127.0.0.1:{qrscp.port}"
    result = runner.invoke(app, ["check-upstream", "--upstream", good], env={})
    assert result.exit_code == 0, result.output
    assert "C-FIND" in result.output
    config = tmp_path / "two.toml"
    tables = [
        {"name": "good", "url": good},
        {"name": "down", "url": f"dimse://X@127.0.0.1:{free_port()}"},
    ]
    config.write_text(
        "".join(
            f'[[upstream]]\nname = "{t["name"]}"\nurl = "{t["url"]}"\ntimeout = 3\n' for t in tables
        )
    )
    result = runner.invoke(app, ["check-upstream", "--config", str(config)], env={})
    assert result.exit_code == 1, result.output
    assert "down" in result.output
    assert runner.invoke(app, ["check-upstream"], env={}).exit_code == 2
    wrong = runner.invoke(app, ["check-upstream", "--upstream", "dimse://host:1"], env={})
    assert wrong.exit_code == 2
