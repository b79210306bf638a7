"""Reading a recorded run: the per-volume table and the siblings :mod:`rtnf.run.record` wrote beside it.

The files are named by :mod:`rtnf.run.outputs`; that module imports the
config models (pydantic, about 0.1 s), so it is imported when a run is read,
not when ``rtnf``'s command line is built.

Everything read here is untrusted text: a table cut short by a crash, a
sibling that is absent or does not parse, a log line with a cell too few.
What cannot be used is left out and said in :attr:`RecordedRun.notes`;
only a file that is not an rtnf table at all raises :class:`ReportError`.
"""

from __future__ import annotations

import csv
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

NA = "n/a"
"""How the table and the events file write a missing value (BIDS)."""
REQUIRED_COLUMNS = ("index", "onset_s", "condition", "missing")
"""Columns without which a table is not taken for an rtnf per-volume table."""


class ReportError(ValueError):
    """The input is not a recorded run's table; the message says what was expected."""


@dataclass
class RecordedRun:
    """A recorded run as read from its files.

    Attributes
    ----------
    timeseries : Path
        The per-volume table.
    prefix : str
        ``sub-<s>_ses-<s>_task-<t>_run-<n>``, from the table's name.
    columns : list of str
        Header of the table.
    rows : list of dict
        Rows as text (``"n/a"`` for missing cells); an incomplete last line is dropped.
    roi_names : list of str
        ROIs in column order.
    events : list of (onset_s, duration_s, trial_type), or None
        The protocol, from the events file (onsets and durations in seconds).
    config : dict
        The session config copy as parsed TOML (empty if absent or unreadable).
    provenance : dict
        Run id, start/finish times (UNIX seconds), status, versions (empty if absent).
    log : list of dict
        The event log's rows (``time`` in UNIX seconds, ``level``, ``message``).
    notes : list of str
        Problems met while reading (absent siblings, a truncated line, ...).
    ratings : list of dict
        The participant's ratings (``*_desc-ratings_events.tsv``, :mod:`rtnf.run.ratings`) as text;
        empty when the run had none.
    """

    timeseries: Path
    prefix: str
    columns: list[str]
    rows: list[dict[str, str]]
    roi_names: list[str]
    events: list[tuple[float, float, str]] | None
    config: dict[str, Any]
    provenance: dict[str, Any]
    log: list[dict[str, str]]
    notes: list[str] = field(default_factory=list)
    ratings: list[dict[str, str]] = field(default_factory=list)

    # -- columns as arrays

    def num(self, column: str) -> np.ndarray:
        """A column as floats, NaN for ``n/a``, empty or absent cells."""
        return np.array([to_float(r.get(column)) for r in self.rows], dtype=float)

    def flag(self, column: str) -> np.ndarray:
        """A 0/1 column as booleans (absent or ``n/a``: False)."""
        return np.array([r.get(column) == "1" for r in self.rows], dtype=bool)

    def text(self, column: str) -> list[str]:
        """A column as text (``n/a`` for an empty or absent cell)."""
        return [r.get(column) or NA for r in self.rows]

    # -- config values, with rtnf's defaults when the copy lacks them

    def setting(self, section: str, key: str, default: Any = None) -> Any:
        """``[section] key`` of the config copy, else rtnf's default for it, else ``default``."""
        table = self.config.get(section)
        value = table.get(key) if isinstance(table, dict) else None
        return value if value is not None else config_default(section, key, default)

    @property
    def tr_s(self) -> float:
        """Repetition time in seconds: from the config, else the median step of the onsets (else 1 s)."""
        tr = self.config.get("scanner", {}).get("tr_s")
        if tr:
            return float(tr)
        onsets = self.num("onset_s")
        steps = np.diff(onsets[np.isfinite(onsets)])
        return float(np.median(steps)) if steps.size else 1.0

    @property
    def baseline(self) -> str | None:
        """The baseline condition: from the config, else the first volume's condition."""
        base = self.config.get("protocol", {}).get("baseline")
        if base:
            return str(base)
        conds = self.text("condition")
        return conds[0] if conds else None

    @property
    def n_expected(self) -> int | None:
        """Kept volumes the protocol planned (config ``n_volumes`` minus dummies), if known."""
        sc = self.config.get("scanner", {})
        if "n_volumes" in sc:
            return int(sc["n_volumes"]) - int(sc.get("dummy_volumes", 0))
        if self.events:
            end = max(on + dur for on, dur, _ in self.events)
            return int(round(end / self.tr_s))
        return None


def to_float(text: str | None) -> float:
    """A table cell as a float: NaN for ``n/a``, an empty or absent cell, or text that is not a number."""
    if text is None or text in (NA, "", "None"):
        return math.nan
    try:
        return float(text)
    except ValueError:
        return math.nan


def config_default(section: str, key: str, default: Any) -> Any:
    """rtnf's default of ``[section] key`` (from the config models), else ``default``."""
    from rtnf import config as cfgmod

    models = {
        "quality": cfgmod.QualityConfig,
        "feedback": cfgmod.FeedbackConfig,
        "motion": cfgmod.MotionConfig,
        "model": cfgmod.ModelConfig,
    }
    model = models.get(section)
    if model is not None and key in model.model_fields:
        value = model.model_fields[key].default
        if value is not None and not callable(value):
            return value
    return default


# ---------------------------------------------------------------- names


def timeseries_pattern() -> str:
    """``*_desc-rtnf_timeseries.tsv``: the name of every run's per-volume table."""
    from rtnf.run import outputs

    return f"*_{outputs.TIMESERIES}"


def run_prefix(timeseries_tsv: Path) -> str:
    """``sub-<s>_ses-<s>_task-<t>_run-<n>`` of a table's name; :class:`ReportError` if it is no run's table."""
    from rtnf.run import outputs

    name = Path(timeseries_tsv).name
    if not name.endswith("_" + outputs.TIMESERIES):
        raise ReportError(f"{timeseries_tsv} is not a per-volume table: expected a file named '{timeseries_pattern()}'.")
    return name[: -len("_" + outputs.TIMESERIES)]


def find_timeseries(path: Path) -> list[Path]:
    """Per-volume tables at ``path``: the file itself, or every one below a folder (sorted)."""
    path = Path(path)
    pattern = timeseries_pattern()
    if path.is_file():
        run_prefix(path)
        return [path]
    if path.is_dir():
        found = sorted(path.rglob(pattern))
        if not found:
            raise ReportError(f"no '{pattern}' found under {path}: give a run's output folder or its table.")
        return found
    raise ReportError(f"{path} does not exist: give a run's output folder or its '{pattern}' table.")


# ---------------------------------------------------------------- the files


def read_run(timeseries_tsv: Path) -> RecordedRun:
    """Read a recorded run: the table and whatever siblings exist.

    Parameters
    ----------
    timeseries_tsv : Path
        The run's ``*_desc-rtnf_timeseries.tsv``.

    Returns
    -------
    RecordedRun
        The run; what could not be read is said in its ``notes``.

    Raises
    ------
    ReportError
        The file is not an rtnf per-volume table (name, header, a short line before the last).
    """
    from rtnf.run import outputs

    tsv = Path(timeseries_tsv)
    prefix = run_prefix(tsv)
    notes: list[str] = []
    columns, rows = read_table(tsv, notes)
    events = read_events(outputs.sibling(tsv, outputs.EVENTS), notes)
    config = read_config(outputs.sibling(tsv, outputs.CONFIG), notes)
    provenance = read_provenance(outputs.sibling(tsv, outputs.PROVENANCE), notes)
    log = read_log(outputs.sibling(tsv, outputs.LOG))
    from .ratings import read_ratings

    ratings = read_ratings(outputs.sibling(tsv, outputs.RATINGS_EVENTS), notes)
    return RecordedRun(tsv, prefix, columns, rows, roi_names(columns), events, config, provenance, log, notes,
                       ratings)


def read_table(tsv: Path, notes: list[str]) -> tuple[list[str], list[dict[str, str]]]:
    """The per-volume table's header and rows as text.

    An incomplete last line (the run stopped while writing it) is left out
    and said in ``notes``; a short line before it raises :class:`ReportError`.
    """
    with open(tsv, newline="", encoding="utf-8") as f:
        lines = f.read().split("\n")
    if not lines or not lines[0].strip():
        raise ReportError(f"{tsv} is empty: no header line.")
    columns = lines[0].split("\t")
    for needed in REQUIRED_COLUMNS:
        if needed not in columns:
            raise ReportError(f"{tsv} has no '{needed}' column: is it an rtnf per-volume table?")
    body = lines[1:]
    while body and body[-1] == "":
        body.pop()
    rows = []
    for i, line in enumerate(body):
        cells = line.split("\t")
        if len(cells) != len(columns):
            if i == len(body) - 1:
                notes.append(f"the table's last line is incomplete ({len(cells)} of {len(columns)} cells: "
                             "the run stopped while writing it); it is left out.")
                continue
            raise ReportError(f"{tsv} line {i + 2} has {len(cells)} cells, the header {len(columns)}.")
        rows.append(dict(zip(columns, cells)))
    return columns, rows


def roi_names(columns: list[str]) -> list[str]:
    """ROIs of a table, in column order: every ``<roi>_raw`` with its ``_clean`` and ``_psc`` columns."""
    present = set(columns)
    return [
        c[: -len("_raw")] for c in columns
        if c.endswith("_raw") and {c[: -len("_raw")] + "_clean", c[: -len("_raw")] + "_psc"} <= present
    ]


def read_events(path: Path, notes: list[str]) -> list[tuple[float, float, str]] | None:
    """The protocol as (onset_s, duration_s, trial_type); None (and a note) when the events file is absent."""
    if not path.is_file():
        notes.append(f"no events file ({path.name}): blocks are taken from the table's condition column.")
        return None
    with open(path, newline="", encoding="utf-8") as f:
        return [
            (float(r["onset"]), float(r["duration"]), r.get("trial_type") or NA)
            for r in csv.DictReader(f, delimiter="\t")
            if r.get("onset") not in (None, "", NA) and r.get("duration") not in (None, "", NA)
        ]


def read_config(path: Path, notes: list[str]) -> dict[str, Any]:
    """The session config copy as parsed TOML; empty (and a note) when absent or unreadable."""
    if not path.is_file():
        notes.append(f"no config copy ({path.name}): rtnf's defaults are used (for example the FD threshold).")
        return {}
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        notes.append(f"the config copy {path.name} could not be read ({exc}); rtnf's defaults are used.")
        return {}


def read_provenance(path: Path, notes: list[str]) -> dict[str, Any]:
    """Run id, times, status and versions; empty (and a note) when absent, unreadable or not a JSON object."""
    if not path.is_file():
        notes.append(f"no provenance file ({path.name}): run identity and versions unknown.")
        return {}
    try:
        provenance = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        notes.append(f"the provenance file could not be read ({exc}).")
        return {}
    if not isinstance(provenance, dict):
        notes.append("the provenance file could not be read (not a JSON object).")
        return {}
    return provenance


def read_log(path: Path) -> list[dict[str, str]]:
    """The event log's rows that have a level (``time``, ``level``, ``message``); empty when absent."""
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return [r for r in csv.DictReader(f, delimiter="\t") if r.get("level")]
