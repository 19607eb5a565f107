"""DICOM DA/TM/offset -> FHIR dateTime, and implicit ranges of FHIR dates."""

from __future__ import annotations

import pytest

from pacsfhir.vocabulary.dates import dicom_datetime, fhir_period, format_instant, to_micros

DICOM_DATETIMES = [
    # (StudyDate, StudyTime, TimezoneOffsetFromUTC, default offset) -> FHIR dateTime
    (("20040119", "072730", "", ""), "2004-01-19"),  # no zone known: date precision only
    (("20040119", "072730", "+0100", ""), "2004-01-19T07:27:30+01:00"),
    (("20040119", "072730", "", "-0500"), "2004-01-19T07:27:30-05:00"),
    (("20040119", "072730", "+0000", ""), "2004-01-19T07:27:30Z"),
    (("20040119", "0727", "+0200", ""), "2004-01-19T07:27:00+02:00"),
    (("20040119", "07", "+0200", ""), "2004-01-19T07:00:00+02:00"),
    (("20040119", "072730.123456", "-0330", ""), "2004-01-19T07:27:30.123456-03:30"),
    (("20040119", "07:27:30", "+0100", ""), "2004-01-19T07:27:30+01:00"),  # ACR-NEMA style
    (("20040119", "", "+0100", ""), "2004-01-19"),
    (("20040119", "256000", "+0100", ""), "2004-01-19"),  # impossible time: keep the date
    (("20040119", "072730", "+9900", ""), "2004-01-19"),  # impossible offset
    (("20040230", "", "", ""), None),  # impossible date
    (("2004", "", "", ""), None),
    (("", "072730", "+0100", ""), None),
    (("garbage", "", "", ""), None),
]


@pytest.mark.parametrize(
    ("args", "expected"), DICOM_DATETIMES, ids=[str(a) for a, _ in DICOM_DATETIMES]
)
def test_dicom_datetime(args: tuple[str, str, str, str], expected: str | None) -> None:
    assert dicom_datetime(*args) == expected


US = 1_000_000
DAY = 86_400 * US
Y2004 = to_micros(__import__("datetime").datetime(2004, 1, 1, tzinfo=__import__("datetime").UTC))

PERIODS = [
    ("2004", Y2004, Y2004 + 366 * DAY - 1),  # leap year
    ("2004-01", Y2004, Y2004 + 31 * DAY - 1),
    ("2004-02", Y2004 + 31 * DAY, Y2004 + 60 * DAY - 1),
    ("2004-01-19", Y2004 + 18 * DAY, Y2004 + 19 * DAY - 1),
    ("2004-01-19T07:27", Y2004 + 18 * DAY + (7 * 3600 + 27 * 60) * US, None),
    ("2004-01-19T07:27:30Z", Y2004 + 18 * DAY + (7 * 3600 + 27 * 60 + 30) * US, None),
    ("2004-01-19T08:27:30+01:00", Y2004 + 18 * DAY + (7 * 3600 + 27 * 60 + 30) * US, None),
    ("2004-01-19T07:27:30.5Z", Y2004 + 18 * DAY + (7 * 3600 + 27 * 60 + 30) * US + US // 2, None),
]


@pytest.mark.parametrize(("value", "low", "high"), PERIODS, ids=[p[0] for p in PERIODS])
def test_fhir_period(value: str, low: int, high: int | None) -> None:
    period = fhir_period(value)
    assert period is not None
    assert period.low == low
    if high is not None:
        assert period.high == high


@pytest.mark.parametrize(
    ("value", "width"),
    [
        ("2004-01-19T07:27", 60 * US),
        ("2004-01-19T07:27:30Z", US),
        ("2004-01-19T07:27:30.5Z", US // 10),
    ],
)
def test_fhir_period_precision(value: str, width: int) -> None:
    period = fhir_period(value)
    assert period is not None
    assert period.high - period.low + 1 == width


@pytest.mark.parametrize(
    "value", ["", "20040119", "2004-13", "2004-02-30", "2004-01-19T25:00Z", "x"]
)
def test_fhir_period_rejects(value: str) -> None:
    assert fhir_period(value) is None


def test_format_instant_is_utc_milliseconds() -> None:
    assert format_instant(Y2004 + 1_234_567) == "2004-01-01T00:00:01.234Z"
