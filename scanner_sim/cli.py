"""``scanner-sim``: synthesise a run and export it at TR pace.

Usage::

    scanner-sim synth SPEC.toml --export-dir DIR --truth-dir DIR
                [--format nifti|siemens-mosaic|dicom-slices]
                [--noise-preset none|realistic]
                [--noise-from REAL_SERIES [--noise-from-series N] [--noise-from-skip N]
                 [--noise-from-scale F]]
                [--speed 1.0] [--mode chunked|reopen|atomic]
                [--n-chunks 4] [--chunk-delay-s 0.01] [--start-delay-s 0] [FAULTS]
    scanner-sim replay SOURCE --export-dir DIR --truth-dir DIR
                [--tr-s S] [--series N] [--n-volumes N] [--filename-template T]
                [--speed 1.0] [--mode ...] [FAULTS]

``--noise-preset realistic`` fills the spec's unset noise keys with
:data:`scanner_sim.spec.REALISTIC_PRESET`. ``--noise-from`` makes a real series
(4D NIfTI or DICOM folder) the background and noise: the spec's synthetic
noise keys (noise_pct, ar1, drift_*, [physio], [motion], [motion_signal],
noise_preset) and its grid (shape, voxel_mm, affine) are dropped
(:data:`scanner_sim.spec.REAL_NOISE_REPLACES`); its blocks, regions
(``center_mm`` in the series' scanner RAS mm), n_volumes, tr_s (which must
match the series'), spikes and format are kept.

FAULTS (any of them replaces the spec's ``[faults]`` table; volumes 0-based,
seconds in scanner time)::

    --drop 5,9  --late 7:3.0  --duplicate 4  --out-of-order 12  --jitter-s 0.2
    --second-series START:SERIES:N  --vanish 30:3.0
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import TYPE_CHECKING, Sequence

from .spec import FORMATS, NOISE_PRESETS, REAL_NOISE_REPLACES, Faults, SpecError, load_spec

if TYPE_CHECKING:
    from .physio_stream import PhysioStreamOptions

__all__ = ["main", "build_parser"]


def _common(s: argparse.ArgumentParser) -> None:
    from .export import WRITE_MODES

    s.add_argument("--export-dir", required=True, help="folder the files are written into")
    s.add_argument("--truth-dir", required=True, help="folder for ground truth (not the export folder)")
    s.add_argument("--speed", type=float, default=1.0, help="time compression, > 0 (default 1.0)")
    s.add_argument("--mode", choices=WRITE_MODES, default="chunked", help="file write mode (default chunked)")
    s.add_argument("--n-chunks", type=int, default=4, help="pieces per file (default 4)")
    s.add_argument("--chunk-delay-s", type=float, default=0.01, help="pause between pieces, s (default 0.01)")
    s.add_argument("--recon-delay-s", type=float, default=0.05,
                   help="delay from end of acquisition to first byte, s (default 0.05)")
    s.add_argument("--start-delay-s", type=float, default=0.0,
                   help="seconds before volume 0's acquisition starts (default 0)")
    s.add_argument("-v", "--verbose", action="store_true", help="log one line per file")
    f = s.add_argument_group("faults (any of these replaces the spec's [faults]; volumes are 0-based)")
    f.add_argument("--drop", metavar="V[,V...]", help="volumes never written")
    f.add_argument("--late", metavar="V:S", action="append", default=[], help="volume V written S s late")
    f.add_argument("--duplicate", metavar="V[,V...]", help="volumes written twice (same name, same bytes)")
    f.add_argument("--out-of-order", metavar="V[,V...]", help="volume V written after volume V+1")
    f.add_argument("--jitter-s", type=float, metavar="S", help="random delay in [0, S) s per volume")
    f.add_argument("--second-series", metavar="START:SERIES:N",
                   help="N volumes of series SERIES interleaved from volume START on")
    f.add_argument("--vanish", metavar="V:S", action="append", default=[],
                   help="export folder renamed away before volume V for S s")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    p = argparse.ArgumentParser(prog="scanner-sim", description="MRI scanner simulator for rtnf.")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("synth", help="synthesise a run with ground truth and export it at TR pace")
    s.add_argument("spec", help="run spec (TOML)")
    s.add_argument("--format", choices=FORMATS, default=None,
                   help="file format (default: the spec's, else nifti)")
    s.add_argument("--noise-preset", choices=NOISE_PRESETS, default=None,
                   help="'realistic': literature noise values for every noise key the spec leaves unset")
    s.add_argument("--noise-from", metavar="REAL_SERIES", default=None,
                   help="real task-free series (4D NIfTI or DICOM folder) used as background and noise; "
                        "replaces the spec's synthetic noise and grid")
    s.add_argument("--noise-from-series", type=int, default=None, metavar="N",
                   help="DICOM SeriesNumber in --noise-from (default: the largest series)")
    s.add_argument("--noise-from-skip", type=int, default=None, metavar="N",
                   help="leading real volumes to leave out (default 0)")
    s.add_argument("--noise-from-scale", type=float, default=None, metavar="F",
                   help="factor on the real values before the activation (default 1; e.g. 100 for Philips 0-10 scaling)")
    ph = s.add_argument_group("physiological recording, written as it happens (needs [physio] in the spec)")
    ph.add_argument("--physio-log", metavar="NAME", default=None,
                    help="growing log in the export folder: time_s, cardiac, respiratory (tab-separated, one header line)")
    ph.add_argument("--physio-lsl", metavar="NAME", default=None,
                    help="LSL outlet of that name (type physio; channels time_s, cardiac, respiratory)")
    ph.add_argument("--physio-stall", metavar="START:DURATION", default=None,
                    help="stall the recording from START for DURATION scanner seconds, then catch up")
    _common(s)
    r = sub.add_parser("replay", help="replay a real DICOM folder or 4D NIfTI at TR pace")
    r.add_argument("source", help="DICOM folder or 4D NIfTI (.nii/.nii.gz)")
    r.add_argument("--tr-s", type=float, default=None, help="TR in seconds (default: from the headers)")
    r.add_argument("--series", type=int, default=None, help="DICOM series to replay (default: the largest)")
    r.add_argument("--n-volumes", type=int, default=None, help="replay only the first N volumes")
    r.add_argument("--filename-template", default=None,
                   help="rename files: fields {name} {series} {volume} {slice} (default: original names)")
    _common(r)
    return p


def _cli_faults(args: argparse.Namespace, n_volumes: int) -> Faults | None:
    """Faults from the command line, or None when no fault flag was given."""

    def ints(text: str | None) -> list[int]:
        return [int(x) for x in text.split(",") if x.strip()] if text else []

    def pairs(items: list[str], key: str, tkey: str) -> list[dict]:
        out = []
        for it in items:
            try:
                v, t = it.split(":")
                out.append({"volume": int(v), tkey: float(t)})
            except ValueError:
                raise SpecError(f"Invalid value for '--{key}': {it!r}. Allowed: VOLUME:SECONDS, e.g. 7:2.5.") from None
        return out

    d: dict = {}
    try:
        for key in ("drop", "duplicate", "out_of_order"):
            if getattr(args, key):
                d[key] = ints(getattr(args, key))
    except ValueError as exc:
        raise SpecError(f"Invalid fault volume list: {exc}. Allowed: comma-separated integers, e.g. 5,9.") from None
    if args.late:
        d["late"] = pairs(args.late, "late", "delay_s")
    if args.vanish:
        d["vanish"] = pairs(args.vanish, "vanish", "duration_s")
    if args.jitter_s is not None:
        d["jitter_s"] = args.jitter_s
    if args.second_series:
        try:
            a, b, c = (int(x) for x in args.second_series.split(":"))
        except ValueError:
            raise SpecError(f"Invalid value for '--second-series': {args.second_series!r}. "
                            "Allowed: START:SERIES:N, e.g. 20:99:5.") from None
        d["second_series"] = {"start_volume": a, "series": b, "n_volumes": c}
    return Faults.from_dict(d, n_volumes) if d else None


def _noise_overrides(args: argparse.Namespace) -> dict | None:
    """Spec changes asked for by --noise-preset / --noise-from*, or None."""
    if args.noise_from is None:
        if args.noise_from_series is not None or args.noise_from_skip is not None or args.noise_from_scale is not None:
            raise SpecError("'--noise-from-series', '--noise-from-skip' and '--noise-from-scale' need '--noise-from'.")
        return {"noise_preset": args.noise_preset} if args.noise_preset is not None else None
    if args.noise_preset not in (None, "none"):
        raise SpecError(f"Invalid value for '--noise-preset': {args.noise_preset!r}. "
                        "Allowed: 'none' or absent with --noise-from (the real series brings the noise).")
    # None removes the key before validation (see load_spec): the real series sets these
    d: dict = {k: None for k in REAL_NOISE_REPLACES}
    d["noise_from"] = args.noise_from
    if args.noise_from_series is not None:
        d["noise_from_series"] = args.noise_from_series
    if args.noise_from_skip is not None:
        d["noise_from_skip"] = args.noise_from_skip
    if args.noise_from_scale is not None:
        d["noise_from_scale"] = args.noise_from_scale
    return d


def _physio_options(args: argparse.Namespace) -> "PhysioStreamOptions | None":
    """The physiological recording asked for by --physio-log / --physio-lsl / --physio-stall, or None."""
    from .physio_stream import PhysioStreamOptions

    if args.physio_log is None and args.physio_lsl is None:
        if args.physio_stall is not None:
            raise SpecError("'--physio-stall' needs '--physio-log' or '--physio-lsl'.")
        return None
    stall = None
    if args.physio_stall is not None:
        try:
            start, duration = (float(x) for x in args.physio_stall.split(":"))
        except ValueError:
            raise SpecError(f"Invalid value for '--physio-stall': {args.physio_stall!r}. "
                            "Allowed: START:DURATION in scanner seconds, e.g. 30:8.") from None
        stall = (start, duration)
    return PhysioStreamOptions(log=args.physio_log, lsl_name=args.physio_lsl, stall=stall)


def _install_stop() -> tuple[threading.Event, dict]:
    stop = threading.Event()
    # SIGTERM/SIGINT finish the file in progress, then stop: no partial file left behind.
    # (signal handlers can only be installed from the main thread)
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    return stop, previous


def _synth(args: argparse.Namespace) -> int:
    import dataclasses

    from .spec import DEFAULT_TEMPLATES, RunSpec
    from .synth import SyntheticRun
    from .writer import ScannerWriter

    spec = load_spec(args.spec, overrides=_noise_overrides(args))
    if args.format is not None and args.format != spec.format:
        d = spec.to_dict()
        if d.get("filename_template") == DEFAULT_TEMPLATES[spec.format]:
            del d["filename_template"]  # the new format's default name
        d["format"] = args.format
        spec = RunSpec.from_dict(d)
    faults = _cli_faults(args, spec.n_volumes)
    if faults is not None:
        spec = dataclasses.replace(spec, faults=faults)
    writer = ScannerWriter(
        args.export_dir, spec, mode=args.mode, n_chunks=args.n_chunks,
        chunk_delay_s=args.chunk_delay_s, speed=args.speed, recon_delay_s=args.recon_delay_s,
    )
    run = SyntheticRun(spec)
    stop, previous = _install_stop()
    print(
        f"scanner-sim: {spec.n_volumes} volumes, TR {spec.tr_s:g} s, {spec.format}, speed {args.speed:g}, "
        f"mode {args.mode} -> {args.export_dir}",
        flush=True,
    )
    try:
        summary = writer.write_run(run, args.truth_dir, stop_event=stop, start_delay_s=args.start_delay_s,
                                   physio=_physio_options(args))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    state = "aborted" if summary.aborted else "done"
    print(f"scanner-sim: {state}: {summary.n_written} volumes written in {summary.duration_s:.2f} s", flush=True)
    return 130 if summary.aborted else 0


def _replay(args: argparse.Namespace) -> int:
    from .replay import Replayer, load_source

    source = load_source(args.source, tr_s=args.tr_s, series=args.series)
    replayer = Replayer(args.export_dir, source, mode=args.mode, n_chunks=args.n_chunks,
                        chunk_delay_s=args.chunk_delay_s, speed=args.speed, recon_delay_s=args.recon_delay_s,
                        n_volumes=args.n_volumes, filename_template=args.filename_template)
    faults = _cli_faults(args, replayer.n_volumes)
    stop, previous = _install_stop()
    print(f"scanner-sim: replay {source.kind} series {source.series}: {replayer.n_volumes} volumes, "
          f"TR {source.tr_s:g} s, speed {args.speed:g}, mode {args.mode} -> {args.export_dir}", flush=True)
    try:
        summary = replayer.replay(args.truth_dir, faults=faults, stop_event=stop, start_delay_s=args.start_delay_s)
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
        return _synth(args) if args.command == "synth" else _replay(args)
    except (SpecError, ValueError) as exc:
        print(f"scanner-sim: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
