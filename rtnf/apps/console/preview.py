"""The latest volume's preview, made ready to draw: pure NumPy, no web stack.

rtnf's ``preview`` message (see :mod:`rtnf.wire.messages` and
:func:`rtnf.analysis.wholebrain.preview_body`) carries three planes through the
feedback ROI. Each plane's arrays are lists of rows in voxel order: the
sagittal plane is ``volume[i, :, :]`` (rows j, columns k), the coronal one
``volume[:, j, :]`` (rows i, columns k), the axial one ``volume[:, :, k]``
(rows i, columns j).

Display orientation
-------------------
Every plane is **transposed** and drawn with its first row at the bottom
(Bokeh's ``image`` glyph puts row 0 at ``y``), so the plane's first voxel axis
runs left to right and its second bottom to top:

=========  ===================  ==================
plane      horizontal (x)       vertical (y)
=========  ===================  ==================
sagittal   j (posterior → ant.) k (inferior → sup.)
coronal    i (left → right)     k (inferior → sup.)
axial      i (left → right)     j (posterior → ant.)
=========  ===================  ==================

With voxel axes in RAS order (the simulator's diagonal affine, NIfTI files
stored RAS+) this is the **neurological** convention: the subject's right on
the right of the screen, anterior at the top of the axial slice, superior at
the top of the sagittal and coronal ones. The message carries no affine, so a
series stored in another order (a DICOM mosaic is usually L/P on its first two
axes) is shown mirrored accordingly. If a preview carries the optional field
``axcodes`` (for example ``["L", "P", "S"]``, what
``nibabel.aff2axcodes(affine)`` returns), the axes pointing to L, P or I are
flipped first, so the display is neurological whatever the storage order; an
optional ``voxel_mm`` ``[dx, dy, dz]`` gives the pixels their true aspect.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

PLANES: tuple[str, ...] = ("sagittal", "coronal", "axial")
# The voxel axes each plane's rows and columns run along.
PLANE_AXES: dict[str, tuple[int, int]] = {"sagittal": (1, 2), "coronal": (0, 2), "axial": (0, 1)}
T_THRESHOLD = 3.0  # |t| above this is overlaid
_FLIP_CODES = {"L": True, "R": False, "P": True, "A": False, "I": True, "S": False}


@dataclass(frozen=True)
class PlaneView:
    """One plane as drawn: arrays in display orientation (row 0 at the bottom).

    Attributes
    ----------
    name : str
        "sagittal", "coronal" or "axial".
    image : ndarray of uint8, shape (ny, nx)
        The realigned volume, 0-255.
    tmap : ndarray of float32, shape (ny, nx)
        t values where ``|t| > threshold``, NaN elsewhere (outside the brain,
        below threshold, or no t-map in the message).
    width, height : float
        Extent of the image in display units (voxels, or mm with ``voxel_mm``).
    outlines : dict
        ``{roi name: (xs, ys)}``: the ROI's outline as one polyline per ROI
        with NaN between its unit segments (pixel edges between inside and
        outside), in display units.
    """

    name: str
    image: np.ndarray
    tmap: np.ndarray
    width: float
    height: float
    outlines: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)


@dataclass(frozen=True)
class Preview:
    """The latest preview: its volume index and its planes ready to draw."""

    index: int | None
    planes: dict[str, PlaneView]
    has_tmap: bool
    rois: tuple[str, ...]
    threshold: float
    oriented: bool  # True when the message said how its axes point (axcodes)

    def key(self) -> tuple:
        """What the figures are built from: shapes, extents and ROI names."""
        return (
            tuple((p.name, p.image.shape, p.width, p.height) for p in self.planes.values()),
            self.rois,
        )


def _rows(value: Any, shape: tuple[int, int], dtype: Any = float) -> np.ndarray:
    """A list of rows as a 2D array of exactly ``shape`` (None becomes NaN); ValueError otherwise."""
    if not isinstance(value, list):
        raise ValueError("not a list of rows")
    arr = np.asarray(value, dtype=dtype)  # ragged or non-numeric rows raise ValueError / TypeError
    if arr.shape != shape:
        raise ValueError(f"shape {arr.shape}, expected {shape}")
    return arr


def _flips(body: dict[str, Any]) -> tuple[bool, bool, bool] | None:
    codes = body.get("axcodes")
    if (isinstance(codes, (list, tuple)) and len(codes) == 3
            and all(isinstance(c, str) and c.upper() in _FLIP_CODES for c in codes)):
        return tuple(_FLIP_CODES[c.upper()] for c in codes)  # type: ignore[return-value]
    return None


def _voxel_mm(body: dict[str, Any]) -> tuple[float, float, float]:
    v = body.get("voxel_mm")
    if isinstance(v, (list, tuple)) and len(v) == 3 and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and 0 < x < 100 for x in v
    ):
        return float(v[0]), float(v[1]), float(v[2])
    return 1.0, 1.0, 1.0


def to_display(rows: np.ndarray, flip: tuple[bool, bool] = (False, False)) -> np.ndarray:
    """Published plane (rows = first voxel axis) to display orientation (row 0 at the bottom)."""
    out = rows
    if flip[0]:
        out = out[::-1, :]
    if flip[1]:
        out = out[:, ::-1]
    return np.ascontiguousarray(out.T)


def outline(mask: np.ndarray, sx: float = 1.0, sy: float = 1.0) -> tuple[list[float], list[float]]:
    """Edges between inside and outside pixels of a display-oriented mask, as one NaN-separated polyline.

    Pixel ``(row r, column c)`` covers ``x`` in ``[c, c + 1]`` and ``y`` in ``[r, r + 1]`` (times the
    voxel size).
    """
    m = np.pad(mask.astype(bool), 1)
    xs: list[float] = []
    ys: list[float] = []
    nan = float("nan")
    # Vertical edges: pixel (r, c - 1) and (r, c) differ -> x = c, y from r to r + 1.
    rr, cc = np.nonzero(m[1:-1, 1:] != m[1:-1, :-1])
    for r, c in zip(rr.tolist(), cc.tolist()):
        xs += [c * sx, c * sx, nan]
        ys += [r * sy, (r + 1) * sy, nan]
    # Horizontal edges: pixel (r - 1, c) and (r, c) differ -> y = r, x from c to c + 1.
    rr, cc = np.nonzero(m[1:, 1:-1] != m[:-1, 1:-1])
    for r, c in zip(rr.tolist(), cc.tolist()):
        xs += [c * sx, (c + 1) * sx, nan]
        ys += [r * sy, r * sy, nan]
    return xs[:-1], ys[:-1]  # no trailing break


def prepare(body: dict[str, Any], threshold: float = T_THRESHOLD) -> Preview | None:
    """Check a ``preview`` message body and orient its planes for display.

    A plane whose arrays do not match its ``shape`` is left out, as is a
    malformed ROI mask or t-map (that plane is then drawn without it).

    Returns
    -------
    Preview or None
        None when no plane could be used.
    """
    planes_in = body.get("planes")
    if not isinstance(planes_in, dict):
        return None
    index = body.get("index")
    index = index if isinstance(index, int) and not isinstance(index, bool) else None
    flips = _flips(body)
    voxel = _voxel_mm(body)
    planes: dict[str, PlaneView] = {}
    rois: list[str] = []
    has_tmap = False
    for name in PLANES:
        plane = planes_in.get(name)
        if not isinstance(plane, dict):
            continue
        shape = plane.get("shape")
        if not (isinstance(shape, list) and len(shape) == 2 and all(isinstance(n, int) and 0 < n <= 4096 for n in shape)):
            continue
        shape_t = (shape[0], shape[1])
        a0, a1 = PLANE_AXES[name]
        flip = (flips[a0], flips[a1]) if flips else (False, False)
        sx, sy = voxel[a0], voxel[a1]
        try:
            image = _rows(plane.get("image"), shape_t)
        except (ValueError, TypeError):
            continue
        image = to_display(np.clip(np.nan_to_num(image), 0, 255).astype(np.uint8), flip)
        tmap = np.full(image.shape, np.nan, dtype=np.float32)
        if plane.get("tmap") is not None:
            try:
                t = to_display(_rows(plane.get("tmap"), shape_t).astype(np.float32), flip)
            except (ValueError, TypeError):
                t = None
            if t is not None:
                has_tmap = True
                with np.errstate(invalid="ignore"):
                    shown = np.abs(t) > threshold
                tmap[shown] = t[shown]
        outlines = {}
        masks = plane.get("rois")
        for roi, rows in (masks.items() if isinstance(masks, dict) else ()):
            if not isinstance(roi, str):
                continue
            try:
                mask = to_display(_rows(rows, shape_t) > 0.5, flip)
            except (ValueError, TypeError):
                continue
            outlines[roi] = outline(mask, sx, sy)
            if roi not in rois:
                rois.append(roi)
        planes[name] = PlaneView(name, image, tmap, image.shape[1] * sx, image.shape[0] * sy, outlines)
    if not planes:
        return None
    return Preview(index, planes, has_tmap, tuple(rois), float(threshold), flips is not None)
