"""NIfTI-1/2 volumes as scanners and converters export them (``.nii`` and ``.nii.gz``).

Acquisition time: when the header's ``descrip`` field holds
``acq_time=<UNIX seconds>`` (as rtnf's scanner simulator and some export
scripts write it), it becomes ``Volume.t_acquired``; otherwise that is None.
Echo time: ``TE=<ms>`` in ``descrip`` (dcm2niix, scanner-sim's multi-echo
runs) becomes ``Volume.echo_times_ms``. Slice times: a BIDS sidecar's
``SliceTiming`` (``x.json`` beside ``x.nii[.gz]``, :mod:`rtnf.scanner.sidecar`)
along the header's ``slice_dim`` (else axis 2) become ``Volume.slice_times_s``.

Hostile input: files are opened only when they are regular files (a FIFO
named like a volume would block a reader forever), and a ``.nii.gz`` is never
decompressed past the size its header promises (a gzip bomb of a few MB can
decompress to GBs): :func:`judge` tells complete, incomplete and refused
files apart without decompressing a complete file, and :func:`read_nifti`
decompresses at most the promised bytes.
"""

from __future__ import annotations

import errno
import io
import os
import re
import stat as stat_module
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import nibabel as nib
import numpy as np

from .sidecar import sidecar_slice_times
from .volume import Volume

_ACQ_TIME = re.compile(rb"acq_time=([0-9]+(?:\.[0-9]*)?)")
_ECHO_TIME = re.compile(rb"(?:^|;)TE=([0-9]+(?:\.[0-9]*)?)")  # dcm2niix's descrip "TE=30;Time=..."; scanner-sim's


def descrip_echo_time_ms(descrip: bytes) -> float | None:
    """The echo time (ms) a NIfTI ``descrip`` field records as ``TE=<ms>``, else None."""
    match = _ECHO_TIME.search(bytes(descrip))
    return float(match.group(1)) if match else None

#: Largest uncompressed volume a ``.nii.gz`` may promise when nothing tighter is known (bytes).
MAX_VOLUME_BYTES = 512 << 20
#: Bytes a ``.nii.gz`` may decompress to beyond what its header promises (trailing padding).
GZ_SLACK_BYTES = 64 << 10
#: Seconds a completeness check may spend decompressing before the file is set aside.
JUDGE_BUDGET_S = 1.0
_CHUNK = 1 << 16


class VolumeReadError(ValueError):
    """A file that cannot be decoded into a volume; the message names the file and the reason."""


class IncompleteFileError(VolumeReadError):
    """A file that is shorter than its header promises (still being written, or cut off)."""


class NotRegularFileError(OSError):
    """A path that is not a regular file (FIFO, socket, device, directory): never opened for reading."""


def open_regular(path: str | Path) -> BinaryIO:
    """Open a regular file for binary reading; refuse anything else without blocking.

    The open uses ``O_NONBLOCK`` (no effect on regular files) so that a FIFO
    put in the file's place after a check cannot block the caller, and the
    opened descriptor is checked with ``fstat``.

    Raises
    ------
    NotRegularFileError
        If ``path`` is a FIFO, socket, device or directory.
    OSError
        If it cannot be opened.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat_module.S_ISREG(mode):
            raise NotRegularFileError(errno.EINVAL, f"not a regular file ({file_kind(mode)})", str(path))
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def file_kind(mode: int) -> str:
    """A short name for a file type from ``st_mode`` ("FIFO", "socket", ...)."""
    for test, name in ((stat_module.S_ISFIFO, "a FIFO"), (stat_module.S_ISSOCK, "a socket"),
                       (stat_module.S_ISCHR, "a character device"), (stat_module.S_ISBLK, "a block device"),
                       (stat_module.S_ISDIR, "a directory"), (stat_module.S_ISREG, "a regular file")):
        if test(mode):
            return name
    return "not a regular file"


@dataclass(frozen=True)
class Judgement:
    """What :func:`judge` says about a NIfTI file.

    ``state`` is "complete", "incomplete" (still being written, or cut off:
    look again when it changes) or "refused" (never to be read as it is: a
    gzip bomb, a header promising more than the bound, too slow to judge);
    ``reason`` says why for the last two; ``expected_bytes`` is what the
    header promises (uncompressed), when known.
    """

    state: str
    reason: str = ""
    expected_bytes: int | None = None

    def __bool__(self) -> bool:
        return self.state == "complete"


def judge(path: str | Path, max_bytes: int | None = None, budget_s: float = JUDGE_BUDGET_S) -> Judgement:
    """Whether a NIfTI file is complete, without trusting it.

    A ``.nii`` is complete when it holds all the bytes its header promises
    (540 bytes read, and the file size). A ``.nii.gz`` is complete when its
    gzip trailer records exactly the uncompressed size its header promises
    (only the header is decompressed); when it does not, the stream is
    decompressed, at most ``expected + GZ_SLACK_BYTES`` bytes and
    ``budget_s`` seconds, to tell a file still being written (incomplete)
    from one that decompresses to more than promised (refused).

    Parameters
    ----------
    path : str or Path
        The file.
    max_bytes : int, optional
        Largest uncompressed size a header may promise (``MAX_VOLUME_BYTES``
        when None); a larger promise is refused.
    budget_s : float
        Seconds the decompression may take before the file is refused as
        too slow to judge.

    Never raises for unreadable or foreign files.
    """
    path = Path(path)
    limit = MAX_VOLUME_BYTES if max_bytes is None else int(max_bytes)
    try:
        with open_regular(path) as f:
            if path.name.endswith(".gz"):
                return _judge_gz(f, path, limit, budget_s)
            expected = _expected_size(f.read(540))
            size = os.fstat(f.fileno()).st_size
    except NotRegularFileError as exc:
        return Judgement("refused", f"{exc.strerror}; never read")
    except OSError:
        return Judgement("incomplete")
    if expected is None:
        return Judgement("incomplete")
    if expected > limit:
        return Judgement("refused", f"its header promises {expected} bytes, more than the bound of {limit} "
                                    "for one volume", expected)
    return Judgement("complete" if size >= expected else "incomplete", expected_bytes=expected)


def _judge_gz(f: BinaryIO, path: Path, limit: int, budget_s: float) -> Judgement:
    size = os.fstat(f.fileno()).st_size
    if size < 18:
        return Judgement("incomplete")
    head = _gunzip_head(f)
    if head is None:
        return Judgement("incomplete")
    expected = _expected_size(head)
    if expected is None:
        return Judgement("incomplete") if len(head) < 348 else Judgement("refused", "not a NIfTI header")
    if expected > limit:
        return Judgement("refused", f"its header promises {expected} bytes, more than the bound of {limit} "
                                    "for one volume", expected)
    f.seek(size - 4)
    (isize,) = struct.unpack("<I", f.read(4))
    if isize == expected % (1 << 32):
        return Judgement("complete", expected_bytes=expected)
    f.seek(0)
    try:
        n, ended = _gunzip_bounded(f, None, expected + GZ_SLACK_BYTES, time.monotonic() + budget_s)
    except _TooLarge:
        return Judgement("refused", f"it decompresses to more than the {expected} bytes its header promises "
                                    "(a gzip bomb, or not one volume)", expected)
    except _TooSlow:
        return Judgement("refused", f"it could not be judged within {budget_s:g} s", expected)
    except (zlib.error, EOFError, OSError):
        return Judgement("incomplete", expected_bytes=expected)
    if not ended or n < expected:
        return Judgement("incomplete", expected_bytes=expected)
    return Judgement("complete", expected_bytes=expected)


class _TooLarge(Exception):
    pass


class _TooSlow(Exception):
    pass


def _gunzip_head(f: BinaryIO, n: int = 540) -> bytes | None:
    """The first ``n`` uncompressed bytes of a gzip stream (fewer if it ends), None if unreadable."""
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out = b""
    try:
        while len(out) < n:
            data = d.unconsumed_tail or f.read(_CHUNK)
            if not data:
                break
            out += d.decompress(data, n - len(out))
            if d.eof:
                break
    except zlib.error:
        return None
    return out


def _gunzip_bounded(f: BinaryIO, sink: io.BytesIO | None, limit: int, deadline: float | None) -> tuple[int, bool]:
    """Decompress a (multi-member) gzip stream, at most ``limit`` bytes; return (bytes, whether it ended).

    Raises ``_TooLarge`` past ``limit``, ``_TooSlow`` past ``deadline``
    (monotonic seconds), ``zlib.error`` on a corrupt stream.
    """
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    total, ended = 0, False
    while True:
        if deadline is not None and time.monotonic() > deadline:
            raise _TooSlow
        data = d.unconsumed_tail
        if not data:
            data = f.read(_CHUNK)
            if not data:
                return total, ended
            if ended:  # another gzip member after a complete one
                if not data.strip(b"\x00"):
                    continue  # zero padding after the stream
                d = zlib.decompressobj(16 + zlib.MAX_WBITS)
                ended = False
        out = d.decompress(data, limit + 1 - total)
        total += len(out)
        if total > limit:
            raise _TooLarge
        if sink is not None:
            sink.write(out)
        if d.eof:
            ended = True
            rest = d.unused_data
            if rest and rest.strip(b"\x00"):
                d = zlib.decompressobj(16 + zlib.MAX_WBITS)
                ended = False
                out = d.decompress(rest, limit + 1 - total)
                total += len(out)
                if total > limit:
                    raise _TooLarge
                if sink is not None:
                    sink.write(out)
                if d.eof:
                    ended = True


def is_complete(path: str | Path) -> bool:
    """Whether a NIfTI file holds all the bytes its header promises (see :func:`judge`).

    Never raises for unreadable or foreign files; returns False instead
    (also for refused ones: a gzip bomb, a FIFO).
    """
    return judge(path).state == "complete"


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
        if offset < 0 or any(int(s) < 0 for s in shape):
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


def _read_bytes(path: Path, max_bytes: int | None) -> bytes:
    """The file's (uncompressed) bytes, never more than its header promises (plus slack for ``.gz``)."""
    limit = MAX_VOLUME_BYTES if max_bytes is None else int(max_bytes)
    try:
        with open_regular(path) as f:
            if not path.name.endswith(".gz"):
                head = f.read(540)
                expected = _expected_size(head)
                if expected is None:
                    raise VolumeReadError(f"{path}: not a readable NIfTI volume (no NIfTI header)")
                if expected > limit:
                    raise VolumeReadError(f"{path}: its header promises {expected} bytes, more than the bound of "
                                          f"{limit} for one volume; not read")
                data = head + f.read(max(0, expected - len(head)))
                if len(data) < expected:
                    raise IncompleteFileError(f"{path}: incomplete or truncated NIfTI file")
                return data
            head = _gunzip_head(f)
            expected = _expected_size(head or b"")
            if expected is None:
                raise VolumeReadError(f"{path}: not a readable NIfTI volume (no NIfTI header in the gzip stream)")
            if expected > limit:
                raise VolumeReadError(f"{path}: its header promises {expected} bytes, more than the bound of {limit} "
                                      "for one volume; not read")
            f.seek(0)
            sink = io.BytesIO()
            try:
                n, ended = _gunzip_bounded(f, sink, expected + GZ_SLACK_BYTES, None)
            except _TooLarge:
                raise VolumeReadError(f"{path}: decompresses to more than the {expected} bytes its header promises "
                                      "(a gzip bomb, or not one volume); not read") from None
            except (zlib.error, EOFError) as exc:
                raise IncompleteFileError(f"{path}: incomplete or corrupt gzip stream ({exc})") from exc
            if not ended or n < expected:
                raise IncompleteFileError(f"{path}: incomplete or truncated NIfTI file")
            return sink.getvalue()
    except NotRegularFileError as exc:
        raise VolumeReadError(f"{path}: {exc.strerror}; never read") from None
    except OSError as exc:
        raise VolumeReadError(f"{path}: cannot open ({exc})") from exc


def decode_nifti(path: Path, max_bytes: int | None = None) -> tuple[Any, np.ndarray]:
    """The NIfTI-1 or NIfTI-2 image of a regular file read within ``max_bytes``, and its data as float32.

    Raises
    ------
    IncompleteFileError, VolumeReadError
        As :func:`read_nifti`.
    """
    data_bytes = _read_bytes(path, max_bytes)
    try:
        klass = nib.Nifti2Image if struct.unpack("<i", data_bytes[:4])[0] in (540, 0x1C020000) else nib.Nifti1Image
        img = klass.from_bytes(data_bytes)
        return img, np.asarray(img.dataobj, dtype=np.float32)
    except Exception as exc:  # nibabel's errors vary by failure; report them all the same way
        raise VolumeReadError(f"{path}: not a readable NIfTI volume ({exc})") from exc


def read_nifti(path: str | Path, max_bytes: int | None = None) -> Volume:
    """Read one 3D volume (or the single volume of a 4D file).

    Parameters
    ----------
    path : str or Path
        ``.nii`` or ``.nii.gz`` file.
    max_bytes : int, optional
        Largest uncompressed size a ``.nii.gz`` header may promise
        (``MAX_VOLUME_BYTES`` when None).

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
        If the file is not a NIfTI volume, has more than one volume, is not
        a regular file, or decompresses to more than its header promises.
    """
    path = Path(path)
    img, data = decode_nifti(path, max_bytes)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise VolumeReadError(f"{path}: expected one 3D volume, got an array of shape {data.shape}")
    match = _ACQ_TIME.search(bytes(img.header["descrip"]))
    t_acquired = float(match.group(1)) if match else None
    te = descrip_echo_time_ms(img.header["descrip"])
    slice_axis = header_slice_axis(img.header)
    return Volume(data=data, affine=np.asarray(img.affine, dtype=np.float64), t_acquired=t_acquired, path=path,
                  slice_times_s=sidecar_slice_times(path, data.shape[slice_axis]), slice_axis=slice_axis,
                  echo_times_ms=None if te is None else (te,))


def header_slice_axis(header: object) -> int:
    """The header's ``slice_dim`` (0-based) when it names a spatial axis, else 2 (slices along k)."""
    try:
        dim = header.get_dim_info()[2]  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - a malformed dim_info only costs the slice axis
        return 2
    return int(dim) if dim in (0, 1, 2) else 2
