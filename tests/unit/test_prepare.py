"""The parse half of ingest: parallel preparation in walk order, with a bounded queue,
nothing left in staging when the caller gives up, and no index layer in the CLI's
start-up (its parse workers fork before SQLAlchemy is imported)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pacsfhir.dicom.prepare import (
    PATHS_PER_TASK,
    ParallelPreparer,
    Prepared,
    Rejected,
    walk,
)
from pacsfhir.dicom.storage import BlobStore
from tests.support.dicom_factory import load_template, write_variant


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three tasks' worth of files and then some, with a non-DICOM file among them."""
    root = tmp_path_factory.mktemp("prepare")
    template = load_template()
    for n in range(3 * PATHS_PER_TASK + 5):
        write_variant(template, root / f"{n // 10:02d}" / f"{n:03d}.dcm", InstanceNumber=n)
    (root / "01" / "notes.txt").write_text("not DICOM")
    return root


def _blobs(tmp_path: Path) -> BlobStore:
    blobs = BlobStore(tmp_path / "blobs")
    blobs.ensure()
    return blobs


@pytest.mark.parametrize("workers", [1, 2])
def test_results_come_in_walk_order(folder: Path, tmp_path: Path, workers: int) -> None:
    blobs = _blobs(tmp_path)
    with ParallelPreparer([str(folder)], str(blobs.root), workers, ahead=PATHS_PER_TASK) as stream:
        results = [item for task in stream for item in task]
    assert [r.source for r in results] == list(walk([str(folder)]))
    rejected = [r for r in results if isinstance(r, Rejected)]
    assert [(Path(r.source).name, r.reason) for r in rejected] == [("notes.txt", "not-dicom")]
    prepared = [r for r in results if isinstance(r, Prepared)]
    assert len(prepared) == 3 * PATHS_PER_TASK + 5
    assert all(Path(p.staged.path).is_file() for p in prepared)


def test_workers_start_on_entering_and_stay_bounded(folder: Path, tmp_path: Path) -> None:
    blobs = _blobs(tmp_path)
    with ParallelPreparer([str(folder)], str(blobs.root), 2, ahead=PATHS_PER_TASK) as stream:
        # Two tasks are queued on entering (one per worker); taking the first result
        # queues one more, so at most three tasks' files can have reached staging.
        stream_iter = iter(stream)
        first = next(stream_iter)
        staged = list(blobs.incoming.iterdir())
        assert len(first) == PATHS_PER_TASK
        assert PATHS_PER_TASK <= len(staged) <= 3 * PATHS_PER_TASK
        for _ in stream_iter:
            pass


def test_giving_up_midway_leaves_staging_empty(folder: Path, tmp_path: Path) -> None:
    blobs = _blobs(tmp_path)
    consumed: list[Prepared] = []

    def take_one_task_then_fail() -> None:
        with ParallelPreparer([str(folder)], str(blobs.root), 2) as stream:
            for task in stream:
                consumed.extend(p for p in task if isinstance(p, Prepared))
                raise RuntimeError("caller failed")

    with pytest.raises(RuntimeError, match="caller failed"):
        take_one_task_then_fail()
    # What the caller took is the caller's to commit or discard; the rest is gone.
    for item in consumed:
        blobs.discard(item.staged.path)
    assert not list(blobs.incoming.iterdir())


def test_cli_start_up_does_not_import_the_index_layer() -> None:
    """``pacsfhir ingest`` forks its parse workers before it imports SQLAlchemy, so that
    they parse while the main process starts; importing the CLI must not pull it in."""
    probe = "import sys, pacsfhir.cli; print('sqlalchemy' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "False"
