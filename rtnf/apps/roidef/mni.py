"""Regions defined in MNI space, brought to the participant's grid by registering the MNI152 template (SimpleITK, once, before the run)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from rtnf.scanner.volume import Grid, Volume
from ._common import (
    DEFAULT_MIN_COVERAGE,
    RoiDefError,
    RoiDefinition,
    _check_coverage,
    _check_not_empty,
    _coverage,
    _load_image,
    _resample,
    _voxel_world,
)
from .localizer import epi_mask
from .regions import atlas_roi


# --------------------------------------------------------------------------- MNI regions


@dataclass(frozen=True)
class MniRegion:
    """An ellipsoid in MNI152 millimetres, intersected with grey matter.

    Attributes
    ----------
    center_mm : tuple of 3 float
        Centre (x, y, z) in MNI mm.
    semi_axes_mm : tuple of 3 float
        Half-lengths along x, y, z in mm.
    description : str
        What it approximates and from where.
    """

    center_mm: tuple[float, float, float]
    semi_axes_mm: tuple[float, float, float]
    description: str


#: Built-in regions: approximations placed on standard MNI coordinates, NOT atlas
#: labels (no atlas ships offline). Each is intersected with the MNI152 grey-matter
#: probability map. Check the PNG; for a real atlas use ``rtnf roi mni --labels``.
MNI_REGIONS: dict[str, MniRegion] = {
    "anterior_cingulate": MniRegion(
        (0.0, 30.0, 12.0), (10.0, 16.0, 14.0),
        "pregenual + dorsal anterior cingulate (BA 24/32), x -10..10, y 14..46, z -2..26"),
    "insula_left": MniRegion(
        (-38.0, 0.0, 2.0), (6.0, 22.0, 14.0), "left insular cortex, x -44..-32, y -22..22, z -12..16"),
    "insula_right": MniRegion(
        (38.0, 0.0, 2.0), (6.0, 22.0, 14.0), "right insular cortex, x 32..44, y -22..22, z -12..16"),
    "amygdala_left": MniRegion((-22.0, -4.0, -18.0), (7.0, 7.0, 7.0), "left amygdala, sphere of 7 mm"),
    "amygdala_right": MniRegion((22.0, -4.0, -18.0), (7.0, 7.0, 7.0), "right amygdala, sphere of 7 mm"),
    "motor_hand_left": MniRegion((-38.0, -22.0, 56.0), (8.0, 8.0, 8.0), "left M1 hand knob, sphere of 8 mm"),
    "motor_hand_right": MniRegion((38.0, -22.0, 56.0), (8.0, 8.0, 8.0), "right M1 hand knob, sphere of 8 mm"),
    "visual_cortex": MniRegion((0.0, -88.0, 2.0), (14.0, 12.0, 14.0), "calcarine / occipital pole (V1-V2)"),
}


def _mni_grid_world(img: Any) -> np.ndarray:
    ijk = np.indices(img.shape[:3], dtype=np.float64).reshape(3, -1)
    return (img.affine[:3, :3] @ ijk + img.affine[:3, 3:4]).T.reshape(img.shape[:3] + (3,))


def mni_region_image(
    region: str | None = None, *, center_mm: Sequence[float] | None = None, radius_mm: float | None = None,
    gm_threshold: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """A region as a binary image on nilearn's 2 mm MNI152 grid.

    Either a built-in ``region`` (:data:`MNI_REGIONS`) or a sphere
    (``center_mm``, ``radius_mm`` in MNI mm); voxels with grey-matter
    probability below ``gm_threshold`` are removed (0 keeps all).

    Returns
    -------
    data : ndarray of float32 (0 or 1), affine : ndarray (4, 4)
    """
    from nilearn import datasets

    gm = datasets.load_mni152_gm_template(resolution=2)
    world = _mni_grid_world(gm)
    if region is not None:
        if region not in MNI_REGIONS:
            raise RoiDefError("--region", f"{region!r}. Allowed: {', '.join(MNI_REGIONS)}")
        r = MNI_REGIONS[region]
        inside = np.sum(((world - np.asarray(r.center_mm)) / np.asarray(r.semi_axes_mm)) ** 2, axis=-1) <= 1.0
    else:
        if center_mm is None or radius_mm is None or not radius_mm > 0:
            raise RoiDefError("--center-mm", "give --region, or --center-mm X Y Z with --radius-mm R > 0 (MNI mm)")
        inside = np.sum((world - np.asarray(center_mm, dtype=np.float64)) ** 2, axis=-1) <= radius_mm**2
    if not inside.any():
        raise RoiDefError("--center-mm", f"the sphere at {list(center_mm)} mm lies outside the MNI152 template's "
                                         "grid. Allowed: MNI coordinates inside the brain")
    if gm_threshold > 0:
        inside &= np.asarray(gm.dataobj, dtype=np.float32) >= gm_threshold
    if not inside.any():
        raise RoiDefError("--gm-threshold", f"{gm_threshold:g} leaves no grey-matter voxel in the region. "
                                            "Allowed: a lower threshold (0 keeps every voxel)")
    return inside.astype(np.float32), np.asarray(gm.affine, dtype=np.float64)


#: Registration settings of :func:`register_mni` (reported with every result).
REGISTRATION_PARAMETERS: dict[str, Any] = {
    "library": "SimpleITK (ITK ImageRegistrationMethod)",
    "moving": "nilearn MNI152 T1 template (2009c, skull-stripped), 2 mm",
    "fixed": "reference volume (EPI), skull-stripped by nilearn's compute_epi_mask dilated by 1 voxel",
    "metric": "Mattes mutual information, 32 bins, 20% random samples (seeded)",
    "sampling": 0.2,
    "initialisation": "centres of intensity mass (CenteredTransformInitializer, MOMENTS)",
    "stages": [
        {"transform": "rigid (Euler3D, 6 dof)", "shrink": [4, 2], "smoothing_mm": [6.0, 3.0], "iterations": 200},
        {"transform": "affine (12 dof)", "shrink": [2, 1], "smoothing_mm": [3.0, 0.0], "iterations": 200},
    ],
    "optimizer": "regular step gradient descent, scales from physical shift, learning rate 1, min step 1e-4",
    "interpolator": "linear",
}


@dataclass
class MniRegistration:
    """An affine map between the reference's scanner RAS mm and MNI152 mm.

    Attributes
    ----------
    ref_to_mni : ndarray (4, 4)
        Maps a point of the reference (scanner RAS mm) to MNI mm.
    metric : float
        Final Mattes mutual information (negative; lower is better).
    seconds : float
        Wall time of the registration.
    parameters : dict
        The settings used (:data:`REGISTRATION_PARAMETERS`).
    """

    ref_to_mni: np.ndarray
    metric: float = float("nan")
    seconds: float = float("nan")
    parameters: dict[str, Any] = field(default_factory=lambda: dict(REGISTRATION_PARAMETERS))

    def save(self, path: str | Path) -> None:
        """Write as JSON (the matrix and how it was obtained)."""
        Path(path).write_text(json.dumps({
            "ref_to_mni": np.asarray(self.ref_to_mni).tolist(), "metric": self.metric,
            "seconds": self.seconds, "parameters": self.parameters,
            "description": "4x4 affine: reference scanner RAS mm -> MNI152 mm",
        }, indent=2))

    @classmethod
    def load(cls, path: str | Path) -> "MniRegistration":
        """Read a registration written by :meth:`save`."""
        try:
            d = json.loads(Path(path).read_text())
            m = np.asarray(d["ref_to_mni"], dtype=np.float64)
            assert m.shape == (4, 4)
        except Exception as exc:  # any malformed file gets the same message
            raise RoiDefError("--transform", f"{path} is not a registration written by rtnf roi mni ({exc})") from None
        return cls(m, d.get("metric", float("nan")), d.get("seconds", float("nan")), d.get("parameters", {}))


_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _to_sitk(data: np.ndarray, affine: np.ndarray) -> Any:
    """A SimpleITK image (LPS physical space) from a RAS voxel -> mm affine."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(data, dtype=np.float32).transpose(2, 1, 0)))
    lin = (_LPS @ affine)[:3, :3]
    spacing = np.linalg.norm(lin, axis=0)
    direction = lin / spacing
    # ITK wants orthonormal direction cosines: take the nearest rotation (scanner
    # affines are orthogonal to rounding; a sheared one is reported by the caller).
    u, _, vt = np.linalg.svd(direction)
    img.SetSpacing([float(s) for s in spacing])
    img.SetDirection([float(x) for x in (u @ vt).ravel()])
    img.SetOrigin([float(x) for x in (_LPS @ affine)[:3, 3]])
    return img


def _sitk_matrix(tx: Any) -> np.ndarray:
    """4x4 matrix (LPS) of a SimpleITK matrix-offset transform: x -> A (x - c) + c + t."""
    a = np.asarray(tx.GetMatrix(), dtype=np.float64).reshape(3, 3)
    c = np.asarray(tx.GetCenter(), dtype=np.float64)
    t = np.asarray(tx.GetTranslation(), dtype=np.float64)
    m = np.eye(4)
    m[:3, :3] = a
    m[:3, 3] = c + t - a @ c
    return m


def register_mni(reference: Volume | tuple[np.ndarray, np.ndarray], *, seed: int = 1, threads: int = 2) -> MniRegistration:
    """Register the MNI152 template to the reference volume (affine, once, before the run).

    Parameters
    ----------
    reference : Volume or (data, affine)
        The reference EPI volume.
    seed : int
        Seed of the metric's random sampling, at least 1 (SimpleITK reads 0 as "seed from the wall clock",
        which made repeated registrations differ).
    threads : int
        ITK threads (the figures in the docs are for 2).

    Returns
    -------
    MniRegistration
        With ``ref_to_mni``: reference scanner RAS mm -> MNI mm. The settings
        are :data:`REGISTRATION_PARAMETERS`.
    """
    try:
        import SimpleITK as sitk
    except ImportError:
        raise RoiDefError("kind", "rtnf roi mni needs SimpleITK (pip install SimpleITK)") from None
    from nilearn import datasets

    t0 = time.perf_counter()
    data, affine = (reference.data, reference.affine) if isinstance(reference, Volume) else reference
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(threads))
    # The template is skull-stripped: strip the EPI too (nilearn's EPI mask,
    # dilated by one voxel), or mutual information fits the brain to the scalp.
    from scipy.ndimage import binary_dilation

    data = np.asarray(data, dtype=np.float32)
    head = binary_dilation(epi_mask(data), iterations=1)
    fixed = _to_sitk(np.where(head, data, 0.0), affine)
    tmpl = datasets.load_mni152_template(resolution=2)
    moving = _to_sitk(np.asarray(tmpl.dataobj, dtype=np.float32), np.asarray(tmpl.affine))

    def method(shrink: list[int], smooth: list[float]) -> Any:
        sampling = float(REGISTRATION_PARAMETERS["sampling"])
        reg = sitk.ImageRegistrationMethod()
        reg.SetNumberOfThreads(int(threads))
        reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
        if sampling < 1.0:
            reg.SetMetricSamplingStrategy(reg.RANDOM)
            reg.SetMetricSamplingPercentage(sampling, max(1, int(seed)))  # 0 would mean the wall clock
        else:
            reg.SetMetricSamplingStrategy(reg.NONE)
        reg.SetInterpolator(sitk.sitkLinear)
        reg.SetOptimizerAsRegularStepGradientDescent(
            learningRate=1.0, minStep=1e-4, numberOfIterations=200, gradientMagnitudeTolerance=1e-8)
        reg.SetOptimizerScalesFromPhysicalShift()
        reg.SetShrinkFactorsPerLevel(shrink)
        reg.SetSmoothingSigmasPerLevel(smooth)
        reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
        return reg

    init = sitk.CenteredTransformInitializer(
        fixed, moving, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS)
    rigid_stage, affine_stage = REGISTRATION_PARAMETERS["stages"]
    reg = method(rigid_stage["shrink"], rigid_stage["smoothing_mm"])
    reg.SetInitialTransform(init, inPlace=True)
    reg.Execute(fixed, moving)
    aff = sitk.AffineTransform(3)
    aff.SetCenter(init.GetCenter())
    aff.SetMatrix(init.GetMatrix())
    aff.SetTranslation(init.GetTranslation())
    reg = method(affine_stage["shrink"], affine_stage["smoothing_mm"])
    reg.SetInitialTransform(aff, inPlace=True)
    reg.Execute(fixed, moving)
    metric = float(reg.GetMetricValue())
    ref_to_mni = _LPS @ _sitk_matrix(aff) @ _LPS
    scales = np.linalg.svd(ref_to_mni[:3, :3], compute_uv=False)
    if scales.max() > 1.4 or scales.min() < 0.7:
        raise RoiDefError(
            "--reference",
            f"the registration of the MNI152 template to the reference failed (scale factors "
            f"{', '.join(f'{x:.2f}' for x in scales)}, expected 0.7-1.4 for a human head). Allowed: a reference "
            "EPI of the whole head or most of it; else define the ROI with 'sphere', 'mask' or 'localizer'",
        )
    return MniRegistration(ref_to_mni, metric, time.perf_counter() - t0, dict(REGISTRATION_PARAMETERS))


def mni_roi(
    grid: Grid, registration: MniRegistration | np.ndarray, *, region: str | None = None,
    center_mm: Sequence[float] | None = None, radius_mm: float | None = None, mask: str | Path | None = None,
    labels: str | Path | None = None, table: str | Path | None = None, names: Sequence[str] | None = None,
    gm_threshold: float = 0.5, threshold: float = 0.5, name: str = "roi",
    min_coverage: float = DEFAULT_MIN_COVERAGE,
) -> RoiDefinition:
    """A region defined in MNI space, resampled to the reference grid through a registration.

    The region is one of: a built-in ``region`` (:data:`MNI_REGIONS`), an MNI
    sphere (``center_mm``, ``radius_mm``; both intersected with grey matter
    >= ``gm_threshold``), an MNI-space ``mask`` (kept where > ``threshold``), or
    ``names`` of an MNI-space ``labels`` image with its ``table``.

    Binary regions are interpolated linearly onto the reference grid and kept
    where the interpolated fraction is >= 0.5 (partial-volume majority).
    """
    m = registration.ref_to_mni if isinstance(registration, MniRegistration) else np.asarray(registration)
    if labels is not None:
        if table is None or not names:
            raise RoiDefError("--table", "an atlas needs --labels, --table and --name")
        out = atlas_roi(labels, table, names, grid, name=name, min_coverage=min_coverage, world_to_atlas=m)
        out.kind = "mni"
        out.details["space"] = "MNI152"
        return out
    if mask is not None:
        data, aff = _load_image(mask, "--mask")
        src = (np.asarray(data, dtype=np.float32) > threshold).astype(np.float32)
        what, param = f"mask {mask}", "--mask"
    else:
        src, aff = mni_region_image(region, center_mm=center_mm, radius_mm=radius_mm, gm_threshold=gm_threshold)
        what = f"region {region!r}" if region else f"MNI sphere at {list(center_mm)} r={radius_mm} mm"
        param = "--region" if region else "--center-mm"
    inv = np.linalg.inv(m)
    world = _voxel_world(src > 0, aff)
    coverage = _coverage(world @ inv[:3, :3].T + inv[:3, 3], grid)
    roi = _resample(src, aff, grid, order=1, world_to_src=m) >= 0.5
    _check_not_empty(roi, param, grid, f"the {what} (after registration)", "a region inside the functional volume")
    _check_coverage(coverage, min_coverage, param, grid)
    details = {"space": "MNI152", "region": region, "gm_threshold": gm_threshold, "ref_to_mni": m.tolist()}
    if region:
        details["definition"] = MNI_REGIONS[region].description
    return RoiDefinition(name, "mni", roi, grid, coverage, details)
