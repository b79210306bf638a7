"""A volume of absurd intensity is censored even among the first volumes (hostile-input finding)."""

from __future__ import annotations

import numpy as np

from rtnf.analysis.quality import QualityMonitor


def _run(levels, seed=0):
    rng = np.random.default_rng(seed)
    monitor = QualityMonitor(fd_threshold_mm=0.5, spike_z=5.0)
    return [monitor.update(np.zeros(6), level * (1 + 0.01 * rng.normal(size=500))) for level in levels]


def test_an_absurd_or_empty_volume_among_the_first_is_censored_and_not_the_next_ones_reference():
    rows = _run([1000, 1000, 1e30, 1000, 0.0, 1000, 1000])
    # before: no history yet, so neither the 1e30 volume nor the empty one was censored
    assert [r.censored for r in rows] == [False, False, True, False, True, False, False]
    assert "run's level" in rows[2].reasons[0]


def test_a_first_volume_before_steady_state_does_not_censor_the_run():
    rows = _run([3000, 1000, 1000, 1000, 1000])  # no dummies removed: the first volume is 3x brighter
    assert not any(r.censored for r in rows)
