"""Decoded neurofeedback (issue 20, point 3): ``rtnf decoder train`` offline, ``DecodedFeedback`` per volume.

* Synthetic runs whose truth is known (two voxel patterns + the simulator's noise and drift): the
  decoder is trained by the command, saved without pickle, and recovers the patterns online.
* Refusals: another grid, a run realigned to its own first volume, motion correction off, an unknown
  class, a damaged folder; the command's one-line errors (exit 2).
* Cost of ``step()`` at 64x64x36 with a 2,000-voxel mask (target: at most 2 ms).
* Real data (../shared/data/pydecnef-sub1, skipped without it): trained on run 1 (dogs vs scissors,
  the study's bilateral occipital mask registered to run 1), applied to run 2 volume by volume as the
  pipeline does (realigned to run 1's reference), judged per trial against a binomial test.

Volumes are applied "as the pipeline would" by :func:`_apply`: rtnf's own
:class:`~rtnf.analysis.preprocess.Preprocessor` (``motion.reference`` = the decoder's reference),
the :class:`SignalContext` and :class:`VolumeInput` the pipeline builds (see ``rtnf/run/pipeline.py``).
"""

from __future__ import annotations

import csv
import pickle
import time
from pathlib import Path

import numpy as np
import pytest

from rtnf.analysis.decoder import FILES, DecoderError, DecoderModel, label_volumes, read_events
from rtnf.analysis.signals.base import SignalContext, SignalError, VolumeInput
from rtnf.analysis.signals.decoder import DecodedFeedback
from rtnf.apps.decoder import main as decoder_main
from rtnf.scanner.volume import Volume
from tests.helpers import SHARED_DATA, requires_shared_data

TR_S = 2.0
LAG_S = 6.0


# --------------------------------------------------------------------------- helpers


def _write_events(path: Path, trials: list[tuple[float, float, str]]) -> Path:
    with open(path, "w", newline="") as f:
        f.write("onset\tduration\ttrial_type\n")
        for onset, duration, kind in trials:
            f.write(f"{onset:.3f}\t{duration:.3f}\t{kind}\n")
    return path


def _signal(model_dir: Path, target: str, **settings) -> DecodedFeedback:
    return DecodedFeedback("dec", DecodedFeedback.Config(model_dir=model_dir, target_class=target, **settings))


def _apply(model_dir: Path, volumes, target: str, reference: str | Path | None = "model", **settings):
    """The decoder's value for each volume, through the pipeline's own preprocessing.

    ``reference``: "model" realigns to the decoder's reference (motion.reference), None to the run's
    first volume (motion.reference = "first"). Returns (values, seconds per step).
    """
    from rtnf.analysis.preprocess import Preprocessor
    from rtnf.config import MotionConfig, QualityConfig

    motion = MotionConfig() if reference is None else MotionConfig(
        reference=model_dir / "reference.nii.gz" if reference == "model" else Path(reference))
    pre = Preprocessor([], motion, QualityConfig())
    signal = _signal(model_dir, target, **settings)
    values, costs = [], []
    for i, vol in enumerate(volumes):
        if i == 0:
            pre.fit(vol)
            signal.fit(SignalContext(grid_shape=vol.grid.shape, affine=vol.affine, reference=vol.data, roi_indices={},
                                     brain_indices=pre.brain_indices, protocol=None, tr_s=TR_S, config_dir=None))
        out = pre.run(vol)
        volume = VolumeInput(index=i, condition="task", raw={}, clean={}, psc={}, motion=out.motion,
                             censored=bool(out.quality is not None and out.quality.censored),
                             sample=lambda idx, d=out.data, p=out.motion: pre.sample(d, p, idx))
        t0 = time.perf_counter()
        value = signal.step(volume)
        costs.append(time.perf_counter() - t0)
        values.append(np.nan if value is None else value)
    return np.array(values), np.array(costs)


def _volumes(data: np.ndarray, affine: np.ndarray, path: Path):
    for i in range(data.shape[-1]):
        yield Volume(np.ascontiguousarray(data[..., i], dtype=np.float32), affine, None, path)


def _per_trial(values: np.ndarray, events: Path, target: str, classes: tuple[str, str]) -> list[tuple[str, float]]:
    """(class, mean target probability over the trial's lagged volumes) of each trial of the two classes."""
    trials = [t for t in read_events(events) if t.trial_type in classes]
    _, groups = label_volumes(trials, values.size, TR_S, LAG_S)
    return [(t.trial_type, float(np.nanmean(values[groups == k]))) for k, t in enumerate(trials) if np.any(groups == k)]


def _correct(per_trial: list[tuple[str, float]], target: str) -> int:
    return sum((p > 0.5) == (kind == target) for kind, p in per_trial)


def _train(capsys, *args) -> tuple[int, str, str]:
    rc = decoder_main(["train", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


# --------------------------------------------------------------------------- synthetic truth


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """Two runs of one simulated session (the simulator's head, noise and drift) with known patterns.

    Each run: 12 trials of 8 s (4 "a", 4 "b", 4 "c", shuffled), 15 s apart; during a trial's lagged
    window (onset + 6 s to onset + 14 s) the 257 voxels of a sphere are scaled by 1 + pattern / 100, with
    the patterns independent N(0, 0.5 %) per voxel (the noise is 1 % per voxel and volume).
    """
    import nibabel as nib

    from scanner_sim.spec import RunSpec
    from scanner_sim.synth import SyntheticRun

    root = tmp_path_factory.mktemp("decoder_synthetic")
    n = 100
    spec = RunSpec.from_dict({"tr_s": TR_S, "n_volumes": 2 * n, "seed": 3, "noise_pct": 1.0, "drift_pct": 1.0,
                              "shape": [40, 40, 24], "blocks": [], "regions": []})
    sim = SyntheticRun(spec)
    data = np.stack([sim.volume(i) for i in range(2 * n)], axis=-1).astype(np.float32)
    affine = sim.affine
    ijk = np.indices(data.shape[:3]).reshape(3, -1).T
    mask = (np.sum((ijk - np.array([20, 20, 12])) ** 2, axis=1) <= 16).reshape(data.shape[:3])
    rng = np.random.default_rng(7)
    patterns = {kind: rng.normal(0, 0.5, mask.sum()) for kind in "abc"}
    runs = {}
    for r in (1, 2):
        run = data[..., (r - 1) * n: r * n].copy()
        kinds = rng.permutation(["a", "b", "c"] * 4)
        trials = [(6.0 + 15.0 * k, 8.0, str(kind)) for k, kind in enumerate(kinds)]
        labels, _ = label_volumes(read_events(_write_events(root / f"events_{r}.tsv", trials)), n, TR_S, LAG_S)
        for i, kind in enumerate(labels):
            if kind is not None:
                run[..., i][mask] *= 1.0 + patterns[kind] / 100.0
        nib.save(nib.Nifti1Image(run, affine), root / f"run_{r}.nii.gz")
        runs[r] = run
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), root / "mask.nii.gz")
    return root, runs, affine, mask, patterns


def test_known_patterns_are_trained_saved_without_pickle_and_decoded_online(synthetic, capsys, monkeypatch):
    root, runs, affine, mask, patterns = synthetic
    out = root / "model"
    rc, stdout, err = _train(capsys, "--series", root / "run_1.nii.gz", "--events", root / "events_1.tsv",
                             "--mask", root / "mask.nii.gz", "--tr-s", TR_S, "--classes", "a", "b", "-o", out)
    assert rc == 0, err
    assert 'class = "decoder"' in stdout and "reference.nii.gz" in stdout
    # The folder: arrays, JSON and NIfTI only.
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(FILES)
    assert not [p for p in out.rglob("*") if p.suffix in (".pkl", ".pickle", ".joblib", ".sav")]
    with np.load(out / "model.npz", allow_pickle=False) as z:  # raises on any object array
        assert z["coef"].dtype == np.float64 and z["mask_indices"].size == mask.sum()
    report = __import__("json").loads((out / "report.json").read_text())
    assert report["n_trials"] == {"a": 4, "b": 4} and report["n_voxels"] == int(mask.sum())
    assert report["cross_validation"]["scheme"] == "leave one trial out"
    assert report["cross_validation"]["accuracy_trials"] == 1.0
    assert report["cross_validation"]["accuracy_volumes"] >= 0.95
    # The weights (per percent change) follow the truth, b minus a, voxel for voxel.
    model = DecoderModel.load(out)
    truth = patterns["b"] - patterns["a"]  # both in C order of the mask's voxels, as the model's indices
    assert model.classes == ("a", "b")
    assert np.corrcoef(model.coef[0] / model.scaler_scale, truth)[0, 1] > 0.6  # 0.75 when written; chance 0 +- 0.06

    # Online, on the second run, with pickle made unusable: nothing is unpickled.
    def refuse(*args, **kwargs):
        raise AssertionError("a decoder was unpickled")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    values, _ = _apply(out, _volumes(runs[2], affine, root / "run_2.nii.gz"), "a")
    monkeypatch.undo()
    assert np.all(np.isnan(values[:4])) and np.all(np.isfinite(values[4:]))  # min_volumes = 5
    assert np.all((values[4:] >= 0) & (values[4:] <= 1))
    per_trial = _per_trial(values, root / "events_2.tsv", "a", ("a", "b"))
    assert len(per_trial) == 8 and _correct(per_trial, "a") == 8, per_trial
    # Well separated: the mean probability of "a" is above 0.8 in its trials, below 0.2 in the others.
    assert all((p > 0.8) if kind == "a" else (p < 0.2) for kind, p in per_trial), per_trial


def test_a_baseline_mean_and_the_target_class_change_the_value_as_documented(synthetic, capsys):
    root, runs, affine, mask, _ = synthetic
    out = root / "model_b"
    assert _train(capsys, "--series", root / "run_1.nii.gz", "--events", root / "events_1.tsv",
                  "--mask", root / "mask.nii.gz", "--tr-s", TR_S, "--C", "0.01", "--classes", "a", "b", "-o", out)[0] == 0
    a, _ = _apply(out, _volumes(runs[2], affine, root / "run_2.nii.gz"), "a")
    b, _ = _apply(out, _volumes(runs[2], affine, root / "run_2.nii.gz"), "b")
    np.testing.assert_allclose(a[4:] + b[4:], 1.0, atol=1e-12)  # two classes: P(a) + P(b) = 1
    base, _ = _apply(out, _volumes(runs[2], affine, root / "run_2.nii.gz"), "a", baseline_volumes=3, min_volumes=1)
    assert np.all(np.isnan(base[:2])) and np.all(np.isfinite(base[2:]))  # the baseline needs its 3 volumes
    assert _correct(_per_trial(base, root / "events_2.tsv", "a", ("a", "b")), "a") == 8
    assert __import__("json").loads((out / "report.json").read_text())["cross_validation"]["C_selection"] == "given"


def test_three_classes_give_softmax_probabilities_that_name_each_trial(synthetic, capsys):
    root, runs, affine, mask, _ = synthetic
    out = root / "model_3"
    rc, stdout, err = _train(capsys, "--series", root / "run_1.nii.gz", "--events", root / "events_1.tsv",
                             "--mask", root / "mask.nii.gz", "--tr-s", TR_S, "-o", out)
    assert rc == 0, err
    report = __import__("json").loads((out / "report.json").read_text())
    assert report["classes"] == ["a", "b", "c"] and report["cross_validation"]["chance"] == pytest.approx(1 / 3, abs=1e-3)
    assert report["cross_validation"]["accuracy_trials"] == 1.0
    probs = {kind: _apply(out, _volumes(runs[2], affine, root / "run_2.nii.gz"), kind)[0] for kind in "abc"}
    stacked = np.column_stack([probs[kind] for kind in "abc"])[4:]
    np.testing.assert_allclose(stacked.sum(axis=1), 1.0, atol=1e-12)
    trials = read_events(root / "events_2.tsv")
    _, groups = label_volumes(trials, runs[2].shape[-1], TR_S, LAG_S)
    named = ["abc"[int(np.argmax(np.nanmean(np.column_stack([probs[k] for k in "abc"])[groups == i], axis=0)))]
             for i in range(len(trials))]
    assert named == [t.trial_type for t in trials]


def test_the_decoder_refuses_what_it_cannot_decode(synthetic, capsys, tmp_path):
    import nibabel as nib

    root, runs, affine, mask, _ = synthetic
    out = root / "model_r"
    assert _train(capsys, "--series", root / "run_1.nii.gz", "--events", root / "events_1.tsv",
                  "--mask", root / "mask.nii.gz", "--tr-s", TR_S, "--classes", "a", "b", "-o", out)[0] == 0
    run2 = list(_volumes(runs[2], affine, root / "run_2.nii.gz"))[:8]

    # A run on another grid: refused at fit, naming motion.reference.
    shifted = affine.copy()
    shifted[:3, 3] += 1.5
    with pytest.raises(SignalError, match=r"not the decoder's training grid.*motion\.reference"):
        _signal(out, "a").fit(SignalContext((40, 40, 24), shifted, run2[0].data, {}, np.arange(10), None, TR_S))
    with pytest.raises(SignalError, match=r"shape \(40, 40, 20\)"):
        _signal(out, "a").fit(SignalContext((40, 40, 20), affine, run2[0].data, {}, np.arange(10), None, TR_S))
    # An unknown class.
    with pytest.raises(SignalError, match="target_class.*Allowed: one of the decoder's classes a, b"):
        _signal(out, "dogs").fit(SignalContext((40, 40, 24), affine, run2[0].data, {}, np.arange(10), None, TR_S))
    # model_dir relative to the config's folder; a folder that is not a decoder.
    rel = _signal(Path("model_r"), "a")
    rel.fit(SignalContext((40, 40, 24), affine, run2[0].data, {}, np.arange(10), None, TR_S, config_dir=root))
    with pytest.raises(SignalError, match="model_dir.*model.npz is missing"):
        _signal(tmp_path, "a").fit(SignalContext((40, 40, 24), affine, run2[0].data, {}, np.arange(10), None, TR_S))
    (tmp_path / "bad").mkdir()
    for name in FILES:
        (tmp_path / "bad" / name).write_bytes((out / name).read_bytes())
    (tmp_path / "bad" / "model.json").write_text('{"format": "rtnf-decoder", "format_version": 99}')
    with pytest.raises(DecoderError, match="format version 99"):
        DecoderModel.load(tmp_path / "bad")

    # Realigned to its own first volume (motion.reference = "first"): every step raises, with the fix.
    own = r"realigned to its own first volume.*motion\.reference = \".*reference\.nii\.gz\""
    with pytest.raises(SignalError, match=own):
        _apply(out, run2, "a", reference=None)
    # ... but the training run itself may be (its first volume is the reference).
    values, _ = _apply(out, _volumes(runs[1], affine, root / "run_1.nii.gz"), "a", reference=None)
    assert np.isfinite(values[4:]).all()
    # Motion correction off.
    signal = _signal(out, "a")
    signal.fit(SignalContext((40, 40, 24), affine, run2[0].data, {}, np.arange(10), None, TR_S))
    volume = VolumeInput(0, "task", {}, {}, {}, None, False, sample=lambda idx: run2[0].data.reshape(-1)[idx])
    for _ in range(2):
        with pytest.raises(SignalError, match="motion correction is off"):
            signal.step(volume)
    assert nib.load(out / "reference.nii.gz").shape == (40, 40, 24)


@pytest.mark.parametrize("case, expected", [
    ("no_trial_type", "invalid value for '--events': .* has no column trial_type"),
    ("unknown_class", "invalid value for '--classes': dogs not among the events' trial types. Allowed: a, b, c"),
    ("one_class", "invalid value for '--classes': a: a decoder needs at least two classes"),
    ("missing_series", "invalid value for '--series': not found"),
    ("mask_outside", "invalid value for '--mask': "),
    ("no_tr", "invalid value for '--tr-s': .* does not state its repetition time"),
    ("bad_C", "invalid value for '--C': 'many'"),
    ("late_events", "invalid value for '--events': a: 0 trial"),
])
def test_train_command_errors_are_one_line_and_exit_2(synthetic, capsys, tmp_path, case, expected):
    import nibabel as nib

    root, runs, affine, mask, _ = synthetic
    args = {"--series": root / "run_1.nii.gz", "--events": root / "events_1.tsv", "--mask": root / "mask.nii.gz",
            "--tr-s": TR_S, "-o": tmp_path / "out"}
    if case == "no_trial_type":
        (tmp_path / "ev.tsv").write_text("onset\tduration\n1\t2\n")
        args["--events"] = tmp_path / "ev.tsv"
    elif case == "unknown_class":
        args["--classes"] = "dogs"
    elif case == "one_class":
        args["--classes"] = "a"
    elif case == "missing_series":
        args["--series"] = tmp_path / "nothing"
    elif case == "mask_outside":
        far = affine.copy()
        far[:3, 3] += 1000.0
        nib.save(nib.Nifti1Image(mask.astype(np.uint8), far), tmp_path / "far.nii.gz")
        args["--mask"] = tmp_path / "far.nii.gz"
    elif case == "no_tr":
        del args["--tr-s"]  # the synthetic NIfTI has no time unit
    elif case == "bad_C":
        args["--C"] = "many"
    elif case == "late_events":
        _write_events(tmp_path / "late.tsv", [(500.0, 8.0, "a"), (520.0, 8.0, "a"), (6.0, 8.0, "b"), (24.0, 8.0, "b")])
        args["--events"] = tmp_path / "late.tsv"
    argv = [a for k, v in args.items() for a in (k, v)]
    rc, out, err = _train(capsys, *argv)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("rtnf decoder train: ")
    import re

    assert re.search(expected, lines[0]), lines[0]
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- real data


def _register_study_mask(run1_first: Volume, out: Path) -> Path:
    """The study's bilateral occipital ROI (in its own deobliqued space) on run 1's grid.

    Rigid registration (SimpleITK, mutual information, moments initialisation) of the study's
    reference EPI (skull-stripped) to run 1's first volume (skull-stripped as ``rtnf roi mni`` does),
    then the ROI carried through it (linear, partial volume >= 0.5) with rtnf's own resampling.
    """
    sitk = pytest.importorskip("SimpleITK")
    import nibabel as nib
    from scipy.ndimage import binary_dilation

    from rtnf.apps.roidef.localizer import epi_mask
    from rtnf.apps.roidef.mni import _LPS, _sitk_matrix, _to_sitk, mni_roi

    masks = SHARED_DATA / "pydecnef-sub1" / "masks"
    study = nib.load(masks / "example_func_deoblique_brain.nii")
    # Two ITK threads on every machine (its result depends on the thread count), and the process's default put
    # back afterwards: left at 2, it changed every later test of the process (their history then mattered).
    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(2)
    try:
        head = binary_dilation(epi_mask(run1_first.data), iterations=1)
        fixed = _to_sitk(np.where(head, run1_first.data, 0.0), run1_first.affine)
        moving = _to_sitk(np.asarray(study.dataobj, dtype=np.float32), study.affine)
        transform = sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(),
                                                      sitk.CenteredTransformInitializerFilter.MOMENTS)
        reg = sitk.ImageRegistrationMethod()
        reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
        reg.SetMetricSamplingStrategy(reg.RANDOM)
        reg.SetMetricSamplingPercentage(0.5, 1)  # seed 1: SimpleITK takes 0 for "the wall clock"
        reg.SetInterpolator(sitk.sitkLinear)
        reg.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4, numberOfIterations=300,
                                                     gradientMagnitudeTolerance=1e-8)
        reg.SetOptimizerScalesFromPhysicalShift()
        reg.SetShrinkFactorsPerLevel([4, 2, 1])
        reg.SetSmoothingSigmasPerLevel([4.0, 2.0, 0.0])
        reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
        reg.SetInitialTransform(transform, inPlace=True)
        reg.Execute(fixed, moving)
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    run_to_study = _LPS @ _sitk_matrix(transform) @ _LPS
    roi = mni_roi(run1_first.grid, run_to_study, mask=masks / "bilateral_occipital.nii", name="occipital")
    nib.save(nib.Nifti1Image(roi.mask.astype(np.uint8), run1_first.affine), out)
    return out


def _decnef_events(run: int, out: Path) -> Path:
    """pydecnef's trials as a BIDS events table: pictures from trial_onset to start_wait_4_hrf (ms, from the
    run's first volume; see tests/test_fidelity.py), living = dogs, non_living = scissors, gaussian = noise."""
    names = {"living": "dogs", "non_living": "scissors", "gaussian": "noise"}
    rows = list(csv.DictReader(open(SHARED_DATA / "pydecnef-sub1" / "logs" / f"run_{run}.csv")))
    trials = {(float(r["trial_onset"]) / 1000, float(r["start_wait_4_hrf"]) / 1000, names[r["concept"]]) for r in rows}
    return _write_events(out, [(on, off - on, kind) for on, off, kind in sorted(trials)])


def _dicom_volumes(run: int):
    from rtnf.scanner.dicom import read_volume

    for path in sorted((SHARED_DATA / "pydecnef-sub1" / "func" / f"run_{run}").glob("*.dcm")):
        yield read_volume(path)


@pytest.fixture(scope="module")
def decnef(tmp_path_factory):
    """Run 1's decoder (trained by the command) and its values on run 2, applied as the pipeline does."""
    root = tmp_path_factory.mktemp("decoder_decnef")
    mask = _register_study_mask(next(_dicom_volumes(1)), root / "occipital_run1.nii.gz")
    events1, events2 = _decnef_events(1, root / "events_run1.tsv"), _decnef_events(2, root / "events_run2.tsv")
    out = root / "decoder"
    rc = decoder_main(["train", "--series", str(SHARED_DATA / "pydecnef-sub1" / "func" / "run_1"), "--events",
                       str(events1), "--mask", str(mask), "--classes", "dogs", "scissors", "-o", str(out)])
    assert rc == 0
    values, costs = _apply(out, _dicom_volumes(2), "dogs")
    return root, out, events2, values, costs


@requires_shared_data("pydecnef-sub1")
def test_decoding_dogs_vs_scissors_on_run_2_of_a_decoder_trained_on_run_1(decnef):
    """Per-trial accuracy of the online probabilities, judged by a one-sided binomial test (chance 0.5).

    A trial is correct when the mean probability of "dogs" over its lagged volumes is > 0.5 for a dogs
    trial and < 0.5 for a scissors trial. With 14 trials (7 dogs, 7 scissors) p < 0.01 needs at least
    12 correct (P(X >= 12) = 0.0065 at chance). Figures when written: cross-validated on run 1 (leave
    one trial out) 0.786 per trial, 0.826 per volume; online on run 2, 13 of 14 trials (0.929,
    binomial p = 0.0009), 0.84 of the volumes; with dogs, scissors and noise, 17 of 18 (chance 1/3).
    """
    from scipy.stats import binomtest

    root, out, events2, values, costs = decnef
    report = __import__("json").loads((out / "report.json").read_text())
    assert report["n_trials"] == {"dogs": 7, "scissors": 7}
    assert report["run"]["tr_s"] == 2.0  # from the DICOM headers
    assert 2000 <= report["n_voxels"] <= 4000
    cv = report["cross_validation"]
    per_trial = _per_trial(values, events2, "dogs", ("dogs", "scissors"))
    n, k = len(per_trial), _correct(per_trial, "dogs")
    labels, _ = label_volumes([t for t in read_events(events2) if t.trial_type in ("dogs", "scissors")],
                              values.size, TR_S, LAG_S)
    judged = np.array([lab is not None for lab in labels]) & np.isfinite(values)
    per_volume = float(np.mean((values[judged] > 0.5) == (labels[judged] == "dogs")))
    p_value = binomtest(k, n, 0.5, alternative="greater").pvalue
    print(f"pydecnef-sub1 dogs vs scissors, {report['n_voxels']} voxels, C {cv['C']:g}: run 1 CV "
          f"{cv['accuracy_trials']:.3f} per trial, {cv['accuracy_volumes']:.3f} per volume; run 2 online "
          f"{k}/{n} trials = {k / n:.3f} (binomial p = {p_value:.4f}), {per_volume:.3f} of the volumes; "
          f"step median {1e3 * np.median(costs):.3f} ms")
    assert n == 14
    assert p_value < 0.01, f"{k}/{n} trials correct: not above chance (p = {p_value:.3f}); {per_trial}"
    assert per_volume > 0.6


@requires_shared_data("pydecnef-sub1")
def test_a_replay_of_run_2_records_and_feeds_back_the_same_probabilities(decnef):
    """``rtnf replay`` of run 2's DICOM files with ``[signals.dec] class = "decoder"``: the table's values
    are exactly those of the in-process application, and they are what is fed back."""
    import subprocess
    import sys

    from rtnf.config import load_config
    from tests.helpers import make_config, replay_func_dir

    root, out, events2, values, _ = decnef
    blocks = [{"condition": "image", "onset": round(t.onset_s, 3), "duration": round(t.duration_s, 3)}
              for t in read_events(events2)]
    cfg = make_config(root, {
        "session.task": "decoder", "scanner.export_dir": "unused", "scanner.tr_s": TR_S, "scanner.n_volumes": 209,
        "scanner.dummy_volumes": 0, "protocol.units": "seconds", "protocol.pattern": None, "protocol.blocks": blocks,
        "rois": {"loc": {"center_mm": [0.0, 0.0, 0.0], "radius_mm": 30.0}}, "feedback.roi": "loc",
        "motion.reference": "decoder/reference.nii.gz",
        "signals": {"dec": {"class": "decoder", "model_dir": "decoder", "target_class": "dogs"}},
        "feedback.source": "dec", "output.dir": "out"}, name="replay.toml")
    run2 = SHARED_DATA / "pydecnef-sub1" / "func" / "run_2"
    proc = subprocess.run([sys.executable, "-m", "rtnf", "replay", str(cfg), str(run2)],
                          capture_output=True, text=True, timeout=600, cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = next(replay_func_dir(load_config(cfg)).glob("*_desc-rtnf_timeseries.tsv"))
    rows = list(csv.DictReader(open(table), delimiter="\t"))
    recorded = np.array([np.nan if r["signal_dec"] == "n/a" else float(r["signal_dec"]) for r in rows])
    assert recorded.size == 209
    np.testing.assert_array_equal(np.isnan(recorded), np.isnan(values))
    np.testing.assert_allclose(recorded, values, rtol=0, atol=1e-12)
    assert rows[0]["signal_dec_reason"] == "warming up: 1 of 5 volumes in the running mean"
    for r in rows[4:]:
        assert float(r["feedback_signal"]) == float(r["signal_dec"])
        p = float(r["signal_dec"])
        assert float(r["signal_dec_logit"]) == pytest.approx(np.log(p / (1 - p)), abs=1e-9)
