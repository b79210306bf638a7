"""Writing an ROI: the mask as NIfTI and a picture over the reference for the operator to check."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ._common import RoiDefinition


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


def plot_overlay(
    background: np.ndarray, affine: np.ndarray, outlines: list[tuple[np.ndarray, str, str]], path: str | Path,
    title: str,
) -> Path:
    """PNG of outlines (boolean images on the background's grid) over a volume: the registration check.

    Parameters
    ----------
    background : ndarray, 3D
        The image the others were carried onto (the reference EPI).
    affine : ndarray (4, 4)
        Its voxel -> world affine.
    outlines : list of (mask, colour, label)
        Boolean images on the same grid; each is drawn as a contour, named in the title.
    path : path
        Where to write the PNG.
    title : str
        First line of the title (a quality figure, for instance).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import nibabel as nib

    def canonical(x: np.ndarray) -> np.ndarray:
        return np.asarray(nib.as_closest_canonical(nib.Nifti1Image(np.asarray(x, dtype=np.float32), affine)).dataobj)

    ref = canonical(background)
    masks = [(canonical(m.astype(np.float32)) > 0.5, colour, label) for m, colour, label in outlines]
    zooms = np.asarray(nib.as_closest_canonical(nib.Nifti1Image(np.asarray(background, np.float32), affine))
                       .header.get_zooms()[:3], dtype=float)
    vmax = float(np.percentile(ref[ref > 0], 99.5)) if np.any(ref > 0) else 1.0
    centre = [int(round(c)) for c in (np.argwhere(ref > np.percentile(ref, 75)).mean(axis=0))]
    nz = ref.shape[2]
    ks = np.linspace(nz * 0.2, nz * 0.8, 3).round().astype(int)
    views = [("sagittal", lambda a: a[centre[0], :, :].T, zooms[2] / zooms[1]),
             ("coronal", lambda a: a[:, centre[1], :].T, zooms[2] / zooms[0]),
             ("axial", lambda a: a[:, :, centre[2]].T, zooms[1] / zooms[0])]
    views += [(f"axial slice {k}", (lambda kk: (lambda a: a[:, :, kk].T))(k), zooms[1] / zooms[0]) for k in ks]
    fig = plt.figure(figsize=(12, 7.6), facecolor="black")
    for n, (label, cut, aspect) in enumerate(views):
        ax = fig.add_subplot(2, 3, n + 1)
        ax.imshow(cut(ref), cmap="gray", origin="lower", vmin=0, vmax=vmax, aspect=aspect, interpolation="nearest")
        for m, colour, _ in masks:
            sl = cut(m)
            if sl.any() and not sl.all():
                ax.contour(sl.astype(float), levels=[0.5], colors=colour, linewidths=1.0, origin="lower")
        ax.set_title(label, color="white", fontsize=9)
        ax.axis("off")
    legend = ",  ".join(f"{label} ({colour})" for _, colour, label in masks)
    fig.suptitle(f"{title}\n{legend}", color="white", fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80, facecolor="black")
    plt.close(fig)
    return path
