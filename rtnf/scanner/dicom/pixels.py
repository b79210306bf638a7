"""Pixel-data checks shared by the readers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ._common import DicomReadError, check_decodable, check_mr


def check_pixel_length(ds: Any, path: Path) -> None:
    """Raise DicomReadError when the dataset's PixelData is missing or shorter than the header promises."""
    from .probe import expected_pixel_bytes

    check_mr(ds, path)
    check_decodable(ds, path)
    if "PixelData" not in ds:
        raise DicomReadError(f"{path}: no PixelData element (file truncated after its header?)")
    elem = ds["PixelData"]
    if getattr(elem, "is_undefined_length", False):
        return
    expected = expected_pixel_bytes(ds)
    got = len(elem.value or b"")
    if expected is not None and got < expected:
        raise DicomReadError(f"{path}: truncated file, PixelData holds {got} of {expected} bytes")
