"""The design matrix of a run, known in full before the first volume.

Task regressors (the protocol's non-baseline blocks convolved with an HRF),
cosine drift terms up to the cutoff and a constant, built with nilearn's
``make_first_level_design_matrix`` so that rtnf's model is the one batch
analyses use.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .protocol import Protocol


@dataclass(frozen=True)
class Design:
    """A design matrix with named columns.

    Attributes
    ----------
    matrix : ndarray, shape (n_volumes, n_regressors)
        One row per kept volume.
    names : tuple of str
        Column names: task conditions (and their derivatives), ``drift_k``,
        ``constant``.
    """

    matrix: np.ndarray
    names: tuple[str, ...]

    @property
    def nuisance_columns(self) -> np.ndarray:
        """Indices of the drift columns: what 'cleaning' a signal removes."""
        return np.array([i for i, n in enumerate(self.names) if n.startswith("drift_")], dtype=int)

    @property
    def n_core(self) -> int:
        """Task columns plus the constant: the smallest model ever fitted."""
        return int(self.names.index("constant")) + 1

    @property
    def n_regressors(self) -> int:
        """Number of columns."""
        return self.matrix.shape[1]


def make_design(protocol: Protocol, hrf: str = "spm", drift_cutoff_s: float = 128.0) -> Design:
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
    return Design(matrix=frame.to_numpy(dtype=np.float64), names=tuple(str(c) for c in frame.columns))
