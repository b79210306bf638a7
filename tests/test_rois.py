"""ROI geometry: spheres from world coordinates on non-trivial grids."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from rtnf.analysis.rois import MaskROI, RoiError, SphereROI
from rtnf.scanner.volume import Grid


def _rotation(axis: int, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    i, j = [k for k in range(3) if k != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def _oblique_flipped_grid() -> Grid:
    # Voxels of 2 x 3 x 4 mm, first axis flipped (LAS-like), rotated 20 degrees
    # about x and 10 degrees about z, origin off-centre.
    affine = np.eye(4)
    affine[:3, :3] = _rotation(2, np.deg2rad(10)) @ _rotation(0, np.deg2rad(20)) @ np.diag([-2.0, 3.0, 4.0])
    affine[:3, 3] = [60.0, -80.0, -30.0]
    return Grid((40, 50, 30), affine)


def test_sphere_holds_exactly_the_expected_voxels_on_an_oblique_flipped_grid():
    grid = _oblique_flipped_grid()
    centre_voxel = np.array([20, 25, 15])
    centre_mm = grid.affine[:3, :3] @ centre_voxel + grid.affine[:3, 3]
    # Radius 3.5 mm: neighbours 2 mm (axis 0) and 3 mm (axis 1) away are in;
    # 4 mm (axis 2) and the 2-3 diagonal (sqrt(13) = 3.61 mm) are out.
    roi = SphereROI("test", tuple(centre_mm), 3.5).fit(grid)
    got = {tuple(int(v) for v in np.unravel_index(i, grid.shape)) for i in roi.indices_}
    expected = {(20, 25, 15), (19, 25, 15), (21, 25, 15), (20, 24, 15), (20, 26, 15)}
    assert got == expected


def test_sphere_voxel_count_and_centroid_match_the_world_sphere():
    grid = _oblique_flipped_grid()
    centre = (10.3, -5.2, 12.7)
    roi = SphereROI("s", centre, 10.0).fit(grid)
    ijk = np.array(np.unravel_index(roi.indices_, grid.shape), dtype=float)
    world = (grid.affine[:3, :3] @ ijk + grid.affine[:3, 3:4]).T
    # Volume of the sphere over the voxel volume (2*3*4 mm^3), within 10 %.
    assert roi.n_voxels == pytest.approx(4 / 3 * np.pi * 10.0**3 / 24.0, rel=0.1)
    assert np.linalg.norm(world.mean(axis=0) - centre) < 1.0
    assert np.all(np.linalg.norm(world - centre, axis=1) <= 10.0)


def test_sphere_mean_signal():
    grid = Grid((10, 10, 10), np.diag([3.0, 3.0, 3.0, 1.0]))
    data = np.zeros(grid.shape, np.float32)
    data[5, 5, 5] = 7.0
    roi = SphereROI("s", (15.0, 15.0, 15.0), 1.0).fit(grid)
    assert roi.n_voxels == 1 and roi.transform(data) == 7.0


def test_centre_outside_field_of_view():
    grid = _oblique_flipped_grid()
    with pytest.raises(RoiError, match=r"rois.far.center_mm.*outside the field of view"):
        SphereROI("far", (500.0, 0.0, 0.0), 8.0).fit(grid)


def test_mask_in_another_space_is_resampled(tmp_path):
    # A 1 mm mask of a 7 mm cube resampled onto a 3.5 mm grid holds the 2x2x2 voxels inside it.
    grid = Grid((10, 10, 10), np.diag([3.5, 3.5, 3.5, 1.0]))
    fine = np.zeros((40, 40, 40), np.uint8)
    fine[14:21, 14:21, 14:21] = 1  # mm 14..20 -> covers voxel centres 14 and 17.5
    path = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(fine, np.eye(4)), path)
    roi = MaskROI("cube", path).fit(grid)
    got = {tuple(int(v) for v in np.unravel_index(i, grid.shape)) for i in roi.indices_}
    assert got == {(i, j, k) for i in (4, 5) for j in (4, 5) for k in (4, 5)}


def test_mask_outside_field_of_view(tmp_path):
    grid = Grid((10, 10, 10), np.diag([3.0, 3.0, 3.0, 1.0]))
    affine = np.eye(4)
    affine[:3, 3] = 500.0
    path = tmp_path / "far.nii"
    nib.save(nib.Nifti1Image(np.ones((5, 5, 5), np.uint8), affine), path)
    with pytest.raises(RoiError, match="no voxel inside the field of view"):
        MaskROI("far", path).fit(grid)
