"""``rtnf report`` (and ``python -m rtnf.apps.report``): the command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .read import ReportError, find_timeseries, run_prefix
from .write import default_output_dir, write_report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``rtnf report``."""
    parser.add_argument("path", type=Path, metavar="RUN_DIR_OR_TSV",
                        help="a run's *_desc-rtnf_timeseries.tsv, or a folder searched for them (one report each)")
    parser.add_argument("-o", "--output-dir", type=Path, default=None,
                        help="folder of the report(s) (default: <sub>/<ses>/figures beside each run's func folder)")
    parser.add_argument("--embed", action="store_true",
                        help="also embed the figures in the HTML (a single file to send)")


def run(args: argparse.Namespace) -> int:
    """Write the report(s); print each HTML path. Exit code 2 when no table is found or one is not an rtnf table."""
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


def main(argv: list[str] | None = None) -> int:
    """``python -m rtnf.apps.report``: parse ``argv`` (default: the process's) and write the report(s)."""
    parser = argparse.ArgumentParser(prog="rtnf report", description="HTML report of a recorded run.")
    add_arguments(parser)
    return run(parser.parse_args(argv))
