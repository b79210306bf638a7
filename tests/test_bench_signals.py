"""``rtnf bench pipeline --signals``: each built-in feedback signal runs on the synthetic run and is its own stage.

Speed is never asserted; what is checked is that every signal really ran (a value in the run's table,
not a refusal: the decoder on the run's own grid, the pattern map brought onto it) and that its time
appears as ``signal_<name>`` with one sample per volume.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys

import pytest

from rtnf.apps.bench.signals import SIGNALS, parse_signals


def test_parse_signals():
    assert parse_signals("decoder, pattern,decoder") == ("decoder", "pattern")
    assert parse_signals("all") == SIGNALS == ("connectivity", "ppi", "decoder", "pattern")
    with pytest.raises(argparse.ArgumentTypeError, match=r"unknown nope\. Allowed: connectivity, ppi, decoder"):
        parse_signals("decoder,nope")


def test_bench_pipeline_times_every_built_in_signal(tmp_path):
    from rtnf.apps.demo import read_tsv

    keep = tmp_path / "bench"
    proc = subprocess.run(
        # TR 0.5 s: the PPI's 60 s window (120 volumes) gives values from its 60th usable volume on. Every volume
        # rendered (--cycle 80): on this small grid a run cycling through 10 frames has most volumes censored
        # (DVARS), and censored volumes stay out of the windows.
        [sys.executable, "-m", "rtnf", "bench", "--json", "pipeline", "--grids", "32x32x20@6", "--volumes", "80",
         "--warmup", "2", "--cycle", "80", "--no-real", "--no-side-by-side", "--signals", "all", "--keep", str(keep)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    (run,) = out["runs"]
    assert "error" not in run, run
    assert run["status"] == "ended" and run["n_processed"] == 80
    for name in SIGNALS:
        stats = run["stages"][f"signal_{name}"]
        assert stats["n"] == 78 and math.isfinite(stats["median_ms"]) and stats["median_ms"] > 0, (name, stats)
        assert f"signal_{name}" in out["text"]
    rows = read_tsv(next(keep.rglob("*_desc-rtnf_timeseries.tsv")))
    for name in SIGNALS:
        values = [r[f"signal_{name}"] for r in rows]
        reasons = {r[f"signal_{name}_reason"] for r in rows}
        # values once each signal's window or running mean has filled; never a failure
        assert sum(v != "n/a" for v in values) >= 10, (name, reasons)
        assert not any("failed" in x for x in reasons), (name, reasons)
    assert all(0.0 <= float(r["signal_decoder"]) <= 1.0 for r in rows if r["signal_decoder"] != "n/a")
