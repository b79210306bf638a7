"""Registration you can trust (issue 18 point 2): multi-start, repeatable within 1 mm, through the T1, with a quality figure."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from rtnf.apps import roidef
from rtnf.apps.roidef.registration import MultiStart, box_corners_mm, dice, max_displacement_mm, rigid_parameters
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


@pytest.mark.slow
@requires_shared_data("pydecnef-sub1")
def test_mni_registration_repeats_within_1mm_from_other_starting_positions():
    """The same EPI given with its header moved (as if the head lay elsewhere): the ACC lands on the same tissue.

    Measured over 5 such runs: before (centre-of-mass start, wall-clock-free seeds 1-5, 20 % samples
    in both stages) the ACC centroid moved 1.95 mm and the brain box's corners 7.2 mm; after
    (multi-start, every voxel in the rigid stage, a seeded 20 % sample in the affine one) 0.64 mm and 1.2 mm.
    """
    pytest.importorskip("SimpleITK", reason="rtnf roi mni needs SimpleITK (pip install SimpleITK)")
    ref = _run1()
    corners = box_corners_mm(roidef.epi_mask(ref.data), ref.affine)
    com_mni = _acc_centroid_mni()
    maps, centroids = [], []
    for k in range(3):
        rng = np.random.default_rng(k)
        move = np.eye(4)
        if k:
            move[:3, :3] = Rotation.from_rotvec(np.deg2rad(rng.uniform(-4, 4, 3))).as_matrix()
            move[:3, 3] = rng.uniform(-5, 5, 3)
        reg = roidef.register_mni((ref.data, move @ ref.affine))
        assert reg.quality["brain_dice"] > 0.9
        original_to_mni = reg.ref_to_mni @ move
        maps.append(original_to_mni)
        inv = np.linalg.inv(original_to_mni)
        centroids.append(inv[:3, :3] @ com_mni + inv[:3, 3])
    for m in maps[1:]:
        assert max_displacement_mm(maps[0], m, corners) < 2.0  # the far corners of the brain's box
    assert max(np.linalg.norm(c - centroids[0]) for c in centroids) < 1.0  # the ROI


@pytest.mark.slow
@requires_shared_data("pydecnef-sub1")
def test_mni_registration_through_the_t1():
    """EPI -> T1 (rigid) -> MNI (affine): the same-session EPI and T1 stay close, the brain overlaps."""
    pytest.importorskip("SimpleITK", reason="rtnf roi mni needs SimpleITK (pip install SimpleITK)")
    ref = _run1()
    t1 = roidef.load_reference(PYDECNEF / "anat")
    reg = roidef.register_mni(ref, t1=t1)
    shift, angle = rigid_parameters(reg.steps["ref_to_t1"])
    assert angle < 5.0 and np.linalg.norm(shift) < 10.0, (shift, angle)  # same session: a small head movement
    assert reg.quality["brain_dice"] > 0.88  # 0.91 measured; 0.85 when the T1 was stripped 6 mm wide
    direct = reg.steps["ref_to_mni_direct"]
    corners = box_corners_mm(roidef.epi_mask(ref.data), ref.affine)
    assert max_displacement_mm(reg.ref_to_mni, direct, corners) < 12.0  # the two routes agree to a few mm
    scales = np.linalg.svd(reg.steps["t1_to_mni"][:3, :3], compute_uv=False)
    assert 0.8 < scales.min() and scales.max() < 1.25
    assert reg.parameters["route"].startswith("EPI -> T1 rigid")
