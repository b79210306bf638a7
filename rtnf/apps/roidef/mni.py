"""Regions defined in MNI space, brought to the participant's grid by registering the MNI152 template (SimpleITK, once, before the run)."""

from __future__ import annotations

import dataclasses
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
from .registration import _LPS, PLAUSIBLE_SCALES, MultiStart, Stage, _sitk_matrix, _to_sitk, register  # noqa: F401 (re-exported)


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


#: Stages of :func:`register_mni` (reported with every result).
#: EPI -> MNI: the affine first on a seeded 20 % sample at half resolution (with every voxel from the
#: rigid start, the template collapses along a slab-shaped EPI: scale 0.2; 100 iterations bring it
#: into the basin), then refined on every voxel, smoothed 1 mm on the finest level, from there. The
#: refinement is what makes it repeatable: with the random sample (or an unsmoothed finest level,
#: whose linear-interpolation ripples the step descent never settles in) the optimiser ran out of
#: iterations somewhere along the flat valley of scales and shears, and 3 seeds ended 5 mm apart at
#: the brain box's corners on pydecnef-sub1; refined, it converges ("step too small") to the same
#: point within 0.01 mm.
EPI_TO_MNI_STAGES = (Stage("rigid", (4, 2), (6.0, 3.0)), Stage("affine", (2,), (3.0,), iterations=100, sampling=0.2),
                     Stage("affine", (2, 1), (2.0, 1.0), iterations=300, learning_rate=0.5))
EPI_TO_T1_STAGES = (Stage("rigid", (4, 2, 1), (6.0, 3.0, 1.0)),)
MNI_TO_T1_STAGES = (Stage("rigid", (4, 2), (6.0, 3.0)), Stage("affine", (2, 1), (3.0, 1.0)))

#: Registration settings of :func:`register_mni` (the direct route; see ``parameters`` of a result).
REGISTRATION_PARAMETERS: dict[str, Any] = {
    "library": "SimpleITK (ITK ImageRegistrationMethod)",
    "moving": "nilearn MNI152 T1 template (2009c, skull-stripped), 2 mm",
    "fixed": "reference volume (EPI), zero outside nilearn's compute_epi_mask dilated by 1 voxel",
    "metric": "Mattes mutual information, 32 bins, every voxel (rigid; affine refinement) / a 20 % sample with the "
              "given seed (first affine stage)",
    "initialisation": "centres of intensity mass, then multi-start (rotation/shift grid scored on the coarse level)",
    "stages": [s.as_dict() for s in EPI_TO_MNI_STAGES],
    "optimizer": "regular step gradient descent, scales from physical shift, learning rate per stage, min step 1e-4",
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
        Final Mattes mutual information of the last step (negative; lower is better).
    seconds : float
        Wall time of the registration.
    parameters : dict
        The settings used.
    quality : dict
        ``brain_dice``: overlap of the MNI152 brain mask carried onto the reference with the
        reference's own brain mask (0-1; about 0.85-0.9 for a good EPI registration), and the
        final metric of each step.
    steps : dict
        The component transforms (``ref_to_t1``, ``t1_to_mni`` when a T1 was used), 4x4 RAS mm.
    """

    ref_to_mni: np.ndarray
    metric: float = float("nan")
    seconds: float = float("nan")
    parameters: dict[str, Any] = field(default_factory=lambda: dict(REGISTRATION_PARAMETERS))
    quality: dict[str, Any] = field(default_factory=dict)
    steps: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | Path) -> None:
        """Write as JSON (the matrices and how they were obtained)."""
        Path(path).write_text(json.dumps({
            "ref_to_mni": np.asarray(self.ref_to_mni).tolist(), "metric": self.metric,
            "seconds": self.seconds, "quality": self.quality,
            "steps": {k: np.asarray(v).tolist() for k, v in self.steps.items()},
            "parameters": self.parameters,
            "description": "4x4 affines in RAS mm (nibabel convention): ref_to_mni maps a point of the reference "
                           "(scanner RAS mm) to MNI152 mm; steps hold the components (ref_to_t1, t1_to_mni)",
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
        return cls(m, d.get("metric", float("nan")), d.get("seconds", float("nan")), d.get("parameters", {}),
                   d.get("quality", {}), {k: np.asarray(v) for k, v in d.get("steps", {}).items()})


def _mni_template() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """nilearn's MNI152 template (2 mm), its brain mask, and the affine."""
    from nilearn import datasets

    tmpl = datasets.load_mni152_template(resolution=2)
    brain = datasets.load_mni152_brain_mask(resolution=2)
    return (np.asarray(tmpl.dataobj, dtype=np.float32), np.asarray(brain.dataobj) > 0,
            np.asarray(tmpl.affine, dtype=np.float64))


def _downsample(data: np.ndarray, affine: np.ndarray, voxel_mm: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """A volume resampled to isotropic ``voxel_mm`` (a 1 mm T1 is 8x fewer voxels at 2 mm, as precise here)."""
    import nibabel as nib
    from nibabel.processing import resample_to_output

    img = resample_to_output(nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine), voxel_mm, order=1)
    return np.asarray(img.dataobj, dtype=np.float32), np.asarray(img.affine, dtype=np.float64)


def _seeded(stages: Sequence[Stage], seed: int) -> tuple[Stage, ...]:
    """The stages with the metric sample's seed set (only stages that sample use it)."""
    return tuple(dataclasses.replace(s, seed=int(seed)) for s in stages)


def brain_overlap(reference: tuple[np.ndarray, np.ndarray], ref_to_mni: np.ndarray) -> float:
    """Dice of the MNI152 brain mask carried onto the reference with the reference's own brain mask (0-1)."""
    from .registration import dice

    data, affine = reference
    _, brain, mni_affine = _mni_template()
    grid = Grid(tuple(data.shape[:3]), affine)
    mapped = _resample(brain.astype(np.float32), mni_affine, grid, order=1, world_to_src=ref_to_mni) >= 0.5
    return dice(mapped, epi_mask(np.asarray(data, dtype=np.float32)))


def register_mni(
    reference: Volume | tuple[np.ndarray, np.ndarray], *, t1: Volume | tuple[np.ndarray, np.ndarray] | None = None,
    seed: int = 1, threads: int = 2, multistart: MultiStart | None = MultiStart(),
) -> MniRegistration:
    """Register the MNI152 template to the reference volume (once, before the run).

    Without a T1: the template is registered to the EPI directly (rigid, then affine). With the
    session's T1: the EPI is registered to the T1 (rigid: same head, same session; first on the
    whole heads, then on the T1 stripped where that and the direct registration put the brain, so
    the head may move between T1 and EPI, tested for 3.5 degrees / 4.8 mm) and the template to
    the stripped T1 (affine, brain-to-brain), and the two are composed; the T1's contrast and
    resolution make the MNI step more precise.

    Parameters
    ----------
    reference : Volume or (data, affine)
        The reference EPI volume.
    t1 : Volume or (data, affine), optional
        The same session's T1-weighted volume (any orientation; resampled to 2 mm here).
    seed : int
        Seed of the stages that sample the metric (at least 1): another seed is another sample,
        which moves the result by well under 1 mm (the repeatability the real-data test checks).
    threads : int
        ITK threads (the figures in the docs are for 2).
    multistart : MultiStart or None
        Starting poses (None: centre-of-mass alignment only).

    Returns
    -------
    MniRegistration
        ``ref_to_mni`` (reference scanner RAS mm -> MNI mm), the final metric, ``quality``
        (``brain_dice``, per-step metrics) and ``steps``.
    """
    from scipy.ndimage import binary_dilation

    if int(seed) < 1:
        raise ValueError(f"seed {seed}: SimpleITK reads 0 as 'from the wall clock'; allowed: an integer >= 1")
    t0 = time.perf_counter()
    data, affine = (reference.data, reference.affine) if isinstance(reference, Volume) else reference
    data = np.asarray(data, dtype=np.float32)
    affine = np.asarray(affine, dtype=np.float64)
    # The template is skull-stripped: the metric looks only inside the EPI's head (nilearn's
    # EPI mask dilated by one voxel), or mutual information fits the brain to the scalp.
    head = binary_dilation(epi_mask(data), iterations=1)
    fixed = (np.where(head, data, 0.0), affine)
    tmpl, brain, mni_affine = _mni_template()
    quality: dict[str, Any] = {}
    steps: dict[str, Any] = {}
    # No metric mask here: the zero background around the stripped EPI is what holds the
    # affine's scales (with the metric inside the head only, the template inflates).
    direct = register(fixed, (tmpl, mni_affine), stages=_seeded(EPI_TO_MNI_STAGES, seed), multistart=multistart,
                      threads=threads)
    ref_to_mni = direct.fixed_to_moving
    quality["metric_epi_to_mni"] = direct.metric
    params = dict(direct.parameters, route="EPI -> MNI152 directly (no T1 given)", start_chosen=direct.start_chosen)
    metric = direct.metric
    if t1 is not None:
        t1_data, t1_affine = (t1.data, t1.affine) if isinstance(t1, Volume) else t1
        t1_small = _downsample(t1_data, np.asarray(t1_affine, dtype=np.float64))
        # The head may have moved between the T1 and the EPI: T1 -> EPI is first estimated on the
        # whole heads (neither stripped, so no strip edge holds the estimate), and the T1 stripped
        # with the template's brain mask carried through T1 -> EPI -> MNI. (Stripped as if EPI and T1
        # shared scanner coordinates, the strip's edge, the EPI's brain outline, held EPI -> T1 near
        # the identity, 0.4 degrees for a 4 degree move, and MNI -> T1 then collapsed, scale 2.9;
        # wider strips, or the metric inside the EPI's eroded or dilated brain, did not help.)
        first = register((data, affine), t1_small, stages=_seeded(EPI_TO_T1_STAGES, seed), multistart=multistart,
                         initial=np.eye(4), threads=threads)
        # The strip is 2 mm wide (6 mm left dura in and inflated the template, brain Dice 0.85 vs
        # 0.91): EPI and T1 then both show a brain on a zero background, which mutual information
        # aligns more precisely; EPI -> T1 is refined on it.
        t1_grid = Grid(tuple(t1_small[0].shape), t1_small[1])
        t1_to_mni_first = direct.fixed_to_moving @ np.linalg.inv(first.fixed_to_moving)
        t1_brain = _resample(binary_dilation(brain, iterations=1).astype(np.float32), mni_affine, t1_grid, order=1,
                             world_to_src=t1_to_mni_first) >= 0.5
        t1_stripped = (np.where(t1_brain, t1_small[0], 0.0), t1_small[1])
        epi_t1 = register(fixed, t1_stripped, stages=_seeded(EPI_TO_T1_STAGES, seed), multistart=multistart,
                          initial=first.fixed_to_moving, threads=threads)
        mni_t1 = register((tmpl, mni_affine), t1_stripped, stages=_seeded(MNI_TO_T1_STAGES, seed),
                          multistart=multistart, threads=threads,
                          initial=epi_t1.fixed_to_moving @ np.linalg.inv(direct.fixed_to_moving))
        t1_to_mni = np.linalg.inv(mni_t1.fixed_to_moving)
        ref_to_mni = t1_to_mni @ epi_t1.fixed_to_moving
        steps = {"ref_to_t1": epi_t1.fixed_to_moving, "t1_to_mni": t1_to_mni, "ref_to_mni_direct": direct.fixed_to_moving}
        quality.update(metric_epi_to_t1_whole_head=first.metric, metric_epi_to_t1=epi_t1.metric,
                       metric_mni_to_t1=mni_t1.metric)
        params = {"route": "EPI -> T1 rigid, MNI152 -> T1 affine (T1 stripped through a whole-head EPI -> T1 and "
                           "EPI -> MNI152, both started from them), composed",
                  "epi_to_mni": params,
                  "epi_to_t1_whole_head": dict(first.parameters, start_chosen=first.start_chosen),
                  "epi_to_t1": dict(epi_t1.parameters, start_chosen=epi_t1.start_chosen),
                  "mni_to_t1": dict(mni_t1.parameters, start_chosen=mni_t1.start_chosen)}
        metric = mni_t1.metric
    scales = np.linalg.svd(ref_to_mni[:3, :3], compute_uv=False)
    lo, hi = PLAUSIBLE_SCALES
    if scales.max() > hi or scales.min() < lo:
        raise RoiDefError(
            "--reference",
            f"the registration of the MNI152 template to the reference failed (scale factors "
            f"{', '.join(f'{x:.2f}' for x in scales)}, expected {lo:g}-{hi:g} for a human head). Allowed: a reference "
            "EPI of the whole head or most of it; else define the ROI with 'sphere', 'mask' or 'localizer'",
        )
    quality["brain_dice"] = brain_overlap((data, affine), ref_to_mni)
    return MniRegistration(ref_to_mni, metric, time.perf_counter() - t0, params, quality, steps)


def load_or_register(
    reference: Volume, transform: str | Path | None, t1: str | Path | None, save_to: Path
) -> tuple["MniRegistration", bool]:
    """The registration of ``rtnf roi mni``/``tissue``: ``--transform``'s saved one, or a new one saved to ``save_to``.

    Parameters
    ----------
    reference : Volume
        The reference EPI volume.
    transform : path or None
        A registration saved by an earlier command (``*_xfm.json``); when given, nothing is registered.
    t1 : path or None
        The session's T1, for the route through it (:func:`register_mni`).
    save_to : Path
        Where a new registration is saved (reuse it with ``--transform``).

    Returns
    -------
    (MniRegistration, bool)
        The registration and whether it is new.
    """
    if transform is not None:
        return MniRegistration.load(transform), False
    from .reference import load_reference

    reg = register_mni(reference, t1=None if t1 is None else load_reference(t1))
    save_to.parent.mkdir(parents=True, exist_ok=True)
    reg.save(save_to)
    return reg, True


def mni_roi(
    grid: Grid, registration: MniRegistration | np.ndarray, *, region: str | None = None,
    center_mm: Sequence[float] | None = None, radius_mm: float | None = None,
    mask: str | Path | tuple[np.ndarray, np.ndarray] | None = None, labels: str | Path | None = None, table: str | Path | None = None, names: Sequence[str] | None = None,
    gm_threshold: float = 0.5, threshold: float = 0.5, name: str = "roi",
    min_coverage: float = DEFAULT_MIN_COVERAGE,
) -> RoiDefinition:
    """A region defined in MNI space, resampled to the reference grid through a registration.

    The region is one of: a built-in ``region`` (:data:`MNI_REGIONS`), an MNI
    sphere (``center_mm``, ``radius_mm``; both intersected with grey matter
    >= ``gm_threshold``), an MNI-space ``mask`` (a file or (data, affine), e.g. from
    :func:`rtnf.apps.roidef.atlases.atlas_region`; kept where > ``threshold``), or
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
    if isinstance(mask, tuple):  # an MNI-space region made here (atlas labels)
        src, aff = (np.asarray(mask[0], dtype=np.float32) > threshold).astype(np.float32), np.asarray(mask[1])
        what, param = "atlas region", "--label"
    elif mask is not None:
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
