"""The design matrix of a run.

Task regressors (the protocol's non-baseline blocks convolved with an HRF),
cosine drift terms up to the cutoff and a constant are known before the first
volume and built with nilearn's ``make_first_level_design_matrix``, so that
rtnf's model is the one batch analyses use. Motion regressors (6 or 24, with
fMRIPrep's names) are known only as each volume is realigned: their columns
are filled row by row with :func:`motion_regressors`, by each model in its own
copy (:class:`DesignRows`): the design itself is read-only and shared.

Column order: task, constant, motion, drifts. The incremental QR then holds
every nested model "task + constant [+ motion] [+ first k drifts]" at once.
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
        ``drift_k``.
    """

    matrix: np.ndarray
    names: tuple[str, ...]

    @property
    def drift_columns(self) -> np.ndarray:
        """Indices of the cosine drift columns."""
        return np.array([i for i, n in enumerate(self.names) if n.startswith("drift_")], dtype=int)

    @property
    def motion_columns(self) -> np.ndarray:
        """Indices of the motion columns."""
        return np.array([i for i, n in enumerate(self.names) if n.split("_")[0] in ("trans", "rot")], dtype=int)

    @property
    def nuisance_columns(self) -> np.ndarray:
        """Motion and drift columns: what 'cleaning' a signal removes."""
        return np.concatenate([self.motion_columns, self.drift_columns])

    def with_motion(self, motion: np.ndarray) -> "Design":
        """The design with every motion row filled (a batch analysis, a test).

        Parameters
        ----------
        motion : ndarray, shape (n_volumes, n_motion)
            Rows of :func:`motion_regressors`, one per kept volume.
        """
        matrix = np.array(self.matrix)
        matrix[:, self.motion_columns] = motion
        matrix.flags.writeable = False
        return Design(matrix=matrix, names=self.names)

    @property
    def n_core(self) -> int:
        """Task columns plus the constant: the smallest model ever fitted."""
        return int(self.names.index("constant")) + 1

    @property
    def n_regressors(self) -> int:
        """Number of columns."""
        return self.matrix.shape[1]


class DesignRows:
    """One model's own copy of the design, whose motion columns it fills as volumes are realigned.

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
        self._motion = design.motion_columns

    def row(self, index: int, motion: np.ndarray | None = None) -> np.ndarray:
        """Row ``index`` of the design, its motion columns set from ``motion`` first.

        Parameters
        ----------
        index : int
            Kept-volume index.
        motion : ndarray, optional
            This volume's motion regressors (:func:`motion_regressors`);
            required when the design has motion columns it does not fill
            itself (:meth:`Design.with_motion`).
        """
        if self._motion.size:
            if motion is not None:
                self.matrix[index, self._motion] = motion
            elif np.isnan(self.matrix[index, self._motion]).any():
                raise ValueError("the design has motion columns: pass this volume's motion regressors")
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
    protocol: Protocol, hrf: str = "spm", drift_cutoff_s: float = 128.0, n_motion: int = 0
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
    motion = np.full((protocol.n_volumes, len(motion_names(n_motion))), np.nan)
    matrix = np.hstack([known[:, :n_core], motion, known[:, n_core:]])
    names = tuple(str(c) for c in task) + ("constant",) + motion_names(n_motion) + tuple(drifts)
    matrix.flags.writeable = False  # shared by the models: each fills motion in its own DesignRows
    return Design(matrix=matrix, names=names)
