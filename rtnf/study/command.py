"""``rtnf study``: a multi-session study with concealed arms (``init``, ``next``, ``status``, ``unblind``)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from rtnf.config import ConfigError
from rtnf._cli_help import add_command as _sub

from .progress import attempts, next_step
from .runner import PreparedRun, execute, init_study, load_key, prepare
from .sham import YokedSourceError
from .state import StudyState
from .studyfile import Study, load_study

EXIT_USAGE = 2
EXIT_RUN_FAILED = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``rtnf study`` sub-commands."""
    sub = parser.add_subparsers(dest="study_command", required=True)
    init = _sub(sub, "init", "allocate participants to arm codes, write the blinding key and the state",
                """Allocate the participants to arm codes (permuted blocks), write the blinding key (mode 0600,
                outside the outputs and the state) and the study's state folder, and list each participant's
                code in the dataset's participants.tsv. Runs once per study.""",
                "rtnf study init study.toml")
    init.add_argument("study", type=Path, help="study file (study.toml)")
    nxt = _sub(sub, "next", "print a participant's next run and run it",
               """Print what comes next for a participant (session, run, config, arm code) and run it as `rtnf
               run` does, with the study's labels, output folder, ROI and arm; a run a crash interrupted is
               resumed with its rows kept.""",
               "rtnf study next P01 --study study.toml",
               "rtnf study next P01 --dry-run",
               "rtnf study next P01 --replay recorded/P01_ses-01_loc   # a recorded run instead of the scanner")
    nxt.add_argument("subject", help="participant code, as in the study file")
    _study_option(nxt)
    nxt.add_argument("--dry-run", action="store_true", help="only print what comes next")
    nxt.add_argument("--replay", type=Path, metavar="SOURCE",
                     help="replay a recorded run (export folder or 4D NIfTI) instead of watching the scanner")
    nxt.add_argument("--pace-s", type=float, default=0.0, help="with --replay: seconds between volumes (default 0)")
    nxt.add_argument("--create-export-dir", action="store_true", help="create the run's export folder when missing")
    nxt.add_argument("--key", type=Path, help="the blinding key (default: study.key_file)")
    status = _sub(sub, "status", "every participant's arm code, runs done and next run",
                  """Print every participant's arm code (never the arm), the runs done and what comes next,
                  including a run a crash interrupted.""",
                  "rtnf study status --study study.toml")
    _study_option(status)
    unblind = _sub(sub, "unblind", "reveal the arm behind each code (needs the key)",
                   """Reveal the arm behind each code and each participant's arm, with the key written by `rtnf
                   study init` (checked against the state); the journal records when the study was unblinded.""",
                   "rtnf study unblind --study study.toml --key accpain.key")
    _study_option(unblind)
    unblind.add_argument("--key", type=Path, required=True, help="the blinding key written by `rtnf study init`")


def _study_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--study", type=Path, default=Path("study.toml"), help="study file (default ./study.toml)")


def run(args: argparse.Namespace) -> int:
    """Run the chosen ``rtnf study`` command (ConfigError: the caller prints it, exit 2)."""
    study = load_study(args.study)
    if args.study_command == "init":
        return _init(study)
    if args.study_command == "status":
        return _status(study)
    if args.study_command == "unblind":
        return _unblind(study, args.key)
    return _next(study, args)


def _init(study: Study) -> int:
    record = init_study(study)
    print(f"study {study.name}: {len(record.allocation)} participants allocated to arm codes "
          f"{', '.join(sorted(set(record.allocation.values())))}")
    print(f"  state: {study.state_dir}")
    print(f"  blinding key: {study.key_file} (mode 0600; keep it apart, it reveals the arms)")
    print(f"  outputs: {study.output_dir} (participants.tsv lists the arm codes)")
    return 0


def _status(study: Study) -> int:
    state = StudyState(study.state_dir)
    record = state.record()
    events = state.events()
    for subject in study.participants:
        code = record.allocation.get(subject)
        if code is None:
            print(f"sub-{subject}: not allocated (added to the study file after `rtnf study init`)")
            continue
        mine = attempts(events, subject)
        done = sum(a.ok for a in mine)
        step = next_step(study, events, subject)
        total = len(study.sessions) * len(study.runs)
        line = f"sub-{subject}  arm {code}  {done} of {total} runs done"
        line += f"; {step.describe(len(study.runs))}" if step is not None else "; finished"
        print(line)
    return 0


def _unblind(study: Study, key_path: Path) -> int:
    state = StudyState(study.state_dir)
    record = state.record()
    key = load_key(study, record, key_path)
    state.append("unblind")  # when the study was unblinded stays in the journal
    for code in sorted(key.codes):
        print(f"arm {code}: {key.arm(code)}")
    for subject, code in record.allocation.items():
        print(f"sub-{subject}\t{code}\t{key.arm(code)}")
    return 0


def _next(study: Study, args: argparse.Namespace) -> int:
    state = StudyState(study.state_dir)
    record = state.record()
    if args.subject not in record.allocation:
        raise ConfigError(f"participant {args.subject!r} is not in the study's allocation "
                          f"(participants: {', '.join(record.allocation)})")
    events = state.events()
    step = next_step(study, events, args.subject)
    if step is None:
        print(f"sub-{args.subject}: every session of the study is done")
        return 0
    print(f"{step.describe(len(study.runs))}; arm {record.allocation[args.subject]}")
    if args.dry_run:
        return 0
    if args.replay is not None:
        from rtnf.apps.replay import ReplaySourceError, check_source

        try:
            check_source(args.replay)
        except ReplaySourceError as exc:
            raise ConfigError(str(exc)) from None
    try:
        prepared = prepare(study, record, events, step, lambda: load_key(study, record, args.key))
    except YokedSourceError as exc:  # which table, and why, in the journal only: the screen names no one
        state.append("refused", subject=step.subject, session=step.session, position=step.planned.position,
                     detail=exc.detail)
        raise
    if args.replay is None:
        _ensure_export_dir(prepared.cfg.scanner.export_dir, args.create_export_dir)
    try:
        result = execute(state, prepared, lambda p: _run(p, args))
    except OSError as exc:  # outputs in the way, a lock another run holds: the run stays to do
        print(f"rtnf study next: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"{step.planned.kind} task-{step.planned.task} run-{step.run}: {result.status}, {result.n_processed} "
          f"volumes, {result.n_missing} missing -> {result.timeseries}")
    return 0 if result.ok else EXIT_RUN_FAILED


def _ensure_export_dir(folder: Path, create: bool) -> None:
    if folder.is_dir():
        return
    if not create:
        raise ConfigError(f"invalid value for 'scanner.export_dir': {folder} does not exist (is the share "
                          "mounted?). Allowed: an existing folder, or pass --create-export-dir to create it.")
    folder.mkdir(parents=True, exist_ok=True)


def _run(prepared: PreparedRun, args: argparse.Namespace):
    """One run through :func:`rtnf.run.session.run_session`, live or replayed, printing a line per volume."""
    from rich.console import Console

    from rtnf.apps.replay import ReplayFeeder
    from rtnf.run.session import progress_line, run_session

    cfg = prepared.cfg
    out = Console(highlight=False, soft_wrap=True)
    stop = threading.Event()
    # Ctrl-C ends the run cleanly with its rows (journalled as ended, not usable: `next` does it again).
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    factory = None
    if args.replay is not None:
        source = args.replay.resolve()
        factory = lambda export, put: ReplayFeeder(source, export, put, args.pace_s,  # noqa: E731
                                                   cfg.scanner.first_volume_number)
    try:
        return run_session(cfg, prepared.config_text, stop=stop, feeder_factory=factory, resume=prepared.step.resume,
                           on_volume=lambda v, f: out.print(progress_line(v, f), markup=False), parts=prepared.parts)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
