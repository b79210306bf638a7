"""The compiled realignment kernels equal the SciPy functions they replace."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter, map_coordinates

from rtnf.analysis._kernels import gaussian_weights, smooth3d, trilinear
from rtnf.analysis.motion import rigid_matrix


@pytest.mark.parametrize("shape, sigma", [((64, 64, 36), 1.0), ((17, 9, 2), 1.0), ((5, 31, 12), 2.0), ((8, 8, 8), 0.4)])
def test_smoothing_equals_scipy_gaussian_filter_with_nearest_edges(shape, sigma):
    # (17, 9, 2) and (5, 31, 12) at sigma 2: the kernel's radius (3, 6) exceeds an axis, all edge handling
    vol = (1000 + 100 * np.random.default_rng(1).normal(size=shape)).astype(np.float32)
    expected = gaussian_filter(vol, sigma, mode="nearest", truncate=3.0)
    got = smooth3d(vol, gaussian_weights(sigma, 3.0))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=2e-6, atol=0)  # float32 accumulation (scipy: float64)


def test_anisotropic_smoothing_equals_scipy_with_one_sigma_per_axis():
    """The configured smoothing (fwhm in mm over anisotropic voxels) has one sigma per axis, truncated at 4."""
    vol = (500 + 50 * np.random.default_rng(4).normal(size=(30, 26, 12))).astype(np.float32)
    sigma = (0.8, 1.1, 2.3)
    got = smooth3d(vol, tuple(gaussian_weights(s, 4.0) for s in sigma))
    np.testing.assert_allclose(got, gaussian_filter(vol, sigma, mode="nearest"), rtol=2e-6, atol=0)


def test_kernel_weights_are_scipys():
    from scipy.ndimage._filters import _gaussian_kernel1d

    for sigma in (0.5, 1.0, 2.5):
        np.testing.assert_allclose(gaussian_weights(sigma, 3.0), _gaussian_kernel1d(sigma, 0, int(3.0 * sigma + 0.5)))


def test_trilinear_equals_map_coordinates_inside_and_beyond_the_grid():
    shape = (20, 24, 11)
    rng = np.random.default_rng(2)
    vol = rng.normal(size=shape).astype(np.float32)
    ijk = np.ascontiguousarray(rng.uniform(-3.0, 27.0, size=(3, 5000)))  # a third of them outside the grid
    m = np.linalg.inv(np.diag([3.0, 3.0, 3.5, 1.0])) @ rigid_matrix([1.5, -2.0, 0.7, 0.05, -0.03, 0.08]) @ np.diag(
        [3.0, 3.0, 3.5, 1.0])
    coords = m[:3, :3] @ ijk + m[:3, 3:4]
    values, inside, n_in = trilinear(vol.reshape(-1), shape, m, ijk)
    hi = np.array(shape)[:, None] - 1.0
    clamped = np.clip(coords, 0.0, hi)  # 'nearest' continues the edge voxels outside, as clamping does
    np.testing.assert_allclose(values, map_coordinates(vol.astype(np.float64), clamped, order=1, mode="nearest"),
                               rtol=1e-6, atol=1e-6)
    expected_inside = np.all((coords >= 0.0) & (coords <= hi), axis=0)
    assert np.array_equal(inside, expected_inside) and n_in == expected_inside.sum()
    assert 0 < n_in < ijk.shape[1]
