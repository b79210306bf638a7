"""Registration you can trust (issue 18 point 2): multi-start, repeatable within 1 mm, through the T1, with a quality figure."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from rtnf.apps import roidef
from rtnf.apps.roidef.registration import (MultiStart, Stage, box_corners_mm, dice, max_displacement_mm, register,
                                          rigid_parameters)
from tests.helpers import SHARED_DATA, requires_shared_data

PYDECNEF = SHARED_DATA / "pydecnef-sub1"


def test_multistart_poses_and_rigid_figures():
    poses = MultiStart().poses()
    assert len(poses) == 27 * 7  # 3 angles on 3 axes x (no shift + 2 shifts on 3 axes)
    assert not np.any(poses[0][0]) and not np.any(poses[0][1])  # the centre-of-mass alignment first
    assert len({(tuple(a), tuple(s)) for a, s in poses}) == len(poses)
    m = np.eye(4)
    m[:3, :3] = Rotation.from_euler("xyz", [3.0, 4.0, 0.0], degrees=True).as_matrix()
    m[:3, 3] = [1.0, 2.0, 2.0]
    shift, angle = rigid_parameters(m)
    np.testing.assert_allclose(shift, [1.0, 2.0, 2.0])
    assert angle == pytest.approx(np.degrees(Rotation.from_matrix(m[:3, :3]).magnitude()))
    pts = np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0]])
    assert max_displacement_mm(np.eye(4), np.eye(4), pts) == 0.0
    a = np.zeros((4, 4, 4), bool)
    a[:2] = True
    b = np.zeros_like(a)
    b[1:3] = True
    assert dice(a, b) == pytest.approx(0.5)


def test_seed_zero_is_refused():
    """SimpleITK reads a sample seed of 0 as 'from the wall clock': registrations would no longer repeat."""
    with pytest.raises(ValueError, match="wall clock"):
        roidef.register_mni((np.zeros((4, 4, 4), np.float32), np.eye(4)), seed=0)


def _blob_head(shape: tuple[int, int, int] = (40, 40, 40)) -> np.ndarray:
    """An ellipsoidal 'head' with smooth inner structure (a synthetic image mutual information can align)."""
    from scipy.ndimage import gaussian_filter

    g = np.indices(shape, dtype=np.float32) - (np.array(shape, dtype=np.float32)[:, None, None, None] - 1) / 2
    inside = (g[0] / 15) ** 2 + (g[1] / 12) ** 2 + (g[2] / 10) ** 2 < 1
    texture = gaussian_filter(np.random.default_rng(0).normal(size=shape).astype(np.float32), 2.0)
    return np.where(inside, 100.0 + 400.0 * texture, 0.0).astype(np.float32)


def test_an_affine_result_with_implausible_scales_is_a_failed_start_and_the_next_start_is_refined():
    """Regression (CI, one ITK thread): MNI -> T1 ran from the best-scoring start down to a scale of 0.35.

    The moving image is the fixed one 20 % larger (its voxels 2.4 mm instead of 2 mm). With the default
    window the affine finds that scale from the first start; with a window excluding it, every start is
    refined, each is reported as rejected but the last, and the caller sees the scale to report it.
    """
    pytest.importorskip("SimpleITK", reason="rtnf roi mni needs SimpleITK (pip install SimpleITK)")
    data = _blob_head()
    fixed, moving = (data, np.diag([2.0, 2.0, 2.0, 1.0])), (data, np.diag([2.4, 2.4, 2.4, 1.0]))
    stages = (Stage("rigid", (2,), (2.0,)), Stage("affine", (1,), (1.0,), iterations=300))
    starts = MultiStart((-12.0, 0.0, 12.0), (0.0,), keep=2)
    good = register(fixed, moving, stages=stages, multistart=starts)
    np.testing.assert_allclose(np.linalg.svd(good.fixed_to_moving[:3, :3], compute_uv=False), 1.2, atol=0.02)
    assert good.parameters["starts_rejected"] == [] and good.parameters["scales_plausible"]
    narrow = register(fixed, moving, stages=stages, multistart=starts, plausible_scales=(0.95, 1.05))
    rejected = narrow.parameters["starts_rejected"]
    assert len(rejected) >= 1  # keep=2 (+ the centre-of-mass start when it did not score among them)
    assert all(max(r["scales"]) > 1.05 for r in rejected)
    assert np.linalg.svd(narrow.fixed_to_moving[:3, :3], compute_uv=False).max() > 1.05  # returned, not hidden
    assert narrow.parameters["scales_plausible"] is False  # and flagged
    assert narrow.metric <= min(r["metric"] for r in rejected)  # the best of the failed starts
    assert narrow.start_chosen not in [{k: r[k] for k in ("rotation_deg", "shift_mm")} for r in rejected]
    for window in [(1.2, 0.8), (-1.0, 1.4), (float("nan"), 1.4), (0.7, float("inf"))]:
        with pytest.raises(ValueError, match="plausible_scales"):
            register(fixed, moving, stages=stages, multistart=starts, plausible_scales=window)


def test_registration_json_round_trip(tmp_path):
    reg = roidef.MniRegistration(np.diag([1.1, 1.0, 0.9, 1.0]), -0.5, 3.0, {"route": "x"},
                                 {"brain_dice": 0.9}, {"ref_to_t1": np.eye(4)})
    reg.save(tmp_path / "a_xfm.json")
    back = roidef.MniRegistration.load(tmp_path / "a_xfm.json")
    np.testing.assert_allclose(back.ref_to_mni, reg.ref_to_mni)
    np.testing.assert_allclose(back.steps["ref_to_t1"], np.eye(4))
    assert back.quality == {"brain_dice": 0.9}


@functools.lru_cache(maxsize=1)
def _run1():
    return roidef.load_reference(PYDECNEF / "func" / "run_1")


def _acc_centroid_mni() -> np.ndarray:
    src, aff = roidef.mni_region_image("anterior_cingulate")
    return np.argwhere(src > 0).mean(axis=0) @ aff[:3, :3].T + aff[:3, 3]


def _moved(k: int) -> np.ndarray:
    """Run k's header move (k = 0: none; else up to 4 degrees and 5 mm), as if the head lay elsewhere."""
    rng = np.random.default_rng(k)
    move = np.eye(4)
    if k:
        move[:3, :3] = Rotation.from_rotvec(np.deg2rad(rng.uniform(-4, 4, 3))).as_matrix()
        move[:3, 3] = rng.uniform(-5, 5, 3)
    return move


def _disagreement_mm(maps: list[np.ndarray], ref) -> tuple[float, float]:
    """Largest distance between runs' maps (original scanner mm -> MNI): at the brain box's corners, at the ACC."""
    corners = box_corners_mm(roidef.epi_mask(ref.data), ref.affine)
    com_mni = _acc_centroid_mni()
    centroids = [np.linalg.solve(m[:3, :3], com_mni - m[:3, 3]) for m in maps]
    corner = max(max_displacement_mm(a, b, corners) for i, a in enumerate(maps) for b in maps[i + 1:])
    roi = max(np.linalg.norm(a - b) for i, a in enumerate(centroids) for b in centroids[i + 1:])
    return corner, float(roi)


@pytest.mark.slow
@requires_shared_data("pydecnef-sub1")
def test_mni_registration_repeats_within_1mm_from_other_starting_positions():
    """Three runs, each with its own metric-sample seed and the EPI's header moved (as if the head lay elsewhere).

    Measured as here (3 seeds and moves, max over pairs): before (a seeded 20 % sample ending the affine
    stage, out of iterations) 4.9-5.7 mm at the brain box's corners and 1.4-1.7 mm at the ACC centroid; after
    (the affine refined on every voxel, smoothed 1 mm, converged) 0.02 mm and 0.003 mm.
    """
    pytest.importorskip("SimpleITK", reason="rtnf roi mni needs SimpleITK (pip install SimpleITK)")
    ref = _run1()
    maps = []
    for k in range(3):
        move = _moved(k)
        reg = roidef.register_mni((ref.data, move @ ref.affine), seed=k + 1)
        assert reg.quality["brain_dice"] > 0.9
        assert "Step too small" in reg.parameters["stopped"][-1]  # the refinement converged
        maps.append(reg.ref_to_mni @ move)
    corner, roi = _disagreement_mm(maps, ref)
    assert corner < 1.0, corner  # the far corners of the brain's box
    assert roi < 1.0, roi  # the ROI


@functools.lru_cache(maxsize=1)
def _t1():
    return roidef.load_reference(PYDECNEF / "anat")


@functools.lru_cache(maxsize=1)
def _t1_route_unmoved():
    """The T1 route on the session as recorded (shared by the tests that compare against it: 35-50 s each)."""
    return roidef.register_mni(_run1(), t1=_t1())


@pytest.mark.slow
@requires_shared_data("pydecnef-sub1")
def test_mni_registration_through_the_t1():
    """EPI -> T1 (rigid) -> MNI (affine): the same-session EPI and T1 stay close, the brain overlaps, it repeats."""
    pytest.importorskip("SimpleITK", reason="rtnf roi mni needs SimpleITK (pip install SimpleITK)")
    ref = _run1()
    t1 = _t1()
    reg = _t1_route_unmoved()
    shift, angle = rigid_parameters(reg.steps["ref_to_t1"])
    assert angle < 5.0 and np.linalg.norm(shift) < 10.0, (shift, angle)  # same session: a small head movement
    assert reg.quality["brain_dice"] > 0.88  # 0.91 measured; 0.85 when the T1 was stripped 6 mm wide
    direct = reg.steps["ref_to_mni_direct"]
    corners = box_corners_mm(roidef.epi_mask(ref.data), ref.affine)
    assert max_displacement_mm(reg.ref_to_mni, direct, corners) < 12.0  # the two routes agree to a few mm
    scales = np.linalg.svd(reg.steps["t1_to_mni"][:3, :3], compute_uv=False)
    assert 0.8 < scales.min() and scales.max() < 1.25
    assert reg.parameters["route"].startswith("EPI -> T1 rigid")
    # Repeated with another seed, the whole session's headers moved: within 1 mm everywhere in the brain box
    # (measured 0.42 mm at the corners, 0.14 mm at the ACC over 3 runs; 4.5 mm and 1.3 mm before the
    # EPI -> MNI refinement, whose result strips the T1 and starts MNI -> T1).
    # One ITK thread, as on the CI machine where MNI -> T1 from the best-scoring start fell to a scale of
    # 0.35 (RoiDefError); that start is now rejected and the next one refined (0.35 mm from the first run).
    move = _moved(2)
    again = roidef.register_mni((ref.data, move @ ref.affine), t1=(t1.data, move @ t1.affine), seed=2, threads=1)
    corner, roi = _disagreement_mm([reg.ref_to_mni, again.ref_to_mni @ move], ref)
    assert corner < 1.0, corner
    assert roi < 1.0, roi


@pytest.mark.slow
@requires_shared_data("pydecnef-sub1")
def test_mni_registration_through_the_t1_when_the_head_moved_between_t1_and_epi():
    """Only the EPI's header moved (3.5 degrees, 4.8 mm: the head lay elsewhere for the EPI than for the T1).

    Before, the T1 was stripped with the EPI's map to MNI (assuming EPI and T1 share scanner
    coordinates): the strip's edge held EPI -> T1 near the identity (0.4 degrees) and MNI -> T1
    collapsed (RoiDefError, a scale of 2.9). EPI -> T1 is now estimated on the whole heads first and the
    T1 stripped through it: measured 0.08 mm at the brain box's corners and 0.015 mm at the ACC from the
    unmoved result, EPI -> T1 within 0.07 mm of the unmoved one after undoing the move.
    """
    pytest.importorskip("SimpleITK", reason="rtnf roi mni needs SimpleITK (pip install SimpleITK)")
    ref, t1 = _run1(), _t1()
    move = _moved(2)
    moved = roidef.register_mni((ref.data, move @ ref.affine), t1=t1)
    # EPI -> T1 found the move: ref_to_t1 (moved scanner mm -> T1 mm) is the unmoved one after undoing the move.
    corners = box_corners_mm(roidef.epi_mask(ref.data), ref.affine)
    assert max_displacement_mm(moved.steps["ref_to_t1"] @ move, _t1_route_unmoved().steps["ref_to_t1"],
                               corners) < 1.0
    corner, roi = _disagreement_mm([_t1_route_unmoved().ref_to_mni, moved.ref_to_mni @ move], ref)
    assert corner < 1.0, corner  # the far corners of the brain's box
    assert roi < 1.0, roi  # the ACC
    assert moved.quality["brain_dice"] > 0.88
