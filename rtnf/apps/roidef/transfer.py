"""Carrying ROIs from day 1 to day N: register the day-1 reference EPI to the day-N reference (rigid) and resample its masks.

On a later day the head lies elsewhere in the scanner; the day-1 masks (atlas, localizer) are
brought onto the day-N reference grid before the first run, so the same voxels of cortex are
trained. The registration is rigid (same head, same sequence), multi-start
(:mod:`rtnf.apps.roidef.registration`) and takes a few seconds on 64x64x34 volumes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rtnf.scanner.volume import Grid
from ._common import RoiDefError, _resample
from .localizer import epi_mask
from .registration import MultiStart, RegistrationResult, Stage, dice, register, rigid_parameters

#: The rigid stage of a day-1 -> day-N registration (EPI voxels of about 3 mm).
TRANSFER_STAGES = (Stage("rigid", (4, 2, 1), (6.0, 3.0, 0.0)),)


@dataclass
class TransferredMask:
    """One mask carried onto the day-N grid.

    Attributes
    ----------
    name : str
    mask : ndarray of bool
        On the day-N grid.
    centroid_from_mm, centroid_to_mm : ndarray (3,)
        Centre of mass before (day-1 scanner RAS mm) and after (day-N scanner RAS mm).
    voxels_from, voxels_to : int
    dice : float or None
        Against a re-derived mask on day N, when one was given.
    """

    name: str
    mask: np.ndarray
    centroid_from_mm: np.ndarray
    centroid_to_mm: np.ndarray
    voxels_from: int
    voxels_to: int
    dice: float | None = None

    @property
    def centroid_shift_mm(self) -> np.ndarray:
        """Where the ROI's centre moved in scanner coordinates, day N minus day 1 (mm, (3,))."""
        return self.centroid_to_mm - self.centroid_from_mm

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {"name": self.name, "voxels_from": self.voxels_from, "voxels_to": self.voxels_to,
                "centroid_from_mm": self.centroid_from_mm.round(2).tolist(),
                "centroid_to_mm": self.centroid_to_mm.round(2).tolist(),
                "centroid_shift_mm": self.centroid_shift_mm.round(2).tolist(),
                "centroid_shift_norm_mm": round(float(np.linalg.norm(self.centroid_shift_mm)), 2),
                "dice_vs_compare": None if self.dice is None else round(self.dice, 4)}


@dataclass
class Transfer:
    """A day-1 -> day-N registration and the masks carried by it.

    Attributes
    ----------
    registration : RegistrationResult
        ``fixed_to_moving`` maps day-N scanner RAS mm to day-1 scanner RAS mm.
    masks : list of TransferredMask
    brain_dice : float
        Overlap of the day-1 brain mask carried onto day N with day N's own (registration quality, 0-1).
    """

    registration: RegistrationResult
    masks: list[TransferredMask] = field(default_factory=list)
    brain_dice: float = float("nan")

    @property
    def day_n_to_day_1(self) -> np.ndarray:
        """4x4: a point of the day-N reference (RAS mm) -> the same tissue in the day-1 reference."""
        return self.registration.fixed_to_moving

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary (matrices in RAS mm, nibabel convention)."""
        shift, angle = rigid_parameters(np.linalg.inv(self.day_n_to_day_1))
        return {"day1_to_dayN": np.linalg.inv(self.day_n_to_day_1).tolist(),
                "dayN_to_day1": np.asarray(self.day_n_to_day_1).tolist(),
                "head_rotation_deg": round(angle, 3), "translation_at_origin_mm": shift.round(3).tolist(),
                "metric": self.registration.metric, "brain_dice": round(self.brain_dice, 4),
                "seconds": round(self.registration.seconds, 2), "starts": self.registration.starts,
                "parameters": self.registration.parameters, "masks": [m.as_dict() for m in self.masks]}


def _centroid_mm(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    return np.asarray(affine)[:3, :3] @ np.argwhere(mask).mean(axis=0) + np.asarray(affine)[:3, 3]


def _stripped(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from scipy.ndimage import binary_dilation

    data = np.asarray(data, dtype=np.float32)
    brain = epi_mask(data)
    return np.where(binary_dilation(brain, iterations=1), data, 0.0), brain


def register_days(
    day1: tuple[np.ndarray, np.ndarray], day_n: tuple[np.ndarray, np.ndarray], *,
    multistart: MultiStart | None = MultiStart(), threads: int = 2,
) -> tuple[RegistrationResult, float]:
    """Rigid registration of the day-1 reference EPI to the day-N reference.

    Both are stripped to their heads (nilearn's EPI mask dilated by a voxel) so that the brain,
    not the background or ghosts, drives the fit.

    Returns
    -------
    result : RegistrationResult
        ``fixed_to_moving``: day-N RAS mm -> day-1 RAS mm.
    brain_dice : float
        Day-1 brain mask carried onto day N vs day N's brain mask.
    """
    d1, brain1 = _stripped(day1[0])
    dn, brain_n = _stripped(day_n[0])
    res = register((dn, day_n[1]), (d1, day1[1]), stages=TRANSFER_STAGES, multistart=multistart, threads=threads)
    grid = Grid(tuple(dn.shape), np.asarray(day_n[1]))
    moved = _resample(brain1.astype(np.float32), day1[1], grid, order=1, world_to_src=res.fixed_to_moving) >= 0.5
    return res, dice(moved, brain_n)


def carry_mask(mask: np.ndarray, affine: np.ndarray, grid: Grid, day_n_to_day_1: np.ndarray,
               interpolation: str = "linear") -> np.ndarray:
    """A day-1 mask on the day-N grid: trilinear and >= 0.5 (partial-volume majority), or nearest."""
    if interpolation not in ("linear", "nearest"):
        raise RoiDefError("--interpolation", f"{interpolation!r}. Allowed: linear, nearest")
    values = _resample(np.asarray(mask, dtype=np.float32), affine, grid, order=1 if interpolation == "linear" else 0,
                       world_to_src=day_n_to_day_1)
    return values >= 0.5


def transfer_masks(
    day1: tuple[np.ndarray, np.ndarray], day_n: tuple[np.ndarray, np.ndarray],
    masks: dict[str, tuple[np.ndarray, np.ndarray]], *, compare: dict[str, np.ndarray] | None = None,
    interpolation: str = "linear", multistart: MultiStart | None = MultiStart(), threads: int = 2,
) -> Transfer:
    """Register day 1 to day N and carry each mask onto the day-N grid.

    Parameters
    ----------
    day1, day_n : (data, affine)
        The two reference EPI volumes.
    masks : dict
        ``{name: (mask data, affine)}`` on (or in the world of) the day-1 reference.
    compare : dict, optional
        ``{name: bool mask on the day-N grid}`` re-derived on day N; gives each mask's Dice.
    interpolation : {"linear", "nearest"}
    """
    res, brain = register_days(day1, day_n, multistart=multistart, threads=threads)
    grid = Grid(tuple(np.asarray(day_n[0]).shape[:3]), np.asarray(day_n[1]))
    out = Transfer(res, brain_dice=brain)
    for name, (data, affine) in masks.items():
        src = np.asarray(data) > 0.5
        if not src.any():
            raise RoiDefError("--masks", f"{name} is empty")
        moved = carry_mask(src, affine, grid, res.fixed_to_moving, interpolation)
        if not moved.any():
            raise RoiDefError("--masks", f"{name} falls outside the day-N field of view after registration")
        other = None if compare is None else compare.get(name)
        out.masks.append(TransferredMask(
            name, moved, _centroid_mm(src, affine), _centroid_mm(moved, grid.affine), int(src.sum()),
            int(moved.sum()), None if other is None else dice(moved, other)))
    return out
