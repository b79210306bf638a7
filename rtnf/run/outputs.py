"""The names of a run's output files: one definition for the recorder, the report, replays and tests.

Every file of a run is ``<func_dir>/<prefix>_<suffix>`` with
``prefix = sub-<s>_ses-<s>_task-<t>_run-<n>`` and ``func_dir =
<output.dir>/sub-<s>/ses-<s>/func`` (BIDS derivatives).
"""

from __future__ import annotations

from pathlib import Path

from rtnf.config import Config

TIMESERIES = "desc-rtnf_timeseries.tsv"
"""One row per kept volume (:func:`rtnf.run.record.timeseries_columns`)."""
TIMESERIES_SIDECAR = "desc-rtnf_timeseries.json"
"""What every column of :data:`TIMESERIES` holds, with units."""
EVENTS = "events.tsv"
"""The protocol's blocks (BIDS events)."""
CONFIG = "desc-rtnf_config.toml"
"""The session config as given."""
PROVENANCE = "desc-rtnf_provenance.json"
"""Run id, times, status, software versions."""
LOG = "desc-rtnf_log.tsv"
"""Warnings and notable events, one per line."""
BOLD = "desc-rtnf_bold.nii"
"""Every received volume, as received (``output.save_volumes``)."""
BOLD_SIDECAR = "desc-rtnf_bold.json"
"""Volumes the 4D file holds, and those it misses."""
STATMAP = "desc-rtnf_stat-t_statmap.nii.gz"
"""The whole-brain t-map at the end of the run."""
SCREEN_EVENTS = "desc-screen_events.tsv"
"""What the feedback screen acknowledged: displayed values and key presses."""
SCREEN_EVENTS_SIDECAR = "desc-screen_events.json"
"""The columns of :data:`SCREEN_EVENTS`."""
RATINGS_EVENTS = "desc-ratings_events.tsv"
"""The participant's ratings on the feedback screen (``[[display.ratings]]``): one row per rating shown."""
RATINGS_EVENTS_SIDECAR = "desc-ratings_events.json"
"""The columns of :data:`RATINGS_EVENTS`."""
REPORT = "desc-rtnf_report.html"
"""The run's report (``rtnf report``)."""


def bids_prefix(cfg: Config) -> str:
    """``sub-<s>_ses-<s>_task-<t>_run-<n>`` for the configured run."""
    s = cfg.session
    return f"sub-{s.subject}_ses-{s.session}_task-{s.task}_run-{s.run}"


def func_dir(cfg: Config) -> Path:
    """Folder of the run's files."""
    s = cfg.session
    return cfg.output.dir / f"sub-{s.subject}" / f"ses-{s.session}" / "func"


def output_path(cfg: Config, name: str) -> Path:
    """Path of the run's output ``name`` (one of this module's constants)."""
    return func_dir(cfg) / f"{bids_prefix(cfg)}_{name}"


def sibling(timeseries: Path, name: str) -> Path:
    """Path of the output ``name`` of the run whose table is ``timeseries``."""
    text = timeseries.name
    if not text.endswith("_" + TIMESERIES):
        raise ValueError(f"{timeseries} is not a run's table (*_{TIMESERIES})")
    return timeseries.with_name(text[: -len(TIMESERIES)] + name)


def localizer_mask(roi: str) -> str:
    """The output name of the ROI mask ``rtnf session`` derives for ``roi`` from a localizer run's t-map."""
    return f"desc-{roi}localizer_mask.nii.gz"
