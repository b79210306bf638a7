"""The built-in feedback signals on the synthetic runs of ``rtnf bench pipeline --signals ...``.

Each named signal is configured on a synthetic case (its ``[signals.<name>]`` table, named after
the built-in), so the pipeline records its per-volume time as the stage ``signal_<name>``:

``connectivity``  sliding-window correlation of the two bench ROIs (``acc``, ``insula``), 30 s window, Fisher z,
                  partial on the global signal (the costliest variant: it samples ~4,000 brain voxels)
``ppi``           the psychophysiological interaction of the same ROIs in the ``regulate`` blocks, 60 s window
``decoder``       a two-class decoder on a 2,000-voxel mask (the voxels of the brain nearest the ACC),
                  built with :class:`~rtnf.analysis.decoder.DecoderModel` (random weights: its cost does not
                  depend on what it learnt); the run is realigned to its reference (``motion.reference``),
                  as a decoder requires
``pattern``       a whole-brain weight map in MNI space (smooth random weights on nilearn's MNI152 brain mask,
                  2 mm; the simulator's scanner mm are MNI mm: ``registration = "identity"``): every brain
                  voxel of the run, the worst case of a signature

The model folder and the map are written into the case's work folder before the run.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

SIGNALS = ("connectivity", "ppi", "decoder", "pattern")
"""What ``--signals`` may name."""

DECODER_VOXELS = 2000
"""Voxels of the bench decoder's mask (the issue's target: at most 2 ms for 2,000 voxels at 64x64x36)."""


def parse_signals(text: str) -> tuple[str, ...]:
    """``"connectivity,decoder"`` -> ("connectivity", "decoder"); ``"all"`` -> every one.

    Raises
    ------
    argparse.ArgumentTypeError
        An unknown name (the message lists the allowed ones; argparse prints it and exits 2).
    """
    names = tuple(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    if names == ("all",):
        return SIGNALS
    unknown = [n for n in names if n not in SIGNALS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown {', '.join(unknown)}. Allowed: {', '.join(SIGNALS)} or all")
    return names


def prepare(case: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Write what the case's signals need into ``workdir``; the config lines to add.

    Returns
    -------
    dict
        ``signal_lines``: the ``[signals.<name>]`` tables (TOML lines); ``motion_reference``: the
        NIfTI to realign to (a decoder's training reference), or None.
    """
    names = case.get("signals") or ()
    rois = list(case["rois"])
    lines: list[str] = []
    reference = None
    for name in names:
        lines.append(f"[signals.{name}]")
        if name == "connectivity":
            lines += ['class = "connectivity"', f"rois = {_list(rois[:2])}", "window_s = 30.0", 'partial = "global"']
        elif name == "ppi":
            lines += ['class = "ppi"', f"rois = {_list(rois[:2])}", 'condition = "regulate"', "window_s = 60.0"]
        elif name == "decoder":
            folder = write_decoder(case, workdir / "decoder")
            reference = folder / "reference.nii.gz"
            lines += ['class = "decoder"', f'model_dir = "{folder}"', 'target_class = "b"']
        elif name == "pattern":
            path = write_pattern(workdir / "pattern_MNI.nii.gz")
            lines += ['class = "pattern"', f'weights = "{path}"', 'registration = "identity"']
        lines.append("")
    return {"signal_lines": lines, "motion_reference": None if reference is None else str(reference)}


def _list(items: list[str]) -> str:
    return "[" + ", ".join(f'"{x}"' for x in items) + "]"


def _run_grid(case: dict[str, Any], workdir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The synthetic run's noise-free, motion-free head and affine as rtnf reads them (the run's grid).

    One volume is written in the case's format and read back with rtnf's reader: a mosaic DICOM's
    voxel order and affine are the scanner's, not the simulator's, and a decoder must be on the
    run's grid exactly.
    """
    from rtnf.scanner.dicom import read_volume
    from rtnf.scanner.nifti import read_nifti
    from scanner_sim.generate import generate_run

    spec = {"tr_s": float(case["tr_s"]), "n_volumes": 1, "shape": list(case["shape"]),
            "voxel_mm": float(case["voxel_mm"]), "seed": 1, "noise_pct": 0.0, "drift_pct": 0.0,
            "format": case["format"], "blocks": [], "regions": []}
    g = generate_run(spec, workdir)
    volume = read_nifti(g.files[0]) if case["format"] == "nifti" else read_volume(list(g.files))
    return np.asarray(volume.data, dtype=np.float32), np.asarray(volume.affine, dtype=np.float64)


def write_decoder(case: dict[str, Any], folder: Path) -> Path:
    """A two-class decoder ("a", "b") on the :data:`DECODER_VOXELS` brain voxels nearest the first ROI's centre."""
    from rtnf.analysis.decoder import DecoderModel
    from scanner_sim.phantom import voxel_world_coords

    data, affine = _run_grid(case, folder.parent / "decoder_grid")
    centre = np.asarray(next(iter(case["rois"].values())), dtype=np.float64)
    # brain: the phantom's tissue (600-1000) against its background (20)
    flat = np.flatnonzero(data.reshape(-1) > 0.5 * np.percentile(data, 98))
    d2 = np.sum((voxel_world_coords(data.shape, affine).reshape(-1, 3)[flat] - centre) ** 2, axis=1)
    idx = np.sort(flat[np.argsort(d2)[:DECODER_VOXELS]]).astype(np.int64)
    rng = np.random.default_rng(0)
    v = idx.size
    model = DecoderModel(("a", "b"), rng.normal(0.0, 0.01, (1, v)), np.zeros(1), np.zeros(v), np.ones(v),
                         data.reshape(-1)[idx].astype(np.float64), idx, tuple(data.shape), affine,
                         {"tr_s": float(case["tr_s"]), "note": "rtnf bench: random weights, for timing only"})
    # The reference is the noise-free head: realigning the noisy run to it gives non-zero motion (a run
    # realigned to its own first volume is refused by the decoder).
    model.save(folder, data)
    return folder


def write_pattern(path: Path, seed: int = 0) -> Path:
    """A whole-brain weight map in MNI152 space (2 mm): smooth random weights on nilearn's brain mask."""
    import nibabel as nib
    from nilearn import datasets
    from scipy.ndimage import gaussian_filter

    mask_img = datasets.load_mni152_brain_mask(resolution=2)
    mask = np.asarray(mask_img.dataobj) > 0
    rng = np.random.default_rng(seed)
    weights = gaussian_filter(rng.standard_normal(mask.shape), 2.0) * mask
    nib.save(nib.Nifti1Image(weights.astype(np.float32), mask_img.affine), path)
    return path
