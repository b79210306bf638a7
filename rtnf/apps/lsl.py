"""Lab Streaming Layer outlet: rtnf's feedback and volume markers for XDF recordings.

In simultaneous EEG-fMRI the EEG is usually recorded with LabRecorder into an
XDF file. :class:`LslBridge` is a client of rtnf's ZeroMQ stream (like the
operator console and the feedback screen: rtnf's pipeline never imports
pylsl) that republishes it as two LSL streams, so that the feedback the
participant saw and the volume markers land in the same XDF file as the EEG,
on the same clock:

``rtnf-feedback`` (type ``Feedback``)
    One ``double`` channel, irregular rate: the feedback value of every
    volume (in [0, 1]; NaN when rtnf published ``null``, for example for a
    missing or censored volume).
``rtnf-markers`` (type ``Markers``)
    One string channel, irregular rate: one JSON object per volume
    (``{"event": "volume", "run_id", "index", "condition", "block",
    "flags"}``) and one per run start and end (``"event"``: ``"run_start"``,
    ``"run_end"`` or ``"run_abort"``, with ``run_id``, ``tr_s``,
    ``n_volumes``, ``dummy_volumes``, ``conditions``; ``reason`` on end).

Messages are checked with the typed messages of :mod:`rtnf.wire.topics`, as
the screen and the console check them: a feedback or volume message without a
valid ``index`` (or a run message without a valid ``event``) is skipped with a
warning; an invalid optional value is forwarded as null.

Timestamps
----------
A sample's LSL timestamp is the moment rtnf *published* the value
(``t_published`` of the feedback and volume messages, ``t`` of run
messages), not the moment the bridge received it: the ZeroMQ hop and the
bridge's own scheduling add a small, variable delay that says nothing about
the participant. rtnf stamps with the wall clock (``time.time()``), LSL with
its monotonic ``local_clock()``; the bridge converts with the offset between
the two clocks measured when the message arrives (two ``local_clock()``
readings bracketing one ``time.time()``, so the offset is good to a few
microseconds). Measuring at every message, rather than once at start-up,
follows NTP adjustments and steps of the wall clock over a long session.
This needs rtnf and the bridge to share a wall clock, which is the case when
they run on the same machine (the default loopback address); LSL itself then
maps the bridge's clock to the EEG recorder's. If ``t_published`` is missing,
lies in the future, or is implausibly old (clocks of two machines that do not
agree), the receipt time is used instead and a warning is logged once.

Discovery
---------
LSL outlets are announced on the local network by liblsl (multicast and
broadcast, "site" scope by default), which is what lets a LabRecorder on the
EEG computer find them. Restrict or tune this with an ``lsl_api.cfg``
(``--lsl-config`` or the ``LSLAPICFG`` environment variable).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
from typing import Any, Callable

import zmq

from rtnf import __version__
from rtnf.scanner.lsl import LslUnavailableError, load_pylsl
from rtnf.wire.messages import DEFAULT_ADDRESS
from rtnf.wire.subscription import Received, Subscription
from rtnf.wire.topics import FeedbackMessage, RunMessage, VolumeMessage, WireMessage, parse_body

log = logging.getLogger(__name__)

EXIT_USAGE = 2
TOPICS: tuple[str, ...] = ("run", "feedback", "volume")
FEEDBACK_SUFFIX = "feedback"
MARKERS_SUFFIX = "markers"
DEFAULT_PREFIX = "rtnf"
MAX_SKEW_S = 0.1  # t_published this far after receipt is tolerated (clock jitter), not more
MAX_AGE_S = 30.0  # a message older than this on arrival means the clocks do not agree


def clock_offset(local_clock: Callable[[], float], wall_clock: Callable[[], float] = time.time) -> float:
    """``local_clock() - wall_clock()`` now, in seconds.

    The best of three readings of the wall clock bracketed by two readings of
    the LSL clock (the narrowest bracket), so a preemption between the calls
    does not bias the offset.
    """
    best_width, best = math.inf, 0.0
    for _ in range(3):
        before = local_clock()
        wall = wall_clock()
        after = local_clock()
        if after - before < best_width:
            best_width, best = after - before, (before + after) / 2 - wall
    return best


def lsl_timestamp(t_wall: Any, t_received: float, offset: float) -> tuple[float, bool]:
    """Map a wall-clock stamp of rtnf to the LSL clock.

    Parameters
    ----------
    t_wall : float or None
        The message's stamp (UNIX seconds, ``time.time()`` of the publisher).
    t_received : float
        Wall-clock time the message arrived, in seconds.
    offset : float
        ``local_clock() - time.time()`` measured at receipt, in seconds.

    Returns
    -------
    timestamp : float
        In LSL seconds (``pylsl.local_clock()``).
    fallback : bool
        True when ``t_wall`` was unusable (missing, not finite, more than
        :data:`MAX_SKEW_S` in the future or more than :data:`MAX_AGE_S` old)
        and the receipt time was used instead.
    """
    if isinstance(t_wall, (int, float)) and not isinstance(t_wall, bool) and math.isfinite(t_wall):
        age = t_received - float(t_wall)
        if -MAX_SKEW_S <= age <= MAX_AGE_S:
            return float(t_wall) + offset, False
    return t_received + offset, True


def feedback_sample(value: Any) -> float:
    """The feedback stream's value: the number, or NaN for null (or anything that is not a number)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


def volume_marker(msg: "VolumeMessage | dict[str, Any]") -> dict[str, Any]:
    """The marker of one ``volume`` message (:class:`rtnf.wire.topics.VolumeMessage` or its decoded body)."""
    msg = _typed(VolumeMessage, msg)
    return {
        "event": "volume",
        "run_id": msg.run_id,
        "index": msg.index,
        "condition": msg.condition,
        "block": msg.block,
        "flags": None if msg.flags is None else msg.flags.to_body(),
    }


def run_marker(msg: "RunMessage | dict[str, Any]") -> dict[str, Any]:
    """The marker of a ``run`` message (start, end or abort; :class:`rtnf.wire.topics.RunMessage` or its body)."""
    msg = _typed(RunMessage, msg)
    marker = {
        "event": f"run_{msg.event}",
        "run_id": msg.run_id,
        "tr_s": msg.tr_s,
        "n_volumes": msg.n_volumes,
        "dummy_volumes": msg.dummy_volumes,
        "conditions": msg.conditions,
    }
    if msg.event != "start":
        marker["reason"] = msg.reason
    if msg.repeat:
        marker["late"] = True  # the bridge joined after the run started: learned from a repeated start
    return marker


def _typed(cls: type[WireMessage], body: "WireMessage | dict[str, Any]") -> Any:
    """The typed message of a decoded body (rtnf.wire.topics); MessageError (a ValueError) when unusable."""
    return body if isinstance(body, cls) else cls.from_body(body)


class LslBridge(threading.Thread):
    """Background thread republishing rtnf's feedback and volume markers as LSL streams.

    Parameters
    ----------
    address : str
        rtnf's PUB address (``publish.address``), for example
        ``tcp://127.0.0.1:5555``.
    prefix : str
        Stream names are ``<prefix>-feedback`` and ``<prefix>-markers``.
    source_id : str or None
        Base of the streams' LSL source ids (``<source_id>-feedback``...).
        Recorders use it to reconnect to a restarted bridge; the default,
        built from the host name and ``address``, is stable across restarts.
    poll_ms : int
        How often the thread checks its stop flag, in milliseconds.

    Notes
    -----
    The outlets are created when the thread starts (``ready`` is set then),
    before any run, so a recorder can pick them up before the scan; they
    live as long as the bridge, across runs. The ZeroMQ socket is created,
    used and closed by this thread only. The SUB socket connects and keeps
    retrying, so the bridge may start before or after rtnf. Counters:
    ``n_feedback``, ``n_markers``, ``n_malformed``, ``n_fallback_timestamps``.
    """

    def __init__(self, address: str = DEFAULT_ADDRESS, prefix: str = DEFAULT_PREFIX,
                 source_id: str | None = None, poll_ms: int = 100) -> None:
        super().__init__(name="rtnf-lsl", daemon=True)
        if not prefix:
            raise ValueError("Invalid value for the 'prefix' parameter: it must be a non-empty string.")
        self.address = address
        self.prefix = prefix
        self.source_id = source_id or f"{prefix}@{socket.gethostname()}|{address}"
        self.poll_ms = int(poll_ms)
        self.pylsl = load_pylsl()  # fails here, in the caller's thread, with a clear message
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.n_feedback = 0
        self.n_markers = 0
        self.n_malformed = 0
        self.n_fallback_timestamps = 0
        self._n_unforwardable = 0
        self._started_runs: set[str] = set()
        self._stop_requested = threading.Event()
        self._outlets: dict[str, Any] = {}

    @property
    def feedback_name(self) -> str:
        return f"{self.prefix}-{FEEDBACK_SUFFIX}"

    @property
    def markers_name(self) -> str:
        return f"{self.prefix}-{MARKERS_SUFFIX}"

    def stop(self, timeout_s: float = 5.0) -> None:
        """Ask the thread to close its socket and outlets and end; wait for it."""
        self._stop_requested.set()
        if self.is_alive():
            self.join(timeout_s)

    # -- LSL side -----------------------------------------------------------------------------
    def _make_outlets(self) -> None:
        lsl = self.pylsl
        fb = lsl.StreamInfo(self.feedback_name, "Feedback", 1, lsl.IRREGULAR_RATE, lsl.cf_double64,
                            f"{self.source_id}-{FEEDBACK_SUFFIX}")
        desc = fb.desc()
        channel = desc.append_child("channels").append_child("channel")
        channel.append_child_value("label", "feedback")
        channel.append_child_value("unit", "normalized")
        channel.append_child_value("type", "Feedback")
        self._describe(desc, "feedback value shown to the participant, in [0, 1]; NaN when rtnf published null")
        mk = lsl.StreamInfo(self.markers_name, "Markers", 1, lsl.IRREGULAR_RATE, lsl.cf_string,
                            f"{self.source_id}-{MARKERS_SUFFIX}")
        desc = mk.desc()
        channel = desc.append_child("channels").append_child("channel")
        channel.append_child_value("label", "marker")
        channel.append_child_value("type", "Markers")
        channel.append_child_value("format", "json")
        self._describe(desc, "JSON per volume (event=volume: run_id, index, condition, block, flags) "
                             "and per run (event=run_start, run_end, run_abort)")
        self._outlets = {"feedback": lsl.StreamOutlet(fb), "markers": lsl.StreamOutlet(mk)}

    def _describe(self, desc: Any, content: str) -> None:
        desc.append_child_value("manufacturer", "rtnf")
        rtnf = desc.append_child("rtnf")
        rtnf.append_child_value("version", __version__)
        rtnf.append_child_value("address", self.address)
        rtnf.append_child_value("content", content)
        rtnf.append_child_value("timestamps", "rtnf's t_published (wall clock) mapped to local_clock at receipt")

    def _timestamp(self, t_wall: Any, t_received: float, offset: float) -> float:
        ts, fallback = lsl_timestamp(t_wall, t_received, offset)
        if fallback:
            if self.n_fallback_timestamps == 0:
                log.warning(
                    "a message's publication time %r is unusable (received at %.3f): rtnf on another machine "
                    "with a clock that does not agree? Using receipt times for such messages.", t_wall, t_received)
            self.n_fallback_timestamps += 1
        return ts

    def _push_marker(self, marker: dict[str, Any], timestamp: float) -> None:
        text = json.dumps(marker, separators=(",", ":"), allow_nan=False, default=str)
        self._outlets["markers"].push_sample([text], timestamp)
        self.n_markers += 1

    def handle(self, topic: str, body: "dict[str, Any] | WireMessage", t_received: float, offset: float) -> None:
        """Push what one decoded message carries (called by the thread; public for tests).

        ``body`` is checked with its typed message of :mod:`rtnf.wire.topics`
        (a :class:`~rtnf.wire.messages.MessageError`, a ValueError, when it
        cannot be used, for example a feedback or volume without a valid
        ``index`` or a run message without a valid ``event``); an invalid
        optional value is forwarded as null (NaN for the feedback value).
        """
        if topic not in TOPICS:
            return
        msg = body if isinstance(body, WireMessage) else parse_body(topic, body)
        if isinstance(msg, FeedbackMessage):
            ts = self._timestamp(msg.t_published, t_received, offset)
            self._outlets["feedback"].push_sample([feedback_sample(msg.value)], ts)
            self.n_feedback += 1
        elif isinstance(msg, VolumeMessage):
            ts = self._timestamp(msg.timing.t_published if msg.timing is not None else None, t_received, offset)
            run_id = str(msg.run_id)
            if run_id not in self._started_runs:
                # The run's start message went by before this bridge was connected (ZeroMQ
                # drops what a subscriber is not yet there for): mark the start now, as late.
                self._started_runs.add(run_id)
                self._push_marker({"event": "run_start", "run_id": run_id, "late": True}, ts)
            self._push_marker(volume_marker(msg), ts)
        elif isinstance(msg, RunMessage):
            run_id = str(msg.run_id)
            if msg.event == "start":
                if run_id in self._started_runs:
                    return  # a repeat of a start already marked
                self._started_runs.add(run_id)
            self._push_marker(run_marker(msg), self._timestamp(msg.t, t_received, offset))

    # -- ZeroMQ side (the thread) ---------------------------------------------------------------
    def run(self) -> None:
        ctx = zmq.Context()
        sub = None
        try:
            self._make_outlets()
            sub = Subscription(ctx, self.address, TOPICS, name="rtnf")
            poller = zmq.Poller()
            for sock in sub.sockets:
                poller.register(sock, zmq.POLLIN)
            self.ready.set()
            while not self._stop_requested.is_set():
                ready = dict(poller.poll(self.poll_ms))
                for message in sub.receive(ready):
                    self._forward(message)
                self.n_malformed = sub.n_malformed + self._n_unforwardable
        except BaseException as exc:  # reported to the caller through self.error
            self.error = exc
            log.exception("LSL bridge failed")
            self.ready.set()
        finally:
            if sub is not None:
                sub.close()
            ctx.term()
            self._outlets.clear()  # destroys the outlets: recorders see the streams go

    def _forward(self, message: Received) -> None:
        offset = clock_offset(self.pylsl.local_clock)
        try:
            self.handle(message.topic, message.body, message.t_received, offset)
        except (TypeError, ValueError, AttributeError) as exc:  # odd field types: cost one message only
            self._n_unforwardable += 1
            log.warning("skipped a %s message that could not be forwarded: %s", message.topic, exc)

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``rtnf lsl`` to ``parser``."""
    parser.add_argument("--address", default=DEFAULT_ADDRESS,
                        help=f"rtnf's publish address (default {DEFAULT_ADDRESS})")
    parser.add_argument("--prefix", default=DEFAULT_PREFIX,
                        help=f"stream names are PREFIX-feedback and PREFIX-markers (default {DEFAULT_PREFIX!r})")
    parser.add_argument("--source-id", default=None,
                        help="base of the LSL source ids (default: from the host name and --address)")
    parser.add_argument("--lsl-config", default=None, metavar="PATH",
                        help="an lsl_api.cfg for liblsl (discovery scope, known peers...); default: LSLAPICFG "
                             "or liblsl's usual locations")


def run(args: argparse.Namespace) -> int:
    """Republish rtnf's stream on LSL until SIGINT or SIGTERM; return the exit code."""
    if args.lsl_config:
        if not os.path.isfile(args.lsl_config):
            print(f"rtnf lsl: --lsl-config {args.lsl_config} is not a readable file", file=sys.stderr)
            return EXIT_USAGE
        os.environ["LSLAPICFG"] = os.path.abspath(args.lsl_config)  # read by liblsl at its first use, below
    try:
        bridge = LslBridge(args.address, prefix=args.prefix, source_id=args.source_id)
    except (LslUnavailableError, ValueError) as exc:
        print(f"rtnf lsl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    bridge.start()
    bridge.ready.wait()
    if bridge.error is None:
        print(f"rtnf lsl: streams {bridge.feedback_name!r} and {bridge.markers_name!r} "
              f"(source id {bridge.source_id!r}) from {args.address}", flush=True)
    while bridge.error is None and bridge.is_alive() and not stop.wait(0.2):
        pass
    bridge.stop()
    print(f"rtnf lsl: {bridge.n_feedback} feedback values and {bridge.n_markers} markers sent, "
          f"{bridge.n_malformed} malformed messages skipped", flush=True)
    if bridge.error is not None:
        print(f"rtnf lsl: {bridge.error}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m rtnf.apps.lsl``."""
    parser = argparse.ArgumentParser(prog="rtnf lsl",
                                     description="Republish rtnf's feedback and volume markers on Lab Streaming Layer.")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
