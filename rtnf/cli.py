"""The ``rtnf`` command: ``run``, ``demo`` and ``check``.

Errors the user can fix (a bad config, a busy port, existing outputs) are
printed as one message with exit code 2, never as a traceback; so is a config
that the first volume shows cannot work (a ``motion.reference`` on another
grid). ``run``, ``replay`` and ``session`` exit with 1 when a run was aborted
or produced no usable volume (every volume missing, unreadable or failing),
and with 0 when every run ended with at least one usable volume.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from . import __version__

EXIT_USAGE = 2
EXIT_RUN_FAILED = 1  # a run aborted, or ended without one usable volume


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rtnf", description="Real-time fMRI neurofeedback.")
    parser.add_argument("--version", action="version", version=f"rtnf {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a session: watch the export folder, process, publish, record")
    run.add_argument("config", type=Path, help="session config (TOML)")
    run.add_argument("--export-dir", type=Path, help="override scanner.export_dir")
    run.add_argument("--output-dir", type=Path, help="override output.dir")
    run.add_argument("--publish-address", help="override publish.address")
    run.add_argument("--overwrite", action="store_true", help="replace earlier outputs of the same run")
    run.add_argument("--resume", action="store_true",
                     help="continue this run after a crash: rebuild the model from the export folder, keep its rows")
    run.add_argument("--console", action="store_true", help="also serve the operator console (a read-only web page)")
    run.add_argument("--console-port", type=int, default=5006, help="port of the console on 127.0.0.1 (default 5006)")

    replay = sub.add_parser("replay", help="run the pipeline on recorded runs (export folders or 4D NIfTI files)")
    replay.add_argument("config", type=Path, help="session config (TOML)")
    replay.add_argument("sources", type=Path, nargs="+", help="export folder(s) or 4D NIfTI file(s) to replay")
    replay.add_argument("--pace", choices=["fast", "tr"], default="fast",
                        help="as fast as the machine allows (default) or one volume per TR")
    replay.add_argument("--speed", type=float, default=1.0, help="with --pace tr: TR divided by this")
    replay.add_argument("--output-dir", type=Path, help="override output.dir")
    replay.add_argument("--publish-address", help="publish as a live run does (default: nowhere)")
    replay.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set feedback.smoothing_alpha=0.5 (TOML value)")
    replay.add_argument("--jobs", type=int, default=1, help="replays run in parallel in a local process pool")
    replay.add_argument("--dask", metavar="ADDRESS", help="run the replays on a Dask cluster (scheduler address)")
    replay.add_argument("--overwrite", action="store_true", help="replace earlier outputs of the same runs")

    check = sub.add_parser("check", help="validate a session config and print its protocol")
    check.add_argument("config", type=Path)

    opennft = sub.add_parser(
        "import-opennft", help="write an rtnf session config from OpenNFT settings (.ini) and protocol (.json)",
        description="Coming from OpenNFT: write the rtnf session config (TOML) equivalent to an OpenNFT "
        "settings file and its protocol JSON: export folder, file-name template and series number, TR, "
        "volumes and skipped volumes, ROI masks of RoiFilesFolder, the protocol's blocks (OnOffsets, 1-based "
        "and inclusive after the skipped volumes, become 0-based onsets and durations in volumes), the "
        "baseline, continuous or intermittent feedback. What has no rtnf equivalent is printed and listed "
        "as comments at the end of the file. Check the result with `rtnf check` before a session.",
        epilog="example: rtnf import-opennft NF_PSC_cont_155.ini NF_PSC_cont_155.json -o psc_cont.toml",
    )
    opennft.add_argument("settings", type=Path, help="OpenNFT settings file (.ini)")
    opennft.add_argument("protocol", type=Path, nargs="?",
                         help="OpenNFT protocol (.json); default: the settings' StimulationProtocol")
    opennft.add_argument("-o", "--output", type=Path, help="config to write (default: SETTINGS with .toml)")
    opennft.add_argument("--overwrite", action="store_true", help="replace an existing output file")

    demo = sub.add_parser("demo", help="a complete simulated session on this machine")
    demo.add_argument("--config", type=Path, default=None, help="session config (default: config/demo_acc.toml)")
    demo.add_argument("--output-dir", type=Path, default=Path("rtnf-demo"), help="where the demo writes (default: ./rtnf-demo)")
    demo.add_argument("--speed", type=float, default=2.0, help="simulated scanner speed-up (default 2: a TR of 2 s takes 1 s)")
    demo.add_argument("--amplitude-pct", type=float, default=1.5, help="true activation in the ROI, percent")
    demo.add_argument("--noise-pct", type=float, default=1.0, help="voxel noise, percent of brain mean")
    demo.add_argument("--no-screen", action="store_true", help="run without the PsychoPy feedback screen")
    demo.add_argument("--console", action="store_true", help="also serve the operator console during the demo")
    demo.add_argument("--console-port", type=int, default=5006, help="port of the console on 127.0.0.1 (default 5006)")

    fid = sub.add_parser(
        "fidelity", help="does a recorded run's feedback follow its ROI? correlations with the task, steps, saturation",
        description="Measure a recorded run's feedback fidelity for one ROI: the correlation with the task regressor "
        "of the raw ROI mean, the cleaned signal, its percent signal change and the shown value; the agreement of "
        "the online cleaned signal with a batch analysis of the whole run; the largest step a model update made; "
        "the fraction of regulation volumes shown at either end of the bar.",
        epilog="example: rtnf fidelity my_run.toml out/sub-01/ses-01/func/sub-01_ses-01_task-nf_run-1_desc-rtnf_timeseries.tsv --from-volume 100",
    )
    fid.add_argument("config", type=Path, help="the run's session config (TOML)")
    fid.add_argument("table", type=Path, help="the run's _desc-rtnf_timeseries.tsv")
    fid.add_argument("--roi", help="ROI name (default: the first feedback ROI)")
    fid.add_argument("--from-volume", type=int, default=0, help="evaluate kept volumes from this index on (default 0)")

    from . import lsl as lsl_cmd  # pylsl is imported only when the bridge starts
    from . import report as report_cmd  # matplotlib is imported only when a report is written
    from . import roidef as roi_cmd  # SimpleITK and nilearn are imported only when an ROI is made

    roi = sub.add_parser("roi", help="define an ROI on the reference volume (mask + PNG to check)")
    roi_cmd.add_arguments(roi)
    lsl = sub.add_parser("lsl", help="republish feedback and volume markers on Lab Streaming Layer (EEG-fMRI)")
    lsl_cmd.add_arguments(lsl)
    ses = sub.add_parser("session", help="run the runs of a session file in order (localizer, feedback, transfer)")
    ses.add_argument("session_file", type=Path, help="session file (TOML) listing the runs")
    ses.add_argument("--replay", type=Path, nargs="+", metavar="SOURCE",
                     help="replay recorded runs instead of watching the scanner: one source per run, in order")
    ses.add_argument("--overwrite", action="store_true", help="replace earlier outputs of the same runs")
    from .console import cli as console_cli  # light: the web stack is imported only when serving

    keys = sub.add_parser("keys", help="generate ZeroMQ CURVE keys for a screen or console on another machine")
    keys.add_argument("folder", type=Path)
    keys.add_argument("--client", action="append", default=[], help="client name (repeatable), e.g. screen, console")
    keys.add_argument("--overwrite", action="store_true")

    rep = sub.add_parser("report", help="HTML report with PNG figures for a recorded run")
    report_cmd.add_arguments(rep)

    con = sub.add_parser("console", help="live operator console: a read-only web page on loopback")
    console_cli.add_arguments(con)
    bench = sub.add_parser("bench", help="latency benchmarks of the pipeline's stages")
    bench.add_argument("--json", action="store_true", help="print results as JSON")
    stages = bench.add_subparsers(dest="stage", required=True)
    for module in _bench_stages():
        stage = stages.add_parser(module.NAME, help=module.HELP)
        module.add_arguments(stage)
        stage.set_defaults(bench_module=module)
    return parser


def _bench_stages() -> list:
    import importlib

    from .bench import STAGES

    return [importlib.import_module(f"rtnf.bench.{name}") for name in STAGES]


def _cmd_bench(args: argparse.Namespace) -> int:
    import json

    results = args.bench_module.run(args)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(results.get("text", json.dumps(results, indent=2)))
    return 0


def _overrides(args: argparse.Namespace) -> dict[str, object]:
    out: dict[str, object] = {}
    if getattr(args, "export_dir", None):
        out["scanner.export_dir"] = str(args.export_dir.resolve())
    if getattr(args, "output_dir", None):
        out["output.dir"] = str(args.output_dir.resolve())
    if getattr(args, "publish_address", None):
        out["publish.address"] = args.publish_address
    return out


def _cmd_run(args: argparse.Namespace) -> int:
    from .config import load_config
    from .record import OutputExistsError
    from .session import run_session

    cfg = load_config(args.config, _overrides(args))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    console = None
    if args.console:
        from .console import cli as console_cli

        # A child process keeps the web server off the pipeline's GIL.
        console = console_cli.spawn(cfg.publish.address, port=args.console_port)
        print(f"operator console: http://127.0.0.1:{args.console_port}/")
    try:
        result = run_session(
            cfg, args.config.read_text(encoding="utf-8"), overwrite=args.overwrite, stop=stop, resume=args.resume
        )
    except (OutputExistsError, OSError) as exc:
        print(f"rtnf run: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        if console is not None:
            console.terminate()
            console.wait(10)
    print(
        f"run {result.status}: {result.n_processed} volumes processed, {result.n_missing} missing; "
        f"table: {result.timeseries}"
    )
    if result.status != "ended":
        print(f"reason: {result.reason}", file=sys.stderr)
        return EXIT_RUN_FAILED
    return 0 if result.ok else EXIT_RUN_FAILED  # the run's alarm has said why, on stderr and the log topic


def _parse_sets(sets: list[str]) -> dict[str, object]:
    import tomllib

    from .config import ConfigError

    out: dict[str, object] = {}
    for item in sets:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"invalid --set {item!r}. Allowed: KEY=VALUE, e.g. feedback.smoothing_alpha=0.5")
        try:
            out[key.strip()] = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = text  # a bare word: a string
    return out


def _cmd_replay(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .config import load_config
    from .record import OutputExistsError
    from .replay import ReplayJob, replay_many, replay_one

    base = _overrides(args) | _parse_sets(args.sets)
    cfg = load_config(args.config, base)  # fails early, with the config's message, on a bad override
    jobs = []
    for k, source in enumerate(args.sources):
        overrides = dict(base)
        if len(args.sources) > 1:
            overrides["session.run"] = cfg.session.run + k  # one run number per replayed source
        jobs.append(ReplayJob(args.config, source.resolve(), overrides, args.pace, args.speed, args.overwrite))
    console = Console()
    try:
        if len(jobs) == 1 and not args.dask:
            with Progress(TextColumn("[bold]replay"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                          console=console) as progress:
                task = progress.add_task("", total=cfg.n_kept_volumes)
                results = [replay_one(jobs[0], lambda v, f: progress.update(task, completed=v["index"] + 1))]
        else:
            results = replay_many(jobs, args.jobs, args.dask)
    except (OutputExistsError, FileNotFoundError) as exc:
        print(f"rtnf replay: {exc}", file=sys.stderr)
        return EXIT_USAGE
    for r in results:
        console.print(f"{r['source']}: {r['status']}, {r['processed']} volumes, {r['missing']} missing, "
                      f"{r['seconds']:.1f} s -> {r['timeseries']}", soft_wrap=True)
    return 0 if all(r["status"] == "ended" and r["processed"] > 0 for r in results) else EXIT_RUN_FAILED


def _cmd_session(args: argparse.Namespace) -> int:
    from .record import OutputExistsError
    from .replay import ReplayFeeder
    from .session import run_session
    from .study_session import load_study_session, run_study_session

    study = load_study_session(args.session_file)
    if args.replay is not None and len(args.replay) != len(study.runs):
        print(f"rtnf session: --replay needs one source per run ({len(study.runs)}), got {len(args.replay)}",
              file=sys.stderr)
        return EXIT_USAGE
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    sources = iter(args.replay or [])

    def run_one(cfg, config_path):
        factory = None
        if args.replay is not None:
            source = next(sources).resolve()
            factory = lambda export, put: ReplayFeeder(source, export, put, 0.0, cfg.scanner.first_volume_number)  # noqa: E731
        result = run_session(cfg, config_path.read_text(encoding="utf-8"), overwrite=args.overwrite, stop=stop,
                             feeder_factory=factory)
        print(f"{cfg.session.task} run {cfg.session.run}: {result.status}, {result.n_processed} volumes, "
              f"{result.n_missing} missing -> {result.timeseries}")
        return result

    try:
        results = run_study_session(study, run_one, stop)
    except (OutputExistsError, OSError) as exc:
        print(f"rtnf session: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return 0 if results and all(r.ok for r in results) else EXIT_RUN_FAILED


def _cmd_import_opennft(args: argparse.Namespace) -> int:
    from .config import ConfigError, load_config
    from .opennft import OpenNFTError, import_opennft

    out = args.output or args.settings.with_suffix(".toml")
    try:
        if out.exists() and not args.overwrite:
            raise OpenNFTError(f"{out} exists already; use --overwrite or another -o")
        text, conv = import_opennft(args.settings, args.protocol)
        out.write_text(text, encoding="utf-8")
    except (OpenNFTError, OSError) as exc:
        print(f"rtnf import-opennft: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"wrote {out}")
    for line in conv.unmapped:
        print(f"  not carried over or to check: {line}")
    try:
        load_config(out)
    except ConfigError as exc:  # written anyway: the operator fixes what the settings could not say
        print(f"  to fix before a session: {exc}")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from .config import load_config

    cfg = load_config(args.config)
    protocol = cfg.make_protocol()
    print(f"{args.config}: valid")
    print(f"  run: {cfg.scanner.n_volumes} volumes ({cfg.scanner.dummy_volumes} dummies) at TR {cfg.scanner.tr_s} s")
    for seg in protocol.segments():
        print(f"  volumes {seg.start:4d}-{seg.stop - 1:4d}  {seg.condition}")
    print(f"  ROIs: {', '.join(cfg.rois)}; feedback from {' + '.join(cfg.feedback.targets)}")
    return 0


def _cmd_fidelity(args: argparse.Namespace) -> int:
    import json

    from .config import load_config
    from .demo import read_tsv
    from .fidelity import assess

    cfg = load_config(args.config)
    try:
        rows = read_tsv(args.table)
    except OSError as exc:
        print(f"rtnf fidelity: cannot read {args.table}: {exc.strerror}", file=sys.stderr)
        return 2
    if args.roi is not None and args.roi not in cfg.rois:
        print(f"rtnf fidelity: no ROI {args.roi!r} in {args.config} (ROIs: {', '.join(cfg.rois)})", file=sys.stderr)
        return 2
    figures = assess(cfg, rows, args.roi, args.from_volume)
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in figures.as_dict().items()}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``rtnf`` console script."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .config import ConfigError

    try:
        if args.command == "run":
            return _cmd_run(args)
        if args.command == "check":
            return _cmd_check(args)
        if args.command == "import-opennft":
            return _cmd_import_opennft(args)
        if args.command == "fidelity":
            return _cmd_fidelity(args)
        if args.command == "bench":
            return _cmd_bench(args)
        if args.command == "replay":
            return _cmd_replay(args)
        if args.command == "roi":
            from . import roidef as roi_cmd

            return roi_cmd.run(args)
        if args.command == "lsl":
            from . import lsl as lsl_cmd

            return lsl_cmd.run(args)
        if args.command == "session":
            return _cmd_session(args)
        if args.command == "keys":
            from .keys import main as keys_main

            argv = [str(args.folder)] + [a for c in args.client for a in ("--client", c)]
            return keys_main(argv + (["--overwrite"] if args.overwrite else []))
        if args.command == "report":
            from . import report as report_cmd

            return report_cmd.run(args)
        if args.command == "console":
            from .console import cli as console_cli

            return console_cli.run(args)
        from .demo import run_demo

        return run_demo(args)
    except ConfigError as exc:
        print(f"rtnf {args.command}: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
