"""ROIs carried from day 1 to day N (issue 18 point 3): a real EPI moved as a repositioned head, and pydecnef run 1 -> run 2."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from rtnf.apps import roidef
from rtnf.apps.roidef._common import _resample
from rtnf.apps.roidef.registration import box_corners_mm, dice, max_displacement_mm, rigid_parameters
from rtnf.apps.roidef.transfer import carry_mask
from tests.helpers import SHARED_DATA, requires_shared_data

pytest.importorskip("SimpleITK", reason="rtnf roi transfer needs SimpleITK (pip install SimpleITK)")
PYDECNEF = SHARED_DATA / "pydecnef-sub1"
pytestmark = requires_shared_data("pydecnef-sub1")


def _sphere(shape, affine, centre, radius) -> np.ndarray:
    world = np.indices(shape, dtype=np.float64).reshape(3, -1).T @ affine[:3, :3].T + affine[:3, 3]
    return (np.linalg.norm(world - np.asarray(centre), axis=1) <= radius).reshape(shape)


def _repositioned(ref, angle_deg=10.0, shift_mm=10.0) -> np.ndarray:
    """The head moved rigidly: rotated about an oblique axis through the brain's centre, then shifted.

    Returns the 4x4 map from a tissue point's day-1 scanner position to its day-N one.
    """
    centre = box_corners_mm(roidef.epi_mask(ref.data), ref.affine).mean(axis=0)
    move = np.eye(4)
    move[:3, :3] = Rotation.from_rotvec(np.deg2rad(angle_deg) * np.array([1.0, 1.0, 0.5]) / 1.5).as_matrix()
    direction = np.array([0.6, -0.48, 0.64])
    move[:3, 3] = centre - move[:3, :3] @ centre + shift_mm * direction / np.linalg.norm(direction)
    return move


@pytest.mark.slow
def test_repositioned_head_is_recovered(tmp_path, capsys):
    ref = roidef.load_reference(PYDECNEF / "func" / "run_1")
    move = _repositioned(ref)
    back = np.linalg.inv(move)  # day-N position -> day-1 position
    # Day N: the real volume resampled as the moved head (cubic), on the same scanner grid.
    day_n = _resample(ref.data.astype(np.float32), ref.affine, ref.grid, order=3, world_to_src=back)
    acc = _sphere(ref.grid.shape, ref.affine, (0.0, 30.0, 25.0), 10.0)
    ins = _sphere(ref.grid.shape, ref.affine, (36.0, 10.0, 0.0), 8.0)
    paths = {}
    for name, data in [("day1", ref.data), ("dayN", day_n), ("acc", acc), ("ins", ins)]:
        paths[name] = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(np.asarray(data, dtype=np.float32), ref.affine), paths[name])
    truth = {n: carry_mask(m, ref.affine, ref.grid, back) for n, m in [("acc", acc), ("ins", ins)]}
    nib.save(nib.Nifti1Image(truth["acc"].astype(np.uint8), ref.affine), tmp_path / "acc_true.nii.gz")
    nib.save(nib.Nifti1Image(truth["ins"].astype(np.uint8), ref.affine), tmp_path / "ins_true.nii.gz")

    out = tmp_path / "dayN"
    code = roidef.main(["transfer", "--from", str(paths["day1"]), "--masks", str(paths["acc"]), str(paths["ins"]),
                        "--to", str(paths["dayN"]), "-o", str(out), "--compare", str(tmp_path / "acc_true.nii.gz"),
                        str(tmp_path / "ins_true.nii.gz")])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    summary = json.loads((out / "transfer.json").read_text())
    # The recovered transform: within 1 mm over the brain's box and 1 degree of the truth.
    est = np.asarray(summary["dayN_to_day1"])
    corners = box_corners_mm(roidef.epi_mask(day_n), ref.affine)
    assert max_displacement_mm(est, back, corners) < 1.0
    assert rigid_parameters(est @ move)[1] < 1.0
    assert abs(summary["head_rotation_deg"] - 10.0) < 1.0
    for name in ("acc", "ins"):
        written = np.asarray(nib.load(out / f"{name}.nii.gz").dataobj) > 0
        assert dice(written, truth[name]) >= 0.9, name
        entry = next(m for m in summary["masks"] if m["name"] == name)
        assert entry["dice_vs_compare"] >= 0.9
        true_shift = (move @ np.r_[np.argwhere(acc if name == "acc" else ins).mean(axis=0) @ ref.affine[:3, :3].T
                                   + ref.affine[:3, 3], 1.0])[:3] - np.asarray(entry["centroid_from_mm"])
        np.testing.assert_allclose(entry["centroid_shift_mm"], true_shift, atol=1.5)
    assert summary["brain_dice"] > 0.9
    assert (out / "transfer.png").stat().st_size > 10_000
    assert "Dice vs re-derived" in printed.out


@pytest.mark.slow
def test_pydecnef_run1_to_run2_keeps_the_atlas_acc():
    """Same session, real: the run-1 ACC carried to run 2 agrees with the ACC derived on run 2 directly.

    Measured: head rotation 3.2 deg between the runs, ACC centroid shift 3.5 mm, Dice 0.89 with the
    run-2 ACC (the Harvard-Oxford anterior cingulate through a second MNI registration).
    """
    from rtnf.apps.roidef.atlases import atlas_region, load_atlas
    from rtnf.apps.roidef.transfer import transfer_masks

    if not (SHARED_DATA / "atlases").exists():
        pytest.skip(f"atlases not found at {SHARED_DATA / 'atlases'}")
    run1 = roidef.load_reference(PYDECNEF / "func" / "run_1")
    run2 = roidef.load_reference(PYDECNEF / "func" / "run_2")
    region = atlas_region(load_atlas("harvard-oxford", atlas_dir=SHARED_DATA / "atlases"),
                          ["Cingulate_Gyrus_anterior_division"])[:2]
    acc1 = roidef.mni_roi(run1.grid, roidef.register_mni(run1), mask=region).mask
    acc2 = roidef.mni_roi(run2.grid, roidef.register_mni(run2), mask=region).mask
    result = transfer_masks((run1.data, run1.affine), (run2.data, run2.affine), {"acc": (acc1, run1.affine)},
                            compare={"acc": acc2})
    moved = result.masks[0]
    assert result.brain_dice > 0.95
    assert moved.dice >= 0.85
    assert np.linalg.norm(moved.centroid_shift_mm) < 6.0
    assert abs(moved.voxels_to - moved.voxels_from) < 0.1 * moved.voxels_from


def test_transfer_cli_refuses_a_compare_per_mask_mismatch(tmp_path, capsys):
    ref, other = tmp_path / "ref.nii.gz", tmp_path / "other.nii.gz"
    for path in (ref, other):
        nib.save(nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4)), path)
    code = roidef.main(["transfer", "--from", str(ref), "--masks", str(ref), str(other), "--to", str(ref),
                        "-o", str(tmp_path / "o"), "--compare", str(ref)])
    err = capsys.readouterr().err
    assert code == 2 and "--compare" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()
