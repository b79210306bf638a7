"""Run the screen on a virtual X display when the machine has none."""

from __future__ import annotations

import os
import shutil

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
    RuntimeError
        If there is no display and ``xvfb-run`` is not on the ``PATH``.
    """
    if os.environ.get("DISPLAY"):
        return []
    if shutil.which("xvfb-run") is None:
        raise RuntimeError(
            "No X display (DISPLAY is not set) and xvfb-run was not found; the feedback "
            "screen needs one of them: install the Debian package xvfb "
            "(apt-get install xvfb) or run on a machine with a display."
        )
    return ["xvfb-run", "-a", "-s", XVFB_SCREEN]
