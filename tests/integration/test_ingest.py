"""Ingest against real files on SQLite and PostgreSQL: every sample file stored or
rejected with a reason, idempotence, the replace policy, byte-for-byte storage, counts,
hostile files, a failed commit, lost blobs put back (kill -9: test_crash_safety)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import Connection, select

from pacsfhir.archive import Archive
from pacsfhir.dicom import ingest as ingest_module
from pacsfhir.dicom.ingest import Blob, IngestSummary, Outcome, ingest, remove_unreferenced
from pacsfhir.index.schema import instance, study
from tests.conftest import PYDICOM_DATA, sample_paths
from tests.support.archive_checks import assert_consistent, index_counts
from tests.support.dicom_factory import (
    load_template,
    write_new_version,
    write_study,
    write_variant,
)

TEST_FILES = PYDICOM_DATA / "test_files"


def run(archive: Archive, *paths: Path | str, workers: int = 1) -> IngestSummary:
    return ingest([str(p) for p in paths], archive.engine, archive.blobs, workers=workers)


def test_every_sample_file_is_stored_or_rejected_with_a_reason(archive: Archive) -> None:
    files = [p for root in sample_paths() for p in Path(root).rglob("*") if p.is_file()]
    summary = run(archive, *sample_paths(), workers=2)
    assert summary.total == len(files)
    assert summary.counts["stored"] > 100
    assert set(summary.rejected) <= {"not-dicom", "truncated", "missing-attribute", "invalid-uid"}
    assert_consistent(archive)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("MR_truncated.dcm", "truncated"),
        ("README.txt", "not-dicom"),
        ("rtplan.dump", "not-dicom"),
        ("crayons.icc", "not-dicom"),
        ("JPEGLSNearLossless_08.dcm", "missing-attribute"),  # no Study Instance UID
    ],
)
def test_known_bad_files_are_rejected_with_their_reason(
    archive: Archive, name: str, reason: str
) -> None:
    summary = run(archive, TEST_FILES / name)
    assert dict(summary.rejected) == {reason: 1}
    assert index_counts(archive) == (0, 0, 0)
    assert_consistent(archive)


def test_files_without_preamble_are_read(archive: Archive) -> None:
    summary = run(
        archive, TEST_FILES / "ExplVR_BigEndNoMeta.dcm", TEST_FILES / "ExplVR_LitEndNoMeta.dcm"
    )
    # the two files are one instance in two encodings: stored, then replaced
    assert (summary.counts["stored"], summary.counts["replaced"]) == (1, 1)


def test_hostile_files_leave_nothing_behind(archive: Archive, tmp_path: Path) -> None:
    template = load_template()
    inbox = tmp_path / "in"
    inbox.mkdir()
    (inbox / "empty.dcm").write_bytes(b"")
    (inbox / "random.bin").write_bytes(os.urandom(4096))
    (inbox / "header-only.dcm").write_bytes((TEST_FILES / "CT_small.dcm").read_bytes()[:700])
    write_variant(template, inbox / "traversal.dcm", sop_uid="../../../etc/passwd")
    write_variant(template, inbox / "long-uid.dcm", study_uid="1." + "2" * 80)
    summary = run(archive, inbox)
    assert summary.counts["rejected"] == 5
    assert summary.rejected["invalid-uid"] == 2
    assert index_counts(archive) == (0, 0, 0)
    assert_consistent(archive)


def test_same_file_twice_is_already_present(archive: Archive) -> None:
    first = run(archive, TEST_FILES / "CT_small.dcm")
    again = run(archive, TEST_FILES / "CT_small.dcm", TEST_FILES / "CT_small.dcm")
    assert first.counts["stored"] == 1
    assert again.counts["already present"] == 2
    assert index_counts(archive) == (1, 1, 1)
    assert_consistent(archive)


def test_different_content_under_a_known_uid_replaces_it(archive: Archive, tmp_path: Path) -> None:
    template = load_template()
    original = write_variant(template, tmp_path / "a.dcm", StudyDescription="first")
    write_new_version(template, tmp_path / "b.dcm", original, StudyDescription="second")
    run(archive, tmp_path / "a.dcm")
    summary = run(archive, tmp_path / "b.dcm")
    assert summary.counts["replaced"] == 1
    with archive.engine.connect() as conn:
        (blob,) = conn.execute(select(instance.c.blob)).scalars()
        description = conn.execute(select(study.c.StudyDescription)).scalar_one()
    assert description == "second"
    stored = archive.blobs.absolute(blob).read_bytes()
    assert stored == (tmp_path / "b.dcm").read_bytes()
    assert_consistent(archive)  # the replaced blob is gone


def test_parallel_ingest_keeps_the_file_that_comes_last(archive: Archive, tmp_path: Path) -> None:
    """Two versions of one instance, parsed by different workers in different tasks and
    batches: the one later in walk order is what the index and the blob store keep."""
    template = load_template()
    first = write_variant(template, tmp_path / "000.dcm", StudyDescription="first")
    for n in range(1, 100):
        write_variant(template, tmp_path / f"{n:03d}.dcm")
    write_new_version(template, tmp_path / "100.dcm", first, StudyDescription="last")
    summary = ingest([str(tmp_path)], archive.engine, archive.blobs, workers=2, batch_size=16)
    assert (summary.counts["stored"], summary.counts["replaced"]) == (100, 1)
    with archive.engine.connect() as conn:
        blob = conn.execute(
            select(instance.c.blob).where(instance.c.SOPInstanceUID == first.SOPInstanceUID)
        ).scalar_one()
        description = conn.execute(
            select(study.c.StudyDescription).where(
                study.c.StudyInstanceUID == first.StudyInstanceUID
            )
        ).scalar_one()
    assert description == "last"
    assert archive.blobs.absolute(blob).read_bytes() == (tmp_path / "100.dcm").read_bytes()
    assert_consistent(archive)


def test_instance_moving_to_another_study_updates_both(archive: Archive, tmp_path: Path) -> None:
    template = load_template()
    first = write_variant(template, tmp_path / "a.dcm")
    write_variant(template, tmp_path / "b.dcm", sop_uid=first.SOPInstanceUID, PatientID="OTHER")
    run(archive, tmp_path / "a.dcm")
    run(archive, tmp_path / "b.dcm")
    assert index_counts(archive) == (1, 1, 1)  # the emptied study and series are gone
    assert_consistent(archive)


def test_counts_follow_instances_as_they_arrive(archive: Archive, tmp_path: Path) -> None:
    template = load_template()
    _study_uid, paths = write_study(template, tmp_path, series=3, instances=4)
    run(archive, *paths[:5])
    run(archive, *paths[5:])
    with archive.engine.connect() as conn:
        row = conn.execute(
            select(study.c.number_of_series, study.c.number_of_instances, study.c.version_id)
        ).one()
    assert tuple(row[:2]) == (3, 12)
    assert row[2] == 2  # one new version per batch that touched the study
    assert_consistent(archive)


def test_blobs_are_byte_identical_to_the_source(archive: Archive) -> None:
    source = TEST_FILES / "MR_small.dcm"
    run(archive, source)
    with archive.engine.connect() as conn:
        (blob,) = conn.execute(select(instance.c.blob)).scalars()
    assert archive.blobs.absolute(blob).read_bytes() == source.read_bytes()
    assert blob.startswith(pydicom.dcmread(source).StudyInstanceUID + "/")


def test_a_failed_commit_leaves_no_blob_behind(
    archive: Archive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    template = load_template()
    _study_uid, paths = write_study(template, tmp_path, series=2, instances=3)
    real_write = ingest_module.write_instances

    def write_then_fail(conn: Connection, *args: object, **kwargs: object) -> None:
        real_write(conn, *args, **kwargs)  # type: ignore[arg-type]
        raise RuntimeError("the commit fails")

    monkeypatch.setattr(ingest_module, "write_instances", write_then_fail)
    with pytest.raises(RuntimeError, match="the commit fails"):
        run(archive, *paths)
    assert index_counts(archive) == (0, 0, 0)
    assert_consistent(archive)  # no blob on disk, staging empty
    monkeypatch.undo()
    assert run(archive, *paths).counts["stored"] == 6
    assert_consistent(archive)


def test_a_failed_batch_keeps_the_blobs_the_index_references(
    archive: Archive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blob names are content-addressed: a failed writer that placed a name the index
    references (here: putting a lost blob back) must not remove it."""
    template = load_template()
    write_variant(template, tmp_path / "a.dcm")
    run(archive, tmp_path / "a.dcm")
    with archive.engine.connect() as conn:
        blob = conn.execute(select(instance.c.blob)).scalar_one()
    archive.blobs.absolute(blob).unlink()

    def fail() -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(archive.blobs, "sync", fail)
    with pytest.raises(OSError, match="No space"):
        run(archive, tmp_path / "a.dcm")
    assert archive.blobs.absolute(blob).read_bytes() == (tmp_path / "a.dcm").read_bytes()
    assert_consistent(archive)


def test_remove_unreferenced_spares_what_the_index_references(
    archive: Archive, tmp_path: Path
) -> None:
    template = load_template()
    kept = write_variant(template, tmp_path / "a.dcm")
    run(archive, tmp_path / "a.dcm")
    with archive.engine.connect() as conn:
        blob = conn.execute(select(instance.c.blob)).scalar_one()
    stray = f"{kept.StudyInstanceUID}/{kept.SeriesInstanceUID}/{kept.SOPInstanceUID}.{'0' * 16}.dcm"
    archive.blobs.absolute(stray).write_bytes(b"an older version")
    remove_unreferenced(
        archive.engine,
        archive.blobs,
        [Blob(kept.SOPInstanceUID, blob), Blob(kept.SOPInstanceUID, stray)],
    )
    assert archive.blobs.absolute(blob).is_file()
    assert not archive.blobs.absolute(stray).exists()


@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_ingesting_a_file_again_puts_its_lost_blob_back(
    archive: Archive, tmp_path: Path, damage: str
) -> None:
    template = load_template()
    write_variant(template, tmp_path / "a.dcm")
    run(archive, tmp_path / "a.dcm")
    with archive.engine.connect() as conn:
        blob = archive.blobs.absolute(conn.execute(select(instance.c.blob)).scalar_one())
    if damage == "delete":
        blob.unlink()
    else:
        blob.write_bytes(blob.read_bytes()[:1000])
    summary = run(archive, tmp_path / "a.dcm")
    assert summary.counts[Outcome.ALREADY_PRESENT.value] == 1
    assert blob.read_bytes() == (tmp_path / "a.dcm").read_bytes()
    assert_consistent(archive)


def _cli(*args: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "pacsfhir", *args],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group, so a kill takes its workers too
    )


def test_cli_summary_and_strict_exit_code(tmp_path: Path) -> None:
    env = {"PACSFHIR_DATA": str(tmp_path / "data")}
    good = _cli("ingest", str(TEST_FILES / "CT_small.dcm"), env=env)
    _out, err = good.communicate(timeout=60)
    assert good.returncode == 0, err.decode()
    assert "stored" in err.decode()
    lenient = _cli("ingest", str(TEST_FILES / "README.txt"), env=env)
    lenient.communicate(timeout=60)
    assert lenient.returncode == 0
    strict = _cli("ingest", "--strict", str(TEST_FILES / "README.txt"), env=env)
    _, err = strict.communicate(timeout=60)
    assert strict.returncode == 1
    assert "not-dicom" in err.decode()
    missing = _cli("ingest", str(tmp_path / "nope"), env=env)
    missing.communicate(timeout=60)
    assert missing.returncode == 2
