"""Feedback modes against hand-computed values and the simulator's ground truth."""

from __future__ import annotations

import numpy as np
import pytest

from rtnf.config import FeedbackConfig
from rtnf.analysis.design import make_design
from rtnf.analysis.feedback import DynamicScaler, ExponentialSmoother, FeedbackComputer, KalmanDespiker, scale
from rtnf.analysis.protocol import Block, Protocol
from rtnf.analysis.roi_model import RoiModel, RoiValues


def _protocol(n=80, tr=2.0) -> Protocol:
    # rest 10 volumes, regulate 10 volumes, repeated
    blocks = tuple(Block("regulate", 20.0 + 40.0 * k, 20.0, f"b{k}") for k in range(int(n * tr) // 40))
    return Protocol(blocks=blocks, baseline="rest", conditions=("rest", "regulate"), tr_s=tr, n_volumes=n)


def test_scale_is_linear_and_clipped():
    assert scale(0.5, 0.0, 2.0) == 0.25
    assert scale(-3.0, -1.0, 2.0) == 0.0
    assert scale(5.0, -1.0, 2.0) == 1.0


def test_exponential_smoothing_by_hand():
    s = ExponentialSmoother(0.5)
    assert [s(x) for x in (1.0, 3.0, 3.0, 0.0)] == [1.0, 2.0, 2.5, 1.25]


def test_dynamic_scaling_by_hand():
    d = DynamicScaler()
    assert d(1.0) == 0.5  # no range yet
    assert d(3.0) == 1.0
    assert d(2.0) == 0.5
    assert d(-1.0) == 0.0
    assert d(2.0) == 0.75  # range now [-1, 3]


def test_kalman_removes_an_injected_spike_and_follows_a_step():
    rng = np.random.default_rng(0)
    x = np.concatenate([np.zeros(40), np.ones(40)]) + rng.normal(scale=0.1, size=80)
    x_spiked = x.copy()
    x_spiked[20] += 2.0  # 20 noise SDs
    k = KalmanDespiker(threshold=3.0)
    out = np.array([k(v) for v in x_spiked])
    assert abs(out[20] - out[19]) < 0.3, "the spike went through"
    assert abs(x_spiked[20] - x_spiked[19]) > 1.5
    # a genuine step (a block onset) is followed within a few volumes
    assert abs(out[50:].mean() - 1.0) < 0.1
    # without the spike, the filter stays close to the signal's noise-free level
    assert np.abs(out[10:40]).max() < 0.3


def _model_with_signal(signal: np.ndarray, protocol: Protocol) -> tuple[RoiModel, list[list[RoiValues]]]:
    design = make_design(protocol, "spm", 128.0)
    model = RoiModel(design, protocol, signal.shape[1], 128.0)
    values = [model.update(i, signal[i]) for i in range(protocol.n_volumes)]
    return model, values


def test_intermittent_feedback_once_per_block_after_the_lag():
    protocol = _protocol(80)
    design = make_design(protocol, "spm", 128.0)
    response = design.matrix[:, 0] / design.matrix[:, 0].max()
    signal = (1000.0 * (1 + 0.01 * response))[:, None]
    cfg = FeedbackConfig(roi="a", kind="intermittent", hemodynamic_lag_s=6.0, scale_range=[0.0, 2.0], scaling="fixed")
    fc = FeedbackComputer(cfg, ["a"], protocol)
    design2 = make_design(protocol, "spm", 128.0)
    model = RoiModel(design2, protocol, 1, 128.0)
    shown = []
    for i in range(protocol.n_volumes):
        fb = fc.step(i, model.update(i, signal[i]), model)
        if fb.value is not None:
            shown.append((i, fb))
        else:
            assert fb.kind == "intermittent" and fb.reason
    # regulation blocks: volumes 10-19, 30-39, 50-59, 70-79; lag 3 volumes -> ready at 22, 42, 62
    # (the last block's lagged window ends after the run and has no score)
    assert [i for i, _ in shown] == [22, 42, 62]
    for i, fb in shown:
        start = i - 9
        expected_signal = np.mean([model_psc for model_psc in _psc_series(signal, protocol)[start : i + 1]])
        assert fb.signal == pytest.approx(expected_signal, rel=1e-9)
        assert fb.value == pytest.approx(scale(expected_signal, 0.0, 2.0))
        assert fb.display_s == cfg.intermittent_display_s
        assert 0.7 < fb.signal < 1.05  # about 1 % in the lagged block


def _psc_series(signal, protocol):
    model, values = _model_with_signal(signal, protocol)
    return [v[0].psc for v in values]


def test_differential_and_combined_targets_by_hand():
    protocol = _protocol(40)
    rng = np.random.default_rng(1)
    signal = 1000 + rng.normal(size=(40, 3))
    model, values = _model_with_signal(signal, protocol)
    i = 35
    psc = [v.psc for v in values[i]]
    for cfg_kwargs, expected in [
        ({"roi": ["a", "b"], "combine": "mean"}, (psc[0] + psc[1]) / 2),
        ({"roi": ["a", "b"], "combine": "median"}, np.median(psc[:2])),
        ({"roi": "a", "reference_roi": "c"}, psc[0] - psc[2]),
    ]:
        fc = FeedbackComputer(FeedbackConfig(**cfg_kwargs), ["a", "b", "c"], protocol)
        fb = fc.step(i, values[i], model)
        assert fb.signal == pytest.approx(expected, rel=1e-12)


def test_window_beta_and_t_by_hand():
    protocol = _protocol(40)
    design = make_design(protocol, "spm", 128.0)
    rng = np.random.default_rng(2)
    y = (1000 + 5 * design.matrix[:, 0] + rng.normal(size=40))[:, None]
    model, values = _model_with_signal(y, protocol)
    index, window = 30, 15  # window_s 30 at TR 2
    rows = np.arange(index - window + 1, index + 1)
    cfg = FeedbackConfig(roi="a", signal="t", window_s=30.0, scale_range=[-5.0, 5.0], scaling="fixed")
    # model state after volume 30, as the pipeline sees it
    design2 = make_design(protocol, "spm", 128.0)
    model2 = RoiModel(design2, protocol, 1, 128.0)
    fc = FeedbackComputer(cfg, ["a"], protocol)
    for i in range(index + 1):
        fb = fc.step(i, model2.update(i, y[i]), model2)
    X = np.column_stack([design.matrix[rows, 0], np.ones(window)])
    clean = model2.clean_at(rows)[:, 0]
    # 62 s resolve no drift yet: its prior keeps the cleaned signal within 0.01 % of the raw one
    np.testing.assert_allclose(clean, y[rows, 0], rtol=1e-4)
    b, res, *_ = np.linalg.lstsq(X, clean, rcond=None)
    sigma2 = res[0] / (window - 2)
    t = b[0] / np.sqrt(sigma2 * np.linalg.inv(X.T @ X)[0, 0])
    assert fb.signal == pytest.approx(t, rel=1e-9)
    assert t > 5  # a 5-unit effect in noise of SD 1


def test_sham_replays_a_recorded_series(tmp_path):
    path = tmp_path / "other_desc-rtnf_timeseries.tsv"
    path.write_text("index\tfeedback_value\n0\tn/a\n1\t0.25\n2\t0.75\n")
    protocol = _protocol(40)
    fc = FeedbackComputer(FeedbackConfig(roi="a", sham_from=path), ["a"], protocol)
    model, values = _model_with_signal(np.full((40, 1), 1000.0), protocol)
    got = [fc.step(i, values[i], model).value for i in range(4)]
    assert got == [None, 0.25, 0.75, None]


def test_differential_feedback_tracks_the_truth_in_a_simulated_run():
    """Two ROIs, activation only in the target: target minus reference follows the truth, ~0 at rest."""
    from rtnf.analysis.rois import SphereROI
    from rtnf.scanner.volume import Grid
    from scanner_sim.spec import RunSpec
    from scanner_sim.synth import SyntheticRun

    protocol = _protocol(80)
    blocks = [{"condition": "regulate", "onset_s": b.onset_s, "duration_s": b.duration_s} for b in protocol.blocks]
    spec = RunSpec.from_dict({
        "tr_s": 2.0, "n_volumes": 80, "seed": 5, "noise_pct": 1.0, "blocks": blocks,
        "regions": [{"name": "acc", "center_mm": [0, 30, 15], "radius_mm": 8.0, "amplitude_pct": 1.5,
                     "condition": "regulate"}],
    })
    run = SyntheticRun(spec)
    grid = Grid(tuple(run.reference.shape), run.affine)
    rois = [SphereROI("acc", (0, 30, 15), 8.0).fit(grid), SphereROI("ref", (-37, 1, -1), 8.0).fit(grid)]
    design = make_design(protocol, "spm", 128.0)
    model = RoiModel(design, protocol, 2, 128.0)
    fc = FeedbackComputer(FeedbackConfig(roi="acc", reference_roi="ref", scale_range=[-1.0, 2.0], scaling="fixed"), ["acc", "ref"], protocol)
    signals = []
    for i in range(80):
        vol = run.volume(i)
        fb = fc.step(i, model.update(i, np.array([r.transform(vol) for r in rois])), model)
        signals.append(np.nan if fb.signal is None else fb.signal)
    signals = np.array(signals)
    truth = run.truth["activation_acc"]
    ok = ~np.isnan(signals)
    assert ok.sum() >= 70
    r = np.corrcoef(signals[ok], truth[ok])[0, 1]
    assert r >= 0.8, f"r = {r:.3f}"
    quiet = ok & (np.abs(truth) < 0.05)
    assert abs(np.mean(signals[quiet])) < 0.15
