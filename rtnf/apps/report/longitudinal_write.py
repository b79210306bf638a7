"""Writing the longitudinal report: the page, its figures, and its numbers as TSV and JSON beside it.

``rtnf report longitudinal DERIVATIVES_DIR -o study.html`` writes, beside
``study.html``:

- ``study_runs.tsv``: one row per run (:func:`rtnf.apps.report.longitudinal.run_row`);
- ``study_blocks.tsv``: one row per regulation block (:func:`~rtnf.apps.report.longitudinal.block_rows`);
- ``study_summary.json``: every number of the page (runs, blocks, participants' sessions, arms);
- ``study_<figure>.png``: the figures (:mod:`rtnf.apps.report.longitudinal_figures`).

The page is rendered from ``templates/longitudinal.html.j2`` with the per-run
report's Jinja2 environment (autoescape on; :func:`rtnf.apps.report.render.environment`).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from . import longitudinal_figures as figs
from .figures import drawn
from .longitudinal import TRANSFER_TASKS, longitudinal_summary
from .read import NA
from .render import environment, image_source


TEMPLATE = "longitudinal.html.j2"
"""The page's template."""


def _cell(value: Any) -> str:
    """A TSV cell: ``n/a`` for None or a non-finite number, 1/0 for booleans, ``repr`` for floats."""
    if value is None:
        return NA
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else NA
    return str(value).replace("\t", " ").replace("\n", " ")


def write_tsv(rows: list[dict[str, Any]], path: Path) -> Path:
    """Rows as a TSV with the union of their keys as columns (first-seen order); absent cells are ``n/a``."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["\t".join(columns)] + ["\t".join(_cell(row.get(c)) for c in columns) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _json_ready(value: Any) -> Any:
    """Nested values with non-finite floats as None (JSON has no NaN) and tuples as lists."""
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def output_paths(out_html: Path) -> dict[str, Path]:
    """The files written beside ``out_html``: ``runs``, ``blocks``, ``summary`` and the figures' stem."""
    stem = out_html.with_suffix("")
    return {"runs": Path(f"{stem}_runs.tsv"), "blocks": Path(f"{stem}_blocks.tsv"),
            "summary": Path(f"{stem}_summary.json"), "stem": stem}


def draw_figures(summary: dict[str, Any], stem: Path) -> dict[str, Path | None]:
    """Every figure of the page: ``learning_<sub>``, ``psc_<sub>``, ``quality_<sub>``, ``ratings_<sub>``, ``arms``."""
    out: dict[str, Path | None] = {}
    runs, blocks = summary["runs"], summary["blocks"]
    for p in summary["participants"]:
        sub = p["participant"]
        mine = [r for r in summary["study_runs"] if r.subject == sub]
        rois = list(dict.fromkeys(roi for r in mine for roi in r.run.roi_names))
        for name, draw in (
            ("learning", lambda path: figs.figure_learning(sub, runs, blocks, path)),
            ("psc", lambda path: figs.figure_psc(p, rois, path)),
            ("quality", lambda path: figs.figure_quality(sub, runs, rois, path)),
            ("ratings", lambda path: figs.figure_ratings(sub, runs, path)),
        ):
            path = Path(f"{stem}_{name}_sub-{sub}.png")
            path.unlink(missing_ok=True)  # a stale figure of an earlier report must not survive
            out[f"{name}_{sub}"] = drawn(f"{name}_{sub}", draw, path)
    path = Path(f"{stem}_arms.png")
    path.unlink(missing_ok=True)
    out["arms"] = drawn("arms", lambda p: figs.figure_arms(summary["arms"], p), path)
    return out


def write_longitudinal(
    root: Path,
    out_html: Path,
    participant: str | None = None,
    arms: dict[str, str] | None = None,
    transfer_tasks: tuple[str, ...] = TRANSFER_TASKS,
    embed: bool = False,
) -> Path:
    """Write the longitudinal report of the runs under ``root`` (one participant's, or the whole study's).

    Parameters
    ----------
    root : Path
        The study's BIDS derivatives dataset (``output.dir`` of its runs).
    out_html : Path
        The page; its TSV, JSON and PNG files go beside it (:func:`output_paths`).
    participant : str, optional
        ``sub-01`` or ``01``: only this participant's runs.
    arms : dict, optional
        Participant -> arm code (:func:`rtnf.apps.report.longitudinal.read_arms`): adds the by-arm section.
    transfer_tasks : tuple of str
        Task labels of transfer runs, for runs whose provenance has no ``run_kind`` (recorded outside ``rtnf study``).
    embed : bool
        Put the figures in the page as data URIs (one file to send).

    Returns
    -------
    Path
        The page.

    Raises
    ------
    ReportError
        No recorded run under ``root`` (for ``participant``).
    """
    out_html = Path(out_html)
    out_html.parent.mkdir(parents=True, exist_ok=True)
    summary = longitudinal_summary(Path(root), participant, arms, transfer_tasks)
    paths = output_paths(out_html)
    write_tsv(summary["runs"], paths["runs"])
    write_tsv(summary["blocks"], paths["blocks"])
    public = {k: v for k, v in summary.items() if k != "study_runs"}
    paths["summary"].write_text(json.dumps(_json_ready(public), indent=2) + "\n", encoding="utf-8")
    figures = draw_figures(summary, paths["stem"])
    context = {
        **public,
        "written": time.strftime("%Y-%m-%d %H:%M:%S"),
        "figures": {k: image_source(v, embed) if v else None for k, v in figures.items()},
        "files": {k: v.name for k, v in paths.items() if k != "stem"},
        "transfer_tasks": list(transfer_tasks),
        "run_names": [r.run.prefix for r in summary["study_runs"]],
    }
    out_html.write_text(environment().get_template(TEMPLATE).render(context), encoding="utf-8")
    return out_html
