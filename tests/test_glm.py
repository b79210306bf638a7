"""The incremental GLM equals batch least squares at every volume."""

from __future__ import annotations

import numpy as np
import pytest

from rtnf.analysis.design import make_design
from rtnf.analysis.roi_model import RoiModel
from rtnf.analysis.glm import IncrementalGLM
from rtnf.analysis.protocol import Block, Protocol

N = 200


def _protocol(n: int = N, tr: float = 2.0) -> Protocol:
    # 20 s rest, 20 s regulate, repeated over the run
    blocks = tuple(Block("regulate", 20.0 + 40.0 * k, 20.0, f"b{k}") for k in range(int(n * tr) // 40))
    return Protocol(blocks=blocks, baseline="rest", conditions=("rest", "regulate"), tr_s=tr, n_volumes=n)


def _data(design, n_signals=3, seed=1):
    rng = np.random.default_rng(seed)
    X = design.matrix
    beta = rng.normal(size=(X.shape[1], n_signals)) * 5.0
    beta[design.names.index("constant")] = [1000.0, 800.0, 650.0][:n_signals]
    return X @ beta + rng.normal(scale=5.0, size=(X.shape[0], n_signals))


def test_design_orders_task_constant_drifts():
    design = make_design(_protocol(), "spm", 128.0)
    assert design.names[0] == "regulate" and design.names[1] == "constant"
    # SPM's rule: floor(2 * duration / cutoff) cosines; 200 volumes x 2 s = 400 s, cutoff 128 s.
    assert design.names[2:] == tuple(f"drift_{k}" for k in range(1, int(np.floor(2 * 400 / 128)) + 1))
    assert design.n_core == 2
    assert np.all(design.matrix[:10, 0] == 0) and design.matrix[18, 0] > 0.5


@pytest.mark.parametrize("hrf", ["spm", "spm + derivative", "glover"])
def test_incremental_equals_lstsq_at_every_volume(hrf):
    """Every nested model (task + constant + k drifts) against numpy.linalg.lstsq."""
    design = make_design(_protocol(), hrf, 128.0)
    X, Y = design.matrix, _data(design)
    n, p = X.shape
    glm = IncrementalGLM(p, Y.shape[1])
    compared = {q: 0 for q in range(design.n_core, p + 1)}
    for t in range(n):
        glm.update(X[t], Y[t])
        for q in compared:
            Xq = X[: t + 1, :q]
            if np.linalg.matrix_rank(Xq) < q:
                assert not glm.identifiable(q), f"volume {t}, {q} columns: rank-deficient but called identifiable"
                continue
            if not glm.identifiable(q):
                # Only numerically hopeless designs may be refused.
                assert np.linalg.cond(Xq) > 1e5, f"volume {t}, {q} columns refused at cond {np.linalg.cond(Xq):.1e}"
                continue
            ref, *_ = np.linalg.lstsq(Xq, Y[: t + 1], rcond=None)
            rel = np.linalg.norm(glm.coefficients(q) - ref, axis=0) / np.linalg.norm(ref, axis=0)
            # 1e-8, looser in proportion above condition number 1e5: there lstsq's own error (LAPACK's, so the
            # machine's) reaches the bound. Glover, volume 35, 5 columns, cond 1.0e6: lstsq was 7.9e-9 from the
            # exact solution (rational arithmetic), the incremental GLM 8.8e-11.
            bound = 1e-8 * max(1.0, np.linalg.cond(Xq) / 1e5)
            assert rel.max() <= bound, f"volume {t}, {q} columns: relative error {rel.max():.2e} > {bound:.1e}"
            rss_ref = np.sum((Y[: t + 1] - Xq @ ref) ** 2, axis=0)
            np.testing.assert_allclose(glm.rss(q), rss_ref, rtol=1e-7)
            compared[q] += 1
    # The core model is estimable right after the first task block starts (volume 10) ...
    assert compared[design.n_core] >= n - 12
    # ... and the full model well before the end of the run.
    assert compared[p] >= n // 3


def test_whole_brain_model_size_grows_with_the_run_and_never_fits_garbage():
    from rtnf.scanner.volume import Grid
    from rtnf.analysis.wholebrain import MIN_DOF, WholeBrainModel

    protocol = _protocol()
    design = make_design(protocol, "spm", 128.0)
    Y = _data(design, n_signals=3)
    model = WholeBrainModel(design, np.arange(3), Grid((3, 1, 1), np.eye(4)), 0, protocol.tr_s, 128.0)
    sizes = []
    for t in range(N):
        model.update(t, Y[t])
        sizes.append(model.n_columns)
        q = sizes[-1]
        assert q == 0 or (t + 1) - q >= max(MIN_DOF, q), f"volume {t}: {q} columns leave too few residual dof"
        assert model.trust_note(t) is None  # nothing censored: an early small model is no lack of trust
    assert sizes[5] == 0  # before the first task block nothing is fitted
    assert sizes[25] == design.n_core
    assert sizes[-1] == design.n_regressors
    assert all(b >= a for a, b in zip(sizes, sizes[1:]))


def test_whole_brain_t_map_is_withheld_when_censoring_leaves_too_few_volumes():
    """A run that kept 14 volumes must not show the t values of a near-saturated 8-column fit."""
    from rtnf.analysis.design import motion_regressors
    from rtnf.scanner.volume import Grid
    from rtnf.analysis.wholebrain import WholeBrainModel

    protocol = _protocol(136)
    design = make_design(protocol, "spm", 128.0, n_motion=6)
    rng = np.random.default_rng(2)
    motion = np.cumsum(rng.normal(scale=0.3, size=(136, 6)), axis=0)
    design = design.with_motion(np.array([motion_regressors(motion[t], motion[t - 1] if t else None, 6)
                                          for t in range(136)]))
    model = WholeBrainModel(design, np.arange(5), Grid((5, 1, 1), np.eye(4)), 0, protocol.tr_s, 128.0)
    kept = np.sort(rng.choice(np.arange(8, 136), size=14, replace=False))
    for t in kept:
        model.update(int(t), 1000 + rng.normal(size=5))
    assert model.n_columns <= design.n_core  # motion and drifts dropped: 14 volumes cannot carry them
    assert model.t_map is None or np.nanmax(np.abs(model.t_map)) < 10
    assert "only 14 volumes" in model.trust_note(int(kept[-1])) or "withheld" in model.trust_note(int(kept[-1]))


def test_ridge_coefficients_equal_batch_ridge_at_every_volume():
    """With a prior, the coefficients are exactly the batch ridge solution of the volumes so far."""
    design = make_design(_protocol(), "spm", 128.0)
    Y = _data(design)
    prior = np.linspace(0.5, 3.0, design.n_regressors)
    prior[1] = 0.0  # the constant has none
    glm = IncrementalGLM(design.n_regressors, 3)
    X = design.matrix
    for t in range(N):
        glm.update(X[t], Y[t])
        scaled = prior * 40 / (40 + t)  # the prior may change between calls
        A = np.vstack([X[: t + 1], np.diag(np.sqrt(scaled))])
        B = np.vstack([Y[: t + 1], np.zeros((design.n_regressors, 3))])
        ref, *_ = np.linalg.lstsq(A, B, rcond=None)
        np.testing.assert_allclose(glm.ridge_coefficients(scaled), ref, rtol=1e-8, atol=1e-8 * np.abs(ref).max())
    with pytest.raises(RuntimeError, match="not identifiable"):
        IncrementalGLM(3, 1).ridge_coefficients(np.zeros(3))


def test_roi_model_cleaned_signal_has_no_step_where_terms_used_to_enter():
    """Drift and motion terms are in the model from the start: the cleaned value of a volume never
    jumps when the elapsed time resolves a drift (64 s, 128 s, ...) or motion becomes estimable."""
    from rtnf.analysis.design import motion_regressors
    from rtnf.analysis.roi_model import RoiModel

    n = 150
    protocol = _protocol(n)
    design = make_design(protocol, "spm", 128.0, n_motion=6)
    rng = np.random.default_rng(5)
    t_s = np.arange(n) * protocol.tr_s
    motion = np.cumsum(rng.normal(scale=0.05, size=(n, 6)), axis=0)
    motion[:, 3:] /= 50
    task = design.matrix[:, 0]
    signal = 1000 * (1 + 0.02 * task / task.max() + 0.01 * (t_s / t_s[-1]) ** 2) + 20 * motion[:, 0]
    noise = np.zeros(n)
    for i in range(1, n):  # AR(1) noise, 0.3 % of the signal
        noise[i] = 0.4 * noise[i - 1] + rng.normal(scale=3.0)
    y = signal + noise
    model = RoiModel(design, protocol, 1, drift_cutoff_s=128.0)
    steps, before = np.zeros(n), np.nan
    for i in range(n):
        model.update(i, [y[i]], motion_regressors(motion[i], motion[i - 1] if i else None, 6))
        if i:
            steps[i] = abs(model.clean_at([i - 1])[0, 0] - before)
        before = model.clean_at([i])[0, 0]
    sd = y.std()
    entries = [int(64 * k / protocol.tr_s) for k in (1, 2, 3, 4)] + list(range(7, 12))
    assert steps[entries].max() < 0.1 * sd, f"step {steps[entries].max() / sd:.2f} SD at a former entry"
    # Between entries a new volume still moves the estimates, by what it teaches about the nuisance.
    assert steps[1:].max() < 0.2 * sd, f"largest step {steps[1:].max() / sd:.2f} SD"


def test_not_identifiable_before_enough_rows():
    glm = IncrementalGLM(3, 1)
    glm.update([1.0, 0.0, 1.0], [2.0])
    assert not glm.identifiable()
    with pytest.raises(RuntimeError, match="not identifiable"):
        glm.coefficients()


def test_exact_fit_recovers_coefficients():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 4))
    beta = np.array([[1.0], [-2.0], [0.5], [3.0]])
    glm = IncrementalGLM(4, 1)
    for row, y in zip(X, X @ beta):
        glm.update(row, y)
    np.testing.assert_allclose(glm.coefficients(), beta, rtol=1e-12)
    assert glm.rss()[0] < 1e-20


def test_baseline_periods_follow_the_hemodynamic_lag():
    from rtnf.analysis.roi_model import baseline_segments

    protocol = _protocol()  # TR 2 s: regulate volumes 10-19, 30-39, ...
    segments = baseline_segments(make_design(protocol, "spm", 128.0))
    start, stop = segments[1]
    # The response's tail lasts a few volumes into the rest block (20-29) ...
    assert 22 <= start <= 26
    # ... and the next regulation block's first volume is still quiet.
    assert 30 <= stop <= 33
    assert segments[0][0] == 0


def test_percent_signal_change_recovers_a_known_response_through_drift():
    """With drift on top, the PSC equals that of the drift-free signal against the same baseline."""
    from rtnf.analysis.roi_model import baseline_segments

    protocol = _protocol()
    design = make_design(protocol, "spm", 128.0)
    response = design.matrix[:, 0] / design.matrix[:, 0].max()  # 1.0 at the plateau
    t = np.arange(N) * protocol.tr_s
    signal = 1000.0 * (1.0 + 0.015 * response)
    y = signal * (1.0 + 0.01 * np.cos(np.pi * t / t[-1]))  # a 1 % slow drift, modelled by drift_1
    model = RoiModel(design, protocol, 1, drift_cutoff_s=128.0)
    psc = np.array([model.update(i, [y[i]])[0].psc or np.nan for i in range(N)])
    segments = baseline_segments(design)
    expected = np.full(N, np.nan)
    for i in range(N // 2, N):
        start, stop = [(a, b) for a, b in segments if a + 3 <= i + 1][-1]
        base = signal[start : min(stop, i + 1)].mean()
        expected[i] = 100 * (signal[i] - base) / base
    late = slice(N // 2, N)  # once the drift terms are resolved by the run
    # The drift terms' prior (rtnf.analysis.roi_model.prior_precision) removes a slow drift only as the
    # run resolves it: the price of a cleaned signal without transients is a residual of up
    # to 0.2 % here (0.03 % with ordinary least squares, whose terms jumped in on real runs) ...
    np.testing.assert_allclose(psc[late], expected[late], atol=0.2)
    # ... still less than what the drift does to an uncleaned signal.
    uncleaned = np.full(N, np.nan)
    for i in range(N // 2, N):
        start, stop = [(a, b) for a, b in segments if a + 3 <= i + 1][-1]
        base = y[start : min(stop, i + 1)].mean()
        uncleaned[i] = 100 * (y[i] - base) / base
    err = np.abs(psc[late] - expected[late])
    assert np.mean(err) < np.mean(np.abs(uncleaned[late] - expected[late]))
    # and the response itself is there: about 1.5 % at the plateau
    assert 1.4 < np.nanmax(psc[late]) < 1.7


def test_whole_brain_and_roi_estimates_with_motion_equal_lstsq_at_every_volume():
    from rtnf.analysis.design import motion_regressors

    n, voxels = 300, 400
    protocol = _protocol(n)
    design = make_design(protocol, "spm", 128.0, n_motion=6)
    assert design.names[:8] == ("regulate", "constant", "trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")
    rng = np.random.default_rng(7)
    motion = np.cumsum(rng.normal(scale=0.05, size=(n, 6)), axis=0)
    design = design.with_motion(np.array([motion_regressors(motion[t], motion[t - 1] if t else None, 6)
                                          for t in range(n)]))
    X = design.matrix
    beta = rng.normal(size=(X.shape[1], voxels))
    beta[1] = 1000.0
    Y = X @ beta + rng.normal(scale=3.0, size=(n, voxels))
    whole = IncrementalGLM(X.shape[1], voxels)
    roi = IncrementalGLM(X.shape[1], 2)
    Yroi = np.stack([Y[:, :100].mean(axis=1), Y[:, 100:300].mean(axis=1)], axis=1)
    nested = [design.n_core, design.n_core + 6, X.shape[1]]
    compared = 0
    for t in range(n):
        whole.update(X[t], Y[t])
        roi.update(X[t], Yroi[t])
        for q in nested:
            if not whole.identifiable(q):
                continue
            ref, *_ = np.linalg.lstsq(X[: t + 1, :q], Y[: t + 1], rcond=None)
            rel = np.linalg.norm(whole.coefficients(q) - ref) / np.linalg.norm(ref)
            assert rel <= 1e-8, f"volume {t}, {q} columns: whole-brain relative error {rel:.1e}"
            ref_roi, *_ = np.linalg.lstsq(X[: t + 1, :q], Yroi[: t + 1], rcond=None)
            rel = np.linalg.norm(roi.coefficients(q) - ref_roi) / np.linalg.norm(ref_roi)
            assert rel <= 1e-8, f"volume {t}, {q} columns: ROI relative error {rel:.1e}"
            compared += 1
    assert compared >= 2 * n


def test_t_map_equals_batch_ols():
    rng = np.random.default_rng(3)
    protocol = _protocol(120)
    design = make_design(protocol, "spm", 128.0)
    X = design.matrix
    Y = X @ rng.normal(size=(X.shape[1], 50)) + rng.normal(size=(120, 50))
    glm = IncrementalGLM(X.shape[1], 50)
    for t in range(120):
        glm.update(X[t], Y[t])
    c = np.zeros(X.shape[1])
    c[0] = 1.0
    effect, t_map = glm.contrast(c)
    b, *_ = np.linalg.lstsq(X, Y, rcond=None)
    resid = Y - X @ b
    sigma2 = np.sum(resid**2, axis=0) / (120 - X.shape[1])
    t_ref = (c @ b) / np.sqrt(sigma2 * (c @ np.linalg.inv(X.T @ X) @ c))
    np.testing.assert_allclose(effect, c @ b, rtol=1e-9)
    np.testing.assert_allclose(t_map, t_ref, rtol=1e-7)
