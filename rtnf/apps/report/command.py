"""``rtnf report`` (and ``python -m rtnf.apps.report``): the command line.

``rtnf report RUN_DIR_OR_TSV`` writes one report per run;
``rtnf report longitudinal DERIVATIVES_DIR -o study.html [--participant sub-01] [--arms FILE]``
writes the longitudinal report of a study (:mod:`rtnf.apps.report.longitudinal_write`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .read import ReportError, find_timeseries, run_prefix
from .write import default_output_dir, write_report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``rtnf report``."""
    parser.add_argument("path", type=Path, metavar="RUN_DIR_OR_TSV",
                        help="a run's *_desc-rtnf_timeseries.tsv, or a folder searched for them (one report each); "
                        "or the word 'longitudinal' followed by a study's derivatives folder")
    parser.add_argument("derivatives", type=Path, nargs="?", default=None, metavar="DERIVATIVES_DIR",
                        help="after 'longitudinal': the study's BIDS derivatives folder (its runs' output.dir)")
    parser.add_argument("-o", "--output-dir", type=Path, default=None,
                        help="folder of the report(s) (default: <sub>/<ses>/figures beside each run's func folder); "
                        "longitudinal: the HTML file (default: DERIVATIVES_DIR/longitudinal_report.html)")
    parser.add_argument("--participant", default=None, metavar="SUB",
                        help="longitudinal: only this participant (sub-01 or 01)")
    parser.add_argument("--arms", type=Path, default=None, metavar="FILE",
                        help="longitudinal: arm codes by participant, for the by-arm section: the study's state "
                        "folder or its study.json (rtnf study), or a participants.tsv with participant_id and arm")
    parser.add_argument("--transfer-task", action="append", default=None, metavar="TASK",
                        help="longitudinal: task label of transfer runs, for runs recorded outside `rtnf study` "
                        "(a study's runs carry their kind; repeatable; default: transfer)")
    parser.add_argument("--embed", action="store_true",
                        help="also embed the figures in the HTML (a single file to send)")


def run(args: argparse.Namespace) -> int:
    """Write the report(s); print each HTML path. Exit code 2 when no table is found or one is not an rtnf table."""
    if str(args.path) == LONGITUDINAL and getattr(args, "derivatives", None) is not None:
        return run_longitudinal(args)
    if getattr(args, "derivatives", None) is not None:
        print(f"rtnf report: unexpected argument {args.derivatives} (a second folder is only taken after "
              f"'{LONGITUDINAL}')", file=sys.stderr)
        return 2
    try:
        tables = find_timeseries(args.path)
    except ReportError as exc:
        print(f"rtnf report: {exc}", file=sys.stderr)
        return 2
    status = 0
    for tsv in tables:
        out_dir = args.output_dir if args.output_dir is not None else default_output_dir(tsv)
        if args.output_dir is not None and len(tables) > 1:
            out_dir = args.output_dir / run_prefix(tsv)  # one folder per run
        try:
            print(write_report(tsv, out_dir, embed=getattr(args, "embed", False)))
        except ReportError as exc:
            print(f"rtnf report: {exc}", file=sys.stderr)
            status = 2
    return status


LONGITUDINAL = "longitudinal"
"""``rtnf report longitudinal DERIVATIVES_DIR``: the word that asks for the longitudinal report."""


def run_longitudinal(args: argparse.Namespace) -> int:
    """Write the longitudinal report; print the HTML path. Exit code 2 when no run is found or the arms file is bad."""
    from .longitudinal import TRANSFER_TASKS, read_arms
    from .longitudinal_write import write_longitudinal

    out = args.output_dir if args.output_dir is not None else args.derivatives / "longitudinal_report.html"
    if out.suffix != ".html":
        out = out / "longitudinal_report.html"  # a folder
    try:
        arms = read_arms(args.arms) if args.arms is not None else None
        print(write_longitudinal(args.derivatives, out, participant=args.participant, arms=arms,
                                 transfer_tasks=tuple(args.transfer_task or TRANSFER_TASKS),
                                 embed=getattr(args, "embed", False)))
    except ReportError as exc:
        print(f"rtnf report longitudinal: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m rtnf.apps.report``: parse ``argv`` (default: the process's) and write the report(s)."""
    parser = argparse.ArgumentParser(prog="rtnf report", description="HTML report of a recorded run.")
    add_arguments(parser)
    return run(parser.parse_args(argv))
