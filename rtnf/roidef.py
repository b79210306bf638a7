"""ROI definition before a run: ``rtnf roi <kind> ...``.

Every kind puts a region on the participant's *reference volume* (the
functional grid the run will use) and returns an :class:`RoiDefinition`: a
boolean mask on that grid, its voxel count, volume and centre of mass, and
the fraction of the region that lies inside the field of view. The command
line writes the mask as NIfTI (``uint8``, the reference's affine) and a PNG of
its outline over the reference for the operator to check; the mask then goes
into the session config as ``[rois.<name>] mask = "..."``.

==============  ==============================================================
``mask``        a NIfTI in any space with an affine, resampled to the grid
                (nearest neighbour, or linear + threshold for probability maps)
``sphere``      a sphere at scanner RAS millimetres (same voxels as
                :class:`rtnf.rois.SphereROI`)
``atlas``       labels of a label image in any space + its table
``mni``         a region defined in MNI152 space (built-in approximations of
                anterior cingulate, insula, ...; an MNI sphere; an MNI-space
                mask or atlas) brought to the reference by an affine
                registration of the MNI152 template to the reference volume
                (SimpleITK, once, before the run)
``localizer``   a threshold or the top k voxels of a t-map from a localizer
                run, inside a search mask; :func:`localizer_tmap` computes the
                t-map from a series and its events with rtnf's GLM
==============  ==============================================================

Regions that are empty, or whose larger part falls outside the field of view
(less than ``min_coverage``, default 0.5), raise :class:`RoiDefError`; its
message names the parameter to change. The command line prints that message
and exits with code 2.

Built-in MNI regions are *approximations*, not atlas labels: nilearn's package
data holds only the MNI152 templates and masks (no network, so no
Harvard-Oxford), so each region is an ellipsoid in MNI millimetres placed on
the structure from standard coordinates, intersected with the MNI152
grey-matter probability map (>= ``gm_threshold``). For a real atlas region,
pass an MNI-space atlas with ``rtnf roi mni --labels ... --table ... --name``.
"""

from __future__ import annotations

import argparse
import csv
import difflib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .volume import Grid, Volume

__all__ = [
    "RoiDefError",
    "RoiDefinition",
    "MniRegion",
    "MNI_REGIONS",
    "MniRegistration",
    "load_reference",
    "load_series",
    "mask_from_image",
    "sphere_roi",
    "atlas_roi",
    "read_label_table",
    "register_mni",
    "mni_roi",
    "mni_region_image",
    "localizer_tmap",
    "localizer_roi",
    "blocks_from_events",
    "save_mask",
    "plot_roi",
    "add_arguments",
    "run",
]

DEFAULT_MIN_COVERAGE = 0.5


class RoiDefError(ValueError):
    """A region that cannot be defined on the reference grid.

    Attributes
    ----------
    param : str
        The parameter (command-line option) the user should change.
    """

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"invalid value for '{param}': {message}")
        self.param = param


# --------------------------------------------------------------------------- result


@dataclass
class RoiDefinition:
    """A region on the reference grid.

    Attributes
    ----------
    name : str
        ROI name (the ``[rois.<name>]`` key it is meant for).
    kind : str
        ``mask``, ``sphere``, ``atlas``, ``mni`` or ``localizer``.
    mask : ndarray of bool, shape grid.shape
        The region's voxels.
    grid : Grid
        The reference grid.
    coverage : float
        Fraction (0-1) of the region as defined in its own space that lies
        inside the reference field of view.
    details : dict
        Parameters and by-products (registration, t range, ...), for the report.
    """

    name: str
    kind: str
    mask: np.ndarray
    grid: Grid
    coverage: float = 1.0
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def n_voxels(self) -> int:
        """Number of voxels in the region."""
        return int(np.count_nonzero(self.mask))

    @property
    def voxel_volume_mm3(self) -> float:
        """Volume of one voxel in cubic millimetres."""
        return float(abs(np.linalg.det(self.grid.affine[:3, :3])))

    @property
    def volume_mm3(self) -> float:
        """Volume of the region in cubic millimetres."""
        return self.n_voxels * self.voxel_volume_mm3

    @property
    def center_of_mass_mm(self) -> np.ndarray:
        """Centre of mass in scanner RAS millimetres, shape (3,)."""
        ijk = np.argwhere(self.mask).mean(axis=0)
        return self.grid.affine[:3, :3] @ ijk + self.grid.affine[:3, 3]

    def summary(self) -> str:
        """One line for the operator: voxels, volume, centre of mass, coverage."""
        com = ", ".join(f"{c:.1f}" for c in self.center_of_mass_mm)
        return (
            f"ROI '{self.name}' ({self.kind}): {self.n_voxels} voxels, {self.volume_mm3:.0f} mm^3, "
            f"centre of mass ({com}) mm [scanner RAS], {100 * self.coverage:.0f}% of the region inside the field of view"
        )


# --------------------------------------------------------------------------- geometry helpers


def _fov_text(grid: Grid) -> str:
    corners = np.array(np.meshgrid(*[[-0.5, n - 0.5] for n in grid.shape], indexing="ij")).reshape(3, -1)
    world = grid.affine[:3, :3] @ corners + grid.affine[:3, 3:4]
    lo, hi = world.min(axis=1), world.max(axis=1)
    return ", ".join(f"{ax} {a:.0f} to {b:.0f} mm" for ax, a, b in zip("xyz", lo, hi))


def _coverage(world_points: np.ndarray, grid: Grid) -> float:
    """Fraction of world points (n, 3) that fall inside the grid's field of view (voxel boxes)."""
    if len(world_points) == 0:
        return 0.0
    ijk = (np.linalg.inv(grid.affine) @ np.c_[world_points, np.ones(len(world_points))].T)[:3]
    inside = np.all((ijk >= -0.5) & (ijk <= np.asarray(grid.shape)[:, None] - 0.5), axis=0)
    return float(inside.mean())


def _voxel_world(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    ijk = np.argwhere(mask).astype(np.float64)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def _resample(data: np.ndarray, affine: np.ndarray, grid: Grid, order: int, world_to_src: np.ndarray | None = None) -> np.ndarray:
    """Sample ``data`` (voxel -> world ``affine``) at the grid's voxel centres (zero outside).

    ``world_to_src`` optionally maps grid world coordinates to the source's
    world first (a registration); default identity.
    """
    from scipy.ndimage import affine_transform

    m = np.linalg.inv(affine) @ (np.eye(4) if world_to_src is None else world_to_src) @ grid.affine
    src = np.asarray(data, dtype=np.float32 if order > 0 else data.dtype)
    # 'grid-constant': a grid voxel whose centre lies within half a source voxel of the
    # source's edge still takes the edge voxel's value (nearest) or a partial-volume
    # blend with the zero outside (linear); farther out it is 0.
    return affine_transform(src, m, output_shape=grid.shape, order=order, mode="grid-constant", cval=0,
                            prefilter=False)


def _check_not_empty(mask: np.ndarray, param: str, grid: Grid, what: str, allowed: str) -> None:
    if not mask.any():
        raise RoiDefError(param, f"{what} holds no voxel of the reference grid (field of view {_fov_text(grid)}). "
                                 f"Allowed: {allowed}.")


def _check_coverage(coverage: float, min_coverage: float, param: str, grid: Grid) -> None:
    if coverage < min_coverage:
        raise RoiDefError(
            param,
            f"only {100 * coverage:.0f}% of the region lies inside the field of view of the reference "
            f"({_fov_text(grid)}); at least {100 * min_coverage:.0f}% is required (--min-coverage). "
            "Allowed: a region inside the functional volume.",
        )


def _load_image(path: str | Path, param: str) -> tuple[np.ndarray, np.ndarray]:
    """3D data and affine of a NIfTI file (first volume of a 4D file)."""
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise RoiDefError(param, f"file not found: {path}")
    try:
        img = nib.load(path)
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel's errors vary by file type
        raise RoiDefError(param, f"cannot read {path} as NIfTI ({exc})") from None
    if data.ndim > 3:
        data = data.reshape(data.shape[:3] + (-1,))[..., 0]
    if data.ndim != 3:
        raise RoiDefError(param, f"{path} is not a 3D image (shape {data.shape})")
    return data, np.asarray(img.affine, dtype=np.float64)


# --------------------------------------------------------------------------- reading the reference


def _is_nifti(path: Path) -> bool:
    return path.name.endswith((".nii", ".nii.gz"))


def _dicom_groups(files: Sequence[Path]) -> dict[tuple[Any, int], list[Path]]:
    """DICOM files grouped into volumes: {(series_uid, volume_number): files}."""
    from .dicom import probe

    groups: dict[tuple[Any, int], list[Path]] = {}
    for f in files:
        info = probe(f)
        if not info.usable:
            continue
        if info.kind in ("mosaic", "enhanced", "parrec"):
            groups[(info.series_uid, len(groups) if info.volume_number is None else int(info.volume_number))] = [f]
        elif info.kind == "slice":
            key = (info.series_uid, int(info.volume_number or 0))
            groups.setdefault(key, []).append(f)
    return groups


def _folder_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def load_reference(path: str | Path, volume: int | None = None) -> Volume:
    """The participant's reference volume.

    Parameters
    ----------
    path : str or Path
        A NIfTI file (3D; or 4D, then volume ``volume``, default the first),
        a DICOM file (a slice file brings the other slices of its volume from
        the same folder), or a folder of DICOM files (the lowest volume
        number unless ``volume`` is given).
    volume : int, optional
        Volume number (DICOM) or index from 0 (4D NIfTI).

    Raises
    ------
    RoiDefError
        If the path does not hold a readable volume.
    """
    import nibabel as nib

    from .dicom import probe, read_volume

    path = Path(path)
    param = "--reference"
    if not path.exists():
        raise RoiDefError(param, f"not found: {path}")
    try:
        if path.is_file() and _is_nifti(path):
            img = nib.load(path)
            data = np.asarray(img.dataobj, dtype=np.float32)
            if data.ndim == 4:
                data = data[..., volume or 0]
            return Volume(data=data, affine=np.asarray(img.affine, dtype=np.float64), t_acquired=None, path=path)
        if path.is_file():
            info = probe(path)
            if info.kind == "slice" and (info.n_slices or 0) > 1:
                groups = _dicom_groups(_folder_files(path.parent))
                files = groups[(info.series_uid, int(info.volume_number or 0))]
            else:
                files = [path]
            return read_volume(files)
        groups = _dicom_groups(_folder_files(path))
        if not groups:
            raise RoiDefError(param, f"{path} holds no NIfTI or DICOM volume")
        keys = sorted(groups, key=lambda k: k[1])
        if volume is not None:
            keys = [k for k in keys if k[1] == volume]
            if not keys:
                raise RoiDefError("--volume", f"{volume} is not a volume number in {path}")
        return read_volume(groups[keys[0]])
    except RoiDefError:
        raise
    except Exception as exc:  # reader errors name the file
        raise RoiDefError(param, f"cannot read a volume from {path} ({exc})") from None


def load_series(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """All volumes of a run: a 4D NIfTI, a folder of 3D NIfTI files, or a folder of DICOM files.

    Returns
    -------
    data : ndarray, shape (nx, ny, nz, n_volumes), float32
        In volume-number order.
    affine : ndarray, shape (4, 4)
    """
    import nibabel as nib

    from .dicom import read_volume

    path = Path(path)
    param = "--series"
    if not path.exists():
        raise RoiDefError(param, f"not found: {path}")
    if path.is_file():
        img = nib.load(path)
        data = np.asarray(img.dataobj, dtype=np.float32)
        if data.ndim != 4:
            raise RoiDefError(param, f"{path} is not a 4D image (shape {data.shape})")
        return data, np.asarray(img.affine, dtype=np.float64)
    files = _folder_files(path)
    niftis = [f for f in files if _is_nifti(f)]
    if niftis:
        imgs = [nib.load(f) for f in niftis]
        return np.stack([np.asarray(i.dataobj, dtype=np.float32) for i in imgs], axis=-1), np.asarray(imgs[0].affine)
    groups = _dicom_groups(files)
    if not groups:
        raise RoiDefError(param, f"{path} holds no NIfTI or DICOM volume")
    vols = [read_volume(groups[k]) for k in sorted(groups, key=lambda k: k[1])]
    return np.stack([v.data for v in vols], axis=-1), vols[0].affine


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

    The voxels are those of :class:`rtnf.rois.SphereROI` (what the run will
    use for a ``center_mm``/``radius_mm`` config entry); coverage is the
    fraction of the sphere's volume inside the field of view.
    """
    from .rois import RoiError, SphereROI

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
    tab = read_label_table(table) if isinstance(table, (str, Path)) else dict(table)
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


# --------------------------------------------------------------------------- MNI regions


@dataclass(frozen=True)
class MniRegion:
    """An ellipsoid in MNI152 millimetres, intersected with grey matter.

    Attributes
    ----------
    center_mm : tuple of 3 float
        Centre (x, y, z) in MNI mm.
    semi_axes_mm : tuple of 3 float
        Half-lengths along x, y, z in mm.
    description : str
        What it approximates and from where.
    """

    center_mm: tuple[float, float, float]
    semi_axes_mm: tuple[float, float, float]
    description: str


#: Built-in regions: approximations placed on standard MNI coordinates, NOT atlas
#: labels (no atlas ships offline). Each is intersected with the MNI152 grey-matter
#: probability map. Check the PNG; for a real atlas use ``rtnf roi mni --labels``.
MNI_REGIONS: dict[str, MniRegion] = {
    "anterior_cingulate": MniRegion(
        (0.0, 30.0, 12.0), (10.0, 16.0, 14.0),
        "pregenual + dorsal anterior cingulate (BA 24/32), x -10..10, y 14..46, z -2..26"),
    "insula_left": MniRegion(
        (-38.0, 0.0, 2.0), (6.0, 22.0, 14.0), "left insular cortex, x -44..-32, y -22..22, z -12..16"),
    "insula_right": MniRegion(
        (38.0, 0.0, 2.0), (6.0, 22.0, 14.0), "right insular cortex, x 32..44, y -22..22, z -12..16"),
    "amygdala_left": MniRegion((-22.0, -4.0, -18.0), (7.0, 7.0, 7.0), "left amygdala, sphere of 7 mm"),
    "amygdala_right": MniRegion((22.0, -4.0, -18.0), (7.0, 7.0, 7.0), "right amygdala, sphere of 7 mm"),
    "motor_hand_left": MniRegion((-38.0, -22.0, 56.0), (8.0, 8.0, 8.0), "left M1 hand knob, sphere of 8 mm"),
    "motor_hand_right": MniRegion((38.0, -22.0, 56.0), (8.0, 8.0, 8.0), "right M1 hand knob, sphere of 8 mm"),
    "visual_cortex": MniRegion((0.0, -88.0, 2.0), (14.0, 12.0, 14.0), "calcarine / occipital pole (V1-V2)"),
}


def _mni_grid_world(img: Any) -> np.ndarray:
    ijk = np.indices(img.shape[:3], dtype=np.float64).reshape(3, -1)
    return (img.affine[:3, :3] @ ijk + img.affine[:3, 3:4]).T.reshape(img.shape[:3] + (3,))


def mni_region_image(
    region: str | None = None, *, center_mm: Sequence[float] | None = None, radius_mm: float | None = None,
    gm_threshold: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """A region as a binary image on nilearn's 2 mm MNI152 grid.

    Either a built-in ``region`` (:data:`MNI_REGIONS`) or a sphere
    (``center_mm``, ``radius_mm`` in MNI mm); voxels with grey-matter
    probability below ``gm_threshold`` are removed (0 keeps all).

    Returns
    -------
    data : ndarray of float32 (0 or 1), affine : ndarray (4, 4)
    """
    from nilearn import datasets

    gm = datasets.load_mni152_gm_template(resolution=2)
    world = _mni_grid_world(gm)
    if region is not None:
        if region not in MNI_REGIONS:
            raise RoiDefError("--region", f"{region!r}. Allowed: {', '.join(MNI_REGIONS)}")
        r = MNI_REGIONS[region]
        inside = np.sum(((world - np.asarray(r.center_mm)) / np.asarray(r.semi_axes_mm)) ** 2, axis=-1) <= 1.0
    else:
        if center_mm is None or radius_mm is None or not radius_mm > 0:
            raise RoiDefError("--center-mm", "give --region, or --center-mm X Y Z with --radius-mm R > 0 (MNI mm)")
        inside = np.sum((world - np.asarray(center_mm, dtype=np.float64)) ** 2, axis=-1) <= radius_mm**2
    if not inside.any():
        raise RoiDefError("--center-mm", f"the sphere at {list(center_mm)} mm lies outside the MNI152 template's "
                                         "grid. Allowed: MNI coordinates inside the brain")
    if gm_threshold > 0:
        inside &= np.asarray(gm.dataobj, dtype=np.float32) >= gm_threshold
    if not inside.any():
        raise RoiDefError("--gm-threshold", f"{gm_threshold:g} leaves no grey-matter voxel in the region. "
                                            "Allowed: a lower threshold (0 keeps every voxel)")
    return inside.astype(np.float32), np.asarray(gm.affine, dtype=np.float64)


#: Registration settings of :func:`register_mni` (reported with every result).
REGISTRATION_PARAMETERS: dict[str, Any] = {
    "library": "SimpleITK (ITK ImageRegistrationMethod)",
    "moving": "nilearn MNI152 T1 template (2009c, skull-stripped), 2 mm",
    "fixed": "reference volume (EPI), skull-stripped by nilearn's compute_epi_mask dilated by 1 voxel",
    "metric": "Mattes mutual information, 32 bins, 20% random samples (seeded)",
    "sampling": 0.2,
    "initialisation": "centres of intensity mass (CenteredTransformInitializer, MOMENTS)",
    "stages": [
        {"transform": "rigid (Euler3D, 6 dof)", "shrink": [4, 2], "smoothing_mm": [6.0, 3.0], "iterations": 200},
        {"transform": "affine (12 dof)", "shrink": [2, 1], "smoothing_mm": [3.0, 0.0], "iterations": 200},
    ],
    "optimizer": "regular step gradient descent, scales from physical shift, learning rate 1, min step 1e-4",
    "interpolator": "linear",
}


@dataclass
class MniRegistration:
    """An affine map between the reference's scanner RAS mm and MNI152 mm.

    Attributes
    ----------
    ref_to_mni : ndarray (4, 4)
        Maps a point of the reference (scanner RAS mm) to MNI mm.
    metric : float
        Final Mattes mutual information (negative; lower is better).
    seconds : float
        Wall time of the registration.
    parameters : dict
        The settings used (:data:`REGISTRATION_PARAMETERS`).
    """

    ref_to_mni: np.ndarray
    metric: float = float("nan")
    seconds: float = float("nan")
    parameters: dict[str, Any] = field(default_factory=lambda: dict(REGISTRATION_PARAMETERS))

    def save(self, path: str | Path) -> None:
        """Write as JSON (the matrix and how it was obtained)."""
        Path(path).write_text(json.dumps({
            "ref_to_mni": np.asarray(self.ref_to_mni).tolist(), "metric": self.metric,
            "seconds": self.seconds, "parameters": self.parameters,
            "description": "4x4 affine: reference scanner RAS mm -> MNI152 mm",
        }, indent=2))

    @classmethod
    def load(cls, path: str | Path) -> "MniRegistration":
        """Read a registration written by :meth:`save`."""
        try:
            d = json.loads(Path(path).read_text())
            m = np.asarray(d["ref_to_mni"], dtype=np.float64)
            assert m.shape == (4, 4)
        except Exception as exc:  # any malformed file gets the same message
            raise RoiDefError("--transform", f"{path} is not a registration written by rtnf roi mni ({exc})") from None
        return cls(m, d.get("metric", float("nan")), d.get("seconds", float("nan")), d.get("parameters", {}))


_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _to_sitk(data: np.ndarray, affine: np.ndarray) -> Any:
    """A SimpleITK image (LPS physical space) from a RAS voxel -> mm affine."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(data, dtype=np.float32).transpose(2, 1, 0)))
    lin = (_LPS @ affine)[:3, :3]
    spacing = np.linalg.norm(lin, axis=0)
    direction = lin / spacing
    # ITK wants orthonormal direction cosines: take the nearest rotation (scanner
    # affines are orthogonal to rounding; a sheared one is reported by the caller).
    u, _, vt = np.linalg.svd(direction)
    img.SetSpacing([float(s) for s in spacing])
    img.SetDirection([float(x) for x in (u @ vt).ravel()])
    img.SetOrigin([float(x) for x in (_LPS @ affine)[:3, 3]])
    return img


def _sitk_matrix(tx: Any) -> np.ndarray:
    """4x4 matrix (LPS) of a SimpleITK matrix-offset transform: x -> A (x - c) + c + t."""
    a = np.asarray(tx.GetMatrix(), dtype=np.float64).reshape(3, 3)
    c = np.asarray(tx.GetCenter(), dtype=np.float64)
    t = np.asarray(tx.GetTranslation(), dtype=np.float64)
    m = np.eye(4)
    m[:3, :3] = a
    m[:3, 3] = c + t - a @ c
    return m


def register_mni(reference: Volume | tuple[np.ndarray, np.ndarray], *, seed: int = 0, threads: int = 2) -> MniRegistration:
    """Register the MNI152 template to the reference volume (affine, once, before the run).

    Parameters
    ----------
    reference : Volume or (data, affine)
        The reference EPI volume.
    seed : int
        Seed of the metric's random sampling (the result is reproducible).
    threads : int
        ITK threads (the figures in the docs are for 2).

    Returns
    -------
    MniRegistration
        With ``ref_to_mni``: reference scanner RAS mm -> MNI mm. The settings
        are :data:`REGISTRATION_PARAMETERS`.
    """
    try:
        import SimpleITK as sitk
    except ImportError:
        raise RoiDefError("kind", "rtnf roi mni needs SimpleITK (pip install SimpleITK)") from None
    from nilearn import datasets

    t0 = time.perf_counter()
    data, affine = (reference.data, reference.affine) if isinstance(reference, Volume) else reference
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(threads))
    # The template is skull-stripped: strip the EPI too (nilearn's EPI mask,
    # dilated by one voxel), or mutual information fits the brain to the scalp.
    from scipy.ndimage import binary_dilation

    data = np.asarray(data, dtype=np.float32)
    head = binary_dilation(epi_mask(data), iterations=1)
    fixed = _to_sitk(np.where(head, data, 0.0), affine)
    tmpl = datasets.load_mni152_template(resolution=2)
    moving = _to_sitk(np.asarray(tmpl.dataobj, dtype=np.float32), np.asarray(tmpl.affine))

    def method(shrink: list[int], smooth: list[float]) -> Any:
        sampling = float(REGISTRATION_PARAMETERS["sampling"])
        reg = sitk.ImageRegistrationMethod()
        reg.SetNumberOfThreads(int(threads))
        reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
        if sampling < 1.0:
            reg.SetMetricSamplingStrategy(reg.RANDOM)
            reg.SetMetricSamplingPercentage(sampling, seed)
        else:
            reg.SetMetricSamplingStrategy(reg.NONE)
        reg.SetInterpolator(sitk.sitkLinear)
        reg.SetOptimizerAsRegularStepGradientDescent(
            learningRate=1.0, minStep=1e-4, numberOfIterations=200, gradientMagnitudeTolerance=1e-8)
        reg.SetOptimizerScalesFromPhysicalShift()
        reg.SetShrinkFactorsPerLevel(shrink)
        reg.SetSmoothingSigmasPerLevel(smooth)
        reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
        return reg

    init = sitk.CenteredTransformInitializer(
        fixed, moving, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS)
    rigid_stage, affine_stage = REGISTRATION_PARAMETERS["stages"]
    reg = method(rigid_stage["shrink"], rigid_stage["smoothing_mm"])
    reg.SetInitialTransform(init, inPlace=True)
    reg.Execute(fixed, moving)
    aff = sitk.AffineTransform(3)
    aff.SetCenter(init.GetCenter())
    aff.SetMatrix(init.GetMatrix())
    aff.SetTranslation(init.GetTranslation())
    reg = method(affine_stage["shrink"], affine_stage["smoothing_mm"])
    reg.SetInitialTransform(aff, inPlace=True)
    reg.Execute(fixed, moving)
    metric = float(reg.GetMetricValue())
    ref_to_mni = _LPS @ _sitk_matrix(aff) @ _LPS
    scales = np.linalg.svd(ref_to_mni[:3, :3], compute_uv=False)
    if scales.max() > 1.4 or scales.min() < 0.7:
        raise RoiDefError(
            "--reference",
            f"the registration of the MNI152 template to the reference failed (scale factors "
            f"{', '.join(f'{x:.2f}' for x in scales)}, expected 0.7-1.4 for a human head). Allowed: a reference "
            "EPI of the whole head or most of it; else define the ROI with 'sphere', 'mask' or 'localizer'",
        )
    return MniRegistration(ref_to_mni, metric, time.perf_counter() - t0, dict(REGISTRATION_PARAMETERS))


def mni_roi(
    grid: Grid, registration: MniRegistration | np.ndarray, *, region: str | None = None,
    center_mm: Sequence[float] | None = None, radius_mm: float | None = None, mask: str | Path | None = None,
    labels: str | Path | None = None, table: str | Path | None = None, names: Sequence[str] | None = None,
    gm_threshold: float = 0.5, threshold: float = 0.5, name: str = "roi",
    min_coverage: float = DEFAULT_MIN_COVERAGE,
) -> RoiDefinition:
    """A region defined in MNI space, resampled to the reference grid through a registration.

    The region is one of: a built-in ``region`` (:data:`MNI_REGIONS`), an MNI
    sphere (``center_mm``, ``radius_mm``; both intersected with grey matter
    >= ``gm_threshold``), an MNI-space ``mask`` (kept where > ``threshold``), or
    ``names`` of an MNI-space ``labels`` image with its ``table``.

    Binary regions are interpolated linearly onto the reference grid and kept
    where the interpolated fraction is >= 0.5 (partial-volume majority).
    """
    m = registration.ref_to_mni if isinstance(registration, MniRegistration) else np.asarray(registration)
    if labels is not None:
        if table is None or not names:
            raise RoiDefError("--table", "an atlas needs --labels, --table and --name")
        out = atlas_roi(labels, table, names, grid, name=name, min_coverage=min_coverage, world_to_atlas=m)
        out.kind = "mni"
        out.details["space"] = "MNI152"
        return out
    if mask is not None:
        data, aff = _load_image(mask, "--mask")
        src = (np.asarray(data, dtype=np.float32) > threshold).astype(np.float32)
        what, param = f"mask {mask}", "--mask"
    else:
        src, aff = mni_region_image(region, center_mm=center_mm, radius_mm=radius_mm, gm_threshold=gm_threshold)
        what = f"region {region!r}" if region else f"MNI sphere at {list(center_mm)} r={radius_mm} mm"
        param = "--region" if region else "--center-mm"
    inv = np.linalg.inv(m)
    world = _voxel_world(src > 0, aff)
    coverage = _coverage(world @ inv[:3, :3].T + inv[:3, 3], grid)
    roi = _resample(src, aff, grid, order=1, world_to_src=m) >= 0.5
    _check_not_empty(roi, param, grid, f"the {what} (after registration)", "a region inside the functional volume")
    _check_coverage(coverage, min_coverage, param, grid)
    details = {"space": "MNI152", "region": region, "gm_threshold": gm_threshold, "ref_to_mni": m.tolist()}
    if region:
        details["definition"] = MNI_REGIONS[region].description
    return RoiDefinition(name, "mni", roi, grid, coverage, details)


# --------------------------------------------------------------------------- functional localizer


def blocks_from_events(
    events: str | Path, *, trial_types: Sequence[str] | None = None, merge_gap_s: float = 4.0,
    start_s: float = 0.0, stop_s: float | None = None,
) -> list[tuple[float, float]]:
    """Blocks (onset_s, duration_s) from a BIDS events file.

    Events of the chosen ``trial_types`` (all by default) closer than
    ``merge_gap_s`` are merged into one block; blocks are clipped to
    ``[start_s, stop_s)`` and returned relative to ``start_s``.
    """
    import pandas as pd

    ev = pd.read_csv(events, sep="\t")
    if trial_types is not None and "trial_type" in ev:
        ev = ev[ev["trial_type"].isin(list(trial_types))]
    spans = sorted(zip(ev["onset"].astype(float), (ev["onset"] + ev["duration"]).astype(float)))
    merged: list[list[float]] = []
    for a, b in spans:
        if merged and a - merged[-1][1] <= merge_gap_s:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    stop = np.inf if stop_s is None else stop_s
    out = []
    for a, b in merged:
        a, b = max(a, start_s), min(b, stop)
        if b > a:
            out.append((a - start_s, b - a))
    return out


def localizer_tmap(
    data: np.ndarray, tr_s: float, blocks: Sequence[tuple[float, float]], *, hrf: str = "spm",
    drift_cutoff_s: float = 128.0, mask: np.ndarray | None = None,
) -> tuple[np.ndarray, Any]:
    """t-map of "task blocks vs rest" from a localizer series, with rtnf's GLM.

    The design is :func:`rtnf.design.make_design` (blocks convolved with the
    HRF, constant, cosine drifts up to ``drift_cutoff_s``), fitted voxel-wise
    by :class:`rtnf.glm.IncrementalGLM`, volume by volume as the run would.

    Parameters
    ----------
    data : ndarray, shape (nx, ny, nz, n_volumes)
        The series (time zero = first volume given).
    tr_s : float
        Repetition time in seconds.
    blocks : sequence of (onset_s, duration_s)
        Task blocks (see :func:`blocks_from_events`).
    mask : ndarray of bool, optional
        Voxels to fit (default: nilearn's EPI brain mask of the mean image).

    Returns
    -------
    t : ndarray, shape (nx, ny, nz)
        t of the task regressor (NaN outside the mask).
    design : rtnf.design.Design
    """
    from .design import make_design
    from .glm import IncrementalGLM
    from .protocol import Block, Protocol

    data = np.asarray(data)
    n = data.shape[-1]
    protocol = Protocol(
        blocks=tuple(Block("task", float(a), float(d), f"blocks[{i}]") for i, (a, d) in enumerate(blocks)),
        baseline="rest", conditions=("rest", "task"), tr_s=float(tr_s), n_volumes=n)
    design = make_design(protocol, hrf=hrf, drift_cutoff_s=drift_cutoff_s)
    if mask is None:
        mask = epi_mask(data.mean(axis=-1))
    y = data[mask]  # (V, n)
    glm = IncrementalGLM(design.n_regressors, int(mask.sum()))
    for i in range(n):
        glm.update(design.matrix[i], y[:, i])
    c = np.zeros(design.n_regressors)
    c[design.names.index("task")] = 1.0
    _, t = glm.contrast(c)
    out = np.full(data.shape[:3], np.nan, dtype=np.float32)
    out[mask] = t
    return out, design


def epi_mask(mean: np.ndarray) -> np.ndarray:
    """Brain mask of a mean EPI (nilearn's ``compute_epi_mask``), boolean."""
    import nibabel as nib
    from nilearn.masking import compute_epi_mask

    return np.asarray(compute_epi_mask(nib.Nifti1Image(np.asarray(mean, dtype=np.float32), np.eye(4))).dataobj) > 0


def localizer_roi(
    tmap: str | Path | tuple[np.ndarray, np.ndarray], grid: Grid, *, threshold: float | None = None,
    top_k: int | None = None, search_mask: str | Path | tuple[np.ndarray, np.ndarray] | None = None,
    name: str = "roi",
) -> RoiDefinition:
    """Voxels of a localizer t-map: those ``>= threshold``, or the ``top_k`` largest, inside a search mask.

    Parameters
    ----------
    tmap : path or (data, affine)
        t-map in any space; resampled (linear) to the grid unless it is on it already.
    threshold, top_k
        Exactly one of them.
    search_mask : path or (data, affine), optional
        Only voxels inside (> 0.5 after nearest resampling) are candidates.
    """
    if (threshold is None) == (top_k is None):
        raise RoiDefError("--threshold", "give exactly one of --threshold T and --top-k K")
    data, affine = _load_image(tmap, "--tmap") if isinstance(tmap, (str, Path)) else tmap
    data = np.asarray(data, dtype=np.float32)
    if data.shape[:3] == grid.shape and np.allclose(affine, grid.affine, atol=1e-3):
        t = data.copy()
    else:
        finite = np.isfinite(data)
        t = _resample(np.where(finite, data, 0), affine, grid, order=1)
        t[_resample(finite.astype(np.float32), affine, grid, order=1) < 0.999] = np.nan
    candidates = np.isfinite(t)
    if search_mask is not None:
        sm = mask_from_image(search_mask, grid, name="search", min_coverage=0.0).mask
        candidates &= sm
    if not candidates.any():
        raise RoiDefError("--search-mask", "no voxel of the t-map lies inside the search mask. "
                                           "Allowed: a search mask that overlaps the t-map")
    tmax = float(np.nanmax(np.where(candidates, t, np.nan)))
    if top_k is not None:
        if top_k < 1:
            raise RoiDefError("--top-k", f"{top_k}. Allowed: an integer >= 1")
        flat = np.flatnonzero(candidates)
        if top_k > flat.size:
            raise RoiDefError("--top-k", f"{top_k} but the search mask holds only {flat.size} voxels with a t value")
        order = np.argsort(-t.reshape(-1)[flat], kind="stable")[:top_k]
        chosen = flat[order]
        if t.reshape(-1)[chosen].min() <= 0:
            raise RoiDefError("--top-k", f"{top_k} would include voxels with t <= 0 (only "
                                         f"{int(np.sum(t[candidates] > 0))} positive). Allowed: a smaller k")
        mask = np.zeros(t.size, dtype=bool)
        mask[chosen] = True
        mask = mask.reshape(grid.shape)
    else:
        mask = candidates & (t >= threshold)
        if not mask.any():
            raise RoiDefError("--threshold", f"{threshold:g} keeps no voxel (largest t in the search mask: "
                                             f"{tmax:.2f}). Allowed: a threshold below {tmax:.2f}")
    return RoiDefinition(name, "localizer", mask, grid, 1.0, {
        "threshold": threshold, "top_k": top_k, "t_min_in_roi": float(t[mask].min()), "t_max": tmax})


# --------------------------------------------------------------------------- outputs


def save_mask(roi: RoiDefinition, path: str | Path) -> Path:
    """Write the mask as a uint8 NIfTI on the reference grid (1 = ROI)."""
    import nibabel as nib

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(roi.mask.astype(np.uint8), roi.grid.affine)
    img.header.set_xyzt_units("mm")
    img.header["descrip"] = f"rtnf roi {roi.kind} {roi.name}"[:79].encode()
    nib.save(img, path)
    return path


def plot_roi(roi: RoiDefinition, reference: np.ndarray, path: str | Path, title: str | None = None) -> Path:
    """PNG of the ROI's outline (and a translucent fill) over the reference volume.

    Top row: three orthogonal slices through the ROI's centre of mass; bottom
    row: axial slices across the ROI's extent. The image is reoriented to the
    closest RAS axes (left of the picture = participant's left... radiological
    conventions differ: the 'L' and 'R' marks say which side is which).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import nibabel as nib

    ref_img = nib.as_closest_canonical(nib.Nifti1Image(np.asarray(reference, dtype=np.float32), roi.grid.affine))
    m_img = nib.as_closest_canonical(nib.Nifti1Image(roi.mask.astype(np.uint8), roi.grid.affine))
    ref, mask = np.asarray(ref_img.dataobj), np.asarray(m_img.dataobj) > 0
    zooms = np.asarray(ref_img.header.get_zooms()[:3], dtype=float)
    vmax = float(np.percentile(ref[ref > 0], 99.5)) if np.any(ref > 0) else 1.0
    ci, cj, ck = (int(round(c)) for c in np.argwhere(mask).mean(axis=0))
    ks = np.unique(np.argwhere(mask)[:, 2])
    ks = ks[np.linspace(0, len(ks) - 1, min(6, len(ks))).round().astype(int)]

    fig = plt.figure(figsize=(12, 7.2), facecolor="black")
    views = [("sagittal", ref[ci, :, :].T, mask[ci, :, :].T, zooms[2] / zooms[1], ("P", "A")),
             ("coronal", ref[:, cj, :].T, mask[:, cj, :].T, zooms[2] / zooms[0], ("L", "R")),
             ("axial", ref[:, :, ck].T, mask[:, :, ck].T, zooms[1] / zooms[0], ("L", "R"))]
    world = roi.center_of_mass_mm

    def draw(ax: Any, img: np.ndarray, msk: np.ndarray, aspect: float, label: str, sides: tuple[str, str]) -> None:
        ax.imshow(img, cmap="gray", origin="lower", vmin=0, vmax=vmax, aspect=aspect, interpolation="nearest")
        if msk.any():
            ax.imshow(np.ma.masked_where(~msk, msk), cmap="autumn", origin="lower", alpha=0.35, aspect=aspect,
                      interpolation="nearest")
            ax.contour(msk.astype(float), levels=[0.5], colors="red", linewidths=1.2, origin="lower")
        ax.set_title(label, color="white", fontsize=9)
        ax.text(0.01, 0.5, sides[0], color="yellow", transform=ax.transAxes, fontsize=9, va="center")
        ax.text(0.97, 0.5, sides[1], color="yellow", transform=ax.transAxes, fontsize=9, va="center")
        ax.axis("off")

    for n, (label, img, msk, aspect, sides) in enumerate(views):
        draw(fig.add_subplot(2, 6, (2 * n + 1, 2 * n + 2)), img, msk, aspect, label, sides)
    for n, k in enumerate(ks):
        draw(fig.add_subplot(2, 6, 7 + n), ref[:, :, k].T, mask[:, :, k].T, zooms[1] / zooms[0],
             f"axial slice {k}", ("L", "R"))
    com = ", ".join(f"{c:.0f}" for c in world)
    fig.suptitle(title or f"{roi.name} ({roi.kind}): {roi.n_voxels} voxels, {roi.volume_mm3:.0f} mm3, "
                          f"centre ({com}) mm", color="white", fontsize=11)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80, facecolor="black")
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- command line


KINDS = ("mask", "sphere", "atlas", "mni", "localizer")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reference", "-r", required=True, type=Path,
                   help="participant's reference volume: NIfTI, DICOM file, or DICOM folder (first volume)")
    p.add_argument("--volume", type=int, default=None,
                   help="volume number in a DICOM folder (index from 0 in a 4D NIfTI); default the first")
    p.add_argument("--out", "-o", required=True, type=Path, help="output mask (.nii.gz) on the reference grid")
    p.add_argument("--png", type=Path, default=None, help="check image (default: the output's name with .png)")
    p.add_argument("--roi-name", dest="roi_name", default=None, help="ROI name for the config (default: from --out)")
    p.add_argument("--min-coverage", type=float, default=DEFAULT_MIN_COVERAGE,
                   help="smallest fraction of the region inside the field of view (default 0.5)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Sub-commands ``mask``, ``sphere``, ``atlas``, ``mni``, ``localizer`` of ``rtnf roi``."""
    sub = parser.add_subparsers(dest="roi_kind", required=True)

    p = sub.add_parser("mask", help="a NIfTI mask or probability map in any space, resampled to the reference")
    p.add_argument("image", type=Path, help="NIfTI image with an affine")
    p.add_argument("--threshold", type=float, default=0.5, help="keep voxels above this value (default 0.5)")
    p.add_argument("--interpolation", choices=["nearest", "linear"], default="nearest",
                   help="nearest (binary masks) or linear (probability maps; default nearest)")
    _common(p)

    p = sub.add_parser("sphere", help="a sphere at scanner RAS coordinates")
    p.add_argument("--center-mm", type=float, nargs=3, required=True, metavar=("X", "Y", "Z"))
    p.add_argument("--radius-mm", type=float, required=True)
    _common(p)

    p = sub.add_parser("atlas", help="labels of a label image (same world space as the reference) + table")
    p.add_argument("--labels", type=Path, required=True, help="integer label image (NIfTI)")
    p.add_argument("--table", type=Path, required=True, help="TSV/CSV of index,name")
    p.add_argument("--name", dest="label_names", action="append", required=True, metavar="NAME",
                   help="label name from the table (repeat for a union)")
    _common(p)

    p = sub.add_parser("mni", help="a region in MNI space, via an affine registration of MNI152 to the reference")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--region", choices=sorted(MNI_REGIONS), help="built-in approximate region (see docs)")
    g.add_argument("--center-mm", type=float, nargs=3, metavar=("X", "Y", "Z"), help="MNI sphere centre (with --radius-mm)")
    g.add_argument("--mask", type=Path, help="a mask in MNI space")
    g.add_argument("--labels", type=Path, help="an MNI-space label image (with --table and --name)")
    p.add_argument("--radius-mm", type=float, default=None)
    p.add_argument("--table", type=Path, default=None)
    p.add_argument("--name", dest="label_names", action="append", metavar="NAME", help="label name (with --labels)")
    p.add_argument("--gm-threshold", type=float, default=0.5,
                   help="keep MNI voxels with grey-matter probability >= this (region/sphere; 0 = all; default 0.5)")
    p.add_argument("--transform", type=Path, default=None,
                   help="reuse a registration JSON written earlier (default: register now and write <out>_mni.json)")
    _common(p)

    p = sub.add_parser("localizer", help="threshold or top-k voxels of a localizer t-map, in a search mask")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--tmap", type=Path, help="t-map (NIfTI, any space)")
    src.add_argument("--series", type=Path, help="compute the t-map from this localizer series (4D NIfTI or folder)")
    p.add_argument("--events", type=Path, help="BIDS events.tsv of the series (with --series)")
    p.add_argument("--tr-s", type=float, help="TR of the series in seconds (with --series)")
    p.add_argument("--volumes", default=None, help="volumes to use, 1-based inclusive, e.g. 1-39 (default all)")
    p.add_argument("--drift-cutoff-s", type=float, default=128.0)
    sel = p.add_mutually_exclusive_group(required=True)
    sel.add_argument("--threshold", type=float, help="keep voxels with t >= T")
    sel.add_argument("--top-k", type=int, help="keep the K voxels with the largest t")
    p.add_argument("--search-mask", type=Path, default=None, help="NIfTI mask in any space (default: whole t-map)")
    _common(p)


def _build(args: argparse.Namespace, ref: Volume) -> RoiDefinition:
    grid = ref.grid
    name = args.roi_name
    kind = args.roi_kind
    cov = args.min_coverage
    if kind == "mask":
        return mask_from_image(args.image, grid, name=name, threshold=args.threshold,
                               interpolation=args.interpolation, min_coverage=cov)
    if kind == "sphere":
        return sphere_roi(grid, args.center_mm, args.radius_mm, name=name, min_coverage=cov)
    if kind == "atlas":
        return atlas_roi(args.labels, args.table, args.label_names, grid, name=name, min_coverage=cov)
    if kind == "mni":
        if args.center_mm is not None and args.radius_mm is None:
            raise RoiDefError("--radius-mm", "missing: an MNI sphere needs --center-mm X Y Z and --radius-mm R")
        if args.labels is not None and (args.table is None or not args.label_names):
            raise RoiDefError("--table", "an MNI atlas needs --labels, --table and --name")
        if args.transform is not None:
            reg = MniRegistration.load(args.transform)
            print(f"registration: read {args.transform}")
        else:
            reg = register_mni(ref)
            tpath = args.out.with_name(_stem(args.out) + "_mni.json")
            tpath.parent.mkdir(parents=True, exist_ok=True)
            reg.save(tpath)
            print(f"registration: MNI152 -> reference, affine, {reg.seconds:.1f} s, Mattes MI {reg.metric:.3f}; "
                  f"wrote {tpath} (reuse with --transform)")
        return mni_roi(grid, reg, region=args.region, center_mm=args.center_mm, radius_mm=args.radius_mm,
                       mask=args.mask, labels=args.labels, table=args.table, names=args.label_names,
                       gm_threshold=args.gm_threshold, name=name, min_coverage=cov)
    # localizer
    if args.tmap is not None:
        return localizer_roi(args.tmap, grid, threshold=args.threshold, top_k=args.top_k,
                             search_mask=args.search_mask, name=name)
    if args.events is None or args.tr_s is None:
        raise RoiDefError("--events", "computing a t-map from --series needs --events and --tr-s")
    data, affine = load_series(args.series)
    first, last = 1, data.shape[-1]
    if args.volumes:
        try:
            a, _, b = args.volumes.partition("-")
            first, last = int(a), int(b or a)
            assert 1 <= first <= last <= data.shape[-1]
        except (ValueError, AssertionError):
            raise RoiDefError("--volumes", f"{args.volumes!r}. Allowed: FIRST-LAST within 1-{data.shape[-1]}") from None
    data = data[..., first - 1:last]
    blocks = blocks_from_events(args.events, start_s=(first - 1) * args.tr_s, stop_s=last * args.tr_s)
    if not blocks:
        raise RoiDefError("--events", f"no event falls within volumes {first}-{last}")
    t, _ = localizer_tmap(data, args.tr_s, blocks, drift_cutoff_s=args.drift_cutoff_s)
    import nibabel as nib

    tpath = args.out.with_name(_stem(args.out) + "_tmap.nii.gz")
    tpath.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(t, affine), tpath)
    print(f"t-map of volumes {first}-{last} ({len(blocks)} blocks vs rest): max t {np.nanmax(t):.1f}; wrote {tpath}")
    return localizer_roi((t, affine), grid, threshold=args.threshold, top_k=args.top_k,
                         search_mask=args.search_mask, name=name)


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def run(args: argparse.Namespace) -> int:
    """Run ``rtnf roi <kind>``; 0 on success, 2 (with one message, no traceback) on a bad input."""
    if args.roi_name is None:
        args.roi_name = _stem(args.out)
    try:
        ref = load_reference(args.reference, args.volume)
        roi = _build(args, ref)
        out = args.out if _is_nifti(args.out) else args.out.with_name(args.out.name + ".nii.gz")
        save_mask(roi, out)
        png = plot_roi(roi, ref.data, args.png or out.with_name(_stem(out) + ".png"))
    except RoiDefError as exc:
        print(f"rtnf roi {args.roi_kind}: {exc}", file=sys.stderr)
        return 2
    print(roi.summary())
    print(f"wrote {out} and {png}")
    print(f'config: [rois.{roi.name}]\nmask = "{out}"')
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point (``python -m rtnf.roidef ...``) until ``rtnf roi`` is wired."""
    parser = argparse.ArgumentParser(prog="rtnf roi", description="Define an ROI on the reference volume.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
