"""A model that cannot be trusted says so: most volumes censored -> t-map reduced or withheld, with a warning."""

from __future__ import annotations

import subprocess
import sys

from rtnf.apps.demo import read_tsv
from tests.helpers import make_config, synthetic_run_4d


def test_a_run_that_censors_most_volumes_says_its_t_map_cannot_be_trusted(tmp_path):
    synthetic_run_4d(tmp_path / "run.nii", 42, seed=4)
    # An FD threshold no real head meets: nearly every volume after the first is censored.
    cfg = make_config(tmp_path, {"model.whole_brain": True, "model.motion_regressors": 6,
                                 "quality.fd_threshold_mm": 0.000001, "quality.censor_action": "null"})
    proc = subprocess.run([sys.executable, "-m", "rtnf", "replay", str(cfg), str(tmp_path / "run.nii")],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    func = next((tmp_path / "out").rglob("func"))
    rows = read_tsv(next(func.glob("*_desc-rtnf_timeseries.tsv")))
    assert sum(r["censored"] == "1" for r in rows) >= 30
    log = read_tsv(next(func.glob("*_desc-rtnf_log.tsv")))
    messages = " | ".join(r["message"] for r in log)
    assert "t-map withheld" in messages or "reduced model" in messages, messages
    assert "no whole-brain t-map saved" in messages
    assert not list(func.glob("*_stat-t_statmap.nii.gz"))
