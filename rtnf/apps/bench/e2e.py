"""``rtnf bench e2e``: end to end, side by side, with real processes and one clock.

A *producer* process (``scanner_sim replay``, the simulator's export engine in
its ``atomic`` mode) writes a series into an export folder the way scanners'
exporters do: each file is written under a hidden name (``.<name>.part``) and
then renamed to its final name with :func:`os.replace`, one volume per TR
(``--tr-s`` / ``--speed``). The producer records, with ``time.time()`` right
after the rename, when each file appeared (``files.tsv``, column
``t_finished``); a volume *appears* when its last file does.

The tool under test runs as a separate process:

``rtnf`` mode (default)
    ``python -m rtnf run CONFIG`` (a config the bench writes for the series, or
    ``--config`` with the export folder, output folder, address and number of
    volumes overridden on the command line). A ZeroMQ subscriber thread in the
    bench process, subscribed to ``feedback`` on the run's address, stamps each
    message with ``time.time()`` when it holds it. Measured per volume::

        total                 = t_subscriber - t_appeared
        appear -> detected    = t_detected - t_appeared      (the watcher)
        detected -> published = t_published - t_detected     (rtnf's processing: read,
                                                              preprocess, model, publish)
        published -> subscriber = t_subscriber - t_published  (ZeroMQ, subscriber wake-up)

    The three parts add up to ``total`` for every volume; ``t_detected`` ...
    ``t_published`` come from the run's ``*_desc-rtnf_timeseries.tsv``.

``--command`` mode (any tool, e.g. a lab's current Pyneal or OpenNFT set-up)
    The command (run through the shell, in its own process group, with the
    placeholders ``{export_dir}`` ``{output_dir}`` ``{config}`` ``{address}``
    ``{python}`` ``{n_volumes}`` ``{tr_s}`` ``{workdir}``) must write a
    per-volume results table (CSV or TSV with a header) found with
    ``--table-glob`` (relative to ``{output_dir}``), with the volume in
    ``--index-column`` (0-based unless ``--index-base``) and the time its
    result was ready in ``--time-column`` (UNIX seconds from ``time.time()``
    on this machine, or ``--time-unit ms``). Measured per volume::

        total (no --address)   = t_table - t_appeared
        total (with --address) = t_subscriber - t_appeared, split into
                                 appear -> table and table -> subscriber

    where the subscriber takes the first message per volume on ``--topic`` at
    ``--address`` whose last frame is a JSON object with an ``index`` field
    (rtnf's wire format; ``--address auto`` picks a free port, which the
    command gets as ``{address}``). When the table also holds rtnf's timing
    columns, their stages are shown too. The command is started, given
    ``--ready-s`` seconds to come up (less if it publishes a ``heartbeat``),
    and stopped (SIGTERM to its process group) once every volume has its result
    or ``--grace-s`` after the last file.

Series: ``--source`` (a DICOM folder, one file per volume or per slice; a 4D
NIfTI; a folder of 3D NIfTI files, stacked into a 4D NIfTI first), or a
synthetic ``--grid`` run that ``scanner_sim synth`` renders into a folder
*before* the timed replay (rendering costs tens of ms a volume and would
otherwise compete with the tool for the CPU); by default the pyneal Siemens
mosaic run in ``../shared/data`` when present, else a synthetic 64x64x36 run.

Every number is a difference of ``time.time()`` readings taken in different
processes of one machine. The report gives the load average before, after and
at its peak during each run: on a shared machine, read the figures with it.
Speed is measured here, never asserted in tests.

Examples::

    rtnf bench e2e                                   # pyneal mosaics, TR 1 s, whole-brain model on
    rtnf bench e2e --no-whole-brain --repeat 3
    rtnf bench e2e --grid 64x64x36@3 --volumes 100 --tr-s 1 --speed 2
    rtnf bench e2e --command "{python} -m rtnf run {config}" --address auto    # rtnf through the generic path
    rtnf bench e2e --command "python my_tool.py --watch {export_dir} --log {output_dir}/log.csv" \\
        --table-glob log.csv --index-column volume --index-base 1 --time-column t_result
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import SHARED_DATA
from ._stats import summarize_ms, table

NAME = "e2e"
HELP = ("end to end, side by side: a file renamed into the export folder -> a separate ZeroMQ subscriber holds "
        "its feedback (rtnf run or any --command), with the stages")

_DEFAULT_DATA = SHARED_DATA
_DEFAULT_REAL = Path("pyneal-series") / "siemens-prisma-e11-mosaic"
TIMING = ("t_detected", "t_read", "t_preprocessed", "t_modelled", "t_published")

#: (name, start, end, indent) of the rows of the rtnf-mode report
RTNF_STAGES = (
    ("appear -> detected", "t_appeared", "t_detected", 0),
    ("detected -> read", "t_detected", "t_read", 1),
    ("read -> preprocessed", "t_read", "t_preprocessed", 1),
    ("preprocessed -> modelled", "t_preprocessed", "t_modelled", 1),
    ("modelled -> published", "t_modelled", "t_published", 1),
    ("detected -> published", "t_detected", "t_published", 0),
    ("published -> subscriber", "t_published", "t_received", 0),
    ("total: appear -> subscriber", "t_appeared", "t_received", 0),
)
#: the parts of the total (rtnf mode), each volume's sum equals its total
RTNF_PARTS = ("appear -> detected", "detected -> published", "published -> subscriber")


def _fill(text: str) -> str:
    import textwrap

    return textwrap.fill(text, 77)


def _grid_arg(text: str) -> str:
    try:
        parse_grid(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _positive(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        x = float("nan")
    if not x > 0:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}. Allowed: a number > 0")
    return x


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``rtnf bench e2e``."""
    src = parser.add_argument_group("series")
    which = src.add_mutually_exclusive_group()
    which.add_argument("--source", type=Path, default=None,
                     help="a DICOM folder, a folder of 3D NIfTI files or a 4D NIfTI to replay (default: the pyneal "
                          "Siemens mosaic run in --data when present, else a synthetic --grid run)")
    which.add_argument("--grid", default=None, metavar="WxHxD@MM", type=_grid_arg,
                     help="replay a synthetic run on this grid instead (e.g. 64x64x36@3; rendered by scanner_sim "
                          "before the timed replay)")
    src.add_argument("--format", choices=("siemens-mosaic", "nifti"), default="siemens-mosaic",
                     help="file format of the synthetic run (default siemens-mosaic)")
    src.add_argument("--volumes", type=int, default=None,
                     help="synthetic: run length (default 60); real: replay only the first N volumes (default all)")
    src.add_argument("--tr-s", type=float, default=None,
                     help="TR in seconds (default: the series' own; synthetic 1.0)")
    src.add_argument("--speed", type=_positive, default=1.0,
                     help="scanner speed-up: one volume every tr_s/speed seconds (default 1: real time)")
    src.add_argument("--data", type=Path, default=_DEFAULT_DATA, help="real data folder (default: %(default)s)")
    tool = parser.add_argument_group(
        "rtnf run (default mode)", _fill(
        "python -m rtnf run in its own process; a ZeroMQ subscriber thread in the bench process, subscribed to "
        "'feedback', stamps each volume's message with time.time(). Total = subscriber holds it - the volume's last "
        "file was renamed into the export folder (the producer's time.time()), split into appear -> t_detected, "
        "t_detected -> t_published (read, preprocessed, modelled from the run's table) and t_published -> "
        "subscriber; the parts add up to the total for every volume."))
    tool.add_argument("--config", type=Path, default=None,
                      help="your session config for rtnf run (export folder, output folder, address and "
                           "scanner.n_volumes are overridden); default: one written for the series")
    tool.add_argument("--no-whole-brain", action="store_true", help="written config: whole-brain model off")
    tool.add_argument("--no-preview", action="store_true", help="written config: no console preview")
    tool.add_argument("--fwhm-mm", type=float, default=5.0, help="written config: motion.fwhm_mm (default 5)")
    cmd = parser.add_argument_group(
        "another tool (--command mode)", _fill(
        "Your command in its own process group (through the shell), on the same series and clock. End point: the "
        "time in --time-column of the table it writes (UNIX time from time.time() on this machine), or with "
        "--address the time a subscriber in the bench process holds the volume's first --topic message (JSON "
        "with an 'index' field, numbered like the table); total = end point - the rename of the volume's last file."))
    cmd.add_argument("--command", dest="tool_command", default=None, metavar="CMD",
                     help="run this shell command instead of rtnf run; placeholders {export_dir} {output_dir} "
                          "{config} {address} {python} {n_volumes} {tr_s} {workdir}")
    cmd.add_argument("--table-glob", default="**/*_desc-rtnf_timeseries.tsv",
                     help="the command's per-volume table, relative to {output_dir} (default %(default)s; the newest "
                          "match is read)")
    cmd.add_argument("--index-column", default="index", help="table column with the volume (default %(default)s)")
    cmd.add_argument("--index-base", type=int, default=0,
                     help="value of --index-column for the first replayed volume (default 0)")
    cmd.add_argument("--time-column", default="t_published",
                     help="table column with the time the volume's result was ready, UNIX time (default %(default)s)")
    cmd.add_argument("--time-unit", choices=("s", "ms"), default="s", help="unit of --time-column (default s)")
    cmd.add_argument("--address", default=None,
                     help="--command mode: also subscribe here (ZeroMQ, rtnf's wire format; 'auto': a free port "
                          "passed as {address}); the subscriber's time is then the end point")
    cmd.add_argument("--topic", default="feedback", help="topic subscribed to with --address (default feedback)")
    cmd.add_argument("--ready-s", type=float, default=5.0,
                     help="--command mode: seconds the command gets to start before the first file (default 5)")
    cmd.add_argument("--grace-s", type=float, default=10.0,
                     help="--command mode: seconds after the last file before the command is stopped (default 10)")
    run = parser.add_argument_group("runs")
    run.add_argument("--repeat", type=int, default=1, help="runs in a row, pooled (default 1)")
    run.add_argument("--warmup", type=int, default=1,
                     help="first volumes of each run left out of the statistics (default 1; all are in --json)")
    run.add_argument("--timeout-s", type=float, default=None,
                     help="give up on a run after this long (default: the run's length + 120 s)")
    run.add_argument("--keep", type=Path, default=None, help="keep the export folders, outputs and logs here")


# --------------------------------------------------------------------------- helpers
def free_address() -> str:
    """A free TCP port on loopback, as a ZeroMQ address."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def parse_grid(spec: str) -> tuple[tuple[int, int, int], float]:
    """``"64x64x36@3"`` -> ((64, 64, 36), 3.0)."""
    dims, _, mm = spec.strip().partition("@")
    try:
        shape = tuple(int(n) for n in dims.lower().split("x"))
        size = float(mm)
    except ValueError:
        shape, size = (), 0.0
    if len(shape) != 3 or size <= 0:
        raise ValueError(f"Invalid value for '--grid': {spec!r}. Allowed: WxHxD@MM, e.g. 64x64x36@3.")
    return shape, size  # type: ignore[return-value]


def read_table(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV or TSV file with a header (the delimiter is the header's: tab if it has one)."""
    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        text = fh.read()
    if not text.strip():
        return []
    first = text.splitlines()[0]
    delim = "\t" if "\t" in first else ("," if "," in first else None)
    if delim is None:
        delim = "\t" if path.suffix.lower() == ".tsv" else ","
    rows = list(csv.DictReader(text.splitlines(), delimiter=delim))
    return [{(k or "").strip(): (v or "").strip() for k, v in r.items()} for r in rows]


def _num(text: str | None) -> float | None:
    try:
        x = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return x if np.isfinite(x) else None


def _loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


class Subscriber:
    """A ZeroMQ SUB socket in a thread of its own, stamping every message with ``time.time()`` on receipt.

    Holds, per volume index, the first message of ``topic`` and when it arrived; ``ready`` is set when a
    ``heartbeat`` arrives (the publisher is up and this subscription reaches it).
    """

    def __init__(self, address: str, topic: str = "feedback") -> None:
        self.address, self.topic = address, topic
        self.received: dict[int, tuple[float, dict[str, Any]]] = {}
        self.n_messages = 0
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="bench-e2e-subscriber", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        import zmq

        ctx = zmq.Context()
        sock = ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 100000)
        for t in {self.topic, "heartbeat"}:
            sock.setsockopt(zmq.SUBSCRIBE, t.encode())
        sock.connect(self.address)
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                if not poller.poll(50):
                    continue
                while True:
                    try:
                        parts = sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    t_recv = time.time()  # the subscriber holds the message
                    topic = parts[0].decode("utf-8", "replace")
                    if topic == "heartbeat":
                        self.ready.set()
                    if topic != self.topic:
                        continue
                    self.n_messages += 1
                    try:
                        body = json.loads(parts[-1])
                    except ValueError:
                        continue
                    index = body.get("index") if isinstance(body, dict) else None
                    if isinstance(index, int) and index not in self.received:
                        self.received[index] = (t_recv, body)
        finally:
            sock.close(0)
            ctx.term()

    def close(self) -> None:
        """Stop the thread (messages already held stay in :attr:`received`)."""
        self._stop.set()
        self._thread.join(5)


def _appeared(truth_dir: Path) -> dict[int, float]:
    """0-based volume -> when its last file appeared under its final name (files.tsv ``t_finished``)."""
    out: dict[int, float] = {}
    path = truth_dir / "files.tsv"
    if not path.exists():
        return out
    for r in read_table(path):
        if r.get("fault") == "n/a":
            v = int(r["volume"])
            out[v] = max(out.get(v, 0.0), float(r["t_finished"]))
    return out


# --------------------------------------------------------------------------- the series
def _stage_synthetic(args: argparse.Namespace, stage: Path) -> Path:
    """Render a synthetic run into ``stage`` (a DICOM folder or a 4D NIfTI) before the timed replay.

    Rendering (tens of ms a volume with motion) stays out of the timed run, where it would compete with the tool
    for the CPU. It is written at the replay's pace (``--speed``), so the acquisition times in the headers have the
    pace the files will arrive at (rtnf judges lateness against them); this takes as long as the run.
    """
    shape, mm = parse_grid(args.grid)
    n = int(args.volumes or 60)
    tr = float(args.tr_s or 1.0)
    fov = np.array(shape, dtype=float) * mm
    centre = np.array([0.0, -20.0, 10.0])  # the simulator's grid centre (MNI)
    roi = centre + [min(15.0, fov[0] / 4), 0.0, 0.0]
    spec = "\n".join([
        f"tr_s = {tr!r}", f"n_volumes = {n}", f"shape = [{', '.join(map(str, shape))}]", f"voxel_mm = {mm!r}",
        "seed = 1", "series = 13", "noise_pct = 1.0", f'format = "{args.format}"', "",
        "[[blocks]]", 'condition = "regulate"', f"onset_s = {10 * tr!r}", f"duration_s = {10 * tr!r}", "",
        "[[regions]]", 'name = "roi"', f"center_mm = [{', '.join(f'{x:.1f}' for x in roi)}]", "radius_mm = 8.0",
        "amplitude_pct = 1.5", 'condition = "regulate"', "",
        "[motion]", "max_trans_mm = 0.5", "max_rot_deg = 0.5", 'kind = "smooth"', "",
    ])
    if stage.exists():
        import shutil

        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    (stage / "spec.toml").write_text(spec)
    files = stage / "files"
    done = subprocess.run([sys.executable, "-m", "scanner_sim", "synth", str(stage / "spec.toml"), "--export-dir",
                           str(files), "--truth-dir", str(stage / "truth"), "--speed", repr(float(args.speed)),
                           "--mode", "atomic", "--n-chunks", "1", "--chunk-delay-s", "0", "--recon-delay-s", "0"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"scanner_sim could not render the synthetic run ({done.returncode}): "
                           f"{done.stderr.strip()[-2000:]}")
    if args.format == "nifti":
        return _stack_nifti(files, stage / "synthetic.nii", tr)
    return files


def _stack_nifti(folder: Path, out: Path, tr_s: float | None) -> Path:
    """A folder of 3D NIfTI files (sorted by name) as one 4D NIfTI, so scanner_sim can replay it."""
    import nibabel as nib

    files = sorted(p for p in folder.iterdir() if p.name.endswith((".nii", ".nii.gz")) and not p.name.startswith("."))
    if not files:
        raise ValueError(f"Invalid value for '--source': {folder} holds no DICOM or NIfTI files.")
    first = nib.load(files[0])
    if tr_s is None:
        zooms = first.header.get_zooms()
        tr_s = float(zooms[3]) if len(zooms) > 3 and zooms[3] > 0 else None
    if not tr_s:
        raise ValueError(f"{files[0]} has no TR; pass --tr-s.")
    data = np.stack([np.asanyarray(nib.load(f).dataobj).reshape(first.shape[:3]) for f in files], axis=-1)
    img = nib.Nifti1Image(data.astype(first.get_data_dtype()), first.affine)
    img.header.set_xyzt_units("mm", "sec")
    zooms = tuple(first.header.get_zooms()[:3]) + (float(tr_s),)
    img.header.set_zooms(zooms)
    nib.save(img, out)
    return out


def _series(args: argparse.Namespace, base: Path) -> dict[str, Any]:
    """What is replayed: the source path, its kind, volumes, TR, a description and two ROI centres."""
    from scanner_sim.replay import ReplayError, load_source

    notes: list[str] = []
    if args.grid:
        path, label = _stage_synthetic(args, base / "synthetic"), f"synthetic {args.grid} {args.format}"
    elif args.source is not None:
        path, label = Path(args.source), str(args.source)
    else:
        real = Path(args.data) / _DEFAULT_REAL
        if real.is_dir():
            path, label = real, f"pyneal Siemens mosaic series ({real})"
        else:
            notes.append(f"{real} not found: synthetic 64x64x36@3 instead")
            args.grid = "64x64x36@3"
            path, label = _stage_synthetic(args, base / "synthetic"), "synthetic 64x64x36@3 siemens-mosaic"
    try:
        src = load_source(path, tr_s=args.tr_s)
    except ReplayError:
        if not path.is_dir():
            raise
        path = _stack_nifti(path, base / "source.nii", args.tr_s)  # a folder of 3D NIfTI files
        src = load_source(path, tr_s=args.tr_s)
    n = src.n_volumes if args.grid or not args.volumes else min(int(args.volumes), src.n_volumes)
    first = list(src.volumes[0])
    if src.kind == "nifti4d":
        import nibabel as nib

        img = nib.load(path)
        affine, shape = img.affine, img.shape[:3]
    else:
        from rtnf.scanner.dicom import read_volume

        vol = read_volume(first)
        affine, shape = vol.affine, vol.data.shape
    centre = (affine @ np.append((np.array(shape) - 1) / 2.0, 1.0))[:3]
    half = float(np.abs(affine[:3, :3] @ np.array([shape[0], 0, 0])).max()) / 2
    dx = min(15.0, 0.5 * half)
    rois = {"left": [float(x) for x in centre + [-dx, 0, 0]], "right": [float(x) for x in centre + [dx, 0, 0]]}
    return {"path": path, "label": label, "kind": src.kind, "n_volumes": n, "tr_s": src.tr_s, "shape": list(shape),
            "slices_per_volume": len(first) if src.kind == "dicom-slices" else None,
            "format": "nifti" if src.kind == "nifti4d" else "dicom", "rois": rois, "notes": notes}


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return json.dumps(str(v))


def config_text(series: dict[str, Any], export_dir: Path, output_dir: Path, address: str, *, whole_brain: bool,
                preview: bool, fwhm_mm: float) -> str:
    """A session config for the series: two 8 mm ROIs, 6 motion regressors, 20 s blocks (as rtnf bench pipeline)."""
    n, tr = series["n_volumes"], series["tr_s"]
    block = max(1, min(int(round(20.0 / tr)), n // 4))
    repeat = max(1, n // (2 * block))
    scanner = {"export_dir": str(export_dir), "format": series["format"], "tr_s": tr, "n_volumes": n,
               "dummy_volumes": 0, "watch": "inotify", "first_volume_number": 1}
    if series["slices_per_volume"]:
        scanner["slices_per_volume"] = series["slices_per_volume"]
    model: dict[str, Any] = {"hrf": "spm", "drift_cutoff_s": 128.0, "motion_regressors": 6}
    if whole_brain:
        model.update(whole_brain=True, contrast="regulate")
    lines = ["[session]", 'subject = "bench"', 'task = "e2e"', "", "[scanner]"]
    lines += [f"{k} = {_toml(v)}" for k, v in scanner.items()]
    lines += ["", "[protocol]", 'baseline = "rest"',
              f'pattern = {{ steps = [{{ condition = "rest", duration = {block} }}, '
              f'{{ condition = "regulate", duration = {block} }}], repeat = {repeat} }}', ""]
    for name, centre in series["rois"].items():
        lines += [f"[rois.{name}]", f"center_mm = {_toml(centre)}", "radius_mm = 8.0", ""]
    lines += ["[model]"] + [f"{k} = {_toml(v)}" for k, v in model.items()]
    lines += ["", "[motion]", "enabled = true", f"fwhm_mm = {float(fwhm_mm)!r}", ""]
    lines += ["[feedback]", f'roi = "{next(iter(series["rois"]))}"', "", "[publish]", f'address = "{address}"',
              f"preview = {_toml(preview)}", "", "[output]", f'dir = "{output_dir}"', ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- one run
def _start(cmd: list[str] | str, log: Path, *, shell: bool = False) -> subprocess.Popen:
    handle = open(log, "w")
    try:
        return subprocess.Popen(cmd, shell=shell, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
    finally:
        handle.close()


def _stop(proc: subprocess.Popen | None, group: bool = False, timeout_s: float = 10.0) -> None:
    """SIGTERM (to its process group when ``group``) then, after ``timeout_s``, SIGKILL; only our own child."""
    if proc is None or proc.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            if group:
                os.killpg(proc.pid, sig)  # the child's own session: only what it started
            else:
                proc.send_signal(sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout_s)
            return
        except subprocess.TimeoutExpired:
            continue


def _tail(path: Path, n: int = 12) -> str:
    try:
        return "\n  ".join(path.read_text(errors="replace").strip().splitlines()[-n:])
    except OSError:
        return ""


def _producer_cmd(series: dict[str, Any], args: argparse.Namespace, export_dir: Path, truth_dir: Path) -> list[str]:
    cmd = [sys.executable, "-m", "scanner_sim", "replay", str(series["path"]), "--export-dir", str(export_dir),
           "--truth-dir", str(truth_dir), "--mode", "atomic", "--n-chunks", "1", "--chunk-delay-s", "0",
           "--recon-delay-s", "0", "--speed", repr(float(args.speed)), "--start-delay-s", "0.5",
           "--n-volumes", str(series["n_volumes"]), "--tr-s", repr(float(series["tr_s"]))]
    return cmd


def run_once(series: dict[str, Any], args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """One run: the tool (rtnf run or --command) and the producer as child processes; per-volume times."""
    from rtnf.run.outputs import TIMESERIES

    if workdir.exists():  # a kept folder from an earlier bench: its files would be "from before the run"
        import shutil

        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    export_dir, truth_dir, output_dir = workdir / "export", workdir / "truth", workdir / "outputs"
    export_dir.mkdir(exist_ok=True)
    n = series["n_volumes"]
    period = series["tr_s"] / float(args.speed)
    timeout = float(args.timeout_s) if args.timeout_s else n * period + 120.0
    command_mode = args.tool_command is not None
    sub_address = None
    if command_mode:
        if args.address:
            sub_address = free_address() if args.address == "auto" else args.address
        address = sub_address or free_address()
    else:
        address = free_address()
        sub_address = address
    cfg_path = workdir / "session.toml"
    cfg_path.write_text(config_text(series, export_dir, output_dir, address, whole_brain=not args.no_whole_brain,
                                    preview=not args.no_preview, fwhm_mm=args.fwhm_mm))
    offset = 0  # table index + offset = 0-based replayed volume
    if command_mode:
        fields = {"export_dir": export_dir, "output_dir": output_dir, "config": cfg_path, "address": address,
                  "python": sys.executable, "n_volumes": n, "tr_s": series["tr_s"], "workdir": workdir}
        tool_cmd: Any = args.tool_command.format(**{k: shlex.quote(str(v)) for k, v in fields.items()})
        glob_text = args.table_glob.format(**{k: str(v) for k, v in fields.items()})
        table_glob = glob_text if os.path.isabs(glob_text) else str(output_dir / glob_text)
        index_col, time_col, offset = args.index_column, args.time_column, -int(args.index_base)
    else:
        table_glob = str(output_dir / "**" / f"*_{TIMESERIES}")
        index_col, time_col = "index", "t_published"
        tool_cmd = [sys.executable, "-m", "rtnf", "--log-level", "WARNING", "run", str(cfg_path), "--overwrite",
                    "--create-export-dir"]
        if args.config is not None:
            from rtnf.config import load_config

            offset = load_config(Path(args.config)).scanner.dummy_volumes
            tool_cmd = [sys.executable, "-m", "rtnf", "--log-level", "WARNING", "run", str(args.config),
                        "--export-dir", str(export_dir), "--output-dir", str(output_dir), "--address", address,
                        "--set", f"scanner.n_volumes={n}", "--overwrite", "--create-export-dir"]
    sub = Subscriber(sub_address, args.topic if command_mode else "feedback") if sub_address else None
    load_before = _loadavg()
    load_during: list[float] = []  # 1-minute load average every 5 s while the series is written
    tool = producer = None
    t_start = time.time()
    status = "ok"
    try:
        tool = _start(tool_cmd, workdir / "tool.log", shell=command_mode)
        ready_by = time.time() + (float(args.ready_s) if command_mode else 120.0)
        while time.time() < ready_by:
            if sub is not None and sub.ready.wait(0.1):
                break
            if sub is None:
                time.sleep(0.1)
            if tool.poll() is not None:
                if command_mode:
                    break  # a command may legitimately do its work later, e.g. a one-shot script; go on
                raise RuntimeError(f"rtnf run exited early ({tool.returncode}):\n  {_tail(workdir / 'tool.log')}")
        else:
            if not command_mode:
                raise RuntimeError(f"rtnf run published no heartbeat within 120 s:\n  {_tail(workdir / 'tool.log')}")
        producer = _start(_producer_cmd(series, args, export_dir, truth_dir), workdir / "producer.log")
        deadline = time.time() + timeout
        producer_done_at = None
        next_load = 0.0
        while time.time() < deadline:
            time.sleep(0.2)
            if time.time() >= next_load and _loadavg():
                load_during.append(_loadavg()[0])
                next_load = time.time() + 5.0
            if producer_done_at is None and producer.poll() is not None:
                producer_done_at = time.time()
                if producer.returncode != 0:
                    raise RuntimeError(f"the producer failed ({producer.returncode}):\n  "
                                       f"{_tail(workdir / 'producer.log')}")
            if tool.poll() is not None:
                if command_mode and producer_done_at is None:
                    status = f"the command exited ({tool.returncode}) before the last volume was written"
                break
            if command_mode and producer_done_at is not None:
                done = _table_count(table_glob, index_col) >= n and (sub is None or len(sub.received) >= n)
                if done or time.time() > producer_done_at + float(args.grace_s):
                    break
        else:
            status = "timeout"
        if not command_mode and tool.poll() is None:
            status = "timeout"
        time.sleep(0.3)  # last messages in flight
    finally:
        _stop(producer)
        _stop(tool, group=command_mode)
        if sub is not None:
            sub.close()
    wall = time.time() - t_start
    if not command_mode and tool is not None and tool.returncode not in (0, None) and status == "ok":
        status = f"rtnf run exit code {tool.returncode}"
    appeared = _appeared(truth_dir)
    table_path = _newest(table_glob)
    rows = read_table(table_path) if table_path else []
    return _volumes(n, appeared, rows, sub.received if sub else None, index_col, time_col, offset,
                    1e-3 if command_mode and args.time_unit == "ms" else 1.0) | {
        "status": status, "table": str(table_path) if table_path else None, "load_before": load_before,
        "load_after": _loadavg(), "load_max_during": max(load_during, default=None), "wall_s": wall,
        "workdir": str(workdir), "command": tool_cmd, "subscriber": sub_address,
    }


def _newest(pattern: str) -> Path | None:
    found = [Path(p) for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def _table_count(pattern: str, index_col: str) -> int:
    path = _newest(pattern)
    if path is None:
        return 0
    try:
        return len({r.get(index_col) for r in read_table(path) if r.get(index_col)})
    except (OSError, csv.Error):
        return 0


def _volumes(n: int, appeared: dict[int, float], rows: list[dict[str, str]],
             received: dict[int, tuple[float, dict[str, Any]]] | None, index_col: str, time_col: str, offset: int,
             unit: float) -> dict[str, Any]:
    """One record per replayed volume: when it appeared, the table's times, the subscriber's time."""
    by_volume: dict[int, dict[str, str]] = {}
    for r in rows:
        idx = _num(r.get(index_col))
        if idx is None or r.get("missing") == "1":
            continue
        by_volume.setdefault(int(idx) + offset, r)
    has_timing = bool(rows) and all(c in rows[0] for c in TIMING)
    vols = []
    for v in range(n):
        rec: dict[str, Any] = {"volume": v, "t_appeared": appeared.get(v)}
        r = by_volume.get(v)
        if r is not None:
            t = _num(r.get(time_col))
            rec["t_table"] = None if t is None else t * unit
            if has_timing:
                rec.update({c: _num(r.get(c)) for c in TIMING})
        if received is not None:
            got = received.get(v - offset)
            rec["t_received"] = got[0] if got else None
        vols.append(rec)
    return {"volumes": vols, "n_rows": len(by_volume), "n_received": None if received is None else len(received)}


# --------------------------------------------------------------------------- statistics and report
def _rows_for(command_mode: bool, subscribed: bool, has_timing: bool) -> list[tuple[str, str, str, int]]:
    if not command_mode:
        return list(RTNF_STAGES)
    out = []
    end = "t_received" if subscribed else "t_table"
    if has_timing:
        out += [s for s in RTNF_STAGES if s[2] != "t_received"]
    out.append(("appear -> table time", "t_appeared", "t_table", 0))
    if subscribed:
        out.append(("table time -> subscriber", "t_table", "t_received", 0))
    out.append((f"total: appear -> {'subscriber' if subscribed else 'table time'}", "t_appeared", end, 0))
    return out


def summarize(runs: list[dict[str, Any]], warmup: int, command_mode: bool, subscribed: bool) -> dict[str, Any]:
    """Per-stage statistics over every run's volumes after ``warmup``; each volume's total and parts."""
    has_timing = any("t_detected" in v for r in runs for v in r["volumes"])
    rows = _rows_for(command_mode, subscribed, has_timing)
    samples: dict[str, list[float]] = {name: [] for name, *_ in rows}
    total_name = rows[-1][0]
    if not command_mode:
        parts = list(RTNF_PARTS)
    else:
        parts = ["appear -> table time", "table time -> subscriber"] if subscribed else []
    n_results = n_missing = 0
    max_sum_error = 0.0
    for run in runs:
        for rec in run["volumes"]:
            start, end = rec.get("t_appeared"), rec.get(rows[-1][2])
            rec["total_s"] = None if start is None or end is None else end - start
            if rec["total_s"] is None:
                n_missing += 1
            else:
                n_results += 1
            got = {}
            for name, a, b, _ in rows:
                if rec.get(a) is not None and rec.get(b) is not None:
                    got[name] = rec[b] - rec[a]
            rec["stages_s"] = got
            if rec["total_s"] is not None and parts and all(p in got for p in parts):
                max_sum_error = max(max_sum_error, abs(sum(got[p] for p in parts) - rec["total_s"]))
            if rec["volume"] < warmup:
                continue
            for name, value in got.items():
                samples[name].append(value)
    stages = {name: summarize_ms(v) for name, v in samples.items()}
    medians = [stages[p].get("median_ms") for p in parts]
    return {"rows": rows, "stages": stages, "total": total_name, "parts": parts, "n_results": n_results,
            "n_missing": n_missing, "max_parts_sum_error_ms": 1000.0 * max_sum_error,
            "sum_of_part_medians_ms": float(sum(medians)) if parts and None not in medians else None}


def _report(meta: dict[str, Any], runs: list[dict[str, Any]], stats: dict[str, Any]) -> str:
    s = meta["series"]
    period = s["tr_s"] / meta["speed"]
    head = [
        f"rtnf e2e bench: {s['label']}, {s['n_volumes']} volumes of {'x'.join(map(str, s['shape']))}, TR "
        f"{s['tr_s']:g} s x{meta['speed']:g} (a volume every {1000 * period:.0f} ms), {len(runs)} run(s); "
        f"{os.cpu_count()} CPUs; times in ms",
        "producer: scanner_sim replay (separate process), each file written as .<name>.part then renamed "
        "(os.replace); appear = the producer's time.time() after the rename of the volume's last file",
    ]
    if meta["mode"] == "rtnf":
        wb = "on" if meta["whole_brain"] else "off"
        head.append(f"tool: {'your config ' + str(meta['config']) if meta['config'] else 'rtnf run'} in its own "
                    f"process (written config: whole-brain model {wb}, preview "
                    f"{'on' if meta['preview'] else 'off'}, fwhm {meta['fwhm_mm']:g} mm); end point: a ZeroMQ "
                    "subscriber thread in the bench process holds the volume's 'feedback' message; stages from the "
                    "run's *_desc-rtnf_timeseries.tsv")
    else:
        head.append(f"tool: {meta['command']!r} in its own process group; end point: "
                    + (f"a ZeroMQ subscriber thread in the bench process on {runs[0]['subscriber']} holds the "
                       f"volume's first '{meta['topic']}' message"
                       if meta["subscribed"] else f"the table's {meta['time_column']!r} column ({meta['time_unit']})")
                    + f"; table {meta['table_glob']!r}, volume in {meta['index_column']!r} "
                      f"(first = {meta['index_base']})")
    head += s["notes"]
    for k, r in enumerate(runs):
        head.append(f"run {k + 1}: {r['status']}, {r['n_rows']} table rows"
                    + ("" if r["n_received"] is None else f", {r['n_received']} messages held")
                    + f", {r['wall_s']:.0f} s; load average (1, 5, 15 min) {r['load_before']} -> {r['load_after']}, "
                    f"1-min peak {r['load_max_during']} during the run")
    labels = ["  " * indent + name for name, _, _, indent in stats["rows"]]
    width = max(len(x) for x in labels)
    trows = [{"stage": label.ljust(width), **stats["stages"][name]}
             for label, (name, *_) in zip(labels, stats["rows"])]
    body = table(trows, ["stage", "median_ms", "p95_ms", "p99_ms", "max_ms", "n"])
    tail = [f"first {meta['warmup']} volume(s) of each run left out; {stats['n_results']} volumes with a result, "
            f"{stats['n_missing']} without"]
    if stats["parts"] and stats["sum_of_part_medians_ms"] is not None and stats["n_results"]:
        tail.append(f"parts of the total: {' + '.join(stats['parts'])}; per volume they sum to the total within "
                    f"{stats['max_parts_sum_error_ms']:.3g} ms; sum of their medians "
                    f"{stats['sum_of_part_medians_ms']:.2f} ms vs median total "
                    f"{stats['stages'][stats['total']].get('median_ms', float('nan')):.2f} ms")
    return "\n".join(head + [body] + tail)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Replay the series ``--repeat`` times against the tool; returns per-volume times, statistics and a report."""
    from rtnf.config import ConfigError  # the CLI prints it as one message, exit code 2

    if args.tool_command is None and args.address:
        raise ConfigError("'--address' is for --command mode; rtnf run publishes on an address the bench picks.")
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="rtnf-bench-e2e-"))
    base.mkdir(parents=True, exist_ok=True)
    try:
        try:
            series = _series(args, base)
        except ValueError as exc:  # ReplayError and friends: a source that cannot be replayed
            raise ConfigError(str(exc)) from None
        runs = [run_once(series, args, base / f"run{k + 1}") for k in range(max(1, int(args.repeat)))]
    finally:
        if not args.keep:
            import shutil

            shutil.rmtree(base, ignore_errors=True)
    command_mode = args.tool_command is not None
    subscribed = not command_mode or bool(args.address)
    stats = summarize(runs, int(args.warmup), command_mode, subscribed)
    meta = {
        "mode": "command" if command_mode else "rtnf", "speed": float(args.speed), "warmup": int(args.warmup),
        "whole_brain": not args.no_whole_brain, "preview": not args.no_preview, "fwhm_mm": args.fwhm_mm,
        "config": str(args.config) if args.config else None, "command": args.tool_command, "address": args.address,
        "topic": args.topic, "subscribed": subscribed, "time_column": args.time_column,
        "time_unit": args.time_unit, "table_glob": args.table_glob, "index_column": args.index_column,
        "index_base": args.index_base,
        "series": {k: (str(v) if isinstance(v, Path) else v) for k, v in series.items()},
    }
    text = _report(meta, runs, stats)
    stats_out = {k: v for k, v in stats.items() if k != "rows"}
    stats_out["order"] = [name for name, *_ in stats["rows"]]
    return {"stage": NAME, "cpus": os.cpu_count(), **meta, **stats_out, "runs": runs, "text": text}
