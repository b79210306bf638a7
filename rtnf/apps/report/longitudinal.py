"""The longitudinal report's numbers: every recorded run of a derivatives dataset, per participant and per arm.

Each run is read and summarised exactly as ``rtnf report`` does
(:func:`rtnf.apps.report.read.read_run`, :func:`rtnf.apps.report.summary.summarise`);
this module only arranges those numbers across runs, sessions, participants
and arm codes:

- per run (:func:`run_row`): its role (``feedback``, ``transfer`` or ``no
  feedback``: the kind ``rtnf study`` recorded in the run's provenance, a
  localizer being ``no feedback``; for a run recorded outside a study,
  ``feedback`` when feedback was shown, ``transfer`` for a run without
  feedback whose task label is a transfer task, else ``no feedback``), regulation success per block
  (the per-run report's rule: the block's feedback signal moved from its
  preceding baseline the way the block asked), the block's change toward the
  goal, the shaping threshold and shaped success as recorded
  (:mod:`rtnf.analysis.shaping`), mean PSC by condition (lag-shifted), FD,
  motion, tSNR per ROI and the mean of each rating;
- per block (:func:`block_rows`): the learning curve's points;
- per participant (:func:`participant_summary`): per session, the feedback
  runs' pooled success rate and change toward the goal, the transfer runs'
  (the transfer effect: transfer minus feedback runs), PSC, FD and tSNR; the
  learning slope across feedback runs;
- per arm code (:func:`arm_summary`): the participants' session numbers
  averaged by arm code. Arm codes come from the study's state
  (``study.json``'s ``allocation``, :mod:`rtnf.study.state`) or a
  ``participants.tsv`` with ``participant_id`` and ``arm_code`` (or ``arm``) columns
  (:func:`read_arms`); only codes are shown, never what they mean.

Nothing here draws or renders: :mod:`.longitudinal_figures` and
:mod:`.longitudinal_write` do.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rtnf.run.record import RUN_KIND
from .ratings import ratings_summary, toward_goal
from .read import RecordedRun, ReportError, find_timeseries, read_run, run_prefix
from .summary import summarise

TRANSFER_TASKS = ("transfer",)
"""Task labels of transfer runs (no feedback, the same regulation): ``--transfer-task`` changes them."""
ROLES = ("feedback", "transfer", "no feedback")
"""What a run was for, from its config and task label (:func:`run_role`)."""
STUDY_KINDS = {"feedback": "feedback", "transfer": "transfer", "localizer": "no feedback"}
"""The role of each run kind ``rtnf study`` records in a run's provenance (``run_kind``, :mod:`rtnf.study.runner`)."""
_ENTITY = re.compile(r"(?:^|_)(sub|ses|task|run)-([A-Za-z0-9]+)")
log = logging.getLogger(__name__)


@dataclass
class StudyRun:
    """A recorded run with its report summary and where it sits in the study."""

    run: RecordedRun
    summary: dict[str, Any]
    subject: str
    session: str
    task: str
    number: int
    started: float
    role: str


# ---------------------------------------------------------------- finding and reading the runs


def entities(prefix: str) -> dict[str, str]:
    """BIDS entities of a run's prefix: ``sub-01_ses-02_task-nf_run-1`` -> {"sub": "01", "ses": "02", ...}."""
    return dict(_ENTITY.findall(prefix))


def first_start(provenance: dict[str, Any]) -> float:
    """When the run first started (UNIX s; before any resume); NaN when the provenance does not say."""
    from rtnf.run.shaping_history import first_start as start

    value = start(provenance)
    return math.nan if value is None else value


def run_role(run: RecordedRun, task: str, transfer_tasks: tuple[str, ...] = TRANSFER_TASKS) -> str:
    """The run's role: the one of the kind ``rtnf study`` recorded, else guessed from the config and task label.

    A study run's provenance says what the study ran it as (``run_kind``:
    localizer, feedback, transfer; :data:`STUDY_KINDS`). Without it (a run
    recorded by ``rtnf run`` or ``rtnf session``): ``"feedback"`` when the run
    showed feedback, else ``"transfer"`` when its task label is one of
    ``transfer_tasks``, else ``"no feedback"``. A run whose recorded config
    showed feedback is ``"feedback"`` whatever its kind says (a study never
    shows feedback in a transfer run or localizer: the provenance was edited).
    """
    kind = run.provenance.get(RUN_KIND)
    config = run.provenance.get("config") if isinstance(run.provenance.get("config"), dict) else None
    feedback = config.get("feedback") if config else None
    enabled = feedback.get("enabled") if isinstance(feedback, dict) else None
    if isinstance(kind, str) and kind in STUDY_KINDS:
        if enabled is True and STUDY_KINDS[kind] != "feedback":
            log.warning("longitudinal report: %s: run_kind %r but its config showed feedback: counted as feedback",
                        run.prefix, kind)
            return "feedback"
        return STUDY_KINDS[kind]
    if kind is not None:
        log.warning("longitudinal report: %s: unknown run_kind %r in its provenance; its role is guessed",
                    run.prefix, str(kind)[:40])
    if not isinstance(enabled, bool):  # absent or not a boolean (a hand-edited provenance): the run's own config
        enabled = run.setting("feedback", "enabled", True)
    if enabled:
        return "feedback"
    return "transfer" if task in transfer_tasks else "no feedback"


def is_replay(path: Path, root: Path) -> bool:
    """Whether ``path`` lies in a replay's derivatives folder under ``root`` (``replay``, ``replay-<key>-<value>``)."""
    try:
        parts = Path(path).resolve().relative_to(Path(root).resolve()).parts
    except ValueError:
        return False
    return any(p == "replay" or p.startswith("replay-") for p in parts[:-1])


def find_study_runs(
    root: Path, participant: str | None = None, transfer_tasks: tuple[str, ...] = TRANSFER_TASKS
) -> list[StudyRun]:
    """Every recorded run under ``root`` (replays left out), or one participant's, in study order.

    Study order: participant, then sessions by their first run's start, then
    runs by start (label order where a start is unknown).

    Raises
    ------
    ReportError
        No run table under ``root`` (for ``participant``).
    """
    subject = None if participant is None else participant.removeprefix("sub-")
    who = f" for participant {participant}" if participant else ""
    message = f"no recorded run{who} under {root}: give the study's derivatives folder (output.dir)."
    try:
        tables = find_timeseries(Path(root))
    except ReportError:
        raise ReportError(message) from None
    out = []
    for tsv in tables:
        if is_replay(tsv, root):
            continue
        ent = entities(run_prefix(tsv))
        if subject is not None and ent.get("sub") != subject:
            continue
        try:
            # One stray or damaged table (hand-made, cut, not UTF-8, a provenance nested beyond the JSON
            # parser's limit) must not cost the whole study's report: it is left out, with a warning naming it.
            if not ent.get("run", "1").isdigit():
                raise ReportError(f"its run label {ent['run']!r} is not a number")
            run = read_run(tsv)
            task = ent.get("task", "")
            out.append(StudyRun(run, summarise(run), ent.get("sub", "?"), ent.get("ses", ""), task,
                                int(ent.get("run", "1")), first_start(run.provenance),
                                run_role(run, task, transfer_tasks)))
        except (ReportError, ValueError, RecursionError) as exc:  # ValueError: UnicodeDecodeError among others
            reason = " ".join(str(exc).split())[:200] or type(exc).__name__
            log.warning("longitudinal report: %s left out: %s", tsv.name, reason)
    if not out:
        raise ReportError(message)
    return order_runs(out)


def _key_start(value: float) -> float:
    return value if math.isfinite(value) else math.inf


def order_runs(runs: list[StudyRun]) -> list[StudyRun]:
    """Participant, then session (by its earliest run start), then run start, task and run number."""
    session_start: dict[tuple[str, str], float] = {}
    for r in runs:
        key = (r.subject, r.session)
        session_start[key] = min(session_start.get(key, math.inf), _key_start(r.started))
    return sorted(runs, key=lambda r: (r.subject, session_start[(r.subject, r.session)], r.session,
                                       _key_start(r.started), r.task, r.number))


# ---------------------------------------------------------------- per block and per run


def _finite(values: list[float]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def _mean(values: list[float]) -> float:
    v = _finite(values)
    return float(np.mean(v)) if v else math.nan


def shaped_blocks(run: RecordedRun) -> list[dict[str, Any]]:
    """The blocks shaping scored, as recorded: ``row`` (0-based), ``block_value``, ``threshold``, ``success``."""
    if "block_value" not in run.columns:
        return []
    values, thresholds = run.num("block_value"), run.num("shaping_threshold")
    success = run.text("block_success")
    return [{"row": i, "block_value": float(values[i]), "threshold": float(thresholds[i]),
             "success": success[i] == "1"} for i in np.flatnonzero(np.isfinite(values))]


def block_rows(sr: StudyRun) -> list[dict[str, Any]]:
    """One entry per regulation block of the run (the per-run report's blocks) with its shaped score where recorded.

    ``toward_goal`` is the block's change of the feedback signal from its
    preceding baseline, > 0 toward the goal (:func:`rtnf.apps.report.ratings.toward_goal`);
    ``success`` the per-run report's verdict; ``block_value``, ``threshold``
    and ``shaped_success`` the recorded shaping score of the block (matched
    by the row where it was scored: the block's last row plus the lag).
    """
    lag = sr.summary["lag_volumes"]
    scored = {s["row"]: s for s in shaped_blocks(sr.run)}
    out = []
    for k, b in enumerate(sr.summary["blocks"], start=1):
        shaped = scored.get(b["volumes"][1] + lag)
        out.append({
            "participant": sr.subject, "session": sr.session, "task": sr.task, "run": sr.number, "role": sr.role,
            "block": k, "condition": b["condition"], "direction": b["direction"] or "increase",
            "toward_goal": toward_goal(b), "success": b["success"],
            "block_value": shaped["block_value"] if shaped else math.nan,
            "threshold": shaped["threshold"] if shaped else math.nan,
            "shaped_success": shaped["success"] if shaped else None,
        })
    return out


def run_row(sr: StudyRun) -> dict[str, Any]:
    """The run's numbers for the study tables (see the module's docstring); flat, so it is one TSV row."""
    summary = sr.summary
    blocks = block_rows(sr)
    judged = [b for b in blocks if b["success"] is not None]
    shaped = [b for b in blocks if b["shaped_success"] is not None]
    motion = summary["motion"]
    row: dict[str, Any] = {
        "participant": sr.subject, "session": sr.session, "task": sr.task, "run": sr.number, "role": sr.role,
        "started": sr.started, "rows": summary["counts"]["rows"], "status": str(summary["status"]),
        "n_blocks": len(judged), "n_success": sum(bool(b["success"]) for b in judged),
        "success_rate": (sum(bool(b["success"]) for b in judged) / len(judged)) if judged else math.nan,
        "mean_toward_goal": _mean([b["toward_goal"] for b in blocks]),
        "n_shaped_blocks": len(shaped), "n_shaped_success": sum(bool(b["shaped_success"]) for b in shaped),
        "mean_block_value": _mean([b["block_value"] for b in shaped]),
        "last_threshold": shaped[-1]["threshold"] if shaped else math.nan,
        "mean_feedback_value": _mean([b["mean_feedback_value"] for b in summary["blocks"]]),
        "fd_mean_mm": motion["fd_mean_mm"], "fd_max_mm": motion["fd_max_mm"],
        "fd_over_threshold": motion["fd_over_threshold"], "max_abs_trans_mm": motion["max_abs_trans_mm"],
        "max_abs_rot_deg": motion["max_abs_rot_deg"],
    }
    for cond, entry in summary["psc_by_condition"].items():
        for roi, value in entry["shifted"].items():
            row[f"psc_{cond}_{roi}"] = value["mean"]
    for roi, value in summary["tsnr"].items():
        row[f"tsnr_{roi}"] = value["tsnr"]
    for q, value in ratings_summary(sr.run, summary)["per_question"].items():
        row[f"rating_{q}"] = value["mean"]
    return row


# ---------------------------------------------------------------- per participant and per arm


def learning_slope(values: list[float]) -> float:
    """Least-squares slope of ``values`` against their order (per run); NaN for fewer than 2 finite values."""
    y = np.asarray(values, dtype=float)
    x = np.arange(y.size, dtype=float)
    ok = np.isfinite(y)
    if ok.sum() < 2:
        return math.nan
    slope = float(np.polyfit(x[ok], y[ok], 1)[0])
    return 0.0 if abs(slope) < 1e-12 else slope  # a flat series: no "-0.000" from rounding


def _pooled_rate(blocks: list[dict[str, Any]]) -> float:
    judged = [b for b in blocks if b["success"] is not None]
    return sum(bool(b["success"]) for b in judged) / len(judged) if judged else math.nan


def session_summary(runs: list[StudyRun]) -> dict[str, Any]:
    """One session of one participant: its feedback and transfer runs' pooled block numbers, PSC, FD, tSNR, ratings.

    ``success_rate`` pools the blocks of every feedback run; ``transfer_success_rate``
    and ``transfer_toward_goal`` those of the transfer runs; ``transfer_effect`` is
    the transfer runs' mean change toward the goal minus the feedback runs'
    (negative: the participant did less without feedback). PSC, FD, tSNR and
    ratings are means over the session's runs of their per-run values (PSC and
    tSNR over the feedback and transfer runs).
    """
    rows = [run_row(r) for r in runs]
    blocks = {role: [b for r in runs if r.role == role for b in block_rows(r)] for role in ROLES}
    fb, tr = blocks["feedback"], blocks["transfer"]
    trained = [row for row in rows if row["role"] in ("feedback", "transfer")]
    out: dict[str, Any] = {
        "session": runs[0].session,
        "n_feedback_runs": sum(r.role == "feedback" for r in runs),
        "n_transfer_runs": sum(r.role == "transfer" for r in runs),
        "success_rate": _pooled_rate(fb),
        "toward_goal": _mean([b["toward_goal"] for b in fb]),
        "shaped_success_rate": (sum(bool(b["shaped_success"]) for b in fb if b["shaped_success"] is not None)
                                / max(1, sum(b["shaped_success"] is not None for b in fb)))
        if any(b["shaped_success"] is not None for b in fb) else math.nan,
        "transfer_success_rate": _pooled_rate(tr),
        "transfer_toward_goal": _mean([b["toward_goal"] for b in tr]),
        "fd_mean_mm": _mean([row["fd_mean_mm"] for row in rows]),
    }
    out["transfer_effect"] = out["transfer_toward_goal"] - out["toward_goal"]
    for key in sorted({k for row in trained for k in row if k.startswith(("psc_", "tsnr_", "rating_"))}):
        out[key] = _mean([row.get(key, math.nan) for row in trained])
    return out


def participant_summary(runs: list[StudyRun]) -> dict[str, Any]:
    """One participant: per session (:func:`session_summary`) in order, and the learning slopes.

    ``learning_slope_success`` is the slope of the feedback runs' success rate
    per run across the study (per run, in study order);
    ``learning_slope_toward_goal`` the same for the mean change toward the goal.
    """
    sessions = list(dict.fromkeys(r.session for r in runs))
    feedback_rows = [run_row(r) for r in runs if r.role == "feedback"]
    return {
        "participant": runs[0].subject,
        "sessions": [session_summary([r for r in runs if r.session == s]) for s in sessions],
        "n_runs": len(runs),
        "learning_slope_success": learning_slope([row["success_rate"] for row in feedback_rows]),
        "learning_slope_toward_goal": learning_slope([row["mean_toward_goal"] for row in feedback_rows]),
    }


ARM_SESSION_KEYS = ("success_rate", "toward_goal", "transfer_success_rate", "transfer_toward_goal", "transfer_effect",
                    "fd_mean_mm")
"""The session numbers averaged across the participants of an arm code."""


def arm_summary(participants: list[dict[str, Any]], arms: dict[str, str]) -> list[dict[str, Any]]:
    """Per arm code: its participants and, per session position (1st, 2nd, ...), the mean and SD across them.

    Sessions are matched by position in each participant's order (labels may
    differ between participants). Participants without a code are grouped
    under ``"unassigned"``. ``sd`` uses ddof=1 (NaN for one participant).
    """
    codes = sorted({arms.get(p["participant"], "unassigned") for p in participants})
    out = []
    for code in codes:
        members = [p for p in participants if arms.get(p["participant"], "unassigned") == code]
        n_sessions = max(len(p["sessions"]) for p in members)
        sessions = []
        for k in range(n_sessions):
            entry: dict[str, Any] = {"position": k + 1}
            for key in ARM_SESSION_KEYS:
                values = _finite([p["sessions"][k][key] for p in members if k < len(p["sessions"])])
                entry[key] = {"mean": float(np.mean(values)) if values else math.nan,
                              "sd": float(np.std(values, ddof=1)) if len(values) > 1 else math.nan,
                              "n": len(values)}
            sessions.append(entry)
        out.append({"arm": code, "participants": [p["participant"] for p in members], "sessions": sessions,
                    "learning_slope_success": _mean([p["learning_slope_success"] for p in members])})
    return out


def read_arms(path: Path) -> dict[str, str]:
    """Participant (label without ``sub-``) -> arm code.

    ``path`` is the study's state folder or its ``study.json`` (the
    ``allocation`` written by ``rtnf study init``), or a ``participants.tsv``
    with ``participant_id`` and ``arm_code`` (or ``arm``) columns (BIDS; ``sub-01`` or ``01``).

    Raises
    ------
    ReportError
        The file cannot be read or has neither form.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "study.json"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ReportError(f"cannot read the arms file {path}: {exc.strerror or exc}") from None
    if path.suffix == ".json":
        try:
            allocation = json.loads(text).get("allocation")
        except (ValueError, AttributeError):
            allocation = None
        if not isinstance(allocation, dict):
            raise ReportError(f"{path}: no 'allocation' (participant -> arm code); expected rtnf study's study.json.")
        return {str(k).removeprefix("sub-"): str(v) for k, v in allocation.items()}
    rows = list(csv.DictReader(text.splitlines(), delimiter="\t"))
    # rtnf study writes 'arm_code' (participants.tsv of the derivatives dataset); a hand-made file may say 'arm'.
    column = next((c for c in ("arm_code", "arm") if rows and c in rows[0]), None)
    if not rows or "participant_id" not in rows[0] or column is None:
        raise ReportError(f"{path}: expected a TSV with 'participant_id' and 'arm_code' (or 'arm') columns.")
    return {r["participant_id"].removeprefix("sub-"): r[column] for r in rows if r.get("participant_id")}


def longitudinal_summary(
    root: Path,
    participant: str | None = None,
    arms: dict[str, str] | None = None,
    transfer_tasks: tuple[str, ...] = TRANSFER_TASKS,
) -> dict[str, Any]:
    """Every number of the longitudinal report.

    Returns
    -------
    dict
        ``runs`` (:func:`run_row` per run, in study order), ``blocks``
        (:func:`block_rows` of every run), ``participants``
        (:func:`participant_summary` each), ``arms`` (:func:`arm_summary`;
        empty without ``arms``), ``root``, ``participant`` (None: the
        whole study) and ``study_runs`` (the :class:`StudyRun` objects, for
        the figures; not written to the JSON).
    """
    runs = find_study_runs(root, participant, transfer_tasks)
    subjects = list(dict.fromkeys(r.subject for r in runs))
    participants = [participant_summary([r for r in runs if r.subject == s]) for s in subjects]
    return {
        "root": str(root),
        "participant": participant,
        "runs": [run_row(r) for r in runs],
        "blocks": [b for r in runs for b in block_rows(r)],
        "participants": participants,
        "arms": arm_summary(participants, arms) if arms else [],
        "study_runs": runs,
    }
