"""WADO-RS metadata keeps the source's Specific Character Set (PS3.18 F.2.2 note 3: it
says how the file was encoded; the JSON is UTF-8) and names large binary values inside
sequences by BulkDataURI, each retrievable. The oracle is pydicom's own DICOM JSON of
the file with every value inline: metadata plus what its BulkDataURIs return must equal
it, over every sample file, on both backends."""

from __future__ import annotations

import base64
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid

from pacsfhir.api.app import create_app
from pacsfhir.archive import Archive
from pacsfhir.dicom.ingest import ingest
from tests.conftest import PYDICOM_DATA, LiveServer, sample_paths
from tests.support.orthanc import Orthanc
from tests.support.samples import read_quietly

CHARSETS = PYDICOM_DATA / "charset_files"
TEST_FILES = PYDICOM_DATA / "test_files"
INLINE = 2**62
PIXEL_DATA = "7FE00010"
BASE = "http://pacsfhir.test/dicom-web"

# Names as pydicom's own character set tests expect them decoded (pydicom test_charset).
NAMES = [
    ("chrArab.dcm", ["ISO_IR 127"], "قباني^لنزار"),
    ("chrFren.dcm", ["ISO_IR 100"], "Buc^Jérôme"),
    ("chrGerm.dcm", ["ISO_IR 100"], "Äneas^Rüdiger"),
    ("chrGreek.dcm", ["ISO_IR 126"], "Διονυσιος"),
    ("chrH31.dcm", [None, "ISO 2022 IR 87"], "Yamada^Tarou"),
    ("chrHbrw.dcm", ["ISO_IR 138"], "שרון^דבורה"),
    ("chrI2.dcm", [None, "ISO 2022 IR 149"], "Hong^Gildong"),
    ("chrRuss.dcm", ["ISO_IR 144"], "Люкceмбypг"),
    ("chrX1.dcm", ["ISO_IR 192"], "Wang^XiaoDong"),
    ("chrX2.dcm", ["GB18030"], "Wang^XiaoDong"),
]
IDEOGRAPHIC = {"chrH31.dcm": "山田^太郎", "chrI2.dcm": "洪^吉洞", "chrX1.dcm": "王^小東"}
IDEOGRAPHIC["chrX2.dcm"] = "王^小东"


def metadata_url(ds: pydicom.Dataset) -> str:
    return (
        f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}/metadata"
    )


@pytest.mark.parametrize(("name", "charset", "alphabetic"), NAMES, ids=[n[0] for n in NAMES])
def test_the_source_character_set_is_kept_and_text_is_decoded(
    sample_client: TestClient, name: str, charset: list[str | None], alphabetic: str
) -> None:
    ds = read_quietly(CHARSETS / name, force=True)
    response = sample_client.get(metadata_url(ds))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/dicom+json")
    [found] = response.json()
    assert found["00080005"] == {"vr": "CS", "Value": charset}
    name_value = found["00100010"]["Value"][0]
    assert name_value["Alphabetic"] == alphabetic
    if name in IDEOGRAPHIC:
        assert name_value["Ideographic"] == IDEOGRAPHIC[name]


def test_an_items_own_character_set_is_kept(archive: Archive, tmp_path: Path) -> None:
    """chrSQEncoding: UTF-8 at the top level, an item in ISO 2022 IR 13 / 87 (JIS)."""
    ds = read_quietly(CHARSETS / "chrSQEncoding.dcm", force=True)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.save_as(tmp_path / "sq.dcm")
    ingest([str(tmp_path / "sq.dcm")], archive.engine, archive.blobs, workers=1)
    with LiveServer(archive) as server:
        web = DICOMwebClient(url=f"{server.base_url}/dicom-web")
        found = web.retrieve_instance_metadata(
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
        )
    assert found["00080005"] == {"vr": "CS", "Value": ["ISO_IR 192"]}
    [item] = found["00321064"]["Value"]
    assert item["00080005"] == {"vr": "CS", "Value": ["ISO 2022 IR 13", "ISO 2022 IR 87"]}
    assert item["00100010"]["Value"][0] == {
        "Alphabetic": "ﾔﾏﾀﾞ^ﾀﾛｳ",
        "Ideographic": "山田^太郎",
        "Phonetic": "やまだ^たろう",
    }


def _expected_charset(element: dict[str, Any]) -> dict[str, Any]:
    values = [v or None for v in element.get("Value", [])]
    return {"vr": "CS", "Value": values} if any(values) else {"vr": "CS"}


def _resolve(found: Any, get: Any, counts: Counter[str], nested: bool = False) -> Any:
    """``found`` with each BulkDataURI (but Pixel Data's) replaced by the InlineBinary of
    what it returns, and each Specific Character Set left as it is."""
    if isinstance(found, list):
        return [_resolve(v, get, counts, nested) for v in found]
    if not isinstance(found, dict):
        return found
    if "BulkDataURI" in found:
        counts["nested" if nested else "top"] += 1
        value = get(found["BulkDataURI"])
        return {"vr": found["vr"], "InlineBinary": base64.b64encode(value).decode()}
    resolved: dict[str, Any] = {}
    for key, value in found.items():
        if isinstance(value, dict) and value.get("vr") == "SQ":
            items = [_resolve(i, get, counts, True) for i in value.get("Value", [])]
            resolved[key] = {"vr": "SQ", "Value": items}
        else:
            resolved[key] = _resolve(value, get, counts, nested)
    return resolved


def _pydicom_json(ds: pydicom.Dataset) -> Any:
    expected = ds.to_json_dict(INLINE)

    def fix(obj: Any) -> Any:
        if isinstance(obj, list):
            return [fix(v) for v in obj]
        if not isinstance(obj, dict):
            return obj
        fixed = {k: fix(v) for k, v in obj.items()}
        if "00080005" in fixed:
            fixed["00080005"] = _expected_charset(fixed["00080005"])
        return fixed

    return fix(expected)


def test_metadata_and_its_bulk_data_are_the_whole_header(
    sample_client: TestClient,
) -> None:
    files = sorted(p for d in sample_paths() for p in Path(d).rglob("*.dcm") if p.is_file())
    by_sop: dict[str, list[Path]] = {}
    for path in files:
        try:
            ds = read_quietly(path, force=True)
            by_sop.setdefault(str(ds.SOPInstanceUID), []).append(path)
        except Exception:
            continue
    counts: Counter[str] = Counter()

    def get(uri: str) -> bytes:
        assert uri.startswith(BASE)
        path = uri[len(BASE) - len("/dicom-web") :]
        response = sample_client.get(path, headers={"Accept": "application/octet-stream"})
        assert response.status_code == 200, (uri, response.text)
        return response.content

    compared = 0
    for paths in by_sop.values():
        if len(paths) != 1:  # the archive keeps one of several versions
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ds = pydicom.dcmread(paths[0], stop_before_pixels=True)
                expected = _pydicom_json(ds)
                url = metadata_url(ds)
            except Exception:
                counts["skipped"] += 1
                continue  # no UIDs, or pydicom cannot make DICOM JSON of it: no oracle
        response = sample_client.get(url)
        if response.status_code == 404:
            counts["404"] += 1
            continue  # not storable (no valid UIDs)
        [found] = response.json()
        found.pop(PIXEL_DATA, None)
        expected.pop(PIXEL_DATA, None)
        assert _resolve(found, get, counts) == expected, paths[0].name
        compared += 1
    assert compared > 30  # distinct instances (many sample files share SOP Instance UIDs)
    assert counts["nested"] >= 4  # the ECG's waveform data, icon images' pixel data
    assert counts["top"] >= 5


def test_a_nested_value_by_dicomweb_client_and_bad_paths(archive: Archive) -> None:
    ecg = TEST_FILES / "waveform_ecg.dcm"
    ingest([str(ecg)], archive.engine, archive.blobs, workers=1)
    ds = read_quietly(ecg, force=True)
    with LiveServer(archive) as server:
        web = DICOMwebClient(url=f"{server.base_url}/dicom-web")
        found = web.retrieve_instance_metadata(
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
        )
        waveforms = found["54000100"]["Value"]
        uris = [w["54001010"]["BulkDataURI"] for w in waveforms]
        assert [u.rsplit("/bulkdata/", 1)[1] for u in uris] == [
            f"54000100/{n}/54001010" for n in range(len(waveforms))
        ]
        for n, uri in enumerate(uris):
            [value] = web.retrieve_bulkdata(uri)
            assert value == ds.WaveformSequence[n].WaveformData
            single = httpx.get(uri, headers={"Accept": "application/octet-stream"})
            assert single.content == ds.WaveformSequence[n].WaveformData
            multipart = httpx.get(uri)  # its one part names itself (PS3.18 10.4.3.3.5)
            assert f"Content-Location: {uri}\r\n".encode() in multipart.content
        instance_url = uris[0].rsplit("/bulkdata/", 1)[0]
        for bad in (
            "54000100/9/54001010",  # no such item
            "54000100/0/54001011",  # no such element
            "54000100/0/003A0005",  # not binary (US)
            "54000100/00/54001010",
            "54000100/-1/54001010",
            "54000100/0",
            "54000100/0/54001010/0/54001010",
            "..%2F..%2Fmetadata",
            "0008001G",
        ):
            response = httpx.get(f"{instance_url}/bulkdata/{bad}")
            assert response.status_code == 404, (bad, response.text)


def test_nested_bulk_data_under_the_patient_scoped_base(archive: Archive) -> None:
    ecg = TEST_FILES / "waveform_ecg.dcm"
    ingest([str(ecg)], archive.engine, archive.blobs, workers=1)
    ds = read_quietly(ecg, force=True)
    with TestClient(create_app(archive.settings, archive)) as client:
        bundle = client.get("/fhir/ImagingStudy").json()
        patient = bundle["entry"][0]["resource"]["subject"]["reference"].split("/")[1]
        scoped = f"/fhir/Patient/{patient}/$wado-rs"
        [found] = client.get(scoped + metadata_url(ds)[len("/dicom-web") :]).json()
        uri = found["54000100"]["Value"][1]["54001010"]["BulkDataURI"]
        assert f"{scoped}/studies/" in uri
        path = uri[uri.index("/fhir/Patient/") :]
        value = client.get(path, headers={"Accept": "application/octet-stream"})
        assert value.content == ds.WaveformSequence[1].WaveformData
        other = client.get(
            f"/fhir/Patient/someone-else/$wado-rs{path[len(scoped) :]}",
            headers={"Accept": "application/octet-stream"},
        )
        assert other.status_code == 404


ORACLE_FILES = [CHARSETS / n for n, _charset, _name in NAMES] + [TEST_FILES / "waveform_ecg.dcm"]


def _values(element: dict[str, Any] | None) -> list[Any]:
    return [v for v in (element or {}).get("Value", []) if v]


def test_orthanc_agrees_on_character_sets_names_and_nested_bulk_data(
    sample_client: TestClient, orthanc: Orthanc
) -> None:
    """Orthanc 1.10 also keeps the source's Specific Character Set (leaving out an empty
    first value, which we return as null) and gives nested bulk data a BulkDataURI."""
    orthanc.store(ORACLE_FILES)
    for path in ORACLE_FILES:
        ds = read_quietly(path, force=True)
        [ours] = sample_client.get(metadata_url(ds)).json()
        [theirs] = httpx.get(orthanc.dicomweb_url + metadata_url(ds)[len("/dicom-web") :]).json()
        assert _values(ours["00080005"]) == _values(theirs["00080005"]), path.name
        mine = {k: v for k, v in ours["00100010"]["Value"][0].items() if v}
        assert mine == {k: v for k, v in theirs["00100010"]["Value"][0].items() if v}
    ecg = read_quietly(TEST_FILES / "waveform_ecg.dcm", force=True)
    [ours] = sample_client.get(metadata_url(ecg)).json()
    [theirs] = httpx.get(orthanc.dicomweb_url + metadata_url(ecg)[len("/dicom-web") :]).json()
    for n, item in enumerate(theirs["54000100"]["Value"]):
        their_value = httpx.get(item["54001010"]["BulkDataURI"])  # multipart
        uri = ours["54000100"]["Value"][n]["54001010"]["BulkDataURI"]
        our_value = sample_client.get(
            uri[len(BASE) - len("/dicom-web") :], headers={"Accept": "application/octet-stream"}
        )
        assert our_value.content == ecg.WaveformSequence[n].WaveformData
        assert their_value.status_code == 200
        assert our_value.content in their_value.content
