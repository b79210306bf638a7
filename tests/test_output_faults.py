"""The output folder fills up mid-run: a loud alarm, the feedback goes on, no row is lost or doubled."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rtnf.config import load_config
from rtnf.apps.demo import Listener, Processes, wait_ready, free_address, read_tsv, sim_spec, write_toml
from rtnf.run.record import bids_prefix, func_dir
from tests.helpers import make_config

N = 40
CONFIG = {"session.subject": "full", "session.task": "nf", "scanner.n_volumes": N, "scanner.dummy_volumes": 0,
          "publish.preview": False, "output.dir": "outputs"}


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs for the outputs: a real 'no space left on device'."""
    mount = tmp_path / "outputs"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill up (needs root): {proc.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_full_output_disk_raises_the_alarm_and_loses_no_row(tmp_path, small_disk):
    address = free_address()
    cfg_path = make_config(tmp_path, CONFIG)
    cfg = load_config(cfg_path, {"publish.address": address})
    spec = tmp_path / "spec.toml"
    write_toml(sim_spec(cfg, seed=2), spec)
    listener = Listener([address])
    procs = Processes()
    logs = tmp_path / "logs"
    logs.mkdir()
    filler = small_disk / "filler.bin"
    try:
        procs.start("rtnf", [sys.executable, "-m", "rtnf", "run", str(cfg_path), "--create-export-dir", "--publish-address", address], logs)
        wait_ready(listener, procs, no_screen=True)
        procs.start("scanner_sim", [sys.executable, "-m", "scanner_sim", "synth", str(spec), "--export-dir",
                                    str(cfg.scanner.export_dir), "--truth-dir", str(tmp_path / "truth"),
                                    "--speed", "4"], logs)
        deadline = time.time() + 60
        while len(listener.of("volume")) < 8 and time.time() < deadline:
            listener.poll(0.1)
        # fill the disk to the last byte
        with open(filler, "wb", buffering=0) as f:
            for chunk in (65536, 4096, 256, 16, 1):  # to the last byte: no room left even for one row
                try:
                    while True:
                        f.write(b"\0" * chunk)
                except OSError:
                    pass
        while len(listener.of("volume")) < 20 and time.time() < deadline:
            listener.poll(0.1)
        os.remove(filler)  # space again
        while procs.procs["rtnf"].poll() is None and time.time() < deadline + 60:
            listener.poll(0.2)
        assert procs.procs["rtnf"].returncode == 0, (logs / "rtnf.log").read_text()
    finally:
        listener.close()
        procs.stop_all()
    feedback = listener.of("feedback")
    assert [f["index"] for f in feedback] == list(range(N)), "the feedback went on through the failure"
    alarms = [m for m in listener.of("log") if m["level"] == "ERROR" and "RECORDING FAILED" in m["message"]]
    assert len(alarms) == 1
    assert any("buffered rows written" in m["message"] for m in listener.of("log"))
    rows = read_tsv(func_dir(cfg) / f"{bids_prefix(cfg)}_desc-rtnf_timeseries.tsv")
    assert [int(r["index"]) for r in rows] == list(range(N)), "every row exactly once, in order"
    published = {f["index"]: f["value"] for f in feedback}
    for r in rows:
        v = published[int(r["index"])]
        assert r["feedback_value"] == ("n/a" if v is None else repr(v))


def _fill(path: Path) -> None:
    """Fill the disk holding ``path`` to the last byte."""
    with open(path, "wb", buffering=0) as f:
        for chunk in (65536, 4096, 256, 16, 1):
            try:
                while True:
                    f.write(b"\0" * chunk)
            except OSError:
                pass


def _recorder(tmp_path: Path, outputs: Path):
    from rtnf.run.record import RunRecorder

    path = make_config(tmp_path, CONFIG)
    cfg = load_config(path, {"output.dir": str(outputs)})
    return RunRecorder(cfg, path.read_text(), cfg.make_protocol(), ["acc"], "r"), cfg


def _volumes(n: int, shape=(8, 8, 4)):
    import numpy as np

    rng = np.random.default_rng(0)
    return [rng.normal(100, 5, shape).astype("float32") for _ in range(n)]


def test_received_volumes_resume_after_the_disk_was_full(tmp_path, small_disk):
    """Issue 15 point 3: the 4D NIfTI used to stop for good at the first failed write (0 of 38 volumes after a
    full tmpfs); the volumes the disk refused now wait in memory and are written once there is space again."""
    import json

    import nibabel as nib
    import numpy as np

    recorder, cfg = _recorder(tmp_path, small_disk)
    affine = np.eye(4)
    vols = _volumes(N)
    filler = small_disk / "filler.bin"
    _fill(filler)  # full before the first volume: not even the header fits
    for i in range(15):
        recorder.save_volume(i, vols[i], affine, N)
    os.remove(filler)
    for i in range(15, 25):
        recorder.save_volume(i, vols[i], affine, N)
    _fill(filler)  # full again mid-run
    for i in range(25, N):
        recorder.save_volume(i, vols[i], affine, N)
    os.remove(filler)
    recorder.close("ended")
    path = func_dir(cfg) / f"{bids_prefix(cfg)}_desc-rtnf_bold.nii"
    img = nib.load(path)
    assert img.shape == (8, 8, 4, N)
    np.testing.assert_array_equal(np.asarray(img.dataobj), np.stack(vols, axis=-1))
    side = json.loads(path.with_suffix(".json").read_text())
    assert "volumes_not_saved" not in side and side["dummies_removed"] is True


def test_received_volumes_the_disk_never_took_are_listed(tmp_path, small_disk, monkeypatch):
    """Volumes beyond the memory bound, or still refused at the end of the run, are zeros in the file and
    listed in its sidecar."""
    import json

    import nibabel as nib
    import numpy as np

    from rtnf.run.record import RunRecorder

    # 8 KiB volumes: larger than the slack of the file's last tmpfs page, so a full disk refuses each one
    monkeypatch.setattr(RunRecorder, "MAX_UNSAVED_BYTES", 5 * 8192)  # five volumes
    recorder, cfg = _recorder(tmp_path, small_disk)
    affine = np.eye(4)
    vols = _volumes(20, (16, 16, 8))
    for i in range(5):
        recorder.save_volume(i, vols[i], affine, 20)
    filler = small_disk / "filler.bin"
    _fill(filler)
    for i in range(5, 13):  # 8 refused; with volume 13 arriving, 5 are kept: 5, 6, 7, 8 are given up
        recorder.save_volume(i, vols[i], affine, 20)
    os.remove(filler)
    for i in range(13, 17):
        recorder.save_volume(i, vols[i], affine, 20)
    _fill(filler)
    for i in range(17, 20):  # refused until the end of the run
        recorder.save_volume(i, vols[i], affine, 20)
    filler.write_bytes(b"")  # room for the sidecar only
    _fill(small_disk / "filler2.bin")
    recorder.close("ended")
    path = func_dir(cfg) / f"{bids_prefix(cfg)}_desc-rtnf_bold.nii"
    side = json.loads(path.with_suffix(".json").read_text())
    assert side["volumes_not_saved"] == [5, 6, 7, 8, 17, 18, 19]
    data = np.asarray(nib.load(path).dataobj)
    assert data.shape[-1] == 17
    for i in range(17):
        expected = np.zeros_like(vols[i]) if i in (5, 6, 7, 8) else vols[i]
        np.testing.assert_array_equal(data[..., i], expected)
