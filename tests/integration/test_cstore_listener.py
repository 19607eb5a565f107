"""The C-STORE listener (pacsfhir as a Storage SCP) against real peers: dcmtk's
``storescu`` and ``echoscu``, and a pynetdicom SCU, on both databases. What it stores is
what ``pacsfhir ingest`` of the same files stores (the same SOP instances, the same data
set bytes: only the file meta information is made by the receiver)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.uid import JPEGBaseline8Bit, JPEGLSLossless, RLELossless
from pynetdicom import _config
from sqlalchemy import select

from pacsfhir.archive import Archive
from pacsfhir.consistency import check
from pacsfhir.dicom.ingest import ingest
from pacsfhir.dimse.listener import CANNOT_UNDERSTAND, OUT_OF_RESOURCES, SUCCESS, StorageListener
from pacsfhir.errors import ConfigurationError
from pacsfhir.index import writer
from pacsfhir.index.schema import instance
from pacsfhir.settings import load_settings
from tests.conftest import PYDICOM_DATA, free_port, make_settings, skip_or_fail
from tests.support.dcmtk import dcmtk_problem, echoscu, storescu
from tests.support.dicom_factory import load_template, write_variant
from tests.support.dimse_peer import associated, send_dataset

AE_TITLE = "PACSFHIRTEST"
TRAILING_PADDING = 0xFFFCFFFC
TEST_FILES = PYDICOM_DATA / "test_files"


@pytest.fixture
def dcmtk() -> None:
    problem = dcmtk_problem()
    if problem:
        skip_or_fail(problem)


@pytest.fixture
def listener(archive: Archive) -> Iterator[StorageListener]:
    with StorageListener(archive, "127.0.0.1", free_port(), AE_TITLE) as running:
        yield running


def stored(archive: Archive) -> dict[str, bytes]:
    """SOP Instance UID -> the stored file's bytes."""
    with archive.engine.connect() as conn:
        rows = conn.execute(select(instance.c.SOPInstanceUID, instance.c.blob)).all()
    return {uid: archive.blobs.absolute(blob).read_bytes() for uid, blob in rows}


def data_set(content: bytes) -> bytes:
    """The data set of a Part 10 file: what follows its file meta information group."""
    assert content[128:132] == b"DICM", "no Part 10 preamble"
    assert content[132:136] == b"\x02\x00\x00\x00", "no File Meta Information Group Length"
    return content[144 + int.from_bytes(content[140:144], "little") :]


def sha(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def values(content: bytes) -> Dataset:
    """The data set's elements but Data Set Trailing Padding (which dcmtk's storescu
    drops: it re-encodes what it sends)."""
    ds = pydicom.dcmread(DicomBytesIO(content), force=True)
    if TRAILING_PADDING in ds:
        del ds[TRAILING_PADDING]
    return ds


def write_series(folder: Path, count: int, **attributes: object) -> dict[str, Path]:
    template = load_template()
    written: dict[str, Path] = {}
    first = None
    for i in range(count):
        ds = write_variant(
            template,
            folder / f"{i:04d}.dcm",
            study_uid=first.StudyInstanceUID if first else None,
            series_uid=first.SeriesInstanceUID if first else None,
            InstanceNumber=i + 1,
            **attributes,
        )
        first = first or ds
        written[ds.SOPInstanceUID] = folder / f"{i:04d}.dcm"
    return written


def assert_consistent(archive: Archive) -> None:
    report = check(archive.engine, archive.blobs, verify_hash=True, grace=0, staging_grace=0)
    assert report.clean, report


def test_echoscu_is_answered_and_a_wrong_called_ae_is_rejected(
    dcmtk: None, listener: StorageListener
) -> None:
    assert echoscu(listener.port, AE_TITLE).returncode == 0
    refused = echoscu(listener.port, "SOMEONEELSE")
    assert refused.returncode != 0
    assert "Called AE Title Not Recognized" in refused.output


def test_storescu_stores_generated_files_as_ingest_does(
    dcmtk: None, listener: StorageListener, archive: Archive, tmp_path: Path
) -> None:
    sources = write_series(tmp_path / "series", 30, PatientID="CSTORE1")
    sent = storescu(listener.port, AE_TITLE, [str(tmp_path / "series")], "-R")
    assert sent.returncode == 0, sent.output
    received = stored(archive)
    assert set(received) == set(sources)
    for uid, path in sources.items():
        assert values(received[uid]) == values(path.read_bytes())
    assert_consistent(archive)


def test_storescu_stores_the_sample_files_as_ingest_does(
    dcmtk: None, listener: StorageListener, archive: Archive, tmp_path: Path
) -> None:
    samples = [str(TEST_FILES), str(PYDICOM_DATA / "charset_files")]
    sent = storescu(listener.port, AE_TITLE, samples, "-R")
    received = stored(archive)
    reference = Archive.open(make_settings(tmp_path / "ref", f"sqlite:///{tmp_path}/ref.db"))
    try:
        ingest(samples, reference.engine, reference.blobs, workers=1)
        ingested = stored(reference)
    finally:
        reference.close()
    # storescu skips what dcmtk cannot read and the compressed files it proposes no
    # context for; all it sent is stored, and each is an instance ingest stores too
    assert len(received) >= 100, sent.output
    assert set(received) <= set(ingested)
    # (several sample files share a SOP Instance UID, and the two send them in another
    # order: the values of each are compared in the test above, on files of their own)
    assert_consistent(archive)


def test_a_compressed_transfer_syntax_is_stored_byte_for_byte(
    dcmtk: None, listener: StorageListener, archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pynetdicom sends a file's data set as it is, unparsed
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    jpeg2000 = TEST_FILES / "JPEG2000.dcm"
    sent = storescu(listener.port, AE_TITLE, [str(jpeg2000)], "-xw")
    assert sent.returncode == 0, sent.output
    others = {
        JPEGBaseline8Bit: TEST_FILES / "SC_rgb_jpeg_dcmtk.dcm",
        JPEGLSLossless: TEST_FILES / "MR_small_jpeg_ls_lossless.dcm",
        RLELossless: TEST_FILES / "SC_rgb_rle.dcm",
    }
    contexts = []
    for syntax, path in others.items():
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert ds.file_meta.TransferSyntaxUID == syntax
        contexts.append((str(ds.SOPClassUID), str(syntax)))
    with associated(listener.port, AE_TITLE, contexts) as assoc:
        for path in others.values():
            assert send_dataset(assoc, str(path)) == SUCCESS
    received = stored(archive)
    for path in [jpeg2000, *others.values()]:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        blob = received[ds.SOPInstanceUID]
        if path != jpeg2000:  # storescu re-encodes (see values); pynetdicom does not
            assert data_set(blob) == data_set(path.read_bytes()), path.name
        assert values(blob) == values(path.read_bytes())
        meta = pydicom.dcmread(DicomBytesIO(blob), stop_before_pixels=True).file_meta
        assert meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID


def test_an_instance_that_cannot_be_indexed_is_refused_and_nothing_is_half_stored(
    listener: StorageListener, archive: Archive
) -> None:
    ds = load_template()
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    del ds.StudyInstanceUID
    good = load_template()
    good.SOPInstanceUID = pydicom.uid.generate_uid()
    with associated(listener.port, AE_TITLE) as assoc:
        assert send_dataset(assoc, ds) == CANNOT_UNDERSTAND
        assert send_dataset(assoc, good) == SUCCESS  # the association goes on
    assert set(stored(archive)) == {good.SOPInstanceUID}
    assert list(archive.blobs.staged_files()) == []
    assert_consistent(archive)


def test_concurrent_associations_are_all_stored(
    dcmtk: None, listener: StorageListener, archive: Archive, tmp_path: Path
) -> None:
    folders = [tmp_path / f"modality{n}" for n in range(4)]
    expected: set[str] = set()
    for n, folder in enumerate(folders):
        expected |= set(write_series(folder, 25, PatientID=f"CONC{n}"))
    outputs: list[int] = []

    def send(folder: Path) -> None:
        outputs.append(storescu(listener.port, AE_TITLE, [str(folder)], "-R").returncode)

    threads = [threading.Thread(target=send, args=(folder,)) for folder in folders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert outputs == [0, 0, 0, 0]
    assert set(stored(archive)) == expected
    assert listener.committer.committed == len(expected)
    assert_consistent(archive)


@pytest.mark.slow
def test_instances_reported_stored_survive_kill_9_of_pacsfhir_listen(
    archive: Archive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    sources = write_series(tmp_path / "crash", 400, PatientID="CRASHDIMSE")
    port = free_port()
    process = _pacsfhir_listen(archive, port)
    acknowledged: set[str] = set()
    try:
        _wait_listening(process, port)
        queue = list(sources.items())
        killer = threading.Timer(1.0, os.killpg, (process.pid, signal.SIGKILL))
        killer.start()
        try:
            with associated(port, AE_TITLE) as assoc:
                for uid, path in queue:
                    try:
                        status = send_dataset(assoc, str(path))
                    except (AssertionError, RuntimeError, OSError):
                        break
                    if status == SUCCESS:
                        acknowledged.add(uid)
        except AssertionError:
            pass
        killer.join()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    assert 0 < len(acknowledged) < len(sources), "the kill must land mid-transfer"
    restarted = Archive.open(archive.settings)
    try:
        received = stored(restarted)
        for uid in acknowledged:
            assert data_set(received[uid]) == data_set(sources[uid].read_bytes())
        found = check(restarted.engine, restarted.blobs, verify_hash=True)
        assert (found.missing_blobs, found.damaged_blobs) == ([], [])
        repaired = check(restarted.engine, restarted.blobs, repair=True, grace=0, staging_grace=0)
        assert repaired.clean, repaired
    finally:
        restarted.close()


def _wait_http(process: subprocess.Popen[bytes], url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, "pacsfhir serve exited"
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("pacsfhir serve did not start")


def _pacsfhir_listen(archive: Archive, port: int, **settings: str) -> subprocess.Popen[bytes]:
    """``pacsfhir listen`` over ``archive`` on ``port`` (its own process group), with
    further PACSFHIR_* ``settings``."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PACSFHIR_")},
        "PACSFHIR_DATA": archive.settings.data,
        "PACSFHIR_DATABASE_URL": archive.settings.index_url,
        "PACSFHIR_DIMSE_PORT": str(port),
        "PACSFHIR_AE_TITLE": AE_TITLE,
        **settings,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "pacsfhir", "listen"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _wait_listening(process: subprocess.Popen[bytes], port: int) -> None:
    from pynetdicom import AE

    deadline = time.monotonic() + 60
    ae = AE()
    ae.add_requested_context("1.2.840.10008.1.1")
    while time.monotonic() < deadline:
        assert process.poll() is None, "pacsfhir listen exited"
        assoc = ae.associate("127.0.0.1", port, ae_title=AE_TITLE)
        if assoc.is_established:
            assoc.release()
            return
        time.sleep(0.1)
    raise AssertionError("pacsfhir listen did not start")


@pytest.mark.parametrize(
    ("title", "problem"),
    [("", "1 to 16"), ("A" * 17, "1 to 16"), ("A\\B", "backslash"), ("   ", "only spaces")],
)
def test_a_bad_ae_title_stops_the_start(title: str, problem: str) -> None:
    with pytest.raises(ConfigurationError, match=problem):
        load_settings({}, {"PACSFHIR_AE_TITLE": title})


def test_serve_with_a_dimse_port_runs_the_listener_and_stops_it_cleanly(
    archive: Archive, tmp_path: Path
) -> None:
    port, http_port = free_port(), free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PACSFHIR_")},
        "PACSFHIR_DATA": archive.settings.data,
        "PACSFHIR_DATABASE_URL": archive.settings.index_url,
    }
    args = ["serve", "--port", str(http_port), "--dimse-port", str(port), "--ae-title", AE_TITLE]
    process = subprocess.Popen(
        [sys.executable, "-m", "pacsfhir", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        _wait_listening(process, port)
        _wait_http(process, f"http://127.0.0.1:{http_port}/fhir/metadata")
        good = load_template()
        good.SOPInstanceUID = pydicom.uid.generate_uid()
        with associated(port, AE_TITLE) as assoc:
            assert send_dataset(assoc, good) == SUCCESS
        process.send_signal(signal.SIGTERM)
        _, errors = process.communicate(timeout=60)
        # uvicorn stops gracefully, then re-raises the SIGTERM it caught
        assert process.returncode in (0, -signal.SIGTERM), errors
        assert b"C-STORE listener stopped" in errors
        assert b"association from AE 'PYSCU'" in errors
        assert b"1 stored" in errors
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
    assert set(stored(archive)) == {good.SOPInstanceUID}


def test_an_index_busy_past_the_lock_wait_is_out_of_resources_then_stored(
    listener: StorageListener, archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer, "WRITE_LOCK_WAIT_MS", 300)
    ds = load_template()
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    with associated(listener.port, AE_TITLE) as assoc:
        with archive.engine.begin() as conn:  # another writer holds the lock
            writer.lock_index(conn)
            assert send_dataset(assoc, ds) == OUT_OF_RESOURCES
        assert send_dataset(assoc, ds) == SUCCESS  # the same instance, sent again
    assert set(stored(archive)) == {ds.SOPInstanceUID}
    assert_consistent(archive)


def test_associations_past_the_setting_are_rejected_as_transient(
    archive: Archive, tmp_path: Path
) -> None:
    """``pacsfhir listen`` with PACSFHIR_DIMSE_MAX_ASSOCIATIONS=1: while one association
    is open a second is rejected (transient: the sender may try again), and once the first
    is released the next is accepted."""
    from pynetdicom import AE

    port = free_port()
    process = _pacsfhir_listen(archive, port, PACSFHIR_DIMSE_MAX_ASSOCIATIONS="1")
    try:
        _wait_listening(process, port)
        with associated(port, AE_TITLE) as first:
            assert first.is_established
            ae = AE(ae_title="SECOND")
            ae.add_requested_context("1.2.840.10008.1.1")
            second = ae.associate("127.0.0.1", port, ae_title=AE_TITLE)
            assert second.is_rejected
            assert second.acceptor.primitive.result == 0x02  # rejected-transient
            ae.shutdown()
        deadline = time.monotonic() + 10
        while True:  # the listener notices the release in its own time
            ae = AE(ae_title="THIRD")
            ae.add_requested_context("1.2.840.10008.1.1")
            third = ae.associate("127.0.0.1", port, ae_title=AE_TITLE)
            accepted = third.is_established
            if accepted:
                third.release()
            ae.shutdown()
            if accepted or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert accepted
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
