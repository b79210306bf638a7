"""Issue 15: replays write into their own derivatives folder, never into the live run's record."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from rtnf.apps.demo import read_tsv
from rtnf.run.record import bids_prefix, func_dir
from tests.helpers import run_processes
from tests.test_replay import CONFIG, N, _same_values


def _replay(cfg_path: Path, source: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rtnf", "replay", str(cfg_path), str(source), *extra],
                          capture_output=True, text=True, timeout=300)


def test_replay_of_rtnfs_own_4d_file_has_its_own_folder_and_equals_the_live_run(tmp_path):
    cfg, _ = run_processes(tmp_path, CONFIG, speed=8.0)
    func, prefix = func_dir(cfg), bids_prefix(cfg)
    cfg_path = tmp_path / "session.toml"
    live_path = func / f"{prefix}_desc-rtnf_timeseries.tsv"
    live_bytes = live_path.read_bytes()
    live = read_tsv(live_path)
    assert len(live) == N - 2
    bold = func / f"{prefix}_desc-rtnf_bold.nii"
    side = json.loads((func / f"{prefix}_desc-rtnf_bold.json").read_text())
    assert side["dummies_removed"] is True and side["n_dummy_volumes"] == 2

    # rtnf's own 4D file holds the kept volumes only: the replay knows, and equals the live run
    proc = _replay(cfg_path, bold)
    assert proc.returncode == 0, proc.stderr
    rel = func.relative_to(cfg.output.dir)
    replayed = read_tsv(cfg.output.dir / "replay" / rel / f"{prefix}_desc-rtnf_timeseries.tsv")
    _same_values(live, replayed)
    assert [r["acquisition"] for r in replayed] == [r["acquisition"] for r in live]

    # with overrides: a folder named by them, and the copied config shows them
    proc = _replay(cfg_path, bold, "--set", "feedback.smoothing_alpha=0.5")
    assert proc.returncode == 0, proc.stderr
    folder = cfg.output.dir / "replay-feedback.smoothing_alpha-0.5" / rel
    assert len(read_tsv(folder / f"{prefix}_desc-rtnf_timeseries.tsv")) == N - 2
    copied = (folder / f"{prefix}_desc-rtnf_config.toml").read_text()
    assert "# feedback.smoothing_alpha = 0.5" in copied
    assert copied.startswith(cfg_path.read_text())

    # the live run's record is untouched by both replays
    assert live_path.read_bytes() == live_bytes
