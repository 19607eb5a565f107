"""A tolerance of the IJG JPEG library that libjpeg (pylibjpeg) lacks: in a sequential
DCT codestream (baseline, SOF0, or extended, SOF1: the 8- and 12-bit JPEG Process 1 and
2/4 of ``1.2.840.10008.1.2.4.50`` and ``.51``), the scan header's spectral selection and
successive approximation (Ss, Se, Ah/Al) carry no meaning and must be 0, 63 and 0
(ITU-T T.81 B.2.3). Some writers put other values there (pydicom's ``JPEG-lossy.dcm``
has Se = 0); IJG, and so dcmtk, warns and decodes, libjpeg refuses the frame.
``repair_sequential_scan`` writes the required values into such a header, and returns
any other codestream unchanged.
"""

from __future__ import annotations

_SEQUENTIAL_FRAMES = (0xC0, 0xC1)  # SOF0 baseline, SOF1 extended sequential (Huffman)
_FRAMES = frozenset({*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC), 0xCD, 0xCE, 0xCF})
_SOS = 0xDA
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})  # TEM, RSTn, SOI
_REQUIRED = bytes((0, 63, 0))


def repair_sequential_scan(data: bytes) -> bytes:
    """``data`` with its first scan header's Ss, Se, Ah/Al set to 0, 63, 0 when its frame
    is sequential DCT and they are not; unchanged otherwise (not JPEG, progressive,
    lossless, already right, or cut short)."""
    if data[:2] != b"\xff\xd8":
        return data
    position, frame = 2, 0
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return data
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in _STANDALONE:
            position += 2
            continue
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        if marker in _FRAMES:
            frame = marker
        if marker == _SOS:
            return _repaired(data, position, length, frame)
        position += 2 + length
    return data


def _repaired(data: bytes, position: int, length: int, frame: int) -> bytes:
    if frame not in _SEQUENTIAL_FRAMES or position + 5 > len(data):
        return data
    components = data[position + 4]
    at = position + 5 + 2 * components  # Ss, then Se, then Ah/Al
    if length != 6 + 2 * components or at + 3 > len(data) or data[at : at + 3] == _REQUIRED:
        return data
    return data[:at] + _REQUIRED + data[at + 3 :]
