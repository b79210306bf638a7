"""scanner_sim's realistic noise: drifts, AR(1), cardiac/respiratory, motion-correlated signal, real noise.

Each test checks the statistics of what is generated against the spec and
against the truth files written beside the run.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from scanner_sim import cli
from scanner_sim.generate import as_spec, generate_run
from scanner_sim.phantom import make_phantom
from scanner_sim.physio import cardiac_waveform, resp_waveform
from scanner_sim.spec import REALISTIC_PRESET, Physio, RunSpec, SpecError, load_spec
from scanner_sim.synth import NUISANCE_COLUMNS, PHYSIO_COLUMNS, SyntheticRun, apply_motion, rigid_matrix
from tests.helpers import SHARED_DATA, requires_shared_data

EXAMPLES = Path(__file__).resolve().parents[1] / "scanner_sim" / "examples"
PRISMA = SHARED_DATA / "pyneal-series" / "siemens-prisma-e11-mosaic"
#: A point inside the brain of the Prisma series (its scanner RAS mm), and a block design for it.
PRISMA_ROI = {"name": "roi", "center_mm": [0, 30, -20], "radius_mm": 10, "amplitude_pct": 3.0, "condition": "up"}
PRISMA_BLOCKS = [{"condition": "up", "onset_s": 10.0, "duration_s": 15.0},
                 {"condition": "up", "onset_s": 35.0, "duration_s": 15.0}]


@pytest.fixture(scope="module")
def phantom():
    return make_phantom((64, 64, 36), 3.0)


def _spec(**kw) -> RunSpec:
    d = dict(tr_s=1.0, n_volumes=40, seed=5, noise_pct=0.0, drift_pct=0.0, blocks=[], regions=[])
    d.update(kw)
    return RunSpec.from_dict(d)


def _lag1(x: np.ndarray) -> float:
    """Pooled lag-1 autocorrelation of zero-mean time series in the last axis.

    Not demeaned: the noise's mean is 0 by construction, and demeaning 80
    samples would bias the estimate down by about (1 + 3 phi) / n.
    """
    return float(np.sum(x[..., 1:] * x[..., :-1]) / np.sum(x * x))


# --------------------------------------------------------------------------- spec
def test_defaults_off_and_preset_fills_only_unset_keys():
    plain = _spec()
    assert not plain.extra_noise and plain.physio is None and plain.motion_signal is None
    assert plain.noise_preset == "none" and plain.drift_poly_pct == 0 and not plain.real_noise
    spec = _spec(noise_preset="realistic", ar1=0.55, physio={"cardiac_hz": 1.3}, noise_pct=None)
    assert spec.extra_noise
    assert spec.ar1 == 0.55  # the spec's own key wins
    assert spec.noise_pct == REALISTIC_PRESET["noise_pct"]  # None = unset: the preset's
    assert spec.physio == Physio.from_dict({**REALISTIC_PRESET["physio"], "cardiac_hz": 1.3})
    assert spec.motion is not None and spec.motion.kind == "random_walk"
    assert spec.motion_signal.pct_per_mm == 1.0 and spec.drift_walk_pct == 0.5
    assert RunSpec.from_dict(spec.to_dict()) == spec  # spec.json round trip
    # an explicit [motion] is kept as given
    assert _spec(noise_preset="realistic", motion={"max_trans_mm": 0.0, "max_rot_deg": 0.0}).motion.max_trans_mm == 0
    example = load_spec(EXAMPLES / "realistic_acc.toml")
    assert example.noise_preset == "realistic" and example.physio.enabled and example.motion_signal.enabled


@pytest.mark.parametrize("patch, words", [
    ({"noise_preset": "gentle"}, ["'noise_preset'", "gentle", "realistic"]),
    ({"physio": {"sampling": "beat"}}, ["'physio.sampling'", "beat", "slice"]),
    ({"physio": {"cardiac_hz": 9}}, ["'physio.cardiac_hz'", "hertz"]),
    ({"physio": {"pulse": 1}}, ["'pulse'", "cardiac_pct"]),
    ({"motion_signal": {"pct_per_mm": "a"}}, ["'motion_signal.pct_per_mm'", "percent per mm"]),
    ({"drift_walk_pct": -1}, ["'drift_walk_pct'", ">= 0"]),
    ({"noise_from": "/nonexistent/run.nii.gz"}, ["'noise_from'", "does not exist"]),
])
def test_noise_spec_errors_name_key_value_and_allowed(patch, words):
    d = dict(tr_s=1.0, n_volumes=40)
    d.update(patch)
    with pytest.raises(SpecError) as exc:
        RunSpec.from_dict(d)
    for w in words:
        assert w in str(exc.value), (w, str(exc.value))


def test_existing_runs_unchanged_by_the_new_keys(phantom):
    # the same spec written with the new keys at their defaults gives bit-identical volumes and truth
    base = _spec(noise_pct=1.0, ar1=0.3, drift_pct=1.0, motion={"kind": "smooth"})
    explicit = _spec(noise_pct=1.0, ar1=0.3, drift_pct=1.0, motion={"kind": "smooth"}, noise_preset="none",
                     drift_poly_pct=0.0, drift_walk_pct=0.0, physio={"cardiac_pct": 0.0},
                     motion_signal={"pct_per_mm": 0.0})
    a, b = SyntheticRun(base, phantom=phantom), SyntheticRun(explicit, phantom=phantom)
    assert not explicit.extra_noise
    np.testing.assert_array_equal(a.volume(7), b.volume(7))
    np.testing.assert_array_equal(a.truth["drift_pct"], b.truth["drift_pct"])


# --------------------------------------------------------------------------- drifts and AR(1)
def test_drifts_follow_spec_and_truth(phantom, tmp_path):
    spec = _spec(n_volumes=60, drift_pct=0.5, drift_poly_pct=1.0, drift_walk_pct=0.8)
    g = generate_run(spec, tmp_path, phantom=phantom)
    nuis = g.nuisance
    assert tuple(nuis) == NUISANCE_COLUMNS
    for col, peak in (("drift_poly_pct", 1.0), ("drift_walk_pct", 0.8)):
        assert nuis[col][0] == 0 and np.max(np.abs(nuis[col])) == pytest.approx(peak, rel=1e-6)
    total = nuis["drift_cosine_pct"] + nuis["drift_poly_pct"] + nuis["drift_walk_pct"]
    np.testing.assert_allclose(nuis["drift_pct"], total, atol=1e-8)
    np.testing.assert_allclose(g.truth["drift_pct"], total, atol=1e-8)
    # the image follows it: mean brain ratio to the reference = 1 + drift (no noise here)
    brain = phantom.brain_mask
    ratio = np.array([g.run.volume(i)[brain].mean() for i in range(60)]) / phantom.data[brain].mean()
    np.testing.assert_allclose(100 * (ratio - 1), total, atol=2e-3)
    # the random walk is not a slow cosine: a linear + 3-cosine fit leaves a real residual
    t = np.arange(60)
    basis = np.column_stack([np.ones(60), t] + [np.cos(np.pi * k * (t + 0.5) / 60) for k in (1, 2, 3)])
    walk = nuis["drift_walk_pct"]
    resid = walk - basis @ np.linalg.lstsq(basis, walk, rcond=None)[0]
    assert resid.std() > 0.03 * np.ptp(walk)


def test_ar1_residual_of_a_realistic_run(phantom):
    # everything on except motion (whose resampling would smooth the noise): the residual after the known
    # clean signal is the AR(1) noise, its lag-1 autocorrelation and sd as the spec says
    spec = _spec(n_volumes=80, noise_preset="realistic", ar1=0.45, noise_pct=1.5,
                 motion={"max_trans_mm": 0.0, "max_rot_deg": 0.0})
    run = SyntheticRun(spec, phantom=phantom)
    core = phantom.brain_mask & (run.physio_weight < 0.5)
    noise = np.stack([(run.volume(i) - run.clean_volume(i))[core] for i in range(80)], axis=-1)
    assert _lag1(noise) == pytest.approx(0.45, abs=0.02)
    assert noise.std() == pytest.approx(0.015 * run.brain_mean, rel=0.03)
    # one voxel on its own, like an analysis would see it: within sampling error of 80 volumes
    one = noise[np.argmax(core[core])]
    assert _lag1(one[None]) == pytest.approx(0.45, abs=0.3)


# --------------------------------------------------------------------------- physiology
def _physio_spec(**physio) -> RunSpec:
    p = {"cardiac_pct": 1.0, "resp_pct": 1.0, "cardiac_var_pct": 1.0, "resp_var_pct": 2.0,
         "resp_depth_var_pct": 10.0}
    p.update(physio)
    return _spec(tr_s=2.0, n_volumes=150, noise_pct=0.2, physio=p)


def _read_physio(truth: Path) -> tuple[np.ndarray, dict]:
    meta = json.loads((truth / "physio.json").read_text())
    with gzip.open(truth / "physio.tsv.gz", "rt") as fh:
        table = np.loadtxt(fh, delimiter="\t")
    return table, meta


def test_physio_signal_is_the_written_traces_sampled_per_slice(phantom, tmp_path):
    spec = dataclasses.replace(_physio_spec(), noise_pct=0.0, n_volumes=12)
    g = generate_run(spec, tmp_path, phantom=phantom)
    table, meta = _read_physio(g.truth_dir)
    assert meta["Columns"] == list(PHYSIO_COLUMNS) and meta["SamplingFrequency"] == 100.0 and meta["StartTime"] == 0
    t = np.arange(len(table)) / meta["SamplingFrequency"]
    phase_c, phase_r = np.unwrap(table[:, 2]), np.unwrap(table[:, 3])
    depth = table[:, 6]
    nuis_meta = json.loads((g.truth_dir / "nuisance.json").read_text())
    st = np.array(nuis_meta["slice_times_s"])
    np.testing.assert_allclose(np.sort(st), np.arange(36) * 2.0 / 36, atol=1e-9)  # ascending, TR / n apart
    w = nib.load(g.truth_dir / "physio_weight.nii.gz").get_fdata()
    b = nuis_meta["mean_brain_intensity"]
    for i in (0, 5, 11):
        tk = i * 2.0 + st
        expected = b * w * (0.01 * cardiac_waveform(np.interp(tk, t, phase_c))
                            + 0.01 * np.interp(tk, t, depth) * resp_waveform(np.interp(tk, t, phase_r)))[None, None]
        got = g.run.volume(i).astype(np.float64) - phantom.data
        np.testing.assert_allclose(got, expected, atol=0.02 * b / 100)  # 6-digit traces, float32 volumes
    # strongest near the ventricles and the brain's edge, weak in deep white matter
    ijk = np.round(np.linalg.inv(phantom.affine) @ [4, 5, 15, 1])[:3].astype(int)  # right lateral ventricle
    assert w[tuple(ijk)] > 0.6
    assert np.percentile(w[phantom.brain_mask], 25) < 0.1
    assert w[~phantom.brain_mask].max() == 0


def test_physio_spectrum_shows_aliased_cardiac_and_respiratory_peaks(phantom, tmp_path):
    spec = _physio_spec()
    run = SyntheticRun(spec, phantom=phantom)
    tr = run.physio_traces
    fs = 1.0 / spec.tr_s
    alias = {name: abs(f - fs * round(f / fs)) for name, f in
             (("cardiac", tr.heart_rate_hz.mean()), ("resp", tr.resp_rate_hz.mean()))}
    assert alias["cardiac"] == pytest.approx(0.1, abs=0.02) and alias["resp"] == pytest.approx(0.2, abs=0.02)
    w = run.physio_weight
    vent = np.unravel_index(np.argmax(np.where(phantom.brain_mask, w, 0)), w.shape)
    deep = np.unravel_index(np.argmin(np.where(phantom.brain_mask, w, 9)), w.shape)
    series = np.array([[run.volume(i)[vent], run.volume(i)[deep]] for i in range(spec.n_volumes)]).T
    freqs = np.fft.rfftfreq(spec.n_volumes, spec.tr_s)

    def band_power(x: np.ndarray, f0: float) -> float:
        p = np.abs(np.fft.rfft(x - x.mean())) ** 2
        return float(p[np.abs(freqs - f0) < 0.015].sum())

    def band_fraction(x: np.ndarray, f0: float) -> float:
        return band_power(x, f0) / float((np.abs(np.fft.rfft(x - x.mean())) ** 2)[1:].sum())

    power = np.abs(np.fft.rfft(series[0] - series[0].mean())) ** 2
    peaks = freqs[np.argsort(power)[::-1][:6]]
    for f0 in alias.values():
        assert np.min(np.abs(peaks - f0)) < 0.01, (peaks, alias)  # the largest peaks sit on the aliases
    near = band_fraction(series[0], alias["cardiac"]) + band_fraction(series[0], alias["resp"])
    assert near > 0.7  # physiology dominates near the ventricle (thermal 0.2 % vs 1 % + 1 %)
    # deep white matter: thermal noise only, a flat spectrum with nothing special at the aliases
    deep_power = band_power(series[1], alias["cardiac"]) + band_power(series[1], alias["resp"])
    vent_power = band_power(series[0], alias["cardiac"]) + band_power(series[0], alias["resp"])
    assert vent_power > 30 * deep_power
    # amplitudes: each waveform has unit RMS at the sampled times, the signal is B * w * (1 % c + 1 % r)
    # (not checked as one sum: at TR 2 s the cardiac 2nd harmonic aliases onto the breathing's 0.2 Hz)
    c, r = np.array([[v[vent[2]] for v in run.physio_values(i)] for i in range(spec.n_volumes)]).T
    assert np.sqrt(np.mean(c**2)) == pytest.approx(1.0, rel=0.1)
    assert np.sqrt(np.mean(r**2)) == pytest.approx(1.0, rel=0.15)
    phys = np.array([run.physio_signal(i)[vent] for i in range(spec.n_volumes)])
    np.testing.assert_allclose(phys, run.brain_mean * w[vent] * (c + r) / 100, rtol=1e-5)


def test_slow_physio_responses_follow_the_written_traces(phantom, tmp_path):
    # breathing depth x rate convolved with the RRF, heart rate with the CRF: recomputed from physio.tsv.gz
    from scanner_sim.physio import cardiac_response, respiration_response

    spec = _spec(tr_s=1.0, n_volumes=120, noise_pct=0.0, physio={"rvt_pct": 0.6, "hr_pct": 0.4,
                                                                 "resp_depth_var_pct": 40.0})
    g = generate_run(spec, tmp_path, phantom=phantom)
    table, meta = _read_physio(g.truth_dir)
    t_trace = np.arange(len(table)) / meta["SamplingFrequency"]
    onsets = np.arange(120) * 1.0
    k = np.arange(0.0, 40.0, 0.1)
    t = np.arange(0.0, t_trace[-1], 0.1)

    def response(x: np.ndarray, kern: np.ndarray) -> np.ndarray:
        x = np.interp(t, t_trace, x)
        y = np.convolve((x - x.mean()) / x.std(), kern)[: len(t)]
        y = np.interp(onsets, t, y)
        return (y - y.mean()) / y.std()

    rvt = response(table[:, 6] * table[:, 5], respiration_response(k))
    hr = response(table[:, 4], cardiac_response(k))
    np.testing.assert_allclose(g.nuisance["rvt_response"], rvt, atol=1e-3)
    np.testing.assert_allclose(g.nuisance["hr_response"], hr, atol=1e-3)
    # the grey-matter mean follows B * g * (0.6 % rvt + 0.4 % hr) (plus the weak cardiac/resp parts: off here)
    grey = nib.load(g.truth_dir / "grey_weight.nii.gz").get_fdata()
    gm = phantom.brain_mask & (phantom.gm > 0.7)
    mean_change = np.array([(g.run.volume(i)[gm] - phantom.data[gm]).mean() for i in range(120)])
    expected = g.run.brain_mean * grey[gm].mean() * (0.006 * rvt + 0.004 * hr)
    np.testing.assert_allclose(mean_change, expected, atol=1e-3 * g.run.brain_mean / 100)


def test_spontaneous_fluctuations_are_coherent_and_survive_roi_averaging(phantom):
    spec = _spec(n_volumes=100, noise_pct=1.0, spontaneous={"pct": 1.0, "fwhm_mm": 12.0})
    run = SyntheticRun(spec, phantom=phantom)
    vols = np.stack([run.volume(i) for i in range(100)], axis=-1).astype(np.float64)
    signal = np.stack([run.spontaneous_signal(i) for i in range(100)], axis=-1)
    gm = phantom.brain_mask & (phantom.gm > 0.9)
    b = run.brain_mean
    # RMS in grey matter as specified (g = 0.25 + 0.75 gm about 1 there)
    assert np.sqrt(np.mean(signal[gm] ** 2)) == pytest.approx(0.01 * b, rel=0.2)
    # slow: 0.01-0.1 Hz, nothing above 0.15 Hz
    p = np.abs(np.fft.rfft(signal[gm], axis=-1)) ** 2
    f = np.fft.rfftfreq(100, 1.0)
    assert p[:, f > 0.15].sum() < 0.02 * p.sum()
    # coherent over a region: an 8 mm sphere's mean keeps most of it, while thermal noise averages away
    ijk = np.round(np.linalg.inv(phantom.affine) @ [0, 30, 15, 1])[:3]
    xyz = np.indices(spec.shape).reshape(3, -1).T
    sphere = (np.linalg.norm((xyz - ijk) * 3.0, axis=1) <= 8.0).reshape(spec.shape) & phantom.brain_mask
    roi_spont = signal[sphere].mean(0).std()
    roi_thermal = (vols - phantom.data[..., None] - signal)[sphere].mean(0).std()
    assert roi_spont > 0.5 * np.sqrt(np.mean(signal[sphere] ** 2))
    assert roi_spont > 3 * roi_thermal  # 1 % each per voxel; after averaging the coherent part dominates
    # the truth's patterns and time courses rebuild it
    z = np.stack([run.nuisance()[f"spontaneous_{k + 1}"] for k in range(8)])
    rebuilt = b * 0.01 * run.grey_weight[..., None] * np.tensordot(run.spontaneous_patterns, z, axes=(0, 0)) / np.sqrt(8)
    np.testing.assert_allclose(rebuilt, signal, atol=1e-6 * b)


# --------------------------------------------------------------------------- motion-correlated signal
def test_motion_signal_follows_displacement_at_edges_not_in_centre(phantom, tmp_path):
    spec = _spec(n_volumes=40, noise_pct=0.3, motion={"kind": "random_walk", "max_trans_mm": 1.0, "max_rot_deg": 1.0},
                 motion_signal={"pct_per_mm": 2.0, "deriv_pct_per_mm": 1.0})
    g = generate_run(spec, tmp_path, phantom=phantom)
    run, nuis = g.run, g.nuisance
    # the true through-slice displacement, from the truth's motion columns (independent of nuisance.tsv)
    normal = run.affine[:3, 2] / np.linalg.norm(run.affine[:3, 2])
    motion = np.column_stack([g.truth[c] for c in ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")])
    edge = nib.load(g.truth_dir / "motion_signal_weight.nii.gz").get_fdata()
    xyz = np.stack(np.meshgrid(*[np.arange(n) for n in spec.shape], indexing="ij"), -1) @ run.affine[:3, :3].T \
        + run.affine[:3, 3]
    strong = (edge > 0.8) & phantom.brain_mask
    centre = (edge < 0.03) & phantom.brain_mask
    assert strong.sum() > 200 and centre.sum() > 200
    pick = {"strong": strong, "centre": centre}
    disp = {k: [] for k in pick}
    resid = {k: [] for k in pick}
    for i in range(spec.n_volumes):
        m = rigid_matrix(motion[i])
        d = (xyz @ (m[:3, :3] - np.eye(3)).T + m[:3, 3]) @ normal
        np.testing.assert_allclose(d, nuis["slice_disp_origin_mm"][i] + xyz @ [
            nuis[f"slice_disp_grad_{a}"][i] for a in "xyz"], atol=1e-6)
        # what is left after the moved clean image: motion signal + thermal noise
        r = run.volume(i) - apply_motion(run.clean_volume(i), run.affine, motion[i])
        for k, mask in pick.items():
            disp[k].append(d[mask])
            resid[k].append(r[mask] / (run.brain_mean * np.maximum(edge[mask], 1e-3)))
    for k in pick:
        disp[k], resid[k] = np.array(disp[k]), np.array(resid[k])
    d, r = disp["strong"], resid["strong"]
    model = 0.02 * d + 0.01 * np.diff(d, axis=0, prepend=d[:1])
    corr = np.corrcoef(model.ravel(), r.ravel())[0, 1]
    assert corr > 0.8
    slope = np.sum(model * r) / np.sum(model * model)
    assert slope == pytest.approx(1.0, abs=0.05)  # 2 %/mm and 1 %/mm as specified
    # in the centre the residual is thermal noise: no relation to the displacement
    raw_c = resid["centre"] * np.maximum(edge[centre], 1e-3)
    corr_c = np.corrcoef(disp["centre"].ravel(), raw_c.ravel())[0, 1]
    assert abs(corr_c) < 0.1


# --------------------------------------------------------------------------- a whole realistic run
def test_cli_noise_preset_writes_truth_files(tmp_path, capsys):
    spec_path = tmp_path / "run.toml"
    spec_path.write_text('tr_s = 1.0\nn_volumes = 6\nshape = [32, 32, 20]\nvoxel_mm = 6.0\nseed = 2\n')
    truth = tmp_path / "truth"
    rc = cli.main(["synth", str(spec_path), "--export-dir", str(tmp_path / "export"), "--truth-dir", str(truth),
                   "--speed", "100", "--chunk-delay-s", "0", "--noise-preset", "realistic"])
    assert rc == 0, capsys.readouterr()
    names = {p.name for p in truth.iterdir()}
    assert {"nuisance.tsv", "nuisance.json", "physio.tsv.gz", "physio.json", "physio_weight.nii.gz",
            "motion_signal_weight.nii.gz", "truth.tsv", "spec.json"} <= names
    spec = RunSpec.from_dict(json.loads((truth / "spec.json").read_text()))
    assert spec.noise_preset == "realistic" and spec.physio.enabled and len(list((tmp_path / "export").iterdir())) == 6


def test_new_modules_never_import_rtnf():
    import subprocess
    import sys

    code = ("import sys, scanner_sim.generate, scanner_sim.physio, scanner_sim.realnoise, scanner_sim.cli;"
            "bad = [m for m in sys.modules if m == 'rtnf' or m.startswith('rtnf.')]; print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


# --------------------------------------------------------------------------- real noise
@requires_shared_data("pyneal-series/siemens-prisma-e11-mosaic")
def test_real_noise_output_is_real_volume_plus_known_activation():
    spec = RunSpec.from_dict({"noise_from": str(PRISMA), "blocks": PRISMA_BLOCKS, "regions": [PRISMA_ROI]})
    assert (spec.tr_s, spec.n_volumes, spec.shape) == (1.0, 60, (64, 64, 18))
    assert spec.noise_pct == 0 and spec.motion is None and RunSpec.from_dict(spec.to_dict()) == spec
    run = SyntheticRun(spec)
    mask = run.region_masks["roi"]
    assert 50 < mask.sum() < 400
    mean = run.real.mean(axis=3)
    act = run.truth["activation_roi"]
    assert act.max() > 2.9
    for i in (0, 12, 20, 45):
        diff = run.volume(i).astype(np.float64) - run.real[..., i]
        np.testing.assert_allclose(diff[mask], mean[mask] * act[i] / 100, atol=2e-3)
        assert np.all(diff[~mask] == 0)
    # a scaled series (for Philips' 0-10 floating-point values): the same noise, times the factor
    scaled = SyntheticRun(dataclasses.replace(spec, noise_from_scale=2.0))
    np.testing.assert_array_equal(scaled.real, 2 * run.real)
    diff = scaled.volume(20).astype(np.float64) - scaled.real[..., 20]
    np.testing.assert_allclose(diff[mask], 2 * mean[mask] * act[20] / 100, atol=4e-3)
    # the synthetic keys stay off: the real series brings its noise
    with pytest.raises(SpecError, match="'noise_pct'.*noise_from"):
        RunSpec.from_dict({"noise_from": str(PRISMA), "noise_pct": 1.0})
    with pytest.raises(SpecError, match="'n_volumes'.*at most 58"):
        RunSpec.from_dict({"noise_from": str(PRISMA), "noise_from_skip": 2, "n_volumes": 59})
    with pytest.raises(SpecError, match="'tr_s': 2.0.*absent or 1 "):
        RunSpec.from_dict({"noise_from": str(PRISMA), "tr_s": 2.0})
    # a realistic synthetic spec switched to real noise keeps its protocol, drops its synthetic noise and grid
    switched = as_spec(EXAMPLES / "realistic_acc.toml", noise_from=str(PRISMA), n_volumes=30,
                       regions=[PRISMA_ROI | {"name": "acc"}])
    assert switched.real_noise and switched.physio is None and switched.motion is None
    assert switched.shape == (64, 64, 18) and switched.blocks == load_spec(EXAMPLES / "realistic_acc.toml").blocks


@requires_shared_data("pyneal-series/siemens-prisma-e11-mosaic")
@pytest.mark.parametrize("fmt", ["siemens-mosaic", "nifti"])
def test_real_noise_files_keep_the_real_geometry(tmp_path, fmt):
    from rtnf.scanner.dicom.reader import read_volume
    from rtnf.scanner.nifti import read_nifti

    g = generate_run({"noise_from": str(PRISMA), "noise_from_skip": 2, "n_volumes": 20, "format": fmt,
                      "blocks": PRISMA_BLOCKS, "regions": [PRISMA_ROI]}, tmp_path)
    originals = sorted(PRISMA.glob("*.dcm"))[2:22]
    assert len(g.files) == 20
    src = json.loads((g.truth_dir / "noise_source.json").read_text())
    # the real series' motion and drift are unknown: no made-up zeros in the truth
    assert "trans_x" not in g.truth and "drift_pct" not in g.truth and not g.nuisance
    assert src["shape"] == [64, 64, 18] and src["files"][0] == [originals[0].name] and src["skip"] == 2
    mask_img = nib.load(g.truth_dir / "region-roi_mask.nii.gz")
    np.testing.assert_allclose(mask_img.affine, src["affine"], atol=1e-6)
    act = g.truth["activation_roi"]
    mask = np.asarray(mask_img.dataobj).astype(bool)
    ref = nib.load(g.truth_dir / "reference.nii.gz").get_fdata()
    assert act[0] == 0 and act[19] > 2.5
    for i in (0, 19):
        orig = read_volume(originals[i])  # rtnf's reader, on the real file
        out = read_volume(g.files[i]) if fmt != "nifti" else read_nifti(g.files[i])
        # the written file may store its axes in another order (another slice orientation in the header),
        # but rtnf must place every voxel at the same world position: the index map is a signed permutation
        data = _on_grid(out.data, out.affine, orig.affine)
        diff = data.astype(np.float64) - orig.data
        truth_mask = _on_grid(mask, mask_img.affine, orig.affine)
        assert truth_mask.sum() == mask.sum()
        assert np.all(diff[~truth_mask] == 0)  # exactly the real data outside the region
        expected = _on_grid(ref, mask_img.affine, orig.affine) * act[i] / 100
        np.testing.assert_allclose(diff[truth_mask], expected[truth_mask], atol=0.5 + 1e-6)  # integer storage
        assert np.abs(diff[truth_mask]).max() > (2 if act[i] > 2 else -1)


def _on_grid(data: np.ndarray, affine: np.ndarray, target_affine: np.ndarray) -> np.ndarray:
    """``data`` re-indexed onto ``target_affine``'s grid, asserting it is the same set of voxel centres."""
    m = np.linalg.solve(target_affine, affine)  # data voxel -> target voxel
    lin = m[:3, :3]
    assert np.allclose(lin, np.round(lin), atol=1e-4) and np.allclose(np.abs(np.round(lin)).sum(0), 1), m
    assert np.allclose(m[:3, 3], np.round(m[:3, 3]), atol=1e-3), m
    ijk = np.indices(data.shape).reshape(3, -1)
    tgt = (np.round(lin) @ ijk + np.round(m[:3, 3])[:, None]).astype(int)
    shape = tuple(int(v) for v in np.abs(np.round(lin)) @ np.array(data.shape))
    out = np.zeros(shape, dtype=data.dtype)
    out[tuple(tgt)] = data.reshape(-1)
    return out


@requires_shared_data("pyneal-series/siemens-prisma-e11-mosaic")
def test_cli_noise_from_replaces_synthetic_noise(tmp_path, capsys):
    spec_path = tmp_path / "run.toml"
    spec_path.write_text(
        "tr_s = 1.0\nn_volumes = 5\nnoise_pct = 2.0\nnoise_preset = 'realistic'\nformat = 'siemens-mosaic'\n"
        "[[blocks]]\ncondition = 'up'\nonset_s = 1.0\nduration_s = 3.0\n"
        "[[regions]]\nname = 'roi'\ncenter_mm = [0, 30, -20]\nradius_mm = 10\ncondition = 'up'\n")
    truth = tmp_path / "truth"
    rc = cli.main(["synth", str(spec_path), "--export-dir", str(tmp_path / "export"), "--truth-dir", str(truth),
                   "--speed", "100", "--chunk-delay-s", "0", "--noise-from", str(PRISMA), "--noise-from-skip", "1"])
    assert rc == 0, capsys.readouterr()
    spec = RunSpec.from_dict(json.loads((truth / "spec.json").read_text()))
    assert spec.noise_from == str(PRISMA.resolve()) and spec.noise_pct == 0 and spec.shape == (64, 64, 18)
    assert sorted(p.name for p in (tmp_path / "export").iterdir())[0] == "001_000001_000001.dcm"
    assert json.loads((truth / "noise_source.json").read_text())["files"][0] == ["001_000013_000002.dcm"]


@requires_shared_data("pyneal-series/ge-mr750-slices")
def test_real_series_reader_stacks_slice_files_like_rtnf():
    # one DICOM per slice (GE): stacked along the slice normal, on the grid rtnf reads
    from rtnf.scanner.dicom.reader import read_volume

    from scanner_sim.realnoise import probe_series, read_series

    real = probe_series(SHARED_DATA / "pyneal-series" / "ge-mr750-slices")
    assert (real.kind, real.shape, real.n_volumes, real.tr_s) == ("dicom-slices", (64, 64, 18), 60, 1.0)
    data = read_series(real, 3, 1)[..., 0]
    ref = read_volume(list(real.volumes[3]))
    np.testing.assert_array_equal(_on_grid(data, real.affine, ref.affine), ref.data)
