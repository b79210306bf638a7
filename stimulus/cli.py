"""``rtnf-screen``: the participant's feedback screen.

Main loop, capped at ``--max-fps`` by the clock (never by counting frames:
Xvfb has no vsync): take the messages that arrive until the next frame is
due, draw, flip, stamp ``t_flip``, log the flip, and acknowledge each
feedback index the first time it is on screen.
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

from rtnf.messages import DEFAULT_ADDRESS, DEFAULT_SCREEN_ADDRESS
from stimulus.geometry import DEFAULT_TARGET
from stimulus.link import FeedbackLink, ScreenState

logger = logging.getLogger("stimulus")

HEARTBEAT_PERIOD_S = 1.0
FLIP_LOG_FLUSH_S = 1.0
FLIP_LOG_COLUMNS = ("t_flip", "phase", "index", "value", "connection_lost", "has_value", "run_id")


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 1024x768, got {text!r}")
    if w < 64 or h < 64:
        raise argparse.ArgumentTypeError(f"window size must be at least 64x64, got {text!r}")
    return w, h


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
    """The command-line interface of ``rtnf-screen``."""
    p = argparse.ArgumentParser(
        prog="rtnf-screen",
        description="Show rtnf's feedback to the participant (PsychoPy window). Esc quits.",
    )
    p.add_argument("--address", default=DEFAULT_ADDRESS,
                   help="rtnf's PUB address to subscribe to (default: %(default)s)")
    p.add_argument("--ack-address", default=DEFAULT_SCREEN_ADDRESS,
                   help="address to bind for 'displayed' and heartbeat messages "
                        "(default: %(default)s)")
    p.add_argument("--size", type=_size, default=(1024, 768), metavar="WxH",
                   help="window size in pixels (default: 1024x768)")
    p.add_argument("--fullscreen", action="store_true", help="full-screen window")
    p.add_argument("--screen", type=int, default=0, metavar="N", help="monitor index (default: 0)")
    p.add_argument("--mirror", action="store_true", help="mirror the image left-right")
    p.add_argument("--target", type=_unit_interval, default=DEFAULT_TARGET,
                   help="target level in [0, 1] marked beside the bar (default: %(default)s)")
    p.add_argument("--heartbeat-timeout", type=_positive, default=3.0, metavar="SECONDS",
                   help="show 'connection lost' after this long without a message "
                        "(default: %(default)s)")
    p.add_argument("--flip-log", type=Path, metavar="PATH",
                   help="CSV with one row per flip: " + ", ".join(FLIP_LOG_COLUMNS))
    p.add_argument("--screenshot", type=Path, metavar="PATH",
                   help="save the last frame drawn before exit as PNG")
    p.add_argument("--exit-after-end", type=_non_negative, metavar="SECONDS",
                   help="quit this long after the run ended (default: stay until Esc)")
    p.add_argument("--max-fps", type=_positive, default=60.0,
                   help="frame-rate cap (default: %(default)s)")
    p.add_argument("--log-level", default="INFO",
                   choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return p


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

    def write(self, t_flip: float, state: ScreenState, lost: bool) -> None:
        if self._file is None:
            return
        fb = state.feedback
        self._writer.writerow((
            f"{t_flip:.6f}",
            state.phase,
            "" if fb is None else fb.index,
            "" if state.bar_value is None else f"{state.bar_value:.6g}",
            int(lost),
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
    """Open the link and the window, run the loop until asked to stop."""
    if sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    ):
        logger.error(
            "No display (DISPLAY is not set). Run the screen on a virtual display with "
            "'xvfb-run -a rtnf-screen ...' (Debian package xvfb), see stimulus.xvfb."
        )
        return 2
    try:
        link = FeedbackLink(args.address, args.ack_address, args.heartbeat_timeout)
    except RuntimeError as exc:
        logger.error("%s", exc)
        return 2
    stop = _StopFlag()
    previous = _install_signal_handlers(stop)
    flip_log = FlipLog(args.flip_log)
    screen = None
    try:
        # Lazy: importing PsychoPy's visual module needs a display.
        from stimulus.screen import FeedbackScreen

        screen = FeedbackScreen(args.size, args.fullscreen, args.screen, args.target, args.mirror)
        logger.info("feedback screen %dx%d subscribed to %s, acknowledging on %s",
                    *screen.size, args.address, args.ack_address)
        next_frame = _loop(args, link, screen, flip_log, stop)
        if args.screenshot is not None:
            # Redraw the final state once more, so the PNG is exactly the last
            # frame drawn (and flipped) before exit.
            state = link.state
            time.sleep(max(0.0, next_frame - time.time()))  # the cap holds here too
            screen.draw(state)
            screen.capture()
            t_flip = screen.flip()
            flip_log.write(t_flip, state, state.connection_lost(t_flip))
            screen.save_capture(args.screenshot)
            logger.info("screenshot saved to %s", args.screenshot)
    finally:
        flip_log.close()
        if screen is not None:
            screen.close()
        link.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _loop(
    args: argparse.Namespace,
    link: FeedbackLink,
    screen: Any,
    flip_log: FlipLog,
    stop: _StopFlag,
) -> float:
    """Run frames until ``stop`` is set; return when the next frame would be due."""
    state = link.state
    period = 1.0 / args.max_fps
    next_frame = time.time()
    next_heartbeat = time.time()
    acked: tuple[str | None, int] | None = None
    while stop.reason is None:
        now = time.time()
        if now < next_frame:
            # Messages are taken the moment they arrive, drawn at the next frame.
            link.receive(math.ceil((next_frame - now) * 1000.0))  # ceil: no busy spin
            continue
        link.receive(0)
        now = time.time()
        lost = state.connection_lost(now)
        screen.draw(state, now)
        t_flip = screen.flip()
        # Keep to the schedule (so that a vsync display, whose flip waits for
        # the blank, still gets every refresh) but never burst to catch up
        # after a late frame: at most one short interval, of half a period.
        next_frame = max(next_frame + period, t_flip + period / 2.0)
        flip_log.write(t_flip, state, lost)

        fb = state.feedback
        if fb is not None and acked != (state.run_id, fb.index):
            acked = (state.run_id, fb.index)
            link.send_displayed(
                index=fb.index, value=fb.value, condition=fb.condition, state=state.phase,
                t_received=fb.t_received, t_displayed=t_flip, bar_value=state.bar_value,
            )
        if t_flip >= next_heartbeat:
            next_heartbeat = t_flip + HEARTBEAT_PERIOD_S
            link.send_heartbeat(
                state.phase, last_index=None if acked is None else acked[1],
                connection_lost=lost, n_malformed=link.n_malformed,
            )
        if screen.escape_pressed():
            stop.reason = "Esc"
        elif (
            args.exit_after_end is not None
            and state.phase == "ended"
            and state.t_phase is not None
            and t_flip - state.t_phase >= args.exit_after_end
        ):
            stop.reason = "run ended"
    logger.info("stopping (%s)", stop.reason)
    return next_frame


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``rtnf-screen`` and ``python -m stimulus``.

    Returns
    -------
    int
        0 after a clean stop (Esc, SIGTERM, SIGINT, ``--exit-after-end``), 2
        when the sockets cannot be opened.
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
