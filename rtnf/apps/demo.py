"""``rtnf demo``: a complete simulated session on this machine.

Three real processes talk as they would at the scanner: ``scanner-sim``
writes volumes into an export folder at TR pace, ``rtnf run`` processes them
and publishes over ZeroMQ, and the PsychoPy feedback screen (under Xvfb when
there is no display) shows the feedback and acknowledges every frame. The
demo listens to both streams, then prints a summary checked against the
simulator's ground truth.

The screen is only ever started as a process (``python -m stimulus``): the
core imports nothing of the ``stimulus`` package.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from rtnf.config import Config, load_config
from rtnf.wire.messages import TOPICS
from rtnf.wire.subscription import Subscription
from rtnf.run.outputs import TIMESERIES, func_dir, output_path

REPO_CONFIG = Path(__file__).resolve().parents[2] / "config"  # rtnf/apps/demo.py -> the checkout


class DemoError(RuntimeError):
    """The demo could not run; the message says what to do."""


# ---------------------------------------------------------------- building blocks (also used by tests)


def free_address() -> str:
    """A free TCP port on loopback, as a ZeroMQ address."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def sim_spec(cfg: Config, amplitude_pct: float = 1.5, noise_pct: float = 1.0, seed: int = 0) -> dict[str, Any]:
    """A scanner-sim run spec matching a session config.

    The simulator counts time from its first written volume; the protocol
    counts from the first volume after the dummies. Every sphere ROI is given
    an activation of ``amplitude_pct`` driven by the first task condition.
    """
    protocol = cfg.make_protocol()
    offset = cfg.scanner.dummy_volumes * cfg.scanner.tr_s
    task = protocol.task_conditions[0]
    return {
        "tr_s": cfg.scanner.tr_s,
        "n_volumes": cfg.scanner.n_volumes,
        "seed": seed,
        "noise_pct": noise_pct,
        "blocks": [
            {"condition": b.condition, "onset_s": b.onset_s + offset, "duration_s": b.duration_s}
            for b in protocol.blocks
        ],
        "regions": [
            {
                "name": name,
                "center_mm": list(roi.center_mm),
                "radius_mm": roi.radius_mm,
                "amplitude_pct": amplitude_pct,
                "condition": task,
            }
            for name, roi in cfg.rois.items()
            if roi.center_mm is not None
        ],
    }


def write_toml(data: dict[str, Any], path: Path) -> None:
    """Write a spec of scalars, lists and lists of tables as TOML (enough for sim specs)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise TypeError(f"cannot write {type(v).__name__} as TOML")

    lines = [f"{k} = {value(v)}" for k, v in data.items() if not _is_table_list(v)]
    for k, v in data.items():
        if _is_table_list(v):
            for table in v:
                lines.append(f"\n[[{k}]]")
                lines += [f"{kk} = {value(vv)}" for kk, vv in table.items()]
    path.write_text("\n".join(lines) + "\n")


def _is_table_list(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


XVFB_SCREEN = "-screen 0 1280x1024x24"


def display_prefix() -> list[str]:
    """Return the command prefix needed to open a window on this machine.

    Returns
    -------
    list of str
        ``["xvfb-run", "-a", "-s", "-screen 0 1280x1024x24"]`` when the
        ``DISPLAY`` environment variable is unset or empty, else ``[]``.

    Raises
    ------
    DemoError
        If there is no display and ``xvfb-run`` is not on the ``PATH``.
    """
    if os.environ.get("DISPLAY"):
        return []
    if shutil.which("xvfb-run") is None:
        raise DemoError(
            "No X display (DISPLAY is not set) and xvfb-run was not found; the feedback "
            "screen needs one of them: install the Debian package xvfb "
            "(apt-get install xvfb), run on a machine with a display, or use --no-screen."
        )
    return ["xvfb-run", "-a", "-s", XVFB_SCREEN]


def screen_command(
    address: str, ack_address: str, folder: Path, exit_after_end_s: float | None = 1.0, config: Path | None = None
) -> list[str]:
    """Command line of the feedback screen (``python -m stimulus``), under Xvfb when there is no display."""
    return display_prefix() + [
        sys.executable, "-m", "stimulus",
        *(["--config", str(config)] if config is not None else []),
        "--address", address,
        "--ack-address", ack_address,
        "--size", "800x600",
        "--flip-log", str(folder / "flips.csv"),
        "--screenshot", str(folder / "last_frame.png"),
    ] + ([] if exit_after_end_s is None else ["--exit-after-end", str(exit_after_end_s)])


class Listener:
    """Subscribes to rtnf's stream and the screen's acknowledgements, collecting messages."""

    def __init__(self, addresses: list[str]) -> None:
        self._ctx = zmq.Context()
        self._subs = [Subscription(self._ctx, address, TOPICS, name="publisher") for address in addresses]
        self._poller = zmq.Poller()
        for sub in self._subs:
            for sock in sub.sockets:
                self._poller.register(sock, zmq.POLLIN)
        self.messages: list[tuple[str, dict[str, Any]]] = []

    def poll(self, timeout_s: float) -> list[tuple[str, dict[str, Any]]]:
        """Messages received within ``timeout_s`` (returns as soon as one batch arrived)."""
        ready = dict(self._poller.poll(int(timeout_s * 1000)))
        new = [(m.topic, m.body) for sub in self._subs for m in sub.receive(ready)]
        self.messages += new
        return new

    def wait_for(self, predicate, timeout_s: float, what: str) -> dict[str, Any]:
        """Poll until a message satisfies ``predicate(topic, body)``; raise DemoError on timeout."""
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            for topic, body in self.poll(min(0.2, deadline - time.time())):
                if predicate(topic, body):
                    return body
        raise DemoError(f"timed out after {timeout_s:g} s waiting for {what}")

    def of(self, topic: str) -> list[dict[str, Any]]:
        """Bodies received so far on ``topic``."""
        return [b for t, b in self.messages if t == topic]

    def close(self) -> None:
        """Close the sockets."""
        for sub in self._subs:
            sub.close()
        self._ctx.term()


@dataclass
class Processes:
    """Child processes of a session, stopped together."""

    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)

    def start(self, name: str, cmd: list[str], log_dir: Path) -> subprocess.Popen:
        """Start ``cmd`` with its output in ``log_dir/<name>.log``."""
        log_path = log_dir / f"{name}.log"
        handle = open(log_path, "w")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.procs[name] = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL)
        self.logs[name] = log_path
        return self.procs[name]

    def check_alive(self, name: str) -> None:
        """Raise DemoError with the log's tail if ``name`` exited early with an error."""
        proc = self.procs[name]
        if proc.poll() not in (None, 0):
            tail = self.logs[name].read_text(errors="replace").strip().splitlines()[-15:]
            raise DemoError(f"{name} exited with code {proc.returncode}:\n  " + "\n  ".join(tail))

    def stop_all(self, timeout_s: float = 10.0) -> None:
        """Terminate whatever still runs."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def read_tsv(path: Path) -> list[dict[str, str]]:
    """Rows of a TSV file as dicts of strings."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def _num(text: str) -> float:
    return float("nan") if text in ("n/a", "") else float(text)


@dataclass
class Summary:
    """What the demo measured."""

    n_volumes: int
    n_processed: int
    latency_ms: tuple[float, float]  # processing latency median, p95
    end_to_end_ms: tuple[float, float] | None
    detection_ms: float | None  # file finished -> detected, median
    correlation: float
    outputs: Path

    def lines(self) -> list[str]:
        """The summary as printable lines."""
        out = [
            f"volumes processed        {self.n_processed} of {self.n_volumes}",
            f"processing latency       median {self.latency_ms[0]:.1f} ms, p95 {self.latency_ms[1]:.1f} ms "
            "(file complete -> feedback published)",
        ]
        if self.detection_ms is not None:
            out.append(f"file detection           median {self.detection_ms:.1f} ms (file closed -> detected)")
        if self.end_to_end_ms is not None:
            out.append(
                f"end to end               median {self.end_to_end_ms[0]:.1f} ms, p95 {self.end_to_end_ms[1]:.1f} ms "
                "(file complete -> frame on screen)"
            )
        out.append(f"feedback vs truth        r = {self.correlation:.3f} (true activation of the feedback ROI)")
        out.append(f"outputs                  {self.outputs}")
        return out


def summarise(cfg: Config, truth_dir: Path, displayed: list[dict[str, Any]]) -> Summary:
    """Compare the recorded table with the simulator's ground truth."""
    table = read_tsv(output_path(cfg, TIMESERIES))
    truth = read_tsv(truth_dir / "truth.tsv")
    files = read_tsv(truth_dir / "files.tsv")
    kept = [r for r in table if r["missing"] == "0"]
    latency = np.array([(_num(r["t_published"]) - _num(r["t_detected"])) * 1000 for r in kept])
    dummies = cfg.scanner.dummy_volumes
    column = f"activation_{cfg.feedback.targets[0]}"
    fb, true = [], []
    for r in kept:
        value = _num(r["feedback_value"])
        if np.isfinite(value):
            fb.append(value)
            true.append(float(truth[int(r["index"]) + dummies][column]))
    r_value = float(np.corrcoef(fb, true)[0, 1]) if len(fb) > 2 else float("nan")
    finished = {Path(f["path"]).name: float(f["t_finished"]) for f in files}
    detection = [
        (_num(r["t_detected"]) - finished[r["file"]]) * 1000 for r in kept if r["file"] in finished
    ]
    detected = {int(r["index"]): _num(r["t_detected"]) for r in kept}
    e2e = [
        (d["t_displayed"] - detected[d["index"]]) * 1000
        for d in displayed
        if d.get("index") is not None and d["index"] in detected
    ]
    return Summary(
        n_volumes=len(table),
        n_processed=len(kept),
        latency_ms=(float(np.median(latency)), float(np.percentile(latency, 95))),
        end_to_end_ms=(float(np.median(e2e)), float(np.percentile(e2e, 95))) if e2e else None,
        detection_ms=float(np.median(detection)) if detection else None,
        correlation=r_value,
        outputs=func_dir(cfg),
    )


# ---------------------------------------------------------------- the demo


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo session described by the ``rtnf demo`` arguments."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console()
    config_path = args.config or REPO_CONFIG / "demo_acc.toml"
    root = args.output_dir.resolve() / time.strftime("%Y%m%d-%H%M%S")
    export, truth, outputs, logs = (root / n for n in ("export", "truth", "outputs", "logs"))
    for folder in (export, truth, logs):
        folder.mkdir(parents=True, exist_ok=True)
    address, ack_address = free_address(), free_address()
    overrides = {"scanner.export_dir": str(export), "output.dir": str(outputs), "publish.address": address}
    cfg = load_config(config_path, overrides)
    spec_path = root / "sim_spec.toml"
    write_toml(sim_spec(cfg, args.amplitude_pct, args.noise_pct), spec_path)

    procs = Processes()
    listener = Listener([address] + ([] if args.no_screen else [ack_address]))
    try:
        if not args.no_screen:
            console.print("starting the feedback screen (PsychoPy)...")
            procs.start("screen", screen_command(address, ack_address, root, config=config_path), logs)
        if args.console:
            from .console import cli as console_cli

            screen = None if args.no_screen else ack_address
            procs.start("console", console_cli.command(address, screen, port=args.console_port), logs)
            console.print(f"operator console: http://127.0.0.1:{args.console_port}/ (open it in a browser)")
        console.print(f"starting rtnf run on {config_path.name} ...")
        procs.start(
            "rtnf",
            [sys.executable, "-m", "rtnf", "run", str(config_path), "--export-dir", str(export),
             "--output-dir", str(outputs), "--publish-address", address,
             *([] if args.no_screen else ["--set", f'publish.screen_address="{ack_address}"'])],
            logs,
        )
        wait_ready(listener, procs, args.no_screen)
        n = cfg.scanner.n_volumes
        console.print(
            f"scanner simulator: {n} volumes, TR {cfg.scanner.tr_s} s at speed x{args.speed:g} "
            f"(about {n * cfg.scanner.tr_s / args.speed:.0f} s)"
        )
        procs.start(
            "scanner_sim",
            [sys.executable, "-m", "scanner_sim", "synth", str(spec_path), "--export-dir", str(export),
             "--truth-dir", str(truth), "--speed", str(args.speed)],
            logs,
        )
        with Progress(
            TextColumn("[bold]volumes"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
            TimeElapsedColumn(), console=console,
        ) as progress:
            task = progress.add_task("", total=cfg.n_kept_volumes)
            while procs.procs["rtnf"].poll() is None:
                for topic, body in listener.poll(0.2):
                    if topic == "feedback":
                        value = body["value"]
                        shown = "—" if value is None else f"{value:.2f}"
                        progress.update(task, completed=body["index"] + 1,
                                        description=f"{body['condition']:<9} feedback {shown}")
                for name in procs.procs:
                    procs.check_alive(name)
        procs.check_alive("rtnf")
        procs.procs["scanner_sim"].wait(30)
        if not args.no_screen:
            try:  # the screen quits by itself shortly after showing the end of the run
                procs.procs["screen"].wait(20)
            except subprocess.TimeoutExpired:
                console.print("[yellow]the feedback screen did not quit after the run; stopping it[/yellow]")
        listener.poll(0.3)
        displayed = listener.of("displayed")
        summary = summarise(cfg, truth, displayed)
        from .report import write_report

        report_html = write_report(output_path(cfg, TIMESERIES), root / "report")
    except DemoError as exc:
        console.print(f"[red]demo failed:[/red] {exc}")
        return 1
    finally:
        listener.close()
        procs.stop_all()
    console.rule("rtnf demo summary")
    lines = summary.lines()
    if not args.no_screen:
        lines.append(f"screen                   last frame {root / 'last_frame.png'}, flip log {root / 'flips.csv'}")
    lines.append(f"ground truth             {truth}")
    lines.append(f"report                   {report_html}")
    for line in lines:
        console.print(line, soft_wrap=True)  # paths stay whole for copy and paste
    return 0


def wait_ready(listener: Listener, procs: Processes, no_screen: bool, timeout_s: float = 90.0) -> None:
    """Wait until rtnf (and the screen) publish heartbeats: both are up and connected.

    Parameters
    ----------
    listener : Listener
        Subscribed to rtnf's address (and the screen's acknowledgement address).
    procs : Processes
        The session's processes; one that exits with an error ends the wait.
    no_screen : bool
        True when no screen was started (only rtnf's heartbeat is awaited).
    timeout_s : float
        Seconds before giving up.

    Raises
    ------
    DemoError
        On timeout, or when a process exited with an error.
    """
    deadline = time.time() + timeout_s
    ready = {"rtnf": False, "stimulus": no_screen}
    while not all(ready.values()):
        if time.time() > deadline:
            waiting = [k for k, v in ready.items() if not v]
            raise DemoError(f"timed out waiting for {', '.join(waiting)} to start (see the logs folder)")
        for topic, body in listener.poll(0.2):
            if topic == "heartbeat" and body.get("source") in ready:
                ready[body["source"]] = True
        for name in procs.procs:
            procs.check_alive(name)


