"""The report's page: Jinja2 templates (``templates/*.html.j2``) filled with a run's numbers.

Autoescape is on for every template: condition and ROI names, log messages,
the provenance's command and versions come from the run's files and are
untrusted. Python gives the templates plain values (numbers, text); the
markup and the wording are in the templates. jinja2 is imported when a page
is rendered, not when this module is.
"""

from __future__ import annotations

import base64
import math
import time
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rtnf.wire.messages import SATURATION_EPS, SATURATION_WARN_FRACTION

from .figures import FIGURES
from .ratings import ratings_summary
from .read import NA, RecordedRun, to_float
from .summary import SIGNAL_UNITS, format_reasons

if TYPE_CHECKING:
    from jinja2 import Environment

TEMPLATE = "report.html.j2"
"""The page's template; it includes one template per section."""
LOG_WARNINGS_SHOWN = 50
"""At most this many of the log's warnings and errors are listed; the rest are counted."""
LOG_WARNING_LEVELS = ("WARNING", "ERROR", "CRITICAL")
"""Log levels listed under "Warnings and errors"."""


# ---------------------------------------------------------------- values as text (the templates' filters)


def fmt(x: Any, digits: int = 2) -> str:
    """A value as the page shows it: ``n/a`` for None or a non-finite float, ``digits`` decimals, yes/no, text."""
    if x is None:
        return NA
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, float):
        return NA if not math.isfinite(x) else f"{x:.{digits}f}"
    return str(x)


def general(x: float) -> str:
    """A number in Python's ``g`` format (``2``, ``0.4``, ``0.001``): settings and times in seconds."""
    return f"{x:g}"


def when(unix: Any) -> str:
    """UNIX time (s) as local ``YYYY-mm-dd HH:MM:SS``; ``n/a`` for anything else (absent, text, NaN, out of range)."""
    if not isinstance(unix, (int, float)):
        return NA
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(unix))
    except (ValueError, OverflowError, OSError):
        return NA


def image_source(path: Path, embed: bool) -> str:
    """An ``<img>``'s ``src``: the PNG's name (beside the page), or the PNG itself as a data URI."""
    if embed:
        return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
    return path.name


# ---------------------------------------------------------------- the page


@lru_cache(maxsize=1)
def environment() -> Environment:
    """The templates' Jinja2 environment: autoescape on, undefined names an error, the filters above."""
    from jinja2 import Environment, PackageLoader, StrictUndefined

    env = Environment(
        loader=PackageLoader("rtnf.apps.report", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,  # each section ends its last line
    )
    env.filters.update(fmt=fmt, g=general, when=when, reasons=format_reasons)
    return env


def page_context(run: RecordedRun, summary: dict[str, Any], figures: dict[str, Path | None],
                 embed: bool = False) -> dict[str, Any]:
    """The values the templates show, as plain Python values (the templates escape them).

    Parameters
    ----------
    run : RecordedRun
        The run as read.
    summary : dict
        :func:`rtnf.apps.report.summary.summarise` of the run.
    figures : dict of str to Path or None
        Each figure's PNG (None when the run had nothing to draw in it).
    embed : bool
        Put the PNGs in the page as data URIs instead of naming the files beside it.
    """
    prov = run.provenance
    command = prov.get("command", [])
    target = run.setting("feedback", "roi", None)
    target = " + ".join(map(str, target)) if isinstance(target, list) else target
    versions = prov.get("versions") or {}
    log_warnings = [
        {"time": to_float(r.get("time")), "level": r["level"], "message": r.get("message") or ""}
        for r in run.log if r.get("level") in LOG_WARNING_LEVELS
    ]
    return {
        "prefix": run.prefix,
        "table_name": run.timeseries.name,
        "table_path": str(run.timeseries),
        "written": time.strftime("%Y-%m-%d %H:%M:%S"),
        "notes": run.notes,
        "run_id": prov.get("run_id"),
        "started": prov.get("started"),
        "finished": prov.get("finished"),
        "platform": prov.get("platform"),
        "command": (" ".join(map(str, command)) if isinstance(command, list) else str(command or "")) or NA,
        "status": summary["status"],
        "aborted_at_s": summary["aborted_at_s"],
        "tr_s": run.tr_s,
        "baseline": str(run.baseline),
        "rois": run.roi_names,
        "lag_volumes": summary["lag_volumes"],
        "lag_s": float(run.setting("feedback", "hemodynamic_lag_s", 6.0)),
        "signal_units": SIGNAL_UNITS.get(str(run.setting("feedback", "signal", "psc")), ""),
        "target": str(target or "the target"),
        "saturation_eps": SATURATION_EPS,
        "saturation_warn_percent": f"{100 * SATURATION_WARN_FRACTION:.0f}",
        "summary": summary,
        "figures": {name: image_source(figures[name], embed) if figures.get(name) else None for name in FIGURES},
        "log_warnings": log_warnings[:LOG_WARNINGS_SHOWN],
        "n_log_warnings": len(log_warnings),
        "versions": versions if isinstance(versions, dict) else {},
        "ratings": ratings_summary(run, summary),
    }


def render_html(run: RecordedRun, summary: dict[str, Any], figures: dict[str, Path | None], embed: bool = False) -> str:
    """The report page as text (see :func:`page_context` for the parameters)."""
    return environment().get_template(TEMPLATE).render(page_context(run, summary, figures, embed))
