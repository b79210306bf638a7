"""``rtnf-screen``: the participant's feedback screen.

Reads the ``[display]`` table of ``--config`` (options override it), then
runs the frame loop (:class:`Loop`), capped at ``max_fps`` by the clock
(never by counting frames: Xvfb has no vsync): take the messages that arrive
until the next frame is due, draw, flip, stamp ``t_flip``, log the flip,
acknowledge each feedback index the first time it is on screen, log and
publish key presses. At exit, the receive-to-flip latency summary is logged
and written beside the flip log.
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import IO, Any

from rtnf.wire.display import DisplayConfig, DisplayConfigError, load_display, parse_display
from rtnf.wire.messages import DEFAULT_ADDRESS, DEFAULT_SCREEN_ADDRESS
from stimulus.link import FeedbackLink, ScreenState
from stimulus.rating import RatingController
from stimulus.scene import Scene, SceneMaker
from stimulus.displays.picture import resolve_picture
from stimulus.displays.tone import Tones, ToneUnavailable
from stimulus.timing import latency_summary, write_summary
from stimulus.trigger import Triggers

logger = logging.getLogger("stimulus")

HEARTBEAT_PERIOD_S = 1.0
FLIP_LOG_FLUSH_S = 1.0
FLIP_LOG_COLUMNS = (
    "t_flip", "phase", "view", "index", "value", "bar_shown", "t_received",
    "connection_lost", "has_value", "run_id",
)
"""Columns of the flip log. ``value`` is the level the bar heads to (the
latest value, held through null volumes), ``bar_shown`` the level drawn on
that frame (gliding), ``t_received`` the receive time of the feedback message
``index`` (for the receive-to-flip latency, see :mod:`stimulus.timing`)."""
KEY_LOG_COLUMNS = ("t_key", "key", "role", "phase", "index", "run_id", "device", "pulse", "trigger_check")
"""Columns of the key log; ``device`` ("keyboard" or "serial"), ``pulse`` and ``trigger_check`` (see
:mod:`stimulus.trigger`) describe the scanner's triggers."""


def _size(text: str) -> list[int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 1024x768, got {text!r}")
    if w < 64 or h < 64:
        raise argparse.ArgumentTypeError(f"window size must be at least 64x64, got {text!r}")
    return [w, h]


def _unit_interval(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of ``rtnf-screen``.

    Display options default to None ("not given"): they override the
    ``[display]`` table of ``--config``, whose own defaults apply otherwise.
    """
    p = argparse.ArgumentParser(
        prog="rtnf-screen",
        description="Show rtnf's feedback to the participant (PsychoPy window): instructions, the bar or "
                    "intermittent scores, 'Run finished' and a 'connection lost' notice when rtnf falls silent. "
                    "It subscribes to rtnf's publish address (--address) and binds --ack-address for its "
                    "acknowledgements ('displayed', heartbeats, keys); it may start before or after rtnf. "
                    "The quit key (Esc by default) quits.",
        epilog="example: rtnf-screen --config my_run.toml --fullscreen --screen 1",
    )
    p.add_argument("--config", type=Path, metavar="SESSION.toml",
                   help="session config; only its [display] table is read (options below "
                        "override it)")
    p.add_argument("--address", default=DEFAULT_ADDRESS,
                   help="rtnf's PUB address to subscribe to (default: %(default)s)")
    p.add_argument("--curve-keys", default=None, metavar="FOLDER",
                   help="rtnf on another machine: CURVE keys made by `rtnf keys` (this client's secret key "
                        "and rtnf's public key)")
    p.add_argument("--curve-client", default="screen", metavar="NAME",
                   help="this client's name in the keys folder (default: screen)")
    p.add_argument("--ack-address", default=DEFAULT_SCREEN_ADDRESS,
                   help="address to bind for 'displayed' and heartbeat messages "
                        "(default: %(default)s)")
    p.add_argument("--ack-curve-keys", default=None, metavar="FOLDER",
                   help="acknowledgements crossing a network: CURVE keys made on this machine by "
                        "`rtnf keys FOLDER --client operator --client console`; only the authorized clients "
                        "(rtnf run with publish.screen_curve_keys, the console) receive them")
    d = p.add_argument_group("display (override [display] of --config)")
    d.add_argument("--size", type=_size, metavar="WxH", help="window size in pixels (1024x768)")
    d.add_argument("--fullscreen", action="store_true", default=None, help="full-screen window")
    d.add_argument("--screen", type=int, metavar="N", help="monitor index (0)")
    d.add_argument("--mirror", action="store_true", default=None,
                   help="mirror the image left-right")
    d.add_argument("--target", type=_unit_interval,
                   help="target level in [0, 1] marked beside the bar (0.75)")
    d.add_argument("--glide", type=_non_negative, metavar="SECONDS",
                   help="time for the bar to move to a new value (0.3; 0 jumps)")
    d.add_argument("--trigger-key", metavar="KEY", help="the scanner trigger's key ('5')")
    d.add_argument("--trigger-port", metavar="PORT",
                   help="serial port of a trigger box sending the scanner's pulse as a byte "
                        "(display.trigger.port, e.g. /dev/ttyUSB0; off by default)")
    d.add_argument("--heartbeat-timeout", type=_positive, metavar="SECONDS",
                   help="show 'connection lost' after this long without a message "
                        "while a run is going on (3; never after the run ended)")
    d.add_argument("--max-fps", type=_positive, help="frame-rate cap (60)")
    p.add_argument("--flip-log", type=Path, metavar="PATH",
                   help="CSV with one row per flip: " + ", ".join(FLIP_LOG_COLUMNS) + "; the "
                        "receive-to-flip latency summary is written beside it "
                        "(PATH with suffix .latency.json) at exit")
    p.add_argument("--key-log", type=Path, metavar="PATH",
                   help="CSV with one row per trigger or response key: "
                        + ", ".join(KEY_LOG_COLUMNS))
    p.add_argument("--screenshot", type=Path, metavar="PATH",
                   help="save the last frame drawn before exit as PNG (after the bar's glide)")
    p.add_argument("--exit-after-end", type=_non_negative, metavar="SECONDS",
                   help="quit this long after the run ended (default: stay until the quit key)")
    p.add_argument("--log-level", default="INFO",
                   choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return p


def display_config(args: argparse.Namespace) -> DisplayConfig:
    """The ``[display]`` settings: ``--config``'s table with the command-line options on top.

    Raises
    ------
    DisplayConfigError
        When the file or an override is invalid.
    """
    cfg = load_display(args.config) if args.config is not None else DisplayConfig()
    raw = cfg.model_dump()
    for key, value in (("size", args.size), ("fullscreen", args.fullscreen),
                       ("screen", args.screen), ("mirror", args.mirror),
                       ("heartbeat_timeout_s", args.heartbeat_timeout),
                       ("max_fps", args.max_fps)):
        if value is not None:
            raw[key] = value
    if args.target is not None:
        raw["bar"]["target"] = args.target
    if args.glide is not None:
        raw["bar"]["glide_s"] = args.glide
    if args.trigger_key is not None:
        raw["keys"]["trigger"] = args.trigger_key
    if getattr(args, "trigger_port", None) is not None:
        raw["trigger"]["port"] = args.trigger_port
    cfg = parse_display(_lists(raw), "command line")
    # display.picture.file: relative to the session TOML's folder, and readable (checked now, not mid-run).
    return resolve_picture(cfg, args.config, str(args.config or "command line"))


def _lists(value: Any) -> Any:
    """model_dump gives tuples for colours; the file form is lists."""
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_lists(v) for v in value]
    return value


class FlipLog:
    """CSV of every flip, flushed at least once a second and on close."""

    def __init__(self, path: Path | None) -> None:
        self._file: IO[str] | None = None
        self._t_flushed = time.monotonic()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("w", newline="", encoding="utf-8")
            self._writer = csv.writer(self._file)
            self._writer.writerow(FLIP_LOG_COLUMNS)

    def write(self, t_flip: float, state: ScreenState, scene: Scene) -> None:
        if self._file is None:
            return
        fb = state.feedback
        self._writer.writerow((
            f"{t_flip:.6f}",
            state.phase,
            scene.view,
            "" if fb is None else fb.index,
            "" if state.bar_value is None else f"{state.bar_value:.6g}",
            "" if scene.bar_level is None else f"{scene.bar_level:.6g}",
            "" if fb is None else f"{fb.t_received:.6f}",
            int(scene.lost),
            int(state.has_value),
            state.run_id or "",
        ))
        if time.monotonic() - self._t_flushed >= FLIP_LOG_FLUSH_S:
            self.flush()

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()
            self._t_flushed = time.monotonic()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class KeyLog:
    """CSV of trigger and response key presses, flushed at each press (they are rare)."""

    def __init__(self, path: Path | None) -> None:
        self._file: IO[str] | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("w", newline="", encoding="utf-8")
            self._writer = csv.writer(self._file)
            self._writer.writerow(KEY_LOG_COLUMNS)

    def write(self, t_key: float, key: str, role: str, state: ScreenState, device: str = "keyboard",
              pulse: int | None = None, trigger_check: str | None = None) -> None:
        if self._file is None:
            return
        fb = state.feedback
        self._writer.writerow((f"{t_key:.6f}", key, role, state.phase,
                               "" if fb is None else fb.index, state.run_id or "", device,
                               "" if pulse is None else pulse, trigger_check or ""))
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class KeyCounter:
    """Key presses by role, for the screen's heartbeat."""

    def __init__(self) -> None:
        self.n_triggers = 0
        self.n_responses = 0
        self.t_last_trigger: float | None = None
        self.last_response: tuple[str, float] | None = None

    def add(self, key: str, role: str, t_key: float) -> None:
        if role == "trigger":
            self.n_triggers += 1
            self.t_last_trigger = t_key
        else:
            self.n_responses += 1
            self.last_response = (key, t_key)

    def heartbeat_fields(self) -> dict[str, Any]:
        return {
            "n_triggers": self.n_triggers,
            "t_last_trigger": self.t_last_trigger,
            "n_responses": self.n_responses,
            "last_response": None if self.last_response is None else
            {"key": self.last_response[0], "t_key": self.last_response[1]},
        }


class _StopFlag:
    """Set by SIGTERM/SIGINT; the loop checks it between frames."""

    def __init__(self) -> None:
        self.reason: str | None = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.reason = signal.Signals(signum).name


def _install_signal_handlers(stop: _StopFlag) -> dict[int, Any]:
    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous[sig] = signal.signal(sig, stop)
    return previous


def run(args: argparse.Namespace) -> int:
    """Read the display settings, open the link and the window, run the loop until asked to stop."""
    try:
        cfg = display_config(args)
    except DisplayConfigError as exc:
        logger.error("%s", " ".join(str(exc).split("\n  ")))  # one line, no traceback
        return 2
    if sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    ):
        logger.error(
            "No display (DISPLAY is not set). Run the screen on a virtual display with "
            "'xvfb-run -a rtnf-screen ...' (Debian package xvfb), see stimulus.xvfb."
        )
        return 2
    try:
        tones = Tones.open(cfg)  # None unless a condition has tone = true (stimulus.displays.tone)
    except ToneUnavailable as exc:
        logger.error("%s", exc)
        return 2
    try:
        link = FeedbackLink(args.address, args.ack_address, cfg.heartbeat_timeout_s,
                            curve_keys=args.curve_keys, curve_client=args.curve_client,
                            ack_curve_keys=args.ack_curve_keys)
    except RuntimeError as exc:
        logger.error("%s", exc)
        return 2
    from rtnf.wire.pubsocket import is_loopback

    if not is_loopback(args.ack_address) and args.ack_curve_keys is None:
        logger.warning("--ack-address %r is reachable from other machines and --ack-curve-keys is not set: "
                       "anyone on that network can read what the participant sees and presses, unencrypted. "
                       "Set --ack-curve-keys or bind to 127.0.0.1.", args.ack_address)
    stop = _StopFlag()
    previous = _install_signal_handlers(stop)
    flip_log = FlipLog(args.flip_log)
    key_log = KeyLog(args.key_log)
    screen = None
    loop = None
    try:
        # Lazy: importing PsychoPy's visual module needs a display.
        from stimulus.screen import FeedbackScreen

        screen = FeedbackScreen(cfg)
        logger.info("feedback screen %dx%d subscribed to %s, acknowledging on %s",
                    *screen.size, args.address, args.ack_address)
        loop = Loop(args, cfg, link, screen, flip_log, key_log, stop)
        loop.tones = tones
        loop.run()
        if args.screenshot is not None:
            loop.final_screenshot(args.screenshot)
    finally:
        if loop is not None:
            loop.triggers.close()
        flip_log.close()
        key_log.close()
        if screen is not None:
            screen.close()
        link.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if args.flip_log is not None:
        _report_latency(args.flip_log)
    return 0


def _report_latency(flip_log: Path) -> None:
    """Log the receive-to-flip summary and write it beside the flip log."""
    try:
        summary = latency_summary(flip_log)
        path = flip_log.with_suffix(".latency.json")
        write_summary(summary, path)
    except (OSError, ValueError, KeyError) as exc:
        logger.warning("could not summarise the flip log %s: %s", flip_log, exc)
        return
    r2f = summary["receive_to_flip"]
    if r2f["n"]:
        logger.info("receive-to-flip latency over %d feedback messages: median %.1f ms, "
                    "p95 %.1f ms, p99 %.1f ms (%s)", r2f["n"], r2f["median_ms"], r2f["p95_ms"],
                    r2f["p99_ms"], path)


class Loop:
    """The frame loop, capped by the clock (never by counting frames: Xvfb has no vsync).

    Each frame: take the messages that arrived, compose the scene, draw,
    flip, stamp ``t_flip``, log the flip, acknowledge each feedback index the
    first time it is on screen, read the keys, and send a heartbeat every
    second.
    """

    def __init__(self, args: argparse.Namespace, cfg: DisplayConfig, link: FeedbackLink,
                 screen: Any, flip_log: FlipLog, key_log: KeyLog, stop: _StopFlag) -> None:
        self.args = args
        self.cfg = cfg
        self.link = link
        self.screen = screen
        self.flip_log = flip_log
        self.key_log = key_log
        self.stop = stop
        self.scenes = SceneMaker(cfg)
        self.tones: Tones | None = None  # set by run() when a condition has tone = true
        self.keys = KeyCounter()
        self.triggers = Triggers(cfg, link, key_log, self.keys)  # keyboard and serial, one clock
        keys = cfg.keys
        self.roles: dict[str, str] = {k: "response" for k in keys.responses}
        if keys.trigger:
            self.roles[str(keys.trigger)] = "trigger"
        self.key_names = [*self.roles, keys.quit]
        self.ratings = RatingController(cfg, link.send_rating)  # [[display.ratings]]: see stimulus.rating
        if self.ratings.enabled:
            self.key_names += [k for k in self.ratings.keys if k not in self.key_names]
        self.period = 1.0 / cfg.max_fps
        self.next_frame = time.time()
        self.next_heartbeat = time.time()
        self.acked: tuple[str | None, int, str] | None = None

    def run(self) -> None:
        """Run frames until ``stop`` is set."""
        state = self.link.state
        while self.stop.reason is None:
            now = time.time()
            if now < self.next_frame:
                # Messages are taken the moment they arrive, drawn at the next frame.
                self.link.receive(math.ceil((self.next_frame - now) * 1000.0))  # no busy spin
                continue
            self.link.receive(0)
            t_flip, scene = self.frame()
            # Keep to the schedule (so that a vsync display, whose flip waits
            # for the blank, still gets every refresh) but never burst to
            # catch up after a late frame: at most one short interval.
            self.next_frame = max(self.next_frame + self.period, t_flip + self.period / 2.0)
            self._acknowledge(state, scene, t_flip)
            if self.ratings.changed():
                self.next_heartbeat = t_flip  # a rating came, went or was queued: say so now
            if t_flip >= self.next_heartbeat:
                self.next_heartbeat = t_flip + HEARTBEAT_PERIOD_S
                self.link.send_heartbeat(
                    state.phase, last_index=None if self.acked is None else self.acked[1],
                    connection_lost=scene.lost, n_malformed=self.link.n_malformed,
                    view=scene.view, **self.keys.heartbeat_fields(), **self.triggers.heartbeat_fields(),
                    **self.ratings.heartbeat_fields(t_flip),
                )
            self._read_keys(state)
            self.triggers.poll(state)  # the serial trigger box's pulses, stamped by its reader thread
            if (
                self.args.exit_after_end is not None
                and state.phase == "ended"
                and state.t_phase is not None
                and not self.ratings.busy()  # the ratings after the run are answered first
                and t_flip - max(state.t_phase, self.ratings.t_idle) >= self.args.exit_after_end
            ):
                self.stop.reason = "run ended"
        logger.info("stopping (%s)", self.stop.reason)

    def frame(self, capture: bool = False) -> tuple[float, Scene]:
        """Draw the current state, flip, log the flip; return (t_flip, scene)."""
        state = self.link.state
        now = time.time()
        scene = self.ratings.overlay(state, self.scenes.scene(state, now), now)  # a rating pauses the feedback
        self.screen.draw(scene)
        if capture:
            self.screen.capture()
        t_flip = self.screen.flip()
        if self.tones is not None and scene.view != "rating":
            self.tones.update(state)  # after the flip: the tone starts with the frame showing its value
        self.ratings.flipped(t_flip)
        if self.ratings.enabled:
            click = self.screen.rating_click()
            if click is not None:
                self.ratings.click(*click)
        self.flip_log.write(t_flip, state, scene)
        return t_flip, scene

    def _acknowledge(self, state: ScreenState, scene: Scene, t_flip: float) -> None:
        fb = state.feedback
        if fb is None:
            return
        key = (state.run_id, fb.index, fb.kind)
        if key == self.acked:
            return
        self.acked = key
        self.link.send_displayed(
            index=fb.index, value=fb.value, condition=fb.condition, state=state.phase,
            t_received=fb.t_received, t_displayed=t_flip, kind=fb.kind, view=scene.view,
            bar_value=state.bar_value, bar_shown=scene.bar_level,
            t_settled=self.scenes.settled_at() if fb.kind == "continuous" else None,
        )

    def _read_keys(self, state: ScreenState) -> None:
        for key, t_key in self.screen.keys(self.key_names):
            if key == self.cfg.keys.quit:
                self.stop.reason = f"{key} key"
                continue
            self.ratings.key(key, t_key)  # moves or confirms the rating on screen, if any
            role = self.roles.get(key)
            if role is None:
                continue
            if role == "trigger":
                self.triggers.trigger(key, t_key, "keyboard", state)
                continue
            self.keys.add(key, role, t_key)
            self.key_log.write(t_key, key, role, state)
            logger.info("%s key %r at %.6f", role, key, t_key)
            fb = state.feedback
            self.link.send_key(key=key, role=role, t_key=t_key, state=state.phase,
                               index=None if fb is None else fb.index)

    def final_screenshot(self, path: Path) -> None:
        """Draw the final state once more, after the bar's glide, and save it as PNG.

        The PNG is exactly the last frame drawn (and flipped) before exit, with
        the bar at its final level (the glide time is known, so this waits at
        most ``bar.glide_s``).
        """
        self.link.receive(0)
        due = max(self.next_frame, self.scenes.settled_at())
        time.sleep(max(0.0, due - time.time()))  # the frame cap holds here too
        self.frame(capture=True)
        self.screen.save_capture(path)
        logger.info("screenshot saved to %s", path)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``rtnf-screen`` and ``python -m stimulus``.

    Returns
    -------
    int
        0 after a clean stop (quit key, SIGTERM, SIGINT, ``--exit-after-end``),
        2 when the display settings are invalid, there is no display, or the
        sockets cannot be opened.
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        code = run(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler, not at the interpreter's exit
        return code
    except BrokenPipeError:
        # The reader of stdout went away (`rtnf-screen ... | head`): exit quietly, pointing stdout at
        # devnull so the interpreter's final flush does not fail again (as the Python docs recommend).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
