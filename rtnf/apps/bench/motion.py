"""``rtnf bench motion``: realignment (+ two 8 mm ROIs) per volume, next to SimpleITK.

Times :meth:`rtnf.analysis.motion.Realigner.estimate` plus the sampling of two 8 mm
spherical ROIs from the realigned volume, per volume, on synthetic runs with
known motion (``scanner_sim``) at 64x64x36 (3 mm) and 104x104x72 (2 mm), on
one core; reports the accuracy against the simulator's truth, and the same for
SimpleITK's rigid registration (Euler3DTransform, mean squares, regular-step
gradient descent, one thread, all voxels of the same dilated brain mask) on a
subset of the same volumes, with the ratio of the medians.

SimpleITK is optional (``pip install SimpleITK``); without it the comparison
columns are left empty. :func:`sitk_rigid` is also what the real-data tests
use as the established reference.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from ._stats import summarize_ms, table

NAME = "motion"
HELP = "realignment + ROI sampling per volume (64x64x36, 104x104x72) vs SimpleITK rigid registration"

#: scanner RAS <-> DICOM/ITK LPS (its own inverse)
_RAS_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])

GRIDS = {"64": ((64, 64, 36), 3.0), "104": ((104, 104, 72), 2.0)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the motion stage."""
    parser.add_argument("--grids", nargs="+", default=list(GRIDS), choices=list(GRIDS),
                        help="grids to time: 64 (64x64x36, 3 mm) and/or 104 (104x104x72, 2 mm)")
    parser.add_argument("--volumes", type=int, default=60, help="synthetic volumes per grid (default 60)")
    parser.add_argument("--sitk-volumes", type=int, default=10,
                        help="volumes registered with SimpleITK for the comparison (default 10; 0 skips it)")
    parser.add_argument("--max-trans-mm", type=float, default=3.0, help="motion bound, mm (default 3)")
    parser.add_argument("--max-rot-deg", type=float, default=3.0, help="motion bound, degrees (default 3)")
    parser.add_argument("--noise-pct", type=float, default=1.0, help="noise, percent of brain mean (default 1)")
    parser.add_argument("--sigma-vox", type=float, default=1.0, help="Realigner smoothing sigma, voxels (default 1)")
    parser.add_argument("--sample-step", default="auto",
                        help="Realigner: every k-th mask voxel, or auto (about 12,000 points; the default)")
    parser.add_argument("--threads", type=int, default=1, help="BLAS/OpenMP/ITK threads (default 1: one core)")
    parser.add_argument("--seed", type=int, default=0)


# --------------------------------------------------------------------------- SimpleITK reference
def _to_sitk(data: np.ndarray, affine_ras: np.ndarray) -> Any:
    """SimpleITK image (LPS physical space) of an (i, j, k) array with a voxel-to-RAS affine."""
    import SimpleITK as sitk

    lps = _RAS_LPS @ np.asarray(affine_ras, dtype=np.float64)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    direction = lps[:3, :3] / spacing
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(data, dtype=np.float32).transpose(2, 1, 0)))
    img.SetSpacing([float(s) for s in spacing])
    img.SetOrigin([float(o) for o in lps[:3, 3]])
    img.SetDirection([float(v) for v in direction.ravel()])
    return img


def _transform_matrix(tx: Any) -> np.ndarray:
    """4x4 matrix of any affine-like SimpleITK transform, from the images of 4 points."""
    o = np.array(tx.TransformPoint((0.0, 0.0, 0.0)))
    m = np.eye(4)
    m[:3, 3] = o
    for k in range(3):
        e = [0.0, 0.0, 0.0]
        e[k] = 1.0
        m[:3, k] = np.array(tx.TransformPoint(tuple(e))) - o
    return m


def sitk_rigid(
    reference: np.ndarray,
    volume: np.ndarray,
    affine: np.ndarray,
    mask: np.ndarray | None = None,
    threads: int | None = 1,
    sampling: float | None = None,
) -> np.ndarray:
    """SimpleITK rigid registration of ``volume`` to ``reference``, in rtnf's motion convention.

    Euler3DTransform centred on the mask's centroid, mean squares metric,
    regular-step gradient descent with physical-shift scales, linear
    interpolation, one resolution, no smoothing.

    Parameters
    ----------
    reference, volume : ndarray, shape (nx, ny, nz)
        Volumes on the same grid.
    affine : ndarray, shape (4, 4)
        Voxel to scanner RAS mm.
    mask : ndarray of bool, optional
        Fixed-image mask (e.g. :attr:`rtnf.analysis.motion.Realigner.mask_`).
    threads : int or None
        ITK threads (None: ITK's default).
    sampling : float or None
        Fraction of mask voxels sampled (regular); None uses all.

    Returns
    -------
    ndarray, shape (6,)
        trans_x, trans_y, trans_z (mm), rot_x, rot_y, rot_z (radians): world RAS,
        about the origin, ``R = Rz @ Ry @ Rx``, ``volume(R p + t) = reference(p)``.

    Notes
    -----
    ITK works in LPS and its registration transform maps fixed-image (here
    reference) points to moving-image (volume) points, which is our pose in
    LPS; conjugating by ``diag(-1, -1, 1)`` expresses it in RAS.
    """
    import SimpleITK as sitk

    from rtnf.analysis.motion import rigid_params

    fixed = _to_sitk(reference, affine)
    moving = _to_sitk(volume, affine)
    reg = sitk.ImageRegistrationMethod()
    if threads is not None:
        reg.SetNumberOfThreads(int(threads))
    reg.SetMetricAsMeanSquares()
    if mask is not None:
        mimg = _to_sitk(mask.astype(np.float32), affine)
        reg.SetMetricFixedMask(sitk.Cast(mimg, sitk.sitkUInt8))
        ijk = np.argwhere(mask).mean(axis=0)
    else:
        ijk = (np.array(reference.shape) - 1) / 2.0
    if sampling is not None:
        reg.SetMetricSamplingStrategy(reg.REGULAR)
        reg.SetMetricSamplingPercentage(float(sampling))
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=1e-4, numberOfIterations=300, relaxationFactor=0.5, gradientMagnitudeTolerance=1e-10
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    center_lps = _RAS_LPS @ (np.asarray(affine, dtype=np.float64) @ np.append(ijk, 1.0))
    init = sitk.Euler3DTransform()
    init.SetCenter([float(c) for c in center_lps[:3]])
    reg.SetInitialTransform(init, inPlace=False)
    out = reg.Execute(fixed, moving)
    m_lps = _transform_matrix(out)
    return rigid_params(_RAS_LPS @ m_lps @ _RAS_LPS)


# --------------------------------------------------------------------------- bench
def _errors(est: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    err = np.asarray(est) - np.asarray(truth)
    et = np.abs(err[:, :3])
    er = np.rad2deg(np.abs(err[:, 3:]))
    return {
        "trans_med_mm": float(np.median(et)),
        "trans_max_mm": float(et.max()),
        "rot_med_deg": float(np.median(er)),
        "rot_max_deg": float(er.max()),
    }


def _bench_grid(key: str, args: argparse.Namespace) -> dict[str, Any]:
    from scanner_sim.phantom import make_phantom
    from scanner_sim.spec import RunSpec
    from scanner_sim.synth import SyntheticRun

    from rtnf.analysis.motion import Realigner
    from rtnf.analysis.rois import SphereROI
    from rtnf.scanner.volume import Grid

    shape, voxel_mm = GRIDS[key]
    spec = RunSpec.from_dict({
        "tr_s": 1.0, "n_volumes": int(args.volumes), "shape": list(shape), "voxel_mm": voxel_mm,
        "noise_pct": float(args.noise_pct), "seed": int(args.seed),
        "motion": {"max_trans_mm": float(args.max_trans_mm), "max_rot_deg": float(args.max_rot_deg), "kind": "smooth"},
    })
    run = SyntheticRun(spec, phantom=make_phantom(shape, voxel_mm))
    vols = [run.volume(i) for i in range(len(run))]
    truth = np.array([run.truth.motion(i) for i in range(len(run))])
    grid = Grid(shape, run.affine)
    rois = [SphereROI("acc", (0.0, 30.0, 15.0), 8.0).fit(grid), SphereROI("insula", (37.0, 1.0, -1.0), 8.0).fit(grid)]

    step = args.sample_step if args.sample_step == "auto" else int(args.sample_step)
    realigner = Realigner(sigma_vox=args.sigma_vox, sample_step=step)
    t0 = time.perf_counter()
    realigner.fit(vols[0], run.affine)
    t_fit = time.perf_counter() - t0
    # warm-up on a throw-away pass (first-call costs), then the timed pass from a fresh start
    for v in vols[:3]:
        realigner.estimate(v)
    realigner.reset()
    est, times, iters = [], [], []
    for v in vols:
        t0 = time.perf_counter()
        p = realigner.estimate(v)
        for roi in rois:
            realigner.sample(v, p, roi.indices_).mean()
        times.append(time.perf_counter() - t0)
        est.append(p)
        iters.append(realigner.result_.n_iter)
    ours = summarize_ms(times)
    row: dict[str, Any] = {
        "grid": f"{'x'.join(map(str, shape))} ({voxel_mm:g} mm)",
        "step": realigner.sample_step_,
        "points": realigner.n_points_,
        "fit_ms": t_fit * 1000,
        "median_ms": ours["median_ms"],
        "p99_ms": ours["p99_ms"],
        "iter_median": float(np.median(iters)),
        **_errors(est, truth),
    }
    n_sitk = min(int(args.sitk_volumes), len(vols) - 1)
    if n_sitk > 0:
        try:
            import SimpleITK  # noqa: F401
        except ImportError:
            row["sitk"] = "SimpleITK not installed"
        else:
            idx = np.linspace(1, len(vols) - 1, n_sitk).round().astype(int)
            st, sest = [], []
            for i in idx:
                t0 = time.perf_counter()
                sest.append(sitk_rigid(vols[0], vols[i], run.affine, mask=realigner.mask_, threads=args.threads))
                st.append(time.perf_counter() - t0)
            s = summarize_ms(st)
            e = _errors(sest, truth[idx])
            row.update({
                "sitk_n": int(n_sitk),
                "sitk_median_ms": s["median_ms"],
                "sitk_p99_ms": s["p99_ms"],
                "sitk_trans_med_mm": e["trans_med_mm"],
                "sitk_rot_med_deg": e["rot_med_deg"],
                "ratio": s["median_ms"] / ours["median_ms"],
                "ours_on_subset_trans_med_mm": _errors(np.array(est)[idx], truth[idx])["trans_med_mm"],
            })
    return row


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark; returns JSON-serialisable results with a ``text`` table."""
    limits = None
    try:
        from threadpoolctl import threadpool_limits

        limits = threadpool_limits(int(args.threads))
    except ImportError:  # numpy's own loops are single-threaded anyway
        pass
    try:
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(args.threads))
    except ImportError:
        pass
    try:
        rows = [_bench_grid(k, args) for k in args.grids]
    finally:
        if limits is not None:
            limits.restore_original_limits()
    cols = ["grid", "step", "points", "median_ms", "p99_ms", "iter_median", "trans_med_mm", "trans_max_mm", "rot_med_deg",
            "rot_max_deg"]
    text = ["rtnf Realigner: estimate + two 8 mm ROIs per volume "
            f"({args.threads} thread(s), {args.volumes} volumes, motion {args.max_trans_mm:g} mm / "
            f"{args.max_rot_deg:g} deg, noise {args.noise_pct:g} %)", table(rows, cols)]
    if any("sitk_median_ms" in r for r in rows):
        text += ["", "SimpleITK rigid (Euler3D, mean squares, regular-step GD, all mask voxels) on a subset",
                 table(rows, ["grid", "sitk_n", "sitk_median_ms", "sitk_p99_ms", "sitk_trans_med_mm",
                              "sitk_rot_med_deg", "ours_on_subset_trans_med_mm", "ratio"])]
    elif any("sitk" in r for r in rows):
        text += ["", "SimpleITK comparison skipped: SimpleITK not installed (pip install SimpleITK)"]
    return {"stage": NAME, "threads": int(args.threads), "grids": rows, "text": "\n".join(text)}
