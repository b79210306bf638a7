"""Issue 15: an output failure at the end of a run loses nothing else: rows, provenance, then maps, each reported."""

from __future__ import annotations

import json

from rtnf.config import load_config
from rtnf.apps.demo import read_tsv
from rtnf.run.record import bids_prefix, func_dir
from tests.helpers import make_config, pattern, run_processes

N = 24
CONFIG = {"session.subject": "end", "session.task": "nf", "scanner.n_volumes": N, "scanner.dummy_volumes": 0,
          "protocol.pattern": pattern(rest=6, regulate=6), "model.whole_brain": True, "publish.preview": False,
          "output.dir": "outputs"}


def test_statmap_that_cannot_be_saved_loses_no_row_and_is_reported(tmp_path):
    cfg = load_config(make_config(tmp_path, CONFIG))
    func, prefix = func_dir(cfg), bids_prefix(cfg)
    # a real failure of the last write: the statmap's path is taken by a folder
    statmap = func / f"{prefix}_desc-rtnf_stat-t_statmap.nii.gz"
    statmap.mkdir(parents=True)
    cfg, listener = run_processes(tmp_path, CONFIG, speed=8.0)  # asserts exit code 0

    rows = read_tsv(func / f"{prefix}_desc-rtnf_timeseries.tsv")
    assert [int(r["index"]) for r in rows] == list(range(N))
    provenance = json.loads((func / f"{prefix}_desc-rtnf_provenance.json").read_text())
    assert provenance["status"] == "ended" and provenance["n_rows"] == N
    assert (func / f"{prefix}_events.tsv").exists()
    # reported: the run's event log, the log topic and stderr
    log_text = (func / f"{prefix}_desc-rtnf_log.tsv").read_text()
    assert "t-map failed" in log_text, log_text
    assert any("t-map failed" in b["message"] for b in listener.of("log"))
    assert "t-map failed" in (tmp_path / "logs" / "rtnf.log").read_text()
    # the subscribers still learnt that the run ended
    assert [b["event"] for b in listener.of("run") if b.get("event") in ("end", "abort")] == ["end"]
