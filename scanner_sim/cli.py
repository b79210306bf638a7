"""``scanner-sim``: synthesise a run and export it at TR pace.

Usage::

    scanner-sim synth SPEC.toml --export-dir DIR --truth-dir DIR
                [--speed 1.0] [--mode chunked|reopen|atomic]
                [--n-chunks 4] [--chunk-delay-s 0.01] [--start-delay-s 0]
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import Sequence

from .spec import SpecError, load_spec

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    from .writer import WRITE_MODES

    p = argparse.ArgumentParser(prog="scanner-sim", description="MRI scanner simulator for rtnf.")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("synth", help="synthesise a run with ground truth and export it at TR pace")
    s.add_argument("spec", help="run spec (TOML)")
    s.add_argument("--export-dir", required=True, help="folder the volumes are written into")
    s.add_argument("--truth-dir", required=True, help="folder for ground truth (not the export folder)")
    s.add_argument("--speed", type=float, default=1.0, help="time compression, > 0 (default 1.0)")
    s.add_argument("--mode", choices=WRITE_MODES, default="chunked", help="file write mode (default chunked)")
    s.add_argument("--n-chunks", type=int, default=4, help="pieces per file (default 4)")
    s.add_argument("--chunk-delay-s", type=float, default=0.01, help="pause between pieces, s (default 0.01)")
    s.add_argument("--recon-delay-s", type=float, default=0.05,
                   help="delay from end of acquisition to first byte, s (default 0.05)")
    s.add_argument("--start-delay-s", type=float, default=0.0,
                   help="seconds before volume 0's acquisition starts (default 0)")
    s.add_argument("-v", "--verbose", action="store_true", help="log one line per volume")
    return p


def _synth(args: argparse.Namespace) -> int:
    from .synth import SyntheticRun
    from .writer import ScannerWriter

    spec = load_spec(args.spec)
    writer = ScannerWriter(
        args.export_dir, spec, mode=args.mode, n_chunks=args.n_chunks,
        chunk_delay_s=args.chunk_delay_s, speed=args.speed, recon_delay_s=args.recon_delay_s,
    )
    run = SyntheticRun(spec)
    stop = threading.Event()
    # SIGTERM/SIGINT finish the file in progress, then stop: no partial file left behind.
    # (signal handlers can only be installed from the main thread)
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    print(
        f"scanner-sim: {spec.n_volumes} volumes, TR {spec.tr_s:g} s, speed {args.speed:g}, "
        f"mode {args.mode} -> {args.export_dir}",
        flush=True,
    )
    try:
        summary = writer.write_run(run, args.truth_dir, stop_event=stop, start_delay_s=args.start_delay_s)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    state = "aborted" if summary.aborted else "done"
    print(f"scanner-sim: {state}: {summary.n_written} volumes written in {summary.duration_s:.2f} s", flush=True)
    return 130 if summary.aborted else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``scanner-sim``; returns the exit code (2 for a bad spec or arguments)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed its message
        return int(exc.code or 0)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    try:
        return _synth(args)
    except (SpecError, ValueError) as exc:
        print(f"scanner-sim: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
