"""Rendering what real writers leave out or get wrong: files missing Type 1 Image Pixel
attributes render as the same file with the standard's defaults written in (through
WADO-RS ``/rendered``, ``/thumbnail`` and WADO-URI, on both backends), and 12-bit JPEG
Extended (``1.2.840.10008.1.2.4.51``) decodes, pydicom's ``JPEG-lossy.dcm`` (a scan
header IJG tolerates and libjpeg refused) included, within 2 of dcmtk's own decoder."""

from __future__ import annotations

import io
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydicom.dataset import Dataset

from pacsfhir.api.app import create_app
from pacsfhir.dicom.frames import PixelDataFile
from pacsfhir.dicom.render import decode_frame
from tests.conftest import archive_holding, skip_or_fail
from tests.support.dicom_factory import write_variant
from tests.support.samples import pydicom_sample, read_quietly

# (source file, attributes left out, the defaults that stand in for them)
CASES: list[tuple[str, tuple[str, ...], dict[str, Any]]] = [
    ("CT_small.dcm", ("PixelRepresentation",), {"PixelRepresentation": 0}),
    ("CT_small.dcm", ("BitsStored", "HighBit"), {"BitsStored": 16, "HighBit": 15}),
    ("CT_small.dcm", ("SamplesPerPixel",), {"SamplesPerPixel": 1}),
    ("CT_small.dcm", ("PhotometricInterpretation",), {"PhotometricInterpretation": "MONOCHROME2"}),
    (
        "CT_small.dcm",
        ("SamplesPerPixel", "PhotometricInterpretation", "BitsAllocated", "BitsStored", "HighBit"),
        {
            "SamplesPerPixel": 1,
            "PhotometricInterpretation": "MONOCHROME2",
            "BitsAllocated": 16,
            "BitsStored": 16,
            "HighBit": 15,
        },
    ),
    (
        "SC_rgb.dcm",
        ("SamplesPerPixel", "PlanarConfiguration"),
        {"SamplesPerPixel": 3, "PlanarConfiguration": 0},
    ),
    (
        "SC_rgb.dcm",
        ("SamplesPerPixel", "PhotometricInterpretation", "PlanarConfiguration"),
        {"SamplesPerPixel": 3, "PhotometricInterpretation": "RGB", "PlanarConfiguration": 0},
    ),
    (
        "SC_rgb_rle_2frame.dcm",
        ("SamplesPerPixel", "PhotometricInterpretation", "BitsAllocated", "BitsStored"),
        {
            "SamplesPerPixel": 3,
            "PhotometricInterpretation": "RGB",
            "BitsAllocated": 8,
            "BitsStored": 8,
        },
    ),
    (
        "MR_small_jp2klossless.dcm",
        ("PixelRepresentation",),
        {"PixelRepresentation": 1},
    ),  # the codestream says signed
    (
        "JPGExtended.dcm",
        ("BitsAllocated", "BitsStored", "HighBit"),
        {"BitsAllocated": 16, "BitsStored": 12, "HighBit": 11},
    ),
    (
        "emri_small.dcm",
        ("PixelRepresentation", "SamplesPerPixel"),
        {"PixelRepresentation": 0, "SamplesPerPixel": 1},
    ),
]


@dataclass
class Pair:
    lacking: Dataset
    explicit: Dataset


@dataclass
class Served:
    client: TestClient
    pairs: list[Pair]


def _variants(folder: Path) -> Iterator[tuple[Path, Pair]]:
    for number, (name, left_out, defaults) in enumerate(CASES):
        template = read_quietly(pydicom_sample(name))
        explicit = write_variant(template, folder / f"{number}-explicit.dcm", **defaults)
        lacking = template.copy()
        for keyword in left_out:
            del lacking[keyword]
        lacking = write_variant(lacking, folder / f"{number}-lacking.dcm")
        yield folder / f"{number}-lacking.dcm", Pair(lacking, explicit)
        yield folder / f"{number}-explicit.dcm", Pair(lacking, explicit)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def served(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    postgres_problem: str | None,
) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp(f"robust-{request.param}")
    made = list(_variants(tmp / "src"))
    paths = [str(p) for p, _ in made] + [str(pydicom_sample("JPEG-lossy.dcm"))]
    pairs = [pair for _, pair in made[::2]]
    with (
        archive_holding(str(request.param), tmp, postgres_problem, paths) as archive,
        TestClient(create_app(archive.settings, archive)) as client,
    ):
        yield Served(client, pairs)


def instance_path(ds: Dataset) -> str:
    return (
        f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )


def png(client: TestClient, url: str, **params: str) -> np.ndarray:
    response = client.get(url, params=params, headers={"Accept": "image/png"})
    assert response.status_code == 200, (url, response.text)
    return np.asarray(Image.open(io.BytesIO(response.content)))


@pytest.mark.parametrize("case", range(len(CASES)), ids=[f"{c[0]}-{'+'.join(c[1])}" for c in CASES])
def test_missing_pixel_attributes_render_with_the_defaults(served: Served, case: int) -> None:
    pair = served.pairs[case]
    for suffix in ("/rendered", "/thumbnail", "/frames/1/rendered"):
        lacking = png(served.client, instance_path(pair.lacking) + suffix)
        explicit = png(served.client, instance_path(pair.explicit) + suffix)
        assert np.array_equal(lacking, explicit), suffix
    query = {
        "requestType": "WADO",
        "studyUID": pair.lacking.StudyInstanceUID,
        "seriesUID": pair.lacking.SeriesInstanceUID,
        "objectUID": pair.lacking.SOPInstanceUID,
        "contentType": "image/png",
    }
    response = served.client.get("/wado", params=query)
    assert response.status_code == 200, response.text


def test_jpeg_lossy_renders(served: Served) -> None:
    ds = read_quietly(pydicom_sample("JPEG-lossy.dcm"))
    image = png(served.client, instance_path(ds) + "/rendered")
    assert image.shape == (ds.Rows, ds.Columns)
    assert image.max() > image.min()


@pytest.mark.parametrize("name", ["JPEG-lossy.dcm", "JPGExtended.dcm"])
def test_12_bit_jpeg_extended_decodes_as_dcmtk_does(name: str, tmp_path: Path) -> None:
    """dcmtk's dcmdjpeg (IJG's 12-bit decoder) as the oracle: another JPEG decoder's
    samples differ by rounding, at most 2 (the documented difference)."""
    if shutil.which("dcmdjpeg") is None:
        skip_or_fail("dcmtk's dcmdjpeg is not installed (Debian package dcmtk)")
    decoded = tmp_path / "decoded.dcm"
    subprocess.run(
        ["dcmdjpeg", str(pydicom_sample(name)), str(decoded)], check=True, capture_output=True
    )
    expected = read_quietly(decoded).pixel_array
    with PixelDataFile(pydicom_sample(name)) as source:
        array, _ = decode_frame(source, 0)
    assert array.shape == expected.shape
    assert int(np.abs(array.astype(np.int32) - expected.astype(np.int32)).max()) <= 2
