"""Replay a real series at TR pace: a DICOM folder or a 4D NIfTI.

Sources
-------
DICOM folder
    Every readable DICOM file in the folder (not sub-folders) is read once,
    header only. One series is replayed (``series``, default the one with the
    most files). Files are grouped into volumes from their headers:

    * one file per volume (Siemens mosaic, enhanced multi-frame, or any series
      whose files all share one ImagePositionPatient): ordered by
      AcquisitionNumber, InstanceNumber, AcquisitionTime, name;
    * one file per slice (GE, Philips classic, ...): ``n_slices`` = number of
      distinct ImagePositionPatient; volumes are the values of
      TemporalPositionIdentifier when it varies, else of AcquisitionNumber
      when it gives ``n_files / n_slices`` groups, else consecutive runs of
      ``n_slices`` files in InstanceNumber order. Inside a volume, files are
      written in acquisition order (AcquisitionTime, then position along the
      slice normal, then InstanceNumber), spread over the TR: slice ``s`` at
      ``(s + 1) * TR / n_slices``.

    Bytes are copied unchanged (so header times stay the original ones: use
    ``files.tsv``'s ``t_acquired`` for the replay's clock); names are kept
    unless ``filename_template`` is given (fields ``name``, ``series``,
    ``volume`` 1-based, ``slice`` 1-based).
4D NIfTI (``.nii`` / ``.nii.gz``)
    One 3D NIfTI-1 per volume (same header, affine and data type), named
    ``{stem}_{series:03d}_{volume:05d}.nii`` (``series`` 1 unless given).

TR: ``tr_s`` if given, else RepetitionTime (DICOM, ms) or ``pixdim[4]`` (NIfTI,
with its time unit). Faults (:class:`scanner_sim.spec.Faults`) work as for
synthetic runs; a second series is the source's first volumes again, with
SeriesNumber and a new SeriesInstanceUID / SOPInstanceUIDs in DICOM headers, and
the series number in file names (``001_{series:06d}_...`` names get the new
series; other names get a ``S{series:04d}_`` prefix).

Truth folder: ``files.tsv``, ``faults.tsv`` (see :mod:`scanner_sim.export`) and
``replay.json`` (source, kind, series, TR, and the source files of each volume).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .export import MAIN, WRITE_MODES, FileSlot, WriteSummary, export_run
from .spec import Faults

__all__ = ["ReplaySource", "load_source", "Replayer", "ReplayError"]

logger = logging.getLogger(__name__)

_SIEMENS_NAME = re.compile(r"^(\d+)_(\d{6})_(\d{6})(\.dcm)$", re.IGNORECASE)


class ReplayError(ValueError):
    """The replay source cannot be used; the message names it and says why."""


@dataclass(frozen=True)
class ReplaySource:
    """A real series, grouped into volumes.

    Attributes
    ----------
    path : Path
        The DICOM folder or the 4D NIfTI file.
    kind : {"dicom-slices", "dicom-volumes", "nifti4d"}
        One DICOM per slice, one DICOM per volume, or a 4D NIfTI.
    volumes : tuple of tuple of Path
        Source files of each volume in write order (for ``nifti4d``, the
        NIfTI file once per volume).
    tr_s : float
        Repetition time in seconds.
    series : int
        Series number (1 for NIfTI unless given).
    grouping : str
        How volumes were found (for the truth's ``replay.json``).
    """

    path: Path
    kind: str
    volumes: tuple[tuple[Path, ...], ...]
    tr_s: float
    series: int
    grouping: str

    @property
    def n_volumes(self) -> int:
        return len(self.volumes)


def _f(x: object, default: float = 0.0) -> float:
    try:
        return float(x)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return default


def _tm_seconds(tm: object) -> float:
    s = str(tm or "").strip()
    if len(s) < 6:
        return 0.0
    return int(s[:2]) * 3600 + int(s[2:4]) * 60 + _f(s[4:])


def load_source(path: str | Path, tr_s: float | None = None, series: int | None = None) -> ReplaySource:
    """Read a DICOM folder's headers (or a 4D NIfTI's header) and group it into volumes.

    Raises
    ------
    ReplayError
        Missing source, no DICOM files, unknown series, no TR, a NIfTI that is not 4D.
    """
    path = Path(path)
    if not path.exists():
        raise ReplayError(f"Invalid value for 'source': '{path}' does not exist. Allowed: a DICOM folder or a 4D NIfTI.")
    if path.is_dir():
        return _load_dicom_dir(path, tr_s, series)
    if path.name.endswith((".nii", ".nii.gz")):
        return _load_nifti(path, tr_s, series)
    raise ReplayError(f"Invalid value for 'source': '{path}'. Allowed: a DICOM folder or a .nii/.nii.gz 4D NIfTI.")


def _load_nifti(path: Path, tr_s: float | None, series: int | None) -> ReplaySource:
    import nibabel as nib

    img = nib.load(path)
    if len(img.shape) != 4 or img.shape[3] < 1:
        raise ReplayError(f"Invalid value for 'source': '{path}' has shape {img.shape}. Allowed: a 4D NIfTI.")
    if tr_s is None:
        t = float(img.header.get_zooms()[3])
        unit = img.header.get_xyzt_units()[1]
        tr_s = t / 1000.0 if unit == "msec" else t / 1e6 if unit == "usec" else t
    if not tr_s or tr_s <= 0:
        raise ReplayError(f"'{path}' has no TR in pixdim[4]; pass tr_s (--tr-s).")
    return ReplaySource(path, "nifti4d", tuple((path,) for _ in range(img.shape[3])), float(tr_s),
                        1 if series is None else series, "4D NIfTI, one volume per index of the 4th axis")


def _load_dicom_dir(path: Path, tr_s: float | None, series: int | None) -> ReplaySource:
    from pydicom.errors import InvalidDicomError
    from pydicom.filereader import read_partial

    headers = []
    for f in sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")):
        try:
            with open(f, "rb") as fp:
                # every tag used here is at or before (0028,0008): skip the rest (private groups, pixels)
                h = read_partial(fp, stop_when=lambda tag, vr, length: tag > 0x00280008)
        except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
            logger.info("replay: skipping %s (not DICOM: %s)", f.name, exc)
            continue
        if "SeriesNumber" not in h and "InstanceNumber" not in h:
            logger.info("replay: skipping %s (no series/instance number)", f.name)
            continue
        headers.append((f, h))
    if not headers:
        raise ReplayError(f"Invalid value for 'source': '{path}' holds no DICOM files. Allowed: a DICOM folder.")
    by_series: dict[int, list] = {}
    for f, h in headers:
        by_series.setdefault(int(_f(h.get("SeriesNumber"), 0)), []).append((f, h))
    if series is None:
        series = max(by_series, key=lambda s: len(by_series[s]))
    elif series not in by_series:
        raise ReplayError(f"Invalid value for 'series': {series}. Allowed: one of {sorted(by_series)} in '{path}'.")
    files = by_series[series]
    if tr_s is None:
        tr_ms = next((_f(h.get("RepetitionTime")) for _, h in files if h.get("RepetitionTime")), 0.0)
        tr_s = tr_ms / 1000.0
    if not tr_s or tr_s <= 0:
        raise ReplayError(f"No RepetitionTime in the DICOM headers of '{path}'; pass tr_s (--tr-s).")

    def ipp(h) -> tuple[float, ...]:
        v = h.get("ImagePositionPatient")
        return tuple(round(_f(x), 3) for x in v) if v is not None else ()

    def inum(h) -> int:
        return int(_f(h.get("InstanceNumber"), 0))

    positions = {ipp(h) for _, h in files}
    one_per_volume = len(positions) <= 1 or any(
        "MOSAIC" in [str(t).upper() for t in (h.get("ImageType") or [])] or int(_f(h.get("NumberOfFrames"), 1)) > 1
        for _, h in files)
    if one_per_volume:
        order = sorted(files, key=lambda fh: (int(_f(fh[1].get("AcquisitionNumber"), 0)), inum(fh[1]),
                                              _tm_seconds(fh[1].get("AcquisitionTime")), fh[0].name))
        return ReplaySource(path, "dicom-volumes", tuple((f,) for f, _ in order), float(tr_s), series,
                            "one file per volume, by AcquisitionNumber/InstanceNumber")
    ns = len(positions)
    iop = next((h.get("ImageOrientationPatient") for _, h in files if h.get("ImageOrientationPatient")), None)
    normal = np.cross(np.array([_f(x) for x in iop[:3]]), np.array([_f(x) for x in iop[3:]])) if iop else np.zeros(3)
    groups: dict[int, list] = {}
    tpi = {int(_f(h.get("TemporalPositionIdentifier"), -1)) for _, h in files}
    acq = {int(_f(h.get("AcquisitionNumber"), -1)) for _, h in files}
    if len(tpi) > 1 and -1 not in tpi:
        grouping = "TemporalPositionIdentifier"
        for f, h in files:
            groups.setdefault(int(_f(h.get("TemporalPositionIdentifier"))), []).append((f, h))
    elif len(acq) > 1 and -1 not in acq and abs(len(acq) * ns - len(files)) < ns:
        grouping = "AcquisitionNumber"
        for f, h in files:
            groups.setdefault(int(_f(h.get("AcquisitionNumber"))), []).append((f, h))
    else:
        grouping = f"InstanceNumber runs of {ns} slices"
        for k, (f, h) in enumerate(sorted(files, key=lambda fh: (inum(fh[1]), fh[0].name))):
            groups.setdefault(k // ns, []).append((f, h))
    volumes = []
    for key in sorted(groups):
        g = sorted(groups[key], key=lambda fh: (_tm_seconds(fh[1].get("AcquisitionTime")),
                                                float(np.dot(ipp(fh[1]) or (0, 0, 0), normal)), inum(fh[1])))
        if len(g) != ns:
            logger.warning("replay: volume %s of '%s' has %d of %d slices", key, path, len(g), ns)
        volumes.append(tuple(f for f, _ in g))
    return ReplaySource(path, "dicom-slices", tuple(volumes), float(tr_s), series,
                        f"one file per slice, {ns} slices, volumes by {grouping}")


def _second_name(name: str, series: int) -> str:
    m = _SIEMENS_NAME.match(name)
    if m:
        return f"{m.group(1)}_{series:06d}_{m.group(3)}{m.group(4)}"
    return f"S{series:04d}_{name}"


class _ReplayProducer:
    def __init__(self, source: ReplaySource, n_volumes: int, template: str | None, series2: int) -> None:
        self.source = source
        self.n_volumes = n_volumes
        self.series = source.series
        self.series2 = series2
        self.template = template
        self._nifti = None

    def _name(self, v: int, k: int, role: str) -> str:
        src = self.source
        ser = self.series if role == MAIN else self.series2
        if src.kind == "nifti4d":
            stem = src.path.name[:-7] if src.path.name.endswith(".nii.gz") else src.path.stem
            tmpl = self.template or "{name}_{series:03d}_{volume:05d}.nii"
            return tmpl.format(name=stem, series=ser, volume=v + 1, slice=k + 1)
        orig = src.volumes[v][k].name
        if self.template:
            return self.template.format(name=orig, series=ser, volume=v + 1, slice=k + 1)
        return orig if role == MAIN else _second_name(orig, ser)

    def slots(self, volume: int, role: str) -> list[FileSlot]:
        files = self.source.volumes[volume]
        tr, ns = self.source.tr_s, len(files)
        if self.source.kind != "dicom-slices":
            return [FileSlot(self._name(volume, 0, role), None, 0.0, tr)]
        return [FileSlot(self._name(volume, k, role), k, k * tr / ns, (k + 1) * tr / ns) for k in range(ns)]

    def payloads(self, volume: int, role: str, t_acq: Sequence[float]) -> list[bytes]:
        src = self.source
        if src.kind == "nifti4d":
            import nibabel as nib

            if self._nifti is None:
                self._nifti = nib.load(src.path)
            img = self._nifti
            data = np.asanyarray(img.dataobj[..., volume])
            hdr = img.header.copy()
            out = nib.Nifti1Image(data, img.affine, header=hdr)
            out.header.set_data_dtype(img.get_data_dtype())
            return [out.to_bytes()]
        blobs = [f.read_bytes() for f in src.volumes[volume]]
        if role == MAIN:
            return blobs
        return [self._reseries(b, volume, k) for k, b in enumerate(blobs)]

    def _reseries(self, blob: bytes, volume: int, k: int) -> bytes:
        import pydicom

        ds = pydicom.dcmread(io.BytesIO(blob))

        def uid(*parts: object) -> str:
            text = "\x1f".join(["scanner_sim-replay", str(self.series2), *map(str, parts)])
            return "2.25." + str(int.from_bytes(hashlib.sha256(text.encode()).digest()[:16], "big"))

        ds.SeriesNumber = self.series2
        ds.SeriesInstanceUID = uid("series", ds.get("SeriesInstanceUID", ""))
        ds.SOPInstanceUID = uid("sop", ds.get("SOPInstanceUID", ""), volume, k)
        if getattr(ds, "file_meta", None) is not None:
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        buf = io.BytesIO()
        ds.save_as(buf)
        return buf.getvalue()


class Replayer:
    """Replay a :class:`ReplaySource` into an export folder at TR pace.

    Parameters
    ----------
    export_dir : str or Path
        Folder the files are written into (created if missing).
    source : ReplaySource or str or Path
        The series (a path is loaded with :func:`load_source`).
    mode, n_chunks, chunk_delay_s, speed, recon_delay_s
        As for :class:`scanner_sim.writer.ScannerWriter`.
    n_volumes : int, optional
        Replay only the first ``n_volumes`` volumes.
    filename_template : str, optional
        Rename files (see module docstring); default keeps the original names.
    tr_s : float, optional
        Override the TR (seconds) when ``source`` is a path.
    """

    def __init__(self, export_dir: str | Path, source: ReplaySource | str | Path, mode: str = "chunked",
                 n_chunks: int = 4, chunk_delay_s: float = 0.01, speed: float = 1.0, recon_delay_s: float = 0.05,
                 n_volumes: int | None = None, filename_template: str | None = None,
                 tr_s: float | None = None) -> None:
        if not isinstance(source, ReplaySource):
            source = load_source(source, tr_s=tr_s)
        for name, ok, allowed in (
            ("mode", mode in WRITE_MODES, " or ".join(repr(m) for m in WRITE_MODES)),
            ("n_chunks", isinstance(n_chunks, int) and n_chunks >= 1, "an integer >= 1"),
            ("speed", isinstance(speed, (int, float)) and speed > 0, "a number > 0"),
            ("chunk_delay_s", isinstance(chunk_delay_s, (int, float)) and chunk_delay_s >= 0, "a number >= 0"),
            ("recon_delay_s", isinstance(recon_delay_s, (int, float)) and recon_delay_s >= 0, "a number >= 0"),
            ("n_volumes", n_volumes is None or (isinstance(n_volumes, int) and 1 <= n_volumes),
             "an integer >= 1 or None"),
        ):
            if not ok:
                value = {"mode": mode, "n_chunks": n_chunks, "speed": speed, "chunk_delay_s": chunk_delay_s,
                         "recon_delay_s": recon_delay_s, "n_volumes": n_volumes}[name]
                raise ValueError(f"Invalid value for '{name}': {value!r}. Allowed: {allowed}.")
        self.export_dir = Path(export_dir)
        self.source = source
        self.mode, self.n_chunks, self.chunk_delay_s = mode, n_chunks, float(chunk_delay_s)
        self.speed, self.recon_delay_s = float(speed), float(recon_delay_s)
        self.n_volumes = min(n_volumes or source.n_volumes, source.n_volumes)
        self.filename_template = filename_template

    def replay(self, truth_dir: str | Path, faults: Faults | None = None,
               stop_event: threading.Event | None = None, start_delay_s: float = 0.0) -> WriteSummary:
        """Write the series; ``files.tsv``, ``faults.tsv`` and ``replay.json`` go to ``truth_dir``."""
        if faults is not None:
            faults = Faults.from_dict(faults.to_dict(), self.n_volumes)
        series2 = faults.second_series[1] if faults and faults.second_series else self.source.series + 1000
        if faults and faults.second_series and faults.second_series[2] > self.n_volumes:
            raise ValueError(f"Invalid value for 'faults.second_series.n_volumes': {faults.second_series[2]}. "
                             f"Allowed: at most the {self.n_volumes} replayed volumes.")
        producer = _ReplayProducer(self.source, self.n_volumes, self.filename_template, series2)
        truth_dir = Path(truth_dir)
        truth_dir.mkdir(parents=True, exist_ok=True)
        src = self.source
        (truth_dir / "replay.json").write_text(json.dumps({
            "source": str(src.path), "kind": src.kind, "series": src.series, "tr_s": src.tr_s,
            "grouping": src.grouping, "n_volumes": self.n_volumes, "speed": self.speed,
            "volumes": [[p.name for p in v] for v in src.volumes[:self.n_volumes]],
        }, indent=1) + "\n")
        return export_run(producer, self.export_dir, truth_dir, tr_s=src.tr_s, mode=self.mode,
                          n_chunks=self.n_chunks, chunk_delay_s=self.chunk_delay_s, speed=self.speed,
                          recon_delay_s=self.recon_delay_s, faults=faults, seed=0, stop_event=stop_event,
                          start_delay_s=start_delay_s)
