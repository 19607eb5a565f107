"""WADO-URI (PS3.18 chapter 9) at ``/wado`` and under a patient's ``$wado-rs`` base, on
both backends: the stored bytes as application/dicom (byte-identical to the source file
and to Orthanc's own ``/wado``), rendered images whose size, region and window follow the
parameters (checked against the full rendering and WADO-RS's ``/rendered``), 8-bit colour
pixels equal to Orthanc's rendering, and the errors PS3.18 gives."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydicom.dataset import Dataset

from pacsfhir.api.app import create_app
from tests.conftest import archive_holding, free_port, skip_or_fail
from tests.support.orthanc import Orthanc, orthanc_problem
from tests.support.samples import pydicom_sample, read_quietly

FILES = [
    "CT_small.dcm",  # native 16-bit signed, one frame
    "emri_small.dcm",  # native, 10 frames
    "SC_rgb_rle_2frame.dcm",  # RLE colour, 2 frames
    "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline
    "MR_small_jp2klossless.dcm",  # JPEG 2000 lossless
    "rtplan.dcm",  # no pixel data
]


@dataclass
class Served:
    client: TestClient
    datasets: dict[str, Dataset]  # file name -> dataset
    paths: dict[str, Path]

    def query(self, name: str, **extra: str) -> dict[str, str]:
        ds = self.datasets[name]
        return {
            "requestType": "WADO",
            "studyUID": ds.StudyInstanceUID,
            "seriesUID": ds.SeriesInstanceUID,
            "objectUID": ds.SOPInstanceUID,
            **extra,
        }

    def get(self, name: str, base: str = "", **extra: str) -> httpx.Response:
        return self.client.get(f"{base}/wado", params=self.query(name, **extra))


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def served(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    postgres_problem: str | None,
) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp(f"wado-uri-{request.param}")
    paths = {name: pydicom_sample(name) for name in FILES}
    with (
        archive_holding(str(request.param), tmp, postgres_problem, list(paths.values())) as archive,
        TestClient(create_app(archive.settings, archive)) as client,
    ):
        yield Served(client, {n: read_quietly(p) for n, p in paths.items()}, paths)


def literal(query: dict[str, str]) -> str:
    """The query as WADO-URI links write it, ``/`` unescaped (Orthanc does not decode
    ``%2F``); every value here is URL-safe."""
    return "&".join(f"{name}={value}" for name, value in query.items())


def image(response: httpx.Response) -> Image.Image:
    assert response.status_code == 200, response.text
    return Image.open(io.BytesIO(response.content))


@pytest.mark.parametrize("name", [n for n in FILES])
def test_application_dicom_is_the_stored_file(served: Served, name: str) -> None:
    response = served.get(name, contentType="application/dicom")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/dicom"
    assert response.content == served.paths[name].read_bytes()
    stored = str(served.datasets[name].file_meta.TransferSyntaxUID)
    asked = served.get(name, contentType="application/dicom", transferSyntax=stored)
    assert asked.content == response.content


def test_another_transfer_syntax_is_406_until_transcoding(served: Served) -> None:
    explicit = "1.2.840.10008.1.2.1"
    response = served.get(
        "SC_rgb_jpeg_dcmtk.dcm", contentType="application/dicom", transferSyntax=explicit
    )
    assert response.status_code == 406
    assert "does not transcode" in response.headers["warning"]
    dicom = "application/dicom"
    not_a_syntax = served.get("CT_small.dcm", contentType=dicom, transferSyntax="1.2.3")
    assert not_a_syntax.status_code == 400


def test_the_default_is_a_jpeg_of_the_first_frame(served: Served) -> None:
    ds = served.datasets["emri_small.dcm"]
    response = served.get("emri_small.dcm")
    assert response.headers["content-type"] == "image/jpeg"
    picture = image(response)
    assert (picture.format, picture.size) == ("JPEG", (ds.Columns, ds.Rows))


@pytest.mark.parametrize("media", ["image/png", "image/gif", "image/jpeg"])
@pytest.mark.parametrize("how", ["contentType", "accept"])
def test_each_rendered_type(served: Served, media: str, how: str) -> None:
    if how == "contentType":
        response = served.get("CT_small.dcm", contentType=media)
    else:
        query = served.query("CT_small.dcm")
        response = served.client.get("/wado", params=query, headers={"Accept": media})
    assert response.headers["content-type"] == media
    assert image(response).format == media.split("/")[1].upper()


def test_a_frame_renders_as_wado_rs_renders_it(served: Served) -> None:
    ds = served.datasets["emri_small.dcm"]
    for frame in (1, 4, 10):
        mine = served.get(
            "emri_small.dcm",
            contentType="image/png",
            frameNumber=str(frame),
            windowCenter="300",
            windowWidth="500",
        )
        rs = served.client.get(
            f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}/frames/{frame}/rendered",
            params={"window": "300,500"},
            headers={"Accept": "image/png"},
        )
        assert np.array_equal(np.asarray(image(mine)), np.asarray(image(rs))), frame
    frames = [
        np.asarray(image(served.get("emri_small.dcm", contentType="image/png", frameNumber=str(n))))
        for n in (1, 2)
    ]
    assert not np.array_equal(*frames)  # the frame number is honoured
    past = served.get("emri_small.dcm", frameNumber="11")
    assert past.status_code == 400
    assert "10 frame" in past.headers["warning"]


def test_the_window_changes_the_image(served: Served) -> None:
    png = "image/png"
    narrow = served.get("CT_small.dcm", contentType=png, windowCenter="40", windowWidth="1")
    wide = served.get("CT_small.dcm", contentType=png, windowCenter="40", windowWidth="4000")
    values = np.unique(np.asarray(image(narrow)))
    assert set(values.tolist()) <= {0, 255}  # a width of 1 is a threshold
    assert len(np.unique(np.asarray(image(wide)))) > 2


def test_a_region_is_the_crop_of_the_full_image(served: Served) -> None:
    name = "SC_rgb_rle_2frame.dcm"  # lossless PNG of 8-bit colour: no windowing, exact
    full = np.asarray(image(served.get(name, contentType="image/png")))
    rows, columns = full.shape[:2]
    part = served.get(name, contentType="image/png", region="0.25,0.5,0.75,1")
    expected = full[rows // 2 : rows, columns // 4 : (3 * columns + 3) // 4]
    assert np.array_equal(np.asarray(image(part)), expected)


@pytest.mark.parametrize(
    ("extra", "size"),
    [
        ({"rows": "32", "columns": "32"}, (32, 32)),  # CT_small is 128 x 128
        ({"columns": "64"}, (64, 64)),
        ({"rows": "16"}, (16, 16)),
        ({"rows": "32", "columns": "64"}, (32, 32)),  # fits, aspect kept
        ({"region": "0,0,0.5,0.25"}, (64, 32)),
        ({"region": "0,0,0.5,0.25", "columns": "32"}, (32, 16)),
    ],
)
def test_rows_columns_and_region_set_the_size(
    served: Served, extra: dict[str, str], size: tuple[int, int]
) -> None:
    assert image(served.get("CT_small.dcm", **extra)).size == size


def test_image_quality_is_the_jpeg_quality(served: Served) -> None:
    low = served.get("CT_small.dcm", imageQuality="5")
    high = served.get("CT_small.dcm", imageQuality="100")
    assert len(low.content) < len(high.content)


def test_ignored_parameters_say_so(served: Served) -> None:
    response = served.get("CT_small.dcm", annotation="patient")
    assert response.status_code == 200
    assert "annotation" in response.headers["warning"]
    assert "warning" not in served.get("CT_small.dcm").headers


@pytest.mark.parametrize(
    ("extra", "status"),
    [
        ({"requestType": "RS"}, 400),
        ({"objectUID": "1.2.3.4.5.6.7.8"}, 404),
        ({"seriesUID": "1.2.3.4.5.6.7.8"}, 404),
        ({"objectUID": "not-a-uid"}, 400),
        ({"windowCenter": "1"}, 400),
        ({"region": "0.9,0,0.1,1"}, 400),
        ({"anonymize": "yes"}, 400),
        ({"contentType": "application/dicom,image/png"}, 400),
    ],
)
def test_errors(served: Served, extra: dict[str, str], status: int) -> None:
    response = served.get("CT_small.dcm", **extra)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["warning"].startswith("299 pacsfhir")


def test_no_pixel_data_renders_as_406(served: Served) -> None:
    assert served.get("rtplan.dcm").status_code == 406
    assert served.get("rtplan.dcm", contentType="application/dicom").status_code == 200


def test_accept_without_a_served_type_is_406(served: Served) -> None:
    query = served.query("CT_small.dcm")
    response = served.client.get("/wado", params=query, headers={"Accept": "text/html"})
    assert response.status_code == 406


def test_the_patient_base_serves_only_that_patients_instances(served: Served) -> None:
    ct, plan = served.datasets["CT_small.dcm"], served.datasets["rtplan.dcm"]
    own, other = (
        served.client.get(f"/fhir/ImagingStudy/{ds.StudyInstanceUID}")
        .json()["subject"]["reference"]
        .split("/")[1]
        for ds in (ct, plan)
    )
    assert own != other
    base = f"/fhir/Patient/{own}/$wado-rs"
    mine = served.get("CT_small.dcm", base=base, contentType="application/dicom")
    assert mine.content == served.paths["CT_small.dcm"].read_bytes()
    assert served.get("rtplan.dcm", base=base, contentType="application/dicom").status_code == 404
    elsewhere = f"/fhir/Patient/{other}/$wado-rs"
    assert served.get("CT_small.dcm", base=elsewhere).status_code == 404


# -- Orthanc as the oracle -------------------------------------------------------------


@pytest.fixture(scope="module")
def own_orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    problem = orthanc_problem()
    if problem:
        skip_or_fail(problem)
    with Orthanc(tmp_path_factory.mktemp("orthanc-uri"), free_port(), free_port()) as server:
        yield server


@pytest.mark.orthanc
def test_application_dicom_is_byte_identical_to_orthancs(
    served: Served, own_orthanc: Orthanc
) -> None:
    paths = list(served.paths.values())
    assert own_orthanc.store(paths) == len(paths)
    with httpx.Client(base_url=own_orthanc.base_url, timeout=60) as orthanc:
        for name in FILES:
            query = served.query(name, contentType="application/dicom")
            theirs = orthanc.get(f"/wado?{literal(query)}")
            assert theirs.status_code == 200, (name, theirs.text)
            mine = served.client.get(f"/wado?{literal(query)}")
            assert mine.content == theirs.content, name


@pytest.mark.orthanc
def test_colour_pixels_equal_orthancs_rendering(served: Served, own_orthanc: Orthanc) -> None:
    own_orthanc.store(list(served.paths.values()))
    with httpx.Client(base_url=own_orthanc.base_url, timeout=60) as orthanc:
        query = served.query("SC_rgb_rle_2frame.dcm", contentType="image/png")
        theirs = np.asarray(image(orthanc.get(f"/wado?{literal(query)}")).convert("RGB"))
        mine = np.asarray(image(served.client.get(f"/wado?{literal(query)}")).convert("RGB"))
    assert mine.shape == theirs.shape
    assert np.array_equal(mine, theirs)
