"""Shared pieces of the DICOM readers: errors, the probe record, header helpers.

Conventions
-----------
* Data arrays follow nibabel's DICOM convention: axis 0 is the DICOM row index
  (down the image), axis 1 the column index, axis 2 the slice.
* Affines map voxel indices to scanner RAS mm (NIfTI convention), i.e. the
  DICOM patient (LPS) affine with its first two rows negated.
* Times are UNIX seconds read as local time (the scanner's clock, which is the
  clock of the machine that runs rtnf when both use the site's time server).
"""

from __future__ import annotations

import datetime as _dt
import gzip
import io
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from rtnf.scanner.nifti import VolumeReadError, open_regular

with warnings.catch_warnings():  # nibabel warns on import that its DICOM readers are "experimental"
    warnings.simplefilter("ignore", UserWarning)
    from nibabel.nicom import csareader, dicomwrappers  # noqa: F401  (re-exported for the readers)

ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

KINDS = ("mosaic", "enhanced", "slice", "parrec", "unknown")


class DicomReadError(VolumeReadError):
    """A scanner file that cannot be decoded into a volume; the message names the file and the reason."""


class UnsupportedDicomError(DicomReadError):
    """A well-formed file of a kind rtnf does not read (non-MR, compressed without a decoder, no geometry...)."""


@dataclass(frozen=True)
class DicomInfo:
    """What :func:`rtnf.scanner.dicom.probe` learns from a file's header.

    Attributes
    ----------
    path : Path
        The file.
    kind : str
        "mosaic" (Siemens mosaic with CSA header), "enhanced" (multi-frame, one
        volume or more per file), "slice" (classic, one file per slice),
        "parrec" (Philips PAR/REC pair, ``path`` is the ``.PAR``) or "unknown".
    series_number, series_uid, series_description
        Series identification (None when absent).
    volume_number : int or None
        1-based temporal index. Mosaic/enhanced/PAR: InstanceNumber (else
        AcquisitionNumber). Slice: TemporalPositionIdentifier; else, for
        Siemens, AcquisitionNumber; else ``(InstanceNumber - 1) // n_slices + 1``
        when ``n_slices`` is known (GE numbers images volume after volume);
        else AcquisitionNumber.
    slice_position : float or None
        Slice files only: ImagePositionPatient projected on the slice normal
        ``row_cosine x column_cosine``, in mm.
    n_slices : int or None
        Slices per volume when the header says so: CSA NumberOfImagesInMosaic,
        the number of distinct frame positions of an enhanced file, or for
        slice files ImagesInAcquisition (0020,1002), GE LocationsInAcquisition
        (0021,104F) or Philips NumberOfSlicesMR (2001,1018).
    shape : tuple of int or None
        Matrix of one volume as :func:`read_volume` returns it when known from
        the header (mosaic, PAR), else the stored (Rows, Columns[, frames]).
    t_acquired : float or None
        UNIX seconds (local time) from AcquisitionDateTime, else
        AcquisitionDate + AcquisitionTime, else ContentDate + ContentTime.
    complete : bool
        The pixel data is present with its full expected length.
    problem : str or None
        Why the file cannot be read (truncated, foreign, unsupported); None if
        it looks readable.
    sop_uid, instance_number
        Identity of the file, used to recognise duplicates.
    n_temporal : int or None
        NumberOfTemporalPositions (slice files), to check the slice count against.
    volume_from_instance : bool
        The volume number is derived from InstanceNumber and the slice count
        (no TemporalPositionIdentifier, not Siemens): derived again when the
        count is corrected or configured.
    note : str or None
        Why ``n_slices`` differs from a header count (an implausible
        ImagesInAcquisition, the configured ``scanner.slices_per_volume``).
    echo_number : int or None
        EchoNumbers (1-based) when the header gives it: which echo of a
        multi-echo volume the file holds.
    echo_time_ms : float or None
        EchoTime (ms).
    acquisition_number : int or None
        AcquisitionNumber: the volume of a multi-echo series whose echoes share it
        (InstanceNumber may count echoes).
    """

    path: Path
    kind: str = "unknown"
    series_number: int | None = None
    series_uid: str | None = None
    series_description: str | None = None
    volume_number: int | None = None
    slice_position: float | None = None
    n_slices: int | None = None
    shape: tuple[int, ...] | None = None
    t_acquired: float | None = None
    complete: bool = False
    problem: str | None = None
    sop_uid: str | None = None
    instance_number: int | None = None
    n_temporal: int | None = None
    volume_from_instance: bool = False
    note: str | None = None
    echo_number: int | None = None
    echo_time_ms: float | None = None
    acquisition_number: int | None = None

    @property
    def usable(self) -> bool:
        """Complete and of a kind rtnf reads: what a watcher should hand over."""
        return self.complete and self.problem is None


#: Largest size a ``*.gz`` DICOM file may decompress to (bytes): a gzip bomb stops there.
MAX_GZ_BYTES = 512 << 20


def open_bytes(path: Path, max_bytes: int = MAX_GZ_BYTES) -> BinaryIO:
    """Open a regular file for reading; ``*.gz`` files are decompressed (into memory, at most ``max_bytes``).

    Raises
    ------
    OSError
        Not a regular file (:class:`rtnf.scanner.nifti.NotRegularFileError`), or unreadable.
    DicomReadError
        A ``*.gz`` file that decompresses to more than ``max_bytes``.
    """
    f = open_regular(path)
    if path.name.endswith(".gz"):
        with f, gzip.GzipFile(fileobj=f, mode="rb") as g:
            data = g.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise DicomReadError(f"{path}: decompresses to more than {max_bytes} bytes (a gzip bomb?); not read")
        return io.BytesIO(data)
    return f


def dcmread(path: Path, stop_before_pixels: bool = False) -> Any:
    """pydicom's dcmread on a plain or gzipped file, errors turned into DicomReadError."""
    import pydicom

    try:
        with open_bytes(path) as f:
            return pydicom.dcmread(f, stop_before_pixels=stop_before_pixels)
    except Exception as exc:  # pydicom raises many types on foreign or cut files
        raise DicomReadError(f"{path}: not a readable DICOM file ({type(exc).__name__}: {exc})") from exc


def as_int(value: Any) -> int | None:
    """An int from a DICOM value (IS string, int, or empty), None when absent."""
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        try:
            return int(float(value))
        except (TypeError, ValueError):
            return None


def as_float(value: Any) -> float | None:
    """A float from a DICOM DS value, None when absent or unreadable."""
    try:
        return None if value in (None, "") else float(value)
    except (TypeError, ValueError):
        return None


def as_str(value: Any) -> str | None:
    """A str from a DICOM value, None when absent or empty."""
    if value is None:
        return None
    s = str(value).strip()
    return s or None


def _parse_dt(date: str, tm: str) -> float | None:
    date, tm = date.strip(), tm.strip()
    if len(date) != 8 or not tm:
        return None
    tm = tm.split("+")[0].split("-")[0]
    whole, _, frac = tm.partition(".")
    whole = whole.ljust(6, "0")[:6]
    try:
        t = _dt.datetime.strptime(date + whole, "%Y%m%d%H%M%S")
    except ValueError:
        return None
    return time.mktime(t.timetuple()) + (float("0." + frac) if frac.isdigit() else 0.0)


def acquisition_time(ds: Any) -> float | None:
    """UNIX seconds (local time) of a dataset's acquisition, None when the header has none."""
    adt = as_str(ds.get("AcquisitionDateTime"))
    if adt and len(adt) >= 14:
        t = _parse_dt(adt[:8], adt[8:])
        if t is not None:
            return t
    for date_key, time_key in (("AcquisitionDate", "AcquisitionTime"), ("ContentDate", "ContentTime"),
                               ("SeriesDate", "AcquisitionTime")):
        d, tm = as_str(ds.get(date_key)), as_str(ds.get(time_key))
        if d and tm:
            t = _parse_dt(d, tm)
            if t is not None:
                return t
    return None


def check_decodable(ds: Any, path: Path) -> None:
    """Raise UnsupportedDicomError when pydicom has no decoder for the file's transfer syntax."""
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is None or not ts.is_compressed:
        return
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        raise UnsupportedDicomError(f"{path}: transfer syntax {ts.name} ({ts}) has no pixel decoder") from None
    if not decoder.is_available:
        needs = "; ".join(decoder.missing_dependencies) or "a decoder plugin"
        raise UnsupportedDicomError(
            f"{path}: pixel data compressed as {ts.name} ({ts}) and no decoder plugin is installed ({needs})"
        )


def check_mr(ds: Any, path: Path) -> None:
    """Raise UnsupportedDicomError for non-MR or pixel-less files."""
    modality = as_str(ds.get("Modality"))
    if modality not in (None, "MR"):
        raise UnsupportedDicomError(f"{path}: modality {modality}, rtnf reads MR images only")


def _value(ds: Any, key: Any) -> Any:
    elem = ds.get(key) if not isinstance(key, tuple) else ds.get(key)
    value = getattr(elem, "value", elem)
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii").strip("\x00 ")
        except UnicodeDecodeError:
            return None
    return None if value in (None, "") else value


def rescale(ds: Any) -> tuple[float, float]:
    """Slope and intercept giving DICOM 'displayed values' (what dcm2niix stores as scl_slope/scl_inter).

    RescaleSlope/RescaleIntercept; when absent (Philips classic files), the
    Philips private copies (2005,140A)/(2005,1409); then the first
    RealWorldValueMappingSequence item; else (1, 0).
    """
    for slope_key, inter_key in (("RescaleSlope", "RescaleIntercept"), ((0x2005, 0x140A), (0x2005, 0x1409))):
        slope, inter = _value(ds, slope_key), _value(ds, inter_key)
        if slope is not None or inter is not None:
            try:
                return (1.0 if slope is None else float(slope)), (0.0 if inter is None else float(inter))
            except (TypeError, ValueError):
                continue
    rwv = ds.get("RealWorldValueMappingSequence")
    if rwv:
        item = rwv[0]
        return float(item.get("RealWorldValueSlope", 1.0)), float(item.get("RealWorldValueIntercept", 0.0))
    return 1.0, 0.0


def iop(ds: Any) -> np.ndarray | None:
    """ImageOrientationPatient as (row_cosine, column_cosine), shape (2, 3)."""
    v = ds.get("ImageOrientationPatient")
    if v is None or len(v) != 6:
        return None
    return np.asarray([float(x) for x in v]).reshape(2, 3)


def ipp(ds: Any) -> np.ndarray | None:
    """ImagePositionPatient, shape (3,)."""
    v = ds.get("ImagePositionPatient")
    if v is None or len(v) != 3:
        return None
    return np.asarray([float(x) for x in v])


def slice_normal(orient: np.ndarray) -> np.ndarray:
    """``row_cosine x column_cosine`` (the DICOM slice normal)."""
    return np.cross(orient[0], orient[1])
