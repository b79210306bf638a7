"""ROIs from a mask image, a sphere at world coordinates, or atlas labels."""

from __future__ import annotations

import csv
import difflib
from pathlib import Path
from typing import Sequence

import numpy as np

from rtnf.scanner.volume import Grid
from ._common import (
    DEFAULT_MIN_COVERAGE,
    RoiDefError,
    RoiDefinition,
    _check_coverage,
    _check_not_empty,
    _coverage,
    _load_image,
    _resample,
    _voxel_world,
)


# --------------------------------------------------------------------------- mask, sphere, atlas


def mask_from_image(
    image: str | Path | tuple[np.ndarray, np.ndarray],
    grid: Grid,
    *,
    name: str = "roi",
    threshold: float = 0.5,
    interpolation: str = "nearest",
    min_coverage: float = DEFAULT_MIN_COVERAGE,
) -> RoiDefinition:
    """A mask or probability map in any space, resampled to the reference grid.

    Parameters
    ----------
    image : path or (data, affine)
        NIfTI file, or a 3D array with its voxel -> world (mm) affine.
    grid : Grid
        The reference grid.
    threshold : float
        A reference voxel belongs to the ROI when the resampled value is
        ``> threshold`` (default 0.5: binary masks as they are).
    interpolation : {"nearest", "linear"}
        ``nearest`` takes the value of the source voxel that contains the
        reference voxel's centre; ``linear`` interpolates (for probability
        maps, or binary masks much finer than the grid: then the threshold is
        the partial-volume fraction).
    min_coverage : float
        Smallest fraction of the source region (its voxels ``> threshold``)
        that must fall inside the field of view.
    """
    if interpolation not in ("nearest", "linear"):
        raise RoiDefError("--interpolation", f"{interpolation!r}. Allowed: 'nearest', 'linear'")
    data, affine = _load_image(image, "IMAGE") if isinstance(image, (str, Path)) else image
    data = np.asarray(data, dtype=np.float32)
    src = data > threshold
    if not src.any():
        raise RoiDefError("--threshold", f"no voxel of the image is above {threshold:g} (image maximum "
                                         f"{float(np.nanmax(data)):g}). Allowed: a threshold below the maximum")
    coverage = _coverage(_voxel_world(src, affine), grid)
    values = _resample(data, affine, grid, order=0 if interpolation == "nearest" else 1)
    mask = values > threshold
    _check_not_empty(mask, "IMAGE", grid, "the mask", "a mask that overlaps the functional volume")
    _check_coverage(coverage, min_coverage, "IMAGE", grid)
    return RoiDefinition(name, "mask", mask, grid, coverage,
                         {"image": str(image) if isinstance(image, (str, Path)) else "array",
                          "threshold": threshold, "interpolation": interpolation})


def sphere_roi(
    grid: Grid, center_mm: Sequence[float], radius_mm: float, *, name: str = "roi",
    min_coverage: float = DEFAULT_MIN_COVERAGE,
) -> RoiDefinition:
    """Voxels whose centres lie within ``radius_mm`` of ``center_mm`` (scanner RAS mm).

    The voxels are those of :class:`rtnf.analysis.rois.SphereROI` (what the run will
    use for a ``center_mm``/``radius_mm`` config entry); coverage is the
    fraction of the sphere's volume inside the field of view.
    """
    from rtnf.analysis.rois import RoiError, SphereROI

    center = np.asarray(center_mm, dtype=np.float64)
    if center.shape != (3,):
        raise RoiDefError("--center-mm", f"{list(center_mm)}. Allowed: three numbers X Y Z in mm")
    if not radius_mm > 0:
        raise RoiDefError("--radius-mm", f"{radius_mm}. Allowed: a radius > 0 mm")
    try:
        roi = SphereROI(name, tuple(center), float(radius_mm)).fit(grid)
    except RoiError as exc:
        param = "--radius-mm" if "radius_mm" in str(exc) else "--center-mm"
        raise RoiDefError(param, str(exc).split(": ", 1)[-1]) from None
    # Coverage: a regular lattice of points filling the sphere (1 mm or finer).
    step = min(1.0, radius_mm / 4)
    axis = np.arange(-radius_mm, radius_mm + step / 2, step)
    pts = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    pts = pts[np.sum(pts**2, axis=1) <= radius_mm**2] + center
    coverage = _coverage(pts, grid)
    _check_coverage(coverage, min_coverage, "--center-mm", grid)
    return RoiDefinition(name, "sphere", roi.mask(grid), grid, coverage,
                         {"center_mm": center.tolist(), "radius_mm": float(radius_mm)})


def read_label_table(path: str | Path) -> dict[str, int]:
    """A label table: one ``index<TAB or comma>name`` row per label.

    A header row (``index,name``, BIDS ``dseg.tsv``'s ``index	name``, ...) and
    ``#`` comments are skipped; extra columns are ignored. When the header
    names the columns, ``index`` and ``name`` are used wherever they are.

    Returns
    -------
    dict
        ``{name: index}``.
    """
    path = Path(path)
    if not path.is_file():
        raise RoiDefError("--table", f"file not found: {path}")
    text = path.read_text(encoding="utf-8-sig")
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise RoiDefError("--table", f"{path} is empty")
    delim = "\t" if "\t" in lines[0] else ("," if "," in lines[0] else None)
    rows = [r for r in csv.reader(lines, delimiter=delim)] if delim else [ln.split() for ln in lines]
    rows = [[c.strip() for c in r] for r in rows]
    i_col, n_col = 0, 1
    header = [c.lower() for c in rows[0]]
    if not header[0].lstrip("-").isdigit():
        if "index" in header and "name" in header:
            i_col, n_col = header.index("index"), header.index("name")
        rows = rows[1:]
    table: dict[str, int] = {}
    for k, row in enumerate(rows):
        try:
            table[row[n_col]] = int(float(row[i_col]))
        except (ValueError, IndexError):
            raise RoiDefError("--table", f"{path}: row {k + 1} {row!r} is not 'index, name'") from None
    return table


def _select_labels(table: dict[str, int], names: Sequence[str]) -> list[int]:
    lower = {k.lower(): v for k, v in table.items()}
    out = []
    for n in names:
        if n.lower() not in lower:
            close = difflib.get_close_matches(n.lower(), list(lower), n=5, cutoff=0.4)
            hint = f" Close matches: {', '.join(repr(c) for c in close)}." if close else ""
            raise RoiDefError("--name", f"{n!r} is not in the label table ({len(table)} labels).{hint} "
                                        "Allowed: a name from the table's name column")
        out.append(lower[n.lower()])
    return out


def atlas_roi(
    labels: str | Path | tuple[np.ndarray, np.ndarray], table: str | Path | dict[str, int], names: str | Sequence[str],
    grid: Grid, *, name: str = "roi", min_coverage: float = DEFAULT_MIN_COVERAGE,
    world_to_atlas: np.ndarray | None = None,
) -> RoiDefinition:
    """The union of named labels of a label image, resampled (nearest) to the reference grid.

    Parameters
    ----------
    labels : path or (data, affine)
        Integer label image in any space with an affine.
    table : path or dict
        Label table (see :func:`read_label_table`) or ``{name: index}``.
    names : str or sequence of str
        Label names (case-insensitive); several names give their union.
    world_to_atlas : ndarray (4, 4), optional
        Reference world -> atlas world mm (an MNI registration); identity by default.
    """
    names = [names] if isinstance(names, str) else list(names)
    data, affine = _load_image(labels, "--labels") if isinstance(labels, (str, Path)) else labels
    data = np.rint(np.asarray(data)).astype(np.int32)
    if isinstance(table, (str, Path)):
        from .atlases import LabelImage, _named_by_side  # Left_/Right_ named as rtnf roi mni names them

        # the labels are in the reference's world (scanner space, x = 0 need not be the midline): pairs only
        tab = _named_by_side(LabelImage(data, affine, read_label_table(table), str(table)), mni=False).table
    else:
        tab = dict(table)
    indices = _select_labels(tab, names)
    src = np.isin(data, indices)
    if not src.any():
        raise RoiDefError("--name", f"label(s) {names} (index {indices}) have no voxel in the label image. "
                                    "Allowed: a label present in the image")
    world = _voxel_world(src, affine)
    if world_to_atlas is not None:
        inv = np.linalg.inv(world_to_atlas)
        world = world @ inv[:3, :3].T + inv[:3, 3]
    coverage = _coverage(world, grid)
    mask = np.isin(_resample(data, affine, grid, order=0, world_to_src=world_to_atlas), indices)
    _check_not_empty(mask, "--name", grid, f"label(s) {names}", "labels that overlap the functional volume")
    _check_coverage(coverage, min_coverage, "--name", grid)
    return RoiDefinition(name, "atlas", mask, grid, coverage, {"labels": names, "indices": indices})


def restrict_to(roi: RoiDefinition, image: str | Path, *, threshold: float = 0.5) -> RoiDefinition:
    """The ROI intersected with a mask in the participant's space (a functional localizer's, any grid: nearest).

    Raises
    ------
    RoiDefError
        When nothing of the ROI is left (param ``--within``).
    """
    data, affine = _load_image(image, "--within")
    keep = _resample(np.asarray(data, dtype=np.float32), affine, roi.grid, order=0) > threshold
    mask = roi.mask & keep
    _check_not_empty(mask, "--within", roi.grid, f"the ROI within {image}", "a mask that overlaps the ROI")
    details = dict(roi.details, within=str(image), voxels_before_within=roi.n_voxels)
    return RoiDefinition(roi.name, roi.kind, mask, roi.grid, roi.coverage, details)
