"""``rtnf roi <kind> ...``: the command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from rtnf.scanner.volume import Volume
from rtnf._cli_help import add_command as _kind
from ._common import DEFAULT_MIN_COVERAGE, RoiDefError, RoiDefinition
from .localizer import blocks_from_events, localizer_roi, localizer_tmap
from .atlases import ATLAS_FILES, HEMISPHERES, atlas_region, load_atlas
from .mni import MNI_REGIONS, MniRegistration, load_or_register, mni_roi
from .output import plot_roi, save_mask
from .transfer_cli import add_transfer_arguments, run_transfer
from .reference import _is_nifti, load_reference, load_series
from .regions import atlas_roi, mask_from_image, restrict_to, sphere_roi


# --------------------------------------------------------------------------- command line


KINDS = ("mask", "sphere", "atlas", "mni", "localizer", "tissue", "transfer")


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

    p = _kind(
        sub, "mask", "a NIfTI mask or probability map in any space, resampled to the reference",
        """Resample a NIfTI mask or probability map, in any world space its affine states, to the reference
        volume's grid and keep the voxels above --threshold.""",
        "rtnf roi mask insula_prob.nii.gz --interpolation linear --threshold 0.5 -r ref.nii.gz -o insula.nii.gz",
    )
    p.add_argument("image", type=Path, help="NIfTI image with an affine")
    p.add_argument("--threshold", type=float, default=0.5, help="keep voxels above this value (default 0.5)")
    p.add_argument("--interpolation", choices=["nearest", "linear"], default="nearest",
                   help="nearest (binary masks) or linear (probability maps; default nearest)")
    _common(p)

    p = _kind(
        sub, "sphere", "a sphere in the participant's scanner space (RAS mm of the functional images)",
        """A sphere at coordinates in the participant's scanner space: RAS millimetres of the functional
        images, as a viewer shows them on the reference volume (not MNI coordinates: for those, use
        `rtnf roi mni --center-mm`).""",
        "rtnf roi sphere --center-mm 2 41 12 --radius-mm 8 -r ref.nii.gz -o acc.nii.gz",
    )
    p.add_argument("--center-mm", type=float, nargs=3, required=True, metavar=("X", "Y", "Z"),
                   help="centre in the participant's scanner space (RAS mm of the functional images)")
    p.add_argument("--radius-mm", type=float, required=True, help="radius in mm")
    _common(p)

    p = _kind(
        sub, "atlas", "labels of a label image (same world space as the reference) + table",
        """The union of labels of an integer label image that is already in the reference volume's world space
        (for example a participant's parcellation), named through a table of index and name.""",
        "rtnf roi atlas --labels aparc.nii.gz --table aparc.tsv --name ctx-lh-insula -r ref.nii.gz -o insula.nii.gz",
    )
    p.add_argument("--labels", type=Path, required=True, help="integer label image (NIfTI)")
    p.add_argument("--table", type=Path, required=True, help="TSV/CSV of index,name")
    p.add_argument("--name", dest="label_names", action="append", required=True, metavar="NAME",
                   help="label name from the table (repeat for a union)")
    _common(p)

    p = _kind(
        sub, "mni", "a region in MNI space (atlas labels, sphere, mask), via a registration of MNI152 to the reference",
        """Place an ROI given in MNI space (labels of the Harvard-Oxford or HCP multi-modal atlas, a sphere at
        MNI coordinates, an MNI mask, a built-in approximate region) on the participant: the MNI152 template
        is registered to the reference volume once (SimpleITK, multi-start; through the session's T1 with
        --t1), the region is carried through it onto the functional grid, and the registration is saved
        as <out>_xfm.json (reuse with --transform) with a check image <out>_reg.png. Labels: --label
        (repeat for a union; case-insensitive; L_/R_ picks a hemisphere), --hemisphere, --sphere-mm
        (intersection with an MNI sphere), --within (intersection with a localizer mask on the participant).
        This is the way to use MNI coordinates: the config's center_mm is in the participant's scanner space.""",
        "rtnf roi mni --atlas harvard-oxford --label Cingulate_Gyrus_anterior_division -r ref.nii.gz -o acc.nii.gz",
        "rtnf roi mni --atlas hcp --atlas-dir atlases/ --label Area_a24 --label Area_p32 --hemisphere both "
        "--t1 T1.nii.gz -r ref.nii.gz -o pgacc.nii.gz",
        "rtnf roi mni --atlas hcp --atlas-dir atlases/ --label R_Anterior_Agranular_Insula_Complex "
        "--within localizer_top.nii.gz -r ref.nii.gz -o ains.nii.gz --transform pgacc_xfm.json",
        "rtnf roi mni --center-mm 0 30 15 --radius-mm 8 -r ref.nii.gz -o acc.nii.gz --transform acc_xfm.json",
    )
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--atlas", choices=sorted(ATLAS_FILES),
                   help="a named MNI atlas: from --atlas-dir, else nilearn's fetcher (harvard-oxford only; cached)")
    g.add_argument("--atlas-file", type=Path, help="a local MNI-space label image (with --table and --label)")
    g.add_argument("--region", choices=sorted(MNI_REGIONS),
                   help="built-in approximate ellipsoid (kept for old commands; an atlas label is better: "
                        "anterior_cingulate ~ harvard-oxford Cingulate_Gyrus_anterior_division, "
                        "insula_left ~ --label L_Insular_Cortex, amygdala_right ~ Right_Amygdala)")
    g.add_argument("--center-mm", type=float, nargs=3, metavar=("X", "Y", "Z"),
                   help="sphere centre in MNI coordinates, mm (with --radius-mm)")
    g.add_argument("--mask", type=Path, help="a mask in MNI space")
    g.add_argument("--labels", type=Path, help="an MNI-space label image (with --table and --name)")
    p.add_argument("--radius-mm", type=float, default=None, help="sphere radius in mm (with --center-mm)")
    p.add_argument("--table", type=Path, default=None, help="TSV/CSV of index,name (with --labels)")
    p.add_argument("--label", "--name", dest="label_names", action="append", metavar="NAME",
                   help="atlas label name (repeat for a union; with --atlas, --atlas-file or --labels)")
    p.add_argument("--atlas-dir", type=Path, default=None,
                   help="folder with the atlas files (offline; names as in rtnf.apps.roidef.atlases.ATLAS_FILES)")
    p.add_argument("--hemisphere", choices=HEMISPHERES, default="both",
                   help="hemisphere of labels without an L_/R_ prefix (MNI x < 0 is left; default both)")
    p.add_argument("--sphere-mm", type=float, nargs=4, metavar=("X", "Y", "Z", "R"), default=None,
                   help="keep only atlas voxels within R mm of (X, Y, Z) MNI mm")
    p.add_argument("--within", type=Path, default=None,
                   help="keep only voxels inside this mask (participant space, e.g. a localizer ROI)")
    p.add_argument("--t1", type=Path, default=None,
                   help="the session's T1 (NIfTI or DICOM folder): register EPI -> T1 -> MNI instead of EPI -> MNI")
    p.add_argument("--gm-threshold", type=float, default=0.5,
                   help="keep MNI voxels with grey-matter probability >= this (region/sphere; 0 = all; default 0.5)")
    p.add_argument("--transform", type=Path, default=None,
                   help="reuse a registration JSON written earlier (default: register now and write <out>_xfm.json)")
    _common(p)

    p = _kind(
        sub, "localizer", "threshold or top-k voxels of a localizer t-map, in a search mask",
        """The voxels of a localizer t-map above --threshold, or its --top-k voxels, inside an optional search
        mask; the t-map is given (any space) or computed here from the localizer series and its events.""",
        "rtnf roi localizer --tmap localizer_tmap.nii.gz --top-k 50 --search-mask acc.nii.gz -r ref.nii.gz -o acc_top50.nii.gz",
        "rtnf roi localizer --series loc/export --events loc_events.tsv --tr-s 2 --top-k 50 -r ref.nii.gz -o top50.nii.gz",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--tmap", type=Path, help="t-map (NIfTI, any space)")
    src.add_argument("--series", type=Path, help="compute the t-map from this localizer series (4D NIfTI or folder)")
    p.add_argument("--events", type=Path, help="BIDS events.tsv of the series (with --series)")
    p.add_argument("--tr-s", type=float, help="TR of the series in seconds (with --series)")
    p.add_argument("--volumes", default=None, help="volumes to use, 1-based inclusive, e.g. 1-39 (default all)")
    p.add_argument("--drift-cutoff-s", type=float, default=128.0,
                   help="longest period the cosine drift terms remove, in seconds (default 128)")
    sel = p.add_mutually_exclusive_group(required=True)
    sel.add_argument("--threshold", type=float, help="keep voxels with t >= T")
    sel.add_argument("--top-k", type=int, help="keep the K voxels with the largest t")
    p.add_argument("--search-mask", type=Path, default=None, help="NIfTI mask in any space (default: whole t-map)")
    _common(p)

    from .tissue import add_parser as add_tissue  # WM/CSF masks for [confounds.tissue]: a folder, not one ROI

    add_tissue(sub)

    add_transfer_arguments(_kind(
        sub, "transfer", "carry day-1 masks onto the day-N reference (rigid registration, Dice, centroid shift)",
        """Register the day-1 reference EPI to the day-N reference (rigid, multi-start, a few seconds), write
        each day-1 mask resampled onto the day-N grid, a check PNG (day-1 brain and masks over day N) and
        transfer.json (transforms, centroid shift in mm, and the Dice against a re-derived day-N mask given
        with --compare, in the order of --masks).""",
        "rtnf roi transfer --from day1_ref.nii.gz --masks acc.nii.gz insula.nii.gz --to day3_ref.nii.gz -o day3_rois/",
        "rtnf roi transfer --from day1_ref.nii.gz --masks acc.nii.gz --to day3_ref.nii.gz -o day3_rois/ "
        "--compare acc_day3_atlas.nii.gz",
    ))


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
        mask, picked = args.mask, None
        if args.atlas is not None or args.atlas_file is not None:
            # The labels first: a misspelt name stops here, before a registration.
            images = load_atlas(args.atlas, atlas_dir=args.atlas_dir, atlas_file=args.atlas_file, table=args.table)
            data, aff, picked = atlas_region(images, args.label_names or [], hemisphere=args.hemisphere,
                                             sphere_mm=args.sphere_mm)
            mask = (data, aff)
        elif args.sphere_mm is not None:
            raise RoiDefError("--sphere-mm", "applies to atlas labels (--atlas or --atlas-file)")
        tpath = args.out.with_name(_stem(args.out) + "_xfm.json")
        reg, new = load_or_register(ref, args.transform, args.t1, tpath)
        if not new:
            print(f"registration: read {args.transform}")
        else:
            png = plot_registration(ref, reg, args.out.with_name(_stem(args.out) + "_reg.png"))
            print(f"registration: {reg.parameters.get('route', 'EPI -> MNI152')}, {reg.seconds:.1f} s, "
                  f"Mattes MI {reg.metric:.3f}, brain overlap (Dice) {reg.quality.get('brain_dice', float('nan')):.3f}; "
                  f"wrote {tpath} (reuse with --transform) and {png}")
        roi = mni_roi(grid, reg, region=args.region, center_mm=args.center_mm, radius_mm=args.radius_mm,
                      mask=mask, labels=args.labels, table=args.table, names=args.label_names,
                      gm_threshold=args.gm_threshold, name=name, min_coverage=cov)
        if picked is not None:
            roi.details.update(atlas=args.atlas or str(args.atlas_file), labels=picked, hemisphere=args.hemisphere,
                               sphere_mm=args.sphere_mm)
            print("atlas labels: " + "; ".join(f"{p['name']} ({p['index']}, {p['hemisphere']})" for p in picked))
        if args.within is not None:
            roi = restrict_to(roi, args.within)
        return roi
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


def plot_registration(ref: Volume, reg: MniRegistration, path: Path) -> Path:
    """The registration check: the MNI152 brain outline and its darkest inner voxels (ventricles) on the reference EPI."""
    from ._common import _resample
    from .mni import _mni_template
    from .output import plot_overlay

    tmpl, brain, aff = _mni_template()
    grid = ref.grid
    brain_on_ref = _resample(brain.astype(np.float32), aff, grid, 1, world_to_src=reg.ref_to_mni) >= 0.5
    # The template's ventricles (dark inside the brain) show the inner fit.
    dark = brain & (tmpl < np.percentile(tmpl[brain], 8))
    dark_on_ref = _resample(dark.astype(np.float32), aff, grid, 1, world_to_src=reg.ref_to_mni) >= 0.5
    dice = reg.quality.get("brain_dice", float("nan"))
    return plot_overlay(ref.data, ref.affine, [(brain_on_ref, "cyan", "MNI152 brain"),
                                               (dark_on_ref, "yellow", "MNI152 CSF/ventricles")], path,
                        f"MNI152 on the reference: Mattes MI {reg.metric:.3f}, brain overlap (Dice) {dice:.3f}")


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def run(args: argparse.Namespace) -> int:
    """Run ``rtnf roi <kind>``; 0 on success, 2 (with one message, no traceback) on a bad input."""
    if args.roi_kind == "transfer":
        return run_transfer(args)
    if args.roi_kind == "tissue":
        from .tissue import run as run_tissue

        return run_tissue(args)
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
    """Stand-alone entry point (``python -m rtnf.apps.roidef ...``) until ``rtnf roi`` is wired."""
    parser = argparse.ArgumentParser(prog="rtnf roi", description="Define an ROI on the reference volume.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
