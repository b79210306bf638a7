"""The image of ``view = "picture"``: a file given by the study, or a flame drawn by code.

No PsychoPy here. Images are RGBA ``uint8`` arrays, rows from the top.

The built-in flame is computed, not shipped as a file: three nested flame
outlines (a rounded base narrowing to a tip) in red-orange, orange and pale
yellow on a transparent background, smoothed by 4x supersampling. Write it out
to look at it or to start a study's own picture from it::

    python -m stimulus.displays.picture flame.png
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import numpy as np

from rtnf.wire.display import DisplayConfig, DisplayConfigError

FLAME_SIZE = (256, 176)
"""Rows and columns of the built-in flame."""
FLAME_LAYERS: tuple[tuple[float, float, tuple[int, int, int]], ...] = (
    # (width factor, height factor, colour): outer to inner, each drawn over the previous
    (1.00, 1.00, (224, 64, 20)),
    (0.68, 0.72, (250, 146, 32)),
    (0.36, 0.42, (255, 226, 128)),
)
SUPERSAMPLE = 4
ALLOWED_FILE = ("an image file (PNG, JPEG, ...) readable by Pillow, relative to the session TOML's "
                "folder, or \"\" for the built-in flame")


def _inside_flame(u: np.ndarray, t: np.ndarray, wf: float, hf: float) -> np.ndarray:
    """Inside a flame of relative width ``wf`` and height ``hf``.

    ``u`` is the horizontal position in [-1, 1] (0 at the centre), ``t`` the
    height in [0, 1] from the flame's base. The half-width,
    ``2.3 wf sqrt(h) (1 - h)^0.9`` at relative height ``h = t / hf``, rises
    from the round base to its widest (0.92 ``wf``) at a third of the height
    and narrows to the tip.
    """
    tt = t / hf
    half = 2.3 * wf * np.sqrt(np.clip(tt, 0, None)) * np.clip(1.0 - tt, 0, None) ** 0.9
    return (tt >= 0) & (tt <= 1) & (np.abs(u) <= half)


@functools.lru_cache(maxsize=1)
def flame() -> np.ndarray:
    """The built-in flame: an RGBA ``uint8`` array of :data:`FLAME_SIZE`, transparent around it."""
    rows, cols = FLAME_SIZE
    n = SUPERSAMPLE
    # Sample centres of a rows*n x cols*n grid; image rows go down, flame height t goes up.
    y = (np.arange(rows * n) + 0.5) / (rows * n)
    x = (np.arange(cols * n) + 0.5) / (cols * n)
    t = (1.0 - y)[:, None] - 0.02  # height above the base, which sits 2 % above the image's bottom
    u = (2.0 * x - 1.0)[None, :]
    rgb = np.zeros((rows * n, cols * n, 3))
    alpha = np.zeros((rows * n, cols * n))
    for wf, hf, colour in FLAME_LAYERS:
        inside = _inside_flame(u, t, wf, hf * 0.96)
        rgb[inside] = colour
        alpha[inside] = 1.0
    # Average the n x n samples of each pixel; colours are averaged over the covered samples only.
    a = alpha.reshape(rows, n, cols, n).mean(axis=(1, 3))
    c = (rgb * alpha[..., None]).reshape(rows, n, cols, n, 3).sum(axis=(1, 3))
    covered = alpha.reshape(rows, n, cols, n).sum(axis=(1, 3))
    c = c / np.maximum(covered, 1)[..., None]
    out = np.zeros((rows, cols, 4), dtype=np.uint8)
    out[..., :3] = np.round(c).astype(np.uint8)
    out[..., 3] = np.round(a * 255).astype(np.uint8)
    out.setflags(write=False)
    return out


def load_image(path: str | Path) -> np.ndarray:
    """An image file as an RGBA ``uint8`` array (transparency kept, opaque when it has none).

    Raises
    ------
    OSError, ValueError
        When the file cannot be read or is not an image.
    """
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        rgba = im.convert("RGBA")
    arr = np.asarray(rgba, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError("empty image")
    return arr


def picture_image(file: str) -> np.ndarray:
    """The picture of ``display.picture.file`` (the built-in flame when empty)."""
    return flame() if not file else load_image(file)


def tinted(image: np.ndarray, colour: tuple[float, float, float]) -> np.ndarray:
    """``image`` with its colour channels multiplied by ``colour`` / 255 (alpha unchanged)."""
    out = image.copy()
    scale = np.asarray(colour, dtype=float) / 255.0
    out[..., :3] = np.round(image[..., :3] * scale).astype(np.uint8)
    return out


def resolve_picture(cfg: DisplayConfig, config_file: str | Path | None,
                    source: str = "display") -> DisplayConfig:
    """``cfg`` with ``picture.file`` made absolute (relative to the session TOML's folder) and checked.

    Raises
    ------
    DisplayConfigError
        When the file cannot be read as an image; the message names the key,
        the value and what is allowed.
    """
    file = cfg.picture.file
    if not file:
        return cfg
    path = Path(file).expanduser()
    if not path.is_absolute() and config_file is not None:
        path = Path(config_file).resolve().parent / path
    try:
        load_image(path)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise DisplayConfigError(
            f"{source}: invalid value for 'display.picture.file': {file!r} (cannot read {path} as an "
            f"image: {reason}). Allowed: {ALLOWED_FILE}."
        ) from None
    picture = cfg.picture.model_copy(update={"file": str(path)})
    return cfg.model_copy(update={"picture": picture})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m stimulus.displays.picture",
                                description="Write the built-in flame of the picture view as a PNG.")
    p.add_argument("out", type=Path, help="PNG file to write")
    args = p.parse_args(argv)
    from PIL import Image

    Image.fromarray(flame()).save(args.out)
    print(f"flame {FLAME_SIZE[1]}x{FLAME_SIZE[0]} written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
