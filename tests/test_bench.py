"""Smoke test of ``rtnf bench pipeline``: a tiny run completes and reports plausible numbers (speed is never asserted)."""

from __future__ import annotations

import json
import math
import subprocess
import sys


def test_bench_pipeline_tiny_run_reports_every_stage(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "rtnf", "bench", "--json", "pipeline", "--grids", "32x32x20@6", "--volumes", "20",
         "--warmup", "2", "--cycle", "10", "--no-real", "--no-side-by-side", "--keep", str(tmp_path / "bench")],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["stage"] == "pipeline" and isinstance(out["text"], str)
    (run,) = out["runs"]
    assert "error" not in run, run
    assert run["status"] == "ended" and run["n_processed"] == 20 and run["n_missing"] == 0
    for key in ("start_median_ms", "end_median_ms", "peak_rss_mb", "rss_start_mb", "rss_end_mb", "first_volume_ms"):
        assert math.isfinite(run[key]) and run[key] > 0, (key, run[key])
    for stage in ("read", "decode", "preprocess", "realign", "model", "glm", "feedback", "processing", "send", "record"):
        stats = run["stages"][stage]
        assert stats["n"] == 18, (stage, stats)
        for k in ("median_ms", "p95_ms", "p99_ms"):
            assert math.isfinite(stats[k]) and stats[k] > 0, (stage, k, stats[k])
        assert stats["median_ms"] <= stats["p95_ms"] <= stats["p99_ms"] <= stats["max_ms"]
    # detection is measured against the producer's close of the file: finite, and well under a second
    assert abs(run["stages"]["detect"]["median_ms"]) < 1000
    # the processing latency is the sum of its stages
    st = run["stages"]
    parts = sum(st[s]["median_ms"] for s in ("read", "preprocess", "model", "publish"))
    assert 0.5 * parts <= st["processing"]["median_ms"] <= 2 * parts + 1
    assert "processing latency" in out["text"]


def test_benches_find_the_shared_real_series_beside_the_checkout():
    """Regression: after the move to rtnf/apps/bench the default data path pointed inside the checkout, so
    rtnf bench pipeline and read silently left out the real series."""
    from rtnf.apps.bench import SHARED_DATA, e2e, pipeline, read
    from tests.helpers import SHARED_DATA as expected

    assert SHARED_DATA == expected
    assert pipeline._DEFAULT_DATA == read._DEFAULT_DATA == e2e._DEFAULT_DATA == expected
