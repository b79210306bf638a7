"""Shared fixtures and helpers for rtnf's tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = ROOT / "config"
SHARED_DATA = ROOT.parent / "shared" / "data"


def requires_shared_data(sub: str = "") -> pytest.MarkDecorator:
    """Skip with a clear reason when ../shared/data (real scanner files) is absent."""
    path = SHARED_DATA / sub
    return pytest.mark.skipif(
        not path.exists(), reason=f"real scanner data not found at {path} (present beside the checkout in CI only)"
    )


def requires_display() -> pytest.MarkDecorator:
    """Skip when neither a display nor xvfb-run is available, or PsychoPy is missing."""
    import importlib.util
    import os

    if importlib.util.find_spec("psychopy") is None:
        return pytest.mark.skip(reason="PsychoPy is not installed (pip install -e '.[display]')")
    if not os.environ.get("DISPLAY") and shutil.which("xvfb-run") is None:
        return pytest.mark.skip(reason="no display and no xvfb-run (apt-get install xvfb xauth)")
    return pytest.mark.display
