"""DICOM query levels, and the look-ups of a tag's keyword, VR and level (pure).

Which level an attribute belongs to follows the Query/Retrieve keys of PS3.4 C.6.1.1.2
to C.6.1.1.4 and the modules of the Patient, Study and Series IEs; every other attribute
is instance level. Keywords, tags and VRs come from pydicom's dictionary.
"""

from __future__ import annotations

import enum
import functools

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword


class Level(enum.IntEnum):
    """Query levels; an attribute of a lower level (higher number) is never returned."""

    STUDY = 1  # the Patient IE's attributes are study-level in QIDO-RS
    SERIES = 2
    INSTANCE = 3


def tag_of(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(keyword)
    return int(tag)


def keyword_set(text: str) -> frozenset[str]:
    """The keywords of a whitespace-separated list."""
    return frozenset(text.split())


def tag_set(keywords: str) -> frozenset[int]:
    """The tags of a whitespace-separated list of keywords."""
    return frozenset(tag_of(k) for k in keyword_set(keywords))


_PATIENT = tag_set(
    """PatientName PatientID IssuerOfPatientID IssuerOfPatientIDQualifiersSequence
    TypeOfPatientID OtherPatientIDsSequence OtherPatientNames PatientBirthDate
    PatientBirthTime PatientSex PatientBirthName PatientMotherBirthName EthnicGroup
    PatientComments PatientSpeciesDescription PatientSpeciesCodeSequence
    PatientBreedDescription PatientBreedCodeSequence ResponsiblePerson ResponsiblePersonRole
    ResponsibleOrganization PatientIdentityRemoved DeidentificationMethod
    DeidentificationMethodCodeSequence QualityControlSubject NumberOfPatientRelatedStudies
    NumberOfPatientRelatedSeries NumberOfPatientRelatedInstances ReferencedPatientSequence
    PatientAddress PatientTelephoneNumbers CountryOfResidence RegionOfResidence
    PatientReligiousPreference StrainDescription"""
)
_STUDY = tag_set(
    """StudyDate StudyTime AccessionNumber IssuerOfAccessionNumberSequence StudyID
    StudyInstanceUID ReferringPhysicianName ReferringPhysicianIdentificationSequence
    ConsultingPhysicianName StudyDescription ProcedureCodeSequence
    NameOfPhysiciansReadingStudy PhysiciansOfRecord
    PhysiciansReadingStudyIdentificationSequence ReferencedStudySequence RequestingService
    ReasonForPerformedProcedureCodeSequence AdmittingDiagnosesDescription
    AdmittingDiagnosesCodeSequence PatientAge PatientSize PatientWeight
    PatientSizeCodeSequence Occupation AdditionalPatientHistory MedicalAlerts Allergies
    SmokingStatus PregnancyStatus LastMenstrualDate PatientState AdmissionID
    IssuerOfAdmissionIDSequence ServiceEpisodeID ServiceEpisodeDescription
    TimezoneOffsetFromUTC ModalitiesInStudy SOPClassesInStudy
    AnatomicRegionsInStudyCodeSequence NumberOfStudyRelatedSeries
    NumberOfStudyRelatedInstances"""
)
_SERIES = tag_set(
    """Modality SeriesNumber SeriesInstanceUID SeriesDescription
    SeriesDescriptionCodeSequence SeriesDate SeriesTime BodyPartExamined Laterality
    PerformingPhysicianName PerformingPhysicianIdentificationSequence OperatorsName
    OperatorIdentificationSequence ProtocolName PatientPosition AnatomicalOrientationType
    ReferencedPerformedProcedureStepSequence RelatedSeriesSequence
    PerformedProcedureStepStartDate PerformedProcedureStepStartTime
    PerformedProcedureStepEndDate PerformedProcedureStepEndTime PerformedProcedureStepID
    PerformedProcedureStepDescription PerformedProtocolCodeSequence
    CommentsOnThePerformedProcedureStep RequestAttributesSequence SmallestPixelValueInSeries
    LargestPixelValueInSeries NumberOfSeriesRelatedInstances Manufacturer InstitutionName
    InstitutionAddress StationName InstitutionalDepartmentName ManufacturerModelName
    DeviceSerialNumber SoftwareVersions FrameOfReferenceUID PositionReferenceIndicator"""
)


def attribute_level(tag: int) -> Level:
    if tag in _PATIENT or tag in _STUDY:
        return Level.STUDY
    if tag in _SERIES:
        return Level.SERIES
    return Level.INSTANCE


@functools.cache
def keyword_of(tag: int) -> str:
    return str(keyword_for_tag(tag))


@functools.cache
def vr_of(tag: int) -> str:
    try:
        vr = str(dictionary_VR(tag))
    except KeyError:
        return "UN"
    return vr.split(" or ")[0]
