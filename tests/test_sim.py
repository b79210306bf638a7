"""Tests of scanner_sim: spec, HRF, phantom, synthesis (ground truth), writer, CLI."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import os
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from scanner_sim import cli
from scanner_sim.hrf import block_response, spm_hrf
from scanner_sim.phantom import default_affine, make_phantom
from scanner_sim.spec import Block, RunSpec, SpecError, load_spec
from scanner_sim.synth import MOTION_COLUMNS, SyntheticRun, apply_motion, read_truth_tsv
from scanner_sim.writer import FILES_TSV_COLUMNS, ScannerWriter
from tests.helpers import wait_until

EXAMPLE = Path(__file__).resolve().parents[1] / "scanner_sim" / "examples" / "acc_insula.toml"


@pytest.fixture(scope="module")
def phantom():
    # built once: loading and resampling the MNI templates takes ~2 s
    return make_phantom((64, 64, 36), 3.0)


def _vox(phantom, xyz_mm):
    ijk = np.linalg.inv(phantom.affine) @ np.r_[xyz_mm, 1.0]
    return tuple(np.round(ijk[:3]).astype(int))


def _spec(**kw) -> RunSpec:
    d = dict(
        tr_s=1.0,
        n_volumes=40,
        seed=5,
        blocks=[{"condition": "up", "onset_s": 5.0, "duration_s": 20.0}],
        regions=[{"name": "acc", "center_mm": [0, 30, 15], "radius_mm": 8, "amplitude_pct": 2.0, "condition": "up"}],
    )
    d.update(kw)
    return RunSpec.from_dict(d)


# --------------------------------------------------------------------------- spec
def test_example_spec_loads():
    spec = load_spec(EXAMPLE)
    assert spec.n_volumes == 100 and spec.motion is not None and spec.conditions == ("up", "count")
    assert RunSpec.from_dict(spec.to_dict()) == spec  # JSON round trip (spec.json)


@pytest.mark.parametrize(
    "patch, words",
    [
        ({"tr_s": -1}, ["'tr_s'", "-1", "> 0"]),
        ({"n_volumes": 0}, ["'n_volumes'", ">= 1"]),
        ({"bogus": 1}, ["'bogus'", "tr_s", "n_volumes"]),
        ({"ar1": 1.0}, ["'ar1'", "< 1"]),
        ({"motion": {"kind": "jerky"}}, ["'motion.kind'", "jerky", "random_walk"]),
        ({"motion": {"max_trans": 1}}, ["'max_trans'", "max_trans_mm"]),
        ({"spikes": [99]}, ["'spikes'", "[0, 39]"]),
        ({"shape": [64, 64]}, ["'shape'"]),
        ({"filename_template": "x_{series}.nii"}, ["'filename_template'", "{volume}"]),
        ({"regions": [{"name": "a", "center_mm": [0, 0, 0], "radius_mm": 5, "condition": "zzz"}]},
         ["'regions[0].condition'", "zzz", "up"]),
        ({"regions": [{"name": "a", "center_mm": [0, 0], "radius_mm": 5, "condition": "up"}]},
         ["'regions[0].center_mm'"]),
        ({"blocks": [{"condition": "up", "onset_s": 0, "duration_s": 0}]}, ["'blocks[0].duration_s'", "> 0"]),
    ],
)
def test_spec_errors_name_key_value_and_allowed(patch, words):
    d = dict(tr_s=1.0, n_volumes=40, blocks=[{"condition": "up", "onset_s": 5.0, "duration_s": 20.0}])
    d.update(patch)
    with pytest.raises(SpecError) as exc:
        RunSpec.from_dict(d)
    for w in words:
        assert w in str(exc.value), (w, str(exc.value))


def test_spec_missing_required_and_file_name():
    with pytest.raises(SpecError, match="'n_volumes'"):
        RunSpec.from_dict({"tr_s": 1.0})
    spec = RunSpec.from_dict({"tr_s": 2.0, "n_volumes": 3, "series": 7})
    assert spec.filename(0) == "rtsim_007_00001.nii"
    assert spec.shape == (64, 64, 36) and spec.voxel_mm == 3.0 and spec.motion is None


# --------------------------------------------------------------------------- HRF
def test_hrf_peak_and_integral():
    dt = 0.1
    h = spm_hrf(dt)
    t_peak = np.argmax(h) * dt
    assert 4.0 <= t_peak <= 6.0
    assert h.sum() * dt == pytest.approx(1.0, abs=1e-9)
    assert h.min() < 0  # the undershoot exists


def test_block_response_plateau_and_onset():
    blocks = [Block("up", 10.0, 40.0)]
    r = block_response(blocks, "up", tr_s=0.5, n_volumes=140)
    t = np.arange(140) * 0.5
    assert np.all(np.abs(r[t < 10.0]) < 1e-12)  # causal: nothing before onset
    assert np.abs(r[(t > 35) & (t < 50)] - 1.0).max() < 0.01  # plateau at 1
    assert r[(t > 55) & (t < 65)].min() < -0.05  # post-block undershoot
    assert np.all(block_response(blocks, "other", 0.5, 140) == 0)


# --------------------------------------------------------------------------- phantom
def test_phantom_tissue_contrast(phantom):
    data, gm, mask = phantom.data, phantom.gm, phantom.brain_mask
    assert data.dtype == np.float32 and data.shape == (64, 64, 36)
    assert np.allclose(phantom.affine, default_affine((64, 64, 36), 3.0))
    wm_level = np.median(data[mask & (gm < 0.05) & (data < 700)])
    vent = data[_vox(phantom, (4, 5, 15))], data[_vox(phantom, (-4, 5, 15))]  # lateral ventricles
    for v in vent:
        assert v > wm_level + 200
    for xyz in [(0, 30, 15), (37, 1, -1), (-37, 1, -1)]:  # ACC, right and left insula
        v = _vox(phantom, xyz)
        assert mask[v], xyz
        assert 620 < data[v] < 980, (xyz, data[v])
        # gm probability > 0.3 at some voxel within 3 mm
        near = gm[v[0] - 1 : v[0] + 2, v[1] - 1 : v[1] + 2, v[2] - 1 : v[2] + 2]
        assert near.max() > 0.3, xyz
    assert 0.2 < mask.mean() < 0.7  # a head, not a box
    assert np.all(data[~mask] == 20)


# --------------------------------------------------------------------------- synth
def test_truth_table(phantom):
    spec = _spec(spikes=[3], motion={"kind": "smooth"})
    run = SyntheticRun(spec, phantom=phantom)
    tr = run.truth
    assert tr.names[:4] == ("volume", "onset_s", "condition", "activation_acc")
    assert set(MOTION_COLUMNS) <= set(tr.names) and "spike" in tr.names
    assert len(tr) == 40
    assert list(tr["spike"].nonzero()[0]) == [3]
    assert tr["condition"][4] == "n/a" and tr["condition"][5] == "up" and tr["condition"][24] == "up"
    assert tr["condition"][25] == "n/a"
    np.testing.assert_allclose(tr["activation_acc"], 2.0 * block_response(spec.blocks, "up", 1.0, 40))
    assert np.all(tr.motion(0) == 0)
    assert np.abs(np.array([tr[c] for c in MOTION_COLUMNS[:3]])).max() <= 1.0 + 1e-12
    assert np.abs(np.array([tr[c] for c in MOTION_COLUMNS[3:]])).max() <= np.deg2rad(1.0) + 1e-12
    assert np.ptp(tr["trans_x"]) > 0.1  # it does move


def test_region_signal_matches_truth_without_noise(phantom):
    spec = _spec(noise_pct=0.0, drift_pct=0.0)
    run = SyntheticRun(spec, phantom=phantom)
    m = run.region_masks["acc"]
    assert 50 < m.sum() < 150 and np.all(phantom.brain_mask[m])
    ref_mean = run.reference[m].mean()
    act = run.truth["activation_acc"]
    assert act.max() > 1.9
    for i in (0, 10, 20, 30, 39):
        ratio = run.volume(i)[m].mean() / ref_mean
        assert ratio == pytest.approx(1 + act[i] / 100, abs=1e-4)
    # outside the region nothing changes
    np.testing.assert_array_equal(run.volume(20)[~m], run.reference[~m])


def test_translation_only_motion_equals_voxel_shift(phantom):
    spec = _spec(noise_pct=0.0, drift_pct=0.0, motion={"max_trans_mm": 3.0, "max_rot_deg": 0.0})
    run = SyntheticRun(spec, phantom=phantom)
    i = 17
    t = run.truth.motion(i)
    assert np.all(t[3:] == 0) and np.abs(t[:3]).max() > 0.5
    expected = ndimage.shift(run.clean_volume(i), t[:3] / 3.0, order=3, mode="nearest")
    np.testing.assert_allclose(run.volume(i), expected, atol=1e-2, rtol=1e-5)
    # the documented example: +3 mm trans_x on a 3 mm grid is one voxel towards +i
    moved = apply_motion(run.reference, run.affine, [3.0, 0, 0, 0, 0, 0])
    np.testing.assert_allclose(moved[1:], run.reference[:-1], atol=1e-3)


def test_rotation_convention_moves_points_by_R_p_plus_t():
    # a small Gaussian blob: its centroid must land at R c + t (world mm), R = Rz Ry Rx
    aff = default_affine((48, 48, 40), 2.0)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in (48, 48, 40)], indexing="ij"), -1)
    xyz = ijk @ aff[:3, :3].T + aff[:3, 3]
    c = np.array([20.0, 10.0, 15.0])
    blob = np.exp(-np.sum((xyz - c) ** 2, -1) / (2 * 3.0**2))
    params = [2.0, -1.0, 1.5, 0.05, -0.08, 0.1]
    moved = apply_motion(blob, aff, params)
    centroid = (moved[..., None] * xyz).sum((0, 1, 2)) / moved.sum()
    rx, ry, rz = params[3:]
    r_x = np.array([[1, 0, 0], [0, np.cos(rx), -np.sin(rx)], [0, np.sin(rx), np.cos(rx)]])
    r_y = np.array([[np.cos(ry), 0, np.sin(ry)], [0, 1, 0], [-np.sin(ry), 0, np.cos(ry)]])
    r_z = np.array([[np.cos(rz), -np.sin(rz), 0], [np.sin(rz), np.cos(rz), 0], [0, 0, 1]])
    expected = r_z @ r_y @ r_x @ c + np.array(params[:3])
    np.testing.assert_allclose(centroid, expected, atol=0.05)


def test_motion_volume_is_reference_resampled_with_truth(phantom):
    spec = _spec(noise_pct=0.0, drift_pct=0.0, motion={"kind": "random_walk", "max_rot_deg": 2.0})
    run = SyntheticRun(spec, phantom=phantom)
    i = 3  # before the block: the clean volume is the reference itself
    np.testing.assert_array_equal(run.clean_volume(i), run.reference.astype(np.float64))
    expected = apply_motion(run.reference, run.affine, run.truth.motion(i))
    np.testing.assert_allclose(run.volume(i), expected, atol=1e-2)
    assert np.abs(run.volume(i) - run.reference).max() > 50  # it really moved
    np.testing.assert_array_equal(run.volume(0), run.reference)  # volume 0 has zero motion


def test_noise_statistics_spike_and_determinism(phantom):
    spec = _spec(n_volumes=30, noise_pct=2.0, ar1=0.5, drift_pct=0.0, spikes=[12], blocks=[], regions=[])
    run = SyntheticRun(spec, phantom=phantom)
    vols = np.stack([run.volume(i) for i in range(30) if i != 12])
    noise = vols - run.reference
    mean_brain = run.reference[phantom.brain_mask].mean()
    assert noise.std() == pytest.approx(0.02 * mean_brain, rel=0.03)
    lag1 = np.mean(noise[1:11] * noise[:10]) / np.mean(noise[:11] ** 2)  # volumes 0..10, consecutive
    assert lag1 == pytest.approx(0.5, abs=0.03)
    spike_ratio = run.volume(12)[phantom.brain_mask].mean() / run.volume(11)[phantom.brain_mask].mean()
    assert spike_ratio == pytest.approx(1.05, abs=0.005)
    # same seed, fresh instance, random access order: bit-identical
    other = SyntheticRun(spec, phantom=phantom)
    for i in (20, 4, 29):
        np.testing.assert_array_equal(other.volume(i), run.volume(i))
    changed = SyntheticRun(dataclasses.replace(spec, seed=6), phantom=phantom)
    assert not np.array_equal(changed.volume(4), run.volume(4))


# --------------------------------------------------------------------------- writer
def _read_files_tsv(truth_dir: Path) -> list[dict[str, str]]:
    with open(truth_dir / "files.tsv", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert tuple(rows[0]) == FILES_TSV_COLUMNS
    return rows


class _SizeWatcher(threading.Thread):
    """Polls the export folder and records every (name, size) it sees."""

    def __init__(self, folder: Path):
        super().__init__(daemon=True)
        self.folder, self.seen, self.stop = folder, [], threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                for e in os.scandir(self.folder):
                    self.seen.append((e.name, e.stat().st_size))
            except FileNotFoundError:
                pass
            time.sleep(0.002)


@pytest.mark.parametrize("mode", ["chunked", "reopen", "atomic"])
def test_writer_modes_bytes_names_and_headers(phantom, tmp_path, mode):
    spec = _spec(tr_s=0.7, n_volumes=3, series=4)
    run = SyntheticRun(spec, phantom=phantom)
    export, truth = tmp_path / "export", tmp_path / "truth"
    watcher = _SizeWatcher(export)
    watcher.start()
    w = ScannerWriter(export, spec, mode=mode, n_chunks=4, chunk_delay_s=0.05, speed=3.5, recon_delay_s=0.02)
    summary = w.write_run(run, truth)
    watcher.stop.set()
    watcher.join()
    assert summary.n_written == 3 and not summary.aborted
    assert sorted(os.listdir(export)) == [f"rtsim_004_0000{k}.nii" for k in (1, 2, 3)]
    assert sorted(os.listdir(truth)) == sorted(
        ["truth.tsv", "files.tsv", "faults.tsv", "spec.json", "reference.nii.gz", "region-acc_mask.nii.gz"]
    )
    rows = _read_files_tsv(truth)
    finals = {}
    for i, row in enumerate(rows):
        path = Path(row["path"])
        assert path.parent == export.resolve() and path.name == spec.filename(i)
        blob = path.read_bytes()
        finals[path.name] = len(blob)
        assert int(row["n_bytes"]) == len(blob)
        assert hashlib.sha256(blob).hexdigest() == row["sha256"]
        img = nib.load(path)
        assert img.get_data_dtype() == np.int16 and isinstance(img, nib.Nifti1Image)
        assert img.header["pixdim"][4] == pytest.approx(0.7)
        assert img.header.get_xyzt_units() == ("mm", "sec")
        np.testing.assert_allclose(img.affine, run.affine)
        descrip = img.header["descrip"].item().decode()
        assert descrip == f"acq_time={float(row['t_acquired']):.3f}"
        np.testing.assert_array_equal(np.asarray(img.dataobj), np.round(run.volume(i)).astype(np.int16))
        assert float(row["t_acquired"]) < float(row["t_write_start"]) <= float(row["t_finished"])
    seen_final = [(n, s) for n, s in watcher.seen if n in finals]
    if mode == "atomic":
        # a file under its final name is always complete; partial data only under the hidden name
        assert all(s == finals[n] for n, s in seen_final)
        assert any(n.startswith(".") and n.endswith(".nii.part") for n, _ in watcher.seen)
    else:
        assert any(0 <= s < finals[n] for n, s in seen_final), "never saw a partial file"
    truth_tab = read_truth_tsv(truth / "truth.tsv")
    np.testing.assert_allclose(truth_tab["activation_acc"], run.truth["activation_acc"], rtol=1e-9)


def test_reopen_mode_partial_file_between_closes(phantom, tmp_path):
    spec = _spec(tr_s=0.5, n_volumes=2)
    run = SyntheticRun(spec, phantom=phantom)
    export = tmp_path / "export"
    target = export / spec.filename(0)
    sizes = []
    done = threading.Event()

    def reader():
        while not done.is_set():
            if target.exists():
                sizes.append(target.stat().st_size)
            time.sleep(0.003)

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    # 0.1 s between the chunks: the reader thread (polling every 3 ms) must run in two of the three gaps,
    # which a loaded machine could deny it for 50 ms gaps
    ScannerWriter(export, spec, mode="reopen", n_chunks=4, chunk_delay_s=0.1, speed=1.0).write_run(
        run, tmp_path / "truth"
    )
    done.set()
    th.join()
    final = target.stat().st_size
    partial = sorted({s for s in sizes if s < final})
    assert partial and len(partial) >= 2, sizes  # several distinct partial sizes


def test_writer_pacing(phantom, tmp_path):
    spec = _spec(tr_s=0.2, n_volumes=10, noise_pct=0.5)
    run = SyntheticRun(spec, phantom=phantom)
    summary = ScannerWriter(tmp_path / "e", spec, n_chunks=2, chunk_delay_s=0.005, speed=2.0,
                            recon_delay_s=0.01).write_run(run, tmp_path / "t")
    rows = _read_files_tsv(tmp_path / "t")
    fin = np.array([float(r["t_finished"]) for r in rows])
    start = np.array([float(r["t_write_start"]) for r in rows])
    acq = np.array([float(r["t_acquired"]) for r in rows])
    assert np.median(np.abs(np.diff(fin) - 0.1)) < 0.02
    np.testing.assert_allclose(np.diff(acq), 0.1, atol=1e-5)  # 6-decimal TSV of ~1.8e9 s
    assert np.median(start - (acq + 0.1 + 0.01)) < 0.02  # written one period + recon after acquisition
    assert summary.t0 == pytest.approx(acq[0], abs=1e-6)


def test_writer_stop_event_and_validation(phantom, tmp_path):
    spec = _spec(tr_s=0.1, n_volumes=40, noise_pct=0.0)
    run = SyntheticRun(spec, phantom=phantom)
    stop = threading.Event()
    # Stopped 0.5 s in: the first file is due 0.15 s after the writer's start (its set-up took 0.03 s here),
    # the 20th at 2.05 s; a loaded machine may delay the start or the timer's thread by a few hundred ms.
    threading.Timer(0.5, stop.set).start()
    summary = ScannerWriter(tmp_path / "e", spec, n_chunks=1).write_run(run, tmp_path / "t", stop_event=stop)
    assert summary.aborted and 1 <= summary.n_written < 20
    assert len(os.listdir(tmp_path / "e")) == summary.n_written
    assert len(_read_files_tsv(tmp_path / "t")) == summary.n_written
    with pytest.raises(ValueError, match="'mode'.*'chunked'"):
        ScannerWriter(tmp_path, spec, mode="fast")
    with pytest.raises(ValueError, match="'speed'"):
        ScannerWriter(tmp_path, spec, speed=0)


# --------------------------------------------------------------------------- CLI
def test_cli_bad_spec_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("tr_s = 1.0\nn_volumes = 5\nnoise_pc = 2\n")
    rc = cli.main(["synth", str(bad), "--export-dir", str(tmp_path / "e"), "--truth-dir", str(tmp_path / "t")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "'noise_pc'" in err and "noise_pct" in err and "Traceback" not in err
    assert not (tmp_path / "e").exists()
    rc = cli.main(["synth", str(tmp_path / "missing.toml"), "--export-dir", "e", "--truth-dir", "t"])
    assert rc == 2 and "not found" in capsys.readouterr().err


def test_cli_tiny_run(tmp_path, capsys):
    spec = tmp_path / "tiny.toml"
    spec.write_text(
        "tr_s = 0.5\nn_volumes = 5\nshape = [32, 32, 20]\nvoxel_mm = 6.0\n"
        "[[blocks]]\ncondition = 'up'\nonset_s = 1.0\nduration_s = 1.0\n"
        "[[regions]]\nname = 'acc'\ncenter_mm = [0, 30, 15]\nradius_mm = 8\ncondition = 'up'\n"
    )
    rc = cli.main(["synth", str(spec), "--export-dir", str(tmp_path / "e"), "--truth-dir", str(tmp_path / "t"),
                   "--speed", "10", "--mode", "atomic", "--n-chunks", "2", "--chunk-delay-s", "0"])
    out = capsys.readouterr().out
    assert rc == 0
    assert sorted(os.listdir(tmp_path / "e")) == [f"rtsim_001_0000{k}.nii" for k in range(1, 6)]
    assert "5 volumes written" in out
    assert nib.load(tmp_path / "e" / "rtsim_001_00003.nii").shape == (32, 32, 20)


@pytest.mark.parametrize("mode, expected_closes", [("reopen", 4), ("chunked", 1)])
def test_inotify_close_events_per_mode(phantom, tmp_path, mode, expected_closes):
    # what a watcher really sees: reopen closes the still-partial file once per chunk
    inotify = pytest.importorskip("watchdog.observers.inotify", reason="inotify needs Linux and watchdog")
    from watchdog.events import FileClosedEvent, FileSystemEventHandler

    spec = _spec(tr_s=0.3, n_volumes=1)
    run = SyntheticRun(spec, phantom=phantom)
    export = tmp_path / "export"
    export.mkdir()
    closes = []

    class Handler(FileSystemEventHandler):
        def on_closed(self, event):
            if isinstance(event, FileClosedEvent):  # close after write (IN_CLOSE_WRITE)
                closes.append(os.path.basename(event.src_path))

    obs = inotify.InotifyObserver()
    obs.schedule(Handler(), str(export))
    obs.start()
    try:
        ScannerWriter(export, spec, mode=mode, n_chunks=4, chunk_delay_s=0.02).write_run(run, tmp_path / "t")
        # inotify reports in order: once the handler has the close of a file written last, it has every close before it
        (export / "last").write_bytes(b"")
        assert wait_until(lambda: "last" in closes, 10)
    finally:
        obs.stop()
        obs.join()
    assert closes.count(spec.filename(0)) == expected_closes, closes


def test_scanner_sim_never_imports_rtnf():
    # scanner_sim is an independent producer: importing all of it must not pull in rtnf
    import subprocess
    import sys

    code = (
        "import sys, scanner_sim.cli, scanner_sim.synth, scanner_sim.writer, scanner_sim.phantom, scanner_sim.hrf;"
        "bad = [m for m in sys.modules if m == 'rtnf' or m.startswith('rtnf.')]; print(bad); sys.exit(1 if bad else 0)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    light = subprocess.run([sys.executable, "-c", "import sys, scanner_sim; print('nilearn' in sys.modules)"],
                           capture_output=True, text=True, timeout=60)
    assert light.stdout.strip() == "False"
