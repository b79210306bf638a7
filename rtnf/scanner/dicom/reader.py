"""The dispatcher: pick the reader from the files' headers (nibabel's ``wrapper_from_data`` shape)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from rtnf.scanner.nifti import VolumeReadError
from rtnf.scanner.volume import Volume
from ._common import DicomReadError, UnsupportedDicomError, dcmread
from .probe import classify


def _as_paths(paths: str | Path | Sequence[str | Path]) -> list[Path]:
    if isinstance(paths, (str, Path)):
        return [Path(paths)]
    return [Path(p) for p in paths]


def read_volumes(paths: str | Path | Sequence[str | Path]) -> list[Volume]:
    """Every volume the given files hold.

    One mosaic file, one slice set or one single-volume enhanced file gives one
    volume; a multi-volume enhanced file (Philips) or a PAR/REC with several
    dynamics or image types gives several, in file order.

    Raises
    ------
    DicomReadError
        Truncated or corrupt file, inconsistent slices; the message names the file.
    UnsupportedDicomError
        Non-MR, compressed without a decoder plugin, no geometry, unknown layout.
    """
    files = _as_paths(paths)
    if not files:
        raise DicomReadError("read_volume: no files given")
    with _as_read_error(files):
        return _read_volumes(files)


@contextmanager
def _as_read_error(files: list[Path]) -> Iterator[None]:
    """Turn what pydicom/nibabel raise on a corrupt header field (TypeError, KeyError, ...) into DicomReadError."""
    try:
        yield
    except VolumeReadError:
        raise
    except Exception as exc:
        raise DicomReadError(f"{files[0]}: corrupt or inconsistent header ({type(exc).__name__}: {exc})") from exc


def _read_volumes(files: list[Path]) -> list[Volume]:
    if files[0].suffix.lower() == ".par":
        if len(files) != 1:
            raise DicomReadError(f"{files[0]}: give one PAR file at a time")
        from .parrec import read_parrec

        return read_parrec(files[0])
    datasets = [dcmread(p) for p in files]
    kinds = [classify(ds) for ds in datasets]
    if len(files) == 1 and kinds[0][0] == "mosaic":
        from .mosaic import read_mosaic

        return [read_mosaic(files[0], datasets[0], kinds[0][1])]
    if len(files) == 1 and kinds[0][0] == "enhanced":
        from .enhanced import read_enhanced

        return read_enhanced(files[0], datasets[0])
    for path, (kind, _) in zip(files, kinds):
        if kind != "slice":
            raise DicomReadError(f"{path}: a {kind} file holds a whole volume; read it on its own, not with slice files")
    from .slices import read_slices

    return [read_slices(files, datasets)]


def read_volume(paths: str | Path | Sequence[str | Path]) -> Volume:
    """Decode one volume.

    Parameters
    ----------
    paths : path or sequence of paths
        One file for a Siemens mosaic, an enhanced MR file or a PAR (with its
        REC beside it); or all slice files of one volume in any order (they
        are sorted by slice position).

    Returns
    -------
    Volume
        float32 data with rescale applied (axis 0 = DICOM rows, 1 = columns,
        2 = slices), a voxel -> scanner RAS mm affine and ``t_acquired``.

    Raises
    ------
    DicomReadError
        Truncated or corrupt file (names the file), a file holding several
        volumes (use :func:`read_volumes`), inconsistent slices.
    UnsupportedDicomError
        Non-MR, compressed without a decoder plugin, no geometry.
    """
    files = _as_paths(paths)
    if len(files) == 1 and files[0].suffix.lower() == ".par":
        from .parrec import read_parrec_volume

        with _as_read_error(files):
            return read_parrec_volume(files[0])
    volumes = read_volumes(files)
    if len(volumes) != 1:
        raise DicomReadError(f"{files[0]}: holds {len(volumes)} volumes; use rtnf.scanner.dicom.read_volumes")
    return volumes[0]


__all__ = ["read_volume", "read_volumes", "UnsupportedDicomError"]
