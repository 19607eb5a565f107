"""``pacsfhir check`` on SQLite and PostgreSQL: each kind of damage found (orphan,
missing, truncated, altered, stale staging, metadata cache files), what ``--repair``
removes and what it never touches, a writer in flight never taken for damage, and the
command's output and exit codes."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from pacsfhir.archive import Archive
from pacsfhir.cli import app
from pacsfhir.consistency import ConsistencyReport, blob_of, check, sop_uid_of
from pacsfhir.dicom.ingest import commit_batch, ingest
from pacsfhir.dicom.prepare import Prepared, prepare_file
from pacsfhir.index.schema import instance
from tests.support.archive_checks import index_counts
from tests.support.dicom_factory import load_template, write_study, write_variant

HOURS_AGO = time.time() - 2 * 3600


def stored_archive(archive: Archive, tmp_path: Path) -> list[str]:
    """Three instances stored; their blob paths, sorted."""
    _study, paths = write_study(load_template(), tmp_path / "in", series=1, instances=3)
    ingest([str(p) for p in paths], archive.engine, archive.blobs, workers=1)
    with archive.engine.connect() as conn:
        return sorted(conn.execute(select(instance.c.blob)).scalars())


def make_old(path: Path) -> None:
    os.utime(path, (HOURS_AGO, HOURS_AGO))


def orphan_beside(archive: Archive, blob: str, old: bool = True) -> str:
    """A copy of ``blob`` under another (content-hash) name: no row references it."""
    orphan = blob.replace(".dcm", "").rsplit(".", 1)[0] + ".00000000000000ff.dcm"
    archive.blobs.absolute(orphan).write_bytes(archive.blobs.absolute(blob).read_bytes())
    if old:
        make_old(archive.blobs.absolute(orphan))
    return orphan


def add_orphan(archive: Archive, blobs: list[str]) -> dict[str, list[str]]:
    return {"orphan_blobs": [orphan_beside(archive, blobs[0])]}


def add_young_orphan(archive: Archive, blobs: list[str]) -> dict[str, list[str]]:
    return {"orphan_blobs": [orphan_beside(archive, blobs[0], old=False)]}


def remove_blob(archive: Archive, blobs: list[str]) -> dict[str, list[str]]:
    archive.blobs.absolute(blobs[1]).unlink()
    return {"missing_blobs": [blobs[1]]}


def truncate_blob(archive: Archive, blobs: list[str]) -> dict[str, list[str]]:
    path = archive.blobs.absolute(blobs[2])
    path.write_bytes(path.read_bytes()[:-10])
    return {"damaged_blobs": [blobs[2]]}


def alter_blob(archive: Archive, blobs: list[str]) -> dict[str, list[str]]:
    """Same size, other content: only --verify-hash sees it."""
    path = archive.blobs.absolute(blobs[2])
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    return {}


def stale_staging(archive: Archive, blobs: list[str]) -> dict[str, list[str]]:
    (archive.blobs.incoming / "left-by-a-crash.part").write_bytes(b"half a file")
    make_old(archive.blobs.incoming / "left-by-a-crash.part")
    (archive.blobs.incoming / "uploading-now.part").write_bytes(b"in progress")
    return {"stale_staging": ["incoming/left-by-a-crash.part"]}


def metadata_cache(archive: Archive, blobs: list[str]) -> dict[str, list[str]]:
    """The cache of a referenced blob is no orphan; that of an unreferenced one is; a
    metadata file being written is left alone until it is old."""
    archive.blobs.write_metadata(blobs[0], b"{}")
    orphan = orphan_beside(archive, blobs[1])
    archive.blobs.write_metadata(orphan, b"{}")
    make_old(archive.blobs.absolute(orphan + ".json"))
    writing = archive.blobs.absolute(blobs[2] + ".json.0123abcd.tmp")
    writing.write_bytes(b"{")
    crashed = archive.blobs.absolute(blobs[1] + ".json.4567cdef.tmp")
    crashed.write_bytes(b"{")
    make_old(crashed)
    return {"orphan_blobs": sorted([orphan, orphan + ".json", blobs[1] + ".json.4567cdef.tmp"])}


Damage = Callable[[Archive, list[str]], dict[str, list[str]]]


@pytest.mark.parametrize(
    ("damage", "repairable"),
    [
        (None, True),
        (add_orphan, True),
        (add_young_orphan, False),  # reported, but kept: a writer may be removing it
        (remove_blob, False),
        (truncate_blob, False),
        (alter_blob, True),  # unseen without --verify-hash
        (stale_staging, True),
        (metadata_cache, True),
    ],
    ids=lambda value: getattr(value, "__name__", str(value)),
)
def test_check_finds_each_kind_of_damage(
    archive: Archive,
    tmp_path: Path,
    damage: Damage | None,
    repairable: bool,
) -> None:
    blobs = stored_archive(archive, tmp_path)
    expected = damage(archive, blobs) if damage else {}
    report = check(archive.engine, archive.blobs)
    found = {
        "orphan_blobs": report.orphan_blobs,
        "missing_blobs": report.missing_blobs,
        "damaged_blobs": report.damaged_blobs,
        "stale_staging": report.stale_staging,
    }
    assert found == {key: expected.get(key, []) for key in found}
    assert report.repaired == []
    assert report.clean == (not expected)
    on_disk_before = set(archive.blobs.files())
    repaired = check(archive.engine, archive.blobs, repair=True)
    assert repaired.clean == repairable
    removable = [] if damage is add_young_orphan else expected.get("orphan_blobs", [])
    assert sorted(repaired.repaired) == sorted(removable + expected.get("stale_staging", []))
    for relative in repaired.repaired:
        assert not archive.blobs.absolute(relative).exists()
    assert index_counts(archive)[2] == 3  # never a row deleted
    assert {r for r, _ in archive.blobs.files()} == {
        r for r, _ in on_disk_before if r not in repaired.repaired
    }


def test_verify_hash_finds_altered_content(archive: Archive, tmp_path: Path) -> None:
    blobs = stored_archive(archive, tmp_path)
    alter_blob(archive, blobs)
    assert check(archive.engine, archive.blobs).clean
    report = check(archive.engine, archive.blobs, verify_hash=True, repair=True)
    assert report.damaged_blobs == [blobs[2]]
    assert archive.blobs.absolute(blobs[2]).exists()
    assert not report.clean


def test_repair_removes_the_folders_it_empties(archive: Archive, tmp_path: Path) -> None:
    template = load_template()
    stray = write_variant(template, tmp_path / "stray.dcm")
    item = prepare_file(str(tmp_path / "stray.dcm"), str(archive.blobs.root))
    assert isinstance(item, Prepared)
    relative = archive.blobs.relative_path(
        stray.StudyInstanceUID, stray.SeriesInstanceUID, stray.SOPInstanceUID, item.staged.sha256
    )
    archive.blobs.place(item.staged, relative)  # placed, never committed (a crash)
    report = check(archive.engine, archive.blobs, repair=True, grace=0)
    assert report.repaired == [relative]
    assert not (archive.blobs.root / stray.StudyInstanceUID).exists()
    assert report.clean


@pytest.mark.parametrize(
    ("path", "blob", "sop"),
    [
        ("1.2/1.3/1.4.5.0123456789abcdef.dcm", "1.2/1.3/1.4.5.0123456789abcdef.dcm", "1.4.5"),
        ("1.2/1.3/1.4.5.0123456789abcdef.dcm.json", "1.2/1.3/1.4.5.0123456789abcdef.dcm", ""),
        ("1.2/1.3/1.4.0123456789abcdef.dcm.json.ab12.tmp", None, ""),
        ("notes.txt", None, ""),
    ],
)
def test_blob_names(path: str, blob: str | None, sop: str) -> None:
    assert blob_of(path) == blob
    if sop:
        assert sop_uid_of(path) == sop


def test_a_batch_in_flight_is_not_taken_for_an_orphan(
    archive: Archive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A blob placed but not committed yet looks like an orphan on disk; check confirms
    under the index's write lock, so it waits for the batch and finds it referenced."""
    write_variant(load_template(), tmp_path / "a.dcm")
    item = prepare_file(str(tmp_path / "a.dcm"), str(archive.blobs.root))
    assert isinstance(item, Prepared)
    placed, release = threading.Event(), threading.Event()
    real_sync = archive.blobs.sync

    def sync_slowly() -> None:
        placed.set()
        release.wait(timeout=30)
        real_sync()

    monkeypatch.setattr(archive.blobs, "sync", sync_slowly)
    writer = threading.Thread(target=commit_batch, args=(archive.engine, archive.blobs, [item]))
    writer.start()
    assert placed.wait(timeout=30)
    reports: list[ConsistencyReport] = []
    checker = threading.Thread(
        target=lambda: reports.append(check(archive.engine, archive.blobs, repair=True, grace=0))
    )
    checker.start()
    checker.join(timeout=1.0)
    assert checker.is_alive(), "check waits for the writer's lock"
    release.set()
    writer.join(timeout=30)
    checker.join(timeout=30)
    (report,) = reports
    assert report.clean
    assert report.repaired == []
    assert index_counts(archive)[2] == 1
    with archive.engine.connect() as conn:
        blob = conn.execute(select(instance.c.blob)).scalar_one()
    assert archive.blobs.absolute(blob).read_bytes() == (tmp_path / "a.dcm").read_bytes()


def run_check(archive: Archive, *args: str) -> tuple[int, str]:
    env = {"PACSFHIR_DATA": archive.settings.data}
    result = CliRunner().invoke(
        app, ["check", "--database-url", archive.settings.index_url, *args], env=env
    )
    return result.exit_code, result.output + (result.stderr if result.stderr_bytes else "")


def test_check_command_reports_repairs_and_exits_by_what_remains(
    archive: Archive, tmp_path: Path
) -> None:
    blobs = stored_archive(archive, tmp_path)
    assert run_check(archive)[0] == 0
    orphan = orphan_beside(archive, blobs[0])
    stale_staging(archive, blobs)
    code, output = run_check(archive)
    assert code == 1
    assert orphan.rsplit("/", 1)[-1] in output
    assert "left-by-a-crash.part" in output
    code, output = run_check(archive, "--repair")
    assert code == 0, output
    assert not archive.blobs.absolute(orphan).exists()
    assert run_check(archive)[0] == 0
    remove_blob(archive, blobs)
    code, output = run_check(archive, "--repair")
    assert code == 1
    assert blobs[1].rsplit("/", 1)[-1] in output
    assert "ingest the original files again" in output
    assert index_counts(archive)[2] == 3


def test_check_command_without_an_index_exits_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["check", "--data", str(tmp_path / "nothing")])
    assert result.exit_code == 2
    assert not (tmp_path / "nothing" / "index.db").exists()
