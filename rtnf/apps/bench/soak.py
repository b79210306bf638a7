"""Benchmark: a long run with random scanner faults, end to end, with real processes.

``scanner-sim`` writes a long run at a short TR (sped up) with randomly
injected faults (dropped, late, duplicated and out-of-order volumes, arrival
jitter); ``rtnf run`` processes it. The soak passes when no volume is lost or
recorded twice (every index exactly once; missing exactly where the
simulator dropped or delayed past the timeout) and processing latency's 99th
percentile in the last 200 volumes stays within 20 % of the first 200's.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ._stats import summarize_ms, table

NAME = "soak"
HELP = "long run (default 2000 volumes, TR 0.5 s) with random injected faults: nothing lost, latency stable"

CONFIG = """
[session]
subject = "soak"
task = "nf"

[scanner]
export_dir = "export"
tr_s = {tr}
n_volumes = {n}
missing_timeout_s = {timeout}

[protocol]
baseline = "rest"
pattern = {{ steps = [{{ condition = "rest", duration = 20 }}, {{ condition = "regulate", duration = 20 }}], repeat = {repeat} }}

[rois.acc]
center_mm = [0.0, 30.0, 15.0]
radius_mm = 8.0

[rois.linsula]
center_mm = [-37.0, 1.0, -1.0]
radius_mm = 6.0

[model]
motion_regressors = 6

[feedback]
roi = "acc"

[publish]
preview = false

[output]
dir = "outputs"
save_volumes = false
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``rtnf bench soak``."""
    parser.add_argument("--volumes", type=int, default=2000, help="run length (default 2000)")
    parser.add_argument("--tr", type=float, default=0.5, help="TR in seconds (default 0.5)")
    parser.add_argument("--speed", type=float, default=2.0, help="simulator speed-up (default 2)")
    parser.add_argument("--fault-rate", type=float, default=0.01, help="probability of each fault kind per volume")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--folder", type=Path, default=None, help="keep the run here (default: a temporary folder)")


def _faults(n: int, rate: float, tr: float, seed: int) -> tuple[list[str], dict[str, list[int]]]:
    rng = random.Random(seed)
    pick = lambda: sorted(v for v in range(10, n - 2) if rng.random() < rate)  # noqa: E731
    drop, dup, ooo, late = pick(), pick(), pick(), pick()
    # one fault per volume keeps what each should produce unambiguous
    taken: set[int] = set()
    kinds: dict[str, list[int]] = {}
    for name, vols in (("drop", drop), ("duplicate", dup), ("out_of_order", ooo), ("late", late)):
        kinds[name] = [v for v in vols if not taken & {v - 1, v, v + 1} and not taken.add(v)]
    args: list[str] = []
    if kinds["drop"]:
        args += ["--drop", ",".join(map(str, kinds["drop"]))]
    if kinds["duplicate"]:
        args += ["--duplicate", ",".join(map(str, kinds["duplicate"]))]
    if kinds["out_of_order"]:
        args += ["--out-of-order", ",".join(map(str, kinds["out_of_order"]))]
    for v in kinds["late"]:
        args += ["--late", f"{v}:{0.6 * tr}"]  # arrives after the next volume, well within the timeout
    args += ["--jitter-s", f"{0.1 * tr}"]
    return args, kinds


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the soak; returns its checks, latency figures and a text report."""
    from rtnf.config import load_config
    from rtnf.apps.demo import Listener, Processes, free_address, read_tsv, sim_spec, wait_ready, write_toml
    from rtnf.run.outputs import TIMESERIES, output_path

    folder = args.folder or Path(tempfile.mkdtemp(prefix="rtnf-soak-"))
    folder.mkdir(parents=True, exist_ok=True)
    n = args.volumes
    address = free_address()
    timeout = 3 * args.tr / args.speed + 0.5
    cfg_path = folder / "soak.toml"
    cfg_path.write_text(CONFIG.format(tr=args.tr, n=n, timeout=timeout, repeat=max(1, n // 40)))
    cfg = load_config(cfg_path, {"publish.address": address})
    spec_path = folder / "spec.toml"
    write_toml(sim_spec(cfg, seed=args.seed), spec_path)
    fault_args, kinds = _faults(n, args.fault_rate, args.tr, args.seed)
    procs = Processes()
    logs = folder / "logs"
    logs.mkdir(exist_ok=True)
    listener = Listener([address])
    t0 = time.time()
    try:
        procs.start("rtnf", [sys.executable, "-m", "rtnf", "run", str(cfg_path), "--address", address,
                             "--overwrite", "--create-export-dir"], logs)
        wait_ready(listener, procs, no_screen=True)
        procs.start("scanner_sim", [sys.executable, "-m", "scanner_sim", "synth", str(spec_path), "--export-dir",
                                    str(cfg.scanner.export_dir), "--truth-dir", str(folder / "truth"),
                                    "--speed", str(args.speed), *fault_args], logs)
        while procs.procs["rtnf"].poll() is None:
            listener.poll(0.5)
            listener.messages.clear()  # a long run: keep memory flat, the table is the record
    finally:
        listener.close()
        procs.stop_all()
    rows = read_tsv(output_path(cfg, TIMESERIES))
    indices = [int(r["index"]) for r in rows]
    missing = sorted(int(r["index"]) for r in rows if r["missing"] == "1")
    kept = [r for r in rows if r["missing"] == "0"]
    # detect -> published includes the wait for a dropped or late volume (up to the missing
    # timeout, by design); read -> published is the pipeline's own work, the measure of drift.
    total = np.array([float(r["t_published"]) - float(r["t_detected"]) for r in kept])
    work = np.array([float(r["t_published"]) - float(r["t_read"]) for r in kept])
    rows_out = []
    for label, series in (("detect->published", total), ("read->published", work)):
        for part, values in (("first 200", series[:200]), ("last 200", series[-200:]), ("all", series)):
            rows_out.append({"latency": label, "volumes": part, **summarize_ms(values)})
    first_w, last_w = summarize_ms(work[:200]), summarize_ms(work[-200:])
    checks = {
        "every_volume_once_in_order": indices == list(range(n)),
        "missing_equals_dropped": missing == kinds["drop"],
        "work_p99_last200_within_20pct_of_first200": last_w["p99_ms"] <= 1.2 * first_w["p99_ms"],
    }
    text = (
        f"soak: {n} volumes, TR {args.tr} s at speed x{args.speed:g}, {time.time() - t0:.0f} s, folder {folder}\n"
        f"faults injected: " + ", ".join(f"{k} {len(v)}" for k, v in kinds.items()) + f", jitter {0.1 * args.tr:g} s\n"
        + table(rows_out, ["latency", "volumes", "n", "median_ms", "p95_ms", "p99_ms", "max_ms"])
        + "\nchecks: " + ", ".join(f"{k}={'PASS' if v else 'FAIL'}" for k, v in checks.items())
    )
    return {"stage": NAME, "checks": checks, "faults": kinds, "missing": missing, "latency": rows_out, "text": text}
