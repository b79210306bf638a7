"""Multi-start image registration (SimpleITK) for placing ROIs: EPI to MNI, EPI to T1, T1 to MNI, day 1 to day N.

Why SimpleITK rather than ANTsPy: SimpleITK is already rtnf's ``roi`` dependency (one wheel of
about 50 MB for every platform, no compiler, imported only when an ROI is made), and the maps
needed here are linear (rigid and affine) on small images, where ITK's ``ImageRegistrationMethod``
with Mattes mutual information is the same machinery ANTs uses underneath. ANTsPy would add a
second, larger ITK build (several hundred MB, wheels lagging new Pythons) for its nonlinear SyN,
which a before-the-run ROI placement on a 3 mm EPI does not need.

Why multi-start: a single gradient descent from the centres of mass lands in one of several
nearby optima on an EPI (limited field of view, low contrast), and a random metric sample
moved it between them: repeated registrations of the same volume were 2-6 mm apart at the
edges of the brain. Here every start of a small grid of rotations and shifts around the
centre-of-mass alignment is scored on the same, full set of sample points (no random
subsampling: the result is a function of the images alone), the best few are optimised on the
coarse level, and the best of those is refined.

Matrices are 4x4 in RAS millimetres (nibabel's convention); ITK works in LPS internally.
A registration of ``fixed`` and ``moving`` returns ``fixed_to_moving``: it maps a point of the
fixed image's world to the corresponding point of the moving image's world, which is what
resampling the moving image (or a mask on its grid) onto the fixed grid needs.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ._common import RoiDefError

_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _sitk() -> Any:
    try:
        import SimpleITK as sitk
    except ImportError:
        raise RoiDefError("kind", "registration needs SimpleITK (pip install SimpleITK, or rtnf's 'roi' extra)") from None
    return sitk


def _to_sitk(data: np.ndarray, affine: np.ndarray) -> Any:
    """A SimpleITK image (LPS physical space) from a RAS voxel -> mm affine."""
    sitk = _sitk()
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(data, dtype=np.float32).transpose(2, 1, 0)))
    lin = (_LPS @ affine)[:3, :3]
    spacing = np.linalg.norm(lin, axis=0)
    direction = lin / spacing
    # ITK wants orthonormal direction cosines: take the nearest rotation (scanner
    # affines are orthogonal to rounding).
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


@dataclass(frozen=True)
class MultiStart:
    """The starting poses tried around the centre-of-mass alignment.

    Attributes
    ----------
    rotations_deg : tuple of float
        Angles tried about each axis (all combinations over x, y, z), degrees.
    shifts_mm : tuple of float
        Shifts tried along each axis, one axis at a time (added to every rotation), mm.
    keep : int
        How many of the best-scoring starts are optimised on the coarse level.
    """

    rotations_deg: tuple[float, ...] = (-12.0, 0.0, 12.0)
    shifts_mm: tuple[float, ...] = (-12.0, 0.0, 12.0)
    keep: int = 3

    def poses(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """All (angles in radians (3,), shift in mm (3,)) starts, the centre-of-mass alignment first."""
        angles = [np.deg2rad(np.array(a)) for a in itertools.product(self.rotations_deg, repeat=3)]
        shifts = [np.zeros(3)]
        for axis in range(3):
            for s in self.shifts_mm:
                if s:
                    v = np.zeros(3)
                    v[axis] = s
                    shifts.append(v)
        out = [(np.zeros(3), np.zeros(3))]
        out += [(a, s) for a in angles for s in shifts if np.any(a) or np.any(s)]
        return out


@dataclass(frozen=True)
class Stage:
    """One optimisation stage.

    Attributes
    ----------
    transform : {"rigid", "affine"}
    shrink : list of int
        Shrink factor per pyramid level (coarse first).
    smoothing_mm : list of float
        Gaussian sigma per level, mm.
    iterations : int
        Most optimiser iterations per level.
    sampling : float
        Fraction of the fixed voxels the metric uses: 1 = all (the result depends on the images
        alone); below 1 a random sample drawn with a fixed seed (the same on every run). An affine
        stage on a partial-coverage EPI needs the sample: with every voxel, the background
        outweighs the brain and the template collapses along the slab (scale 0.2).
    seed : int
        Seed of that sample (at least 1: SimpleITK reads 0 as "from the wall clock").
    learning_rate : float
        First step of the optimizer, mm (the largest shift of a voxel; scales from physical
        shift): a refinement that starts next to the optimum takes small steps.
    """

    transform: str
    shrink: tuple[int, ...]
    smoothing_mm: tuple[float, ...]
    iterations: int = 200
    sampling: float = 1.0
    seed: int = 1
    learning_rate: float = 1.0

    def as_dict(self) -> dict[str, Any]:
        """The stage for provenance."""
        return {"transform": self.transform, "shrink": list(self.shrink), "smoothing_mm": list(self.smoothing_mm),
                "iterations": self.iterations, "sampling": self.sampling, "seed": self.seed,
                "learning_rate": self.learning_rate}


@dataclass
class RegistrationResult:
    """A linear registration and how good it is.

    Attributes
    ----------
    fixed_to_moving : ndarray (4, 4)
        RAS mm of the fixed image -> RAS mm of the moving image.
    metric : float
        Final Mattes mutual information on the finest level (negative; lower is better).
    seconds : float
        Wall time.
    starts : int
        Number of starting poses scored.
    start_chosen : dict
        The start that won: rotation (degrees) and shift (mm) added to the centre-of-mass alignment.
    parameters : dict
        Settings, for provenance, and how each refining stage's optimiser stopped (``stopped``:
        "step too small" is converged; "maximum number of iterations" is not).
    """

    fixed_to_moving: np.ndarray
    metric: float
    seconds: float
    starts: int = 1
    start_chosen: dict[str, list[float]] = field(default_factory=dict)
    parameters: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"fixed_to_moving": np.asarray(self.fixed_to_moving).tolist(), "metric": self.metric,
                "seconds": self.seconds, "starts": self.starts, "start_chosen": self.start_chosen,
                "parameters": self.parameters}


def _method(stage: Stage, level: slice, fixed_mask: Any | None, threads: int) -> Any:
    sitk = _sitk()
    reg = sitk.ImageRegistrationMethod()
    reg.SetNumberOfThreads(int(threads))
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    # Every voxel of the (masked) fixed image, or a sample with a fixed seed: the metric and so
    # the result are the same on every run (a wall-clock seed moved registrations by millimetres).
    if stage.sampling < 1.0:
        reg.SetMetricSamplingStrategy(reg.RANDOM)
        reg.SetMetricSamplingPercentage(float(stage.sampling), max(1, int(stage.seed)))
    else:
        reg.SetMetricSamplingStrategy(reg.NONE)
    if fixed_mask is not None:
        reg.SetMetricFixedMask(fixed_mask)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=float(stage.learning_rate), minStep=1e-4, numberOfIterations=stage.iterations,
        gradientMagnitudeTolerance=1e-8)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(list(stage.shrink[level]))
    reg.SetSmoothingSigmasPerLevel(list(stage.smoothing_mm[level]))
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    return reg


def _coarse(img: Any, stage: Stage) -> Any:
    """The image smoothed (sigma in mm) and shrunk as on the stage's coarsest level."""
    sitk = _sitk()
    sigma = stage.smoothing_mm[0]
    out = sitk.SmoothingRecursiveGaussian(img, float(sigma)) if sigma > 0 else img
    return sitk.Shrink(out, [int(stage.shrink[0])] * 3)


def _euler(center: Sequence[float], angles: np.ndarray, translation: np.ndarray, base: np.ndarray) -> Any:
    """A rigid transform about ``center``: the rotation ``angles`` (x, y, z, radians) after ``base`` (3x3)."""
    sitk = _sitk()
    tx = sitk.Euler3DTransform()
    tx.SetCenter([float(c) for c in center])
    tx.SetRotation(*[float(a) for a in angles])
    tx.SetMatrix([float(x) for x in (np.asarray(tx.GetMatrix()).reshape(3, 3) @ base).ravel()])
    tx.SetTranslation([float(t) for t in translation])
    return tx


#: Smallest and largest scale factor of a successful affine registration of heads (no unit): any human
#: head against another or the MNI152 template lies within it.
PLAUSIBLE_SCALES: tuple[float, float] = (0.7, 1.4)


def _check_window(window: tuple[float, float]) -> tuple[float, float]:
    """``(lo, hi)`` as floats, or ValueError when it is no window of positive scale factors."""
    lo, hi = (float(x) for x in window)
    if not (0.0 < lo <= 1.0 <= hi < float("inf")):
        raise ValueError(f"plausible_scales {window}: allowed 0 < lo <= 1 <= hi (finite), e.g. {PLAUSIBLE_SCALES}")
    return lo, hi


def register(
    fixed: tuple[np.ndarray, np.ndarray], moving: tuple[np.ndarray, np.ndarray], *,
    fixed_mask: np.ndarray | None = None, stages: Sequence[Stage] = (Stage("rigid", (4, 2), (6.0, 3.0)),),
    multistart: MultiStart | None = MultiStart(), initial: np.ndarray | None = None, threads: int = 2,
    plausible_scales: tuple[float, float] = PLAUSIBLE_SCALES,
) -> RegistrationResult:
    """Register ``moving`` to ``fixed`` (linear, Mattes mutual information, multi-start).

    Parameters
    ----------
    fixed, moving : (data, affine)
        3D arrays with their voxel -> RAS mm affines.
    fixed_mask : ndarray of bool, optional
        Voxels of the fixed image the metric uses (for an EPI, the head; for the MNI template,
        its dilated brain mask): structures outside it, such as the scalp, cannot pull.
    stages : sequence of Stage
        Rigid first, then optionally affine; the first stage's coarsest level scores the starts.
    multistart : MultiStart or None
        The starts (None: the centre-of-mass alignment only, the former behaviour).
    initial : ndarray (4, 4), optional
        A first guess of ``fixed_to_moving`` (RAS mm) to start from instead of the centres of mass
        (identity for two images of one session; an earlier registration); its rotation part is
        used (scales and shears are left to an affine stage).
    threads : int
        ITK threads.
    plausible_scales : (float, float)
        Smallest and largest scale factor of a successful result (no unit; 0.7-1.4 holds any
        human head against another or the MNI152 template): a start refined outside them failed,
        and the next-best start is refined (``parameters["starts_rejected"]``). When every start
        fails, the one with the best final metric is returned with ``parameters["scales_plausible"]``
        false, for the caller's own check to report.

    Returns
    -------
    RegistrationResult
    """
    lo, hi = _check_window(plausible_scales)
    sitk = _sitk()
    t0 = time.perf_counter()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(threads))
    f_img = _to_sitk(*fixed)
    m_img = _to_sitk(*moving)
    f_mask = None
    if fixed_mask is not None:
        f_mask = sitk.Cast(_to_sitk(np.asarray(fixed_mask, dtype=np.float32), fixed[1]), sitk.sitkUInt8)
    init = sitk.CenteredTransformInitializer(
        f_img if f_mask is None else sitk.Mask(f_img, f_mask), m_img, sitk.Euler3DTransform(),
        sitk.CenteredTransformInitializerFilter.MOMENTS)
    center = init.GetCenter()
    base_t = np.asarray(init.GetTranslation())
    base_r = np.eye(3)
    if initial is not None:
        lps = _LPS @ np.asarray(initial, dtype=np.float64) @ _LPS
        u, _, vt = np.linalg.svd(lps[:3, :3])
        base_r = u @ vt
        c = np.asarray(center)
        # x -> R (x - c) + c + t must send the centre where the guess sends it.
        base_t = lps[:3, :3] @ c + lps[:3, 3] - c
    first = stages[0]
    poses = (multistart or MultiStart((0.0,), (0.0,), 1)).poses()

    # Score every start on the coarsest level, on images smoothed and shrunk once here (the
    # registration method would rebuild its pyramid on every evaluation).
    f_small, m_small = (_coarse(img, first) for img in (f_img, m_img))
    mask_small = None if f_mask is None else sitk.Shrink(f_mask, [first.shrink[0]] * 3)
    scorer = _method(Stage(first.transform, (1,), (0.0,)), slice(0, 1), mask_small, threads)
    scores = []
    for angles, shift in poses:
        scorer.SetInitialTransform(_euler(center, angles, base_t + shift, base_r), inPlace=False)
        try:
            scores.append(float(scorer.MetricEvaluate(f_small, m_small)))
        except RuntimeError:  # too few overlapping samples: a start far off
            scores.append(float("inf"))
    keep = max(1, multistart.keep if multistart else 1)
    best = sorted(range(len(poses)), key=lambda i: scores[i])[:keep]
    if 0 not in best:
        best.append(0)  # the centre-of-mass alignment is always optimised

    # Optimise the best starts on the coarse level; keep the best of them.
    candidates = []
    for i in best:
        tx = _euler(center, poses[i][0], base_t + poses[i][1], base_r)
        reg = _method(first, slice(0, 1), f_mask, threads)
        reg.SetInitialTransform(tx, inPlace=True)
        reg.Execute(f_img, m_img)
        candidates.append((float(reg.GetMetricValue()), i, tx))
    # Refine the best-scoring start; an affine result whose scale factors no head has is a failed
    # start, and the next start is refined instead. (MNI -> T1 on pydecnef-sub1 with the headers
    # moved ran from its best start down a valley of scales and shears to 0.35 with one ITK thread,
    # and sometimes with two; ITK's result depended on earlier registrations in the process.)
    refined = []
    for coarse_metric, chosen, tx in sorted(candidates, key=lambda c: (c[0], c[1])):
        tx, metric, stopped = _refine(tx, coarse_metric, stages, f_img, m_img, f_mask, threads)
        scales = np.linalg.svd(_sitk_matrix(tx)[:3, :3], compute_uv=False)
        refined.append((tx, metric, stopped, chosen, scales))
        if lo <= scales.min() and scales.max() <= hi:
            break
    plausible = lo <= refined[-1][4].min() and refined[-1][4].max() <= hi
    # Every start failed: the best final metric is returned, flagged, for the caller's own check to report.
    kept = len(refined) - 1 if plausible else min(range(len(refined)), key=lambda k: refined[k][1])
    tx, metric, stopped, chosen, _ = refined[kept]
    rejected = [{"rotation_deg": np.rad2deg(poses[r[3]][0]).round(3).tolist(), "shift_mm": poses[r[3]][1].tolist(),
                 "scales": r[4].round(3).tolist(), "metric": r[1]} for k, r in enumerate(refined) if k != kept]
    matrix = _LPS @ _sitk_matrix(tx) @ _LPS
    return RegistrationResult(
        matrix, metric, time.perf_counter() - t0, len(poses),
        {"rotation_deg": np.rad2deg(poses[chosen][0]).round(3).tolist(), "shift_mm": poses[chosen][1].tolist()},
        {"library": f"SimpleITK {sitk.Version.VersionString()}",
         "metric": "Mattes mutual information, 32 bins, voxels of the fixed mask (all, or a seeded sample: stages)",
         "initialisation": ("centres of intensity mass" if initial is None else "a given first guess")
                           + ", plus multi-start",
         "multistart": None if multistart is None else {
             "rotations_deg": list(multistart.rotations_deg), "shifts_mm": list(multistart.shifts_mm),
             "keep": multistart.keep},
         "stages": [s.as_dict() for s in stages],
         "optimizer": "regular step gradient descent, scales from physical shift, learning rate per stage, "
                      "min step 1e-4",
         "interpolator": "linear", "stopped": stopped,
         "plausible_scales": [lo, hi], "scales_plausible": bool(plausible), "starts_rejected": rejected},
    )


def _refine(tx: Any, coarse_metric: float, stages: Sequence[Stage], f_img: Any, m_img: Any, f_mask: Any | None,
            threads: int) -> tuple[Any, float, list[str]]:
    """Run the rest of the first stage's levels from one coarse start, then the later stages.

    Returns the final transform, its metric on the finest level (the coarse one when a single-level
    first stage is all there is) and how each optimiser stopped.
    """
    sitk = _sitk()
    metric = float("nan")
    stopped: list[str] = []
    for n, stage in enumerate(stages):
        if stage.transform == "affine":
            aff = sitk.AffineTransform(3)
            aff.SetCenter(tx.GetCenter())
            aff.SetMatrix(tx.GetMatrix())
            aff.SetTranslation(tx.GetTranslation())
            tx = aff
        elif stage.transform != "rigid":
            raise ValueError(f"stage transform {stage.transform!r}; allowed 'rigid', 'affine'")
        levels = slice(1, None) if n == 0 else slice(0, None)
        if n == 0 and len(stage.shrink) == 1:
            metric = coarse_metric
            continue
        reg = _method(stage, levels, f_mask, threads)
        reg.SetInitialTransform(tx, inPlace=True)
        reg.Execute(f_img, m_img)
        metric = float(reg.GetMetricValue())
        stopped.append(f"finest level, {reg.GetOptimizerIteration()} iterations: "
                       f"{reg.GetOptimizerStopConditionDescription()}")
    return tx, metric, stopped


def rigid_parameters(matrix: np.ndarray) -> tuple[np.ndarray, float]:
    """Translation (mm, at the world origin) and total rotation angle (degrees) of a rigid 4x4 matrix."""
    r = np.asarray(matrix)[:3, :3]
    u, _, vt = np.linalg.svd(r)
    r = u @ vt
    angle = float(np.degrees(np.arccos(np.clip((np.trace(r) - 1) / 2, -1.0, 1.0))))
    return np.asarray(matrix)[:3, 3].copy(), angle


def max_displacement_mm(a: np.ndarray, b: np.ndarray, points_mm: np.ndarray) -> float:
    """Largest distance between where two 4x4 maps send the given points (n, 3), mm."""
    p = np.c_[points_mm, np.ones(len(points_mm))]
    return float(np.linalg.norm((p @ np.asarray(a).T - p @ np.asarray(b).T)[:, :3], axis=1).max())


def box_corners_mm(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The 8 corners of the bounding box of a mask, world mm (8, 3)."""
    ijk = np.argwhere(mask)
    lo, hi = ijk.min(axis=0), ijk.max(axis=0)
    corners = np.array(list(itertools.product(*zip(lo, hi))), dtype=np.float64)
    return corners @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two boolean masks on the same grid (0-1; NaN when both are empty)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    total = int(a.sum() + b.sum())
    return float("nan") if total == 0 else 2.0 * float(np.logical_and(a, b).sum()) / total
