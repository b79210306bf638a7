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

import os
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from rtnf.scanner.nifti import open_regular
from rtnf.scanner.volume import Volume
from ._common import DicomInfo, DicomReadError, acquisition_time, as_float, as_int, dicomwrappers
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
#: Per-file identity, not geometry (name, value representation): which volume and echo a file holds, for the
#: probe's fast path; read from the file itself, not from a referenced image.
_IDENTITY_TAGS = {(0x0020, 0x0013): ("InstanceNumber", b"IS"), (0x0020, 0x0012): ("AcquisitionNumber", b"IS"),
                  (0x0008, 0x0018): ("SOPInstanceUID", b"UI"), (0x0018, 0x0086): ("EchoNumbers", b"IS"),
                  (0x0018, 0x0081): ("EchoTime", b"DS")}
_ALL = {**{t: v for t, v in _SIGNATURE_TAGS.items()}, **{t: (b"DT", b"DA", b"TM") for t in _TIME_TAGS},
        **{t: (vr,) for t, (_, vr) in _IDENTITY_TAGS.items()}}
_EXPLICIT_LE = b"1.2.840.10008.1.2.1\x00"


@dataclass
class _Header:
    signature: tuple
    times: dict[str, str]
    pixel_offset: int
    pixel_length: int
    identity: dict[str, str] = field(default_factory=dict)


_UNDEFINED = 0xFFFFFFFF
_PIXEL_DATA = (0x7FE0, 0x0010)
_LONG_VRS = frozenset((b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"))
_MAX_DEPTH = 16  # nested sequences deeper than this are not walked (the generic path reads the file)


class _Malformed(Exception):
    """The byte walk met something it does not follow; the file goes to the generic path."""


def _walk(buf: bytes, pos: int, end: int, hits: list, depth: int,
          until_delimiter: bool = False) -> tuple[int, tuple[int, int] | None]:
    """Walk Explicit VR Little Endian elements from ``pos`` to ``end`` (or to an item delimiter).

    Appends ``(tag, value, depth)`` of the signature, time and identity elements to ``hits``, descending
    into sequences. Every element and item must end within its container, so each byte is walked once.
    ``until_delimiter``: an undefined-length item, which must close before ``end``. Returns the position
    after the walk and, at the top level, (offset, length) of the pixel data.
    """
    while pos + 8 <= end:
        group, element = struct.unpack_from("<HH", buf, pos)
        if group == 0xFFFE:  # an item delimiter closes the undefined-length item being walked
            if element == 0xE00D and until_delimiter:
                return pos + 8, None
            raise _Malformed
        vr = buf[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            (length,) = struct.unpack_from("<I", buf, pos + 8)
            start = pos + 12
        else:
            (length,) = struct.unpack_from("<H", buf, pos + 6)
            start = pos + 8
        tag = (group, element)
        if tag == _PIXEL_DATA and depth == 0:
            return start, (start, length)
        if vr == b"SQ":
            pos = _walk_sequence(buf, start, length, end, hits, depth + 1)
            continue
        if length == _UNDEFINED or start + length > end:  # e.g. a sequence written as UN; a value overrunning
            raise _Malformed
        if vr in _ALL.get(tag, ()):
            hits.append((tag, buf[start : start + length], depth))
        pos = start + length
    if until_delimiter:
        raise _Malformed  # an undefined-length item without its delimiter
    return pos, None


def _walk_sequence(buf: bytes, start: int, length: int, limit: int, hits: list, depth: int) -> int:
    """Walk the items of a sequence starting at ``start`` within its container's ``limit``; the position after it."""
    if depth > _MAX_DEPTH:
        raise _Malformed
    end = limit if length == _UNDEFINED else start + length
    if end > limit:
        raise _Malformed
    pos = start
    while pos + 8 <= end:
        group, element, item_length = struct.unpack_from("<HHI", buf, pos)
        if (group, element) == (0xFFFE, 0xE0DD) and length == _UNDEFINED:
            return pos + 8
        if (group, element) != (0xFFFE, 0xE000):
            raise _Malformed
        if item_length == _UNDEFINED:
            pos, _ = _walk(buf, pos + 8, end, hits, depth, until_delimiter=True)
        else:
            item_end = pos + 8 + item_length
            if item_end > end:
                raise _Malformed
            _walk(buf, pos + 8, item_end, hits, depth)
            pos = item_end
    if length == _UNDEFINED or pos != end:
        raise _Malformed  # no sequence delimiter; bytes left over that hold no item
    return end


def scan_header(buf: bytes) -> _Header | None:
    """Walk an Explicit VR Little Endian file's elements: geometry signature, times, pixel data position.

    The walk follows the element lengths (into sequences and their items, so per-frame elements of an
    enhanced file count) and skips every other value, such as a Siemens CSA header's 100 kB: 0.1 ms a
    mosaic where a search for the elements' bytes through the header took 1.9 ms. None when the file is
    not Explicit VR Little Endian or the walk meets anything it does not follow (the generic path reads it).
    """
    if _EXPLICIT_LE not in buf[:4096]:  # the transfer syntax is in the file meta group, at the start
        return None
    pos = 132 if buf[128:132] == b"DICM" else 0
    hits: list = []
    try:
        _, pixel = _walk(buf, pos, len(buf), hits, 0)
    except (_Malformed, struct.error):
        return None
    if pixel is None:
        return None
    signature = []
    times: dict[str, str] = {}
    identity: dict[str, str] = {}
    for tag, value, depth in hits:
        if tag in _TIME_TAGS:
            if depth == 0:  # the file's own, as pydicom's top-level values the generic path reads
                times.setdefault(_TIME_TAGS[tag], value.decode("ascii", "replace").strip("\x00 "))
        elif tag in _IDENTITY_TAGS:
            if depth == 0:  # the file's own, not a referenced image's
                identity.setdefault(_IDENTITY_TAGS[tag][0], value.decode("ascii", "replace").strip("\x00 "))
        else:
            signature.append((tag, value))
    if ((0x0002, 0x0010), _EXPLICIT_LE) not in signature:
        return None
    return _Header(tuple(signature), times, pixel[0], pixel[1], identity)


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
        self._refused: dict[tuple, None] = {}  # bounded, as the recipes (see _keep)
        self._probed: dict[tuple, tuple[DicomInfo, int, int]] = {}  # signature -> (info, pixel bytes, pixel offset)
        self.stats = {"fast": 0, "generic": 0}
        self.fast_probes = 0

    def remember_probe(self, info: DicomInfo) -> None:
        """Keep a complete mosaic/enhanced file's probe: later files of its series are probed by :meth:`probe`."""
        if info.kind not in ("mosaic", "enhanced") or not info.usable or info.path.name.endswith(".gz"):
            return
        found = _header_of(info.path, _MAX_HEADER_BYTES)
        if found is not None and found[0].signature not in self._probed:
            _keep(self._probed, found[0].signature, (info, found[0].pixel_length, found[0].pixel_offset))

    def probe(self, path: Path) -> DicomInfo | None:
        """The probe of a later file of a remembered series from its header walk, or None (use the generic probe).

        A file whose walk gives a remembered series' signature (geometry, matrix, transfer syntax, ...) and
        its pixel data length, all present, is complete; its own number, identity, echo and time come from
        its header. pydicom's full parse of a Siemens header took 1.4 ms of every volume's detection. Only
        the header is read (up to twice the remembered headers' size; the file's size says whether the
        pixel data are all there).
        """
        if not self._probed or path.name.endswith(".gz"):
            return None
        found = _header_of(path, 2 * max(offset for _, _, offset in self._probed.values()) + 4096)
        if found is None:
            return None
        header, size = found
        known = self._probed.get(header.signature)
        if known is None or header.pixel_length != known[1] or header.pixel_offset + header.pixel_length > size:
            return None
        ident = header.identity
        instance, acq = as_int(ident.get("InstanceNumber")), as_int(ident.get("AcquisitionNumber"))
        self.fast_probes += 1
        return replace(known[0], path=path, volume_number=instance if instance is not None else acq,
                       instance_number=instance, acquisition_number=acq, sop_uid=ident.get("SOPInstanceUID") or None,
                       echo_number=as_int(ident.get("EchoNumbers")), echo_time_ms=as_float(ident.get("EchoTime")),
                       t_acquired=acquisition_time(header.times))

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
                _keep(self._refused, header.signature, None)
            else:
                _keep(self._recipes, header.signature, recipe)
        return vol


_MAX_HEADER_BYTES = 1 << 20  # a header longer than 1 MiB is not remembered (Siemens mosaics: ~130 kB)
_MAX_SERIES = 8  # signatures remembered at once (slice tracking gives every volume a new one)


def _header_of(path: Path, max_bytes: int) -> tuple[_Header, int] | None:
    """The header walk of the first ``max_bytes`` of ``path`` and the file's size, None when it does not walk."""
    try:
        with open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size
            buf = f.read(max_bytes)
    except OSError:
        return None
    header = scan_header(buf)
    return None if header is None else (header, size)


def _keep(table: dict, key: Any, value: Any) -> None:
    """Add to a bounded table, dropping the oldest entry beyond :data:`_MAX_SERIES`."""
    table[key] = value
    while len(table) > _MAX_SERIES:
        del table[next(iter(table))]


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
