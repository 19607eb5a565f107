"""DICOM DA/TM/offset -> FHIR dateTime with honest precision, and the implicit range of a
FHIR date/dateTime/instant (for search), all in microseconds since the epoch (UTC).

Ranges are computed in integer microseconds, never by ``datetime`` arithmetic: a date at
the edge of the calendar with an offset from UTC (``9999-12-31T23:00:00-14:00`` is in
year 10000 in UTC) has an exact range there, which ``datetime`` cannot hold. Digits are
ASCII digits only (``re.ASCII``: ``\\d`` would take "٣")."""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

_DA = re.compile(r"(\d{4})(\d{2})(\d{2})", re.ASCII)
_TM = re.compile(r"(\d{2})(?:(\d{2})(?:(\d{2})(?:\.(\d{1,6}))?)?)?", re.ASCII)
_OFFSET = re.compile(r"([+-])(\d{2})(\d{2})", re.ASCII)
_FHIR = re.compile(
    r"(\d{4})(?:-(\d{2})(?:-(\d{2})"
    r"(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?(Z|[+-]\d{2}:\d{2})?)?)?)?",
    re.ASCII,
)

US_PER_SECOND = 1_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Period:
    """An inclusive range of instants, microseconds since the epoch."""

    low: int
    high: int


def to_micros(moment: datetime) -> int:
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * US_PER_SECOND + delta.microseconds


def from_micros(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


def format_instant(micros: int) -> str:
    """An FHIR instant in UTC with millisecond precision."""
    moment = from_micros(micros)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _offset_text(offset: str) -> str | None:
    match = _OFFSET.fullmatch(offset.strip())
    if not match:
        return None
    sign, hours, minutes = match.groups()
    if int(hours) > 14 or int(minutes) > 59:
        return None
    return f"{sign}{hours}:{minutes}"


def dicom_datetime(date: str, time: str, offset: str, default_offset: str = "") -> str | None:
    """FHIR dateTime from DICOM Study/Series Date, Time and Timezone Offset From UTC.

    FHIR requires a time zone whenever a time is given; without one (from the file or the
    ``default_offset`` setting) the result keeps date precision rather than invent a zone.
    Seconds are required in FHIR; a time given to the minute or hour is padded with zeros.
    """
    day = _DA.fullmatch(date.strip())
    if not day:
        return None
    year, month, dom = (int(g) for g in day.groups())
    if not (1 <= month <= 12 and 1 <= dom <= calendar.monthrange(year, month)[1]):
        return None
    text = f"{year:04d}-{month:02d}-{dom:02d}"
    tm = _TM.fullmatch(time.strip().replace(":", ""))
    zone = _offset_text(offset) or _offset_text(default_offset)
    if not tm or zone is None:
        return text
    hours, minutes, seconds, fraction = tm.groups()
    if int(hours) > 23 or int(minutes or 0) > 59 or int(seconds or 0) > 60:
        return text
    text += f"T{hours}:{minutes or '00'}:{min(int(seconds or 0), 59):02d}"
    if fraction:
        text += "." + fraction
    return text + ("Z" if zone in ("+00:00", "-00:00") else zone)


def _zone_micros(zone: str | None) -> int | None:
    """A zone (``Z``, ``+hh:mm``, ``-hh:mm``; hours up to 14, as ``dicom_datetime``
    takes them) in microseconds east of UTC; None when it is not one."""
    if not zone or zone == "Z":
        return 0
    hours, minutes = int(zone[1:3]), int(zone[4:6])
    if hours > 14 or minutes > 59:
        return None
    sign = 1 if zone[0] == "+" else -1
    return sign * (hours * 3600 + minutes * 60) * US_PER_SECOND


def fhir_period(value: str) -> Period | None:
    """The implicit range of a FHIR date, dateTime or instant (dates without a zone are
    taken as UTC days)."""
    match = _FHIR.fullmatch(value.strip())
    if not match:
        return None
    year, month, day, hh, mm, ss, frac, zone = match.groups()
    try:
        local = datetime(
            int(year),
            int(month or 1),
            int(day or 1),
            int(hh or 0),
            int(mm or 0),
            int(ss or 0),
            int((frac or "0")[:6].ljust(6, "0")),
            tzinfo=UTC,
        )
    except ValueError:
        return None
    east = _zone_micros(zone)
    if east is None:
        return None
    if frac:
        step = timedelta(microseconds=max(1, 10 ** (6 - min(len(frac), 6))))
    elif ss:
        step = timedelta(seconds=1)
    elif mm:
        step = timedelta(minutes=1)
    elif day:
        step = timedelta(days=1)
    elif month:
        step = timedelta(days=calendar.monthrange(int(year), int(month))[1])
    else:
        step = timedelta(days=366 if calendar.isleap(int(year)) else 365)
    low = to_micros(local) - east
    return Period(low, low + step // timedelta(microseconds=1) - 1)
