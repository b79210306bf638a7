"""scanner_sim's DICOM formats: Siemens mosaic and one file per slice, checked against nibabel, pydicom, dcm2niix."""

from __future__ import annotations

import csv
import shutil
import subprocess
import time
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from scanner_sim import cli
from scanner_sim.dicom_writer import encode_csa2, geometry_from_affine, stored_volume
from scanner_sim.phantom import make_phantom
from scanner_sim.spec import RunSpec, SpecError
from scanner_sim.synth import SyntheticRun
from scanner_sim.writer import ScannerWriter

pytestmark = pytest.mark.filterwarnings("ignore:The DICOM readers are highly experimental")

SHAPE = (40, 44, 18)
LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _rot(axis: int, a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    m = np.eye(3)
    i, j = [k for k in range(3) if k != axis]
    m[i, i] = m[j, j] = c
    m[i, j], m[j, i] = -s, s
    return m


def _oblique() -> np.ndarray:
    aff = np.eye(4)
    aff[:3, :3] = _rot(0, 0.25) @ _rot(2, -0.15) @ np.diag([4.0, 3.5, 5.0])
    aff[:3, 3] = (-78.0, -95.0, -35.0)
    return aff


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(SHAPE, affine=_oblique())


def _spec(fmt: str, **kw) -> RunSpec:
    d = dict(tr_s=1.2, n_volumes=2, shape=list(SHAPE), series=3, seed=2, noise_pct=1.0, format=fmt,
             affine=[list(r) for r in _oblique()])
    d.update(kw)
    return RunSpec.from_dict(d)


def _files(truth: Path) -> list[dict[str, str]]:
    with open(truth / "files.tsv", newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def _canonical(data: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    return nib.as_closest_canonical(nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine))


def _assert_same_volume(data, affine, expected, expected_affine, atol_mm=1e-3):
    got, ref = _canonical(data, affine), _canonical(expected, expected_affine)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got.affine, ref.affine, atol=atol_mm)
    np.testing.assert_array_equal(got.get_fdata(), ref.get_fdata())


def _dcm2niix(folder: Path, out: Path) -> nib.Nifti1Image:
    out.mkdir()
    res = subprocess.run(["dcm2niix", "-z", "n", "-f", "vol", "-o", str(out), str(folder)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    made = sorted(out.glob("*.nii"))
    assert [p.name for p in made] == ["vol.nii"], res.stdout
    return nib.load(made[0])


needs_dcm2niix = pytest.mark.skipif(shutil.which("dcm2niix") is None,
                                    reason="dcm2niix not installed (apt-get install dcm2niix)")


# --------------------------------------------------------------------------- geometry / CSA units
def test_geometry_default_axial_is_siemens_like():
    from scanner_sim.phantom import default_affine

    geo = geometry_from_affine(default_affine((64, 64, 36), 3.0), (64, 64, 36))
    assert geo.iop == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)  # Siemens' usual axial orientation
    np.testing.assert_allclose(geo.normal, [0, 0, 1])
    assert list(geo.k_of_slice) == list(range(36))
    # a left-handed affine is stored with slices reversed so they still ascend along the normal
    flipped = np.diag([-3.0, 3.0, 3.0, 1.0])
    assert list(geometry_from_affine(flipped, (8, 8, 5)).k_of_slice) == [4, 3, 2, 1, 0]
    sheared = np.eye(4)
    sheared[0, 1] = 0.5
    with pytest.raises(ValueError, match="'affine'.*orthogonal"):
        geometry_from_affine(sheared, (8, 8, 5))


def test_csa2_round_trip_through_nibabel():
    from nibabel.nicom import csareader

    blob = encode_csa2([("NumberOfImagesInMosaic", "US", [36]), ("SliceNormalVector", "FD", [0.0, 0.1, 0.99]),
                        ("AcquisitionMatrixText", "SH", ["64*64"]),
                        ("MosaicRefAcqTimes", "FD", [k * 27.5 for k in range(36)])])
    hdr = csareader.read(blob)
    assert hdr["type"] == 2 and hdr["n_tags"] == 4
    assert csareader.get_n_mosaic(hdr) == 36
    np.testing.assert_allclose(csareader.get_slice_normal(hdr), [0.0, 0.1, 0.99])
    assert csareader.get_acq_mat_txt(hdr) == "64*64"
    np.testing.assert_allclose(hdr["tags"]["MosaicRefAcqTimes"]["items"], [k * 27.5 for k in range(36)])


# --------------------------------------------------------------------------- mosaic
@pytest.fixture(scope="module")
def mosaic_run(phantom, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mosaic")
    spec = _spec("siemens-mosaic")
    run = SyntheticRun(spec, phantom=phantom)
    ScannerWriter(tmp / "export", spec, n_chunks=2, chunk_delay_s=0.0, speed=20.0).write_run(run, tmp / "truth")
    return run, tmp


def test_mosaic_names_and_dicom_header(mosaic_run):
    run, tmp = mosaic_run
    rows = _files(tmp / "truth")
    assert [Path(r["path"]).name for r in rows] == ["001_000003_000001.dcm", "001_000003_000002.dcm"]
    for i, row in enumerate(rows):
        ds = pydicom.dcmread(row["path"])
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4"  # MR Image Storage
        assert ds.Manufacturer == "SIEMENS" and "MOSAIC" in ds.ImageType
        assert ds.SeriesNumber == 3 and ds.InstanceNumber == i + 1 and ds.AcquisitionNumber == i + 1
        assert float(ds.RepetitionTime) == pytest.approx(1200.0)
        # AcquisitionTime: local time of the nominal acquisition start (files.tsv t_acquired)
        t = float(row["t_acquired"])
        assert ds.AcquisitionDate == time.strftime("%Y%m%d", time.localtime(t))
        hms = ds.AcquisitionTime
        secs = int(hms[:2]) * 3600 + int(hms[2:4]) * 60 + float(hms[4:])
        lt = time.localtime(t)
        assert secs == pytest.approx(lt.tm_hour * 3600 + lt.tm_min * 60 + lt.tm_sec + t % 1, abs=1e-5)
        assert ds.Rows == SHAPE[1] * 5 and ds.Columns == SHAPE[0] * 5  # 18 slices on a 5 x 5 mosaic
        assert ds[0x0019, 0x100A].value == SHAPE[2]
        assert len(ds[0x0019, 0x1029].value) == SHAPE[2]  # MosaicRefAcqTimes


def test_mosaic_read_by_nibabel_matches_phantom(mosaic_run):
    from nibabel.nicom import csareader
    from nibabel.nicom.dicomwrappers import MosaicWrapper, wrapper_from_file

    run, tmp = mosaic_run
    geo = geometry_from_affine(run.affine, SHAPE)
    for i, row in enumerate(_files(tmp / "truth")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # nibabel's "experimental readers" notice
            w = wrapper_from_file(row["path"])
        assert isinstance(w, MosaicWrapper) and w.n_mosaic == SHAPE[2]
        assert csareader.get_acq_mat_txt(w.csa_header) == f"{SHAPE[1]}*{SHAPE[0]}"
        np.testing.assert_allclose(csareader.get_slice_normal(w.csa_header), geo.normal, atol=1e-7)
        expected = stored_volume(run.volume(i), "siemens-mosaic")
        _assert_same_volume(w.get_data(), LPS @ w.affine, expected, run.affine)


@needs_dcm2niix
def test_mosaic_dcm2niix_agrees(mosaic_run, tmp_path):
    run, tmp = mosaic_run
    src = tmp_path / "one"
    src.mkdir()
    shutil.copy(_files(tmp / "truth")[1]["path"], src)
    img = _dcm2niix(src, tmp_path / "out")
    _assert_same_volume(img.get_fdata(), img.affine, stored_volume(run.volume(1), "siemens-mosaic"), run.affine)


# --------------------------------------------------------------------------- slices
@pytest.fixture(scope="module")
def slice_run(phantom, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("slices")
    spec = _spec("dicom-slices", tr_s=1.8)
    run = SyntheticRun(spec, phantom=phantom)
    ScannerWriter(tmp / "export", spec, n_chunks=1, chunk_delay_s=0.0, speed=3.0, recon_delay_s=0.0).write_run(
        run, tmp / "truth")
    return run, tmp


def test_slices_names_headers_and_spread_over_tr(slice_run):
    run, tmp = slice_run
    rows = _files(tmp / "truth")
    nk = SHAPE[2]
    assert len(rows) == 2 * nk
    assert [Path(r["path"]).name for r in rows] == [f"MR0003_{k:06d}.dcm" for k in range(1, 2 * nk + 1)]
    period = 1.8 / 3.0
    for v in range(2):
        vr = [r for r in rows if r["volume"] == str(v)]
        assert [int(r["slice"]) for r in vr] == list(range(nk))
        starts = np.array([float(r["t_write_start"]) for r in vr])
        acq = np.array([float(r["t_acquired"]) for r in vr])
        # acquired and written one slice time apart, spread over the TR, not all at once
        np.testing.assert_allclose(np.diff(acq), period / nk, atol=1e-5)
        assert np.median(np.abs(np.diff(starts) - period / nk)) < 0.01
        assert starts[-1] - starts[0] > 0.8 * period
        for s in (0, nk - 1):
            ds = pydicom.dcmread(vr[s]["path"])
            assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4"
            assert ds.InstanceNumber == v * nk + s + 1
            assert ds.TemporalPositionIdentifier == v + 1 and ds.NumberOfTemporalPositions == 2
            assert ds.AcquisitionNumber == v + 1 and ds.SeriesNumber == 3
            assert float(ds.SliceThickness) == pytest.approx(5.0)
            assert ds.PatientName == "Sim^Phantom"  # fake identifying values, for privacy tests
            hms = ds.AcquisitionTime
            lt = time.localtime(acq[s])
            secs = int(hms[:2]) * 3600 + int(hms[2:4]) * 60 + float(hms[4:])
            assert secs == pytest.approx(lt.tm_hour * 3600 + lt.tm_min * 60 + lt.tm_sec + acq[s] % 1, abs=1e-5)


def test_slices_stacked_with_nibabel_match_phantom(slice_run):
    from nibabel.nicom.dicomwrappers import wrapper_from_file

    run, tmp = slice_run
    rows = [r for r in _files(tmp / "truth") if r["volume"] == "1"]
    ws = [wrapper_from_file(r["path"]) for r in rows]
    ws.sort(key=lambda w: w.slice_indicator)  # readers order slices by position along the normal
    data = np.stack([w.get_data() for w in ws], axis=-1)
    aff = ws[0].affine.copy()
    ipp = np.array([w.image_position for w in ws])
    aff[:3, 2] = (ipp[-1] - ipp[0]) / (len(ws) - 1)
    _assert_same_volume(data, LPS @ aff, stored_volume(run.volume(1), "dicom-slices"), run.affine)


@needs_dcm2niix
def test_slices_dcm2niix_agrees(slice_run, tmp_path):
    run, tmp = slice_run
    src = tmp_path / "vol0"
    src.mkdir()
    for r in _files(tmp / "truth"):
        if r["volume"] == "0":
            shutil.copy(r["path"], src)
    img = _dcm2niix(src, tmp_path / "out")
    _assert_same_volume(img.get_fdata(), img.affine, stored_volume(run.volume(0), "dicom-slices"), run.affine)


# --------------------------------------------------------------------------- spec and CLI
def test_format_spec_keys_and_errors():
    spec = RunSpec.from_dict({"tr_s": 1.0, "n_volumes": 3, "format": "siemens-mosaic", "series": 13})
    assert spec.filename(4) == "001_000013_000005.dcm"
    spec = RunSpec.from_dict({"tr_s": 1.0, "n_volumes": 3, "format": "dicom-slices", "shape": [8, 8, 4],
                              "filename_template": "i{instance}.MRDC.{slice}"})
    assert spec.filename(1, 2) == "i7.MRDC.3" and RunSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(SpecError, match="'format'.*'siemens-mosaic'"):
        RunSpec.from_dict({"tr_s": 1.0, "n_volumes": 3, "format": "dicom"})
    with pytest.raises(SpecError, match="'filename_template'.*slice"):
        RunSpec.from_dict({"tr_s": 1.0, "n_volumes": 3, "format": "dicom-slices",
                           "filename_template": "v{volume}.dcm"})


def test_cli_format_switches_default_names(tmp_path, capsys):
    spec = tmp_path / "tiny.toml"
    spec.write_text("tr_s = 0.5\nn_volumes = 2\nshape = [16, 16, 6]\nvoxel_mm = 10.0\nseries = 5\n")
    rc = cli.main(["synth", str(spec), "--export-dir", str(tmp_path / "e"), "--truth-dir", str(tmp_path / "t"),
                   "--speed", "20", "--format", "siemens-mosaic", "--chunk-delay-s", "0"])
    assert rc == 0, capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "e").iterdir()) == ["001_000005_000001.dcm", "001_000005_000002.dcm"]
    assert "siemens-mosaic" in capsys.readouterr().out
