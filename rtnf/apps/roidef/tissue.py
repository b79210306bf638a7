"""``rtnf roi tissue``: white-matter and CSF masks on the functional grid, for the tissue confounds.

The masks feed ``[confounds.tissue]`` (:mod:`rtnf.analysis.confounds.tissue`): mean WM and CSF signals and
aCompCor. They come from an MNI-space label atlas (Harvard-Oxford subcortical: cerebral white matter and
lateral ventricles) carried onto the participant's reference volume through the MNI registration of
``rtnf roi mni`` (:func:`rtnf.apps.roidef.mni.register_mni`), or from tissue probability maps already in the
reference's world space (a T1 segmentation brought to the EPI). A voxel is kept when the tissue fills at least
``min_fraction`` of it (linear interpolation of the label's indicator: a partial-volume estimate) and lies in
the EPI's own brain mask, then the mask is eroded so it does not touch grey matter: what the regressors remove
must not be the signal of the ROIs next door.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from rtnf.scanner.volume import Grid, Volume
from ._common import RoiDefError, RoiDefinition, _load_image, _resample

#: Harvard-Oxford subcortical label names (``HarvardOxfordsub-maxprob.csv``) of each tissue.
HARVARD_OXFORD_TISSUES: dict[str, tuple[str, ...]] = {
    "wm": ("Right_Cerebral_White_Matter", "Left_Cerebral_White_Matter"),
    "csf": ("Right_Lateral_Ventricle", "Left_Lateral_Ventricle"),
}


@dataclass(frozen=True)
class TissueSettings:
    """How a tissue's fraction map becomes a mask.

    Attributes
    ----------
    min_fraction : float
        Smallest fraction (0-1) of the voxel the tissue must fill.
    erode_voxels : int
        Binary erosions (3-D, 6-connected) after thresholding.
    """

    min_fraction: float = 0.9
    erode_voxels: int = 1


#: Defaults: white matter is large (one erosion still leaves thousands of 3 mm voxels); the ventricles are a
#: few voxels wide at 3 mm, so they are kept by the fraction alone.
DEFAULT_SETTINGS = {"wm": TissueSettings(0.9, 1), "csf": TissueSettings(0.9, 0)}


def atlas_fraction(labels: str | Path | tuple[np.ndarray, np.ndarray], table: str | Path | dict[str, int],
                   names: Sequence[str], grid: Grid, world_to_atlas: np.ndarray | None = None) -> np.ndarray:
    """Fraction (0-1) of each grid voxel that lies in the named labels (linear interpolation of their indicator).

    Parameters
    ----------
    labels : path or (data, affine)
        Integer label image with its affine (MNI space for the Harvard-Oxford atlas).
    table : path or dict
        ``index,name`` table (see :func:`rtnf.apps.roidef.regions.read_label_table`) or ``{name: index}``.
    names : sequence of str
        Label names whose union is the tissue.
    grid : Grid
        The functional grid.
    world_to_atlas : ndarray (4, 4), optional
        Reference world mm -> atlas world mm (``MniRegistration.ref_to_mni``).
    """
    from .regions import _select_labels, read_label_table

    data, affine = _load_image(labels, "--atlas") if isinstance(labels, (str, Path)) else labels
    tab = read_label_table(table) if isinstance(table, (str, Path)) else dict(table)
    indicator = np.isin(np.rint(np.asarray(data)).astype(np.int32), _select_labels(tab, list(names)))
    if not indicator.any():
        raise RoiDefError("--atlas", f"the labels {list(names)} have no voxel in the atlas")
    return _resample(indicator.astype(np.float32), affine, grid, order=1, world_to_src=world_to_atlas)


def probability_fraction(path: str | Path, grid: Grid, param: str) -> np.ndarray:
    """A tissue probability map in the reference's world space (a T1 segmentation), on the functional grid."""
    data, affine = _load_image(path, param)
    return np.clip(_resample(np.asarray(data, dtype=np.float32), affine, grid, order=1), 0.0, 1.0)


def tissue_mask(fraction: np.ndarray, brain: np.ndarray, grid: Grid, tissue: str,
                settings: TissueSettings, param: str) -> RoiDefinition:
    """Threshold a fraction map inside the EPI brain mask, erode it, and check that something is left."""
    from scipy.ndimage import binary_erosion

    kept = (fraction >= settings.min_fraction) & brain
    n_kept = int(kept.sum())
    mask = binary_erosion(kept, iterations=settings.erode_voxels) if settings.erode_voxels > 0 else kept
    if not mask.any():
        raise RoiDefError(param, f"the {tissue.upper()} mask is empty: {n_kept} voxels have a {tissue.upper()} "
                                 f"fraction >= {settings.min_fraction:g} inside the EPI's brain, none survive "
                                 f"{settings.erode_voxels} erosion(s). Allowed: a lower --{tissue}-min-fraction or "
                                 f"--{tissue}-erode, or a reference that covers the {tissue.upper()}")
    details = {"min_fraction": settings.min_fraction, "erode_voxels": settings.erode_voxels,
               "voxels_before_erosion": n_kept}
    return RoiDefinition(tissue, "tissue", mask, grid, 1.0, details)


def tissue_masks(reference: Volume, fractions: dict[str, np.ndarray],
                 settings: dict[str, TissueSettings] | None = None) -> dict[str, RoiDefinition]:
    """WM and CSF masks on the reference grid from their fraction maps (see :func:`tissue_mask`)."""
    from .localizer import epi_mask

    settings = {**DEFAULT_SETTINGS, **(settings or {})}
    brain = epi_mask(np.asarray(reference.data, dtype=np.float32))
    return {t: tissue_mask(f, brain, reference.grid, t, settings[t], f"--{t}-min-fraction")
            for t, f in fractions.items()}


# --------------------------------------------------------------------------- command line


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``tissue`` kind of ``rtnf roi``."""
    examples = [
        "rtnf roi tissue --atlas HarvardOxfordsub-maxprob-thr25_space-MNI152NLin6_res-2x2x2.nii.gz "
        "--table HarvardOxfordsub-maxprob.csv -r ref.nii.gz -o tissue/",
        "rtnf roi tissue --wm-map t1_wm_in_epi_space.nii.gz --csf-map t1_csf_in_epi_space.nii.gz -r ref.nii.gz -o tissue/",
    ]
    description = """White-matter and CSF masks on the functional grid for [confounds.tissue] (mean WM/CSF signals,
    aCompCor): from an MNI label atlas (the Harvard-Oxford subcortical atlas's cerebral white matter and lateral
    ventricles by default) carried onto the reference through the MNI152 registration of `rtnf roi mni`, or from
    tissue probability maps already in the reference's world space. Voxels the tissue fills at least
    --*-min-fraction of, inside the EPI's brain, eroded --*-erode times so they do not touch grey matter. Writes
    wm.nii.gz, csf.nii.gz and a PNG of each into the output folder."""
    p = sub.add_parser("tissue", help="white-matter and CSF masks for the tissue confounds (aCompCor)",
                       description=textwrap.fill(" ".join(description.split()), 79),
                       epilog="\n".join(["examples:"] + [f"  {e}" for e in examples]),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reference", "-r", required=True, type=Path,
                   help="participant's reference volume: NIfTI, DICOM file, or DICOM folder (first volume)")
    p.add_argument("--volume", type=int, default=None, help="volume number in a DICOM folder (index in a 4D NIfTI)")
    p.add_argument("--out", "-o", required=True, type=Path, help="output folder (wm.nii.gz, csf.nii.gz, PNGs)")
    src = p.add_argument_group("source: an MNI atlas (with --table), or --wm-map/--csf-map")
    src.add_argument("--atlas", type=Path, help="MNI-space integer label image (Harvard-Oxford subcortical)")
    src.add_argument("--table", type=Path, help="its index,name table (CSV/TSV)")
    src.add_argument("--wm-label", action="append", default=None, metavar="NAME",
                     help="white-matter label name (repeat; default the Harvard-Oxford cerebral white matter)")
    src.add_argument("--csf-label", action="append", default=None, metavar="NAME",
                     help="CSF label name (repeat; default the Harvard-Oxford lateral ventricles)")
    src.add_argument("--transform", type=Path, default=None,
                     help="reuse an MNI registration JSON (rtnf roi mni); default: register now, write tissue_mni.json")
    src.add_argument("--t1", type=Path, default=None, help="the session's T1 for a more precise MNI registration")
    src.add_argument("--wm-map", type=Path, help="WM probability map in the reference's world space (T1 segmentation)")
    src.add_argument("--csf-map", type=Path, help="CSF probability map in the reference's world space")
    for tissue, s in DEFAULT_SETTINGS.items():
        p.add_argument(f"--{tissue}-min-fraction", type=float, default=s.min_fraction,
                       help=f"keep voxels the {tissue.upper()} fills at least this fraction of (default {s.min_fraction:g})")
        p.add_argument(f"--{tissue}-erode", type=int, default=s.erode_voxels,
                       help=f"erosions of the {tissue.upper()} mask, in voxels (default {s.erode_voxels})")
    return p


def _fractions(args: argparse.Namespace, ref: Volume) -> dict[str, np.ndarray]:
    """Each tissue's fraction map on the reference grid, from the atlas or the probability maps."""
    from .mni import load_or_register

    maps = {"wm": args.wm_map, "csf": args.csf_map}
    if any(v is not None for v in maps.values()):
        if args.atlas is not None:
            raise RoiDefError("--atlas", "give an atlas or --wm-map/--csf-map, not both")
        return {t: probability_fraction(path, ref.grid, f"--{t}-map") for t, path in maps.items() if path is not None}
    if args.atlas is None or args.table is None:
        raise RoiDefError("--atlas", "missing: give --atlas with --table (an MNI label atlas), or --wm-map/--csf-map")
    path = args.out / "tissue_mni.json"
    reg, new = load_or_register(ref, args.transform, args.t1, path)
    if not new:
        print(f"registration: read {args.transform}")
    else:
        print(f"registration: MNI152 -> reference, {reg.seconds:.1f} s, brain Dice "
              f"{reg.quality.get('brain_dice', float('nan')):.2f}; wrote {path} (reuse with --transform)")
    names = {"wm": args.wm_label or HARVARD_OXFORD_TISSUES["wm"], "csf": args.csf_label or HARVARD_OXFORD_TISSUES["csf"]}
    return {t: atlas_fraction(args.atlas, args.table, names[t], ref.grid, world_to_atlas=reg.ref_to_mni)
            for t in ("wm", "csf")}


def run(args: argparse.Namespace) -> int:
    """Run ``rtnf roi tissue``; 0 on success, 2 (one message, no traceback) on a bad input."""
    from .output import plot_roi, save_mask
    from .reference import load_reference

    try:
        ref = load_reference(args.reference, args.volume)
        settings = {t: TissueSettings(getattr(args, f"{t}_min_fraction"), getattr(args, f"{t}_erode"))
                    for t in DEFAULT_SETTINGS}
        for t, s in settings.items():
            if not 0 < s.min_fraction <= 1 or s.erode_voxels < 0:
                raise RoiDefError(f"--{t}-min-fraction", f"{s.min_fraction:g} with {s.erode_voxels} erosions. "
                                                         "Allowed: a fraction in (0, 1] and erosions >= 0")
        masks = tissue_masks(ref, _fractions(args, ref), settings)
        written = {}
        for tissue, roi in masks.items():
            written[tissue] = save_mask(roi, args.out / f"{tissue}.nii.gz")
            plot_roi(roi, ref.data, args.out / f"{tissue}.png",
                     title=f"{tissue.upper()} mask: {roi.n_voxels} voxels ({roi.details['voxels_before_erosion']} "
                           f"before {roi.details['erode_voxels']} erosion(s))")
    except RoiDefError as exc:
        print(f"rtnf roi tissue: {exc}", file=sys.stderr)
        return 2
    for tissue, roi in masks.items():
        print(f"{tissue.upper()} mask: {roi.n_voxels} voxels, {roi.volume_mm3:.0f} mm^3; wrote {written[tissue]}")
    lines = ["config: [confounds.tissue]", 'signals = ["acompcor"]']
    lines += [f'{t}_mask = "{p}"' for t, p in written.items()]
    print("\n".join(lines))
    return 0
