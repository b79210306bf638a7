"""The run's parts own their state (issue 14, points 2 and 5): design rows per model, one result
object per volume, the processor, publisher and recorder passed to the run instead of patched in."""

from __future__ import annotations

import numpy as np
import pytest

from rtnf.analysis.design import DesignRows, make_design, motion_regressors
from rtnf.analysis.protocol import Block, Protocol
from rtnf.analysis.roi_model import RoiModel
from rtnf.analysis.wholebrain import WholeBrainModel
from rtnf.scanner.volume import Grid

N = 80


def _protocol() -> Protocol:
    blocks = tuple(Block("regulate", 20.0 + 40.0 * k, 20.0, f"b{k}") for k in range(N * 2 // 40))
    return Protocol(blocks=blocks, baseline="rest", conditions=("rest", "regulate"), tr_s=2.0, n_volumes=N)


def _run(design, motion, y, roi_first: bool):
    roi = RoiModel(design, _protocol(), 1, 128.0)
    whole = WholeBrainModel(design, np.arange(3), Grid((3, 1, 1), np.eye(4)), 0, 2.0, 128.0)
    for t in range(N):
        reg = motion_regressors(motion[t], motion[t - 1] if t else None, 6)
        steps = [lambda: roi.update(t, y[t, :1], reg), lambda: whole.update(t, y[t], reg)]
        for step in steps if roi_first else steps[::-1]:
            step()
    return roi.glm.coefficients(design.n_regressors), whole.t_map


def test_models_fill_their_own_motion_rows_in_any_order_and_leave_the_design_alone():
    """Before: the ROI model wrote motion into the shared design and the whole-brain model read it, so
    updating the whole-brain model first fitted NaN rows (or another volume's motion)."""
    design = make_design(_protocol(), "spm", 128.0, n_motion=6)
    before = design.matrix.copy()
    rng = np.random.default_rng(3)
    motion = np.cumsum(rng.normal(scale=0.05, size=(N, 6)), axis=0)
    y = 1000 + rng.normal(size=(N, 3)) + 5 * design.matrix[:, :1]
    beta_a, t_a = _run(design, motion, y, roi_first=True)
    beta_b, t_b = _run(design, motion, y, roi_first=False)
    np.testing.assert_allclose(beta_a, beta_b)
    assert t_a is not None and np.all(np.isfinite(t_a))
    np.testing.assert_allclose(t_a, t_b)
    np.testing.assert_array_equal(design.matrix, before)  # NaN motion columns still: nobody wrote into it
    with pytest.raises(ValueError):
        design.matrix[0, 0] = 1.0  # read-only: a model cannot share its rows by accident


def test_design_rows_need_this_volumes_motion_unless_the_design_holds_it():
    design = make_design(_protocol(), "spm", 128.0, n_motion=6)
    rows = DesignRows(design)
    with pytest.raises(ValueError, match="motion or confound"):
        rows.row(0)
    filled = design.with_motion(np.ones((N, 6)))
    assert np.all(DesignRows(filled).row(5)[design.motion_columns] == 1.0)
