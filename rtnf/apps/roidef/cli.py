"""``rtnf roi <kind> ...``: the command line."""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np

from rtnf.scanner.volume import Volume
from ._common import DEFAULT_MIN_COVERAGE, RoiDefError, RoiDefinition
from .localizer import blocks_from_events, localizer_roi, localizer_tmap
from .mni import MNI_REGIONS, MniRegistration, mni_roi, register_mni
from .output import plot_roi, save_mask
from .reference import _is_nifti, load_reference, load_series
from .regions import atlas_roi, mask_from_image, sphere_roi


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


def _kind(sub, name: str, help: str, description: str, *examples: str) -> argparse.ArgumentParser:
    """A kind of ROI whose ``--help`` has a one-paragraph description and examples."""
    epilog = "\n".join(["example:" if len(examples) == 1 else "examples:"] + [f"  {e}" for e in examples])
    return sub.add_parser(name, help=help, description=textwrap.fill(" ".join(description.split()), 79),
                          epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)


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
        sub, "mni", "a region in MNI space, via an affine registration of MNI152 to the reference",
        """Place an ROI given in MNI space (a built-in region, a sphere at MNI coordinates, an MNI mask or
        atlas label) on the participant: the MNI152 template is registered to the reference volume once
        (affine, SimpleITK), the region is carried through it onto the functional grid, and the
        registration is saved for reuse with --transform. This is the way to use MNI coordinates: the
        config's center_mm is in the participant's scanner space.""",
        "rtnf roi mni --region anterior_cingulate -r ref.nii.gz -o acc.nii.gz",
        "rtnf roi mni --center-mm 0 30 15 --radius-mm 8 -r ref.nii.gz -o acc.nii.gz --transform acc_mni.json",
    )
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--region", choices=sorted(MNI_REGIONS), help="built-in approximate region (see docs)")
    g.add_argument("--center-mm", type=float, nargs=3, metavar=("X", "Y", "Z"),
                   help="sphere centre in MNI coordinates, mm (with --radius-mm)")
    g.add_argument("--mask", type=Path, help="a mask in MNI space")
    g.add_argument("--labels", type=Path, help="an MNI-space label image (with --table and --name)")
    p.add_argument("--radius-mm", type=float, default=None, help="sphere radius in mm (with --center-mm)")
    p.add_argument("--table", type=Path, default=None, help="TSV/CSV of index,name (with --labels)")
    p.add_argument("--name", dest="label_names", action="append", metavar="NAME", help="label name (with --labels)")
    p.add_argument("--gm-threshold", type=float, default=0.5,
                   help="keep MNI voxels with grey-matter probability >= this (region/sphere; 0 = all; default 0.5)")
    p.add_argument("--transform", type=Path, default=None,
                   help="reuse a registration JSON written earlier (default: register now and write <out>_mni.json)")
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
    """Stand-alone entry point (``python -m rtnf.apps.roidef ...``) until ``rtnf roi`` is wired."""
    parser = argparse.ArgumentParser(prog="rtnf roi", description="Define an ROI on the reference volume.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
