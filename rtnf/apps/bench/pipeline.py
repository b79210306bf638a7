"""``rtnf bench pipeline``: the real pipeline, from files landing in an export folder to the ZeroMQ publish.

For each case a *producer* process (``scanner_sim``'s export engine, chunked
writes, ``files.tsv`` with the time each file was closed) writes a run into a
temporary export folder while a *pipeline* process runs
:func:`rtnf.run.session.run_session` on it, exactly as ``rtnf run`` does (inotify
watcher, export reader, sequencer, :class:`~rtnf.run.pipeline.VolumeProcessor`,
publisher on a TCP port, recorder), with a ZeroMQ subscriber in the same
process. Each case runs in fresh processes, so its peak memory is its own.

Cases: synthetic runs of 64x64x36 (3 mm), 74x74x36 (3 mm, OpenNFT's demo
matrix) and 104x104x72 (2 mm, multiband), with smooth head motion, and the
real series in ``../shared/data`` when present (the pyneal Siemens mosaic run
and the studyforrest Philips slice run, replayed by ``scanner_sim replay``).
Full processing: realignment, smoothing when ``--fwhm-mm`` > 0, two 8 mm
ROIs, the incremental ROI GLM with 6 motion regressors, the whole-brain GLM
and t-map of the regulation contrast (when the config supports
``model.whole_brain``), the console preview, feedback.

Synthetic volumes with motion cost 60-300 ms each to generate, more than the
pipeline spends on them, so the producer renders ``--cycle`` distinct volumes
before the run and plays them back and forth (a triangle wave: motion stays
continuous); each file still gets its own volume number, acquisition time and
header.

Stages per volume (wall clock, ``time.time()``, from the recorded timing block
and a few ``perf_counter`` probes):

``detect``      file closed by the producer (``files.tsv``) -> ``t_detected``
``read``        ``t_detected`` -> ``t_read`` (queue hop, sorting, decoding; ``decode`` is the file read alone;
                ``multiecho``: the T2*-weighted combination of the echoes with ``--echoes``)
``preprocess``  ``t_read`` -> ``t_preprocessed`` (``realign``: motion estimate; ``slice_timing``: the slice-timing
                correction with ``--slice-timing``; the rest: ROI sampling, quality)
``model``       ``t_preprocessed`` -> ``t_modelled`` (``glm``: ROI model; ``feedback``; ``confound_physio``:
                RETROICOR and RVT from the physio log the producer writes as it goes, with ``--confounds physio``;
                ``confound_tissue``: WM and CSF means and aCompCor on the synthetic head's masks, with
                ``--confounds tissue``)
``publish``     ``t_modelled`` -> ``t_published`` (message bodies)
``processing``  ``t_published - t_detected``: the latency the issue's targets are about
``send``        the ``feedback`` + ``volume`` ZeroMQ sends, after ``t_published``
``record``      the recorder's row write
``wholebrain``  the operator's worker, after the feedback has left: brain sampling and the voxel GLM update
``preview``     the operator's worker: t-map refresh and the console's preview (three planes and the t-map)
``operator``    ``t_published`` -> the volume's preview is ready to send (the operator's products' latency)
``deliver``     ``t_published`` -> the subscriber holds the feedback message
``signal_<name>`` each feedback signal's ``step`` (``--signals``: built-in signals on the synthetic runs)

Side by side (in the same invocation): rtnf's realignment against SimpleITK
(:mod:`rtnf.apps.bench.motion`), the incremental whole-brain GLM against a batch
least-squares refit (:mod:`rtnf.apps.bench.glm`), and rtnf's DICOM reading against
nibabel's generic loader (:mod:`rtnf.apps.bench.read`), each with its ratio.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import SHARED_DATA
from ._stats import summarize_ms, table
from .signals import SIGNALS, parse_signals
from .signals import prepare as prepare_signals

NAME = "pipeline"
HELP = "the whole pipeline, export folder -> ZeroMQ publish, per stage (synthetic 64/74/104 grids and real series)"

DEFAULT_GRIDS = "64x64x36@3,74x74x36@3,104x104x72@2"
_DEFAULT_DATA = SHARED_DATA
TARGETS_MS = {(64, 64, 36): (5.0, 10.0), (74, 74, 36): (6.0, 12.0), (104, 104, 72): (12.0, 24.0)}
"""Processing (t_published - t_detected) targets by grid: (median, p99) in ms (issue 21)."""
MEMORY_TARGET_MB = 500.0
STAGES = ("detect", "read", "decode", "multiecho", "preprocess", "slice_timing", "realign", "model", "glm", "feedback", "shaping", "publish",
          "processing", "send", "record", "deliver", "wholebrain", "preview", "operator")
ROIS = {"acc": (0.0, 30.0, 15.0), "insula": (37.0, 1.0, -1.0)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``rtnf bench pipeline``."""
    parser.add_argument("--grids", default=DEFAULT_GRIDS,
                        help="synthetic grids as WxHxD@mm, comma-separated (default %(default)s; '' for none)")
    parser.add_argument("--volumes", type=int, default=300, help="volumes per synthetic run (default 300)")
    parser.add_argument("--long", type=int, default=0, metavar="N",
                        help="also a long run of N volumes (e.g. 1000) on --long-grid (default: none)")
    parser.add_argument("--long-grid", default="104x104x72@2", help="grid of the long run (default %(default)s)")
    parser.add_argument("--tr-s", type=float, default=0.5, help="TR of the synthetic runs, s (default 0.5)")
    parser.add_argument("--speed", type=float, default=5.0,
                        help="scanner speed-up: files come every tr_s/speed seconds (default 5: every 0.1 s)")
    parser.add_argument("--format", choices=("siemens-mosaic", "nifti"), default="siemens-mosaic",
                        help="synthetic file format (default siemens-mosaic)")
    parser.add_argument("--mode", choices=("chunked", "reopen", "atomic"), default="chunked",
                        help="how files are written (default chunked)")
    parser.add_argument("--n-chunks", type=int, default=4, help="writes per file (default 4)")
    parser.add_argument("--chunk-delay-s", type=float, default=0.005, help="pause between writes, s (default 0.005)")
    parser.add_argument("--cycle", type=int, default=40,
                        help="distinct synthetic volumes rendered before the run and played back and forth (default 40)")
    parser.add_argument("--fwhm-mm", type=float, default=0.0, help="motion.fwhm_mm smoothing (default 0: none)")
    parser.add_argument("--no-whole-brain", action="store_true", help="leave out the whole-brain GLM and t-map")
    parser.add_argument("--signals", type=parse_signals, default=(), metavar="NAMES",
                        help="built-in feedback signals on the synthetic runs, each its own stage signal_<name>: "
                             f"comma-separated of {', '.join(SIGNALS)}, or all (see rtnf.apps.bench.signals)")
    parser.add_argument("--slice-timing", choices=("linear", "cubic"), default=None,
                        help="add slice-timing correction with this method (slice times from the headers; "
                             "\"ascending\" where a series has none)")
    parser.add_argument("--echoes", type=int, default=1, metavar="N",
                        help="multi-echo synthetic runs: N echoes 12 ms apart from 12 ms, one file each, combined by "
                             "T2*-weighted averaging (stage multiecho; default 1: single echo)")
    parser.add_argument("--confounds", type=parse_confounds, default=(), metavar="NAMES",
                        help="confound sources on the synthetic runs, each its own stage confound_<name>: "
                             f"comma-separated of {', '.join(CONFOUNDS)} (physio: the producer writes a physio log "
                             "as it goes; RETROICOR and RVT from it)")
    parser.add_argument("--no-preview", action="store_true", help="leave out the console preview message")
    parser.add_argument("--warmup", type=int, default=5, help="first volumes left out of the statistics (default 5)")
    parser.add_argument("--data", type=Path, default=_DEFAULT_DATA, help="real data folder (default: %(default)s)")
    parser.add_argument("--no-real", action="store_true", help="skip the real series")
    parser.add_argument("--real-speed", type=float, default=4.0, help="replay speed-up of the real series (default 4)")
    parser.add_argument("--no-side-by-side", action="store_true", help="skip the SimpleITK / batch GLM / nibabel comparison")
    parser.add_argument("--sitk-volumes", type=int, default=3, help="volumes registered by SimpleITK per grid (default 3)")
    parser.add_argument("--glm-volumes", type=int, default=300,
                        help="run length of the incremental-vs-batch GLM comparison (default 300)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the export folders and outputs here")


# --------------------------------------------------------------------------- geometry and configs
#: ``--confounds`` names -> the config lines that turn each on (the physio log is written by the producer).
CONFOUNDS: dict[str, list[str]] = {
    "physio": ["", "[confounds.physio]", 'log = "physio.log"', "header_lines = 1", 'time_column = "time_s"',
               'cardiac_column = "cardiac"', 'resp_column = "respiratory"'],
    # WM/CSF masks of the synthetic head, written beside the config by write_tissue_masks
    "tissue": ["", "[confounds.tissue]", 'signals = ["white_matter", "csf", "acompcor"]',
               'wm_mask = "tissue_wm.nii.gz"', 'csf_mask = "tissue_csf.nii.gz"', "fit_volumes = 10"],
}


def write_tissue_masks(spec: dict[str, Any], folder: Path) -> None:
    """``tissue_wm.nii.gz`` and ``tissue_csf.nii.gz`` of the simulator's head, on the grid rtnf reads the run on.

    As ``rtnf roi tissue --wm-map/--csf-map`` makes them (fraction >= 0.9 in the brain, WM eroded once). The grid
    is that of the run's first file as rtnf's reader gives it (a DICOM mosaic's voxel order is not the
    simulator's), so one volume is written and read back first.
    """
    import nibabel as nib

    from rtnf.apps.roidef._common import _resample
    from rtnf.apps.roidef.tissue import DEFAULT_SETTINGS, tissue_mask
    from rtnf.scanner.volume import Grid
    from scanner_sim.export import MAIN
    from scanner_sim.spec import RunSpec
    from scanner_sim.synth import SyntheticRun
    from scanner_sim.writer import SyntheticProducer

    run = SyntheticRun(RunSpec.from_dict({**spec, "n_volumes": 1, "blocks": [], "regions": [], "motion": None}))
    probe = folder / ("grid_probe.nii" if run.spec.format == "nifti" else "grid_probe.dcm")
    probe.write_bytes(SyntheticProducer(run).payloads(0, MAIN, [0.0])[0])
    if run.spec.format == "nifti":
        img = nib.load(probe)
        grid = Grid(tuple(img.shape[:3]), np.asarray(img.affine, dtype=np.float64))
    else:
        from rtnf.scanner.dicom import read_volume

        grid = read_volume([probe]).grid
    probe.unlink()
    head = run.phantom
    wm = np.where(head.brain_mask, 1.0 - head.gm - head.csf, 0.0)
    brain = _resample(head.brain_mask.astype(np.float32), head.affine, grid, order=0) > 0.5
    for tissue, fraction in (("wm", wm), ("csf", head.csf)):
        on_grid = _resample(np.asarray(fraction, np.float32), head.affine, grid, order=0)
        roi = tissue_mask(on_grid, brain, grid, tissue, DEFAULT_SETTINGS[tissue], "--confounds")
        nib.save(nib.Nifti1Image(roi.mask.astype(np.uint8), grid.affine), folder / f"tissue_{tissue}.nii.gz")


def parse_confounds(text: str) -> tuple[str, ...]:
    """``"physio"`` -> ``("physio",)``; an unknown name is an argparse error."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    bad = [n for n in names if n not in CONFOUNDS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown confound source {bad[0]!r}. Allowed: {', '.join(CONFOUNDS)}")
    return names


def parse_grid(spec: str) -> tuple[tuple[int, int, int], float]:
    """``"64x64x36@3"`` -> ((64, 64, 36), 3.0)."""
    dims, _, mm = spec.strip().partition("@")
    shape = tuple(int(n) for n in dims.lower().split("x"))
    if len(shape) != 3 or not mm:
        raise ValueError(f"invalid grid {spec!r}. Allowed: WxHxD@mm, e.g. 64x64x36@3")
    return shape, float(mm)  # type: ignore[return-value]


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(str(v))


def _config_text(case: dict[str, Any], export_dir: Path, output_dir: Path, address: str) -> str:
    n = case["n_volumes"]
    block = max(1, min(int(round(20.0 / case["tr_s"])), n // 4))  # 20 s blocks, at least two pairs
    repeat = max(1, n // (2 * block))  # volumes after the last block belong to the baseline
    scanner = {"export_dir": str(export_dir), "format": "dicom" if case["format"] != "nifti" else "nifti",
               "tr_s": case["tr_s"], "n_volumes": n, "dummy_volumes": 0, "watch": "inotify",
               "first_volume_number": case.get("first_volume_number", 1)}
    if case.get("slices_per_volume"):
        scanner["slices_per_volume"] = case["slices_per_volume"]
    if case.get("echoes", 1) > 1:
        scanner["echoes"] = case["echoes"]
    model: dict[str, Any] = {"hrf": "spm", "drift_cutoff_s": 128.0, "motion_regressors": 6}
    if case["whole_brain"]:
        model["whole_brain"] = True
        model["contrast"] = "regulate"
    lines = ['[session]', 'subject = "bench"', 'task = "bench"', "", "[scanner]"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in scanner.items()]
    lines += ["", "[protocol]", 'baseline = "rest"',
              f'pattern = {{ steps = [{{ condition = "rest", duration = {block} }}, '
              f'{{ condition = "regulate", duration = {block} }}], repeat = {repeat} }}', ""]
    for name, centre in case["rois"].items():
        lines += [f"[rois.{name}]", f"center_mm = {_toml_value(list(centre))}", "radius_mm = 8.0", ""]
    lines += ["[model]"] + [f"{k} = {_toml_value(v)}" for k, v in model.items()]
    lines += case.get("signal_lines", [])  # --signals: [signals.<name>] tables (rtnf.apps.bench.signals)
    for name in case.get("confounds", ()):  # --confounds: [confounds.<name>] tables
        lines += CONFOUNDS[name]
    lines += ["", "[motion]", "enabled = true", f"fwhm_mm = {case['fwhm_mm']!r}"]
    lines += [f"reference = {_toml_value(case['motion_reference'])}"] if case.get("motion_reference") else []
    lines.append("")
    if case.get("slice_timing"):
        lines += ["[slice_timing]", "enabled = true", f'method = "{case["slice_timing"]}"']
        lines += [f'order = "{case["slice_order"]}"'] if case.get("slice_order") else []
        lines.append("")
    lines += ["[feedback]", f'roi = "{next(iter(case["rois"]))}"', "", "[publish]", f'address = "{address}"']
    lines.append(f"preview = {_toml_value(case['preview'])}")
    lines += ["", "[output]", f'dir = "{output_dir}"', ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- producer process
class _CycledRun:
    """A SyntheticRun stand-in that plays ``frames`` back and forth for a run of ``spec.n_volumes``."""

    def __init__(self, spec: Any, frames: list[np.ndarray], affine: np.ndarray, reference: np.ndarray) -> None:
        self.spec = spec
        self.frames = frames
        self.affine = affine
        self.reference = reference

    def echo_volumes(self, i: int) -> list[np.ndarray]:
        """The echoes of volume ``i`` (multi-echo runs: each frame is the list of a volume's echoes)."""
        return self.volume(i)  # type: ignore[return-value]

    def volume(self, i: int) -> np.ndarray:
        k = len(self.frames)
        if k == 1:
            return self.frames[0]
        j = i % (2 * k - 2)
        return self.frames[j if j < k else 2 * k - 2 - j]


def _producer_main(job: dict[str, Any], ready: Any, go: Any) -> None:
    """Producer process: render, wait for the pipeline, then write the run at TR pace (scanner_sim only)."""
    import dataclasses

    from scanner_sim.export import export_run

    if job["kind"] == "replay":
        from scanner_sim.replay import Replayer

        replayer = Replayer(job["export_dir"], job["source"], mode=job["mode"], n_chunks=job["n_chunks"],
                            chunk_delay_s=job["chunk_delay_s"], speed=job["speed"], recon_delay_s=0.0)
        ready.set()
        go.wait(600)
        replayer.replay(job["truth_dir"], start_delay_s=0.2)
        return
    from scanner_sim.spec import RunSpec
    from scanner_sim.synth import SyntheticRun
    from scanner_sim.writer import SyntheticProducer

    spec = RunSpec.from_dict(job["spec"])
    k = max(1, min(int(job["cycle"]), spec.n_volumes))
    short = SyntheticRun(dataclasses.replace(spec, n_volumes=k))
    frames = [short.echo_volumes(i) if spec.multiecho is not None else short.volume(i) for i in range(k)]
    producer = SyntheticProducer(short)
    producer.run = _CycledRun(spec, frames, short.affine, short.reference)
    producer.spec = spec
    producer.n_volumes = spec.n_volumes
    companions = []
    if job.get("physio_log"):  # the whole run's traces (the cycled frames cover only the first volumes)
        import numpy as np

        from scanner_sim.physio import make_physio_traces
        from scanner_sim.physio_stream import PhysioStream, PhysioStreamOptions

        traces = make_physio_traces(spec.physio, spec.duration_s, np.random.default_rng([spec.seed, 5]))
        companions.append(PhysioStream(traces, Path(job["export_dir"]), PhysioStreamOptions(log=job["physio_log"])))
    ready.set()
    go.wait(600)
    Path(job["truth_dir"]).mkdir(parents=True, exist_ok=True)
    export_run(producer, job["export_dir"], job["truth_dir"], tr_s=spec.tr_s, mode=job["mode"],
               n_chunks=job["n_chunks"], chunk_delay_s=job["chunk_delay_s"], speed=job["speed"],
               recon_delay_s=0.0, seed=spec.seed, start_delay_s=0.2, companions=companions)


# --------------------------------------------------------------------------- pipeline process
def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _volume_row(volume: dict[str, Any], probes: dict[str, float]) -> dict[str, Any]:
    return {"index": volume["index"], "file": volume["file"], "missing": volume["flags"]["missing"],
            "late": volume["flags"]["late"], "censored": volume["flags"]["censored"],
            "timing": dict(volume["timing"]), "probes": probes, "rss_mb": _rss_mb()}


def _instrumented_parts(started: Any, rows: list[dict[str, Any]]) -> Any:
    """rtnf's own run parts, subclassed to time the sends and the row writes (this process only).

    The processing stages come from each volume's :attr:`~rtnf.run.pipeline.VolumeResult.stage_s`
    (the operator's worker adds ``wholebrain`` and ``preview`` there later, in its own thread).
    """
    from rtnf.run.pipeline import VolumeProcessor
    from rtnf.run.publish import Publisher
    from rtnf.run.record import RunRecorder
    from rtnf.run.session import RunParts

    results: list[Any] = []  # the latest volume's result, until its volume message is sent
    ready: dict[int, float] = {}  # index -> when the operator's worker had its preview ready
    sends = {"send": 0.0}

    class Processor(VolumeProcessor):
        def process(self, index, acquisition, arrival):  # noqa: D102
            result = super().process(index, acquisition, arrival)
            results[:] = [result]
            return result

        def missing(self, *args, **kwargs):  # noqa: D102
            result = super().missing(*args, **kwargs)
            results[:] = [result]
            return result

    class TimedPublisher(Publisher):
        def send(self, topic, body):  # noqa: D102
            t0 = time.perf_counter()
            super().send(topic, body)
            dt = time.perf_counter() - t0
            if topic == "feedback":
                sends["send"] = dt
            elif topic == "volume":  # one row per volume, in the order published
                probes = results[0].stage_s if results else {}
                probes["send"] = sends["send"] + dt
                rows.append(_volume_row(body, probes))
            elif topic == "preview":  # made by the operator's worker, some time after its volume
                ready[body["index"]] = body.get("t_ready")
            elif topic == "run":
                started.set()

    class TimedRecorder(RunRecorder):
        def write_row(self, row):  # noqa: D102
            t0 = time.perf_counter()
            super().write_row(row)
            if rows:  # written after the volume message
                rows[-1]["probes"]["record"] = time.perf_counter() - t0

    parts = RunParts(processor=Processor, publisher=TimedPublisher, recorder=TimedRecorder)
    return parts, ready


def _subscriber(address: str, out: list[tuple[float, bytes]], stop: Any) -> None:
    import zmq

    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.SUBSCRIBE, b"feedback")
    sock.connect(address)
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    while not stop.is_set():
        if poller.poll(100):
            parts = sock.recv_multipart()
            out.append((time.time(), parts[-1]))
    sock.close(linger=0)


def _pipeline_main(job: dict[str, Any], started: Any, result_path: str) -> None:
    """Pipeline process: run_session on the export folder with probes; write the per-volume rows as JSON."""
    import logging
    import threading

    from rtnf.config import load_config
    from rtnf.run.session import run_session

    logging.basicConfig(level=logging.ERROR)
    rows: list[dict[str, Any]] = []
    parts, ready = _instrumented_parts(started, rows)
    cfg_path = Path(job["config_path"])
    cfg = load_config(cfg_path)

    received: list[tuple[float, bytes]] = []
    sub_stop = threading.Event()
    sub = threading.Thread(target=_subscriber, args=(cfg.publish.address, received, sub_stop), daemon=True)
    sub.start()
    stop = threading.Event()
    timer = threading.Timer(job["timeout_s"], stop.set)
    timer.daemon = True
    timer.start()
    t0 = time.time()
    result = run_session(cfg, cfg_path.read_text(), overwrite=True, stop=stop, parts=parts)
    wall = time.time() - t0
    timer.cancel()
    time.sleep(0.3)
    sub_stop.set()
    sub.join(5)
    deliveries = {}
    for t_recv, blob in received:
        try:
            body = json.loads(blob)
        except ValueError:
            continue
        if body.get("index") is not None:
            deliveries[body["index"]] = t_recv - body["t_published"]
    for row in rows:
        row["deliver"] = deliveries.get(row["index"])
        t_ready = ready.get(row["index"])
        row["operator"] = None if t_ready is None else t_ready - row["timing"]["t_published"]
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(result_path).write_text(json.dumps({
        "rows": rows, "status": result.status, "reason": result.reason, "n_processed": result.n_processed,
        "n_missing": result.n_missing, "peak_rss_mb": peak, "wall_s": wall,
    }))


# --------------------------------------------------------------------------- one case
def _files_closed(truth_dir: Path) -> dict[int, float]:
    """0-based volume -> time the producer closed its last file (files.tsv)."""
    path = truth_dir / "files.tsv"
    out: dict[int, float] = {}
    if not path.exists():
        return out
    with open(path, newline="") as fh:
        for r in csv.DictReader(fh, delimiter="\t"):
            if r["fault"] == "n/a":
                v = int(r["volume"])
                out[v] = max(out.get(v, 0.0), float(r["t_finished"]))
    return out


def run_case(case: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Run one case in fresh producer and pipeline processes; returns its summary."""
    import multiprocessing as mp

    from rtnf.apps.demo import free_address

    ctx = mp.get_context("spawn")
    workdir.mkdir(parents=True, exist_ok=True)
    export_dir, truth_dir, out_dir = workdir / "export", workdir / "truth", workdir / "outputs"
    export_dir.mkdir(exist_ok=True)
    address = free_address()
    cfg_path = workdir / "session.toml"
    if case.get("signals"):  # the decoder's model and the pattern's map, written before the config names them
        case = {**case, **prepare_signals(case, workdir)}
    cfg_path.write_text(_config_text(case, export_dir, out_dir, address))
    period = case["tr_s"] / case["speed"]
    job = {k: case[k] for k in ("kind", "mode", "n_chunks", "chunk_delay_s", "speed")}
    job.update(export_dir=str(export_dir), truth_dir=str(truth_dir))
    if case["kind"] == "replay":
        job["source"] = str(case["source"])
    else:
        job["cycle"] = case["cycle"]
        job["spec"] = {
            "tr_s": case["tr_s"], "n_volumes": case["n_volumes"], "shape": list(case["shape"]),
            "voxel_mm": case["voxel_mm"], "seed": 1, "noise_pct": 1.0, "format": case["format"],
            "motion": {"max_trans_mm": 0.5, "max_rot_deg": 0.5, "kind": "smooth"},
            "blocks": [{"condition": "regulate", "onset_s": 20.0, "duration_s": 20.0}],
            "regions": [{"name": n, "center_mm": list(c), "radius_mm": 8.0, "amplitude_pct": 1.5,
                         "condition": "regulate"} for n, c in case["rois"].items()],
        }
        if case.get("echoes", 1) > 1:  # one file per echo, the simulator's T2* map (scanner_sim.spec.MultiEcho)
            job["spec"]["multiecho"] = {"echo_times_ms": [12.0 * (e + 1) for e in range(case["echoes"])]}
        if "tissue" in case.get("confounds", ()):  # WM/CSF masks on the grid rtnf will read
            write_tissue_masks(job["spec"], workdir)
        if "physio" in case.get("confounds", ()):  # noise in the volumes, and the recording written as it happens
            job["spec"]["physio"] = {"cardiac_pct": 1.0, "resp_pct": 1.0}
            job["physio_log"] = "physio.log"
    ready, go, started = ctx.Event(), ctx.Event(), ctx.Event()
    result_path = workdir / "result.json"
    pjob = {"config_path": str(cfg_path), "timeout_s": 120.0 + 3.0 * case["n_volumes"] * max(period, 0.05)}
    producer = ctx.Process(target=_producer_main, args=(job, ready, go), name="bench-producer")
    pipeline = ctx.Process(target=_pipeline_main, args=(pjob, started, str(result_path)), name="bench-pipeline")
    producer.start()
    pipeline.start()
    try:
        for ev, proc, what in ((ready, producer, "producer"), (started, pipeline, "pipeline")):
            while not ev.wait(0.2):
                if not proc.is_alive():
                    raise RuntimeError(f"the {what} process of {case['name']} exited early ({proc.exitcode})")
        go.set()
        pipeline.join(pjob["timeout_s"] + 60)
        producer.join(60)
    finally:
        for proc in (pipeline, producer):
            if proc.is_alive():
                proc.terminate()
                proc.join(10)
    if not result_path.exists():
        raise RuntimeError(f"the pipeline process of {case['name']} wrote no result (exit code {pipeline.exitcode})")
    res = json.loads(result_path.read_text())
    return summarize_case(case, res, _files_closed(truth_dir))


def _stage_samples(rows: list[dict[str, Any]], closed: dict[int, float]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {s: [] for s in STAGES}
    for r in rows:
        t, p = r["timing"], r["probes"]
        f = closed.get(r["index"])  # no dummy volumes: kept index = acquisition
        if f is not None:
            out["detect"].append(t["t_detected"] - f)
        out["read"].append(t["t_read"] - t["t_detected"])
        out["preprocess"].append(t["t_preprocessed"] - t["t_read"])
        out["model"].append(t["t_modelled"] - t["t_preprocessed"])
        out["publish"].append(t["t_published"] - t["t_modelled"])
        out["processing"].append(t["t_published"] - t["t_detected"])
        for name, seconds in p.items():  # the probes, each feedback signal's stage (signal_<name>) and confound source's
            if name in out or name.startswith(("signal_", "confound_")):
                out.setdefault(name, []).append(seconds)
        for name in ("deliver", "operator"):
            if r.get(name) is not None:
                out[name].append(r[name])
    return out


def summarize_case(case: dict[str, Any], res: dict[str, Any], closed: dict[int, float]) -> dict[str, Any]:
    """Per-stage statistics, start vs end of the run, memory, targets."""
    rows = [r for r in res["rows"] if not r["missing"]]
    warm = min(case["warmup"], max(0, len(rows) - 1))
    used = rows[warm:]
    samples = _stage_samples(used, closed)
    stages = {s: summarize_ms(v) for s, v in samples.items() if v}
    proc = np.array(samples["processing"]) * 1000.0
    n = proc.size
    w = max(1, min(50, n // 4))
    first_proc = (rows[0]["timing"]["t_published"] - rows[0]["timing"]["t_detected"]) * 1000.0 if rows else None
    slope = float(np.polyfit(np.arange(n), proc, 1)[0] * 1000.0) if n > 2 else None
    rss = [r["rss_mb"] for r in rows]
    out: dict[str, Any] = {
        "name": case["name"], "kind": case["kind"], "grid": case.get("grid"), "format": case["format"],
        "n_volumes": case["n_volumes"], "tr_s": case["tr_s"], "speed": case["speed"],
        "period_s": case["tr_s"] / case["speed"], "whole_brain": case["whole_brain"], "preview": case["preview"],
        "fwhm_mm": case["fwhm_mm"], "status": res["status"], "n_processed": res["n_processed"],
        "n_missing": res["n_missing"], "n_late": sum(1 for r in rows if r["late"]),
        "n_censored": sum(1 for r in rows if r["censored"]), "warmup": warm, "first_volume_ms": first_proc,
        "stages": stages,
        "start_median_ms": float(np.median(proc[:w])) if n else None,
        "end_median_ms": float(np.median(proc[-w:])) if n else None,
        "window": w, "slope_ms_per_1000_volumes": slope,
        "peak_rss_mb": res["peak_rss_mb"], "rss_start_mb": rss[min(warm, len(rss) - 1)] if rss else None,
        "rss_end_mb": rss[-1] if rss else None, "wall_s": res["wall_s"],
    }
    shape = tuple(case["shape"]) if case.get("shape") else None
    target = TARGETS_MS.get(shape) if shape else None
    if n:
        med, p99 = stages["processing"]["median_ms"], stages["processing"]["p99_ms"]
        t: dict[str, Any] = {"p99_within_2x_median": bool(p99 <= 2 * med)}
        if target is not None:
            t["median_target_ms"], t["p99_target_ms"] = target
            t["median_met"] = bool(med <= target[0])
            t["p99_met"] = bool(p99 <= target[1])
        t["flat"] = bool(out["end_median_ms"] <= 1.2 * out["start_median_ms"] + 0.5)
        if shape == (104, 104, 72) and case["n_volumes"] >= 1000:
            t["memory_target_mb"] = MEMORY_TARGET_MB
            t["memory_met"] = bool(res["peak_rss_mb"] < MEMORY_TARGET_MB)
        out["targets"] = t
    return out


# --------------------------------------------------------------------------- cases
def _synthetic_cases(args: argparse.Namespace, whole_brain: bool, preview: bool) -> list[dict[str, Any]]:
    specs = [(g, args.volumes) for g in args.grids.split(",") if g.strip()]
    if args.long:
        specs.append((args.long_grid, args.long))
    cases = []
    for g, n in specs:
        shape, mm = parse_grid(g)
        cases.append({
            "name": f"{'x'.join(map(str, shape))} {mm:g}mm" + (f" long" if n == args.long and g == args.long_grid
                                                                  and (g, n) == specs[-1] and args.long else ""),
            "kind": "synthetic", "grid": "x".join(map(str, shape)), "shape": shape, "voxel_mm": mm,
            "format": args.format, "n_volumes": int(n), "tr_s": args.tr_s, "speed": args.speed, "cycle": args.cycle,
            "rois": ROIS, "whole_brain": whole_brain, "preview": preview, "fwhm_mm": args.fwhm_mm,
            "mode": args.mode, "n_chunks": args.n_chunks, "chunk_delay_s": args.chunk_delay_s,
            "warmup": args.warmup, "slice_timing": args.slice_timing, "signals": getattr(args, "signals", ()),
            "echoes": getattr(args, "echoes", 1), "confounds": getattr(args, "confounds", ()),
            "slice_order": None if args.format == "siemens-mosaic" else "ascending",  # NIfTI: no slice times
        })
    return cases


def _real_rois(files: list[Path]) -> dict[str, tuple[float, float, float]]:
    """Two 8 mm ROIs 15 mm left and right of the centre of the series' field of view."""
    from rtnf.scanner.dicom import read_volume

    vol = read_volume(files)
    centre = vol.affine @ np.append((np.array(vol.data.shape) - 1) / 2.0, 1.0)
    c = centre[:3]
    return {"left": tuple(float(x) for x in c + [-15.0, 0, 0]), "right": tuple(float(x) for x in c + [15.0, 0, 0])}


def _real_cases(args: argparse.Namespace, whole_brain: bool, preview: bool) -> tuple[list[dict[str, Any]], list[str]]:
    from scanner_sim.replay import load_source

    data = Path(args.data)
    candidates = [
        ("pyneal siemens mosaic 64x64x18", data / "pyneal-series" / "siemens-prisma-e11-mosaic", None, 4, 0.005),
        ("studyforrest philips slices 80x80x35", data / "studyforrest-localizer" / "dicom", 35, 1, 0.0),
    ]
    cases, notes = [], []
    for name, folder, slices, n_chunks, delay in candidates:
        if not folder.is_dir():
            notes.append(f"{name}: skipped, {folder} not found")
            continue
        src = load_source(folder)
        shape = None
        cases.append({
            "name": name, "kind": "replay", "source": folder, "grid": None, "shape": shape, "voxel_mm": None,
            "format": "dicom", "n_volumes": src.n_volumes, "tr_s": src.tr_s, "speed": args.real_speed,
            "rois": _real_rois(list(src.volumes[0])), "whole_brain": whole_brain, "preview": preview,
            "fwhm_mm": args.fwhm_mm, "mode": args.mode, "n_chunks": n_chunks, "chunk_delay_s": delay,
            "warmup": args.warmup, "slices_per_volume": slices,
            "first_volume_number": 1, "slice_timing": getattr(args, "slice_timing", None),
            "slice_order": None if slices is None else "ascending",  # Philips slices carry no slice times
        })
    return cases, notes


# --------------------------------------------------------------------------- side by side
def side_by_side(args: argparse.Namespace) -> dict[str, Any]:
    """Realignment vs SimpleITK, incremental vs batch GLM, rtnf vs nibabel DICOM reading."""
    from threadpoolctl import threadpool_limits

    from . import glm as glm_bench
    from . import motion as motion_bench
    from . import read as read_bench

    out: dict[str, Any] = {"motion": [], "glm": [], "read": []}
    margs = argparse.Namespace(volumes=20, sitk_volumes=int(args.sitk_volumes), max_trans_mm=1.0, max_rot_deg=1.0,
                               noise_pct=1.0, sigma_vox=1.0, sample_step="auto", threads=1, seed=0)
    try:
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    except ImportError:
        pass
    with threadpool_limits(1):
        for key in motion_bench.GRIDS:
            r = motion_bench._bench_grid(key, margs)
            out["motion"].append({k: r.get(k) for k in ("grid", "median_ms", "trans_med_mm", "sitk_median_ms",
                                                          "sitk_trans_med_mm", "ratio", "sitk")})
        rng = np.random.default_rng(0)
        for shape, mm in (((64, 64, 36), 3.0), ((104, 104, 72), 2.0)):
            r = glm_bench._bench_grid(shape, mm, int(args.glm_volumes), 20, rng)
            batch = r[f"batch_refit_at_{args.glm_volumes}_ms"]
            out["glm"].append({"grid": r["grid"], "voxels": r["voxels"], "incremental_median_ms": r["median_ms"],
                               "batch_refit_at_100_ms": r["batch_refit_at_100_ms"], "batch_refit_at_end_ms": batch,
                               "end_volume": int(args.glm_volumes), "ratio": batch / r["median_ms"],
                               "rel_error_vs_lstsq": r["rel_error_vs_lstsq"]})
    rres = read_bench.run(argparse.Namespace(data=args.data, repeat=20))
    for row in rres.get("rows", []):
        if "median_ms" in row:
            out["read"].append({k: row.get(k) for k in ("format", "method", "median_ms", "vs_nibabel")})
    return out


def _side_text(sbs: dict[str, Any]) -> str:
    lines = ["side by side (one core)", "realignment + two ROIs per volume vs SimpleITK rigid registration (same volumes)"]
    lines.append(table(sbs["motion"], ["grid", "median_ms", "trans_med_mm", "sitk_median_ms", "sitk_trans_med_mm",
                                       "ratio"]))
    lines += ["", "whole-brain (mask) incremental GLM update + t-map vs batch least-squares refit, 20 regressors"]
    lines.append(table(sbs["glm"], ["grid", "voxels", "incremental_median_ms", "batch_refit_at_100_ms",
                                    "batch_refit_at_end_ms", "end_volume", "ratio", "rel_error_vs_lstsq"]))
    if sbs["read"]:
        lines += ["", "DICOM decoding of one volume: rtnf vs nibabel's generic loader (ratio < 1: rtnf faster)"]
        rows = [r for r in sbs["read"] if not r["method"].startswith("pydicom")]
        lines.append(table(rows, ["format", "method", "median_ms", "vs_nibabel"]))
    return "\n".join(lines)


# --------------------------------------------------------------------------- report
def _case_text(r: dict[str, Any]) -> str:
    head = (f"{r['name']}: {r['n_processed']} volumes ({r['n_missing']} missing, {r['n_late']} late, "
            f"{r['n_censored']} censored), {r['format']}, TR {r['tr_s']:g} s x{r['speed']:g} "
            f"(a file every {1000 * r['period_s']:.0f} ms), whole-brain {'on' if r['whole_brain'] else 'off'}, "
            f"preview {'on' if r['preview'] else 'off'}, fwhm {r['fwhm_mm']:g} mm; first {r['warmup']} volumes "
            f"left out (volume 0: {r['first_volume_ms']:.0f} ms)")
    order = [*STAGES, *sorted(s for s in r["stages"] if s not in STAGES)]
    rows = [{"stage": s, **r["stages"][s]} for s in order if s in r["stages"]]
    body = table(rows, ["stage", "median_ms", "p95_ms", "p99_ms", "max_ms", "n"])
    t = r.get("targets", {})
    verdicts = []
    if "median_met" in t:
        verdicts.append(f"median <= {t['median_target_ms']:g} ms: {'met' if t['median_met'] else 'MISSED'}")
        verdicts.append(f"p99 <= {t['p99_target_ms']:g} ms: {'met' if t['p99_met'] else 'MISSED'}")
    if "p99_within_2x_median" in t:
        verdicts.append(f"p99 <= 2x median: {'met' if t['p99_within_2x_median'] else 'MISSED'}")
    if "flat" in t:
        verdicts.append(f"flat: {'met' if t['flat'] else 'MISSED'}")
    if "memory_met" in t:
        verdicts.append(f"peak memory < {t['memory_target_mb']:g} MB: {'met' if t['memory_met'] else 'MISSED'}")
    tail = (f"processing start (first {r['window']}) {r['start_median_ms']:.2f} ms -> end (last {r['window']}) "
            f"{r['end_median_ms']:.2f} ms median; trend {r['slope_ms_per_1000_volumes']:+.2f} ms per 1000 volumes\n"
            f"peak RSS {r['peak_rss_mb']:.0f} MiB (RSS {r['rss_start_mb']:.0f} -> {r['rss_end_mb']:.0f} MiB along the run)"
            + (f"\ntargets: {'; '.join(verdicts)}" if verdicts else ""))
    return "\n".join([head, body, tail])


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run every case (and the side-by-side comparison); returns the figures and a text report."""
    wb = not args.no_whole_brain
    pv = not args.no_preview
    notes: list[str] = []
    cases = _synthetic_cases(args, wb, pv)
    if not args.no_real:
        real, real_notes = _real_cases(args, wb, pv)
        cases += real
        notes += real_notes
    results = []
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="rtnf-bench-pipeline-"))
    try:
        for k, case in enumerate(cases):
            try:
                results.append(run_case(case, base / f"case{k}"))
            except Exception as exc:  # one failing case must not hide the others
                results.append({"name": case["name"], "error": str(exc)})
    finally:
        if not args.keep:
            import shutil

            shutil.rmtree(base, ignore_errors=True)
    sbs = None if args.no_side_by_side else side_by_side(args)
    text = [f"rtnf pipeline bench: export folder -> ZeroMQ publish, {os.cpu_count()} CPUs; times in ms"]
    text += notes
    for r in results:
        text += ["", f"{r['name']}: ERROR {r['error']}" if "error" in r else _case_text(r)]
    summary = [{"case": r["name"], "median_ms": r["stages"]["processing"]["median_ms"],
                "p99_ms": r["stages"]["processing"]["p99_ms"], "start_ms": r["start_median_ms"],
                "end_ms": r["end_median_ms"], "peak_rss_mb": r["peak_rss_mb"]}
               for r in results if "error" not in r and "processing" in r["stages"]]
    if summary:
        text += ["", "processing latency (t_published - t_detected)",
                 table(summary, ["case", "median_ms", "p99_ms", "start_ms", "end_ms", "peak_rss_mb"])]
    if sbs is not None:
        text += ["", _side_text(sbs)]
    return {"stage": NAME, "cpus": os.cpu_count(), "whole_brain": wb, "preview": pv, "notes": notes,
            "runs": results, "side_by_side": sbs, "text": "\n".join(text)}
