"""Per-volume processing: file -> ROI signals -> incremental GLM -> feedback.

:class:`VolumeProcessor` turns one volume's file into the bodies of its
``volume`` and ``feedback`` messages (all fields but ``t_published``, which
the sender stamps). It holds the run's model state and nothing else: no
sockets, no files, no threads.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from .config import Config
from .design import Design, make_design
from .feedback import FeedbackComputer, FeedbackValue
from .roi_model import RoiModel
from .export import Arrival
from .nifti import VolumeReadError
from .protocol import Protocol
from .rois import make_roi
from .volume import Grid

log = logging.getLogger(__name__)


class VolumeProcessor:
    """The model state of one run and the steps applied to each volume.

    Parameters
    ----------
    cfg : Config
        Session config.
    protocol : Protocol, optional
        Defaults to ``cfg.make_protocol()``.
    design : Design, optional
        Defaults to the design built from the protocol and ``cfg.model``.
    """

    def __init__(self, cfg: Config, protocol: Protocol | None = None, design: Design | None = None) -> None:
        self.cfg = cfg
        self.protocol = protocol or cfg.make_protocol()
        self.design = design or make_design(self.protocol, cfg.model.hrf, cfg.model.drift_cutoff_s)
        self.labels = self.protocol.labels()
        self.block_of = np.empty(self.protocol.n_volumes, dtype=int)
        for seg in self.protocol.segments():
            self.block_of[seg.start : seg.stop] = seg.number
        self.rois = [make_roi(name, roi_cfg) for name, roi_cfg in cfg.rois.items()]
        self.roi_names = [roi.name for roi in self.rois]
        fb = cfg.feedback
        running = int(round(fb.running_baseline_s / self.protocol.tr_s)) if fb.baseline == "running" else None
        self.model = RoiModel(
            self.design, self.protocol, len(self.rois), cfg.model.drift_cutoff_s, fb.min_baseline_volumes, running
        )
        self.feedback = FeedbackComputer(fb, self.roi_names, self.protocol)
        self.grid: Grid | None = None

    def fit(self, grid: Grid) -> None:
        """Place the ROIs on the functional grid (done with the first volume).

        Raises
        ------
        RoiError
            If an ROI lies outside the field of view.
        """
        for roi in self.rois:
            roi.fit(grid)
            log.info("ROI %s: %d voxels", roi.name, roi.n_voxels)
        self.grid = grid

    def process(self, index: int, acquisition: int, arrival: Arrival) -> tuple[dict[str, Any], dict[str, Any]]:
        """Process kept volume ``index``, read through ``arrival.load()``.

        Returns the ``volume`` and ``feedback`` message bodies. A file that
        cannot be read, or whose grid differs from the run's, is logged and
        treated as a missing volume: the run goes on.
        """
        t_detected = arrival.t_detected
        name = arrival.name
        try:
            volume = arrival.load()
        except VolumeReadError as exc:
            log.warning("volume %d unreadable, treated as missing: %s", index, exc)
            return self.missing(index, acquisition, name, t_detected, reason="unreadable file")
        t_read = time.time()
        if self.grid is None:
            self.fit(volume.grid)
        elif not volume.grid.same_as(self.grid):
            log.warning(
                "volume %d (%s) has shape %s, expected %s (or a different affine); treated as missing",
                index, name, volume.data.shape, self.grid.shape,
            )
            return self.missing(index, acquisition, name, t_detected, reason="wrong matrix or geometry")
        raw = np.array([roi.transform(volume.data) for roi in self.rois])
        t_preprocessed = time.time()
        values = self.model.update(index, raw)
        fb = self.feedback.step(index, values, self.model)
        t_modelled = time.time()
        timing = {
            "t_acquired": volume.t_acquired,
            "t_detected": t_detected,
            "t_read": t_read,
            "t_preprocessed": t_preprocessed,
            "t_modelled": t_modelled,
            "t_published": None,
        }
        rois = {name: {"raw": v.raw, "clean": v.clean, "psc": v.psc} for name, v in zip(self.roi_names, values)}
        return self._bodies(index, acquisition, name, rois, timing, fb, missing=False)

    def missing(
        self, index: int, acquisition: int | None, name: str | None, t_detected: float | None, reason: str = "missing volume"
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Message bodies for a volume that never arrived or could not be used."""
        timing = {"t_acquired": None, "t_detected": t_detected, "t_read": None, "t_preprocessed": None,
                  "t_modelled": None, "t_published": None}
        rois = {name: {"raw": None, "clean": None, "psc": None} for name in self.roi_names}
        fb = FeedbackValue(None, reason, kind=self.cfg.feedback.kind)
        return self._bodies(index, acquisition, name, rois, timing, fb, missing=True)

    def _bodies(
        self,
        index: int,
        acquisition: int | None,
        file: str | None,
        rois: dict[str, dict[str, float | None]],
        timing: dict[str, float | None],
        fb: FeedbackValue,
        missing: bool,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        condition = self.labels[index]
        volume = {
            "index": index,
            "acquisition": acquisition,
            "n_volumes": self.protocol.n_volumes,
            "onset_s": index * self.protocol.tr_s,
            "condition": condition,
            "block": int(self.block_of[index]),
            "rois": rois,
            "motion": None,
            "framewise_displacement": None,
            "flags": {"missing": missing, "censored": False, "late": False},
            "timing": timing,
            "file": file,
        }
        feedback = {
            "index": index,
            "condition": condition,
            "value": fb.value,
            "reason": fb.reason,
            "kind": fb.kind,
            "signal": fb.signal,
            "display_s": fb.display_s,
            "t_published": None,
        }
        return volume, feedback
