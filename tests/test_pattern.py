"""Pattern expression (issue 20, point 4): the dot product of each volume with an MNI-space weight map.

Three levels:

* unit: the value of every volume equals a NumPy reference (running or baseline mean, censored
  volumes left out of the mean, centring, ``input = "signal"``) on a tiny grid, to 1e-9 relative;
  the map is brought to the grid through the registration the right way round (a linear field,
  which trilinear interpolation reproduces, under a rotation, translation and scaling), scaled by
  the voxel-volume ratio; a weight reaches only its neighbouring voxels; the coverage; thresholds,
  masks and every fit-time error;
* against the simulator's truth, through ``rtnf replay``: a map of two Gaussian blobs (positive over
  a region the ``regulate`` blocks activate, negative over one the ``other`` blocks activate) written
  in a rotated and shifted "MNI" space whose registration is known, its recorded ``signal_pattern``
  correlated with the expression the simulator's activations give (r > 0.9), while a voxel-shuffled
  map and the same map with the second blob's sign flipped, recorded in the same run, do not.
"""

from __future__ import annotations

import math
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from rtnf.analysis.signals.base import SignalContext, SignalError, VolumeInput
from rtnf.analysis.signals.pattern import PatternExpression, weights_on_grid
from rtnf.analysis.signals.registry import load_signal_class, make_signal

SHAPE = (6, 5, 4)
AFFINE = np.array([[2.0, 0, 0, -5.0], [0, 2.0, 0, -4.0], [0, 0, 2.0, -3.0], [0, 0, 0, 1]])


# ---------------------------------------------------------------- helpers


def _context(tmp_path, brain: np.ndarray | None = None, reference: np.ndarray | None = None,
             shape=SHAPE, affine=AFFINE) -> SignalContext:
    n = int(np.prod(shape))
    return SignalContext(grid_shape=shape, affine=affine,
                         reference=np.full(shape, 1000.0) if reference is None else reference, roi_indices={},
                         brain_indices=np.arange(n) if brain is None else brain, protocol=None, tr_s=2.0,
                         config_dir=tmp_path)


def _volume(i: int, image: np.ndarray, censored: bool = False) -> VolumeInput:
    flat = image.reshape(-1)
    return VolumeInput(index=i, condition="rest", raw={}, clean={}, psc={}, motion=np.zeros(6), censored=censored,
                       sample=lambda idx: flat[idx])


def _save(path, data, affine) -> str:
    nib.save(nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine), path)
    return path.name


def _signal(**settings) -> PatternExpression:
    return make_signal("pattern", {"class": "pattern", **settings})


def _save_registration(path, matrix: np.ndarray) -> str:
    from rtnf.apps.roidef.mni import MniRegistration

    MniRegistration(matrix).save(path)
    return path.name


def _rigid(angle_deg: float, axis: int, shift, scale: float = 1.0) -> np.ndarray:
    a = math.radians(angle_deg)
    c, s = math.cos(a), math.sin(a)
    i, j = [k for k in range(3) if k != axis]
    m = np.eye(4)
    m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
    m[:3, :3] *= scale
    m[:3, 3] = shift
    return m


# ---------------------------------------------------------------- (a) unit: exact against NumPy


def test_built_in_name_and_config_keys():
    assert load_signal_class("pattern") is PatternExpression
    with pytest.raises(SignalError, match=r"signals.p.nope"):
        make_signal("p", {"class": "pattern", "weights": "w.nii.gz", "registration": "identity", "nope": 1})
    with pytest.raises(SignalError, match=r"signals.p.input"):
        make_signal("p", {"class": "pattern", "weights": "w.nii.gz", "registration": "identity", "input": "beta"})
    with pytest.raises(SignalError, match=r"signals.p.registration"):
        make_signal("p", {"class": "pattern", "weights": "w.nii.gz"})


@pytest.mark.parametrize("center", [True, False])
@pytest.mark.parametrize("baseline_volumes", [None, 4])
def test_expression_equals_numpy_at_every_volume(tmp_path, center, baseline_volumes):
    rng = np.random.default_rng(3)
    n_vox = int(np.prod(SHAPE))
    w = rng.normal(0, 1, SHAPE)
    w[0, 0, :] = 0.0  # voxels without weight are not used
    brain = np.setdiff1d(np.arange(n_vox), [5, 17, 40])  # nor voxels outside the brain
    reference = 1000.0 + 200.0 * rng.random(SHAPE)
    sig = _signal(weights=_save(tmp_path / "w.nii.gz", w, AFFINE), registration="identity", center=center,
                  baseline_volumes=baseline_volumes, min_volumes=3)
    sig.fit(_context(tmp_path, brain, reference))
    used = np.intersect1d(brain, np.flatnonzero(w.reshape(-1) != 0))
    np.testing.assert_array_equal(np.sort(sig.indices), used)
    weights = w.reshape(-1)[used].astype(np.float32).astype(np.float64)  # the NIfTI holds float32
    if center:
        weights = weights - weights.mean()
    images = reference[None] * (1.0 + 0.02 * rng.standard_normal((40, *SHAPE)))
    images[17] *= 0.05  # a dropout volume: the floor (10 % of the reference) keeps the mean away from 0
    censored = rng.random(40) < 0.2
    censored[:2] = False
    kept: list[np.ndarray] = []
    for i, image in enumerate(images):
        got = sig.step(_volume(i, image, bool(censored[i])))
        x = image.reshape(-1)[used]
        if not censored[i] and (baseline_volumes is None or len(kept) < baseline_volumes):
            kept.append(x)
        need = 3 if baseline_volumes is None else max(3, baseline_volumes)
        if len(kept) < need:
            assert got is None and "warming up" in sig.reason
            continue
        mean = np.maximum(np.mean(kept, axis=0), 0.1 * reference.reshape(-1)[used])
        expected = float(np.sum(weights * 100.0 * (x / mean - 1.0)))
        assert got == pytest.approx(expected, rel=1e-9, abs=1e-9), i


def test_dark_voxels_are_left_out_of_a_percent_expression(tmp_path):
    """A weighted voxel whose reference is 0 (outside the head) would divide noise by almost nothing: left out
    with ``input = "percent"`` (as the decoder leaves out voxels below 5 % of the median), kept for "signal"."""
    w = np.ones(SHAPE)
    reference = np.full(SHAPE, 1000.0)
    reference[0, 0, 0] = 0.0
    reference[1, 0, 0] = 40.0  # 4 % of the median
    path = _save(tmp_path / "w.nii.gz", w, AFFINE)
    sig = _signal(weights=path, registration="identity", min_volumes=1, center=False)
    sig.fit(_context(tmp_path, reference=reference))
    assert 0 not in sig.indices and np.ravel_multi_index((1, 0, 0), SHAPE) not in sig.indices
    assert sig.indices.size == int(np.prod(SHAPE)) - 2
    image = reference + 5.0
    assert math.isfinite(sig.step(_volume(0, image)))
    plain = _signal(weights=path, registration="identity", input="signal", center=False)  # uniform: no centring
    plain.fit(_context(tmp_path, reference=reference))
    assert plain.indices.size == int(np.prod(SHAPE))


def test_signal_input_is_the_plain_dot_product_and_centring_ignores_a_global_change(tmp_path):
    rng = np.random.default_rng(4)
    w = rng.normal(0, 1, SHAPE)
    path = _save(tmp_path / "w.nii.gz", w, AFFINE)
    plain = _signal(weights=path, registration="identity", input="signal", center=False)
    plain.fit(_context(tmp_path))
    image = 900.0 + 50.0 * rng.random(SHAPE)
    assert plain.step(_volume(0, image)) == pytest.approx(float(np.sum(w.astype(np.float32) * image)), rel=1e-9)
    centred = _signal(weights=path, registration="identity", center=True, min_volumes=1)
    centred.fit(_context(tmp_path, reference=image))
    centred.step(_volume(0, image))
    assert centred.step(_volume(1, image * 1.03)) == pytest.approx(0.0, abs=1e-9)  # a 3 % global change: 0
    assert abs(centred.weights.sum()) < 1e-9


def test_the_registration_maps_the_run_into_mni_and_weights_scale_with_voxel_volume(tmp_path):
    """A linear field f(q) = a.q + b in 'MNI' mm (trilinear interpolation reproduces it): grid voxel p gets
    f(M p) times the ratio of voxel volumes, under a rotated, shifted and scaled registration M."""
    a, b = np.array([0.3, -0.2, 0.5]), 7.0
    map_affine = np.diag([1.0, 1.0, 1.0, 1.0])
    map_affine[:3, 3] = -40.0
    ijk = np.indices((80, 80, 80)).reshape(3, -1).T
    q = ijk @ map_affine[:3, :3].T + map_affine[:3, 3]
    field = (q @ a + b).reshape(80, 80, 80)
    m = _rigid(20.0, 2, [3.0, -2.0, 4.0], scale=1.1)  # run mm -> MNI mm
    grid = weights_on_grid(field, map_affine, m, SHAPE, AFFINE)
    p = np.indices(SHAPE).reshape(3, -1).T @ AFFINE[:3, :3].T + AFFINE[:3, 3]
    mni = p @ m[:3, :3].T + m[:3, 3]
    ratio = 8.0 / (1.0 / 1.1**3)  # a 2 mm run voxel over a 1 mm map voxel seen in the run's mm
    np.testing.assert_allclose(grid.reshape(-1), (mni @ a + b) * ratio, rtol=1e-4)
    # the wrong way round (MNI -> run) would put the field elsewhere: the test can fail
    wrong = weights_on_grid(field, map_affine, np.linalg.inv(m), SHAPE, AFFINE)
    assert not np.allclose(wrong, grid, rtol=1e-2)


def test_a_weight_reaches_only_its_neighbouring_voxels():
    """One non-zero weight: on a grid voxel's centre it lands there alone (times the voxel-volume ratio);
    half a voxel off in every axis it spreads trilinearly over the 8 voxels around it, never further
    (a cubic spline's ringing would reach every voxel of the grid)."""
    fine = np.eye(4)
    fine[:3, 3] = -20.0  # a 1 mm map
    field = np.zeros((40, 40, 40))
    i, j, k = (np.array([1.0, 2.0, 3.0]) - fine[:3, 3]).astype(int)  # grid voxel (3, 3, 3) is at (1, 2, 3) mm
    field[i, j, k] = 1.0
    grid = weights_on_grid(field, fine, np.eye(4), SHAPE, AFFINE)
    np.testing.assert_array_equal(np.argwhere(grid != 0), [[3, 3, 3]])
    assert grid[3, 3, 3] == pytest.approx(8.0)  # a weight per 1 mm^3 voxel, on a 2 mm (8 mm^3) voxel
    same = AFFINE.copy()
    same[:3, 3] += 1.0  # a 2 mm map, half a voxel off the grid in every axis
    field = np.zeros(SHAPE)
    field[2, 2, 1] = 1.0
    grid = weights_on_grid(field, same, np.eye(4), SHAPE, AFFINE)
    np.testing.assert_array_equal(np.argwhere(grid != 0), np.argwhere(np.ones((2, 2, 2))) + [2, 2, 1])
    np.testing.assert_allclose(grid[2:4, 2:4, 1:3], 1 / 8)


def test_coverage_is_the_fraction_of_the_maps_weight_on_the_brain(tmp_path, caplog):
    w = np.zeros((12, 5, 4))
    w[:6] = 1.0  # on the grid (identity registration, same voxels)
    w[6:] = 1.0  # beyond the grid's 6 columns in x
    sig = _signal(weights=_save(tmp_path / "w.nii.gz", w, AFFINE), registration="identity", center=False)
    with caplog.at_level("WARNING", logger="rtnf.analysis.signals.pattern"):
        sig.fit(_context(tmp_path))
        assert sig.coverage == pytest.approx(6 / 12)
        brain = np.flatnonzero(np.indices(SHAPE)[0].reshape(-1) < 2)  # a brain of 2 of the 6 columns
        sig.fit(_context(tmp_path, brain=brain))
    assert sig.coverage == pytest.approx(2 / 12)
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warned == ["signal pattern: only 17 % of the weight map's absolute weight lies on the run's brain "
                      "voxels (field of view, brain mask or registration): its expression leaves out the rest"]


def test_registration_file_threshold_and_mask(tmp_path):
    rng = np.random.default_rng(5)
    w = rng.normal(0, 1, SHAPE)
    m = np.eye(4)
    m[:3, 3] = [2.0, 0.0, 0.0]  # MNI = run + 2 mm in x: one voxel of the grid
    # the map in MNI space: the weight of run voxel (i, j, k) sits at MNI voxel (i + 1, j, k)
    shifted = np.zeros(SHAPE)
    shifted[1:] = w[:-1]
    reg = _save_registration(tmp_path / "reg.json", m)
    sig = _signal(weights=_save(tmp_path / "w.nii.gz", shifted, AFFINE), registration=reg, center=False,
                  input="signal")
    sig.fit(_context(tmp_path))
    expected = np.zeros(SHAPE)
    expected[:-1] = w[:-1]  # the last x slab maps outside the map
    idx = np.flatnonzero(expected.reshape(-1))
    np.testing.assert_array_equal(np.sort(sig.indices), idx)
    order = np.argsort(sig.indices)
    np.testing.assert_allclose(sig.weights[order], expected.reshape(-1)[idx], rtol=1e-5)
    # threshold and an MNI-space mask drop weights before the resampling
    keep = np.zeros(SHAPE, dtype=bool)
    keep[:, :3] = True
    mask = _save(tmp_path / "mask.nii.gz", keep.astype(np.float32), AFFINE)
    sig = _signal(weights="w.nii.gz", registration="identity", center=False, threshold=0.5, mask=mask)
    sig.fit(_context(tmp_path))
    want = np.flatnonzero((np.abs(shifted) > 0.5) & keep)
    np.testing.assert_array_equal(np.sort(sig.indices), want)


@pytest.mark.parametrize("case, message", [
    ("missing", r"'weights': file not found"),
    ("4d", r"'weights': .* has shape \(6, 5, 4, 3\)\. Allowed: a 3-D map"),
    ("not_nifti", r"'weights': cannot read .* as NIfTI"),
    ("zeros", r"'weights': no non-zero weight after 'threshold'"),
    ("outside", r"no weight lands on the run's brain voxels"),
    ("registration_missing", r"'registration': file not found"),
    ("registration_bad", r"'registration': .* is not a registration written by 'rtnf roi mni'"),
    ("mask_missing", r"'mask': file not found"),
])
def test_fit_errors_are_one_clear_message(tmp_path, case, message):
    w = np.ones(SHAPE)
    settings = {"weights": _save(tmp_path / "w.nii.gz", w, AFFINE), "registration": "identity"}
    if case == "missing":
        settings["weights"] = "nope.nii.gz"
    elif case == "4d":
        settings["weights"] = _save(tmp_path / "w4.nii.gz", np.ones((*SHAPE, 3)), AFFINE)
    elif case == "not_nifti":
        (tmp_path / "w.txt").write_text("weights")
        settings["weights"] = "w.txt"
    elif case == "zeros":
        settings["threshold"] = 2.0
    elif case == "outside":
        far = AFFINE.copy()
        far[:3, 3] += 500.0
        settings["weights"] = _save(tmp_path / "far.nii.gz", w, far)
    elif case == "registration_missing":
        settings["registration"] = "nope.json"
    elif case == "registration_bad":
        (tmp_path / "reg.json").write_text('{"ref_to_mni": [1, 2]}')
        settings["registration"] = "reg.json"
    elif case == "mask_missing":
        settings["mask"] = "nope.nii.gz"
    sig = _signal(**settings)
    with pytest.raises(SignalError, match=message):
        sig.fit(_context(tmp_path))


# ---------------------------------------------------------------- (b) against the simulator, through rtnf replay

BLOBS = {"acc": ((0.0, 30.0, 15.0), 1.0), "ins": ((37.0, 1.0, -1.0), -1.0)}
"""The map's blobs: centre (run mm = the simulator's MNI mm) and sign."""
SIGMA_MM, RADIUS_MM = 6.0, 14.0


def _blobs(points: np.ndarray, flip_second: bool = False) -> np.ndarray:
    """The map's weight at ``points`` (run mm): Gaussians of SIGMA_MM cut at RADIUS_MM."""
    out = np.zeros(len(points))
    for k, (centre, sign) in enumerate(BLOBS.values()):
        d2 = np.sum((points - np.asarray(centre)) ** 2, axis=1)
        s = -sign if flip_second and k == 1 else sign
        out += np.where(d2 <= RADIUS_MM**2, s * np.exp(-d2 / (2 * SIGMA_MM**2)), 0.0)
    return out


def _write_map(path, ref_to_mni: np.ndarray, values_at) -> None:
    """A 2 mm map in 'MNI' space: voxel q holds values_at(run point M^-1 q)."""
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    aff[:3, 3] = [-90.0, -126.0, -72.0]
    shape = (91, 109, 91)
    q = np.indices(shape).reshape(3, -1).T @ aff[:3, :3].T + aff[:3, 3]
    inv = np.linalg.inv(ref_to_mni)
    p = q @ inv[:3, :3].T + inv[:3, 3]
    nib.save(nib.Nifti1Image(values_at(p).reshape(shape).astype(np.float32), aff), path)


def test_recorded_expression_follows_the_simulators_truth(tmp_path):
    from rtnf.apps.demo import read_tsv, sim_spec
    from rtnf.config import load_config
    from scanner_sim.generate import generate_run
    from scanner_sim.phantom import voxel_world_coords
    from tests.helpers import make_config, pattern, replay_func_dir

    m = _rigid(12.0, 2, [6.0, -9.0, 5.0])  # the run's mm -> "MNI" mm: a known registration, far from identity
    reg = _save_registration(tmp_path / "ref_to_mni.json", m)
    _write_map(tmp_path / "map.nii.gz", m, _blobs)
    _write_map(tmp_path / "flipped.nii.gz", m, lambda p: _blobs(p, flip_second=True))
    rng = np.random.default_rng(0)
    _write_map(tmp_path / "shuffled.nii.gz", m, lambda p: rng.permutation(_blobs(p)))
    table = {"class": "pattern", "registration": reg, "min_volumes": 5}
    n = 140
    cfg_path = make_config(tmp_path, {
        "scanner.export_dir": "unused", "scanner.format": "nifti", "scanner.tr_s": 2.0, "scanner.n_volumes": n,
        "scanner.dummy_volumes": 0, "protocol.units": "volumes",
        "protocol.pattern": pattern(rest=10, regulate=10, repeat=7), "output.save_volumes": False,
        "signals": {"pattern": {**table, "weights": "map.nii.gz"}, "flipped": {**table, "weights": "flipped.nii.gz"},
                    "shuffled": {**table, "weights": "shuffled.nii.gz"}},
        "feedback.source": "pattern", "output.dir": "out"})
    cfg = load_config(cfg_path)
    spec = sim_spec(cfg, amplitude_pct=2.0, seed=5)
    spec["regions"] = [{"name": "acc", "center_mm": [0.0, 30.0, 15.0], "radius_mm": 10.0, "amplitude_pct": 2.0,
                        "condition": "regulate"},
                       {"name": "ins", "center_mm": [37.0, 1.0, -1.0], "radius_mm": 10.0, "amplitude_pct": 2.0,
                        "condition": "other"}]
    # "other" blocks: 10 s into each rest block, so the two regions' time courses differ
    spec["blocks"] = spec["blocks"] + [{"condition": "other", "onset_s": 40.0 * k + 4.0, "duration_s": 10.0}
                                       for k in range(7)]
    spec["motion"] = {"max_trans_mm": 1.0, "max_rot_deg": 1.0}
    g = generate_run(spec, tmp_path / "run")
    proc = subprocess.run([sys.executable, "-m", "rtnf", "replay", str(cfg_path), str(g.export_dir)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    rows = read_tsv(next(replay_func_dir(cfg).glob("*_desc-rtnf_timeseries.tsv")))
    assert len(rows) == n

    def column(name):
        return np.array([math.nan if r[name] == "n/a" else float(r[name]) for r in rows])

    # the truth: the simulator's activations (percent) weighted by the map at each voxel of its regions
    from scanner_sim.spec import RunSpec
    from scanner_sim.synth import SyntheticRun

    sim = SyntheticRun(RunSpec.from_dict(spec))
    points = voxel_world_coords(sim.spec.shape, sim.affine).reshape(-1, 3)

    def truth(weights):
        w = weights - weights[weights != 0].mean()
        return sum(w[sim.region_masks[r].reshape(-1)].sum() * np.asarray(g.truth[f"activation_{r}"]) for r in BLOBS)

    expected = truth(_blobs(points))
    got = {name: column(f"signal_{name}") for name in ("pattern", "flipped", "shuffled")}
    ok = np.isfinite(got["pattern"])
    assert ok.sum() >= n - 5 and all(rows[i]["signal_pattern_reason"] != "n/a" for i in range(4))
    r = {name: float(np.corrcoef(v[ok], expected[ok])[0, 1]) for name, v in got.items()}
    print("r(recorded expression, simulator's truth): " + ", ".join(f"{k} {v:.3f}" for k, v in r.items()))
    assert r["pattern"] > 0.9
    assert r["flipped"] < 0.5 and abs(r["shuffled"]) < 0.5
    assert np.allclose(column("feedback_signal")[ok], got["pattern"][ok])  # fed back: feedback.source


# ---------------------------------------------------------------- hostile maps


def test_a_uniform_map_with_centring_is_refused_not_a_constant_zero(tmp_path):
    """A binary map (an ROI mask given as a 'pattern') has one weight on all its voxels: centring made every
    weight 0, and the expression was 0 at every volume without a word. Now fit says why; center = false works."""
    blob = np.zeros(SHAPE)
    blob[1:4, 1:4, 1:3] = 1.0
    name = _save(tmp_path / "mask_as_map.nii.gz", blob, AFFINE)
    with pytest.raises(SignalError, match=r"'weights': .*equal.*center = false"):
        _signal(weights=name, registration="identity").fit(_context(tmp_path))
    sig = _signal(weights=name, registration="identity", center=False, input="signal")
    sig.fit(_context(tmp_path))
    image = np.arange(np.prod(SHAPE), dtype=float).reshape(SHAPE) + 1000.0
    assert sig.step(_volume(0, image)) == pytest.approx(image[blob > 0].sum())


def test_weights_beyond_float32_are_one_clear_message(tmp_path):
    """Weights beyond float32's range became infinite in the resampling, then 0: the message blamed the
    registration ("no weight lands on the run's brain voxels")."""
    path = tmp_path / "huge.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).standard_normal(SHAPE) * 1e300, AFFINE), path)
    with pytest.raises(SignalError, match=r"'weights': .*beyond"):
        _signal(weights=path.name, registration="identity").fit(_context(tmp_path))
