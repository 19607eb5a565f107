"""The rendering limit (``PACSFHIR_MAX_RENDER_PIXELS``) and hostile rendering parameters,
through the app on both index backends: issue 12's render bomb (a small RLE file
declaring 6000 x 6000), viewports that upscale past the limit, a mammogram-sized frame
under the default limit, and parameter values that must be 400, never 500."""

from __future__ import annotations

import io
import tracemalloc
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydicom.encaps import encapsulate

from pacsfhir.api.app import create_app
from pacsfhir.archive import Archive
from pacsfhir.dicom.ingest import ingest
from pacsfhir.settings import Settings
from tests.support.dicom_factory import write_variant
from tests.support.generated_frames import rle_bomb, write_frame

MULTIPART_PNG = 'multipart/related; type="image/png"'


@dataclass(frozen=True)
class Stored:
    study: str
    series: str
    instance: str

    @property
    def url(self) -> str:
        return f"/dicom-web/studies/{self.study}/series/{self.series}/instances/{self.instance}"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("render-limits")
    rle_bomb(folder / "bomb.dcm")
    ct = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    write_variant(ct, folder / "ct.dcm")
    return {"bomb": folder / "bomb.dcm", "ct": folder / "ct.dcm"}


def stored(path: Path) -> Stored:
    with warnings.catch_warnings():  # hostile files on purpose
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    return Stored(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)


@pytest.fixture
def client_with(archive: Archive) -> Iterator[object]:
    """``client_with(files, **settings)``: a TestClient over ``archive`` holding these
    files, its settings changed as given."""
    clients: list[TestClient] = []

    def make(paths: list[Path], **changes: object) -> TestClient:
        summary = ingest([str(p) for p in paths], archive.engine, archive.blobs, workers=1)
        assert summary.counts.get("rejected", 0) == 0, summary
        changed = Archive(archive.settings.replace(**changes), archive.engine, archive.blobs)
        client = TestClient(create_app(changed.settings, changed))
        clients.append(client.__enter__())
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def reason(response: object) -> str:
    text: str = response.text  # type: ignore[attr-defined]
    return text


def test_a_render_bomb_is_413_before_any_decoding(
    client_with: object, files: dict[str, Path]
) -> None:
    """Issue 12 item 5: a ~1 MB RLE file declaring 6000 x 6000 rendered with RSS +300 MB."""
    assert files["bomb"].stat().st_size < 2_000_000
    client = client_with([files["bomb"]], max_render_pixels=10_000_000)  # type: ignore[operator]
    bomb = stored(files["bomb"])
    study = f"/dicom-web/studies/{bomb.study}"
    for url, accept in [
        (f"{bomb.url}/rendered", "image/jpeg"),
        (f"{bomb.url}/frames/1/rendered", "image/png"),
        (f"{bomb.url}/thumbnail", "image/jpeg"),
        (f"{bomb.url}/frames/1/thumbnail", "image/jpeg"),
        (f"{study}/rendered", "image/jpeg"),
        (f"{study}/thumbnail", "image/jpeg"),
        (f"{study}/series/{bomb.series}/rendered", MULTIPART_PNG),
        (f"{bomb.url}/frames/1/rendered", MULTIPART_PNG),
    ]:
        tracemalloc.start()
        try:
            response = client.get(url, headers={"Accept": accept})
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert response.status_code == 413, (url, accept, response.text)
        assert "6000 x 6000 x 1 = 36,000,000 samples" in reason(response), url
        assert "10,000,000 (PACSFHIR_MAX_RENDER_PIXELS)" in reason(response), url
        assert peak < 8_000_000, (url, peak)  # decoding would take 72 MB
    # its frames are still served as stored: the limit is on decoding
    raw = client.get(f"{bomb.url}/frames/1", headers={"Accept": "image/dicom-rle"})
    assert raw.status_code == 200


def test_a_frame_at_the_limit_renders(client_with: object, files: dict[str, Path]) -> None:
    ct = stored(files["ct"])
    client = client_with([files["ct"]], max_render_pixels=128 * 128)  # type: ignore[operator]
    response = client.get(f"{ct.url}/rendered", headers={"Accept": "image/png"})
    assert response.status_code == 200
    assert Image.open(io.BytesIO(response.content)).size == (128, 128)


def test_a_frame_one_sample_past_the_limit_is_413(
    client_with: object, files: dict[str, Path]
) -> None:
    ct = stored(files["ct"])
    client = client_with([files["ct"]], max_render_pixels=128 * 128 - 1)  # type: ignore[operator]
    response = client.get(f"{ct.url}/rendered")
    assert response.status_code == 413
    assert "128 x 128 x 1 = 16,384 samples" in response.text


def test_a_viewport_drawing_past_the_limit_is_413(
    client_with: object, files: dict[str, Path]
) -> None:
    """Issue 12 item 6 asked for 8192 x 8192 images of 512 x 512 frames."""
    ct = stored(files["ct"])
    client = client_with([files["ct"]], max_render_pixels=1_000_000)  # type: ignore[operator]
    for url, accept in [
        (f"{ct.url}/rendered", "image/jpeg"),
        (f"{ct.url}/frames/1/rendered", "image/png"),
        (f"{ct.url}/thumbnail", "image/jpeg"),
        (f"/dicom-web/studies/{ct.study}/rendered", MULTIPART_PNG),  # before any part
    ]:
        response = client.get(url, params={"viewport": "8192,8192"}, headers={"Accept": accept})
        assert response.status_code == 413, (url, response.text)
        assert "viewport 8192,8192 draws a 8192 x 8192 x 1 image" in response.text
        assert "PACSFHIR_MAX_RENDER_PIXELS" in response.text
    within = client.get(f"{ct.url}/rendered", params={"viewport": "1000,1000"})
    assert within.status_code == 200
    assert Image.open(io.BytesIO(within.content)).size == (1000, 1000)
    # the same viewport over a strip of the frame draws less, and is allowed
    whole = client.get(f"{ct.url}/rendered", params={"viewport": "2048,2048"})
    assert whole.status_code == 413
    strip = client.get(f"{ct.url}/rendered", params={"viewport": "2048,2048,0,0,128,8"})
    assert strip.status_code == 200
    assert Image.open(io.BytesIO(strip.content)).size == (2048, 128)


def test_the_default_limit_renders_a_mammogram(tmp_path: Path, client_with: object) -> None:
    """Mammography is up to about 4700 x 5900 (28 MP) at 16 bits."""
    pixels = (np.arange(5900 * 4700, dtype=np.uint32) % 4000).astype(np.uint16)
    path = tmp_path / "mammo.dcm"
    write_frame(path, pixels.reshape(5900, 4700))
    del pixels
    client = client_with([path])  # type: ignore[operator]
    assert Settings().max_render_pixels >= 5900 * 4700
    mammo = stored(path)
    for url in (f"{mammo.url}/rendered", f"{mammo.url}/thumbnail"):
        response = client.get(url, params={"viewport": "470,590"})
        assert response.status_code == 200, response.text
        assert Image.open(io.BytesIO(response.content)).size == (470, 590)


@pytest.mark.parametrize(
    "params",
    [
        {"window": "nan,100"},
        {"window": "100,nan"},
        {"window": "inf,100"},
        {"window": "100,-inf"},
        {"window": "1e999,100"},
        {"window": "\u0663\u0660,\u0664\u0660\u0660"},  # Arabic-Indic digits
        {"window": "\u00b2,\u00b2"},  # superscript two
        {"viewport": "\u00b2,\u00b2"},
        {"viewport": "\u0661\u0660,\u0661\u0660"},
        {"viewport": "99999999999999999999,10"},
        {"viewport": "10,10,0,0,99999999999999999999,1"},
        {"viewport": "nan,nan"},
        {"quality": "\u0669\u0660"},
        {"quality": "99999999999999999999"},
        {"quality": "nan"},
    ],
)
def test_hostile_rendering_parameters_are_400(
    client_with: object, files: dict[str, Path], params: dict[str, str]
) -> None:
    ct = stored(files["ct"])
    client = client_with([files["ct"]])  # type: ignore[operator]
    for tail in ("/rendered", "/frames/1/rendered", "/thumbnail"):
        if "window" in params and tail == "/thumbnail":
            continue  # thumbnails take no window
        response = client.get(ct.url + tail, params=params)
        assert response.status_code == 400, (tail, params, response.status_code)
        assert response.headers["Warning"].isascii()


def test_a_stored_frame_that_cannot_be_decoded_is_406_not_500(
    tmp_path: Path, client_with: object
) -> None:
    """What cannot be rendered has no rendered representation to offer (PS3.18 8.7.4)."""
    ct = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    jpeg = pydicom.dcmread(pydicom.data.get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bad_vr = pydicom.dcmread(pydicom.data.get_testdata_file("badVR.dcm"))
    garbage = encapsulate([b"\xff\xd8\xff\xc0" + bytes(64) + b"\xff\xd9"])
    paths = {
        "a palette without its tables": (ct, {"PhotometricInterpretation": "PALETTE COLOR"}),
        "12 bits allocated": (ct, {"BitsAllocated": 12}),
        "a frame count that is no number ('1A')": (bad_vr, {}),
        "a JPEG frame that is no JPEG": (jpeg, {"PixelData": garbage}),
    }
    written = {}
    for name, (template, attributes) in paths.items():
        written[name] = tmp_path / f"{len(written)}.dcm"
        write_variant(template, written[name], **attributes)
    client = client_with(list(written.values()))  # type: ignore[operator]
    for name, path in written.items():
        url = stored(path).url
        for tail in ("/rendered", "/thumbnail", "/frames/1/rendered"):
            response = client.get(url + tail)
            assert response.status_code == 406, (name, tail, response.status_code)
            assert "cannot render" in response.text, (name, tail)
