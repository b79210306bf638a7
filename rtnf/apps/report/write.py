"""Writing a run's report: the page and its figures, into one folder."""

from __future__ import annotations

from pathlib import Path

from .figures import FIGURES, draw, drawn
from .read import read_run
from .render import render_html
from .summary import summarise


def default_output_dir(timeseries_tsv: Path) -> Path:
    """``<sub>/<ses>/figures`` beside the run's ``func`` folder (fMRIPrep's layout), else the table's folder."""
    folder = Path(timeseries_tsv).resolve().parent
    return folder.parent / "figures" if folder.name == "func" else folder


def report_path(out_dir: Path, prefix: str) -> Path:
    """``<out_dir>/<prefix>_desc-rtnf_report.html``: the page (:data:`rtnf.run.outputs.REPORT`)."""
    from rtnf.run import outputs

    return Path(out_dir) / f"{prefix}_{outputs.REPORT}"


def figure_path(out_dir: Path, prefix: str, figure: str) -> Path:
    """``<out_dir>/<prefix>_desc-<figure>_report.png``: one of the page's figures."""
    return Path(out_dir) / f"{prefix}_desc-{figure}_report.png"


def write_report(timeseries_tsv: Path, out_dir: Path, embed: bool = False) -> Path:
    """Write the HTML report of a recorded run and its PNG figures.

    Parameters
    ----------
    timeseries_tsv : Path
        The run's ``*_desc-rtnf_timeseries.tsv``; its siblings (events, config
        copy, provenance, log) are read when present.
    out_dir : Path
        Folder for ``<prefix>_desc-rtnf_report.html`` and its PNGs (created).
    embed : bool
        Also embed the figures in the page as data URIs (one file to send).

    Returns
    -------
    Path
        The HTML file.

    Raises
    ------
    ReportError
        ``timeseries_tsv`` is not an rtnf per-volume table.
    """
    run = read_run(Path(timeseries_tsv))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarise(run)
    figures: dict[str, Path | None] = {}
    for name in FIGURES:
        path = figure_path(out_dir, run.prefix, name)
        path.unlink(missing_ok=True)  # a stale figure of an earlier report must not survive
        figures[name] = drawn(name, lambda p, name=name: draw(name, run, summary, p), path, run.notes)
    out = report_path(out_dir, run.prefix)
    out.write_text(render_html(run, summary, figures, embed), encoding="utf-8")
    return out
