"""NIfTI-1/2 volumes as scanners and converters export them (``.nii`` and ``.nii.gz``).

Acquisition time: when the header's ``descrip`` field holds
``acq_time=<UNIX seconds>`` (as rtnf's scanner simulator and some export
scripts write it), it becomes ``Volume.t_acquired``; otherwise that is None.
"""

from __future__ import annotations

import gzip
import re
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from .volume import Volume

_ACQ_TIME = re.compile(rb"acq_time=([0-9]+(?:\.[0-9]*)?)")


class VolumeReadError(ValueError):
    """A file that cannot be decoded into a volume; the message names the file and the reason."""


class IncompleteFileError(VolumeReadError):
    """A file that is shorter than its header promises (still being written, or cut off)."""


def is_complete(path: str | Path) -> bool:
    """Whether a NIfTI file holds all the bytes its header promises.

    For ``.nii`` the header gives the data offset, shape and type, so the
    check reads 540 bytes and the file size. A ``.nii.gz`` file is complete
    when its gzip stream decompresses to its end.

    Never raises for unreadable or foreign files; returns False instead.
    """
    path = Path(path)
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                while f.read(1 << 20):
                    pass
            return True
        with open(path, "rb") as f:
            head = f.read(540)
        expected = _expected_size(head)
        return expected is not None and path.stat().st_size >= expected
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile):
        return False


def _expected_size(head: bytes) -> int | None:
    for klass in (nib.Nifti1Header, nib.Nifti2Header):
        if len(head) < klass.sizeof_hdr:
            continue
        try:
            hdr = klass.from_fileobj(_Bytes(head[: klass.sizeof_hdr]), check=False)
        except Exception:  # nibabel raises several types on foreign bytes
            continue
        if hdr["sizeof_hdr"] != klass.sizeof_hdr:
            continue
        try:  # a corrupt dim or datatype field (unknown type code, negative size, ...)
            shape = hdr.get_data_shape()
            itemsize = hdr.get_data_dtype().itemsize
            offset = int(hdr.get_data_offset())
        except Exception:
            return None
        return offset + int(np.prod(shape, dtype=np.int64)) * itemsize
    return None


class _Bytes:
    """Minimal file object over bytes (nibabel's from_fileobj needs only read)."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def read(self, n: int = -1) -> bytes:
        out, self._data = (self._data, b"") if n < 0 else (self._data[:n], self._data[n:])
        return out


def read_nifti(path: str | Path) -> Volume:
    """Read one 3D volume (or the single volume of a 4D file).

    Parameters
    ----------
    path : str or Path
        ``.nii`` or ``.nii.gz`` file.

    Returns
    -------
    Volume
        float32 data with scaling applied, the sform/qform affine and the
        acquisition time when the header records it.

    Raises
    ------
    IncompleteFileError
        If the file is shorter than its header promises.
    VolumeReadError
        If the file is not a NIfTI volume or has more than one volume.
    """
    path = Path(path)
    if not is_complete(path):
        raise IncompleteFileError(f"{path}: incomplete or truncated NIfTI file")
    try:
        img = nib.load(path, mmap=False)
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as exc:  # nibabel's errors vary by failure; report them all the same way
        raise VolumeReadError(f"{path}: not a readable NIfTI volume ({exc})") from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise VolumeReadError(f"{path}: expected one 3D volume, got an array of shape {data.shape}")
    match = _ACQ_TIME.search(bytes(img.header["descrip"]))
    t_acquired = float(match.group(1)) if match else None
    return Volume(data=data, affine=np.asarray(img.affine, dtype=np.float64), t_acquired=t_acquired, path=path)
