"""Volumes that fail: one line each, the run goes on, and a run without one usable volume fails.

A processing exception costs its volume (missing, with a one-line reason in
the table), one warning line and no traceback (the first goes to the debug
log). A run in which every volume fails, or none arrives, ends with the
alarm "no_usable_volume" on the log topic and exit code 1 — never
"0 processed, exit 0". A motion.reference on another grid stops a live run
at its first volume with one message and exit code 2.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from rtnf.config import load_config
from rtnf.apps.demo import Listener, free_address, read_tsv
from rtnf.run.pipeline import VolumeProcessor
from rtnf.run.record import bids_prefix, func_dir
from rtnf.apps.replay import ReplayFeeder
from rtnf.run.session import NO_USABLE_VOLUME, run_session
from tests.helpers import drain, make_config, pattern, replay_func_dir, synthetic_run_4d

N = 14  # 2 dummies + 12 kept volumes
CONFIG = {"session.subject": "fail", "session.task": "nf", "scanner.n_volumes": N,
          "protocol.pattern": pattern(rest=3, regulate=3), "output.dir": "outputs"}
BLANK_REASON = "processing error: ValueError: The brain mask holds 0 voxels"


@pytest.fixture(scope="module")
def run4d(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    """A synthetic run as one 4D NIfTI (dummies included): (path, data, affine)."""
    path = tmp_path_factory.mktemp("run") / "run_bold.nii.gz"
    data, affine = synthetic_run_4d(path, N)
    return path, data, affine


def _table(cfg, replayed: bool = False) -> list[dict[str, str]]:
    folder = replay_func_dir(cfg) if replayed else func_dir(cfg)
    return read_tsv(folder / f"{bids_prefix(cfg)}_desc-rtnf_timeseries.tsv")


def _event_log(cfg, replayed: bool = False) -> str:
    folder = replay_func_dir(cfg) if replayed else func_dir(cfg)
    return (folder / f"{bids_prefix(cfg)}_desc-rtnf_log.tsv").read_text()


def _replay(cfg_path: Path, source: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rtnf", "replay", str(cfg_path), str(source), *extra],
                          capture_output=True, text=True, timeout=300)


def _assert_no_usable_volume(stderr: str) -> None:
    assert "Traceback" not in stderr, stderr
    alarms = [line for line in stderr.splitlines() if "NO USABLE VOLUME" in line]
    assert len(alarms) == 1 and " ERROR " in alarms[0], stderr


# ---------------------------------------------------------------- in-process


def test_a_volume_whose_processing_raises_costs_that_volume_only(tmp_path, run4d, monkeypatch, caplog):
    source = run4d[0]
    cfg = load_config(make_config(tmp_path, CONFIG), {"publish.address": "inproc://rtnf-failed"})
    process = VolumeProcessor.process

    def failing(self, index, acquisition, arrival):
        if index in (4, 7):
            raise RuntimeError(f"boom at {index}\n  second line")
        return process(self, index, acquisition, arrival)

    monkeypatch.setattr(VolumeProcessor, "process", failing)
    caplog.set_level(logging.DEBUG, logger="rtnf")
    def feeder(export, put) -> ReplayFeeder:
        return ReplayFeeder(source, export, put, 0.0, cfg.scanner.first_volume_number)

    result = run_session(cfg, "", feeder_factory=feeder)
    assert result.ok and (result.n_processed, result.n_missing, result.n_errors) == (N - 4, 2, 2)
    rows = _table(cfg)
    assert [r["index"] for r in rows if r["missing"] == "1"] == ["4", "7"]
    assert rows[4]["feedback_reason"] == "processing error: RuntimeError: boom at 4 second line"
    assert rows[4]["file"] == source.name and rows[5]["missing"] == "0"
    warnings = [r for r in caplog.records if "could not be processed" in r.getMessage()]
    assert [r.levelno for r in warnings] == [logging.WARNING, logging.WARNING]
    assert all(r.exc_info is None and "\n" not in r.getMessage() for r in warnings)
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1 and tracebacks[0].levelno == logging.DEBUG  # the first one, for the debug log
    assert not any(getattr(r, "alarm", None) == NO_USABLE_VOLUME for r in caplog.records)


# ---------------------------------------------------------------- real processes


def test_replay_in_which_every_volume_fails_exits_1_with_one_alarm(tmp_path, run4d):
    _, data, affine = run4d
    blank = tmp_path / "blank_bold.nii.gz"  # a scanner that exported empty images
    nib.save(nib.Nifti1Image(np.zeros_like(data), affine), blank)
    cfg_path = make_config(tmp_path, CONFIG)
    proc = _replay(cfg_path, blank)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    _assert_no_usable_volume(proc.stderr)
    failures = [line for line in proc.stderr.splitlines() if "could not be processed" in line]
    assert len(failures) == N - 2 and all(BLANK_REASON in line for line in failures)  # one line per volume
    assert "ended, 0 volumes, 12 missing" in proc.stdout
    cfg = load_config(cfg_path)
    rows = _table(cfg, replayed=True)
    assert len(rows) == N - 2
    assert all(r["missing"] == "1" and r["feedback_reason"].startswith(BLANK_REASON) for r in rows)
    assert "NO USABLE VOLUME" in _event_log(cfg, replayed=True)


def test_replay_of_a_folder_without_one_readable_volume_exits_1(tmp_path):
    export = tmp_path / "broken"
    export.mkdir()
    for n in range(1, N + 1):
        (export / f"vol_{n:04d}.nii").write_bytes(b"\x00garbage" * 1000)
    cfg_path = make_config(tmp_path, CONFIG)
    proc = _replay(cfg_path, export)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    _assert_no_usable_volume(proc.stderr)
    assert "no volume of the run arrived" in proc.stderr
    assert _table(load_config(cfg_path), replayed=True) == []


def _write_volumes(export: Path, data: np.ndarray, affine: np.ndarray) -> None:
    """Write one NIfTI per volume under a hidden name, then rename it: as a scanner's export would."""
    for t in range(data.shape[3]):
        tmp = export / f".vol_{t + 1:04d}.nii"
        nib.save(nib.Nifti1Image(data[..., t], affine), tmp)
        os.replace(tmp, export / f"vol_{t + 1:04d}.nii")
        time.sleep(0.05)


def _live_run(tmp_path: Path, overrides: dict, data: np.ndarray, affine: np.ndarray):
    """`rtnf run` as a process fed volume files; return (returncode, stderr, listener, cfg)."""
    address = free_address()
    cfg_path = make_config(tmp_path, {**CONFIG, **overrides})
    cfg = load_config(cfg_path)
    Path(cfg.scanner.export_dir).mkdir()
    listener = Listener([address])
    stderr_path = tmp_path / "rtnf.err"
    with open(stderr_path, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "rtnf", "run", str(cfg_path), "--create-export-dir", "--publish-address", address],
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        listener.wait_for(lambda topic, body: topic == "heartbeat", 90, "rtnf's first heartbeat")
        _write_volumes(Path(cfg.scanner.export_dir), data, affine)
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline:
            listener.poll(0.2)
        drain(listener)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        listener.close()
    return proc.returncode, stderr_path.read_text(), listener, cfg


def test_live_run_in_which_every_volume_fails_exits_1_with_the_alarm_on_the_log_topic(tmp_path, run4d):
    _, data, affine = run4d
    code, stderr, listener, cfg = _live_run(tmp_path, {}, np.zeros_like(data), affine)
    assert code == 1, stderr
    _assert_no_usable_volume(stderr)
    alarms = [b for b in listener.of("log") if b.get("alarm") == NO_USABLE_VOLUME]
    assert len(alarms) == 1 and alarms[0]["ok"] is False and alarms[0]["level"] == "ERROR"
    assert "12 volumes missing" in alarms[0]["message"] and BLANK_REASON in alarms[0]["message"]
    end = [b for b in listener.of("run") if b.get("event") in ("end", "abort")]
    assert end and end[-1]["event"] == "end" and end[-1]["reason"].startswith("no usable volume")
    rows = _table(cfg)
    assert len(rows) == N - 2 and all(r["missing"] == "1" for r in rows)


def test_live_run_with_a_reference_on_another_grid_stops_at_the_first_volume(tmp_path, run4d):
    _, data, affine = run4d
    shifted = affine.copy()
    shifted[:3, 3] += [0.0, 9.0, 0.0]
    nib.save(nib.Nifti1Image(data[..., 2], shifted), tmp_path / "template.nii")
    code, stderr, listener, cfg = _live_run(tmp_path, {"motion.reference": "template.nii"}, data, affine)
    assert code == 2, stderr
    assert "Traceback" not in stderr and "could not be processed" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if "template.nii" in line]
    assert len(errors) == 1, stderr
    assert errors[0].startswith("rtnf run: config error: invalid value for 'motion.reference': ")
    assert "field of view shifted by (0, 9, 0) mm" in errors[0] and "vol_0003.nii" in errors[0]
    # the operator's console learns it too, and why the run stopped
    assert any("motion.reference" in b["message"] for b in listener.of("log"))
    end = [b for b in listener.of("run") if b.get("event") in ("end", "abort")]
    assert end and end[-1]["event"] == "abort" and "motion.reference" in end[-1]["reason"]
    assert _table(cfg) == []
