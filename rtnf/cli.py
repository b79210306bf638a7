"""The ``rtnf`` command. Its sub-commands, in the order ``rtnf --help`` lists them:

- ``run``: one run at the scanner (watch the export folder, process, publish, record)
- ``replay``: recorded runs (export folders or 4D NIfTI files) through the same pipeline
- ``check``: validate a session config and print its protocol
- ``import-opennft``: a session config from OpenNFT settings (.ini) and protocol (.json)
- ``demo``: a complete simulated session on this machine
- ``fidelity``: does a recorded run's feedback follow its ROI?
- ``decoder``: train a decoder of voxel patterns (decoded neurofeedback)
- ``roi``: define an ROI on the reference volume
- ``lsl``: feedback and volume markers republished on Lab Streaming Layer
- ``session``: the runs of a session file in order (localizer, feedback, transfer)
- ``study``: a multi-session study with concealed arms (``init``, ``next``, ``status``, ``unblind``)
- ``keys``: ZeroMQ CURVE keys for a screen or console on another machine
- ``report``: an HTML report of a recorded run (``report longitudinal``: of a study, per participant and arm code)
- ``console``: the live operator console (a read-only web page on loopback)
- ``bench``: latency benchmarks of the pipeline's stages (``read``, ``motion``, ``glm``, ``pipeline``, ``soak``, ``e2e``)

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
import os
import signal
import sys
import threading
from pathlib import Path

from rtnf import __version__
from rtnf._cli_help import add_command as _command

EXIT_USAGE = 2
EXIT_RUN_FAILED = 1  # a run aborted, or ended without one usable volume


def _address_options(parser: argparse.ArgumentParser, what: str) -> None:
    """``--address`` (what the command binds to), with the old ``--publish-address`` as a hidden alias."""
    parser.add_argument("--address", dest="publish_address", metavar="ADDRESS", help=what)
    parser.add_argument("--publish-address", dest="publish_address", help=argparse.SUPPRESS)


def _run_options(parser: argparse.ArgumentParser) -> None:
    """``--run`` and ``--set``: change the config for one run without editing the TOML."""
    parser.add_argument("--run", type=int, metavar="N", help="run number, overriding session.run (outputs: run-N)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set feedback.smoothing_alpha=0.5 (a TOML value; "
                             "repeatable)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rtnf", description="Real-time fMRI neurofeedback: `rtnf COMMAND --help` describes each command.",
        epilog="example: rtnf check my_run.toml && rtnf run my_run.toml --run 1",
    )
    parser.add_argument("--version", action="version", version=f"rtnf {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True)

    run = _command(
        sub, "run", "run a session: watch the export folder, process, publish, record",
        """Run one session at the scanner: watch the config's export folder, correct head motion, extract the
        ROI signals, update the GLM, publish the feedback value to the participant's screen and record every
        volume under output.dir (BIDS derivatives). One line per volume shows "volume N of M" (N counted from
        1 after the dummies, the scanner's file number beside it), the condition, the feedback value or why
        it is null, framewise displacement and latency. --run and --set change the config for this run only,
        so the TOML is never edited between runs. Ctrl-C ends the run with every row kept; --resume
        continues after a crash.""",
        "rtnf run my_run.toml --run 2",
        "rtnf run my_run.toml --run 3 --set feedback.smoothing_alpha=0.5 --set quality.fd_threshold_mm=0.9",
    )
    run.add_argument("config", type=Path, help="session config (TOML)")
    _run_options(run)
    run.add_argument("--export-dir", type=Path, help="override scanner.export_dir")
    run.add_argument("--output-dir", type=Path, help="override output.dir")
    _address_options(run, "address to publish on, overriding publish.address (e.g. tcp://127.0.0.1:5555)")
    run.add_argument("--overwrite", action="store_true", help="replace earlier outputs of the same run")
    run.add_argument("--create-export-dir", action="store_true",
                     help="create scanner.export_dir when it is missing (by default a missing export folder is an "
                          "error: an unmounted share must not silently become a local folder)")
    run.add_argument("--resume", action="store_true",
                     help="continue this run after a crash: rebuild the model from the export folder, keep its rows")
    run.add_argument("--console", action="store_true", help="also serve the operator console (a read-only web page)")
    run.add_argument("--console-port", type=int, default=5006, help="port of the console on 127.0.0.1 (default 5006)")
    run.add_argument("--ack-address", dest="console_screen_address", default=None, metavar="ADDRESS",
                     help="the feedback screen's acknowledgement address (rtnf-screen --ack-address): rtnf records "
                          "what the screen showed and the keys pressed from there, and the console listens to it "
                          "(overrides publish.screen_address, default tcp://127.0.0.1:5556)")
    run.add_argument("--console-screen-address", dest="console_screen_address", help=argparse.SUPPRESS)  # old name
    run.add_argument("--console-no-screen", action="store_true",
                     help="no feedback screen is used: the console does not wait for one nor alert when it is silent")
    run.add_argument("--console-linger-s", type=float, default=None, metavar="S",
                     help="after the run, keep the console's page (showing the ended run) this many seconds "
                          "(default: until Ctrl-C)")

    replay = _command(
        sub, "replay", "run the pipeline on recorded runs (export folders or 4D NIfTI files)",
        """Replay recorded runs (export folders or 4D NIfTI files) through the same pipeline as `rtnf run`,
        writing exactly the outputs a live run writes (only the timing columns differ): to compare settings
        with --set, or to redo a run's outputs. Several sources get consecutive run numbers from session.run
        (or --run) and run in a local process pool (--jobs) or on a Dask cluster (--dask).""",
        "rtnf replay my_run.toml recorded/export --run 11 --set feedback.smoothing_alpha=0.5",
        "rtnf replay my_run.toml run1.nii.gz run2.nii.gz --jobs 2",
    )
    replay.add_argument("config", type=Path, help="session config (TOML)")
    replay.add_argument("sources", type=Path, nargs="+", help="export folder(s) or 4D NIfTI file(s) to replay")
    replay.add_argument("--pace", choices=["fast", "tr"], default="fast",
                        help="as fast as the machine allows (default) or one volume per TR")
    replay.add_argument("--speed", type=float, default=1.0, help="with --pace tr: TR divided by this")
    replay.add_argument("--output-dir", type=Path,
                        help="override output.dir; the replay writes into its folder replay[-<--set overrides>] there")
    _address_options(replay, "publish on this address as a live run does (default: nowhere)")
    _run_options(replay)
    replay.add_argument("--jobs", type=int, default=1, help="replays run in parallel in a local process pool")
    replay.add_argument("--dask", metavar="ADDRESS", help="run the replays on a Dask cluster (scheduler address)")
    replay.add_argument("--overwrite", action="store_true", help="replace earlier outputs of the same runs")

    check = _command(
        sub, "check", "validate a session config and print its protocol",
        """Validate a session config without running anything: every key and value, the files it names, the
        protocol against the run's length, ROIs against scanner.reference_volume's field of view, and values
        that cannot be meant (a drift cutoff that looks like a frequency). Prints the protocol block by block,
        or one message naming the key, the bad value and what is allowed (exit code 2). Values that are
        allowed but implausible (a fixed feedback range the signal can never fill) are printed as warnings
        on stderr; the exit code stays 0. Slice timing: on or off, the reference time and the slice times the
        run will use (the config's, or a volume's header: give one with --volume).""",
        "rtnf check my_run.toml",
        "rtnf check my_run.toml --volume export/001_000005_000001.dcm",
    )
    check.add_argument("config", type=Path, help="session config (TOML)")
    check.add_argument("--volume", type=Path, nargs="+", metavar="FILE",
                       help="a volume of the series (one file; slice files: all of one volume's): its slice times "
                            "and slice count, as the run reads them at its first volume")
    _run_options(check)

    opennft = _command(
        sub, "import-opennft", "write an rtnf session config from OpenNFT settings (.ini) and protocol (.json)",
        """Coming from OpenNFT: write the rtnf session config (TOML) equivalent to an OpenNFT
        settings file and its protocol JSON: export folder, file-name template and series number, TR,
        volumes and skipped volumes, ROI masks of RoiFilesFolder, the protocol's blocks (OnOffsets, 1-based
        and inclusive after the skipped volumes, become 0-based onsets and durations in volumes), the
        baseline, continuous or intermittent feedback. What has no rtnf equivalent is printed and listed
        as comments at the end of the file. Check the result with `rtnf check` before a session.""",
        "rtnf import-opennft NF_PSC_cont_155.ini NF_PSC_cont_155.json -o psc_cont.toml",
    )
    opennft.add_argument("settings", type=Path, help="OpenNFT settings file (.ini)")
    opennft.add_argument("protocol", type=Path, nargs="?",
                         help="OpenNFT protocol (.json); default: the settings' StimulationProtocol")
    opennft.add_argument("-o", "--output", type=Path, help="config to write (default: SETTINGS with .toml)")
    opennft.add_argument("--overwrite", action="store_true", help="replace an existing output file")

    demo = _command(
        sub, "demo", "a complete simulated session on this machine",
        """A complete simulated session on this machine, as at the scanner: scanner-sim writes a synthetic run
        with a known activation into an export folder, `rtnf run` processes it with config/demo_acc.toml (or
        --config), the feedback screen shows the bar (under Xvfb when there is no display). At the end it
        prints a summary checked against the simulator's ground truth and writes an HTML report.""",
        "rtnf demo --no-screen --speed 4",
    )
    demo.add_argument("--config", type=Path, default=None, help="session config (default: config/demo_acc.toml)")
    demo.add_argument("--output-dir", type=Path, default=Path("rtnf-demo"), help="where the demo writes (default: ./rtnf-demo)")
    demo.add_argument("--speed", type=float, default=2.0, help="simulated scanner speed-up (default 2: a TR of 2 s takes 1 s)")
    demo.add_argument("--amplitude-pct", type=float, default=1.5, help="true activation in the ROI, percent")
    demo.add_argument("--noise-pct", type=float, default=1.0, help="voxel noise, percent of brain mean")
    demo.add_argument("--no-screen", action="store_true", help="run without the PsychoPy feedback screen")
    demo.add_argument("--console", action="store_true", help="also serve the operator console during the demo")
    demo.add_argument("--console-port", type=int, default=5006, help="port of the console on 127.0.0.1 (default 5006)")

    fid = _command(
        sub, "fidelity", "does a recorded run's feedback follow its ROI? correlations with the task, steps, saturation",
        """Measure a recorded run's feedback fidelity for one ROI: the correlation with the task regressor
        of the raw ROI mean, the cleaned signal, its percent signal change and the shown value; the agreement of
        the online cleaned signal with a batch analysis of the whole run; the largest step a model update made;
        the fraction of regulation volumes shown at either end of the bar.""",
        "rtnf fidelity my_run.toml out/sub-01/ses-01/func/sub-01_ses-01_task-nf_run-1_desc-rtnf_timeseries.tsv "
        "--from-volume 100",
    )
    fid.add_argument("config", type=Path, help="the run's session config (TOML)")
    fid.add_argument("table", type=Path, help="the run's _desc-rtnf_timeseries.tsv")
    fid.add_argument("--roi", help="ROI name (default: the first feedback ROI)")
    fid.add_argument("--from-volume", type=int, default=0, help="evaluate kept volumes from this index on (default 0)")

    from .apps import lsl as lsl_cmd  # pylsl is imported only when the bridge starts
    from .apps import report as report_cmd  # matplotlib is imported only when a report is written
    from .apps import roidef as roi_cmd  # SimpleITK and nilearn are imported only when an ROI is made
    from .apps import decoder as decoder_cmd  # scikit-learn is imported only when a decoder is trained

    roi = _command(
        sub, "roi", "define an ROI on the reference volume (mask + PNG to check)",
        """Define an ROI before the session as a mask on the participant's functional grid, from a sphere in
        the participant's scanner space (RAS mm of the functional images), a mask or atlas label in any space,
        a region or sphere in MNI space (the MNI152 template registered to the reference volume), or the top
        voxels of a localizer t-map. Writes the mask, a PNG of it over the reference volume to check, and
        prints the lines to paste into the config.""",
        "rtnf roi mni --atlas harvard-oxford --label Cingulate_Gyrus_anterior_division -r ref.nii.gz -o acc.nii.gz",
        "rtnf roi mni --atlas hcp --atlas-dir atlases/ --label Area_a24 --label Area_p32 --t1 T1.nii.gz "
        "-r ref.nii.gz -o pgacc.nii.gz",
        "rtnf roi mni --center-mm 0 30 15 --radius-mm 8 -r ref.nii.gz -o acc.nii.gz   # MNI coordinates",
        "rtnf roi transfer --from day1_ref.nii.gz --masks acc.nii.gz --to day3_ref.nii.gz -o day3_rois/   # day 1 -> N",
        "rtnf roi sphere --center-mm 2 41 12 --radius-mm 8 -r ref.nii.gz -o acc.nii.gz   # scanner coordinates",
        "rtnf roi tissue --atlas HO_sub.nii.gz --table HO_sub.csv -r ref.nii.gz -o tissue/   # WM/CSF masks",
    )
    roi_cmd.add_arguments(roi)
    decoder = _command(
        sub, "decoder", "train a decoder of voxel patterns for decoded neurofeedback",
        """Train a classifier of a mask's voxel patterns on a localizer run (realigned, detrended, labelled by
        its events shifted by the hemodynamic lag) and save it with its reference volume and a training report
        (cross-validated accuracy). A feedback run uses it as [signals.<name>] class = "decoder" and feeds back
        the target class's probability each volume.""",
        "rtnf decoder train --series loc/ --events loc_events.tsv --mask occipital.nii.gz --classes dogs scissors "
        "-o decoder/",
    )
    decoder_cmd.add_arguments(decoder)
    lsl = _command(
        sub, "lsl", "republish feedback and volume markers on Lab Streaming Layer (EEG-fMRI)",
        """Republish rtnf's feedback values and one marker per volume on Lab Streaming Layer, so that EEG-fMRI
        set-ups record rtnf in the same XDF file as the EEG. Subscribes to rtnf's publish address (--address)
        and runs until Ctrl-C; start it before or after `rtnf run`.""",
        "rtnf lsl --address tcp://127.0.0.1:5555 --prefix rtnf",
    )
    lsl_cmd.add_arguments(lsl)
    ses = _command(
        sub, "session", "run the runs of a session file in order (localizer, feedback, transfer)",
        """Run the runs of a session file in order, for example a localizer without feedback, a feedback run
        whose ROI is the localizer's top voxels, and a transfer run without feedback, numbering runs per task
        into one BIDS derivatives dataset. With --replay, recorded runs stand in for the scanner.""",
        "rtnf session my_session.toml",
        "rtnf session my_session.toml --replay localizer/export feedback/export transfer/export",
    )
    ses.add_argument("session_file", type=Path, help="session file (TOML) listing the runs")
    ses.add_argument("--replay", type=Path, nargs="+", metavar="SOURCE",
                     help="replay recorded runs instead of watching the scanner: one source per run, in order")
    ses.add_argument("--overwrite", action="store_true", help="replace earlier outputs of the same runs")
    from rtnf.study import command as study_cmd  # light: the pipeline is imported only when a run starts

    study = _command(
        sub, "study", "a multi-session study: participants, sessions, arms under codes (init, next, status, unblind)",
        """A study file lists participants, sessions, the runs of each session, the ROI strategy and the arms.
        `init` allocates participants to arm codes and writes the blinding key; `next` prints and runs a
        participant's next run (resuming one a crash interrupted); `status` shows where everyone stands,
        by arm code only; `unblind --key KEY` reveals the arms.""",
        "rtnf study init study.toml",
        "rtnf study next P01 --study study.toml",
        "rtnf study unblind --study study.toml --key accpain.key",
    )
    study_cmd.add_arguments(study)
    from rtnf.apps.console import cli as console_cli  # light: the web stack is imported only when serving

    keys = _command(
        sub, "keys", "generate ZeroMQ CURVE keys for a screen or console on another machine",
        """Generate ZeroMQ CURVE keys when the feedback screen or the console runs on another machine: rtnf's
        key pair and one per client, in FOLDER. Set publish.curve_keys = FOLDER in the config, copy each
        client's secret key to that client only, and start the screen with --curve-keys.""",
        "rtnf keys keys/ --client screen --client console",
    )
    keys.add_argument("folder", type=Path, help="where to write the keys")
    keys.add_argument("--client", action="append", default=[], help="client name (repeatable), e.g. screen, console")
    keys.add_argument("--overwrite", action="store_true", help="replace existing keys")

    rep = _command(
        sub, "report", "HTML report with PNG figures for a recorded run, or a study's longitudinal report",
        """Write an HTML report per recorded run: ROI time courses over the blocks, feedback, motion and
        framewise displacement, latency per stage, missing and censored volumes, percent signal change per
        condition, regulation success per block and temporal SNR. `rtnf report longitudinal DERIVATIVES_DIR`
        writes one page for a study instead: per participant across sessions (learning curve, transfer-run
        effect, PSC by condition, FD, tSNR, ratings) and per arm code, with its numbers as TSV and JSON.""",
        "rtnf report out/sub-01/ses-01/func -o reports/",
        "rtnf report longitudinal out/ -o reports/study.html --arms study-state/",
        "rtnf report longitudinal out/ --participant sub-01 -o reports/sub-01.html",
    )
    report_cmd.add_arguments(rep)

    con = _command(
        sub, "console", "live operator console: a read-only web page on loopback",
        """Serve the live operator console, a read-only web page on loopback: run state, ROI signals over the
        blocks, feedback, motion and framewise displacement, latency, the latest volume's slices, missing,
        late and censored volumes, and alerts. It subscribes to rtnf's publish address (--address) and to the
        feedback screen's acknowledgements; `rtnf run --console` starts it for you.""",
        "rtnf console --address tcp://127.0.0.1:5555 --port 5006",
    )
    console_cli.add_arguments(con)
    bench = _command(
        sub, "bench", "latency benchmarks of the pipeline's stages",
        """Latency benchmarks of the pipeline's stages, printed as per-stage percentiles and memory (--json for
        JSON). Run them on a quiet machine; speed claims come from these commands, never from tests.""",
        "rtnf bench pipeline --volumes 100",
    )
    bench.add_argument("--json", action="store_true", help="print results as JSON")
    stages = bench.add_subparsers(dest="stage", required=True)
    for module in _bench_stages():
        stage = _command(stages, module.NAME, module.HELP, f"Benchmark: {module.HELP}.", f"rtnf bench {module.NAME}")
        module.add_arguments(stage)
        stage.set_defaults(bench_module=module)
    return parser


def _bench_stages() -> list:
    import importlib

    from rtnf.apps.bench import STAGES

    return [importlib.import_module(f"rtnf.apps.bench.{name}") for name in STAGES]


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
    if getattr(args, "console_screen_address", None):  # --ack-address: rtnf records the screen's events from there
        out["publish.screen_address"] = args.console_screen_address
    out |= _parse_sets(getattr(args, "sets", []))
    if getattr(args, "run", None) is not None:
        out["session.run"] = args.run
    return out


def _ensure_export_dir(folder: Path, create: bool) -> None:
    """A missing export folder is a config error unless the operator asked for it to be created."""
    from .config import ConfigError

    if folder.is_dir():
        return
    if not create:
        raise ConfigError(
            f"invalid value for 'scanner.export_dir': {folder} does not exist (is the share mounted?). "
            "Allowed: an existing folder, or pass --create-export-dir to create it."
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"invalid value for 'scanner.export_dir': cannot create {folder}: {exc.strerror}.") from None


def _cmd_run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from .config import load_config, plausibility_warnings
    from rtnf.run.record import OutputExistsError
    from rtnf.run.session import progress_line, run_session

    cfg = load_config(args.config, _overrides(args))
    _ensure_export_dir(cfg.scanner.export_dir, args.create_export_dir)
    for warning in plausibility_warnings(cfg):
        logging.getLogger("rtnf").warning("%s", warning)
    out = Console(highlight=False, soft_wrap=True)

    def show(volume: dict, feedback: dict) -> None:  # one line per volume, after it was published
        out.print(progress_line(volume, feedback), markup=False)

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    console = None
    if args.console:
        from rtnf.apps.console import cli as console_cli

        # A child process keeps the web server off the pipeline's GIL; the run's config sets its limits.
        screen = None if args.console_no_screen else (args.console_screen_address or cfg.publish.screen_address)
        console = console_cli.spawn(cfg.publish.address, screen, port=args.console_port, **console_cli.config_limits(cfg))
        print(f"operator console: http://127.0.0.1:{args.console_port}/")
    try:
        result = run_session(
            cfg, args.config.read_text(encoding="utf-8"), overwrite=args.overwrite, stop=stop, resume=args.resume,
            on_volume=show,
        )
    except (OutputExistsError, OSError) as exc:
        print(f"rtnf run: {exc}", file=sys.stderr)
        if console is not None:
            console_cli.close(console)
        return EXIT_USAGE
    except BaseException:
        if console is not None:
            console_cli.close(console)
        raise
    print(
        f"run {result.status}: {result.n_processed} volumes processed, {result.n_missing} missing; "
        f"table: {result.timeseries}"
    )
    if result.status != "ended":
        print(f"reason: {result.reason}", file=sys.stderr)
    if console is not None:  # the page shows the ended run until the operator closes it
        try:
            console_cli.linger(console, f"http://127.0.0.1:{args.console_port}/", args.console_linger_s)
        finally:
            console_cli.close(console)
    if result.status != "ended":
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
    from rtnf.run.record import OutputExistsError
    from rtnf.apps.replay import ReplayJob, ReplaySourceError, check_source, replay_label, replay_many, replay_one

    try:
        for source in args.sources:
            check_source(source)
    except ReplaySourceError as exc:
        print(f"rtnf replay: {exc}", file=sys.stderr)
        return EXIT_USAGE
    base = _overrides(args)
    label = replay_label(_parse_sets(args.sets))  # its own folder under output.dir, named by the --set overrides
    cfg = load_config(args.config, base)  # fails early, with the config's message, on a bad override
    jobs = []
    for k, source in enumerate(args.sources):
        overrides = dict(base)
        if len(args.sources) > 1:
            overrides["session.run"] = cfg.session.run + k  # one run number per replayed source
        jobs.append(ReplayJob(args.config, source.resolve(), overrides, args.pace, args.speed, args.overwrite, label))
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
    from rich.console import Console

    from rtnf.run.record import OutputExistsError
    from rtnf.apps.replay import ReplayFeeder
    from rtnf.run.session import progress_line, run_session
    from rtnf.run.study_session import load_study_session, run_study_session

    study = load_study_session(args.session_file)
    if args.replay is not None:
        from rtnf.apps.replay import ReplaySourceError, check_source

        try:
            for source in args.replay:
                check_source(source)
        except ReplaySourceError as exc:
            print(f"rtnf session: {exc}", file=sys.stderr)
            return EXIT_USAGE
    if args.replay is not None and len(args.replay) != len(study.runs):
        print(f"rtnf session: --replay needs one source per run ({len(study.runs)}), got {len(args.replay)}",
              file=sys.stderr)
        return EXIT_USAGE
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    sources = iter(args.replay or [])
    out = Console(highlight=False, soft_wrap=True)

    def show(volume: dict, feedback: dict) -> None:  # one line per volume, as `rtnf run` prints
        out.print(progress_line(volume, feedback), markup=False)

    def run_one(cfg, config_path):
        factory = None
        if args.replay is not None:
            source = next(sources).resolve()
            factory = lambda export, put: ReplayFeeder(source, export, put, 0.0, cfg.scanner.first_volume_number)  # noqa: E731
        result = run_session(cfg, config_path.read_text(encoding="utf-8"), overwrite=args.overwrite, stop=stop,
                             feeder_factory=factory, on_volume=show)
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
    from rtnf.apps.opennft import OpenNFTError, import_opennft

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
    from .apps.check_slice_timing import header_tr_warning, printable, read_series_volume, slice_timing_report
    from .config import load_config, plausibility_warnings
    from .scanner.nifti import VolumeReadError

    cfg = load_config(args.config, _overrides(args))
    protocol = cfg.make_protocol()
    print(f"{args.config}: valid")
    print(f"  run: {cfg.scanner.n_volumes} volumes ({cfg.scanner.dummy_volumes} dummies) at TR {cfg.scanner.tr_s} s")
    if cfg.scanner.echoes > 1:
        tes = cfg.scanner.echo_times_ms
        print(f"  multi-echo: {cfg.scanner.echoes} echoes per volume "
              f"({', '.join(f'{t:g}' for t in tes) + ' ms' if tes else 'echo times from the headers'}), "
              f"T2*-weighted combination fitted on the first {cfg.multiecho.fit_volumes} kept volumes "
              f"({'the mean of the echoes' if cfg.multiecho.before_fit == 'mean' else 'the echo closest to 30 ms'} "
              "until then)")
    # In the config's own terms: kept volumes from 0, as the protocol's onsets count them
    # (the log and progress lines say "volume N of M" with N = this index + 1).
    print(f"  protocol, volumes counted from 1 at the first kept volume (as the progress lines, the log, "
          f"the console and the report count them; {cfg.n_kept_volumes} kept):")
    for seg in protocol.segments():
        print(f"  volumes {seg.start + 1:4d}-{seg.stop:4d}  {seg.condition}")
    print(f"  ROIs: {', '.join(cfg.rois)}; feedback from {' + '.join(cfg.feedback.targets)}")
    try:
        volume = None if args.volume is None else read_series_volume(args.volume, cfg.scanner.format,
                                                                     cfg.scanner.slices_per_volume)
    except (VolumeReadError, OSError) as exc:
        print(printable(f"rtnf check: --volume: {exc} (read as scanner.format = {cfg.scanner.format!r})"),
              file=sys.stderr)
        return EXIT_USAGE
    lines, timing_warnings = slice_timing_report(cfg, volume)
    tr_warning = None if args.volume is None else header_tr_warning(args.volume, cfg.scanner.tr_s)
    timing_warnings = [*timing_warnings, *([tr_warning] if tr_warning else [])]
    for line in lines:
        print(printable(f"  {line}"))  # file names are the scanner's or the user's: no control characters
    for warning in [*plausibility_warnings(cfg), *timing_warnings]:
        print(printable(f"rtnf check: warning: {warning}"), file=sys.stderr)
    return 0


def _cmd_fidelity(args: argparse.Namespace) -> int:
    import json

    from .config import load_config
    from rtnf.apps.demo import read_tsv
    from rtnf.apps.fidelity import assess

    cfg = load_config(args.config)
    try:
        rows = read_tsv(args.table)
    except OSError as exc:
        print(f"rtnf fidelity: cannot read {args.table}: {exc.strerror}", file=sys.stderr)
        return 2
    except UnicodeDecodeError:
        print(f"rtnf fidelity: {args.table} is not a text table (not UTF-8)", file=sys.stderr)
        return 2
    if args.roi is not None and args.roi not in cfg.rois:
        print(f"rtnf fidelity: no ROI {args.roi!r} in {args.config} (ROIs: {', '.join(cfg.rois)})", file=sys.stderr)
        return 2
    if args.from_volume < 0:
        print(f"rtnf fidelity: --from-volume must be >= 0, got {args.from_volume}", file=sys.stderr)
        return 2
    roi = args.roi or cfg.feedback.targets[0]
    needed = {"index", f"{roi}_raw", f"{roi}_clean", f"{roi}_psc", "feedback_value"}
    missing = sorted(needed - set(rows[0] if rows else ()))
    if missing:
        print(f"rtnf fidelity: {args.table} is not this config's rtnf timeseries table: no column "
              f"{', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        figures = assess(cfg, rows, roi, args.from_volume)
    except ValueError as exc:  # a cell that is not a number, an index that is not an integer
        print(f"rtnf fidelity: {args.table} has a cell that is not a number ({exc})", file=sys.stderr)
        return 2
    # NaN (nothing to evaluate) as null: the output stays valid JSON.
    print(json.dumps({k: (None if v != v else round(v, 4)) if isinstance(v, float) else v
                      for k, v in figures.as_dict().items()}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``rtnf`` console script."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # numexpr (imported by pandas, which nilearn imports) logs "NumExpr defaulting to N threads" at INFO
    # on every command that builds a design matrix: noise for the operator.
    logging.getLogger("numexpr").setLevel(logging.WARNING)
    from .config import ConfigError

    try:
        code = _dispatch(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler, not at the interpreter's exit
        return code
    except ConfigError as exc:
        print(f"rtnf {args.command}: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        # The reader went away (`rtnf check cfg | head -1`): exit quietly, as the Python docs recommend,
        # pointing stdout at devnull so the interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


def _dispatch(args: argparse.Namespace) -> int:
    """Run the chosen command."""
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
        from .apps import roidef as roi_cmd

        return roi_cmd.run(args)
    if args.command == "decoder":
        from .apps import decoder as decoder_cmd

        return decoder_cmd.run(args)
    if args.command == "lsl":
        from .apps import lsl as lsl_cmd

        return lsl_cmd.run(args)
    if args.command == "session":
        return _cmd_session(args)
    if args.command == "study":
        from rtnf.study import command as study_cmd

        return study_cmd.run(args)
    if args.command == "keys":
        from rtnf.wire.keys import main as keys_main

        argv = [str(args.folder)] + [a for c in args.client for a in ("--client", c)]
        return keys_main(argv + (["--overwrite"] if args.overwrite else []))
    if args.command == "report":
        from .apps import report as report_cmd

        return report_cmd.run(args)
    if args.command == "console":
        from rtnf.apps.console import cli as console_cli

        return console_cli.run(args)
    from rtnf.apps.demo import run_demo

    return run_demo(args)


if __name__ == "__main__":
    sys.exit(main())
