"""MNI-space label atlases (Harvard-Oxford, HCP multi-modal parcellation): finding them, naming labels, selecting regions.

An atlas comes from ``--atlas-dir`` (offline: the files named as neuroparc ships them, see
:data:`ATLAS_FILES`), from nilearn's fetcher (Harvard-Oxford; downloaded once into nilearn's
cache), or from a local label image and its ``index,name`` table. Label names are matched
without regard to case or punctuation (``Cingulate Gyrus, anterior division`` =
``cingulate_gyrus_anterior_division``); a leading hemisphere prefix (``L_``, ``R_``, ``Left_``,
``Right_``) selects that hemisphere of a bilateral label (the HCP atlas here and Harvard-Oxford's
cortical atlas label both hemispheres with one index; MNI x < 0 is left).
"""

from __future__ import annotations

import difflib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ._common import RoiDefError, _load_image
from .regions import read_label_table

#: Files of each atlas in an ``--atlas-dir`` (neuroparc's names; MNI152 NLin6, 2 mm), in search order.
ATLAS_FILES: dict[str, list[tuple[str, str]]] = {
    "harvard-oxford": [
        ("HarvardOxfordcort-maxprob-thr25_space-MNI152NLin6_res-2x2x2.nii.gz", "HarvardOxfordcort-maxprob.csv"),
        ("HarvardOxfordsub-maxprob-thr25_space-MNI152NLin6_res-2x2x2.nii.gz", "HarvardOxfordsub-maxprob.csv"),
    ],
    "hcp": [("Glasser_space-MNI152NLin6_res-2x2x2.nii.gz", "Glasser.csv")],
}

#: nilearn ``fetch_atlas_harvard_oxford`` names of the same maps.
NILEARN_HARVARD_OXFORD = ("cort-maxprob-thr25-2mm", "sub-maxprob-thr25-2mm")

HEMISPHERES = ("left", "right", "both")
_PREFIXES = {"l": "left", "left": "left", "lh": "left", "r": "right", "right": "right", "rh": "right"}
#: A side prefix as written in a table and its other side, same spelling style.
_OTHER_SIDE = {"l": "r", "r": "l", "lh": "rh", "rh": "lh", "left": "right", "right": "left"}
#: A lateralised label whose voxels' mean MNI x is nearer the midline than this (mm) is not checked.
_SIDE_MARGIN_MM = 4.0

logger = logging.getLogger(__name__)


def normalise(name: str) -> str:
    """A label name for matching: lower case, runs of other characters as one ``_``."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


@dataclass
class LabelImage:
    """One label image of an atlas and its table.

    Attributes
    ----------
    data : ndarray of int32
        Label indices on the atlas grid.
    affine : ndarray (4, 4)
        Voxel -> MNI mm.
    table : dict
        ``{name: index}``.
    source : str
        Where it came from (file, or nilearn).
    """

    data: np.ndarray
    affine: np.ndarray
    table: dict[str, int]
    source: str


def _swap_side(name: str) -> str:
    """``name`` with its side prefix turned to the other side, spelled alike (``Right_X`` -> ``Left_X``)."""
    # leading punctuation is kept (``_Left_X``): normalise() drops it, so the prefix is still a side
    match = re.match(r"^([^A-Za-z0-9]*)([A-Za-z]+)(?=[^A-Za-z0-9])", name)
    lead, word = (match.group(1), match.group(2)) if match else ("", "")
    other = _OTHER_SIDE.get(word.lower())
    if other is None:
        return name
    other = other.upper() if word.isupper() else other.capitalize() if word[:1].isupper() else other
    return lead + other + name[len(lead) + len(word):]


def _mean_x(img: LabelImage) -> dict[int, float]:
    """Mean world x (mm) of the voxels of each label value (> 0) present in the image."""
    labels = img.data.reshape(-1)
    where = np.flatnonzero(labels > 0)
    # np.unique, not np.bincount over the values: one voxel of value 2e9 would make that a 16 GB array
    present, inverse = np.unique(labels[where], return_inverse=True)
    i, j, k = np.unravel_index(where, img.data.shape)
    a = img.affine
    x = a[0, 0] * i + a[0, 1] * j + a[0, 2] * k + a[0, 3]
    counts = np.bincount(inverse.reshape(-1), minlength=present.size)
    sums = np.bincount(inverse.reshape(-1), weights=x, minlength=present.size)
    return dict(zip(present.tolist(), (sums / counts).tolist()))


def _named_by_side(img: LabelImage, mni: bool = True) -> LabelImage:
    """The image with each lateralised label (``Left_``, ``R_`` ...) named after the side its voxels lie on.

    The voxels are trusted over the names: neuroparc's ``HarvardOxfordsub-maxprob.csv`` (the
    ``--atlas-dir`` files) names FSL's left structures ``Right_`` and the right ones ``Left_`` (value
    10, FSL's "Left Amygdala", lies at MNI x = -23 mm), so ``--label R_Amygdala`` would find no voxel
    and ``--label Right_Amygdala`` the left amygdala. Each renamed label is logged once.

    Parameters
    ----------
    img : LabelImage
        The label image and its table.
    mni : bool
        The image is in MNI space: a label is on the side of the midline (x = 0 mm) its mean x lies
        on. Otherwise (a participant's labels in scanner space, where x = 0 mm need not be the
        midline) only pairs are checked: ``Left_X`` and ``Right_X`` swap names when ``Left_X`` lies
        right of ``Right_X``.
    """
    mean = _mean_x(img)
    sided = {}  # name -> (side, rest of the name, mean x in mm) of the lateralised labels with voxels
    for name, index in img.table.items():
        side, rest = _split_hemisphere(name)
        if side is not None and index in mean:
            sided[name] = (side, rest, mean[index])
    wrong: dict[str, float] = {}
    if mni:
        for name, (side, _, mean_x) in sided.items():
            if abs(mean_x) > _SIDE_MARGIN_MM and (mean_x < 0) != (side == "left"):
                wrong[name] = mean_x
    else:
        pairs: dict[str, dict[str, list[tuple[str, float]]]] = {}
        for name, (side, rest, mean_x) in sided.items():
            pairs.setdefault(rest, {}).setdefault(side, []).append((name, mean_x))
        for by_side in pairs.values():
            if len(by_side.get("left", ())) == 1 and len(by_side.get("right", ())) == 1:
                (left, left_x), (right, right_x) = by_side["left"][0], by_side["right"][0]
                if left_x - right_x > _SIDE_MARGIN_MM:
                    wrong[left], wrong[right] = left_x, right_x
    renamed = {(_swap_side(n) if n in wrong else n): i for n, i in img.table.items()}
    if len(renamed) != len(img.table):  # one side of a pair mislabelled, not both: no name to give it
        raise RoiDefError("--atlas", f"{img.source}: the label(s) {sorted(wrong)} lie on the other side of the "
                                     "midline and their other-side names are taken. Allowed: an atlas table whose "
                                     "Left/Right names match the voxels")
    for name, mean_x in wrong.items():
        logger.warning("%s: label %r lies at mean %s x = %.1f mm (%s): named %r", img.source, name,
                       "MNI" if mni else "world", mean_x,
                       ("the left side" if mean_x < 0 else "the right side") if mni else "the other side of its pair",
                       _swap_side(name))
    return LabelImage(img.data, img.affine, renamed, img.source)


def _nilearn_harvard_oxford() -> list[LabelImage]:
    """Harvard-Oxford cortical and subcortical max-probability maps through nilearn.

    nilearn reads them from its data folder (``data_dir``: ``NILEARN_SHARED_DATA``, ``NILEARN_DATA``
    or ``~/nilearn_data``, under ``fsl/data/atlases``) and downloads them there once when they are
    missing; without a cached copy and without network the error names both ways out.
    """
    try:
        from nilearn import datasets

        out = []
        for name in NILEARN_HARVARD_OXFORD:
            atlas = datasets.fetch_atlas_harvard_oxford(name, verbose=0)
            img = atlas.maps if hasattr(atlas.maps, "affine") else __import__("nibabel").load(atlas.maps)
            table = {str(lab): i for i, lab in enumerate(atlas.labels) if i > 0}
            out.append(LabelImage(np.rint(np.asarray(img.dataobj)).astype(np.int32), np.asarray(img.affine),
                                  table, f"nilearn fetch_atlas_harvard_oxford({name!r})"))
        return out
    except Exception as exc:  # no network, a proxy, a broken cache: one message either way
        raise RoiDefError("--atlas", "harvard-oxford is not in nilearn's data folder and could not be downloaded "
                                     f"({type(exc).__name__}: {str(exc)[:200]}). Allowed: --atlas-dir DIR with the "
                                     "atlas files (offline), --atlas-file and --table, or network once so that "
                                     "nilearn caches it") from None


def load_atlas(atlas: str | None = None, *, atlas_dir: str | Path | None = None, atlas_file: str | Path | None = None,
               table: str | Path | None = None) -> list[LabelImage]:
    """The label images of an atlas.

    Parameters
    ----------
    atlas : {"harvard-oxford", "hcp"}, optional
        A named atlas, read from ``atlas_dir`` or (Harvard-Oxford only) fetched by nilearn.
    atlas_dir : path, optional
        Folder holding the files of :data:`ATLAS_FILES` (works offline).
    atlas_file, table : path, optional
        A local MNI-space label image and its ``index,name`` table, instead of a named atlas.
    """
    if atlas_file is not None:
        if table is None:
            raise RoiDefError("--table", "missing: --atlas-file needs --table (index,name CSV/TSV)")
        data, affine = _load_image(atlas_file, "--atlas-file")
        return [_named_by_side(LabelImage(np.rint(data).astype(np.int32), affine, read_label_table(table),
                                          str(atlas_file)))]
    if atlas not in ATLAS_FILES:
        raise RoiDefError("--atlas", f"{atlas!r}. Allowed: {', '.join(ATLAS_FILES)}, or --atlas-file with --table")
    if atlas_dir is None:
        if atlas == "hcp":
            raise RoiDefError("--atlas-dir", "missing: nilearn has no fetcher for the HCP atlas. Allowed: "
                                             "--atlas-dir DIR holding " + ATLAS_FILES["hcp"][0][0] + " and "
                                             + ATLAS_FILES["hcp"][0][1] + ", or --atlas-file and --table")
        return _nilearn_harvard_oxford()
    folder = Path(atlas_dir)
    out = []
    for image, csv in ATLAS_FILES[atlas]:
        if not (folder / image).is_file() or not (folder / csv).is_file():
            raise RoiDefError("--atlas-dir", f"{folder} lacks {image} or {csv}. Allowed: a folder with the files "
                                             f"of {atlas}: " + ", ".join(f"{i}, {c}" for i, c in ATLAS_FILES[atlas]))
        data, affine = _load_image(folder / image, "--atlas-dir")
        out.append(_named_by_side(LabelImage(np.rint(data).astype(np.int32), affine, read_label_table(folder / csv),
                                             str(folder / image))))
    return out


def _split_hemisphere(name: str) -> tuple[str | None, str]:
    parts = normalise(name).split("_", 1)
    if len(parts) == 2 and parts[0] in _PREFIXES:
        return _PREFIXES[parts[0]], parts[1]
    return None, normalise(name)


def find_label(images: Sequence[LabelImage], name: str) -> tuple[int, int, str, str | None]:
    """Where a label is: (image number, index, name as in the table, hemisphere from a prefix or None).

    A name that matches a table entry as it is (``Left_Amygdala``) is taken as it is; otherwise a
    hemisphere prefix is stripped and the rest matched.

    Raises
    ------
    RoiDefError
        For an unknown name, with the closest names of the atlas.
    """
    lookup: dict[str, tuple[int, int, str]] = {}
    for k, img in enumerate(images):
        for label, index in img.table.items():
            if index != 0:
                lookup.setdefault(normalise(label), (k, index, label))
    if normalise(name) in lookup:
        return (*lookup[normalise(name)], None)
    hemi, rest = _split_hemisphere(name)
    if hemi is not None and rest in lookup:
        return (*lookup[rest], hemi)
    if hemi is not None and f"{hemi}_{rest}" in lookup:  # R_Amygdala -> Right_Amygdala (lateralised atlases)
        return (*lookup[f"{hemi}_{rest}"], hemi)
    names = {normalise(lab): lab for img in images for lab in img.table}
    close = difflib.get_close_matches(rest, list(names), n=5, cutoff=0.5)
    hint = f" Closest: {', '.join(names[c] for c in close)}." if close else ""
    raise RoiDefError("--label", f"{name!r} is not a label of the atlas ({len(names)} labels).{hint} "
                                 "Allowed: a name from the atlas table (case and punctuation do not matter; "
                                 "L_/R_ selects a hemisphere)")


def _hemisphere_mask(shape: tuple[int, ...], affine: np.ndarray, hemisphere: str) -> np.ndarray:
    """Voxels of one hemisphere (MNI x < 0 left, x > 0 right; the midline is in neither)."""
    x = (np.indices(shape[:3], dtype=np.float64).reshape(3, -1).T @ affine[:3, :3].T + affine[:3, 3])[:, 0]
    x = x.reshape(shape[:3])
    if hemisphere == "both":
        return np.ones(shape[:3], dtype=bool)
    return x < 0 if hemisphere == "left" else x > 0


def atlas_region(
    images: Sequence[LabelImage], labels: Sequence[str], *, hemisphere: str = "both",
    sphere_mm: Sequence[float] | None = None,
) -> tuple[np.ndarray, np.ndarray, list[dict[str, object]]]:
    """The union of atlas labels in MNI space, optionally one hemisphere and within an MNI sphere.

    Parameters
    ----------
    images : sequence of LabelImage
        From :func:`load_atlas` (all on one grid when there are several).
    labels : sequence of str
        Label names; a ``L_``/``R_`` prefix restricts that label to one hemisphere.
    hemisphere : {"left", "right", "both"}
        For labels without a prefix.
    sphere_mm : (x, y, z, r), optional
        Keep only voxels within r mm of (x, y, z) MNI mm.

    Returns
    -------
    data : ndarray of float32 (0/1) on the atlas grid, affine : ndarray (4, 4), picked : list of dict
        The labels used (name, index, hemisphere, voxels).
    """
    if hemisphere not in HEMISPHERES:
        raise RoiDefError("--hemisphere", f"{hemisphere!r}. Allowed: {', '.join(HEMISPHERES)}")
    if not labels:
        raise RoiDefError("--label", "missing: give one or more --label NAME")
    ref = images[0]
    region = np.zeros(ref.data.shape, dtype=bool)
    picked: list[dict[str, object]] = []
    for name in labels:
        k, index, label, hemi = find_label(images, name)
        img = images[k]
        if img.data.shape != ref.data.shape or not np.allclose(img.affine, ref.affine):
            raise RoiDefError("--atlas", f"{img.source} is not on the grid of {ref.source}")
        side = hemi or hemisphere
        voxels = (img.data == index) & _hemisphere_mask(img.data.shape, img.affine, side)
        if not voxels.any():
            raise RoiDefError("--label", f"{label!r} ({side} hemisphere) has no voxel in {img.source}. "
                                         "Allowed: a label present in the image")
        picked.append({"name": label, "index": index, "hemisphere": side, "voxels": int(voxels.sum()),
                       "source": img.source})
        region |= voxels
    if sphere_mm is not None:
        if len(sphere_mm) != 4 or not sphere_mm[3] > 0:
            raise RoiDefError("--sphere-mm", f"{list(sphere_mm)}. Allowed: X Y Z R in MNI mm with R > 0")
        world = (np.indices(region.shape, dtype=np.float64).reshape(3, -1).T @ ref.affine[:3, :3].T
                 + ref.affine[:3, 3]).reshape(region.shape + (3,))
        region &= np.sum((world - np.asarray(sphere_mm[:3], dtype=np.float64)) ** 2, axis=-1) <= sphere_mm[3] ** 2
        if not region.any():
            raise RoiDefError("--sphere-mm", f"the sphere {list(sphere_mm)} does not meet the label(s) "
                                             f"{[p['name'] for p in picked]}. Allowed: a sphere that overlaps them")
    return region.astype(np.float32), np.asarray(ref.affine, dtype=np.float64), picked
