"""Replay equals live; a run killed mid-way resumes with every volume once and the same values."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from rtnf.config import load_config
from rtnf.apps.demo import Listener, Processes, wait_ready, free_address, read_tsv, sim_spec, write_toml
from rtnf.run.record import bids_prefix, func_dir
from tests.helpers import make_config, pattern, run_processes, wait_until

N = 30
CONFIG = {"session.subject": "replay", "session.task": "nf", "scanner.n_volumes": N,
          "protocol.pattern": pattern(rest=7, regulate=7), "output.dir": "outputs"}

TIMING = {"t_acquired", "t_detected", "t_read", "t_preprocessed", "t_modelled", "t_published", "late"}


def _table(cfg, output_dir: Path | None = None) -> list[dict[str, str]]:
    """The live run's table, or a replay's under ``output_dir`` (in its own folder ``replay``)."""
    rel = Path(func_dir(cfg)).relative_to(cfg.output.dir)
    root = func_dir(cfg) if output_dir is None else output_dir / "replay" / rel
    return read_tsv(root / f"{bids_prefix(cfg)}_desc-rtnf_timeseries.tsv")


def _same_values(a: list[dict[str, str]], b: list[dict[str, str]]) -> None:
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        for column in ra:
            if column not in TIMING and column != "file":
                assert ra[column] == rb[column], (ra["index"], column, ra[column], rb[column])


def _replay(cfg_path: Path, sources: list[Path], out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rtnf", "replay", str(cfg_path), *map(str, sources), "--output-dir", str(out), *extra],
        capture_output=True, text=True, timeout=300,
    )


def test_replay_of_a_folder_and_of_a_4d_nifti_equal_the_live_run(tmp_path):
    cfg, _ = run_processes(tmp_path, CONFIG, speed=8.0)
    live = _table(cfg)
    assert len(live) == N - 2
    cfg_path = tmp_path / "session.toml"
    # the received volumes are kept as one 4D NIfTI, exactly as read
    bold = nib.load(func_dir(cfg) / f"{bids_prefix(cfg)}_desc-rtnf_bold.nii")
    files = sorted(Path(cfg.scanner.export_dir).glob("*.nii"))
    assert bold.shape[3] == N - 2 and bold.header.get_zooms()[3] == 2.0
    np.testing.assert_allclose(bold.affine, nib.load(files[0]).affine, atol=1e-4)
    for i in (0, 13, N - 3):
        np.testing.assert_array_equal(np.asarray(bold.dataobj[..., i]), np.asarray(nib.load(files[i + 2]).dataobj))

    proc = _replay(cfg_path, [cfg.scanner.export_dir], tmp_path / "replayed")
    assert proc.returncode == 0, proc.stderr
    _same_values(live, _table(cfg, tmp_path / "replayed"))

    # the same volumes as one 4D NIfTI (dummies included, as a scanner's run file)
    files = sorted(Path(cfg.scanner.export_dir).glob("*.nii"))
    first = nib.load(files[0])
    data = np.stack([np.asarray(nib.load(f).dataobj) for f in files], axis=-1)
    run4d = tmp_path / "run_bold.nii.gz"
    nib.save(nib.Nifti1Image(data, first.affine), run4d)
    proc = _replay(cfg_path, [run4d], tmp_path / "replayed4d", "--pace", "tr", "--speed", "50")
    assert proc.returncode == 0, proc.stderr
    _same_values(live, _table(cfg, tmp_path / "replayed4d"))


def test_parallel_replays_with_overrides(tmp_path):
    cfg, _ = run_processes(tmp_path, CONFIG, speed=8.0)
    cfg_path = tmp_path / "session.toml"
    export = cfg.scanner.export_dir
    proc = _replay(cfg_path, [export, export], tmp_path / "par", "--jobs", "2", "--set", "feedback.smoothing_alpha=0.5")
    assert proc.returncode == 0, proc.stderr
    func = tmp_path / "par" / "replay-feedback.smoothing_alpha-0.5" / "sub-replay" / "ses-01" / "func"
    run1 = read_tsv(func / "sub-replay_ses-01_task-nf_run-1_desc-rtnf_timeseries.tsv")
    run2 = read_tsv(func / "sub-replay_ses-01_task-nf_run-2_desc-rtnf_timeseries.tsv")
    _same_values(run1, run2)
    # the override took effect: smoothed feedback differs from the live run's
    live = _table(cfg)
    assert any(a["feedback_signal"] != b["feedback_signal"] for a, b in zip(live, run1) if a["feedback_signal"] != "n/a")


def test_killed_run_resumes_with_every_volume_once_and_the_same_values(tmp_path):
    address = free_address()
    cfg_path = make_config(tmp_path, CONFIG)
    cfg = load_config(cfg_path, {"publish.address": address})
    spec_path = tmp_path / "spec.toml"
    write_toml(sim_spec(cfg, seed=4), spec_path)
    table_path = func_dir(cfg) / f"{bids_prefix(cfg)}_desc-rtnf_timeseries.tsv"
    procs = Processes()
    logs = tmp_path / "logs"
    logs.mkdir()
    listener = Listener([address])
    run_cmd = [sys.executable, "-m", "rtnf", "run", str(cfg_path), "--create-export-dir", "--publish-address", address]
    try:
        procs.start("rtnf", run_cmd, logs)
        wait_ready(listener, procs, no_screen=True)
        procs.start("scanner_sim", [sys.executable, "-m", "scanner_sim", "synth", str(spec_path), "--export-dir",
                                    str(cfg.scanner.export_dir), "--truth-dir", str(tmp_path / "truth"),
                                    "--speed", "4"], logs)
        deadline = time.time() + 60
        while len(listener.of("volume")) < 10 and time.time() < deadline:
            listener.poll(0.1)
        os.kill(procs.procs["rtnf"].pid, signal.SIGKILL)  # no clean-up of any kind
        procs.procs["rtnf"].wait(10)
        rows_at_kill = len(read_tsv(table_path))
        assert 8 <= rows_at_kill < N - 2
        # volumes keep arriving while rtnf is down
        export = Path(cfg.scanner.export_dir)
        files_at_kill = len(list(export.glob("*.nii")))
        assert wait_until(lambda: len(list(export.glob("*.nii"))) >= min(files_at_kill + 3, N), 60)
        procs.start("rtnf2", run_cmd + ["--resume"], logs)
        procs.procs["rtnf2"].wait(120)
        assert procs.procs["rtnf2"].returncode == 0, (logs / "rtnf2.log").read_text()
    finally:
        listener.close()
        procs.stop_all()
    resumed = read_tsv(table_path)
    assert [int(r["index"]) for r in resumed] == list(range(N - 2)), "every volume exactly once, in order"
    assert "resume:" not in (logs / "rtnf2.log").read_text(), "re-processed volumes differ from their recorded rows"
    # an uninterrupted run on the same files: a replay
    proc = _replay(cfg_path, [cfg.scanner.export_dir], tmp_path / "uninterrupted")
    assert proc.returncode == 0, proc.stderr
    _same_values(_table(cfg, tmp_path / "uninterrupted"), resumed)


def test_replays_on_a_local_dask_cluster(tmp_path):
    """Studies with many runs: the replays go to a Dask cluster given by its scheduler address."""
    import pytest

    distributed = pytest.importorskip("distributed", reason="dask's distributed package (extra 'cluster')")
    from rtnf.apps.replay import ReplayJob, replay_many

    cfg, _ = run_processes(tmp_path, CONFIG, speed=8.0)
    cfg_path = tmp_path / "session.toml"
    jobs = [
        ReplayJob(cfg_path, Path(cfg.scanner.export_dir), {"output.dir": str(tmp_path / "dask"), "session.run": k})
        for k in (1, 2)
    ]
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  host="127.0.0.1") as cluster:
        results = replay_many(jobs, dask_address=cluster.scheduler_address)
    assert [r["status"] for r in results] == ["ended", "ended"]
    live = _table(cfg)
    func = tmp_path / "dask" / "replay" / "sub-replay" / "ses-01" / "func"
    for k in (1, 2):
        _same_values(live, read_tsv(func / f"sub-replay_ses-01_task-nf_run-{k}_desc-rtnf_timeseries.tsv"))
