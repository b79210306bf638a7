"""Quality measures against hand-computed values, and spike detection on a simulated run."""

from __future__ import annotations

import numpy as np
import pytest

from rtnf.analysis.quality import QualityMonitor, dvars, fd_step, framewise_displacement, global_signal, robust_z


def test_framewise_displacement_by_hand():
    params = np.array([
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        [0.1, -0.2, 0.3, 0.001, -0.002, 0.0],
        [0.1, -0.2, 0.3, 0.001, -0.002, 0.0],
        [-0.4, 0.0, 0.3, 0.0, 0.0, 0.01],
    ])
    # volume 1: 0.1 + 0.2 + 0.3 + 50 * (0.001 + 0.002) = 0.75
    # volume 3: 0.5 + 0.2 + 0 + 50 * (0.001 + 0.002 + 0.01) = 1.35
    np.testing.assert_allclose(framewise_displacement(params), [0.0, 0.75, 0.0, 1.35])
    assert fd_step(params[3], params[2]) == pytest.approx(1.35)
    assert fd_step(params[1], None) == 0.0
    assert fd_step(params[3], params[2], radius_mm=80.0) == pytest.approx(0.7 + 80 * 0.013)
    with pytest.raises(ValueError, match="'params' parameter"):
        framewise_displacement(params[:, :5])


def test_dvars_and_global_signal_by_hand():
    prev = np.array([100.0, 200.0, 300.0, 400.0])
    cur = np.array([103.0, 196.0, 300.0, 400.0])
    # differences 3, -4, 0, 0: mean square 25 / 4, RMS 2.5
    assert dvars(cur, prev) == pytest.approx(2.5)
    assert dvars(cur, None) is None
    assert global_signal(cur) == pytest.approx(249.75)
    with pytest.raises(ValueError, match="same non-empty mask"):
        dvars(cur, prev[:3])


def test_robust_z_by_hand():
    hist = [1.0, 2.0, 3.0, 4.0, 100.0]  # median 3, |dev| 2 1 0 1 97 -> MAD 1
    assert robust_z(3.0 + 1.4826 * 4, hist) == pytest.approx(4.0)
    assert robust_z(5.0, []) == 0.0
    assert robust_z(5.0, [2.0, 2.0, 2.0]) == np.inf


def test_monitor_flags_fd_and_keeps_o1_state():
    mon = QualityMonitor(fd_threshold_mm=0.5, window=20, min_history=5)
    vals = np.full(10, 100.0)
    rows = []
    for i in range(30):
        p = np.zeros(6)
        p[0] = 0.01 * i + (1.0 if i == 12 else 0.0)  # 1 mm out and back at volume 12
        rows.append(mon.update(p, vals + 0.1 * np.sin(i)))
    fd = [r.framewise_displacement for r in rows]
    assert fd[0] == 0.0 and rows[0].dvars is None
    assert fd[12] == pytest.approx(1.01) and fd[13] == pytest.approx(0.99)
    assert [i for i, r in enumerate(rows) if r.censored] == [12, 13]
    assert rows[12].motion_outlier and not rows[12].spike
    assert "framewise displacement 1.01 mm > 0.5 mm" in rows[12].reasons
    assert len(mon._dvars_hist) <= 20  # bounded window


def test_monitor_flags_a_simulated_intensity_spike():
    from rtnf.analysis.motion import Realigner
    from scanner_sim.spec import RunSpec
    from scanner_sim.synth import SyntheticRun

    spec = RunSpec.from_dict({
        "tr_s": 1.0, "n_volumes": 40, "noise_pct": 1.0, "seed": 5, "spikes": [25], "spike_pct": 5.0,
        "motion": {"max_trans_mm": 0.5, "max_rot_deg": 0.5, "kind": "smooth"},
    })
    run = SyntheticRun(spec)
    vols = [run.volume(i) for i in range(len(run))]
    realigner = Realigner().fit(vols[0], run.affine)
    mon = QualityMonitor(fd_threshold_mm=0.5, spike_z=5.0)
    rows = []
    for v in vols:
        p = realigner.estimate(v)
        rows.append(mon.update(p, realigner.sample(v, p, realigner.brain_indices_)))
    flagged = [i for i, r in enumerate(rows) if r.censored]
    # the spike volume and the one after it (the difference back) are flagged, nothing else
    assert flagged == [25, 26]
    assert rows[25].spike and not rows[25].motion_outlier
    assert rows[25].dvars_z > 5 and rows[25].global_signal_z > 5
    assert rows[25].global_signal == pytest.approx(1.05 * rows[24].global_signal, rel=0.005)
    # quiet volumes: relative DVARS about 1
    rel = [r.dvars_rel for r in rows[15:24]]
    assert all(0.7 < x < 1.4 for x in rel)


def test_monitor_checks_its_parameters():
    with pytest.raises(ValueError, match="'fd_threshold_mm' parameter: -1"):
        QualityMonitor(fd_threshold_mm=-1)
    with pytest.raises(ValueError, match="'window' parameter: 2"):
        QualityMonitor(window=2)
    with pytest.raises(ValueError, match="'min_history' parameter: 50. Allowed: at most window=20"):
        QualityMonitor(window=20, min_history=50)


def test_a_lasting_new_dvars_level_is_censored_only_briefly_not_for_the_rest_of_the_run():
    """Before: flagged DVARS never entered the window, so after a lasting step up (the switch to fitted multi-echo
    weights, a shim change) every later volume was a 'spike' and censored to the end of the run."""
    rng = np.random.default_rng(4)
    monitor = QualityMonitor(spike_z=5.0, new_level_volumes=5)
    base = 1000 + rng.normal(size=4000)
    censored = []
    for i in range(80):
        noise = 6.0 if i < 30 else 7.0  # a step in the noise level at volume 30, for good
        row = monitor.update(np.zeros(6), base + rng.normal(scale=noise / np.sqrt(2), size=base.size))
        censored.append(row.censored)
    assert not any(censored[:30])
    assert 0 < sum(censored[30:]) <= 5  # the first volumes of the new level, then it is the level
    assert not any(censored[40:])
    # a real spike after the new level is still caught
    row = monitor.update(np.zeros(6), base + rng.normal(scale=30.0, size=base.size))
    assert row.spike
