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

@@BODY1@@class _StopFlag:
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


@@BODY2@@def main(argv: list[str] | None = None) -> int:
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
