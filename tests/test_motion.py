"""Realignment: known simulated motion, real series against SimpleITK, large jumps, API checks."""

from __future__ import annotations

import collections
import warnings
from pathlib import Path

import numpy as np
import pytest

from rtnf.analysis.motion import MOTION_COLUMNS, Realigner, motion_regressors, rigid_matrix, rigid_params
from rtnf.analysis.quality import QualityMonitor, framewise_displacement
from scanner_sim import synth
from scanner_sim.spec import RunSpec
from scanner_sim.synth import SyntheticRun, apply_motion
from tests.helpers import SHARED_DATA, requires_shared_data

RAS_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _errors(est: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Absolute translation errors (mm) and rotation errors (degrees), both (n, 3)."""
    err = np.asarray(est) - np.asarray(truth)
    return np.abs(err[:, :3]), np.rad2deg(np.abs(err[:, 3:]))


@pytest.fixture(scope="module")
def moving_run() -> tuple[SyntheticRun, list[np.ndarray], np.ndarray]:
    spec = RunSpec.from_dict({
        "tr_s": 1.0, "n_volumes": 100, "noise_pct": 1.0, "seed": 3,
        "motion": {"max_trans_mm": 3.0, "max_rot_deg": 3.0, "kind": "smooth"},
    })
    run = SyntheticRun(spec)
    vols = [run.volume(i) for i in range(len(run))]
    truth = np.array([run.truth.motion(i) for i in range(len(run))])
    return run, vols, truth


# --------------------------------------------------------------------------- conventions
def test_rigid_matrix_matches_the_simulator_and_inverts():
    rng = np.random.default_rng(0)
    for _ in range(20):
        p = np.concatenate([rng.uniform(-10, 10, 3), rng.uniform(-0.5, 0.5, 3)])
        np.testing.assert_allclose(rigid_matrix(p), synth.rigid_matrix(p), atol=1e-12)
        np.testing.assert_allclose(rigid_params(rigid_matrix(p)), p, atol=1e-12)
    assert MOTION_COLUMNS == synth.MOTION_COLUMNS


def test_motion_regressors_24():
    p = np.array([1.0, -2.0, 0.5, 0.01, 0.02, -0.03])
    prev = np.array([0.5, -2.0, 1.0, 0.0, 0.02, -0.01])
    r = motion_regressors(p, prev, 24)
    d = p - prev
    np.testing.assert_allclose(r, np.concatenate([p, d, p**2, d**2]))
    np.testing.assert_allclose(motion_regressors(p, None, 12)[6:], 0.0)
    np.testing.assert_allclose(motion_regressors(p, prev, 6), p)
    with pytest.raises(ValueError, match="'n' parameter"):
        motion_regressors(p, prev, 18)


# --------------------------------------------------------------------------- synthetic accuracy
def test_estimates_equal_the_simulated_motion(moving_run):
    run, vols, truth = moving_run
    realigner = Realigner().fit(vols[0], run.affine)
    est = np.array([realigner.estimate(v) for v in vols])
    et, er = _errors(est, truth)
    # the run really moves by up to 3 mm and 3 degrees
    assert np.abs(truth[:, :3]).max() > 2.0 and np.rad2deg(np.abs(truth[:, 3:])).max() > 2.0
    assert np.median(et) <= 0.05 and np.median(er) <= 0.05, (np.median(et), np.median(er))
    assert et.max() <= 0.15 and er.max() <= 0.15, (et.max(), er.max())


def test_sample_and_reslice_undo_the_motion(moving_run):
    run, vols, truth = moving_run
    realigner = Realigner().fit(vols[0], run.affine)
    i = int(np.argmax(np.abs(truth[:, :3]).sum(axis=1)))  # the most displaced volume
    params = truth[i]
    # a noise-free, smooth (so trilinear interpolation is accurate) head moved by the true motion
    from scipy.ndimage import gaussian_filter, map_coordinates

    clean = gaussian_filter(run.clean_volume(i), 1.5)
    moved = apply_motion(clean, run.affine, params).astype(np.float32)
    # voxels well inside the brain and away from the field-of-view edges
    inner = run.phantom.brain_mask.copy()
    inner[:, :, :4] = inner[:, :, -4:] = False
    idx = np.flatnonzero(inner.reshape(-1))
    realigned = realigner.sample(moved, params, idx)
    unaligned = moved.reshape(-1)[idx]
    target = clean.reshape(-1)[idx]
    err_realigned = np.sqrt(np.mean((realigned - target) ** 2))
    err_unaligned = np.sqrt(np.mean((unaligned - target) ** 2))
    assert err_realigned < 0.2 * err_unaligned, (err_realigned, err_unaligned)
    # exactly SciPy's trilinear interpolation at volume(R p + t), geometry from the simulator's own matrix
    ijk = np.array(np.unravel_index(idx, run.phantom.data.shape), dtype=float)
    vox = np.linalg.inv(run.affine) @ synth.rigid_matrix(params) @ run.affine
    expected = map_coordinates(moved, vox[:3, :3] @ ijk + vox[:3, 3:4], order=1, mode="nearest")
    np.testing.assert_allclose(realigned, expected, rtol=1e-4, atol=1e-3)
    # flat indices and (n, 3) voxel indices agree, and reslice holds the same values
    ijk = np.array(np.unravel_index(idx, run.phantom.data.shape)).T
    np.testing.assert_allclose(realigner.sample(moved, params, ijk), realigned)
    full = realigner.reslice(moved, params)
    assert full.shape == moved.shape
    np.testing.assert_allclose(full.reshape(-1)[idx], realigned, rtol=1e-5)
    # zero motion samples the voxels themselves
    np.testing.assert_allclose(realigner.sample(moved, np.zeros(6), idx), unaligned, rtol=1e-6)


def test_a_10_mm_jump_is_flagged_and_the_next_volumes_realign(moving_run):
    run, vols, truth = moving_run
    jump_at = 50
    jump = truth[jump_at] + np.array([10.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    noise = vols[jump_at] - apply_motion(run.clean_volume(jump_at), run.affine, truth[jump_at]).astype(np.float32)
    jumped = apply_motion(run.clean_volume(jump_at), run.affine, jump).astype(np.float32) + noise
    series = list(vols)
    series[jump_at] = jumped
    expected = truth.copy()
    expected[jump_at] = jump

    realigner = Realigner().fit(series[0], run.affine)
    # the smooth 3 mm / 3 degree motion itself reaches FD 0.63 mm between volumes: threshold 1 mm
    monitor = QualityMonitor(fd_threshold_mm=1.0)
    est, rows = [], []
    for v in series:
        p = realigner.estimate(v)
        est.append(p)
        rows.append(monitor.update(p, realigner.sample(v, p, realigner.brain_indices_)))
    est = np.array(est)
    fd = np.array([r.framewise_displacement for r in rows])
    # the jump in and the jump back out are both flagged, with FD close to 10 mm
    assert rows[jump_at].censored and rows[jump_at].motion_outlier
    assert rows[jump_at + 1].censored
    assert 9.0 < fd[jump_at] < 11.0 and 9.0 < fd[jump_at + 1] < 11.0
    np.testing.assert_allclose(fd, framewise_displacement(est))
    # elsewhere FD follows the true FD and stays under the threshold
    others = np.delete(np.arange(len(series)), [jump_at, jump_at + 1])
    assert not any(rows[i].motion_outlier for i in others)
    np.testing.assert_allclose(fd[others], framewise_displacement(expected)[others], atol=0.1)
    # the jump itself and every later volume are realigned as accurately as before
    et, er = _errors(est[jump_at:], expected[jump_at:])
    assert et.max() <= 0.15 and er.max() <= 0.15, (et.max(), er.max())
    assert np.median(et) <= 0.05 and np.median(er) <= 0.05


def test_recovers_when_the_warm_start_is_far_off(moving_run):
    run, vols, truth = moving_run
    realigner = Realigner().fit(vols[0], run.affine)
    realigner.estimate(vols[10])
    # a volume shifted 15 mm and 8 degrees away, then the normal series again
    far = np.array([15.0, -8.0, 6.0, np.deg2rad(8.0), 0.0, np.deg2rad(-5.0)])
    realigner.estimate(apply_motion(run.clean_volume(11), run.affine, far).astype(np.float32))
    p = realigner.estimate(vols[12])
    et, er = _errors(p[None], truth[12][None])
    assert et.max() <= 0.15 and er.max() <= 0.15


# --------------------------------------------------------------------------- checks
def test_parameters_are_checked_in_fit(moving_run):
    run, vols, _ = moving_run
    with pytest.raises(ValueError, match="'sample_step' parameter: 0. Allowed: an integer >= 1"):
        Realigner(sample_step=0).fit(vols[0], run.affine)
    with pytest.raises(ValueError, match="'sigma_vox' parameter: -1"):
        Realigner(sigma_vox=-1).fit(vols[0], run.affine)
    with pytest.raises(ValueError, match="'mask_fraction' parameter: 1.5"):
        Realigner(mask_fraction=1.5).fit(vols[0], run.affine)
    with pytest.raises(ValueError, match="'affine' parameter"):
        Realigner().fit(vols[0], np.zeros((4, 4)))
    with pytest.raises(ValueError, match="'reference' parameter: an array of shape \\(64, 64\\)"):
        Realigner().fit(vols[0][..., 0], run.affine)
    with pytest.raises(RuntimeError, match="not fitted"):
        Realigner().estimate(vols[0])
    r = Realigner().fit(vols[0], run.affine)
    with pytest.raises(ValueError, match="reference grid's shape \\(64, 64, 36\\)"):
        r.estimate(vols[0][:, :, :30])
    with pytest.raises(ValueError, match="'voxel_indices' parameter"):
        r.sample(vols[0], np.zeros(6), np.zeros((5, 2), dtype=int))


def test_reset_starts_a_new_run(moving_run):
    run, vols, truth = moving_run
    r = Realigner().fit(vols[0], run.affine)
    r.estimate(vols[30])
    r.reset()
    np.testing.assert_allclose(r.params_, 0.0)
    assert r.result_ is None
    np.testing.assert_allclose(r.estimate(vols[0]), 0.0, atol=1e-6)
    assert r.result_.converged


# --------------------------------------------------------------------------- real data vs SimpleITK
def _sitk_agreement(vols: list[np.ndarray], affine: np.ndarray, every: int) -> tuple[float, float, float, float]:
    from rtnf.apps.bench.motion import sitk_rigid

    realigner = Realigner().fit(vols[0], affine)
    est = np.array([realigner.estimate(v) for v in vols])
    idx = list(range(1, len(vols), every))
    ref = np.array([sitk_rigid(vols[0], vols[i], affine, mask=realigner.mask_, threads=None) for i in idx])
    et, er = _errors(est[idx], ref)
    return float(np.median(et)), float(np.median(er)), float(et.max()), float(er.max())


def test_sitk_reference_is_expressed_in_the_simulator_convention(moving_run):
    """The SimpleITK wrapper (LPS, fixed->moving) reports the simulator's truth."""
    pytest.importorskip("SimpleITK", reason="SimpleITK is a test-only reference (pip install SimpleITK)")
    from rtnf.apps.bench.motion import sitk_rigid

    run, vols, truth = moving_run
    mask = Realigner().fit(vols[0], run.affine).mask_
    for i in (20, 70):
        p = sitk_rigid(vols[0], vols[i], run.affine, mask=mask, threads=None)
        et, er = _errors(p[None], truth[i][None])
        assert et.max() < 0.1 and er.max() < 0.1, (i, p, truth[i])


@requires_shared_data("pyneal-series/siemens-prisma-e11-mosaic")
def test_siemens_mosaic_series_agrees_with_simpleitk():
    pytest.importorskip("SimpleITK", reason="SimpleITK is a test-only reference (pip install SimpleITK)")
    from nibabel.nicom.dicomwrappers import wrapper_from_file

    files = sorted((SHARED_DATA / "pyneal-series/siemens-prisma-e11-mosaic").glob("*.dcm"))
    assert len(files) == 60
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # nibabel: "DICOM readers are highly experimental"
        wrappers = [wrapper_from_file(str(f)) for f in files]
        vols = [w.get_data().astype(np.float32) for w in wrappers]
    affine = RAS_LPS @ wrappers[0].affine  # nibabel's DICOM affine is LPS
    med_t, med_r, max_t, max_r = _sitk_agreement(vols, affine, every=2)
    assert med_t <= 0.1 and med_r <= 0.1, (med_t, med_r)
    assert max_t <= 0.3 and max_r <= 0.3, (max_t, max_r)


def _read_philips_slices(folder: Path) -> tuple[list[np.ndarray], np.ndarray]:
    """Volumes (i = column, j = row, k = slice along the normal) and the RAS affine of a slice series."""
    import pydicom

    groups: dict[int, list] = collections.defaultdict(list)
    for f in sorted(folder.glob("MR.*")):
        ds = pydicom.dcmread(f)
        groups[int(ds.TemporalPositionIdentifier)].append(ds)
    vols, affines = [], []
    for t in sorted(groups):
        slices = groups[t]
        iop = np.array(slices[0].ImageOrientationPatient, dtype=float)
        row, col = iop[:3], iop[3:]
        normal = np.cross(row, col)
        slices.sort(key=lambda d: float(normal @ np.array(d.ImagePositionPatient, dtype=float)))
        dr, dc = (float(v) for v in slices[0].PixelSpacing)
        p0 = np.array(slices[0].ImagePositionPatient, dtype=float)
        p1 = np.array(slices[-1].ImagePositionPatient, dtype=float)
        lps = np.eye(4)
        lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = row * dc, col * dr, (p1 - p0) / (len(slices) - 1), p0
        vols.append(np.stack([d.pixel_array.T.astype(np.float32) for d in slices], axis=-1))
        affines.append(RAS_LPS @ lps)
    for a in affines:
        np.testing.assert_allclose(a, affines[0], atol=1e-4)
    return vols, affines[0]


@pytest.mark.slow
@requires_shared_data("studyforrest-localizer/dicom")
def test_studyforrest_slice_series_agrees_with_simpleitk():
    pytest.importorskip("SimpleITK", reason="SimpleITK is a test-only reference (pip install SimpleITK)")
    vols, affine = _read_philips_slices(SHARED_DATA / "studyforrest-localizer/dicom")
    assert len(vols) == 78 and vols[0].shape == (80, 80, 35)
    med_t, med_r, max_t, max_r = _sitk_agreement(vols, affine, every=4)
    assert med_t <= 0.1 and med_r <= 0.1, (med_t, med_r)
    assert max_t <= 0.3 and max_r <= 0.3, (max_t, max_r)
