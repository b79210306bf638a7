"""Tissue signals as confound regressors: white matter, CSF, aCompCor, tCompCor and (on request) the global signal.

Configured by ``[confounds.tissue]`` (:class:`rtnf.config.TissueConfig`). Every column is computed from the
realigned volume (:attr:`ConfoundInput.sample`, the ROIs' own sampling) and delivered standardised (typical
size 1), as the ROI model's prior assumes (:data:`rtnf.analysis.roi_model.CONFOUND_SCALE`):

``white_matter``, ``csf``, ``global_signal``
    Mean of the white-matter mask, the CSF mask, or the brain (:data:`GLOBAL_VOXELS` evenly spread brain
    voxels: the *global signal*; it is named so, and
    only computed when ``signals`` lists it, because removing it also removes widespread neural signal).
    Z-scored causally: with the running mean and SD of the values seen so far (0 for the first volume) until
    ``fit_volumes`` volumes have been seen, then with the mean and SD of those volumes, frozen for the rest of
    the run (a fixed affine map: the model's coefficient keeps its meaning).
``acompcor_<k>`` (or ``acompcor_wm_<k>`` and ``acompcor_csf_<k>`` with ``acompcor_masks = "separate"``)
    Anatomical CompCor (Behzadi et al. 2007, NeuroImage 37:90): the first ``n_components`` principal components
    of the WM and CSF voxels' time series. The components (voxel-space weights) are fitted once, from
    ``fit_from`` (a localizer 4-D NIfTI on the run's grid: the columns have values from the first volume on)
    or from the run's first ``fit_volumes`` volumes (until then the columns are 0: the model has no such terms
    yet). Each voxel's series is detrended (constant and linear) and divided by its SD, and the SVD of the
    voxels-by-time matrix gives the components. Each volume is then projected onto the fixed components
    (voxel values minus the fit's voxel means, over the fit's voxel SDs) and each score z-scored with the
    fit window's mean and SD: one dot product per component, so the model stays incremental.
``tcompcor_<k>``
    Temporal CompCor: the same on the brain voxels whose detrended series vary most in the fit window
    (``tcompcor_fraction``, 2 % by default, of :data:`TCOMPCOR_CANDIDATES` evenly spread brain voxels): no
    anatomy needed. In a task run these voxels may include
    activated ones; the ROIs' own voxels are always left out, and the model estimates task and components
    jointly, so the task's effect is not removed, only made less precise when they overlap.

The ROIs' voxels are removed from every tissue mask (their activation must not become a nuisance). Masks are
NIfTI files on the run's grid (``rtnf roi tissue`` makes eroded ones from an atlas): any other grid, or a mask
left empty, stops the run with one message.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from .base import ConfoundContext, ConfoundError, ConfoundInput, ConfoundSource
from rtnf.config import check_tissue, resolve_path

log = logging.getLogger("rtnf.confounds.tissue")

#: Signals ``[confounds.tissue] signals`` may list, in the order their columns appear.
SIGNALS = ("white_matter", "csf", "global_signal", "acompcor", "tcompcor")
#: Fewest voxels a CompCor voxel set may have (fewer cannot give ``n_components`` stable components).
MIN_COMPCOR_VOXELS = 10
#: Largest difference (mm) between a mask's affine and the run's that still counts as the same grid (a DICOM
#: round trip changes affines by about 1e-4 mm).
GRID_ATOL_MM = 1e-2
#: Brain voxels, evenly spread, whose mean is the global signal: realigned sampling costs about 0.1 us per
#: voxel under no load, and the mean of 4000 spread voxels differs from that of all of them by far less
#: than its fluctuations.
GLOBAL_VOXELS = 4000
#: Brain voxels, evenly spread, among which tCompCor picks the most variable ones (sampled during the fit
#: window only; afterwards only the chosen voxels are).
TCOMPCOR_CANDIDATES = 8000


def column_names(cfg: Any) -> tuple[str, ...]:
    """The design columns a ``[confounds.tissue]`` table gives, in order.

    Parameters
    ----------
    cfg : rtnf.config.TissueConfig
    """
    names: list[str] = []
    signals = set(cfg.signals)
    for signal in ("white_matter", "csf", "global_signal"):
        if signal in signals:
            names.append(signal)
    k = range(1, cfg.n_components + 1)
    if "acompcor" in signals:
        if cfg.acompcor_masks == "combined":
            names += [f"acompcor_{i}" for i in k]
        else:
            names += [f"acompcor_{t}_{i}" for t in ("wm", "csf") for i in k]
    if "tcompcor" in signals:
        names += [f"tcompcor_{i}" for i in k]
    return tuple(names)


def spread(indices: np.ndarray, n: int) -> np.ndarray:
    """At most ``n`` of ``indices`` (sorted), evenly spread over them (all of them when there are fewer)."""
    if indices.size <= n:
        return indices
    return indices[np.unique(np.linspace(0, indices.size - 1, n).round().astype(np.int64))]


def detrended(series: np.ndarray) -> np.ndarray:
    """Time series (time on axis 0) minus their least-squares constant and linear trend."""
    n = series.shape[0]
    t = np.linspace(-1.0, 1.0, n)
    basis = np.column_stack([np.ones(n), t])
    beta, *_ = np.linalg.lstsq(basis, series, rcond=None)
    return series - basis @ beta


class CompCor:
    """Principal components of a voxel set, fitted once, then one projection per volume.

    Parameters
    ----------
    n_components : int
        Components kept (fewer when the fit window or voxel set is smaller).
    """

    def __init__(self, n_components: int) -> None:
        self.n_components = n_components
        self.weights: np.ndarray | None = None  # (n_voxels, k): components over voxel SDs
        self.offset: np.ndarray | None = None  # (k,): the weights applied to the voxel means, plus the score mean
        self.score_sd: np.ndarray | None = None
        self.explained: np.ndarray | None = None  # variance fraction of each component in the fit window

    @property
    def fitted(self) -> bool:
        return self.weights is not None

    def fit(self, series: np.ndarray) -> None:
        """Fit from ``series`` (time x voxels; realigned values in the voxels' own units).

        Voxels with no variance in the window (outside the head after realignment) get zero weight.
        """
        series = np.asarray(series, dtype=np.float64)
        mean = series.mean(axis=0)
        resid = detrended(series)
        sd = resid.std(axis=0)
        ok = sd > 1e-6 * max(float(np.abs(mean).max()), 1e-12)
        scale = np.where(ok, sd, 1.0)
        normalised = np.where(ok, resid / scale, 0.0)
        # The SVD through the time x time Gram matrix: a few ms for thousands of voxels, where a direct SVD
        # of the time x voxels matrix takes 35-300 ms on a busy machine (in the feedback path, once).
        evals, evecs = np.linalg.eigh(normalised @ normalised.T)
        order = np.argsort(evals)[::-1]
        evals, evecs = np.clip(evals[order], 0.0, None), evecs[:, order]
        s = np.sqrt(evals)
        k = min(self.n_components, int(np.sum(evals > 1e-10 * max(float(evals[0]), 1e-300))))
        components = normalised.T @ evecs[:, :k] / s[:k]  # voxels x k, unit norm (right singular vectors)
        weights = np.zeros((series.shape[1], self.n_components))
        weights[:, :k] = np.where(ok[:, None], components / scale[:, None], 0.0)
        # Online scores are of the raw values (no detrending: the drift terms of the design take the trend),
        # centred on the fit's voxel means and z-scored with the fit window's score statistics.
        scores = (series - mean) @ weights
        score_sd = scores.std(axis=0)
        score_sd[score_sd < 1e-12] = np.inf  # an absent component stays 0
        self.weights = weights
        self.offset = mean @ weights + scores.mean(axis=0)
        self.score_sd = score_sd
        total = float(np.sum(s**2)) or 1.0
        self.explained = np.concatenate([s[:k] ** 2 / total, np.zeros(self.n_components - k)])

    def scores(self, values: np.ndarray) -> np.ndarray:
        """Standardised component scores of one volume's voxel values (zeros before :meth:`fit`)."""
        if self.weights is None:
            return np.zeros(self.n_components)
        return (values @ self.weights - self.offset) / self.score_sd


class RunningZ:
    """Causal z-scoring: running mean/SD until ``freeze_after`` values have been seen, then those, frozen."""

    def __init__(self, freeze_after: int) -> None:
        self.freeze_after = freeze_after
        self.n = 0
        self.mean = 0.0
        self.m2 = 0.0

    def __call__(self, x: float) -> float:
        if self.n < self.freeze_after:  # Welford's update
            self.n += 1
            delta = x - self.mean
            self.mean += delta / self.n
            self.m2 += delta * (x - self.mean)
        sd = np.sqrt(self.m2 / self.n) if self.n > 1 else 0.0
        return 0.0 if sd <= 0 else float((x - self.mean) / sd)


class TissueRegressors(ConfoundSource):
    """WM, CSF and global means, aCompCor and tCompCor components (``[confounds.tissue]``).

    Parameters
    ----------
    cfg : rtnf.config.TissueConfig
        The table.
    base_dir : Path, optional
        Folder of the session config: relative mask and localizer paths are relative to it.
    """

    def __init__(self, cfg: Any, base_dir: Path | None = None) -> None:
        super().__init__("tissue")
        check_tissue(cfg, base_dir)
        self.cfg = cfg
        self.base_dir = base_dir
        self.names = column_names(cfg)
        self.signals = set(cfg.signals)
        self._sets: dict[str, np.ndarray] = {}  # voxel sets by name: positions into the sampled union
        self._union = np.empty(0, dtype=np.int64)  # flat voxel indices sampled every volume
        self._zs: dict[str, RunningZ] = {}
        self._compcor: dict[str, CompCor] = {}  # "acompcor", "acompcor_wm", "acompcor_csf", "tcompcor"
        self._window: list[np.ndarray] = []  # the fit window's sampled values, until the components are fitted
        self._brain = np.empty(0, dtype=np.int64)
        self._fit_positions: dict[str, np.ndarray] = {}  # CompCor voxel sets in the window's columns

    # ------------------------------------------------------------------ fit

    def fit(self, context: ConfoundContext) -> None:
        """Read the masks (on the run's grid), leave out the ROIs' voxels, fit the components from ``fit_from``."""
        cfg = self.cfg
        rois = np.unique(np.concatenate([np.asarray(v).reshape(-1) for v in context.roi_indices.values()]
                                        or [np.empty(0, dtype=np.int64)])).astype(np.int64)
        sets: dict[str, np.ndarray] = {}
        for key, tissue in (("wm_mask", "wm"), ("csf_mask", "csf")):
            path = resolve_path(getattr(cfg, key), self.base_dir)
            if path is not None:
                sets[tissue] = np.setdiff1d(self._mask_indices(path, key, context), rois)
                if sets[tissue].size == 0:
                    raise ConfoundError(f"invalid value for 'confounds.tissue.{key}': {path} holds only ROI voxels")
        brain = np.setdiff1d(np.asarray(context.brain_indices, dtype=np.int64).reshape(-1), rois)
        self._brain = spread(brain, TCOMPCOR_CANDIDATES)
        if "global_signal" in self.signals:
            sets["brain"] = spread(brain, GLOBAL_VOXELS)
        if "acompcor" in self.signals:
            if cfg.acompcor_masks == "combined":
                sets["acompcor"] = np.union1d(sets.get("wm", []), sets.get("csf", [])).astype(np.int64)
            else:
                sets["acompcor_wm"], sets["acompcor_csf"] = sets["wm"], sets["csf"]
        for name in [n for n in ("acompcor", "acompcor_wm", "acompcor_csf") if n in sets]:
            if sets[name].size < MIN_COMPCOR_VOXELS:
                raise ConfoundError(f"{name} has {sets[name].size} mask voxels outside the ROIs (fewer than "
                                    f"{MIN_COMPCOR_VOXELS}). Allowed: larger WM/CSF masks (less eroded)")
            self._compcor[name] = CompCor(cfg.n_components)
        if "tcompcor" in self.signals:
            self._compcor["tcompcor"] = CompCor(cfg.n_components)
        self._zs = {s: RunningZ(cfg.fit_volumes) for s in ("white_matter", "csf", "global_signal") if s in self.signals}
        if cfg.fit_from is not None:
            self._fit_from_localizer(resolve_path(cfg.fit_from, self.base_dir), context, sets)
        elif self._compcor and context.n_volumes < cfg.fit_volumes:
            raise ConfoundError(f"invalid value for 'confounds.tissue.fit_volumes': {cfg.fit_volumes} is more than "
                                f"the run's {context.n_volumes} volumes. Allowed: fewer, or a localizer in fit_from")
        elif "tcompcor" in self._compcor:
            sets["tcompcor_window"] = self._brain  # the candidates until the fit picks the most variable ones
        self._set_union(sets)
        if self._compcor and cfg.fit_from is None:
            self._fit_positions = {name: self._sets[name if name != "tcompcor" else "tcompcor_window"]
                                   for name in self._compcor}
        log.info("confounds.tissue: %s", ", ".join(f"{k} {v.size} voxels" for k, v in sets.items()))

    def _mask_indices(self, path: Path, key: str, context: ConfoundContext) -> np.ndarray:
        """Flat voxel indices of a mask file that must lie on the run's grid."""
        import nibabel as nib

        try:
            img = nib.load(path)
            data = np.asanyarray(img.dataobj)
        except Exception as exc:  # noqa: BLE001 - nibabel's errors vary with the file
            raise ConfoundError(f"invalid value for 'confounds.tissue.{key}': cannot read {path} ({exc})") from None
        if data.ndim == 4 and data.shape[3] == 1:
            data = data[..., 0]
        if tuple(data.shape) != tuple(context.grid_shape) or not np.allclose(img.affine, context.affine, atol=GRID_ATOL_MM):
            raise ConfoundError(f"invalid value for 'confounds.tissue.{key}': {path} has shape {tuple(data.shape)} "
                                f"on another grid than the run's {tuple(context.grid_shape)} (or another affine). "
                                "Allowed: a mask on the functional grid (`rtnf roi tissue -r ref.nii.gz -o DIR/`)")
        flat = np.flatnonzero(np.asarray(data, dtype=np.float64).reshape(-1) > 0.5)
        if flat.size == 0:
            raise ConfoundError(f"invalid value for 'confounds.tissue.{key}': {path} is empty (no voxel > 0.5; an "
                                "erosion may have removed everything). Allowed: a mask with voxels, e.g. less eroded")
        return flat

    def _fit_from_localizer(self, path: Path, context: ConfoundContext, sets: dict[str, np.ndarray]) -> None:
        """Components fixed from a localizer run on the same grid (its voxels as they are: not realigned)."""
        import nibabel as nib

        key = "confounds.tissue.fit_from"
        try:
            img = nib.load(path)
            data = np.asarray(img.dataobj, dtype=np.float32)
        except Exception as exc:  # noqa: BLE001
            raise ConfoundError(f"invalid value for '{key}': cannot read {path} ({exc})") from None
        if data.ndim != 4 or tuple(data.shape[:3]) != tuple(context.grid_shape) or data.shape[3] < 10:
            raise ConfoundError(f"invalid value for '{key}': {path} has shape {data.shape}. Allowed: a 4-D NIfTI "
                                f"of at least 10 volumes on the run's grid {tuple(context.grid_shape)}")
        if not np.allclose(img.affine, context.affine, atol=GRID_ATOL_MM):
            raise ConfoundError(f"invalid value for '{key}': {path} has another affine than the run's volumes. "
                                "Allowed: a localizer on the same grid")
        series = data.reshape(-1, data.shape[3]).T  # time x voxels
        for name, comp in self._compcor.items():
            if name == "tcompcor":
                sets["tcompcor"] = self._top_variance(series[:, self._brain], self._brain)
                comp.fit(series[:, sets["tcompcor"]])
            else:
                comp.fit(series[:, sets[name]])

    def _top_variance(self, window: np.ndarray, voxels: np.ndarray) -> np.ndarray:
        """The ``tcompcor_fraction`` of ``voxels`` whose detrended series vary most in ``window`` (time x voxels)."""
        sd = detrended(np.asarray(window, dtype=np.float64)).std(axis=0)
        n = max(MIN_COMPCOR_VOXELS, int(round(self.cfg.tcompcor_fraction * voxels.size)))
        return np.sort(voxels[np.argsort(sd)[-n:]])

    def _set_union(self, sets: dict[str, np.ndarray]) -> None:
        """Sample the union of the voxel sets once per volume; each set becomes positions into it."""
        self._union = np.unique(np.concatenate([s for s in sets.values()] or [np.empty(0, np.int64)])).astype(np.int64)
        self._sets = {name: np.searchsorted(self._union, s) for name, s in sets.items()}

    # ------------------------------------------------------------------ per volume

    def row(self, volume: ConfoundInput) -> np.ndarray:
        """This volume's standardised tissue values, in :attr:`names` order."""
        values = volume.sample(self._union) if self._union.size else np.empty(0)
        values = np.asarray(values, dtype=np.float64)
        out: list[float] = []
        for signal, set_name in (("white_matter", "wm"), ("csf", "csf"), ("global_signal", "brain")):
            if signal in self._zs:
                out.append(self._zs[signal](float(values[self._sets[set_name]].mean())))
        if self._fit_positions:
            union = self._union
            self._collect(values)
            if self._union is not union:  # the components were just fitted: tCompCor samples fewer voxels now
                values = values[np.searchsorted(union, self._union)]
        for name, comp in self._compcor.items():
            positions = self._sets[name] if name in self._sets else None
            out.extend(comp.scores(values[positions]) if comp.fitted and positions is not None
                       else np.zeros(comp.n_components))
        return np.asarray(out)

    def _collect(self, values: np.ndarray) -> None:
        """Keep this volume for the fit window; fit the components when the window is full."""
        self._window.append(values.astype(np.float32))
        if len(self._window) < self.cfg.fit_volumes:
            return
        window = np.vstack(self._window)
        sets = {name: self._union[self._sets[name]] for name in self._sets if name != "tcompcor_window"}
        for name, comp in self._compcor.items():
            columns = self._fit_positions[name]
            if name == "tcompcor":
                sets["tcompcor"] = self._top_variance(window[:, columns], self._union[columns])
                columns = np.searchsorted(self._union, sets["tcompcor"])
            comp.fit(window[:, columns])
        self._window, self._fit_positions = [], {}
        self._set_union(sets)  # tCompCor now samples only its chosen voxels
        explained = {n: ", ".join(f"{100 * e:.0f}" for e in c.explained) for n, c in self._compcor.items()}
        log.info("confounds.tissue: components fitted on volumes 1-%d (variance explained, %%: %s)",
                 self.cfg.fit_volumes, "; ".join(f"{n} {e}" for n, e in explained.items()))

    @property
    def fitted(self) -> bool:
        """True once every CompCor component set is fixed (always true without CompCor)."""
        return all(c.fitted for c in self._compcor.values())
