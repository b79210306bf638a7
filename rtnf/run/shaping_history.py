"""The earlier blocks a shaped run is judged against, read from the participant's recorded runs.

``[feedback.shaping] history = "study"`` carries block values across every
session of the participant, ``"session"`` across the runs of the same
session, ``"run"`` not at all (:mod:`rtnf.analysis.shaping`). The values
come from the recorded tables in the run's derivatives dataset
(``output.dir``): the ``block_value`` column, written at the volume where
each block is scored. There is no separate state file: a table is written
row by row as the run goes, so a run that crashed contributes exactly the
blocks it scored and recorded, and a run resumed with ``--resume``
recomputes its own blocks from its volumes.

Which runs count: the participant's (same ``sub-``, and ``ses-`` for
"session") other runs whose effective config (provenance) had feedback
enabled (a localizer or transfer run trains nothing), that started before
this run, oldest first. A run's start is its provenance's first start
(before any resume). This run's own start is its first attempt's when it
is continuing a run that did not finish (a resume), else now; a run redone
with ``--overwrite`` after later runs were recorded therefore takes those
later runs into its history.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rtnf.config import Config

from . import outputs

log = logging.getLogger(__name__)

BLOCK_VALUE_COLUMN = "block_value"
"""The table column holding a block's value at the volume where it is scored (:mod:`rtnf.run.record`)."""


@dataclass(frozen=True)
class HistoryRun:
    """A recorded run that feeds the history: its table, first start (UNIX s) and block values (oldest first)."""

    timeseries: Path
    started: float
    values: list[float]


def first_start(provenance: dict[str, Any]) -> float | None:
    """When a run first started (UNIX seconds): the earliest ``started`` of the provenance and its resumes."""
    resumed = provenance.get("resumed")
    starts = [provenance.get("started")] + [r.get("started") for r in (resumed if isinstance(resumed, list) else [])
                                            if isinstance(r, dict)]
    valid = [float(s) for s in starts
             if isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s)]
    return min(valid) if valid else None


def read_provenance(timeseries: Path, if_unreadable: str) -> dict[str, Any] | None:
    """A run's provenance as a dict: empty when absent, None when it cannot be read.

    Parameters
    ----------
    timeseries : Path
        The run's table; its provenance is the sibling file.
    if_unreadable : str
        What follows for the caller when the file is there but cannot be read
        (cut short by a crash or a full disk, not JSON, not an object): said in
        the one warning that names the file.
    """
    path = outputs.sibling(timeseries, outputs.PROVENANCE)
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # RecursionError: a file nested beyond the parser's limit
        problem = str(exc) or type(exc).__name__
    else:
        if isinstance(data, dict):
            return data
        problem = f"not a JSON object but {type(data).__name__}"
    log.warning("shaping: the provenance %s could not be read (%s); %s", path, problem, if_unreadable)
    return None


def block_values(timeseries: Path) -> list[float]:
    """The finite ``block_value`` cells of a recorded table, in row order (empty without the column)."""
    try:
        with open(timeseries, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
    except (OSError, ValueError, csv.Error) as exc:  # ValueError: not UTF-8; csv.Error: a field beyond csv's limit
        log.warning("shaping: cannot read %s (%s); its blocks are left out of the history", timeseries, exc)
        return []
    out = []
    for row in rows:
        try:
            value = float(row.get(BLOCK_VALUE_COLUMN) or "nan")
        except ValueError:  # a last line cut short by a crash
            continue
        if math.isfinite(value):
            out.append(value)
    return out


def feedback_enabled(provenance: dict[str, Any]) -> bool:
    """Whether the run trained the participant: it showed feedback (its effective config's ``feedback.enabled``;
    true by default) of its own, not a sham run's replay (whose ``block_value`` column is its source's)."""
    feedback = provenance.get("config", {}).get("feedback", {}) if isinstance(provenance.get("config"), dict) else {}
    if not isinstance(feedback, dict):
        return True
    return feedback.get("enabled", True) is not False and feedback.get("sham_from") is None


def history_runs(
    root: Path, subject: str, session: str | None, before: float, exclude: Path | None = None
) -> list[HistoryRun]:
    """The participant's recorded feedback runs that started before ``before``, oldest first.

    Parameters
    ----------
    root : Path
        The derivatives dataset (``output.dir``).
    subject : str
        The participant's label (without ``sub-``).
    session : str, optional
        Only this session's runs (label without ``ses-``); None: every session.
    before : float
        UNIX seconds: runs that first started at or after it are left out.
    exclude : Path, optional
        This run's own table.
    """
    # Only where rtnf records the participant's runs (rtnf.run.outputs.output_path), named as its runs are: a
    # table of another participant put there, or a copy in a subfolder, would add its blocks (a copy twice).
    ses = "*" if session is None else session
    pattern = f"ses-{ses}/func/sub-{subject}_ses-{ses}_*_{outputs.TIMESERIES}"
    folder = Path(root) / f"sub-{subject}"
    if not folder.is_dir():
        return []
    runs = []
    for tsv in sorted(folder.glob(pattern)):
        if tsv.parent.parent.name[len("ses-"):] != tsv.name[len(f"sub-{subject}_ses-"):].split("_", 1)[0]:
            continue  # a session's table in another session's folder
        if exclude is not None and tsv.resolve() == Path(exclude).resolve():
            continue
        provenance = read_provenance(tsv, "its blocks are left out of the history")
        if provenance is None:
            continue
        started = first_start(provenance)
        if started is None:
            log.warning("shaping: %s has no start time in its provenance; its blocks are left out", tsv.name)
            continue
        if started >= before or not feedback_enabled(provenance):
            continue
        runs.append(HistoryRun(tsv, started, block_values(tsv)))
    return sorted(runs, key=lambda r: r.started)


def own_start(cfg: Config, now: float | None = None) -> float:
    """This run's start for ordering: its first attempt's when it continues a run that did not finish, else now."""
    provenance = read_provenance(outputs.output_path(cfg, outputs.TIMESERIES),
                                 "this run's start is taken as now for its history") or {}
    started = first_start(provenance)
    if provenance and "finished" not in provenance and started is not None:
        return started
    return time.time() if now is None else now


def replayed_dataset(output_dir: Path) -> Path | None:
    """The live derivatives dataset a replay writes beside, or None when ``output_dir`` is no replay's folder.

    ``rtnf replay`` writes into ``output.dir/replay`` (``replay-<key>-<value>+...`` with overrides;
    :func:`rtnf.apps.replay.replay_label`).
    """
    name = Path(output_dir).name
    return Path(output_dir).parent if name == "replay" or name.startswith("replay-") else None


def load_history(cfg: Config, now: float | None = None) -> list[float]:
    """The earlier runs' block values this run's shaping starts from, oldest first (see the module's docstring).

    Empty without ``[feedback.shaping]``, with ``history = "run"``, or for a
    sham run (which shows its source's thresholds). A replay's history is
    the live run's: the live dataset's runs that started before the live run
    (not the earlier replays), so that it shows the thresholds the live run showed.
    """
    shaping = cfg.feedback.shaping
    if shaping is None or shaping.history == "run" or cfg.feedback.sham_from is not None:
        return []
    session = cfg.session.session if shaping.history == "session" else None
    root, start = cfg.output.dir, own_start(cfg, now)
    live = replayed_dataset(cfg.output.dir)
    if live is not None:
        root = live
        live_table = live / outputs.output_path(cfg, outputs.TIMESERIES).relative_to(cfg.output.dir)
        live_provenance = read_provenance(live_table, "the replay's history ends at its own start") or {}
        start = first_start(live_provenance) or start  # no live record: the replay's own start
    runs = history_runs(root, cfg.session.subject, session, start,
                        exclude=outputs.output_path(cfg, outputs.TIMESERIES))
    values = [v for run in runs for v in run.values]
    log.info("shaping: %d earlier blocks from %d earlier run%s (%s history)", len(values), len(runs),
             "" if len(runs) == 1 else "s", shaping.history)
    return values
