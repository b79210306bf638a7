"""Decoded neurofeedback: a linear classifier of voxel patterns, trained offline, applied per volume.

Training (``rtnf decoder train``, :func:`train_decoder`), once, on a localizer run:

1. the run is realigned to its own first volume with :class:`~rtnf.analysis.motion.Realigner`
   (the pipeline's realignment) and the mask's voxels are sampled from every realigned volume;
2. each voxel is **detrended within the run** (least-squares line over the run removed) and
   expressed in percent of its run mean;
3. volume ``i`` (acquired at ``i * TR`` from the first kept volume) is labelled with the trial whose
   event ``[onset, onset + duration)`` contains ``i * TR - lag`` (hemodynamic lag, default 6 s); volumes of
   no trial, of two trials of different types, or of a class not chosen are left out;
4. the labelled volumes are standardised (mean and SD of each voxel over them) and an L2 logistic
   regression (classes weighted to balance) is fitted. Its cross-validated accuracy is estimated by
   leaving out whole trials (all volumes of a trial together); with ``C="auto"`` the regularisation is
   the value of :data:`C_GRID` with the lowest cross-validated log-loss (calibrated probabilities are
   what the participant sees).

The saved folder (:class:`DecoderModel`, :data:`FILES`) holds only arrays and text: ``model.npz``
(read with ``allow_pickle=False``), ``model.json``, the training reference ``reference.nii.gz``, the
mask ``mask.nii.gz``, the weight map ``weights.nii.gz`` and ``report.json``. A run never unpickles
anything; scikit-learn is needed to train, not to apply.

Applying (:class:`OnlineFeatures`, used by
:class:`~rtnf.analysis.signals.decoder.DecodedFeedback`): the run is realigned to the training
reference (``motion.reference = "<model>/reference.nii.gz"``), the mask's voxels are sampled from
each realigned volume, and each voxel is expressed in percent of its **running mean** (the mean of
the volumes so far, current one included) or of its mean over the run's first ``baseline_volumes``.
A running mean removes each voxel's level, not its slow drift. A line fitted through the volumes so
far would remove the drift too, but its end point follows the last volume (leverage about 4/n), so
it takes away part of the very response being decoded: on pydecnef-sub1 (trained on run 1, applied
to run 2, dogs vs scissors) the running mean gives 13 of 14 trials right, a running line (from the
20th volume) 12 of 14 and fewer volumes (0.82 against 0.84). The features are then standardised with
the training statistics and the classifier's probabilities computed with NumPy.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = [
    "C_GRID",
    "DecoderError",
    "DecoderModel",
    "FILES",
    "OnlineFeatures",
    "Trial",
    "TrainedDecoder",
    "detrend_within_run",
    "label_volumes",
    "read_events",
    "realign_and_sample",
    "train_decoder",
]

FORMAT = "rtnf-decoder"
FORMAT_VERSION = 1
MODEL_NPZ = "model.npz"
MODEL_JSON = "model.json"
REFERENCE = "reference.nii.gz"
MASK = "mask.nii.gz"
WEIGHTS = "weights.nii.gz"
REPORT = "report.json"
FILES = (MODEL_NPZ, MODEL_JSON, REFERENCE, MASK, WEIGHTS, REPORT)
"""What a saved decoder folder holds (no pickle, no joblib)."""

C_GRID = (1e-3, 1e-2, 1e-1, 1.0)
"""Inverse L2 penalties tried by ``C="auto"`` (on standardised voxels)."""

#: A voxel whose training-run mean is below this fraction of the mask's median voxel mean is left out
#: (outside the head or in a signal dropout: its percent change would be noise divided by almost 0).
MIN_MEAN_FRACTION = 0.05
#: Online, a voxel's running mean is floored at this fraction of its training mean (a dropout
#: volume cannot make the percent change explode).
MEAN_FLOOR_FRACTION = 0.1
#: More trials than this: cross-validation by GroupKFold over trials, with this many folds.
MAX_FOLDS = 20
_ARRAYS = ("coef", "intercept", "scaler_mean", "scaler_scale", "voxel_mean", "mask_indices", "grid_shape", "affine")


class DecoderError(ValueError):
    """A training input a user can fix; the message names the option (``invalid value for '--events': ...``).

    Attributes
    ----------
    param : str
        The option or file the user should change.
    message : str
        What is wrong, without the option.
    """

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"invalid value for '{param}': {message}")
        self.param = param
        self.message = message


# --------------------------------------------------------------------------- events and labels


@dataclass(frozen=True)
class Trial:
    """One event of the events table (seconds from the first kept volume)."""

    onset_s: float
    duration_s: float
    trial_type: str


def read_events(path: str | Path) -> list[Trial]:
    """The trials of a BIDS events table (tab-separated; ``onset``, ``duration``, ``trial_type``, in s).

    Rows whose ``trial_type`` is ``n/a`` or empty are skipped; repeated identical rows are kept once.

    Raises
    ------
    DecoderError
        Missing file or column, a value that is not a number, a negative duration, no trial.
    """
    path = Path(path)
    param = "--events"
    if not path.is_file():
        raise DecoderError(param, f"file not found: {path}")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
            header = set(rows[0]) if rows else set()
    except UnicodeDecodeError:
        raise DecoderError(param, f"{path} is not a text table (not UTF-8)") from None
    missing = [c for c in ("onset", "duration", "trial_type") if c not in header]
    if missing:
        columns = ", ".join(sorted(header)) or "none"
        raise DecoderError(param, f"{path} has no column {', '.join(missing)} (columns: {columns}). "
                                  "Allowed: a tab-separated BIDS events table with onset, duration and trial_type")
    trials: list[Trial] = []
    for line, row in enumerate(rows, start=2):
        kind = (row["trial_type"] or "").strip()
        if kind in ("", "n/a"):
            continue
        try:
            onset, duration = float(row["onset"]), float(row["duration"])
        except (TypeError, ValueError):
            raise DecoderError(param, f"{path} line {line}: onset {row['onset']!r} or duration {row['duration']!r} "
                                      "is not a number (seconds)") from None
        if not (math.isfinite(onset) and math.isfinite(duration)) or duration < 0:
            raise DecoderError(param, f"{path} line {line}: onset {onset} s, duration {duration} s. "
                                      "Allowed: finite numbers, duration >= 0")
        trial = Trial(onset, duration, kind)
        if trial not in trials:
            trials.append(trial)
    if not trials:
        raise DecoderError(param, f"{path} holds no trial (every trial_type is empty or n/a)")
    return sorted(trials, key=lambda t: t.onset_s)


def label_volumes(trials: Sequence[Trial], n_volumes: int, tr_s: float, lag_s: float) -> tuple[np.ndarray, np.ndarray]:
    """The class and trial of every volume, shifted by the hemodynamic lag.

    Volume ``i`` is acquired at ``t = i * tr_s``; it belongs to trial ``k`` when
    ``onset_k <= t - lag_s < onset_k + duration_k``.

    Returns
    -------
    labels : ndarray of object, shape (n_volumes,)
        The trial type, or None (no trial, or trials of two types).
    groups : ndarray of int, shape (n_volumes,)
        Index of the trial in ``trials`` (-1 where the label is None).
    """
    t = np.arange(n_volumes) * float(tr_s) - float(lag_s)
    labels = np.full(n_volumes, None, dtype=object)
    groups = np.full(n_volumes, -1, dtype=np.int64)
    clash = np.zeros(n_volumes, dtype=bool)
    for k, trial in enumerate(trials):
        inside = (t >= trial.onset_s) & (t < trial.onset_s + trial.duration_s)
        taken = inside & (groups >= 0)
        clash |= taken & (labels != trial.trial_type)
        labels[inside] = trial.trial_type
        groups[inside] = k
    labels[clash] = None
    groups[clash] = -1
    return labels, groups


# --------------------------------------------------------------------------- features


def realign_and_sample(
    data: np.ndarray, affine: np.ndarray, indices: np.ndarray, *, reference: np.ndarray | None = None,
    sigma_vox: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Realign every volume to ``reference`` (default: the first) and sample voxels ``indices``.

    As the pipeline does (:class:`~rtnf.analysis.motion.Realigner`, warm-started volume after
    volume; trilinear sampling of the unsmoothed volume).

    Parameters
    ----------
    data : ndarray, shape (nx, ny, nz, n)
    affine : ndarray, shape (4, 4)
    indices : ndarray of int
        Flat (C-order) voxel indices on the grid.
    reference : ndarray, shape (nx, ny, nz), optional
    sigma_vox : float
        The realigner's smoothing (``motion.sigma_vox``).

    Returns
    -------
    values : ndarray, shape (n, len(indices)), float64
    motion : ndarray, shape (n, 6)
        Motion parameters (mm, radians).
    """
    from .motion import Realigner

    ref = np.ascontiguousarray(data[..., 0] if reference is None else reference, dtype=np.float32)
    realigner = Realigner(sigma_vox=sigma_vox).fit(ref, affine)
    idx = np.ascontiguousarray(indices, dtype=np.intp)
    n = data.shape[-1]
    values = np.empty((n, idx.size))
    motion = np.empty((n, 6))
    for i in range(n):
        vol = np.ascontiguousarray(data[..., i], dtype=np.float32)
        motion[i] = realigner.estimate(vol)
        values[i] = realigner.sample(vol, motion[i], idx)
    return values, motion


def detrend_within_run(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each column (voxel) minus its least-squares line over the run, in percent of its mean.

    Returns
    -------
    features : ndarray, shape like ``values``
    mean : ndarray, shape (n_voxels,)
        Each voxel's mean over the run.
    """
    y = np.asarray(values, dtype=np.float64)
    n = y.shape[0]
    t = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
    mean = y.mean(axis=0)
    slope = (t @ (y - mean)) / max(float(t @ t), 1e-12)
    resid = y - mean - np.outer(t, slope)
    return 100.0 * resid / mean, mean


class OnlineFeatures:
    """The online counterpart of :func:`detrend_within_run`: percent of the running (or baseline) mean.

    Parameters
    ----------
    voxel_mean : ndarray, shape (n_voxels,)
        The training run's voxel means (the running mean is floored at
        :data:`MEAN_FLOOR_FRACTION` of them).
    baseline_volumes : int or None
        None: the mean of every included volume so far (current one included).
        N: the mean of the first N included volumes, fixed afterwards.
    min_volumes : int
        No features before this many volumes are in the mean.
    """

    def __init__(self, voxel_mean: np.ndarray, baseline_volumes: int | None = None, min_volumes: int = 1) -> None:
        self.floor = MEAN_FLOOR_FRACTION * np.asarray(voxel_mean, dtype=np.float64)
        self.baseline_volumes = baseline_volumes
        self.min_volumes = max(int(min_volumes), 1 if baseline_volumes is None else int(baseline_volumes))
        self.sum = np.zeros(self.floor.size)
        self.n = 0
        self._mean: np.ndarray | None = None

    def update(self, x: np.ndarray, include: bool = True) -> np.ndarray | None:
        """Add one volume's voxel values; its ratio ``x / mean`` (None while warming up).

        ``100 * (ratio - 1)`` is the percent change; the ratio is returned so that
        the caller can fold the percent scaling into its weights.
        """
        if include and (self.baseline_volumes is None or self.n < self.baseline_volumes):
            self.sum += x
            self.n += 1
            self._mean = None
        if self.n < self.min_volumes:
            return None
        if self._mean is None:
            self._mean = np.maximum(self.sum / self.n, self.floor)
        return x / self._mean

    @property
    def waiting_reason(self) -> str:
        """Why :meth:`update` returned None."""
        what = "baseline" if self.baseline_volumes is not None else "running mean"
        return f"warming up: {self.n} of {self.min_volumes} volumes in the {what}"


# --------------------------------------------------------------------------- the model


@dataclass
class DecoderModel:
    """A trained decoder: everything a run needs, as arrays and text.

    Attributes
    ----------
    classes : tuple of str
        Class names, in the order of the probabilities.
    coef : ndarray, shape (1, V) for two classes (log-odds of ``classes[1]``) or (K, V)
    intercept : ndarray, shape (1,) or (K,)
    scaler_mean, scaler_scale : ndarray, shape (V,)
        Standardisation of the features (percent change) over the training samples.
    voxel_mean : ndarray, shape (V,)
        Each voxel's mean intensity in the training run.
    mask_indices : ndarray of int64, shape (V,)
        Flat (C-order) indices of the voxels on the training grid.
    grid_shape : tuple of int
    affine : ndarray, shape (4, 4)
        The training grid (voxel to scanner RAS mm).
    info : dict
        TR, lag, C, versions, feature definition (``model.json``).
    """

    classes: tuple[str, ...]
    coef: np.ndarray
    intercept: np.ndarray
    scaler_mean: np.ndarray
    scaler_scale: np.ndarray
    voxel_mean: np.ndarray
    mask_indices: np.ndarray
    grid_shape: tuple[int, int, int]
    affine: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_voxels(self) -> int:
        return int(self.mask_indices.size)

    def decision(self, features: np.ndarray) -> np.ndarray:
        """Decision values of feature rows (percent change), shape (n, 1) or (n, K)."""
        z = (np.atleast_2d(features) - self.scaler_mean) / self.scaler_scale
        return z @ self.coef.T + self.intercept

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """Class probabilities of feature rows, shape (n, n_classes), columns as :attr:`classes`."""
        return probabilities_of(self.decision(features))

    def folded(self) -> tuple[np.ndarray, np.ndarray]:
        """Weights and intercepts that take the ratio ``x / mean`` (not the percent change) directly.

        ``decision = W @ ratio + b`` with ``W = 100 * coef / scale`` and
        ``b = intercept - coef @ ((100 + scaler_mean) / scale)``: one matrix-vector product per volume.
        """
        w = 100.0 * self.coef / self.scaler_scale
        b = self.intercept - self.coef @ ((100.0 + self.scaler_mean) / self.scaler_scale)
        return np.ascontiguousarray(w), b

    # ----------------------------------------------------------------- files
    def save(self, folder: str | Path, reference: np.ndarray, report: dict[str, Any] | None = None) -> Path:
        """Write the model folder (see :data:`FILES`); arrays, JSON and NIfTI only."""
        import nibabel as nib

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(
            folder / MODEL_NPZ, coef=self.coef, intercept=self.intercept, scaler_mean=self.scaler_mean,
            scaler_scale=self.scaler_scale, voxel_mean=self.voxel_mean,
            mask_indices=self.mask_indices.astype(np.int64), grid_shape=np.asarray(self.grid_shape, dtype=np.int64),
            affine=self.affine,
        )
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "classes": list(self.classes),
                "n_voxels": self.n_voxels, "grid_shape": list(self.grid_shape), "affine": self.affine.tolist(),
                "reference": REFERENCE, **self.info}
        (folder / MODEL_JSON).write_text(json.dumps(meta, indent=2) + "\n")
        header = nib.Nifti1Header()
        header.set_xyzt_units("mm", "sec")
        nib.save(nib.Nifti1Image(np.asarray(reference, dtype=np.float32), self.affine, header), folder / REFERENCE)
        mask = np.zeros(int(np.prod(self.grid_shape)), dtype=np.uint8)
        mask[self.mask_indices] = 1
        nib.save(nib.Nifti1Image(mask.reshape(self.grid_shape), self.affine), folder / MASK)
        # Weight map (standardised units), one volume per decision value: for looking, not for running.
        weights = np.zeros((int(np.prod(self.grid_shape)), self.coef.shape[0]), dtype=np.float32)
        weights[self.mask_indices] = self.coef.T
        weights = weights.reshape(*self.grid_shape, -1)
        nib.save(nib.Nifti1Image(weights[..., 0] if weights.shape[-1] == 1 else weights, self.affine), folder / WEIGHTS)
        if report is not None:
            (folder / REPORT).write_text(json.dumps(report, indent=2) + "\n")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "DecoderModel":
        """Read a model folder without unpickling anything.

        Raises
        ------
        DecoderError
            Missing or unreadable files, another format or version, inconsistent arrays
            (``param`` is the folder).
        """
        folder = Path(folder)
        param = str(folder)
        if not folder.is_dir():
            raise DecoderError(param, "not a folder (a decoder saved by 'rtnf decoder train')")
        for name in (MODEL_NPZ, MODEL_JSON, REFERENCE):
            if not (folder / name).is_file():
                raise DecoderError(param, f"{name} is missing: not a decoder saved by 'rtnf decoder train'")
        try:
            meta = json.loads((folder / MODEL_JSON).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DecoderError(param, f"{MODEL_JSON} is not readable JSON ({exc})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            kind = meta.get("format") if isinstance(meta, dict) else None
            raise DecoderError(param, f"{MODEL_JSON} is not an rtnf decoder (format {kind!r})")
        if meta.get("format_version") != FORMAT_VERSION:
            raise DecoderError(param, f"decoder format version {meta.get('format_version')!r}; this rtnf reads "
                                      f"version {FORMAT_VERSION}: train it again with this rtnf")
        try:
            with np.load(folder / MODEL_NPZ, allow_pickle=False) as z:
                arrays = {k: np.array(z[k]) for k in _ARRAYS}
        except (OSError, ValueError, KeyError) as exc:
            raise DecoderError(param, f"{MODEL_NPZ} is not readable ({type(exc).__name__}: {exc})") from None
        classes = tuple(str(c) for c in meta.get("classes", []))
        coef = np.atleast_2d(arrays["coef"].astype(np.float64))
        v = arrays["mask_indices"].size
        k = len(classes)
        shape = tuple(int(n) for n in arrays["grid_shape"])
        ok = (k >= 2 and coef.shape == ((1 if k == 2 else k), v) and arrays["intercept"].shape == (coef.shape[0],)
              and all(arrays[a].shape == (v,) for a in ("scaler_mean", "scaler_scale", "voxel_mean"))
              and len(shape) == 3 and arrays["affine"].shape == (4, 4) and v > 0
              and int(arrays["mask_indices"].min()) >= 0 and int(arrays["mask_indices"].max()) < int(np.prod(shape))
              and np.all(np.isfinite(coef)) and np.all(arrays["scaler_scale"] > 0))
        if not ok:
            raise DecoderError(param, f"{MODEL_NPZ} and {MODEL_JSON} do not agree (classes {list(classes)}, "
                                      f"coef {coef.shape}, {v} voxels): the folder is damaged; train it again")
        info = {key: value for key, value in meta.items()
                if key not in ("format", "format_version", "classes", "n_voxels", "grid_shape", "affine", "reference")}
        return cls(classes, coef, arrays["intercept"].astype(np.float64), arrays["scaler_mean"].astype(np.float64),
                   arrays["scaler_scale"].astype(np.float64), arrays["voxel_mean"].astype(np.float64),
                   arrays["mask_indices"].astype(np.int64), shape, arrays["affine"].astype(np.float64), info)


def probabilities_of(decision: np.ndarray) -> np.ndarray:
    """Class probabilities from decision values: logistic for one column (two classes), softmax otherwise."""
    d = np.atleast_2d(decision)
    if d.shape[1] == 1:
        p1 = 1.0 / (1.0 + np.exp(-d[:, 0]))
        return np.column_stack([1.0 - p1, p1])
    e = np.exp(d - d.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# --------------------------------------------------------------------------- training


@dataclass
class TrainedDecoder:
    """What :func:`train_decoder` returns: the model, the training reference and the report."""

    model: DecoderModel
    reference: np.ndarray
    report: dict[str, Any]
    motion: np.ndarray

    def save(self, folder: str | Path) -> Path:
        return self.model.save(folder, self.reference, self.report)


def _classifier(c: float) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=10_000))


def _cross_validate(x: np.ndarray, y: np.ndarray, groups: np.ndarray, c: float) -> dict[str, float]:
    """Grouped cross-validation (whole trials left out): log-loss, volume and trial accuracy."""
    from sklearn.model_selection import GroupKFold, LeaveOneGroupOut, cross_val_predict

    n_groups = np.unique(groups).size
    cv = LeaveOneGroupOut() if n_groups <= MAX_FOLDS else GroupKFold(n_splits=MAX_FOLDS)
    p = cross_val_predict(_classifier(c), x, y, groups=groups, cv=cv, method="predict_proba")
    eps = 1e-12
    log_loss = float(-np.mean(np.log(np.clip(p[np.arange(y.size), y], eps, 1.0))))
    by_trial = [int(np.argmax(p[groups == g].mean(axis=0)) == y[groups == g][0]) for g in np.unique(groups)]
    return {"C": c, "log_loss": round(log_loss, 4), "accuracy_volumes": round(float(np.mean(p.argmax(1) == y)), 4),
            "accuracy_trials": round(float(np.mean(by_trial)), 4), "n_folds": int(min(n_groups, MAX_FOLDS))}


def train_decoder(
    data: np.ndarray, affine: np.ndarray, trials: Sequence[Trial], mask: np.ndarray, tr_s: float, *,
    classes: Sequence[str] | None = None, lag_s: float = 6.0, C: float | str = "auto", sigma_vox: float = 1.0,
) -> TrainedDecoder:
    """Train a decoder on one localizer run (see the module docstring for each step).

    Parameters
    ----------
    data : ndarray, shape (nx, ny, nz, n_volumes)
        The run, as the scanner gave it (time zero = volume 0, the training reference).
    affine : ndarray, shape (4, 4)
    trials : sequence of Trial
        From :func:`read_events`.
    mask : ndarray of bool, shape (nx, ny, nz)
        The voxels to decode from, on the run's grid.
    tr_s : float
    classes : sequence of str, optional
        Trial types to tell apart (default: every type of the events).
    lag_s : float
        Hemodynamic lag in seconds.
    C : float or "auto"
        Inverse L2 penalty of the logistic regression, or ``"auto"`` (lowest grouped-CV log-loss over
        :data:`C_GRID`; the reported CV accuracy is then that of the chosen C, slightly optimistic).
    sigma_vox : float
        The realigner's smoothing (``motion.sigma_vox``; the run should use the same).

    Raises
    ------
    DecoderError
        Bad inputs: ``param`` names the option (``--mask``, ``--classes``, ``--events``, ...).
    """
    import sklearn

    data = np.asarray(data)
    if data.ndim != 4 or data.shape[-1] < 3:
        raise DecoderError("--series", f"an image of shape {data.shape}. Allowed: a 4D run of at least 3 volumes")
    shape = tuple(int(n) for n in data.shape[:3])
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != shape:
        raise DecoderError("--mask", f"shape {mask.shape}, the run's grid is {shape}")
    if not (tr_s > 0 and math.isfinite(tr_s)):
        raise DecoderError("--tr-s", f"{tr_s}. Allowed: the repetition time in seconds, > 0")
    if not (lag_s >= 0 and math.isfinite(lag_s)):
        raise DecoderError("--lag-s", f"{lag_s}. Allowed: a lag in seconds, >= 0")
    n = data.shape[-1]
    types = sorted({t.trial_type for t in trials})
    chosen = list(dict.fromkeys(classes)) if classes else types
    unknown = [c for c in chosen if c not in types]
    if unknown:
        raise DecoderError("--classes", f"{', '.join(unknown)} not among the events' trial types. "
                                        f"Allowed: {', '.join(types)}")
    if len(chosen) < 2:
        raise DecoderError("--classes", f"{', '.join(chosen)}: a decoder needs at least two classes "
                                        f"(trial types: {', '.join(types)})")
    labels, groups = label_volumes(trials, n, tr_s, lag_s)
    used = np.array([lab in chosen for lab in labels])
    counts = {c: int(np.unique(groups[used & (labels == c)]).size) for c in chosen}
    few = {c: k for c, k in counts.items() if k < 2}
    if few:
        raise DecoderError("--events", "; ".join(f"{c}: {k} trial(s) with volumes in the run" for c, k in few.items())
                           + f" (lag {lag_s:g} s, {n} volumes of {tr_s:g} s). Allowed: at least 2 trials per class, "
                             "onsets in seconds from the first volume")
    idx_all = np.flatnonzero(mask.reshape(-1))
    if idx_all.size < 2:
        raise DecoderError("--mask", f"{idx_all.size} voxel(s) on the run's grid. Allowed: a mask of a region")

    values, motion = realign_and_sample(data, affine, idx_all, sigma_vox=sigma_vox)
    mean = values.mean(axis=0)
    keep = np.isfinite(mean) & (mean > MIN_MEAN_FRACTION * np.median(mean[np.isfinite(mean)]))
    if keep.sum() < 2:
        raise DecoderError("--mask", "fewer than 2 of its voxels have signal in the run (outside the head?)")
    features, voxel_mean = detrend_within_run(values[:, keep])
    indices = idx_all[keep]

    x = features[used]
    class_index = {c: i for i, c in enumerate(sorted(chosen))}
    y = np.array([class_index[c] for c in labels[used]])
    g = groups[used]
    grid = [float(C)] if C != "auto" else list(C_GRID)
    by_c = [_cross_validate(x, y, g, c) for c in grid]
    best = min(by_c, key=lambda r: (r["log_loss"], -r["C"]))
    final = _classifier(best["C"]).fit(x, y)
    scaler, logistic = final[0], final[-1]
    ordered = tuple(sorted(chosen))
    model = DecoderModel(
        classes=ordered, coef=np.atleast_2d(logistic.coef_).astype(np.float64),
        intercept=np.atleast_1d(logistic.intercept_).astype(np.float64),
        scaler_mean=scaler.mean_.astype(np.float64), scaler_scale=scaler.scale_.astype(np.float64),
        voxel_mean=voxel_mean, mask_indices=indices.astype(np.int64), grid_shape=shape,
        affine=np.asarray(affine, dtype=np.float64),
        info={"tr_s": float(tr_s), "lag_s": float(lag_s), "C": best["C"], "sigma_vox": float(sigma_vox),
              "features": "percent change of each realigned voxel (training: of its run mean after removing its "
                          "linear trend; online: of its running or baseline mean), standardised",
              "classifier": "L2 logistic regression, classes weighted to balance",
              "rtnf_version": _rtnf_version(), "sklearn_version": sklearn.__version__},
    )
    trans = np.abs(motion[:, :3]).max(axis=0)
    report = {
        "format": "rtnf-decoder-report",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "classes": list(ordered),
        "n_trials": {c: counts[c] for c in ordered},
        "n_labelled_volumes": {c: int(np.sum(labels[used] == c)) for c in ordered},
        "n_voxels": int(indices.size),
        "n_voxels_left_out": int((~keep).sum()),
        "run": {"n_volumes": int(n), "tr_s": float(tr_s), "lag_s": float(lag_s), "grid_shape": list(shape)},
        "cross_validation": {
            "scheme": ("leave one trial out" if best["n_folds"] == np.unique(g).size
                       else f"GroupKFold over trials, {best['n_folds']} folds"),
            "C": best["C"],
            "C_selection": "lowest cross-validated log-loss" if C == "auto" else "given",
            "accuracy_volumes": best["accuracy_volumes"],
            "accuracy_trials": best["accuracy_trials"],
            "chance": round(1.0 / len(ordered), 4),
            "by_C": by_c,
        },
        "motion": {"max_translation_mm": round(float(trans.max()), 3),
                   "max_rotation_deg": round(float(np.degrees(np.abs(motion[:, 3:]).max())), 3)},
    }
    reference = np.asarray(data[..., 0], dtype=np.float32)
    return TrainedDecoder(model, reference, report, motion)


def _rtnf_version() -> str:
    from rtnf import __version__

    return __version__
