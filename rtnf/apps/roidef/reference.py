"""Reading the participant's reference volume (NIfTI, or DICOM through rtnf.scanner.dicom)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from rtnf.scanner.volume import Volume
from ._common import RoiDefError


# --------------------------------------------------------------------------- reading the reference


def _is_nifti(path: Path) -> bool:
    return path.name.endswith((".nii", ".nii.gz"))


def _dicom_groups(files: Sequence[Path]) -> dict[tuple[Any, int], list[Path]]:
    """DICOM files grouped into volumes: {(series_uid, volume_number): files}."""
    from rtnf.scanner.dicom import probe

    groups: dict[tuple[Any, int], list[Path]] = {}
    for f in files:
        info = probe(f)
        if not info.usable:
            continue
        if info.kind in ("mosaic", "enhanced", "parrec"):
            groups[(info.series_uid, len(groups) if info.volume_number is None else int(info.volume_number))] = [f]
        elif info.kind == "slice":
            key = (info.series_uid, int(info.volume_number or 0))
            groups.setdefault(key, []).append(f)
    return groups


def _folder_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def load_reference(path: str | Path, volume: int | None = None) -> Volume:
    """The participant's reference volume.

    Parameters
    ----------
    path : str or Path
        A NIfTI file (3D; or 4D, then volume ``volume``, default the first),
        a DICOM file (a slice file brings the other slices of its volume from
        the same folder), or a folder of DICOM files (the lowest volume
        number unless ``volume`` is given).
    volume : int, optional
        Volume number (DICOM) or index from 0 (4D NIfTI).

    Raises
    ------
    RoiDefError
        If the path does not hold a readable volume.
    """
    import nibabel as nib

    from rtnf.scanner.dicom import read_volume
    from rtnf.scanner.dicom import probe

    path = Path(path)
    param = "--reference"
    if not path.exists():
        raise RoiDefError(param, f"not found: {path}")
    try:
        if path.is_file() and _is_nifti(path):
            img = nib.load(path)
            data = np.asarray(img.dataobj, dtype=np.float32)
            if data.ndim == 4:
                data = data[..., volume or 0]
            return Volume(data=data, affine=np.asarray(img.affine, dtype=np.float64), t_acquired=None, path=path)
        if path.is_file():
            info = probe(path)
            if info.kind == "slice" and (info.n_slices or 0) > 1:
                groups = _dicom_groups(_folder_files(path.parent))
                files = groups[(info.series_uid, int(info.volume_number or 0))]
            else:
                files = [path]
            return read_volume(files)
        groups = _dicom_groups(_folder_files(path))
        if not groups:
            raise RoiDefError(param, f"{path} holds no NIfTI or DICOM volume")
        keys = sorted(groups, key=lambda k: k[1])
        if volume is not None:
            keys = [k for k in keys if k[1] == volume]
            if not keys:
                raise RoiDefError("--volume", f"{volume} is not a volume number in {path}")
        return read_volume(groups[keys[0]])
    except RoiDefError:
        raise
    except Exception as exc:  # reader errors name the file
        raise RoiDefError(param, f"cannot read a volume from {path} ({exc})") from None


def load_series(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """All volumes of a run: a 4D NIfTI, a folder of 3D NIfTI files, or a folder of DICOM files.

    Returns
    -------
    data : ndarray, shape (nx, ny, nz, n_volumes), float32
        In volume-number order.
    affine : ndarray, shape (4, 4)
    """
    import nibabel as nib

    from rtnf.scanner.dicom import read_volume

    path = Path(path)
    param = "--series"
    if not path.exists():
        raise RoiDefError(param, f"not found: {path}")
    if path.is_file():
        img = nib.load(path)
        data = np.asarray(img.dataobj, dtype=np.float32)
        if data.ndim != 4:
            raise RoiDefError(param, f"{path} is not a 4D image (shape {data.shape})")
        return data, np.asarray(img.affine, dtype=np.float64)
    files = _folder_files(path)
    niftis = [f for f in files if _is_nifti(f)]
    if niftis:
        imgs = [nib.load(f) for f in niftis]
        return np.stack([np.asarray(i.dataobj, dtype=np.float32) for i in imgs], axis=-1), np.asarray(imgs[0].affine)
    groups = _dicom_groups(files)
    if not groups:
        raise RoiDefError(param, f"{path} holds no NIfTI or DICOM volume")
    vols = [read_volume(groups[k]) for k in sorted(groups, key=lambda k: k[1])]
    return np.stack([v.data for v in vols], axis=-1), vols[0].affine
