"""Compiled per-volume kernels of realignment: trilinear sampling through an affine map, Gaussian smoothing.

Realignment is the feedback path's largest cost, and in NumPy it is made of many array passes over
temporaries: the trilinear sampling of 12,000 points took 0.36 ms as 25 NumPy operations (coordinates,
clipping, floors, eight gathers, seven interpolations) and smoothing a 64x64x36 volume with
``scipy.ndimage.gaussian_filter`` 1.5 ms. Numba compiles each kernel to one loop over the points or voxels;
the functions release the GIL so the operator's thread runs beside them. Results equal the NumPy/SciPy
versions they replace (``tests/test_kernels.py``): the same clamping, the same interpolation order,
SciPy's kernel weights and its ``mode="nearest"`` edges.

Compiled code is cached beside this module (``cache=True``); the first call in a fresh checkout compiles
(about a second), which :class:`rtnf.analysis.motion.Realigner` does in ``fit``, before the first volume.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["gaussian_weights", "smooth3d", "smooth_work", "trilinear", "warm_up"]


def _compiled(func):  # noqa: ANN001, ANN202 (a decorator)
    """``numba.njit(cache=True, nogil=True)``, without the cache where no folder for it is writable.

    Numba refuses ``cache=True`` at import when neither the package folder nor the user's cache
    folder (``NUMBA_CACHE_DIR``, ``~/.cache``) is writable (a read-only install, no home): the
    kernels then compile at each start (about a second, in ``Realigner.fit``) instead of failing
    the import of everything that realigns.
    """
    try:
        return numba.njit(cache=True, nogil=True)(func)
    except RuntimeError:  # "cannot cache function ...: no locator available"
        return numba.njit(nogil=True)(func)


@_compiled
def _trilinear(flat: np.ndarray, nx: int, ny: int, nz: int, m: np.ndarray, ijk: np.ndarray,
               out: np.ndarray, inside: np.ndarray) -> int:
    """See :func:`trilinear`; returns the number of points inside the grid."""
    hx, hy, hz = nx - 1.0, ny - 1.0, nz - 1.0
    sx, sy = ny * nz, nz
    n_in = 0
    for p in range(ijk.shape[1]):
        a, b, c = ijk[0, p], ijk[1, p], ijk[2, p]
        x = m[0, 0] * a + m[0, 1] * b + m[0, 2] * c + m[0, 3]
        y = m[1, 0] * a + m[1, 1] * b + m[1, 2] * c + m[1, 3]
        z = m[2, 0] * a + m[2, 1] * b + m[2, 2] * c + m[2, 3]
        if x != x or y != y or z != z:  # NaN (NaN pose, NaN or inf point): no cell; its index would read
            out[p] = np.nan              # outside the volume's memory
            inside[p] = False
            continue
        ok = 0.0 <= x <= hx and 0.0 <= y <= hy and 0.0 <= z <= hz
        inside[p] = ok
        n_in += ok
        # clamp to the grid (the edge voxels' values continue outside), floor, keep a cell to interpolate in
        x = min(max(x, 0.0), hx)
        y = min(max(y, 0.0), hy)
        z = min(max(z, 0.0), hz)
        i, j, k = min(int(x), nx - 2), min(int(y), ny - 2), min(int(z), nz - 2)
        wx, wy, wz = x - i, y - j, z - k
        base = i * sx + j * sy + k
        v000, v001 = flat[base], flat[base + 1]
        v010, v011 = flat[base + sy], flat[base + sy + 1]
        v100, v101 = flat[base + sx], flat[base + sx + 1]
        v110, v111 = flat[base + sx + sy], flat[base + sx + sy + 1]
        c00 = v000 + wz * (v001 - v000)
        c01 = v010 + wz * (v011 - v010)
        c10 = v100 + wz * (v101 - v100)
        c11 = v110 + wz * (v111 - v110)
        c0 = c00 + wy * (c01 - c00)
        c1 = c10 + wy * (c11 - c10)
        out[p] = c0 + wx * (c1 - c0)
    return n_in


def trilinear(flat: np.ndarray, shape: tuple[int, int, int], voxel_map: np.ndarray, ijk: np.ndarray,
              out: np.ndarray | None = None, inside: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """Trilinear values of a volume at points mapped by an affine, in one pass.

    Parameters
    ----------
    flat : ndarray of float32, shape (nx * ny * nz,)
        The volume, C-order raveled.
    shape : tuple of 3 int
        Its grid shape (each at least 2).
    voxel_map : ndarray, shape (4, 4) or (3, 4)
        Maps the points' voxel coordinates to the volume's voxel coordinates.
    ijk : ndarray of float64, shape (3, n)
        The points, in voxel coordinates.
    out : ndarray of float64, shape (n,), optional
        Where to write the values.
    inside : ndarray of bool, shape (n,), optional
        Where to write whether each mapped point lies within the grid (between the edge voxels' centres).

    Returns
    -------
    values : ndarray of float64, shape (n,)
        Points mapped outside the grid take the value at the nearest grid position (clamped);
        points mapped to NaN (a NaN pose or point) are NaN and outside.
    inside : ndarray of bool, shape (n,)
    n_inside : int
    """
    n = ijk.shape[1]
    out = np.empty(n) if out is None else out
    inside = np.empty(n, dtype=np.bool_) if inside is None else inside
    m = np.ascontiguousarray(voxel_map[:3], dtype=np.float64)
    n_in = _trilinear(flat, shape[0], shape[1], shape[2], m, ijk, out, inside)
    return out, inside, int(n_in)


def warm_up() -> None:
    """Load (or compile) every kernel for the types a run uses, on tiny arrays.

    The first call of a numba function loads its cached machine code and numba's type registries:
    0.44 s, which on the first volume delayed the volumes queued behind it (at 104x104x72 and a file
    every 100 ms, eight of them by 80-680 ms). A run calls this when it starts, before any volume.
    """
    vol = np.zeros((2, 2, 2), dtype=np.float32)
    ijk = np.zeros((3, 1))
    for flat in (vol.reshape(-1), np.zeros(8)):  # volumes; the reference's gradients (float64)
        trilinear(flat, (2, 2, 2), np.eye(4), ijk)
    smooth3d(vol, gaussian_weights(1.0, 3.0))


def gaussian_weights(sigma: float, truncate: float) -> np.ndarray:
    """SciPy's 1-D Gaussian kernel (``scipy.ndimage.gaussian_filter``'s weights), radius ``int(truncate*sigma+0.5)``."""
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    phi = np.exp(-0.5 / float(sigma) ** 2 * x**2)
    return phi / phi.sum()


@_compiled
def _smooth_yz(src: np.ndarray, wy: np.ndarray, wz: np.ndarray, pad: np.ndarray, acc: np.ndarray,
               zplane: np.ndarray, dst: np.ndarray) -> None:
    """One (ny, nz) plane correlated along z (contiguous) then y; edges repeat the border voxels ("nearest")."""
    ny, nz = src.shape
    rz, ry = (wz.size - 1) // 2, (wy.size - 1) // 2
    for j in range(ny):
        # the line with its edge voxels repeated: indices k + t stay non-negative, so the loops vectorise
        # (a possibly negative index costs a branch per voxel)
        for k in range(nz):
            pad[rz + k] = src[j, k]
            acc[k] = 0.0
        for k in range(rz):
            pad[k] = src[j, 0]
            pad[nz + rz + k] = src[j, nz - 1]
        for t in range(wz.size):
            wt = wz[t]
            for k in range(nz):
                acc[k] += wt * pad[k + t]
        for k in range(nz):
            zplane[j, k] = acc[k]
    for j in range(ny):
        for k in range(nz):
            acc[k] = 0.0
        for t in range(wy.size):
            s = min(max(j + t - ry, 0), ny - 1)
            wt = wy[t]
            for k in range(nz):
                acc[k] += wt * zplane[s, k]
        for k in range(nz):
            dst[j, k] = acc[k]


@_compiled
def _smooth(src: np.ndarray, wx: np.ndarray, wy: np.ndarray, wz: np.ndarray, ring: np.ndarray,
            dst: np.ndarray) -> None:
    """Separable correlation along z, y, then x, in one sweep over the planes of axis 0.

    The z-and-y smoothed planes an output plane needs (``wx.size`` of them) are kept in ``ring``, so
    the volume is read once and written once: three passes over whole arrays were memory-bound at
    104x104x72 (a second thread gained nothing on real volumes).
    """
    nx, ny, nz = src.shape
    size, rx = wx.size, (wx.size - 1) // 2
    pad = np.empty(nz + wz.size - 1, dtype=np.float32)
    line = np.empty(nz, dtype=np.float32)
    zplane = np.empty((ny, nz), dtype=np.float32)  # stored as float32 between passes, as SciPy does
    acc = np.empty((ny, nz), dtype=np.float32)
    ready = -1  # planes 0..ready are smoothed in y and z (the last `size` of them in the ring)
    for i in range(nx):
        while ready < min(i + rx, nx - 1):
            ready += 1
            _smooth_yz(src[ready], wy, wz, pad, line, zplane, ring[ready % size])
        for j in range(ny):
            for k in range(nz):
                acc[j, k] = 0.0
        for t in range(size):
            plane = ring[min(max(i + t - rx, 0), nx - 1) % size]
            wt = wx[t]
            for j in range(ny):
                for k in range(nz):
                    acc[j, k] += wt * plane[j, k]
        for j in range(ny):
            for k in range(nz):
                dst[i, j, k] = acc[j, k]


def smooth_work(shape: tuple[int, int, int], weights: np.ndarray | tuple[np.ndarray, np.ndarray, np.ndarray]
                ) -> np.ndarray:
    """The work array :func:`smooth3d` needs for volumes of ``shape`` (a few planes)."""
    wx = weights[0] if isinstance(weights, tuple) else weights
    return np.empty((wx.size, shape[1], shape[2]), dtype=np.float32)


def smooth3d(vol: np.ndarray, weights: np.ndarray | tuple[np.ndarray, np.ndarray, np.ndarray],
             work: np.ndarray | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """Separable smoothing of a float32 volume, as ``gaussian_filter(vol, sigma, mode="nearest")``.

    Each pass accumulates and stores in float32 (SciPy accumulates in float64): within 4e-7 of SciPy's
    result relative to the volume's values, at 2/3 of the time (twice the SIMD width: 3.05 -> 2.0 ms at
    104x104x72).

    Parameters
    ----------
    vol : ndarray of float32, shape (nx, ny, nz)
        C-contiguous.
    weights : ndarray, or a tuple of three
        Odd-length symmetric kernel (:func:`gaussian_weights`), applied along each axis, or one per axis.
    work : ndarray of float32, optional
        :func:`smooth_work`'s array (allocated when not given).
    out : ndarray of float32, shape (nx, ny, nz), optional
        Output (allocated when not given; must not be ``vol``).

    Returns
    -------
    ndarray of float32, shape (nx, ny, nz)
    """
    wx, wy, wz = (np.asarray(w, dtype=np.float32) for w in (weights if isinstance(weights, tuple) else (weights,) * 3))
    work = smooth_work(vol.shape, weights) if work is None else work
    out = np.empty_like(vol) if out is None else out
    _smooth(vol, wx, wy, wz, work, out)
    return out
