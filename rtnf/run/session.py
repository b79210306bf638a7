"""One real-time run: watcher -> ordered processing -> publishing and recording.

The watcher's thread only stamps and queues complete files. Everything else
(processing, the ZeroMQ socket, the recorder, heartbeats) happens in the
thread that calls :func:`run_session`, one volume at a time, in order.
"""

from __future__ import annotations

import gc
import logging
import queue
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from threadpoolctl import threadpool_limits

from rtnf.config import Config, ConfigError
from rtnf.scanner.export import Arrival, ExportReader, Probe
from rtnf.scanner.filenames import FileNames
from rtnf.wire.messages import volume_label
from .operator import OperatorWorker
from .pipeline import VolumeProcessor, VolumeResult
from .publish import Publisher
from .record import RecorderLogHandler, RunRecorder, bids_prefix, format_cell, row_from_messages
from rtnf.analysis.rois import RoiError
from .runlock import run_lock
from rtnf.scanner.sequencer import LatenessJudge, Sequencer
from rtnf.scanner.watcher import VolumeWatcher

log = logging.getLogger(__name__)

RUN_REPEAT_S = 5.0  # late subscribers learn about the run within this time
END_OF_SOURCE = object()  # put by a replay feeder after its last volume
PREVIEW_READY = object()  # put by the operator's worker: a preview is ready to send
RECORDED_MISSING = object()  # a volume a resumed run had recorded as missing
NO_USABLE_VOLUME = "no_usable_volume"  # the log topic's alarm when a run ends without one usable volume


@dataclass
class RunResult:
    """How a run ended."""

    status: str  # "ended" or "aborted"
    run_id: str
    n_processed: int
    n_missing: int
    timeseries: Path
    reason: str | None = None
    n_errors: int = 0  # volumes lost to an exception in processing (counted in n_missing too)

    @property
    def ok(self) -> bool:
        """Whether the run ended with at least one usable volume (exit code 0 of the commands)."""
        return self.status == "ended" and self.n_processed > 0


@dataclass(frozen=True)
class RunParts:
    """What a run is made of, each built by the run from the config.

    The defaults are rtnf's own; ``rtnf bench pipeline`` passes instrumented
    subclasses, a test may pass its own.

    Attributes
    ----------
    processor : callable
        ``processor(cfg)`` -> :class:`~rtnf.run.pipeline.VolumeProcessor`.
    publisher : callable
        ``publisher(address, run_id, curve_keys=...)`` -> :class:`~rtnf.run.publish.Publisher`.
    recorder : callable
        ``recorder(cfg, config_text, protocol, roi_names, run_id, overwrite=..., resume=...)`` ->
        :class:`~rtnf.run.record.RunRecorder`.
    """

    processor: Callable[..., VolumeProcessor] = VolumeProcessor
    publisher: Callable[..., Publisher] = Publisher
    recorder: Callable[..., RunRecorder] = RunRecorder


def make_run_id(cfg: Config) -> str:
    """``<bids prefix>_<UTC time>_<random>``: unique, readable, sortable."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return f"{bids_prefix(cfg)}_{stamp}_{uuid.uuid4().hex[:6]}"


def run_session(
    cfg: Config,
    config_text: str,
    overwrite: bool = False,
    stop: threading.Event | None = None,
    feeder_factory: "Callable[[ExportReader, Callable[[Any], None]], Any] | None" = None,
    resume: bool = False,
    on_volume: "Callable[[dict[str, Any], dict[str, Any]], None] | None" = None,
    parts: RunParts = RunParts(),
) -> RunResult:
    """Run one session until its last volume, or until ``stop`` is set.

    Parameters
    ----------
    cfg : Config
        Validated session config.
    config_text : str
        The config file's text, recorded with the outputs.
    overwrite : bool
        Replace earlier outputs of the same run.
    stop : threading.Event, optional
        Set it (for example from a signal handler) to abort the run cleanly.
    feeder_factory : callable, optional
        ``feeder_factory(export, put)`` returns an object with ``start()`` and
        ``stop()`` that calls ``put((probe, t_detected))`` or ``put(arrival)``
        for each file or volume, then ``put(END_OF_SOURCE)``: a replay
        (:mod:`rtnf.apps.replay`). Its ``pace_s`` attribute, when it has one, is
        the seconds between the volumes it feeds (0: as fast as possible);
        the ``late`` flag is judged against that pace. By default the export
        folder is watched live.
    resume : bool
        Continue a run whose process died: volumes already recorded are
        processed again from the export folder to rebuild the model's state,
        checked against their recorded rows, and neither published nor
        recorded twice.
    on_volume : callable, optional
        Called with the volume and feedback bodies of each volume published
        (progress display).
    parts : RunParts
        The processor, publisher and recorder to build (rtnf's by default).

    Returns
    -------
    RunResult
        A run in which no volume could be used ends with an ERROR on the
        ``log`` topic carrying the alarm ``"no_usable_volume"``, and
        ``RunResult.ok`` false.

    Raises
    ------
    ConfigError
        When the first volume shows the config cannot work for this run (a
        ``motion.reference`` on another grid): the run is aborted and its
        outputs closed before the error is raised, once, never per volume.
    """
    stop = stop or threading.Event()
    names = FileNames(cfg.output.file_names)
    run_id = make_run_id(cfg)
    processor = parts.processor(cfg)
    # The lock, then the address, then the outputs: a second run started by mistake fails on the held
    # lock (naming its holder) or on a taken port before it touches the live run's files.
    lock = run_lock(cfg).acquire()
    publisher = None
    try:
        publisher = parts.publisher(cfg.publish.address, run_id, curve_keys=cfg.publish.curve_keys)
        recorder = parts.recorder(
            cfg, config_text, processor.protocol, processor.roi_names, run_id, overwrite=overwrite, resume=resume
        )
    except BaseException:
        if publisher is not None:
            publisher.close()
        lock.release()
        raise
    handler = RecorderLogHandler(recorder)
    alerts: queue.Queue[logging.LogRecord] = queue.Queue(maxsize=1000)
    forward = _QueueHandler(alerts)
    for h in (handler, forward):
        logging.getLogger("rtnf").addHandler(h)
    try:  # until the run loop exists, a failure here must not leave the outputs locked
        files: queue.Queue[Any] = queue.Queue()
        replay = feeder_factory is not None
        export = ExportReader(cfg.scanner, t_start=time.time(), accept_old=replay or resume, names=names)
        if replay:
            watcher = feeder_factory(export, files.put)
        else:
            watcher = VolumeWatcher(
                cfg.scanner.export_dir,
                export.matches,
                export.check,
                lambda path, t, probe: files.put((probe, t)),
                mode=cfg.scanner.watch,
                poll_interval_s=cfg.scanner.poll_interval_s,
                stale_after_s=cfg.scanner.stale_after_s,
                names=names,
            )
        pace_s = getattr(watcher, "pace_s", None) if replay else None
        operator = OperatorWorker(wake=lambda: files.put(PREVIEW_READY), wait_when_behind=replay)
        loop = _RunLoop(cfg, run_id, processor, publisher, recorder, files, export, stop, alerts, on_volume, pace_s,
                        operator)
    except BaseException:
        for h in (handler, forward):
            logging.getLogger("rtnf").removeHandler(h)
        publisher.close()
        recorder.close("aborted")
        lock.release()
        raise
    loop.screen = _screen_record(cfg, recorder, run_id, resume)
    status, reason = "aborted", "interrupted"
    try:
        if replay:
            log.info("run %s: replay", run_id)
        else:
            log.info("run %s: watching %s (%s)", run_id, cfg.scanner.export_dir, cfg.scanner.watch)
        watcher.start()
        # One BLAS thread: the per-volume products are small, and a second
        # thread's wake-ups cost more than they save and add jitter.
        with threadpool_limits(1):
            status, reason = loop.execute()
    finally:
        # The end of the run writes what it can in order of value, reports each failure (event log,
        # log topic, stderr) and goes on: rows and provenance, then the maps; then tells subscribers.
        reason = _end_run(watcher, loop, processor, publisher, recorder, lock, (handler, forward), status, reason)
    if loop.config_error is not None:
        raise loop.config_error
    return RunResult(status, run_id, loop.n_processed, loop.n_missing, recorder.timeseries_path, reason, loop.n_errors)


def _end_run(watcher, loop, processor, publisher, recorder, lock, handlers, status, reason):
    """Stop the run's parts and write its last outputs; each step runs even when one before it failed."""

    def step(what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - the next output is still worth writing
            log.error("end of run: %s failed (%s); the run's other outputs are still written", what, _one_line(exc))
            return None

    def statmap() -> None:
        wholebrain = processor.wholebrain
        if wholebrain is None:
            return
        if loop.operator.busy:  # still writing the model: reading it now would save a torn t-map
            recorder.log_event("ERROR", "no whole-brain t-map saved: the operator's products did not finish")
            return
        missed = loop.operator.n_dropped + loop.operator.n_failed
        if missed:
            recorder.log_event("WARNING", f"the saved whole-brain t-map misses {missed} volumes (the operator's "
                                          "products fell behind or failed; see the log)")
        if wholebrain.t_map is None:
            recorder.log_event("WARNING", "no whole-brain t-map saved: too few volumes entered the model")
            return
        recorder.save_statmap(wholebrain.t_volume(), processor.grid.affine)

    step("stopping the watcher", watcher.stop)
    step("finishing the operator's products", loop.operator.close)  # the t-map then holds every volume
    step("sending the last previews", loop.send_previews)
    # Volumes that never completed, and the last counts of aggregated warnings, are logged while
    # the handlers still forward to the event log and the wire.
    step("reporting unfinished volumes", loop.export.close)
    step("writing the rows and the provenance", lambda: recorder.finalise(status))
    step("saving the whole-brain t-map", statmap)
    step("closing the confound sources", processor.close)
    if loop.screen is not None:
        step("recording the feedback screen's events", lambda: loop.screen.finish(loop.last_index))
    try:
        reason = loop.finish(status, reason)
    except Exception as exc:  # noqa: BLE001
        log.error("end of run: announcing the end of the run failed (%s)", _one_line(exc))
    step("closing the publisher", publisher.close)
    for h in handlers:
        logging.getLogger("rtnf").removeHandler(h)
    step("closing the event log", lambda: recorder.close(status))
    lock.release()
    return reason


def _screen_record(cfg: Config, recorder: RunRecorder, run_id: str, resume: bool) -> "ScreenRecord | None":
    """Record what the screen acknowledges (displayed, keys) with the run; a failure only warns."""
    from .screen_record import ScreenRecord

    keys = cfg.publish.screen_curve_keys
    try:
        return ScreenRecord(recorder.dir, recorder.prefix, run_id, cfg.publish.screen_address,
                            curve=None if keys is None else (str(keys), "operator"), resume=resume)
    except Exception as exc:  # noqa: BLE001 - the run goes on without the screen's events
        log.warning("the feedback screen's acknowledgements (%s) are not recorded: %s",
                    cfg.publish.screen_address, _one_line(exc))
        return None


class _QueueHandler(logging.Handler):
    """Hands warnings from any thread to the pipeline thread, which publishes them."""

    def __init__(self, target: "queue.Queue[logging.LogRecord]") -> None:
        super().__init__(logging.WARNING)
        self.target = target

    def emit(self, record: logging.LogRecord) -> None:  # noqa: D102
        try:
            self.target.put_nowait(record)
        except queue.Full:  # a flood of warnings must not block any thread
            pass


class _RunLoop:
    """The pipeline thread's loop: order volumes, process, publish, record, beat."""

    def __init__(
        self,
        cfg: Config,
        run_id: str,
        processor: VolumeProcessor,
        publisher: Publisher,
        recorder: RunRecorder,
        files: "queue.Queue[Any]",
        export: ExportReader,
        stop: threading.Event,
        alerts: "queue.Queue[logging.LogRecord] | None" = None,
        on_volume: "Callable[[dict[str, Any], dict[str, Any]], None] | None" = None,
        pace_s: float | None = None,
        operator: OperatorWorker | None = None,
    ) -> None:
        self.cfg = cfg
        self.operator = operator or OperatorWorker(wake=lambda: files.put(PREVIEW_READY))
        self.lateness = LatenessJudge(cfg.scanner.tr_s, pace_s)
        self.run_id = run_id
        self.processor = processor
        self.publisher = publisher
        self.recorder = recorder
        self.files = files
        self.export = export
        self.stop = stop
        self.alerts = alerts
        self.on_volume = on_volume
        self.screen: Any = None  # ScreenRecord: the screen's acknowledgements, written at each beat
        self._source_done = False
        # Rows of a resumed run: these volumes are processed again but not sent or recorded twice.
        self.recorded: dict[int, dict[str, str]] = dict(recorder.recorded)
        self._n_mismatch = 0
        sc = cfg.scanner
        timeout = sc.missing_timeout_s if sc.missing_timeout_s is not None else sc.tr_s
        # Sequencer indices are acquisitions from 0; kept volumes start after the dummies.
        self.sequencer: Sequencer[Arrival] = Sequencer(sc.dummy_volumes, sc.n_volumes, timeout)
        self.state = "waiting"
        self.last_index: int | None = None
        self.n_processed = 0
        self.n_missing = 0
        self.n_errors = 0  # volumes whose processing raised
        self._missing_reasons: Counter[str] = Counter()
        self.config_error: ConfigError | None = None  # found at the first volume; stops the run
        self._heap_frozen = False  # see _freeze_heap
        self._max_seen = -1  # highest acquisition accepted so far, to spot out-of-order arrivals
        self._out_of_order: set[int] = set()
        self._next_beat = 0.0
        self._next_run_repeat = 0.0
        self._run_body = self._make_run_body()
        for index, row in self.recorded.items():
            if row.get("missing") == "1":
                # Recorded as missing before the crash: missing again, as in the uninterrupted run. It waits for
                # its turn without starting the missing timeout (stamped 0.0, its wait had passed it at once, and
                # every earlier volume not yet read again was declared missing): it "arrives" at the largest
                # float, not +inf, so that a finished replay's release at now = +inf still ends (inf - inf is NaN).
                self.sequencer.push(index + sc.dummy_volumes, RECORDED_MISSING, sys.float_info.max)

    def _make_run_body(self) -> dict[str, Any]:
        protocol = self.processor.protocol
        return {
            "event": "start",
            "tr_s": self.cfg.scanner.tr_s,
            "n_volumes": protocol.n_volumes,
            "dummy_volumes": self.cfg.scanner.dummy_volumes,
            "conditions": list(protocol.conditions),
            "baseline": protocol.baseline,
            "blocks": [
                {"condition": s.condition, "start": s.start, "stop": s.stop} for s in protocol.segments()
            ],
            "directions": dict(protocol.directions),
            "rois": self.processor.roi_names,
            "feedback": {
                "roi": self.cfg.feedback.targets,
                "reference_roi": self.cfg.feedback.reference_roi,
                "signal": self.cfg.feedback.signal,
                "kind": self.cfg.feedback.kind,
                "scaling": self.cfg.feedback.scaling,
                "scale_range": list(self.cfg.feedback.scale_range),
                "intermittent_display_s": self.cfg.feedback.intermittent_display_s,
                "enabled": self.cfg.feedback.enabled,
                "hemodynamic_lag_s": self.cfg.feedback.hemodynamic_lag_s,
            },
            "instructions": dict(self.cfg.protocol.instructions),
            # For the console: what it shows while waiting, and its limits from this config.
            "export_dir": str(self.cfg.scanner.export_dir),
            "output_dir": str(self.cfg.output.dir),
            "fd_threshold_mm": self.cfg.quality.fd_threshold_mm,
            "heartbeat_s": self.cfg.publish.heartbeat_s,
            "t": time.time(),
        }

    def execute(self) -> tuple[str, str | None]:
        """Run until the last volume or a stop request; return (status, reason)."""
        try:
            return self._loop()
        finally:
            if self._heap_frozen:
                gc.unfreeze()  # what the run held becomes collectable again (several runs in one process)

    def _freeze_heap(self) -> None:
        """Collect once, then exempt everything alive from the garbage collector's full passes.

        Called once the run is set up and no file waits. Imports and set-up leave
        hundreds of thousands of objects that every full collection walks again: at 104x104x72 those
        pauses held single volumes up to 240 ms (p99 processing 90 ms; 17.5 ms with the collector off).
        New objects are still collected; :meth:`execute` unfreezes at the end of the run.
        """
        gc.collect()
        gc.freeze()
        self._heap_frozen = True

    def _loop(self) -> tuple[str, str | None]:
        self.publisher.send("run", self._run_body)
        while not self.stop.is_set():
            self._beat()
            if self.sequencer.done:
                return "ended", None
            try:
                item = self.files.get(timeout=self._wait_time())
            except queue.Empty:
                pass
            else:
                self._take(item)
            if not self._heap_frozen and self.processor.grid is not None and self.files.empty():
                self._freeze_heap()  # set up, and nothing waiting: the collection delays no volume
            now = time.time()
            if self._source_done and self.files.empty():
                now = float("inf")  # a finished replay: whatever is still pending will not come
            try:
                t_release = time.time()
                for released in self.sequencer.release(now):
                    self._handle(released.index, released.item, t_release if released.held else None)
            except RoiError as exc:
                log.error("%s", exc)
                return "aborted", str(exc)
            except ConfigError as exc:
                return self._config_failed(exc)
            if self._source_done and self.files.empty() and not self.sequencer.pending:
                if not self.sequencer.done:
                    n = self.processor.protocol.n_volumes
                    if self.last_index is None:
                        log.warning("the replayed series ended before volume 1 of %d", n)
                    else:
                        log.warning("the replayed series ended after volume %d of %d", self.last_index + 1, n)
                return "ended", None
        return "aborted", "stopped by the operator"

    def _take(self, item: Any) -> None:
        if item is PREVIEW_READY:
            self.send_previews()
        elif item is END_OF_SOURCE:
            self._source_done = True
        elif isinstance(item, Arrival):
            self._push(item)
        else:
            self._accept(*item)

    def _wait_time(self) -> float:
        now = time.time()
        wait = max(0.0, self._next_beat - now)
        deadline = self.sequencer.time_to_deadline(now)
        return min(wait, deadline) if deadline is not None else wait

    def _forward_alerts(self) -> None:
        """Publish queued warnings on the ``log`` topic (this thread owns the socket)."""
        while self.alerts is not None:
            try:
                record = self.alerts.get_nowait()
            except queue.Empty:
                return
            body = {"level": record.levelname, "message": record.getMessage(), "t": record.created}
            if hasattr(record, "alarm"):
                body.update(alarm=record.alarm, ok=getattr(record, "ok", None))
            self.publisher.send("log", body)

    def send_previews(self) -> None:
        """Publish the previews the operator's worker has made (this thread owns the socket)."""
        for body in self.operator.take_previews():
            self.publisher.send("preview", body)

    def _beat(self) -> None:
        self._forward_alerts()
        self.send_previews()
        if self.screen is not None:
            try:
                self.screen.drain()
            except Exception as exc:  # noqa: BLE001 - the screen's events never stop the run
                log.error("cannot write the feedback screen's events (%s); no longer recording them", _one_line(exc))
                screen, self.screen = self.screen, None
                try:
                    screen.finish(None, grace_s=0.0)  # stops the listener thread and closes the file
                except Exception:  # noqa: BLE001 - already reported
                    pass
        now = time.time()
        if now >= self._next_beat:
            self.publisher.heartbeat(self.state, self.last_index, self.processor.protocol.n_volumes)
            self._next_beat = now + self.cfg.publish.heartbeat_s
        if now >= self._next_run_repeat:
            if self._next_run_repeat:  # the first start message was sent by execute()
                self.publisher.send("run", {**self._run_body, "repeat": True})
            self._next_run_repeat = now + RUN_REPEAT_S

    def _accept(self, probe: Probe, t_detected: float) -> None:
        try:
            arrivals = self.export.accept(probe, t_detected)
        except Exception:  # a foreign file must cost itself, never the run
            log.exception("%s could not be sorted into the run; skipped", self.export.names.label(probe.path.name))
            return
        for arrival in arrivals:
            self._push(arrival)

    def _push(self, arrival: Arrival) -> None:
        acquisition = arrival.number - self.cfg.scanner.first_volume_number
        if acquisition < self.cfg.scanner.dummy_volumes:
            log.info("dummy volume %s discarded", arrival.name)
            return
        refused = self.sequencer.push(acquisition, arrival, arrival.t_detected)
        if refused:
            if self.recorded.get(acquisition - self.cfg.scanner.dummy_volumes, {}).get("missing") == "1":
                return  # a resumed run: recorded as missing before the crash, stays missing
            log.warning("%s skipped: %s", arrival.name, refused)
            return
        if acquisition < self._max_seen:
            self._out_of_order.add(acquisition)
        self._max_seen = max(self._max_seen, acquisition)

    def _label(self, index: int) -> str:
        """The volume as people count it (:func:`rtnf.wire.messages.volume_label`)."""
        return volume_label(index, self.processor.protocol.n_volumes)

    def _handle(self, acquisition: int, arrival: Arrival | None, t_released: float | None = None) -> None:
        index = acquisition - self.cfg.scanner.dummy_volumes
        number = acquisition + self.cfg.scanner.first_volume_number
        if self.state == "waiting":
            self.state = "running"
        if arrival is RECORDED_MISSING:
            result = self.processor.missing(index, number, None, None)
        elif arrival is None:
            log.warning("%s (acq %d) missing: a later volume arrived and it did not", self._label(index), number)
            result = self.processor.missing(index, number, None, None)
        else:
            try:
                result = self.processor.process(index, number, arrival)
            except RoiError:
                raise  # the same for every volume: the run stops (see execute)
            except ConfigError as exc:
                if self.processor.grid is None:
                    raise  # found on the first volume, it is the same for every volume: the run stops (see execute)
                # Found later (a file unlike those before: an extra echo, other echo times): it costs this volume,
                # never the rows and feedback of the run so far.
                result = self._failed(index, number, arrival, exc)
            except Exception as exc:  # a bug or a foreign file must cost one volume, never the run
                result = self._failed(index, number, arrival, exc)
        self._publish_and_record(result, t_released)

    def _failed(self, index: int, number: int, arrival: Arrival, exc: Exception) -> VolumeResult:
        """The result of a volume whose processing raised: missing, with a one-line reason.

        One warning line per volume and no traceback: a failure that repeats
        for every volume must not bury the operator's terminal and console.
        The first traceback goes to the debug log, for whoever fixes the cause.
        """
        self.n_errors += 1
        reason = f"processing error: {_one_line(exc)}"
        log.warning("%s (%s) could not be processed, treated as missing: %s", self._label(index), arrival.name,
                    self.export.names.redact(str(reason), *arrival.paths))
        if self.n_errors == 1:
            log.debug("traceback of the first processing error (%s)", self._label(index), exc_info=exc)
        return self.processor.missing(index, number, arrival.name, arrival.t_detected, reason=reason)

    def _config_failed(self, exc: ConfigError) -> tuple[str, str]:
        """Stop the run on a config error found at the first volume; return (status, reason).

        Written to the event log and published on the ``log`` topic, but not
        logged: the command prints it once, as it prints a config error found
        at load, and a log line would print it a second time.
        """
        self.config_error = exc
        message = str(exc)
        self.recorder.log_event("ERROR", message)
        self.publisher.send("log", {"level": "ERROR", "message": message, "t": time.time()})
        return "aborted", message

    def _publish_and_record(self, result: VolumeResult, t_released: float | None = None) -> None:
        """Stamp, send, record and count one volume.

        ``t_released``: when the sequencer released a volume it had held back
        while an earlier one was awaited (None otherwise); that wait does not
        make it late.
        """
        volume, feedback = result.volume, result.feedback
        t_published = time.time()
        late = out_of_order = False
        t_detected = volume.timing["t_detected"]
        if t_detected is not None and not result.missing:
            acquisition = result.index + self.cfg.scanner.dummy_volumes
            out_of_order = acquisition in self._out_of_order
            late = out_of_order or self.lateness.is_late(
                acquisition, t_detected, t_published, t_released, volume.timing.get("t_acquired")
            )
            if late:
                log.warning("%s (acq %s) arrived late%s", self._label(result.index), volume.acquisition,
                            " (out of order)" if out_of_order else "")
        result.stamp(t_published, late, out_of_order)
        feedback_body = feedback.to_body()
        resumed = result.index in self.recorded  # processed again after a crash: neither sent nor recorded twice
        if not resumed:
            self.publisher.send("feedback", feedback_body)  # the participant's value first: what the run is for
        volume_body = volume.to_body()
        row = row_from_messages(volume_body, feedback_body, self.processor.roi_names)
        if resumed:
            self._check_recorded(row)
        else:
            self.publisher.send("volume", volume_body)
            self.recorder.write_row(row)
            if self.on_volume is not None:
                self.on_volume(volume_body, feedback_body)
        if result.operator is not None:  # after the feedback has left: the operator's products
            self.operator.submit(result.operator)
        if self.cfg.output.save_volumes and result.received is not None:
            received = result.received
            self.recorder.save_volume(result.index, received.data, received.affine, self.processor.protocol.n_volumes)
        self.last_index = result.index
        if result.missing:
            self.n_missing += 1
            self._missing_reasons[feedback.reason or "missing volume"] += 1
        else:
            self.n_processed += 1

    def _check_recorded(self, row: dict[str, Any]) -> None:
        """A volume processed again on resume must give the value recorded before the crash."""
        recorded = self.recorded[row["index"]]
        for column in ("feedback_value", *[f"{n}_raw" for n in self.processor.roi_names]):
            if recorded.get(column) != format_cell(row.get(column)):
                self._n_mismatch += 1
                log.warning(
                    "resume: %s: %s is %s now but was recorded as %s",
                    self._label(row["index"]), column, format_cell(row.get(column)), recorded.get(column),
                )
                return

    def finish(self, status: str, reason: str | None) -> str | None:
        """Tell subscribers how the run ended; return the reason (set when no volume was usable)."""
        self.recorder.retry()  # rows kept through an output failure: one more try, reported on the wire
        if self.n_processed == 0 and self.config_error is None and (status == "ended" or self.n_missing):
            reason = self._no_usable_volume()
        self._forward_alerts()
        self.state = "ended"
        body = {**self._run_body, "event": "end" if status == "ended" else "abort", "reason": reason, "t": time.time()}
        self.publisher.send("run", body)
        self.publisher.heartbeat("ended", self.last_index, self.processor.protocol.n_volumes)
        log.info("run %s %s: %d volumes processed, %d missing", self.run_id, status, self.n_processed, self.n_missing)
        return reason

    def _no_usable_volume(self) -> str:
        """Raise the alarm of a run without one usable volume; return its reason."""
        if self._missing_reasons:
            top, count = self._missing_reasons.most_common(1)[0]
            why = f"{self.n_missing} volumes missing, {count} of them with the reason: {top}"
        elif unfinished := self.export.unfinished():
            more = f", and {len(unfinished) - 1} more" if len(unfinished) > 1 else ""
            why = f"no volume of the run completed ({unfinished[0]}{more})"
        else:
            why = "no volume of the run arrived"
        reason = f"no usable volume: {why}"
        log.error("NO USABLE VOLUME: the run produced no usable volume (%s)", why,
                  extra={"alarm": NO_USABLE_VOLUME, "ok": False})
        return reason


def _one_line(exc: BaseException, max_chars: int = 200) -> str:
    """``Type: message`` on one line, at most ``max_chars`` characters (a table cell, a log line)."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= max_chars else text[: max_chars - 3] + "..."


def progress_line(volume: dict[str, Any], feedback: dict[str, Any]) -> str:
    """One line about a published volume, for the operator's terminal.

    "volume N of M (acq K)", the condition, the feedback value or the reason
    it is null, framewise displacement, processing latency (file complete ->
    published) and the volume's flags. N counts kept volumes from 1 (the
    project's numbering for people); K is the scanner's file number.
    """
    n = volume.get("n_volumes")
    # The numbering of rtnf.wire.messages.volume_label, its number right-aligned so the columns line up.
    label = f"volume {volume['index'] + 1:>{len(str(n)) if n else 1}}" + (f" of {n}" if n else "")
    if volume.get("acquisition") is not None:
        label += f" (acq {volume['acquisition']})"
    value = feedback.get("value")
    shown = f"{value:.2f}" if value is not None else f"— ({feedback.get('reason') or 'no value'})"
    fd = volume.get("framewise_displacement")
    timing = volume.get("timing") or {}
    t_detected, t_published = timing.get("t_detected"), timing.get("t_published")
    latency = "—" if t_detected is None or t_published is None else f"{(t_published - t_detected) * 1e3:.1f} ms"
    flags = [name.replace("_", " ") for name, on in (volume.get("flags") or {}).items() if on and name != "missing"]
    if n:  # columns stay aligned while the file number grows a digit
        label = f"{label:<{len(f'volume {n} of {n} (acq {n})') + 1}}"
    line = (f"{label}  {volume.get('condition', ''):<10} feedback {shown:<6}  "
            f"FD {'—' if fd is None else f'{fd:.2f} mm'}  latency {latency}")
    return line + (f"  [{', '.join(flags)}]" if flags else "")
