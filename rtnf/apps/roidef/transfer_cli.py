"""``rtnf roi transfer``: the command line of carrying day-1 masks to day N (:mod:`rtnf.apps.roidef.transfer`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from ._common import RoiDefError, RoiDefinition, _load_image, _resample
from .localizer import epi_mask
from .output import plot_overlay, save_mask
from .reference import load_reference
from .transfer import carry_mask, transfer_masks


def add_transfer_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``rtnf roi transfer``."""
    p.add_argument("--from", dest="day1", type=Path, required=True,
                   help="day-1 reference volume (NIfTI, DICOM file or folder): the grid the masks are on")
    p.add_argument("--masks", type=Path, nargs="+", required=True, help="day-1 masks (NIfTI)")
    p.add_argument("--to", dest="day_n", type=Path, required=True, help="day-N reference volume")
    p.add_argument("--out", "-o", type=Path, required=True, help="output folder")
    p.add_argument("--compare", type=Path, nargs="+", default=None,
                   help="masks re-derived on day N, one per --masks (same order): the Dice of each transfer")
    p.add_argument("--interpolation", choices=["linear", "nearest"], default="linear",
                   help="linear + 0.5 threshold (partial-volume majority; default) or nearest")
    p.add_argument("--from-volume", type=int, default=None, help="volume of --from in a DICOM folder / 4D NIfTI")
    p.add_argument("--to-volume", type=int, default=None, help="volume of --to in a DICOM folder / 4D NIfTI")


def _stem(path: Path) -> str:
    for suffix in (".nii.gz", ".nii"):
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.stem


def run_transfer(args: argparse.Namespace) -> int:
    """Run ``rtnf roi transfer``; 0 on success, 2 with one message on a bad input."""
    try:
        day1 = load_reference(args.day1, args.from_volume)
        day_n = load_reference(args.day_n, args.to_volume)
        masks = {_stem(m): _load_image(m, "--masks") for m in args.masks}
        if len(masks) != len(args.masks):
            raise RoiDefError("--masks", "two masks have the same file name; give distinct names")
        compare = None
        if args.compare is not None:
            if len(args.compare) != len(args.masks):
                raise RoiDefError("--compare", f"{len(args.compare)} masks for {len(args.masks)} --masks. "
                                               "Allowed: one re-derived mask per --masks, same order")
            compare = {}
            for name, path in zip(masks, args.compare):
                data, aff = _load_image(path, "--compare")
                compare[name] = _resample(np.asarray(data, np.float32), aff, day_n.grid, order=0) > 0.5
        result = transfer_masks((day1.data, day1.affine), (day_n.data, day_n.affine), masks, compare=compare,
                                interpolation=args.interpolation)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for m in result.masks:
            roi = RoiDefinition(m.name, "transfer", m.mask, day_n.grid, 1.0,
                                {"from": str(args.day1), "to": str(args.day_n)})
            written.append(save_mask(roi, out / f"{m.name}.nii.gz"))
        brain1 = carry_mask(epi_mask(day1.data), day1.affine, day_n.grid, result.day_n_to_day_1)
        colours = ["red", "lime", "magenta", "orange", "deepskyblue"]
        outlines = [(brain1, "cyan", "day-1 head (registered)")]
        outlines += [(m.mask, colours[k % len(colours)], m.name) for k, m in enumerate(result.masks)]
        summary = result.as_dict()
        png = plot_overlay(day_n.data, day_n.affine, outlines, out / "transfer.png",
                           f"day 1 -> day N: head moved {summary['head_rotation_deg']:.1f} deg, "
                           f"brain overlap (Dice) {result.brain_dice:.3f}")
        (out / "transfer.json").write_text(json.dumps(summary, indent=2))
    except RoiDefError as exc:
        print(f"rtnf roi transfer: {exc}", file=sys.stderr)
        return 2
    print(f"registration: day 1 -> day N rigid, {result.registration.seconds:.1f} s, {result.registration.starts} "
          f"starts, rotation {summary['head_rotation_deg']:.2f} deg, brain overlap (Dice) {result.brain_dice:.3f}")
    for m in result.masks:
        shift = m.centroid_shift_mm
        line = (f"{m.name}: {m.voxels_from} -> {m.voxels_to} voxels, centroid shift "
                f"({shift[0]:.1f}, {shift[1]:.1f}, {shift[2]:.1f}) mm, |{np.linalg.norm(shift):.1f}| mm")
        if m.dice is not None:
            line += f", Dice vs re-derived {m.dice:.3f}"
        print(line)
    print(f"wrote {', '.join(str(w) for w in written)}, {png} and {out / 'transfer.json'}")
    return 0
