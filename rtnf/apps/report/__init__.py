"""``rtnf report``: an HTML page with PNG figures for a recorded run.

Reads what :mod:`rtnf.run.record` wrote for one run (the per-volume table
``*_desc-rtnf_timeseries.tsv`` and, when present, its siblings
``*_events.tsv``, ``*_desc-rtnf_config.toml``, ``*_desc-rtnf_provenance.json``
and ``*_desc-rtnf_log.tsv``; names from :mod:`rtnf.run.outputs`) and writes,
into one folder:

- ``<prefix>_desc-rtnf_report.html``: a self-contained page (plain HTML and
  CSS, no script, nothing fetched from the internet; ``embed`` puts the
  figures in it, for one file to send);
- ``<prefix>_desc-<figure>_report.png``: the figures it shows, drawn with
  matplotlib's Agg canvas (no pyplot, no global backend switch).

Every number of the summary is computed from the table alone, so a report
can be written for a run that crashed, was aborted, ran with motion
correction off, or lost volumes. What each number means is written on the
page next to it (see :func:`summarise`).

Modules: :mod:`.read` (the run's files), :mod:`.summary` (the numbers),
:mod:`.figures` (the PNGs), :mod:`.render` (the page, from the Jinja2
templates in ``templates/``), :mod:`.write` (page and figures into a folder),
:mod:`.command` (the command line). matplotlib and jinja2 are imported only
when a report is written.

``rtnf report longitudinal`` (a study: per participant across sessions, per
arm code) arranges the same per-run numbers: :mod:`.longitudinal` (the
numbers), :mod:`.longitudinal_figures`, :mod:`.longitudinal_write` (page,
figures, TSV and JSON).
"""

from .command import add_arguments, main, run
from .figures import FIGURES, MOTION_MIN_RANGE, figure_latency, figure_motion, figure_timecourses
from .read import NA, RecordedRun, ReportError, find_timeseries, read_run
from .render import render_html
from .summary import (
    FEEDBACK_SHOWN_WARN_FRACTION,
    FLAG_COLUMNS,
    NO_FEEDBACK_REASON,
    STAGES,
    TOTAL_STAGE,
    format_reasons,
    lag_volumes,
    shifted_labels,
    summarise,
)
from .write import default_output_dir, write_report

__all__ = [
    "FEEDBACK_SHOWN_WARN_FRACTION",
    "FIGURES",
    "FLAG_COLUMNS",
    "MOTION_MIN_RANGE",
    "NA",
    "NO_FEEDBACK_REASON",
    "STAGES",
    "TOTAL_STAGE",
    "RecordedRun",
    "ReportError",
    "add_arguments",
    "default_output_dir",
    "figure_latency",
    "figure_motion",
    "figure_timecourses",
    "find_timeseries",
    "format_reasons",
    "lag_volumes",
    "main",
    "read_run",
    "render_html",
    "run",
    "shifted_labels",
    "summarise",
    "write_report",
]
