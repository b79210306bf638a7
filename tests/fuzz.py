"""Fuzzing of rtnf's hostile-input surfaces: the wire decoder and the NIfTI / DICOM readers.

What is checked (the documented contracts):

- :func:`rtnf.wire.messages.decode` returns ``(topic, dict)`` or raises
  :class:`~rtnf.wire.messages.MessageError`, for any frames;
- :func:`rtnf.scanner.nifti.is_complete` returns a bool and never raises;
  :func:`rtnf.scanner.nifti.read_nifti` returns a 3D volume or raises
  :class:`~rtnf.scanner.nifti.VolumeReadError` (or a subclass);
- :func:`rtnf.scanner.dicom.probe` never raises; :func:`rtnf.scanner.dicom.read_volume` and
  :meth:`rtnf.scanner.dicom.SeriesReader.read` (primed on the intact file, so that its
  cached fast path meets the mutated one) return a volume or raise a
  ``VolumeReadError``;
- nothing hangs: every example runs under a wall-clock limit.

Inputs are mutated real files (``../shared/data``, when present) and files
written by ``scanner_sim`` (NIfTI, Siemens mosaic and slice DICOM): bit flips,
truncations, inserted and deleted bytes, overwritten header fields (NIfTI
header fields by offset; DICOM elements through pydicom, with hostile values).

The test suite runs a few hundred examples (``tests/test_fuzz.py``); a longer
run is a command::

    python -m tests.fuzz --minutes 5 [--data ../shared/data] [--out fuzz-failures]

which prints, per target, the examples run, the slowest example and any
failure (the input that broke the contract is saved in ``--out``).

Needs ``hypothesis`` (a dev dependency).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import math
import signal
import struct
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

try:
    from hypothesis import HealthCheck, assume, given, settings
    from hypothesis import strategies as st
except ImportError as exc:  # pragma: no cover - a dev dependency
    raise ImportError("tests.fuzz needs hypothesis: pip install hypothesis (or pip install -e '.[dev]')") from exc

EXAMPLE_TIMEOUT_S = 20.0
"""No single example may take longer (a hang is a failure)."""


# --------------------------------------------------------------------------- hangs


class Hang(BaseException):
    """An example ran longer than its time limit (a BaseException: no reader's ``except Exception`` hides it)."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`Hang` in the main thread when the block runs longer than ``seconds``.

    Uses SIGALRM (POSIX, main thread only); elsewhere it only measures.
    """
    usable = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not usable:
        yield
        return

    def _alarm(signum: int, frame: Any) -> None:
        raise Hang(f"example ran longer than {seconds:.0f} s")

    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# --------------------------------------------------------------------------- seeds


@dataclass(frozen=True)
class Seed:
    """One intact input file: its (decompressed) bytes and how to write it."""

    name: str
    kind: str  # "nifti" or "dicom"
    data: bytes
    suffix: str  # ".nii", ".nii.gz", ".dcm", ".dcm.gz", ".par", ""
    companions: dict[str, bytes] = field(default_factory=dict)  # e.g. {".rec": bytes} beside a .par

    @property
    def gz(self) -> bool:
        return self.suffix.endswith(".gz")


def sim_seeds() -> list[Seed]:
    """Small files written by ``scanner_sim``'s encoders (no shared data needed)."""
    import numpy as np

    from scanner_sim.dicom_writer import DicomSeriesInfo, mosaic_bytes, slice_bytes
    from scanner_sim.writer import to_nifti_bytes

    rng = np.random.default_rng(0)
    vol = rng.uniform(100, 1000, size=(8, 8, 5))
    affine = np.diag([3.0, 3.0, 3.5, 1.0])
    affine[:3, 3] = [-12.0, -12.0, -7.0]
    info = DicomSeriesInfo(series_number=3, tr_s=2.0, n_volumes=10)
    nii = to_nifti_bytes(vol, affine, 2.0, 1.7e9)
    return [
        Seed("sim.nii", "nifti", nii, ".nii"),
        Seed("sim.nii.gz", "nifti", nii, ".nii.gz"),
        Seed("sim_mosaic.dcm", "dicom", mosaic_bytes(vol, affine, info, 0, 1.7e9), ".dcm"),
        Seed("sim_slice.dcm", "dicom", slice_bytes(vol, affine, info, 0, 2, 1.7e9), ".dcm"),
    ]


# one or two files per variant; small ones first (the suite takes a few)
_REAL = [
    ("dicom-zoo/toshiba_classic/MR_small.dcm", "dicom"),
    ("dicom-zoo/toshiba_classic/MR_small_implicit.dcm", "dicom"),
    ("dicom-zoo/toshiba_classic/MR_small_bigendian.dcm", "dicom"),
    ("dicom-zoo/siemens_mosaic_dwi_trio_B17_nibabel/csa_slice_norm.dcm", "dicom"),
    ("dicom-zoo/siemens_mosaic_dwi_trio_B17_nibabel/siemens_dwi_1000.dcm.gz", "dicom"),
    ("dicom-zoo/ge_discovery_mr750_epi_slices/axial_epi_fmri_interleaved_i_to_s-00005.dcm", "dicom"),
    ("dicom-zoo/siemens_classic_noCSA/decimal_rescale.dcm", "dicom"),
    ("dicom-zoo/enhanced_mr_generic_pydicom/emri_small.dcm", "dicom"),
    ("dicom-zoo/enhanced_mr_generic_pydicom/emri_small_jpeg_ls_lossless.dcm", "dicom"),
    ("dicom-zoo/philips_enhanced_multiframe/philips_mprage.dcm.gz", "dicom"),
    ("dicom-zoo/siemens_enhanced_XA10_noCSA/6_1.dcm", "dicom"),
    ("dicom-zoo/philips_parrec/Dump-0000.par", "dicom"),
    ("partial-write/001_000013_000005.dcm", "dicom"),
    ("dicom-zoo/siemens_mosaic_prisma_VD13_ep2d/IM-0001-0001.dcm", "dicom"),
    ("dicom-zoo/siemens_mosaic_prisma_VD13_cmrr_multiband/IM-0005-0001.dcm", "dicom"),
    ("dicom-zoo/siemens_enhanced_XA30_fmri_noCSA/0001_1.3.12.2.1107.5.2.43.67093.2022071112090640678703211.dcm",
     "dicom"),
    ("pyneal-series/siemens-prisma-e11-mosaic/001_000013_000001.dcm", "dicom"),
    ("dicom-zoo/siemens_mosaic_prisma_VD13_ep2d_HF/ep2d_Asc_HF.nii.gz", "nifti"),
]


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for s in (".nii.gz", ".dcm.gz", ".nii", ".dcm", ".par"):
        if name.endswith(s):
            return s
    return ""


def real_seeds(data_dir: Path | None, limit: int | None = None) -> list[Seed]:
    """Real scanner files from ``data_dir`` (``../shared/data``); [] when it is absent."""
    if data_dir is None or not Path(data_dir).is_dir():
        return []
    data_dir = Path(data_dir)
    out: list[Seed] = []
    rels = list(_REAL)
    forrest = data_dir / "studyforrest-localizer" / "dicom"
    if forrest.is_dir():
        first = next(iter(sorted(p for p in forrest.rglob("MR.*") if p.is_file())), None)
        if first is not None:
            rels.insert(6, (str(first.relative_to(data_dir)), "dicom"))
    for rel, kind in rels:
        path = data_dir / rel
        if not path.is_file():
            continue
        suffix = _suffix(path)
        raw = path.read_bytes()
        data = gzip.decompress(raw) if suffix.endswith(".gz") else raw
        companions = {}
        if suffix == ".par":
            rec = path.with_suffix(".rec")
            if not rec.exists():
                continue
            companions[".rec"] = rec.read_bytes()
        out.append(Seed(path.name, kind, data, suffix, companions))
        if limit is not None and len(out) >= limit:
            break
    return out


# --------------------------------------------------------------------------- mutations

# (name, offset, struct format of one element, number of elements) of the NIfTI-1 header
NIFTI1_FIELDS = [
    ("sizeof_hdr", 0, "i", 1), ("dim_info", 39, "b", 1), ("dim", 40, "h", 8), ("datatype", 70, "h", 1),
    ("bitpix", 72, "h", 1), ("slice_start", 74, "h", 1), ("pixdim", 76, "f", 8), ("vox_offset", 108, "f", 1),
    ("scl_slope", 112, "f", 1), ("scl_inter", 116, "f", 1), ("slice_end", 120, "h", 1), ("slice_code", 122, "b", 1),
    ("xyzt_units", 123, "b", 1), ("descrip", 148, "80s", 1), ("qform_code", 252, "h", 1), ("sform_code", 254, "h", 1),
    ("quatern", 256, "f", 6), ("srow", 280, "f", 12), ("intent_name", 328, "16s", 1), ("magic", 344, "4s", 1),
]

_HOSTILE_INTS = [0, 1, -1, 2, 3, 4, 7, 8, 255, 256, 32767, -32768, 65535, 2**31 - 1, -(2**31), 2**32 - 1, 2**63 - 1]
_HOSTILE_FLOATS = [0.0, -0.0, 1.0, -1.0, 1e-38, 1e38, 3.4e38, -3.4e38, math.inf, -math.inf, math.nan, 352.0, 1e9]


def _pack_clamped(fmt: str, endian: str, value: Any) -> bytes:
    code = fmt[-1]
    if code == "s":
        raw = value if isinstance(value, bytes) else str(value).encode("latin-1", "replace")
        return struct.pack(endian + fmt, raw)
    if code == "f":
        try:
            return struct.pack(endian + "f", float(value))
        except OverflowError:
            return struct.pack(endian + "f", math.copysign(math.inf, float(value)))
    bits = {"b": 8, "h": 16, "i": 32, "q": 64}[code]
    v = int(value) if not isinstance(value, float) or math.isfinite(value) else 0
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return struct.pack(endian + code, min(max(v, lo), hi))


@st.composite
def byte_mutation(draw: Any) -> tuple:
    """One raw-byte mutation; positions are fractions of the length (or header offsets)."""
    where = st.one_of(st.floats(0.0, 1.0, exclude_max=True), st.integers(0, 2048))
    return draw(st.one_of(
        st.tuples(st.just("flip"), where, st.integers(0, 7)),
        st.tuples(st.just("truncate"), where),
        st.tuples(st.just("insert"), where, st.binary(min_size=1, max_size=64)),
        st.tuples(st.just("delete"), where, st.integers(1, 512)),
        st.tuples(st.just("overwrite"), where, st.binary(min_size=1, max_size=16)),
        st.tuples(st.just("repeat"), where, st.integers(1, 256), st.integers(2, 8)),
    ))


def _pos(where: float | int, n: int) -> int:
    if isinstance(where, float):
        return int(where * n) if n else 0
    return min(int(where), n)


def apply_byte_mutations(data: bytes, ops: list[tuple]) -> bytes:
    """Apply :func:`byte_mutation` ops in order."""
    buf = bytearray(data)
    for op in ops:
        kind, where = op[0], op[1]
        n = len(buf)
        if kind == "flip":
            if n:
                i = min(_pos(where, n), n - 1)
                buf[i] ^= 1 << op[2]
        elif kind == "truncate":
            del buf[_pos(where, n):]
        elif kind == "insert":
            i = _pos(where, n)
            buf[i:i] = op[2]
        elif kind == "delete":
            i = _pos(where, n)
            del buf[i : i + op[2]]
        elif kind == "overwrite":
            i = _pos(where, n)
            buf[i : i + len(op[2])] = op[2]
        elif kind == "repeat":
            i = _pos(where, n)
            chunk = bytes(buf[i : i + op[2]])
            buf[i:i] = chunk * (op[3] - 1)
    return bytes(buf)


@st.composite
def nifti_field_edit(draw: Any) -> tuple:
    name, offset, fmt, count = draw(st.sampled_from(NIFTI1_FIELDS))
    element = draw(st.integers(0, count - 1))
    if fmt.endswith("s"):
        value = draw(st.one_of(st.binary(max_size=int(fmt[:-1])), st.just(b"acq_time=" + b"9" * 70),
                               st.just(b"acq_time=1e999"), st.just(b"n+2\x00"), st.just(b"ni1\x00")))
    elif fmt == "f":
        value = draw(st.one_of(st.sampled_from(_HOSTILE_FLOATS), st.floats(width=32)))
    else:
        value = draw(st.one_of(st.sampled_from(_HOSTILE_INTS), st.integers(-(2**31), 2**31 - 1)))
    return ("nifti_field", name, offset + element * struct.calcsize(fmt), fmt, value)


def apply_nifti_field_edit(data: bytes, edit: tuple) -> bytes:
    _, _, offset, fmt, value = edit
    if len(data) < 348:
        return data
    endian = "<" if struct.unpack_from("<i", data, 0)[0] == 348 else ">"
    packed = _pack_clamped(fmt, endian, value)
    return data[:offset] + packed + data[offset + len(packed):]


DICOM_FIELDS = [
    "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "SamplesPerPixel",
    "NumberOfFrames", "ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing", "SliceThickness",
    "SpacingBetweenSlices", "RescaleSlope", "RescaleIntercept", "InstanceNumber", "AcquisitionNumber",
    "TemporalPositionIdentifier", "ImagesInAcquisition", "AcquisitionTime", "AcquisitionDate",
    "AcquisitionDateTime", "ContentTime", "ImageType", "SOPClassUID", "Modality", "Manufacturer",
    "SeriesNumber", "PhotometricInterpretation", "PlanarConfiguration", "TransferSyntaxUID",
    "PixelData", "CSA", "PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence",
]

_DICOM_VALUES = st.one_of(
    st.sampled_from(_HOSTILE_INTS),
    st.sampled_from(_HOSTILE_FLOATS),
    st.sampled_from(["", " ", "0", "-1", "1e309", "nan", "abc", "99999999999999999999", "MOSAIC",
                     "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2", "CT", "SIEMENS",
                     "19700101", "250000.1", "999999", "20241301", "1.2.840.10008.5.1.4.1.1.4.1"]),
    st.lists(st.sampled_from(["0", "1", "-1", "nan", "inf", "1e308", "", "x", "0.5"]), max_size=8),
    st.just(None),  # delete the element
    st.binary(max_size=64),
)


@st.composite
def dicom_field_edit(draw: Any) -> tuple:
    return ("dicom_field", draw(st.sampled_from(DICOM_FIELDS)), draw(_DICOM_VALUES))


def apply_dicom_field_edit(data: bytes, edit: tuple) -> bytes | None:
    """Set (or delete) one element through pydicom and re-encode; None when pydicom cannot write it."""
    import warnings

    import pydicom

    _, name, value = edit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
            if name == "CSA":
                tag = (0x0029, 0x1010)
                if tag not in ds:
                    return None
                csa = bytes(ds[tag].value)
                if value is None:
                    del ds[tag]
                else:
                    raw = value if isinstance(value, bytes) else str(value).encode()
                    i = len(raw) % max(len(csa), 1)
                    ds[tag].value = csa[:i] + raw + csa[i + len(raw):]
            elif name == "TransferSyntaxUID":
                if value is None or not isinstance(value, str):
                    return None
                ds.file_meta.TransferSyntaxUID = value
            elif name == "PixelData":
                if "PixelData" not in ds:
                    return None
                pix = bytes(ds.PixelData)
                if value is None:
                    del ds.PixelData
                elif isinstance(value, int):
                    ds.PixelData = pix[: max(0, min(len(pix), abs(value) % (len(pix) + 1)))]
                else:
                    ds.PixelData = pix + (value if isinstance(value, bytes) else b"\x00\x01")
            elif value is None:
                if name in ds:
                    delattr(ds, name)
            elif name.endswith("Sequence"):
                if name not in ds:
                    return None
                seq = ds[name].value
                if isinstance(value, int) and len(seq):
                    del seq[abs(value) % len(seq)]
                else:
                    ds[name].value = []
            else:
                if isinstance(value, bytes):
                    value = value.decode("latin-1")
                setattr(ds, name, value)
            buf = io.BytesIO()
            ds.save_as(buf)
            return buf.getvalue()
    except Exception:  # the fuzzer could not build this input: not a finding
        return None


@st.composite
def file_mutation(draw: Any, kind: str) -> dict[str, Any]:
    """A list of mutations: raw bytes, plus header field edits for the kind."""
    ops: list[tuple] = []
    n = draw(st.integers(1, 4))
    field_edit = nifti_field_edit() if kind == "nifti" else dicom_field_edit()
    for _ in range(n):
        ops.append(draw(st.one_of(byte_mutation(), field_edit)))
    return {"ops": ops, "on_compressed": draw(st.booleans()) and draw(st.booleans()),
            "companion": draw(st.one_of(st.none(), byte_mutation()))}


def build(seed: Seed, mutation: dict[str, Any]) -> bytes | None:
    """The mutated file's bytes (compressed again when the seed is gzipped); None if not buildable."""
    data = seed.data
    for op in mutation["ops"]:
        if op[0] == "nifti_field":
            data = apply_nifti_field_edit(data, op)
        elif op[0] == "dicom_field":
            if mutation["on_compressed"] and seed.gz:
                continue
            new = apply_dicom_field_edit(data, op)
            if new is None:
                return None
            data = new
        elif not (mutation["on_compressed"] and seed.gz):
            data = apply_byte_mutations(data, [op])
    if seed.gz:
        data = gzip.compress(data, compresslevel=1, mtime=0)
        if mutation["on_compressed"]:
            data = apply_byte_mutations(data, [op for op in mutation["ops"] if op[0] not in ("nifti_field", "dicom_field")])
    return data


# --------------------------------------------------------------------------- contracts


class ContractBroken(AssertionError):
    """A reader let an undocumented exception escape, or returned something malformed."""


def check_decode(frames: list[bytes]) -> None:
    """:func:`rtnf.wire.messages.decode` returns (topic, dict) or raises MessageError."""
    from rtnf.wire.messages import TOPICS, MessageError, decode

    try:
        topic, body = decode(frames)
    except MessageError:
        return
    except Exception as exc:
        raise ContractBroken(f"decode raised {type(exc).__name__}: {exc!s:.300}") from exc
    if topic not in TOPICS or not isinstance(body, dict):
        raise ContractBroken(f"decode returned {topic!r}, {type(body).__name__}")


def _check_volume(vol: Any, what: str) -> None:
    import numpy as np

    if vol.data.ndim != 3 or vol.affine.shape != (4, 4):
        raise ContractBroken(f"{what} returned data {vol.data.shape} and affine {vol.affine.shape}")
    if vol.data.dtype != np.float32:
        raise ContractBroken(f"{what} returned {vol.data.dtype} data")


def check_nifti(path: Path) -> None:
    """is_complete never raises; read_nifti gives a 3D volume or a VolumeReadError."""
    from rtnf.scanner.nifti import VolumeReadError, is_complete, read_nifti

    try:
        complete = is_complete(path)
    except Exception as exc:
        raise ContractBroken(f"is_complete raised {type(exc).__name__}: {exc!s:.300}") from exc
    if not isinstance(complete, bool):
        raise ContractBroken(f"is_complete returned {complete!r}")
    try:
        vol = read_nifti(path)
    except VolumeReadError:
        return
    except Exception as exc:
        raise ContractBroken(f"read_nifti raised {type(exc).__name__}: {exc!s:.300}") from exc
    _check_volume(vol, "read_nifti")


def check_dicom(path: Path, primed: Callable[[], Any] | None = None) -> None:
    """probe never raises; read_volume and SeriesReader.read give a volume or a VolumeReadError."""
    from rtnf.scanner.dicom import DicomInfo, read_volume
    from rtnf.scanner.dicom import probe
    from rtnf.scanner.nifti import VolumeReadError

    try:
        info = probe(path)
    except Exception as exc:
        raise ContractBroken(f"probe raised {type(exc).__name__}: {exc!s:.300}") from exc
    if not isinstance(info, DicomInfo):
        raise ContractBroken(f"probe returned {info!r}")
    readers: list[tuple[str, Callable[[], Any]]] = [("read_volume", lambda: read_volume(path))]
    if primed is not None:
        reader = primed()
        readers.append(("SeriesReader.read", lambda: reader.read(path)))
    for what, read in readers:
        try:
            vol = read()
        except VolumeReadError:
            continue
        except Exception as exc:
            raise ContractBroken(f"{what} raised {type(exc).__name__}: {exc!s:.300}") from exc
        _check_volume(vol, what)


class Workspace:
    """A temporary folder holding the intact seeds (to prime readers) and one mutated file at a time."""

    def __init__(self, seeds: list[Seed], root: Path | None = None) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="rtnf-fuzz-", dir=root)
        self.root = Path(self._tmp.name)
        self.seeds = seeds
        self.intact: dict[str, Path] = {}
        for i, seed in enumerate(seeds):
            folder = self.root / f"seed{i}"
            folder.mkdir()
            self.intact[seed.name] = self._write(folder, seed, seed.data if not seed.gz else gzip.compress(seed.data))
        self.last: tuple[Seed, dict[str, Any], bytes] | None = None

    def _write(self, folder: Path, seed: Seed, data: bytes, companion_ops: tuple | None = None) -> Path:
        stem = Path(seed.name).name
        for s in (".nii.gz", ".dcm.gz", ".nii", ".dcm", ".par"):
            if stem.lower().endswith(s):
                stem = stem[: -len(s)]
                break
        path = folder / (stem + seed.suffix)
        path.write_bytes(data)
        for suffix, blob in seed.companions.items():
            if companion_ops is not None:
                blob = apply_byte_mutations(blob, [companion_ops])
            path.with_suffix(suffix).write_bytes(blob)
        return path

    def write_mutated(self, seed: Seed, mutation: dict[str, Any], data: bytes) -> Path:
        folder = self.root / "mutated"
        if folder.exists():
            for p in folder.iterdir():
                p.unlink()
        else:
            folder.mkdir()
        self.last = (seed, mutation, data)
        return self._write(folder, seed, data, mutation["companion"])

    def primed_reader(self, seed: Seed) -> Any:
        """A SeriesReader that has read the intact file (so a fast-path recipe may exist)."""
        from rtnf.scanner.dicom import SeriesReader

        reader = SeriesReader()
        try:
            reader.read(self.intact[seed.name])
        except Exception:
            pass  # a seed rtnf refuses (JPEG-LS, ...): the reader stays unprimed
        return reader

    def close(self) -> None:
        self._tmp.cleanup()


def run_file_example(ws: Workspace, seed: Seed, mutation: dict[str, Any], timeout_s: float = EXAMPLE_TIMEOUT_S) -> None:
    """Build, write and check one mutated file (the body of the file fuzz tests)."""
    data = build(seed, mutation)
    assume(data is not None)
    path = ws.write_mutated(seed, mutation, data)
    with time_limit(timeout_s):
        if seed.kind == "nifti":
            check_nifti(path)
        else:
            primed = (lambda: ws.primed_reader(seed)) if seed.suffix in (".dcm", "") else None
            check_dicom(path, primed)


# --------------------------------------------------------------------------- message strategies

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=30,
)


@st.composite
def hostile_frames(draw: Any) -> list[bytes]:
    """Frames a hostile or broken publisher could send."""
    from rtnf.wire.messages import MAX_MESSAGE_BYTES, TOPICS, encode

    topic = draw(st.one_of(st.sampled_from(TOPICS), st.text(max_size=12)))
    topic_b = topic.encode("utf-8", "surrogatepass")
    choice = draw(st.integers(0, 7))
    if choice == 0:  # any frames at all
        return draw(st.lists(st.binary(max_size=200), max_size=4))
    if choice == 1:  # a valid message, then mutated
        valid_topic = draw(st.sampled_from(TOPICS))
        body = draw(st.dictionaries(st.text(max_size=8), json_values, max_size=6))
        frames = encode(valid_topic, draw(st.text(max_size=10)), body)
        ops = draw(st.lists(byte_mutation(), max_size=3))
        return [frames[0], apply_byte_mutations(frames[1], ops)]
    if choice == 2:  # deep nesting
        depth = draw(st.integers(1, 300_000))
        opener = draw(st.sampled_from([b"[", b'{"a":', b'{"schema":"rtnf.run/1","x":[']))
        closer = {b"[": b"]", b'{"a":': b"}", b'{"schema":"rtnf.run/1","x":[': b"]"}[opener]
        close = draw(st.booleans())
        payload = opener * depth + (b"1" + closer * depth if close else b"")
        return [topic_b, payload[: MAX_MESSAGE_BYTES + 10]]
    if choice == 3:  # huge numbers
        digits = draw(st.integers(1, 200_000))
        number = draw(st.sampled_from([b"1" * digits, b"-" + b"9" * digits, b"1e" + b"9" * min(digits, 400),
                                       b"0." + b"0" * digits + b"1", b"NaN", b"Infinity", b"-Infinity"]))
        return [topic_b, b'{"schema":"rtnf.' + topic_b + b'/1","run_id":"r","value":' + number + b"}"]
    if choice == 4:  # oversized
        extra = draw(st.integers(-2, 64))
        body = b'{"schema":"rtnf.' + topic_b + b'/1","pad":"'
        pad = MAX_MESSAGE_BYTES + extra - len(body) - 2
        return [topic_b, body + b"x" * max(pad, 0) + b'"}']
    if choice == 5:  # wrong schema / not an object / odd encodings
        payload = draw(st.sampled_from([b"[]", b"null", b"1", b'"s"', b"{}", b'{"schema":1}', b'{"schema":null}',
                                        b'{"schema":"rtnf.volume/1"}', b"\xef\xbb\xbf{}", b"\xff\xfe{\x00}\x00",
                                        '{"schema":"rtnf.run/1","x":"\ud800"}'.encode("utf-8", "surrogatepass")]))
        return [topic_b, payload]
    if choice == 6:  # valid body, random JSON values (NaN allowed through the encoder's cleaning)
        valid_topic = draw(st.sampled_from(TOPICS))
        return encode(valid_topic, "run", {"x": draw(json_values)})
    return [topic_b, draw(st.binary(max_size=2000))]


# --------------------------------------------------------------------------- the command


@dataclass
class TargetReport:
    name: str
    examples: int = 0
    slowest_s: float = 0.0
    failures: list[str] = field(default_factory=list)


def _timed(report: TargetReport, fn: Callable[[], None]) -> None:
    t0 = time.perf_counter()
    try:
        fn()
    finally:
        report.examples += 1
        report.slowest_s = max(report.slowest_s, time.perf_counter() - t0)


def _make_runners(seeds: list[Seed], ws: Workspace, reports: dict[str, TargetReport], batch: int) -> list:
    common = dict(max_examples=batch, deadline=None, database=None, derandomize=False,
                  suppress_health_check=list(HealthCheck))
    runners = []

    rep = reports.setdefault("messages.decode", TargetReport("messages.decode"))

    @settings(**common)
    @given(hostile_frames())
    def fuzz_decode(frames: list[bytes]) -> None:
        _timed(rep, lambda: _run_limited(lambda: check_decode(frames)))

    runners.append((rep, fuzz_decode))
    for seed in seeds:
        r = reports.setdefault(seed.name, TargetReport(f"{seed.kind} {seed.name}"))

        def make(seed: Seed = seed, r: TargetReport = r) -> Callable[[], None]:
            @settings(**common)
            @given(file_mutation(seed.kind))
            def fuzz_file(mutation: dict[str, Any]) -> None:
                _timed(r, lambda: run_file_example(ws, seed, mutation))

            return fuzz_file

        runners.append((r, make()))
    return runners


def _describe(exc: BaseException) -> str:
    """One line per distinct failure (hypothesis groups them)."""
    subs = getattr(exc, "exceptions", None)
    if subs:
        return "\n".join(_describe(e) for e in subs)
    return "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()[0][:600]


def _run_limited(fn: Callable[[], None]) -> None:
    with time_limit(EXAMPLE_TIMEOUT_S):
        fn()


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.fuzz``: fuzz every target round-robin for a while and report."""
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="total fuzzing time (default 5)")
    default_data = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
    parser.add_argument("--data", type=Path, default=default_data,
                        help=f"real scanner files to mutate (default {default_data}; skipped when absent)")
    parser.add_argument("--batch", type=int, default=50, help="examples per target per round (default 50)")
    parser.add_argument("--out", type=Path, default=None, help="folder for inputs that broke a contract")
    args = parser.parse_args(argv)

    import logging
    import warnings

    # Quiet while fuzzing, and as it was afterwards: test_fuzz calls main() in the test process, and a
    # global logging.disable left behind silenced every later test's log assertions.
    disabled_below = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return _fuzz(args)
        finally:
            logging.disable(disabled_below)


def _fuzz(args: argparse.Namespace) -> int:
    """The fuzzing loop of :func:`main`; returns its exit code."""
    seeds = sim_seeds() + real_seeds(args.data)
    ws = Workspace(seeds)
    reports: dict[str, TargetReport] = {}
    runners = _make_runners(seeds, ws, reports, args.batch)
    print(f"tests.fuzz: {len(runners)} targets ({len(seeds)} seed files, real data "
          f"{'from ' + str(args.data) if args.data.is_dir() else 'absent'}), {args.minutes:g} min", flush=True)
    t_end = time.monotonic() + 60.0 * args.minutes
    rounds = 0
    try:
        while time.monotonic() < t_end:
            rounds += 1
            for report, runner in runners:
                if time.monotonic() >= t_end:
                    break
                if len(report.failures) >= 3:
                    continue
                try:
                    runner()
                except Exception as exc:  # a falsifying example (after shrinking)
                    text = _describe(exc)
                    report.failures.append(text[:2000])
                    if args.out is not None and ws.last is not None and report.name != "messages.decode":
                        args.out.mkdir(parents=True, exist_ok=True)
                        seed, mutation, data = ws.last
                        dest = args.out / f"{len(report.failures)}_{seed.name}"
                        dest.write_bytes(data)
                        (args.out / (dest.name + ".txt")).write_text(f"{mutation!r}\n\n{text}\n")
                    print(f"FAIL {report.name}: {text[:500]}", flush=True)
    finally:
        ws.close()
    total = sum(r.examples for r in reports.values())
    n_fail = sum(len(r.failures) for r in reports.values())
    print(f"\n{total} examples in {rounds} rounds; {n_fail} contract failures")
    print(f"{'target':<72} {'examples':>9} {'slowest s':>10} failures")
    for r in reports.values():
        print(f"{r.name:<72} {r.examples:>9} {r.slowest_s:>10.3f} {len(r.failures)}")
    return 1 if n_fail else 0


if __name__ == "__main__":
    sys.exit(main())
