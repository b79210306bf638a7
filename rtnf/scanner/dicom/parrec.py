"""Philips PAR/REC, including the real-time export dumps (``Dump-NNNN.par/.rec``, one pair per volume),
read with ``nibabel.parrec``.

Values are Philips "displayed values" (DV = PV * RS + RI, nibabel's default
scaling, the same as DICOM RescaleSlope/Intercept). Volumes are sorted with
nibabel's ``strict_sort`` (dynamic, then image type). When a file holds
several image types (the real-time dumps store types 16 and 17 for every
slice; 17 spans -3142..3142, a phase in milliradians), :func:`read_volume`
returns the lowest type code (16 in the dumps, non-negative: the magnitude);
:func:`read_parrec` returns all of them.
``volume_number`` is the dump index + 1 for ``Dump-NNNN`` names, else the
header's dynamic scan number.
"""

from __future__ import annotations

import io
import re
import time
import warnings
from pathlib import Path

import numpy as np

from rtnf.scanner.nifti import open_regular
from rtnf.scanner.volume import Volume
from ._common import DicomInfo, DicomReadError

_DUMP = re.compile(r"(\d+)$")


def _rec_path(par: Path) -> Path | None:
    for suffix in (".rec", ".REC", ".Rec"):
        candidate = par.with_suffix(suffix)
        if candidate.exists():
            return candidate
    return None


def _header(par: Path):
    from nibabel import parrec

    with io.TextIOWrapper(open_regular(par), encoding="latin-1") as f, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        general, image_defs = parrec.parse_PAR_header(f)
    return general, image_defs


def _t_acquired(general: dict, image_defs: np.ndarray) -> float | None:
    exam = str(general.get("exam_date", "")).strip()
    m = re.match(r"(\d{4})\.(\d{2})\.(\d{2})\s*/\s*(\d{2}):(\d{2}):(\d{2})", exam)
    if not m:
        return None
    base = time.mktime(time.strptime("".join(m.groups()), "%Y%m%d%H%M%S"))
    return base + float(np.min(image_defs["dyn_scan_begin_time"]))


def probe_parrec(par: Path) -> DicomInfo:
    """DicomInfo of a PAR/REC pair; complete when the REC holds every image the PAR lists."""
    try:
        general, image_defs = _header(par)
    except Exception as exc:  # nibabel raises several types on a partial PAR
        return DicomInfo(path=par, kind="parrec", complete=False, problem=f"{par}: unreadable PAR header ({exc})")
    rec = _rec_path(par)
    res = image_defs["recon resolution"]
    bits = image_defs["image pixel size"]
    expected = int(np.sum(res[:, 0].astype(np.int64) * res[:, 1] * bits // 8))
    n_slices = int(general.get("max_slices", 0)) or None
    shape = (int(res[0, 0]), int(res[0, 1]), n_slices) if n_slices else None
    m = _DUMP.search(par.stem)
    volume = int(m.group(1)) + 1 if m and par.stem.lower().startswith("dump") else int(image_defs["dynamic scan number"][0])
    common = dict(path=par, kind="parrec", series_number=int(general.get("acq_nr", 0)) or None,
                  series_description=str(general.get("protocol_name", "")).strip() or None,
                  volume_number=volume, n_slices=n_slices, shape=shape, t_acquired=_t_acquired(general, image_defs))
    if rec is None:
        return DicomInfo(complete=False, problem=f"{par}: no .REC file beside the .PAR", **common)
    size = rec.stat().st_size
    if size < expected:
        return DicomInfo(complete=False, problem=f"{rec}: truncated, {size} of {expected} bytes", **common)
    return DicomInfo(complete=True, **common)


def read_parrec(par: Path) -> list[Volume]:
    """All volumes (dynamics x image types, in nibabel's order) of a PAR/REC pair."""
    from nibabel import parrec

    info = probe_parrec(par)
    if not info.complete:
        raise DicomReadError(info.problem or f"{par}: incomplete PAR/REC")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = parrec.load(str(par), strict_sort=True)
            data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as exc:
        raise DicomReadError(f"{par}: cannot read PAR/REC ({type(exc).__name__}: {exc})") from exc
    affine = np.asarray(img.affine, dtype=np.float64)
    if data.ndim == 3:
        data = data[..., None]
    return [Volume(data=np.ascontiguousarray(data[..., i]), affine=affine, t_acquired=info.t_acquired, path=par)
            for i in range(data.shape[3])]


def read_parrec_volume(par: Path) -> Volume:
    """The volume of a one-dynamic PAR/REC (the first image type when it stores several)."""
    general, image_defs = _header(par) if par.exists() else ({}, None)
    if image_defs is not None and len(np.unique(image_defs["dynamic scan number"])) > 1:
        raise DicomReadError(f"{par}: holds {len(np.unique(image_defs['dynamic scan number']))} dynamics; "
                             "use rtnf.scanner.dicom.read_volumes")
    return read_parrec(par)[0]
