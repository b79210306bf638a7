"""The design matrix of a run.

Task regressors (the protocol's non-baseline blocks convolved with an HRF),
cosine drift terms up to the cutoff and a constant are known before the first
volume and built with nilearn's ``make_first_level_design_matrix``, so that
rtnf's model is the one batch analyses use. Motion regressors (6 or 24, with
fMRIPrep's names) are known only as each volume is realigned, and confound
regressors (physiological, tissue: :mod:`rtnf.analysis.confounds`) only as
each volume arrives: these *online* columns are filled row by row, by each
model in its own copy (:class:`DesignRows`): the design itself is read-only
and shared.

Column order: task, constant, motion, confounds, drifts. The incremental QR
then holds every nested model "task + constant [+ online] [+ first k drifts]"
at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .motion import MOTION_COLUMNS, motion_regressors  # noqa: F401 (re-exported for the design's users)
from .protocol import Protocol


@dataclass(frozen=True)
class Design:
    """A design matrix with named columns.

    Attributes
    ----------
    matrix : ndarray, shape (n_volumes, n_regressors)
        One row per kept volume.
        Read-only. Motion columns hold NaN: each model fills them in its own
        :class:`DesignRows` as volumes are realigned.
    names : tuple of str
        Column names: task conditions (and ``<condition>_derivative``),
        ``constant``, motion (``trans_x`` ... ``rot_z_derivative1_power2``),
        confounds, ``drift_k``.
    confounds : tuple of str
        Names of the confound columns (after motion, before the drifts).
    """

    matrix: np.ndarray
    names: tuple[str, ...]
    confounds: tuple[str, ...] = ()

    @property
    def drift_columns(self) -> np.ndarray:
        """Indices of the cosine drift columns."""
        return np.array([i for i, n in enumerate(self.names) if n.startswith("drift_")], dtype=int)

    @property
    def motion_columns(self) -> np.ndarray:
        """Indices of the motion columns."""
        return np.array([i for i, n in enumerate(self.names) if n.split("_")[0] in ("trans", "rot")], dtype=int)

    @property
    def confound_columns(self) -> np.ndarray:
        """Indices of the confound columns (:mod:`rtnf.analysis.confounds`)."""
        return np.array([self.names.index(n) for n in self.confounds], dtype=int)

    @property
    def online_columns(self) -> np.ndarray:
        """Motion then confound columns: those filled volume by volume (contiguous, after the constant)."""
        return np.concatenate([self.motion_columns, self.confound_columns]).astype(int)

    @property
    def nuisance_columns(self) -> np.ndarray:
        """Motion, confound and drift columns: what 'cleaning' a signal removes."""
        return np.concatenate([self.online_columns, self.drift_columns])

    def with_motion(self, motion: np.ndarray) -> "Design":
        """The design with every online row filled (a batch analysis, a test).

        Parameters
        ----------
        motion : ndarray, shape (n_volumes, n_online)
            Rows of :func:`motion_regressors` (then the confound values, when
            the design has confounds), one per kept volume.
        """
        matrix = np.array(self.matrix)
        matrix[:, self.online_columns] = motion
        matrix.flags.writeable = False
        return Design(matrix=matrix, names=self.names, confounds=self.confounds)

    @property
    def n_core(self) -> int:
        """Task columns plus the constant: the smallest model ever fitted."""
        return int(self.names.index("constant")) + 1

    @property
    def n_regressors(self) -> int:
        """Number of columns."""
        return self.matrix.shape[1]


class DesignRows:
    """One model's own copy of the design, whose online columns (motion, confounds) it fills volume by volume.

    The ROI model and the whole-brain model each hold one, so neither depends
    on the other having seen a volume first.

    Parameters
    ----------
    design : Design
        The run's design (not modified).
    """

    def __init__(self, design: Design) -> None:
        self.design = design
        self.matrix = np.array(design.matrix)  # a writable copy
        self._online = design.online_columns

    def row(self, index: int, online: np.ndarray | None = None) -> np.ndarray:
        """Row ``index`` of the design, its online columns set from ``online`` first.

        Parameters
        ----------
        index : int
            Kept-volume index.
        online : ndarray, optional
            This volume's motion regressors (:func:`motion_regressors`)
            followed by its confound values, in the design's column order;
            required when the design has online columns it does not fill
            itself (:meth:`Design.with_motion`).
        """
        if self._online.size:
            if online is not None:
                self.matrix[index, self._online] = online
            elif np.isnan(self.matrix[index, self._online]).any():
                raise ValueError("the design has motion or confound columns: pass this volume's values")
        return self.matrix[index]


def motion_names(n_motion: int) -> tuple[str, ...]:
    """fMRIPrep's confound names for 0, 6, 12 or 24 motion regressors (the order of
    :func:`rtnf.analysis.motion.motion_regressors`)."""
    groups = {0: 0, 6: 1, 12: 2, 24: 4}
    if n_motion not in groups:
        raise ValueError(
            f"Invalid value for the 'n_motion' parameter. Allowed values are 0, 6, 12, 24, but got {n_motion} instead."
        )
    suffixes = ("", "_derivative1", "_power2", "_derivative1_power2")[: groups[n_motion]]
    return tuple(f"{name}{suffix}" for suffix in suffixes for name in MOTION_COLUMNS)


def make_design(
    protocol: Protocol,
    hrf: str = "spm",
    drift_cutoff_s: float = 128.0,
    n_motion: int = 0,
    confounds: tuple[str, ...] = (),
) -> Design:
    """Build the run's design matrix.

    Parameters
    ----------
    protocol : Protocol
        Blocks and timing of the run (time zero = first kept volume).
    hrf : {"spm", "spm + derivative", "glover"}
        Hemodynamic response model (nilearn's names).
    drift_cutoff_s : float
        High-pass cutoff in seconds: cosine drift terms with periods longer
        than this are modelled.
    n_motion : {0, 6, 12, 24}
        Motion regressors, filled as volumes are realigned.
    confounds : tuple of str
        Names of confound regressors (:mod:`rtnf.analysis.confounds`),
        filled as volumes arrive.

    Returns
    -------
    Design
    """
    import pandas as pd
    from nilearn.glm.first_level import make_first_level_design_matrix

    frame_times = np.arange(protocol.n_volumes) * protocol.tr_s
    blocks = protocol.task_blocks()
    events = pd.DataFrame(
        {
            "onset": [b.onset_s for b in blocks],
            "duration": [b.duration_s for b in blocks],
            "trial_type": [b.condition for b in blocks],
        }
    )
    frame = make_first_level_design_matrix(
        frame_times, events, hrf_model=hrf, drift_model="cosine", high_pass=1.0 / drift_cutoff_s
    )
    # Columns go task, constant, drifts: the incremental QR then holds every
    # nested model 'task + constant + first k drifts' at once (see RoiModel).
    drifts = [c for c in frame.columns if str(c).startswith("drift_")]
    task = [c for c in frame.columns if c not in drifts and c != "constant"]
    order = {c: i for i, c in enumerate(protocol.task_conditions)}
    task.sort(key=lambda c: (order.get(str(c).removesuffix("_derivative"), len(order)), str(c)))
    frame = frame[task + ["constant"] + drifts]
    known = frame.to_numpy(dtype=np.float64)
    n_core = len(task) + 1
    online = motion_names(n_motion) + tuple(confounds)
    clash = set(online) & set(map(str, frame.columns)) or (len(set(online)) < len(online))
    if clash:
        raise ValueError(f"confound names must be unique and differ from the task and drift columns: {sorted(confounds)}")
    motion = np.full((protocol.n_volumes, len(online)), np.nan)
    matrix = np.hstack([known[:, :n_core], motion, known[:, n_core:]])
    names = tuple(str(c) for c in task) + ("constant",) + online + tuple(drifts)
    matrix.flags.writeable = False  # shared by the models: each fills the online columns in its own DesignRows
    return Design(matrix=matrix, names=names, confounds=tuple(confounds))
