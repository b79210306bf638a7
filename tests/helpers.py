"""Helpers to write test configs."""

from __future__ import annotations

from pathlib import Path

BASE_CONFIG = """
[session]
subject = "01"
task = "test"

[scanner]
export_dir = "export"
tr_s = 2.0
n_volumes = 42
dummy_volumes = 2

[protocol]
baseline = "rest"
pattern = {{ steps = [{{ condition = "rest", duration = 10 }}, {{ condition = "regulate", duration = 10 }}], repeat = 2 }}

[rois.acc]
center_mm = [0.0, 30.0, 15.0]
radius_mm = 8.0

[feedback]
roi = "acc"

[output]
dir = "out"
{extra}
"""


def write_config(folder: Path, text: str | None = None, extra: str = "", name: str = "session.toml") -> Path:
    """Write a config file (the base config plus ``extra`` unless ``text`` is given)."""
    path = folder / name
    path.write_text(text if text is not None else BASE_CONFIG.format(extra=extra))
    return path
