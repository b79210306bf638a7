"""The per-series fast path equals the generic path, and falls back whenever a header differs."""

from __future__ import annotations

import numpy as np
import pytest

from rtnf.scanner.dicom import DicomReadError, SeriesReader, read_volume
from tests.helpers import requires_shared_data
from tests.test_dicom_support import PARTIAL, PYNEAL, ZOO


@requires_shared_data("pyneal-series")
def test_mosaic_series_fast_equals_generic():
    reader = SeriesReader(verify=True)  # every fast read is compared with read_volume
    files = sorted((PYNEAL / "siemens-prisma-e11-mosaic").glob("*.dcm"))
    for f in files:
        assert reader.read(f).data.shape == (64, 64, 18)
    assert reader.stats == {"fast": 59, "generic": 1}


@requires_shared_data("dicom-zoo")
@pytest.mark.parametrize("folder", ["siemens_enhanced_XA30_fmri_noCSA", "siemens_enhanced_XA10_noCSA",
                                    "siemens_mosaic_prisma_VD13_ep2d_HF", "siemens_mosaic_skyra_E11_rtcloud",
                                    "siemens_mosaic_prisma_VD13_cmrr_multiband"])
def test_zoo_series_fast_equals_generic(folder):
    reader = SeriesReader(verify=True)
    files = sorted((ZOO / folder).glob("*.dcm"))
    for f in files:
        reader.read(f)
    assert reader.stats == {"fast": len(files) - 1, "generic": 1}


def _patch_ipp(data: bytes) -> bytes:
    """Change one digit of the first ImagePositionPatient value (same length)."""
    i = data.find(b"\x20\x00\x32\x00DS") + 8
    j = next(k for k in range(i, i + 20) if data[k:k + 1].isdigit())
    digit = b"1" if data[j:j + 1] != b"1" else b"2"
    return data[:j] + digit + data[j + 1:]


@requires_shared_data("pyneal-series")
def test_fast_path_falls_back_on_changed_geometry_or_truncation(tmp_path):
    files = sorted((PYNEAL / "siemens-prisma-e11-mosaic").glob("*.dcm"))
    reader = SeriesReader()
    reader.read(files[0])
    moved = tmp_path / "moved.dcm"
    moved.write_bytes(_patch_ipp(files[1].read_bytes()))
    vol = reader.read(moved)
    assert reader.stats == {"fast": 0, "generic": 2}
    np.testing.assert_array_equal(vol.affine, read_volume(moved).affine)
    assert not np.allclose(vol.affine, read_volume(files[1]).affine)
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(files[2].read_bytes()[:-1000])
    with pytest.raises(DicomReadError, match="cut.dcm"):
        reader.read(cut)
    assert reader.read(files[3]).data.shape == (64, 64, 18) and reader.stats["fast"] == 1


@requires_shared_data("partial-write")
def test_fast_path_on_truncated_file_raises():
    reader = SeriesReader()
    reader.read(PARTIAL / "001_000013_000005.dcm")
    with pytest.raises(DicomReadError, match="trunc_001_000013_000005.dcm"):
        reader.read(PARTIAL / "trunc_001_000013_000005.dcm")


@requires_shared_data("dicom-zoo")
def test_header_walk_finds_the_pixel_data_not_an_overlay_before_it():
    """The byte search took the first OW element header, an overlay's (6000,3000) here, for the pixel data."""
    import pydicom

    from rtnf.scanner.dicom.fast import scan_header

    path = ZOO / "siemens_classic_noCSA" / "MR-SIEMENS-DICOM-WithOverlays.dcm"
    buf = path.read_bytes()
    header = scan_header(buf)
    pixels = pydicom.dcmread(path).PixelData
    assert header is not None and header.pixel_length == len(pixels)
    assert buf[header.pixel_offset : header.pixel_offset + header.pixel_length] == pixels
    assert header.pixel_offset + header.pixel_length == len(buf)  # the pixel data ends the file
    assert buf[header.pixel_offset - 12 : header.pixel_offset - 8] == b"\xe0\x7f\x10\x00"


@requires_shared_data("pyneal-series")
@pytest.mark.parametrize("damage", ["truncated header", "item outside a sequence", "endless sequence", "garbage"])
def test_header_walk_gives_up_on_damaged_headers(damage):
    """A header the walk cannot follow goes to the generic path (None), never an exception or a wrong offset."""
    from rtnf.scanner.dicom.fast import scan_header

    buf = bytearray(sorted(PYNEAL.rglob("*.dcm"))[0].read_bytes())
    good = scan_header(bytes(buf))
    assert good is not None
    if damage == "truncated header":
        buf = buf[: good.pixel_offset // 2]
    elif damage == "item outside a sequence":
        buf[good.pixel_offset - 12 : good.pixel_offset - 8] = b"\xfe\xff\x00\xe0"
    elif damage == "endless sequence":  # an undefined-length SQ right after the meta group, never closed
        buf[good.pixel_offset - 12 :] = b"\x08\x00\x40\x11SQ\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    else:
        buf[400:] = np.random.default_rng(0).integers(0, 256, len(buf) - 400, dtype=np.uint8).tobytes()
    assert scan_header(bytes(buf)) is None


def _probe_series(files):
    """Each file's fast probe (None until the series is remembered) and generic probe."""
    from rtnf.scanner.dicom import probe

    reader = SeriesReader()
    out = []
    for path in files:
        fast = reader.probe(path)
        generic = probe(path)
        reader.remember_probe(generic)
        out.append((fast, generic))
    return reader, out


@requires_shared_data("pyneal-series")
def test_fast_probe_equals_the_generic_probe_on_a_mosaic_series():
    files = sorted((PYNEAL / "siemens-prisma-e11-mosaic").glob("*.dcm"))
    reader, probes = _probe_series(files)
    assert probes[0][0] is None and reader.fast_probes == len(files) - 1
    for fast, generic in probes[1:]:
        assert fast == generic


@requires_shared_data("dicom-zoo")
@pytest.mark.parametrize("folder", [p.name for p in sorted(ZOO.glob("*")) if p.is_dir()] if ZOO.is_dir() else [])
def test_fast_probe_equals_the_generic_probe_on_every_zoo_series(folder):
    files = sorted(p for p in (ZOO / folder).rglob("*") if p.is_file() and not p.name.endswith((".json", ".md", ".txt")))
    _, probes = _probe_series(files)
    for fast, generic in probes:
        assert fast is None or fast == generic, (fast, generic)


@requires_shared_data("pyneal-series")
def test_fast_probe_leaves_a_truncated_or_foreign_file_to_the_generic_probe(tmp_path):
    files = sorted((PYNEAL / "siemens-prisma-e11-mosaic").glob("*.dcm"))
    reader, _ = _probe_series(files[:1])
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(files[1].read_bytes()[:-100])
    other = tmp_path / "other.dcm"
    data = bytearray(files[1].read_bytes())
    data[-100:] = b"\x00" * 100
    other.write_bytes(bytes(data))
    assert reader.probe(cut) is None  # incomplete: the generic probe says why
    assert reader.probe(other).volume_number == 2  # complete, same series: only pixel values differ
    huge = tmp_path / "huge.dcm"
    huge.write_bytes(files[1].read_bytes() + b"\x00" * (3 * files[1].stat().st_size))
    from rtnf.scanner.dicom import probe

    assert reader.probe(huge) == probe(huge)  # trailing bytes: complete for both; only the header is read


@requires_shared_data("pyneal-series")
def test_series_tables_stay_bounded_when_every_volume_has_a_new_geometry(tmp_path):
    """Slice tracking (PACE) moves ImagePositionPatient every volume: each file is a new signature."""
    import pydicom

    from rtnf.scanner.dicom import probe

    files = sorted((PYNEAL / "siemens-prisma-e11-mosaic").glob("*.dcm"))[:12]
    reader = SeriesReader()
    for k, path in enumerate(files):
        ds = pydicom.dcmread(path)
        ds.ImagePositionPatient = [float(v) + 0.1 * k for v in ds.ImagePositionPatient]
        moved = tmp_path / path.name
        ds.save_as(moved)
        reader.remember_probe(probe(moved))
        reader.read(moved)
    assert len(reader._probed) <= 8 and len(reader._recipes) + len(reader._refused) <= 16
