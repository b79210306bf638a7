"""A feedback-signal plugin for rtnf: the difference of two ROIs' percent signal change.

Differential feedback (target ROI minus a control ROI) removes what both
regions share, such as global fluctuations. Installed, this package registers
the signal ``roi_difference`` (entry point group ``rtnf.signals``); a session
config uses it as::

    [signals.diff]
    class = "roi_difference"
    target = "acc"
    control = "insula"

    [feedback]
    source = "diff"     # feed this signal back instead of ROI activity
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from rtnf.analysis.signals import FeedbackSignal, SignalContext, VolumeInput


class RoiDifference(FeedbackSignal):
    """``psc[target] - psc[control]`` for each volume, in percent."""

    class Config(BaseModel):
        """The keys of the signal's ``[signals.<name>]`` table."""

        model_config = ConfigDict(extra="forbid")
        target: str
        control: str

    columns = ("target_psc",)  # also recorded, as signal_<name>_target_psc

    def fit(self, context: SignalContext) -> None:
        """Check that both ROIs exist (a clear error before the run's first feedback otherwise)."""
        context.require_roi(self.config.target)
        context.require_roi(self.config.control)

    def step(self, volume: VolumeInput) -> float | None:
        """The difference, or None (with the reason) while either ROI has no baseline yet."""
        target, control = volume.psc[self.config.target], volume.psc[self.config.control]
        self.outputs["target_psc"] = target
        if target is None or control is None:
            self.reason = "waiting for baseline"
            return None
        return target - control
