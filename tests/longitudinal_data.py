"""A small simulated study recorded by rtnf: participants x sessions x runs in one derivatives dataset.

Shared by the shaping tests (``tests/test_shaping.py``) and the longitudinal
report's (``tests/test_longitudinal_report.py``). Each run is a short
scanner-sim series replayed through :func:`rtnf.run.session.run_session` as
fast as possible (the code ``rtnf run`` and ``rtnf replay`` run), so the
tables are what a live study records. The ROI's true activation grows from
session to session (a participant who learns), so the report has a trend to
find; the truth stays beside each simulated run.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.helpers import make_config, pattern

TR = 2.0
N_KEPT = 42  # rest 6, regulate 6, three times, then rest 6 (the last block is scored within the run)
_ADDRESS = itertools.count()


@dataclass(frozen=True)
class RecordedStudyRun:
    """One run of the simulated study: its labels, its config and its recorded table."""

    subject: str
    session: str
    task: str
    run: int
    feedback: bool
    amplitude_pct: float
    timeseries: Path


def record_run(
    root: Path,
    subject: str,
    session: str,
    run: int,
    *,
    task: str = "nf",
    feedback: bool = True,
    amplitude_pct: float = 1.5,
    seed: int = 0,
    extra: dict[str, Any] | None = None,
    resume: bool = False,
) -> RecordedStudyRun:
    """Simulate one run and record it through rtnf into ``root / "out"`` (the study's derivatives dataset).

    ``resume``: continue a recorded run after a crash (``rtnf run --resume``), from the same simulated series.
    """
    from rtnf.apps.demo import sim_spec
    from rtnf.apps.replay import ReplayFeeder
    from rtnf.config import load_config
    from rtnf.run.session import run_session
    from scanner_sim.generate import generate_run

    folder = root / f"sub-{subject}_ses-{session}_task-{task}_run-{run}"
    folder.mkdir(parents=True, exist_ok=True)
    overrides: dict[str, Any] = {
        "session.subject": subject, "session.session": session, "session.task": task, "session.run": run,
        "scanner.n_volumes": N_KEPT, "scanner.dummy_volumes": 0, "scanner.format": "nifti",
        "scanner.export_dir": str(folder / "export"),
        "protocol.pattern": pattern(rest=6 * TR, regulate=6 * TR, repeat=3),
        "protocol.units": "seconds",
        "feedback.enabled": feedback, "feedback.hemodynamic_lag_s": 4.0, "feedback.min_baseline_volumes": 2,
        "output.save_volumes": False, "output.dir": str(root / "out"),
        "publish.address": f"inproc://rtnf-test-study-{next(_ADDRESS)}", "publish.preview": False,
        **(extra or {}),
    }
    cfg_path = make_config(folder, overrides)
    cfg = load_config(cfg_path)
    g = generate_run(sim_spec(cfg, amplitude_pct=amplitude_pct, noise_pct=0.6, seed=seed), folder / "sim")

    def feeder(export, put):
        return ReplayFeeder(g.export_dir, export, put, 0.0, cfg.scanner.first_volume_number)

    result = run_session(cfg, cfg_path.read_text(encoding="utf-8"), feeder_factory=feeder, resume=resume)
    assert result.ok, result
    return RecordedStudyRun(subject, session, task, run, feedback, amplitude_pct, Path(result.timeseries))


def record_study(
    root: Path,
    subjects: tuple[str, ...] = ("01", "02"),
    sessions: tuple[str, ...] = ("01", "02"),
    feedback_runs: int = 2,
    transfer: bool = True,
    extra: dict[str, Any] | None = None,
) -> list[RecordedStudyRun]:
    """Every participant's sessions in order: ``feedback_runs`` feedback runs then a transfer run (no feedback).

    The true activation is 1.0 % in the first session and 0.8 % more in each
    later one; seeds differ per run.
    """
    runs = []
    seed = 100
    for subject in subjects:
        for k, session in enumerate(sessions):
            amplitude = 1.0 + 0.8 * k
            for run in range(1, feedback_runs + 1):
                seed += 1
                runs.append(record_run(root, subject, session, run, amplitude_pct=amplitude, seed=seed, extra=extra))
            if transfer:
                seed += 1
                runs.append(record_run(root, subject, session, 1, task="transfer", feedback=False,
                                       amplitude_pct=amplitude, seed=seed, extra=extra))
    return runs


def read_rows(tsv: Path) -> list[dict[str, str]]:
    """A recorded table's rows (every value as written)."""
    import csv

    with open(tsv, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def column(rows: list[dict[str, str]], name: str) -> "np.ndarray":
    """A numeric column (NaN for n/a)."""
    import math

    import numpy as np

    return np.array([math.nan if r[name] == "n/a" else float(r[name]) for r in rows])


def recompute_run(tsv: Path, lag: int, roi: str = "acc") -> dict[str, Any]:
    """Blocks, success, PSC, FD and tSNR of one recorded table, with NumPy only (not the report's code).

    ``lag`` is the hemodynamic lag in volumes: volume i takes the block and
    condition of volume i - lag. Each non-rest block's change of the feedback
    signal from the preceding rest block (usable volumes only, every block an
    "increase" block) is its change toward the goal; > 0 is a success.
    """
    import math

    import numpy as np

    rows = read_rows(tsv)
    n = len(rows)
    usable = np.array([r["missing"] == "0" and r["censored"] == "0" for r in rows])
    block = [int(r["block"]) for r in rows]
    cond = [r["condition"] for r in rows]
    shifted_block = [block[i - lag] if i >= lag else None for i in range(n)]
    shifted_cond = [cond[i - lag] if i >= lag else None for i in range(n)]
    signal = column(rows, "feedback_signal")

    def mean_where(values, mask):
        v = values[mask & np.isfinite(values)]
        return float(v.mean()) if v.size else math.nan

    toward, success, baseline = [], [], None
    for b in dict.fromkeys(block):
        c = cond[block.index(b)]
        if c == "rest":
            baseline = b
            continue
        in_block = np.array([s == b for s in shifted_block]) & usable
        ref = np.array([s == baseline for s in shifted_block]) & usable
        d = mean_where(signal, in_block) - mean_where(signal, ref)
        toward.append(d)
        success.append(d > 0)
    psc = column(rows, f"{roi}_psc")
    clean = column(rows, f"{roi}_clean")[[r["missing"] == "0" for r in rows]]
    clean = clean[np.isfinite(clean)]
    fd = column(rows, "framewise_displacement")
    shaped = [r["block_success"] for r in rows if r.get("block_success", "n/a") != "n/a"]
    return {
        "toward": toward, "success": success,
        "psc_rest": mean_where(psc, np.array([c == "rest" for c in shifted_cond]) & usable),
        "psc_regulate": mean_where(psc, np.array([c == "regulate" for c in shifted_cond]) & usable),
        "fd_mean": float(np.nanmean(fd)), "tsnr": float(clean.mean() / clean.std(ddof=1)),
        "n_shaped": len(shaped), "n_shaped_success": shaped.count("1"),
    }
