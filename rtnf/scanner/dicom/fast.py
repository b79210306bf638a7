"""Per-series cached decoding of one-file-per-volume DICOM (Siemens mosaic, enhanced MR).

The first file of a series is read by the generic path (pydicom + nibabel).
From it a *recipe* is kept: where the pixel data starts, its dtype, how
frames/tiles map to the 3D array, the rescale and the affine, together with
a *geometry signature*: the raw bytes of every element that decides the
geometry or the values (series UID, matrix, bits, ImagePositionPatient and
ImageOrientationPatient of every frame, pixel spacing, slice spacing,
rescale, stack id and in-stack position of every frame, mosaic count,
...; not DimensionIndexValues, whose temporal index changes every volume), found by a byte scan of the
header. The recipe is used only after it reproduced the generic path's
array and affine exactly on that first file.

A later file of the series is decoded by the recipe only when its header
bytes give the same signature and its pixel data has the same length
(the offset may move: Siemens CSA headers change length); anything else (another transfer syntax, a changed geometry, a
truncated file, a gzipped file) goes to the generic path. The byte scan
needs Explicit VR Little Endian, the syntax every scanner here writes.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from rtnf.scanner.nifti import open_regular
from rtnf.scanner.volume import Volume
from ._common import DicomReadError, acquisition_time, dicomwrappers
from .reader import read_volume

# tag (group, element) -> allowed VRs; geometry / value elements of the signature
_SIGNATURE_TAGS: dict[tuple[int, int], tuple[bytes, ...]] = {
    (0x0008, 0x0016): (b"UI",), (0x0008, 0x0008): (b"CS",), (0x0020, 0x000E): (b"UI",),
    (0x0028, 0x0002): (b"US",), (0x0028, 0x0008): (b"IS",), (0x0028, 0x0010): (b"US",),
    (0x0028, 0x0011): (b"US",), (0x0028, 0x0100): (b"US",), (0x0028, 0x0101): (b"US",),
    (0x0028, 0x0103): (b"US",), (0x0020, 0x0032): (b"DS",), (0x0020, 0x0037): (b"DS",),
    (0x0028, 0x0030): (b"DS",), (0x0018, 0x0050): (b"DS",), (0x0018, 0x0088): (b"DS",),
    (0x0028, 0x1052): (b"DS",), (0x0028, 0x1053): (b"DS",), (0x0028, 0x1054): (b"LO",),
    (0x0020, 0x9056): (b"SH",), (0x0020, 0x9057): (b"UL",),
    (0x0040, 0x9224): (b"FD",), (0x0040, 0x9225): (b"FD",), (0x2005, 0x140A): (b"DS",),
    (0x2005, 0x1409): (b"DS",), (0x2005, 0x100E): (b"FL",), (0x0019, 0x100A): (b"US",),
    (0x0002, 0x0010): (b"UI",),
}
_TIME_TAGS = {(0x0008, 0x002A): "AcquisitionDateTime", (0x0008, 0x0022): "AcquisitionDate",
              (0x0008, 0x0032): "AcquisitionTime", (0x0008, 0x0023): "ContentDate",
              (0x0008, 0x0033): "ContentTime", (0x0008, 0x0021): "SeriesDate"}
_ALL = {**{t: v for t, v in _SIGNATURE_TAGS.items()}, **{t: (b"DT", b"DA", b"TM") for t in _TIME_TAGS}}
_EXPLICIT_LE = b"1.2.840.10008.1.2.1\x00"


@dataclass
class _Header:
    signature: tuple
    times: dict[str, str]
    pixel_offset: int
    pixel_length: int


_NEEDLES = [(struct.pack("<HH", *tag) + vr, tag) for tag, vrs in _ALL.items() for vr in vrs]
_NEEDLE_TAG = dict(_NEEDLES)
_NEEDLE_RE = re.compile(b"|".join(re.escape(n) for n, _ in _NEEDLES))
_PIXEL_NEEDLES = (b"\xe0\x7f\x10\x00OW\x00\x00", b"\xe0\x7f\x10\x00OB\x00\x00")


def scan_header(buf: bytes) -> _Header | None:
    """Byte-scan an Explicit VR Little Endian file: geometry signature, times, pixel data position.

    The pixel data element is the first (7FE0,0010) OW/OB element header in the
    file; elements of the signature are found by searching their tag + VR bytes
    before it (one regular-expression pass over the header).
    """
    starts = [i for i in (buf.find(n) for n in _PIXEL_NEEDLES) if i >= 0]
    if not starts:
        return None
    start = min(starts)
    (length,) = struct.unpack_from("<I", buf, start + 8)
    signature = []
    times: dict[str, str] = {}
    for m in _NEEDLE_RE.finditer(buf, 0, start):
        i = m.start()
        tag = _NEEDLE_TAG[m.group()]
        (n,) = struct.unpack_from("<H", buf, i + 6)
        value = buf[i + 8 : i + 8 + n]
        if tag in _TIME_TAGS:
            times.setdefault(_TIME_TAGS[tag], value.decode("ascii", "replace").strip("\x00 "))
        else:
            signature.append((tag, value))
    if ((0x0002, 0x0010), _EXPLICIT_LE) not in signature:
        return None
    return _Header(tuple(signature), times, start + 12, length)


@dataclass
class _Recipe:
    header: _Header
    dtype: np.dtype
    count: int
    transform: Callable[[np.ndarray], np.ndarray]
    affine: np.ndarray
    slice_times_s: tuple[float, ...] | None = None  # the first file's: protocol, like the geometry


class SeriesReader:
    """Decode volumes of Siemens mosaic / enhanced series with a per-series cache.

    Parameters
    ----------
    verify : bool
        Also run the generic path on every file and raise AssertionError if
        the results differ (for tests and benchmarks of the fast path).

    Attributes
    ----------
    stats : dict
        ``{"fast": n, "generic": n}`` reads by each path.
    """

    def __init__(self, verify: bool = False) -> None:
        self.verify = verify
        self._recipes: dict[tuple, _Recipe] = {}
        self._refused: set[tuple] = set()
        self.stats = {"fast": 0, "generic": 0}

    def read(self, path: str | Path) -> Volume:
        """One volume from one file (mosaic or enhanced); other kinds go to :func:`read_volume`."""
        path = Path(path)
        header = None
        if not path.name.endswith(".gz"):
            try:
                with open_regular(path) as f:  # never blocks on a FIFO put in the file's place
                    buf = f.read()
            except OSError as exc:
                raise DicomReadError(f"{path}: cannot open ({exc})") from exc
            header = scan_header(buf)
        if header is not None and header.pixel_offset + header.pixel_length <= len(buf):
            recipe = self._recipes.get(header.signature)
            if recipe is not None and recipe.header.pixel_length == header.pixel_length:
                raw = np.frombuffer(buf, dtype=recipe.dtype, count=recipe.count, offset=header.pixel_offset)
                vol = Volume(data=recipe.transform(raw), affine=recipe.affine.copy(),
                             t_acquired=acquisition_time(header.times), path=path,
                             slice_times_s=recipe.slice_times_s)
                self.stats["fast"] += 1
                if self.verify:
                    _assert_same(vol, read_volume(path))
                return vol
        vol = read_volume(path)
        self.stats["generic"] += 1
        if header is not None and header.signature not in self._recipes and header.signature not in self._refused:
            recipe = _make_recipe(path, buf, header, vol)
            if recipe is None:
                self._refused.add(header.signature)
            else:
                self._recipes[header.signature] = recipe
        return vol


def _assert_same(a: Volume, b: Volume) -> None:
    np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-9)
    assert a.t_acquired == b.t_acquired, (a.t_acquired, b.t_acquired)
    # Slice times are the series' (its first file's) on the fast path: equal to the file's own within 1 ms.
    assert (a.slice_times_s is None) == (b.slice_times_s is None), (a.slice_times_s, b.slice_times_s)
    if a.slice_times_s is not None:
        np.testing.assert_allclose(a.slice_times_s, b.slice_times_s, atol=1e-3)


def _make_recipe(path: Path, buf: bytes, header: _Header, vol: Volume) -> _Recipe | None:
    """Build the recipe from the generic read of ``path``; None unless it reproduces that read exactly."""
    from ._common import dcmread
    from .enhanced import _frame_scale
    from .probe import classify

    ds = dcmread(path)
    kind, csa = classify(ds)
    bits, signed = int(ds.BitsAllocated), int(ds.get("PixelRepresentation", 0)) == 1
    if bits not in (8, 16, 32) or int(ds.get("SamplesPerPixel", 1)) != 1:
        return None
    dtype = np.dtype(f"<{'i' if signed else 'u'}{bits // 8}")
    rows, cols = int(ds.Rows), int(ds.Columns)
    frames = int(ds.get("NumberOfFrames") or 1)
    if kind == "mosaic":
        wrapper = dicomwrappers.MosaicWrapper(ds, csa)
        n = wrapper.n_mosaic
        tiles = wrapper.mosaic_size
        slope, inter = (float(x) for x in wrapper.scale_factors[0])

        def transform(raw: np.ndarray) -> np.ndarray:
            out = raw.reshape(tiles, rows // tiles, tiles, cols // tiles).transpose(1, 3, 0, 2)
            out = out.reshape(rows // tiles, cols // tiles, tiles * tiles)[..., :n].astype(np.float32)
            if slope != 1.0 or inter != 0.0:
                out = out * np.float32(slope) + np.float32(inter)
            return out

        count = rows * cols * frames
    elif kind == "enhanced":
        wrapper = dicomwrappers.MultiframeWrapper(ds)
        if len(wrapper.frames) != frames or len(wrapper.image_shape) != 3:
            return None
        order = np.asarray(wrapper.frame_order)
        scales = np.array([_frame_scale(f, wrapper.shared, ds) for f in wrapper.frames], dtype=np.float64)
        slope = scales[order, 0].astype(np.float32)
        inter = scales[order, 1].astype(np.float32)
        scaled = bool(np.any(slope != 1.0) or np.any(inter != 0.0))
        shape = wrapper.image_shape

        def transform(raw: np.ndarray) -> np.ndarray:
            out = raw.reshape(frames, rows, cols).transpose(1, 2, 0)[..., order].astype(np.float32)
            if scaled:
                out = out * slope + inter
            return out.reshape(shape, order="F")

        count = rows * cols * frames
    else:
        return None
    if count * dtype.itemsize > header.pixel_length:
        return None
    recipe = _Recipe(header, dtype, count, transform, np.array(vol.affine), vol.slice_times_s)
    raw = np.frombuffer(buf, dtype=dtype, count=count, offset=header.pixel_offset)
    try:
        _assert_same(Volume(recipe.transform(raw), recipe.affine, acquisition_time(header.times), path,
                            slice_times_s=recipe.slice_times_s), vol)
    except AssertionError:
        return None
    return recipe
