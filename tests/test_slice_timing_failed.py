"""Slice timing around failed, missing and re-processed volumes: each volume is interpolated at its true time.

A volume that never arrived, could not be read, had no finite voxel, was on
another grid, or whose processing raised after the slice timer had taken it
(the run loop then records it as missing) must neither count twice on the
slice timer's clock nor stay in its history: the next volumes are corrected
exactly as an offline ``np.interp`` over the whole series of the volumes that
were used. The simulator's mosaics carry their true slice times; the
reference is computed from its files, independently of rtnf's slice timer.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from rtnf.analysis.preprocess import Preprocessor
from rtnf.analysis.slicetiming import SliceTimer, order_slice_times
from rtnf.config import load_config
from rtnf.run.pipeline import VolumeProcessor
from rtnf.scanner.dicom import SeriesReader
from rtnf.scanner.export import Arrival
from rtnf.scanner.volume import Volume
from tests.helpers import make_config, pattern

TR = 1.0
N = 16
FAILED = 6  # the volume whose fate each test varies


@pytest.fixture(scope="module")
def sim_run(tmp_path_factory):
    """A short mosaic run from the simulator (36 ascending slices, respiration sampled per slice), read back."""
    from scanner_sim.generate import generate_run
    from scanner_sim.phantom import make_phantom

    out = tmp_path_factory.mktemp("stc_failed")
    spec = dict(tr_s=TR, n_volumes=N, seed=11, noise_pct=0.2, drift_pct=0.0, blocks=[], regions=[],
                format="siemens-mosaic",
                physio={"cardiac_pct": 0.0, "resp_pct": 2.0, "resp_hz": 0.3, "resp_var_pct": 5.0,
                        "resp_depth_var_pct": 10.0, "sampling": "slice"})
    g = generate_run(spec, out, phantom=make_phantom((64, 64, 36), 3.0))
    reader = SeriesReader()
    volumes = [reader.read(f) for f in g.files]
    mask = (g.run.physio_weight > 0.5) & g.run.phantom.brain_mask
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), g.run.affine), out / "phys.nii.gz")
    return g, volumes, mask, out / "phys.nii.gz"


def _offline_roi_means(volumes: list[Volume], mask: np.ndarray, used: list[int]) -> dict[int, float]:
    """ROI mean of each used volume, every voxel's series interpolated offline (np.interp over the used volumes)
    at the volume's start plus the first slice's time, from its slice's true acquisition times.

    ``mask``: the ROI's voxels on the volumes' grid (boolean, the array's shape).
    """
    times = np.asarray(volumes[0].slice_times_s)
    ref = times.min()
    series = np.stack([volumes[i].data[mask] for i in used], axis=-1).astype(np.float64)  # (voxels, used)
    slice_of = np.nonzero(mask)[volumes[0].slice_axis]
    t_used = np.asarray(used, dtype=float) * TR
    targets = t_used + ref
    corrected = np.empty_like(series)
    for v in range(series.shape[0]):
        corrected[v] = np.interp(targets, t_used + times[slice_of[v]], series[v])
    return {i: float(corrected[:, n].mean()) for n, i in enumerate(used)}


class _RaisesAfterSliceTiming(Preprocessor):
    """Preprocessing that raises on some volumes once it has run (the slice timer has taken them), as a bug in
    a later step would: the run loop then records the volume as missing."""

    def __init__(self, *args, fail: set[int], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fail = fail

    def run(self, volume, index=None):
        pre = super().run(volume, index)
        if index in self.fail:
            raise RuntimeError(f"boom at {index}")
        return pre


class _FailingProcessor(VolumeProcessor):
    """rtnf's processor with a preprocessor that raises on the volumes ``fail`` (a part a run may be given)."""

    def __init__(self, cfg, fail: set[int]) -> None:
        super().__init__(cfg)
        self.preprocessor = _RaisesAfterSliceTiming(self.rois, cfg.motion, cfg.quality, slice_timing=cfg.slice_timing,
                                                    tr_s=self.protocol.tr_s, fail=set(fail))


def _arrival(volume: Volume, number: int, load=None) -> Arrival:
    return Arrival(number=number, paths=[volume.path], t_detected=0.0, load=load or (lambda: volume))


def _processor(tmp_path: Path, mask_path: Path, fail: set[int] = frozenset()) -> VolumeProcessor:
    (tmp_path / "phys.nii.gz").write_bytes(mask_path.read_bytes())
    cfg = load_config(make_config(tmp_path, {
        "scanner.tr_s": TR, "scanner.n_volumes": N, "scanner.dummy_volumes": 0,
        "protocol.pattern": pattern(rest=4, regulate=4), "rois": {"phys": {"mask": "phys.nii.gz"}},
        "feedback.roi": "phys", "motion.enabled": False, "slice_timing.enabled": True}))
    return _FailingProcessor(cfg, set(fail))


def _roi_mask(processor: VolumeProcessor) -> np.ndarray:
    """The ROI's voxels as rtnf placed them on the functional grid (boolean)."""
    mask = np.zeros(processor.grid.shape, bool)
    mask.reshape(-1)[processor.rois[0].indices_] = True
    return mask


def _handle(processor: VolumeProcessor, index: int, arrival: Arrival):
    """What the run loop does with one volume (rtnf.run.session._RunLoop._handle): a raise costs that volume."""
    try:
        return processor.process(index, index + 1, arrival)
    except Exception:  # noqa: BLE001 - as the run loop: the volume is recorded as missing
        return processor.missing(index, index + 1, arrival.name, arrival.t_detected, reason="processing error")


@pytest.mark.parametrize("fate", ["raised after slice timing", "never arrived", "unreadable partial file",
                                  "no finite voxel", "wrong grid"])
def test_the_volumes_after_a_failed_one_match_offline_interpolation(sim_run, tmp_path, fate):
    g, volumes, mask, mask_path = sim_run
    processor = _processor(tmp_path, mask_path, fail={FAILED} if fate == "raised after slice timing" else set())
    reader = SeriesReader()
    raw: dict[int, float | None] = {}
    for i, volume in enumerate(volumes):
        arrival = _arrival(volume, i + 1)
        if i == FAILED:
            if fate == "never arrived":
                result = processor.missing(i, i + 1, None, None)
            elif fate == "unreadable partial file":
                partial = tmp_path / volume.path.name
                partial.write_bytes(volume.path.read_bytes()[: volume.path.stat().st_size // 2])
                result = _handle(processor, i, _arrival(volume, i + 1, lambda: reader.read(partial)))
            elif fate == "no finite voxel":
                nan = dataclasses.replace(volume, data=np.full_like(volume.data, np.nan))
                result = _handle(processor, i, _arrival(nan, i + 1))
            elif fate == "wrong grid":
                cut = dataclasses.replace(volume, data=volume.data[:, :-1])
                result = _handle(processor, i, _arrival(cut, i + 1))
            else:
                result = _handle(processor, i, arrival)
            assert result.missing
            continue
        result = _handle(processor, i, arrival)
        assert not result.missing and "slice_timing" in result.stage_s
        raw[i] = result.volume.rois["phys"]["raw"]
    used = [i for i in range(N) if i != FAILED]
    expected = _offline_roi_means(volumes, _roi_mask(processor), used)
    got = np.array([raw[i] for i in used])
    np.testing.assert_allclose(got, [expected[i] for i in used], rtol=2e-6, err_msg=fate)


def test_the_correction_differs_from_the_uncorrected_signal_after_the_gap(sim_run, tmp_path):
    """The check above can fail: the volume after the gap moves, and by more than float32 rounding."""
    _, volumes, _, mask_path = sim_run
    processor = _processor(tmp_path, mask_path)
    processor.process(0, 1, _arrival(volumes[0], 1))
    mask = _roi_mask(processor)
    used = [i for i in range(N) if i != FAILED]
    expected = _offline_roi_means(volumes, mask, used)
    assumed_contiguous = _offline_roi_means(volumes, mask, list(range(N)))  # the failed volume kept in
    after = FAILED + 1
    acquired = float(volumes[after].data[mask].astype(np.float64).mean())
    assert abs(expected[after] - acquired) > 1e-4 * abs(acquired)
    assert abs(expected[after] - assumed_contiguous[after]) > 1e-4 * abs(acquired)


# ------------------------------------------------------------------ the slice timer on its own


def _series(shape: tuple[int, ...], n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(100.0, 5.0, size=(*shape, n)).astype(np.float32)


def _np_interp(series: np.ndarray, times: np.ndarray, tr: float, used: list[int]) -> dict[int, np.ndarray]:
    """Offline linear interpolation over the used volumes at each one's start plus the first slice's time."""
    t = np.asarray(used, dtype=float) * tr
    out = {i: np.empty(series.shape[:-1]) for i in used}
    for idx in np.ndindex(*series.shape[:-1]):
        values = np.interp(t + times.min(), t + times[idx[2]], series[idx + (used,)])
        for n, i in enumerate(used):
            out[i][idx] = values[n]
    return out


@pytest.mark.parametrize("method", ["linear", "cubic"])
def test_a_volume_given_again_replaces_its_sample_instead_of_counting_twice(method):
    tr, n = 1.0, 10
    times = np.array(order_slice_times("interleaved", 5, tr))
    series = _series((3, 2, 5), n, seed=1)
    once, twice = SliceTimer(times, tr, method=method), SliceTimer(times, tr, method=method)
    for i in range(n):
        expected = once.correct(i, series[..., i])
        if i == 4:
            twice.correct(i, series[..., i])  # processed again (a retry of the same volume)
        got = twice.correct(i, series[..., i])
        assert np.all(np.isfinite(got))
        np.testing.assert_allclose(got, expected, rtol=1e-6)


@pytest.mark.parametrize("method", ["linear", "cubic"])
def test_a_forgotten_volume_is_interpolated_across_like_a_missing_one(method):
    tr, n = 0.8, 12
    times = np.array(order_slice_times("descending", 6, tr))
    series = _series((3, 4, 6), n, seed=2)
    used = [i for i in range(n) if i != 5]
    expected = _np_interp(series, times, tr, used)
    timer, never = SliceTimer(times, tr, method=method), SliceTimer(times, tr, method=method)
    for i in range(n):
        got = timer.correct(i, series[..., i])
        if i == 5:
            timer.forget(i)  # its processing failed afterwards: it is a missing volume
            continue
        # as if it had never come (the cubic case against SciPy's Lagrange: test_slice_timing.py)
        np.testing.assert_array_equal(got, never.correct(i, series[..., i]))
        if method == "linear":
            np.testing.assert_allclose(got, expected[i], rtol=2e-6)


def test_an_older_volume_after_a_newer_one_uses_only_its_own_past():
    """Out of order: volume 4 after volume 5 is corrected from volume 3, and volume 6 from volume 5."""
    tr, n = 1.0, 8
    times = np.array(order_slice_times("ascending", 4, tr))
    series = _series((2, 2, 4), n, seed=3)
    expected = _np_interp(series, times, tr, list(range(n)))
    timer = SliceTimer(times, tr)
    for i in (0, 1, 2, 3, 5, 4, 6, 7):
        got = timer.correct(i, series[..., i])
        if i not in (0, 5):  # 5 arrives before 4: corrected from 3, two volumes back (not what np.interp does)
            np.testing.assert_allclose(got, expected[i], rtol=2e-6, err_msg=str(i))


# ------------------------------------------------------------------ a whole run, then its resume


def _run_with_a_failure(sim_run, tmp_path: Path, export: Path):
    """A replay of ``export`` (the simulator's mosaics) in which volume FAILED raises after slice timing.

    Returns (cfg, feeder factory, recorded rows, the offline reference of the volumes used).
    """
    from rtnf.apps.demo import read_tsv
    from rtnf.apps.replay import ReplayFeeder
    from rtnf.run.record import bids_prefix, func_dir
    from rtnf.run.session import RunParts, run_session

    _, volumes, _, mask_path = sim_run
    (tmp_path / "phys.nii.gz").write_bytes(mask_path.read_bytes())
    cfg = load_config(make_config(tmp_path, {
        "session.subject": "stc", "session.task": "nf", "output.dir": "outputs",
        "scanner.export_dir": str(export), "scanner.format": "dicom", "scanner.tr_s": TR, "scanner.n_volumes": N,
        "scanner.dummy_volumes": 0, "protocol.pattern": pattern(rest=4, regulate=4),
        "rois": {"phys": {"mask": "phys.nii.gz"}}, "feedback.roi": "phys", "motion.enabled": False,
        "slice_timing.enabled": True}), {"publish.address": f"inproc://rtnf-stc-{tmp_path.name}"})

    def feeder(reader, put) -> ReplayFeeder:
        return ReplayFeeder(export, reader, put, 0.0, cfg.scanner.first_volume_number)

    probe = VolumeProcessor(cfg)  # the ROI as rtnf places it on the grid, for the offline reference
    probe.process(0, 1, _arrival(volumes[0], 1))
    used = [i for i in range(N) if i != FAILED]
    expected = _offline_roi_means(volumes, _roi_mask(probe), used)
    first = run_session(cfg, "", feeder_factory=feeder,
                        parts=RunParts(processor=lambda c: _FailingProcessor(c, {FAILED})))
    assert first.ok and (first.n_missing, first.n_errors) == (1, 1)
    rows = read_tsv(func_dir(cfg) / f"{bids_prefix(cfg)}_desc-rtnf_timeseries.tsv")
    return cfg, feeder, rows, expected


def test_a_run_whose_volume_raised_matches_offline_and_its_resume_agrees(sim_run, tmp_path, caplog):
    """Through the run loop (a replay of the simulator's export): the volume that raised is recorded missing,
    the recorded ROI values of the others are the offline interpolation's, and a resume, which processes
    every volume again with that one missing, gives the values recorded (no "resume:" mismatch)."""
    import logging

    from rtnf.apps.demo import read_tsv
    from rtnf.run.record import bids_prefix, func_dir
    from rtnf.run.session import run_session

    cfg, feeder, rows, expected = _run_with_a_failure(sim_run, tmp_path, sim_run[0].files[0].parent)
    used = sorted(expected)
    assert [r["missing"] for r in rows] == ["1" if i == FAILED else "0" for i in range(N)]
    np.testing.assert_allclose([float(rows[i]["phys_raw"]) for i in used], [expected[i] for i in used], rtol=2e-6)

    caplog.set_level(logging.WARNING, logger="rtnf")
    resumed = run_session(cfg, "", feeder_factory=feeder, resume=True)
    assert resumed.ok
    # Before the fix of the resume's sequencing, the recorded-missing volume made every volume before it
    # missing at once ("a later volume arrived"), and the files that followed were refused as duplicates.
    assert not [r.getMessage() for r in caplog.records if r.getMessage().startswith("resume:")]
    assert read_tsv(func_dir(cfg) / f"{bids_prefix(cfg)}_desc-rtnf_timeseries.tsv") == rows  # nothing twice


def test_a_resumed_replay_missing_a_file_before_a_recorded_missing_volume_ends(sim_run, tmp_path):
    """The recorded-missing volume waits without a clock, yet a finished replay still ends: the absent earlier
    files are declared missing then (no endless wait). The files are gone from two volumes before the failed
    one to the end, so that the recorded-missing volume is the only one waiting when the replay ends."""
    import shutil
    import threading

    from rtnf.run.session import run_session

    export = tmp_path / "export"
    shutil.copytree(sim_run[0].files[0].parent, export)
    cfg, feeder, _, _ = _run_with_a_failure(sim_run, tmp_path, export)
    for gone in sorted(export.iterdir())[FAILED - 2:]:  # recorded as processed (but FAILED), absent on resume
        gone.unlink()
    stop = threading.Event()
    timer = threading.Timer(120.0, stop.set)  # a hang shows as "aborted", not as a stuck test
    timer.start()
    try:
        resumed = run_session(cfg, "", feeder_factory=feeder, resume=True, stop=stop)
    finally:
        timer.cancel()
    assert resumed.status == "ended" and resumed.n_missing == 3  # the two absent files' volumes and the recorded one
    assert resumed.n_processed == FAILED - 2
