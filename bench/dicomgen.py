"""The ingest set: variants of a real file (pydicom's CT_small.dcm) with new UIDs,
patients, dates and accession numbers, written with pydicom."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

PYDICOM_TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
CT_SMALL = PYDICOM_TEST_FILES / "CT_small.dcm"


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


FAMILY = _words(
    "Smith Jones Garcia Muller Rossi Dubois Kowalski Novak Silva Santos Haddad Kim Lee "
    "Nguyen Tanaka Sato Ivanova Petrov Andersen Jansen Peeters Schmidt Moreau Costa "
    "Ferrari Romano Fischer Weber Meyer Wagner Becker Hoffmann Schulz Koch Bauer Richter "
    "Klein Wolf Brown Wilson Taylor Davies Evans Thomas Johnson Roberts Walker Wright"
)
GIVEN = _words(
    "Anna Maria Sophie Emma Olivia Mia Lea Julia Laura Sara Lucas Noah Liam Leon Paul "
    "Elias Louis Jonas Felix Ben Adam Omar Yusuf Ali Ivan Piotr Jan Tomas Hugo Arthur "
    "Chloe Ines Zoe Alice Clara Ida Nora Eva Lina Ella Max Tim Finn Emil Oskar Karl"
)


@dataclass
class IngestSet:
    folder: Path
    paths: list[Path] = field(default_factory=list)
    studies: list[str] = field(default_factory=list)  # StudyInstanceUIDs
    patients: list[str] = field(default_factory=list)  # PatientIDs
    bytes: int = 0


def person_name(rng: random.Random) -> str:
    return f"{rng.choice(FAMILY)}^{rng.choice(GIVEN)}"


def write_ingest_set(
    folder: Path,
    studies: int,
    series_per_study: int = 5,
    instances_per_series: int = 20,
    seed: int = 20240,
) -> IngestSet:
    """``studies`` x ``series_per_study`` x ``instances_per_series`` files under ``folder``
    (one folder per study), all from CT_small.dcm with fresh UIDs; about half as many
    patients as studies, study dates spread over 20 years."""
    rng = random.Random(seed)
    template = pydicom.dcmread(CT_SMALL)
    out = IngestSet(folder)
    n_patients = max(1, studies // 2)
    patients = [
        (
            f"BENCH{rng.randrange(10**7):07d}",
            person_name(rng),
            f"{rng.randint(1930, 2015)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}",
            rng.choice("MFO"),
        )
        for _ in range(n_patients)
    ]
    out.patients = [p[0] for p in patients]
    for s in range(studies):
        patient_id, name, birth, sex = patients[s % n_patients]
        study_uid = generate_uid()
        out.studies.append(study_uid)
        template.PatientID = patient_id
        template.PatientName = name
        template.PatientBirthDate = birth
        template.PatientSex = sex
        template.StudyInstanceUID = study_uid
        template.AccessionNumber = f"ACC{rng.randrange(10**8):08d}"
        template.StudyID = str(s + 1)
        template.StudyDate = (
            f"{rng.randint(2005, 2024)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
        )
        template.StudyTime = f"{rng.randint(7, 19):02d}{rng.randint(0, 59):02d}00"
        study_folder = folder / f"study{s:04d}"
        study_folder.mkdir(parents=True, exist_ok=True)
        for se in range(series_per_study):
            template.SeriesInstanceUID = generate_uid()
            template.SeriesNumber = se + 1
            for i in range(instances_per_series):
                template.SOPInstanceUID = generate_uid()
                template.file_meta.MediaStorageSOPInstanceUID = template.SOPInstanceUID
                template.InstanceNumber = i + 1
                path = study_folder / f"s{se:02d}i{i:03d}.dcm"
                template.save_as(path, enforce_file_format=True)
                out.paths.append(path)
                out.bytes += path.stat().st_size
    return out
