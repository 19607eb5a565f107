"""Variants of real DICOM files with new UIDs and attributes, written with pydicom."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

CT_SMALL = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"


def load_template(path: Path = CT_SMALL) -> Dataset:
    return pydicom.dcmread(path)


def write_variant(
    template: Dataset,
    target: Path,
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    **attributes: Any,
) -> Dataset:
    """Write ``template`` with new UIDs (or those given) and the given attributes; the
    dataset returned is the file's own (a deep copy: a shallow one shares the template's
    elements, so the next variant written would change it)."""
    ds = copy.deepcopy(template)
    with warnings.catch_warnings():  # hostile variants carry invalid values on purpose
        warnings.simplefilter("ignore")
        ds.StudyInstanceUID = study_uid or generate_uid()
        ds.SeriesInstanceUID = series_uid or generate_uid()
        ds.SOPInstanceUID = sop_uid or generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
        target.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(target, enforce_file_format=True)
    return ds


def write_new_version(
    template: Dataset, target: Path, original: Dataset, **attributes: Any
) -> Dataset:
    """Write another version of ``original``: the same study, series and SOP Instance
    UIDs, with the given attributes (so different content)."""
    return write_variant(
        template,
        target,
        study_uid=original.StudyInstanceUID,
        series_uid=original.SeriesInstanceUID,
        sop_uid=original.SOPInstanceUID,
        **attributes,
    )


def write_study(
    template: Dataset,
    folder: Path,
    *,
    series: int = 2,
    instances: int = 3,
    **attributes: Any,
) -> tuple[str, list[Path]]:
    """A study of ``series`` x ``instances`` files; returns (Study UID, paths)."""
    study_uid = generate_uid()
    paths = []
    for s in range(series):
        series_uid = generate_uid()
        for i in range(instances):
            path = folder / study_uid / f"{s}-{i}.dcm"
            write_variant(
                template,
                path,
                study_uid=study_uid,
                series_uid=series_uid,
                SeriesNumber=s + 1,
                InstanceNumber=i + 1,
                **attributes,
            )
            paths.append(path)
    return study_uid, paths
