"""``rtnf decoder train``: train a decoder for decoded neurofeedback on a localizer run.

::

    rtnf decoder train --series loc/ --events loc_events.tsv --mask occipital.nii.gz \\
        --classes dogs scissors -o decoder/

reads the run (a 4D NIfTI, a folder of 3D NIfTI files, or a folder of one DICOM series), realigns it
to its first volume, trains the classifier (:func:`rtnf.analysis.decoder.train_decoder`) and writes
the folder the run's ``[signals.<name>] class = "decoder"`` table names (``model_dir``), with a
training report (cross-validated accuracy, trials per class, voxels). A bad input is one line on
stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np

from rtnf.analysis.decoder import DecoderError, read_events, train_decoder


def load_run(path: str | Path) -> tuple[np.ndarray, np.ndarray, float | None]:
    """A run's volumes, affine and TR (s) when its files state it.

    Parameters
    ----------
    path : str or Path
        A 4D NIfTI, a folder of 3D NIfTI files (name order), or a folder of the DICOM files of one series.

    Returns
    -------
    data : ndarray, shape (nx, ny, nz, n), float32
    affine : ndarray, shape (4, 4)
    tr_s : float or None
        From the NIfTI header (time unit s or ms) or the DICOM RepetitionTime.

    Raises
    ------
    DecoderError
        With ``param`` ``--series``.
    """
    import nibabel as nib

    from rtnf.apps.roidef._common import RoiDefError
    from rtnf.apps.roidef.reference import _dicom_groups, _folder_files, _is_nifti

    param = "--series"
    path = Path(path)
    if not path.exists():
        raise DecoderError(param, f"not found: {path}")
    try:
        if path.is_file() or any(_is_nifti(f) for f in _folder_files(path)):
            files = [path] if path.is_file() else [f for f in _folder_files(path) if _is_nifti(f)]
            imgs = [nib.load(f) for f in files]
            data = np.concatenate([np.asarray(i.dataobj, dtype=np.float32).reshape(*i.shape[:3], -1) for i in imgs], axis=-1)
            return data, np.asarray(imgs[0].affine, dtype=np.float64), _nifti_tr(imgs[0])
        from rtnf.scanner.dicom import read_volume

        groups = _dicom_groups(_folder_files(path))
        if not groups:
            raise DecoderError(param, f"{path} holds no NIfTI or DICOM volume")
        series = {uid for uid, _ in groups}
        if len(series) > 1:
            raise DecoderError(param, f"{path} holds {len(series)} DICOM series; give the folder of one run")
        keys = sorted(groups, key=lambda k: k[1])
        vols = [read_volume(groups[k]) for k in keys]
        shapes = {v.data.shape for v in vols}
        if len(shapes) > 1:
            raise DecoderError(param, f"{path} holds volumes of several shapes {sorted(shapes)}")
        return np.stack([v.data for v in vols], axis=-1), vols[0].affine, _dicom_tr(groups[keys[0]][0])
    except (DecoderError, RoiDefError):
        raise
    except Exception as exc:  # noqa: BLE001 - reader errors name the file
        raise DecoderError(param, f"cannot read the run from {path} ({type(exc).__name__}: {exc})") from None


def _nifti_tr(img) -> float | None:
    zooms = img.header.get_zooms()
    if len(zooms) < 4 or not zooms[3] > 0:
        return None
    unit = img.header.get_xyzt_units()[1]
    # No time unit (nibabel's default pixdim is 1): better to ask for --tr-s than to guess.
    scale = {"sec": 1.0, "msec": 1e-3, "usec": 1e-6}.get(unit)
    return None if scale is None else float(zooms[3]) * scale


def _dicom_tr(path: Path) -> float | None:
    try:
        from rtnf.scanner.dicom._common import dcmread

        tr = float(dcmread(path, stop_before_pixels=True).get("RepetitionTime") or 0)
    except Exception:  # noqa: BLE001 - no TR: the user gives --tr-s
        return None
    return tr / 1000.0 if tr > 0 else None


def load_mask(path: str | Path, shape: tuple[int, int, int], affine: np.ndarray) -> np.ndarray:
    """A mask NIfTI on the run's grid: as it is on that grid, else resampled by world coordinates (nearest)."""
    from rtnf.apps.roidef._common import RoiDefError
    from rtnf.apps.roidef.regions import mask_from_image
    from rtnf.scanner.volume import Grid

    try:
        return mask_from_image(Path(path), Grid(shape, affine), name="decoder").mask
    except RoiDefError as exc:
        raise DecoderError("--mask", str(exc).split(": ", 1)[-1].replace("'IMAGE'", "the mask")) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The sub-command ``train`` of ``rtnf decoder``."""
    sub = parser.add_subparsers(dest="decoder_command", required=True)
    p = sub.add_parser(
        "train", help="train a decoder on a localizer run (for [signals.<name>] class = \"decoder\")",
        description=textwrap.fill(" ".join("""Train a linear classifier (L2 logistic regression) of the voxel
        patterns of a mask on a localizer run: the run is realigned to its first volume, each voxel detrended
        within the run and in percent of its mean, volumes labelled by the events shifted by the hemodynamic
        lag. Writes OUT with the model (arrays, JSON and NIfTI only), the training reference (set
        motion.reference to it in the feedback runs) and report.json (cross-validated accuracy, leaving whole
        trials out).""".split()), 79),
        epilog="example:\n  rtnf decoder train --series loc/ --events loc_events.tsv --mask occipital.nii.gz "
               "--classes dogs scissors -o decoder/",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--series", type=Path, required=True,
                   help="the localizer run: a 4D NIfTI, a folder of 3D NIfTI files or of one DICOM series")
    p.add_argument("--events", type=Path, required=True,
                   help="BIDS events.tsv (onset, duration, trial_type; seconds from the first kept volume)")
    p.add_argument("--mask", type=Path, required=True,
                   help="NIfTI mask of the voxels to decode (on the run's grid, or resampled to it by world coordinates)")
    p.add_argument("--classes", nargs="+", default=None, metavar="CLASS",
                   help="trial types to tell apart (default: all of the events)")
    p.add_argument("-o", "--out", type=Path, required=True, help="folder to write the decoder to")
    p.add_argument("--tr-s", type=float, default=None, help="repetition time in s (default: from the files)")
    p.add_argument("--lag-s", type=float, default=6.0, help="hemodynamic lag in s (default 6)")
    p.add_argument("--skip-volumes", type=int, default=0,
                   help="leave out the first N volumes (dummy scans); the events' time 0 is the first kept volume")
    p.add_argument("--C", dest="C", default="auto",
                   help="inverse L2 penalty, or 'auto' (lowest cross-validated log-loss of 0.001, 0.01, 0.1, 1; default)")


def run(args: argparse.Namespace) -> int:
    """Run ``rtnf decoder train``; 0 on success, 2 with one line on stderr on a bad input."""
    try:
        if args.C != "auto":
            try:
                c = float(args.C)
            except ValueError:
                c = float("nan")
            if not c > 0 or c == float("inf"):
                raise DecoderError("--C", f"{args.C!r}. Allowed: a number > 0, or 'auto'")
            args.C = c
        if args.skip_volumes < 0:
            raise DecoderError("--skip-volumes", f"{args.skip_volumes}. Allowed: 0 or more")
        if args.out.exists() and not args.out.is_dir():
            raise DecoderError("--out", f"{args.out} is a file. Allowed: a folder (created if missing)")
        trials = read_events(args.events)
        data, affine, tr_file = load_run(args.series)
        data = data[..., args.skip_volumes:]
        tr_s = args.tr_s if args.tr_s is not None else tr_file
        if tr_s is None:
            raise DecoderError("--tr-s", f"{args.series} does not state its repetition time: give --tr-s")
        mask = load_mask(args.mask, data.shape[:3], affine)
        trained = train_decoder(data, affine, trials, mask, float(tr_s), classes=args.classes, lag_s=args.lag_s, C=args.C)
        trained.report["inputs"] = {"series": str(args.series), "events": str(args.events), "mask": str(args.mask),
                                    "skip_volumes": int(args.skip_volumes)}
        out = trained.save(args.out)
    except DecoderError as exc:
        print(f"rtnf decoder train: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"rtnf decoder train: cannot write {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    r = trained.report
    cv = r["cross_validation"]
    counts = ", ".join(f"{c} ({r['n_trials'][c]} trials, {r['n_labelled_volumes'][c]} volumes)" for c in r["classes"])
    print(f"decoder: {counts}, {r['n_voxels']} voxels, C {cv['C']:g}")
    print(f"cross-validated accuracy ({cv['scheme']}): {cv['accuracy_trials']:.3f} per trial, "
          f"{cv['accuracy_volumes']:.3f} per volume (chance {cv['chance']:.3f})")
    print(f"wrote {out}")
    classes = r["classes"]
    print(f'config:\n[motion]\nreference = "{out / "reference.nii.gz"}"\n\n[signals.decoder]\nclass = "decoder"\n'
          f'model_dir = "{out}"\ntarget_class = "{classes[0]}"   # one of {", ".join(classes)}\n\n'
          '[feedback]\nsource = "decoder"')
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``rtnf decoder ...`` (stand-alone: ``python -m rtnf.apps.decoder train ...``)."""
    parser = argparse.ArgumentParser(prog="rtnf decoder", description="Decoders for decoded neurofeedback.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["add_arguments", "load_mask", "load_run", "main", "run"]
