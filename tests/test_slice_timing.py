"""Real-time slice-timing correction: against offline interpolation, on the simulator's truth, slice times
from headers (simulated and real vendor DICOM), and its configuration errors."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
from scipy.interpolate import BarycentricInterpolator

from rtnf.analysis.slicetiming import SliceTimer, order_slice_times
from rtnf.config import ConfigError, load_config
from rtnf.run.pipeline import VolumeProcessor
from rtnf.scanner.dicom import SeriesReader, read_volume
from rtnf.scanner.export import Arrival
from rtnf.scanner.nifti import read_nifti
from rtnf.scanner.volume import Volume
from rtnf.scanner.filenames import AS_IS
from tests.helpers import SHARED_DATA, make_config, pattern, requires_shared_data, wait_until

ZOO = SHARED_DATA / "dicom-zoo"


# --------------------------------------------------------------------------- (a) the algorithm
def _series(shape: tuple[int, ...], n: int, seed: int = 0) -> np.ndarray:
    """Random float32 volumes, time last: (..., n)."""
    return np.random.default_rng(seed).normal(100.0, 5.0, size=(*shape, n)).astype(np.float32)


def _np_interp_reference(series: np.ndarray, times: np.ndarray, tr: float, kept: list[int], ref: float,
                         axis: int = 2) -> dict[int, np.ndarray]:
    """Offline linear interpolation of the whole series (the kept volumes only) at each volume's reference time."""
    x = np.moveaxis(series, axis, -2)  # (..., slices, time)
    out = {i: np.empty(x.shape[:-1]) for i in kept}
    kept_t = np.asarray(kept, dtype=float) * tr
    for idx in np.ndindex(*x.shape[:-2]):
        for k in range(x.shape[-2]):
            samples = x[idx + (k, kept)]
            for i in kept:
                out[i][idx + (k,)] = np.interp(i * tr + ref, kept_t + times[k], samples)
    return {i: np.moveaxis(v, -1, axis) for i, v in out.items()}


@pytest.mark.parametrize("order", ["interleaved", "descending"])
def test_linear_equals_np_interp_of_the_whole_series_volume_by_volume(order):
    tr, n_slices, n = 0.8, 9, 14
    times = np.array(order_slice_times(order, n_slices, tr))
    series = _series((4, 5, n_slices), n)
    kept = [i for i in range(n) if i != 7]  # one missing volume: interpolated across the gap
    expected = _np_interp_reference(series, times, tr, kept, times.min())
    timer = SliceTimer(times, tr)
    for i in kept:
        got = timer.correct(i, series[..., i])
        assert got.dtype == np.float32
        if i == 0:
            assert got is series[..., 0] or np.array_equal(got, series[..., 0])  # the first passes through
            continue
        # np.interp, applied to the whole series, uses the same two samples (past-only by construction)
        np.testing.assert_allclose(got, expected[i], rtol=2e-6, atol=0)


def test_linear_along_another_axis_and_a_later_reference_extrapolate_like_numpy():
    tr, n_slices, n = 2.0, 6, 8
    times = np.array(order_slice_times("interleaved_siemens", n_slices, tr))  # even count: 1, 3, 5 first
    assert times[1] == 0.0 and times[0] == pytest.approx(tr / 2)
    series = _series((n_slices, 3, 4), n, seed=1)
    ref = 0.9  # later than some slices: those are extrapolated from the last two samples
    timer = SliceTimer(times, tr, axis=0, reference_s=ref)
    for i in range(n):
        got = timer.correct(i, series[..., i])
        if i == 0:
            continue
        ages_t = np.array([(i - 1) * tr, i * tr])
        x = series[..., [i - 1, i]]  # (slices, 3, 4, 2)
        slope = (x[..., 1] - x[..., 0]) / tr
        t_sample = ages_t[1] + times[:, None, None]
        expected = x[..., 1] + slope * (i * tr + ref - t_sample)
        np.testing.assert_allclose(got, expected, rtol=2e-6)


def test_cubic_equals_scipy_lagrange_through_the_last_four_volumes():
    tr, n_slices, n = 1.0, 7, 12
    times = np.array(order_slice_times("interleaved", n_slices, tr))
    series = _series((3, 2, n_slices), n, seed=2)
    kept = [i for i in range(n) if i != 8]
    timer = SliceTimer(times, tr, method="cubic")
    for i in kept:
        got = timer.correct(i, series[..., i])
        nodes = [j for j in kept if 0 <= i - j <= 4][-4:]  # at most 4 samples, none older than 4 volumes
        expected = np.empty(series.shape[:-1])
        for idx in np.ndindex(*series.shape[:-2]):
            for k in range(n_slices):
                xs = np.array(nodes) * tr + times[k]
                ys = series[idx + (k, nodes)].astype(np.float64)
                expected[idx + (k,)] = BarycentricInterpolator(xs, ys)(i * tr + times.min()) if len(nodes) > 1 else ys[0]
        np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_after_a_gap_longer_than_the_reach_the_volume_passes_through():
    times = order_slice_times("ascending", 4, 1.0)
    timer = SliceTimer(times, 1.0)
    a, b = _series((2, 2, 4), 2, seed=3)[..., 0], _series((2, 2, 4), 2, seed=4)[..., 0]
    timer.correct(0, a)
    assert np.array_equal(timer.correct(3, b), b)  # volumes 1 and 2 missing: nothing recent to interpolate from
    with pytest.raises(ValueError, match="slices"):
        timer.correct(4, np.zeros((2, 2, 5), np.float32))


# --------------------------------------------------------------------------- (b) simulator truth
def _arrival(volume: Volume, number: int) -> Arrival:
    return Arrival(number=number, paths=[volume.path], t_detected=0.0, load=lambda: volume)


@pytest.fixture(scope="module")
def resp_run(tmp_path_factory):
    """A short-TR mosaic run whose respiratory signal is sampled at each slice's time (36 ascending slices)."""
    from scanner_sim.generate import generate_run
    from scanner_sim.phantom import make_phantom

    out = tmp_path_factory.mktemp("stc_sim")
    spec = dict(tr_s=1.0, n_volumes=100, seed=7, noise_pct=0.2, drift_pct=0.0, blocks=[], regions=[],
                format="siemens-mosaic",
                physio={"cardiac_pct": 0.0, "resp_pct": 2.0, "resp_hz": 0.3, "resp_var_pct": 5.0,
                        "resp_depth_var_pct": 10.0, "sampling": "slice"})
    g = generate_run(spec, out, phantom=make_phantom((64, 64, 36), 3.0))
    reader = SeriesReader()
    return g, [reader.read(f) for f in g.files], reader.stats


def test_correction_raises_the_roi_correlation_with_the_truth_at_the_reference_time(resp_run, tmp_path):
    g, volumes, _ = resp_run
    # ROI: where the simulator puts physiology (ventricles, brain edge), across every slice
    weight = g.run.physio_weight
    mask = (weight > 0.5) & g.run.phantom.brain_mask
    assert len(np.unique(np.nonzero(mask)[2])) == 36
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), g.run.affine), tmp_path / "phys.nii.gz")
    # the truth at the reference time (the first slice's, 0 s): the respiratory trace at each volume's start
    _, resp = g.run.physio_traces.at(np.arange(len(volumes)) * 1.0)
    r, stage = {}, {}
    for on in (False, True):
        cfg = load_config(make_config(tmp_path, {
            "scanner.tr_s": 1.0, "scanner.n_volumes": 100, "scanner.dummy_volumes": 0,
            "protocol.pattern": pattern(rest=10, regulate=10, repeat=5), "rois": {"phys": {"mask": "phys.nii.gz"}},
            "feedback.roi": "phys", "slice_timing.enabled": on}, name=f"stc_{on}.toml"))
        processor = VolumeProcessor(cfg)
        results = [processor.process(i, i + 1, _arrival(v, i + 1)) for i, v in enumerate(volumes)]
        raw = np.array([res.volume.rois["phys"]["raw"] for res in results])
        r[on] = float(np.corrcoef(raw[4:], resp[4:])[0, 1])
        stage[on] = ["slice_timing" in res.stage_s for res in results]
    # figures of this run (seed 7): r = 0.44 as acquired, 0.985 corrected
    assert r[False] < 0.7 and r[True] > 0.97, r
    assert all(stage[True]) and not any(stage[False])


# --------------------------------------------------------------------------- (c) headers
def test_mosaic_slice_times_are_what_the_simulator_wrote(resp_run):
    g, volumes, stats = resp_run
    truth = json.loads((g.truth_dir / "nuisance.json").read_text())["slice_times_s"]
    assert stats["fast"] > 0  # the cached path carries them too
    for v in (volumes[0], volumes[1], volumes[-1]):
        np.testing.assert_allclose(v.slice_times_s, truth, atol=1e-6)
        assert v.slice_axis == 2


def test_slice_files_give_their_acquisition_times(tmp_path):
    from scanner_sim import dicom_writer as dw

    vol = np.random.default_rng(0).uniform(100, 200, size=(16, 16, 8)).astype(np.float32)
    affine = np.diag([3.0, 3.0, 4.0, 1.0])
    info = dw.DicomSeriesInfo(series_number=3, tr_s=2.0, n_volumes=1)
    geo = dw.geometry_from_affine(affine, vol.shape)
    t0 = 1_700_000_000.25
    order = [0, 2, 4, 6, 1, 3, 5, 7]  # interleaved: stored slice order[p] acquired p-th
    files = []
    for p, s in enumerate(order):  # the writer stamps each file's AcquisitionTime with its slice's time
        path = tmp_path / f"s{s}.dcm"
        path.write_bytes(dw.slice_bytes(vol, affine, info, 0, s, t0 + p * 2.0 / 8, geo))
        files.append(path)
    volume = read_volume(files)
    expected = np.empty(8)
    expected[geo.k_of_slice[order]] = np.arange(8) * 2.0 / 8
    np.testing.assert_allclose(volume.slice_times_s, expected, atol=2e-6)


def test_nifti_sidecar_slice_timing_and_slice_dimension(tmp_path):
    img = nib.Nifti1Image(np.ones((5, 4, 3), np.float32), np.eye(4))
    img.header.set_dim_info(slice=0)
    nib.save(img, tmp_path / "v1.nii.gz")
    (tmp_path / "v1.json").write_text(json.dumps({"SliceTiming": [0.0, 1.0, 0.5, 0.25, 0.75],
                                                  "PatientName": "never read"}))
    volume = read_nifti(tmp_path / "v1.nii.gz")
    assert volume.slice_axis == 0 and volume.slice_times_s == (0.0, 1.0, 0.5, 0.25, 0.75)
    (tmp_path / "v1.json").write_text(json.dumps({"SliceTiming": [0.0, 1.0]}))  # not one per slice: unused
    assert read_nifti(tmp_path / "v1.nii.gz").slice_times_s is None
    nib.save(nib.Nifti1Image(np.ones((5, 4, 3), np.float32), np.eye(4)), tmp_path / "v2.nii")
    plain = read_nifti(tmp_path / "v2.nii")
    assert plain.slice_times_s is None and plain.slice_axis == 2


def _positions_mm(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """World position of each slice's centre along the slice normal (axis 2)."""
    normal = np.cross(affine[:3, 0], affine[:3, 1])
    normal /= np.linalg.norm(normal)
    ijk = np.stack([np.full(shape[2], (shape[0] - 1) / 2), np.full(shape[2], (shape[1] - 1) / 2),
                    np.arange(shape[2]), np.ones(shape[2])])
    return (affine @ ijk)[:3].T @ normal


@requires_shared_data("dicom-zoo/siemens_mosaic_prisma_VD13_ep2d_HF")
def test_head_to_foot_mosaic_slice_times_match_the_reference_conversion():
    folder = ZOO / "siemens_mosaic_prisma_VD13_ep2d_HF"
    volume = read_volume(folder / "IM-0009-0001.dcm")
    ref = nib.load(folder / "ep2d_Asc_HF.nii.gz")
    ref_times = json.loads((folder / "ep2d_Asc_HF.json").read_text())["SliceTiming"]
    ours = _positions_mm(volume.affine, volume.data.shape)
    theirs = _positions_mm(ref.affine, ref.shape)
    match = [int(np.argmin(np.abs(theirs - z))) for z in ours]  # the same slice in the reference NIfTI
    assert np.abs(theirs[match] - ours).max() < 0.01 and sorted(match) == list(range(36))
    np.testing.assert_allclose(np.array(volume.slice_times_s), np.array(ref_times)[match], atol=1e-6)
    assert volume.slice_times_s[0] == pytest.approx(2.605)  # stored head first: acquired last (ascending)


@requires_shared_data("dicom-zoo/siemens_enhanced_XA30_fmri_noCSA")
def test_enhanced_frame_times_follow_the_slices_they_belong_to():
    import pydicom

    from rtnf.scanner.dicom._common import acquisition_time

    path = sorted((ZOO / "siemens_enhanced_XA30_fmri_noCSA").iterdir())[0]
    volume = read_volume(path)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    frames = ds.PerFrameFunctionalGroupsSequence
    stamps = np.array([acquisition_time({"AcquisitionDateTime": f.FrameContentSequence[0].FrameAcquisitionDateTime})
                       for f in frames])
    lps = np.array([[float(x) for x in f.PlanePositionSequence[0].ImagePositionPatient] for f in frames])
    ras = lps * [-1, -1, 1]
    ours = _positions_mm(volume.affine, volume.data.shape)
    normal = np.cross(volume.affine[:3, 0], volume.affine[:3, 1])
    normal /= np.linalg.norm(normal)
    corner = volume.affine[:3, :2] @ ((np.array(volume.data.shape[:2]) - 1) / 2)  # frame IPP is the corner
    frame_pos = (ras + corner) @ normal
    for k, z in enumerate(ours):
        f = int(np.argmin(np.abs(frame_pos - z)))
        assert abs(frame_pos[f] - z) < 0.01
        assert volume.slice_times_s[k] == pytest.approx(stamps[f] - stamps.min(), abs=1e-4)
    tr = float(ds.SharedFunctionalGroupsSequence[0].MRTimingAndRelatedParametersSequence[0].RepetitionTime) / 1000
    assert 0 <= min(volume.slice_times_s) and max(volume.slice_times_s) < tr
    assert len(set(volume.slice_times_s)) == 11  # multiband 3: 33 slices in 11 shots


@requires_shared_data("dicom-zoo")
@pytest.mark.parametrize("path, n_slices, tr_s", [
    ("dicom-zoo/siemens_mosaic_prisma_VD13_ep2d/IM-0001-0001.dcm", 36, 3.2),
    ("dicom-zoo/siemens_mosaic_prisma_VD13_cmrr_multiband/IM-0005-0001.dcm", 40, 3.2),
    ("dicom-zoo/siemens_mosaic_skyra_E11_rtcloud/001_000013_000000.dcm", 27, 1.5),
    ("pydecnef-sub1/func/run_1/001_000005_000001.dcm", 34, 2.0),
    ("pyneal-series/siemens-prisma-e11-mosaic/001_000013_000001.dcm", 18, 1.0),
])
def test_real_mosaics_give_plausible_slice_times(path, n_slices, tr_s):
    if not (SHARED_DATA / path).exists():
        pytest.skip(f"{SHARED_DATA / path} not found")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        volume = read_volume(SHARED_DATA / path)
    times = np.array(volume.slice_times_s)
    assert times.shape == (n_slices,) == (volume.data.shape[2],)
    assert times.min() == 0 and times.max() < tr_s
    # single band here: every slice its own time, evenly spread over the TR (within a few ms)
    steps = np.diff(np.sort(times))
    assert len(set(times)) == n_slices and np.all(np.abs(steps - steps.mean()) < 0.005)
    assert times.max() + steps.mean() <= tr_s + 1e-6


@requires_shared_data("dicom-zoo/ge_discovery_mr750_epi_slices")
def test_slice_series_without_slice_times_say_so():
    files = sorted((ZOO / "ge_discovery_mr750_epi_slices").iterdir())[:15]  # one volume (15 slices)
    assert read_volume(files).slice_times_s is None  # one AcquisitionTime for every slice: unknown


# --------------------------------------------------------------------------- (d) configuration errors
def _cfg(tmp_path: Path, **slice_timing) -> Path:
    return make_config(tmp_path, {"scanner.tr_s": 2.0, **{f"slice_timing.{k}": v for k, v in slice_timing.items()}})


@pytest.mark.parametrize("keys, words", [
    ({"slice_times_s": [0.0, 1.0, 2.0]}, ["'slice_timing.slice_times_s'", "2 s", "TR", "below 2"]),
    ({"slice_times_s": [0.0, 2.5]}, ["'slice_timing.slice_times_s'", "2.5"]),
    ({"slice_times_s": [0.0, 1.0], "order": "ascending"}, ["'slice_timing.order'", "one of them"]),
    ({"reference": 2.0}, ["'slice_timing.reference'", "below the TR"]),
    ({"order": "spiral"}, ["slice_timing.order", "spiral"]),
    ({"method": "sinc"}, ["slice_timing.method", "sinc"]),
])
def test_config_errors_name_the_key(tmp_path, keys, words):
    with pytest.raises(ConfigError) as exc:
        load_config(_cfg(tmp_path, enabled=True, **keys))
    for w in words:
        assert w in str(exc.value)


def _nifti_arrival(tmp_path: Path, shape=(8, 8, 5)) -> Arrival:
    path = tmp_path / "v1.nii"
    nib.save(nib.Nifti1Image(np.full(shape, 100.0, np.float32) + np.random.default_rng(0).random(shape,
                                                                                              np.float32), np.eye(4) * 3),
             path)
    return Arrival(number=1, paths=[path], t_detected=0.0, load=lambda: read_nifti(path))


def test_wrong_number_of_slice_times_or_none_at_all_stop_the_run_at_the_first_volume(tmp_path):
    common = {"rois": {"acc": {"center_mm": [9.0, 9.0, 6.0], "radius_mm": 6.0}}, "motion.enabled": False}
    cfg = load_config(make_config(tmp_path, {**common, "slice_timing.enabled": True,
                                             "slice_timing.slice_times_s": [0.0, 0.5, 1.0]}))
    with pytest.raises(ConfigError, match=r"'slice_timing.slice_times_s': 3 slice times, but .* has 5 slices"):
        VolumeProcessor(cfg).process(0, 1, _nifti_arrival(tmp_path))
    cfg = load_config(make_config(tmp_path, {**common, "slice_timing.enabled": True}))
    with pytest.raises(ConfigError, match="no slice times in its header"):
        VolumeProcessor(cfg).process(0, 1, _nifti_arrival(tmp_path))
    cfg = load_config(make_config(tmp_path, {**common, "slice_timing.enabled": True,
                                             "slice_timing.order": "interleaved"}))
    result = VolumeProcessor(cfg).process(0, 1, _nifti_arrival(tmp_path))
    assert "slice_timing" in result.stage_s and not result.missing


def test_header_times_that_do_not_spread_over_the_tr_are_not_trusted(tmp_path):
    arrival = _nifti_arrival(tmp_path)
    # a converter's write times, microseconds apart: not when the slices were acquired
    (tmp_path / "v1.json").write_text(json.dumps({"SliceTiming": [0.0, 1e-6, 2e-6, 3e-6, 4e-6]}))
    cfg = load_config(make_config(tmp_path, {"rois": {"acc": {"center_mm": [9.0, 9.0, 6.0], "radius_mm": 6.0}},
                                             "motion.enabled": False, "slice_timing.enabled": True}))
    with pytest.raises(ConfigError, match="do not spread its 5 slices over the TR"):
        VolumeProcessor(cfg).process(0, 1, arrival)
    (tmp_path / "v1.json").write_text(json.dumps({"SliceTiming": [0.0, 1.2, 0.4, 1.6, 0.8]}))
    result = VolumeProcessor(cfg).process(0, 1, arrival)
    assert "slice_timing" in result.stage_s


def test_replay_of_a_4d_nifti_carries_its_sidecar_slice_times(tmp_path):
    from rtnf.apps.replay import ReplayFeeder
    from rtnf.run.session import END_OF_SOURCE

    img = nib.Nifti1Image(np.ones((4, 3, 5, 2), np.float32), np.eye(4))
    img.header.set_dim_info(slice=1)
    nib.save(img, tmp_path / "sub-01_bold.nii.gz")
    (tmp_path / "sub-01_bold.json").write_text(json.dumps({"SliceTiming": [0.0, 0.6, 0.3]}))
    items: list = []
    export = SimpleNamespace(names=AS_IS)  # a 4D file needs only the reader's file-name display
    feeder = ReplayFeeder(tmp_path / "sub-01_bold.nii.gz", export, items.append)  # type: ignore[arg-type]
    feeder.start()
    assert wait_until(lambda: items and items[-1] is END_OF_SOURCE, 10.0)
    feeder.stop()
    volumes = [item.load() for item in items[:-1]]
    assert len(volumes) == 2
    assert all(v.slice_times_s == (0.0, 0.6, 0.3) and v.slice_axis == 1 for v in volumes)


def test_bench_pipeline_reports_the_slice_timing_stage(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "rtnf", "bench", "--json", "pipeline", "--grids", "32x32x20@6", "--volumes", "12",
         "--warmup", "2", "--cycle", "6", "--no-real", "--no-side-by-side", "--no-whole-brain", "--no-preview",
         "--slice-timing", "cubic"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = json.loads(proc.stdout)["runs"]
    assert "error" not in run, run
    stats = run["stages"]["slice_timing"]  # the mosaic headers' slice times, corrected every volume
    assert stats["n"] == 10 and 0 < stats["median_ms"] <= stats["max_ms"]


def test_preprocessor_counts_missing_volumes_on_the_slice_timer_clock(tmp_path):
    from rtnf.analysis.preprocess import Preprocessor
    from rtnf.analysis.rois import SphereROI
    from rtnf.config import MotionConfig, QualityConfig, SliceTimingConfig

    times = order_slice_times("interleaved", 5, 2.0)
    series = _series((8, 8, 5), 5, seed=5)
    volumes = [Volume(series[..., i], np.eye(4) * 3, None, Path(f"v{i}.nii"), slice_times_s=times) for i in range(5)]
    pre = Preprocessor([SphereROI("a", (9.0, 9.0, 6.0), 6.0)], MotionConfig(enabled=False), QualityConfig(),
                       slice_timing=SliceTimingConfig(enabled=True), tr_s=2.0).fit(volumes[0])
    reference = SliceTimer(times, 2.0)
    for i in (0, 1, 3, 4):  # volume 2 missing
        if i == 3:
            pre.skip()
        got = pre.run(volumes[i])
        np.testing.assert_array_equal(got.data, reference.correct(i, series[..., i]))
        assert got.slice_timing_s is not None


# ---------------------------------------------------------------- hostile headers


@pytest.mark.parametrize("text", [
    "[" * 500_000 + "]" * 500_000,  # within the size cap, nested beyond the JSON parser's recursion limit
    '{"SliceTiming": ' + "[" * 100_000 + "]" * 100_000 + "}",
    '{"SliceTiming": {"a": 1}}', '{"SliceTiming": [0, 0.5, "x", 1, 1.5]}', '{"SliceTiming": [0, 0.5, NaN, 1, 1.5]}',
    '{"SliceTiming": [0, 0.5, -1, 1, 1.5]}', '{"SliceTiming": [0, 0.5, 1e400, 1, 1.5]}', '"SliceTiming"', "\xff\xfe",
], ids=["nested", "nested-value", "dict", "string", "nan", "negative", "inf", "not-an-object", "not-utf8"])
def test_a_hostile_sidecar_gives_no_slice_times_and_the_volume_still_reads(tmp_path, text):
    img = nib.Nifti1Image(np.ones((4, 3, 5), np.float32), np.eye(4))
    nib.save(img, tmp_path / "v1.nii")
    (tmp_path / "v1.json").write_bytes(text.encode("utf-8", "surrogateescape") if text != "\xff\xfe" else b"\xff\xfe")
    volume = read_nifti(tmp_path / "v1.nii")
    assert volume.slice_times_s is None and volume.data.shape == (4, 3, 5)


@pytest.mark.parametrize("items", [[0.0, 500.0, float("nan"), 1000.0], [0.0, float("inf"), 500.0, 1000.0]])
def test_mosaic_slice_times_with_a_non_finite_value_are_none(items):
    """A NaN after the first value slipped through (Python's max() skips it), and the slice timer then filled
    that slice with NaN in every volume."""
    from rtnf.scanner.dicom.slicetimes import mosaic_slice_times

    csa = {"tags": {"MosaicRefAcqTimes": {"items": items}}}
    assert mosaic_slice_times({}, csa, 4) is None
    private = SimpleNamespace(get=lambda tag: SimpleNamespace(value=items))
    assert mosaic_slice_times(private, None, 4) is None
