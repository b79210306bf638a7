"""DICOM encoders for synthetic volumes: Siemens-style mosaic and one file per slice.

Both encoders take a volume ``vol[i, j, k]`` with its NIfTI voxel-to-RAS-mm
``affine`` (the phantom's) and produce DICOM bytes (MR Image Storage, explicit VR
little endian) whose geometry gives back exactly that volume and affine.

Geometry (shared by both formats)
---------------------------------
DICOM patient coordinates are LPS: ``LPS = F @ RAS`` with ``F = diag(-1, -1, 1)``.
A stored slice ``s`` has ``Rows = nj`` and ``Columns = ni``; its pixel ``[r, c]``
is the voxel ``vol[ni - 1 - c, nj - 1 - r, k(s)]`` (a 180 degree in-plane turn,
so the default axial RAS grid gets Siemens' usual ``ImageOrientationPatient``
``1\\0\\0\\0\\1\\0``). Hence::

    row cosine (IOP[0:3]) = -F A[:, 0] / |A[:, 0]|,   PixelSpacing[1] = |A[:, 0]|
    col cosine (IOP[3:6]) = -F A[:, 1] / |A[:, 1]|,   PixelSpacing[0] = |A[:, 1]|
    IPP(s)                = F (A @ [ni - 1, nj - 1, k(s), 1])

Slices are stored in ascending order along the normal ``n = rowcos x colcos``
(Siemens' ``SliceNormalVector``): ``k(s) = s`` when ``A[:, 2]`` points along
``F n``, else ``k(s) = nk - 1 - s``. The affine's columns must be orthogonal
(DICOM cannot express shear).

Stored values
-------------
``round(vol)`` clipped to the pixel type: mosaic ``uint16`` with
``BitsStored = 12`` (0..4095, as Siemens writes magnitude images), slices
``int16`` (``PixelRepresentation = 1``) with ``RescaleSlope = 1``,
``RescaleIntercept = 0``. :func:`stored_volume` gives the expected array.

Times
-----
``AcquisitionDate``/``AcquisitionTime`` (and Content*, InstanceCreation*) are the
local time (``time.localtime``) of the nominal acquisition start of the volume
(mosaic) or of the slice (per-slice files, slices acquired sequentially, ascending,
``TR / n_slices`` apart), with microseconds.

Identifying fields carry fixed fake values (:data:`FAKE_PATIENT`) so privacy
tests have something to look for.
"""

from __future__ import annotations

import hashlib
import io
import math
import struct
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = [
    "MR_IMAGE_STORAGE",
    "FAKE_PATIENT",
    "SliceGeometry",
    "geometry_from_affine",
    "encode_csa2",
    "DicomSeriesInfo",
    "mosaic_bytes",
    "slice_bytes",
    "stored_volume",
    "dicom_time",
]

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
_F = np.diag([-1.0, -1.0, 1.0])

#: Fake identifying values written into every synthetic DICOM header.
FAKE_PATIENT = {
    "PatientName": "Sim^Phantom",
    "PatientID": "SIM-0001",
    "PatientBirthDate": "19700101",
    "PatientSex": "O",
    "AccessionNumber": "SIMACC0001",
    "InstitutionName": "scanner_sim institute",
    "ReferringPhysicianName": "Sim^Referrer",
}


# --------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class SliceGeometry:
    """How a NIfTI-convention volume maps onto DICOM slices (see module docstring).

    Attributes
    ----------
    rows, cols, n_slices : int
        Slice matrix (``Rows = nj``, ``Columns = ni``) and number of slices.
    iop : tuple of 6 float
        ImageOrientationPatient (row cosine, column cosine), LPS.
    pixel_spacing : tuple of 2 float
        (between rows, between columns) in millimeters.
    slice_spacing_mm : float
        Distance between slice centres in millimeters.
    normal : np.ndarray, shape (3,)
        ``rowcos x colcos``; slices are stored ascending along it.
    positions : np.ndarray, shape (n_slices, 3)
        ImagePositionPatient (LPS mm) of each stored slice.
    k_of_slice : np.ndarray of int
        The volume's k index of each stored slice.
    """

    rows: int
    cols: int
    n_slices: int
    iop: tuple[float, ...]
    pixel_spacing: tuple[float, float]
    slice_spacing_mm: float
    normal: np.ndarray
    positions: np.ndarray
    k_of_slice: np.ndarray

    def slice_pixels(self, vol: np.ndarray, s: int) -> np.ndarray:
        """Pixel array ``[row, col]`` of stored slice ``s`` of ``vol``."""
        return vol[::-1, ::-1, self.k_of_slice[s]].T

    def slice_location(self, s: int) -> float:
        """SliceLocation of stored slice ``s``: its position along the normal (mm)."""
        return float(self.positions[s] @ self.normal)


def geometry_from_affine(affine: np.ndarray, shape: Sequence[int]) -> SliceGeometry:
    """DICOM slice geometry reproducing the NIfTI ``affine`` on a grid of ``shape``.

    Raises
    ------
    ValueError
        If the affine's columns are not orthogonal (DICOM cannot store shear).
    """
    a = np.asarray(affine, dtype=float)
    ni, nj, nk = (int(s) for s in shape)
    cols3 = a[:3, :3]
    norms = np.linalg.norm(cols3, axis=0)
    unit = cols3 / norms
    off = max(abs(unit[:, 0] @ unit[:, 1]), abs(unit[:, 0] @ unit[:, 2]), abs(unit[:, 1] @ unit[:, 2]))
    if off > 1e-6:
        raise ValueError(
            f"Invalid value for 'affine': columns not orthogonal (max |cos| {off:.2e}). "
            "Allowed: an affine without shear for DICOM formats."
        )
    rowcos = -_F @ unit[:, 0]
    colcos = -_F @ unit[:, 1]
    normal = np.cross(rowcos, colcos)
    ascending = float((_F @ unit[:, 2]) @ normal) > 0
    k_of_slice = np.arange(nk) if ascending else np.arange(nk)[::-1].copy()
    ijk = np.stack([np.full(nk, ni - 1.0), np.full(nk, nj - 1.0), k_of_slice.astype(float)], axis=1)
    positions = (ijk @ cols3.T + a[:3, 3]) @ _F.T
    return SliceGeometry(
        rows=nj, cols=ni, n_slices=nk,
        iop=tuple(float(v) for v in np.r_[rowcos, colcos]),
        pixel_spacing=(float(norms[1]), float(norms[0])),
        slice_spacing_mm=float(norms[2]),
        normal=normal, positions=positions, k_of_slice=k_of_slice,
    )


def stored_volume(vol: np.ndarray, fmt: str) -> np.ndarray:
    """The values a reader gets back for ``vol`` in format ``fmt`` (same i, j, k layout)."""
    target = np.uint16 if fmt == "siemens-mosaic" else np.int16
    if isinstance(vol, np.ndarray) and vol.dtype == target:
        return vol
    r = np.round(np.asarray(vol, dtype=np.float64))
    if fmt == "siemens-mosaic":
        return np.clip(r, 0, 4095).astype(np.uint16)
    return np.clip(r, -32768, 32767).astype(np.int16)


# --------------------------------------------------------------------------- CSA
_SYNGODT = {"IS": 6, "DS": 3, "US": 10, "FD": 4, "SH": 22, "LO": 19, "UL": 9, "SL": 7, "UT": 27, "CS": 16}


def _csa_text(v: object, vr: str) -> bytes:
    if vr in ("FD", "DS"):
        s = f"{float(v):.8f}"
    elif vr in ("IS", "US", "UL", "SL"):
        s = str(int(v))  # type: ignore[call-overload]
    else:
        s = str(v)
    return s.encode("latin-1") + b"\x00"


def encode_csa2(tags: Sequence[tuple[str, str, Sequence[object]]]) -> bytes:
    """Siemens CSA2 ('SV10') header bytes for ``(name, VR, values)`` tags.

    Layout (read back by ``nibabel.nicom.csareader.read``): ``b'SV10'``,
    4 unused bytes, uint32 number of tags, uint32 77; per tag: 64-byte
    NUL-padded name, int32 VM, 4-byte VR, int32 syngo data type, int32 number of
    items (at least 6, as Siemens writes), int32 77; per item four int32
    ``(len, len, 77, len)`` then ``len`` bytes of NUL-terminated text padded to
    a multiple of 4. Unused items have length 0.
    """
    out = [b"SV10", b"\x04\x03\x02\x01", struct.pack("<2I", len(tags), 77)]
    for name, vr, values in tags:
        values = list(values)
        n_items = max(6, len(values))
        vm = 0 if len(values) > 6 else len(values)
        out.append(struct.pack("<64si4s3i", name.encode("latin-1"), vm, vr.encode("latin-1"),
                               _SYNGODT.get(vr, 0), n_items, 77))
        for k in range(n_items):
            if k < len(values):
                txt = _csa_text(values[k], vr)
                out.append(struct.pack("<4i", len(txt), len(txt), 77, len(txt)))
                out.append(txt + b"\x00" * (-len(txt) % 4))
            else:
                out.append(struct.pack("<4i", 0, 0, 77, 0))
    return b"".join(out)


# --------------------------------------------------------------------------- headers
def dicom_time(t: float) -> tuple[str, str]:
    """(DA, TM) strings of UNIX time ``t`` in local time, TM with microseconds."""
    lt = time.localtime(t)
    micro = int(round((t - math.floor(t)) * 1e6))
    if micro == 1_000_000:
        micro = 999_999
    return time.strftime("%Y%m%d", lt), time.strftime("%H%M%S", lt) + f".{micro:06d}"


@dataclass(frozen=True)
class DicomSeriesInfo:
    """Series-level values shared by every file of a series.

    Parameters
    ----------
    series_number : int
        SeriesNumber.
    tr_s : float
        Repetition time in seconds (written in ms).
    n_volumes : int
        Number of volumes (NumberOfTemporalPositions).
    seed : int
        Seed of the deterministic UIDs (same seed and series, same UIDs).
    description : str
        SeriesDescription / ProtocolName.
    """

    series_number: int
    tr_s: float
    n_volumes: int
    seed: int = 0
    description: str = "scanner_sim_bold"

    def uid(self, *parts: object) -> str:
        """Deterministic UID (``2.25.<int>``) from the seed, series and ``parts``."""
        text = "\x1f".join(["scanner_sim", str(self.seed), *(str(p) for p in parts)])
        # a UUID-sized integer from a hash: deterministic, unlike pydicom's 2.25 UIDs (random uuid4)
        return "2.25." + str(int.from_bytes(hashlib.sha256(text.encode()).digest()[:16], "big"))

    @property
    def study_uid(self) -> str:
        return self.uid("study")

    @property
    def series_uid(self) -> str:
        return self.uid("series", self.series_number)

    @property
    def frame_uid(self) -> str:
        return self.uid("frame")


def _base_dataset(info: DicomSeriesInfo, sop_uid: str, t_acq: float, manufacturer: str, model: str):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = info.uid("implementation")
    meta.ImplementationVersionName = "SCANNER_SIM"
    ds = Dataset()
    ds.file_meta = meta
    da, tm = dicom_time(t_acq)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.InstanceCreationDate, ds.InstanceCreationTime = da, tm
    ds.SOPClassUID = MR_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = da
    ds.AcquisitionTime = ds.ContentTime = tm
    ds.Modality = "MR"
    ds.Manufacturer = manufacturer
    ds.ManufacturerModelName = model
    ds.SoftwareVersions = "scanner_sim"
    for k, v in FAKE_PATIENT.items():
        setattr(ds, k, v)
    ds.SeriesDescription = ds.ProtocolName = info.description
    ds.ScanningSequence, ds.SequenceVariant, ds.MRAcquisitionType = "EP", "SK", "2D"
    ds.RepetitionTime = f"{info.tr_s * 1000:.6g}"
    ds.EchoTime = "30"
    ds.MagneticFieldStrength = "3"
    ds.FlipAngle = "90"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = info.study_uid
    ds.SeriesInstanceUID = info.series_uid
    ds.FrameOfReferenceUID = info.frame_uid
    ds.StudyID = "1"
    ds.SeriesNumber = info.series_number
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    return ds


def _to_bytes(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _ds_str(v: float) -> str:
    """Decimal string of at most 16 characters keeping as many digits as fit."""
    for digits in range(12, 4, -1):
        s = f"{v:.{digits}g}"
        if len(s) <= 16:
            return s
    return f"{v:.4g}"


def _geometry_elements(ds, geo: SliceGeometry, ipp: np.ndarray) -> None:
    ds.ImagePositionPatient = [_ds_str(v) for v in ipp]
    ds.ImageOrientationPatient = [_ds_str(v) for v in geo.iop]
    ds.PixelSpacing = [_ds_str(v) for v in geo.pixel_spacing]
    ds.SliceThickness = _ds_str(geo.slice_spacing_mm)
    ds.SpacingBetweenSlices = _ds_str(geo.slice_spacing_mm)


def mosaic_bytes(
    vol: np.ndarray,
    affine: np.ndarray,
    info: DicomSeriesInfo,
    volume: int,
    t_acq: float,
    geometry: SliceGeometry | None = None,
    echo: tuple[int, float] | None = None,
) -> bytes:
    """One Siemens-style mosaic DICOM file of ``vol`` (0-based ``volume``).

    ``echo``: (1-based echo number, echo time in ms) of one echo of a
    multi-echo volume: EchoNumbers and EchoTime, its own SOPInstanceUID; the
    echoes of a volume share AcquisitionNumber and InstanceNumber (``volume + 1``).

    The mosaic tiles the stored slices row by row on a ``m x m`` grid,
    ``m = ceil(sqrt(n_slices))``. ``ImagePositionPatient`` follows Siemens'
    convention (the corner of the whole mosaic as if it were one big slice:
    the first slice's position minus half the extra mosaic size), which
    nibabel's ``MosaicWrapper`` and dcm2niix undo. The CSA image header
    (0029,1010) holds NumberOfImagesInMosaic, SliceNormalVector,
    AcquisitionMatrixText, MosaicRefAcqTimes (ms, ascending sequential),
    SliceMeasurementDuration, ProtocolSliceNumber, TimeAfterStart, ...
    """
    geo = geometry or geometry_from_affine(affine, vol.shape)
    ns, nr, nc = geo.n_slices, geo.rows, geo.cols
    m = int(math.ceil(math.sqrt(ns)))
    data = stored_volume(vol, "siemens-mosaic")
    pix = np.zeros((nr * m, nc * m), dtype=np.uint16)
    for s in range(ns):
        tr_, tc = divmod(s, m)
        pix[tr_ * nr:(tr_ + 1) * nr, tc * nc:(tc + 1) * nc] = geo.slice_pixels(data, s)
    rowcos, colcos = np.array(geo.iop[:3]), np.array(geo.iop[3:])
    fix_r, fix_c = (nr * m - nr) / 2.0, (nc * m - nc) / 2.0
    ipp = geo.positions[0] - colcos * geo.pixel_spacing[0] * fix_r - rowcos * geo.pixel_spacing[1] * fix_c

    tr_ms = info.tr_s * 1000.0
    slice_times = [s * tr_ms / ns for s in range(ns)]
    sop = info.uid("sop", info.series_number, volume) if echo is None else info.uid("sop", info.series_number, volume,
                                                                                      "echo", echo[0])
    ds = _base_dataset(info, sop, t_acq, "SIEMENS", "scanner_sim")
    if echo is not None:
        ds.EchoNumbers = echo[0]
        ds.EchoTime = _ds_str(echo[1])
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND", "MOSAIC"]
    ds.SequenceName = f"*epfid2d1_{nc}"
    ds.AcquisitionMatrix = [nc, 0, 0, nr]
    ds.InPlanePhaseEncodingDirection = "COL"
    ds.AcquisitionNumber = volume + 1
    ds.InstanceNumber = volume + 1
    _geometry_elements(ds, geo, ipp)
    ds.SliceLocation = _ds_str(geo.slice_location(0))
    ds.Rows, ds.Columns = nr * m, nc * m
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    # SIEMENS MR HEADER (0019,10xx): what dcm2niix and others read besides the CSA
    blk = ds.private_block(0x0019, "SIEMENS MR HEADER", create=True)
    blk.add_new(0x08, "CS", "IMAGE NUM 4")
    blk.add_new(0x09, "LO", "1.0")
    blk.add_new(0x0A, "US", ns)
    blk.add_new(0x0B, "DS", _ds_str(tr_ms / ns * 1000.0))
    blk.add_new(0x16, "DS", _ds_str(volume * info.tr_s))
    blk.add_new(0x28, "FD", 30.0)
    blk.add_new(0x29, "FD", slice_times)
    csa = encode_csa2([
        ("EchoLinePosition", "IS", [nr // 2]),
        ("ICE_Dims", "LO", [f"X_1_1_1_1_1_1_{volume + 1}_1_1_1_1_1"]),
        ("ProtocolSliceNumber", "IS", [0]),
        ("SliceMeasurementDuration", "DS", [tr_ms / ns * 1000.0]),
        ("AcquisitionMatrixText", "SH", [f"{nr}*{nc}"]),
        ("PhaseEncodingDirectionPositive", "IS", [1]),
        ("NumberOfImagesInMosaic", "US", [ns]),
        ("SliceNormalVector", "FD", list(geo.normal)),
        ("TimeAfterStart", "DS", [volume * info.tr_s]),
        ("SlicePosition_PCS", "FD", list(ipp)),
        ("ImaCoilString", "LO", ["HEA;HEP"]),
        ("BandwidthPerPixelPhaseEncode", "FD", [30.0]),
        ("MosaicRefAcqTimes", "FD", slice_times),
    ])
    csa_blk = ds.private_block(0x0029, "SIEMENS CSA HEADER", create=True)
    csa_blk.add_new(0x08, "CS", "IMAGE NUM 4")
    csa_blk.add_new(0x09, "LO", "20240101")
    csa_blk.add_new(0x10, "OB", csa)
    ds.PixelData = pix.tobytes()
    return _to_bytes(ds)


def slice_bytes(
    vol: np.ndarray,
    affine: np.ndarray,
    info: DicomSeriesInfo,
    volume: int,
    s: int,
    t_acq: float,
    geometry: SliceGeometry | None = None,
) -> bytes:
    """Stored slice ``s`` of 0-based ``volume`` as one classic MR DICOM file.

    InstanceNumber ``volume * n_slices + s + 1``, AcquisitionNumber and
    TemporalPositionIdentifier ``volume + 1``, NumberOfTemporalPositions
    ``n_volumes``, AcquisitionTime ``t_acq`` (the slice's own acquisition time).
    """
    geo = geometry or geometry_from_affine(affine, vol.shape)
    data = stored_volume(vol, "dicom-slices")
    sop = info.uid("sop", info.series_number, volume, s)
    ds = _base_dataset(info, sop, t_acq, "scanner_sim", "classic-slices")
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    ds.AcquisitionNumber = volume + 1
    ds.InstanceNumber = volume * geo.n_slices + s + 1
    ds.TemporalPositionIdentifier = volume + 1
    ds.NumberOfTemporalPositions = info.n_volumes
    ds.ImagesInAcquisition = geo.n_slices
    ds.AcquisitionMatrix = [geo.cols, 0, 0, geo.rows]
    _geometry_elements(ds, geo, geo.positions[s])
    ds.SliceLocation = _ds_str(geo.slice_location(s))
    ds.Rows, ds.Columns = geo.rows, geo.cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "US"
    ds.PixelData = np.ascontiguousarray(geo.slice_pixels(data, s)).astype("<i2").tobytes()
    return _to_bytes(ds)
