"""Review findings of session 25 that a test can show (see the review report).

The header walk of :mod:`rtnf.scanner.dicom.fast` follows an undefined-length item of a
*defined-length* sequence past the sequence's end, and the enclosing walker then walks the same
bytes again from the sequence's end: each such nesting doubles the work (a 32 kB crafted header
took 4 s; the regular-expression scan it replaced was linear), and the two walks disagree about
where elements are. The file is malformed; the walk should give it to the generic path (None).
"""

from __future__ import annotations

import struct

from rtnf.scanner.dicom.fast import scan_header

_EXPLICIT_LE = b"1.2.840.10008.1.2.1\x00"
_UNDEFINED = 0xFFFFFFFF


def _element(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    return struct.pack("<HH", group, element) + vr + struct.pack("<H", len(value)) + value


def _item(length: int) -> bytes:
    return struct.pack("<HHI", 0xFFFE, 0xE000, length)


def _file(body: bytes) -> bytes:
    """Preamble, meta group, an undefined-length private sequence holding ``body``, 4 bytes of pixel data."""
    return (b"\0" * 128 + b"DICM" + _element(0x0002, 0x0010, b"UI", _EXPLICIT_LE)
            + struct.pack("<HH", 0x0009, 0x1000) + b"SQ\0\0" + struct.pack("<I", _UNDEFINED) + body
            + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
            + struct.pack("<HH", 0x7FE0, 0x0010) + b"OW\0\0" + struct.pack("<I", 4) + b"\0" * 4)


def _overrunning(k: int) -> bytes:
    """An item holding ``k`` nested defined-length (8 bytes) sequences, each opening an undefined-length item
    whose only delimiter lies beyond the sequence's 8 bytes."""
    nested = (struct.pack("<HH", 0x0009, 0x1010) + b"SQ\0\0" + struct.pack("<I", 8) + _item(_UNDEFINED)) * k
    return _item(_UNDEFINED) + nested + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)


def test_item_overrunning_its_defined_length_sequence_is_malformed():
    """An item that ends after the end of its defined-length sequence is not followed (generic path)."""
    assert scan_header(_file(_overrunning(1))) is None


def test_nested_overruns_are_refused_not_walked_again():
    """The doubling case: 12 nested overruns (2**12 walks of the same bytes today) are refused too."""
    assert scan_header(_file(_overrunning(12) * 4)) is None


def test_well_formed_nested_sequences_still_walk():
    """Control: defined-length sequences whose items end inside them are followed (the fix must keep this)."""
    inner = _element(0x0020, 0x0013, b"IS", b"7 ")
    item = _item(len(inner)) + inner
    seq = struct.pack("<HH", 0x0009, 0x1010) + b"SQ\0\0" + struct.pack("<I", len(item)) + item
    outer = _item(len(seq)) + seq
    header = scan_header(_file(outer))
    assert header is not None
    assert header.pixel_length == 4
