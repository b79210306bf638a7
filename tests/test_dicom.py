"""rtnf.scanner.dicom on real scanner files: every variant gives dcm2niix's volume, or a clear error."""

from __future__ import annotations

import random
import shutil
import warnings

import nibabel as nib
import numpy as np
import pytest

from rtnf.scanner.dicom import DicomReadError, SliceAssembler, UnsupportedDicomError, read_volume, read_volumes
from rtnf.scanner.dicom import probe
from rtnf.scanner.nifti import VolumeReadError
from tests.helpers import requires_shared_data
from tests.test_dicom_support import (
    FORREST,
    PARTIAL,
    PYNEAL,
    ZOO,
    canonical,
    dcm2niix,
    forrest_volume,
    ge_pyneal_volume,
    reference_volumes,
    resolve,
    volume_cases,
)

needs_dcm2niix = pytest.mark.skipif(shutil.which("dcm2niix") is None, reason="dcm2niix not installed (apt-get install dcm2niix)")

CASES = volume_cases()
# PAR/REC dumps: Debian's dcm2niix v1.0.20220720 refuses them ("maxNumberOfMixes > 1", "Unknown type 17")
DCM2NIIX_CASES = [name for name in CASES if "parrec" not in name]


def _matches(ours: np.ndarray, ref: np.ndarray) -> bool:
    """Identical voxel values, allowing dcm2niix's own linear scaling (Philips precise-float, field map Hz)."""
    if np.allclose(ours, ref, rtol=1e-5, atol=1e-3):
        return True
    if np.ptp(ours) == 0:
        return False
    a, b = np.polyfit(ours.ravel().astype(np.float64), ref.ravel().astype(np.float64), 1)
    residual = np.abs(a * ours.astype(np.float64) + b - ref).max()
    return bool(residual <= 1e-4 * max(np.ptp(ref), 1e-12) + 1e-3)


@requires_shared_data("dicom-zoo")
@needs_dcm2niix
@pytest.mark.parametrize("name", DCM2NIIX_CASES)
def test_agrees_with_dcm2niix(name, tmp_path):
    files = resolve(CASES[name])
    volumes = read_volumes(files)
    refs = list(reference_volumes(dcm2niix(files, tmp_path)))
    for k, vol in enumerate(volumes):
        assert vol.data.dtype == np.float32 and vol.data.ndim == 3
        data, affine = canonical(vol.data, vol.affine)
        same_grid = [(rd, rn) for rd, ra, rn in refs if rd.shape == data.shape and np.allclose(ra, affine, atol=1e-3)]
        assert same_grid, (f"{name} volume {k}: no dcm2niix output on the same grid; ours {data.shape}\n{affine}\n"
                           + "\n".join(f"{rn} {rd.shape}\n{ra}" for rd, ra, rn in refs))
        assert any(_matches(data, rd) for rd, _ in same_grid), f"{name} volume {k}: voxel values differ from dcm2niix"


@requires_shared_data("dicom-zoo")
def test_head_to_foot_mosaic_matches_upstream_reference():
    """dcm_qa's own dcm2niix NIfTI of the head-to-foot ep2d series (slice order reversed in the mosaic)."""
    folder = ZOO / "siemens_mosaic_prisma_VD13_ep2d_HF"
    ref = nib.load(folder / "ep2d_Asc_HF.nii.gz")
    for k, f in enumerate(sorted(folder.glob("IM-*.dcm"))):
        vol = read_volume(f)
        d, a = canonical(vol.data, vol.affine)
        rd, ra = canonical(np.asarray(ref.dataobj)[..., k], ref.affine)
        np.testing.assert_allclose(a, ra, atol=1e-3)
        np.testing.assert_array_equal(d, rd)


@requires_shared_data("dicom-zoo")
@pytest.mark.parametrize("name", ["philips_parrec_zoo", "philips_parrec_pyneal"])
def test_parrec_dump(name):
    par = CASES[name][0]
    info = probe(par)
    assert info.kind == "parrec" and info.complete and info.volume_number == 1
    vol = read_volume(par)
    n = info.n_slices
    assert vol.data.shape == (80, 80, n) and vol.data.dtype == np.float32
    # voxel size 3 mm in-plane, slice gap from the PAR's slice thickness + gap, axis-aligned
    np.testing.assert_allclose(np.sort(np.abs(vol.affine[:3, :3]).max(axis=0))[:2], [3.0, 3.0], atol=1e-3)
    # first image type only: the 2 types x n slices of the REC give two volumes in read_volumes
    both = read_volumes(par)
    assert len(both) == 2
    np.testing.assert_array_equal(both[0].data, vol.data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        img = nib.parrec.load(par, strict_sort=True)
    types = img.header.get_volume_labels()["image_type_mr"]
    assert list(types) == [16, 17]  # 16 (magnitude-like, DV >= 0) first, 17 (phase-like, -3142..3142) second
    np.testing.assert_allclose(vol.data, np.asarray(img.dataobj)[..., 0], rtol=1e-6)
    assert vol.data.min() >= 0
    np.testing.assert_allclose(vol.affine, img.affine)


@requires_shared_data("dicom-zoo")
def test_jpeg_ls_without_decoder_is_a_clear_error():
    f = ZOO / "enhanced_mr_generic_pydicom" / "emri_small_jpeg_ls_lossless.dcm"
    info = probe(f)
    assert info.complete  # every byte is there ...
    assert info.problem is not None and "JPEG-LS" in info.problem and not info.usable  # ... but it cannot be decoded
    with pytest.raises(UnsupportedDicomError, match=r"emri_small_jpeg_ls_lossless\.dcm.*JPEG-LS.*decoder"):
        read_volume(f)


@requires_shared_data("dicom-zoo")
def test_enhanced_without_geometry_is_a_clear_error():
    f = ZOO / "enhanced_mr_generic_pydicom" / "emri_small.dcm"
    assert probe(f).problem is not None
    with pytest.raises(UnsupportedDicomError, match=r"emri_small\.dcm.*no slice geometry"):
        read_volume(f)


@requires_shared_data("dicom-zoo")
def test_header_only_mosaic_is_incomplete():
    """nibabel's csa_slice_norm.dcm has its pixel data stripped: never complete, a clear error to read."""
    f = ZOO / "siemens_mosaic_dwi_trio_B17_nibabel" / "csa_slice_norm.dcm"
    info = probe(f)
    assert info.kind == "mosaic" and info.n_slices == 32 and not info.complete and "pixel data" in info.problem
    with pytest.raises(DicomReadError, match=r"csa_slice_norm\.dcm.*PixelData"):
        read_volume(f)


@requires_shared_data("dicom-zoo")
def test_multivolume_enhanced_needs_read_volumes():
    f = ZOO / "philips_enhanced_multiframe" / "IM_0027_fMAP.dcm"
    assert len(read_volumes(f)) == 2
    with pytest.raises(DicomReadError, match=r"IM_0027_fMAP\.dcm: holds 2 volumes; use rtnf\.scanner\.dicom\.read_volumes"):
        read_volume(f)


@requires_shared_data("partial-write")
def test_truncated_file():
    trunc = PARTIAL / "trunc_001_000013_000005.dcm"
    info = probe(trunc)  # never raises
    assert info.complete is False and "truncated" in info.problem and info.kind == "mosaic"
    with pytest.raises(DicomReadError, match=r"trunc_001_000013_000005\.dcm: truncated") as exc:
        read_volume(trunc)
    assert isinstance(exc.value, VolumeReadError)
    full = probe(PARTIAL / "001_000013_000005.dcm")
    assert full.complete and full.usable and full.volume_number == 5 and full.shape == (64, 64, 27)


def test_probe_never_raises_on_foreign_or_cut_files(tmp_path):
    cases = {"empty.dcm": b"", "text.dcm": b"hello world\n" * 100, "preamble_only.dcm": b"\0" * 128 + b"DICM"}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        info = probe(tmp_path / name)
        assert not info.complete and info.problem and not info.usable
        with pytest.raises(DicomReadError, match=name):
            read_volume(tmp_path / name)
    info = probe(tmp_path / "missing.dcm")
    assert not info.complete and "missing.dcm" in info.problem


@requires_shared_data("partial-write")
def test_probe_on_every_cut_of_a_mosaic(tmp_path):
    """A file being written: every prefix is incomplete (never an exception), the whole file complete."""
    data = (PARTIAL / "001_000013_000005.dcm").read_bytes()
    f = tmp_path / "growing.dcm"
    for cut in list(range(0, 4000, 397)) + list(range(4000, len(data), 20011)) + [len(data) - 1]:
        f.write_bytes(data[:cut])
        assert probe(f).complete is False, cut
    f.write_bytes(data)
    assert probe(f).complete


@requires_shared_data("pyneal-series")
def test_pyneal_mosaic_series():
    files = sorted((PYNEAL / "siemens-prisma-e11-mosaic").glob("*.dcm"))
    assert len(files) == 60
    for k, f in enumerate(files[:5], start=1):
        info = probe(f)
        assert (info.kind, info.volume_number, info.n_slices, info.shape, info.series_number) == ("mosaic", k, 18, (64, 64, 18), 13)
        assert info.t_acquired is None  # AcquisitionTime is empty in this anonymised series
        vol = read_volume(f)
        assert vol.data.shape == (64, 64, 18)
        np.testing.assert_allclose(np.linalg.norm(vol.affine[:3, :3], axis=0), [3.0, 3.0, 3.8], atol=1e-3)


@requires_shared_data("studyforrest-localizer")
def test_studyforrest_first_volume():
    files = forrest_volume(1)
    assert len(files) == 35
    infos = [probe(f) for f in files]
    assert {i.n_slices for i in infos} == {35} and {i.kind for i in infos} == {"slice"}
    vol = read_volume(files)
    assert vol.data.shape == (80, 80, 35)
    np.testing.assert_allclose(np.linalg.norm(vol.affine[:3, :3], axis=0), [3.0, 3.0, 3.3], atol=1e-3)
    assert vol.t_acquired == pytest.approx(min(i.t_acquired for i in infos))
    # order of the files given does not matter
    shuffled = list(files)
    random.Random(0).shuffle(shuffled)
    np.testing.assert_array_equal(read_volume(shuffled).data, vol.data)


@requires_shared_data("studyforrest-localizer")
def test_assembler_studyforrest_shuffled():
    files = sorted(FORREST.iterdir())
    assert len(files) == 2730
    random.Random(1).shuffle(files)
    assembler = SliceAssembler()
    volumes = {}
    for f in files:
        info = probe(f)
        out = assembler.add(f, info)
        if out is not None:
            v = info.volume_number
            assert v not in volumes
            volumes[v] = out
    assert sorted(volumes) == list(range(1, 79))
    assert all(len(v) == 35 for v in volumes.values())
    assert assembler.pending() == {} and assembler.ignored == []
    # each returned list is one temporal position, sorted by slice position
    pos = [probe(p).slice_position for p in volumes[40]]
    assert pos == sorted(pos) and {probe(p).volume_number for p in volumes[40]} == {40}


@requires_shared_data("pyneal-series")
def test_assembler_ge_series_and_duplicates():
    files = sorted((PYNEAL / "ge-mr750-slices").iterdir())
    assembler = SliceAssembler()
    done = []
    rng = random.Random(2)
    # slices of each volume shuffled, volumes in order, one slice delivered twice
    for v in range(1, 61):
        vol_files = ge_pyneal_volume(v)
        rng.shuffle(vol_files)
        for f in vol_files:
            out = assembler.add(f, probe(f))
            if out is not None:
                done.append(out)
        if v == 3:
            assert assembler.add(vol_files[0], probe(vol_files[0])) is None
    assert len(done) == 60 and all(len(d) == 18 for d in done)
    assert [sorted(d) == sorted(ge_pyneal_volume(k + 1)) for k, d in enumerate(done)] == [True] * 60
    assert len(assembler.ignored) == 1 and "already complete" in assembler.ignored[0][1]
    assert len(files) == 1080


@requires_shared_data("dicom-zoo")
def test_assembler_learns_slice_count_when_header_lacks_it():
    """GE zoo series with the slice count hidden: learned when volume 2 starts (volume 1 released then)."""
    import dataclasses

    files = sorted((ZOO / "ge_discovery_mr750_epi_slices").glob("*.dcm"))
    infos = [dataclasses.replace(probe(f), n_slices=None) for f in files]
    assembler = SliceAssembler()
    outs = [assembler.add(f, i) for f, i in zip(files, infos)]
    released = [(k, o) for k, o in enumerate(outs) if o is not None]
    # volume 1 at volume 2's first slice (index 15), volume 2 on its own last slice once the count is learned
    assert [k for k, _ in released] == [15, 29] and [len(o) for _, o in released] == [15, 15]
    assert released[0][1] == files[:15] and released[1][1] == files[15:]
    assert assembler.pending() == {}
    # a single volume never completes without a count
    assembler = SliceAssembler()
    assert [assembler.add(f, i) for f, i in zip(files[:15], infos[:15])] == [None] * 15
    assert assembler.pending() == {(infos[0].series_uid, 1): 15}
    # with the constructor's count both volumes complete on their last slice
    assembler = SliceAssembler(n_slices=15)
    outs = [assembler.add(f, i) for f, i in zip(files, infos)]
    assert [k for k, o in enumerate(outs) if o is not None] == [14, 29]
    # duplicate file (same position, other path) ignored with a reason
    assembler = SliceAssembler(n_slices=15)
    assembler.add(files[0], infos[0])
    assert assembler.add(files[1], dataclasses.replace(infos[1], slice_position=infos[0].slice_position)) is None
    assert "duplicate slice" in assembler.ignored[0][1]


@requires_shared_data("dicom-zoo")
def test_every_zoo_file_reads_or_fails_clearly():
    """Every DICOM/PAR file of the zoo: a volume, or an rtnf error naming the file."""
    seen = 0
    for f in sorted(ZOO.rglob("*")):
        if not f.is_file() or f.suffix in (".txt", ".json", ".rec") or f.name.endswith(".nii.gz"):
            continue
        seen += 1
        info = probe(f)
        try:
            vols = read_volumes(f)
        except VolumeReadError as exc:
            assert f.name in str(exc)
            assert not info.usable
            continue
        assert info.usable, f
        for v in vols:
            assert v.data.ndim == 3 and np.isfinite(v.affine).all() and np.isfinite(v.data).all()
    assert seen >= 30


@requires_shared_data("dicom-zoo")
def test_probe_fields_and_times():
    xa30 = sorted((ZOO / "siemens_enhanced_XA30_fmri_noCSA").glob("*.dcm"))
    a, b = probe(xa30[0]), probe(xa30[1])
    assert (a.kind, a.volume_number, b.volume_number, a.n_slices, a.shape) == ("enhanced", 1, 2, 33, (64, 64, 33))
    assert b.t_acquired - a.t_acquired == pytest.approx(1.0)  # AcquisitionDateTime ...120905.225 / ...120906.225
    assert a.series_number == 7 and a.series_uid
    vol = read_volume(xa30[0])
    assert vol.t_acquired == a.t_acquired
    ge = sorted((ZOO / "ge_discovery_mr750_epi_slices").glob("*.dcm"))
    infos = [probe(f) for f in ge]
    assert [i.volume_number for i in infos] == [1] * 15 + [2] * 15  # derived: (InstanceNumber - 1) // 15 + 1
    assert infos[1].slice_position - infos[0].slice_position == pytest.approx(5.0)
