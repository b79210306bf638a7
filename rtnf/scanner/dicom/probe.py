"""``probe``: what a DICOM (or PAR) file is, and whether all its pixel bytes are there.

The watcher calls :func:`probe` on every candidate file, so it never raises
and never decodes pixel data: pydicom parses the header up to the pixel data
element, the element's length is compared with Rows x Columns x frames x
bytes per sample and with the bytes left in the file.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np

from ._common import (
    ENHANCED_MR,
    DicomInfo,
    UnsupportedDicomError,
    acquisition_time,
    as_float,
    as_int,
    as_str,
    check_decodable,
    check_mr,
    csareader,
    iop,
    ipp,
    open_bytes,
    slice_normal,
)

_PIXEL_TAG_LE = b"\xe0\x7f\x10\x00"
_PIXEL_TAG_BE = b"\x7f\xe0\x00\x10"
_SEQ_DELIM_LE = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_UNDEFINED = 0xFFFFFFFF


def probe(path: str | Path) -> DicomInfo:
    """Parse a file's header and say what it is and whether it is complete.

    Parameters
    ----------
    path : str or Path
        A DICOM file (plain or ``.gz``) or a Philips ``.PAR`` file (its
        ``.REC`` must sit beside it).

    Returns
    -------
    DicomInfo
        Never raises: a truncated, foreign or corrupt file gives
        ``complete=False`` and/or a ``problem`` string naming the reason.
    """
    path = Path(path)
    try:
        if path.suffix.lower() == ".par":
            from .parrec import probe_parrec

            return probe_parrec(path)
        return _probe_dicom(path)
    except Exception as exc:  # the contract: never raise on a bad file
        return DicomInfo(path=path, complete=False, problem=f"{path}: {type(exc).__name__}: {exc}")


def _probe_dicom(path: Path) -> DicomInfo:
    import pydicom

    try:
        f = open_bytes(path)
    except (OSError, EOFError) as exc:
        return DicomInfo(path=path, complete=False, problem=f"{path}: cannot open ({exc})")
    with f:
        size = f.seek(0, 2)
        f.seek(0)
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except Exception as exc:  # InvalidDicomError, EOF inside the header, ...
            return DicomInfo(path=path, complete=False,
                             problem=f"{path}: not a readable DICOM header ({type(exc).__name__}: {exc})")
        pos = f.tell()
        head = f.read(12)
        f.seek(max(size - 8, 0))
        tail = f.read(8)
    complete, why = _pixels_complete(ds, pos, head, size, tail)
    fields = header_fields(ds, path)
    problem = fields.pop("problem")
    if not complete:
        problem = f"{path}: {why}"
    return DicomInfo(path=path, complete=complete, problem=problem, **fields)


def expected_pixel_bytes(ds: Any) -> int | None:
    """Bytes of uncompressed pixel data the header promises (None if it does not say)."""
    rows, cols, bits = as_int(ds.get("Rows")), as_int(ds.get("Columns")), as_int(ds.get("BitsAllocated"))
    if not (rows and cols and bits):
        return None
    frames = as_int(ds.get("NumberOfFrames")) or 1
    samples = as_int(ds.get("SamplesPerPixel")) or 1
    n = rows * cols * frames * samples * bits
    return (n + 7) // 8


def _pixels_complete(ds: Any, pos: int, head: bytes, size: int, tail: bytes) -> tuple[bool, str]:
    if len(head) < 8:
        return False, f"no pixel data: the file ends after {pos} bytes of header (still being written?)"
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    little = True if ts is None else ts.is_little_endian
    implicit = False if ts is None else ts.is_implicit_VR
    if head[:4] != (_PIXEL_TAG_LE if little else _PIXEL_TAG_BE):
        return False, f"no PixelData element after the header (found tag bytes {head[:4].hex()})"
    endian = "<" if little else ">"
    if implicit:
        (length,), start = struct.unpack(endian + "I", head[4:8]), pos + 8
    else:
        if len(head) < 12:
            return False, "PixelData element header cut off"
        (length,), start = struct.unpack(endian + "I", head[8:12]), pos + 12
    if length == _UNDEFINED:  # encapsulated (compressed) frames: complete when the sequence delimiter ends the file
        if tail == _SEQ_DELIM_LE:
            return True, ""
        return False, "encapsulated pixel data without its closing sequence delimiter (truncated)"
    expected = expected_pixel_bytes(ds)
    if expected is not None and length < expected:
        return False, f"PixelData holds {length} bytes, the header needs {expected}"
    if size < start + length:
        return False, f"truncated: PixelData needs {start + length} bytes, the file has {size}"
    return True, ""


def classify(ds: Any) -> tuple[str, Any]:
    """The reader kind of a dataset and its CSA image header (None when absent)."""
    if as_str(ds.get("SOPClassUID")) == ENHANCED_MR or "PerFrameFunctionalGroupsSequence" in ds:
        return "enhanced", None
    csa = None
    try:
        csa = csareader.get_csa_header(ds, "image")
    except Exception:  # a broken CSA header is read as "no CSA"
        csa = None
    image_type = [str(x).upper() for x in (ds.get("ImageType") or [])]
    n_mosaic = None
    if csa is not None:
        try:
            n_mosaic = csareader.get_n_mosaic(csa)
        except Exception:
            n_mosaic = None
    if csa is not None and (n_mosaic or "MOSAIC" in image_type):
        return "mosaic", csa
    return "slice", csa


def header_fields(ds: Any, path: Path) -> dict[str, Any]:
    """The DicomInfo fields (other than path/complete) from a parsed header, plus a 'problem'."""
    kind, csa = classify(ds)
    problem = None
    try:
        check_mr(ds, path)
        check_decodable(ds, path)
    except UnsupportedDicomError as exc:
        problem = str(exc)
    rows, cols = as_int(ds.get("Rows")), as_int(ds.get("Columns"))
    frames = as_int(ds.get("NumberOfFrames")) or 1
    instance = as_int(ds.get("InstanceNumber"))
    acq_number = as_int(ds.get("AcquisitionNumber"))
    shape: tuple[int, ...] | None = (rows, cols) if rows and cols else None
    n_slices = volume = position = note = None
    from_instance = False
    n_temporal = as_int(ds.get("NumberOfTemporalPositions"))
    if kind == "mosaic":
        n_slices = as_int(csareader.get_n_mosaic(csa)) if csa is not None else None
        if shape and n_slices:
            tiles = int(np.ceil(np.sqrt(n_slices)))
            shape = (rows // tiles, cols // tiles, n_slices)
        volume = instance if instance is not None else acq_number
    elif kind == "enhanced":
        volume = instance if instance is not None else acq_number
        n_slices = _enhanced_n_slices(ds)
        if "PerFrameFunctionalGroupsSequence" not in ds:
            problem = problem or (f"{path}: enhanced MR file without functional groups: no slice geometry "
                                  "(ImagePositionPatient / ImageOrientationPatient) to build an affine")
        if shape:
            shape = shape + ((n_slices or frames),)
    else:
        if frames > 1:
            problem = problem or f"{path}: classic (non-enhanced) multi-frame file with {frames} frames is not supported"
        orient, pos = iop(ds), ipp(ds)
        if orient is not None and pos is not None:
            position = float(np.dot(pos, slice_normal(orient)))
        else:
            problem = problem or f"{path}: no ImagePositionPatient/ImageOrientationPatient: no slice geometry"
        n_slices, note = _slice_n_slices(ds, n_temporal)
        tpi = as_int(ds.get("TemporalPositionIdentifier"))
        manufacturer = (as_str(ds.get("Manufacturer")) or "").upper()
        if tpi is not None:
            volume = tpi
        elif "SIEMENS" in manufacturer and acq_number is not None:
            volume = acq_number
        else:
            # GE numbers images volume after volume: with a slice count (the header's now, or a
            # configured one later, see with_slice_count) the volume comes from InstanceNumber.
            from_instance = instance is not None and instance >= 1
            volume = (instance - 1) // n_slices + 1 if n_slices and from_instance else acq_number
    return dict(
        kind=kind,
        series_number=as_int(ds.get("SeriesNumber")),
        series_uid=as_str(ds.get("SeriesInstanceUID")),
        series_description=as_str(ds.get("SeriesDescription")),
        volume_number=volume,
        slice_position=position,
        n_slices=n_slices,
        shape=shape,
        t_acquired=acquisition_time(ds),
        sop_uid=as_str(ds.get("SOPInstanceUID")),
        instance_number=instance,
        problem=problem,
        n_temporal=n_temporal,
        volume_from_instance=from_instance,
        note=note,
        echo_number=as_int(ds.get("EchoNumbers")),
        echo_time_ms=as_float(ds.get("EchoTime")),
        acquisition_number=acq_number,
    )


_MAX_PLAUSIBLE_SLICES = 512  # slices of one volume of a multi-volume 2D series; more means a series count


def _slice_n_slices(ds: Any, n_temporal: int | None = None) -> tuple[int | None, str | None]:
    """Slices per volume of a slice file, and a note when a header count was judged implausible.

    ImagesInAcquisition first, then GE LocationsInAcquisition, then Philips
    NumberOfSlicesMR. Some GE versions (Signa HDxt) set ImagesInAcquisition
    to the file count of the whole series: when it is a multiple of
    LocationsInAcquisition (slices x temporal positions, or a count larger
    than the slice locations), the locations are the slice count; without
    locations, a count above ``_MAX_PLAUSIBLE_SLICES`` that is a multiple of
    NumberOfTemporalPositions (> 1) is divided by it. Otherwise only the
    configured ``scanner.slices_per_volume`` can tell (see
    :func:`with_slice_count`).
    """
    counts = []
    for key in ("ImagesInAcquisition", (0x0021, 0x104F), (0x2001, 0x1018)):
        elem = ds.get(key)
        value = getattr(elem, "value", elem)
        n = as_int(value) if not isinstance(value, bytes) else None
        counts.append(n if n and n > 0 else None)
    images, locations, philips = counts
    other = locations or philips
    if images and other and images != other and images % other == 0:
        per = images // other
        what = (f"{other} slices x {per} temporal positions" if n_temporal in (None, per)
                else f"{per} x the {other} slice locations")
        return other, (f"ImagesInAcquisition {images} = {what}: it counts the whole series, not one volume; "
                       f"{other} slices per volume used")
    if (images and not other and n_temporal and n_temporal > 1 and images > _MAX_PLAUSIBLE_SLICES
            and images % n_temporal == 0):
        per = images // n_temporal
        return per, (f"ImagesInAcquisition {images} = {per} slices x {n_temporal} temporal positions "
                     f"(NumberOfTemporalPositions): it counts the whole series, not one volume; "
                     f"{per} slices per volume used")
    for n in counts:
        if n:
            return n, None
    return None, None


def with_slice_count(info: DicomInfo, n_slices: int, why: str) -> DicomInfo:
    """``info`` with ``n_slices`` slices per volume, its volume number derived again when it came from
    InstanceNumber and the old count, and ``why`` as its note when the count changed."""
    import dataclasses

    if info.n_slices == n_slices:
        return info
    volume = info.volume_number
    if info.volume_from_instance and info.instance_number is not None and info.instance_number >= 1:
        volume = (info.instance_number - 1) // n_slices + 1
    return dataclasses.replace(info, n_slices=n_slices, volume_number=volume, note=why)


def _enhanced_n_slices(ds: Any) -> int | None:
    frames = ds.get("PerFrameFunctionalGroupsSequence")
    if not frames:
        return None
    shared = (ds.get("SharedFunctionalGroupsSequence") or [None])[0]
    orient = None
    for group in (shared, frames[0]):
        if group is not None and "PlaneOrientationSequence" in group:
            orient = iop(group.PlaneOrientationSequence[0])
            break
    if orient is None:
        return None
    normal = slice_normal(orient)
    positions = set()
    for frame in frames:
        try:
            p = ipp(frame.PlanePositionSequence[0])
        except (AttributeError, IndexError):
            return None
        if p is None:
            return None
        positions.add(round(float(np.dot(p, normal)), 2))
    return len(positions)
